"""Render a synthetic 360° head set (procedural heads, analytic ray casting) as a packed dataset.

    python tools/make_synthetic_heads.py --dest heads.zip --num-heads 64 --views-per-head 8 --resolution 128
    python tools/make_synthetic_heads.py --outdir heads/ --num-heads 4 --views-per-head 4 --resolution 64 --seed 3

Cameras: yaw over the full 360° (stratified per head), pitch uniform in --pitch-range, radius 2.7,
focal 4.2647, looking at the origin: the training camera convention (reference.md §1). The output holds
images, masks, parsing maps (spherehead.parsing) and ``synthetic.json`` metadata; see
docs/datasets.md. The same --seed always gives the same bytes, for any --workers.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    import training  # noqa: F401
except ImportError:  # run as `python tools/make_synthetic_heads.py` from a checkout: sys.path[0] is tools/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click

from training.dataset_io import DatasetError
from training.synthetic_set import generate_synthetic_set

__all__ = ["main"]


def _pitch_range(text: str):
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected two degrees like -30,30, got {text!r}", param_hint="--pitch-range")
    if not -90 < lo <= hi < 90:
        raise click.BadParameter(f"need -90 < LO <= HI < 90, got {lo:g},{hi:g}", param_hint="--pitch-range")
    return lo, hi


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dest", type=click.Path(dir_okay=False), help="Output zip file (packed layout).")
@click.option("--outdir", type=click.Path(file_okay=False), help="Output folder (packed layout) instead of a zip.")
@click.option("--num-heads", type=click.IntRange(min=1), default=64, show_default=True, help="Number of heads.")
@click.option("--views-per-head", type=click.IntRange(min=1), default=8, show_default=True,
              help="Cameras per head (yaw stratified over 360°).")
@click.option("--resolution", type=click.Choice(["16", "32", "64", "128", "256", "512"]), default="128",
              show_default=True, help="Image size in pixels (square).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the whole set.")
@click.option("--pitch-range", default="-30,30", show_default=True, help="Camera elevation range LO,HI in degrees.")
@click.option("--supersample", type=click.IntRange(1, 4), default=2, show_default=True,
              help="Rays per pixel along each axis (antialiasing and soft mask edges).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes.")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
def main(dest, outdir, num_heads, views_per_head, resolution, seed, pitch_range, supersample, workers, force):
    """Render NUM_HEADS x VIEWS_PER_HEAD synthetic head images with masks, parsing maps and labels."""
    if (dest is None) == (outdir is None):
        raise click.UsageError("give exactly one of --dest (a .zip) or --outdir (a folder)")
    if dest is not None and not dest.lower().endswith(".zip"):
        raise click.BadParameter("must end in .zip (use --outdir for a folder)", param_hint="--dest")
    target = dest if dest is not None else outdir
    pitch = _pitch_range(pitch_range)
    total = num_heads * views_per_head
    try:
        with click.progressbar(length=total, label=f"rendering {total} images", file=sys.stderr) as bar:
            summary = generate_synthetic_set(target, num_heads, views_per_head, int(resolution), seed=seed,
                                             pitch_range=pitch, supersample=supersample,
                                             workers=workers, force=force, progress=bar.update)
    except (DatasetError, OSError) as e:
        raise click.ClickException(" ".join(str(e).split())) from None
    click.echo(f"wrote {summary['images']} images to {os.fspath(target)} in {summary['seconds']} s "
               f"({summary['images_per_second']} images/s)")


if __name__ == "__main__":
    main()
