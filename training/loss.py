"""SphereHead training loss: non-saturating logistic GAN loss with R1, the EG3D/PanoHead schedules,
camera self-adaptation, the parsing branch and ViCo (reference.md §6).

Phases, as in the StyleGAN2 family: 'Gmain' (G adversarial + Δc translation regulariser),
'Greg' (density regulariser), 'Dmain' (fake, real and ViCo terms), 'Dreg' (R1), and the
combined 'Gboth' / 'Dboth' used when a regulariser is not lazy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from spherehead.networks.discriminator import resize_to
from spherehead.networks.generator import shift_camera

PARSING_CLASSES = 20


@dataclass
class LossOptions:
    """Every switch of the loss; defaults are the PanoHead/SphereHead training presets (§6.1–6.2)."""
    r1_gamma: float = 1.0             # R1 on image + raw image
    r1_gamma_mask: float = 1.0        # R1 on the mask channel (PanoHead's γ_seg)
    r1_gamma_parsing: float = 1.0     # R1 on the parsing channels (HoloDiscriminator only)
    blur_init_sigma: float = 10.0
    blur_fade_kimg: float = 200.0     # 0 disables the blur
    nrr_initial: int = 64             # neural rendering resolution at the start
    nrr_final: Optional[int] = None   # None keeps nrr_initial
    nrr_fade_kimg: float = 1000.0
    gpc_reg_prob: Optional[float] = 0.7   # None disables pose conditioning (conditioning camera zeroed)
    gpc_reg_fade_kimg: float = 1000.0     # 0: p = gpc_reg_prob from the start
    bcg_reg_prob: float = 0.2             # per-sample background ws swap
    density_noise_fade_kimg: float = 200.0  # 0 disables density noise
    density_reg: float = 0.0              # L1 density smoothness weight (0 disables)
    density_reg_p_dist: float = 0.004
    trans_reg: float = 10.0               # ‖mean Δc‖² weight (camera self-adaptation)
    parsing: bool = True                  # train the parsing branch through D's parsing channels
    parsing_drop_prob: float = 0.0        # per sample and D call, D's parsing channels zeroed with this chance
    # ViCo (SphereHead §ViCo; details are our choices, see docs/training.md):
    vico_weight: float = 1.0              # 0 disables the term (the ablation)
    vico_min_angle_deg: float = 30.0      # pairs whose camera directions are closer are not negatives
    vico_rampup_kimg: float = 0.0         # linear ramp of the weight from 0 (0: full weight at once)
    vico_r1: bool = False                 # whether R1 also sees real images with shuffled cameras
    noise_mode: str = "random"            # backbone noise while training


@dataclass
class Schedule:
    """Per-iteration values derived from cur_nimg (§6.2)."""
    blur_sigma: float
    neural_rendering_resolution: int
    gpc_prob: float
    density_noise: float
    vico_scale: float


def schedule(opts: LossOptions, cur_nimg: int, fade_disabled: bool = False) -> Schedule:
    """``fade_disabled`` (a resumed fine-tune without --resume-blur) skips the blur and GPC fades (§6.2)."""
    kimg = cur_nimg / 1000
    blur = 0.0
    if opts.blur_fade_kimg > 0 and not fade_disabled:
        blur = opts.blur_init_sigma * max(1 - kimg / opts.blur_fade_kimg, 0.0)
    nrr = opts.nrr_initial
    if opts.nrr_final is not None:
        a = min(kimg / opts.nrr_fade_kimg, 1.0) if opts.nrr_fade_kimg > 0 else 1.0
        nrr = int(round(opts.nrr_initial * (1 - a) + opts.nrr_final * a))
    gpc = 0.0
    if opts.gpc_reg_prob is not None:
        a = 1.0 if (fade_disabled or opts.gpc_reg_fade_kimg <= 0) else min(kimg / opts.gpc_reg_fade_kimg, 1.0)
        gpc = (1 - a) * 1 + a * opts.gpc_reg_prob
    noise = max(1 - kimg / opts.density_noise_fade_kimg, 0.0) if opts.density_noise_fade_kimg > 0 else 0.0
    vico = 1.0 if opts.vico_rampup_kimg <= 0 else min(kimg / opts.vico_rampup_kimg, 1.0)
    return Schedule(blur, nrr, gpc, noise, vico)


def blur_images(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable blur with taps 2^(−(i/σ)²), |i| ≤ ⌊3σ⌋, normalised, zero padding (§6.2)."""
    size = int(sigma * 3)
    if sigma <= 0 or size < 1:
        return img
    taps = torch.arange(-size, size + 1, device=img.device, dtype=torch.float32).div(sigma).square().neg().exp2()
    taps = (taps / taps.sum()).to(img.dtype)
    c = img.shape[1]
    img = F.conv2d(img, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, size), groups=c)
    return F.conv2d(img, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(size, 0), groups=c)


