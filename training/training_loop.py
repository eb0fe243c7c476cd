"""The SphereHead training loop (reference.md §6): StyleGAN2-ADA phases, lazy regularisation, G EMA,
data-parallel over ranks by an explicit gradient all-reduce, exact resume.

One iteration, on every rank:

1. seed torch/numpy/Python from (seed, rank, iteration), so the random stream of an iteration does not
   depend on what ran before it; this is what makes ``resume='latest'`` exact;
2. take ``batch / world_size`` real images (``batch_gpu`` per round) from an endless, seeded,
   resumable sampler, and draw z and generator cameras for every phase;
3. for each phase due ('Gboth' or 'Gmain'/'Greg', then 'Dmain'/'Dreg'): requires_grad on that
   network only, accumulate the loss over the rounds with gain = the phase interval, average the
   gradients over ranks (sanitised), step its Adam;
4. G_ema ← lerp(G, G_ema, β), β = 0.5^(batch / ema_nimg), ema_nimg = min(ema_kimg·1000, cur_nimg·rampup);
   buffers copied; rendering options and neural rendering resolution copied, *except* the density noise:
   G_ema keeps it at 0 (upstream copies it), so snapshots and image grids of the first 200 kimg render
   without the training noise — G_ema is only used for evaluation, never for the loss.

Ticks, snapshots and the run folder are described in docs/training.md.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from spherehead import camera
from spherehead.networks.registry import build_network
from torch_utils import distributed as dist
from training import resume as resume_io
from training.dataset import HeadDataset, InfiniteSampler
from training.loss import SphereHeadLoss, schedule
from training.options import TrainingOptions
from training.stop_signals import StopRequest, ignore_in_worker
from training.training_stats import Collector, StatsWriter, format_time, peak_memory_gb, tee_log

GRID_YAWS = (0.0, math.pi / 2, math.pi)   # image grids: front, side (camera on +x), back


@dataclass
class Phase:
    name: str
    module: torch.nn.Module
    opt: torch.optim.Optimizer
    interval: int


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 32-bit seed for iteration ``step`` of ``rank`` (independent streams per rank and step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    import random
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def open_dataset(opts: TrainingOptions, needs_parsing: bool) -> HeadDataset:
    """The training set, checked against what the networks need (DatasetError/ValueError, one line)."""
    ds = HeadDataset(**opts.dataset_kwargs)
    name = opts.dataset_kwargs.get("path")
    if ds.resolution != opts.G_kwargs["img_resolution"]:
        raise ValueError(f"{name}: images are {ds.resolution}x{ds.resolution}, but this config trains at "
                         f"{opts.G_kwargs['img_resolution']} px")
    if not ds.has_masks:
        raise ValueError(f"{name}: has no masks; the discriminator needs a mask channel (add masks/ to the dataset)")
    if needs_parsing and not ds.has_parsing:
        raise ValueError(f"{name}: has no parsing maps; add them or train without the parsing branch (--no-parsing)")
    return ds


def build_networks(opts: TrainingOptions, label_std: np.ndarray, device: torch.device):
    """(G, D, G_ema) with random weights from ``opts.seed``; G carries ``dataset_label_std`` (§2.3)."""
    torch.manual_seed(opts.seed)
    G = build_network({"class_name": "TriPlaneGenerator", "init_kwargs": copy.deepcopy(opts.G_kwargs)})
    D = build_network({"class_name": opts.D_class, "init_kwargs": copy.deepcopy(opts.D_kwargs)})
    G.register_buffer("dataset_label_std", torch.as_tensor(np.asarray(label_std), dtype=torch.float32))
    G.neural_rendering_resolution = opts.loss_opts.nrr_initial
    G = G.train().requires_grad_(False).to(device)
    D = D.train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval()
    G_ema.rendering = dataclasses.replace(copy.deepcopy(G.rendering), density_noise=0.0)
    return G, D, G_ema


def make_phases(G, D, opts: TrainingOptions) -> List[Phase]:
    """'Gboth' (or 'Gmain'+'Greg' when density reg is on), 'Dmain'+'Dreg' (or 'Dboth'). A lazy
    regulariser with interval k shares one Adam with lr·c and betas^c, c = k/(k+1) (§6.1)."""
    g_interval = opts.G_reg_interval if opts.loss_opts.density_reg > 0 else None
    phases = []
    for name, module, lr, interval in (("G", G, opts.G_lr, g_interval), ("D", D, opts.D_lr, opts.D_reg_interval)):
        c = 1.0 if interval is None else interval / (interval + 1)
        opt = torch.optim.Adam(module.parameters(), lr=lr * c, betas=tuple(b ** c for b in opts.betas), eps=opts.eps)
        if interval is None:
            phases.append(Phase(name + "both", module, opt, 1))
        else:
            phases += [Phase(name + "main", module, opt, 1), Phase(name + "reg", module, opt, interval)]
    return phases


def copy_matching(src: torch.nn.Module, dst: torch.nn.Module) -> Tuple[int, List[str]]:
    """Copy the parameters/buffers of ``src`` into same-named, same-shaped ones of ``dst`` (fine-tune
    start, as upstream's copy_params_and_buffers). Returns (count copied, names left as they were)."""
    src_tensors = dict(src.named_parameters()) | dict(src.named_buffers())
    skipped, copied = [], 0
    with torch.no_grad():
        for name, t in list(dst.named_parameters()) + list(dst.named_buffers()):
            s = src_tensors.get(name)
            if s is None or s.shape != t.shape:
                skipped.append(name)
                continue
            t.copy_(s.to(t.device, t.dtype))
            copied += 1
    return copied, skipped


@torch.no_grad()
def image_grid(G, n_seeds: int, device: torch.device) -> np.ndarray:
    """uint8 [n·R, 3·R, 3]: one row per seed 0..n−1 (z as gen_samples), front / side / back columns,
    conditioned on the frontal camera; const noise and a fixed ray-jitter seed, so grids compare."""
    from spherehead.generation import rng_context, seed_latents, to_uint8
    z = seed_latents(range(n_seeds), G.z_dim, device)
    radius = G.rendering.avg_camera_radius
    ws = G.mapping(z, camera.make_label(yaw=0.0, radius=radius).to(device).expand(n_seeds, -1))
    cols = []
    with rng_context(0, device):
        for yaw in GRID_YAWS:
            c = camera.make_label(yaw=yaw, radius=radius).to(device).expand(n_seeds, -1)
            cols.append(to_uint8(G.synthesis(ws, c, noise_mode="const")["image"]))   # [n, R, R, 3]
    rows = [np.concatenate([col[i] for col in cols], axis=1) for i in range(n_seeds)]
    return np.concatenate(rows, axis=0)


def training_loop(run_dir: str, opts: Optional[TrainingOptions] = None, *, device: Optional[torch.device] = None,
                  num_workers: int = 2, tensorboard: bool = True, **kwargs) -> Dict[str, Any]:
    """Train (or continue, with ``resume='latest'``) the run in ``run_dir``; every rank calls this.

    ``opts`` or the TrainingOptions fields as keyword arguments. ``device``: this rank's device
    (default: the one torch_utils.distributed.init chose). ``num_workers``: DataLoader workers per rank.
    Returns {'cur_nimg', 'cur_tick', 'batch_idx', 'snapshot'} of the end of the run.
    """
    opts = opts if opts is not None else TrainingOptions(**kwargs)
    opts.validate(dist.get_world_size())
    device = torch.device(device) if device is not None else dist.device()
    if dist.get_rank() == 0:
        os.makedirs(run_dir, exist_ok=True)
    dist.barrier()
    with tee_log(os.path.join(run_dir, "log.txt") if dist.get_rank() == 0 else None):
        trainer = Trainer(run_dir, opts, device, num_workers, tensorboard)
        try:
            return trainer.run()
        finally:
            trainer.close()


class Trainer:
    """One rank's state of a run; :meth:`run` trains until ``total_kimg`` (see the module docstring)."""

    def __init__(self, run_dir: str, opts: TrainingOptions, device: torch.device, num_workers: int,
                 tensorboard: bool):
        self.run_dir, self.opts, self.device = run_dir, opts, device
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        torch.backends.cuda.matmul.allow_tf32 = False   # TF32 off, as the reference runs (§6.1)
        torch.backends.cudnn.allow_tf32 = False
        self.dataset = open_dataset(opts, needs_parsing=opts.D_class == "HoloDiscriminator")
        self.metric_runner = self._metric_runner()   # early: a metric that cannot run stops the start
        self.G, self.D, self.G_ema = build_networks(opts, self.dataset.label_std, device)
        self.phases = make_phases(self.G, self.D, opts)
        self.optimizers = {"G": self.phases[0].opt, "D": self.phases[-1].opt}
        self.cur_nimg = self.cur_tick = self.batch_idx = 0
        self.tick_start_nimg, self.tick_sec_before = 0, 0.0   # a state written mid-tick continues its tick
        self.stop = StopRequest()
        self.fade_disabled = False
        self.train_sec_before = 0.0   # wall time of the run before this process, from the resume state
        self.start = self._resume()
        for module in (self.G, self.D, self.G_ema):
            dist.broadcast_module(module)   # every rank starts from rank 0's weights
        self.loss = SphereHeadLoss(self.G, self.D, opts.loss_opts, fade_disabled=self.fade_disabled)
        self.data = self._data_iterator(num_workers)
        self.collector = Collector()
        # Rank 0's stats sink; it drops what an interrupted process logged after the state we continue from.
        self.writer = StatsWriter(run_dir, tensorboard, log=print, start_nimg=self.cur_nimg) if self.rank == 0 else None
        self.last_snapshot: Optional[str] = None

    # ----- start: fresh, resumed state, or fine-tune weights -----
    def _resume(self) -> str:
        """'scratch', 'state' (exact continuation) or 'weights' (fine-tune start, counters at --resume-kimg)."""
        o = self.opts
        if o.resume == "latest":
            # The options first: refusing should not cost a load of the state.
            has_states = self.rank == 0 and bool(resume_io.state_files(self.run_dir))
            changed = dist.broadcast_object(
                resume_io.changed_options(self.run_dir, o.to_dict(), o.defaults()) if has_states else None)
            if changed:
                raise resume_io.ResumeError(
                    f"{os.path.join(self.run_dir, resume_io.OPTIONS_FILE)}: --resume latest continues this run "
                    f"exactly, but the command differs from the run's options in {'; '.join(changed)}. Rerun "
                    f"the run's own command, or fine-tune in a new run folder with --resume <its snapshot>.")
            state = resume_io.latest_state(self.run_dir) if self.rank == 0 else None
            path = dist.broadcast_object(state["path"] if state else None)
            if path is None:
                if o.resume_kimg > 0:
                    raise resume_io.ResumeError(
                        f"{self.run_dir}: no resume state to continue, and --resume-kimg "
                        f"{o.resume_kimg:g} only applies to a fine-tune start: give --resume PATH.")
                dist.print0(f"No resume state in {self.run_dir}: starting from scratch.")
                return "scratch"
            self._load_state(state if self.rank == 0 else resume_io.load_state(path))
            dist.print0(f"Resuming {path}: {self.cur_nimg} images shown, tick {self.cur_tick}, "
                        f"iteration {self.batch_idx}.")
            return "state"
        if o.resume:
            self._load_weights(o.resume)
            self.fade_disabled = not o.resume_blur
            # --resume-kimg: the counters (schedules, EMA ramp-up, snapshot names) go on from there (§6.2).
            self.cur_nimg = self.tick_start_nimg = int(round(o.resume_kimg * 1000))
            return "weights"
        return "scratch"

    def _train_sec_from_stats(self) -> float:
        """Training time up to ``cur_nimg`` by the per-tick times of stats.jsonl: the fallback for resume
        states written before they recorded ``train_sec``."""
        from training.training_stats import read_stats, stats_nimg
        path = os.path.join(self.run_dir, "stats.jsonl")
        if self.rank != 0 or not os.path.exists(path):
            return 0.0
        return sum(line.get("Timing/sec_per_tick", {}).get("mean", 0.0) for line in read_stats(path)
                   if stats_nimg(line) <= self.cur_nimg)

    def _load_state(self, state: Dict[str, Any]) -> None:
        for name in ("G", "D", "G_ema"):
            getattr(self, name).load_state_dict(state[name])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.cur_nimg, self.cur_tick, self.batch_idx = state["cur_nimg"], state["cur_tick"], state["batch_idx"]
        self.fade_disabled = bool(state["fade_disabled"])
        self.train_sec_before = float(state["train_sec"]) if "train_sec" in state else self._train_sec_from_stats()
        self.tick_start_nimg = state.get("tick_start_nimg", self.cur_nimg)
        self.tick_sec_before = float(state.get("tick_sec", 0.0))
        self.G.neural_rendering_resolution = self.G_ema.neural_rendering_resolution = \
            state["neural_rendering_resolution"]
        if len(state["rng"]) == self.world:
            resume_io.set_rng_state(state["rng"][self.rank])
        else:
            dist.print0(f"Note: the state was written by {len(state['rng'])} process(es), this run has "
                        f"{self.world}; the weights continue exactly, the random streams do not.")

    def _load_weights(self, path: str) -> None:
        import spherehead
        nets = spherehead.load_network(path, device=self.device)
        label_std = self.G.dataset_label_std.clone()   # the current dataset's, not the checkpoint's
        for name in ("G", "D", "G_ema"):
            src = nets.get(name) or (nets.get("G_ema") if name == "G" else None)
            if src is None:
                dist.print0(f"Fine-tune start: {path} has no {name}; it starts from random weights.")
                continue
            n, skipped = copy_matching(src, getattr(self, name))
            kept = f"; {len(skipped)} kept as initialised ({', '.join(skipped[:3])}...)" if skipped else ""
            dist.print0(f"Fine-tune start: {name} <- {path}: {n} tensors copied{kept}")
        for G in (self.G, self.G_ema):
            G.dataset_label_std.copy_(label_std)

    def _data_iterator(self, num_workers: int):
        per_rank = self.opts.batch // self.world
        sampler = InfiniteSampler(len(self.dataset), self.rank, self.world, self.opts.seed,
                                  start=self.batch_idx * per_rank)
        loader = torch.utils.data.DataLoader(self.dataset, sampler=sampler, batch_size=self.opts.batch_gpu,
                                             num_workers=num_workers, pin_memory=self.device.type == "cuda",
                                             worker_init_fn=ignore_in_worker if num_workers > 0 else None,
                                             prefetch_factor=2 if num_workers > 0 else None)
        return iter(loader)

    # ----- one iteration -----
    def _real_rounds(self) -> List[Tuple[Dict[str, torch.Tensor], torch.Tensor]]:
        """This rank's real images of the iteration, as ``batch_gpu``-sized rounds of (real dict, labels)."""
        rounds = []
        for _ in range(self.opts.batch // (self.opts.batch_gpu * self.world)):
            item = next(self.data)
            real = {"image": item["image"].to(self.device).to(torch.float32) / 127.5 - 1}   # §6.1
            if "mask" in item:
                real["mask"] = item["mask"].to(self.device).to(torch.float32) / 255
            if "parsing" in item:
                real["parsing"] = item["parsing"].to(self.device).long()
            rounds.append((real, item["label"].to(self.device)))
        return rounds

    def _step(self) -> None:
        o, dev = self.opts, self.device
        seed_everything(step_seed(o.seed, self.rank, self.batch_idx))
        self.G.neural_rendering_resolution = \
            schedule(o.loss_opts, self.cur_nimg, self.fade_disabled).neural_rendering_resolution
        rounds = self._real_rounds()
        per_rank, n_phases = o.batch // self.world, len(self.phases)
        # Latents and cameras of every phase are drawn up front, so a skipped lazy phase shifts nothing.
        gen_z = torch.randn(n_phases, per_rank, self.G.z_dim).to(dev)
        gen_c = self.dataset.sample_gen_cameras(n_phases * per_rank).view(n_phases, per_rank, -1).to(dev)
        for phase, z, c in zip(self.phases, gen_z, gen_c):
            if self.batch_idx % phase.interval != 0:
                continue
            phase.opt.zero_grad(set_to_none=True)
            phase.module.requires_grad_(True)
            for (real, real_c), z_round, c_round in zip(rounds, z.split(o.batch_gpu), c.split(o.batch_gpu)):
                self.collector.report_dict(self.loss.accumulate_gradients(
                    phase.name, real, real_c, z_round, c_round, gain=phase.interval, cur_nimg=self.cur_nimg))
            phase.module.requires_grad_(False)
            dist.all_reduce_grads(phase.module.parameters())
            phase.opt.step()
        self._update_ema()
        self.cur_nimg += o.batch
        self.batch_idx += 1

    @torch.no_grad()
    def _update_ema(self) -> None:
        ema_nimg = self.opts.ema_nimg
        if self.opts.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.cur_nimg * self.opts.ema_rampup)
        beta = 0.5 ** (self.opts.batch / max(ema_nimg, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)
        self.G_ema.neural_rendering_resolution = self.G.neural_rendering_resolution
        self.G_ema.rendering = dataclasses.replace(copy.deepcopy(self.G.rendering), density_noise=0.0)

    # ----- ticks, snapshots -----
    def run(self) -> Dict[str, Any]:
        o, total = self.opts, int(round(self.opts.total_kimg * 1000))
        if self.rank == 0:
            self._write_options()
            if self.start != "state" and o.image_snapshot_ticks:
                self._save_grid("fakes_init.png")
        if self.cur_nimg >= total:
            dist.print0(f"Nothing to do: {self.cur_nimg} images shown, --kimg is {o.total_kimg}.")
            return self._summary()
        dist.print0(f"Training for {o.total_kimg:g} kimg on {self.world} process(es), batch {o.batch} "
                    f"({o.batch_gpu} per round), starting at {self.cur_nimg} images.")
        self.start_time = time.time()
        self.tick_start_time, self.maintenance = self.start_time - self.tick_sec_before, 0.0
        self.stop.install()
        while True:
            self._step()
            done = self.cur_nimg >= total
            if done or self.cur_tick == 0 or self.cur_nimg >= self.tick_start_nimg + o.kimg_per_tick * 1000:
                self._end_tick(done)
            if done:
                return self._summary()
            if dist.any_rank(self.stop.signal_name is not None):
                return self._stop_early()

    def _stop_early(self) -> Dict[str, Any]:
        """After a stop signal (training/stop_signals.py, on any rank): a resume state of this very
        iteration, so that ``--resume latest`` loses nothing; no snapshot, grid or metrics (a scheduler's
        grace period is short), and the tick's losses so far are not logged."""
        name = next(n for n in dist.all_gather_object(self.stop.signal_name) if n)
        self._check_finite()
        path = self._save_state(mid_tick=True)
        dist.print0(f"{name}: stopped after iteration {self.batch_idx} ({self.cur_nimg / 1e3:.3f} kimg) with "
                    f"resume state {path}; rerun the same command with --resume latest to continue from there.")
        return dict(self._summary(), stopped_by=name)

    def _end_tick(self, done: bool) -> None:
        o, now = self.opts, time.time()
        stats = self.collector.gather()
        tick_sec, tick_nimg = now - self.tick_start_time, self.cur_nimg - self.tick_start_nimg
        remaining = max(o.total_kimg * 1000 - self.cur_nimg, 0) * tick_sec / max(tick_nimg, 1)
        timing = {"Progress/tick": self.cur_tick, "Progress/kimg": self.cur_nimg / 1e3,
                  "Timing/total_sec": now - self.start_time, "Timing/train_sec": self._train_sec(now),
                  "Timing/sec_per_tick": tick_sec,
                  "Timing/sec_per_kimg": tick_sec / max(tick_nimg, 1) * 1e3, "Timing/maintenance_sec": self.maintenance,
                  "Resources/peak_mem_gb": peak_memory_gb(self.device)}
        dist.print0(f"tick {self.cur_tick:<5d} kimg {self.cur_nimg / 1e3:<8.3f} time {format_time(now - self.start_time):<9s} "
                    f"sec/tick {tick_sec:<7.1f} sec/kimg {timing['Timing/sec_per_kimg']:<8.1f} "
                    f"maintenance {self.maintenance:<5.1f} mem {timing['Resources/peak_mem_gb']:<6.2f}GB "
                    f"eta {format_time(remaining)}")
        if self.rank == 0:   # before the snapshot: a state never precedes the stats of its own tick
            stats.update({k: {"num": 1, "mean": float(v), "std": 0.0} for k, v in timing.items()})
            self.writer.write(stats, self.cur_nimg)
        start = time.time()
        if self.rank == 0 and o.image_snapshot_ticks and (done or self.cur_tick % o.image_snapshot_ticks == 0):
            self._save_grid(f"fakes{self.cur_nimg // 1000:06d}.png")
        if o.snapshot_ticks and (done or self.cur_tick % o.snapshot_ticks == 0):
            self._save_snapshot()
            self._evaluate()
        self.cur_tick += 1
        self.tick_start_nimg, self.tick_start_time, self.maintenance = self.cur_nimg, time.time(), time.time() - start

    def _train_sec(self, now: float) -> float:
        """Wall time of the whole run up to ``now``, across resumes: the time of every process up to the
        state it was resumed from, plus this process's (time after a run's last state is not counted)."""
        return self.train_sec_before + now - self.start_time

    def _save_grid(self, name: str) -> None:
        from spherehead.generation import write_png
        write_png(os.path.join(self.run_dir, name), image_grid(self.G_ema, self.opts.image_grid_seeds, self.device))

    def _check_finite(self) -> None:
        """Stop, writing nothing, when the weights are no longer finite (before each snapshot or state)."""
        bad = resume_io.nonfinite_tensors({"G": self.G, "D": self.D, "G_ema": self.G_ema})
        if dist.any_rank(bool(bad)):
            states = resume_io.state_files(self.run_dir)
            raise resume_io.DivergedError(
                f"{self.run_dir}: after iteration {self.batch_idx} ({self.cur_nimg / 1e3:.3f} kimg) the weights hold "
                f"NaN or Inf ({', '.join(bad) or 'on another rank'}). Nothing was written, so the newest files are "
                f"the last good ones ({os.path.basename(states[-1]) if states else 'no resume state yet'}). The same "
                f"command would diverge again: fine-tune from a snapshot in a new run folder with changed options "
                f"(e.g. --lr-g, --lr-d, --r1-gamma) and --resume <snapshot>.")

    def _save_snapshot(self) -> None:
        """Network snapshot (safetensors, for users) and resume state, both by rank 0, both atomic."""
        import spherehead
        self._check_finite()
        if self.rank == 0:
            path = os.path.join(self.run_dir, f"network-snapshot-{self.cur_nimg // 1000:06d}.safetensors")
            spherehead.save_network(path, G_ema=self.G_ema, D=self.D, G=self.G, metadata=self._metadata())
            self.last_snapshot = path
        self._save_state(mid_tick=False)

    def _save_state(self, mid_tick: bool) -> Optional[str]:
        """The resume state (everything to continue exactly; rank 0 writes, returns its path); every
        rank first checks that the ranks still agree. At a tick's end it starts the next tick; mid-tick
        (a stop signal) it records how far the tick had got, so that the resumed tick ends where it would have."""
        digests = dist.check_consistency({"G": self.G, "D": self.D, "G_ema": self.G_ema})
        rngs = dist.all_gather_object(resume_io.rng_state())
        path = None
        if self.rank == 0:
            now = time.time()
            state = {name: {k: v.detach().cpu() for k, v in getattr(self, name).state_dict().items()}
                     for name in ("G", "D", "G_ema")}
            state.update(optimizers={k: opt.state_dict() for k, opt in self.optimizers.items()},
                         cur_nimg=self.cur_nimg, cur_tick=self.cur_tick + (0 if mid_tick else 1),
                         tick_start_nimg=self.tick_start_nimg if mid_tick else self.cur_nimg,
                         tick_sec=now - self.tick_start_time if mid_tick else 0.0,
                         batch_idx=self.batch_idx,
                         data_position=self.batch_idx * self.opts.batch, fade_disabled=self.fade_disabled,
                         neural_rendering_resolution=int(self.G.neural_rendering_resolution), rng=rngs,
                         world_size=self.world, digests=digests,
                         snapshot=os.path.basename(self.last_snapshot) if self.last_snapshot else None,
                         train_sec=self._train_sec(now), options=self.opts.to_dict())
            path = resume_io.state_path(self.run_dir, self.cur_nimg)
            resume_io.save_state(path, state)
            resume_io.prune_states(self.run_dir, self.opts.keep_resume_states)
        dist.barrier()
        return path

    def _metric_runner(self):
        """Rank 0's MetricRunner, built at the start so that a missing feature network or a dataset
        without parsing maps stops the run before the first iteration rather than at the first snapshot."""
        o = self.opts
        if not o.metrics or self.rank != 0:
            return None
        from training.metrics import MetricError, needs_generator_parsing
        from training.metrics.runner import MetricRunner
        if needs_generator_parsing(o.metrics) and not o.G_kwargs.get("parsing_flag", False):
            which = ", ".join(n for n in o.metrics if needs_generator_parsing([n]))
            raise MetricError(f"--metrics {','.join(o.metrics)}: {which} read(s) the generator's "
                              "parsing maps, and this run trains without the parsing branch")
        return MetricRunner(o.metrics, o.metrics_data or o.dataset_kwargs["path"], self.device,
                            num_gen=o.metrics_num_gen, features=o.metrics_features, seed=o.seed)

    def _evaluate(self) -> None:
        """Metrics of the snapshot just written: one line each in ``metric-<name>.jsonl`` of the run folder
        and the log, TensorBoard scalars ``Metrics/<key>`` (the time counts as the tick's maintenance, measured
        in :meth:`_end_tick`). Rank 0 computes; the other ranks wait. Metric
        sampling uses its own seeded generators and restores the global RNG, so a run with metrics trains
        exactly as one without."""
        if self.metric_runner is not None:
            from training.metrics import append_result
            for record in self.metric_runner.run(self.G_ema):
                record.update(network=os.path.basename(self.last_snapshot or ""), kimg=self.cur_nimg / 1e3)
                append_result(os.path.join(self.run_dir, f"metric-{record['metric']}.jsonl"), record)
                values = {k: v for k, v in record["results"].items() if isinstance(v, (int, float))}
                self.writer.scalars({f"Metrics/{k}": v for k, v in values.items()}, self.cur_nimg)
                print(f"metric {record['metric']} " + " ".join(f"{k} {v:.4g}" for k, v in values.items())
                      + f" ({record['seconds']:.0f} s)")
        dist.barrier()

    def _metadata(self) -> Dict[str, Any]:
        ds = self.dataset
        return {"training_options": self.opts.to_dict(), "cur_nimg": self.cur_nimg, "cur_tick": self.cur_tick,
                "batch_idx": self.batch_idx, "cfg": self.opts.cfg,
                "training_set_kwargs": dict(self.opts.dataset_kwargs, resolution=ds.resolution, use_labels=True,
                                            name=ds.name)}

    def _write_options(self) -> None:
        from spherehead.generation import write_bytes
        launch = {"world_size": self.world, "launcher": dist.get_launcher(), "device": str(self.device)}
        text = json.dumps(dict(self.opts.to_dict(), launch=launch), indent=2, sort_keys=True)
        write_bytes(os.path.join(self.run_dir, resume_io.OPTIONS_FILE), text.encode("utf-8"))

    def _summary(self) -> Dict[str, Any]:
        return {"cur_nimg": self.cur_nimg, "cur_tick": self.cur_tick, "batch_idx": self.batch_idx,
                "snapshot": self.last_snapshot, "stopped_by": None}

    def close(self) -> None:
        self.stop.restore()
        self.data = None   # stops DataLoader workers
        if self.writer is not None:
            self.writer.close()
