"""spherehead.load_network / read_info: the fixture, native and upstream round trips, hostile and broken files."""
import os
import pickle
import random

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from spherehead import camera, load_network, read_info, save_network
from spherehead.errors import CheckpointError, UnsafePickleError
from spherehead.legacy_writer import write_upstream_snapshot
from spherehead.networks import registry
from spherehead.networks.presets import build_preset
from spherehead.networks.registry import UnsupportedNetworkError, WeightsMismatchError, network_spec

TSK = {"class_name": "training.dataset.MaskLabeledDataset", "resolution": 128, "use_labels": True}


@pytest.fixture(scope="module")
def fixture_nets(official_small):
    return load_network(official_small / "network-snapshot.pkl")


@pytest.fixture(scope="module")
def tiny():
    return build_preset("tiny", seed=1)


def _assert_frozen(module):
    assert all(not m.training for m in module.modules())
    assert all(not p.requires_grad for p in module.parameters())


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def _g_outputs(G):
    z = torch.randn([1, G.z_dim], generator=torch.Generator().manual_seed(5))
    c = camera.make_label(yaw=-0.4, pitch=0.2)
    with torch.no_grad():
        ws = G.mapping(z, c)
        return G.synthesis(ws, c, neural_rendering_resolution=16, noise_mode="const", deterministic=True)


def _one_line_naming(excinfo, path):
    msg = str(excinfo.value)
    assert str(path) in msg and "\n" not in msg, msg


def _reason(excinfo, path) -> str:
    """The message without the file path (tmp paths carry the test name, which could fake a match)."""
    return str(excinfo.value).replace(str(path), "<path>")


def _write_upstream(path, G, D, **kw):
    write_upstream_snapshot(path, {"G_ema": G, "D": D}, {"G_ema": network_spec(G), "D": network_spec(D)},
                            training_set_kwargs=kw.get("tsk", TSK))


# ------------------------------------------------------------------------------------ the fixture

def test_fixture(fixture_nets, official_small):
    nets = fixture_nets
    assert nets["format"] == "upstream-pickle"
    assert type(nets["G_ema"]).__name__ == "TriPlaneGenerator"
    assert type(nets["D"]).__name__ == "MaskDualDiscriminatorV2"
    assert "G" not in nets   # the fixture leaves G out (its README)
    meta = nets["metadata"]
    assert {"training_set_kwargs", "augment_pipe", "source", "rendering_kwargs",
            "neural_rendering_resolution"} <= set(meta)
    assert meta["neural_rendering_resolution"] == 32 and nets["G_ema"].neural_rendering_resolution == 32
    assert meta["rendering_kwargs"]["superresolution_module"].endswith("SuperresolutionHybrid2X")
    assert meta["training_set_kwargs"]["resolution"] == 128
    assert meta["source"]["path"] == str(official_small / "network-snapshot.pkl")
    assert meta["source"]["format"] == "upstream-pickle"
    assert set(meta["source"]["module_src_sha256"]) == {"G_ema", "D"}
    for name in ("G_ema", "D"):
        _assert_frozen(nets[name])


# ---------------------------------------------------------------------------------- round trips

def test_native_round_trip(tiny, tmp_path):
    G, D = tiny
    path = tmp_path / "tiny.safetensors"
    save_network(path, G, D=D, G=G, metadata={"training_set_kwargs": TSK, "note": "kept"})
    nets = load_network(path)
    assert nets["format"] == "native" and {"G_ema", "D", "G"} <= set(nets)
    for name, ref in (("G_ema", G), ("G", G), ("D", D)):
        _assert_same_weights(ref, nets[name])
        _assert_frozen(nets[name])
    meta = nets["metadata"]
    assert meta["note"] == "kept" and meta["training_set_kwargs"] == TSK
    assert meta["neural_rendering_resolution"] == 16 == nets["G_ema"].neural_rendering_resolution
    assert meta["rendering_kwargs"] == G.get_attributes()["rendering_kwargs"]


def test_upstream_round_trip(tiny, tmp_path):
    """Our module -> upstream-format pickle -> load_network gives the same weights and outputs."""
    G, D = tiny
    path = tmp_path / "network-snapshot.pkl"
    _write_upstream(path, G, D)
    nets = load_network(path)
    assert nets["format"] == "upstream-pickle"
    _assert_same_weights(G, nets["G_ema"])
    _assert_same_weights(D, nets["D"])
    assert nets["G_ema"].get_attributes() == G.get_attributes()
    assert nets["metadata"]["training_set_kwargs"] == TSK
    ours, theirs = _g_outputs(G.eval()), _g_outputs(nets["G_ema"])
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("fmt", ["native", "upstream"])
def test_dataset_label_std_kept(fmt, tmp_path):
    G, D = build_preset("tiny", seed=2)
    std = torch.rand(25, generator=torch.Generator().manual_seed(0)) + 0.5
    G.register_buffer("dataset_label_std", std.clone())
    path = tmp_path / ("net.safetensors" if fmt == "native" else "net.pkl")
    if fmt == "native":
        save_network(path, G, D=D)
    else:
        _write_upstream(path, G, D)
    loaded = load_network(path)["G_ema"]
    assert torch.equal(loaded.dataset_label_std, std)
    _assert_same_weights(G, loaded)


