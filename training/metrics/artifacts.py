"""Artifact rate: how often back-view renders show face parts (the "face on the back of the head" failure).

A small fully convolutional CNN learns, from the synthetic reals and their parsing maps, which
cells of an image (4×4 pixels at detector resolution) are face parts (eyes, brows, nose, mouth,
lips, glasses); an image is flagged when the expected number of face-part cells reaches a threshold
calibrated on the training images. Each training image with face parts is also shown with them painted
over by the surrounding skin (:func:`erase_face_parts`), all cells negative, so that the detector learns
what eyes, mouths and glasses look like rather than where a face would be (docs/metrics.md, "Erased
negatives"). Dense targets were chosen over a per-image "face visible"
label because every cell of every image is a training sample, which matters with a few hundred
images (a per-image classifier did poorly on held-out back views in a short trial; docs/metrics.md).
Its per-image accuracy (target: at least ``min_fraction`` of the pixels are face parts) is measured on
held-out heads, front and back views separately; then G is rendered at the dataset's back cameras
(|yaw| >= 150°) and the flagged fraction is reported.

The trained detector is cached as safetensors keyed by the dataset (path, labels, file names) and
the training options, so it is trained once per dataset (:mod:`training.metrics.dataset_nets`, shared
with the parsing feature net).

:func:`parsing_face_rates` counts the same face-part classes in the generator's own parsing maps instead
(no detector; a model with the parsing branch says itself where it puts a face), and
:func:`face_part_agreement_rates` asks whether the detector finds face parts in the image where the
generator's parsing map puts them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from spherehead.camera import camera_yaw_pitch
from training.metrics.dataset_nets import (CellEncoder, fit, heldout_split, load_or_train, load_parsed_set,
                                          require_parsing, weights_digest)
from training.metrics.features import MetricError
from training.metrics.fid import Renderer, bin_seed, dataset_labels, sample_cameras, yaw_bin_mask
from spherehead.networks.discriminator import resize_to
from spherehead.parsing import CLASS_INDEX, NUM_CLASSES

# Facial hair is left out: a beard can show below the head from behind, which is not an artifact.
DETECTOR_CLASSES = tuple(CLASS_INDEX[n] for n in (
    "l_brow", "r_brow", "l_eye", "r_eye", "eyeglasses", "nose", "mouth", "u_lip", "l_lip"))
BACK_YAW_DEG = 150.0


@dataclass
class DetectorOptions:
    resolution: int = 64          # images are resized to this before the detector
    width: int = 64               # channels of the detector's inner layers (32 told erased faces apart worse)
    steps: int = 3000             # ~3 min on one CPU core; 1000 left erased and faceless fronts poorly separated
    batch: int = 32
    lr: float = 3e-3
    min_fraction: float = 0.004   # face-part pixels / image pixels for a positive (16 px at 64²)
    holdout: float = 0.25         # fraction of heads held out for the accuracy report
    seed: int = 0
    # Train also on a copy of every image with face parts, its face parts painted over with the surrounding
    # skin (erase_face_parts), all of whose cells are negatives: without them the detector learns "skin below
    # a hairline" and fires on heads that have no eyes or mouth at all (docs/metrics.md).
    erased_negatives: bool = True


class FacePartDetector(CellEncoder):
    """Fully convolutional face-part segmenter: images [N, 3, H, W] (uint8, or float in [-1, 1]) ->
    logits [N, r/4, r/4] of "this cell is a face part", at detector resolution r.

    Dense targets (every cell of every training image is a sample) help it learn from a few hundred
    images; its receptive field (~27 px) is local, sized for eyes and mouths rather than whole heads.
    """

    def __init__(self, resolution: int = 64, width: int = 64):
        super().__init__(resolution, width, dilations=(2,), out_channels=1)
        # Set after training from the training images (see _calibrate); saved with the weights.
        self.register_buffer("threshold", torch.tensor(0.5))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(images))[:, 0]

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Expected number [N] of face-part cells in each image."""
        return torch.sigmoid(self(images)).sum(dim=(1, 2))

    def flags(self, images: torch.Tensor) -> torch.Tensor:
        """bool [N]: the image shows face parts (score at or above the calibrated threshold)."""
        return self.score(images) >= self.threshold


