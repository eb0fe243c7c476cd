"""Code-free, restricted reader for EG3D / PanoHead / SphereHead training snapshots (reference.md §8).

An upstream snapshot is a plain pickle whose network objects reduce to
``torch_utils.persistence._reconstruct_persistent_obj(meta)``; upstream unpickling *executes*
``meta['module_src']``. Here nothing from the file is executed or imported: a restricted
unpickler resolves an explicit allow-list of globals (§8.3) to inert local stand-ins, persistent
objects become :class:`PersistentRecord` values (their source kept only as text and a hash),
non-persistent torch/training modules become :class:`ModuleStub` values, and tensor storages go
through ``torch.load(weights_only=True)``. Any other global raises :class:`UnsafePickleError`
before anything is called. The records are then walked into state dicts and JSON-able specs
(see ``spherehead.networks.registry``) that rebuild our own network classes.

The matching writer (for tests and converters) lives in ``spherehead.legacy_writer``.
"""
from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import warnings
from typing import Any, Dict, Mapping

import numpy as np
import torch

from .errors import CheckpointError, UnsafePickleError
from .legacy_writer import write_upstream_snapshot
from .networks.registry import plain

__all__ = ["read_upstream_snapshot", "write_upstream_snapshot", "is_pickle_file", "sniff_file",
           "PersistentRecord", "ModuleStub"]

PERSISTENT_VERSION = 6  # torch_utils.persistence format version this reader understands (§8.2)
NETWORK_KEYS = ("G", "G_ema", "D")

# Non-persistent classes pickled by import path (§8.3); they become inert ModuleStub subclasses.
_STUBBED_CLASSES = frozenset({
    "training.volumetric_rendering.ray_sampler.RaySampler",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.ModuleDict",
    "torch.nn.modules.activation.Softplus",
})