# ----------------------------------------------------------------------------- broken inputs

def test_directory(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_network(tmp_path)
    _one_line_naming(e, tmp_path)
    assert "is a directory" in _reason(e, tmp_path)


def test_missing_file(tmp_path):
    path = tmp_path / "missing.pkl"
    with pytest.raises(CheckpointError) as e:
        load_network(path)
    _one_line_naming(e, path)
    assert "no such file" in _reason(e, path)


@pytest.mark.parametrize("content", [b"", random.Random(0).randbytes(4096)], ids=["empty", "random"])
def test_empty_and_random_bytes(tmp_path, content):
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="neither") as e:
        load_network(path)
    _one_line_naming(e, path)
    with pytest.raises(CheckpointError):
        read_info(path)


class _Call:
    """Pickles as ``fn(*args)``: how a hostile file smuggles a call (nothing runs when dumping)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_os_system_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "hostile.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Call(os.system, f"touch {marker}")}, protocol=4))
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system") as e:
        load_network(path)
    _one_line_naming(e, path)
    with pytest.raises(UnsafePickleError):
        read_info(path)
    assert not marker.exists()


def _rewrite_native(src, dst, edit):
    """Copy a native file through safetensors' own save_file, letting ``edit(tensors)`` change it."""
    tensors = load_file(str(src))
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    edit(tensors)
    save_file(tensors, str(dst), metadata=meta)


@pytest.fixture(scope="module")
def native_tiny(tiny, tmp_path_factory):
    G, D = tiny
    path = tmp_path_factory.mktemp("native") / "tiny.safetensors"
    save_network(path, G, D=D, metadata={"training_set_kwargs": TSK})
    return path


def test_native_missing_tensor(native_tiny, tmp_path):
    path = tmp_path / "missing-tensor.safetensors"
    _rewrite_native(native_tiny, path, lambda t: t.pop("G_ema.backbone.mapping.w_avg"))
    with pytest.raises(WeightsMismatchError, match=r"missing 1 tensor.*backbone\.mapping\.w_avg") as e:
        load_network(path)
    _one_line_naming(e, path)


def test_native_wrong_shape(native_tiny, tmp_path):
    path = tmp_path / "wrong-shape.safetensors"
    key = "D.b128.conv0.bias"

    def edit(t):
        t[key] = torch.zeros(t[key].numel() + 1)
    _rewrite_native(native_tiny, path, edit)
    with pytest.raises(WeightsMismatchError, match=r"b128\.conv0\.bias has shape") as e:
        load_network(path)
    _one_line_naming(e, path)


def test_native_truncated_says_truncated(native_tiny, tmp_path):
    path = tmp_path / "half.safetensors"
    data = native_tiny.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_network(path)
    assert "truncated" in _reason(e, path)


def test_unsupported_class(tiny, tmp_path):
    G, D = tiny
    path = tmp_path / "other.pkl"
    spec = dict(network_spec(G), class_name="SomethingElse")
    write_upstream_snapshot(path, {"G_ema": G, "D": D}, {"G_ema": spec, "D": network_spec(D)})
    with pytest.raises(UnsupportedNetworkError, match="SomethingElse") as e:
        load_network(path)
    msg = str(e.value)
    assert "TriPlaneGenerator" in msg and "MaskDualDiscriminatorV2" in msg
    _one_line_naming(e, path)
    assert read_info(path)["networks"]["G_ema"]["class"] == "SomethingElse"   # describing needs no class


# ------------------------------------------------------------------------------------- read_info

@pytest.fixture
def no_build(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("read_info must not build networks")
    monkeypatch.setattr(registry, "build_network", refuse)


def _check_counts(info_net, module):
    sd = module.state_dict()
    assert info_net["tensors"] == len(sd)
    assert info_net["parameters_and_buffers"] == sum(v.numel() for v in sd.values())


def test_read_info_fixture(fixture_nets, official_small, no_build):
    info = read_info(official_small / "network-snapshot.pkl")
    assert info["format"] == "upstream-pickle" and set(info["networks"]) == {"G_ema", "D"}
    g, d = info["networks"]["G_ema"], info["networks"]["D"]
    assert g["class"] == "TriPlaneGenerator" and d["class"] == "MaskDualDiscriminatorV2"
    assert g["img_resolution"] == 128 and g["superresolution"] == "SuperresolutionHybrid2X"
    assert g["parsing"] is True and g["neural_rendering_resolution"] == 32
    assert info["metadata"]["training_set_kwargs"]["resolution"] == 128
    _check_counts(g, fixture_nets["G_ema"])
    _check_counts(d, fixture_nets["D"])


def test_read_info_native(tiny, native_tiny, no_build):
    G, D = tiny
    info = read_info(native_tiny)
    assert info["format"] == "native" and set(info["networks"]) == {"G_ema", "D"}
    g = info["networks"]["G_ema"]
    assert g["class"] == "TriPlaneGenerator" and g["neural_rendering_resolution"] == 16
    assert g["superresolution"] == "SuperresolutionHybrid2X"
    assert info["networks"]["D"]["class"] == "MaskDualDiscriminatorV2"
    assert info["metadata"]["training_set_kwargs"] == TSK
    _check_counts(g, G)
    _check_counts(info["networks"]["D"], D)
