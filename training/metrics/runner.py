"""Metrics of successive generators against one dataset: what ``calc_metrics.py`` and the training loop share.

:class:`MetricRunner` checks the metric names, opens the dataset and gets the feature network once
(a missing Inception file or a dataset without what a metric needs fails here, before any slow
work), then :meth:`MetricRunner.run` scores a generator and returns one record per metric.

What does not depend on the generator is computed at the first :meth:`~MetricRunner.run` and kept:
the dataset's features (shared by fid, kid and their yaw bins), the artifact detector, the reals'
parsing face rates and their face-part agreement. A training loop that scores every snapshot pays for them once.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Union

import torch


class MetricRunner:
    def __init__(self, names: Union[str, Sequence[str]], data: str, device: torch.device, *, num_gen: int = 50000,
                 features: Optional[str] = None, seed: int = 0, batch: int = 16, cache: Optional[str] = None,
                 detector_options=None, parsing_options=None):
        """``features``: :func:`training.metrics.load_feature_net`'s spec ('parsing', or an Inception path /
        URL / None); ``detector_options`` / ``parsing_options``: the artifact detector's and the parsing
        feature net's options (None: their defaults)."""
        from training.dataset import HeadDataset
        from training.metrics import load_feature_net, needs_features, needs_parsing, parse_metrics
        from training.metrics.artifacts import DetectorOptions
        self.names = parse_metrics(names if isinstance(names, str) else ",".join(names))
        self.data, self.device, self.num_gen, self.seed, self.batch, self.cache = \
            os.fspath(data), torch.device(device), int(num_gen), int(seed), int(batch), cache
        self.detector_options = detector_options or DetectorOptions()
        self.dataset = HeadDataset(self.data, xflip=False, load_masks=False,
                                   load_parsing=needs_parsing(self.names, features))
        self.feature_net = load_feature_net(features, dataset=self.dataset, dataset_path=self.data, cache=cache,
                                            device=self.device, parsing_options=parsing_options) \
            if needs_features(self.names) else None
        self._reals = None      # fid.real_features(dataset, feature_net): (features, labels)
        self._detector = None   # artifacts.load_or_train_detector(...): (detector, report)
        self._parsing_reals = {}   # the reals' parsing face rates (by map size) and face-part agreement (by detector)

    def run(self, G) -> List[Dict[str, Any]]:
        """One record per metric (``metric``, ``results``, ``num_gen``, ``seed``, ``seconds``, ``data``)."""
        from training.metrics import artifacts, compute_metric, needs_detector, needs_features, needs_generator_parsing
        from training.metrics.fid import generator_renderer, real_features
        if self._reals is None and needs_features(self.names):
            self._reals = real_features(self.dataset, self.feature_net, self.batch)
        if self._detector is None and needs_detector(self.names):
            self._detector = artifacts.load_or_train_detector(self.dataset, self.data, self.detector_options,
                                                              self.cache)
        renderer = generator_renderer(G, self.device, resolution=self.dataset.resolution, batch=self.batch)
        parsing_renderer = generator_renderer(G, self.device, batch=self.batch, output="parsing") \
            if needs_generator_parsing(self.names) else None
        records = []
        for name in self.names:
            record = compute_metric(name, renderer, self.dataset, feature_net=self.feature_net, num_gen=self.num_gen,
                                    seed=self.seed, batch=self.batch, reals=self._reals, detector=self._detector,
                                    parsing_renderer=parsing_renderer, parsing_reals=self._parsing_reals)
            record["data"] = os.path.abspath(self.data)
            records.append(record)
        return records
