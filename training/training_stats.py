"""Scalar training statistics: collected on every rank, combined once per tick, written by rank 0;
and the small helpers of the run's reporting (log tee, peak memory, durations).

:class:`Collector` keeps (count, sum, sum of squares) per name. :meth:`Collector.gather` combines
them over ranks, so a tick's ``mean`` is the mean over *all* reports of all ranks (a rank that
reported a name more often weighs more, as each report is one minibatch round).
:class:`StatsWriter` appends one JSON line per tick to ``stats.jsonl`` (StyleGAN2-ADA layout:
``{name: {"num", "mean", "std"}, "timestamp": ...}``) and, when the ``tensorboard`` package is
importable, the means as TensorBoard scalars (x axis: images shown, so short runs still plot).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import traceback
from collections import defaultdict
from typing import Dict, Mapping, Optional

import torch

from spherehead.fileio import atomic_path
from torch_utils import distributed as dist

Stats = Dict[str, Dict[str, float]]


class Collector:
    """Accumulates scalar reports until :meth:`gather`."""

    def __init__(self):
        self._acc: Dict[str, list] = defaultdict(lambda: [0, 0.0, 0.0])

    def report(self, name: str, value: float) -> None:
        value = float(value)
        acc = self._acc[name]
        acc[0] += 1
        acc[1] += value
        acc[2] += value * value

    def report_dict(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.report(name, value)

    def gather(self) -> Stats:
        """Combine over ranks (every rank must call this) and reset. Returns {name: {num, mean, std}}."""
        per_rank = dist.all_gather_object(dict(self._acc))
        self._acc.clear()
        total: Dict[str, list] = defaultdict(lambda: [0, 0.0, 0.0])
        for acc in per_rank:
            for name, (n, s, sq) in acc.items():
                t = total[name]
                t[0], t[1], t[2] = t[0] + n, t[1] + s, t[2] + sq
        out: Stats = {}
        for name in sorted(total):
            n, s, sq = total[name]
            mean = s / n
            var = max(sq / n - mean * mean, 0.0) if math.isfinite(sq) else float("nan")
            out[name] = {"num": n, "mean": mean, "std": math.sqrt(var) if math.isfinite(var) else var}
        return out


def _json_number(x: float):
    # JSON has no NaN/inf; write them as strings so that the file stays valid JSON.
    return x if math.isfinite(x) else str(x)


class StatsWriter:
    """Rank 0's sink for per-tick stats: stats.jsonl (always) and TensorBoard (when installed)."""

    def __init__(self, run_dir: str, tensorboard: bool = True, log=print, start_nimg: int = 0):
        """``start_nimg``: the images shown at the state this process starts from (0 for a new run). What an
        earlier process logged after that (ticks this run trains again) is dropped: from stats.jsonl by
        :func:`trim_stats`, and from TensorBoard's view by a purge step."""
        self.path = os.path.join(run_dir, "stats.jsonl")
        # stats.jsonl is opened for each line, not held, so that no handle outlives a replacement of the
        # file (trim_stats replaces it; a held handle would write into the deleted file).
        trim_stats(self.path, start_nimg)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(run_dir, purge_step=start_nimg + 1)
            except ImportError:
                log("TensorBoard scalars skipped: the 'tensorboard' package is not installed "
                    "(pip install tensorboard to get them); stats.jsonl has the same numbers.")

    def write(self, stats: Stats, cur_nimg: int, timestamp: Optional[float] = None) -> None:
        timestamp = time.time() if timestamp is None else timestamp
        line = {name: {k: _json_number(v) for k, v in s.items()} for name, s in stats.items()}
        line["timestamp"] = timestamp
        with open(self.path, "at", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        if self._tb is not None:
            for name, s in stats.items():
                self._tb.add_scalar(name, s["mean"], global_step=int(cur_nimg), walltime=timestamp)
            self._tb.flush()

    def scalars(self, values: Dict[str, float], cur_nimg: int) -> None:
        """TensorBoard-only scalars (metrics: their numbers live in metric-*.jsonl, not stats.jsonl)."""
        if self._tb is not None:
            for name, v in values.items():
                self._tb.add_scalar(name, v, global_step=int(cur_nimg))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_stats(path: str) -> list:
    """The lines of a stats.jsonl as dicts (for tests and plotting)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stats_nimg(line: dict) -> int:
    """Images shown at the tick of a stats.jsonl line (a :func:`read_stats` dict)."""
    return round(line.get("Progress/kimg", {}).get("mean", 0) * 1000)


def trim_stats(path: str, cur_nimg: int) -> None:
    """Drop the lines of ticks after ``cur_nimg`` images (a resumed run repeats them), atomically."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    keep = [line for line in lines if stats_nimg(json.loads(line)) <= cur_nimg]
    if len(keep) != len(lines):
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(keep)


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory since the last call: CUDA allocator peak, or the process's max RSS on CPU."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30
        torch.cuda.reset_peak_memory_stats(device)
        return peak
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB on Linux
    except (ImportError, AttributeError):
        return float("nan")


def format_time(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s // 60 % 60:02d}m"
    return f"{s // 86400}d {s // 3600 % 24:02d}h"


@contextlib.contextmanager
def tee_log(path: Optional[str]):
    """Copy stdout/stderr (and an uncaught exception's traceback) to ``path``; a no-op for None."""
    if path is None:
        yield
        return

    class Tee:
        def __init__(self, stream, file):
            self.stream, self.file = stream, file

        def write(self, text):
            self.stream.write(text)
            self.file.write(text)
            self.file.flush()

        def flush(self):
            self.stream.flush()
            self.file.flush()

        def __getattr__(self, name):
            return getattr(self.stream, name)

    with open(path, "at", encoding="utf-8") as f:
        old = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(sys.stdout, f), Tee(sys.stderr, f)
        try:
            yield
        except BaseException:
            f.write(traceback.format_exc())
            raise
        finally:
            sys.stdout, sys.stderr = old
