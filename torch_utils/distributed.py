"""Process-group helpers: one :func:`init` that works with torchrun, with SLURM ``srun`` and in a
plain single process, and the few collectives the training loop needs.

Rank 0 prints and writes; every rank computes. With one process nothing is initialised and every
collective is a no-op, so library code calls these helpers unconditionally.

The process environment is read, never written: torchrun's own variables are consumed through
``init_method='env://'``; under SLURM the rendezvous address is passed as an explicit ``tcp://``
``init_method`` instead of being exported as MASTER_ADDR/MASTER_PORT.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Optional

import torch
import torch.distributed as dist

DEFAULT_PORT = 29500


@dataclass
class Launch:
    """How this process was started: rank/world/local rank and the rendezvous ``init_method``."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    init_method: Optional[str] = None   # None: single process, no process group
    launcher: str = "single"           # 'single' | 'torchrun' | 'slurm'


_launch = Launch()
_device = torch.device("cpu")


def _first_slurm_host(nodelist: str) -> Optional[str]:
    """First host of a SLURM node list: 'gpu[03-05,9],cpu1' -> 'gpu03'."""
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return None
    prefix, ranges = m.group(1), m.group(3)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def launch_from_env(env: Mapping[str, str], master_addr: Optional[str] = None,
                    master_port: Optional[int] = None) -> Launch:
    """Decide rank/world/init_method from ``env`` (a copy of os.environ; pure, so it is testable).

    torchrun (RANK and WORLD_SIZE set) wins over SLURM, so ``srun torchrun ...`` also works. Under
    SLURM with more than one task, the master is ``master_addr``, else SLURM_LAUNCH_NODE_IPADDR, else
    the first host of SLURM_JOB_NODELIST; the port is ``master_port`` or 29500 + (job id mod 1000), so
    two jobs sharing a node do not collide.
    """
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return Launch(int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)),
                      "env://" if world > 1 else None, "torchrun")
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        addr = master_addr or env.get("SLURM_LAUNCH_NODE_IPADDR") or \
            _first_slurm_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "")))
        if not addr:
            raise RuntimeError("SLURM launch: cannot find the master address (pass master_addr, or set "
                               "SLURM_LAUNCH_NODE_IPADDR / SLURM_JOB_NODELIST)")
        port = master_port or DEFAULT_PORT + int(env.get("SLURM_JOB_ID", "0")) % 1000
        return Launch(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                      f"tcp://{addr}:{port}", "slurm")
    return Launch()


def init(device: str = "auto", master_addr: Optional[str] = None, master_port: Optional[int] = None,
         timeout_min: float = 30.0) -> torch.device:
    """Join the process group (if there is more than one process) and pick this rank's device.

    ``device``: 'auto' (CUDA when available), 'cpu' or 'cuda'. NCCL on CUDA, gloo on CPU. Returns the
    device this rank should use (``cuda:<local rank>`` on GPUs).
    """
    global _launch, _device
    if dist.is_available() and dist.is_initialized():
        return _device
    launch = launch_from_env(dict(os.environ), master_addr, master_port)
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    if use_cuda:
        _device = torch.device("cuda", launch.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(_device)
    else:
        _device = torch.device("cpu")
    if launch.init_method is not None:
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method=launch.init_method,
                                rank=launch.rank, world_size=launch.world_size,
                                timeout=datetime.timedelta(minutes=timeout_min))
    _launch = launch
    return _device


def shutdown(wait: bool = True) -> None:
    """Leave the process group (safe to call when none was joined). ``wait``: first wait for the other
    ranks; pass False when leaving because of an error, as the others may never reach that barrier."""
    global _launch
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
    _launch = Launch()


def _active() -> bool:
    return _launch.world_size > 1 and dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return _launch.rank


def get_world_size() -> int:
    return _launch.world_size


def get_local_rank() -> int:
    return _launch.local_rank


def get_launcher() -> str:
    return _launch.launcher


def device() -> torch.device:
    return _device


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only."""
    if get_rank() == 0:
        print(*args, **kwargs)


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks in one flat all-reduce, then sanitise them
    (nan -> 0, ±inf -> ±1e5, reference.md §6.3). Parameters without a gradient are skipped; every
    rank runs the same code, so the skipped set is the same everywhere."""
    params = [p for p in params if p.grad is not None and p.numel() > 0]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    if _active():
        dist.all_reduce(flat)
        flat /= get_world_size()
    torch.nan_to_num(flat, nan=0.0, posinf=1e5, neginf=-1e5, out=flat)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.reshape(p.shape)


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy every parameter and buffer of rank 0's ``module`` to the other ranks (in place)."""
    if not _active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def _object_device() -> torch.device:
    # NCCL collectives on Python objects need the tensors on this rank's GPU.
    return _device if dist.get_backend() == "nccl" else torch.device("cpu")


def all_gather_object(obj: Any) -> List[Any]:
    """[obj of rank 0, obj of rank 1, ...] (picklable objects; a one-element list in one process)."""
    if not _active():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_object_device())
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one rank."""
    if not _active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_object_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def module_digest(module: torch.nn.Module, skip: Optional[str] = r".*\.[^.]+_(avg|ema)$") -> str:
    """sha256 of a module's parameters and buffers (names matching ``skip`` left out: running averages
    such as the mapping's w_avg are updated from each rank's own latents and legitimately differ; None
    leaves nothing out)."""
    h = hashlib.sha256()
    pattern = re.compile(skip) if skip is not None else None
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if pattern is not None and pattern.fullmatch(name):
            continue
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def check_consistency(modules: Mapping[str, torch.nn.Module]) -> List[dict]:
    """Per-rank digests of ``modules``; raises RuntimeError naming the module when ranks disagree."""
    digests = all_gather_object({name: module_digest(m) for name, m in modules.items()})
    for name in modules:
        values = {d[name] for d in digests}
        if len(values) > 1:
            raise RuntimeError(f"distributed training diverged: {name} differs across ranks "
                               f"({len(values)} distinct digests over {len(digests)} ranks)")
    return digests