def face_part_mask(parsing) -> torch.Tensor:
    """bool, the shape of the class map(s) ``parsing`` (tensor or numpy array): where they are of
    :data:`DETECTOR_CLASSES`."""
    if isinstance(parsing, np.ndarray):
        parsing = torch.from_numpy(np.ascontiguousarray(parsing))
    return torch.isin(parsing.long(), torch.tensor(DETECTOR_CLASSES))


def face_part_flags(parsing: torch.Tensor, min_fraction: float) -> torch.Tensor:
    """bool [N]: at least ``min_fraction`` of the parsing map (class indices [N, H, W]) is of
    :data:`DETECTOR_CLASSES`."""
    return face_part_mask(parsing).flatten(1).sum(1) >= min_fraction * parsing[0].numel()


def face_part_target(parsing: np.ndarray, min_fraction: float) -> bool:
    """True when at least ``min_fraction`` of the parsing map [H, W] is of :data:`DETECTOR_CLASSES`."""
    return bool(face_part_flags(torch.from_numpy(np.ascontiguousarray(parsing))[None], min_fraction)[0])


def face_part_map(parsing: np.ndarray, cells: int) -> torch.Tensor:
    """Fraction float32 [cells, cells] of each cell of the parsing map [H, W] that is a face part."""
    return face_part_fractions(torch.from_numpy(np.ascontiguousarray(parsing))[None], cells)[0]


def face_part_fractions(parsing: torch.Tensor, cells: int) -> torch.Tensor:
    """Fraction float32 [N, cells, cells] of each cell of the class maps [N, H, W] that is a face part."""
    return F.adaptive_avg_pool2d(face_part_mask(parsing).float()[:, None], cells)[:, 0]


def face_part_pixels(parsing: np.ndarray, resolution: int) -> torch.Tensor:
    """bool [resolution, resolution]: the pixels at ``resolution`` that any face-part pixel of the parsing map
    [H, W] falls in, grown by one pixel (the resized image spreads each part's colour a little)."""
    mask = F.adaptive_max_pool2d(face_part_mask(parsing).float()[None, None], resolution)
    return F.max_pool2d(mask, 3, stride=1, padding=1)[0, 0] > 0


def erase_face_parts(images: torch.Tensor, holes: torch.Tensor, smooth_steps: int = 32) -> torch.Tensor:
    """Images uint8 [N, 3, r, r] with the pixels of ``holes`` (bool [N, r, r]) painted over from their
    surroundings: filled ring by ring with the mean of their already known 3×3 neighbours, then smoothed
    ``smooth_steps`` times by 3×3 means inside the holes with the rest held fixed (a discrete harmonic fill).
    Eyes, brows, mouth and glasses become skin shaded like the skin around them."""
    x = images.float()
    hole = holes[:, None].to(x.dtype)
    known = 1 - hole

    def mean3(t):
        return F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3, stride=1)

    for _ in range(images.shape[-1]):   # a hole can be at most r rings deep
        if bool((known > 0).all()):
            break
        num, den = mean3(x * known), mean3(known)
        grow = (known == 0) & (den > 0)
        x = torch.where(grow, num / den.clamp_min(1e-8), x)
        known = torch.where(grow, torch.ones_like(known), known)
    for _ in range(smooth_steps):
        x = torch.where(hole > 0, mean3(x), x)
    return x.round().clamp(0, 255).to(torch.uint8)


