"""Analytic ray casting of clipped ellipsoids and planar pieces (numpy, vectorised over rays).

The synthetic heads (training.synthetic_heads) are unions of these primitives. Each primitive may
carry a *region*: a predicate on world points that keeps only part of its surface (hair that never
covers the face, a lens outline in a plane). A clipped-away entry point lets the ray go on to the
exit point, so a cut-open shell shows its inner side, as real hair does.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

EPS = 1e-6
Region = Optional[Callable[[np.ndarray], np.ndarray]]   # points [M, 3] -> keep [M] bool


class Ellipsoid:
    """Axis-aligned ellipsoid ``|(p - centre) / axes| = 1`` tagged with a material ``part``."""

    def __init__(self, centre: Sequence[float], axes: Sequence[float], part: str, region: Region = None):
        self.centre = np.asarray(centre, dtype=np.float64)
        self.axes = np.asarray(axes, dtype=np.float64)
        self.part, self.region = part, region

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box (lo [3], hi [3]) containing every kept surface point."""
        return self.centre - self.axes, self.centre + self.axes

    def intersect(self, o: np.ndarray, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Origin [3], unit directions [R, 3] -> nearest kept hit distance [R] (inf: none) and
        whether it is the exit (inner) surface [R]."""
        t = np.full(d.shape[0], np.inf)
        inner = np.zeros(d.shape[0], dtype=bool)
        oc = (o - self.centre) / self.axes
        dd = d / self.axes
        a = np.einsum("ij,ij->i", dd, dd)
        b = 2.0 * (dd @ oc)
        disc = b * b - 4.0 * a * (oc @ oc - 1.0)
        idx = np.flatnonzero(disc > 0)
        if idx.size == 0:
            return t, inner
        sq, a2, bi = np.sqrt(disc[idx]), 2.0 * a[idx], b[idx]
        t0, t1 = (-bi - sq) / a2, (-bi + sq) / a2
        keep0 = t0 > EPS
        if self.region is not None and keep0.any():
            keep0[keep0] = self.region(o + t0[keep0, None] * d[idx[keep0]])
        keep1 = ~keep0 & (t1 > EPS)
        if self.region is not None and keep1.any():
            keep1[keep1] = self.region(o + t1[keep1, None] * d[idx[keep1]])
        t[idx[keep0]] = t0[keep0]
        t[idx[keep1]] = t1[keep1]
        inner[idx[keep1]] = True
        return t, inner

    def normal(self, p: np.ndarray, inner: np.ndarray) -> np.ndarray:
        """Unit normals [M, 3] at surface points [M, 3], facing out (in for ``inner`` hits)."""
        n = (p - self.centre) / self.axes ** 2
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        return np.where(inner[:, None], -n, n)


class PlanePiece:
    """The part of plane ``p[axis] = value`` kept by ``region`` (glasses frames and lenses).

    ``lo``/``hi`` [3]: a box containing the kept part; points outside it skip the region test.
    """

    def __init__(self, axis: int, value: float, part: str, region: Callable[[np.ndarray], np.ndarray],
                 lo: Sequence[float], hi: Sequence[float]):
        self.axis, self.value, self.part, self.region = axis, float(value), part, region
        self.lo, self.hi = np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64)
        self.lo[axis] = self.hi[axis] = self.value

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        return self.lo, self.hi

    def intersect(self, o: np.ndarray, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        t = np.full(d.shape[0], np.inf)
        dk = d[:, self.axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            tt = (self.value - o[self.axis]) / dk
        idx = np.flatnonzero(np.isfinite(tt) & (tt > EPS))
        p = o + tt[idx, None] * d[idx]
        inside = np.all((p >= self.lo - EPS) & (p <= self.hi + EPS), axis=1)
        idx, p = idx[inside], p[inside]
        if idx.size:
            keep = self.region(p)
            t[idx[keep]] = tt[idx[keep]]
        return t, np.zeros(d.shape[0], dtype=bool)

    def normal(self, p: np.ndarray, inner: np.ndarray) -> np.ndarray:
        """Plane normal [M, 3] along +axis; the shader turns it toward the viewer (two-sided)."""
        n = np.zeros_like(p)
        n[:, self.axis] = 1.0
        return n


Primitive = object  # Ellipsoid | PlanePiece


def pixel_subset(cam2world: np.ndarray, k: np.ndarray, size: int):
    """For a ``size``² row-major ray grid (training.synthetic_heads.render_view): a function
    (lo [3], hi [3]) -> indices of the rays whose pixel can see the box [lo, hi].

    The box's 8 corners are projected with the pinhole model of reference.md §4.1 (the inverse of the
    ray sampler); if a corner is behind the camera every ray is returned. One pixel of margin.
    """
    r, t = cam2world[:3, :3], cam2world[:3, 3]
    everything = np.arange(size * size)

    def subset(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T     # [8, 3]
        cam = (corners - t) @ r                                                         # world -> camera
        if (cam[:, 2] <= 1e-6).any():
            return everything
        u = (k[0, 0] * cam[:, 0] + k[0, 1] * cam[:, 1]) / cam[:, 2] + k[0, 2]
        v = k[1, 1] * cam[:, 1] / cam[:, 2] + k[1, 2]
        c0, c1 = np.clip([int(np.floor(u.min() * size)) - 1, int(np.ceil(u.max() * size)) + 1], 0, size)
        r0, r1 = np.clip([int(np.floor(v.min() * size)) - 1, int(np.ceil(v.max() * size)) + 1], 0, size)
        return (np.arange(r0, r1)[:, None] * size + np.arange(c0, c1)[None, :]).reshape(-1)

    return subset


def cast(prims: List[Primitive], o: np.ndarray, d: np.ndarray, subset=None):
    """Nearest hit over ``prims`` for rays from ``o`` [3] along ``d`` [R, 3].

    ``subset``: optional (lo, hi) -> ray indices (see :func:`pixel_subset`) so that each primitive is
    intersected only with the rays that can reach it. Returns (primitive index [R] int, distance [R]
    (inf where nothing is hit), inner [R] bool).
    """
    dist = np.full(d.shape[0], np.inf)
    inner = np.zeros(d.shape[0], dtype=bool)
    which = np.zeros(d.shape[0], dtype=np.int64)
    for i, prim in enumerate(prims):
        idx = subset(*prim.bounds()) if subset is not None else np.arange(d.shape[0])
        t, ins = prim.intersect(o, d[idx])
        closer = t < dist[idx]
        idx = idx[closer]
        dist[idx], inner[idx], which[idx] = t[closer], ins[closer], i
    return which, dist, inner


def surface_z(ellipsoids: Sequence[Ellipsoid], x: float, y: float) -> float:
    """Largest z of the front surfaces of ``ellipsoids`` above the point (x, y) (-inf if none)."""
    best = -np.inf
    for e in ellipsoids:
        (cx, cy, cz), (ax, ay, az) = e.centre, e.axes
        q = 1.0 - ((x - cx) / ax) ** 2 - ((y - cy) / ay) ** 2
        if q > 0:
            best = max(best, cz + az * np.sqrt(q))
    return float(best)
