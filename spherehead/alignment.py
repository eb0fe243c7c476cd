"""Photo -> aligned crop + 25-value camera label, the way the training data was cropped.

Pipeline (docs/inversion.md has the whole story):

1. :func:`load_image` reads any Pillow image as uint8 RGB ``[H, W, 3]``: EXIF orientation applied,
   grey / palette / 16-bit / alpha converted (alpha composited on white).
2. Landmarks ``[68, 2]`` (iBUG order) come from ``face-alignment`` (:func:`detect_landmarks`) or from a
   file (:func:`read_landmarks`; 68 points, or the 5 points eye centres, nose tip, mouth corners).
3. :func:`fit_pose` fits our approximate 3D mean face (:data:`TEMPLATE_68`) with a pinhole camera in
   our convention (reference.md §1): focal 4.2647 relative to the crop side, camera at distance 2.7
   from the head centre (the world origin), looking at it. The unknowns are the rotation and the crop
   (centre and side in photo pixels); the camera then splits into a look-at label (yaw, pitch, no
   roll, as every training label) and an in-plane roll that the crop undoes.
4. The crop rule (that of the training labels): the head centre lands on the crop centre, and the
   crop side spans ``RADIUS / FOCAL_HEAD = 0.633`` world units at the head centre's depth, so a head
   of our template's size fills the crop as a training head does. :func:`crop_image` samples it.

Pixel coordinates are continuous: the centre of pixel (i, j) is at (j + 0.5, i + 0.5).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from . import camera
from .generation import GenerationError

LANDMARK_COUNTS = (68, 5)
MIN_CROP = 128          # default smallest crop side in photo pixels: smaller heads are too blurry to invert


class AlignmentError(GenerationError):
    """A photo or landmark file that cannot be aligned; the message is one line for the user."""


# ----- the 3D mean face -----

def _template_mm() -> np.ndarray:
    """An approximate adult mean face, 68 iBUG points in millimetres.

    Origin between the eyes on the eye-corner plane; +x toward image right in a frontal view (the
    subject's left), +y up, +z toward the viewer. Values are round standard proportions (inter-pupil
    64 mm, eyes to mouth 68 mm, eyes to chin 120 mm), not a fitted statistical model."""
    pts = []
    for i in range(17):  # jaw contour from the right ear (image left) under the chin to the left ear
        a = math.pi * (1 - i / 16)
        pts.append((70 * math.cos(a), -10 - 110 * math.sin(a), -80 + 70 * math.sin(a)))
    brow = [(-55, 25, -20), (-45, 32, -10), (-35, 35, -4), (-25, 34, 0), (-15, 30, 2)]
    pts += brow + [(-x, y, z) for x, y, z in reversed(brow)]
    pts += [(0, 8, 4), (0, -6, 12), (0, -19, 20), (0, -32, 30)]                       # nose bridge
    pts += [(-15, -42, 8), (-8, -44, 14), (0, -45, 17), (8, -44, 14), (15, -42, 8)]   # nostrils
    right_eye = [(-46, 0, -8), (-37, 5, -2), (-27, 5, -2), (-18, 0, -4), (-27, -4, -2), (-37, -4, -2)]
    pts += right_eye
    pts += [(-x, y, z) for x, y, z in [right_eye[3], right_eye[2], right_eye[1], right_eye[0],
                                       right_eye[5], right_eye[4]]]                   # mirrored, iBUG order
    outer = [(-25, -68, -5), (-16, -62, 4), (-6, -59, 8), (0, -60, 9), (6, -59, 8), (16, -62, 4), (25, -68, -5),
             (16, -75, 3), (6, -78, 6), (0, -79, 7), (-6, -78, 6), (-16, -75, 3)]
    inner = [(-20, -68, -2), (-7, -66, 5), (0, -66, 6), (7, -66, 5), (20, -68, -2), (7, -69, 5), (0, -69, 6),
             (-7, -69, 5)]
    return np.array(pts + outer + inner, dtype=np.float64)


# World placement: our heads (training/synthetic_heads.py) have eyes at x = ±0.064, y ≈ 0.012, about
# 0.175 in front of the head centre, the nose tip near y = -0.05 and the mouth near y = -0.125, so one
# template millimetre is 0.002 world units (inter-pupil 0.128) and the eyes sit at (0, 0.012, 0.175).
TEMPLATE_SCALE = 0.002
TEMPLATE_OFFSET = np.array([0.0, 0.012, 0.175])
TEMPLATE_68 = _template_mm() * TEMPLATE_SCALE + TEMPLATE_OFFSET     # [68, 3] world units
JAW_WEIGHT = 0.3    # the jaw contour is the least stable detector output (it follows the silhouette)


def template_points(count: int) -> np.ndarray:
    """The template ``[count, 3]`` for 68 iBUG points or 5 points (eye centres, nose tip, mouth corners)."""
    if count == 68:
        return TEMPLATE_68.copy()
    if count == 5:
        t = TEMPLATE_68
        return np.stack([t[36:42].mean(0), t[42:48].mean(0), t[30], t[48], t[54]])
    raise AlignmentError(f"landmarks must have one of {LANDMARK_COUNTS} points, got {count}")


def landmarks_to_5(landmarks: np.ndarray) -> np.ndarray:
    """iBUG 68 points ``[68, 2]`` -> the 5-point layout ``[5, 2]``."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