def _load_set(dataset, opts: DetectorOptions):
    """Images uint8 [N, 3, r, r] at detector size, face-part maps [N, r/4, r/4], per-image targets bool [N],
    labels [N, 25], head group ids [N], and bool [N]: the image is an erased copy. With
    ``opts.erased_negatives`` every image with face-part pixels is followed, after the dataset's images, by
    its :func:`erase_face_parts` copy with all-zero targets and the same label and head."""
    images, parsing, labels, groups = load_parsed_set(dataset, opts.resolution, "the artifact detector")
    maps = torch.stack([face_part_map(p, opts.resolution // 4) for p in parsing])
    targets = np.array([face_part_target(p, opts.min_fraction) for p in parsing])
    erased = np.zeros(len(targets), dtype=bool)
    src = np.flatnonzero((maps.flatten(1) > 0).any(1).numpy()) if opts.erased_negatives else []
    if len(src):
        holes = torch.stack([face_part_pixels(parsing[i], opts.resolution) for i in src])
        images = torch.cat([images, erase_face_parts(images[src], holes)])
        maps = torch.cat([maps, torch.zeros_like(maps[src])])
        targets = np.concatenate([targets, np.zeros(len(src), dtype=bool)])
        labels = torch.cat([labels, labels[src]])
        groups = np.concatenate([groups, groups[src]])
        erased = np.concatenate([erased, np.ones(len(src), dtype=bool)])
    return images, maps, targets, labels, groups, erased


def _accuracy(model, images, targets) -> Optional[float]:
    if len(targets) == 0:
        return None
    pred = _scores(model, images) >= float(model.threshold)
    return float((pred == targets).mean())


def _scores(model, images) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model.score(x) for x in images.split(256)]).numpy()


def _calibrate(model, images, targets) -> float:
    """The score threshold with the best balanced accuracy on the training images. The loss up-weights
    rare face cells, so probabilities are not calibrated; and one stray cell on a back view should
    not flag it, which a fixed "any cell" rule would do."""
    scores = _scores(model, images)
    cands = np.unique(scores)
    cands = np.concatenate([[cands[0] - 1], (cands[1:] + cands[:-1]) / 2, [cands[-1] + 1]])
    pos, neg = targets, ~targets
    bal = [((scores[pos] >= t).mean() + (scores[neg] < t).mean()) / 2 for t in cands]
    return float(cands[int(np.argmax(bal))])


def train_detector(dataset, opts: DetectorOptions = DetectorOptions(),
                   progress: Optional[Callable[[int], None]] = None) -> Tuple[FacePartDetector, Dict]:
    """Train on all but ``opts.holdout`` of the heads; report held-out accuracy (all, front, back)."""
    images, maps, targets, labels, groups, erased = _load_set(dataset, opts)
    if targets.all() or not targets.any():
        raise MetricError("the detector needs images both with and without face parts (front and back views)")
    rng = np.random.RandomState(opts.seed)
    held = heldout_split(groups, opts.holdout, rng)
    train_idx = np.flatnonzero(~held)
    with torch.random.fork_rng(devices=[]):   # deterministic in opts.seed, global RNG untouched
        torch.manual_seed(opts.seed)
        model = FacePartDetector(opts.resolution, opts.width)
        # Face-part cells are rare (a few % of all cells): weight them up so they are not ignored.
        pos = float(maps[train_idx].mean())
        pos_weight = torch.tensor(min(0.25 * (1 - pos) / max(pos, 1e-6), 5.0))
        fit(model, images, maps, train_idx, rng, opts, progress=progress,
            loss_fn=lambda logits, y: F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight))
    model.threshold.fill_(_calibrate(model, images[train_idx], targets[train_idx]))
    front, back = yaw_bin_mask(labels, "front"), yaw_bin_mask(labels, "back")
    orig = held & ~erased
    report = {"heldout_accuracy": _accuracy(model, images[orig], targets[orig]),
              "heldout_front_accuracy": _accuracy(model, images[orig & front], targets[orig & front]),
              "heldout_back_accuracy": _accuracy(model, images[orig & back], targets[orig & back]),
              "heldout_images": int(orig.sum()), "train_images": int((~held & ~erased).sum()),
              "positive_fraction": float(targets[~erased].mean())}
    if opts.erased_negatives:
        # Erased copies are negatives: the share of held-out ones left unflagged, all and front views only.
        report.update(heldout_erased_accuracy=_accuracy(model, images[held & erased], targets[held & erased]),
                      heldout_erased_front_accuracy=_accuracy(model, images[held & erased & front],
                                                              targets[held & erased & front]),
                      erased_images=int(erased.sum()))
    return model, report


def load_or_train_detector(dataset, dataset_path, opts: DetectorOptions = DetectorOptions(),
                           cache: Optional[str] = None, progress=None) -> Tuple[FacePartDetector, Dict]:
    """The detector for ``dataset`` from ``<cache>/detectors/face-parts-<key>.safetensors``, trained and saved
    if absent (see :func:`training.metrics.dataset_nets.load_or_train`)."""
    model, report, _ = load_or_train("detectors", "face-parts", dataset, dataset_path, opts, cache,
                                     lambda: FacePartDetector(opts.resolution, opts.width),
                                     lambda: train_detector(dataset, opts, progress))
    return model, report


