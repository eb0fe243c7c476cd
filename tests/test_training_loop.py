"""The training loop end to end on the tiny config (CPU): snapshots, stats, exact resume after an
interruption, two-process gloo data parallelism, and the train.py CLI's user errors."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import spherehead
from torch_utils import distributed as dist
from training import resume as resume_io
from training.presets import make_training_options
from training.synthetic_set import generate_synthetic_set
from training.dataset import InfiniteSampler
from training.training_loop import Trainer, build_networks, training_loop
from training.training_stats import Collector, read_stats, trim_stats
from helpers import assert_user_error  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOSSES = ("Loss/G/loss", "Loss/D/real", "Loss/D/fake", "Loss/D/vico")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads per process mostly wait on each
    other (measured 3 s vs 7-20 s per tiny iteration under load); results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> str:
    """4 synthetic heads × 2 views at 128 px (the tiny config's image size), as a zip."""
    path = tmp_path_factory.mktemp("data") / "heads.zip"
    generate_synthetic_set(path, num_heads=4, views_per_head=2, resolution=128, supersample=1, seed=1)
    return str(path)


def tiny_options(data: str, **overrides):
    """Batch 2, one iteration per tick (tick 0 is always the first iteration), a snapshot every tick."""
    kw = dict(batch=2, batch_gpu=2, kimg=0.006, tick=0.002, snap=1, img_snap=100, mirror=False, resume="latest")
    kw.update(overrides)
    opts = make_training_options("tiny-128", data, **kw)
    opts.image_grid_seeds = 1
    return opts


class Interrupted(Exception):
    pass


def _run(run_dir, opts, tensorboard: bool = False):
    return training_loop(str(run_dir), opts, device=torch.device("cpu"), num_workers=0, tensorboard=tensorboard)


def _run_until_killed(run_dir, opts, state_tick: int, state_written: bool, tensorboard: bool = False):
    """Run, and "kill" the process at the resume state whose ``cur_tick`` is ``state_tick``: right after
    it is on disk (``state_written``), or just before it would be written."""
    original = resume_io.save_state

    def save(path, state):
        if state["cur_tick"] == state_tick:
            if state_written:
                original(path, state)
            raise Interrupted
        original(path, state)

    resume_io.save_state = save
    try:
        with pytest.raises(Interrupted):
            _run(run_dir, opts, tensorboard)
    finally:
        resume_io.save_state = original


@pytest.fixture(scope="module")
def runs(heads, tmp_path_factory):
    """Run A: 3 iterations in one go. Run B: the same command, but the process dies right after the
    resume state of tick 1 (iteration 2) is written; then the same command is run again."""
    root = tmp_path_factory.mktemp("runs")
    summary_a = _run(root / "A", tiny_options(heads))
    _run_until_killed(root / "B", tiny_options(heads), state_tick=2, state_written=True)   # tick 1's state
    interrupted = {"stats": read_stats(str(root / "B" / "stats.jsonl")),
                   "state": resume_io.latest_state(str(root / "B"))}
    summary_b = _run(root / "B", tiny_options(heads))
    return {"A": root / "A", "B": root / "B", "summary_a": summary_a, "summary_b": summary_b,
            "interrupted": interrupted}


def test_snapshot_reads_back(runs, heads):
    nets = spherehead.load_network(str(runs["A"] / "network-snapshot-000000.safetensors"))
    assert type(nets["G_ema"]).__name__ == "TriPlaneGenerator" and type(nets["D"]).__name__ == "HoloDiscriminator"
    assert nets["metadata"]["cur_nimg"] == 6 and nets["metadata"]["training_set_kwargs"]["path"] == heads
    state = resume_io.latest_state(str(runs["A"]))
    for name, module in nets.items():
        if name in ("G", "D", "G_ema"):   # the snapshot holds exactly the networks the loop trained
            for k, v in module.state_dict().items():
                assert torch.equal(v, state[name][k]), (name, k)
    G_init, _, _ = build_networks(tiny_options(heads), torch.ones(25).numpy(), torch.device("cpu"))
    ema = nets["G_ema"].state_dict()
    assert all(torch.isfinite(v).all() for v in ema.values())
    assert not torch.equal(ema["backbone.mapping.fc0.weight"], G_init.state_dict()["backbone.mapping.fc0.weight"])
    assert "dataset_label_std" in ema and nets["G_ema"].rendering.density_noise == 0.0


def test_run_folder_contents(runs):
    a = runs["A"]
    for name in ("training_options.json", "log.txt", "stats.jsonl", "fakes_init.png", "fakes000000.png"):
        assert (a / name).is_file(), name
    assert json.loads((a / "training_options.json").read_text())["cfg"] == "tiny-128"
    assert "tick 2" in (a / "log.txt").read_text()
    stats = read_stats(str(a / "stats.jsonl"))
    assert [round(s["Progress/kimg"]["mean"] * 1000) for s in stats] == [2, 4, 6]
    for name in LOSSES[:3]:
        assert all(math.isfinite(s[name]["mean"]) for s in stats), name
    vico = [s["Loss/D/vico"]["mean"] for s in stats if "Loss/D/vico" in s]
    assert vico and all(math.isfinite(v) for v in vico)
    assert "Loss/D/reg" in stats[0]   # lazy R1 on iteration 0 (every 16)


def test_resume_after_interruption_is_exact(runs):
    cut = runs["interrupted"]
    assert cut["state"]["cur_nimg"] == 4 and cut["state"]["cur_tick"] == 2 and len(cut["stats"]) == 2
    for key in ("cur_nimg", "cur_tick", "batch_idx"):
        assert runs["summary_a"][key] == runs["summary_b"][key], key
    a, b = resume_io.latest_state(str(runs["A"])), resume_io.latest_state(str(runs["B"]))
    for key in ("cur_nimg", "cur_tick", "batch_idx", "data_position"):
        assert a[key] == b[key], key
    for name in ("G_ema", "G", "D"):
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)
    for k in ("G", "D"):
        sa, sb = a["optimizers"][k]["state"], b["optimizers"][k]["state"]
        assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    losses = lambda run: [{k: s[k]["mean"] for k in s if k.startswith("Loss/")} for s in read_stats(str(run / "stats.jsonl"))]
    assert losses(runs["A"]) == losses(runs["B"])   # same data, same random draws, same numbers
    assert "Resuming" in (runs["B"] / "log.txt").read_text()


