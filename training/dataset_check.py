"""Validate a head dataset and report every problem by file name; nothing is ever skipped silently.

:func:`validate_dataset` checks labels (``dataset.json``), images, masks and parsing maps of a folder
or zip in either layout of :mod:`training.dataset_io`; :func:`check_label` checks one 25-value camera
label (reference.md §1.1). Tolerances (float32 labels exported by pose fitters carry ~1e-6 noise, so
the bounds leave two orders of magnitude of room while still catching a wrong matrix):

* rotation: every entry of ``RᵀR − I`` within :data:`ROT_TOL`, and ``|det R − 1|`` within it too;
* bottom row of cam2world and the fixed intrinsics entries (``K10, K20, K21 = 0``, ``K22 = 1``, skew
  ``K01 = 0``) within :data:`FIXED_TOL`;
* focal lengths positive, principal point strictly inside (0, 1) (intrinsics normalised by image size).

Warnings (reported, not fatal): camera not looking within :data:`LOOKAT_WARN_DEG` of the world origin,
camera distance outside :data:`RADIUS_WARN`, ``fx`` and ``fy`` differing by over 5 %, images with alpha.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from training.dataset_io import (DatasetError, Layout, Part, decode_image, label_to_floats, open_layout,
                                 pair_by_stem, parse_labels_json, stem)
from spherehead.parsing import NUM_CLASSES

ROT_TOL = 1e-3
FIXED_TOL = 1e-4
LOOKAT_WARN_DEG = 15.0
RADIUS_WARN = (0.5, 20.0)
IMAGE_MODES = ("RGB", "RGBA", "L", "LA", "P")    # converted to RGB when loaded
MASK_MODES = ("L", "1", "P")                     # single channel, 0..255 (or 0/1 for mode "1")
PARSING_MODES = ("L", "P")                       # class indices stored directly as pixel values


@dataclass(frozen=True)
class Issue:
    file: str
    reason: str
    level: str = "error"     # "error" (fatal) or "warning"

    def __str__(self) -> str:
        return f"{self.level.upper():7s} {self.file}: {self.reason}"


@dataclass
class Report:
    path: str
    issues: List[Issue] = field(default_factory=list)
    counts: Dict[str, int] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)

    def error(self, file: str, reason: str) -> None:
        self.issues.append(Issue(file, reason, "error"))

    def warn(self, file: str, reason: str) -> None:
        self.issues.append(Issue(file, reason, "warning"))

    @property
    def errors(self) -> List[Issue]:
        return [i for i in self.issues if i.level == "error"]

    @property
    def warnings(self) -> List[Issue]:
        return [i for i in self.issues if i.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(self.sizes.items()))
        lines = [str(i) for i in self.issues]
        lines.append(f"{self.path}: {counts}; image sizes: {sizes or 'none'}; "
                     f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join(lines)


def _matrix_problems(m: np.ndarray) -> List[str]:
    """Problems of a cam2world [4, 4]: bottom row, orthonormality and handedness of the rotation."""
    out = []
    if np.abs(m[3] - [0, 0, 0, 1]).max() > FIXED_TOL:
        out.append(f"cam2world bottom row is {np.round(m[3], 6).tolist()}, expected [0, 0, 0, 1]")
    r = m[:3, :3]
    ortho = np.abs(r.T @ r - np.eye(3)).max()
    if ortho > ROT_TOL:
        out.append(f"rotation is not orthonormal (max |RᵀR − I| = {ortho:.3g} > {ROT_TOL:g})")
    det = float(np.linalg.det(r))
    if abs(det - 1.0) > ROT_TOL:
        what = "a reflection" if det < 0 else "not a rotation"
        out.append(f"rotation has det {det:.4g}, expected +1 ({what})")
    return out


def _intrinsics_problems(k: np.ndarray) -> List[str]:
    """Problems of normalised intrinsics [3, 3]: expected [fx, 0, cx; 0, fy, cy; 0, 0, 1]."""
    out = []
    fixed = {"K[0][1] (skew)": (k[0, 1], 0.0), "K[1][0]": (k[1, 0], 0.0), "K[2][0]": (k[2, 0], 0.0),
             "K[2][1]": (k[2, 1], 0.0), "K[2][2]": (k[2, 2], 1.0)}
    bad = [f"{n} = {v:.6g}" for n, (v, want) in fixed.items() if abs(v - want) > FIXED_TOL]
    if bad:
        out.append("intrinsics are not [fx, 0, cx, 0, fy, cy, 0, 0, 1]: " + ", ".join(bad))
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        out.append(f"focal lengths must be positive (fx = {k[0, 0]:.6g}, fy = {k[1, 1]:.6g})")
    if not (0 < k[0, 2] < 1 and 0 < k[1, 2] < 1):
        out.append(f"principal point ({k[0, 2]:.6g}, {k[1, 2]:.6g}) is outside (0, 1); intrinsics must be "
                   "normalised by the image size")
    return out


def _camera_warnings(m: np.ndarray, k: np.ndarray) -> List[str]:
    out = []
    t = m[:3, 3]
    dist = float(np.linalg.norm(t))
    if not RADIUS_WARN[0] <= dist <= RADIUS_WARN[1]:
        out.append(f"camera is {dist:.3g} from the origin (expected {RADIUS_WARN[0]}..{RADIUS_WARN[1]}; 2.7 is usual)")
    elif dist > 0:
        cosang = float(np.dot(m[:3, 2], -t / dist)) / max(float(np.linalg.norm(m[:3, 2])), 1e-12)
        angle = float(np.degrees(np.arccos(np.clip(cosang, -1.0, 1.0))))
        if angle > LOOKAT_WARN_DEG:
            out.append(f"camera looks {angle:.1f}° away from the world origin (the head centre)")
    if k[0, 0] > 0 and k[1, 1] > 0 and max(k[0, 0], k[1, 1]) / min(k[0, 0], k[1, 1]) > 1.05:
        out.append(f"fx = {k[0, 0]:.5g} and fy = {k[1, 1]:.5g} differ by over 5 %")
    return out


def check_label(value) -> Tuple[List[str], List[str]]:
    """One raw label (list of 25 numbers or numeric strings) -> (error reasons, warning reasons)."""
    arr, why = label_to_floats(value)
    if arr is None:
        return [why], []
    if arr.size != 25:
        return [f"label has {arr.size} numbers, expected 25"], []
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        return [f"label entries {bad.tolist()} are not finite ({', '.join(str(arr[i]) for i in bad)})"], []
    m, k = arr[:16].reshape(4, 4), arr[16:].reshape(3, 3)
    errors = _matrix_problems(m) + _intrinsics_problems(k)
    return errors, ([] if errors else _camera_warnings(m, k))


def _check_labels(layout: Layout, report: Report) -> Optional[Dict[str, object]]:
    """Check dataset.json; returns {image name: raw label} (None when there is no usable label file)."""
    if layout.labels is None:
        report.error("dataset.json", "missing: every image needs a camera label")
        return None
    try:
        entries = parse_labels_json(layout.read_labels_json(), "dataset.json")
    except DatasetError as e:
        report.error("dataset.json", str(e).split(": ", 1)[1])
        return None
    labels: Dict[str, object] = {}
    for name, value in entries:
        if name in labels:
            report.error(name, "duplicate label in dataset.json")
            continue
        labels[name] = value
        if name not in layout.images.files:
            report.error(name, "dataset.json has a label for it but there is no such image")
        errors, warnings = check_label(value)
        for reason in errors:
            report.error(name, f"label: {reason}")
        for reason in warnings:
            report.warn(name, f"label: {reason}")
    report.counts["labels"] = len(labels)
    return labels


def _open(part: Part, rel: str, report: Report, what: str):
    try:
        return decode_image(part.read(rel))
    except Exception as e:  # Pillow raises many types for corrupt data; each is a bad file, never a crash
        report.error(part.where(rel), f"cannot be read as {what} ({type(e).__name__}: {e})")
        return None


def _check_images(layout: Layout, labels, report: Report, same_size: bool,
                  resolution: Optional[int]) -> Dict[str, Tuple[int, int]]:
    """Check every image; returns {name: (width, height)} of the readable ones."""
    images, sizes = layout.images, {}
    stems = Counter(stem(rel) for rel in images.files)
    first: Optional[Tuple[str, Tuple[int, int]]] = None
    for rel in images.files:
        where = images.where(rel)
        if labels is not None and rel not in labels:
            report.error(where, "image has no label in dataset.json")
        if stems[stem(rel)] > 1:
            report.error(where, f"another image has the same name without extension ({stem(rel)}.*)")
        img = _open(images, rel, report, "an image")
        if img is None:
            continue
        sizes[rel] = img.size
        report.sizes[img.size] += 1
        w, h = img.size
        if img.mode not in IMAGE_MODES:
            report.error(where, f"unsupported image mode {img.mode} (expected RGB, L or P)")
        elif "A" in img.mode:
            report.warn(where, f"image mode {img.mode}: the alpha channel is ignored (masks go in masks/)")
        if w != h:
            report.error(where, f"image is not square ({w}x{h})")
            continue
        if resolution is not None and w != resolution:
            report.error(where, f"image is {w}x{h}, expected {resolution}x{resolution}")
        elif same_size:
            if first is None:
                first = (where, img.size)
            elif img.size != first[1]:
                report.error(where, f"image is {w}x{h} but {first[0]} is {first[1][0]}x{first[1][1]}; "
                                    "all images must have one size")
            if w & (w - 1):
                report.error(where, f"image size {w}x{h} is not a power of two")
    report.counts["images"] = len(images.files)
    return sizes


def _check_part(layout: Layout, part: Part, kind: str, sizes, report: Report) -> None:
    """Masks (kind 'mask') or parsing maps (kind 'parsing'): presence, pairing, mode, size, class range."""
    pairs, missing, orphans = pair_by_stem(layout.images, part)
    for rel in missing:
        report.error(layout.images.where(rel), f"no {kind} for this image (expected {part.where(stem(rel))}.png)")
    for rel in orphans:
        report.error(part.where(rel), f"{kind} matches no image, or shares its name with another {kind}")
    modes = MASK_MODES if kind == "mask" else PARSING_MODES
    for image_rel, rel in pairs.items():
        img = _open(part, rel, report, f"a {kind}")
        if img is None:
            continue
        where = part.where(rel)
        if img.mode not in modes:
            report.error(where, f"{kind} has mode {img.mode}; expected a single-channel image ({', '.join(modes)})")
            continue
        if image_rel in sizes and img.size != sizes[image_rel]:
            report.error(where, f"{kind} is {img.size[0]}x{img.size[1]} but its image is "
                                f"{sizes[image_rel][0]}x{sizes[image_rel][1]}")
        if kind == "parsing":
            values = np.unique(np.asarray(img))
            bad = values[values >= NUM_CLASSES]
            if bad.size:
                report.error(where, f"class indices {bad.tolist()} are out of range 0..{NUM_CLASSES - 1}")
    report.counts[kind + "s" if kind == "mask" else kind] = len(part.files)


def validate_dataset(path, masks=None, parsing=None, same_size: bool = True,
                     resolution: Optional[int] = None) -> Report:
    """Check a dataset (folder or zip, packed or PanoHead layout) and report every problem by file.

    ``masks``/``parsing``: separate roots for the PanoHead layout. ``same_size``: all images must share
    one square power-of-two size (a training set); ``False`` (a ``pack`` source) only asks for square
    images. ``resolution``: the required size, if any. Raises :class:`DatasetError` only when ``path``
    cannot be opened at all; everything else is an :class:`Issue` in the returned :class:`Report`.
    """
    layout = open_layout(path, masks, parsing)
    report = Report(layout.path)
    if not layout.images.files:
        report.error(layout.path, "contains no images (" + ", ".join(e for e in (".png", ".jpg", ".jpeg", ".bmp",
                                                                                 ".webp")) + ")")
    labels = _check_labels(layout, report)
    sizes = _check_images(layout, labels, report, same_size, resolution)
    if layout.masks is not None:
        _check_part(layout, layout.masks, "mask", sizes, report)
    if layout.parsing is not None:
        _check_part(layout, layout.parsing, "parsing", sizes, report)
    return report
