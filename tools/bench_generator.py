"""Time the generator (and a G/D training step) on random or checkpoint weights; print one JSON object.

    python tools/bench_generator.py --config fixture-small --batch 4
    python tools/bench_generator.py --network ckpt.safetensors --device cuda --iters 10
    python tools/bench_generator.py --config tiny --mode train-step --batch 2
    python tools/bench_generator.py --config released-512 --mode turntable-frame --threads 1
    python tools/bench_generator.py --config released-512 --device cuda --impl ref   # reference ops only

Modes:

* ``forward``: ``G.mapping`` + ``G.apply_delta_c`` + ``G.synthesis`` under ``torch.no_grad`` (what
  ``gen_samples.py`` pays per batch).
* ``turntable-frame``: what a turntable pays per batch of frames: ``G.synthesis`` of one latent from
  ``batch`` cameras around the head, with that latent's ``G.scene`` (planes and background) computed
  once before the timing, as ``gen_videos.py`` and ``gen_samples.py`` do. Compare with ``forward``
  at the same batch for the saving; ``scene_s`` records the one-off cost of the scene.
* ``train-step``: a G-side step (G forward with grad, D on the fake, backward of softplus(-D)
  through D into G; D's parameters frozen, as in the training loop's G phase) followed by a D step
  on the detached fake (backward through D only). Both are timed separately (``g_step_*``,
  ``d_step_*``); ``times_s`` is their sum. No optimizer update, no regularizers, no real images.

Ops: ``impl`` picks the custom ops' implementation for the whole run: 'auto' (CUDA kernels where
they build and pass their self-check, else the references), 'cuda' (fail unless every kernel is
usable), 'ref' (pure-PyTorch references everywhere, switched in-process with
``torch_utils.custom_ops.reference_ops``). The JSON records it (``ops_impl``) and each kernel's
status (``kernels``).

Memory: on CUDA ``peak_memory_mb`` is ``torch.cuda.max_memory_allocated`` over the timed section
(tensors only, not the caching allocator's reserve) and ``peak_memory_increase_mb`` its excess over
the tensors allocated before it. On CPU ``peak_memory_mb`` is the *process* peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``: Python, torch, the weights and everything else in the
process), and ``peak_memory_increase_mb`` is that peak minus the resident set size just before the
warm-up, i.e. the working memory of warm-up + timed calls, one-time caches included. ru_maxrss is a
high-water mark over the process's life, so if something earlier (network construction, checkpoint
loading) peaked higher, the increase is an upper bound; ``memory.peak_reached_in_benchmark`` says
whether the benchmark itself raised the mark.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Optional

import click

try:
    import spherehead  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F

from spherehead.camera import make_label

MODES = ("forward", "turntable-frame", "train-step")
OPS_IMPLS = ("auto", "cuda", "ref")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # non-fp32 = torch.autocast
DEFAULT_CONFIG = "fixture-small"


# ----------------------------------------------------------------------------- setup

def _preset_names() -> List[str]:
    from spherehead.networks.presets import PRESETS
    return list(PRESETS)


def _resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device: cannot parse {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch.cuda.is_available() is False on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: only 'cpu' and 'cuda[:i]' are supported, got {device!r}")
    return dev


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_networks(config: Optional[str], network: Optional[str], dev: torch.device):
    """(G, D, source dict) from a preset (random weights, seed 0) or a checkpoint (its G_ema and D)."""
    if config is not None and network is not None:
        raise ValueError("give either --config or --network, not both")
    if network is not None:
        import spherehead
        nets = spherehead.load_network(network, device=dev)  # CheckpointError (a ValueError) for bad files
        if "G_ema" not in nets and "G" not in nets:
            raise ValueError(f"{network}: the checkpoint holds no generator (G_ema or G)")
        return nets.get("G_ema", nets.get("G")), nets.get("D"), {"network": os.fspath(network)}
    from spherehead.networks.presets import build_preset
    name = DEFAULT_CONFIG if config is None else config
    G, D = build_preset(name, seed=0)  # ValueError for an unknown name
    return G.to(dev), D.to(dev), {"config": name}


def _read_rss_mb() -> Optional[float]:
    """Current resident set size of this process in MiB (Linux /proc), None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


# ----------------------------------------------------------------------------- the timed steps

def _forward_step(G, z, c, nrr) -> Callable[[], Dict[str, float]]:
    def step():
        with torch.no_grad():
            ws = G.mapping(z, c, truncation_psi=1)
            c_render, _ = G.apply_delta_c(z, c)
            G.synthesis(ws, c_render, neural_rendering_resolution=nrr, noise_mode="const")
        return {}
    return step


def _turntable_step(G, z, nrr, sync, extra: Dict[str, float]) -> Callable[[], Dict[str, float]]:
    from spherehead.video import turntable_cameras
    c = turntable_cameras(z.shape[0]).to(z.device)
    with torch.no_grad():
        ws = G.mapping(z[:1], c[:1], truncation_psi=1)
        t0 = time.perf_counter()
        scene = G.scene(ws, noise_mode="const")
        sync()
        extra["scene_s"] = round(time.perf_counter() - t0, 6)

    def step():
        with torch.no_grad():
            G.synthesis(ws.expand(len(c), -1, -1), c, neural_rendering_resolution=nrr, noise_mode="const",
                        scene=scene)
        return {}
    return step