@pytest.fixture(scope="module", params=[3, 1], ids=["resume", "scratch"])
def past_state(request, heads, tmp_path_factory):
    """The process dies after writing a tick's stats line but before that tick's state, and the same command
    runs again: "resume" dies before tick 2's state (it continues from tick 1's), "scratch" before the first
    state (tick 0's), so it starts over. TensorBoard events are written when the package is installed."""
    run = tmp_path_factory.mktemp(f"past-state-{request.param}")
    tb = importlib.util.find_spec("tensorboard") is not None
    _run_until_killed(run, tiny_options(heads), state_tick=request.param, state_written=False, tensorboard=tb)
    before = read_stats(str(run / "stats.jsonl"))
    _run(run, tiny_options(heads), tensorboard=tb)
    return {"run": run, "before": before, "after": read_stats(str(run / "stats.jsonl")),
            "logged": {3: [2, 4, 6], 1: [2]}[request.param]}


def test_resume_after_ticks_past_the_last_state_keeps_every_stats_line(past_state):
    """The rerun drops the lines of the ticks after its state (it trains them again) and writes them anew,
    with the same numbers, into stats.jsonl."""
    before, after = past_state["before"], past_state["after"]
    assert [round(s["Progress/kimg"]["mean"] * 1000) for s in before] == past_state["logged"]
    assert [round(s["Progress/kimg"]["mean"] * 1000) for s in after] == [2, 4, 6]
    losses = lambda line: {k: v["mean"] for k, v in line.items() if k.startswith("Loss/")}   # noqa: E731
    assert [losses(line) for line in after[:len(before)]] == [losses(line) for line in before]
    assert after[len(before) - 1]["timestamp"] > before[-1]["timestamp"]   # the last logged tick, trained again


