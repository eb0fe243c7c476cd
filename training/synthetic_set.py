"""Write a synthetic 360° head set (training.synthetic_heads) as a packed dataset with metadata.

The output is an ordinary packed dataset (docs/datasets.md): ``dataset.json``, ``images/``, ``masks/``,
``parsing/``, plus ``synthetic.json`` with the generator settings and per-image facts for artifact
metrics (camera yaw/pitch, whether the face hemisphere faces the camera, how many face-class pixels
the image has, glasses/long hair/beard). Each head depends only on (seed, head index), so the bytes
are identical for any number of workers.
"""
from __future__ import annotations

import json
import multiprocessing
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from training.dataset_io import DatasetWriter, encode_png, labels_json_bytes
from spherehead.parsing import CLASS_NAMES
from training.synthetic_heads import face_pixels, render_head

META_FILE = "synthetic.json"


def _head_task(args: Tuple) -> List[dict]:
    """One head, rendered and PNG-encoded (runs in a worker process)."""
    seed, index, views, resolution, pitch_range, supersample = args
    out = []
    for v, r in enumerate(render_head(seed, index, views, resolution, pitch_range, supersample)):
        head = r["head"]
        name = f"{index:05d}/{index:05d}_{v:02d}.png"
        out.append(dict(name=name, label=r["label"], image=encode_png(r["image"]), mask=encode_png(r["mask"]),
                        parsing=encode_png(r["parsing"]),
                        meta=dict(name=name, head=index, view=v, yaw_deg=round(r["yaw_deg"], 4),
                                  pitch_deg=round(r["pitch_deg"], 4), face_visible=abs(r["yaw_deg"]) < 90.0,
                                  face_pixels=face_pixels(r["parsing"]), glasses=head.glasses is not None,
                                  long_hair=head.curtain is not None, beard=bool(head.beard))))
    return out


def _worker_init() -> None:
    import torch
    torch.set_num_threads(1)   # the workers are the parallelism; torch threads would only contend


def _heads(tasks: List[Tuple], workers: int) -> Iterator[List[dict]]:
    if workers <= 1:
        yield from map(_head_task, tasks)
        return
    # spawn, not fork: the parent may already run torch/OpenMP threads, which do not survive a fork.
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap(_head_task, tasks, chunksize=1)


def generate_synthetic_set(dest, num_heads: int, views_per_head: int, resolution: int, seed: int = 0,
                           pitch_range: Tuple[float, float] = (-30.0, 30.0), supersample: int = 2,
                           workers: int = 1, force: bool = False,
                           progress: Optional[Callable[[int], None]] = None) -> Dict[str, object]:
    """Render ``num_heads`` × ``views_per_head`` images at ``resolution`` into ``dest`` (``.zip`` or folder).

    Written atomically by :class:`training.dataset_io.DatasetWriter` (refuses an existing ``dest``
    unless ``force``). ``progress(n)`` is called after each head with its number of images. Returns a
    summary: ``dest``, ``images``, ``seconds``, ``images_per_second``.
    """
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
    if not -90 < pitch_range[0] <= pitch_range[1] < 90:
        raise ValueError(f"pitch range must lie inside (-90, 90) degrees, got {pitch_range}")
    start = time.perf_counter()
    tasks = [(seed, i, views_per_head, resolution, tuple(pitch_range), supersample) for i in range(num_heads)]
    labels, metas = [], []
    with DatasetWriter(dest, force=force) as writer:
        for records in _heads(tasks, workers):
            for r in records:
                writer.add("images/" + r["name"], r["image"])
                writer.add("masks/" + r["name"], r["mask"])
                writer.add("parsing/" + r["name"], r["parsing"])
                labels.append((r["name"], r["label"]))
                metas.append(r["meta"])
            if progress is not None:
                progress(len(records))
        writer.add("dataset.json", labels_json_bytes(labels))
        settings = dict(seed=seed, num_heads=num_heads, views_per_head=views_per_head, resolution=resolution,
                        pitch_range=list(pitch_range), supersample=supersample)
        meta = dict(generator="spherehead synthetic heads v1", settings=settings, classes=list(CLASS_NAMES),
                    images=metas)
        writer.add(META_FILE, json.dumps(meta, indent=1).encode("utf-8"))
    seconds = time.perf_counter() - start
    return dict(dest=str(dest), images=len(labels), seconds=round(seconds, 2),
                images_per_second=round(len(labels) / max(seconds, 1e-9), 2))
