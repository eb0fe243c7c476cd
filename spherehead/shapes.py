"""Density grids, marching cubes and textured mesh export (reference.md §9, in our own convention).

The pipeline is split so that any density can be meshed, not only a generator's:

    density_fn(points [M, 3]) -> raw σ [M]     (:func:`generator_fields` wraps a generator; tests plant
    color_fn(points [M, 3]) -> uint8 [M, 3]      analytic fields through the same seam)
    density_volume -> mesh_from_volume -> save_mesh / save_mrc          (:func:`export_shapes` does all)

Conventions, and where they differ from upstream ``gen_samples --shapes`` on purpose:

* **Grid**: a cube of side ``box_size`` (the tri-plane box, ``rendering.box_warp``) centred at the origin,
  ``resolution`` samples per axis, voxel size ``box_size / (resolution − 1)``, ``volume[i, j, k]`` at
  world ``(x_i, y_j, z_k)``. Upstream's sheared grid (§9.1) and its flip of axis 0 (§9.3) are not
  reproduced, so **vertices are world coordinates in the camera convention of** :mod:`spherehead.camera`
  (+y up, face toward +z): a mesh lines up with renders from the same camera.
* **Level**: the surface is where the raw decoder density σ (before the renderer's softplus(σ − 1))
  equals ``level``, by default **10** as upstream (§9.4); the renderer's density there is
  softplus(9) ≈ 9 per world unit, well inside the opaque region. Lower levels grow the surface outward.
* **Crop**: by default σ is masked like the renderer masks it (|x| or |z| > box/2 − 0.1, §3.5), so the
  mesh holds only what renders can show; upstream instead pads 30/256 of the box on every face.
* The outermost voxel layer is set below the level so every surface closes at the box.
* Faces are wound counter-clockwise seen from outside (normals point toward lower density).
* Vertex colours are the model's own colour prediction at the vertex: decoder features through the
  generator's ``torgb`` layer (a 1×1 modulated conv, the same one that makes ``image_raw``).

Optional packages, imported on use (``pip install -e ".[mesh]"``): PyMCubes (marching cubes; scikit-image
is used instead when only it is installed), trimesh (ply/obj/glb), scipy (largest component), mrcfile (.mrc).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .fileio import atomic_path, write_bytes
from .generation import GenerationError, require, to_uint8

MESH_FORMATS = ("ply", "obj", "glb")
FORMATS = MESH_FORMATS + ("mrc",)
DEFAULT_LEVEL = 10.0
CHUNK_POINTS = 1 << 18

DensityFn = Callable[[torch.Tensor], torch.Tensor]
ColorFn = Callable[[torch.Tensor], np.ndarray]


@dataclass
class Mesh:
    """A triangle mesh in world units."""
    vertices: np.ndarray                 # [V, 3] float32
    faces: np.ndarray                    # [F, 3] int64, counter-clockwise seen from outside
    colors: Optional[np.ndarray] = None  # [V, 3] uint8 vertex colours


@dataclass
class ShapeOptions:
    """How :func:`export_shapes` builds and writes a generator's shape."""
    resolution: int = 256
    level: float = DEFAULT_LEVEL
    formats: Sequence[str] = ("ply",)
    keep_largest: bool = False
    crop: bool = True
    chunk_points: int = CHUNK_POINTS


