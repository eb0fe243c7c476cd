"""Run folders and resume states: what lets ``train.py`` continue a run exactly when the same command
is rerun.

* A **run folder** is ``{outdir}/{id:05d}-{cfg}-{dataset}``. :func:`find_run_dir` reuses the newest
  folder whose ``training_options.json`` equals the new options when resuming from 'latest', ignoring
  ``total_kimg`` (a run is extended by rerunning it with a larger ``--kimg``), ``resume`` (a crashed
  run or fine-tune is continued by rerunning it with ``--resume latest``) and ``launch`` (processes and
  device may change), an option the file predates counting as its default; otherwise it creates the
  next id.
* ``--resume latest`` in a folder whose ``training_options.json`` differs from the new options in
  anything else (learning rates, loss weights, batch, ...) is refused by :func:`changed_options`:
  the resume state would restore the old optimiser settings under the new file's record.
* A **resume state** ``resume-state-{kimg:06d}.pt`` is one self-contained file: the state dicts of G,
  G_ema and D, both optimisers, the counters, the loss-schedule switch, every rank's RNG states and
  the data position. It is written atomically (temp file in the run folder, fsync, ``os.replace``),
  so a file under its final name is always complete; :func:`latest_state` picks the one with the
  most images shown and skips anything unreadable. Only tensors, numbers, strings, lists and dicts
  are stored, so it loads with ``torch.load(weights_only=True)`` (no code runs on load).
"""
from __future__ import annotations

import glob
import json
import os
import random
import re
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from spherehead.fileio import atomic_path

STATE_FORMAT = "spherehead-resume-state"
STATE_VERSION = 1
STATE_PATTERN = re.compile(r"resume-state-(\d{6,})\.pt")
OPTIONS_FILE = "training_options.json"
# May differ in a rerun that continues the run: the metrics do not change the training, and a fine-tune
# start's --resume PATH / --resume-blur / --resume-kimg live on in the state (fade_disabled, counters).
UNMATCHED_OPTIONS = ("total_kimg", "resume", "resume_blur", "resume_kimg", "launch", "metrics", "metrics_num_gen",
                     "metrics_features", "metrics_data")
# May also differ when --resume latest continues a given run folder (the same data mounted elsewhere).
UNCHECKED_ON_RESUME = ("dataset_kwargs.path",)


class ResumeError(ValueError):
    """A run folder or resume state cannot be used; the message names the file."""


class DivergedError(RuntimeError):
    """The weights hold NaN or Inf; the run stopped without writing them (the message names them)."""


# ------------------------------------------------------------------------------------- run folders

def _run_id(name: str) -> Optional[int]:
    m = re.match(r"(\d{5,})-", name)
    return int(m.group(1)) if m else None


def _comparable(options: Dict[str, Any]) -> Dict[str, Any]:
    """``options`` as its JSON file holds them (tuples -> lists), without UNMATCHED_OPTIONS."""
    return {k: v for k, v in json.loads(json.dumps(options)).items() if k not in UNMATCHED_OPTIONS}


def _stored_options(run_dir: str) -> Dict[str, Any]:
    """:func:`_comparable` of ``run_dir``'s training_options.json (OSError / ValueError propagate)."""
    with open(os.path.join(run_dir, OPTIONS_FILE), encoding="utf-8") as f:
        return _comparable(json.load(f))


