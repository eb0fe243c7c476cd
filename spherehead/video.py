"""360° turntable videos: camera paths, latent interpolation, frame rendering in chunks, writers.

* Camera path (:func:`turntable_path`): the Head path of upstream gen_videos (reference.md §1.5) in
  geometric angles. Over the video (t = k / frames), yaw = 2π·loops·t (starting at the front) and
  sin(pitch) = sin(pitch₀) − sin(A)·sin(yaw). With the defaults pitch₀ = asin(0.1/π) and A = asin(1/π)
  this is upstream's v = π/2 − 0.05 + 0.5·sin(2πt) exactly, except that π replaces upstream's literal 3.14,
  so a loop is exactly 2π and the video loops without a jump. With pitch₀ = 0 the pitch swings exactly ±A.
* Latents (:func:`interpolate_ws`): several seeds per grid cell are visited in turn by cubic
  (Catmull-Rom) interpolation in W, after truncation, wrapping from the last back to the first.
* Frames are rendered ``batch`` images per forward pass and streamed to the writer, so memory does not
  grow with the length of the video.
* Modes: ``image`` (super-resolved RGB), ``image_raw``, ``depth`` (near bright), ``mask``, ``parsing``
  (palette colours) and ``normals`` (from the depth map, in camera space, shown as an OpenGL normal map).
* Output: H.264 mp4 through imageio-ffmpeg (``pip install -e ".[video]"``), or a folder of PNG frames.
  Both are written under a temporary name and renamed only when complete.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from . import camera
from .generation import (PARSING_PALETTE, GenerationError, check_outdir, conditioning_label, depth_range,
                         depth_to_uint8, mask_to_uint8, parsing_to_index, prepare_outdir, require, rng_context,
                         seed_latents, to_uint8, write_png)
from .fileio import temp_sibling
from .rendering.ray_sampler import sample_rays

MODES = ("image", "image_raw", "depth", "mask", "parsing", "normals")
PITCH_OFFSET_DEG = 1.8241     # asin(0.1/π): upstream's v offset of −0.05 as an elevation (§1.5)
PITCH_AMPLITUDE_DEG = 18.5607  # asin(1/π): upstream's v amplitude of 0.5 as an elevation (§1.5)
VIDEO_SUFFIXES = (".mp4",)
NOT_A_FOLDER = (".avi", ".mov", ".mkv", ".webm", ".gif", ".png", ".jpg", ".jpeg")


# ----- camera path and latents -----

def turntable_path(frames: int, loops: int = 1, pitch: float = PITCH_OFFSET_DEG,
                   amplitude: float = PITCH_AMPLITUDE_DEG) -> Tuple[torch.Tensor, torch.Tensor]:
    """Geometric yaw and pitch ``[frames]`` in radians of the turntable (module docstring); inputs in degrees.

    Frame k is at t = k / frames, so the last frame stops one step short of the first (seamless loop)."""
    t = torch.arange(frames, dtype=torch.float64) / frames
    yaw = 2 * math.pi * loops * t
    sin_pitch = math.sin(math.radians(pitch)) - math.sin(math.radians(amplitude)) * torch.sin(yaw)
    return yaw, torch.asin(sin_pitch.clamp(-0.999, 0.999))


def turntable_cameras(frames: int, loops: int = 1, pitch: float = PITCH_OFFSET_DEG,
                      amplitude: float = PITCH_AMPLITUDE_DEG, radius: float = camera.RADIUS,
                      focal: float = camera.FOCAL_HEAD) -> torch.Tensor:
    """Labels ``[frames, 25]`` of :func:`turntable_path`, looking at the origin."""
    yaw, pitch_rad = turntable_path(frames, loops, pitch, amplitude)
    return camera.make_label(yaw=yaw, pitch=pitch_rad, radius=radius, focal=focal)


def interpolate_ws(keys: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Cyclic Catmull-Rom interpolation of keyframes ``keys [C, K, ...]`` at times ``t [F]`` -> ``[C, F, ...]``.

    Keyframe j sits at t = j / K; the curve passes through every keyframe, is C¹, and wraps with period 1
    (after the last keyframe it returns to the first)."""
    k = keys.shape[1]
    s = (t.to(torch.float64) % 1.0) * k
    i = torch.floor(s).long()
    u = (s - i).to(keys.dtype).reshape(1, -1, *([1] * (keys.ndim - 2)))
    p0, p1, p2, p3 = (keys[:, (i + d) % k] for d in (-1, 0, 1, 2))
    return 0.5 * (2 * p1 + (p2 - p0) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2
                  + (3 * p1 - p0 - 3 * p2 + p3) * u ** 3)


