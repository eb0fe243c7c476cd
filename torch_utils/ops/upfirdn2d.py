"""FIR up/down-sampling (upsample by zero insertion, pad, filter, decimate; reference.md §2.4).

The CUDA kernel (upfirdn2d.cu, math in upfirdn2d.h) computes each output pixel directly. Its
backward is upfirdn2d again (the adjoint, see ``_UpFirDn2dCuda.backward``), so it is differentiable
to any order. It takes float32/float16/bfloat16 images (float32 arithmetic) and treats the filter as
a constant: a filter that requires grad runs the reference under impl='auto'.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .. import custom_ops

Padding = Union[int, Sequence[int]]


def setup_filter(taps: Sequence[float] = (1, 3, 3, 1), normalize: bool = True) -> torch.Tensor:
    """2-D separable filter [k, k] as the outer product of ``taps`` with itself, summing to 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = f.ger(f)
    if normalize:
        f = f / f.sum()
    return f


def parse_padding(padding: Padding):
    """int -> (p, p, p, p); [px, py] -> (px, px, py, py); [x0, x1, y0, y1] as is."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = list(padding)
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    assert len(padding) == 4, padding
    return tuple(padding)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, padding: Padding = 0,
              flip_filter: bool = False, gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """x [N, C, H, W], f [fh, fw] -> upsample by ``up``, pad, convolve with f, keep every ``down``-th."""
    if _use_cuda(impl, x, f):
        return _cuda_call(x, f, up, down, padding, flip_filter, gain)
    return _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain)


def _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain):
    """The definition (zero insertion, pad, convolve, decimate), computed without touching the zeros:
    upsampling as a stride-``up`` transposed convolution and decimation as a stride-``down`` convolution.
    Same sums as the literal recipe, about 1.5-2.5x faster on CPU (docs/benchmarks.md); tests/test_ops.py
    checks it against a loop over the definition."""
    assert x.ndim == 4 and f.ndim == 2, (x.shape, f.shape)
    n, c, h, w = x.shape
    fh, fw = f.shape
    px0, px1, py0, py1 = parse_padding(padding)
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if up > 1:
        # y[o] = sum_k g[k] z[o + k - p0], z the zero-inserted x (z[i*up] = x[i]) and g the correlation
        # taps (f flipped unless flip_filter). With k' = fh-1-k this is o = i*up + k' - (fh-1-p0): the
        # transposed convolution of x with taps flip(g), shifted by fh-1-p0 and cut (or zero-padded)
        # to the h*up + p0 + p1 - fh + 1 outputs of the recipe.
        taps = f.flip([0, 1]) if flip_filter else f
        x = F.conv_transpose2d(x, taps[None, None].expand(c, 1, fh, fw), stride=up, groups=c)
        cy, cx = fh - 1 - py0, fw - 1 - px0
        out_h, out_w = h * up + py0 + py1 - fh + 1, w * up + px0 + px1 - fw + 1
        x = F.pad(x, [-cx, out_w - (x.shape[3] - cx), -cy, out_h - (x.shape[2] - cy)])
        return x[:, :, ::down, ::down] if down > 1 else x
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    if not flip_filter:  # true convolution: conv2d correlates, so flip the taps
        f = f.flip([0, 1])
    # A stride-`down` convolution computes exactly the outputs that decimation would keep.
    return F.conv2d(x, f[None, None].expand(c, 1, fh, fw), groups=c, stride=down)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, impl: str = "auto") -> torch.Tensor:
    """2x (or ``up``x) FIR upsampling keeping the image centred: pads (fw+up-1)//2 and (fw-up)//2."""
    fw = f.shape[-1]
    p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
    return upfirdn2d(x, f, up=up, padding=[p0, p1, p0, p1], gain=up * up, impl=impl)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2, impl: str = "auto") -> torch.Tensor:
    """FIR downsampling: pads (fw-down+1)//2 and (fw-down)//2, filters, keeps every ``down``-th."""
    fw = f.shape[-1]
    p0, p1 = (fw - down + 1) // 2, (fw - down) // 2
    return upfirdn2d(x, f, down=down, padding=[p0, p1, p0, p1], impl=impl)


# ----------------------------------------------------------------------------- CUDA path

_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _use_cuda(impl: str, x: torch.Tensor, f: torch.Tensor) -> bool:
    def problem():
        if x.dtype not in _CUDA_DTYPES or x.ndim != 4:
            return f"x of dtype {x.dtype} and shape {list(x.shape)} (it takes float32/float16/bfloat16 [N, C, H, W])"
        if f.ndim != 2 or f.device != x.device:
            return f"a filter of shape {list(f.shape)} on {f.device}"
        if f.requires_grad and torch.is_grad_enabled():
            return "a filter that requires grad (the kernel treats the filter as a constant)"
        return None
    return _KERNEL.wanted(impl, x, problem)


