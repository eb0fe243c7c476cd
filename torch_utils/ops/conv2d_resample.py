"""2-D convolution fused with FIR up/down-sampling (reference.md §2.4).

Upsampling runs as a stride-``up`` transposed convolution followed by FIR filtering at gain up²;
downsampling filters first and then runs a strided convolution (a 1×1 kernel is applied after the
decimation). Padding is adjusted so that the output is exactly ``up``× / (1/``down``)× the input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .upfirdn2d import Padding, parse_padding, upfirdn2d


def _conv(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    # flip_weight=False means a true convolution: conv2d correlates, so flip the kernel taps.
    if not flip_weight and (w.shape[2] > 1 or w.shape[3] > 1):
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor = None, up: int = 1, down: int = 1,
                    padding: Padding = 0, groups: int = 1, flip_weight: bool = True,
                    flip_filter: bool = False) -> torch.Tensor:
    """x [N, C_in, H, W], w [C_out, C_in/groups, kh, kw], f [fh, fw] FIR filter (needed when resampling)."""
    assert x.ndim == 4 and w.ndim == 4, (x.shape, w.shape)
    assert up >= 1 and down >= 1 and (f is not None or (up == 1 and down == 1))
    out_ch, in_ch_per_group, kh, kw = w.shape
    px0, px1, py0, py1 = parse_padding(padding)
    if up > 1:
        fw = f.shape[-1]
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fw + up - 1) // 2, py1 + (fw - up) // 2
    if down > 1:
        fw = f.shape[-1]
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fw - down + 1) // 2, py1 + (fw - down) // 2

    if kh == 1 and kw == 1 and down > 1 and up == 1:  # 1×1 downsampling: decimate, then convolve
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1 and up == 1:  # filter, then strided convolution
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:  # transposed strided convolution, then FIR filter at gain up²
        if groups == 1:
            wt = w.transpose(0, 1)
        else:
            wt = w.reshape(groups, out_ch // groups, in_ch_per_group, kh, kw).transpose(1, 2)
            wt = wt.reshape(groups * in_ch_per_group, out_ch // groups, kh, kw)
        px0, px1 = px0 - (kw - 1), px1 - (kw - up)
        py0, py1 = py0 - (kh - 1), py1 - (kh - up)
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = _conv(x, wt, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up,
                      flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:  # plain convolution
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, f if f is not None else torch.ones(1, 1, dtype=x.dtype, device=x.device),
                  padding=[px0, px1, py0, py1], flip_filter=flip_filter)
    return _conv(x, w, groups=groups, flip_weight=flip_weight)
