"""Code-free upstream pickle reader: the real fixture, hostile files, clear errors, writer round trip."""
import collections
import hashlib
import io
import json
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch

import torch_utils.persistence
from dnnlib.util import EasyDict
from spherehead import legacy
from spherehead.errors import CheckpointError, UnsafePickleError
from spherehead.legacy import is_pickle_file, read_upstream_snapshot, write_upstream_snapshot

FIXTURES = Path(os.environ.get("SPHEREHEAD_FIXTURES", "/work/shared/fixtures"))
FIXTURE = FIXTURES / "official-small" / "network-snapshot.pkl"
needs_fixture = pytest.mark.skipif(not FIXTURE.is_file(), reason=f"fixture {FIXTURE} not available")


class _Call:
    """Pickles as ``fn(*args)``: how a hostile file smuggles a call (nothing runs when dumping)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _dump(tmp_path, obj, name="hostile.pkl", protocol=4):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _module_state(**extra):
    """Minimal nn.Module instance dict, as found in a persistent record's state."""
    return {"training": False, "_parameters": {}, "_buffers": {}, "_non_persistent_buffers_set": set(),
            "_modules": {}, "_init_args": (), "_init_kwargs": {}, **extra}


# ---------------------------------------------------------------------------------------- fixture

@pytest.fixture(scope="module")
def snapshot():
    if not FIXTURE.is_file():
        pytest.skip(f"fixture {FIXTURE} not available")
    return read_upstream_snapshot(FIXTURE)


