"""FID and KID between dataset images and generator renders, on all views or on bins of camera yaw.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to feature sets; KID
(Bińkowski et al. 2018) is the unbiased MMD² with the cubic polynomial kernel
k(x, y) = (xᵀy / D + 1)³, averaged over random subsets. Fakes are rendered at cameras drawn from the
dataset's own labels (the EG3D-family protocol), with truncation 1 and constant noise.

A *renderer* is any callable ``(cameras float [N, 25], torch.Generator) -> uint8 [N, 3, H, W]``;
:func:`generator_renderer` makes one from G, tests pass stand-ins. A *parsing renderer* returns the
generator's parsing maps, uint8 class indices [N, H, W], instead (``generator_renderer(..., output='parsing')``).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from spherehead.camera import camera_yaw_pitch
from spherehead.generation import rng_context
from training.metrics.features import FeatureNet, MetricError, extract

Renderer = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# |yaw| ranges in degrees (0 = frontal camera, 180 = behind the head); upper bounds exclusive except 180.
YAW_BINS = {"all": (0.0, 180.0), "front": (0.0, 45.0), "side": (45.0, 135.0), "back": (135.0, 180.0)}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) for means [D] and covariances [D, D]."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    assert mu1.shape == mu2.shape and sigma1.shape == sigma2.shape == (mu1.size, mu1.size)
    # tr (Σ1 Σ2)^½ = tr (Σ1^½ Σ2 Σ1^½)^½: symmetric PSD matrices only, so eigh is enough and stable
    # (no complex round-off of a general matrix square root). Tiny negative eigenvalues are round-off.
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    tr_covmean = np.sum(np.sqrt(np.clip(inner, 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def feature_stats(feats: np.ndarray):
    """(mean [D], covariance [D, D]) of features [N, D]."""
    if feats.shape[0] < 2:
        raise MetricError(f"FID needs at least 2 images per set, got {feats.shape[0]}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def kid_from_features(real: np.ndarray, fake: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000,
                      seed: int = 0) -> float:
    """Unbiased MMD² (cubic polynomial kernel) averaged over ``num_subsets`` random subsets of size
    min(len(real), len(fake), max_subset_size), drawn without replacement within a subset."""
    n, d = real.shape
    m = min(n, fake.shape[0], max_subset_size)
    if m < 2:
        raise MetricError(f"KID needs at least 2 images per set, got {min(n, fake.shape[0])}")
    rng = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = fake[rng.choice(fake.shape[0], m, replace=False)]
        y = real[rng.choice(n, m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        # Off-diagonal means of k(x,x') and k(y,y') (unbiased), minus twice the mean cross term.
        total += ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    return float(total / num_subsets)


def yaw_bin_mask(labels: torch.Tensor, name: str) -> np.ndarray:
    """bool [N]: which cameras ``labels`` [N, 25] fall in yaw bin ``name`` (see :data:`YAW_BINS`)."""
    if name not in YAW_BINS:
        raise MetricError(f"unknown yaw bin {name!r}; choose from {', '.join(YAW_BINS)}")
    lo, hi = YAW_BINS[name]
    yaw = camera_yaw_pitch(torch.as_tensor(labels, dtype=torch.float32), degrees=True)[0].abs().numpy()
    return (yaw >= lo) & ((yaw < hi) | (hi >= 180.0))


def bin_seed(seed: int, name: str) -> int:
    """The random stream of yaw bin ``name`` under metric seed ``seed``: one stream per bin, so that a bin's
    result does not depend on which other bins were asked for."""
    return seed * len(YAW_BINS) + list(YAW_BINS).index(name)


def dataset_labels(dataset) -> torch.Tensor:
    """Un-mirrored camera labels float32 [len, 25] of every item of a HeadDataset."""
    return torch.from_numpy(np.stack([dataset.get_label(i) for i in range(len(dataset))]))


def to_uint8(images: torch.Tensor, resolution: Optional[int] = None) -> torch.Tensor:
    """Generator images ≈[-1, 1] [N, 3, H, W] -> uint8, resized (antialiased) to ``resolution`` when given.

    Resizing fakes to the dataset size keeps both sets at the same scale for feature nets that do not
    resize internally; the Inception resizes to 299² either way.
    """
    images = images.float()
    if resolution is not None and images.shape[-1] != resolution:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False,
                               antialias=True)
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def generator_renderer(G, device, truncation_psi: float = 1.0, resolution: Optional[int] = None,
                       batch: int = 8, output: str = "image") -> Renderer:
    """Renderer over G: random z from the given torch.Generator, conditioned and rendered at each camera.

    ``output='parsing'`` renders the generator's own parsing map instead: uint8 class indices [N, H, W]
    (the argmax of ``image_parsing``, at the neural rendering resolution; ``resolution`` does not apply).
    The latents and ray jitter are drawn the same way for both outputs, so the same seed and cameras
    give the same heads. A generator without a parsing head is a MetricError.
    """
    device = torch.device(device)
    if output not in ("image", "parsing"):
        raise MetricError(f"unknown renderer output {output!r}; choose 'image' or 'parsing'")
    if output == "parsing" and not getattr(G, "parsing_flag", False):
        raise MetricError("this network has no parsing head, so it renders no parsing maps "
                          "(parsing-face-rate-bins and face-part-agreement need one)")

    @torch.no_grad()
    def render(cameras: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        out = []
        for c in cameras.split(batch):
            z = torch.randn([c.shape[0], G.z_dim], generator=gen)
            # The renderer jitters ray depths with torch's global RNG: seed it from `gen` so results
            # depend on the metric's seed only, without disturbing the caller's RNG.
            with rng_context(int(torch.randint(2 ** 31, (1,), generator=gen)), device):
                c = c.to(device)
                ws = G.mapping(z.to(device), c, truncation_psi=truncation_psi)
                res = G.synthesis(ws, c, noise_mode="const")
                out.append((to_uint8(res["image"], resolution) if output == "image"
                            else res["image_parsing"].argmax(dim=1).to(torch.uint8)).cpu())
        return torch.cat(out)
    return render


def real_features(dataset, feature_net: FeatureNet, batch: int = 32, max_items: Optional[int] = None):
    """(features float64 [N, D], labels float32 [N, 25]) of the dataset's images."""
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    feats, labels = [], []
    for start in range(0, n, batch):
        items = [dataset[i] for i in range(start, min(start + batch, n))]
        feats.append(extract(feature_net, torch.from_numpy(np.stack([it["image"] for it in items]))))
        labels.append(np.stack([it["label"] for it in items]))
    return np.concatenate(feats), torch.from_numpy(np.concatenate(labels))