def camera_directions(c: torch.Tensor) -> torch.Tensor:
    """Unit vectors from the look-at target to each camera centre: c [N, 25] -> [N, 3]."""
    return F.normalize(c[:, [3, 7, 11]], dim=1)


def shuffled_cameras(c: torch.Tensor, min_angle_deg: float, generator: Optional[torch.Generator] = None):
    """ViCo negatives: for each sample a camera of another sample whose viewing direction differs by
    at least ``min_angle_deg``. Returns (c_neg [N, 25], valid [N] bool); samples with no such
    partner in the batch are invalid and left out of the term (never paired with themselves)."""
    n = c.shape[0]
    dirs = camera_directions(c)
    cos = dirs @ dirs.t()
    ok = cos <= math.cos(math.radians(min_angle_deg))
    ok.fill_diagonal_(False)
    # Pick uniformly among the admissible partners: random scores, inadmissible ones masked out.
    scores = torch.rand(n, n, generator=generator, device="cpu").to(c.device).masked_fill(~ok, -1.0)
    idx = scores.argmax(dim=1)
    valid = ok.any(dim=1)
    return c[idx], valid


def drop_parsing(parsing: torch.Tensor, prob: float) -> torch.Tensor:
    """Parsing channels [N, C, H, W] with each sample's map zeroed with probability ``prob``.

    An all-zero map is "no parsing": real and fake samples are dropped alike (one draw per sample and
    D call, from the global RNG), so D cannot tell them apart by it and must judge the dropped ones by
    their images. Without this D can learn a head's face layout from the clean one-hot parsing
    channels alone, and the generator's parsing head satisfies it while the RGB lags
    (docs/demo_model.md, "50 to 63 kimg"). A multiplication, so R1 and G still get (zero) gradients
    through the dropped channels."""
    keep = torch.rand(parsing.shape[0], 1, 1, 1, device=parsing.device) >= prob
    return parsing * keep.to(parsing.dtype)


def _num(t: torch.Tensor) -> float:
    """A detached Python float for the stats dict."""
    return float(t.detach())