def test_tensorboard_scalars_match_stats_after_a_resume(past_state):
    """TensorBoard gets every stats.jsonl mean at its image count; the ticks an interrupted process logged
    after its last state are purged on rerun, so each step appears once, with the retrained values."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run, stats = past_state["run"], past_state["after"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 2   # one file per process
    events = EventAccumulator(str(run))
    events.Reload()
    for tag in LOSSES + ("Timing/train_sec",):
        scalars = events.Scalars(tag)
        assert [e.step for e in scalars] == [2, 4, 6], tag
        assert [e.value for e in scalars] == pytest.approx([s[tag]["mean"] for s in stats], rel=1e-6), tag
    # the step-6 events are the retrained tick's (its wall time), not the purged ones
    assert events.Scalars("Timing/train_sec")[2].wall_time == pytest.approx(stats[2]["timestamp"])


def test_training_time_adds_up_across_resumes(runs, tmp_path):
    """Timing/total_sec is this process's time; Timing/train_sec (also in the resume state) carries on
    from the state the run resumed from. States written before train_sec existed fall back to the sum of
    stats.jsonl's tick times up to the state."""
    cut = runs["interrupted"]
    stats = read_stats(str(runs["B"] / "stats.jsonl"))
    train = [s["Timing/train_sec"]["mean"] for s in stats]
    assert cut["state"]["train_sec"] >= cut["stats"][-1]["Timing/train_sec"]["mean"] > 0
    assert train[:2] == [s["Timing/train_sec"]["mean"] for s in cut["stats"]]   # kept lines, unchanged
    assert stats[2]["Timing/train_sec"]["mean"] == pytest.approx(
        cut["state"]["train_sec"] + stats[2]["Timing/total_sec"]["mean"], abs=1e-6)
    assert stats[2]["Timing/total_sec"]["mean"] < train[2]   # the new process's clock restarted
    assert all(t > 0 for t in train) and train == sorted(train)

    from types import SimpleNamespace
    lines = [{"Progress/kimg": {"mean": k / 1000}, "Timing/sec_per_tick": {"mean": t}} for k, t in
             ((2, 1.5), (4, 2.0), (6, 4.0))]
    (tmp_path / "stats.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    old = SimpleNamespace(run_dir=str(tmp_path), rank=0, cur_nimg=4)
    assert Trainer._train_sec_from_stats(old) == 3.5   # the ticks up to 4 images, not the one after


def test_rerun_of_finished_run_does_nothing(runs, heads):
    summary = _run(runs["A"], tiny_options(heads))
    assert summary["cur_nimg"] == 6 and len(read_stats(str(runs["A"] / "stats.jsonl"))) == 3


def test_fine_tune_start_from_a_checkpoint(runs, heads, tmp_path):
    snapshot = str(runs["A"] / "network-snapshot-000000.safetensors")
    _run(tmp_path / "ft", tiny_options(heads, kimg=0.002, resume=snapshot, img_snap=0))
    state = resume_io.latest_state(str(tmp_path / "ft"))
    assert state["cur_nimg"] == 2 and state["batch_idx"] == 1   # counters start from 0
    assert state["fade_disabled"] is True   # no --resume-blur: blur and GPC fades skipped (§6.2)
    log = (tmp_path / "ft" / "log.txt").read_text()
    assert "Fine-tune start: G <- " in log and "Fine-tune start: D <- " in log
    # Counting from 0, the EMA ramp-up makes the first step's beta 0: G_ema is replaced by G.
    assert all(torch.equal(state["G"][k], v) for k, v in state["G_ema"].items())


def test_fine_tune_start_at_resume_kimg(runs, heads, tmp_path):
    """--resume-kimg (the reference's second stage resumes at 1000 kimg, §6.2): the counters start
    there, so the rendering resolution is already the final one, the EMA ramp-up is over (the loaded
    G_ema is kept, only nudged toward G), and the snapshot is named by the total kimg."""
    snapshot = str(runs["A"] / "network-snapshot-000000.safetensors")
    loaded = {k: v.detach() for k, v in spherehead.load_network(snapshot)["G_ema"].named_parameters()}
    run = tmp_path / "stage2"
    _run(run, tiny_options(heads, kimg=1000.002, resume=snapshot, resume_kimg=1000, nrr_final=32, img_snap=0))
    state = resume_io.latest_state(str(run))
    assert (state["cur_nimg"], state["batch_idx"], state["neural_rendering_resolution"]) == (1000002, 1, 32)
    assert (run / "network-snapshot-001000.safetensors").is_file()
    assert [line["Progress/kimg"]["mean"] for line in read_stats(str(run / "stats.jsonl"))] == [1000.002]
    beta = 0.5 ** (2 / (2 * 10 / 32 * 1000))   # ema_nimg = batch·10/32 kimg, no longer ramped (§6.1)
    assert any(not torch.allclose(state["G"][k], v, atol=1e-3) for k, v in loaded.items())   # G_ema ≠ G
    for name, before in loaded.items():   # parameters are lerped (buffers are copied from G)
        assert torch.allclose(state["G_ema"][name], state["G"][name].lerp(before, beta), atol=1e-6), name
    # --resume latest then continues the run (the folder match ignores the fine-tune start options).
    assert _run(run, tiny_options(heads, kimg=1000.004, nrr_final=32, img_snap=0))["cur_nimg"] == 1000004
    with pytest.raises(resume_io.ResumeError, match="no resume state to continue, and --resume-kimg 1000"):
        _run(tmp_path / "empty", tiny_options(heads, kimg=1000.002, resume_kimg=1000))
    assert not list((tmp_path / "empty").glob("*.safetensors"))


def test_resume_latest_refuses_changed_options(runs, heads, tmp_path, monkeypatch):
    """A resume state restores the optimisers' rates, so continuing it under another --lr-g or loss
    weight would train with the old rate under the new record: refused, naming each changed option,
    before the folder changes and before a state is loaded; through train.py, one clear error line."""
    import shutil
    run = tmp_path / "A"
    shutil.copytree(runs["A"], run)
    files = lambda: {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "log.txt"}
    before = files()
    with monkeypatch.context() as m:
        m.setattr(resume_io, "load_state", lambda path: pytest.fail(f"loaded {path} before refusing"))
        with pytest.raises(resume_io.ResumeError,
                           match=r"G_lr: run 0\.0025, now 0\.001; loss_opts\.r1_gamma: run 1\.0, now 0\.5"):
            _run(run, tiny_options(heads, kimg=0.008, lr_g=0.001, r1_gamma=0.5))
    assert files() == before
    result = _cli(["--run-dir", str(run), "--data", heads, "--cfg", "tiny-128", "--batch", "2", "--batch-gpu", "2",
                   "--kimg", "0.008", "--tick", "0.002", "--snap", "1", "--img-snap", "100", "--no-mirror",
                   "--workers", "0", "--device", "cpu", "--resume", "latest", "--lr-d", "0.004"])
    assert_user_error(result, "training_options.json", "D_lr: run 0.002, now 0.004", "--resume <its snapshot>")
    assert files() == before
    # What may change in a continuation: its length, the metrics, where the data is mounted, and
    # options the run's file predates (it ran with their defaults).
    opts = tiny_options(heads).to_dict()
    opts.update(total_kimg=9.0, metrics=["fid"], metrics_num_gen=50, resume=None, launch={"world_size": 8})
    opts["dataset_kwargs"]["path"] = "/scratch/elsewhere/heads.zip"
    opts["loss_opts"]["an_option_added_later"] = 1
    assert resume_io.changed_options(str(run), opts) == []
    assert resume_io.changed_options(str(tmp_path / "nothing-here"), opts) == []


def test_resume_latest_compares_options_the_run_predates_with_their_defaults(runs, heads, tmp_path, monkeypatch):
    """A run written before --parsing-drop existed ran without it: continuing it with the default is
    fine, turning the new switch on in the continuation is refused (the file's record would be wrong)."""
    import json
    import shutil
    run = tmp_path / "A"
    shutil.copytree(runs["A"], run)
    path = run / resume_io.OPTIONS_FILE
    stored = json.loads(path.read_text())
    del stored["loss_opts"]["parsing_drop_prob"]
    path.write_text(json.dumps(stored))
    same, switched = tiny_options(heads), tiny_options(heads, parsing_drop=0.5)
    assert resume_io.changed_options(str(run), same.to_dict(), same.defaults()) == []
    assert resume_io.changed_options(str(run), switched.to_dict(), switched.defaults()) == [
        "loss_opts.parsing_drop_prob: run 0.0 (the default; the run predates the option), now 0.5"]
    assert resume_io.changed_options(str(run), switched.to_dict()) == []   # no defaults given: not compared
    with monkeypatch.context() as m:
        m.setattr(resume_io, "load_state", lambda p: pytest.fail(f"loaded {p} before refusing"))
        with pytest.raises(resume_io.ResumeError, match=r"parsing_drop_prob: run 0\.0 \(the default"):
            _run(run, switched)


def test_diverged_weights_are_never_written(heads, tmp_path, monkeypatch):
    """NaN in D after iteration 2: train.py stops with one error line naming the tensor and the last good
    state, and writes neither snapshot nor state of the diverged weights (only the newest states are
    kept, so writing them would soon delete the good ones)."""
    step = Trainer._step

    def step_then_diverge(self):
        step(self)
        if self.batch_idx == 2:
            with torch.no_grad():
                self.D.b4.out.weight.fill_(float("nan"))

    monkeypatch.setattr(Trainer, "_step", step_then_diverge)
    run = tmp_path / "run"
    result = _cli(["--run-dir", str(run), "--data", heads, "--cfg", "tiny-128", "--batch", "2", "--batch-gpu", "2",
                   "--kimg", "0.006", "--tick", "0.002", "--snap", "1", "--img-snap", "100", "--no-mirror",
                   "--workers", "0", "--device", "cpu"])
    assert_user_error(result, "after iteration 2 (0.004 kimg)", "NaN or Inf (D.b4.out.weight)",
                      "resume-state-000000.pt", "--resume <snapshot>")
    assert resume_io.latest_state(str(run))["cur_nimg"] == 2   # tick 0's state is still the newest
    snapshot = spherehead.load_network(str(run / "network-snapshot-000000.safetensors"))
    assert snapshot["metadata"]["cur_nimg"] == 2
    assert all(torch.isfinite(p).all() for p in snapshot["D"].parameters())


def test_write_error_is_one_clear_line(heads, tmp_path, monkeypatch):
    """A full disk while writing the first resume state: one error line naming the run folder and the
    cause, no traceback, and no partial file left behind."""
    import errno
    from spherehead.fileio import atomic_path

    def full_disk(path, state):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half a state")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))   # as f.write raises it: no file name

    monkeypatch.setattr(resume_io, "save_state", full_disk)
    run = tmp_path / "run"
    result = _cli(["--run-dir", str(run), "--data", heads, "--cfg", "tiny-128", "--batch", "2", "--batch-gpu", "2",
                   "--kimg", "0.004", "--tick", "0.002", "--snap", "1", "--img-snap", "100", "--no-mirror",
                   "--workers", "0", "--device", "cpu"])
    assert_user_error(result, f"{run}: No space left on device", "--resume latest")
    assert not [p for p in os.listdir(run) if "resume-state" in p]


def test_two_process_gloo_run_keeps_ranks_identical(heads, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), "--outdir", str(tmp_path), "--data", heads, "--cfg", "tiny-128",
           "--batch", "4", "--batch-gpu", "2", "--kimg", "0.008", "--tick", "0.004", "--snap", "1",
           "--img-snap", "0", "--workers", "0", "--device", "cpu", "--no-mirror", "--gpus", "2"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    state = resume_io.latest_state(str(run_dir))
    assert state["world_size"] == 2 and state["cur_nimg"] == 8 and len(state["digests"]) == 2
    assert state["digests"][0] == state["digests"][1]   # G, D and G_ema agree bit for bit on both ranks
    stats = read_stats(str(run_dir / "stats.jsonl"))
    assert stats[-1]["Loss/G/loss"]["num"] == 2   # one report per rank, averaged over both
    assert json.loads((run_dir / "training_options.json").read_text())["launch"]["world_size"] == 2


# ----------------------------------------------------------------------------------------- CLI

def _cli(args):
    import train
    return CliRunner().invoke(train.main, args)


def _without(heads, tmp_path, prefix):
    out = tmp_path / f"no-{prefix.strip('/.')}.zip"
    with zipfile.ZipFile(heads) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            if not item.filename.startswith(prefix):
                dst.writestr(item, src.read(item.filename))
    return str(out)


def test_cli_user_errors(heads, tmp_path):
    base = ["--outdir", str(tmp_path / "runs"), "--cfg", "tiny-128", "--dry-run"]
    assert_user_error(_cli(base + ["--data", str(tmp_path / "missing.zip")]), "does not exist")
    assert_user_error(_cli(base + ["--data", _without(heads, tmp_path, "dataset.json")]), "dataset.json")
    assert_user_error(_cli(base + ["--data", _without(heads, tmp_path, "masks/")]), "no masks")
    no_parsing = _without(heads, tmp_path, "parsing/")
    assert_user_error(_cli(base + ["--data", no_parsing]), "--no-parsing")
    assert _cli(base + ["--data", no_parsing, "--no-parsing"]).exit_code == 0
    assert_user_error(_cli(base + ["--data", heads, "--cfg", "small-128", "--batch", "6", "--batch-gpu", "4"]),
                    "--batch 6")
    assert_user_error(_cli(base + ["--data", heads, "--resume", str(tmp_path / "nope.pkl")]), "no such file")
    assert_user_error(_cli(base + ["--data", heads, "--gpus", "2"]), "torchrun")
    assert_user_error(_cli(base + ["--data", heads, "--resume-kimg", "1000"]), "--resume-kimg", "--resume PATH")
    assert_user_error(_cli(base + ["--data", heads, "--resume", "latest", "--resume-kimg", "1000", "--kimg", "500"]),
                      "--resume-kimg 1000 must be below --kimg 500")
    assert_user_error(_cli(["--data", heads, "--cfg", "tiny-128", "--dry-run"]), "--outdir")
    assert not (tmp_path / "runs").exists()   # nothing is created by a dry run or a refused one


def test_cli_dry_run_and_run_folder_rule(heads, tmp_path):
    outdir = tmp_path / "runs"
    args = ["--outdir", str(outdir), "--data", heads, "--cfg", "tiny-128", "--dry-run", "--gpc-prob", "off",
            "--vico-weight", "0"]
    result = _cli(args)
    assert result.exit_code == 0, result.output
    assert f"{outdir}/00000-tiny-128-heads" in result.output
    opts = json.loads(result.output[:result.output.rindex("}") + 1])
    assert opts["loss_opts"]["gpc_reg_prob"] is None and opts["G_kwargs"]["rendering_kwargs"]["c_scale"] == 0.0
    assert opts["loss_opts"]["vico_weight"] == 0.0
    # 'latest' reuses the newest folder whose options match (total_kimg aside); other options -> a new id.
    run = outdir / "00000-tiny-128-heads"
    run.mkdir(parents=True)
    (run / "training_options.json").write_text(json.dumps(dict(opts, total_kimg=99.0, resume="latest", launch={})))
    assert f"{run}\n" in _cli(args + ["--resume", "latest"]).output
    assert "00001-tiny-128-heads" in _cli(args + ["--resume", "latest", "--seed", "5"]).output
    assert "00001-tiny-128-heads" in _cli(args).output   # no --resume: always a new folder
    # the metric options do not change the training, so they do not split a run either
    assert f"{run}\n" in _cli(args + ["--resume", "latest", "--metrics", "artifact-rate"]).output
    # a folder whose file predates an option matches while the option keeps its default (the command of an
    # older version still finds its run after an upgrade), and not once the option is turned on
    older = dict(opts, total_kimg=99.0, resume="latest", launch={})
    older["loss_opts"] = {k: v for k, v in opts["loss_opts"].items() if k != "parsing_drop_prob"}
    (run / "training_options.json").write_text(json.dumps(older))
    assert f"{run}\n" in _cli(args + ["--resume", "latest"]).output
    assert "00001-tiny-128-heads" in _cli(args + ["--resume", "latest", "--parsing-drop", "0.5"]).output


# ------------------------------------------------------------------------------ metrics in the loop

class _StandInFeatures(torch.nn.Module):
    """Fixed random convs + pooling, uint8 [N, 3, H, W] -> [N, 8] (the Inception's role in a test)."""

    def __init__(self):
        super().__init__()
        self.w = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(7)) * 0.2

    @torch.no_grad()
    def forward(self, images):
        x = torch.nn.functional.interpolate(images.float() / 127.5 - 1, size=(32, 32), mode="area")
        return torch.relu(torch.nn.functional.conv2d(x, self.w, stride=2)).mean(dim=(2, 3))


