"""Photo(s) of one person -> 3D head: alignment, w/w+ optimisation, pivotal tuning, outputs.

    python invert.py --network net.safetensors --image me.jpg --outdir out/
    python invert.py --network net.safetensors --image a.jpg --image b.jpg --outdir out/
    python invert.py --network net.safetensors --image me.jpg --landmarks me.txt --perceptual none --outdir out/

A thin wrapper over :func:`spherehead.alignment.align_photo`, :func:`spherehead.inversion.invert`, all driven by
:func:`spherehead.inversion.run_inversion`; docs/inversion.md describes every step and file.
"""
from __future__ import annotations

import sys
from pathlib import Path

try:
    import spherehead  # noqa: F401
except ImportError:  # run from a checkout without installing: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import click

from spherehead.generation import check_outdir, load_generator, resolve_device, user_errors
from spherehead.inversion import InversionOptions, run_inversion
from torch_utils.allocator import retain_freed_memory


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--network", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Native .safetensors file or upstream pickle ('demo': the bundled synthetic-head model).")
@click.option("--image", "images", required=True, multiple=True, type=click.Path(path_type=str),
              help="Photo of the person; repeat for several photos (one shared latent).")
@click.option("--landmarks", "landmark_files", multiple=True, type=click.Path(path_type=str),
              help="Landmark file per --image, in the same order (68 or 5 points; .txt/.json/.npy); "
                   "without it face-alignment detects them.")
@click.option("--face-index", type=click.IntRange(min=0), default=None,
              help="Which face to use when a photo shows several (counted left to right).")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=str), help="Output folder.")
@click.option("--steps", type=click.IntRange(min=1), default=500, help="Stage 1 (w/w+) optimisation steps.")
@click.option("--pti-steps", type=click.IntRange(min=0), default=350, help="Stage 2 pivotal tuning steps (0: off).")
@click.option("--w-plus/--w-only", default=True, help="Optimise one w per layer (w+) or a single w.")
@click.option("--perceptual", type=click.Choice(["lpips", "none"]), default="lpips",
              help="Perceptual loss: LPIPS-VGG (needs the lpips package) or none (pixel loss only).")
@click.option("--delta-c/--no-delta-c", default=True, help="Camera self-adaptation (Δc) in both stages.")
@click.option("--locality-weight", type=click.FloatRange(min=0), default=0.0,
              help="PTI locality regulariser weight (0: off; the PTI paper uses 0.1).")
@click.option("--nrr", "neural_rendering_resolution", type=click.IntRange(4, 1024), default=None,
              help="Neural rendering resolution (lower is faster)  [default: the network's]")
@click.option("--min-face", type=click.IntRange(min=1), default=128, help="Smallest crop side (photo px) accepted.")
@click.option("--seed", type=click.IntRange(min=0), default=303, help="Seed of the w noise and ray jitter.")
@click.option("--no-video", is_flag=True, help="Skip the 360° turntable.")
@click.option("--no-mesh", is_flag=True, help="Skip the mesh.")
@click.option("--video-frames", type=click.IntRange(min=1), default=120, help="Frames of the turntable.")
@click.option("--mesh-res", type=click.IntRange(16, 1024), default=256, help="Grid samples per axis of the mesh.")
@click.option("--mesh-level", type=float, default=10.0, help="Iso-level of the mesh on the raw decoder density σ.")
@click.option("--device", default="auto", help="auto, cpu or cuda[:N].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(network, images, landmark_files, face_index, outdir, steps, pti_steps, w_plus, perceptual, delta_c,
         locality_weight, neural_rendering_resolution, min_face, seed, no_video, no_mesh, video_frames, mesh_res,
         mesh_level, device, quiet):
    """Invert photo(s) of one person into a latent and a tuned generator, with renders, video and mesh."""
    with user_errors():
        if landmark_files and len(landmark_files) != len(images):
            raise click.UsageError(f"give one --landmarks per --image ({len(images)}), got {len(landmark_files)}")
        check_outdir(outdir)
        dev = resolve_device(device)
        opts = InversionOptions(steps=steps, pti_steps=pti_steps, w_plus=w_plus, delta_c=delta_c,
                                locality_weight=locality_weight, seed=seed,
                                neural_rendering_resolution=neural_rendering_resolution)
        G = load_generator(network, dev)
        report = run_inversion(G, list(images), outdir, opts, landmark_files=list(landmark_files) or None,
                               face_index=face_index, perceptual=perceptual, min_face=min_face,
                               video_frames=0 if no_video else video_frames, mesh_res=0 if no_mesh else mesh_res,
                               mesh_level=mesh_level, progress=not quiet)
    click.echo(f"wrote {outdir}: PSNR {report['pti']['psnr']:.2f} dB, SSIM {report['pti']['ssim']:.3f} "
               f"at the input view(s); see report.json")


if __name__ == "__main__":
    retain_freed_memory()   # the process is ours: torch_utils/allocator.py
    main()
