"""A feature net for FID/KID trained on the dataset's own parsing maps (no downloaded weights).

FID/KID need a feature network that maps images to a space where "looks like a head of this set"
is near and "does not" is far. The standard Inception cannot be downloaded everywhere; a dataset with
parsing maps (the synthetic set) lets us train a small one in a minute instead: a CNN that predicts,
for every 4×4-pixel cell of the image resized to 64², the fraction of each of the 20 parsing classes
(:mod:`spherehead.parsing`). To do that it must find the head, its outline, hair, ears, eyes and mouth
and tell left from right, which are the things a head generator must get right; colour and texture
beyond that matter less to it (colour-gain augmentation), so this is a *structure* FID.

The feature of an image is the global average of the last hidden layer (``width`` values) followed by
the image-mean of the softmax class probabilities (20 values: "how much hair, skin, face is
predicted"). These numbers are comparable only between runs using the same trained net (the same
dataset and options: the cache key), never with Inception FIDs.

Training: soft cross-entropy against the per-cell class fractions, mirror (with left/right classes
swapped), shift and colour-gain augmentation, Adam, deterministic in ``seed``, on all but ``holdout``
of the heads; the per-pixel parsing accuracy on the held-out heads is the report.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from spherehead.parsing import FLIP_LUT, NUM_CLASSES
from training.metrics.dataset_nets import CellEncoder, fit, heldout_split, load_or_train, load_parsed_set

# Channel permutation of class maps under a horizontal mirror (l/r brows, eyes, ears swapped).
MIRROR_CLASSES = torch.from_numpy(FLIP_LUT[:NUM_CLASSES].astype(np.int64))
NAME = "parsing"


@dataclass
class ParsingFeatureOptions:
    resolution: int = 64          # images are resized to this before the net; targets are r/4 × r/4 cells
    width: int = 64               # channels of the inner layers (features: width + 20 values)
    steps: int = 600              # see docs/metrics.md for accuracy vs steps
    batch: int = 32
    lr: float = 3e-3
    holdout: float = 0.25         # fraction of heads held out for the accuracy report
    seed: int = 0


class ParsingFeatureNet(CellEncoder):
    """Images [N, 3, H, W] (uint8, or float in [-1, 1]) -> features float [N, width + 20] (``forward``), or
    class logits [N, 20, r/4, r/4] at net resolution r (``parse``).

    Four 3×3 convs (stride 2, stride 2, dilation 2, dilation 4): the receptive field (~55 px of 64) covers
    most of the head, which telling a left eye from a right one needs; everything past the second layer
    runs at 16², which keeps training on a CPU to about a minute.
    """

    name = NAME   # what results record as "features"

    def __init__(self, resolution: int = 64, width: int = 64):
        super().__init__(resolution, width, dilations=(2, 4), out_channels=NUM_CLASSES)
        self.report: Optional[Dict] = None   # held-out accuracy and cache key, set by the loader

    def parse(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [N, 20, r/4, r/4]."""
        return self.out(self.hidden(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features [N, width + 20]: mean hidden activation, then mean predicted class probabilities."""
        h = self.hidden(images)
        probs = torch.softmax(self.out(h), dim=1)
        return torch.cat([h.mean(dim=(2, 3)), probs.mean(dim=(2, 3))], dim=1)


def class_fractions(parsing: np.ndarray, cells: int) -> torch.Tensor:
    """Fraction float32 [20, cells, cells] of each cell of the parsing map [H, W] that is of each class."""
    onehot = F.one_hot(torch.from_numpy(parsing.astype(np.int64)), NUM_CLASSES).permute(2, 0, 1).float()
    return F.adaptive_avg_pool2d(onehot[None], cells)[0]


def pixel_accuracy(logits: torch.Tensor, fractions: torch.Tensor) -> Dict[str, float]:
    """Per-pixel accuracy of the cell-wise argmax (each pixel gets its cell's class) against the true maps,
    given as class fractions [N, 20, h, w]: overall, on non-background pixels, and the ceiling (the
    majority class of every cell) that cells of this size allow."""
    pred = logits.argmax(dim=1, keepdim=True)
    correct = fractions.gather(1, pred)[:, 0]                       # [N, h, w] fraction of the cell right
    fg_correct = torch.where(pred[:, 0] != 0, correct, torch.zeros_like(correct))
    return {"pixel_accuracy": float(correct.mean()),
            "foreground_accuracy": float(fg_correct.sum() / (1 - fractions[:, 0]).sum().clamp_min(1e-9)),
            "cell_ceiling": float(fractions.max(dim=1).values.mean())}


def train_parsing_features(dataset, opts: ParsingFeatureOptions = ParsingFeatureOptions(),
                           progress: Optional[Callable[[int], None]] = None) -> Tuple[ParsingFeatureNet, Dict]:
    """Train on all but ``opts.holdout`` of the heads; report held-out per-pixel parsing accuracy."""
    images, parsing, _, groups = load_parsed_set(dataset, opts.resolution, "the parsing feature net (--features "
                                                 "parsing)")
    cells = opts.resolution // 4
    targets = torch.stack([class_fractions(p, cells) for p in parsing])
    del parsing
    rng = np.random.RandomState(opts.seed)
    held = heldout_split(groups, opts.holdout, rng)
    train_idx = np.flatnonzero(~held)
    with torch.random.fork_rng(devices=[]):   # deterministic in opts.seed, global RNG untouched
        torch.manual_seed(opts.seed)
        model = ParsingFeatureNet(opts.resolution, opts.width)
        # Cosine decay: at a few hundred steps the last ones at a small rate settle the net noticeably.
        fit(model, images, targets, train_idx, rng, opts, swap=MIRROR_CLASSES, cosine=True, progress=progress,
            forward=model.parse,
            loss_fn=lambda logits, y: -(y * F.log_softmax(logits, dim=1)).sum(dim=1).mean())   # soft cross-entropy
    report = {"heldout_images": int(held.sum()), "train_images": int((~held).sum()), "steps": opts.steps,
              "feature_dim": opts.width + NUM_CLASSES}
    if held.any():
        with torch.no_grad():
            logits = torch.cat([model.parse(x) for x in images[held].split(256)])
        report.update({f"heldout_{k}": round(v, 4) for k, v in pixel_accuracy(logits, targets[held]).items()})
    return model, report


def load_or_train_parsing_features(dataset, dataset_path, opts: ParsingFeatureOptions = ParsingFeatureOptions(),
                                   cache: Optional[str] = None,
                                   progress=None) -> Tuple[ParsingFeatureNet, Dict]:
    """The feature net for ``dataset`` from ``<cache>/feature-nets/parsing-<key>.safetensors``, trained and saved
    if absent. The report (also set as ``net.report``) adds ``cached``, ``key`` (the file's key: what the net
    was trained from) and ``weights`` (what came out): FIDs are comparable only under the same ``weights``."""
    model, report, path = load_or_train("feature-nets", NAME, dataset, dataset_path, opts, cache,
                                        lambda: ParsingFeatureNet(opts.resolution, opts.width),
                                        lambda: train_parsing_features(dataset, opts, progress))
    report["key"] = os.path.basename(path)[len(NAME) + 1:-len(".safetensors")]
    model.report = report
    return model, report