def _independent_walk(path):
    """State-dict keys and shapes by a separate, minimal inert unpickler (reference.md §8.4 step 2)."""
    class Node:
        def __setstate__(self, state):
            self.state = state

    def load_storage(data):
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")

    allowed = {("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
               ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
               ("torch.storage", "_load_from_bytes"): load_storage,
               ("collections", "OrderedDict"): collections.OrderedDict,
               ("numpy", "dtype"): np.dtype, ("dnnlib.util", "EasyDict"): dict,
               ("numpy._core.multiarray", "scalar"): legacy._NP_SCALAR,  # numpy 1 has no numpy._core
               ("torch_utils.persistence", "_reconstruct_persistent_obj"): lambda meta: meta}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in allowed:
                return allowed[(module, name)]
            assert module.startswith(("torch.nn.modules.", "training.")), (module, name)
            return type(name, (Node,), {})

    def walk(node, prefix, out):
        state = node["state"] if isinstance(node, dict) else node.state
        out += [(prefix + k, list(v.shape)) for k, v in state["_parameters"].items() if v is not None]
        out += [(prefix + k, list(v.shape)) for k, v in state["_buffers"].items()
                if v is not None and k not in state["_non_persistent_buffers_set"]]
        for k, child in state["_modules"].items():
            walk(child, f"{prefix}{k}.", out)
        return out

    with open(path, "rb") as f:
        data = Unpickler(f).load()
    return {k: walk(data[k], "", []) for k in ("G_ema", "D")}


@needs_fixture
def test_fixture_classes_and_structure(snapshot):
    nets = snapshot["networks"]
    assert sorted(nets) == ["D", "G_ema"]  # the fixture leaves out G to stay small
    assert nets["G_ema"]["spec"]["class_name"] == "TriPlaneGenerator"
    assert nets["D"]["spec"]["class_name"] == "MaskDualDiscriminatorV2"
    assert snapshot["training_set_kwargs"]["resolution"] == 128
    assert snapshot["augment_pipe"] is None
    assert snapshot["path"] == str(FIXTURE)
    for net in nets.values():
        assert len(net["module_src_sha256"]) == 64


@needs_fixture
def test_fixture_state_dict_matches_independent_walk(snapshot):
    expected = _independent_walk(FIXTURE)
    for key in ("G_ema", "D"):
        sd = snapshot["networks"][key]["state_dict"]
        assert [(k, list(v.shape)) for k, v in sd.items()] == expected[key]
        assert all(type(v) is torch.Tensor and v.dtype == torch.float32 for v in sd.values())
    assert len(expected["G_ema"]) == 252 and len(expected["D"]) == 74


@needs_fixture
def test_fixture_spec_is_plain_and_attributes_win(snapshot):
    spec = snapshot["networks"]["G_ema"]["spec"]
    json.dumps(spec)  # EasyDicts, numpy scalars and tuples are converted
    assert spec["init_args"] == []
    assert type(spec["init_kwargs"]["mapping_kwargs"]) is dict
    rk = spec["attributes"]["rendering_kwargs"]
    assert rk["superresolution_module"] == "training.superresolution.SuperresolutionHybrid2X"
    assert spec["attributes"]["neural_rendering_resolution"] == 32
    assert spec["init_kwargs"]["rendering_kwargs"] == rk
    assert spec["init_kwargs"]["parsing_flag"] is True
    json.dumps(snapshot["networks"]["D"]["spec"])


@needs_fixture
@pytest.mark.parametrize("key,shape", [
    ("dataset_label_std", [25]),               # registered by the training loop (§2.3)
    ("backbone.mapping.fc0.weight", [512, 1024]),  # z 512 ⊕ embedded c 512 → w 512
    ("backbone.mapping.embed.weight", [512, 25]),
    ("t_mapping.fc0.weight", [3, 515]),          # w_dim 3: z 512 ⊕ embedded c 3
    ("t_mapping.embed.weight", [3, 25]),
    ("toparsing.weight", [20, 32, 1, 1]),        # 20 parsing classes from 32 features
    ("decoder.net.2.weight", [33, 64]),          # σ + 32 features from hidden 64
    # ConvA/ConvB widths are fixed (512 → 256 → 32 · triplane_depth 3), not scaled by channel_max.
    ("ConvA.0.weight", [256, 512, 1, 1]),
    ("ConvA.1.weight", [96, 256, 1, 1]),
])
def test_fixture_shapes(snapshot, key, shape):
    assert list(snapshot["networks"]["G_ema"]["state_dict"][key].shape) == shape


# -------------------------------------------------------------------------------- hostile pickles

def test_refuses_os_system_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = _dump(tmp_path, {"G_ema": _Call(os.system, f"touch {marker}")})
    with pytest.raises(UnsafePickleError) as info:
        read_upstream_snapshot(path)
    assert "posix.system" in str(info.value) or "os.system" in str(info.value)
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("fn", [eval, exec, __import__, getattr])
def test_refuses_builtins(tmp_path, fn):
    path = _dump(tmp_path, {"G_ema": _Call(fn, "x")})
    with pytest.raises(UnsafePickleError, match=rf"builtins\.{fn.__name__}\b"):
        read_upstream_snapshot(path)


def test_refuses_unlisted_training_class(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"\x80\x02ctraining.something\nEvil\n)R.")  # GLOBAL + EMPTY_TUPLE + REDUCE
    with pytest.raises(UnsafePickleError, match=r"training\.something\.Evil") as info:
        read_upstream_snapshot(path)
    assert str(path) in str(info.value)


def test_module_src_is_never_executed(tmp_path):
    marker = tmp_path / "src_ran"
    src = f"open({str(marker)!r}, 'w').write('pwned')\nclass Evil:\n    pass\n"
    meta = {"type": "class", "version": 6, "module_src": src, "class_name": "Evil",
            "state": _module_state(neural_rendering_resolution=np.float64(64))}
    path = _dump(tmp_path, {"G_ema": _Call(torch_utils.persistence._reconstruct_persistent_obj, meta)})
    out = read_upstream_snapshot(path)
    net = out["networks"]["G_ema"]
    assert net["spec"]["class_name"] == "Evil" and len(net["state_dict"]) == 0
    assert net["spec"]["attributes"] == {"neural_rendering_resolution": 64.0}
    assert net["module_src_sha256"] == hashlib.sha256(src.encode()).hexdigest()
    with pytest.raises(RuntimeError, match="spherehead"):  # plain pickle refuses too (our stub)
        pickle.loads(path.read_bytes())
    assert not marker.exists()


def _legacy_framed(payload: bytes) -> bytes:
    """Legacy torch.save layout (magic, protocol, sys_info) followed by ``payload`` as the object."""
    head = [torch.serialization.MAGIC_NUMBER, torch.serialization.PROTOCOL_VERSION,
            {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}]
    return b"".join(pickle.dumps(x, protocol=2) for x in head) + payload


@pytest.mark.parametrize("framed", [False, True])
def test_refuses_malicious_storage_bytes(tmp_path, framed):
    marker = tmp_path / "storage_ran"
    evil = pickle.dumps(_Call(os.system, f"touch {marker}"), protocol=2)
    blob = _legacy_framed(evil) if framed else evil
    path = _dump(tmp_path, {"G_ema": _Call(torch.storage._load_from_bytes, blob)})
    with pytest.raises(UnsafePickleError, match="weights-only") as info:
        read_upstream_snapshot(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert "system" in str(info.value)  # torch's refusal names the global
    assert not marker.exists()


def test_tensors_with_python_attributes(tmp_path):
    # A tensor or Parameter carrying attributes pickles through _rebuild_from_type_v2 /
    # _rebuild_parameter_with_state; the data loads, the attributes are dropped.
    buf, param = torch.arange(3.0), torch.nn.Parameter(torch.ones(2))
    buf.note, param.note = "x", "y"
    meta = {"type": "class", "version": 6, "module_src": "", "class_name": "Net",
            "state": _module_state(_parameters={"p": param}, _buffers={"b": buf})}
    path = _dump(tmp_path, {"G_ema": _Call(torch_utils.persistence._reconstruct_persistent_obj, meta)})
    strings = [arg for _, arg, _ in pickletools.genops(path.read_bytes()) if isinstance(arg, str)]
    assert "_rebuild_from_type_v2" in strings and "_rebuild_parameter_with_state" in strings
    sd = read_upstream_snapshot(path)["networks"]["G_ema"]["state_dict"]
    assert list(sd) == ["p", "b"] and torch.equal(sd["b"], buf) and torch.equal(sd["p"], param.detach())
    assert not hasattr(sd["b"], "note")


def test_refuses_rebuild_from_type_gadget(tmp_path):
    # _rebuild_from_type_v2 calls its first argument: only our tensor rebuilders may be passed.
    path = _dump(tmp_path, {"G_ema": _Call(torch._tensor._rebuild_from_type_v2, collections.OrderedDict,
                                           torch.Tensor, (), {})})
    with pytest.raises(UnsafePickleError, match="_rebuild_from_type_v2"):
        read_upstream_snapshot(path)


def test_refuses_object_dtype_numpy_scalar(tmp_path):
    path = _dump(tmp_path, {"G_ema": _Call(legacy._NP_SCALAR, np.dtype("O"), "payload")})
    with pytest.raises(UnsafePickleError, match="dtype"):
        read_upstream_snapshot(path)


# ---------------------------------------------------------------------------- broken/wrong files

@needs_fixture
@pytest.mark.parametrize("length", [1000, "half"])
def test_truncated_fixture(tmp_path, length):
    data = FIXTURE.read_bytes()
    path = tmp_path / "truncated.pkl"
    path.write_bytes(data[: len(data) // 2 if length == "half" else length])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        read_upstream_snapshot(path)
    assert not isinstance(info.value, UnsafePickleError)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"hello, this is a text file\n", "not a pickle"),
    (len(b'{"a":{}}').to_bytes(8, "little") + b'{"a":{}}', "safetensors"),
    (b"PK\x03\x04rest-of-zip", "zip"),
])
def test_not_a_pickle(tmp_path, content, match):
    path = tmp_path / "file.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        read_upstream_snapshot(path)
    assert str(path) in str(info.value)
    assert not is_pickle_file(path)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as info:
        read_upstream_snapshot(tmp_path / "nope.pkl")
    assert "nope.pkl" in str(info.value)
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_upstream_snapshot(tmp_path)
    assert not is_pickle_file(tmp_path / "nope.pkl")


@pytest.mark.parametrize("obj,match", [
    ([1, 2], "top-level object is list"),
    ({"G_ema": {"not": "a module"}}, "G_ema is dict"),
    ({"G_ema": None, "D": None}, "holds none of"),
    ({"training_set_kwargs": 3, "G_ema": None}, "training_set_kwargs is int"),
    ({"G_ema": _Call(torch_utils.persistence._reconstruct_persistent_obj, {
        "type": "class", "version": 6, "module_src": "", "class_name": "X",
        "state": _module_state(_buffers={"b": torch.zeros(1)}, _non_persistent_buffers_set=5)})},
     "malformed snapshot structure"),
])
def test_wrong_structure(tmp_path, obj, match):
    path = _dump(tmp_path, obj)
    with pytest.raises(CheckpointError, match=match):
        read_upstream_snapshot(path)


def test_self_containing_module_and_kwargs(tmp_path):
    # Non-persistent objects are memoized before their state is built, so a file can nest a
    # Sequential inside itself; a dict can contain itself. Both must fail cleanly.
    root, seq = torch.nn.Module(), torch.nn.Sequential()
    seq._modules["me"] = seq
    root.seq = seq
    kwargs = {}
    kwargs["self"] = kwargs
    path = tmp_path / "loop.pkl"
    write_upstream_snapshot(path, {"G_ema": root}, {"G_ema": {"class_name": "Loop"}})
    with pytest.raises(CheckpointError, match="seq.me contains itself"):
        read_upstream_snapshot(path)
    write_upstream_snapshot(path, {"G_ema": torch.nn.Module()},
                            {"G_ema": {"class_name": "Loop", "init_kwargs": kwargs}})
    with pytest.raises(CheckpointError, match="nests too deeply"):
        read_upstream_snapshot(path)


@pytest.mark.parametrize("version,type_", [(5, "class"), (6, "module")])
def test_wrong_persistence_version(tmp_path, version, type_):
    meta = {"type": type_, "version": version, "module_src": "", "class_name": "X", "state": _module_state()}
    path = _dump(tmp_path, {"G_ema": _Call(torch_utils.persistence._reconstruct_persistent_obj, meta)})
    with pytest.raises(CheckpointError, match="only version 6"):
        read_upstream_snapshot(path)


# ------------------------------------------------------------------------------ writer round trip

class _Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.randn([]))
        self.register_parameter("bias", None)  # a None parameter is not in the state dict
        self.register_buffer("resample_filter", torch.randn(4, 4))
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Identity()])


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3))
        self.register_buffer("w_avg", torch.randn(3))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Softplus(beta=2.0), torch.nn.Linear(5, 2))
        self.inner = _Inner()
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))


