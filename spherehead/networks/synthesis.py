"""StyleGAN2 synthesis: modulated conv, 'skip' blocks, synthesis network and the backbone
generator (reference.md §2.3–2.4). Names and shapes follow the released modules."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from torch_utils.ops.bias_act import bias_act, default_gain
from torch_utils.ops.conv2d_resample import conv2d_resample
from torch_utils.ops.upfirdn2d import setup_filter, upsample2d
from .layers import FullyConnectedLayer, MappingNetwork


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: Optional[torch.Tensor] = None,
                     up: int = 1, padding: int = 0, resample_filter: Optional[torch.Tensor] = None,
                     demodulate: bool = True, flip_weight: bool = True, fused: bool = True) -> torch.Tensor:
    """x [N, I, H, W], weight [O, I, k, k], styles [N, I] -> [N, O, H·up, W·up].

    Fused: one grouped conv with per-sample weights. Non-fused: scale activations before and after a
    shared conv. Both compute the same function; noise is added after demodulation (§2.4).
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    assert styles.shape == (n, in_ch), (styles.shape, n, in_ch)
    if x.dtype == torch.float16 and demodulate:  # keep fp16 activations in range (§2.4, item 7)
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    w = dcoefs = None
    if demodulate or fused:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
    if not fused:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding, flip_weight=flip_weight)
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x
    if demodulate:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, padding=padding, groups=n, flip_weight=flip_weight)
    x = x.reshape(n, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


class SynthesisLayer(nn.Module):
    """Modulated 3×3 conv + noise + bias + lrelu (+clamp). Tensors: affine.*, weight, bias,
    noise_strength [], buffers noise_const [R, R] and resample_filter [4, 4]."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu", resample_filter=(1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, channels_last: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.resolution, self.up = in_channels, out_channels, resolution, up
        self.use_noise, self.activation, self.conv_clamp = use_noise, activation, conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = default_gain(activation)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1.0) -> torch.Tensor:
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1), fused=fused_modconv)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1×1 conv without demodulation (styles scaled by 1/√(in·k²)) + bias (+clamp)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: Optional[float] = None, channels_last: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.conv_clamp = in_channels, out_channels, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


def resolve_fused(fused_modconv, default: str, training: bool) -> bool:
    """'inference_only' fuses in eval mode only; both paths compute the same function."""
    value = default if fused_modconv is None else fused_modconv
    if value == "inference_only":
        return not training
    return bool(value)


class SynthesisBlock(nn.Module):
    """One 'skip' block at ``resolution``: (const | conv0 [up]) → conv1 → torgb, img = up(img) + torgb.

    ``up=1`` gives the no-upsampling variant used first in the 2X/4X superresolution modules.
    Consumes num_conv + num_torgb ws: [N, num_conv + 1, w_dim].
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter=(1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, use_fp16: bool = False, fp16_channels_last: bool = False,
                 fused_modconv_default="inference_only", up: int = 2, **layer_kwargs):
        super().__init__()
        if architecture != "skip":
            raise ValueError(f"synthesis architecture {architecture!r} is not supported (the released model uses 'skip')")
        self.in_channels, self.resolution, self.img_channels = in_channels, resolution, img_channels
        self.is_last, self.use_fp16, self.up = is_last, use_fp16, up
        self.fused_modconv_default = fused_modconv_default
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=up,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, **layer_kwargs)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_torgb = 1

    def forward(self, x, img, ws: torch.Tensor, force_fp32: bool = False, fused_modconv=None,
                update_emas: bool = False, noise_mode: str = "random"):
        assert ws.shape[1] == self.num_conv + self.num_torgb, (ws.shape, self.num_conv)
        w_iter = iter(ws.unbind(dim=1))
        # fp16 only on CUDA (reference.md §2.4 "fp16"): CPU runs every block in fp32.
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and ws.device.type == "cuda") else torch.float32
        fused = resolve_fused(fused_modconv, self.fused_modconv_default, self.training)
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            x = self.conv0(x.to(dtype), next(w_iter), noise_mode=noise_mode, fused_modconv=fused)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused)
        if img is not None and self.up > 1:
            img = upsample2d(img, self.resample_filter, up=self.up)
        y = self.torgb(x, next(w_iter), fused_modconv=fused).to(torch.float32)
        img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> img [N, img_channels, R, R]; blocks b4 … b{R},
    channels min(channel_base / res, channel_max)."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 4, **block_kwargs):
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if img_resolution < 4 or 2 ** log2 != img_resolution:
            raise ValueError(f"synthesis img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=(res == img_resolution),
                                   use_fp16=(res >= fp16_resolution), **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, **block_kwargs) -> torch.Tensor:
        assert ws.ndim == 3 and ws.shape[1] == self.num_ws, f"ws must be [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}"
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            # Each block reads num_conv + 1 ws starting at w_idx, then advances by num_conv (§2.4).
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), **block_kwargs)
            w_idx += block.num_conv
        return img


class StyleGAN2Backbone(nn.Module):
    """The StyleGAN2 'Generator' used as tri-plane backbone: ``synthesis`` and ``mapping`` children."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: Optional[dict] = None, **synthesis_kwargs):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, num_ws=self.num_ws, **(mapping_kwargs or {}))
