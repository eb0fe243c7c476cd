"""Metrics of a generator against a head dataset: FID/KID (all views or yaw bins) and the artifact rate.

:func:`compute_metric` is what ``calc_metrics.py`` and a training loop call; see docs/metrics.md.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

from training.metrics.features import MetricError, load_inception

# name -> one-line description (calc_metrics.py --help and docs/metrics.md list the same names)
METRICS = {
    "fid": "FID over all views (fakes at dataset cameras)",
    "kid": "KID over all views",
    "fid-bins": "FID per yaw bin: front |yaw|<45°, side 45-135°, back >=135°",
    "kid-bins": "KID per yaw bin",
    "artifact-rate": "fraction of back-view renders (|yaw|>=150°) in which the face-part detector fires",
}
_FEATURE_METRICS = ("fid", "kid", "fid-bins", "kid-bins")

__all__ = ["METRICS", "MetricError", "compute_metric", "parse_metrics", "append_result", "load_inception"]


def parse_metrics(text: str):
    """'fid,kid' -> ['fid', 'kid'] (unknown names are a MetricError naming the choices)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in METRICS]
    if bad or not names:
        raise MetricError(f"unknown metric(s) {', '.join(bad) or repr(text)}; choose from {', '.join(METRICS)}")
    return names


def needs_features(names) -> bool:
    return any(n in _FEATURE_METRICS for n in names)


def compute_metric(name: str, renderer, dataset, *, feature_net=None, num_gen: int = 50000, seed: int = 0,
                   dataset_path: Optional[str] = None, detector_options=None, cache: Optional[str] = None,
                   batch: int = 32) -> Dict[str, Any]:
    """One metric: ``{'metric', 'results': {...}, 'num_gen', 'seconds'}``.

    ``renderer`` is a :data:`training.metrics.fid.Renderer` (``fid.generator_renderer(G, device)``);
    FID/KID need ``feature_net``; the artifact rate needs ``dataset_path`` (its detector cache key).
    """
    from training.metrics import artifacts, fid
    if name not in METRICS:
        raise MetricError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    start = time.time()
    if name in _FEATURE_METRICS:
        if feature_net is None:
            raise MetricError(f"metric {name} needs a feature network (--inception)")
        bins = ("all",) if not name.endswith("-bins") else ("front", "side", "back")
        results = fid.fid_kid(renderer, dataset, feature_net, bins, kinds=[name.split("-")[0]], num_gen=num_gen,
                              seed=seed, batch=batch)
    else:
        if dataset_path is None:
            raise MetricError("artifact-rate needs the dataset path (its detector is cached by it)")
        opts = detector_options or artifacts.DetectorOptions()
        detector, report = artifacts.load_or_train_detector(dataset, dataset_path, opts, cache)
        results = artifacts.artifact_rate(renderer, dataset, detector, num_gen, seed, batch=batch)
        results["detector"] = report
    return {"metric": name, "results": results, "num_gen": num_gen, "seed": seed,
            "seconds": round(time.time() - start, 2)}


def append_result(path: str, record: Dict[str, Any]) -> str:
    """Append ``record`` as one JSON line to ``path`` (a single write, so concurrent appends do not interleave)."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
    return os.path.abspath(path)
