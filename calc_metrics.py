"""Compute metrics of a generator against a head dataset; one JSON line per metric.

    python calc_metrics.py --network net.safetensors --data heads.zip --metrics fid,fid-bins \\
        --inception ~/models/inception-2015-12-05.pt --num-gen 50000
    python calc_metrics.py --network net.safetensors --data synthetic.zip --metrics artifact-rate --num-gen 1000
    python calc_metrics.py --network net.safetensors --data synthetic.zip --metrics fid,kid --features parsing

``--features parsing`` measures FID/KID with a small net trained on the dataset's parsing maps instead of
the Inception (offline; its numbers are not comparable with Inception FIDs; the record says which).

Each result is printed and appended to ``metric-<name>.jsonl`` next to the network (``--no-save``
to only print). A thin wrapper over :func:`training.metrics.compute_metric`; see docs/metrics.md.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

try:
    import spherehead  # noqa: F401
except ImportError:  # run from a checkout without installing: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import click

from spherehead.generation import load_generator, resolve_device, user_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--network", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Native .safetensors file or upstream pickle.")
@click.option("--data", required=True, type=click.Path(path_type=str), help="Dataset folder or zip (with labels).")
@click.option("--metrics", "metric_names", default="fid",
              help="Comma-separated: fid, kid, fid-bins, kid-bins, artifact-rate.")
@click.option("--num-gen", type=click.IntRange(min=2), default=50000, help="Generated images per metric (per bin).")
@click.option("--features", type=click.Choice(["inception", "parsing"]), default="inception",
              help="Feature net of FID/KID: the standard Inception, or a net trained on the dataset's parsing "
                   "maps (synthetic set; offline; NOT comparable with Inception FIDs).")
@click.option("--inception", default=None,
              help="Path or URL of inception-2015-12-05.pt  [default: ~/.cache/spherehead/inception-2015-12-05.pt]")
@click.option("--feature-steps", type=click.IntRange(min=1), default=None,
              help="Training steps of the --features parsing net  [default: 600]")
@click.option("--detector-steps", type=click.IntRange(min=1), default=None,
              help="Training steps of the artifact-rate detector  [default: 1000]")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of latents and cameras.")
@click.option("--batch", type=click.IntRange(min=1), default=16, help="Images per forward pass.")
@click.option("--device", default="auto", help="auto, cpu or cuda[:N].")
@click.option("--cache", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Download, detector and feature-net cache  [default: ~/.cache/spherehead]")
@click.option("--no-save", is_flag=True, help="Only print; do not append to metric-<name>.jsonl.")
def main(network, data, metric_names, num_gen, features, inception, feature_steps, detector_steps, seed, batch, device,
         cache, no_save):
    """Compute FID/KID (all views or yaw bins) and the back-view artifact rate of a generator."""
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
            # Names, dataset and feature net before the generator: a missing Inception file (or parsing
            # maps) fails before any slow work.
            runner = MetricRunner(
                metric_names, data, dev, num_gen=num_gen, seed=seed, batch=batch, cache=cache,
                features=PARSING_FEATURES if features == PARSING_FEATURES else inception,
                detector_options=None if detector_steps is None else DetectorOptions(steps=detector_steps),
                parsing_options=None if feature_steps is None else ParsingFeatureOptions(steps=feature_steps))
            for record in runner.run(load_generator(network, dev)):
                record["network"] = os.path.abspath(network)
                click.echo(json.dumps(record, sort_keys=True))
                if not no_save:
                    append_result(os.path.join(os.path.dirname(os.path.abspath(network)),
                                               f"metric-{record['metric']}.jsonl"), record)
    except (MetricError, DatasetError) as e:
        raise click.ClickException(" ".join(str(e).split())) from None


if __name__ == "__main__":
    main()
