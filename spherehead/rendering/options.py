"""Typed rendering options, converted to and from the upstream ``rendering_kwargs`` dict (§2.2)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Union

RayLimit = Union[float, str]  # a depth in world units, or 'auto' (ray–box intersection)

# Keys the upstream code indexes directly: a checkpoint without them is broken (§2.2).
REQUIRED_KEYS = ("triplane_size", "triplane_depth", "superresolution_module", "sr_antialias", "decoder_activation",
                 "c_gen_conditioning_zero", "superresolution_noise_mode", "ray_start", "ray_end", "box_warp",
                 "depth_resolution", "depth_resolution_importance", "disparity_space_sampling", "clamp_mode")


@dataclass
class RenderingOptions:
    """Everything the generator and renderer read from ``rendering_kwargs``.

    Defaults of optional keys are the upstream code's defaults, not the training presets: in
    particular a missing ``c_scale`` means 0, i.e. conditioning silently zeroed (§2.2, §10 item 2).
    """
    triplane_size: int = 256
    triplane_depth: int = 3
    superresolution_module: str = "training.superresolution.SuperresolutionHybrid8XDC"
    sr_antialias: bool = True
    decoder_activation: str = "none"
    c_gen_conditioning_zero: bool = False
    superresolution_noise_mode: str = "none"
    ray_start: RayLimit = 2.25
    ray_end: RayLimit = 3.3
    box_warp: float = 1.0
    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    disparity_space_sampling: bool = False
    clamp_mode: str = "softplus"
    image_resolution: int = 512
    decoder_lr_mul: float = 1.0
    use_torgb_raw: bool = False
    use_background: bool = False
    c_scale: float = 0.0
    density_noise: float = 0.0
    white_back: bool = False
    avg_camera_radius: float = 2.7
    avg_camera_pivot: tuple = (0.0, 0.0, 0.0)
    extra: Dict[str, Any] = field(default_factory=dict)  # training-only keys (gpc_reg_prob, trans_reg, ...)

    @classmethod
    def from_kwargs(cls, kwargs: Dict[str, Any], source: str = "rendering_kwargs") -> "RenderingOptions":
        missing = [k for k in REQUIRED_KEYS if k not in kwargs]
        if missing:
            raise ValueError(f"{source}: missing required key(s) {', '.join(missing)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in kwargs.items() if k in names}
        if "avg_camera_pivot" in known:
            known["avg_camera_pivot"] = tuple(float(v) for v in known["avg_camera_pivot"])
        opts = cls(**known, extra={k: v for k, v in kwargs.items() if k not in names})
        opts.validate(source)
        return opts

    def validate(self, source: str = "rendering_kwargs") -> None:
        if self.clamp_mode != "softplus":
            raise ValueError(f"{source}.clamp_mode must be 'softplus', got {self.clamp_mode!r}")
        if self.triplane_depth != 3:
            raise ValueError(f"{source}.triplane_depth must be 3 for spherical tri-planes (it is the plane count, "
                             f"reference.md §3.4), got {self.triplane_depth}")
        auto = (self.ray_start == "auto", self.ray_end == "auto")
        if auto[0] != auto[1]:
            raise ValueError(f"{source}: ray_start and ray_end must both be 'auto' or both numbers")
        if not auto[0] and not float(self.ray_end) > float(self.ray_start):
            raise ValueError(f"{source}: ray_end ({self.ray_end}) must exceed ray_start ({self.ray_start})")
        if self.depth_resolution < 2 or self.depth_resolution_importance < 0:
            raise ValueError(f"{source}: depth_resolution must be >= 2 and depth_resolution_importance >= 0")

    def to_kwargs(self) -> Dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["avg_camera_pivot"] = list(self.avg_camera_pivot)
        out.update(self.extra)
        return out
