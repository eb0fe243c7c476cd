"""FIR up/down-sampling (upsample by zero insertion, pad, filter, decimate; reference.md §2.4)."""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

from .dispatch import resolve_impl

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
    resolve_impl("upfirdn2d", impl, x)
    return _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain)


def _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain):
    assert x.ndim == 4 and f.ndim == 2, (x.shape, f.shape)
    n, c, h, w = x.shape
    px0, px1, py0, py1 = parse_padding(padding)
    if up > 1:  # zero insertion: each sample followed by up-1 zeros along both axes
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:  # true convolution: conv2d correlates, so flip the taps
        f = f.flip([0, 1])
    weight = f[None, None].expand(c, 1, *f.shape)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


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