# numpy moved multiarray to numpy._core in 2.0; both names appear in snapshots (§8.3).
_np_multiarray = getattr(np, "_core", None) or np.core
_NP_SCALAR = _np_multiarray.multiarray.scalar


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict, so ``plain()`` turns it into a plain dict."""

    def __setstate__(self, state):
        # An EasyDict keeps no instance attributes; merge any mapping state as items, as attribute
        # assignment on the real class would.
        if isinstance(state, Mapping):
            self.update(state)


class PersistentRecord:
    """Inert result of ``_reconstruct_persistent_obj(meta)``; ``module_src`` is text, never run."""
    __slots__ = ("class_name", "version", "type", "module_src", "module_src_sha256", "state")

    def __init__(self, class_name, version, type_, module_src, state):
        self.class_name = class_name
        self.version = version
        self.type = type_
        self.module_src = module_src
        self.module_src_sha256 = hashlib.sha256(module_src.encode("utf-8", "surrogatepass")).hexdigest()
        self.state = state

    def __setstate__(self, state):
        # Upstream pickles persistent objects with reduce state None, so BUILD never targets one.
        raise pickle.UnpicklingError(f"unexpected BUILD on persistent object {self.class_name}")

    def __repr__(self):
        return f"PersistentRecord({self.class_name!r})"


class ModuleStub:
    """Inert stand-in for a non-persistent class; ``qualname`` is the pickled import path."""
    qualname = "?"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, Mapping):
            raise pickle.UnpicklingError(f"{self.qualname}: state is {type(state).__name__}, expected a dict")
        self.state = dict(state)

    def __repr__(self):
        return f"ModuleStub({self.qualname!r})"


_STUB_TYPES: Dict[str, type] = {
    q: type(q.rsplit(".", 1)[1], (ModuleStub,), {"qualname": q, "__module__": __name__})
    for q in sorted(_STUBBED_CLASSES)
}


class _TensorType:
    """Token for a tensor class global; only ``_rebuild_from_type_v2`` accepts it (it is not callable)."""

    def __init__(self, cls):
        self.cls = cls


_TENSOR_TYPES = {
    "torch.Tensor": _TensorType(torch.Tensor),
    "torch._tensor.Tensor": _TensorType(torch.Tensor),
    "torch.nn.parameter.Parameter": _TensorType(torch.nn.Parameter),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals, each to a local function that cannot run foreign code."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path
        self._allowed: Dict[str, Any] = {
            "torch_utils.persistence._reconstruct_persistent_obj": self._persistent_obj,
            "dnnlib.util.EasyDict": _EasyDict,
            "collections.OrderedDict": collections.OrderedDict,
            "builtins.set": set,
            "builtins.frozenset": frozenset,
            "torch._utils._rebuild_tensor_v2": self._rebuild_tensor,
            "torch._utils._rebuild_parameter": self._rebuild_parameter,
            "torch._utils._rebuild_parameter_with_state": self._rebuild_parameter_with_state,
            "torch._tensor._rebuild_from_type_v2": self._rebuild_from_type,
            "torch.storage._load_from_bytes": self._load_storage,
            "numpy.dtype": np.dtype,
            "numpy.core.multiarray.scalar": self._numpy_scalar,
            "numpy._core.multiarray.scalar": self._numpy_scalar,
            **_TENSOR_TYPES,
        }

    def find_class(self, module, name):
        qualname = f"{module}.{name}"
        if qualname in _STUB_TYPES:
            return _STUB_TYPES[qualname]
        if qualname in self._allowed:
            return self._allowed[qualname]
        raise UnsafePickleError(
            f"{self._path}: refusing global {qualname}: it is not on the allow-list for upstream "
            f"snapshots; nothing from the file was executed")

    def persistent_load(self, pid):
        # Plain pickle.dump snapshots embed storages as bytes; persistent ids only occur in
        # torch.save archives, whose storage data lives outside this stream.
        raise CheckpointError(f"{self._path}: unexpected persistent id {str(pid)[:80]!r}; "
                              f"this is not an upstream training snapshot")

    def _persistent_obj(self, meta):
        if not isinstance(meta, Mapping):
            raise CheckpointError(f"{self._path}: persistent object metadata is {type(meta).__name__}, expected a dict")
        name = meta.get("class_name")
        if meta.get("version") != PERSISTENT_VERSION or meta.get("type") != "class":
            raise CheckpointError(
                f"{self._path}: persistent object {name!r} has version {meta.get('version')!r} and type "
                f"{meta.get('type')!r}; only version {PERSISTENT_VERSION}, type 'class' is supported")
        src, state = meta.get("module_src"), meta.get("state")
        if not isinstance(name, str) or not isinstance(src, str) or not isinstance(state, Mapping):
            raise CheckpointError(f"{self._path}: malformed persistent object metadata (class {name!r})")
        return PersistentRecord(name, meta["version"], meta["type"], src, dict(state))

    def _load_storage(self, data):
        """Embedded legacy ``torch.save`` bytes of one storage; loaded with torch's weights-only unpickler."""
        if not isinstance(data, (bytes, bytearray)):
            raise CheckpointError(f"{self._path}: embedded storage is {type(data).__name__}, expected bytes")
        try:
            with warnings.catch_warnings():
                # Hostile bytes may use a protocol torch does not expect; it refuses them anyway.
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as e:
            raise UnsafePickleError(f"{self._path}: an embedded tensor storage was refused by torch's "
                                    f"weights-only loader ({_torch_refusal(e)})") from e
        except Exception as e:
            raise CheckpointError(f"{self._path}: corrupt embedded tensor storage ({type(e).__name__})") from e
        if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
            raise CheckpointError(f"{self._path}: embedded storage bytes hold {type(storage).__name__}, not a storage")
        return storage

    def _rebuild_tensor(self, storage, offset, size, stride, requires_grad, backward_hooks, metadata=None):
        if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
            raise CheckpointError(f"{self._path}: tensor data is {type(storage).__name__}, not a storage")
        # Pickled backward hooks are dropped: a loaded weight needs none (torch also expects them empty).
        return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, bool(requires_grad),
                                               collections.OrderedDict(), metadata)

    def _rebuild_parameter(self, data, requires_grad, backward_hooks):
        if not isinstance(data, torch.Tensor):
            raise CheckpointError(f"{self._path}: parameter data is {type(data).__name__}, not a tensor")
        return torch.nn.Parameter(data, bool(requires_grad))

    def _rebuild_parameter_with_state(self, data, requires_grad, backward_hooks, state):
        return self._rebuild_parameter(data, requires_grad, backward_hooks)  # python attributes dropped

    def _rebuild_from_type(self, func, new_type, args, state):
        """Tensor subclass or tensor with Python attributes: rebuild the data, drop the attributes."""
        if func not in (self._rebuild_tensor, self._rebuild_parameter) or not isinstance(new_type, _TensorType):
            raise UnsafePickleError(f"{self._path}: _rebuild_from_type_v2 with unexpected arguments "
                                    f"({type(func).__name__}, {type(new_type).__name__})")
        tensor = func(*args)
        if new_type.cls is torch.nn.Parameter and not isinstance(tensor, torch.nn.Parameter):
            tensor = torch.nn.Parameter(tensor, tensor.requires_grad)
        return tensor

    def _numpy_scalar(self, dtype, *data):
        # Object dtypes would let the pickle hand arbitrary objects through; weights never need them.
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise UnsafePickleError(f"{self._path}: numpy scalar with dtype {dtype!r} refused")
        return _NP_SCALAR(dtype, *data)


