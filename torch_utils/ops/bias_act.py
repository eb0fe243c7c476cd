"""Bias + activation + gain + clamp, as in the StyleGAN2 layers (reference.md §2.4)."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .dispatch import resolve_impl

# name -> (function, default gain). lrelu uses slope 0.2 and gain sqrt(2) (reference.md §2.4).
ACTIVATIONS = {
    "linear": (lambda x: x, 1.0),
    "relu": (F.relu, math.sqrt(2)),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), math.sqrt(2)),
    "tanh": (torch.tanh, 1.0),
    "sigmoid": (torch.sigmoid, 1.0),
    "softplus": (F.softplus, 1.0),
}


def default_gain(act: str) -> float:
    """The gain that keeps the activation's output variance near its input's."""
    return ACTIVATIONS[act][1]


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = "linear",
             gain: Optional[float] = None, clamp: Optional[float] = None, impl: str = "auto") -> torch.Tensor:
    """y = clamp(act(x + b) * gain, -clamp, clamp); ``b`` [x.shape[dim]] broadcasts along ``dim``.

    ``gain`` None means the activation's default gain; ``clamp`` None means no clamping.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"bias_act: unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}")
    resolve_impl("bias_act", impl, x)  # validates impl; the CUDA kernel arrives with the ops issue
    return _bias_act_ref(x, b, dim, act, gain, clamp)


def _bias_act_ref(x, b, dim, act, gain, clamp):
    if b is not None:
        assert b.ndim == 1 and b.shape[0] == x.shape[dim], (b.shape, x.shape, dim)
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.reshape(shape)
    func, def_gain = ACTIVATIONS[act]
    x = func(x)
    gain = def_gain if gain is None else float(gain)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x
