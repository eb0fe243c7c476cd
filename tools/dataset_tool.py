"""Validate head datasets and pack them into zips at a chosen resolution.

    python tools/dataset_tool.py validate DATASET [--masks DIR] [--parsing DIR] [--any-size]
    python tools/dataset_tool.py pack --source DIR --dest OUT.zip --resolution 128 [--masks DIR] [--parsing DIR]

``validate`` reports every problem by file name (training.dataset_check) and exits with status 1 if
there is any error (warnings alone exit 0). ``pack`` validates the source first and writes nothing
unless it is clean: no file is ever dropped. It then writes the packed layout (docs/datasets.md)
atomically: images resized with Lanczos (sharp, the usual choice for photos), masks with antialiased
bilinear (soft 0..255 mattes must stay soft and must not ring), parsing maps with nearest neighbour
(class indices must not be blended).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict

try:
    import training  # noqa: F401
except ImportError:  # run as `python tools/dataset_tool.py` from a checkout: sys.path[0] is tools/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import numpy as np

from training.dataset_check import Report, validate_dataset
from training.dataset_io import (DatasetError, DatasetWriter, decode_image, encode_png, label_to_floats,
                                 labels_json_bytes, open_layout, pair_by_stem, parse_labels_json, stem)

__all__ = ["PackError", "pack", "main"]


class PackError(DatasetError):
    """The source failed validation; ``report`` lists every problem. Nothing was written."""

    def __init__(self, message: str, report: Report):
        super().__init__(message)
        self.report = report


def _resized(img, resolution: int, kind: str) -> np.ndarray:
    import PIL.Image
    if kind == "image":
        img, resample = img.convert("RGB"), PIL.Image.LANCZOS
    elif kind == "mask":
        img, resample = img.convert("L"), PIL.Image.BILINEAR
    else:   # parsing: the raw indices, never through a palette
        img, resample = PIL.Image.fromarray(np.asarray(img, dtype=np.uint8)), PIL.Image.NEAREST
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), resample=resample)
    return np.asarray(img)


def pack(source, dest, resolution: int, masks=None, parsing=None, force: bool = False) -> Dict[str, object]:
    """Validate ``source`` and write it as a packed zip ``dest`` with images of ``resolution``².

    ``masks``/``parsing``: separate roots when ``source`` is in the PanoHead layout. Output names keep
    each image's relative path with a ``.png`` extension; ``dataset.json`` is rewritten with numeric
    labels. Raises :class:`PackError` (with the report) if validation finds any error; warnings are
    returned in the summary. Returns ``{'dest', 'images', 'masks', 'parsing', 'warnings'}``.
    """
    if resolution < 4 or resolution & (resolution - 1):
        raise DatasetError(f"resolution must be a power of two >= 4, got {resolution}")
    if not str(dest).lower().endswith(".zip"):
        raise DatasetError(f"{dest}: the packed output must be a .zip file")
    report = validate_dataset(source, masks, parsing, same_size=False)
    if not report.ok:
        raise PackError(f"{source}: {len(report.errors)} problem(s) found; nothing written", report)
    layout = open_layout(source, masks, parsing)
    labels = dict(parse_labels_json(layout.read_labels_json(), "dataset.json"))
    parts = [(p, kind, pair_by_stem(layout.images, p)[0]) for p, kind in ((layout.masks, "mask"),
                                                                          (layout.parsing, "parsing")) if p]
    out_labels = []
    with DatasetWriter(dest, force=force) as writer:
        for rel in sorted(layout.images.files):
            name = stem(rel) + ".png"
            writer.add("images/" + name, encode_png(_resized(decode_image(layout.images.read(rel)), resolution,
                                                             "image")))
            for part, kind, pairs in parts:
                folder = "masks/" if kind == "mask" else "parsing/"
                writer.add(folder + name, encode_png(_resized(decode_image(part.read(pairs[rel])), resolution,
                                                              kind)))
            out_labels.append((name, label_to_floats(labels[rel])[0].tolist()))
        writer.add("dataset.json", labels_json_bytes(out_labels))
    n = len(out_labels)
    return dict(dest=str(dest), images=n, masks=n if layout.masks else 0, parsing=n if layout.parsing else 0,
                warnings=[str(w) for w in report.warnings])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Validate head datasets and pack them into zips (see docs/datasets.md)."""


_masks_opt = click.option("--masks", type=click.Path(exists=True), default=None,
                          help="Mask root (folder or zip) for a dataset in the PanoHead layout.")
_parsing_opt = click.option("--parsing", type=click.Path(exists=True), default=None,
                            help="Parsing-map root (folder or zip) for a dataset in the PanoHead layout.")


@main.command("validate")
@click.argument("path", type=click.Path(exists=True))
@_masks_opt
@_parsing_opt
@click.option("--any-size", is_flag=True, help="Accept any square sizes (a pack source) instead of one "
                                               "power-of-two size (a training set).")
@click.option("--resolution", type=click.IntRange(min=1), default=None, help="Require this image size.")
def validate_cmd(path, masks, parsing, any_size, resolution):
    """Check PATH (folder or zip) and list every problem by file; exit status 1 if any error."""
    try:
        report = validate_dataset(path, masks, parsing, same_size=not any_size, resolution=resolution)
    except DatasetError as e:
        raise click.ClickException(str(e)) from None
    click.echo(report.format())
    if not report.ok:
        raise click.ClickException(f"{path}: {len(report.errors)} problem(s) found")


@main.command("pack")
@click.option("--source", required=True, type=click.Path(exists=True), help="Dataset folder or zip to pack.")
@click.option("--dest", required=True, type=click.Path(dir_okay=False), help="Output .zip file.")
@click.option("--resolution", type=click.IntRange(min=4), default=512, show_default=True,
              help="Output image size (a power of two).")
@_masks_opt
@_parsing_opt
@click.option("--force", is_flag=True, help="Overwrite DEST if it exists.")
def pack_cmd(source, dest, resolution, masks, parsing, force):
    """Validate SOURCE, then write it to DEST as a packed zip at RESOLUTION (nothing written on any error)."""
    try:
        summary = pack(source, dest, resolution, masks=masks, parsing=parsing, force=force)
    except PackError as e:
        click.echo(e.report.format(), err=True)
        raise click.ClickException(str(e)) from None
    except (DatasetError, OSError) as e:
        raise click.ClickException(" ".join(str(e).split())) from None
    for w in summary["warnings"]:
        click.echo(w, err=True)
    click.echo(f"packed {summary['images']} images ({summary['masks']} masks, {summary['parsing']} parsing maps) "
               f"into {summary['dest']} at {resolution}x{resolution}")


if __name__ == "__main__":
    main()
