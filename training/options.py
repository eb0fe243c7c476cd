"""TrainingOptions: everything that determines the numbers of a run, as written to
training_options.json (train.py builds them from a preset and the command line, training/presets.py)."""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Dict, Optional, Tuple

from training.loss import LossOptions


@dataclass
class TrainingOptions:
    """Everything that determines the numbers of a run (written to training_options.json)."""
    dataset_kwargs: Dict[str, Any]            # HeadDataset kwargs: path, resolution, xflip, back_repeat, ...
    G_kwargs: Dict[str, Any]                  # TriPlaneGenerator kwargs
    D_class: str                              # 'MaskDualDiscriminatorV2' or 'HoloDiscriminator'
    D_kwargs: Dict[str, Any]
    loss_opts: LossOptions = field(default_factory=LossOptions)
    batch: int = 32                           # total over all ranks
    batch_gpu: int = 4                        # per rank and round
    total_kimg: float = 25000
    kimg_per_tick: float = 4
    snapshot_ticks: Optional[int] = 50        # None: no snapshots (and no resume states)
    image_snapshot_ticks: Optional[int] = 50
    G_lr: float = 0.0025
    D_lr: float = 0.002
    betas: Tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8
    G_reg_interval: Optional[int] = 4         # lazy density reg; only when loss_opts.density_reg > 0 (§6.1)
    D_reg_interval: Optional[int] = 16        # lazy R1; None: R1 in every 'Dboth' step
    ema_kimg: Optional[float] = None          # None: batch·10/32 (§6.1)
    ema_rampup: Optional[float] = 0.05
    resume: Optional[str] = None              # None | 'latest' | path of a native or upstream checkpoint
    resume_blur: bool = False                 # fine-tune from a path: keep the blur/GPC fades (§6.2)
    resume_kimg: float = 0.0                  # fine-tune from a path: the counters start here (§6.2 stage 2)
    seed: int = 0
    image_grid_seeds: int = 4
    keep_resume_states: int = 2               # newest resume states kept (network snapshots are all kept)
    cfg: str = ""                             # preset name (run folder name and metadata)
    # Metrics at each network snapshot, by rank 0 (docs/metrics.md); they do not change the training.
    metrics: Tuple[str, ...] = ()             # e.g. ('fid', 'artifact-rate')
    metrics_num_gen: int = 1000               # generated images per metric (per yaw bin for '-bins')
    metrics_features: Optional[str] = None    # FID/KID features: Inception path/URL, None (cached), 'parsing'
    metrics_data: Optional[str] = None        # dataset the metrics use; None: the training set

    def __post_init__(self):
        if isinstance(self.loss_opts, dict):
            self.loss_opts = LossOptions(**self.loss_opts)
        self.betas = tuple(float(b) for b in self.betas)
        self.metrics = tuple(self.metrics)

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @staticmethod
    def defaults() -> Dict[str, Any]:
        """The default of every option that has one, nested as in :meth:`to_dict` (loss_opts included):
        what a run whose training_options.json predates an option ran with."""
        out = {f.name: f.default for f in fields(TrainingOptions) if f.default is not MISSING}
        out["loss_opts"] = asdict(LossOptions())
        return json.loads(json.dumps(out))

    def validate(self, world_size: int) -> None:
        """One-line ValueErrors for inconsistent sizes (the CLI shows them as they are)."""
        if self.batch_gpu < 1 or self.batch % (self.batch_gpu * world_size) != 0:
            raise ValueError(f"--batch {self.batch} must be a multiple of --batch-gpu {self.batch_gpu} × "
                             f"{world_size} process(es)")
        group = self.D_kwargs.get("epilogue_kwargs", {}).get("mbstd_group_size", 4) or 1
        if self.batch_gpu % min(group, self.batch_gpu) != 0:
            raise ValueError(f"--batch-gpu {self.batch_gpu} must be a multiple of the discriminator's "
                             f"minibatch-std group size {group}")
        if self.total_kimg <= 0 or self.kimg_per_tick <= 0:
            raise ValueError("--kimg and --tick must be positive")
        if self.loss_opts.parsing_drop_prob > 0 and not self.loss_opts.parsing:
            raise ValueError(f"--parsing-drop {self.loss_opts.parsing_drop_prob:g} zeroes the discriminator's "
                             f"parsing channels, but --no-parsing leaves it none: drop one of the two")
        if self.resume_kimg < 0:
            raise ValueError(f"--resume-kimg {self.resume_kimg:g} must not be negative")
        if self.resume_kimg > 0:
            if self.resume is None:
                raise ValueError("--resume-kimg sets where a fine-tune's counters start, so it needs "
                                 "--resume PATH (the checkpoint to fine-tune from)")
            if self.resume_kimg >= self.total_kimg:
                raise ValueError(f"--resume-kimg {self.resume_kimg:g} must be below --kimg {self.total_kimg:g} "
                                 f"(--kimg is the total, counted from 0, not the kimg to add)")

    @property
    def ema_nimg(self) -> float:
        return (self.batch * 10 / 32 if self.ema_kimg is None else self.ema_kimg) * 1000
