"""360° turntable videos of seeds: a full yaw loop with a pitch wave, grids, seed interpolation.

    python gen_videos.py --network net.safetensors --seeds 0 --output out/seed0.mp4
    python gen_videos.py --network net.safetensors --seeds 0-7 --grid 2x2 --mode depth --output out/grid.mp4
    python gen_videos.py --network net.safetensors --seeds 0 --frames 60 --output out/frames   # PNG folder

With a grid of C cells and S seeds, each cell takes S/C consecutive seeds and visits them in turn
(cubic interpolation in W, wrapping back to its first seed). A thin wrapper over
:func:`spherehead.video.render_video`.
"""
from __future__ import annotations

import sys
from pathlib import Path

try:
    import spherehead  # noqa: F401
except ImportError:  # run from a checkout without installing: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import click

from spherehead.camera import FOCAL_HEAD
from spherehead.generation import (GridSize, SeedRange, load_generator, make_shape_options,
                                   resolve_device, resolve_focal, shape_options, user_errors)
from spherehead.video import (MODES, PITCH_AMPLITUDE_DEG, PITCH_OFFSET_DEG, VideoOptions, output_kind,
                              render_video)
from torch_utils.allocator import retain_freed_memory


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--network", "network", default="demo", type=click.Path(dir_okay=False, path_type=str),
              help="Native .safetensors file, upstream pickle, or 'demo' (the bundled model, docs/demo_model.md).")
@click.option("--seeds", type=SeedRange(), default="0", help="Seeds, e.g. 0-3,7 (a multiple of the grid's cells).")
@click.option("--grid", type=GridSize(), default="1x1", help="Grid of COLUMNSxROWS cells, e.g. 2x2.")
@click.option("--mode", type=click.Choice(MODES), default="image", help="What each frame shows.")
@click.option("--output", required=True, type=click.Path(path_type=str),
              help="A .mp4 file (H.264), or a folder for PNG frames.")
@click.option("--frames", type=click.IntRange(min=1), default=240, help="Frames in the whole video.")
@click.option("--loops", type=click.IntRange(min=0), default=1, help="Camera turns around the head (0: still).")
@click.option("--pitch", type=click.FloatRange(-89, 89), default=PITCH_OFFSET_DEG,
              help="Centre of the pitch wave in degrees (the defaults trace upstream's Head path).")
@click.option("--pitch-amplitude", type=click.FloatRange(0, 89), default=PITCH_AMPLITUDE_DEG,
              help="Amplitude of the pitch wave in degrees, one period per loop.")
@click.option("--radius", type=click.FloatRange(0, min_open=True), default=None,
              help="Camera distance  [default: the network's avg_camera_radius]")
@click.option("--fov", type=click.FloatRange(1, 120), default=None,
              help="Diagonal field of view in degrees  [default: the training focal 4.2647, ~18.84°]")
@click.option("--focal", type=click.FloatRange(0, min_open=True), default=None,
              help=f"Normalised focal length instead of --fov  [default: {FOCAL_HEAD}]")
@click.option("--fps", type=click.IntRange(1, 240), default=60, help="Frames per second of the mp4.")
@click.option("--bitrate", default="10M", help="H.264 bit rate of the mp4 (ffmpeg syntax).")
@click.option("--trunc", "truncation_psi", type=click.FloatRange(0.0, 2.0), default=0.7, help="Truncation psi.")
@click.option("--trunc-cutoff", "truncation_cutoff", type=click.IntRange(min=1), default=None,
              help="Truncate only the first N ws  [default: all]")
@click.option("--pose-cond", type=click.FloatRange(-180, 180), default=0.0,
              help="Yaw in degrees of the conditioning camera (0 = front).")
@click.option("--nrr", "neural_rendering_resolution", type=click.IntRange(4, 1024), default=None,
              help="Neural rendering resolution (lower is faster)  [default: the network's]")
@click.option("--batch", type=click.IntRange(min=1), default=4,
              help="Images per forward pass: bounds memory at any video length.")
@shape_options
@click.option("--device", default="auto", help="auto, cpu or cuda[:N].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(network, output, fov, focal, device, quiet, shapes, shape_res, shape_level, shape_formats, keep_largest,
         **options):
    """Render a 360° turntable video (or PNG frames) of one seed, a grid of seeds, or seeds in turn."""
    with user_errors():
        shape_opts = make_shape_options(shapes, shape_res, shape_level, shape_formats, keep_largest)
        opts = VideoOptions(focal=resolve_focal(fov, focal), shapes=shape_opts, **options)
        output_kind(output)  # before the (slow) network load
        G = load_generator(network, resolve_device(device))
        result = render_video(G, output, opts, progress=not quiet)
    click.echo(f"wrote {result['path']}: {result['frames']} frames of {result['width']}x{result['height']}"
               + (f" at {result['fps']:g} fps" if output.lower().endswith(".mp4") else "")
               + (f", and {len(result['shapes'])} shape file(s)" if result["shapes"] else ""))


if __name__ == "__main__":
    retain_freed_memory()   # the process is ours: torch_utils/allocator.py
    main()
