"""Training configurations for ``train.py --cfg`` (reference.md §6.1 for 'released-512').

A preset fixes the network sizes and the defaults of the run; every default can be overridden by
a ``train.py`` flag. The superresolution variants produce 128, 256 or 512 px images
(spherehead.networks.superresolution), so 128 px is the smallest image size any preset can train at.

* ``released-512``: the official SphereHead networks and schedule (8 GPUs, batch 32).
* ``small-128``: a one-GPU research size (128 px, tri-planes 128², 24+24 samples per ray).
* ``tiny-128``: for tests and CPU smoke runs — 128 px output from a 16² neural rendering with
  8+8 samples per ray, 16-channel convolutions and 64-d latents; a few seconds per iteration
  on two CPU cores.
* ``demo-128``: the demo model bundled until 2026-11-23 (docs/demo_model.md) — the ``tiny-128``
  networks rendered at 32² with 12+12 samples per ray, and the blur, pose-conditioning and
  density-noise fades shortened to a few kimg so that a CPU run of tens of kimg gets past them.
* ``demo-wide-128``: ``demo-128``'s rendering and schedule with a wider backbone and D (channel
  base 2048, max 64) and 64² tri-planes. ``demo-128``'s D has 2 channels at 128 px for its 27
  input channels (image, raw image, mask, parsing) and 8 at 32 px, and its tri-plane synthesis 8
  channels at 32²; without ViCo that D sat at chance from 9 kimg on. Here D
  has 16 channels at 128 px and 64 from 32 px down, the tri-plane synthesis 64 channels up to 32²
  and 32 at 64². (The superresolution network's widths are fixed by the reference: 128 and 64.)
  About 1.6× ``demo-128``'s seconds per kimg on CPU.
  The bundled demo model (spherehead/assets). Its D without ViCo went to chance too (from about
  6 kimg), though trained alone it still separates fakes from reals: docs/demo_model.md.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from spherehead.networks.presets import discriminator_kwargs, generator_kwargs
from training.loss import PARSING_CLASSES, LossOptions
from training.options import TrainingOptions


@dataclass(frozen=True)
class TrainingPreset:
    """Networks and run defaults of one ``--cfg``."""
    name: str
    G_kwargs: Dict[str, Any]          # TriPlaneGenerator kwargs *with* the parsing head
    D_kwargs: Dict[str, Any]          # MaskDualDiscriminatorV2 kwargs (parsing channels added by networks())
    nrr: int                          # initial neural rendering resolution
    gpus: int
    batch: int
    batch_gpu: int
    kimg: float
    tick: float                       # kimg per tick
    snap: int                         # ticks per network snapshot
    img_snap: int                     # ticks per image grid
    back_repeat: int = 4
    mirror: bool = True
    workers: int = 3
    loss_defaults: Optional[Dict[str, Any]] = None   # LossOptions fields that differ from LossOptions()

    def networks(self, parsing: bool):
        """(G_kwargs, D class name, D_kwargs) with or without the parsing branch.

        Without parsing the generator has no parsing head and D is PanoHead's MaskDualDiscriminatorV2,
        so the ablation is the PanoHead-style model rather than one carrying untrained weights."""
        G_kwargs = copy.deepcopy(self.G_kwargs)
        G_kwargs["parsing_flag"] = bool(parsing)
        D_kwargs = copy.deepcopy(self.D_kwargs)
        if parsing:
            D_kwargs["parsing_channels"] = PARSING_CLASSES
        return G_kwargs, ("HoloDiscriminator" if parsing else "MaskDualDiscriminatorV2"), D_kwargs


def _small_latents(G_kwargs: Dict[str, Any], dim: int) -> Dict[str, Any]:
    """Shrink z/w (the superresolution blocks follow G's w_dim)."""
    G_kwargs.update(z_dim=dim, w_dim=dim)
    return G_kwargs


def _cpu_networks(channel_base: int, channel_max: int, triplane_size: int, depth_resolution: int):
    """(G_kwargs, D_kwargs) of the 128 px, 64-d-latent networks of the CPU presets (tiny-128, demo-128, demo-wide-128)."""
    G_kwargs = _small_latents(generator_kwargs(img_resolution=128, channel_base=channel_base, channel_max=channel_max,
                                               triplane_size=triplane_size, depth_resolution=depth_resolution,
                                               sr_num_fp16_res=0), 64)
    D_kwargs = discriminator_kwargs(128, channel_base, channel_max, mbstd_group_size=2, num_fp16_res=0, seg_resolution=64)
    return G_kwargs, D_kwargs


def _demo_preset(name: str, networks) -> TrainingPreset:
    """The demo runs' schedule: 32² rendering, batch 4 on one CPU process, snapshots every kimg, and
    fades of a few kimg instead of hundreds so that a CPU run of tens of kimg gets past them."""
    return TrainingPreset(name, *networks, nrr=32, gpus=1, batch=4, batch_gpu=4, kimg=100, tick=0.2, snap=5,
                          img_snap=5, back_repeat=1, mirror=True, workers=0,
                          loss_defaults=dict(blur_fade_kimg=2.0, gpc_reg_fade_kimg=4.0, density_noise_fade_kimg=2.0))


PRESETS: Dict[str, TrainingPreset] = {
    "released-512": TrainingPreset(
        "released-512", generator_kwargs(), discriminator_kwargs(), nrr=64, gpus=8, batch=32, batch_gpu=4,
        kimg=25000, tick=4, snap=50, img_snap=50),
    "small-128": TrainingPreset(
        "small-128",
        generator_kwargs(img_resolution=128, channel_base=16384, channel_max=256, triplane_size=128,
                         depth_resolution=24),
        discriminator_kwargs(128, 16384, 256, mbstd_group_size=4, seg_resolution=128),
        nrr=64, gpus=1, batch=16, batch_gpu=8, kimg=5000, tick=4, snap=25, img_snap=25),
    "tiny-128": TrainingPreset(
        "tiny-128", *_cpu_networks(256, 16, triplane_size=32, depth_resolution=8),
        nrr=16, gpus=1, batch=4, batch_gpu=4, kimg=1, tick=0.04, snap=5, img_snap=5, back_repeat=1,
        mirror=True, workers=1),
    "demo-128": _demo_preset("demo-128", _cpu_networks(256, 16, triplane_size=32, depth_resolution=12)),
    "demo-wide-128": _demo_preset("demo-wide-128", _cpu_networks(2048, 64, triplane_size=64, depth_resolution=12)),
}


def get_preset(name: str) -> TrainingPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown training config {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_names() -> list:
    return list(PRESETS)


def _pick(value, default):
    return default if value is None else value


def make_training_options(cfg: str, data: str, *, parsing: bool = True, batch: Optional[int] = None,
                          batch_gpu: Optional[int] = None, world_size: int = 1, kimg: Optional[float] = None,
                          tick: Optional[float] = None, snap: Optional[int] = None, img_snap: Optional[int] = None,
                          # snap / img_snap: ticks between snapshots / image grids, 0 = never
                          seed: int = 0, resume: Optional[str] = None, resume_blur: bool = False,
                          resume_kimg: float = 0.0,
                          vico_weight: float = 1.0, vico_min_angle: float = 30.0, vico_rampup: float = 0.0,
                          vico_r1: bool = False, parsing_drop: float = 0.0, gpc_prob: Optional[float] = 0.7, density_reg: float = 0.0,
                          back_repeat: Optional[int] = None, mirror: Optional[bool] = None, nrr: Optional[int] = None,
                          nrr_final: Optional[int] = None, lr_g: Optional[float] = None, lr_d: Optional[float] = None,
                          r1_gamma: Optional[float] = None, metrics: Sequence[str] = (), metrics_num_gen: int = 1000,
                          metrics_features: Optional[str] = None, metrics_data: Optional[str] = None) -> TrainingOptions:
    """TrainingOptions of preset ``cfg`` with ``train.py``'s overrides (None keeps the preset's value).

    ``batch_gpu`` defaults to ``batch / world_size`` capped at the preset's ``batch_gpu``. ``gpc_prob``
    None turns generator pose conditioning off: the loss then feeds zero conditioning, and the
    generator gets ``c_scale = 0`` so that it also ignores the camera at inference (upstream's
    ``c_gen_conditioning_zero`` would move the *render* camera to zero as well, §10 item 2).
    """
    p = get_preset(cfg)
    G_kwargs, D_class, D_kwargs = p.networks(parsing)
    rk = G_kwargs["rendering_kwargs"]
    rk.update(gpc_reg_prob=gpc_prob, density_reg=density_reg)   # recorded as upstream does (§2.2)
    if gpc_prob is None:
        rk["c_scale"] = 0.0
    batch = _pick(batch, p.batch)
    r1 = _pick(r1_gamma, 1.0)
    loss = LossOptions(**(p.loss_defaults or {}), r1_gamma=r1, nrr_initial=_pick(nrr, p.nrr), nrr_final=nrr_final, gpc_reg_prob=gpc_prob,
                       density_reg=density_reg, parsing=parsing, vico_weight=vico_weight,
                       vico_min_angle_deg=vico_min_angle, vico_rampup_kimg=vico_rampup, vico_r1=vico_r1,
                       parsing_drop_prob=parsing_drop)
    dataset_kwargs = dict(path=data, resolution=G_kwargs["img_resolution"], use_labels=True,
                          xflip=_pick(mirror, p.mirror), back_repeat=_pick(back_repeat, p.back_repeat),
                          load_masks=True, load_parsing=parsing)
    return TrainingOptions(
        dataset_kwargs=dataset_kwargs, G_kwargs=G_kwargs, D_class=D_class, D_kwargs=D_kwargs, loss_opts=loss,
        batch=batch, batch_gpu=_pick(batch_gpu, max(min(p.batch_gpu, batch // max(world_size, 1)), 1)),
        total_kimg=_pick(kimg, p.kimg), kimg_per_tick=_pick(tick, p.tick),
        snapshot_ticks=_pick(snap, p.snap) or None, image_snapshot_ticks=_pick(img_snap, p.img_snap) or None, G_lr=_pick(lr_g, 0.0025), D_lr=_pick(lr_d, 0.002),
        resume=resume, resume_blur=resume_blur, resume_kimg=resume_kimg, seed=seed, cfg=cfg, metrics=tuple(metrics),
        metrics_num_gen=metrics_num_gen, metrics_features=metrics_features, metrics_data=metrics_data)