def check_dependencies(opts: ShapeOptions) -> None:
    """Fail early (before any rendering) when a package needed by ``opts`` is missing."""
    unknown = [f for f in opts.formats if f not in FORMATS]
    if unknown:
        raise GenerationError(f"unknown shape format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    if any(f in MESH_FORMATS for f in opts.formats):
        _marching_cubes_backend()
        require("trimesh", "trimesh", "mesh", "mesh export")
        if opts.keep_largest:
            require("scipy.sparse.csgraph", "scipy", "mesh", "keeping the largest mesh component")
    if "mrc" in opts.formats:
        require("mrcfile", "mrcfile", "mesh", ".mrc export")


# ----- density on a grid -----

def grid_ticks(resolution: int, box_size: float) -> torch.Tensor:
    """World coordinates ``[resolution]`` of the samples along each axis: −L/2 … L/2 inclusive."""
    if resolution < 2:
        raise ValueError(f"grid resolution must be >= 2, got {resolution}")
    return torch.linspace(-box_size / 2, box_size / 2, resolution, dtype=torch.float64).float()


def density_volume(density_fn: DensityFn, resolution: int, box_size: float = 1.0,
                   chunk_points: int = CHUNK_POINTS, progress: bool = False) -> np.ndarray:
    """Raw σ on the cubic grid, float32 ``[R, R, R]`` indexed ``[x, y, z]``.

    Points are queried in slabs of constant x holding at most ``chunk_points`` points (at least one
    slab), so memory stays bounded at any resolution; ``density_fn`` gets float32 ``[M, 3]`` on the CPU.
    """
    from tqdm import tqdm
    ticks = grid_ticks(resolution, box_size)
    volume = np.empty((resolution,) * 3, dtype=np.float32)
    step = max(1, chunk_points // (resolution * resolution))
    for i in tqdm(range(0, resolution, step), desc="density", unit="slab", leave=False, disable=not progress):
        xs = ticks[i:i + step]
        points = torch.stack(torch.meshgrid(xs, ticks, ticks, indexing="ij"), dim=-1).reshape(-1, 3)
        sigma = torch.as_tensor(density_fn(points)).reshape(len(xs), resolution, resolution)
        volume[i:i + len(xs)] = sigma.detach().float().cpu().numpy()
    return volume


# ----- marching cubes and clean-up -----

def _marching_cubes_backend() -> str:
    for module, name in (("mcubes", "pymcubes"), ("skimage.measure", "skimage")):
        try:
            __import__(module)
            return name
        except ImportError:
            continue
    raise GenerationError("mesh extraction needs the 'PyMCubes' package (or scikit-image): "
                          "pip install -e \".[mesh]\" (or pip install PyMCubes)")


def marching_cubes(volume: np.ndarray, level: float) -> Tuple[np.ndarray, np.ndarray]:
    """Iso-surface of ``volume`` at ``level``: vertices ``[V, 3]`` in index units (axis order of the
    volume) and faces ``[F, 3]`` int64 wound so that normals point toward lower values."""
    if _marching_cubes_backend() == "pymcubes":
        import mcubes
        verts, faces = mcubes.marching_cubes(np.ascontiguousarray(volume, dtype=np.float64), float(level))
    else:  # scikit-image winds the other way round for a field that is high inside
        from skimage import measure
        verts, faces, _, _ = measure.marching_cubes(volume, float(level))
        faces = faces[:, ::-1]
    return np.asarray(verts, dtype=np.float64), np.ascontiguousarray(faces, dtype=np.int64)


def keep_largest_component(mesh: Mesh) -> Mesh:
    """The connected component (vertices joined by edges) with the most faces; drops floaters."""
    require("scipy.sparse.csgraph", "scipy", "mesh", "keeping the largest mesh component")
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    if len(mesh.faces) == 0:
        return mesh
    edges = np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]]])
    n = len(mesh.vertices)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    face_labels = labels[mesh.faces[:, 0]]
    keep_faces = mesh.faces[face_labels == np.bincount(face_labels).argmax()]
    used, inverse = np.unique(keep_faces, return_inverse=True)
    colors = None if mesh.colors is None else mesh.colors[used]
    return Mesh(mesh.vertices[used], inverse.reshape(-1, 3).astype(np.int64), colors)


