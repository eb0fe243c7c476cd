"""Atomic file writes: every output is written under a temporary name in its destination folder
and renamed on success, so a crash never leaves a half-written file under the final name."""
from __future__ import annotations

import contextlib
import os
import secrets
from typing import Iterator


def temp_sibling(path: str, suffix: str = ".tmp", folder: bool = False) -> str:
    """Create and return a new hidden file (or folder) beside ``path`` for writing before a rename.

    Unlike ``tempfile.mkstemp`` it is created with the usual permissions (0666/0777 less the umask),
    so the renamed result is readable like any file the user writes."""
    directory, base = os.path.split(os.path.abspath(path))
    for _ in range(100):
        name = os.path.join(directory, f".{base}.{secrets.token_hex(4)}{suffix}")
        try:
            if folder:
                os.mkdir(name, 0o777)
            else:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return name
        except FileExistsError:
            continue
    raise FileExistsError(f"{directory}: cannot find a free temporary name for {base}")


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    ``suffix`` ends the temporary name (writers that pick a format from the extension need it)."""
    tmp = temp_sibling(path, suffix)
    try:
        yield tmp
        os.replace(tmp, os.fspath(path))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_directory(os.path.dirname(os.path.abspath(path)))


def _sync_directory(directory: str) -> None:
    # Make the rename itself durable; not every platform/filesystem allows fsync on a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename); returns ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return path