def test_metrics_at_each_snapshot_leave_training_unchanged(runs, heads, tmp_path, monkeypatch):
    import training.metrics as metrics
    asked = []
    monkeypatch.setattr(metrics, "load_feature_net", lambda spec, **kw: asked.append(spec) or _StandInFeatures())
    _run(tmp_path / "M", tiny_options(heads, metrics=("fid",), metrics_num_gen=4, metrics_features="x.pt"))
    assert asked == ["x.pt"]   # the feature net is loaded once, at the start
    lines = [json.loads(line) for line in (tmp_path / "M" / "metric-fid.jsonl").read_text().splitlines()]
    assert [round(r["kimg"] * 1000) for r in lines] == [2, 4, 6]   # one per snapshot (batch 2, snapshot per tick)
    assert all(r["metric"] == "fid" and r["num_gen"] == 4 and math.isfinite(r["results"]["fid"])
               and r["results"]["fid"] >= 0 for r in lines)
    assert lines[-1]["network"] == "network-snapshot-000000.safetensors" and lines[-1]["data"] == heads
    assert "metric fid fid " in (tmp_path / "M" / "log.txt").read_text()
    # metric sampling restores the RNG: the weights equal those of run A (same options, no metrics)
    with_metrics, plain = resume_io.latest_state(str(tmp_path / "M")), resume_io.latest_state(str(runs["A"]))
    for name in ("G", "D", "G_ema"):
        for k, v in plain[name].items():
            assert torch.equal(v, with_metrics[name][k]), (name, k)


