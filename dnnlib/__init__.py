"""Small utilities shared by the package (EasyDict only; see architecture.md)."""
from .util import EasyDict

__all__ = ["EasyDict"]
