"""What gen_samples.py and gen_videos.py share, and the library function behind gen_samples.

* Parsing user input: seed ranges ``0-3,7`` (:func:`parse_range`), lists of angles, grid sizes, devices,
  FOV or focal length; :class:`GenerationError` for bad input (the CLIs turn it into one line).
* Turning network outputs into pictures: ``x·127.5 + 128`` clamped to uint8 (reference.md §1.5),
  depth and mask visualisations, and the colours of the 20 parsing classes (spherehead/parsing.py).
* Writing files atomically: every file is written under a temporary name in its destination folder
  and renamed on success (:func:`spherehead.fileio.atomic_path`), so a crash never leaves a half-written file under
  its final name. PNGs are encoded here with zlib, so writing images needs no optional package.
* :func:`generate_samples`: images of each seed from a set of yaws, optional depth, mask, parsing
  and shapes.

Latents follow the upstream convention ``z = RandomState(seed).randn(z_dim)``, so a seed names the same
identity as in the official scripts. Rendering uses ``noise_mode='const'`` and a ray-jitter RNG seeded
from the seed, so outputs are reproducible (upstream gen_samples draws random backbone noise, §10 item 13).
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import click
import numpy as np
import torch
# The project's 20-class parsing taxonomy and its colours (class 0, background, is black).
from spherehead.parsing import PALETTE as PARSING_PALETTE

from . import camera
from .errors import CheckpointError
from .fileio import atomic_path, write_bytes

# Upstream gen_samples renders at v = π/2 − 0.2, i.e. an elevation of asin(0.4/π) (reference.md §1.4-1.5).
SAMPLE_PITCH_DEG = 7.3150
# Upstream's five gen_samples views (h = π/2 + {0, −45, −90, −135, −180}°) as our geometric yaws.
DEFAULT_VIEWS = (0.0, -45.0, -90.0, -135.0, 180.0)
MAX_SEED = 2 ** 32 - 1  # numpy RandomState accepts seeds in [0, 2^32)


class GenerationError(ValueError):
    """Bad input or an unusable environment for generation; the message is one line for the user."""


def require(module: str, package: str, extra: str, purpose: str):
    """Import an optional dependency or raise a :class:`GenerationError` naming the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise GenerationError(f"{purpose} needs the '{package}' package: pip install -e \".[{extra}]\" "
                              f"(or pip install {package})") from None


# ----- parsing user input -----

def parse_range(text: str) -> List[int]:
    """Seeds from ``'0-3,7'`` -> [0, 1, 2, 3, 7]: comma-separated integers or inclusive ranges ``a-b``."""
    seeds: List[int] = []
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo.strip()) if lo.strip() else None
            b = int(hi.strip()) if sep else a
        except ValueError:
            a = b = None
        if a is None or b is None:
            raise GenerationError(f"malformed seed list {text!r}: expected integers or ranges like '0-3,7'")
        if not 0 <= a <= b <= MAX_SEED:
            raise GenerationError(f"malformed seed list {text!r}: {part!r} must be an ascending range "
                                  f"of seeds in 0..{MAX_SEED}")
        seeds.extend(range(a, b + 1))
    return seeds


def parse_floats(text: str, what: str = "value") -> List[float]:
    """``'0,-45,90'`` -> [0.0, -45.0, 90.0]; one or more finite numbers."""
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise GenerationError(f"malformed {what} list {text!r}: expected comma-separated numbers like '0,-90,180'")
    return values


def parse_grid(text: str) -> Tuple[int, int]:
    """``'3x2'`` -> (columns 3, rows 2)."""
    cols, sep, rows = str(text).lower().partition("x")
    if not (sep and cols.strip().isdigit() and rows.strip().isdigit()) or int(cols) < 1 or int(rows) < 1:
        raise GenerationError(f"malformed grid {text!r}: expected COLUMNSxROWS such as '2x2'")
    return int(cols), int(rows)


def resolve_device(text: str) -> torch.device:
    """'auto' (CUDA when available, else CPU), or any torch device string that this machine has."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise GenerationError(f"unknown device {text!r}: use 'auto', 'cpu' or 'cuda[:N]'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenerationError(f"device {text!r}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise GenerationError(f"device {text!r}: only 'cpu' and 'cuda' are supported")
    return device


def resolve_focal(fov: Optional[float], focal: Optional[float]) -> float:
    """Normalised focal length from a diagonal FOV in degrees (upstream helper, §1.3) or a focal.

    The default is the training intrinsics 4.2647 (what upstream gen_samples meant, before its integer
    ``--fov-deg`` option turned 18.837 into 18, §1.3)."""
    if fov is not None and focal is not None:
        raise GenerationError("give either a field of view or a focal length, not both")
    return camera.fov_to_focal(fov) if fov is not None else float(focal or camera.FOCAL_HEAD)


# ----- click glue shared by the CLIs -----

class _ParsedParam(click.ParamType):
    """Run ``parse`` on the option's text and report a GenerationError as a one-line usage error."""
    parse = staticmethod(str)

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return type(self).parse(value)
        except GenerationError as e:
            self.fail(str(e), param, ctx)