def _torch_refusal(e: Exception) -> str:
    """One line out of torch's multi-line weights-only error (the part naming what it refused)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif "\n\n" in text:  # first paragraph is torch's generic advice (which we must not follow)
        text = text.split("\n\n", 1)[1]
    line = " ".join(text.split("Check the documentation", 1)[0].split())
    return line[:200] or "refused"


def _sniff(head: bytes, size: int) -> str:
    """Classify a file by its first bytes: 'pickle', 'safetensors', 'zip', 'empty' or 'other'."""
    if size == 0:
        return "empty"
    if len(head) >= 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"  # 8-byte little-endian header length, then the JSON header
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
        return "pickle"  # PROTO opcode; protocol 2+ (upstream snapshots use protocol 4)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    return "other"


def sniff_file(path) -> str:
    """Classify a file by content: 'pickle', 'safetensors', 'zip', 'empty' or 'other'.
    Raises OSError when it cannot be read."""
    with open(path, "rb") as f:
        head = f.read(16)
    return _sniff(head, os.path.getsize(path))


def is_pickle_file(path) -> bool:
    """True when ``path`` starts like a protocol-2+ pickle (and not like a safetensors file)."""
    try:
        return sniff_file(path) == "pickle"
    except OSError:
        return False


_KIND_HINT = {
    "empty": "the file is empty",
    "safetensors": "it is a safetensors file (a native checkpoint; load it with spherehead.checkpoint)",
    "zip": "it is a zip archive (torch.save format?), not an upstream pickle",
    "other": "it is not a pickle (no protocol 2+ header)",
}


def _unpickle(path: str) -> Any:
    """Load ``path`` with the restricted unpickler; every failure becomes a one-line CheckpointError."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: file not found")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:
            kind = _sniff(f.read(16), os.fstat(f.fileno()).st_size)
            if kind != "pickle":
                raise CheckpointError(f"{path}: cannot read as an upstream snapshot: {_KIND_HINT[kind]}")
            f.seek(0)
            return _RestrictedUnpickler(f, path).load()
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read file ({e.strerror or e})") from e
    except (EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt pickle ({_first_line(e)})") from e
    except RecursionError as e:
        raise CheckpointError(f"{path}: pickle nests too deeply") from e
    except Exception as e:  # malformed opcode arguments surface as TypeError/ValueError/...
        raise CheckpointError(f"{path}: corrupt pickle ({_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _node_state(node: Any, where: str, path: str) -> Mapping:
    if isinstance(node, PersistentRecord):
        return node.state
    if isinstance(node, ModuleStub):
        return getattr(node, "state", {})
    raise CheckpointError(f"{path}: {where or 'root'} is {type(node).__name__}, expected a module")


def _walk(node: Any, prefix: str, out: "collections.OrderedDict[str, torch.Tensor]", path: str,
          ancestors: frozenset = frozenset()) -> None:
    """Emit tensors in ``nn.Module.state_dict()`` order (§8.4 step 2)."""
    if id(node) in ancestors:  # shared submodules are legal; a module inside itself is not
        raise CheckpointError(f"{path}: module {prefix[:-1]} contains itself")
    state = _node_state(node, prefix[:-1], path)
    params = state.get("_parameters") or {}
    buffers = state.get("_buffers") or {}
    skip = state.get("_non_persistent_buffers_set") or set()
    children = state.get("_modules") or {}
    if not all(isinstance(d, Mapping) for d in (params, buffers, children)):
        raise CheckpointError(f"{path}: module {prefix[:-1] or 'root'} has malformed module dicts")
    for kind, entries in (("parameter", params), ("buffer", buffers)):
        for name, tensor in entries.items():
            if tensor is None or (kind == "buffer" and name in skip):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"{path}: {kind} {prefix}{name} is {type(tensor).__name__}, not a tensor")
            out[prefix + name] = tensor.detach()
    for name, child in children.items():
        if child is not None:
            _walk(child, f"{prefix}{name}.", out, path, ancestors | {id(node)})


def _network(record: Any, key: str, path: str) -> Dict[str, Any]:
    """Spec, state dict and source hash of one pickled network (§8.4 steps 2–3)."""
    if not isinstance(record, PersistentRecord):
        raise CheckpointError(f"{path}: {key} is {type(record).__name__}, expected a persistent network object")
    state = record.state
    args, kwargs = state.get("_init_args", ()), state.get("_init_kwargs", {})
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, Mapping):
        raise CheckpointError(f"{path}: {key} ({record.class_name}) has malformed _init_args/_init_kwargs")
    init_kwargs = plain(kwargs)
    attributes = {k: plain(state[k]) for k in ("rendering_kwargs", "neural_rendering_resolution") if k in state}
    if "rendering_kwargs" in attributes and "rendering_kwargs" in init_kwargs:
        # The pickled attribute is what the network rendered with (§2.1); it wins over the init copy.
        init_kwargs["rendering_kwargs"] = plain(attributes["rendering_kwargs"])
    state_dict: "collections.OrderedDict[str, torch.Tensor]" = collections.OrderedDict()
    _walk(record, "", state_dict, f"{path} [{key}]")
    spec = {"class_name": record.class_name, "init_args": plain(list(args)),
            "init_kwargs": init_kwargs, "attributes": attributes}
    return {"spec": spec, "state_dict": state_dict, "module_src_sha256": record.module_src_sha256}


