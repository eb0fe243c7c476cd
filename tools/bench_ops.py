"""Time the custom ops, CUDA kernel vs pure-PyTorch reference; print one JSON object.

    python tools/bench_ops.py --device cuda                       # the target sizes, fp32
    python tools/bench_ops.py --device cuda --dtype fp16 --out bench-ops-fp16.json
    python tools/bench_ops.py --batch 1 --rays 16 --samples 24 --plane-res 64 --image-res 32   # CPU smoke run

Sizes (defaults = the released 512² configuration): the spherical sampler gets ``batch`` × rays² ×
``samples`` points (64² rays × 96 samples: 48 coarse + 48 importance) on planes [batch, 2, 3,
``channels``, plane-res, plane-res], with ``reduce='mean'`` as the renderer calls it; points lie on
rays from cameras at radius 2.7 looking at the origin (depths 2.25-3.3), so neighbouring threads read
neighbouring texels as in rendering. bias_act runs on [batch, 128, image-res, image-res] (lrelu,
bias, clamp 256, like a synthesis layer); upfirdn2d up- and down-samples that tensor by 2 with the
4×4 [1, 3, 3, 1] filter.

For each op and implementation: median milliseconds of ``forward`` and ``forward_backward`` over
``iters`` timed runs (after ``warmup``), and on CUDA the peak of ``torch.cuda.max_memory_allocated``
above what was allocated before the call (inputs excluded), in MiB. The 'cuda' entry is a string
saying why when the kernel is unavailable (always so on CPU).
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, Optional

import click

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # `tools` is not an installed package: run from the checkout
    sys.path.insert(0, _ROOT)

import torch

from torch_utils import custom_ops
from torch_utils.ops.bias_act import bias_act
from torch_utils.ops.spherical_sample import spherical_sample
from torch_utils.ops.upfirdn2d import downsample2d, setup_filter, upsample2d

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
IMPLS = ("both", "cuda", "ref")


def _device_name(dev: torch.device) -> str:
    from tools.bench_generator import _device_name as name
    return name(dev)


def ray_points(batch: int, rays: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, rays²·samples, 3] points on camera rays (radius 2.7, yaw spread over the batch, a small
    random pitch, focal 4.2647 as in the released cameras, depths 2.25-3.3)."""
    t = 0.5 / 4.2647
    lin = torch.linspace(-t, t, rays)
    y, x = torch.meshgrid(lin, lin, indexing="ij")
    dirs = torch.nn.functional.normalize(torch.stack([x, -y, -torch.ones_like(x)], -1).reshape(-1, 3), dim=-1)
    depths = torch.linspace(2.25, 3.3, samples)
    local = (torch.tensor([0.0, 0.0, 2.7]) + depths[None, :, None] * dirs[:, None, :]).reshape(-1, 3)
    out = []
    for i in range(batch):
        yaw = 2 * math.pi * i / batch
        pitch = float(torch.rand((), generator=generator)) * 0.4 - 0.2
        cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
        yaw_m = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rot = yaw_m @ torch.tensor([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        out.append(local @ rot.t())
    return torch.stack(out)


def _time(fn: Callable[[], Any], dev: torch.device, iters: int, warmup: int) -> Dict[str, Optional[float]]:
    """Median ms over iters, and (CUDA) the peak allocation above the pre-call level in MiB."""
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    peak = None
    if dev.type == "cuda":
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    if dev.type == "cuda":
        peak = round((torch.cuda.max_memory_allocated(dev) - base) / 2 ** 20, 1)
    return {"median_ms": round(statistics.median(times), 4), "min_ms": round(min(times), 4), "peak_mb": peak}


def _bench_impls(run: Callable[[str, bool], Callable[[], Any]], dev: torch.device, impls, iters, warmup) -> Dict:
    """For each impl: {'forward': timing, 'forward_backward': timing} or, for an unusable kernel, a reason."""
    out: Dict[str, Any] = {}
    for impl in impls:
        if impl == "cuda" and dev.type != "cuda":
            out[impl] = "unavailable: no CUDA device (torch.cuda.is_available() is False or --device cpu)"
            continue
        try:
            out[impl] = {"forward": _time(run(impl, False), dev, iters, warmup),
                         "forward_backward": _time(run(impl, True), dev, iters, warmup)}
        except RuntimeError as exc:
            if impl != "cuda":
                raise
            out[impl] = f"unavailable: {str(exc).splitlines()[0]}"
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def benchmark(device: str = "cpu", dtype: str = "fp32", batch: int = 4, rays: int = 64, samples: int = 96,
              channels: int = 32, plane_res: int = 256, image_res: int = 256, iters: int = 10, warmup: int = 3,
              impl: str = "both", ops=("spherical_sample", "bias_act", "upfirdn2d"),
              deterministic: bool = False) -> Dict[str, Any]:
    """Run the benchmarks; returns the JSON-ready dict (see the module docstring)."""
    if dtype not in DTYPES or impl not in IMPLS:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)} and impl one of {IMPLS}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch.cuda.is_available() is False on this machine")
    dt = DTYPES[dtype]
    impls = ("cuda", "ref") if impl == "both" else (impl,)
    gen = torch.Generator().manual_seed(0)
    result: Dict[str, Any] = {
        "tool": "bench_ops", "date": time.strftime("%Y-%m-%d"), "device": str(dev), "device_name": _device_name(dev),
        "torch": torch.__version__, "cuda": torch.version.cuda, "dtype": dtype, "iters": iters, "warmup": warmup}

    if "spherical_sample" in ops:
        planes = (torch.randn(batch, 2, 3, channels, plane_res, plane_res, generator=gen) * 0.5).to(dev, dt)
        coords = ray_points(batch, rays, samples, gen).to(dev)
        grad = torch.randn(batch, coords.shape[1], channels, generator=gen).to(dev, dt)

        def run_sampler(which, backward):
            p = planes.detach().requires_grad_(backward)
            c = coords.detach().requires_grad_(backward)

            def step():
                out = spherical_sample(p, c, reduce="mean", impl=which, deterministic=deterministic)
                if backward:
                    out.backward(grad)
            return step

        result["spherical_sample"] = {
            "planes": list(planes.shape), "coords": list(coords.shape), "output": [batch, coords.shape[1], channels],
            "reduce": "mean", "deterministic": deterministic,
            **_bench_impls(run_sampler, dev, impls, iters, warmup)}
        del planes, coords, grad

    if "bias_act" in ops or "upfirdn2d" in ops:
        x = torch.randn(batch, 128, image_res, image_res, generator=gen).to(dev, dt)
        b = torch.randn(128, generator=gen).to(dev, dt)
        f = setup_filter([1, 3, 3, 1]).to(dev)

        def op_runner(fn):
            def run(which, backward):
                xs = x.detach().requires_grad_(backward)

                def step():
                    y = fn(xs, which)
                    if backward:
                        y.backward(torch.ones_like(y))
                return step
            return run

        if "bias_act" in ops:
            result["bias_act"] = {"x": list(x.shape), "act": "lrelu", "clamp": 256, **_bench_impls(
                op_runner(lambda xs, which: bias_act(xs, b, act="lrelu", clamp=256.0, impl=which)), dev, impls,
                iters, warmup)}
        if "upfirdn2d" in ops:
            result["upsample2d"] = {"x": list(x.shape), "filter": [4, 4], "up": 2, **_bench_impls(
                op_runner(lambda xs, which: upsample2d(xs, f, impl=which)), dev, impls, iters, warmup)}
            result["downsample2d"] = {"x": list(x.shape), "filter": [4, 4], "down": 2, **_bench_impls(
                op_runner(lambda xs, which: downsample2d(xs, f, impl=which)), dev, impls, iters, warmup)}
    result["kernels"] = custom_ops.cuda_ops_status()
    return result


