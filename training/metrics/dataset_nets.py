"""Shared plumbing of the small nets that metrics train on a dataset's own parsing maps.

Two metric nets learn from the reals and their parsing maps instead of downloaded weights: the
artifact-rate face-part detector (:mod:`training.metrics.artifacts`) and the parsing feature net for
FID/KID (:mod:`training.metrics.parsing_features`). They share how the reals are loaded (resized to
the net's resolution, grouped by head), how heads are held out for the accuracy report, the
augmentation, and the cache: ``<cache>/<folder>/<prefix>-<key>.safetensors``, keyed by the dataset
(path, labels, names, resolution) and the training options, written atomically, so each net is
trained once per dataset and a crash never leaves a truncated entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from training.metrics.features import MetricError, cache_dir


def require_parsing(dataset, who: str) -> None:
    """MetricError naming ``who`` when ``dataset`` has no parsing maps."""
    if not dataset.has_parsing:
        raise MetricError(f"{who} needs a dataset with parsing maps (e.g. the synthetic set)")


def load_parsed_set(dataset, resolution: int, who: str):
    """The reals with their parsing maps: images uint8 [N, 3, r, r] resized to ``resolution``, parsing maps
    (a list of uint8 [H, W] at dataset size), labels float32 [N, 25] and head group ids [N].

    ``who`` names the net in the error raised when the dataset has no parsing maps."""
    require_parsing(dataset, who)
    images: List[torch.Tensor] = []
    parsing, labels, groups = [], [], []
    for i in range(len(dataset)):
        item = dataset[i]
        img = torch.from_numpy(item["image"])[None].float()
        if img.shape[-1] != resolution:
            img = F.interpolate(img, size=(resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)
        images.append(img.round().clamp(0, 255).to(torch.uint8))
        parsing.append(item["parsing"])
        labels.append(item["label"])
        name = dataset.raw_name(i)
        groups.append(name.split("/")[0] if "/" in name else name)   # synthetic sets: one folder per head
    return torch.cat(images), parsing, torch.from_numpy(np.stack(labels)), np.array(groups)


class CellEncoder(torch.nn.Module):
    """The trunk both metric nets share: images [N, 3, H, W] (uint8, or float in [-1, 1]) resized to
    ``resolution`` r, then 3×3 convs with leaky ReLU — two of stride 2 (3 -> width/2 -> width) and one at
    ``width`` per entry of ``dilations`` — giving hidden maps [N, width, r/4, r/4]; a 1×1 conv ``out`` maps
    them to ``out_channels`` cell logits. Subclasses keep these attribute names (their cached weights use them)."""

    def __init__(self, resolution: int, width: int, dilations: Tuple[int, ...], out_channels: int):
        super().__init__()
        self.resolution = resolution
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(3, width // 2, 3, stride=2, padding=1),
                                          torch.nn.Conv2d(width // 2, width, 3, stride=2, padding=1)])
        self.convs.extend(torch.nn.Conv2d(width, width, 3, padding=d, dilation=d) for d in dilations)
        self.out = torch.nn.Conv2d(width, out_channels, 1)

    def hidden(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.out.weight.device)
        x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        return x


def heldout_split(groups: np.ndarray, holdout: float, rng: np.random.RandomState) -> np.ndarray:
    """bool [N]: the images of a random ``holdout`` fraction of the heads (by group id). Whole heads are
    held out, so the accuracy report measures new heads, not new views of memorised ones."""
    heads = rng.permutation(sorted(set(groups)))
    return np.isin(groups, heads[:int(round(len(heads) * holdout))])


def mirror(y: torch.Tensor, swap: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Targets [..., h, w] mirrored horizontally; with ``swap`` (a channel permutation of dim 1 of
    [N, C, h, w] class maps) also left/right classes swapped, as a mirror turns a left eye into a right one."""
    y = y.flip(-1)
    return y if swap is None else y[:, swap]