def test_writer_round_trip(tmp_path):
    torch.manual_seed(0)
    g, d = _TinyNet(), _Inner()
    spec_g = {"class_name": "TinyGenerator", "init_args": (3,),
              "init_kwargs": {"mapping_kwargs": EasyDict(num_layers=2), "rendering_kwargs": {"box_warp": 1}},
              "attributes": {"rendering_kwargs": {"box_warp": 1, "density_noise": 0.0},
                             "neural_rendering_resolution": 64}}
    path = tmp_path / "snap.pkl"
    write_upstream_snapshot(path, {"G_ema": g, "D": d}, {"G_ema": spec_g, "D": {"class_name": "TinyD"}},
                            training_set_kwargs={"resolution": 64})
    assert is_pickle_file(path)
    out = read_upstream_snapshot(path)
    for key, module in (("G_ema", g), ("D", d)):
        sd, ref = out["networks"][key]["state_dict"], module.state_dict()
        assert list(sd) == list(ref)
        for k in ref:
            assert sd[k].dtype == ref[k].dtype and torch.equal(sd[k], ref[k]), k
    spec = out["networks"]["G_ema"]["spec"]
    assert spec == {"class_name": "TinyGenerator", "init_args": [3],
                    "init_kwargs": {"mapping_kwargs": {"num_layers": 2},
                                    "rendering_kwargs": {"box_warp": 1, "density_noise": 0.0}},
                    "attributes": {"rendering_kwargs": {"box_warp": 1, "density_noise": 0.0},
                                   "neural_rendering_resolution": 64}}
    assert out["networks"]["D"]["spec"] == {"class_name": "TinyD", "init_args": [], "init_kwargs": {}, "attributes": {}}
    assert out["training_set_kwargs"] == {"resolution": 64} and out["augment_pipe"] is None