def _flagged_fraction(renderer: Renderer, cameras: torch.Tensor, detector: FacePartDetector, num_gen: int,
                      gen: torch.Generator, batch: int) -> float:
    """Fraction of ``num_gen`` renders at cameras drawn from ``cameras`` [M, 25] that the detector flags."""
    flagged = 0
    with torch.no_grad():
        for c in sample_cameras(cameras, num_gen, gen).split(batch):
            flagged += int(detector.flags(renderer(c, gen)).sum())
    return flagged / num_gen


def artifact_rate(renderer: Renderer, dataset, detector: FacePartDetector, num_gen: int = 1000, seed: int = 0,
                  min_yaw_deg: float = BACK_YAW_DEG, batch: int = 32) -> Dict[str, float]:
    """Fraction of ``num_gen`` renders at dataset cameras with |yaw| >= ``min_yaw_deg`` flagged as showing
    face parts."""
    labels = dataset_labels(dataset)
    back = labels[camera_yaw_pitch(labels, degrees=True)[0].abs() >= min_yaw_deg]
    if back.shape[0] == 0:
        raise MetricError(f"the dataset has no cameras with |yaw| >= {min_yaw_deg:g}°")
    gen = torch.Generator().manual_seed(seed)
    return {"artifact_rate": _flagged_fraction(renderer, back, detector, num_gen, gen, batch)}


def face_rates(renderer: Renderer, dataset, detector: FacePartDetector, num_gen: int = 1000, seed: int = 0,
               batch: int = 32) -> Dict[str, float]:
    """``face_rate_front`` / ``_side`` / ``_back``: the fraction of ``num_gen`` renders per yaw bin of
    :data:`training.metrics.fid.YAW_BINS` (cameras drawn from the dataset labels of the bin) that the
    detector flags. The artifact rate alone cannot tell a model that draws faces only on the front from one
    that draws no faces at all; the front rate can (the procedural reals: ≈ 1 front, ≈ 0.07 back)."""
    labels = dataset_labels(dataset)
    results = {}
    for name in ("front", "side", "back"):
        gen = torch.Generator().manual_seed(bin_seed(seed, name))
        results[f"face_rate_{name}"] = _flagged_fraction(renderer, labels[_bin_mask(labels, name)], detector,
                                                         num_gen, gen, batch)
    return results


# ----- the generator's own parsing maps -----