def sample_cameras(labels: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` cameras [n, 25] drawn uniformly with replacement from ``labels`` [M, 25]."""
    if labels.shape[0] == 0:
        raise MetricError("no dataset cameras to draw from (the yaw bin is empty)")
    return labels[torch.randint(labels.shape[0], (n,), generator=gen)]


def fake_features(renderer: Renderer, cameras: torch.Tensor, feature_net: FeatureNet, seed: int = 0,
                  batch: int = 32) -> np.ndarray:
    """Features [N, D] of renders at ``cameras`` [N, 25]; latents from a torch.Generator seeded ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return np.concatenate([extract(feature_net, renderer(c, gen)) for c in cameras.split(batch)])


def fid_kid(renderer: Renderer, dataset, feature_net: FeatureNet, bins: Sequence[str] = ("all",),
            kinds: Iterable[str] = ("fid",), num_gen: int = 50000, seed: int = 0, batch: int = 32,
            max_reals: Optional[int] = None, reals=None) -> Dict[str, float]:
    """FID/KID per yaw bin: ``{'fid': ..}`` for bin 'all', ``{'fid_front': .., 'kid_back': ..}`` otherwise.

    Reals: every dataset item in the bin (its own label decides). Fakes: ``num_gen`` renders per bin at
    cameras drawn from the dataset labels of that bin. ``reals``: :func:`real_features`' result for
    this dataset and ``feature_net``, when the caller already has it (it does not change between
    generators); None computes it.
    """
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in ("fid", "kid")]
    if unknown:
        raise MetricError(f"unknown kind(s) {unknown}; choose fid and/or kid")
    real, labels = real_features(dataset, feature_net, batch, max_reals) if reals is None else reals
    results: Dict[str, float] = {}
    for name in bins:
        mask = yaw_bin_mask(labels, name)
        if mask.sum() < 2:
            raise MetricError(f"yaw bin {name!r} has {int(mask.sum())} dataset image(s); at least 2 are needed")
        gen = torch.Generator().manual_seed(bin_seed(seed, name))
        fake = fake_features(renderer, sample_cameras(labels[mask], num_gen, gen), feature_net,
                             bin_seed(seed, name), batch)
        suffix = "" if name == "all" else f"_{name}"
        for kind in kinds:
            fn = fid_from_features if kind == "fid" else kid_from_features
            results[kind + suffix] = fn(real[mask], fake)
    return results
