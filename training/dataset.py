"""Training dataset of posed head images with optional masks and parsing maps (reference.md §6).

:class:`HeadDataset` reads a folder or zip in the packed or the PanoHead layout (training.dataset_io,
docs/datasets.md). The item index runs over *virtual* copies of the raw images:

    raw images  --max_size-->  subset  --back_repeat-->  back views repeated  --xflip-->  x2 mirrored

Each item is a dict of numpy arrays (the default DataLoader collate turns them into tensors):

* ``image``   uint8 ``[3, H, W]`` (RGB; the training loop maps it to x/127.5 − 1, §6.1)
* ``label``   float32 ``[25]``, mirrored for flipped copies (§1.6); ``[0]`` when ``use_labels=False``
* ``mask``    uint8 ``[1, H, W]`` 0..255, only when the dataset has masks and ``load_masks``
* ``parsing`` uint8 ``[H, W]`` class indices 0..19 (spherehead.parsing), left/right classes
  swapped for flipped copies; only when the dataset has parsing maps and ``load_parsing``
* ``xflip``   bool, ``raw_idx`` int64

:meth:`get_label` returns the *un-mirrored* label of an item: generator cameras are drawn uniformly
over the item index with it (§6.3), so back views are over-weighted by ``back_repeat`` exactly like
the real images, and mirroring is left to the generator's own cameras.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import torch

from spherehead.camera import MIRROR_INDICES, camera_yaw_pitch
from training.dataset_io import DatasetError, decode_image, label_to_floats, open_layout, pair_by_stem, \
    parse_labels_json
from spherehead.parsing import FLIP_LUT, NUM_CLASSES

__all__ = ["HeadDataset"]


class HeadDataset(torch.utils.data.Dataset):
    """Posed head images (+ masks, parsing maps) from a folder or zip; see the module docstring.

    Args:
        path: folder or zip (packed layout, or PanoHead layout with ``mask_path``/``parsing_path``).
        resolution: required image size; None accepts the size the images have.
        use_labels: return camera labels (they are required to exist either way when True).
        xflip: add a horizontally mirrored copy of every item.
        back_repeat: repeat images whose camera yaw is at least ``back_yaw_deg`` from the front.
        back_yaw_deg: threshold on |yaw| (degrees, 0 = frontal, from :func:`camera_yaw_pitch`).
        max_size: keep a random subset of this many raw images (chosen with ``random_seed``).
        load_masks, load_parsing: return masks / parsing maps when the dataset has them.
        mask_path, parsing_path: separate mask / parsing roots (PanoHead layout only).
    """

    def __init__(self, path, resolution: Optional[int] = None, use_labels: bool = True, xflip: bool = False,
                 back_repeat: int = 1, back_yaw_deg: float = 90.0, max_size: Optional[int] = None,
                 random_seed: int = 0, load_masks: bool = True, load_parsing: bool = True,
                 mask_path=None, parsing_path=None):
        if back_repeat < 1:
            raise ValueError(f"back_repeat must be >= 1, got {back_repeat}")
        layout = open_layout(path, mask_path, parsing_path)
        self._path = layout.path
        self._name = os.path.splitext(os.path.basename(os.path.normpath(self._path)))[0]
        # Parts (where the files are) and per-raw-image names of masks/parsing maps (None: not loaded).
        self._images, self._mask_part, self._parsing_part = layout.images, layout.masks, layout.parsing
        self._masks: Optional[List[str]] = None
        self._parsing: Optional[List[str]] = None
        self._fnames: List[str] = sorted(layout.images.files)
        if not self._fnames:
            raise DatasetError(f"{self._path}: contains no images")
        self._labels = self._load_labels(layout) if (use_labels or layout.labels) else None
        if use_labels and self._labels is None:
            raise DatasetError(f"{self._path}: has no dataset.json; camera labels are required "
                               "(use_labels=False to load images only)")
        self._use_labels = use_labels
        if load_masks and layout.masks is not None:
            self._masks = self._pair(layout, layout.masks, "mask")
        if load_parsing and layout.parsing is not None:
            self._parsing = self._pair(layout, layout.parsing, "parsing map")
        self._resolution = self._check_sizes(resolution)
        self._build_index(xflip, back_repeat, back_yaw_deg, max_size, random_seed)

    # ------------------------------------------------------------------ construction helpers

    def _load_labels(self, layout) -> Optional[np.ndarray]:
        """Labels float32 [N_raw, 25] in ``self._fnames`` order; every image needs exactly one."""
        if layout.labels is None:
            return None
        where = os.path.join(self._path, "dataset.json")
        table: Dict[str, np.ndarray] = {}
        for name, value in parse_labels_json(layout.read_labels_json(), where):
            arr, why = label_to_floats(value)
            if arr is None or arr.size != 25 or not np.isfinite(arr).all():
                why = why or (f"has {arr.size} numbers, expected 25" if arr.size != 25 else "is not finite")
                raise DatasetError(f"{where}: label of {name} {why} (run tools/dataset_tool.py validate)")
            if name in table:
                raise DatasetError(f"{where}: duplicate label for {name}")
            table[name] = arr
        missing = [f for f in self._fnames if f not in table]
        extra = sorted(set(table) - set(self._fnames))
        for names, what in ((missing, "images without a label"), (extra, "labels without an image")):
            if names:
                more = f" and {len(names) - 5} more" if len(names) > 5 else ""
                raise DatasetError(f"{self._path}: {len(names)} {what}: {', '.join(names[:5])}{more}")
        return np.stack([table[f] for f in self._fnames]).astype(np.float32)

    def _pair(self, layout, part, what: str) -> List[str]:
        """Names of ``part`` files in ``self._fnames`` order (each image needs exactly one)."""
        pairs, missing, orphans = pair_by_stem(layout.images, part)
        if missing or orphans:
            names = [layout.images.where(m) + f" (no {what})" for m in missing] + \
                    [part.where(o) + " (matches no image, or ambiguous)" for o in orphans]
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            raise DatasetError(f"{self._path}: {what}s do not match the images: {', '.join(names[:5])}{more}")
        return [pairs[f] for f in self._fnames]

    def _check_sizes(self, resolution: Optional[int]) -> int:
        """All images square, one power-of-two size (read from the headers only)."""
        want = resolution
        for fname in self._fnames:
            try:
                w, h = self._images.size(fname)
            except Exception as e:  # corrupt header: name the file instead of failing in a DataLoader later
                raise DatasetError(f"{self._images.where(fname)}: cannot be read as an image ({e})") from None
            if w != h or (want is not None and w != want) or w & (w - 1):
                expected = f"{want}x{want}" if want is not None else "a square power-of-two size"
                raise DatasetError(f"{self._images.where(fname)}: image is {w}x{h}, expected {expected} "
                                   f"(like the images before it)")
            want = w
        return want

    def _build_index(self, xflip, back_repeat, back_yaw_deg, max_size, seed) -> None:
        raw = np.arange(len(self._fnames), dtype=np.int64)
        if max_size is not None and max_size < raw.size:
            raw = np.sort(np.random.RandomState(seed).permutation(raw)[:max_size])
        if back_repeat > 1:
            if self._labels is None:
                raise DatasetError(f"{self._path}: back_repeat needs camera labels")
            yaw, _ = camera_yaw_pitch(torch.from_numpy(self._labels[raw]), degrees=True)
            counts = np.where(np.abs(yaw.numpy()) >= back_yaw_deg, back_repeat, 1)
            raw = np.repeat(raw, counts)
        flips = np.zeros(raw.size, dtype=bool)
        if xflip:
            raw, flips = np.concatenate([raw, raw]), np.concatenate([flips, ~flips])
        self._raw_idx, self._xflip = raw, flips

    # ------------------------------------------------------------------ properties

    @property
    def name(self) -> str:
        return self._name

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def num_channels(self) -> int:
        return 3

    @property
    def image_shape(self) -> List[int]:
        return [3, self._resolution, self._resolution]

    @property
    def has_labels(self) -> bool:
        return self._use_labels

    @property
    def label_dim(self) -> int:
        return 25 if self._use_labels else 0

    @property
    def has_masks(self) -> bool:
        return self._masks is not None

    @property
    def has_parsing(self) -> bool:
        return self._parsing is not None

    @property
    def num_raw(self) -> int:
        return len(self._fnames)

    @property
    def label_std(self) -> np.ndarray:
        """Per-entry std float32 [25] over the raw labels (the generator's ``dataset_label_std``, §2.3)."""
        self._require_labels()
        return self._labels.std(axis=0).astype(np.float32)

    def raw_name(self, idx: int) -> str:
        """Image name (relative to the image root) of item ``idx``."""
        return self._fnames[self._raw_idx[idx]]

    def is_flipped(self, idx: int) -> bool:
        return bool(self._xflip[idx])

    # ------------------------------------------------------------------ items

    def __len__(self) -> int:
        return int(self._raw_idx.size)

    def _require_labels(self) -> None:
        if not self._use_labels:
            raise DatasetError(f"{self._path}: labels are disabled (use_labels=False)")

    def get_label(self, idx: int) -> np.ndarray:
        """Un-mirrored label float32 [25] of item ``idx`` (for generator cameras, §6.3)."""
        self._require_labels()
        return self._labels[self._raw_idx[idx]].copy()

    def sample_gen_cameras(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` generator cameras float32 [n, 25]: :meth:`get_label` of items drawn uniformly over the index."""
        self._require_labels()
        idx = torch.randint(len(self), (n,), generator=generator).numpy()
        return torch.from_numpy(self._labels[self._raw_idx[idx]].copy())

    def _read(self, part, name: str, what: str) -> np.ndarray:
        try:
            img = decode_image(part.read(name))
        except Exception as e:  # a corrupt file: name it rather than failing deep inside a DataLoader
            raise DatasetError(f"{part.where(name)}: cannot be read as {what} ({e})") from None
        if img.size != (self._resolution, self._resolution):
            raise DatasetError(f"{part.where(name)}: {what} is {img.size[0]}x{img.size[1]}, "
                               f"expected {self._resolution}x{self._resolution}")
        # np.array copies: arrays over Pillow buffers are read-only, which torch warns about when collating.
        if what == "an image":
            return np.array(img.convert("RGB"))
        if what == "a mask":
            return np.array(img.convert("L"))
        if img.mode not in ("L", "P"):
            raise DatasetError(f"{part.where(name)}: parsing map has mode {img.mode}, expected L or P")
        return np.array(img)

    def __getitem__(self, idx: int) -> Dict[str, np.ndarray]:
        raw, flip = int(self._raw_idx[idx]), bool(self._xflip[idx])
        fname = self._fnames[raw]
        image = self._read(self._images, fname, "an image").transpose(2, 0, 1)      # [3, H, W]
        item = {"image": image, "xflip": flip, "raw_idx": np.int64(raw)}
        if self._use_labels:
            label = self._labels[raw].copy()
            if flip:
                label[list(MIRROR_INDICES)] *= -1
            item["label"] = label
        else:
            item["label"] = np.zeros([0], dtype=np.float32)
        if self._masks is not None:
            item["mask"] = self._read(self._mask_part, self._masks[raw], "a mask")[None]
        if self._parsing is not None:
            parsing = self._read(self._parsing_part, self._parsing[raw], "a parsing map")
            if parsing.max(initial=0) >= NUM_CLASSES:
                raise DatasetError(f"{self._parsing_part.where(self._parsing[raw])}: class index "
                                   f"{int(parsing.max())} out of range 0..{NUM_CLASSES - 1}")
            item["parsing"] = FLIP_LUT[parsing[:, ::-1]] if flip else parsing
        if flip:
            item["image"] = image[:, :, ::-1]
            if "mask" in item:
                item["mask"] = item["mask"][:, :, ::-1]
        return {k: (np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v) for k, v in item.items()}


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless index stream: epoch e is ``default_rng([seed, e]).permutation(size)``; the global stream is
    dealt round-robin to the ranks, and ``start`` skips that many of this rank's indices (resume)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0):
        if size < 1:
            raise ValueError("the dataset is empty")
        self.size, self.rank, self.world_size, self.seed, self.start = size, rank, world_size, seed, start

    def __iter__(self):
        k, epoch_cached, perm = self.start, -1, None
        while True:
            epoch, offset = divmod(k * self.world_size + self.rank, self.size)
            if epoch != epoch_cached:
                perm, epoch_cached = np.random.default_rng([self.seed, epoch]).permutation(self.size), epoch
            yield int(perm[offset])
            k += 1
