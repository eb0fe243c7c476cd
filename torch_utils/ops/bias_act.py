"""Bias + activation + gain + clamp, as in the StyleGAN2 layers (reference.md §2.4).

The CUDA kernel (bias_act.cu, math in bias_act.h) does the whole chain in one pass per element and
its backward in one more; it is twice differentiable (the R1 penalty differentiates the
discriminator's gradient). It takes float32/float16/bfloat16 with a bias of x's dtype (float32
arithmetic); other combinations run the reference under impl='auto'.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import custom_ops

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
    if _use_cuda(impl, x, b, dim):
        return _cuda_call(x, b, dim, act, gain, clamp)
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


# ----------------------------------------------------------------------------- CUDA path

ACTIVATION_CODES = {"linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4, "softplus": 5}  # bias_act.h
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FORWARD, _GRAD, _GRADGRAD = 0, 1, 2
_NONE = torch.empty(0)  # "no tensor" for the bindings' optional arguments


def _use_cuda(impl: str, x: torch.Tensor, b: Optional[torch.Tensor], dim: int) -> bool:
    def problem():
        if x.dtype not in _CUDA_DTYPES:
            return f"x of dtype {x.dtype}"
        if x.ndim == 0:
            return "a 0-d x"
        if b is not None and (b.dtype != x.dtype or b.device != x.device or b.ndim != 1):
            return f"a bias of dtype {b.dtype} on {b.device} with x of dtype {x.dtype} (the kernel does no promotion)"
        return None
    return _KERNEL.wanted(impl, x, problem)


def _reduce_to_bias(g: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over every dimension but ``dim`` (the bias gradient)."""
    return g.sum(dim=[d for d in range(g.ndim) if d != dim])


def _kernel(mode: int, x, b, g, dim: int, act: str, gain: float, clamp: float) -> torch.Tensor:
    return _KERNEL.module.bias_act(x, _NONE.to(x.device) if b is None else b, _NONE.to(x.device) if g is None else g,
                                   mode, ACTIVATION_CODES[act], dim, gain, clamp)


class _BiasActCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, dim, act, gain, clamp):
        x = x.contiguous()
        b = None if b is None else b.contiguous()
        ctx.save_for_backward(x, b)
        ctx.args = (dim, act, gain, clamp)
        return _kernel(_FORWARD, x, b, None, dim, act, gain, clamp)

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        dim, act, gain, clamp = ctx.args
        dx = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dx = _BiasActGradCuda.apply(dy, x, b, dim, act, gain, clamp)
        if b is not None and ctx.needs_input_grad[1]:
            db = _reduce_to_bias(dx, dim)
        return dx, db, None, None, None, None


class _BiasActGradCuda(torch.autograd.Function):
    """dx = dy · ∂y/∂x, itself differentiable once more (for the R1 penalty's double backward)."""

    @staticmethod
    def forward(ctx, dy, x, b, dim, act, gain, clamp):
        dy = dy.contiguous()
        ctx.save_for_backward(dy, x, b)
        ctx.args = (dim, act, gain, clamp)
        return _kernel(_GRAD, x, b, dy, dim, act, gain, clamp)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_dx):
        dy, x, b = ctx.saved_tensors
        dim, act, gain, clamp = ctx.args
        d_dx = d_dx.contiguous()
        d_dy = _kernel(_GRAD, x, b, d_dx, dim, act, gain, clamp) if ctx.needs_input_grad[0] else None
        d_x = d_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d_x = _kernel(_GRADGRAD, x, b, (d_dx * dy).contiguous(), dim, act, gain, clamp)
            if b is not None and ctx.needs_input_grad[2]:
                d_b = _reduce_to_bias(d_x, dim)
        return d_dy, d_x, d_b, None, None, None, None


def self_check(candidate: Callable, device: torch.device) -> Optional[str]:
    """Compare ``candidate(x, b, dim, act, gain, clamp)`` with the reference on tiny inputs on ``device``
    (every activation, with and without bias/clamp, dim 1 and the last dim): forward and gradients."""
    cases = [(act, 1, None, None) for act in ACTIVATIONS] + [
        ("lrelu", 1, 1.0, 0.5), ("linear", -1, 2.0, 0.3), ("tanh", 1, 0.7, None), ("softplus", 1, None, 2.0)]
    with custom_ops.autograd_enabled():
        gen = torch.Generator().manual_seed(4321)
        x = (torch.randn(3, 5, 4, 3, generator=gen) * 3).to(device)  # wide enough to reach the clamp
        b = torch.randn(5, generator=gen).to(device)
        b_last = torch.randn(3, generator=gen).to(device)
        for act, dim, gain, clamp in cases:
            bias = b if dim == 1 else b_last
            # float32 both ways; 1e-5 covers exp/tanh/log1p rounding differences between libraries.
            problem = custom_ops.compare_with_reference(
                lambda x_, b_: candidate(x_, b_, dim, act, gain, clamp),
                lambda x_, b_: _bias_act_ref(x_, b_, dim, act, gain, clamp),
                [x, bias], atol=1e-5, rtol=1e-5)
            if problem:
                return f"act={act}, dim={dim}, gain={gain}, clamp={clamp}: {problem}"
    return None


def _cuda_call(x, b, dim, act, gain, clamp):
    gain = default_gain(act) if gain is None else float(gain)
    clamp = -1.0 if clamp is None or clamp < 0 else float(clamp)
    return _BiasActCuda.apply(x, b, dim % x.ndim, act, gain, clamp)


_KERNEL = custom_ops.op_kernel("bias_act", self_check, _cuda_call)