def test_metric_that_cannot_run_stops_the_start(heads, tmp_path):
    base = ["--outdir", str(tmp_path / "runs"), "--data", heads, "--cfg", "tiny-128", "--kimg", "0.002",
            "--workers", "0", "--device", "cpu"]
    result = _cli(base + ["--metrics", "fid,nope"])
    assert result.exit_code != 0 and "nope" in result.output and "Traceback" not in result.output
    assert_user_error(_cli(base + ["--metrics", "fid", "--metrics-features", str(tmp_path / "missing.pt")]),
                    "missing.pt")
    # the generator-parsing metric on a run without the parsing branch
    assert_user_error(_cli(base + ["--no-parsing", "--metrics", "parsing-face-rate-bins"]), "without the parsing branch")
    assert_user_error(_cli(base + ["--no-parsing", "--metrics", "fid,face-part-agreement"]),
                      "face-part-agreement read(s) the generator's parsing maps")
    assert not list((tmp_path / "runs").glob("*/network-snapshot-*"))   # no training happened


# ---------------------------------------------------------------------------------- small pieces

def test_infinite_sampler_is_seeded_resumable_and_split():
    take = lambda s, n: [x for _, x in zip(range(n), iter(s))]
    full = take(InfiniteSampler(5, seed=3), 12)
    assert sorted(full[:5]) == list(range(5)) and sorted(full[5:10]) == list(range(5))
    assert take(InfiniteSampler(5, seed=3, start=7), 5) == full[7:12]
    r0, r1 = take(InfiniteSampler(5, 0, 2, seed=3), 6), take(InfiniteSampler(5, 1, 2, seed=3), 6)
    assert [x for pair in zip(r0, r1) for x in pair] == full[:12]