# ----- reading photos and landmarks -----

def load_image(path: str) -> np.ndarray:
    """A photo as uint8 RGB ``[H, W, 3]``, EXIF-rotated; grey, palette, 16-bit and alpha images converted."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    if not os.path.isfile(path):
        raise AlignmentError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except UnidentifiedImageError:
        raise AlignmentError(f"{path}: not an image (Pillow cannot identify the format)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise AlignmentError(f"{path}: unreadable image ({e})") from None
    return _to_rgb8(im)


def _to_rgb8(im) -> np.ndarray:
    from PIL import Image
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit (and 32-bit) grey: scale the full range to 8 bits instead of clipping at 255.
        a = np.asarray(im, dtype=np.float64)
        a = a / 257.0 if a.max(initial=0) > 255 else a
        return np.repeat(np.clip(a + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_landmarks(path: str) -> np.ndarray:
    """Landmarks ``[68 or 5, 2]`` (x, y in pixels of the EXIF-rotated photo, pixel centres at integers,
    as face-alignment writes them) from ``.npy``, ``.json`` (a list of [x, y]) or text (x y per line)."""
    if not os.path.isfile(path):
        raise AlignmentError(f"{path}: no such landmark file")
    try:
        if path.lower().endswith(".npy"):
            lm = np.load(path, allow_pickle=False)
        elif path.lower().endswith(".json"):
            with open(path, encoding="utf-8") as f:
                lm = np.asarray(json.load(f), dtype=np.float64)
        else:
            lm = np.loadtxt(path, delimiter=None if _no_commas(path) else ",", ndmin=2)
        lm = np.asarray(lm, dtype=np.float64)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise AlignmentError(f"{path}: unreadable landmark file ({' '.join(str(e).split())})") from None
    if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] not in LANDMARK_COUNTS or not np.isfinite(lm).all():
        raise AlignmentError(f"{path}: expected {' or '.join(map(str, LANDMARK_COUNTS))} finite (x, y) points, "
                             f"got an array of shape {list(lm.shape)}")
    return lm


def _no_commas(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        return "," not in f.read()


def detect_landmarks(image: np.ndarray, face_index: Optional[int] = None, device: str = "cpu") -> np.ndarray:
    """68 iBUG landmarks ``[68, 2]`` of the one face in ``image`` (or face ``face_index``, counted
    left to right) through the ``face-alignment`` package, which fetches its weights on first use."""
    try:
        import face_alignment
    except ImportError:
        raise AlignmentError("face detection needs the 'face-alignment' package (pip install face-alignment); "
                             "or pass landmarks with --landmarks") from None
    try:
        kind = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
        fa = face_alignment.FaceAlignment(kind, device=device, flip_input=False)
        found = fa.get_landmarks_from_image(image)
    except Exception as e:  # noqa: BLE001 - weight downloads and detector failures all end the same way
        raise AlignmentError(f"face-alignment could not run (its model weights are fetched on first use: "
                             f"{' '.join(str(e).split())[:200]}); pass landmarks with --landmarks") from None
    faces = sorted((np.asarray(f, dtype=np.float64)[:, :2] for f in (found or [])), key=lambda f: f[:, 0].mean())
    return choose_face(faces, face_index)


def choose_face(faces: List[np.ndarray], face_index: Optional[int]) -> np.ndarray:
    """The one face of ``faces`` (landmark arrays, left to right), or face ``face_index``."""
    if not faces:
        raise AlignmentError("no face found in the photo")
    if face_index is None:
        if len(faces) > 1:
            raise AlignmentError(f"{len(faces)} faces found; choose one with --face-index 0..{len(faces) - 1} "
                                 f"(counted left to right)")
        return faces[0]
    if not 0 <= face_index < len(faces):
        raise AlignmentError(f"--face-index {face_index} is out of range: {len(faces)} face(s) found")
    return faces[face_index]


# ----- pose fit -----

@dataclass
class Alignment:
    """A fitted camera and the crop it implies (photo pixels, continuous coordinates)."""
    yaw: float           # radians, camera.make_label convention (0 frontal, > 0 camera on the +x side)
    pitch: float         # radians, > 0 camera above the head
    roll: float          # radians, in-plane rotation of the head in the photo (undone by the crop)
    centre: Tuple[float, float]   # where the head centre (world origin) projects in the photo
    size: float          # crop side in photo pixels
    rms_px: float        # landmark reprojection error in photo pixels

    def label(self) -> torch.Tensor:
        """The 25-value camera label ``[1, 25]`` of the crop (look-at the origin, radius 2.7)."""
        return camera.make_label(yaw=self.yaw, pitch=self.pitch, radius=camera.RADIUS)

    def crop_matrix(self, out_size: int) -> np.ndarray:
        """``[2, 3]`` affine map from crop pixel coordinates to photo pixel coordinates."""
        s = self.size / out_size
        c, n = math.cos(self.roll), math.sin(self.roll)
        rot = np.array([[c, -n], [n, c]]) * s
        return np.concatenate([rot, (np.array(self.centre) - rot @ np.full(2, out_size / 2))[:, None]], axis=1)

    def to_crop(self, points: np.ndarray, out_size: int) -> np.ndarray:
        """Photo points ``[N, 2]`` (continuous) -> crop points ``[N, 2]``."""
        m = self.crop_matrix(out_size)
        return (np.asarray(points, dtype=np.float64) - m[:, 2]) @ np.linalg.inv(m[:, :2]).T


def _rodrigues(v: torch.Tensor) -> torch.Tensor:
    theta = torch.sqrt((v * v).sum() + 1e-24)
    k = v / theta
    zero = torch.zeros((), dtype=v.dtype)
    K = torch.stack([torch.stack([zero, -k[2], k[1]]), torch.stack([k[2], zero, -k[0]]),
                     torch.stack([-k[1], k[0], zero])])
    return torch.eye(3, dtype=v.dtype) + torch.sin(theta) * K + (1 - torch.cos(theta)) * K @ K


def _lookat_world2cam(yaw: float, pitch: float) -> torch.Tensor:
    pose, _ = camera.label_to_pose(camera.make_label(yaw=yaw, pitch=pitch).to(torch.float64))
    return pose[0, :3, :3].T


def project(points: torch.Tensor, w2c: torch.Tensor, centre: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """World points ``[N, 3]`` -> photo points ``[N, 2]`` for a camera at distance RADIUS from the
    origin along its axis (world2cam rotation ``w2c [3, 3]``), origin at ``centre``, crop side ``size``."""
    p = points @ w2c.T + torch.tensor([0.0, 0.0, camera.RADIUS], dtype=points.dtype)
    return centre + size * camera.FOCAL_HEAD * p[:, :2] / p[:, 2:]


def fit_pose(landmarks: np.ndarray, yaw_starts=(-60.0, -30.0, 0.0, 30.0, 60.0)) -> Alignment:
    """Fit the template to photo landmarks ``[68 or 5, 2]`` (continuous coordinates).

    Minimises the (jaw-down-weighted) squared reprojection error over rotation (axis-angle around a
    look-at start) and crop centre / log-size, with LBFGS in float64 from several yaws; the best fit wins."""
    lm = torch.as_tensor(np.asarray(landmarks, dtype=np.float64))
    X = torch.as_tensor(template_points(len(lm)))
    weight = torch.ones(len(lm), dtype=torch.float64)
    if len(lm) == 68:
        weight[:17] = JAW_WEIGHT
    mean, spread = lm.mean(0), (lm - lm.mean(0)).norm(dim=1).mean().clamp_min(1e-6)
    target = (lm - mean) / spread                       # well-conditioned units for the optimiser
    best = None
    for yaw0 in yaw_starts:
        R0 = _lookat_world2cam(math.radians(yaw0), 0.0)
        proj0 = project(X, R0, torch.zeros(2, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
        size0 = 1.0 / (proj0 - proj0.mean(0)).norm(dim=1).mean()
        omega = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        centre = (-proj0.mean(0) * size0).clone().requires_grad_(True)
        log_size = torch.log(size0).clone().requires_grad_(True)
        opt = torch.optim.LBFGS([omega, centre, log_size], lr=1, max_iter=100, line_search_fn="strong_wolfe")

        def objective():
            err = project(X, _rodrigues(omega) @ R0, centre, log_size.exp()) - target
            return (weight * (err ** 2).sum(1)).sum() / weight.sum()

        def closure():
            opt.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            loss = float(objective())
            if best is None or loss < best[0]:
                best = (loss, _rodrigues(omega) @ R0, centre * spread + mean, log_size.exp() * spread)
    loss, R, centre, size = best
    R = R.detach()
    cam_centre = -camera.RADIUS * R[2]                  # camera centre in world = -R^T (0, 0, RADIUS)
    yaw = math.atan2(float(cam_centre[0]), float(cam_centre[2]))
    pitch = math.atan2(float(cam_centre[1]), float(torch.hypot(cam_centre[0], cam_centre[2])))
    roll_matrix = R @ _lookat_world2cam(yaw, pitch).T   # fitted = roll ∘ look-at: a rotation about z
    roll = math.atan2(float(roll_matrix[1, 0]), float(roll_matrix[0, 0]))
    residual = project(X, R, centre, size) - lm
    rms = float(torch.sqrt((residual ** 2).sum(1).mean()))
    return Alignment(yaw=yaw, pitch=pitch, roll=roll, centre=(float(centre[0]), float(centre[1])),
                     size=float(size), rms_px=rms)


# ----- crop -----

def crop_image(image: np.ndarray, align: Alignment, out_size: int) -> np.ndarray:
    """The aligned crop uint8 ``[out_size, out_size, 3]`` of ``image [H, W, 3]`` (bicubic; edge areas
    outside the photo are filled by replicating its border, as the training crops pad)."""
    from PIL import Image
    img = Image.fromarray(np.ascontiguousarray(image))
    m = align.crop_matrix(out_size)
    factor = int(max(1, math.floor(align.size / out_size / 2)))
    if factor > 1:  # shrink first with a box filter so bicubic resampling does not alias
        img = img.reduce(factor)
        m = m / factor
    pad = int(math.ceil(abs(m[:, :2]).sum() * out_size))  # replicate edges rather than paint black
    padded = np.pad(np.asarray(img), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    m = m.copy()
    m[:, 2] += pad
    out = Image.fromarray(padded).transform((out_size, out_size), Image.Transform.AFFINE, data=tuple(m.reshape(-1)),
                                            resample=Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.uint8).copy()


def align_photo(image: np.ndarray, landmarks: np.ndarray, out_size: int,
                min_size: float = MIN_CROP) -> Tuple[np.ndarray, torch.Tensor, Alignment]:
    """Crop uint8 ``[out_size, out_size, 3]``, label ``[1, 25]`` and fit for a photo and its landmarks
    (pixel centres at integers, as detectors and :func:`read_landmarks` give them)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    h, w = image.shape[:2]
    if not ((lm[:, 0] > -0.5 * w) & (lm[:, 0] < 1.5 * w) & (lm[:, 1] > -0.5 * h) & (lm[:, 1] < 1.5 * h)).all():
        raise AlignmentError(f"landmarks lie far outside the {w}x{h} photo: wrong landmark file?")
    align = fit_pose(lm + 0.5)
    if align.size < min_size:
        raise AlignmentError(f"face too small: its crop would be {align.size:.0f} px wide, at least {min_size:.0f} "
                             f"px are needed (use a larger photo of the face)")
    return crop_image(image, align, out_size), align.label(), align
