"""tools/bench_generator.py: the library function and the CLI on the tiny preset (a few seconds on 2 cores);
tools/bench_ops.py's CLI on tiny shapes."""
import json

import pytest
from click.testing import CliRunner

from tools.bench_generator import benchmark, main

COMMON_FIELDS = ("tool", "device", "device_name", "torch", "threads", "batch", "img_resolution",
                 "neural_rendering_resolution", "mode", "iters", "times_s", "median_s", "images_per_s",
                 "peak_memory_mb", "peak_memory_kind")


def _check_common(result, batch, iters, mode):
    for key in COMMON_FIELDS:
        assert key in result, key
    assert result["tool"] == "bench_generator"
    assert result["config"] == "tiny" and "network" not in result
    assert result["device"] == "cpu" and result["threads"] >= 1
    assert result["batch"] == batch and result["iters"] == iters and result["mode"] == mode
    assert result["img_resolution"] == 128 and result["neural_rendering_resolution"] == 8
    assert len(result["times_s"]) == iters and all(t > 0 for t in result["times_s"])
    assert result["median_s"] > 0
    assert result["images_per_s"] == pytest.approx(batch / result["median_s"], rel=1e-3)
    assert result["peak_memory_mb"] > 0 and result["peak_memory_increase_mb"] >= 0
    assert result["peak_memory_kind"].startswith("cpu-process-peak-rss")
    json.dumps(result)  # JSON-ready


def test_forward():
    result = benchmark(config="tiny", iters=1, warmup=0, neural_rendering_resolution=8)
    _check_common(result, batch=1, iters=1, mode="forward")


def test_turntable_frame_times_frames_with_a_precomputed_scene(monkeypatch):
    from spherehead.networks.generator import TriPlaneGenerator
    scenes, synth = [], TriPlaneGenerator.synthesis

    def spy(self, ws, c, *args, **kwargs):
        assert kwargs["scene"]["planes"].shape[0] == 1 and len(ws) == len(c) == 3
        assert len(set(c[:, 3].tolist())) == 3   # three cameras around the head
        return synth(self, ws, c, *args, **kwargs)
    scene = TriPlaneGenerator.scene
    monkeypatch.setattr(TriPlaneGenerator, "scene", lambda self, *a, **k: (scenes.append(1), scene(self, *a, **k))[1])
    monkeypatch.setattr(TriPlaneGenerator, "synthesis", spy)
    result = benchmark(config="tiny", mode="turntable-frame", batch=3, iters=2, warmup=0, neural_rendering_resolution=8)
    _check_common(result, batch=3, iters=2, mode="turntable-frame")
    assert result["scene_s"] > 0 and scenes == [1]   # computed once, outside the timed frames


def test_train_step_times_both_steps():
    result = benchmark(config="tiny", mode="train-step", batch=2, iters=1, warmup=0, neural_rendering_resolution=8)
    _check_common(result, batch=2, iters=1, mode="train-step")
    g, d = result["g_step_times_s"][0], result["d_step_times_s"][0]
    assert g > 0 and d > 0
    assert result["times_s"][0] >= g + d - 1e-6


def test_cli_prints_json_and_writes_out(tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(main, ["--config", "tiny", "--iters", "1", "--warmup", "0",
                                    "--neural-rendering-resolution", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    assert printed["config"] == "tiny" and printed["median_s"] > 0
    assert json.loads(out.read_text())["times_s"] == printed["times_s"]
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temp file left behind


def test_bench_ops_cli_prints_json_and_writes_out(tmp_path):
    from tools.bench_ops import main as ops_main
    out = tmp_path / "ops.json"
    res = CliRunner().invoke(ops_main, ["--impl", "ref", "--op", "spherical_sample", "--batch", "1", "--rays", "8",
                                        "--samples", "4", "--plane-res", "16", "--iters", "2", "--warmup", "1",
                                        "--out", str(out)])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    assert printed["tool"] == "bench_ops" and "bias_act" not in printed
    sample = printed["spherical_sample"]
    assert sample["coords"] == [1, 64 * 4, 3] and sample["planes"][-2:] == [16, 16]
    assert all(sample["ref"][k]["median_ms"] > 0 for k in ("forward", "forward_backward"))
    assert json.loads(out.read_text()) == printed
    res = CliRunner().invoke(ops_main, ["--out", str(tmp_path / "missing" / "ops.json")])
    assert res.exit_code != 0 and "the folder does not exist" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("args, message", [
    (["--network", "/nonexistent"], "/nonexistent"),
    (["--config", "tiny", "--network", "/nonexistent"], "not both"),
    (["--config", "tiny", "--device", "nonsense"], "--device"),
])
def test_cli_user_errors_are_one_line(args, message):
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