class SphereHeadLoss:
    """Accumulates gradients for one phase at a time (the training loop steps the optimisers).

    ``real`` is a dict: 'image' float [N,3,R,R] in [−1,1], optional 'mask' float [N,1,R,R] in [0,1],
    optional 'parsing' long [N,R,R] class indices. ``gen_c`` [N, 25] are generator cameras.
    """

    def __init__(self, G, D, opts: LossOptions, fade_disabled: bool = False):
        self.G, self.D, self.opts, self.fade_disabled = G, D, opts, fade_disabled
        keys = D.input_keys()
        self.uses_mask = "image_mask" in keys
        self.uses_parsing = "image_parsing" in keys
        if opts.parsing and not self.uses_parsing:
            raise ValueError(f"the parsing branch needs a discriminator with parsing channels "
                             f"(HoloDiscriminator); {type(D).__name__} has none")
        if self.uses_parsing and not getattr(G, "parsing_flag", False):
            raise ValueError("the discriminator takes parsing maps but the generator has no parsing head")

    # ----- helpers -----
    def _real_dict(self, real: Dict[str, torch.Tensor], nrr: int, blur: float) -> Dict[str, torch.Tensor]:
        """Real D inputs at the current neural rendering resolution: the raw target is the antialiased
        resize, blurred here; 'image' is blurred later inside run_D, so R1 sees the unblurred image."""
        img = real["image"]
        out = {"image": img, "image_raw": blur_images(resize_to(img, nrr), blur)}
        if self.uses_mask:
            mask = real.get("mask")
            if mask is None:
                raise ValueError("the discriminator takes a mask channel but the dataset has no masks")
            out["image_mask"] = resize_to(mask, nrr)
        if self.uses_parsing:
            parsing = real.get("parsing")
            if parsing is None:
                raise ValueError("the parsing branch is on but the dataset has no parsing maps")
            onehot = F.one_hot(parsing.long(), PARSING_CLASSES).permute(0, 3, 1, 2).to(img.dtype)
            out["image_parsing"] = resize_to(onehot, nrr)
        return out

    def _conditioning(self, gen_c: torch.Tensor, prob: float) -> torch.Tensor:
        """GPC: per sample, the batch-rolled camera replaces the true one with probability ``prob``."""
        if self.opts.gpc_reg_prob is None:
            return torch.zeros_like(gen_c)
        swap = torch.rand(gen_c.shape[0], 1, device=gen_c.device) < prob
        return torch.where(swap, gen_c.roll(1, 0), gen_c)

    def run_G(self, z, gen_c, sched: Schedule, update_emas: bool = False):
        """Fake images and Δc. The render camera is the true gen_c moved by Δc (§6.2)."""
        G = self.G
        G.rendering.density_noise = sched.density_noise
        ws = G.mapping(z, self._conditioning(gen_c, sched.gpc_prob), update_emas=update_emas)
        _, delta_c = G.apply_delta_c(z, gen_c, update_emas=update_emas)
        c_render = shift_camera(gen_c, delta_c)  # not apply_delta_c's c: that one is zeroed under cond-zero
        ws_bcg = None
        if G.bcg_synthesis is not None and self.opts.bcg_reg_prob > 0:
            swap = torch.rand(ws.shape[0], 1, 1, device=ws.device) < self.opts.bcg_reg_prob
            ws_bcg = torch.where(swap, ws.roll(1, 0), ws)
        img = G.synthesis(ws, c_render, neural_rendering_resolution=sched.neural_rendering_resolution,
                          noise_mode=self.opts.noise_mode, update_emas=update_emas, ws_bcg=ws_bcg)
        return img, delta_c

    def run_D(self, img: Dict[str, torch.Tensor], c: torch.Tensor, blur: float):
        """D on ``img`` with 'image' blurred; raw images are not blurred here (the real raw target
        was blurred when it was made, the fake one never is, §6.2). With ``parsing_drop_prob`` the
        parsing channels of each sample are zeroed with that chance (see :func:`drop_parsing`)."""
        img = dict(img)
        img["image"] = blur_images(img["image"], blur)
        if "image_parsing" in img and self.opts.parsing_drop_prob > 0:
            img["image_parsing"] = drop_parsing(img["image_parsing"], self.opts.parsing_drop_prob)
        return self.D(img, c)

    # ----- phases -----
    def accumulate_gradients(self, phase: str, real: Dict[str, torch.Tensor], real_c: torch.Tensor,
                             gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float, cur_nimg: int) -> Dict[str, float]:
        if phase not in ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth"):
            raise ValueError(f"unknown phase {phase!r}")
        opts, sched = self.opts, schedule(self.opts, cur_nimg, self.fade_disabled)
        stats: Dict[str, float] = {}
        if phase in ("Gmain", "Gboth"):
            stats.update(self._g_main(gen_z, gen_c, sched, gain))
        if phase in ("Greg", "Gboth") and opts.density_reg > 0:
            stats.update(self._g_density(gen_z, gen_c, sched, gain))
        if phase in ("Dmain", "Dboth"):
            stats.update(self._d_main(real, real_c, gen_z, gen_c, sched, gain))
        if phase in ("Dreg", "Dboth") and (opts.r1_gamma > 0 or opts.r1_gamma_mask > 0):
            stats.update(self._d_r1(real, real_c, sched, gain))
        return stats

    def _g_main(self, z, gen_c, sched, gain):
        img, delta_c = self.run_G(z, gen_c, sched)
        logits = self.run_D(self._d_view(img), gen_c, sched.blur_sigma)  # D sees gen_c without Δc
        loss_adv = F.softplus(-logits).mean()
        loss_trans = self.opts.trans_reg * delta_c.mean(0).square().sum()
        (loss_adv + loss_trans).mul(gain).backward()
        return {"Loss/G/loss": _num(loss_adv), "Loss/G/trans_reg": _num(loss_trans),
                "Loss/scores/fake_G": _num(logits.mean())}

    def _g_density(self, z, gen_c, sched, gain):
        G, opts = self.G, self.opts
        if opts.gpc_reg_prob is None:
            cond = torch.zeros_like(gen_c)
        else:  # one swap draw for the whole batch here (§6.2)
            cond = gen_c.roll(1, 0) if float(torch.rand(())) < sched.gpc_prob else gen_c
        ws = G.mapping(z, cond)
        pts = torch.rand(z.shape[0], 1000, 3, device=z.device) * 2 - 1  # world units, not box-normalised (§6.3)
        moved = pts + torch.randn_like(pts) * opts.density_reg_p_dist
        both = G.sample_mixed(torch.cat([pts, moved], 1), None, ws, noise_mode=opts.noise_mode)["sigma"]
        sigma, sigma_moved = both[:, :1000], both[:, 1000:]
        loss = F.l1_loss(sigma, sigma_moved) * opts.density_reg
        loss.mul(gain).backward()
        return {"Loss/G/density_reg": _num(loss)}

    def _d_view(self, img: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        keys = ["image", "image_raw"] + (["image_mask"] if self.uses_mask else []) + \
            (["image_parsing"] if self.uses_parsing else [])
        return {k: img[k] for k in keys}

    def _d_main(self, real, real_c, z, gen_c, sched, gain):
        opts = self.opts
        with torch.no_grad():
            fake, _ = self.run_G(z, gen_c, sched, update_emas=True)
        logits_fake = self.run_D(self._d_view(fake), gen_c, sched.blur_sigma)
        loss_fake = F.softplus(logits_fake).mean()
        real_img = self._real_dict(real, sched.neural_rendering_resolution, sched.blur_sigma)
        logits_real = self.run_D(real_img, real_c, sched.blur_sigma)
        loss_real = F.softplus(-logits_real).mean()
        loss = loss_fake + loss_real
        stats = {"Loss/D/fake": _num(loss_fake), "Loss/D/real": _num(loss_real),
                 "Loss/scores/fake": _num(logits_fake.mean()), "Loss/scores/real": _num(logits_real.mean())}
        weight = opts.vico_weight * sched.vico_scale
        if weight > 0:
            c_neg, valid = shuffled_cameras(real_c, opts.vico_min_angle_deg)
            if valid.any():
                logits_vico = self.run_D(real_img, c_neg, sched.blur_sigma)
                loss_vico = (F.softplus(logits_vico).squeeze(1) * valid).sum() / valid.sum()
                loss = loss + weight * loss_vico
                stats.update({"Loss/D/vico": _num(loss_vico), "Loss/scores/vico": _num(logits_vico[valid].mean()),
                              "Loss/D/vico_valid_frac": float(valid.float().mean())})
        loss.mul(gain).backward()
        return stats

    def _d_r1(self, real, real_c, sched, gain):
        opts = self.opts
        real_img = {k: v.detach().requires_grad_(True)
                    for k, v in self._real_dict(real, sched.neural_rendering_resolution, sched.blur_sigma).items()}
        cams = real_c
        if opts.vico_r1 and opts.vico_weight > 0:  # also penalise D's slope on the mismatched pairs
            c_neg, valid = shuffled_cameras(real_c, opts.vico_min_angle_deg)
            cams = torch.where(valid[:, None], c_neg, real_c)
        logits = self.run_D(real_img, cams, sched.blur_sigma)
        keys = list(real_img)
        grads = torch.autograd.grad(logits.sum(), [real_img[k] for k in keys], create_graph=True, only_inputs=True)
        pen = {k: g.square().sum([1, 2, 3]) for k, g in zip(keys, grads)}
        loss = (pen["image"] + pen["image_raw"]) * (opts.r1_gamma / 2)
        if "image_mask" in pen:
            loss = loss + pen["image_mask"] * (opts.r1_gamma_mask / 2)
        if "image_parsing" in pen:
            loss = loss + pen["image_parsing"] * (opts.r1_gamma_parsing / 2)
        loss = loss.mean()
        loss.mul(gain).backward()
        return {"Loss/r1_penalty": _num(pen["image"].mean() + pen["image_raw"].mean()), "Loss/D/reg": _num(loss)}