def matching_run_dir(outdir: str, options: Dict[str, Any], defaults: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """Newest ``{id}-*`` folder of ``outdir`` whose training_options.json matches ``options`` by the rule of
    :func:`changed_options` (an option the file predates matches when ``options`` has its default), except
    that the dataset's path must match too."""
    if not os.path.isdir(outdir):
        return None
    now, known = _flat(_comparable(options)), _flat(_comparable(defaults or {}))
    found = []
    for name in os.listdir(outdir):
        run_id, path = _run_id(name), os.path.join(outdir, name)
        if run_id is None or not os.path.isfile(os.path.join(path, OPTIONS_FILE)):
            continue
        try:
            if not _differences(_flat(_stored_options(path)), now, known):
                found.append((run_id, path))
        except (OSError, ValueError):
            continue
    return max(found)[1] if found else None


def _flat(options: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_options(run_dir: str, options: Dict[str, Any], defaults: Optional[Dict[str, Any]] = None) -> List[str]:
    """'name: run A, now B' for each option that differs from ``run_dir``'s training_options.json,
    apart from UNMATCHED_OPTIONS and the dataset's path (the same data may be mounted elsewhere);
    empty when the folder has no such file. An option the run's file predates ran with its default:
    with ``defaults`` (nested like ``options``, e.g. :meth:`TrainingOptions.defaults`) the new value
    is compared with that default, so a newly added switch cannot be turned on in a continuation
    unnoticed; options without a known default, and options only the file has, are not compared.
    A resume state restores the optimisers' learning rates and the schedules' counters, so continuing
    it under changed options would silently mix the two (the state's rates under the new file's record)."""
    path = os.path.join(run_dir, OPTIONS_FILE)
    if not os.path.isfile(path):
        return []
    try:
        before = _flat(_stored_options(run_dir))
    except (OSError, ValueError) as e:
        raise ResumeError(f"{path}: cannot be read as JSON ({e})") from None
    return _differences(before, _flat(_comparable(options)), _flat(_comparable(defaults or {})),
                        skip=UNCHECKED_ON_RESUME)


def _differences(before: Dict[str, Any], now: Dict[str, Any], known: Dict[str, Any], skip=()) -> List[str]:
    """'name: run A, now B' for each flat option of ``now`` that differs from ``before`` (a run's file) or,
    when the file predates it, from its default in ``known``; options neither has a value for are skipped."""
    out = []
    for k in sorted(set(now) - set(skip)):
        if k in before:
            if before[k] != now[k]:
                out.append(f"{k}: run {json.dumps(before[k])}, now {json.dumps(now[k])}")
        elif k in known and known[k] != now[k]:
            out.append(f"{k}: run {json.dumps(known[k])} (the default; the run predates the option), "
                       f"now {json.dumps(now[k])}")
    return out


def new_run_dir(outdir: str, desc: str) -> str:
    """``{outdir}/{next id:05d}-{desc}`` (not created)."""
    ids = [i for i in (_run_id(n) for n in (os.listdir(outdir) if os.path.isdir(outdir) else [])) if i is not None]
    return os.path.join(outdir, f"{max(ids, default=-1) + 1:05d}-{desc}")


def find_run_dir(outdir: str, desc: str, options: Dict[str, Any], resume: Optional[str],
                 defaults: Optional[Dict[str, Any]] = None) -> str:
    """The run folder for these options: a matching existing one when ``resume == 'latest'``, else a new one
    (``defaults``: see :func:`matching_run_dir`)."""
    if resume == "latest":
        found = matching_run_dir(outdir, options, defaults)
        if found is not None:
            return found
    return new_run_dir(outdir, desc)


# ------------------------------------------------------------------------------------------ RNG state

def rng_state() -> Dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors / plain values."""
    mt, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    out = {"torch": torch.get_rng_state(),
           "numpy": {"kind": mt, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "gauss": float(gauss)},
           "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                      "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# -------------------------------------------------------------------------------------- resume states

def state_path(run_dir: str, cur_nimg: int) -> str:
    return os.path.join(run_dir, f"resume-state-{cur_nimg // 1000:06d}.pt")


def save_state(path: str, state: Dict[str, Any]) -> None:
    """Write ``state`` atomically: temp file beside ``path``, fsync, rename."""
    state = dict(state, format=STATE_FORMAT, version=STATE_VERSION)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())


def load_state(path: str) -> Dict[str, Any]:
    """Read a resume state (tensors and plain values only; nothing executes)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # truncated, not a torch file, foreign objects: all mean "unusable"
        raise ResumeError(f"{path}: not a readable resume state ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path}: not a spherehead resume state")
    if state.get("version") != STATE_VERSION:
        raise ResumeError(f"{path}: resume state version {state.get('version')!r}, this code reads {STATE_VERSION}")
    return state


def state_files(run_dir: str) -> List[str]:
    """Resume-state files of a run folder, oldest first by name (temp files, hidden, are ignored)."""
    names = [os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(run_dir), "resume-state-*.pt"))]
    return [os.path.join(run_dir, n) for n in sorted(n for n in names if STATE_PATTERN.fullmatch(n))]


def latest_state(run_dir: str, log=print) -> Optional[Dict[str, Any]]:
    """The newest readable state of ``run_dir`` (names sort by kimg), or None when it has none.

    Within one kimg the file is simply overwritten at each snapshot, so its name still points at the
    newest state; an unreadable file (only possible when written by something else) is skipped."""
    for path in reversed(state_files(run_dir)):
        try:
            state = load_state(path)
        except ResumeError as e:
            log(f"skipping {e}")
            continue
        state["path"] = path
        return state
    return None


def nonfinite_tensors(modules: Dict[str, torch.nn.Module], limit: int = 3) -> List[str]:
    """Names ('D.b4.fc.weight', ...) of up to ``limit`` parameters and buffers holding NaN or Inf.
    Checked before a snapshot or state is written: with only the newest states kept, writing a
    diverged run's weights would soon have deleted its last good state."""
    bad = []
    for prefix, module in modules.items():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad.append(f"{prefix}.{name}")
                if len(bad) == limit:
                    return bad
    return bad


def prune_states(run_dir: str, keep: int) -> None:
    """Delete all but the newest ``keep`` resume states (network snapshots are never deleted)."""
    if keep <= 0:
        return
    for path in state_files(run_dir)[:-keep]:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
