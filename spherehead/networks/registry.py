"""Network classes by their upstream names, and the spec that rebuilds a module without code.

A *spec* is a JSON-able dict ``{'class_name', 'init_args', 'init_kwargs', 'attributes'}``:
``class_name`` is the upstream class name (e.g. 'TriPlaneGenerator'), ``init_args``/``init_kwargs``
are the constructor arguments as upstream pickles store them (reference.md §8.2), and
``attributes`` holds runtime attributes that are not constructor arguments (for the generator:
``rendering_kwargs`` and ``neural_rendering_resolution``). Both the native format
(spherehead.checkpoint) and the pickle reader (spherehead.legacy) go through :func:`build_network`.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping

import numpy as np
import torch

from ..errors import CheckpointError

_CLASSES: Dict[str, type] = {}


class UnsupportedNetworkError(CheckpointError):
    """A checkpoint names a network class this package does not implement."""


class WeightsMismatchError(CheckpointError):
    """A state dict does not fit the module built from its spec."""


def register(name: str):
    """Class decorator: make ``name`` buildable by :func:`build_network`."""
    def deco(cls):
        _CLASSES[name] = cls
        return cls
    return deco


def supported_classes():
    _import_all()
    return sorted(_CLASSES)


def _import_all():
    # Importing the modules registers their classes.
    from . import generator, discriminator  # noqa: F401


def plain(value: Any) -> Any:
    """Convert EasyDicts, tuples, numpy scalars and arrays to plain JSON-able Python values."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def build_network(spec: Mapping[str, Any], source: str = "network") -> torch.nn.Module:
    """Construct the module a spec describes (random weights; load them with :func:`load_weights`).

    ``source`` names the file/network in errors; a constructor that rejects the stored arguments is
    reported as a :class:`CheckpointError` (the file is wrong, not the caller).
    """
    _import_all()
    name = spec.get("class_name")
    cls = _CLASSES.get(name)
    if cls is None:
        raise UnsupportedNetworkError(
            f"{source}: unsupported network class {name!r}; supported: {', '.join(sorted(_CLASSES))}")
    try:
        module = cls(*plain(spec.get("init_args") or []), **plain(spec.get("init_kwargs") or {}))
        attrs = plain(spec.get("attributes") or {})
        if attrs:
            module.set_attributes(attrs)
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        raise CheckpointError(f"{source}: cannot build {name!r} from its stored arguments "
                              f"({type(e).__name__}: {e})") from e
    return module


def network_spec(module: torch.nn.Module) -> Dict[str, Any]:
    """The spec that rebuilds ``module`` (weights excluded)."""
    name = next((k for k, v in _CLASSES.items() if v is type(module)), None)
    if name is None:
        raise UnsupportedNetworkError(f"{type(module).__name__} is not a registered network class")
    return {
        "class_name": name,
        "init_args": plain(copy.deepcopy(getattr(module, "init_args", ()))),
        "init_kwargs": plain(copy.deepcopy(getattr(module, "init_kwargs", {}))),
        "attributes": plain(module.get_attributes()) if hasattr(module, "get_attributes") else {},
    }


def load_weights(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``module``; every tensor must exist with the right shape.

    Buffers named in the module's ``OPTIONAL_BUFFERS`` (e.g. the training loop's
    ``dataset_label_std``) are registered on the fly when the source has them.
    ``source`` names the file/network in error messages.
    """
    for name in getattr(module, "OPTIONAL_BUFFERS", ()):
        if name in state_dict and name not in dict(module.named_buffers()):
            module.register_buffer(name, torch.zeros_like(state_dict[name], dtype=torch.float32))
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
        raise WeightsMismatchError(f"{source}: weights do not match {type(module).__name__}: " + "; ".join(parts))
    bad = [f"{k} has shape {list(state_dict[k].shape)}, expected {list(v.shape)}"
           for k, v in own.items() if tuple(state_dict[k].shape) != tuple(v.shape)]
    if bad:
        raise WeightsMismatchError(f"{source}: wrong tensor shape(s): " + "; ".join(bad[:8]))
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state_dict[k].to(dtype=v.dtype))
