"""Native checkpoint format: one ``.safetensors`` file, weights plus a JSON config, no code.

Layout:

* tensors ``<net>.<state-dict key>`` for each saved network (``G_ema`` always, ``D``/``G`` optional);
* safetensors metadata (str -> str): ``format = 'spherehead-native'``, ``format_version = '1'`` and
  ``config = json.dumps({'networks': {net: spec}, 'metadata': {...}})``, where ``spec`` is
  :func:`spherehead.networks.registry.network_spec` of the module and ``metadata`` is the user's
  JSON-able dict (training_set_kwargs, source file hash, ...).

Writes are atomic (temp file in the destination directory, fsync, ``os.replace``). Every read
failure raises :class:`spherehead.errors.CheckpointError` (or a subclass) naming the file.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .errors import CheckpointError
from .fileio import write_bytes
from .networks import registry

FORMAT = "spherehead-native"
FORMAT_VERSION = "1"
NET_NAMES = ("G_ema", "D", "G")
_MAX_HEADER = 100 * 1024 * 1024   # the safetensors header-size limit

# Map of safetensors dtype codes to torch dtypes (used for --info and validation).
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
for _code, _attr, _size in (("F8_E4M3", "float8_e4m3fn", 1), ("F8_E5M2", "float8_e5m2", 1),
                            ("U16", "uint16", 2), ("U32", "uint32", 4), ("U64", "uint64", 8)):
    if hasattr(torch, _attr):   # newer torch builds only
        _DTYPES[_code], _DTYPE_SIZES[_code] = getattr(torch, _attr), _size

__all__ = ["save_network", "load_native", "read_native_header", "is_native_file", "FORMAT", "FORMAT_VERSION"]


# ---------------------------------------------------------------------------------------------- saving

def _json_text(value: Any, what: str, path: str) -> str:
    try:
        return json.dumps(registry.plain(value), sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {what} is not JSON-serialisable ({e})") from None


def _collect(nets: Mapping[str, torch.nn.Module], metadata: Optional[Mapping], path: str):
    """Tensors and safetensors metadata for the networks given (None entries skipped)."""
    if metadata is not None and not isinstance(metadata, Mapping):
        raise CheckpointError(f"{path}: metadata must be a dict, got {type(metadata).__name__}")
    meta_text = _json_text(dict(metadata or {}), "metadata", path)
    specs, tensors = {}, {}
    for name, module in nets.items():
        if module is None:
            continue
        specs[name] = registry.network_spec(module)
        _json_text(specs[name], f"the spec of {name}", path)   # fail early, naming the network
        for key, value in module.state_dict().items():
            # clone: safetensors refuses tensors that share storage (e.g. G and G_ema views).
            tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
    config = {"networks": specs, "metadata": json.loads(meta_text)}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": _json_text(config, "config", path)}
    return tensors, header


def save_network(path: str, G_ema: torch.nn.Module, D: Optional[torch.nn.Module] = None,
                 G: Optional[torch.nn.Module] = None, metadata: Optional[Mapping[str, Any]] = None) -> None:
    """Save networks in the native format (atomic write).

    Args:
        path: destination ``.safetensors`` file; an existing file is replaced only on success.
        G_ema, D, G: registered network modules (``registry.register``); ``D``/``G`` may be None.
        metadata: JSON-able dict stored verbatim in the config (CheckpointError otherwise).
    Tensors are stored on CPU, contiguous, in their own dtype.
    """
    from safetensors.torch import save as st_save
    path = os.fspath(path)
    if G_ema is None:
        raise CheckpointError(f"{path}: G_ema is required")
    tensors, header = _collect({"G_ema": G_ema, "D": D, "G": G}, metadata, path)
    write_bytes(path, st_save(tensors, metadata=header))


# --------------------------------------------------------------------------------------------- reading

def _hint(first: bytes) -> str:
    if first[:1] == b"\x80":
        return " (it looks like a pickle; open it with spherehead.load_network)"
    if first[:4] == b"PK\x03\x04":
        return " (it looks like a zip / torch.save file)"
    return ""


def _read_raw_header(path: str) -> Tuple[dict, int, int]:
    """Parse the safetensors header. Returns (header dict, data start offset, file size)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        first = f.read(8)
        if len(first) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", first)
        if n == 0 or n > _MAX_HEADER:
            raise CheckpointError(f"{path}: not a safetensors file (bad header length){_hint(first)}")
        if 8 + n > size:
            raise CheckpointError(f"{path}: truncated file (header needs {8 + n} bytes, file has {size})")
        raw = f.read(n)
    if raw[:1] != b"{":
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON){_hint(first)}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors file (bad header JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    return header, 8 + n, size


def _tensor_table(header: dict, data_start: int, size: int, path: str) -> Dict[str, Tuple[torch.dtype, Tuple[int, ...]]]:
    """Validate tensor entries (dtype known, offsets inside the file) and return name -> (dtype, shape)."""
    table = {}
    data_len = size - data_start
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(s) for s in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed header entry for tensor {name!r}") from None
        if dtype not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        count = 1
        for s in shape:
            count *= s
        if end - begin != count * _DTYPE_SIZES[dtype] or begin < 0:
            raise CheckpointError(f"{path}: tensor {name!r} has inconsistent offsets")
        if end > data_len:
            raise CheckpointError(f"{path}: truncated file (tensor {name!r} ends at byte {data_start + end}, "
                                  f"file has {size})")
        table[name] = (_DTYPES[dtype], shape)
    return table


def _parse_config(meta: Any, path: str) -> Dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file, but not a spherehead checkpoint (no '{FORMAT}' marker)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format_version {meta.get('format_version')!r} "
                              f"(this version reads {FORMAT_VERSION!r})")
    try:
        config = json.loads(meta.get("config", ""))
    except ValueError as e:
        raise CheckpointError(f"{path}: bad config JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("networks"), dict) or "G_ema" not in config["networks"]:
        raise CheckpointError(f"{path}: config lacks the 'networks' entry for G_ema")
    unknown = sorted(set(config["networks"]) - set(NET_NAMES))
    if unknown:
        raise CheckpointError(f"{path}: config names unknown network(s) {unknown}")
    config.setdefault("metadata", {})
    return config


def read_native_header(path: str) -> Tuple[Dict[str, Any], Dict[str, Tuple[torch.dtype, Tuple[int, ...]]]]:
    """Read only the header of a native file (no tensor data).

    Returns ``(config, tensors)``: ``config`` is ``{'networks': {net: spec}, 'metadata': {...}}``
    and ``tensors`` maps each stored name to ``(torch dtype, shape tuple)``. Detects truncation
    from the header's offsets.
    """
    path = os.fspath(path)
    header, data_start, size = _read_raw_header(path)
    config = _parse_config(header.get("__metadata__"), path)
    return config, _tensor_table(header, data_start, size, path)


def is_native_file(path: str) -> bool:
    """True when ``path`` is a readable safetensors file carrying the spherehead-native marker."""
    try:
        read_native_header(path)
    except (CheckpointError, OSError):
        return False
    return True


def _split_state_dicts(tensors: Mapping[str, torch.Tensor], names, path: str) -> Dict[str, Dict[str, torch.Tensor]]:
    out = {name: {} for name in names}
    for key, value in tensors.items():
        net, _, sub = key.partition(".")
        if net not in out or not sub:
            raise CheckpointError(f"{path}: tensor {key!r} belongs to no saved network ({', '.join(names)})")
        out[net][sub] = value
    return out


def load_native(path: str, device: Any = "cpu") -> Dict[str, Any]:
    """Load a native file: ``{'G_ema': module, 'D'?: module, 'G'?: module, 'metadata': dict, 'format': 'native'}``.

    Modules are rebuilt from their specs (no code in the file), loaded strictly (every tensor must
    exist with the right shape), put in eval mode with ``requires_grad=False``, and moved to ``device``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = os.fspath(path)
    config, _ = read_native_header(path)
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read tensors ({e})") from None
    names = list(config["networks"])
    state_dicts = _split_state_dicts(tensors, names, path)
    result: Dict[str, Any] = {}
    for name in names:
        module = registry.build_network(config["networks"][name], source=f"{path}:{name}")
        registry.load_weights(module, state_dicts[name], source=f"{path}:{name}")
        module.eval().requires_grad_(False)
        result[name] = module.to(device)
    result["metadata"] = config["metadata"]
    result["format"] = "native"
    return result
