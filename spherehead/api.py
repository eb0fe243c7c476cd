"""load_network / read_info: one entry point for native files and upstream pickles (decided by content)."""
from __future__ import annotations

import os
from typing import Any, Dict

import torch

from . import checkpoint, legacy
from .assets import resolve_network
from .errors import CheckpointError
from .networks import registry

NETWORK_KEYS = ("G_ema", "G", "D")


def _kind(path: str) -> str:
    """'native' or 'upstream-pickle', decided by the file's first bytes (not its name). A file that
    looks like safetensors is then read as native, so its own errors (truncation, missing marker)
    reach the user rather than a generic 'unknown format'."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    try:
        kind = legacy.sniff_file(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read file ({e.strerror or e})") from None
    if kind == "safetensors":
        return "native"
    if kind == "pickle":
        return "upstream-pickle"
    what = {"empty": "the file is empty", "zip": "it is a zip archive (torch.save format?)"}.get(kind, "unknown content")
    raise CheckpointError(f"{path}: neither a spherehead .safetensors checkpoint nor an EG3D/PanoHead/SphereHead "
                          f"pickle ({what})")


def _generator_metadata(G: torch.nn.Module) -> Dict[str, Any]:
    attrs = G.get_attributes() if hasattr(G, "get_attributes") else {}
    return {k: attrs[k] for k in ("rendering_kwargs", "neural_rendering_resolution") if k in attrs}


def load_network(path, device: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint: ``{'G_ema', 'D', 'G' (when present), 'metadata', 'format'}``.

    Reads our native ``.safetensors`` format and upstream training snapshots alike (the content
    decides, not the file name); an upstream pickle is read by :mod:`spherehead.legacy`, which never
    executes code from it. Networks are our own modules in eval mode with ``requires_grad=False``.
    ``metadata`` holds the rendering options, the neural rendering resolution and, for pickles, the
    training-set options and the sha256 of each network's pickled source text.
    ``path`` may also name a bundled network (``'demo'``, :mod:`spherehead.assets`).
    """
    path = resolve_network(path)
    if _kind(path) == "native":
        result = checkpoint.load_native(path, device=device)
        meta = dict(result.get("metadata") or {})
        meta.update(_generator_metadata(result["G_ema"]) if "G_ema" in result else {})
        result["metadata"] = meta
        return result
    snap = legacy.read_upstream_snapshot(path)
    result: Dict[str, Any] = {}
    for name, net in snap["networks"].items():
        module = registry.build_network(net["spec"], source=f"{path} [{name}]")
        registry.load_weights(module, net["state_dict"], source=f"{path} [{name}]")
        result[name] = module.eval().requires_grad_(False).to(device)
    meta = {"training_set_kwargs": snap["training_set_kwargs"], "augment_pipe": snap["augment_pipe"],
            "source": {"path": path, "format": "upstream-pickle",
                       "module_src_sha256": {k: v["module_src_sha256"] for k, v in snap["networks"].items()}}}
    if "G_ema" in result:
        meta.update(_generator_metadata(result["G_ema"]))
    result["metadata"] = meta
    result["format"] = "upstream-pickle"
    return result


def _summary(spec: Dict[str, Any], shapes) -> Dict[str, Any]:
    kwargs = spec.get("init_kwargs") or {}
    attrs = spec.get("attributes") or {}
    out = {"class": spec.get("class_name"), "img_resolution": kwargs.get("img_resolution"),
           "parameters_and_buffers": int(sum(_numel(s) for s in shapes)), "tensors": len(shapes)}
    if "rendering_kwargs" in attrs or "rendering_kwargs" in kwargs:
        rk = attrs.get("rendering_kwargs", kwargs.get("rendering_kwargs"))
        out["rendering_kwargs"] = rk
        out["superresolution"] = str(rk.get("superresolution_module", "")).rsplit(".", 1)[-1]
        out["parsing"] = bool(kwargs.get("parsing_flag", False))
    if "neural_rendering_resolution" in attrs:
        out["neural_rendering_resolution"] = attrs["neural_rendering_resolution"]
    return out


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def read_info(path) -> Dict[str, Any]:
    """Describe a checkpoint without building networks or touching a device: per network its
    class, resolution, rendering options and tensor count / total elements."""
    path = resolve_network(path)
    kind = _kind(path)
    if kind == "native":
        config, table = checkpoint.read_native_header(path)
        nets = {}
        for name, spec in config["networks"].items():
            shapes = [shape for key, (_, shape) in table.items() if key.startswith(name + ".")]
            nets[name] = _summary(spec, shapes)
        return {"path": path, "format": kind, "networks": nets, "metadata": config.get("metadata", {})}
    snap = legacy.read_upstream_snapshot(path)
    nets = {name: _summary(net["spec"], [tuple(t.shape) for t in net["state_dict"].values()])
            for name, net in snap["networks"].items()}
    return {"path": path, "format": kind, "networks": nets,
            "metadata": {"training_set_kwargs": snap["training_set_kwargs"], "augment_pipe": snap["augment_pipe"]}}
