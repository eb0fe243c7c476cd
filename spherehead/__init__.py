"""spherehead: a PyTorch reimplementation of SphereHead, a 3D-aware full-head GAN (EG3D/PanoHead family).

Entry points:

* :mod:`spherehead.camera` — the one coordinate convention, look-at poses, 25-value labels.
* :func:`load_network` — read an upstream pickle (code-free) or a native ``.safetensors`` file,
  chosen by content; returns ``{'G_ema': ..., 'D': ..., 'metadata': ...}``.
* :func:`save_network` — write the native format (safetensors + JSON config, atomic).
* :func:`read_info` — describe a checkpoint without building networks.

Heavy modules are imported on first use, so ``import spherehead`` stays cheap.
"""
from __future__ import annotations

import importlib

from . import camera

__version__ = "0.1.0"

# name -> module that defines it; resolved on first attribute access (PEP 562).
_LAZY = {
    "load_network": "spherehead.api",
    "read_info": "spherehead.api",
    "save_network": "spherehead.checkpoint",
}

__all__ = ["camera", "load_network", "save_network", "read_info", "__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spherehead' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