@pytest.mark.parametrize("cfg, d_128px, d_32px, planes", [("demo-128", 2, 8, 32), ("demo-wide-128", 16, 64, 64)])
def test_demo_presets_widths_and_asset_size(heads, cfg, d_128px, d_32px, planes):
    """The demo presets' D widths (demo_model.md explains why the wide one exists) and that G_ema + D
    of each fits the 20 MB budget of a bundled asset at float32."""
    opts = make_training_options(cfg, heads)
    G, D, _ = build_networks(opts, torch.ones(25).numpy(), torch.device("cpu"))
    assert D.b128.fromrgb.weight.shape[:2] == (d_128px, 27)   # image, raw image, mask, 20 parsing classes
    assert D.b32.conv0.weight.shape[0] == d_32px
    assert G.rendering.triplane_size == planes and hasattr(G.backbone.synthesis, f"b{planes}")
    size = 4 * sum(p.numel() for m in (G, D) for p in m.parameters())
    assert size <= 20e6, f"{cfg}: {size / 1e6:.1f} MB"


def test_ema_update(heads):
    opts = tiny_options(heads)
    G, _, G_ema = build_networks(opts, torch.ones(25).numpy(), torch.device("cpu"))
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    G.rendering.density_noise = 0.5
    G.neural_rendering_resolution = 24
    G.backbone.mapping.w_avg.fill_(3.0)
    before = {k: v.clone() for k, v in G_ema.state_dict().items()}

    class Fake:
        pass
    fake = Fake()
    fake.opts, fake.G, fake.G_ema, fake.cur_nimg = opts, G, G_ema, 10_000
    Trainer._update_ema(fake)
    beta = 0.5 ** (2 / min(opts.ema_nimg, 10_000 * 0.05))   # ema_nimg = min(625, 500) = 500 images
    k = "backbone.mapping.fc0.weight"
    assert torch.allclose(G_ema.state_dict()[k], G.state_dict()[k].lerp(before[k], beta))
    assert torch.equal(G_ema.backbone.mapping.w_avg, G.backbone.mapping.w_avg)   # buffers copied
    assert G_ema.neural_rendering_resolution == 24 and G_ema.rendering.density_noise == 0.0


