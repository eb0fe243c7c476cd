"""tools/convert_checkpoint.py: pickle -> native conversion keeps weights, outputs and metadata; --info; clear errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from spherehead import camera, load_network, read_info
from spherehead.checkpoint import read_native_header
from tools.convert_checkpoint import convert, main

REPO = Path(__file__).resolve().parents[1]


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_same_native(a, b):
    """Same config and tensors (bytes may differ: safetensors writes its metadata map in hash order)."""
    assert read_native_header(a)[0] == read_native_header(b)[0]
    ta, tb = load_file(str(a)), load_file(str(b))
    assert list(ta) == list(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def _assert_clean_error(result):
    """Non-zero exit, one 'Error:' line, no traceback (bad input is a ClickException)."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    text = result.output.strip()
    assert text.startswith("Error:") and "\n" not in text, text
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def converted(official_small, tmp_path_factory):
    src = official_small / "network-snapshot.pkl"
    dst = tmp_path_factory.mktemp("convert") / "net.safetensors"
    result = _run(src, dst)
    assert result.exit_code == 0, result.output
    return src, dst, result.output


@pytest.fixture(scope="module")
def both(converted):
    src, dst, _ = converted
    return load_network(src), load_network(dst)


def test_summary_line(converted):
    src, dst, output = converted
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert str(dst) in lines[0] and "TriPlaneGenerator" in lines[0] and "MaskDualDiscriminatorV2" in lines[0]
    assert "parameters" in lines[0]


def test_weights_and_metadata_kept(both):
    pkl, native = both
    assert native["format"] == "native" and pkl["format"] == "upstream-pickle"
    assert {k for k in native if k in ("G_ema", "D", "G")} == {k for k in pkl if k in ("G_ema", "D", "G")}
    for name in ("G_ema", "D"):
        a, b = pkl[name].state_dict(), native[name].state_dict()
        assert list(a) == list(b)
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"{name}.{key}"
    assert native["G_ema"].get_attributes() == pkl["G_ema"].get_attributes()
    assert native["G_ema"].neural_rendering_resolution == pkl["G_ema"].neural_rendering_resolution == 32
    for key in ("rendering_kwargs", "neural_rendering_resolution", "training_set_kwargs"):
        assert native["metadata"][key] == pkl["metadata"][key], key
    assert native["metadata"]["source"] == pkl["metadata"]["source"]
    sha = native["metadata"]["source"]["module_src_sha256"]
    assert set(sha) == {"G_ema", "D"} and all(len(v) == 64 for v in sha.values())


def test_generator_outputs_equal(both):
    z = torch.randn([1, 512], generator=torch.Generator().manual_seed(3))
    c = camera.make_label(yaw=0.3, pitch=0.1)
    outs = []
    for nets in both:
        G = nets["G_ema"]
        with torch.no_grad():
            ws = G.mapping(z, c, truncation_psi=0.7)
            outs.append(G.synthesis(ws, c, neural_rendering_resolution=16, noise_mode="const", deterministic=True))
    assert set(outs[0]) == set(outs[1])
    for key in outs[0]:
        assert torch.equal(outs[0][key], outs[1][key]), key


def test_resave_native_keeps_source(converted, tmp_path):
    _, dst, _ = converted
    again = tmp_path / "again.safetensors"
    summary = convert(dst, again)
    assert summary["format"] == "native" and set(summary["networks"]) == {"G_ema", "D"}
    info = read_info(again)
    assert info["metadata"]["source"]["format"] == "upstream-pickle"
    _assert_same_native(again, dst)


def test_info_text(official_small):
    result = _run("--info", official_small / "network-snapshot.pkl")
    assert result.exit_code == 0, result.output
    for word in ("TriPlaneGenerator", "MaskDualDiscriminatorV2", "SuperresolutionHybrid2X",
                 "neural_rendering_resolution: 32", "MaskLabeledDataset", "tensors:"):
        assert word in result.output, word


