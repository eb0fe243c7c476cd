"""Convert an EG3D/PanoHead/SphereHead training snapshot to the native format, or describe a checkpoint.

    python tools/convert_checkpoint.py network-snapshot.pkl network.safetensors
    python tools/convert_checkpoint.py --info network-snapshot.pkl [--json]

Conversion reads the input with :func:`spherehead.load_network` (an upstream pickle is read code-free
by ``spherehead.legacy``; a native file is simply re-saved) and writes every network it holds
(G_ema, D, G) plus the metadata with :func:`spherehead.save_network`, which writes atomically.
``--info`` uses :func:`spherehead.read_info`, which builds no networks.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

try:
    import spherehead  # noqa: F401
except ImportError:  # run as `python tools/convert_checkpoint.py` from a checkout: sys.path[0] is tools/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click

from spherehead.api import NETWORK_KEYS, load_network, read_info
from spherehead.checkpoint import save_network
from spherehead.errors import CheckpointError

__all__ = ["convert", "format_info", "main"]


def _check_destination(src: str, dst: str, force: bool) -> None:
    """Refuse dst == src (even with ``force``), a directory, a missing parent folder, or an existing file
    without ``force``."""
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise CheckpointError(f"{dst}: the output folder {parent} does not exist")
    if not os.path.exists(dst):
        return
    if os.path.exists(src) and os.path.samefile(src, dst):
        raise CheckpointError(f"{dst}: output is the same file as the input; choose another output path")
    if os.path.isdir(dst):
        raise CheckpointError(f"{dst}: is a directory; give the output file's path")
    if not force:
        raise CheckpointError(f"{dst}: already exists (pass --force to overwrite it)")


def convert(src, dst, device: Any = "cpu", force: bool = False, keep: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Load ``src`` (upstream pickle or native file) and save it as a native ``.safetensors`` file.

    Keeps every network present (G_ema, D, G), or only those in ``keep`` (G_ema is always kept: the
    format needs it; dropping G and D makes a generation-only file a third of the size), and the metadata (training-set options, source path and
    module-source sha256 for pickles, rendering options). Refuses ``dst`` == ``src`` and an existing
    ``dst`` unless ``force``. Returns ``{'src', 'dst', 'format', 'networks': {name: {'class',
    'parameters'}}}``. Raises :class:`spherehead.errors.CheckpointError` (or OSError) on failure.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    _check_destination(src, dst, force)
    loaded = load_network(src, device=device)
    nets = {name: loaded[name] for name in NETWORK_KEYS if loaded.get(name) is not None}
    if keep is not None:
        unknown = sorted(set(keep) - set(NETWORK_KEYS))
        if unknown:
            raise CheckpointError(f"--keep: unknown network(s) {', '.join(unknown)}; choose from {', '.join(NETWORK_KEYS)}")
        nets = {name: net for name, net in nets.items() if name in keep or name == "G_ema"}
    if "G_ema" not in nets:
        raise CheckpointError(f"{src}: holds no G_ema network (found: {', '.join(nets) or 'none'}); "
                              "the native format needs one")
    save_network(dst, nets["G_ema"], D=nets.get("D"), G=nets.get("G"), metadata=loaded.get("metadata") or {})
    return {"src": src, "dst": dst, "format": loaded.get("format"),
            "networks": {name: {"class": type(net).__name__,
                                "parameters": int(sum(p.numel() for p in net.parameters()))}
                         for name, net in nets.items()}}


def _summary_line(result: Mapping[str, Any]) -> str:
    nets = ", ".join(f"{name} {n['class']} ({n['parameters']:,} parameters)" for name, n in result["networks"].items())
    return f"converted {result['src']} ({result['format']}) -> {result['dst']}: {nets}"


def _kv(mapping: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in mapping.items())


_RENDERING_KEYS = ("triplane_size", "depth_resolution", "depth_resolution_importance", "ray_start", "ray_end",
                   "use_background", "box_warp")


def format_info(info: Mapping[str, Any]) -> str:
    """Readable text for what :func:`spherehead.read_info` returns (one network per block)."""
    lines = [f"{info['path']} ({info['format']})"]
    networks = info["networks"]
    order = [k for k in NETWORK_KEYS if k in networks] + sorted(k for k in networks if k not in NETWORK_KEYS)
    for name in order:
        net = networks[name]
        lines.append(f"  {name}: {net.get('class')}")
        lines.append(f"    img_resolution: {net.get('img_resolution')}")
        if "superresolution" in net:
            lines.append(f"    superresolution: {net['superresolution']}")
        if "parsing" in net:
            lines.append(f"    parsing: {'yes' if net['parsing'] else 'no'}")
        if "neural_rendering_resolution" in net:
            lines.append(f"    neural_rendering_resolution: {net['neural_rendering_resolution']}")
        rk = net.get("rendering_kwargs") or {}
        if rk:
            lines.append(f"    rendering: {_kv({k: rk[k] for k in _RENDERING_KEYS if k in rk})}")
        lines.append(f"    tensors: {net.get('tensors')} ({net.get('parameters_and_buffers', 0):,} elements)")
    meta = info.get("metadata") or {}
    tsk = meta.get("training_set_kwargs")
    lines.append(f"  training_set_kwargs: {_kv(tsk) if tsk else 'none'}")
    if meta.get("augment_pipe"):
        lines.append(f"  augment_pipe: {meta['augment_pipe']}")
    source = meta.get("source")
    if isinstance(source, Mapping) and source.get("path"):
        lines.append(f"  converted from: {source['path']} ({source.get('format', '?')})")
    return "\n".join(lines)


def _parse_device(text: str):
    """A torch device the machine has; ClickException otherwise (bad input, not a crash)."""
    import torch
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as e:
        raise click.BadParameter(_one_line(e), param_hint="--device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine", param_hint="--device")
    return device


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("src", metavar="IN", type=click.Path(dir_okay=True, path_type=str))
@click.argument("dst", metavar="[OUT]", required=False, type=click.Path(dir_okay=True, path_type=str))
@click.option("--info", "info", is_flag=True, help="Describe IN instead of converting (builds no networks).")
@click.option("--json", "as_json", is_flag=True, help="With --info: print JSON instead of text.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@click.option("--device", default="cpu", show_default=True, help="Device to load the networks on while converting.")
@click.option("--keep", default=None, help="Comma-separated networks to write, e.g. G_ema,D (G_ema is always "
              "written)  [default: all present]")
def main(src: str, dst: str, info: bool, as_json: bool, force: bool, device: str, keep: Optional[str]) -> None:
    """Convert IN (upstream pickle or native file) to the native .safetensors file OUT, or describe IN with --info."""
    if info:
        if dst is not None:
            raise click.UsageError("--info takes one file (IN); got an OUT path too")
        if force:
            raise click.UsageError("--force applies to conversion, not --info")
    else:
        if dst is None:
            raise click.UsageError("missing OUT (or pass --info to describe IN)")
        if as_json:
            raise click.UsageError("--json applies to --info only")
    if keep is not None and info:
        raise click.UsageError("--keep applies to conversion, not --info")
    try:
        if info:
            described = read_info(src)
            click.echo(json.dumps(described, indent=2, default=str) if as_json else format_info(described))
        else:
            names = None if keep is None else [n.strip() for n in keep.split(",") if n.strip()]
            click.echo(_summary_line(convert(src, dst, device=_parse_device(device), force=force, keep=names)))
    except (CheckpointError, OSError) as e:
        raise click.ClickException(_one_line(e)) from None


if __name__ == "__main__":
    main()
