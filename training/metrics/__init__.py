"""Metrics of a generator against a head dataset: FID/KID (all views or yaw bins), the artifact rate,
the face-part detector's rate per yaw bin, the face-part rate of the generator's own parsing maps, and
how well the image's face parts agree with them.

:func:`compute_metric` is what ``calc_metrics.py`` and a training loop call, with the feature net from
:func:`load_feature_net`; see docs/metrics.md.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

from training.metrics.features import FeatureNet, MetricError, load_inception

# name -> one-line description (calc_metrics.py --help and docs/metrics.md list the same names)
METRICS = {
    "fid": "FID over all views (fakes at dataset cameras)",
    "kid": "KID over all views",
    "fid-bins": "FID per yaw bin: front |yaw|<45°, side 45-135°, back >=135°",
    "kid-bins": "KID per yaw bin",
    "artifact-rate": "fraction of back-view renders (|yaw|>=150°) in which the face-part detector fires",
    "face-rate-bins": "the same detector's positive rate per yaw bin (front, side, back as fid-bins)",
    "parsing-face-rate-bins": "per yaw bin, the fraction of renders whose own parsing map (the generator's "
                              "parsing branch) shows face parts, beside the reals' (no detector)",
    "face-part-agreement": "front and side views: how well the detector's face parts in the image match "
                           "the generator's own parsing map (cosine, 1 = exactly), beside the reals'",
}
_FEATURE_METRICS = ("fid", "kid", "fid-bins", "kid-bins")
_DETECTOR_METRICS = ("artifact-rate", "face-rate-bins", "face-part-agreement")
_GENERATOR_PARSING_METRICS = ("parsing-face-rate-bins", "face-part-agreement")   # read the generator's parsing maps

# load_feature_net spec of the net trained on the dataset's parsing maps (training.metrics.parsing_features);
# any other spec names the Inception (path, URL, or None for the cached default).
PARSING_FEATURES = "parsing"

__all__ = ["METRICS", "PARSING_FEATURES", "MetricError", "compute_metric", "parse_metrics",
           "append_result", "load_inception", "load_feature_net"]


def parse_metrics(text: str):
    """'fid,kid' -> ['fid', 'kid'] (unknown names are a MetricError naming the choices)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in METRICS]
    if bad or not names:
        raise MetricError(f"unknown metric(s) {', '.join(bad) or repr(text)}; choose from {', '.join(METRICS)}")
    return names


def needs_features(names) -> bool:
    return any(n in _FEATURE_METRICS for n in names)


def needs_detector(names) -> bool:
    return any(n in _DETECTOR_METRICS for n in names)


def needs_generator_parsing(names) -> bool:
    return any(n in _GENERATOR_PARSING_METRICS for n in names)


def needs_parsing(names, features: Optional[str]) -> bool:
    """Whether metrics ``names`` with feature spec ``features`` read the dataset's parsing maps."""
    return needs_detector(names) or needs_generator_parsing(names) or \
        (features == PARSING_FEATURES and needs_features(names))


def load_feature_net(spec: Optional[str], dataset=None, dataset_path=None, cache: Optional[str] = None,
                     device="cpu", parsing_options=None) -> FeatureNet:
    """The feature net for FID/KID, a callable ``uint8 [N, 3, H, W] -> float [N, D]``, by ``spec``:

    * ``'parsing'`` — the net trained on ``dataset``'s parsing maps (the synthetic set), loaded from or
      trained into ``<cache>/feature-nets/`` (``dataset_path`` keys the cache; ``parsing_options`` is a
      :class:`~training.metrics.parsing_features.ParsingFeatureOptions`). Its FIDs are comparable only
      with FIDs from the same net (``net.report['key']``), never with Inception FIDs.
    * anything else — the standard Inception: a local path, a URL, or None for the cached default
      (:func:`~training.metrics.features.load_inception`).

    The net has a ``name`` (``'parsing'``/``'inception'``) that :func:`compute_metric` records as ``features``.
    One place for this choice, so ``calc_metrics.py`` and a training loop measure with the same net.
    """
    if spec != PARSING_FEATURES:
        return load_inception(spec, device, cache)
    from training.metrics import parsing_features
    if dataset is None or dataset_path is None:
        raise MetricError("the parsing feature net needs the dataset and its path (it is trained on its parsing maps)")
    if not dataset.has_parsing:
        raise MetricError(f"--features parsing needs a dataset with parsing maps (e.g. the synthetic set); "
                          f"{os.fspath(dataset_path)} has none")
    net, _ = parsing_features.load_or_train_parsing_features(
        dataset, dataset_path, parsing_options or parsing_features.ParsingFeatureOptions(), cache)
    return net.to(device)


