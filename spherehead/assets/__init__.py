"""Networks bundled with the package, addressed by name wherever a checkpoint path is accepted.

``spherehead.load_network('demo')``, ``gen_samples.py`` / ``gen_videos.py`` / ``invert.py`` without
``--network``: the demo model trained on the synthetic 360° head set (docs/demo_model.md tells how it
was trained and what it scores), and ``'demo-novico'``, the same model trained without ViCo. A name is used only when no file of that name exists, so a local
file called ``demo`` still wins.
"""
from __future__ import annotations

import os
from typing import Dict

from ..errors import CheckpointError

DEFAULT_NETWORK = "demo"

# name -> file in this folder. 'demo-novico' is the demo's comparison arm, trained the same way without
# ViCo (docs/demo_model.md): with it the ViCo comparison can be measured (calc_metrics.py) without training.
BUNDLED: Dict[str, str] = {
    "demo": "demo-128.safetensors",
    "demo-novico": "demo-128-novico.safetensors",
}


def bundled_path(name: str) -> str:
    """Path of bundled network ``name``; CheckpointError naming the file when the install lacks it."""
    if name not in BUNDLED:
        raise CheckpointError(f"{name}: no such bundled network (bundled: {', '.join(sorted(BUNDLED))})")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), BUNDLED[name])
    if not os.path.isfile(path):
        raise CheckpointError(f"{name}: the bundled network file {path} is missing from this installation "
                              f"(reinstall spherehead, or pass a checkpoint path)")
    return path


def resolve_network(spec) -> str:
    """A checkpoint path for ``spec``: an existing path as given, else a bundled name's file, else ``spec``
    unchanged (so the caller's 'no such file' error names what the user typed)."""
    spec = os.fspath(spec)
    if not os.path.exists(spec) and spec in BUNDLED:
        return bundled_path(spec)
    return spec
