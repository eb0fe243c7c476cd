"""Photo(s) -> latent + tuned generator: W/W+ optimisation then pivotal tuning (reference.md §7).

* Stage 1 (§7.2): optimise ``w`` (one row, broadcast to all ``num_ws``) or ``w+`` (all rows) from the
  average w, with Adam and upstream's learning-rate ramp, Gaussian noise on w that fades out by 75 % of
  the steps (the "noise regularisation" of the upstream projector: the backbone's per-pixel noise is
  ``const`` and not optimised), loss = ``mse_weight``·MSE + perceptual + ``w_reg``·mean((w − w_avg)²).
* Stage 2 (§7.3, PTI): all generator weights are tuned around the pivot with constant lr, same loss
  without the w terms, plus optionally the locality regulariser of PTI: renders of the tuned and the
  original generator at latents interpolated from the pivot toward random ones must agree.
* Camera self-adaptation (§2.6): Δc = t_mapping(z̄, c_front) is computed once from the *original*
  generator and added to every camera of both stages, the reported metrics and the turntable, so the
  latent is fitted and shown under one camera model (upstream fits without Δc and renders with it, §7.5).
* Several photos of one person: one shared latent (and one tuned generator); each view keeps its camera.
* The perceptual term is a seam: any ``perceptual(x, y) -> [N]`` on images in [−1, 1]; :func:`lpips_vgg`
  wraps the ``lpips`` package (LPIPS-VGG) when it can be imported.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import camera
from .generation import GenerationError
from .networks.generator import shift_camera

Perceptual = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DELTA_C_SAMPLES = 10_000   # z̄ is the mean of this many N(0, 1) draws from RandomState(123) (§2.6)


@dataclass
class InversionOptions:
    """Options of :func:`invert`; defaults follow the upstream projector (§7.2, §7.3)."""
    steps: int = 500
    pti_steps: int = 350
    w_plus: bool = True
    lr: float = 0.1
    pti_lr: float = 3e-4
    mse_weight: float = 0.1
    w_reg: float = 1.0
    noise_scale: float = 0.05          # initial w noise, in units of w_std
    noise_ramp: float = 0.75           # fraction of the steps over which the noise fades out
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    locality_weight: float = 0.0       # PTI locality regulariser weight (0: off; the PTI paper uses 0.1)
    locality_every: int = 10
    locality_alpha: float = 30.0       # distance from the pivot toward a random w (PTI paper)
    delta_c: bool = True
    w_avg_samples: int = 10_000
    neural_rendering_resolution: Optional[int] = None
    deterministic: bool = False        # fixed ray samples while optimising (reports always use fixed ones)
    amp: bool = True                   # bfloat16 autocast on CUDA; ignored on CPU
    seed: int = 303


@dataclass
class InversionResult:
    ws: torch.Tensor                   # [1, num_ws, w_dim], the pivot
    G: torch.nn.Module                 # the tuned generator (the input one when pti_steps == 0)
    cameras: torch.Tensor              # [V, 25] the cameras as given
    delta_c: torch.Tensor              # [1, 3] added to every camera (zeros when off)
    metrics: Dict[str, object] = field(default_factory=dict)
    reconstruction: Optional[torch.Tensor] = None   # [V, 3, H, W] in [-1, 1] by the tuned G


# ----- losses and metrics -----

def lpips_vgg(device) -> Perceptual:
    """LPIPS-VGG distance ``[N]`` of the ``lpips`` package; one-line error when it is missing or its
    weights cannot be had."""
    try:
        import lpips
    except ImportError:
        raise GenerationError("the lpips perceptual loss needs the 'lpips' package (pip install lpips); "
                              "or choose --perceptual none") from None
    try:
        net = lpips.LPIPS(net="vgg", verbose=False).to(device).eval().requires_grad_(False)
    except Exception as e:  # noqa: BLE001 - a failed weight download has many exception types
        raise GenerationError(f"lpips could not load its VGG weights ({' '.join(str(e).split())[:200]})") from None

    def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 256:  # upstream compares at most at 256² (§7.2)
            x, y = (F.interpolate(t, size=(256, 256), mode="area") for t in (x, y))
        return net(x, y, normalize=False).reshape(-1)
    return distance


def make_perceptual(name: str, device) -> Optional[Perceptual]:
    """'lpips' -> :func:`lpips_vgg`, 'none' -> None."""
    if name == "none":
        return None
    if name == "lpips":
        return lpips_vgg(device)
    raise GenerationError(f"unknown perceptual loss {name!r}; choose lpips or none")


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR ``[N]`` in dB of images in [−1, 1] (peak-to-peak 2)."""
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM ``[N]`` (Gaussian window 11, σ 1.5, per channel, averaged) of images in [−1, 1]."""
    x, y = ((t.float() + 1) / 2 for t in (x, y))
    g = torch.exp(-(torch.arange(11, dtype=torch.float32, device=x.device) - 5) ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    ch = x.shape[1]
    k = (g[:, None] * g[None, :]).expand(ch, 1, 11, 11)

    def blur(t):
        return F.conv2d(t, k, groups=ch)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def lr_schedule(t: float, opts: InversionOptions) -> float:
    """Upstream's ramp (§7.2): cosine ramp-down over the last ``lr_rampdown``, linear ramp-up first."""
    ramp = min(1.0, (1.0 - t) / opts.lr_rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return opts.lr * ramp * min(1.0, t / opts.lr_rampup)


# ----- the two stages -----

def _delta_c(G, device, enabled: bool) -> torch.Tensor:
    """Δc ``[1, 3]`` of the generator at z̄ and the frontal camera (§2.6), zeros when disabled."""
    if not enabled:
        return torch.zeros(1, 3, device=device)
    z = np.random.RandomState(123).randn(DELTA_C_SAMPLES, G.z_dim).mean(0, keepdims=True)
    c_front = camera.make_label(radius=G.rendering.avg_camera_radius).to(device)
    with torch.no_grad():
        _, delta = G.apply_delta_c(torch.from_numpy(z).float().to(device), c_front)
    return delta.float()


@torch.no_grad()
def w_statistics(G, samples: int, seed: int = 123):
    """(w_avg ``[1, 1, w_dim]``, w_std scalar) over ``samples`` z at the frontal camera (§7.2)."""
    device = next(G.parameters()).device
    z = torch.from_numpy(np.random.RandomState(seed).randn(samples, G.z_dim)).float().to(device)
    c = camera.make_label(radius=G.rendering.avg_camera_radius).to(device).expand(samples, -1)
    w = torch.cat([G.mapping(z[i:i + 1000], c[i:i + 1000])[:, :1] for i in range(0, samples, 1000)])
    w_avg = w.mean(0, keepdim=True)
    return w_avg, float(((w - w_avg) ** 2).sum(-1).mean().sqrt())


def _render(G, ws, cams, opts: InversionOptions, deterministic=None) -> torch.Tensor:
    """Images ``[V, 3, H, W]`` of one latent ``ws [1, num_ws, w_dim]`` at cameras ``[V, 25]``."""
    use_amp = opts.amp and cams.device.type == "cuda"
    with torch.autocast(device_type=cams.device.type, dtype=torch.bfloat16, enabled=use_amp):
        out = G.synthesis(ws.expand(len(cams), -1, -1), cams, opts.neural_rendering_resolution, noise_mode="const",
                          deterministic=opts.deterministic if deterministic is None else deterministic)
    return out["image"].float()


def _image_loss(x, target, opts: InversionOptions, perceptual: Optional[Perceptual]):
    mse = F.mse_loss(x, target)
    perc = perceptual(x, target).mean() if perceptual is not None else torch.zeros((), device=x.device)
    return opts.mse_weight * mse + perc, float(mse.detach()), float(perc.detach())


def optimise_w(G, targets, cams, opts: InversionOptions, perceptual=None, progress=True):
    """Stage 1: returns (ws ``[1, num_ws, w_dim]``, loss history)."""
    from tqdm import tqdm
    num_ws = G.backbone.num_ws
    w_avg, w_std = w_statistics(G, opts.w_avg_samples)
    w_opt = (w_avg.repeat(1, num_ws, 1) if opts.w_plus else w_avg.clone()).requires_grad_(True)
    optimiser = torch.optim.Adam([w_opt], betas=(0.9, 0.999), lr=opts.lr)
    history = []
    for step in tqdm(range(opts.steps), desc="w+ optimisation" if opts.w_plus else "w optimisation",
                     disable=not progress, unit="step"):
        t = step / opts.steps
        for group in optimiser.param_groups:
            group["lr"] = lr_schedule(t, opts)
        noise_std = w_std * opts.noise_scale * max(0.0, 1.0 - t / opts.noise_ramp) ** 2
        w_noisy = w_opt + torch.randn_like(w_opt) * noise_std
        x = _render(G, w_noisy.expand(1, num_ws, -1), cams, opts)
        loss, mse, perc = _image_loss(x, targets, opts, perceptual)
        loss = loss + opts.w_reg * ((w_opt - w_avg) ** 2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        history.append({"loss": float(loss.detach()), "mse": mse, "perceptual": perc})
    return w_opt.detach().expand(1, num_ws, -1).clone(), history


def pivotal_tuning(G, ws, targets, cams, opts: InversionOptions, perceptual=None, progress=True):
    """Stage 2: returns (tuned copy of G, loss history). ``G`` itself is not modified."""
    from tqdm import tqdm
    G_tuned = copy.deepcopy(G).requires_grad_(True)
    G_frozen = G
    params = [p for p in G_tuned.parameters() if p.dtype.is_floating_point]
    optimiser = torch.optim.Adam(params, betas=(0.9, 0.999), lr=opts.pti_lr)
    history = []
    for step in tqdm(range(opts.pti_steps), desc="pivotal tuning", disable=not progress, unit="step"):
        x = _render(G_tuned, ws, cams, opts)
        loss, mse, perc = _image_loss(x, targets, opts, perceptual)
        entry = {"loss": float(loss.detach()), "mse": mse, "perceptual": perc}
        if opts.locality_weight > 0 and step % opts.locality_every == 0:
            reg = _locality(G_tuned, G_frozen, ws, cams[:1], opts, perceptual)
            loss = loss + opts.locality_weight * reg
            entry["locality"] = float(reg.detach())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        history.append(entry)
    return G_tuned.eval().requires_grad_(False), history


def _locality(G_tuned, G_frozen, ws, cam, opts: InversionOptions, perceptual):
    """PTI's locality term: at w_r = pivot + α·unit(w_z − pivot) for a random z, the tuned render must
    match the original generator's."""
    z = torch.randn(1, G_frozen.z_dim, device=ws.device)
    with torch.no_grad():
        w_z = G_frozen.mapping(z, camera.make_label(radius=G_frozen.rendering.avg_camera_radius).to(ws.device))
        d = w_z - ws
        w_r = ws + opts.locality_alpha * d / d.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        reference = _render(G_frozen, w_r, cam, opts, deterministic=True)
    x = _render(G_tuned, w_r, cam, opts, deterministic=True)
    reg = F.mse_loss(x, reference)
    if perceptual is not None:
        reg = reg + perceptual(x, reference).mean()
    return reg


@torch.no_grad()
def evaluate(G, ws, targets, cams, opts: InversionOptions, perceptual=None) -> Dict[str, object]:
    """Per-view and mean PSNR / SSIM (/ perceptual distance) at the input views, fixed ray samples."""
    x = _render(G, ws, cams, opts, deterministic=True)
    p, s = psnr(x, targets), ssim(x, targets)
    out = {"psnr": float(p.mean()), "ssim": float(s.mean()), "psnr_per_view": p.tolist(),
           "ssim_per_view": s.tolist()}
    out["lpips"] = float(perceptual(x, targets).mean()) if perceptual is not None else None
    return {"metrics": out, "images": x}


def invert(G, images: torch.Tensor, cameras: Optional[torch.Tensor] = None,
           opts: Optional[InversionOptions] = None, perceptual: Optional[Perceptual] = None,
           progress: bool = True) -> InversionResult:
    """Fit one latent (and one tuned generator) to aligned ``images [V, 3, H, W]`` in [−1, 1].

    ``cameras [V, 25]`` are the labels of the views (default: frontal). Images are resized to
    ``G.img_resolution`` when needed. ``perceptual`` is the feature distance (e.g. :func:`lpips_vgg`);
    None uses the pixel loss only. Returns the pivot, the tuned G, Δc and the metrics before/after
    each stage with their timings.
    """
    opts = opts or InversionOptions()
    if images.ndim != 4 or images.shape[1] != 3:
        raise GenerationError(f"images must be [V, 3, H, W], got {list(images.shape)}")
    if opts.steps < 1 or opts.pti_steps < 0:
        raise GenerationError("steps must be at least 1 and pti-steps at least 0")
    device = next(G.parameters()).device
    G = G.eval().requires_grad_(False)
    res = G.img_resolution
    targets = images.to(device=device, dtype=torch.float32)
    if targets.shape[-1] != res or targets.shape[-2] != res:
        targets = F.interpolate(targets, size=(res, res), mode="area" if targets.shape[-1] > res else "bilinear")
    if cameras is None:
        cameras = camera.make_label(radius=G.rendering.avg_camera_radius).expand(len(targets), -1)
    cameras = cameras.to(device=device, dtype=torch.float32)
    if cameras.shape != (len(targets), 25):
        raise GenerationError(f"cameras must be [{len(targets)}, 25] (one per image), got {list(cameras.shape)}")
    delta = _delta_c(G, device, opts.delta_c)
    cams = shift_camera(cameras, delta.expand(len(cameras), -1))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(opts.seed)
        t0 = time.perf_counter()
        ws, hist1 = optimise_w(G, targets, cams, opts, perceptual, progress)
        t1 = time.perf_counter()
        stage1 = evaluate(G, ws, targets, cams, opts, perceptual)
        G_tuned, hist2 = (pivotal_tuning(G, ws, targets, cams, opts, perceptual, progress)
                          if opts.pti_steps else (G, []))
        t2 = time.perf_counter()
        final = evaluate(G_tuned, ws, targets, cams, opts, perceptual)
    metrics = {"stage1": {**stage1["metrics"], "seconds": t1 - t0, "steps": opts.steps,
                          "final_loss": hist1[-1]["loss"], "losses": hist1},
               "pti": {**final["metrics"], "seconds": t2 - t1, "steps": opts.pti_steps,
                       "final_loss": hist2[-1]["loss"] if hist2 else None, "losses": hist2},
               "views": len(targets), "w_plus": opts.w_plus, "delta_c": delta[0].tolist()}
    return InversionResult(ws=ws, G=G_tuned, cameras=cameras, delta_c=delta, metrics=metrics,
                           reconstruction=final["images"])


def views_summary(result: InversionResult) -> List[Dict[str, float]]:
    """Yaw / pitch in degrees of each input camera (for reports)."""
    yaw, pitch = camera.camera_yaw_pitch(result.cameras.cpu(), degrees=True)
    return [{"yaw_deg": float(a), "pitch_deg": float(b)} for a, b in zip(yaw, pitch)]


# ----- photos in, files out (the library function behind invert.py) -----

def _to_tensor(crop: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> ``[1, 3, H, W]`` in [−1, 1] (inverse of generation.to_uint8)."""
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1


def run_inversion(G, images: List[str], outdir: str, opts: InversionOptions, landmark_files=None,
                  face_index=None, perceptual="lpips", min_face: int = 128, video_frames: int = 120,
                  mesh_res: int = 256, mesh_level: Optional[float] = None,
                  progress: bool = True) -> Dict[str, object]:
    """Align each photo, invert them jointly and write the outputs (docs/inversion.md); returns the report.

    ``perceptual`` is 'lpips', 'none' or a :data:`Perceptual` callable; ``video_frames`` / ``mesh_res``
    0 skip the turntable / mesh; ``mesh_level`` is the iso-level on raw σ (default shapes.DEFAULT_LEVEL)."""
    import json
    import os
    from . import alignment
    from .checkpoint import save_network
    from .generation import prepare_outdir, to_uint8, write_bytes, write_png
    device = next(G.parameters()).device
    if isinstance(perceptual, str):
        perceptual = make_perceptual(perceptual, device)   # before the slow work: fail early
    if video_frames:  # the mp4 packages, before the slow work
        from .generation import require
        require("imageio.v2", "imageio", "video", "mp4 output")
        require("imageio_ffmpeg", "imageio-ffmpeg", "video", "mp4 output")
    if mesh_res:
        from .shapes import DEFAULT_LEVEL, ShapeOptions, check_dependencies
        shape_opts = ShapeOptions(resolution=mesh_res, level=DEFAULT_LEVEL if mesh_level is None else mesh_level)
        check_dependencies(shape_opts)
    t0 = time.perf_counter()
    crops, labels, fits = [], [], []
    for i, path in enumerate(images):
        photo = alignment.load_image(path)
        lm = (alignment.read_landmarks(landmark_files[i]) if landmark_files
              else alignment.detect_landmarks(photo, face_index, device=str(device)))
        crop, label, fit = alignment.align_photo(photo, lm, G.img_resolution, min_size=min_face)
        crops.append(crop), labels.append(label), fits.append(fit)
    t_align = time.perf_counter() - t0
    prepare_outdir(outdir)
    targets = torch.cat([_to_tensor(c) for c in crops]).to(device)
    result = invert(G, targets, torch.cat(labels), opts, perceptual, progress)
    recon = to_uint8(result.reconstruction)
    written = []
    for i, crop in enumerate(crops):
        tag = f"view{i:02d}"
        diff = np.abs(recon[i].astype(np.int16) - crop.astype(np.int16)).astype(np.uint8)
        written += [write_png(os.path.join(outdir, f"{tag}_aligned.png"), crop),
                    write_png(os.path.join(outdir, f"{tag}_reconstruction.png"), recon[i]),
                    write_png(os.path.join(outdir, f"{tag}_difference.png"), diff)]
    latent = os.path.join(outdir, "latent.npz")
    with _atomic_npz(latent) as tmp:
        np.savez(tmp, w=result.ws.cpu().numpy(), delta_c=result.delta_c.cpu().numpy(),
                 cameras=result.cameras.cpu().numpy())
    written.append(latent)
    gen_path = os.path.join(outdir, "generator.safetensors")
    save_network(gen_path, result.G, metadata={"inversion": {"images": [os.path.basename(p) for p in images]}})
    written.append(gen_path)
    timings = {"alignment": t_align, "stage1": result.metrics["stage1"]["seconds"],
               "pti": result.metrics["pti"]["seconds"]}
    if video_frames:
        t = time.perf_counter()
        written.append(_turntable(result, os.path.join(outdir, "turntable.mp4"), video_frames, opts, progress))
        timings["video"] = time.perf_counter() - t
    if mesh_res:
        from .shapes import export_shapes
        t = time.perf_counter()
        written += export_shapes(result.G, result.ws, os.path.join(outdir, "mesh"), shape_opts, progress=progress)
        timings["mesh"] = time.perf_counter() - t
    report = {**{k: v for k, v in result.metrics.items()}, "seconds": timings, "device": str(device),
              "views": [{"image": p, **v, "roll_deg": math.degrees(f.roll), "crop_centre_px": list(f.centre),
                         "crop_size_px": f.size, "landmark_rms_px": f.rms_px}
                        for p, v, f in zip(images, views_summary(result), fits)],
              "files": sorted(os.path.basename(p) for p in written) + ["report.json"]}
    write_bytes(os.path.join(outdir, "report.json"), json.dumps(report, indent=2).encode())
    return report


def _atomic_npz(path: str):
    from .generation import atomic_path
    return atomic_path(path, suffix=".tmp.npz")


@torch.no_grad()
def _turntable(result: InversionResult, path: str, frames: int, opts: InversionOptions, progress: bool) -> str:
    """360° turntable of the tuned generator at the pivot, with the same Δc as the fit."""
    from tqdm import tqdm
    from .video import Mp4Writer, VideoOptions, iter_frames, turntable_cameras
    G = result.G
    cams = turntable_cameras(frames, radius=G.rendering.avg_camera_radius).to(result.ws.device)
    cams = shift_camera(cams, result.delta_c.expand(len(cams), -1))
    vopts = VideoOptions(frames=frames, neural_rendering_resolution=opts.neural_rendering_resolution)
    with Mp4Writer(path, vopts.fps) as writer, tqdm(total=frames, unit="frame", disable=not progress) as bar:
        for frame in iter_frames(G, result.ws[None], cams, vopts):
            writer.append(frame)
            bar.update(1)
    return path