class SeedRange(_ParsedParam):
    name = "range"
    parse = staticmethod(parse_range)


class FloatList(_ParsedParam):
    name = "list"
    parse = staticmethod(lambda text: parse_floats(text, "angle"))


class GridSize(_ParsedParam):
    name = "grid"
    parse = staticmethod(parse_grid)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause (bad files, bad values, unwritable folders, missing extras)
    into a one-line ``click.ClickException``: no traceback for bad input."""
    try:
        yield
    except (GenerationError, CheckpointError, OSError) as e:
        text = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, OSError) and e.filename and e.strerror:
            text = f"{e.filename}: {e.strerror}"
        raise click.ClickException(text) from None


def shape_options(f):
    """Decorator adding the --shape* options of both CLIs (see :func:`make_shape_options`)."""
    from .shapes import DEFAULT_LEVEL, FORMATS
    options = [
        click.option("--shapes", is_flag=True, help="Also export a mesh per seed (see --shape-format)."),
        click.option("--shape-res", type=click.IntRange(16, 1024), default=256, show_default=True,
                     help="Grid samples per axis over the tri-plane box."),
        click.option("--shape-level", type=float, default=DEFAULT_LEVEL, show_default=True,
                     help="Iso-level on the raw decoder density σ (before softplus(σ−1)); upstream uses 10."),
        click.option("--shape-format", "shape_formats", type=click.Choice(FORMATS), multiple=True,
                     default=("ply",), show_default=True,
                     help="Mesh file type(s) with vertex colours, or mrc (raw σ grid for ChimeraX); repeatable."),
        click.option("--keep-largest/--all-components", default=False, show_default=True,
                     help="Keep only the largest connected part of the mesh (drops floaters)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def make_shape_options(shapes: bool, shape_res: int, shape_level: float, shape_formats, keep_largest: bool):
    """A checked ``shapes.ShapeOptions`` from the --shape* options, or None without --shapes."""
    if not shapes:
        return None
    from .shapes import ShapeOptions, check_dependencies
    opts = ShapeOptions(resolution=shape_res, level=shape_level, formats=tuple(dict.fromkeys(shape_formats)),
                        keep_largest=keep_largest)
    check_dependencies(opts)
    return opts


# ----- files (atomic writes live in spherehead.fileio) -----

def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(image: np.ndarray, palette: Optional[np.ndarray] = None) -> bytes:
    """Encode uint8 ``[H, W]`` (grey, or palette indices with ``palette`` [K, 3]), ``[H, W, 3]`` or
    ``[H, W, 4]`` as an 8-bit PNG (filter 0 on every row; zlib does the work)."""
    a = np.ascontiguousarray(image)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"PNG needs uint8 [H, W], [H, W, 3] or [H, W, 4], got {a.dtype} {list(a.shape)}")
    if palette is not None and a.ndim != 2:
        raise ValueError("a palette needs a 2-D index image")
    color_type = (3 if palette is not None else 0) if a.ndim == 2 else {3: 2, 4: 6}[a.shape[2]]
    h, w = a.shape[:2]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), a.reshape(h, -1)], axis=1)
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
    if palette is not None:
        out += _png_chunk(b"PLTE", np.ascontiguousarray(palette, dtype=np.uint8).tobytes())
    return out + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _png_chunk(b"IEND", b"")


def write_png(path: str, image: np.ndarray, palette: Optional[np.ndarray] = None) -> str:
    """Write a PNG atomically (see :func:`png_bytes`); returns ``path``."""
    return write_bytes(path, png_bytes(image, palette))


def write_npy(path: str, array: np.ndarray) -> str:
    with atomic_path(path, suffix=".tmp.npy") as tmp:
        np.save(tmp, array)
    return path


def prepare_outdir(path: str) -> str:
    """Create ``path`` (and parents) and check that files can be written there."""
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise GenerationError(f"{path}: cannot write to this output folder ({e.strerror or e})") from None
    return path


def check_outdir(path: str) -> None:
    """Fail early, creating nothing, when folder ``path`` could not be created or written."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise GenerationError(f"{path}: cannot create this output folder ({probe} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise GenerationError(f"{path}: cannot write to this output folder ({probe} is not writable)")


# ----- pictures from network outputs -----

def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` nominally in [-1, 1] -> uint8 ``[N, H, W, C]`` as x·127.5 + 128, clamped (§1.5)."""
    x = (images.detach().float().clamp(-1, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def depth_to_uint8(depth: torch.Tensor, near: float, far: float) -> np.ndarray:
    """Ray distance ``[N, 1, H, W]`` -> grey uint8 ``[N, H, W]``, near bright, ``far`` (and beyond) black.

    A fixed range (not per-image min/max) keeps brightness stable across video frames."""
    x = ((far - depth.detach().float()) / max(far - near, 1e-6)).clamp(0, 1)
    return (x[:, 0] * 255 + 0.5).to(torch.uint8).cpu().numpy()


def mask_to_uint8(mask: torch.Tensor) -> np.ndarray:
    """Opacity ``[N, 1, H, W]`` (≈[−0.001, 1.001]) -> grey uint8 ``[N, H, W]``."""
    return (mask.detach().float()[:, 0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def parsing_to_index(parsing: torch.Tensor) -> np.ndarray:
    """Class probabilities ``[N, 20, H, W]`` -> most likely class uint8 ``[N, H, W]``."""
    return parsing.detach().argmax(dim=1).to(torch.uint8).cpu().numpy()


def depth_range(G, radius: float) -> Tuple[float, float]:
    """Near/far ray distances of the renderer: its fixed ray range, or the box seen from ``radius``."""
    opts = G.rendering
    if opts.ray_start != "auto":
        return float(opts.ray_start), float(opts.ray_end)
    half_diagonal = math.sqrt(3) / 2 * float(opts.box_warp)
    return max(radius - half_diagonal, 1e-3), radius + half_diagonal


# ----- networks and latents -----

def load_generator(path: str, device: torch.device):
    """``G_ema`` of a native or upstream checkpoint (:func:`spherehead.load_network`), in eval mode."""
    from .api import load_network
    nets = load_network(path, device=device)
    G = nets.get("G_ema")
    if G is None:
        raise GenerationError(f"{path}: the checkpoint holds no G_ema generator")
    return G.eval()


def seed_latents(seeds: Sequence[int], z_dim: int, device) -> torch.Tensor:
    """z ``[len(seeds), z_dim]`` as upstream: ``np.random.RandomState(seed).randn(z_dim)``."""
    z = np.stack([np.random.RandomState(int(s)).randn(z_dim) for s in seeds])
    return torch.from_numpy(z).to(device=device, dtype=torch.float32)


def conditioning_label(G, pose_cond: float, device) -> torch.Tensor:
    """Label ``[1, 25]`` for the mapping: yaw ``pose_cond`` degrees, level, at the network's
    ``avg_camera_radius`` with the training intrinsics, as upstream (§1.5) except for the FOV quirk.

    It does not follow the render radius or focal, so zooming does not change the identity."""
    return camera.make_label(yaw=pose_cond, pitch=0.0, radius=G.rendering.avg_camera_radius, degrees=True).to(device)


@contextlib.contextmanager
def rng_context(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG (ray jitter) for a block without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


# ----- gen_samples -----

@dataclass
class SampleOptions:
    """Options of :func:`generate_samples`; angles in degrees."""
    seeds: Sequence[int] = (0,)
    views: Sequence[float] = DEFAULT_VIEWS   # geometric yaws: 0 front, +90 camera on the +x side, 180 back
    pitch: float = SAMPLE_PITCH_DEG          # elevation of the render cameras
    pose_cond: float = 0.0                   # yaw of the conditioning camera
    truncation_psi: float = 0.7
    truncation_cutoff: Optional[int] = None  # None: all ws
    focal: float = camera.FOCAL_HEAD
    radius: Optional[float] = None           # None: the network's avg_camera_radius
    neural_rendering_resolution: Optional[int] = None
    depth: bool = False
    mask: bool = False
    parsing: bool = False
    shapes: Optional[object] = None          # a shapes.ShapeOptions to export a mesh per seed
    batch: int = 4                           # views per forward pass


def yaw_tag(yaw: float) -> str:
    """File-name tag of a yaw: 'yaw+000', 'yaw-045', 'yaw+022.5'."""
    return f"yaw{yaw:+04.0f}" if float(yaw).is_integer() else f"yaw{yaw:+06.1f}"


def _check_sample_options(G, opts: SampleOptions) -> None:
    if not opts.seeds or not opts.views:
        raise GenerationError("nothing to do: give at least one seed and one view")
    if opts.parsing and not getattr(G, "parsing_flag", False):
        raise GenerationError("this network has no parsing head; drop the parsing output")
    if opts.shapes is not None:
        from .shapes import check_dependencies
        check_dependencies(opts.shapes)


def _render_views(G, ws: torch.Tensor, opts: SampleOptions, device) -> dict:
    """All views of one latent ``ws [1, num_ws, w_dim]``, in batches; outputs concatenated on N.
    The planes and background are computed once for all views (``G.scene``)."""
    radius = G.rendering.avg_camera_radius if opts.radius is None else opts.radius
    cams = camera.make_label(yaw=torch.tensor(list(opts.views), dtype=torch.float64), pitch=opts.pitch,
                             radius=radius, focal=opts.focal, degrees=True).to(device)
    scene = G.scene(ws, noise_mode="const")
    parts = []
    for i in range(0, len(cams), opts.batch):
        c = cams[i:i + opts.batch]
        parts.append(G.synthesis(ws.expand(len(c), -1, -1), c, opts.neural_rendering_resolution,
                                 noise_mode="const", scene=scene))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _write_seed(G, out: dict, seed: int, outdir: str, opts: SampleOptions) -> List[str]:
    folder = os.path.join(outdir, f"seed{seed:04d}")
    os.makedirs(folder, exist_ok=True)
    images = to_uint8(out["image"])
    written = [write_png(os.path.join(outdir, f"seed{seed:04d}.png"), np.concatenate(list(images), axis=1))]
    near, far = depth_range(G, G.rendering.avg_camera_radius if opts.radius is None else opts.radius)
    for v, yaw in enumerate(opts.views):
        name = os.path.join(folder, "{}_" + yaw_tag(yaw) + "{}")
        written.append(write_png(name.format("image", ".png"), images[v]))
        if opts.depth:
            written.append(write_png(name.format("depth", ".png"), depth_to_uint8(out["image_depth"][v:v + 1],
                                                                                  near, far)[0]))
            written.append(write_npy(name.format("depth", ".npy"), out["image_depth"][v, 0].cpu().numpy()))
        if opts.mask:
            written.append(write_png(name.format("mask", ".png"), mask_to_uint8(out["image_mask"][v:v + 1])[0]))
        if opts.parsing:  # palette PNG: pixel values are class indices, shown in PARSING_PALETTE colours
            index = parsing_to_index(out["image_parsing"][v:v + 1])[0]
            written.append(write_png(name.format("parsing", ".png"), index, palette=PARSING_PALETTE))
    return written


@torch.no_grad()
def generate_samples(G, outdir: str, opts: SampleOptions, progress: bool = True) -> List[str]:
    """Render every seed from every view of ``opts`` and write the files; returns the paths written.

    Layout, per seed ``S`` (4 digits): ``seedS.png`` (the views side by side, upstream's layout) and a
    folder ``seedS/`` with ``image_yaw±YYY.png`` per view, on request ``depth_*.png`` (near bright) and
    ``depth_*.npy`` (ray distance in world units, float32), ``mask_*.png``, ``parsing_*.png`` (palette
    PNG of class indices) and ``shape.{ply,obj,glb,mrc}`` (:mod:`spherehead.shapes`).
    Images are ``G.img_resolution`` square; depth, mask and parsing are at the neural rendering resolution.
    """
    from tqdm import tqdm
    _check_sample_options(G, opts)
    prepare_outdir(outdir)
    device = next(G.parameters()).device
    c_cond = conditioning_label(G, opts.pose_cond, device)
    written: List[str] = []
    with tqdm(total=len(opts.seeds) * len(opts.views), unit="view", disable=not progress) as bar:
        for seed in opts.seeds:
            bar.set_postfix_str(f"seed {seed}")
            with rng_context(seed, device):
                ws = G.mapping(seed_latents([seed], G.z_dim, device), c_cond,
                               truncation_psi=opts.truncation_psi, truncation_cutoff=opts.truncation_cutoff)
                out = _render_views(G, ws, opts, device)
            written += _write_seed(G, out, seed, outdir, opts)
            bar.update(len(opts.views))
            if opts.shapes is not None:
                from .shapes import export_shapes
                written += export_shapes(G, ws, os.path.join(outdir, f"seed{seed:04d}", "shape"), opts.shapes,
                                         progress=progress)
    return written
