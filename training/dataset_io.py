"""Reading and writing head datasets: folders or zips in the packed or the PanoHead layout.

Two layouts are accepted (docs/datasets.md):

* **packed** (what ``tools/dataset_tool.py pack`` and the synthetic generator write), as a folder or
  a zip: ``dataset.json`` at the root, images under ``images/``, optional masks under ``masks/`` and
  parsing maps under ``parsing/``.
* **PanoHead**: a folder or zip of images with ``dataset.json`` at its root; masks and parsing maps in
  separate parallel folders/zips passed explicitly.

Either way a file is named by its path relative to its own root (``00000/img00000000.png``); that is
the name used in ``dataset.json``. A mask or parsing map belongs to the image with the same relative
path *without extension* (masks and parsing maps are usually PNG while images may be JPEG).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from spherehead.fileio import temp_sibling

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LABEL_FILE = "dataset.json"
PACKED_DIRS = {"images": "images/", "masks": "masks/", "parsing": "parsing/"}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps so that equal content gives equal zip bytes


class DatasetError(ValueError):
    """A dataset cannot be used as given; the message names the file and the reason."""


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def stem(name: str) -> str:
    """Relative path without its extension: the key that pairs images with masks and parsing maps."""
    return os.path.splitext(name)[0]


class Source:
    """Read-only view of a folder or a zip: sorted relative POSIX names and their bytes.

    The zip handle is opened lazily and dropped when pickled, so a Source can go to DataLoader workers.
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self._zip: Optional[zipfile.ZipFile] = None
        if os.path.isdir(self.path):
            self.kind = "dir"
            names = []
            for root, _dirs, files in os.walk(self.path):
                for f in files:
                    full = os.path.join(root, f)
                    names.append(os.path.relpath(full, self.path).replace(os.sep, "/"))
        elif os.path.isfile(self.path) and zipfile.is_zipfile(self.path):
            self.kind = "zip"
            names = [n for n in self._open().namelist() if not n.endswith("/")]
        elif os.path.exists(self.path):
            raise DatasetError(f"{self.path}: is neither a folder nor a zip file")
        else:
            raise DatasetError(f"{self.path}: does not exist")
        self.names: List[str] = sorted(names)

    def _open(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip

    def read(self, name: str) -> bytes:
        if self.kind == "zip":
            return self._open().read(name)
        with open(os.path.join(self.path, *name.split("/")), "rb") as f:
            return f.read()

    def stream(self, name: str):
        """A binary file object for ``name`` (lets Pillow read just an image header)."""
        if self.kind == "zip":
            return self._open().open(name)
        return open(os.path.join(self.path, *name.split("/")), "rb")

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __getstate__(self):
        return dict(self.__dict__, _zip=None)


@dataclass
class Part:
    """Files of one kind (images, masks or parsing maps): ``files`` maps a name relative to the part's
    root to the full name inside ``source``; ``shown`` prefixes names in messages (``masks/`` ...)."""
    source: Source
    prefix: str
    files: Dict[str, str]
    shown: str

    def read(self, rel: str) -> bytes:
        return self.source.read(self.files[rel])

    def size(self, rel: str) -> Tuple[int, int]:
        """(width, height) of image ``rel`` from its header only."""
        import PIL.Image
        with self.source.stream(self.files[rel]) as f, PIL.Image.open(f) as img:
            return img.size

    def where(self, rel: str) -> str:
        """Short name of file ``rel`` for messages: ``images/a.png``, ``masks/a.png``, ``a.png``."""
        return self.shown + rel


def _part(source: Source, prefix: str, shown: str, skip: Tuple[str, ...] = ()) -> Part:
    files = {}
    for name in source.names:
        if name.startswith(prefix) and is_image_name(name):
            rel = name[len(prefix):]
            if not any(rel.startswith(s) for s in skip):
                files[rel] = name
    return Part(source, prefix, files, shown)


@dataclass
class Layout:
    """Where a dataset's pieces are; ``masks``/``parsing`` are None when the dataset has none."""
    images: Part
    masks: Optional[Part]
    parsing: Optional[Part]
    labels: Optional[str]        # name of dataset.json inside images.source, None when absent
    packed: bool

    @property
    def path(self) -> str:
        return self.images.source.path

    def read_labels_json(self) -> bytes:
        return self.images.source.read(self.labels)


def open_layout(path, masks=None, parsing=None) -> Layout:
    """Find the layout of ``path`` (folder or zip); ``masks``/``parsing`` are separate PanoHead-style roots.

    A source with an ``images/`` directory is packed; giving ``masks``/``parsing`` for a packed source
    is an error (it carries its own).
    """
    src = Source(path)
    packed = any(n.startswith(PACKED_DIRS["images"]) for n in src.names)
    labels = LABEL_FILE if LABEL_FILE in src.names else None
    if packed:
        if masks is not None or parsing is not None:
            raise DatasetError(f"{src.path}: is a packed dataset (has images/); it carries its own masks/ and "
                               "parsing/, so separate mask or parsing roots are not accepted")
        own = {k: _part(src, p, p) for k, p in PACKED_DIRS.items() if any(n.startswith(p) for n in src.names)}
        return Layout(own["images"], own.get("masks"), own.get("parsing"), labels, True)
    images = _part(src, "", "", skip=tuple(PACKED_DIRS.values()))
    extra = {}
    for key, root in (("masks", masks), ("parsing", parsing)):
        if root is not None:
            extra[key] = _part(Source(root), "", os.path.basename(os.path.normpath(os.fspath(root))) + "/")
    return Layout(images, extra.get("masks"), extra.get("parsing"), labels, False)


def pair_by_stem(images: Part, other: Part) -> Tuple[Dict[str, str], List[str], List[str]]:
    """Match ``other`` files to images by stem.

    Returns ({image rel: other rel}, images without a match, other files matching no image or more
    than one candidate per stem, i.e. ambiguous like ``a.png`` and ``a.jpg``).
    """
    by_stem: Dict[str, List[str]] = {}
    for rel in other.files:
        by_stem.setdefault(stem(rel), []).append(rel)
    image_stems = {stem(rel) for rel in images.files}
    pairs, missing = {}, []
    for rel in images.files:
        cands = by_stem.get(stem(rel), [])
        if len(cands) == 1:
            pairs[rel] = cands[0]
        elif not cands:
            missing.append(rel)
    bad_other = [r for s, rels in by_stem.items() for r in rels if s not in image_stems or len(rels) > 1]
    return pairs, missing, sorted(bad_other)


def parse_labels_json(data: bytes, where: str) -> List[Tuple[str, object]]:
    """``dataset.json`` bytes -> list of (name, raw label value) in file order; structure errors raise."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{where}: is not valid JSON ({e})") from None
    labels = obj.get("labels") if isinstance(obj, dict) else None
    if not isinstance(labels, list):
        raise DatasetError(f"{where}: expected an object {{\"labels\": [[name, [25 numbers]], ...]}}")
    out = []
    for i, entry in enumerate(labels):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
            raise DatasetError(f"{where}: labels[{i}] is not a [name, [25 numbers]] pair")
        out.append((entry[0].replace("\\", "/"), entry[1]))
    return out


def label_to_floats(value) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """One raw label value -> (float64 [N] array, None) or (None, reason). Numbers may be strings."""
    if not isinstance(value, (list, tuple)):
        return None, f"label is a {type(value).__name__}, expected a list of 25 numbers"
    out = np.empty(len(value), dtype=np.float64)
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            return None, f"label entry {i} ({v!r}) is not a number"
        try:
            out[i] = float(v)
        except ValueError:
            return None, f"label entry {i} ({v!r}) is not a number"
    return out, None


def decode_image(data: bytes):
    """Bytes -> fully decoded PIL image (``load()`` so that a truncated file fails here, not later)."""
    import PIL.Image
    img = PIL.Image.open(io.BytesIO(data))
    img.load()
    return img


def encode_png(array: np.ndarray) -> bytes:
    """uint8 ``[H, W]`` or ``[H, W, 3]`` -> PNG bytes (no metadata, so equal pixels give equal bytes)."""
    import PIL.Image
    buf = io.BytesIO()
    PIL.Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def labels_json_bytes(labels: List[Tuple[str, List[float]]]) -> bytes:
    """The ``dataset.json`` text for [(name, 25 floats)], numbers as JSON numbers."""
    entries = [[name, [float(x) for x in label]] for name, label in labels]
    return json.dumps({"labels": entries}, indent=None, separators=(",", ":")).encode("utf-8")


class DatasetWriter:
    """Write a packed dataset to ``dest`` (a ``.zip`` file or a folder) atomically.

    Files go to a temporary sibling first and are renamed into place by :meth:`close`; on error
    (or :meth:`abort`) nothing is left at ``dest``. An existing ``dest`` is refused unless ``force``.
    """

    def __init__(self, dest, force: bool = False):
        self.dest = os.path.abspath(os.fspath(dest))
        self.is_zip = self.dest.lower().endswith(".zip")
        parent = os.path.dirname(self.dest)
        if not os.path.isdir(parent):
            raise DatasetError(f"{dest}: the output folder {parent} does not exist")
        if os.path.exists(self.dest) and not force:
            raise DatasetError(f"{dest}: already exists (pass --force to overwrite it)")
        if os.path.isdir(self.dest) and self.is_zip:
            raise DatasetError(f"{dest}: is a directory")
        if os.path.isdir(self.dest) and os.listdir(self.dest) and \
                not os.path.isfile(os.path.join(self.dest, LABEL_FILE)):
            # --force replaces the whole folder: only do that to something that looks like a dataset
            raise DatasetError(f"{dest}: is a non-empty folder without {LABEL_FILE}; refusing to replace it")
        self._tmp = temp_sibling(self.dest, folder=not self.is_zip)
        if self.is_zip:
            self._zip = zipfile.ZipFile(self._tmp, "w")
        self.closed = False

    def add(self, name: str, data: bytes) -> None:
        """Add file ``name`` (relative POSIX path). PNGs are stored, the rest deflated."""
        if self.is_zip:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            self._zip.writestr(info, data)
        else:
            full = os.path.join(self._tmp, *name.split("/"))
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.is_zip:
            self._zip.close()
            os.replace(self._tmp, self.dest)
            return
        if os.path.isdir(self.dest):
            shutil.rmtree(self.dest)
        elif os.path.exists(self.dest):
            os.remove(self.dest)
        os.replace(self._tmp, self.dest)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.is_zip:
            self._zip.close()
            os.remove(self._tmp)
        else:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