def compute_metric(name: str, renderer, dataset, *, feature_net=None, num_gen: int = 50000, seed: int = 0,
                   dataset_path: Optional[str] = None, detector_options=None, cache: Optional[str] = None,
                   batch: int = 32, reals=None, detector=None, parsing_renderer=None,
                   parsing_reals=None) -> Dict[str, Any]:
    """One metric: ``{'metric', 'results': {...}, 'num_gen', 'seconds'}``.

    ``renderer`` is a :data:`training.metrics.fid.Renderer` (``fid.generator_renderer(G, device)``);
    FID/KID need ``feature_net`` (:func:`load_feature_net`) and add ``features``: the net's ``name``
    ('inception', 'parsing', or 'custom' for a callable without one), plus ``feature_net``, its report,
    when it has one — so a parsing-feature FID is never mistaken for an Inception FID. The detector metrics
    (artifact-rate, face-rate-bins, face-part-agreement) need ``dataset_path`` (their detector's cache key).

    ``reals`` (:func:`training.metrics.fid.real_features` of ``dataset``) and ``detector`` (the
    ``(detector, report)`` of :func:`training.metrics.artifacts.load_or_train_detector`) let a caller
    that scores several generators compute them once (:class:`training.metrics.runner.MetricRunner`).
    parsing-face-rate-bins and face-part-agreement need ``parsing_renderer``
    (``fid.generator_renderer(G, device, output='parsing')``); ``parsing_reals`` is the dict in which they
    keep what they compute from the reals across generators (:func:`training.metrics.artifacts.parsing_face_rates`,
    :func:`training.metrics.artifacts.face_part_agreement_rates`).
    """
    from training.metrics import artifacts, fid
    if name not in METRICS:
        raise MetricError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    start = time.time()
    extra: Dict[str, Any] = {}
    if name in _GENERATOR_PARSING_METRICS and parsing_renderer is None:
        raise MetricError(f"{name} needs the generator's parsing maps (a parsing renderer)")
    if name in _FEATURE_METRICS:
        if feature_net is None:
            raise MetricError(f"metric {name} needs a feature network (--inception, or --features parsing)")
        extra["features"] = getattr(feature_net, "name", "custom")
        if getattr(feature_net, "report", None) is not None:
            extra["feature_net"] = feature_net.report
        bins = ("all",) if not name.endswith("-bins") else ("front", "side", "back")
        results = fid.fid_kid(renderer, dataset, feature_net, bins, kinds=[name.split("-")[0]], num_gen=num_gen,
                              seed=seed, batch=batch, reals=reals)
    elif name == "parsing-face-rate-bins":
        results = artifacts.parsing_face_rates(parsing_renderer, dataset, num_gen, seed,
                                               batch=batch, reals=parsing_reals)
    else:
        if detector is None:
            if dataset_path is None:
                raise MetricError(f"{name} needs the dataset path (its detector is cached by it)")
            detector = artifacts.load_or_train_detector(dataset, dataset_path,
                                                        detector_options or artifacts.DetectorOptions(), cache)
        detector, report = detector
        if name == "face-part-agreement":
            results = artifacts.face_part_agreement_rates(renderer, parsing_renderer, dataset,
                                                          detector, num_gen, seed, batch=batch, reals=parsing_reals)
        else:
            rate = artifacts.artifact_rate if name == "artifact-rate" else artifacts.face_rates
            results = rate(renderer, dataset, detector, num_gen, seed, batch=batch)
        results["detector"] = report
    return {"metric": name, "results": results, "num_gen": num_gen, "seed": seed,
            "seconds": round(time.time() - start, 2), **extra}


def append_result(path: str, record: Dict[str, Any]) -> str:
    """Append ``record`` as one JSON line to ``path`` (a single write, so concurrent appends do not interleave)."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
    return os.path.abspath(path)