def _correlation_filter(f: torch.Tensor, flip_filter: bool, gain: float) -> torch.Tensor:
    """The taps the kernel correlates with: f·gain, flipped unless flip_filter (the reference's true
    convolution), as contiguous float32."""
    g = f.detach().to(torch.float32) * float(gain)
    if not flip_filter:
        g = g.flip([0, 1])
    return g.contiguous()


class _UpFirDn2dCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f, up, down, pad, flip_filter, gain):
        px0, px1, py0, py1 = pad
        y = _KERNEL.module.upfirdn2d(x.contiguous(), _correlation_filter(f, flip_filter, gain), up, down,
                                     px0, px1, py0, py1)
        ctx.save_for_backward(f)
        ctx.args = (tuple(x.shape), up, down, pad, flip_filter, gain)
        return y

    @staticmethod
    def backward(ctx, dy):
        # The adjoint of y = decimate_down(correlate_g(pad(zero_insert_up(x)))) is
        #   dx = decimate_up(correlate_flip(g)(pad'(zero_insert_down(dy)))),
        # i.e. upfirdn2d with up and down swapped and the filter flipped once more (flip_filter
        # negated). Along one axis, output o reads u[o·down + t − p0]; so u[j] receives dy[o]·g[t]
        # for j = o·down + t − p0. Writing that as a correlation of the zero-inserted dy with the
        # flipped g gives a leading pad of fw − 1 − p0. The trailing pad is whatever makes the output
        # exactly in_w long: in_w·up − out_w·down + p0 − up + 1 (x: same with h). Gain unchanged.
        (f,) = ctx.saved_tensors
        (n, c, in_h, in_w), up, down, (px0, px1, py0, py1), flip_filter, gain = ctx.args
        dx = None
        if ctx.needs_input_grad[0]:
            out_h, out_w = dy.shape[2], dy.shape[3]
            fh, fw = f.shape
            pad = (fw - 1 - px0, in_w * up - out_w * down + px0 - up + 1,
                   fh - 1 - py0, in_h * up - out_h * down + py0 - up + 1)
            dx = _UpFirDn2dCuda.apply(dy, f, down, up, pad, not flip_filter, gain)
            assert dx.shape == (n, c, in_h, in_w), (dx.shape, (n, c, in_h, in_w))
        return dx, None, None, None, None, None, None


def _cuda_call(x, f, up, down, padding, flip_filter, gain):
    y = _UpFirDn2dCuda.apply(x, f, int(up), int(down), tuple(int(p) for p in parse_padding(padding)),
                             bool(flip_filter), float(gain))
    # Under autocast the reference's conv2d returns the autocast dtype; so does this path (computed in
    # float32, rounded once), so that both implementations hand the same dtype downstream.
    dtype = _autocast_dtype(x.device.type)
    return y if dtype is None or y.dtype == dtype else y.to(dtype)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype for ``device_type``, None when autocast is off there."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
        return torch.get_autocast_dtype(device_type) if enabled else None
    except TypeError:  # torch < 2.4: per-device functions
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def self_check(candidate: Callable, device: torch.device) -> Optional[str]:
    """Compare ``candidate(x, f, up, down, padding, flip_filter, gain)`` with the reference on tiny inputs
    on ``device`` (up, down, negative pads, an asymmetric filter both ways round): forward and gradient."""
    gen = torch.Generator().manual_seed(2468)
    f4 = setup_filter([1, 3, 3, 1])
    f_odd = torch.rand(3, 2, generator=gen) + 0.1  # asymmetric: catches a missing or extra flip
    cases = [(f4, 2, 1, [2, 1, 2, 1], False, 4.0), (f4, 1, 2, [1, 1, 1, 1], False, 1.0),
             (f_odd, 1, 1, [1, 0, -1, 2], False, 1.0), (f_odd, 3, 2, [0, 2, 1, 1], True, 2.0)]
    with custom_ops.autograd_enabled():
        x = torch.randn(2, 3, 7, 9, generator=gen).to(device)
        for f, up, down, pad, flip, gain in cases:
            f = f.to(device)
            # float32 both ways, sums of ≤ 16 products: 1e-5 is rounding headroom only.
            problem = custom_ops.compare_with_reference(
                lambda x_: candidate(x_, f, up, down, pad, flip, gain),
                lambda x_: _upfirdn2d_ref(x_, f, up, down, pad, flip, gain),
                [x], atol=1e-5, rtol=1e-5)
            if problem:
                return f"up={up}, down={down}, padding={pad}, flip_filter={flip}, filter {list(f.shape)}: {problem}"
    return None


_KERNEL = custom_ops.op_kernel("upfirdn2d", self_check, _cuda_call)
