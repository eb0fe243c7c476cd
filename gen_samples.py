"""Render seeds from several yaws (front, sides, back), with optional depth, mask, parsing and meshes.

    python gen_samples.py --network net.safetensors --seeds 0-3,7 --outdir out
    python gen_samples.py --network network-snapshot.pkl --seeds 0 --views=-90,0,90,180 --depth --shapes

A thin wrapper over :func:`spherehead.generation.generate_samples`; file layout in its docstring.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    import spherehead  # noqa: F401
except ImportError:  # run from a checkout without installing: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import click

from spherehead.camera import FOCAL_HEAD
from spherehead.generation import (DEFAULT_VIEWS, SAMPLE_PITCH_DEG, FloatList, SampleOptions, SeedRange,
                                   check_outdir, generate_samples, load_generator, make_shape_options,
                                   resolve_device, resolve_focal, shape_options, user_errors)
from torch_utils.allocator import retain_freed_memory


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--network", "network", default="demo", type=click.Path(dir_okay=False, path_type=str),
              help="Native .safetensors file, upstream pickle, or 'demo' (the bundled model, docs/demo_model.md).")
@click.option("--seeds", type=SeedRange(), default="0-3", help="Seeds, e.g. 0-3,7.")
@click.option("--trunc", "truncation_psi", type=click.FloatRange(0.0, 2.0), default=0.7, help="Truncation psi.")
@click.option("--trunc-cutoff", "truncation_cutoff", type=click.IntRange(min=1), default=None,
              help="Truncate only the first N ws  [default: all]")
@click.option("--pose-cond", type=click.FloatRange(-180, 180), default=0.0,
              help="Yaw in degrees of the conditioning camera (0 = front).")
@click.option("--views", type=FloatList(), default=",".join(f"{v:g}" for v in DEFAULT_VIEWS),
              help="Render yaws in degrees: 0 front, 90 camera on the +x side, 180 back (write --views=-90,90).")
@click.option("--pitch", type=click.FloatRange(-89, 89), default=SAMPLE_PITCH_DEG,
              help="Camera elevation in degrees (upstream's v = π/2 − 0.2).")
@click.option("--fov", type=click.FloatRange(1, 120), default=None,
              help="Diagonal field of view in degrees  [default: the training focal 4.2647, ~18.84°]")
@click.option("--focal", type=click.FloatRange(0, min_open=True), default=None,
              help=f"Normalised focal length instead of --fov  [default: {FOCAL_HEAD}]")
@click.option("--radius", type=click.FloatRange(0, min_open=True), default=None,
              help="Camera distance  [default: the network's avg_camera_radius]")
@click.option("--nrr", "neural_rendering_resolution", type=click.IntRange(4, 1024), default=None,
              help="Neural rendering resolution (lower is faster)  [default: the network's]")
@click.option("--depth", is_flag=True, help="Also write depth maps (PNG, near bright, and .npy ray distances).")
@click.option("--mask", is_flag=True, help="Also write opacity masks.")
@click.option("--parsing", is_flag=True, help="Also write parsing maps (palette PNG of the 20 class indices).")
@shape_options
@click.option("--batch", type=click.IntRange(min=1), default=4, help="Views per forward pass.")
@click.option("--device", default="auto", help="auto, cpu or cuda[:N].")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=str), default="out", help="Output folder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(network, seeds, fov, focal, device, outdir, quiet, shapes, shape_res, shape_level, shape_formats,
         keep_largest, **options):
    """Render images of each seed from several yaws (and optionally depth, masks, parsing and meshes)."""
    with user_errors():
        shape_opts = make_shape_options(shapes, shape_res, shape_level, shape_formats, keep_largest)
        opts = SampleOptions(seeds=seeds, focal=resolve_focal(fov, focal), shapes=shape_opts, **options)
        check_outdir(outdir)  # before the (slow) network load
        G = load_generator(network, resolve_device(device))
        written = generate_samples(G, outdir, opts, progress=not quiet)
    click.echo(f"wrote {len(written)} files for {len(seeds)} seed(s) to {os.path.abspath(outdir)}")


if __name__ == "__main__":
    retain_freed_memory()   # the process is ours: torch_utils/allocator.py
    main()