def test_writer_emits_upstream_globals_only(tmp_path):
    path = tmp_path / "snap.pkl"
    write_upstream_snapshot(path, {"G_ema": _TinyNet()}, {"G_ema": {"class_name": "TinyGenerator"}})
    data = path.read_bytes()
    strings = [arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    assert "_reconstruct_persistent_obj" in strings and "torch_utils.persistence" in strings
    for name in ("torch.nn.modules.container", "Sequential", "ModuleList", "torch.nn.modules.activation", "Softplus"):
        assert name in strings
    assert "__main__" not in strings and "tests.test_legacy" not in strings  # no test classes by path
    with pytest.raises(RuntimeError, match="read_upstream_snapshot"):
        pickle.loads(data)
    # Children that are not torch containers become persistent records named by their class.
    records = legacy._RestrictedUnpickler(io.BytesIO(data), str(path)).load()
    root = records["G_ema"]
    assert isinstance(root, legacy.PersistentRecord) and root.class_name == "TinyGenerator"
    seq = root.state["_modules"]["net"]
    assert isinstance(seq, legacy.ModuleStub) and seq.qualname == "torch.nn.modules.container.Sequential"
    assert seq.state["_modules"]["0"].class_name == "Linear"
    softplus = seq.state["_modules"]["1"]
    assert softplus.qualname == "torch.nn.modules.activation.Softplus" and softplus.state["beta"] == 2.0
    assert root.state["_modules"]["inner"].class_name == "_Inner"