def _train_step(G, D, z, c, nrr, sync) -> Callable[[], Dict[str, float]]:
    """Like the training loop's phases: only the phase's own network requires grad (so the G step
    computes no D parameter gradients, and the D step none of G's)."""
    def step():
        for p in list(G.parameters()) + list(D.parameters()):
            p.grad = None
        t0 = time.perf_counter()
        G.requires_grad_(True)
        D.requires_grad_(False)
        ws = G.mapping(z, c, truncation_psi=1)
        c_render, _ = G.apply_delta_c(z, c)
        fake = G.synthesis(ws, c_render, neural_rendering_resolution=nrr, noise_mode="const")
        F.softplus(-D(fake, c)).mean().backward()  # non-saturating G loss, gradient flows through D into G
        sync()
        t1 = time.perf_counter()
        G.requires_grad_(False)
        D.requires_grad_(True)
        detached = {k: v.detach() for k, v in fake.items()}
        F.softplus(D(detached, c)).mean().backward()  # D loss on fakes: backward through D only
        sync()
        t2 = time.perf_counter()
        return {"g_step": t1 - t0, "d_step": t2 - t1}
    return step


# ----------------------------------------------------------------------------- library entry point

def benchmark(config: Optional[str] = None, network: Optional[str] = None, device: str = "cpu", batch: int = 1,
              iters: int = 3, warmup: int = 1, neural_rendering_resolution: Optional[int] = None,
              dtype: str = "fp32", mode: str = "forward", threads: Optional[int] = None,
              impl: str = "auto") -> Dict[str, Any]:
    """Benchmark one generator; returns the JSON-ready result dict (see the module docstring).

    ``config`` is a preset name (random weights, seed 0; 'fixture-small' when neither ``config``
    nor ``network`` is given), ``network`` a checkpoint path. ``dtype`` other than 'fp32' runs the
    steps under ``torch.autocast``. Raises ValueError for bad arguments or unreadable files.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if impl not in OPS_IMPLS:
        raise ValueError(f"impl must be one of {OPS_IMPLS}, got {impl!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if batch < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need batch >= 1, iters >= 1, warmup >= 0; got {batch}, {iters}, {warmup}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    dev = _resolve_device(device)
    G, D, source = _load_networks(config, network, dev)
    if mode == "train-step" and D is None:
        raise ValueError(f"{network}: --mode train-step needs a discriminator, the checkpoint has none")
    nrr = int(neural_rendering_resolution or G.neural_rendering_resolution)
    if nrr < 1:
        raise ValueError(f"neural rendering resolution must be >= 1, got {nrr}")

    torch.manual_seed(0)
    z = torch.randn(batch, G.z_dim).to(dev)
    c = make_label(0.0, 0.0).repeat(batch, 1).to(dev)  # frontal camera at the default radius
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    extra: Dict[str, Any] = {}
    autocast = torch.autocast(dev.type, dtype=DTYPES[dtype]) if DTYPES[dtype] is not None else nullcontext()
    with _ops_context(impl, dev), autocast:
        if mode == "forward":
            G.eval()
            step = _forward_step(G, z, c, nrr)
        elif mode == "turntable-frame":   # the scene is computed here: same ops and dtype as the frames
            G.eval()
            step = _turntable_step(G, z, nrr, sync, extra)
        else:
            G.train()
            D.train()
            step = _train_step(G, D, z, c, nrr, sync)
        times, parts, memory = _timed(step, warmup, iters, sync, dev)
    median = statistics.median(times)
    result = {"tool": "bench_generator", **source, "device": str(dev), "device_name": _device_name(dev),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": batch,
              "img_resolution": int(G.img_resolution), "neural_rendering_resolution": nrr,
              "depth_resolution": G.rendering.depth_resolution,
              "depth_resolution_importance": G.rendering.depth_resolution_importance,
              "mode": mode, "dtype": dtype, "ops_impl": impl, "warmup": warmup, "iters": iters,
              "times_s": [round(t, 6) for t in times], "median_s": round(median, 6),
              "images_per_s": round(batch / median, 4), **extra}
    for key, values in parts.items():
        result[f"{key}_times_s"] = [round(t, 6) for t in values]
        result[f"{key}_median_s"] = round(statistics.median(values), 6)
    result.update(memory)
    from torch_utils.custom_ops import cuda_ops_status
    result["kernels"] = cuda_ops_status()
    return result


def _ops_context(impl: str, dev: torch.device):
    """The context the timed section runs in for ``impl`` (see the module docstring)."""
    from torch_utils import custom_ops
    if impl == "ref":
        return custom_ops.reference_ops()
    if impl == "cuda":
        if dev.type != "cuda":
            raise ValueError("--impl cuda needs --device cuda")
        from torch_utils.ops import bias_act, spherical_sample, upfirdn2d
        for mod in (bias_act, spherical_sample, upfirdn2d):
            if not mod._KERNEL.is_available():
                raise ValueError(f"--impl cuda: the {mod._KERNEL.op} kernel is unavailable: {mod._KERNEL.failure}")
    return nullcontext()


def _timed(step: Callable[[], Dict[str, float]], warmup: int, iters: int, sync: Callable[[], None],
           dev: torch.device):
    """Run ``warmup`` untimed and ``iters`` timed steps -> (times, {part: times}, memory fields)."""
    is_cuda = dev.type == "cuda"
    rss_start, maxrss_start = _read_rss_mb(), _maxrss_mb()
    for _ in range(warmup):
        step()
    sync()
    if is_cuda:
        mem_start = torch.cuda.memory_allocated(dev) / 2 ** 20
        torch.cuda.reset_peak_memory_stats(dev)
    times, parts = [], {}
    for _ in range(iters):
        t0 = time.perf_counter()
        split = step()
        sync()
        times.append(time.perf_counter() - t0)
        for key, value in split.items():
            parts.setdefault(key, []).append(value)
    if is_cuda:
        peak = torch.cuda.max_memory_allocated(dev) / 2 ** 20
        memory = dict(peak_memory_mb=round(peak, 1), peak_memory_increase_mb=round(peak - mem_start, 1),
                      peak_memory_kind="cuda-max-memory-allocated (timed section; increase over the tensors "
                                       "allocated before it)")
    else:
        maxrss_end = _maxrss_mb()
        base = rss_start if rss_start is not None else maxrss_start
        memory = dict(peak_memory_mb=round(maxrss_end, 1),
                      peak_memory_increase_mb=round(max(0.0, maxrss_end - base), 1),
                      peak_memory_kind="cpu-process-peak-rss (getrusage ru_maxrss; increase over the RSS "
                                       "before warm-up)",
                      memory={"rss_before_mb": None if rss_start is None else round(rss_start, 1),
                              "peak_rss_before_mb": round(maxrss_start, 1),
                              "peak_rss_after_mb": round(maxrss_end, 1),
                              "peak_reached_in_benchmark": maxrss_end > maxrss_start})
    return times, parts, memory


def write_json_atomic(path: str, obj: Dict[str, Any]) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (spherehead.fileio)."""
    from spherehead.fileio import write_bytes
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def check_out(out: Optional[str]) -> None:
    """The benchmark CLIs' ``--out``: its folder must exist before minutes of timing are spent."""
    if out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise click.ClickException(f"--out {out}: the folder does not exist")


