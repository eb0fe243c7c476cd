"""The SphereHead generator (upstream class name 'TriPlaneGenerator'; reference.md §2)."""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..rendering.options import RenderingOptions
from ..rendering.ray_sampler import sample_rays
from ..rendering.renderer import ImportanceRenderer
from .decoder import OSGDecoder
from .layers import Conv2dLayer, MappingNetwork
from .registry import plain, register
from .superresolution import Superresolution, sr_class_name
from .synthesis import StyleGAN2Backbone, SynthesisNetwork, ToRGBLayer

PLANE_FEATURES = 32   # channels per plane (§2.3)
BACKBONE_CHANNELS = 512  # backbone output channels, fixed upstream whatever channel_max is
PARSING_CLASSES = 20


class _LiveRenderingKwargs(dict):
    """``G.rendering_kwargs`` as a dict; item assignment re-validates and updates ``G.rendering``
    (so EG3D-style scripts that set ``G.rendering_kwargs['ray_start'] = 2.35`` keep working)."""

    def __init__(self, owner: "TriPlaneGenerator"):
        super().__init__(owner.rendering.to_kwargs())
        object.__setattr__(self, "_owner", owner)

    def __setitem__(self, key, value):
        updated = dict(self)
        updated[key] = value
        self._owner.rendering = RenderingOptions.from_kwargs(updated)
        super().__setitem__(key, value)


