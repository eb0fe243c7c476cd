"""Writer of upstream-format training snapshots (EG3D persistence version 6, reference.md §8.1–8.2).

Used by tests and converters to turn our modules into files shaped like upstream ones: every module
reduces to ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with a placeholder
``module_src``; ``Sequential``/``ModuleList``/``ModuleDict``/``Softplus`` are pickled as
non-persistent objects by import path (NEWOBJ + state dict), as upstream pickles them; tensors use
torch's own reducers (each storage embedded as legacy ``torch.save`` bytes). Read such files back
with ``spherehead.legacy.read_upstream_snapshot``; a plain ``pickle.load`` refuses them (see
``torch_utils/persistence.py``).
"""
from __future__ import annotations

import copyreg
import os
import pickle
from typing import Any, Dict, Mapping, Optional

import torch

from torch_utils.persistence import _reconstruct_persistent_obj

from .fileio import atomic_path

__all__ = ["write_upstream_snapshot"]

MODULE_SRC_PLACEHOLDER = "# written by spherehead.legacy_writer: no module source is stored\n"

# Upstream networks use these torch containers directly; they are not persistent classes (§8.3).
_NON_PERSISTENT = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Softplus)

_SIMPLE = (bool, int, float, str, type(None))


def _module_state(module: torch.nn.Module, extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The instance-dict state upstream pickles for a module: torch internals plus plain attributes."""
    state: Dict[str, Any] = dict(extra or {})
    state.update({
        "training": module.training,
        "_parameters": dict(module._parameters),
        "_buffers": dict(module._buffers),
        "_non_persistent_buffers_set": set(module._non_persistent_buffers_set),
        "_modules": dict(module._modules),
    })
    # Scalar user attributes (Softplus beta/threshold, layer sizes) make the file look like upstream;
    # richer attributes would need globals the reader refuses, so they stay out.
    for key, value in vars(module).items():
        if not key.startswith("_") and isinstance(value, _SIMPLE) and key not in state:
            state[key] = value
    return state


class _UpstreamPickler(pickle.Pickler):
    """Pickles modules as upstream does; ``roots`` maps id(module) → spec for top-level networks."""

    def __init__(self, file, roots: Dict[int, Mapping[str, Any]]):
        super().__init__(file, protocol=4)
        self._roots = roots

    def reducer_override(self, obj):
        if not isinstance(obj, torch.nn.Module):
            return NotImplemented
        if type(obj) in _NON_PERSISTENT:
            # copyreg.__newobj__ makes pickle emit NEWOBJ with the class global, then BUILD(state).
            return copyreg.__newobj__, (type(obj),), _module_state(obj)
        spec = self._roots.get(id(obj))
        if spec is not None:
            extra = {"_init_args": tuple(spec.get("init_args") or ()),
                     "_init_kwargs": dict(spec.get("init_kwargs") or {})}
            state = _module_state(obj, extra)
            state.update(spec.get("attributes") or {})  # e.g. rendering_kwargs, neural_rendering_resolution
            class_name = spec["class_name"]
        else:
            state = _module_state(obj, {"_init_args": (), "_init_kwargs": {}})
            class_name = type(obj).__name__
        meta = {"type": "class", "version": 6, "module_src": MODULE_SRC_PLACEHOLDER,
                "class_name": class_name, "state": state}
        return _reconstruct_persistent_obj, (meta,)


def write_upstream_snapshot(path, networks: Dict[str, torch.nn.Module], specs: Dict[str, Mapping[str, Any]],
                            training_set_kwargs: Optional[Mapping[str, Any]] = None) -> None:
    """Write ``{'training_set_kwargs', <networks...>, 'augment_pipe': None}`` as an upstream pickle.

    ``networks`` maps snapshot keys ('G', 'G_ema', 'D') to modules; ``specs`` gives each one's
    ``{'class_name', 'init_args', 'init_kwargs', 'attributes'}`` (spherehead.networks.registry).
    The write is atomic (temporary file in the same folder, then rename).
    """
    path = os.fspath(path)
    roots: Dict[int, Mapping[str, Any]] = {}
    for name, module in networks.items():
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"networks[{name!r}] is {type(module).__name__}, expected an nn.Module")
        if name not in specs or "class_name" not in specs[name]:
            raise ValueError(f"specs[{name!r}] with a 'class_name' is required for every network")
        roots.setdefault(id(module), specs[name])
    tsk = dict(training_set_kwargs) if training_set_kwargs is not None else None
    snapshot: Dict[str, Any] = {"training_set_kwargs": tsk}
    snapshot.update(networks)
    snapshot["augment_pipe"] = None
    with atomic_path(path, suffix=".pkl") as tmp:
        with open(tmp, "wb") as f:
            _UpstreamPickler(f, roots).dump(snapshot)