@click.command(context_settings={"show_default": True})
@click.option("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu", help="'cpu' or 'cuda[:i]'.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="fp32", help="Planes/activations dtype.")
@click.option("--batch", type=click.IntRange(min=1), default=4)
@click.option("--rays", type=click.IntRange(min=1), default=64, help="Rays per side (rays² per image).")
@click.option("--samples", type=click.IntRange(min=1), default=96, help="Samples per ray.")
@click.option("--channels", type=click.IntRange(min=1), default=32, help="Feature channels per plane.")
@click.option("--plane-res", type=click.IntRange(min=2), default=256, help="Tri-plane resolution.")
@click.option("--image-res", type=click.IntRange(min=4), default=256, help="bias_act/upfirdn2d image size.")
@click.option("--iters", type=click.IntRange(min=1), default=10)
@click.option("--warmup", type=click.IntRange(min=0), default=3)
@click.option("--impl", type=click.Choice(IMPLS), default="both", help="Which implementations to time.")
@click.option("--op", "ops", type=click.Choice(["spherical_sample", "bias_act", "upfirdn2d"]), multiple=True,
              default=("spherical_sample", "bias_act", "upfirdn2d"), help="Ops to time (repeatable).")
@click.option("--deterministic", is_flag=True, help="Sampler backward with fixed-point (deterministic) atomics.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None, help="Also write the JSON here.")
def main(device, dtype, batch, rays, samples, channels, plane_res, image_res, iters, warmup, impl, ops, deterministic,
         out):
    """Benchmark the custom ops (CUDA kernel vs reference); prints one JSON object."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise click.ClickException(f"--device: cannot parse {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise click.ClickException(f"--device: only 'cpu' and 'cuda[:i]' are supported, got {device!r}")
    from tools.bench_generator import check_out, run_and_report
    check_out(out)
    run_and_report(benchmark, out, device=device, dtype=dtype, batch=batch, rays=rays, samples=samples,
                   channels=channels, plane_res=plane_res, image_res=image_res, iters=iters, warmup=warmup, impl=impl,
                   ops=tuple(ops), deterministic=deterministic)


if __name__ == "__main__":
    main()
