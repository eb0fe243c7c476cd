"""Exceptions users see when a file or an argument is wrong. Each message names the file/field."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be read: wrong format, truncated, or inconsistent."""


class UnsafePickleError(CheckpointError):
    """A pickle references a global outside the allow-list; nothing from it was executed."""