def test_collector_and_trim(tmp_path):
    c = Collector()
    for v in (1.0, 2.0, 3.0):
        c.report("x", v)
    s = c.gather()["x"]
    assert s["num"] == 3 and s["mean"] == 2.0 and abs(s["std"] - math.sqrt(2 / 3)) < 1e-12
    assert c.gather() == {}
    path = tmp_path / "stats.jsonl"
    path.write_text("".join(json.dumps({"Progress/kimg": {"mean": k}}) + "\n" for k in (0.002, 0.004, 0.006)))
    trim_stats(str(path), 4)
    assert [round(s["Progress/kimg"]["mean"] * 1000) for s in read_stats(str(path))] == [2, 4]


def test_latest_state_skips_temp_and_broken_files(tmp_path):
    resume_io.save_state(str(tmp_path / "resume-state-000001.pt"), {"cur_nimg": 1000})
    (tmp_path / ".resume-state-000009.pt.abc.tmp").write_bytes(b"partial")
    (tmp_path / "resume-state-000005.pt").write_bytes(b"not a torch file")
    notes = []
    assert resume_io.latest_state(str(tmp_path), log=notes.append)["cur_nimg"] == 1000
    assert len(notes) == 1 and "resume-state-000005.pt" in notes[0]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "resume-state-000001.pt").st_mode & 0o777 == 0o666 & ~umask   # not private


def test_launch_from_env():
    assert dist.launch_from_env({}).init_method is None
    t = dist.launch_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (t.rank, t.world_size, t.local_rank, t.init_method, t.launcher) == (3, 8, 1, "env://", "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "1234",
             "SLURM_JOB_NODELIST": "gpu[07-08,11],cpu1"}
    s = dist.launch_from_env(slurm)
    assert (s.rank, s.world_size, s.local_rank, s.init_method) == (5, 16, 1, "tcp://gpu07:29734")
    assert dist.launch_from_env(dict(slurm, SLURM_LAUNCH_NODE_IPADDR="10.0.0.2")).init_method == "tcp://10.0.0.2:29734"
    assert dist.launch_from_env(slurm, master_addr="m", master_port=1).init_method == "tcp://m:1"
    assert dist.launch_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).init_method is None
    assert dist.launch_from_env(dict(slurm, RANK="0", WORLD_SIZE="2")).launcher == "torchrun"
