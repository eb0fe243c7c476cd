"""Superresolution modules (reference.md §2.9): raw RGB + 32-channel features at the neural
rendering resolution -> the final image, through two 'skip' synthesis blocks that use ws[:, -1]."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from torch_utils.ops.upfirdn2d import setup_filter
from .synthesis import SynthesisBlock

# upstream module path -> (img_resolution, input_resolution, (block0 out, block1 out),
#                          block0 upsamples?, has a top-level resample_filter buffer?)
SR_VARIANTS = {
    "SuperresolutionHybrid2X": (128, 64, (128, 64), False, True),
    "SuperresolutionHybrid4X": (256, 128, (128, 64), False, True),
    "SuperresolutionHybrid8X": (512, 128, (128, 64), True, True),
    "SuperresolutionHybrid8XDC": (512, 128, (256, 128), True, False),
}


def sr_class_name(module_path: str) -> str:
    """'training.superresolution.SuperresolutionHybrid8XDC' -> 'SuperresolutionHybrid8XDC' (validated)."""
    name = str(module_path).rsplit(".", 1)[-1]
    if name not in SR_VARIANTS:
        raise ValueError(f"rendering_kwargs.superresolution_module: unsupported {module_path!r}; "
                         f"supported: {', '.join(sorted(SR_VARIANTS))}")
    return name


class Superresolution(nn.Module):
    """rgb [N, 3, r, r], x [N, C, r, r], ws [N, K, w_dim] -> image [N, 3, R, R] (R = img_resolution).

    Inputs not at ``input_resolution`` are first resized (bilinear, antialias = sr_antialias).
    Blocks run fp16 with clamp 256 on CUDA when sr_num_fp16_res > 0.
    """

    def __init__(self, variant: str, channels: int, img_resolution: int, sr_num_fp16_res: int = 0,
                 sr_antialias: bool = True, channel_base: Optional[int] = None, channel_max: Optional[int] = None,
                 w_dim: int = 512, **block_kwargs):
        super().__init__()
        out_res, in_res, (c0, c1), up0, has_filter = SR_VARIANTS[variant]
        if img_resolution != out_res:
            raise ValueError(f"{variant} produces {out_res}px images, but img_resolution is {img_resolution}")
        self.variant, self.input_resolution, self.sr_antialias = variant, in_res, sr_antialias
        use_fp16 = sr_num_fp16_res > 0
        clamp = 256 if use_fp16 else None
        res0 = in_res * 2 if up0 else in_res
        self.block0 = SynthesisBlock(channels, c0, w_dim=w_dim, resolution=res0, img_channels=3, is_last=False,
                                     use_fp16=use_fp16, conv_clamp=clamp, up=2 if up0 else 1, **block_kwargs)
        self.block1 = SynthesisBlock(c0, c1, w_dim=w_dim, resolution=img_resolution, img_channels=3, is_last=True,
                                     use_fp16=use_fp16, conv_clamp=clamp, **block_kwargs)
        if has_filter:
            self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))

    def forward(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, **block_kwargs) -> torch.Tensor:
        ws = ws[:, -1:, :].repeat(1, 3, 1)  # every SR layer uses the last w (§2.9)
        if x.shape[-1] != self.input_resolution:
            size = (self.input_resolution, self.input_resolution)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.sr_antialias)
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=self.sr_antialias)
        x, rgb = self.block0(x, rgb, ws, **block_kwargs)
        x, rgb = self.block1(x, rgb, ws, **block_kwargs)
        return rgb