def augment(x: torch.Tensor, y: torch.Tensor,
            swap: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mirror, shift by whole target cells (up to 2) and scale each colour channel by 0.8-1.2 — images
    [N, 3, r, r] in [-1, 1] and their target maps [N, (C,) h, w] alike (see :func:`mirror` for ``swap``).
    With a few hundred training images these keep a net from memorising the colours and placement of
    particular heads. Uses the global RNG (seeded by the caller)."""
    n, cell = x.shape[0], x.shape[-1] // y.shape[-1]
    flip = torch.rand(n) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    y = torch.where(flip.view(-1, *[1] * (y.ndim - 1)), mirror(y, swap), y)
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,)))
    x, y = torch.roll(x, (dy * cell, dx * cell), dims=(-2, -1)), torch.roll(y, (dy, dx), dims=(-2, -1))
    gain = 0.8 + 0.4 * torch.rand(n, 3, 1, 1)
    return ((x + 1) * gain - 1).clamp(-1, 1), y


def fit(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, train_idx: np.ndarray,
        rng: np.random.RandomState, opts, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        swap: Optional[torch.Tensor] = None, cosine: bool = False,
        progress: Optional[Callable[[int], None]] = None,
        forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.nn.Module:
    """Adam on ``loss_fn(forward(x), y)`` (``forward`` defaults to ``model``) for ``opts.steps`` batches of ``opts.batch`` drawn by ``rng`` from
    ``train_idx``, augmented (:func:`augment`); ``cosine`` decays the rate to 0. Returns the model in eval
    mode without gradients. Call it under a seeded ``torch.random.fork_rng`` (the augmentation draws from
    the global RNG)."""
    optim = torch.optim.Adam(model.parameters(), lr=opts.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 0.5 * (1 + np.cos(np.pi * s / opts.steps))) \
        if cosine else None
    for step in range(opts.steps):
        idx = torch.from_numpy(train_idx[rng.randint(len(train_idx), size=opts.batch)])
        x, y = augment(images[idx].float() / 127.5 - 1, targets[idx], swap=swap)
        loss = loss_fn((forward or model)(x), y)
        optim.zero_grad()
        loss.backward()
        optim.step()
        if sched is not None:
            sched.step()
        if progress is not None:
            progress(step)
    return model.eval().requires_grad_(False)


def cache_key(dataset, dataset_path, opts) -> str:
    """Path + a hash of the labels, names and size + the options (a dataclass): a rewritten dataset at the
    same path, or other options, get a new key."""
    h = hashlib.sha256()
    h.update(os.path.abspath(os.fspath(dataset_path)).encode())
    h.update(np.stack([dataset.get_label(i) for i in range(len(dataset))]).tobytes())
    h.update("\n".join(dataset.raw_name(i) for i in range(len(dataset))).encode())
    h.update(str(dataset.resolution).encode())
    h.update(json.dumps(asdict(opts), sort_keys=True).encode())
    return h.hexdigest()[:24]


def weights_digest(model: torch.nn.Module) -> str:
    """The first 16 hex characters of :func:`torch_utils.distributed.module_digest` over all of ``model``'s
    parameters and buffers.

    The cache key names what a net was trained *from*; this names what came out. Training is
    deterministic on one machine, but another CPU (other vector kernels, other float rounding) can train
    a different net from the same key, and metrics are comparable only under the same weights."""
    from torch_utils.distributed import module_digest
    return module_digest(model, skip=None)[:16]


def load_or_train(folder: str, prefix: str, dataset, dataset_path, opts, cache: Optional[str],
                  build: Callable[[], torch.nn.Module],
                  train: Callable[[], Tuple[torch.nn.Module, Dict]]) -> Tuple[torch.nn.Module, Dict, str]:
    """(net, report, cache file): the net from ``<cache>/<folder>/<prefix>-<key>.safetensors`` (``build()``
    makes the empty module), else ``train()``'s net saved there with its report and options as metadata.
    The report gets ``cached`` (True when loaded) and ``weights`` (:func:`weights_digest`)."""
    from safetensors.torch import load_file, safe_open, save_file
    where = os.path.join(cache_dir(cache), folder)
    path = os.path.join(where, f"{prefix}-{cache_key(dataset, dataset_path, opts)}.safetensors")
    if os.path.isfile(path):
        with safe_open(path, "pt") as f:
            report = json.loads(f.metadata()["report"])
        model = build()
        model.load_state_dict(load_file(path))
        return model.eval().requires_grad_(False), dict(report, cached=True, weights=weights_digest(model)), path
    model, report = train()
    os.makedirs(where, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=where)
    os.close(fd)
    try:   # temp file + rename: a crash never leaves a truncated cache entry
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp,
                  metadata={"report": json.dumps(report), "options": json.dumps(asdict(opts))})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return model, dict(report, cached=False, weights=weights_digest(model)), path