def resized_parsing(parsing: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 [resolution, resolution]: the class map [H, W] as the discriminator sees a real one at that
    resolution (one-hot, antialiased resize as in the loss), back to class indices by argmax."""
    onehot = F.one_hot(torch.from_numpy(parsing.astype(np.int64)), NUM_CLASSES).permute(2, 0, 1)[None].float()
    return resize_to(onehot, resolution)[0].argmax(dim=0).to(torch.uint8)


def inside_silhouette(parsing: torch.Tensor, margin: int) -> torch.Tensor:
    """bool [N, H, W]: the pixels of the class maps [N, H, W] with no background (class 0) pixel within
    ``margin`` pixels (a square window; outside the map counts as no background)."""
    fg = (parsing != 0).float()[:, None]
    return (-F.max_pool2d(-fg, 2 * margin + 1, stride=1, padding=margin))[:, 0] > 0


def parsing_face_flags(parsing: torch.Tensor, min_fraction: float, inside: bool = False) -> torch.Tensor:
    """bool [N]: :func:`face_part_flags` of the class maps [N, H, W]; with ``inside``, counting only the
    face-part pixels at least 1/16 of the map size (2 px at 32²) inside the silhouette. A rendered parsing
    map's rim mixes head and background, and its argmax there can be any class: the demo model's back
    views had eye and lip slivers on the rim, never inside (docs/metrics.md)."""
    if inside:
        keep = inside_silhouette(parsing, max(1, parsing.shape[-1] // 16))
        parsing = torch.where(keep, parsing, torch.zeros_like(parsing))
    return face_part_flags(parsing, min_fraction)


def _bin_mask(labels: torch.Tensor, name: str) -> np.ndarray:
    mask = np.asarray(yaw_bin_mask(labels, name))
    if not mask.any():
        raise MetricError(f"the dataset has no cameras in yaw bin {name!r}")
    return mask


def _bin_draw(labels: torch.Tensor, name: str, num_gen: int, seed: int):
    """(cameras [num_gen, 25] drawn from the labels of yaw bin ``name``, the torch.Generator that drew
    them): the bin's seed, as :func:`face_rates` draws, so the per-bin metrics render the same heads."""
    gen = torch.Generator().manual_seed(bin_seed(seed, name))
    return sample_cameras(labels[_bin_mask(labels, name)], num_gen, gen), gen


def _rates(maps: torch.Tensor, prefix: str, name: str, min_fraction: float) -> Dict[str, float]:
    """``<prefix>parsing_face_rate[_inside]_<name>`` of the class maps [N, H, W]."""
    return {f"{prefix}parsing_face_rate{'_inside' if inside else ''}_{name}":
            float(parsing_face_flags(maps, min_fraction, inside).float().mean()) for inside in (False, True)}


def real_parsing_face_rates(dataset, resolution: int,
                            min_fraction: float = DetectorOptions.min_fraction) -> Dict[str, float]:
    """``real_parsing_face_rate[_inside]_<bin>``: :func:`parsing_face_flags` over the dataset's images of each
    yaw bin, their parsing maps resized to ``resolution`` as D sees them (:func:`resized_parsing`)."""
    require_parsing(dataset, "parsing-face-rate-bins (the reals' rates)")
    labels = dataset_labels(dataset)
    maps = torch.stack([resized_parsing(dataset[i]["parsing"], resolution) for i in range(len(dataset))])
    results = {}
    for name in ("front", "side", "back"):
        results.update(_rates(maps[torch.from_numpy(_bin_mask(labels, name))], "real_", name, min_fraction))
    return results


def parsing_face_rates(parsing_renderer: Renderer, dataset, num_gen: int = 1000, seed: int = 0,
                       batch: int = 32, min_fraction: float = DetectorOptions.min_fraction,
                       reals: Optional[Dict[Tuple[int, float], Dict[str, float]]] = None) -> Dict[str, float]:
    """Per yaw bin (:data:`training.metrics.fid.YAW_BINS`), the fraction of ``num_gen`` renders whose own
    parsing map (``generator_renderer(..., output='parsing')``) has at least ``min_fraction`` of its pixels
    in :data:`DETECTOR_CLASSES`: ``parsing_face_rate_<bin>`` over the whole map, ``parsing_face_rate_inside_<bin>``
    off the silhouette's rim (:func:`parsing_face_flags`); and both over the dataset's images of the bin,
    their parsing maps resized to the generator's (:func:`real_parsing_face_rates`).

    No detector: the generator's parsing branch says itself where it puts eyes, brows, nose, mouth and
    glasses, so a face on the back of the head shows as face classes inside back views, on any dataset
    with parsing maps. It reads the semantic field, not the picture: a model can lay out a face in its
    parsing before its image shows one (docs/metrics.md). Cameras and latents are drawn as in
    :func:`face_rates`, so the same seed renders the same heads for both metrics.

    ``reals``: a dict the caller keeps across generators (:class:`training.metrics.runner.MetricRunner`);
    the reals' rates are stored in it by (map resolution, ``min_fraction``) and computed once for each."""
    require_parsing(dataset, "parsing-face-rate-bins (the reals' rates)")
    labels = dataset_labels(dataset)
    results, resolution = {}, None
    for name in ("front", "side", "back"):
        cams, gen = _bin_draw(labels, name, num_gen, seed)
        fakes = torch.cat([parsing_renderer(c, gen) for c in cams.split(batch)])
        results.update(_rates(fakes, "", name, min_fraction))
        resolution = fakes.shape[-1]
    reals = {} if reals is None else reals
    if (resolution, min_fraction) not in reals:
        reals[resolution, min_fraction] = real_parsing_face_rates(dataset, resolution, min_fraction)
    return {**results, **reals[resolution, min_fraction]}


# ----- does the image show the face that the generator's own parsing map lays out? -----

AGREEMENT_BINS = ("front", "side")   # the back has no face parts to agree on


def face_part_agreement(probs: torch.Tensor, fractions: torch.Tensor) -> float:
    """Cosine similarity of the detector's face-part cell probabilities [N, h, w] and the parsing maps'
    face-part cell fractions [N, h, w], pooled over every cell of every image: 1 when the detector finds
    face parts in the image exactly where (and in proportion to how much) the maps put them, 0 when only
    where they put none. Scale-free, so the detector's uncalibrated probabilities do not matter; 0 when
    either side is all zero."""
    den = (probs.double().square().sum() * fractions.double().square().sum()).sqrt()
    return float((probs.double() * fractions.double()).sum() / den) if den > 0 else 0.0


def _batches_agreement(batches, detector: FacePartDetector) -> float:
    """:func:`face_part_agreement` over ``batches``, an iterable of (images [n, 3, H, W], their class maps
    [n, H', W']): only the cell probabilities and fractions are kept, not the images."""
    probs, fractions = [], []
    for images, maps in batches:
        with torch.no_grad():
            probs.append(torch.sigmoid(detector(images)))
        fractions.append(face_part_fractions(maps, probs[-1].shape[-1]))
    return face_part_agreement(torch.cat(probs), torch.cat(fractions))


def real_face_part_agreement(dataset, detector: FacePartDetector, batch: int = 256) -> Dict[str, float]:
    """``real_face_part_agreement_<bin>``: :func:`face_part_agreement` of the dataset's own images and
    parsing maps per bin of :data:`AGREEMENT_BINS`, the value a generator whose images match its parsing
    as well as the reals match theirs would reach."""
    require_parsing(dataset, "face-part-agreement (the reals' agreement)")
    labels = dataset_labels(dataset)

    def batches(indices):   # read ``batch`` items at a time: the images are never all in memory
        for start in range(0, len(indices), batch):
            items = [dataset[int(i)] for i in indices[start:start + batch]]
            yield (torch.from_numpy(np.stack([it["image"] for it in items])),
                   torch.from_numpy(np.stack([it["parsing"] for it in items])))

    results = {}
    for name in AGREEMENT_BINS:
        results[f"real_face_part_agreement_{name}"] = _batches_agreement(
            batches(np.flatnonzero(_bin_mask(labels, name))), detector)
    return results


def face_part_agreement_rates(renderer: Renderer, parsing_renderer: Renderer, dataset, detector: FacePartDetector,
                              num_gen: int = 1000, seed: int = 0, batch: int = 32,
                              reals: Optional[Dict] = None) -> Dict[str, float]:
    """Per yaw bin of :data:`AGREEMENT_BINS`, ``face_part_agreement_<bin>``: :func:`face_part_agreement`
    between the face-part detector on ``num_gen`` rendered images and the same heads' own parsing maps
    (``parsing_renderer``, ``fid.generator_renderer(..., output='parsing')``); beside it the reals' value
    (:func:`real_face_part_agreement`).

    parsing-face-rate-bins shows whether the parsing branch lays out a face; this shows whether the
    picture draws it there: a generator can satisfy the discriminator's parsing channels with a face
    layout while its image shows skin (docs/metrics.md). Both renderers get a copy of the same
    torch.Generator and the same calls, so they draw the same latents and ray jitter, i.e. the same
    heads, provided they split a call into batches alike (``generator_renderer`` with the same
    ``batch``, as :class:`~training.metrics.runner.MetricRunner` builds them). Cameras and latents are
    drawn as in :func:`face_rates`.

    ``reals``: a dict the caller keeps across generators; the reals' values are stored in it by the
    detector's weights digest and computed once for each detector."""
    require_parsing(dataset, "face-part-agreement (the reals' agreement)")
    labels = dataset_labels(dataset)
    results = {}
    for name in AGREEMENT_BINS:
        cams, gen = _bin_draw(labels, name, num_gen, seed)
        twin = torch.Generator()
        twin.set_state(gen.get_state())
        results[f"face_part_agreement_{name}"] = _batches_agreement(
            ((renderer(c, gen), parsing_renderer(c, twin)) for c in cams.split(batch)), detector)
    reals = {} if reals is None else reals
    key = ("face-part-agreement", weights_digest(detector))
    if key not in reals:
        reals[key] = real_face_part_agreement(dataset, detector)
    return {**results, **reals[key]}