def mesh_from_volume(volume: np.ndarray, box_size: float = 1.0, level: float = DEFAULT_LEVEL,
                     color_fn: Optional[ColorFn] = None, keep_largest: bool = False) -> Mesh:
    """Mesh of the ``level`` set of a grid from :func:`density_volume`, vertices in world units.

    ``color_fn`` (world points float32 ``[M, 3]`` -> uint8 ``[M, 3]``) colours the vertices; it is called
    after the optional largest-component clean-up, so only kept vertices are queried.
    Raises :class:`GenerationError` when no surface crosses ``level``.
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"volume must be a cube [R, R, R], got {list(volume.shape)}")
    closed = volume.copy()
    fill = min(float(level) - 1e3, float(volume.min()))  # below the level: the surface closes at the box
    for axis in range(3):
        index = [slice(None)] * 3
        for end in (0, -1):
            index[axis] = end
            closed[tuple(index)] = fill
    if not closed.max() > level:
        raise GenerationError(f"no surface at level {level:g}: the density on the grid ranges "
                              f"{float(volume.min()):.3g} .. {float(volume.max()):.3g}; choose a level in that range")
    verts, faces = marching_cubes(closed, level)
    voxel = box_size / (volume.shape[0] - 1)
    mesh = Mesh((verts * voxel - box_size / 2).astype(np.float32), faces)
    if keep_largest:
        mesh = keep_largest_component(mesh)
    if color_fn is not None:
        colors = np.asarray(color_fn(torch.from_numpy(mesh.vertices)))
        if colors.shape != (len(mesh.vertices), 3) or colors.dtype != np.uint8:
            raise ValueError(f"color_fn must return uint8 [{len(mesh.vertices)}, 3], got {colors.dtype} "
                             f"{list(colors.shape)}")
        mesh.colors = colors
    return mesh


def extract_mesh(density_fn: DensityFn, color_fn: Optional[ColorFn] = None, box_size: float = 1.0,
                 resolution: int = 256, level: float = DEFAULT_LEVEL, keep_largest: bool = False,
                 chunk_points: int = CHUNK_POINTS, progress: bool = False) -> Mesh:
    """:func:`density_volume` then :func:`mesh_from_volume`: the ``level`` set of any density field."""
    volume = density_volume(density_fn, resolution, box_size, chunk_points, progress)
    return mesh_from_volume(volume, box_size, level, color_fn, keep_largest)


# ----- a generator's fields -----

def generator_fields(G, ws: torch.Tensor, crop: bool = True,
                     chunk_points: int = CHUNK_POINTS) -> Tuple[DensityFn, ColorFn]:
    """Density and colour functions of one latent ``ws [1, num_ws, w_dim]`` of generator ``G``.

    The tri-planes are built once (``G.planes``) and queried through ``G.renderer.run_model``, as
    ``G.sample_mixed`` does but without rebuilding the planes for every chunk. Density noise is off.
    ``crop`` masks σ (to −1000) where the renderer masks it (§3.5).
    """
    from .rendering.renderer import crop_mask
    if ws.ndim != 3 or ws.shape[0] != 1:
        raise ValueError(f"ws must be [1, num_ws, w_dim], got {list(ws.shape)}")
    opts = dataclasses.replace(G.rendering, density_noise=0.0)
    with torch.no_grad():
        planes = G.planes(ws, noise_mode="const")

    def query(points: torch.Tensor) -> dict:
        pts = points.to(device=planes.device, dtype=torch.float32).reshape(1, -1, 3)
        with torch.no_grad():
            return G.renderer.run_model(planes, G.decoder, pts, None, opts), pts

    def density_fn(points: torch.Tensor) -> torch.Tensor:
        out, pts = query(points)
        sigma = out["sigma"]
        if crop:
            sigma = sigma.masked_fill(crop_mask(pts, float(opts.box_warp)), -1e3)
        return sigma[0, :, 0].float().cpu()

    def color_fn(points: torch.Tensor) -> np.ndarray:
        parts = []
        for i in range(0, len(points), chunk_points):
            feats = query(points[i:i + chunk_points])[0]["rgb"]           # [1, M, 32]
            if opts.decoder_activation == "sigmoid":                      # as in synthesis (§2.5 step 5)
                feats = feats * 2 - 1
            if G.torgb is None:
                rgb = feats[0, :, :3]
            else:  # torgb is a 1×1 conv: treat the M points as an [1, 32, M, 1] image
                with torch.no_grad():
                    x = G.torgb(feats.permute(0, 2, 1).unsqueeze(-1), ws[:, -1], fused_modconv=False)
                rgb = x[0, :, :, 0].t()
            parts.append(to_uint8(rgb.t()[None, :, :, None])[0, :, 0])  # same uint8 mapping as images
        return np.concatenate(parts) if parts else np.zeros((0, 3), np.uint8)

    return density_fn, color_fn


# ----- files -----

def save_mesh(mesh: Mesh, path: str) -> str:
    """Write ``.ply`` (binary), ``.obj`` or ``.glb`` (by suffix) with vertex colours, atomically."""
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        raise GenerationError(f"{path}: unknown mesh format; use one of {', '.join(MESH_FORMATS)}")
    trimesh = require("trimesh", "trimesh", "mesh", "mesh export")
    colors = None
    if mesh.colors is not None:
        colors = np.concatenate([mesh.colors, np.full((len(mesh.colors), 1), 255, np.uint8)], axis=1)
    tm = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, vertex_colors=colors, process=False)
    data = tm.export(file_type=fmt)
    return write_bytes(path, data.encode() if isinstance(data, str) else data)


def save_mrc(volume: np.ndarray, path: str, box_size: float = 1.0) -> str:
    """Write the raw σ grid as an MRC map (mode 2, float32), atomically.

    The data are stored in the MRC order ``[z][y][x]`` with voxel size and origin set so that viewers
    (ChimeraX) show world coordinates, 1 Å per world unit; iso-level 10 matches the default mesh.
    """
    mrcfile = require("mrcfile", "mrcfile", "mesh", ".mrc export")
    voxel = box_size / (volume.shape[0] - 1)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume.transpose(2, 1, 0), dtype=np.float32))
            mrc.voxel_size = voxel
            mrc.header.origin = (-box_size / 2,) * 3
    return path


def export_shapes(G, ws: torch.Tensor, stem: str, opts: ShapeOptions, progress: bool = False) -> List[str]:
    """Mesh (and/or density map) of latent ``ws [1, num_ws, w_dim]``, written to ``stem.<format>`` for
    each of ``opts.formats``; returns the paths written."""
    check_dependencies(opts)
    box = float(G.rendering.box_warp)
    density_fn, color_fn = generator_fields(G, ws, crop=opts.crop, chunk_points=opts.chunk_points)
    volume = density_volume(density_fn, opts.resolution, box, opts.chunk_points, progress)
    written = []
    if "mrc" in opts.formats:
        written.append(save_mrc(volume, f"{stem}.mrc", box))
    mesh_formats = [f for f in opts.formats if f in MESH_FORMATS]
    if mesh_formats:
        mesh = mesh_from_volume(volume, box, opts.level, color_fn, opts.keep_largest)
        written += [save_mesh(mesh, f"{stem}.{fmt}") for fmt in mesh_formats]
    return written
