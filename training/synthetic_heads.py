"""Procedural 360° heads, ray-cast analytically, for tests, the demo and artifact metrics.

A head is a union of clipped ellipsoids (training.synthetic_raycast) in the training world frame
(reference.md §1.2: +y up, face toward +z, head centre at the origin): skull + occiput + jaw, nose,
ears at ±x, eyeballs with iris and pupil, brows, lips and (sometimes) a beard painted on the front of
the face, neck, shoulders, a hair shell over the top and back (sometimes with a long back curtain)
and, on some heads, glasses (frame planes + a tinted lens). Hair is clipped so that it never covers
the face, and every face part sits on the front, so **face classes are visible only from the front
and the back of every head is hair**: a generator that paints a face on the back is measurably wrong.

Scale: the head spans about x ±0.2, y −0.24..0.30, z −0.31..0.28 world units (long hair and shoulders
reach lower), inside the tri-plane box (|p| ≲ 0.35, §3.2). With the training camera (radius 2.7, focal
4.2647, look-at origin) the visible frame at the origin is ±2.7·0.5/4.2647 = ±0.317, so a radius-0.25
sphere would fill 79 % of the frame width; these heads fill ~61 % of the width and ~82 % of the
height in frontal views, with shoulders at the bottom, like the PanoHead crops.

Lighting is fixed in the *world* per head (ambient + sky + one key light): the decoder ignores view
directions (§2.7), so view-independent shading is what a 3D-consistent generator can reproduce.
Parsing maps use spherehead.parsing; classes produced here: background, skin, l/r_brow,
l/r_eye, eyeglasses, l/r_ear, nose, mouth, u_lip, l_lip, neck, cloth, hair, facial_hair.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from spherehead.camera import label_to_pose, make_label
from spherehead.rendering.ray_sampler import sample_rays
from spherehead.parsing import CLASS_INDEX as CI
from spherehead.parsing import FACE_CLASSES, NUM_CLASSES
from training.synthetic_raycast import Ellipsoid, PlanePiece, cast, pixel_subset, surface_z

Vec = np.ndarray
SKIN_TONES = ((0.96, 0.80, 0.69), (0.36, 0.22, 0.15))
HAIR_COLOURS = ((0.05, 0.04, 0.04), (0.22, 0.13, 0.07), (0.40, 0.26, 0.14), (0.80, 0.66, 0.40),
                (0.55, 0.22, 0.10), (0.62, 0.62, 0.62))
# The glasses are as wide as their lenses and the temples run straight back into the head from there
# (their hidden part ends at this depth). Temples out at the full head width would peek past the skull
# in views from behind, and the set promises no glasses pixels in back views.
TEMPLE_Z = 0.0
IRIS_COLOURS = ((0.35, 0.20, 0.08), (0.25, 0.45, 0.75), (0.30, 0.50, 0.30), (0.45, 0.35, 0.15))


@dataclass
class HeadParams:
    """Everything that makes one head; positions/sizes in world units, colours RGB in [0, 1]."""
    skull: Tuple[Vec, Vec]          # (centre, semi-axes) of each ellipsoid
    occiput: Tuple[Vec, Vec]
    jaw: Tuple[Vec, Vec]
    nose: Tuple[Vec, Vec]
    ear: Tuple[Vec, Vec]            # the +x (subject's left) ear; the other is mirrored
    eye: Tuple[Vec, float]          # +x eyeball centre and radius
    neck: Tuple[Vec, Vec]
    cloth: Tuple[Vec, Vec]
    hair_shell: Tuple[Vec, Vec]
    curtain: Optional[Tuple[Vec, Vec]]   # long hair down the back, None for short hair
    gaze: Vec                       # unit vector the eyes look along
    brow: Tuple[float, float, float, float]   # height, half-width, thickness, arch
    mouth: Tuple[float, float, float, float, float]   # height, half-width, upper/lower lip, gap
    hairline: float                 # hair never below this height in front of hair_front
    hair_front: float               # ... where z > hair_front - hair_slant·(hairline - y) (the face zone)
    hair_slant: float
    hair_bottom: float              # lowest hair of the shell
    glasses: Optional[Dict[str, float]]
    beard: bool
    skin: Vec
    hair: Vec
    iris: Vec
    lips: Vec
    cloth_colour: Vec
    light: Vec                      # unit direction toward the key light


def _ell(c, a) -> Tuple[Vec, Vec]:
    return np.asarray(c, dtype=np.float64), np.asarray(a, dtype=np.float64)


def _colours(rng: np.random.Generator) -> Dict[str, Vec]:
    light, dark = np.array(SKIN_TONES)
    skin = np.clip((light + rng.uniform() ** 1.3 * (dark - light)) * rng.uniform(0.95, 1.05, 3), 0, 1)
    hair = np.clip(np.array(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]) * rng.uniform(0.85, 1.15, 3), 0, 1)
    iris = np.array(IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))])
    lips = np.clip(skin * [0.85, 0.55, 0.55] + [0.08, 0.0, 0.02], 0, 1)
    cloth = rng.uniform(0.1, 0.9, 3)
    return dict(skin=skin, hair=hair, iris=iris, lips=lips, cloth_colour=cloth)


def _glasses(rng: np.random.Generator, eye_c: Vec, eye_r: float) -> Optional[Dict[str, float]]:
    if rng.uniform() >= 0.3:
        return None
    ry = rng.uniform(0.022, 0.032)
    g = dict(x=eye_c[0], y=eye_c[1] - 0.002, z=eye_c[2] + eye_r + rng.uniform(0.015, 0.025),
             rx=rng.uniform(0.03, 0.04), ry=ry, n=rng.uniform(2.0, 4.0), rim=rng.uniform(0.003, 0.006),
             temple_y=eye_c[1] + 0.4 * ry, alpha=rng.uniform(0.1, 0.5))
    g["temple_x"] = g["x"] + g["rx"] + g["rim"] / 2
    g.update(zip(("tint_r", "tint_g", "tint_b"), rng.uniform(0.05, 0.4, 3)))
    g.update(zip(("frame_r", "frame_g", "frame_b"), rng.uniform(0.0, 0.3, 3) * rng.choice([1.0, 2.5])))
    return g


def sample_head(rng: np.random.Generator) -> HeadParams:
    """Draw one head from ``rng`` (all randomness of a head comes from here)."""
    u = rng.uniform
    skull = _ell([0, 0.035 + u(-0.01, 0.01), -0.02], [u(0.165, 0.195), u(0.205, 0.235), u(0.205, 0.235)])
    occiput = _ell(skull[0] + [0, u(-0.02, 0.03), -u(0.02, 0.05)], skull[1] * [u(0.85, 0.95), u(0.8, 0.9), 0.9])
    jaw = _ell([0, -0.075 + u(-0.01, 0.01), 0.035 + u(-0.01, 0.01)],
               [skull[1][0] * u(0.78, 0.9), u(0.15, 0.17), u(0.17, 0.19)])
    face = [Ellipsoid(*skull, ""), Ellipsoid(*jaw, "")]
    ex, ey, er = u(0.058, 0.07), u(0.0, 0.025), u(0.017, 0.021)
    eye_c = np.array([ex, ey, surface_z(face, ex, ey) - 0.45 * er])
    ny = u(-0.06, -0.04)
    nose = _ell([0, ny, surface_z(face, 0.0, ny) - 0.005], [u(0.022, 0.03), u(0.045, 0.06), u(0.04, 0.055)])
    ear = _ell([skull[1][0] * 0.96, ey - 0.02, skull[0][2] + u(-0.01, 0.02)], [0.022, u(0.042, 0.055), u(0.026, 0.034)])
    brow_y = ey + er + u(0.012, 0.02)
    hs = u(1.04, 1.1)
    hair_shell = _ell(skull[0] + [0, 0.005, -0.015], skull[1] * hs + [0, 0, 0.02])
    long_hair = u() < 0.45
    length = u(0.05, 0.25)
    curtain = _ell([0, -0.08 - length / 2, skull[0][2] - 0.03],
                   [skull[1][0] * 1.12, 0.2 + length / 2, skull[1][2] * 0.95]) if long_hair else None
    gaze = np.array([u(-0.15, 0.15), u(-0.1, 0.1), 1.0])
    az, el = np.radians(u(-70, 70)), np.radians(u(10, 50))
    return HeadParams(
        skull=skull, occiput=occiput, jaw=jaw, nose=nose, ear=ear, eye=(eye_c, er),
        neck=_ell([0, -0.3, -0.03], [u(0.085, 0.105), 0.2, u(0.09, 0.11)]),
        cloth=_ell([0, -0.52, -0.04], [u(0.36, 0.45), 0.22, u(0.17, 0.22)]),
        hair_shell=hair_shell, curtain=curtain, gaze=gaze / np.linalg.norm(gaze),
        brow=(brow_y, u(0.028, 0.038), u(0.007, 0.012), u(0.004, 0.01)),
        mouth=(u(-0.135, -0.115), u(0.038, 0.052), u(0.008, 0.013), u(0.01, 0.016), u(0.0015, 0.006)),
        hairline=max(u(0.085, 0.14), brow_y + 0.035), hair_front=u(-0.04, 0.07), hair_slant=u(0.0, 1.0),
        hair_bottom=min(u(-0.12, 0.0), -1.0 if long_hair else 0.0),   # long hair: no cut, the curtain joins on
        glasses=_glasses(rng, eye_c, er), beard=u() < 0.12,
        light=np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)]), **_colours(rng))


class HeadScene:
    """Primitives of a head and the shading of each part: ``shade(part, p, n)`` -> (rgb, class)."""

    def __init__(self, h: HeadParams):
        self.h = h
        flip = np.array([-1.0, 1.0, 1.0])
        face_zone_free = self._hair_region(h)
        self.prims = [Ellipsoid(*h.skull, "skin"), Ellipsoid(*h.occiput, "skin"), Ellipsoid(*h.jaw, "skin"),
                      Ellipsoid(*h.nose, "nose"), Ellipsoid(*h.ear, "ear"),
                      Ellipsoid(h.ear[0] * flip, h.ear[1], "ear"),
                      Ellipsoid(h.eye[0], [h.eye[1]] * 3, "eye"), Ellipsoid(h.eye[0] * flip, [h.eye[1]] * 3, "eye"),
                      Ellipsoid(*h.neck, "neck"), Ellipsoid(*h.cloth, "cloth"),
                      Ellipsoid(*h.hair_shell, "hair", lambda p: face_zone_free(p) & (p[:, 1] > h.hair_bottom))]
        if h.curtain is not None:
            self.prims.append(Ellipsoid(*h.curtain, "hair", lambda p: face_zone_free(p) & (p[:, 2] < 0.05)))
        self.lens = None
        if h.glasses is not None:
            self.prims += self._frame(h.glasses)
            g = h.glasses
            self.lens = PlanePiece(2, g["z"], "lens", lambda p: self._lens_shape(p, g, 0.0) < 1,
                                   [-g["x"] - g["rx"], g["y"] - g["ry"], 0], [g["x"] + g["rx"], g["y"] + g["ry"], 0])

    @staticmethod
    def _hair_region(h: HeadParams):
        """Hair is kept everywhere except the face zone: below the hairline and in front of a boundary
        that starts at ``hair_front`` and slants backward downward (sideburns, hair behind the ears)."""
        return lambda p: ~((p[:, 1] < h.hairline) &
                           (p[:, 2] > h.hair_front - h.hair_slant * np.clip(h.hairline - p[:, 1], 0, None)))

    @staticmethod
    def _lens_shape(p: np.ndarray, g: Dict[str, float], grow: float) -> np.ndarray:
        """Superellipse value of the lens outline (grown by ``grow``) around either eye; < 1 inside."""
        dx = np.abs(np.abs(p[:, 0]) - g["x"]) / (g["rx"] + grow)
        dy = np.abs(p[:, 1] - g["y"]) / (g["ry"] + grow)
        return dx ** g["n"] + dy ** g["n"]

    def _frame(self, g: Dict[str, float]) -> List[PlanePiece]:
        """Rims + bridge + end pieces in the lens plane, and the two temples along the sides."""
        half = g["rim"] / 2
        band = lambda p: np.abs(p[:, 1] - g["temple_y"]) < 0.0045   # noqa: E731 (tiny predicate)

        def front(p):
            rim = (self._lens_shape(p, g, half) < 1) & (self._lens_shape(p, g, -half) >= 1)
            bridge = (np.abs(p[:, 0]) < g["x"] - g["rx"] + half) & (p[:, 1] > g["y"] + 0.3 * g["ry"]) & \
                     (p[:, 1] < g["y"] + 0.3 * g["ry"] + 0.007)
            end = band(p) & (np.abs(p[:, 0]) > g["x"] + g["rx"] - half) & (np.abs(p[:, 0]) < g["temple_x"])
            return rim | bridge | end

        def temple(p):
            return band(p) & (p[:, 2] > TEMPLE_Z) & (p[:, 2] < g["z"])

        w, y0, y1 = g["temple_x"], g["y"] - g["ry"] - g["rim"], max(g["y"] + g["ry"], g["temple_y"]) + 0.01
        return [PlanePiece(2, g["z"], "frame", front, [-w, y0, 0], [w, y1, 0]),
                PlanePiece(0, w, "frame", temple, [0, y0, TEMPLE_Z], [0, y1, g["z"]]),
                PlanePiece(0, -w, "frame", temple, [0, y0, TEMPLE_Z], [0, y1, g["z"]])]

    def light(self, n: np.ndarray) -> np.ndarray:
        """Shading factor [M] for unit normals [M, 3]: ambient + sky (from +y) + one world-fixed key light."""
        return 0.45 + 0.45 * np.clip(n @ self.h.light, 0, None) + 0.15 * (0.5 + 0.5 * n[:, 1])

    def shade(self, part: str, p: np.ndarray, n: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        h, m = self.h, p.shape[0]
        left = p[:, 0] > 0          # subject's left is world +x (spherehead.parsing)
        cls = np.full(m, CI["skin"], dtype=np.uint8)
        rgb = np.tile(h.skin, (m, 1))
        if part == "skin":
            rgb, cls = self._face_decals(p, n, rgb, cls, left)
        elif part == "nose":
            cls[:] = CI["nose"]
            rgb = rgb * 0.97
        elif part == "ear":
            cls[:] = np.where(left, CI["l_ear"], CI["r_ear"])
            rgb = rgb * [1.0, 0.92, 0.9]
        elif part == "eye":
            rgb, cls = self._eye(p, left)
        elif part in ("neck", "cloth"):
            cls[:] = CI[part]
            rgb = rgb * 0.92 if part == "neck" else np.tile(h.cloth_colour, (m, 1))
        elif part == "hair":
            cls[:] = CI["hair"]
            c = h.hair_shell[0]
            phase = 40.0 * np.arctan2(p[:, 0] - c[0], p[:, 2] - c[2]) + 25.0 * p[:, 1]
            rgb = h.hair * (0.82 + 0.18 * np.sin(phase) ** 2)[:, None]
        elif part == "frame":
            cls[:] = CI["eyeglasses"]
            rgb = np.tile([h.glasses["frame_r"], h.glasses["frame_g"], h.glasses["frame_b"]], (m, 1))
        return np.clip(rgb * self.light(n)[:, None], 0, 1), cls

    def _eye(self, p: np.ndarray, left: np.ndarray):
        c, r = self.h.eye
        centre = np.where(left[:, None], c, c * [-1.0, 1.0, 1.0])
        cos = ((p - centre) / r) @ self.h.gaze
        rgb = np.tile([0.93, 0.92, 0.9], (p.shape[0], 1))
        rgb[cos > 0.89] = self.h.iris
        rgb[cos > 0.985] = [0.03, 0.03, 0.03]
        return rgb, np.where(left, CI["l_eye"], CI["r_eye"]).astype(np.uint8)

    def _face_decals(self, p: np.ndarray, n: np.ndarray, rgb: np.ndarray, cls: np.ndarray, left: np.ndarray):
        """Brows, lips/mouth and beard painted on the front of the skin (z > 0.08 / > 0.06)."""
        h = self.h
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        by, bw, bt, arch = h.brow
        s = (np.abs(x) - h.eye[0][0]) / bw
        taper = np.clip(1 - s * s, 0, 1)
        brow = (z > 0.08) & (np.abs(s) < 1) & (np.abs(y - by - arch * taper) < bt / 2 * taper ** 0.25)
        my, mw, uh, lh, gap = h.mouth
        env = np.sqrt(np.clip(1 - (x / mw) ** 2, 0, 1))
        dy = y - my
        front = (z > 0.08) & (np.abs(x) < mw)
        mouth = front & (np.abs(dy) <= gap / 2 * env)
        upper = front & ~mouth & (dy > 0) & (dy - gap / 2 < uh * env)
        lower = front & ~mouth & (dy < 0) & (-dy - gap / 2 < lh * env)
        if h.beard:   # chin and moustache: the front-facing lower face, not under the chin (seen from behind)
            beard = (z > 0.06) & (n[:, 2] > 0.5) & (y < my + uh + 0.016) & (np.abs(x) < mw + 0.03)
            beard &= ~(mouth | upper | lower)
            cls[beard] = CI["facial_hair"]
            rgb[beard] = (0.75 * h.hair + 0.25 * h.skin) * (0.9 + 0.1 * np.sin(300 * x[beard])[:, None])
        cls[brow] = np.where(left[brow], CI["l_brow"], CI["r_brow"])
        rgb[brow] = 0.9 * h.hair + 0.1 * h.skin
        cls[upper], rgb[upper] = CI["u_lip"], h.lips
        cls[lower], rgb[lower] = CI["l_lip"], h.lips * 1.05
        cls[mouth], rgb[mouth] = CI["mouth"], [0.25, 0.05, 0.06]
        return rgb, cls


def background(rng: np.random.Generator) -> Tuple[Vec, Vec]:
    """Top and bottom colours of a vertical gradient (equal for a plain background)."""
    top = rng.uniform(0.15, 0.95, 3)
    return top, (top if rng.uniform() < 0.5 else rng.uniform(0.15, 0.95, 3))


def render_view(head: HeadParams, label, resolution: int, supersample: int = 2,
                bg: Tuple[Sequence[float], Sequence[float]] = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))):
    """Render ``head`` seen by camera ``label`` ([25] or [1, 25], reference.md §1.1).

    Rays come from :func:`spherehead.rendering.ray_sampler.sample_rays` (the renderer's own pixel
    convention) at ``resolution·supersample`` and are box-averaged. Returns image uint8 [H, W, 3],
    mask uint8 [H, W] (coverage 0..255 of head, hair, neck, shoulders, glasses) and parsing uint8
    [H, W] (majority class of the sub-samples).
    """
    pose, k = label_to_pose(torch.as_tensor(np.asarray(label, dtype=np.float32)).reshape(1, 25))
    pose, k = pose[0].double().numpy(), k[0].double().numpy()
    s = resolution * supersample
    o, d = pose[:3, 3], _camera_rays(s, tuple(k.reshape(-1).tolist())) @ pose[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    scene = HeadScene(head)
    which, t, inner = cast(scene.prims, o, d, pixel_subset(pose, k, s))
    hit = np.isfinite(t)
    rgb = np.zeros((d.shape[0], 3))
    cls = np.zeros(d.shape[0], dtype=np.uint8)
    for i, prim in enumerate(scene.prims):
        sel = np.flatnonzero(hit & (which == i))
        if sel.size:
            p = o + t[sel, None] * d[sel]
            n = prim.normal(p, inner[sel])
            n *= np.where(np.einsum("ij,ij->i", n, d[sel]) > 0, -1.0, 1.0)[:, None]   # face the viewer
            rgb[sel], cls[sel] = scene.shade(prim.part, p, n)
    ramp = np.linspace(0.0, 1.0, s)[:, None]
    miss = np.flatnonzero(~hit)
    rgb[miss] = ((1 - ramp) * np.asarray(bg[0]) + ramp * np.asarray(bg[1]))[miss // s]   # vertical gradient
    if scene.lens is not None:
        g = head.glasses
        tl, _ = scene.lens.intersect(o, d)
        over = tl < t
        rgb[over] = (1 - g["alpha"]) * rgb[over] + g["alpha"] * np.array([g["tint_r"], g["tint_g"], g["tint_b"]])
        cls[over], hit = CI["eyeglasses"], hit | over
    return _downsample(rgb, hit, cls, resolution, supersample)


@functools.lru_cache(maxsize=8)
def _camera_rays(size: int, k: Tuple[float, ...]) -> np.ndarray:
    """Camera-space unit ray directions float64 [size², 3] from the renderer's own ray sampler (identity
    pose), so the synthetic pixels follow exactly the convention the generator renders with (§4.1).
    Cached: every view at one resolution shares them; only the rotation differs."""
    _, dirs = sample_rays(torch.eye(4)[None], torch.tensor(k, dtype=torch.float32).reshape(1, 3, 3), size)
    return dirs[0].double().numpy()


def _downsample(rgb, hit, cls, resolution: int, ss: int):
    def blocks(a):
        return a.reshape(resolution, ss, resolution, ss, *a.shape[1:]).swapaxes(1, 2).reshape(
            resolution, resolution, ss * ss, *a.shape[1:])
    image = np.clip(blocks(rgb).mean(axis=2) * 255 + 0.5, 0, 255).astype(np.uint8)
    mask = np.clip(blocks(hit.astype(np.float64)).mean(axis=2) * 255 + 0.5, 0, 255).astype(np.uint8)
    pixel = np.arange(resolution * resolution).repeat(ss * ss)
    votes = np.bincount(pixel * NUM_CLASSES + blocks(cls).reshape(-1), minlength=resolution ** 2 * NUM_CLASSES)
    parsing = votes.reshape(resolution, resolution, NUM_CLASSES).argmax(axis=-1).astype(np.uint8)
    return image, mask, parsing


def sample_cameras(rng: np.random.Generator, n: int, pitch_range=(-30.0, 30.0)) -> Tuple[Vec, Vec]:
    """Yaw/pitch in degrees [n]: yaw stratified over 360° from a random offset (uniform marginal, and
    every head is seen all around), pitch uniform in ``pitch_range``."""
    yaw = rng.uniform(0, 360) + (np.arange(n) + rng.uniform(0, 1, n)) * 360.0 / n
    yaw = (yaw + 180.0) % 360.0 - 180.0
    return yaw, rng.uniform(pitch_range[0], pitch_range[1], n)


def render_head(seed: int, index: int, views: int, resolution: int, pitch_range=(-30.0, 30.0),
                supersample: int = 2) -> List[dict]:
    """Head ``index`` of the set with ``seed``, from ``views`` cameras; deterministic in (seed, index).

    Returns one dict per view: ``label`` (25 floats, the camera of the render), arrays ``image``
    [H, W, 3], ``mask`` [H, W], ``parsing`` [H, W] (uint8), ``yaw_deg``, ``pitch_deg`` and ``head``
    (its :class:`HeadParams`).
    """
    rng = np.random.default_rng([seed, index])
    head = sample_head(rng)
    yaw, pitch = sample_cameras(rng, views, pitch_range)
    labels = make_label(torch.from_numpy(yaw), torch.from_numpy(pitch), degrees=True).numpy()
    out = []
    for v in range(views):
        image, mask, parsing = render_view(head, labels[v], resolution, supersample, background(rng))
        out.append(dict(label=labels[v].tolist(), image=image, mask=mask, parsing=parsing,
                        yaw_deg=float(yaw[v]), pitch_deg=float(pitch[v]), head=head))
    return out


def face_pixels(parsing: np.ndarray) -> int:
    """Number of pixels of face classes (spherehead.parsing.FACE_CLASSES) in a parsing map."""
    return int(np.isin(parsing, FACE_CLASSES).sum())