# ----- pictures -----

def normals_from_depth(depth: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Surface normals ``[N, 3, H, W]`` in camera space (OpenCV axes: x right, y down, z forward) from
    ray-distance depth ``[N, 1, H, W]`` seen by cameras ``c [N, 25]``; unit length, facing the camera.

    Each pixel is lifted to its world point (origin + depth·direction); the normal is the cross product
    of the central differences of those points along the image rows and columns."""
    n, _, h, w = depth.shape
    if h != w:
        raise ValueError(f"depth must be square, got {h}x{w}")
    pose, K = camera.label_to_pose(c.to(depth.device, torch.float32))
    origins, dirs = sample_rays(pose, K, h)
    points = (origins + dirs * depth.reshape(n, -1, 1).float()).reshape(n, h, w, 3)
    d_rows, d_cols = torch.gradient(points, dim=(1, 2))
    normal = torch.nn.functional.normalize(torch.linalg.cross(d_cols, d_rows, dim=-1), dim=-1)
    facing = (normal * dirs.reshape(n, h, w, 3)).sum(-1, keepdim=True)
    normal = torch.where(facing > 0, -normal, normal)
    normal_cam = torch.einsum("nij,nhwi->nhwj", pose[:, :3, :3], normal)  # Rᵀ·n per pixel
    return normal_cam.permute(0, 3, 1, 2).contiguous()


def frame_pictures(out: dict, mode: str, c: torch.Tensor, depth_limits: Tuple[float, float]) -> np.ndarray:
    """One uint8 RGB picture ``[N, H, W, 3]`` per rendered view for a video ``mode``."""
    if mode in ("image", "image_raw"):
        return to_uint8(out[mode])
    if mode == "depth":
        grey = depth_to_uint8(out["image_depth"], *depth_limits)
    elif mode == "mask":
        grey = mask_to_uint8(out["image_mask"])
    elif mode == "parsing":
        return PARSING_PALETTE[parsing_to_index(out["image_parsing"])]
    elif mode == "normals":  # OpenGL normal map (x right, y up, z toward the viewer); background black
        flip = torch.tensor([1.0, -1.0, -1.0], device=out["image_depth"].device).view(1, 3, 1, 1)
        nrm = normals_from_depth(out["image_depth"], c) * flip
        nrm = (nrm + 1) / 2 * out["image_mask"].clamp(0, 1)
        return to_uint8(nrm * 2 - 1)
    else:
        raise GenerationError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    return np.repeat(grey[..., None], 3, axis=-1)


def tile(pictures: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """``[rows·cols, H, W, 3]`` (row-major cells) -> one ``[rows·H, cols·W, 3]`` picture."""
    cells, h, w, ch = pictures.shape
    assert cells == rows * cols, (cells, rows, cols)
    return pictures.reshape(rows, cols, h, w, ch).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, ch)


# ----- writers -----

class Mp4Writer:
    """H.264 mp4 through imageio-ffmpeg, written to a temporary name and renamed when complete."""

    def __init__(self, path: str, fps: float, bitrate: str = "10M"):
        self.imageio = require("imageio.v2", "imageio", "video", "mp4 output")
        require("imageio_ffmpeg", "imageio-ffmpeg", "video", "mp4 output")
        self.path, self.fps, self.bitrate = os.path.abspath(path), fps, bitrate
        self._tmp = self._writer = None

    def __enter__(self):
        # The temporary name ends in .mp4 because ffmpeg picks the container from the extension.
        self._tmp = temp_sibling(self.path, suffix=".tmp.mp4")
        try:
            self._writer = self.imageio.get_writer(self._tmp, format="FFMPEG", mode="I", fps=self.fps,
                                                   codec="libx264", bitrate=self.bitrate, pixelformat="yuv420p",
                                                   macro_block_size=1, ffmpeg_log_level="error")
        except BaseException:
            self._remove_tmp()
            raise
        return self

    def append(self, frame: np.ndarray) -> None:
        # yuv420p needs even sizes: repeat the last row/column rather than let ffmpeg rescale the frame.
        h, w = frame.shape[:2]
        self._writer.append_data(np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge"))

    def _remove_tmp(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)

    def __exit__(self, exc_type, exc, tb):
        try:
            self._writer.close()  # finishes the file (or stops ffmpeg) before it is renamed or removed
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            self._remove_tmp()
        return False


class PngFolderWriter:
    """Frames ``frame00000.png`` … in a folder that appears under its name only when complete."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.count = 0
        self._tmp = None

    def __enter__(self):
        self._tmp = temp_sibling(self.path, folder=True)
        return self

    def append(self, frame: np.ndarray) -> None:
        write_png(os.path.join(self._tmp, f"frame{self.count:05d}.png"), frame)
        self.count += 1

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            if os.path.isdir(self.path):
                os.rmdir(self.path)  # checked empty by output_kind
            os.replace(self._tmp, self.path)
        else:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return False


def output_kind(path: str) -> str:
    """'mp4' or 'png' (a folder of frames) for an output path; checks it, and for mp4 that the writer
    is installed, without creating anything."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in NOT_A_FOLDER:
        raise GenerationError(f"{path}: unsupported output type {suffix}; give a .mp4 file or a folder for PNG frames")
    check_outdir(os.path.dirname(os.path.abspath(path)))
    kind = "mp4" if suffix in VIDEO_SUFFIXES else "png"
    if kind == "mp4" and os.path.isdir(path):
        raise GenerationError(f"{path}: is a folder; give the video file's path")
    if kind == "mp4":
        require("imageio_ffmpeg", "imageio-ffmpeg", "video", "mp4 output")
    if kind == "png" and os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise GenerationError(f"{path}: already exists; PNG frames go to a new or empty folder")
    return kind


# ----- rendering -----

@dataclass
class VideoOptions:
    """Options of :func:`render_video`; angles in degrees."""
    seeds: Sequence[int] = (0,)
    grid: Tuple[int, int] = (1, 1)           # columns, rows; each cell visits len(seeds)/cells seeds in turn
    mode: str = "image"
    frames: int = 240
    loops: int = 1
    pitch: float = PITCH_OFFSET_DEG
    pitch_amplitude: float = PITCH_AMPLITUDE_DEG
    radius: Optional[float] = None           # None: the network's avg_camera_radius
    focal: float = camera.FOCAL_HEAD
    fps: float = 60.0
    bitrate: str = "10M"
    truncation_psi: float = 0.7
    truncation_cutoff: Optional[int] = None
    pose_cond: float = 0.0
    neural_rendering_resolution: Optional[int] = None
    batch: int = 4                           # images per forward pass
    shapes: Optional[object] = None          # a shapes.ShapeOptions: one mesh per seed beside the video


def _check_video_options(G, opts: VideoOptions) -> int:
    """Validate; returns the number of keyframes per grid cell."""
    if opts.mode not in MODES:
        raise GenerationError(f"unknown mode {opts.mode!r}; choose from {', '.join(MODES)}")
    if opts.mode == "parsing" and not getattr(G, "parsing_flag", False):
        raise GenerationError("this network has no parsing head; choose another mode")
    cells = opts.grid[0] * opts.grid[1]
    if not opts.seeds or len(opts.seeds) % cells:
        raise GenerationError(f"{len(opts.seeds)} seed(s) do not fill a {opts.grid[0]}x{opts.grid[1]} grid: "
                              f"give a multiple of {cells} seeds (each cell visits its share in turn)")
    if opts.frames < 1 or opts.batch < 1:
        raise GenerationError("frames and batch must be at least 1")
    if opts.shapes is not None:
        from .shapes import check_dependencies
        check_dependencies(opts.shapes)
    return len(opts.seeds) // cells


def iter_frames(G, key_ws: torch.Tensor, cams: torch.Tensor, opts: VideoOptions) -> Iterator[np.ndarray]:
    """Yield the video's uint8 frames ``[rows·H, cols·W, 3]``; ``key_ws [cells, K, num_ws, w_dim]``,
    ``cams [frames, 25]``. Chunks of frames are rendered ``opts.batch`` images per forward pass.

    With one keyframe per cell (K = 1, a turntable of fixed heads) each cell's planes and background
    are computed once (``G.scene``) and every frame only renders them from its camera."""
    cells = key_ws.shape[0]
    radius = G.rendering.avg_camera_radius if opts.radius is None else opts.radius
    limits = depth_range(G, radius)
    t = torch.arange(len(cams), dtype=torch.float64) / len(cams)
    scene = None
    if key_ws.shape[1] == 1:
        parts = [G.scene(key_ws[i:i + opts.batch, 0], noise_mode="const") for i in range(0, cells, opts.batch)]
        scene = {k: None if parts[0][k] is None else torch.cat([p[k] for p in parts]) for k in parts[0]}
    per_chunk = max(1, opts.batch // cells)
    for start in range(0, len(cams), per_chunk):
        idx = torch.arange(start, min(start + per_chunk, len(cams)))
        if scene is None:
            ws = interpolate_ws(key_ws, t[idx]).transpose(0, 1).reshape(-1, *key_ws.shape[2:])  # frame-major
        else:
            ws = key_ws[:, 0].repeat(len(idx), 1, 1)   # frame-major: row f·cells + k is cell k
        c = cams[idx].repeat_interleave(cells, dim=0).to(ws.device)
        pictures = []
        for i in range(0, len(ws), opts.batch):
            rows = torch.arange(i, min(i + opts.batch, len(ws)))
            batch_scene = None if scene is None else \
                {k: None if v is None else v[rows % cells] for k, v in scene.items()}
            out = G.synthesis(ws[rows], c[rows], opts.neural_rendering_resolution, noise_mode="const",
                              scene=batch_scene)
            pictures.append(frame_pictures(out, opts.mode, c[rows], limits))
        pictures = np.concatenate(pictures).reshape(len(idx), cells, *pictures[0].shape[1:])
        for frame in pictures:
            yield tile(frame, *opts.grid)


@torch.no_grad()
def render_video(G, output: str, opts: VideoOptions, progress: bool = True) -> dict:
    """Render a turntable video to ``output`` (``.mp4``, or a folder of PNG frames for any other name).

    Seeds fill the grid cell by cell (row-major), each cell taking ``len(seeds) / cells`` consecutive
    seeds as keyframes. Returns ``{'path', 'frames', 'height', 'width', 'fps', 'shapes'}``.
    """
    from tqdm import tqdm
    keyframes = _check_video_options(G, opts)
    kind = output_kind(output)
    prepare_outdir(os.path.dirname(os.path.abspath(output)))
    device = next(G.parameters()).device
    writer = Mp4Writer(output, opts.fps, opts.bitrate) if kind == "mp4" else PngFolderWriter(output)
    c_cond = conditioning_label(G, opts.pose_cond, device)
    z = seed_latents(opts.seeds, G.z_dim, device)
    ws = G.mapping(z, c_cond.expand(len(z), -1), truncation_psi=opts.truncation_psi,
                   truncation_cutoff=opts.truncation_cutoff)
    radius = G.rendering.avg_camera_radius if opts.radius is None else opts.radius
    cams = turntable_cameras(opts.frames, opts.loops, opts.pitch, opts.pitch_amplitude, radius, opts.focal)
    shape = None
    with rng_context(0, device), writer, tqdm(total=opts.frames, unit="frame", disable=not progress) as bar:
        for frame in iter_frames(G, ws.reshape(-1, keyframes, *ws.shape[1:]), cams, opts):
            writer.append(frame)
            shape = frame.shape
            bar.update(1)
    shapes = []
    if opts.shapes is not None:
        from .shapes import export_shapes
        stem = os.path.splitext(os.path.abspath(output))[0] if kind == "mp4" else os.path.abspath(output)
        for seed, w in zip(opts.seeds, ws):
            shapes += export_shapes(G, w[None], f"{stem}-seed{seed:04d}", opts.shapes, progress=progress)
    return {"path": output, "frames": opts.frames, "height": shape[0], "width": shape[1], "fps": opts.fps,
            "shapes": shapes}