def run_and_report(bench, out: Optional[str], **kwargs) -> None:
    """``bench(**kwargs)``'s result printed as JSON (and written to ``out``); its ValueErrors become
    one-line CLI errors."""
    try:
        result = bench(**kwargs)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=2))
    if out is not None:
        write_json_atomic(out, result)


# ----------------------------------------------------------------------------- CLI

@click.command(context_settings={"show_default": True})
@click.option("--config", type=click.Choice(_preset_names()), default=None, show_default=DEFAULT_CONFIG,
              help="Network preset with random weights (seed 0).")
@click.option("--network", type=str, default=None, metavar="PATH",
              help="Checkpoint to benchmark (native .safetensors or upstream pickle); excludes --config.")
@click.option("--device", type=str, default="cpu", help="'cpu' or 'cuda[:i]'.")
@click.option("--batch", type=click.IntRange(min=1), default=1, help="Images per call.")
@click.option("--iters", type=click.IntRange(min=1), default=3, help="Timed iterations.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, help="Untimed iterations first.")
@click.option("--neural-rendering-resolution", type=click.IntRange(min=1), default=None,
              show_default="the network's", help="Rendering resolution before superresolution.")
@click.option("--threads", type=click.IntRange(min=1), default=None, show_default="torch's default",
              help="torch.set_num_threads.")
@click.option("--mode", type=click.Choice(MODES), default="forward",
              help="'forward' (no grad), 'turntable-frame' (one latent's precomputed scene from --batch cameras) "
                   "or 'train-step' (G step + D step, each timed).")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="fp32",
              help="fp32, or bf16/fp16 under torch.autocast.")
@click.option("--impl", type=click.Choice(OPS_IMPLS), default="auto",
              help="Custom ops: CUDA kernels when usable (auto), required (cuda), or the references (ref).")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the JSON to this file (atomically).")
def main(config, network, device, batch, iters, warmup, neural_rendering_resolution, threads, mode, dtype, impl, out):
    """Benchmark the SphereHead generator; prints one JSON object."""
    if config is not None and network is not None:
        raise click.ClickException("give either --config or --network, not both")
    if network is not None and not os.path.isfile(network):
        raise click.ClickException(f"--network {network}: no such file")
    check_out(out)
    run_and_report(benchmark, out, config=config, network=network, device=device, batch=batch, iters=iters,
                   warmup=warmup, neural_rendering_resolution=neural_rendering_resolution, dtype=dtype, mode=mode,
                   threads=threads, impl=impl)


if __name__ == "__main__":
    main()
