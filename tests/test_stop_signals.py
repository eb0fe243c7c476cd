"""Stop signals (training/stop_signals.py): a signal stops the run after its iteration with a resume
state of that iteration, and ``--resume latest`` continues as if nothing had happened."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_training_loop import REPO, _run, heads, one_thread, tiny_options  # noqa: F401 (fixtures)
from training import resume as resume_io
from training.stop_signals import StopRequest, exit_status
from training.training_loop import Trainer
from training.training_stats import read_stats

# Two iterations of batch 2 per tick after tick 0 (the first iteration): ticks end at 2, 6 and 8 images.
OPTIONS = dict(kimg=0.008, tick=0.004)


def _kimg_of_lines(run_dir):
    return [round(line["Progress/kimg"]["mean"] * 1000) for line in read_stats(str(run_dir / "stats.jsonl"))]


def test_stop_mid_tick_then_resume_is_exact(heads, tmp_path, monkeypatch):
    """SIGTERM during iteration 2 (mid-tick): the run stops after it with a state at 4 images that keeps
    the tick open; the rerun ends the tick where the uninterrupted run did, with the same weights."""
    straight = _run(tmp_path / "A", tiny_options(heads, **OPTIONS))
    step = Trainer._step

    def step_and_signal(self):
        step(self)
        if self.batch_idx == 2:
            os.kill(os.getpid(), signal.SIGTERM)   # handled before the loop checks for it

    before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "_step", step_and_signal)
        stopped = _run(tmp_path / "B", tiny_options(heads, **OPTIONS))
    assert signal.getsignal(signal.SIGTERM) == before   # the loop put the handler back
    assert stopped["stopped_by"] == "SIGTERM" and stopped["cur_nimg"] == 4
    state = resume_io.latest_state(str(tmp_path / "B"))
    assert (state["cur_nimg"], state["cur_tick"], state["tick_start_nimg"]) == (4, 1, 2) and state["tick_sec"] > 0
    assert _kimg_of_lines(tmp_path / "B") == [2]   # tick 1 is not logged until it ends

    resumed = _run(tmp_path / "B", tiny_options(heads, **OPTIONS))
    assert resumed["stopped_by"] is None and straight["stopped_by"] is None
    assert _kimg_of_lines(tmp_path / "A") == _kimg_of_lines(tmp_path / "B") == [2, 6, 8]
    a, b = resume_io.latest_state(str(tmp_path / "A")), resume_io.latest_state(str(tmp_path / "B"))
    for key in ("cur_nimg", "cur_tick", "batch_idx"):
        assert a[key] == b[key], key
    for name in ("G", "D", "G_ema"):
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)


def test_second_signal():
    """The same signal twice gets its usual effect; another signal meanwhile does not."""
    calls, sigint = [], signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    try:
        stop = StopRequest().install()
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGINT)   # e.g. SLURM's SIGTERM after its SIGUSR1 warning: still stopping
        assert stop.signal_name == "SIGUSR1" and calls == []
        os.kill(os.getpid(), signal.SIGUSR1)   # again: the handler from before runs
        assert calls == [signal.SIGUSR1]
        stop.restore()
        assert signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert (exit_status("SIGTERM"), exit_status("SIGINT"), exit_status(None)) == (143, 130, 0)


@pytest.mark.skipif(sys.platform == "win32", reason="process groups")
def test_train_py_stops_on_sigterm_to_its_process_group(heads, tmp_path):
    """As SLURM does it: SIGTERM to the whole process group, DataLoader workers included. train.py
    writes the state, says how to continue and exits with 143; the same command then continues."""
    run = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), "--run-dir", str(run), "--data", heads, "--cfg", "tiny-128",
           "--batch", "2", "--batch-gpu", "2", "--kimg", "1", "--tick", "0.02", "--snap", "100", "--img-snap", "0",
           "--no-mirror", "--workers", "1", "--device", "cpu", "--resume", "latest"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (run / "stats.jsonl").exists():   # tick 0 is done: the loop is running
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, out[-3000:]
    assert "SIGTERM: stopped after iteration" in out and "--resume latest" in out, out[-3000:]
    state = resume_io.latest_state(str(run))
    # Within tick 1 (images 2 to 22; tick 0 is the first iteration): the stop came after the iteration it
    # arrived in, not at the tick's end. A tick of 10 iterations keeps the tick's end out of reach of the
    # 0.5 s poll above (with 2 iterations per tick, an idle machine sometimes finished the tick first).
    assert state["tick_start_nimg"] == 2 and state["cur_nimg"] in range(2, 22, 2), state["cur_nimg"]
    resumed = subprocess.run([*cmd[:cmd.index("--kimg") + 1], f"{(state['cur_nimg'] + 2) / 1000}",
                              *cmd[cmd.index("--kimg") + 2:]], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"{state['cur_nimg']} images shown" in resumed.stdout