def test_info_native_and_json(converted):
    _, dst, _ = converted
    result = _run("--info", dst, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["format"] == "native"
    assert info["networks"]["G_ema"]["class"] == "TriPlaneGenerator"
    assert info["networks"]["G_ema"]["neural_rendering_resolution"] == 32
    assert info["networks"]["D"]["class"] == "MaskDualDiscriminatorV2"
    text = _run("--info", dst)
    assert text.exit_code == 0 and "SuperresolutionHybrid2X" in text.output and "converted from" in text.output


def test_info_from_the_shell(official_small):
    proc = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "--info",
                           str(official_small / "network-snapshot.pkl")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "TriPlaneGenerator" in proc.stdout and "32" in proc.stdout


# ------------------------------------------------------------------------------------------- errors

def test_refuses_overwrite_then_force(converted, tmp_path):
    _, dst, _ = converted
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    result = _run(dst, out)
    _assert_clean_error(result)
    assert "--force" in result.output and out.read_bytes() == b"precious"
    result = _run(dst, out, "--force")
    assert result.exit_code == 0, result.output
    _assert_same_native(out, dst)


def test_refuses_same_file(converted):
    _, dst, _ = converted
    before = dst.read_bytes()
    result = _run(dst, dst, "--force")
    _assert_clean_error(result)
    assert "same file as the input" in result.output and dst.read_bytes() == before


def test_missing_input(tmp_path):
    result = _run(tmp_path / "nope.pkl", tmp_path / "out.safetensors")
    _assert_clean_error(result)
    assert "nope.pkl" in result.output and not (tmp_path / "out.safetensors").exists()
    _assert_clean_error(_run("--info", tmp_path / "nope.pkl"))


def test_text_file_input(tmp_path):
    src = tmp_path / "notes.txt"
    src.write_text("this is not a checkpoint\n")
    _assert_clean_error(_run(src, tmp_path / "out.safetensors"))
    _assert_clean_error(_run("--info", src))
    assert not (tmp_path / "out.safetensors").exists()


def test_truncated_pickle(official_small, tmp_path):
    src = tmp_path / "cut.pkl"
    src.write_bytes((official_small / "network-snapshot.pkl").read_bytes()[:100_000])
    result = _run(src, tmp_path / "out.safetensors")
    _assert_clean_error(result)
    assert "truncated or corrupt pickle" in result.output.replace(str(src), "<path>")
    _assert_clean_error(_run("--info", src))
    assert [p.name for p in tmp_path.iterdir()] == ["cut.pkl"]   # no output, no temp file left


def test_snapshot_without_g_ema(tmp_path):
    from spherehead.legacy_writer import write_upstream_snapshot
    from spherehead.networks.presets import build_preset
    from spherehead.networks.registry import network_spec
    _, D = build_preset("tiny")
    src = tmp_path / "only-d.pkl"
    write_upstream_snapshot(src, {"D": D}, {"D": network_spec(D)})
    result = _run(src, tmp_path / "out.safetensors")
    _assert_clean_error(result)
    assert "holds no G_ema network" in result.output


def test_missing_output_folder(converted, tmp_path):
    _, dst, _ = converted
    result = _run(dst, tmp_path / "no-such-dir" / "out.safetensors")
    _assert_clean_error(result)
    assert "output folder" in result.output and "does not exist" in result.output


@pytest.mark.parametrize("args", [[], ["only-in.pkl"], ["--info"], ["--info", "a", "b"], ["a", "b", "c"],
                                  ["a", "b", "--json"]])
def test_usage_errors(args):
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.output and "Traceback" not in result.output


def test_keep_only_named_networks(converted, tmp_path):
    _, dst, _ = converted
    out = tmp_path / "gen-only.safetensors"
    result = _run(dst, out, "--keep", "G_ema")
    assert result.exit_code == 0, result.output
    assert set(read_info(out)["networks"]) == {"G_ema"}
    assert out.stat().st_size < dst.stat().st_size   # D dropped
    ta, tb = load_file(str(out)), load_file(str(dst))
    assert all(torch.equal(ta[k], tb[k]) for k in ta) and all(k.startswith("G_ema.") for k in ta)
    bad = _run(dst, tmp_path / "x.safetensors", "--keep", "G_ema,Gx")
    _assert_clean_error(bad)
    assert "Gx" in bad.output and not (tmp_path / "x.safetensors").exists()
    usage = _run("--info", dst, "--keep", "D")
    assert usage.exit_code == 2 and "--keep applies to conversion" in usage.output
