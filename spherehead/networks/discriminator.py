"""Camera-conditioned dual discriminators (reference.md §5): EG3D 'DualDiscriminator',
PanoHead 'MaskDualDiscriminatorV2' (image ⊕ raw ⊕ mask) and SphereHead 'HoloDiscriminator'
(image ⊕ raw ⊕ mask ⊕ parsing). Upstream constructor arguments and tensor names."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from torch_utils.ops.upfirdn2d import setup_filter
from .layers import Conv2dLayer, FullyConnectedLayer, MappingNetwork
from .registry import plain, register


class DiscriminatorBlock(nn.Module):
    """'resnet' block at ``resolution``: [fromrgb] → conv0 → conv1 (down 2), plus a 1×1 down skip;
    out = (skip(x) + conv1(conv0(x)))·√½ (the gains are applied inside the layers)."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 first_layer_idx: int = 0, architecture: str = "resnet", activation: str = "lrelu",
                 resample_filter=(1, 3, 3, 1), conv_clamp: Optional[float] = None, use_fp16: bool = False,
                 fp16_channels_last: bool = False, freeze_layers: int = 0):
        super().__init__()
        if architecture != "resnet":
            raise ValueError(f"discriminator architecture {architecture!r} is not supported (upstream uses 'resnet')")
        self.in_channels, self.resolution, self.use_fp16 = in_channels, resolution, use_fp16
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation, conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 resample_filter=resample_filter, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                resample_filter=resample_filter)

    def forward(self, x: Optional[torch.Tensor], img: torch.Tensor, force_fp32: bool = False):
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and img.device.type == "cuda") else torch.float32
        if self.in_channels == 0:
            x = self.fromrgb(img.to(dtype))
        else:
            x = x.to(dtype)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x, img


class MinibatchStdLayer(nn.Module):
    """Appends the std over groups of ``group_size`` samples (samples i, i+n, i+2n, … form a group)."""

    def __init__(self, group_size: int, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g != 0:
            raise ValueError(f"minibatch-std: batch size {n} must be divisible by the group size {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)
        return torch.cat([x, y.repeat(g, 1, h, w)], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """4×4 head: mbstd → conv 3×3 → fc → out; projection conditioning Σ(out·cmap)/√cmap_dim."""

    def __init__(self, in_channels: int, cmap_dim: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", mbstd_group_size: int = 4, mbstd_num_channels: int = 1,
                 activation: str = "lrelu", conv_clamp: Optional[float] = None):
        super().__init__()
        self.cmap_dim = cmap_dim
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, cmap: Optional[torch.Tensor]) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


def resize_to(img: torch.Tensor, size: int) -> torch.Tensor:
    """'antialiased' filtered resizing: bilinear, align_corners False, antialias True (§5.1)."""
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@register("DualDiscriminator")
class DualDiscriminator(nn.Module):
    """D({'image' [N,3,R,R], 'image_raw' [N,3,r,r], ...}, c [N,25]) -> logits [N, 1] (EG3D)."""

    EXTRA_CHANNELS = 0

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, architecture: str = "resnet",
                 channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 4,
                 conv_clamp: Optional[float] = None, cmap_dim: Optional[int] = None, disc_c_noise: float = 0,
                 block_kwargs: Optional[dict] = None, mapping_kwargs: Optional[dict] = None,
                 epilogue_kwargs: Optional[dict] = None, **extra):
        super().__init__()
        self.init_args = ()
        self.init_kwargs = plain(dict(c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels,
                                      architecture=architecture, channel_base=channel_base, channel_max=channel_max,
                                      num_fp16_res=num_fp16_res, conv_clamp=conv_clamp, cmap_dim=cmap_dim,
                                      disc_c_noise=disc_c_noise, block_kwargs=block_kwargs or {},
                                      mapping_kwargs=mapping_kwargs or {}, epilogue_kwargs=epilogue_kwargs or {},
                                      **extra))
        if cmap_dim is None:
            self.init_kwargs.pop("cmap_dim")
        self._configure(**extra)
        self.c_dim, self.img_resolution, self.disc_c_noise = c_dim, img_resolution, disc_c_noise
        self.img_channels = img_channels * 2 + self.EXTRA_CHANNELS
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        cmap_dim = channels[4] if cmap_dim is None else cmap_dim
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res], channels[res // 2],
                                       resolution=res, img_channels=self.img_channels, first_layer_idx=layer_idx,
                                       architecture=architecture, use_fp16=(res >= fp16_resolution),
                                       conv_clamp=conv_clamp, **(block_kwargs or {}))
            setattr(self, f"b{res}", block)
            layer_idx += 4 if res == img_resolution else 3
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **(mapping_kwargs or {}))
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, img_channels=self.img_channels,
                                        architecture=architecture, conv_clamp=conv_clamp, **(epilogue_kwargs or {}))
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))

    def _configure(self, **extra):
        if extra:
            raise TypeError(f"{type(self).__name__}: unexpected argument(s) {', '.join(sorted(extra))}")

    def input_keys(self) -> tuple:
        """The keys of the image dict this discriminator reads."""
        return ("image", "image_raw")

    def input_channels(self, img: dict) -> list:
        """The image tensors concatenated as D input, all at the ``image`` resolution."""
        size = img["image"].shape[-1]
        return [img["image"], resize_to(img["image_raw"], size)]

    def forward(self, img: dict, c: torch.Tensor, update_emas: bool = False, **block_kwargs) -> torch.Tensor:
        x_img = torch.cat(self.input_channels(img), dim=1)
        if x_img.shape[1] != self.img_channels or x_img.shape[-1] != self.img_resolution:
            raise ValueError(f"{type(self).__name__}: inputs give {list(x_img.shape)}, expected "
                             f"[N, {self.img_channels}, {self.img_resolution}, {self.img_resolution}]")
        x = None
        for res in self.block_resolutions:
            x, x_img = getattr(self, f"b{res}")(x, x_img, **block_kwargs)
        cmap = None
        if self.c_dim > 0:
            if self.disc_c_noise > 0:
                c = c + torch.randn_like(c) * c.std(0) * self.disc_c_noise
            cmap = self.mapping(None, c)
        return self.b4(x, cmap)


@register("MaskDualDiscriminatorV2")
class MaskDualDiscriminatorV2(DualDiscriminator):
    """Adds the mask: input = image ⊕ resized raw ⊕ (2·resized mask − 1) (PanoHead V2)."""

    def _configure(self, seg_resolution: int = 128, seg_channels: int = 1, **extra):
        self.seg_resolution, self.seg_channels = seg_resolution, seg_channels
        self.EXTRA_CHANNELS = seg_channels
        super()._configure(**extra)

    def input_keys(self) -> tuple:
        return super().input_keys() + ("image_mask",)

    def input_channels(self, img: dict) -> list:
        size = img["image"].shape[-1]
        return super().input_channels(img) + [2 * resize_to(img["image_mask"], size) - 1]


@register("HoloDiscriminator")
class HoloDiscriminator(MaskDualDiscriminatorV2):
    """Adds the parsing maps: input = image ⊕ raw ⊕ mask ⊕ (2·resized parsing − 1) (SphereHead)."""

    def _configure(self, parsing_channels: int = 20, **extra):
        self.parsing_channels = parsing_channels
        super()._configure(**extra)
        self.EXTRA_CHANNELS = self.seg_channels + parsing_channels

    def input_keys(self) -> tuple:
        return super().input_keys() + ("image_parsing",)

    def input_channels(self, img: dict) -> list:
        size = img["image"].shape[-1]
        return super().input_channels(img) + [2 * resize_to(img["image_parsing"], size) - 1]
