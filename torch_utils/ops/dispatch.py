"""Choosing between an op's CUDA kernel and its pure-PyTorch reference.

``impl`` is chosen per call: 'ref' always runs the reference; 'cuda' requires the kernel and
fails with a clear error when it is unavailable; 'auto' (default) takes the kernel when the
input lives on a CUDA device and the kernel is available, otherwise the reference.
The environment variable ``SPHEREHEAD_OPS`` (read, never written) overrides 'auto' process-wide:
``SPHEREHEAD_OPS=ref`` forces the reference everywhere, ``SPHEREHEAD_OPS=cuda`` turns 'auto'
into 'cuda'.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional

import torch

IMPLS = ("auto", "cuda", "ref")

# op name -> callable returning True when the CUDA kernel for that op is built and usable.
# The CUDA-kernel issue registers loaders here; until then every op runs its reference.
_cuda_available: Dict[str, Callable[[], bool]] = {}


def register_cuda_kernel(op: str, is_available: Callable[[], bool]) -> None:
    """Register the availability check of ``op``'s CUDA kernel (called by the kernel loader)."""
    _cuda_available[op] = is_available


def resolve_impl(op: str, impl: str, tensor: Optional[torch.Tensor]) -> str:
    """Return 'cuda' or 'ref' for one call of ``op`` on ``tensor``."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        override = os.environ.get("SPHEREHEAD_OPS", "").strip().lower()
        if override in ("ref", "cuda"):
            impl = override
        elif override not in ("", "auto"):
            raise ValueError(f"SPHEREHEAD_OPS must be 'auto', 'cuda' or 'ref', got {override!r}")
    on_cuda = tensor is not None and tensor.is_cuda
    kernel = _cuda_available.get(op)
    if impl == "ref":
        return "ref"
    if impl == "cuda":
        if not on_cuda:
            raise RuntimeError(f"{op}: impl='cuda' needs CUDA tensors, got device {getattr(tensor, 'device', None)}")
        if kernel is None or not kernel():
            raise RuntimeError(
                f"{op}: impl='cuda' requested but no CUDA kernel is available for this op "
                "(it is built with nvcc from CUDA_HOME via ninja on first use); use impl='ref' or 'auto'")
        return "cuda"
    return "cuda" if (on_cuda and kernel is not None and kernel()) else "ref"
