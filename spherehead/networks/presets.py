"""Named network configurations: constructor kwargs in the upstream form (reference.md §2.1, §2.2, §5.2).

'released-512' is the official SphereHead configuration; 'fixture-small' is the reduced one of the
parity fixture; 'tiny' is the smallest sensible model, for tests and CPU smoke runs.
"""
from __future__ import annotations

import copy
from typing import Any, Dict

_RELEASED_RENDERING = {
    "image_resolution": 512, "disparity_space_sampling": False, "clamp_mode": "softplus",
    "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
    "c_gen_conditioning_zero": False, "gpc_reg_prob": 0.7, "c_scale": 1.0, "superresolution_noise_mode": "none",
    "density_reg": 0.0, "density_reg_p_dist": 0.004, "reg_type": "l1", "decoder_lr_mul": 1.0,
    "decoder_activation": "none", "use_torgb_raw": True, "triplane_size": 256, "triplane_depth": 3,
    "trans_reg": 10, "use_background": True, "sr_antialias": True, "depth_resolution": 48,
    "depth_resolution_importance": 48, "ray_start": 2.25, "ray_end": 3.3, "box_warp": 1.0,
    "avg_camera_radius": 2.7, "avg_camera_pivot": [0.0, 0.0, 0.0],
}

_SR_BY_RESOLUTION = {128: "SuperresolutionHybrid2X", 256: "SuperresolutionHybrid4X", 512: "SuperresolutionHybrid8XDC"}


def generator_kwargs(img_resolution: int = 512, channel_base: int = 32768, channel_max: int = 512,
                     triplane_size: int = 256, depth_resolution: int = 48, parsing: bool = True,
                     sr_num_fp16_res: int = 4, **rendering_overrides) -> Dict[str, Any]:
    """TriPlaneGenerator kwargs in the released layout; the SR module follows ``img_resolution``."""
    rendering = copy.deepcopy(_RELEASED_RENDERING)
    rendering.update(image_resolution=img_resolution, triplane_size=triplane_size,
                     superresolution_module=f"training.superresolution.{_SR_BY_RESOLUTION[img_resolution]}",
                     depth_resolution=depth_resolution, depth_resolution_importance=depth_resolution)
    rendering.update(rendering_overrides)
    base = dict(channel_base=channel_base, channel_max=channel_max, fused_modconv_default="inference_only")
    return dict(z_dim=512, w_dim=512, c_dim=25, img_resolution=img_resolution, img_channels=3,
                mapping_kwargs={"num_layers": 2}, architecture="skip", num_fp16_res=0, conv_clamp=None,
                sr_num_fp16_res=sr_num_fp16_res, sr_kwargs=dict(base), parsing_flag=parsing,
                rendering_kwargs=rendering, **base)


def discriminator_kwargs(img_resolution: int = 512, channel_base: int = 32768, channel_max: int = 512,
                         mbstd_group_size: int = 4, num_fp16_res: int = 4, seg_resolution: int = 128,
                         parsing_channels: int = 0) -> Dict[str, Any]:
    """MaskDualDiscriminatorV2 kwargs (HoloDiscriminator's when ``parsing_channels`` > 0)."""
    kw = dict(c_dim=25, img_resolution=img_resolution, img_channels=3, channel_base=channel_base,
              channel_max=channel_max, architecture="resnet", num_fp16_res=num_fp16_res,
              conv_clamp=256 if num_fp16_res > 0 else None, block_kwargs={"freeze_layers": 0}, mapping_kwargs={},
              epilogue_kwargs={"mbstd_group_size": mbstd_group_size}, seg_resolution=seg_resolution,
              seg_channels=1, disc_c_noise=0)
    if parsing_channels:
        kw["parsing_channels"] = parsing_channels
    return kw


PRESETS = {
    # name: (generator kwargs, discriminator class, discriminator kwargs, neural rendering resolution)
    "released-512": (generator_kwargs(), "MaskDualDiscriminatorV2", discriminator_kwargs(), 64),
    "fixture-small": (generator_kwargs(img_resolution=128, channel_base=2048, channel_max=64, triplane_size=64,
                                       depth_resolution=12, sr_num_fp16_res=0),
                      "MaskDualDiscriminatorV2",
                      discriminator_kwargs(128, 2048, 64, mbstd_group_size=2, num_fp16_res=0, seg_resolution=64), 32),
    "tiny": (generator_kwargs(img_resolution=128, channel_base=256, channel_max=16, triplane_size=16,
                              depth_resolution=6, sr_num_fp16_res=0),
             "MaskDualDiscriminatorV2",
             discriminator_kwargs(128, 256, 16, mbstd_group_size=2, num_fp16_res=0, seg_resolution=64), 16),
}


def build_preset(name: str, seed: int = 0):
    """(G, D) with random weights for a preset; deterministic in ``seed``."""
    import torch
    from .generator import TriPlaneGenerator
    from .registry import build_network
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    g_kwargs, d_class, d_kwargs, nrr = PRESETS[name]
    torch.manual_seed(seed)
    G = TriPlaneGenerator(**copy.deepcopy(g_kwargs))
    G.neural_rendering_resolution = nrr
    D = build_network({"class_name": d_class, "init_kwargs": copy.deepcopy(d_kwargs)})
    return G, D
