"""Train SphereHead (one process, or many under torchrun / SLURM srun).

    python train.py --outdir runs --data heads.zip --cfg tiny-128 --resume latest
    torchrun --standalone --nproc_per_node=8 train.py --outdir runs --data wildhead.zip --cfg released-512 --resume latest
    torchrun --nnodes=2 --node_rank=0 --rdzv_endpoint=host:29500 --nproc_per_node=8 train.py ...   (on each node)

A thin wrapper over :func:`training.training_loop.training_loop`; docs/training.md has the recipes,
the run folder layout and the resume rules. Multi-node flags (``--nnodes``, ``--node_rank``,
``--rdzv_endpoint``) belong to torchrun; this script only joins the process group it sets up.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

try:
    import training  # noqa: F401 (only checks that the packages import)
except ImportError:  # run from a checkout without installing: make the packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import click

from spherehead.errors import CheckpointError
from torch_utils import distributed as dist
from torch_utils.allocator import retain_freed_memory
from training.dataset_io import DatasetError
from training.metrics import MetricError
from training.presets import get_preset, make_training_options, preset_names
from training.resume import DivergedError, ResumeError, find_run_dir
from training.stop_signals import exit_status
from training.training_loop import open_dataset, training_loop


class GpcProb(click.ParamType):
    """A probability in [0, 1], or 'off' (generator pose conditioning disabled)."""
    name = "PROB|off"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.lower() == "off"):
            return None
        try:
            p = float(value)
        except (TypeError, ValueError):
            self.fail(f"expected a number in [0, 1] or 'off', got {value!r}", param, ctx)
        if not 0 <= p <= 1:
            self.fail(f"expected a number in [0, 1] or 'off', got {value!r}", param, ctx)
        return p


class MetricList(click.ParamType):
    """'fid,artifact-rate' -> ('fid', 'artifact-rate'); '' -> (); an unknown name is a usage error."""
    name = "LIST"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        if not str(value).strip():
            return ()
        from training.metrics import MetricError, parse_metrics
        try:
            return tuple(parse_metrics(str(value)))
        except MetricError as e:
            self.fail(str(e), param, ctx)


def _resume_arg(value):
    """'latest', None, or the checkpoint file to fine-tune from (a bundled name such as 'demo' is its file)."""
    if value is None or value == "latest":
        return value
    from spherehead.assets import resolve_network
    path = resolve_network(value)
    if not os.path.isfile(path):
        raise click.ClickException(f"--resume {value}: no such file (give 'latest', a checkpoint file or a "
                                   f"bundled network name)")
    return path


def _prepare(cfg, data, run_dir, outdir, gpus, resume, **overrides):
    """Options, dataset check and run folder (rank 0 decides it, the others are told)."""
    world = dist.get_world_size()
    if gpus is not None and gpus != world:
        raise click.ClickException(f"--gpus {gpus}, but {world} process(es) were started "
                                   f"(launch with torchrun --nproc_per_node={gpus})")
    opts = make_training_options(cfg, data, world_size=world, resume=_resume_arg(resume), **overrides)
    opts.validate(world)
    dataset = open_dataset(opts, needs_parsing=overrides["parsing"])
    if run_dir is None:
        if outdir is None:
            raise click.ClickException("give --outdir (runs go to OUTDIR/ID-CFG-DATASET) or --run-dir")
        run_dir = find_run_dir(outdir, f"{cfg}-{dataset.name}", opts.to_dict(), opts.resume, opts.defaults()) \
            if dist.get_rank() == 0 else None
        run_dir = dist.broadcast_object(run_dir)
    return opts, run_dir, (dataset.name, len(dataset))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--outdir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Parent folder of the run folders.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Use exactly this run folder (instead of OUTDIR/ID-CFG-DATASET).")
@click.option("--data", required=True, type=str, help="Dataset zip or folder (images, masks, parsing, dataset.json).")
@click.option("--cfg", type=click.Choice(preset_names()), default="released-512", help="Training configuration.")
@click.option("--gpus", type=click.IntRange(min=1), default=None,
              help="Expected number of processes (checked against torchrun's world size)  [default: any]")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Total batch size  [default: the cfg's]")
@click.option("--batch-gpu", type=click.IntRange(min=1), default=None,
              help="Batch per process and round; rounds accumulate gradients  [default: the cfg's, or less]")
@click.option("--kimg", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Train until this many thousand images  [default: the cfg's]")
@click.option("--tick", type=click.FloatRange(min=0, min_open=True), default=None,
              help="kimg per progress tick  [default: the cfg's]")
@click.option("--snap", type=click.IntRange(min=0), default=None,
              help="Ticks per network snapshot + resume state; 0 = none  [default: the cfg's]")
@click.option("--img-snap", type=click.IntRange(min=0), default=None,
              help="Ticks per image grid; 0 = none  [default: the cfg's]")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Random seed.")
@click.option("--resume", default=None,
              help="'latest' (continue this run exactly) or a checkpoint to fine-tune from (a file, or 'demo').")
@click.option("--resume-blur", is_flag=True, help="Fine-tune start keeps the blur and GPC fades (§6.2).")
@click.option("--resume-kimg", type=click.FloatRange(min=0), default=0.0,
              help="Fine-tune start: count from this kimg (schedules, EMA ramp-up, snapshot names; --kimg is "
                   "the total), e.g. 1000 for the second stage (§6.2).")
@click.option("--vico-weight", type=click.FloatRange(min=0), default=1.0, help="ViCo loss weight; 0 disables ViCo.")
@click.option("--vico-min-angle", type=click.FloatRange(0, 180), default=30.0,
              help="ViCo: minimum angle (degrees) between a real image's camera and its shuffled camera.")
@click.option("--vico-rampup", type=click.FloatRange(min=0), default=0.0,
              help="ViCo: kimg of the linear weight ramp-up; 0 = full weight at once.")
@click.option("--vico-r1/--no-vico-r1", default=False, help="ViCo: R1 also on real images with shuffled cameras.")
@click.option("--parsing/--no-parsing", default=True,
              help="Parsing branch (HoloDiscriminator). --no-parsing: PanoHead-style G without parsing head.")
@click.option("--parsing-drop", type=click.FloatRange(0, 1), default=0.0,
              help="Chance per sample that D's parsing channels are zeroed, so D must judge it by its image; "
                   "0 = never (the reference).")
@click.option("--gpc-prob", type=GpcProb(), default="0.7",
              help="Generator pose conditioning swap probability after the fade; 'off' disables conditioning.")
@click.option("--density-reg", type=click.FloatRange(min=0), default=0.0,
              help="Density regulariser weight (lazy, every 4 iterations); 0 = off.")
@click.option("--back-repeat", type=click.IntRange(min=1), default=None,
              help="Repeat images seen from behind (|yaw| >= 90°) this often  [default: the cfg's]")
@click.option("--mirror/--no-mirror", default=None, help="Add x-flipped copies  [default: the cfg's]")
@click.option("--nrr", type=click.IntRange(min=4), default=None, help="Neural rendering resolution  [default: the cfg's]")
@click.option("--nrr-final", type=click.IntRange(min=4), default=None,
              help="Neural rendering resolution reached after 1000 kimg (stage 2 uses 128)  [default: constant]")
@click.option("--lr-g", type=click.FloatRange(min=0, min_open=True), default=None, help="G learning rate  [default: 0.0025]")
@click.option("--lr-d", type=click.FloatRange(min=0, min_open=True), default=None, help="D learning rate  [default: 0.002]")
@click.option("--r1-gamma", type=click.FloatRange(min=0), default=None,
              help="R1 weight on image + raw image (mask and parsing stay at 1)  [default: 1]")
@click.option("--metrics", type=MetricList(), default="",
              help="Metrics computed at each snapshot, comma-separated (fid, kid, fid-bins, kid-bins, artifact-rate, face-rate-bins, "
                   "parsing-face-rate-bins, face-part-agreement); "
                   "see docs/metrics.md  [default: none]")
@click.option("--metrics-num-gen", type=click.IntRange(min=2), default=1000,
              help="Generated images per metric (per yaw bin for the -bins metrics).")
@click.option("--metrics-features", default=None,
              help="Feature network of FID/KID: an Inception path or URL, or 'parsing' (a net trained on the "
                   "dataset's parsing maps, docs/metrics.md)  [default: the cached Inception]")
@click.option("--metrics-data", default=None, help="Dataset the metrics use  [default: --data]")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="DataLoader workers per process  [default: the cfg's]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="Device.")
@click.option("--dry-run", is_flag=True, help="Print the options and the run folder, then exit.")
def main(cfg, data, device, dry_run, workers, run_dir, outdir, gpus, resume, **overrides):
    """Train a SphereHead generator. Rerun the same command with --resume latest to continue a run.

    Several GPUs or nodes: launch this script with torchrun (its --nproc_per_node, --nnodes,
    --node_rank, --rdzv_endpoint) or srun; see docs/training.md."""
    try:
        device = dist.init(device)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    try:
        stopped_by = _train(cfg, data, device, dry_run, workers, run_dir, outdir, gpus, resume, overrides)
    except BaseException:
        dist.shutdown(wait=False)   # the other ranks may never reach a barrier now
        raise
    dist.shutdown()
    if stopped_by:   # a stop signal: the state is written; exit as the signal would have (docs/training.md)
        sys.exit(exit_status(stopped_by))


def _train(cfg, data, device, dry_run, workers, run_dir, outdir, gpus, resume, overrides) -> Optional[str]:
    """Runs the command; returns the name of the signal that stopped the run early, if one did."""
    try:
        opts, run_dir, (ds_name, ds_len) = _prepare(cfg, data, run_dir, outdir, gpus, resume, **overrides)
    except (ValueError, CheckpointError) as e:   # DatasetError is a ValueError
        raise click.ClickException(str(e)) from None
    if dry_run:
        dist.print0(json.dumps(opts.to_dict(), indent=2))
        dist.print0(f"Run folder: {run_dir}\nDataset: {ds_name}, {ds_len} items; "
                    f"{dist.get_world_size()} process(es) on {device}.")
        return None
    try:
        summary = training_loop(run_dir, opts, device=device,
                                num_workers=get_preset(cfg).workers if workers is None else workers)
    except (DatasetError, CheckpointError, ResumeError, MetricError, DivergedError) as e:
        raise click.ClickException(" ".join(str(e).split())) from None
    except OSError as e:   # a full disk, a lost mount, a read-only folder
        raise click.ClickException(
            f"{e.filename or run_dir}: {e.strerror or e}. The run stopped; every file already in {run_dir} is "
            f"complete (each write is atomic), so once this is fixed the same command with --resume latest "
            f"continues from its newest resume state.") from None
    return summary["stopped_by"]


if __name__ == "__main__":
    retain_freed_memory()   # the process is ours: torch_utils/allocator.py
    main()