def shift_camera(c: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """c [N, 25] with delta [N, 3] added to the camera centre entries 3, 7, 11."""
    offset = torch.zeros_like(c)
    offset[:, [3, 7, 11]] = delta.to(c.dtype)
    return c + offset


def _plane_head(in_channels: int, out_channels: int) -> nn.Sequential:
    # ConvA/ConvB: two bias-free linear 1×1 convs 512 -> 256 -> 96 (§2.3).
    return nn.Sequential(Conv2dLayer(in_channels, 256, kernel_size=1, bias=False, activation="linear"),
                         Conv2dLayer(256, out_channels, kernel_size=1, bias=False, activation="linear"))


@register("TriPlaneGenerator")
class TriPlaneGenerator(nn.Module):
    """z [N, z_dim], c [N, 25] -> images via dual spherical tri-planes.

    Constructor arguments are the upstream ones, so a pickle's init kwargs rebuild it directly.
    """

    OPTIONAL_BUFFERS = ("dataset_label_std",)  # added by the training loop after construction (§2.3)

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 sr_num_fp16_res: int = 0, mapping_kwargs: Optional[dict] = None,
                 rendering_kwargs: Optional[dict] = None, sr_kwargs: Optional[dict] = None,
                 parsing_flag: bool = False, **synthesis_kwargs):
        super().__init__()
        self.init_args = ()
        self.init_kwargs = plain(dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                      img_channels=img_channels, sr_num_fp16_res=sr_num_fp16_res,
                                      mapping_kwargs=mapping_kwargs or {}, rendering_kwargs=rendering_kwargs or {},
                                      sr_kwargs=sr_kwargs or {}, parsing_flag=parsing_flag, **synthesis_kwargs))
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels, self.parsing_flag = img_resolution, img_channels, parsing_flag
        self.rendering = RenderingOptions.from_kwargs(copy.deepcopy(rendering_kwargs or {}), "rendering_kwargs")
        opts = self.rendering
        self.neural_rendering_resolution = 64
        self.renderer = ImportanceRenderer()
        self.backbone = StyleGAN2Backbone(z_dim, c_dim, w_dim, img_resolution=opts.triplane_size,
                                          img_channels=BACKBONE_CHANNELS, mapping_kwargs=mapping_kwargs,
                                          **synthesis_kwargs)
        plane_channels = PLANE_FEATURES * opts.triplane_depth
        self.ConvA = _plane_head(BACKBONE_CHANNELS, plane_channels)
        self.ConvB = _plane_head(BACKBONE_CHANNELS, plane_channels)
        sr_kwargs = {"w_dim": w_dim, **(sr_kwargs or {})}  # upstream hard-codes 512; follow G's w_dim
        self.superresolution = Superresolution(sr_class_name(opts.superresolution_module), channels=PLANE_FEATURES,
                                               img_resolution=img_resolution, sr_num_fp16_res=sr_num_fp16_res,
                                               sr_antialias=opts.sr_antialias, **sr_kwargs)
        self.decoder = OSGDecoder(PLANE_FEATURES, {"decoder_lr_mul": opts.decoder_lr_mul,
                                                   "decoder_output_dim": PLANE_FEATURES,
                                                   "decoder_activation": opts.decoder_activation})
        self.torgb = ToRGBLayer(PLANE_FEATURES, 3, w_dim) if opts.use_torgb_raw else None
        self.bcg_synthesis = None
        if opts.use_background:
            bcg_kwargs = dict(synthesis_kwargs)
            bcg_kwargs["channel_base"] = bcg_kwargs.get("channel_base", 32768) // 2  # halved upstream (§2.3)
            self.bcg_synthesis = SynthesisNetwork(w_dim, img_resolution=self.superresolution.input_resolution,
                                                  img_channels=PLANE_FEATURES, **bcg_kwargs)
        self.t_mapping = MappingNetwork(z_dim, c_dim, 3, num_ws=1, last_activation="linear", lr_multiplier=1.0,
                                        **(mapping_kwargs or {}))
        self.toparsing = ToRGBLayer(PLANE_FEATURES, PARSING_CLASSES, w_dim) if parsing_flag else None

    # ----- attributes that are not constructor arguments -----
    @property
    def rendering_kwargs(self) -> dict:
        return _LiveRenderingKwargs(self)

    @rendering_kwargs.setter
    def rendering_kwargs(self, value: dict) -> None:
        self.rendering = RenderingOptions.from_kwargs(dict(value))

    def get_attributes(self) -> dict:
        return {"rendering_kwargs": self.rendering.to_kwargs(),
                "neural_rendering_resolution": int(self.neural_rendering_resolution)}

    def set_attributes(self, attrs: dict) -> None:
        if "rendering_kwargs" in attrs:
            self.rendering_kwargs = attrs["rendering_kwargs"]
        if "neural_rendering_resolution" in attrs:
            self.neural_rendering_resolution = int(attrs["neural_rendering_resolution"])

    # ----- conditioning -----
    def _conditioning(self, c: torch.Tensor) -> torch.Tensor:
        if c.ndim != 2 or c.shape[1] != self.c_dim:
            raise ValueError(f"camera labels must be [N, {self.c_dim}], got {list(c.shape)}")
        return torch.zeros_like(c) if self.rendering.c_gen_conditioning_zero else c

    def mapping(self, z, c, truncation_psi: float = 1, truncation_cutoff: Optional[int] = None,
                update_emas: bool = False) -> torch.Tensor:
        """z [N, z_dim], c [N, 25] -> ws [N, num_ws, w_dim]; c is zeroed if c_gen_conditioning_zero
        and scaled by c_scale (a missing c_scale means 0, as upstream, §10 item 2)."""
        c = self._conditioning(c)
        return self.backbone.mapping(z, c * self.rendering.c_scale, truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff, update_emas=update_emas)

    def apply_delta_c(self, z, c, truncation_psi: float = 1, truncation_cutoff: Optional[int] = None,
                      update_emas: bool = False):
        """Camera self-adaptation (§2.5): returns (c_adapted [N, 25], delta_c [N, 3]) with Δc added to
        the camera centre entries 3, 7, 11. As upstream, c_adapted starts from the *zeroed* label
        when c_gen_conditioning_zero is set (§10 item 2); :meth:`forward` does not render with that."""
        c = self._conditioning(c)
        delta = self.t_mapping(z, c * self.rendering.c_scale, truncation_psi=truncation_psi,
                               truncation_cutoff=truncation_cutoff, update_emas=update_emas).squeeze(1)
        return shift_camera(c, delta), delta

    # ----- synthesis -----
    def planes(self, ws: torch.Tensor, noise_mode: str = "const", update_emas: bool = False,
               fused_modconv=None) -> torch.Tensor:
        """ws -> dual spherical tri-planes [N, 2, 3, 32, T, T] (channel index = plane·32 + feature)."""
        p = self.backbone.synthesis(ws, noise_mode=noise_mode, update_emas=update_emas, fused_modconv=fused_modconv)
        n, _, h, w = p.shape
        shape = (n, 1, self.rendering.triplane_depth, PLANE_FEATURES, h, w)
        return torch.cat([self.ConvA(p).view(shape), self.ConvB(p).view(shape)], dim=1)

    def _background(self, ws: torch.Tensor, ws_bcg, noise_mode, update_emas, fused_modconv) -> torch.Tensor:
        k = self.bcg_synthesis.num_ws
        ws_bcg = (ws if ws_bcg is None else ws_bcg)[:, :k]
        if ws_bcg.shape[1] < k:  # pad by repeating the last w
            ws_bcg = torch.cat([ws_bcg, ws_bcg[:, -1:].repeat(1, k - ws_bcg.shape[1], 1)], dim=1)
        return self.bcg_synthesis(ws_bcg, noise_mode=noise_mode, update_emas=update_emas, fused_modconv=fused_modconv)

    def scene(self, ws: torch.Tensor, noise_mode: str = "const", ws_bcg: Optional[torch.Tensor] = None,
              fused_modconv=None) -> dict:
        """What :meth:`synthesis` computes from the latent alone, whatever the camera: ``{'planes':
        [N, 2, 3, 32, T, T], 'background': [N, C, S, S] or None}``. Pass it to ``synthesis(scene=...)``
        to render one latent from many cameras without rerunning the backbones (turntables, multi-view
        samples); with constant noise the images are those of ``synthesis`` without it."""
        planes = self.planes(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        background = None if self.bcg_synthesis is None else \
            self._background(ws, ws_bcg, noise_mode, False, fused_modconv)
        return {"planes": planes, "background": background}

    @staticmethod
    def _from_scene(scene: dict, key: str, n: int, expand: bool = True) -> torch.Tensor:
        """``scene[key]`` for a batch of ``n`` renders: batch 1 is repeated (left to broadcasting when not
        ``expand``); any other batch must be ``n``."""
        value = scene[key]
        if value.shape[0] != n:
            if value.shape[0] != 1:
                raise ValueError(f"scene[{key!r}] has batch {value.shape[0]}; expected 1 or {n} (the ws batch)")
            if expand:
                value = value.expand(n, *value.shape[1:]).contiguous()
        return value

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, neural_rendering_resolution: Optional[int] = None,
                  noise_mode: str = "const", deterministic: bool = False, update_emas: bool = False,
                  ws_bcg: Optional[torch.Tensor] = None, fused_modconv=None, scene: Optional[dict] = None) -> dict:
        """ws [N, num_ws, w_dim], c [N, 25] (render camera) -> dict of images (§2.5, §4.8).

        ``neural_rendering_resolution`` None uses the attribute (never modified here).
        ``deterministic`` fixes the ray samples: coarse depths on the linspace, importance u on
        linspace(0, 1) (fixture README). Default is random, as in training.
        ``scene``: :meth:`scene` of these ``ws`` (batch N, or 1 for one latent seen from N cameras);
        None computes it here.
        """
        if c.ndim != 2 or c.shape[1] != 25:
            raise ValueError(f"render camera labels must be [N, 25], got {list(c.shape)}")
        res = int(neural_rendering_resolution or self.neural_rendering_resolution)
        n = ws.shape[0]
        origins, dirs = sample_rays(c[:, :16].view(-1, 4, 4), c[:, 16:25].view(-1, 3, 3), res)
        planes = self.planes(ws, noise_mode=noise_mode, update_emas=update_emas, fused_modconv=fused_modconv) \
            if scene is None else self._from_scene(scene, "planes", n)
        feats, depth, weight_sum = self.renderer(planes, self.decoder, origins, dirs, self.rendering,
                                                 deterministic=deterministic)
        feature_image = feats.permute(0, 2, 1).reshape(n, feats.shape[-1], res, res).contiguous()
        depth_image = depth.permute(0, 2, 1).reshape(n, 1, res, res)
        weight_image = weight_sum.permute(0, 2, 1).reshape(n, 1, res, res)
        if self.rendering.decoder_activation == "sigmoid":
            feature_image = feature_image * 2 - 1
        if self.bcg_synthesis is not None:  # composite in feature space (§10 item 10)
            bcg = self._background(ws, ws_bcg, noise_mode, update_emas, fused_modconv) if scene is None \
                else self._from_scene(scene, "background", n, expand=False)   # batch 1 broadcasts below
            bcg = F.interpolate(bcg, size=feature_image.shape[2:], mode="bilinear",
                                align_corners=False, antialias=self.rendering.sr_antialias)
            feature_image = feature_image + (1 - weight_image) * bcg
        if self.torgb is not None:
            rgb_image = self.torgb(feature_image, ws[:, -1], fused_modconv=False).to(torch.float32)
        else:
            rgb_image = feature_image[:, :3]
        image = self.superresolution(rgb_image, feature_image, ws, noise_mode=self.rendering.superresolution_noise_mode,
                                     fused_modconv=fused_modconv)
        out = {"image": image, "image_raw": rgb_image, "image_depth": depth_image,
               "image_mask": weight_image * (1 + 2 * 0.001) - 0.001}
        if self.toparsing is not None:
            logits = self.toparsing(feature_image, ws[:, -1], fused_modconv=False).to(torch.float32)
            out["image_parsing"] = torch.softmax(logits, dim=1)
        return out

    def sample_mixed(self, coordinates: torch.Tensor, directions: torch.Tensor, ws: torch.Tensor,
                     noise_mode: str = "const", update_emas: bool = False) -> dict:
        """Density queries at world points [N, M, 3]: {'rgb' [N, M, 32], 'sigma' [N, M, 1] raw}.
        No crop mask here (§2.5)."""
        planes = self.planes(ws, noise_mode=noise_mode, update_emas=update_emas)
        return self.renderer.run_model(planes, self.decoder, coordinates, directions, self.rendering)

    def sample(self, coordinates, directions, z, c, truncation_psi: float = 1, truncation_cutoff=None,
               noise_mode: str = "const", update_emas: bool = False) -> dict:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.sample_mixed(coordinates, directions, ws, noise_mode=noise_mode, update_emas=update_emas)

    def forward(self, z, c, truncation_psi: float = 1, truncation_cutoff: Optional[int] = None,
                update_emas: bool = False, **synthesis_kwargs) -> dict:
        """mapping + camera self-adaptation + synthesis: ``c`` conditions the mapping and, moved by Δc,
        is the render camera.

        Unlike upstream, the render camera is the caller's ``c`` even when c_gen_conditioning_zero is
        set (upstream would render from an all-zero camera there, i.e. NaNs); otherwise identical.
        """
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff, update_emas=update_emas)
        _, delta = self.apply_delta_c(z, c, truncation_psi, truncation_cutoff, update_emas=update_emas)
        return self.synthesis(ws, shift_camera(c, delta), update_emas=update_emas, **synthesis_kwargs)