def read_upstream_snapshot(path) -> Dict[str, Any]:
    """Read an upstream training snapshot without executing anything from it.

    Returns ``{'networks': {name: {'spec', 'state_dict', 'module_src_sha256'}} for name in G/G_ema/D
    present, 'training_set_kwargs': dict | None, 'augment_pipe': class name | None, 'path': str}``.
    Raises :class:`UnsafePickleError` for a global outside the allow-list and
    :class:`CheckpointError` for a missing, non-pickle, truncated or malformed file.
    """
    path = os.fspath(path)
    data = _unpickle(path)
    try:
        return _interpret(data, path)
    except CheckpointError:
        raise
    except RecursionError as e:  # self-referencing kwargs in a hostile or broken file
        raise CheckpointError(f"{path}: snapshot structure nests too deeply") from e
    except Exception as e:  # e.g. non-string names or a non-set _non_persistent_buffers_set
        raise CheckpointError(f"{path}: malformed snapshot structure ({_first_line(e)})") from e


def _interpret(data: Any, path: str) -> Dict[str, Any]:
    """Validate the unpickled snapshot dict (§8.1) and turn its records into networks."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: top-level object is {type(data).__name__}, expected a snapshot dict")
    tsk = data.get("training_set_kwargs")
    if tsk is not None and not isinstance(tsk, Mapping):
        raise CheckpointError(f"{path}: training_set_kwargs is {type(tsk).__name__}, expected a dict or None")
    aug = data.get("augment_pipe")
    if aug is not None and not isinstance(aug, PersistentRecord):
        raise CheckpointError(f"{path}: augment_pipe is {type(aug).__name__}, expected a persistent module or None")
    networks = {k: _network(data[k], k, path) for k in NETWORK_KEYS if data.get(k) is not None}
    if not networks:
        raise CheckpointError(f"{path}: snapshot holds none of {', '.join(NETWORK_KEYS)}")
    return {"networks": networks,
            "training_set_kwargs": plain(tsk) if tsk is not None else None,
            "augment_pipe": aug.class_name if aug is not None else None,
            "path": path}
