"""Compute metrics of a generator against a head dataset; one JSON line per metric.

    python calc_metrics.py --network net.safetensors --data heads.zip --metrics fid,fid-bins \\
        --inception ~/models/inception-2015-12-05.pt --num-gen 50000
    python calc_metrics.py --network net.safetensors --data synthetic.zip --metrics artifact-rate,face-rate-bins --num-gen 1000
    python calc_metrics.py --network net.safetensors --data synthetic.zip --metrics fid,kid --features parsing
    python calc_metrics.py --network runs/vico --data synthetic.zip --metrics fid --features parsing  # every snapshot

``--features parsing`` measures FID/KID with a small net trained on the dataset's parsing maps instead of
the Inception (offline; its numbers are not comparable with Inception FIDs; the record says which).

Each result is printed and appended to ``metric-<name>.jsonl`` next to the network (the current folder
for a bundled network such as ``demo``; ``--no-save`` to only print). Several ``--network`` options, or a
training run's folder (all its ``network-snapshot-*.safetensors`` in kimg order), are scored one after
the other against one dataset setup: the dataset's features and the detector are computed once.
A thin wrapper over :func:`training.metrics.runner.MetricRunner`; see docs/metrics.md.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import List, Sequence

try:
    import spherehead  # noqa: F401
except ImportError:  # run from a checkout without installing: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import click

from spherehead.generation import load_generator, resolve_device, user_errors
from torch_utils.allocator import retain_freed_memory


def network_files(specs: Sequence[str]) -> List[str]:
    """The checkpoint files that ``--network`` options name: files as given, bundled names ('demo'), and
    run folders expanded to their snapshots in kimg order. MetricError for anything else, before any work."""
    from spherehead.assets import resolve_network
    from training.metrics import MetricError
    files = []
    for spec in specs:
        path = resolve_network(spec)
        if os.path.isdir(path):
            snapshots = sorted(glob.glob(os.path.join(glob.escape(path), "network-snapshot-*.safetensors")))
            if not snapshots:
                raise MetricError(f"--network {spec}: a folder without network-snapshot-*.safetensors files")
            files += snapshots
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise MetricError(f"--network {spec}: no such file, folder or bundled network")
    return files


def results_folder(network: str) -> str:
    """Where ``metric-<name>.jsonl`` goes: beside the network, or the current folder for a bundled one
    (never into the installed package)."""
    import spherehead.assets
    folder = os.path.dirname(os.path.abspath(network))
    return os.getcwd() if folder == os.path.dirname(os.path.abspath(spherehead.assets.__file__)) else folder


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--network", "networks", required=True, multiple=True, type=click.Path(path_type=str),
              help="Native .safetensors file, upstream pickle, bundled name ('demo') or a training run's folder "
                   "(all its snapshots); repeat for several.")
@click.option("--data", required=True, type=click.Path(path_type=str), help="Dataset folder or zip (with labels).")
@click.option("--metrics", "metric_names", default="fid",
              help="Comma-separated: fid, kid, fid-bins, kid-bins, artifact-rate, face-rate-bins, "
                   "parsing-face-rate-bins, face-part-agreement.")
@click.option("--num-gen", type=click.IntRange(min=2), default=50000, help="Generated images per metric (per bin).")
@click.option("--features", type=click.Choice(["inception", "parsing"]), default="inception",
              help="Feature net of FID/KID: the standard Inception, or a net trained on the dataset's parsing "
                   "maps (synthetic set; offline; NOT comparable with Inception FIDs).")
@click.option("--inception", default=None,
              help="Path or URL of inception-2015-12-05.pt  [default: ~/.cache/spherehead/inception-2015-12-05.pt]")
@click.option("--feature-steps", type=click.IntRange(min=1), default=None,
              help="Training steps of the --features parsing net  [default: 600]")
@click.option("--detector-steps", type=click.IntRange(min=1), default=None,
              help="Training steps of the face-part detector (artifact-rate, face-rate-bins, "
                   "face-part-agreement)  [default: 3000]")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of latents and cameras.")
@click.option("--batch", type=click.IntRange(min=1), default=16, help="Images per forward pass.")
@click.option("--device", default="auto", help="auto, cpu or cuda[:N].")
@click.option("--cache", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Download, detector and feature-net cache  [default: ~/.cache/spherehead]")
@click.option("--no-save", is_flag=True, help="Only print; do not append to metric-<name>.jsonl.")
def main(networks, data, metric_names, num_gen, features, inception, feature_steps, detector_steps, seed, batch, device,
         cache, no_save):
    """Compute FID/KID (all views or yaw bins), the back-view artifact rate and the face-part rates per yaw bin
    of a generator."""
    from training.dataset_io import DatasetError
    from training.metrics import PARSING_FEATURES, MetricError, append_result
    from training.metrics.artifacts import DetectorOptions
    from training.metrics.parsing_features import ParsingFeatureOptions
    from training.metrics.runner import MetricRunner
    try:
        with user_errors():
            if features == PARSING_FEATURES and inception is not None:
                raise MetricError("--inception applies to --features inception only")
            dev = resolve_device(device)
            files = network_files(networks)
            # Names, dataset and feature net before the generators: a missing Inception file (or parsing
            # maps) fails before any slow work.
            runner = MetricRunner(
                metric_names, data, dev, num_gen=num_gen, seed=seed, batch=batch, cache=cache,
                features=PARSING_FEATURES if features == PARSING_FEATURES else inception,
                detector_options=None if detector_steps is None else DetectorOptions(steps=detector_steps),
                parsing_options=None if feature_steps is None else ParsingFeatureOptions(steps=feature_steps))
            for network in files:
                for record in runner.run(load_generator(network, dev)):
                    record["network"] = os.path.abspath(network)
                    click.echo(json.dumps(record, sort_keys=True))
                    if not no_save:
                        append_result(os.path.join(results_folder(network), f"metric-{record['metric']}.jsonl"),
                                      record)
    except (MetricError, DatasetError) as e:
        raise click.ClickException(" ".join(str(e).split())) from None


if __name__ == "__main__":
    retain_freed_memory()   # the process is ours: torch_utils/allocator.py
    main()
