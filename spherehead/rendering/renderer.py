"""Importance renderer over dual spherical tri-planes (reference.md §3–§4)."""
from __future__ import annotations

from typing import Optional

import torch

from torch_utils.ops.spherical_sample import spherical_sample
from .options import RenderingOptions
from .ray_marcher import march

CROP_MARGIN = 0.1  # σ is masked where |x| or |z| > box_warp/2 − 0.1 (§3.5); no limit in y


def ray_box_limits(origins: torch.Tensor, dirs: torch.Tensor, box_side: float):
    """Slab-method ray–cube intersection. origins, dirs [..., 3] -> t_start, t_end [..., 1];
    rays that miss get (−1, −2)."""
    shape = origins.shape[:-1]
    o, d = origins.detach().reshape(-1, 3), dirs.detach().reshape(-1, 3)
    half = box_side / 2
    inv = 1 / d
    t0, t1 = (-half - o) * inv, (half - o) * inv
    tmin, tmax = torch.minimum(t0, t1), torch.maximum(t0, t1)
    start, end = tmin.max(dim=-1).values, tmax.min(dim=-1).values
    valid = start <= end
    start, end = torch.where(valid, start, torch.full_like(start, -1.0)), torch.where(valid, end, torch.full_like(end, -2.0))
    return start.reshape(*shape, 1), end.reshape(*shape, 1)


def sample_stratified(n: int, r: int, start, end, depth_resolution: int, disparity: bool, deterministic: bool,
                      device) -> torch.Tensor:
    """Coarse depths [N, R, D, 1]: D evenly spaced bins from start to end, each jittered by U[0,1)·δ
    (δ = (end − start)/(D − 1)); ``deterministic`` drops the jitter. ``start``/``end`` are floats or
    [N, R, 1] tensors. With ``disparity`` the spacing is linear in 1/depth."""
    if disparity:
        t = torch.linspace(0, 1, depth_resolution, device=device).reshape(1, 1, -1, 1).repeat(n, r, 1, 1)
        if not deterministic:
            t = t + torch.rand_like(t) / (depth_resolution - 1)
        return 1.0 / (1.0 / start * (1.0 - t) + 1.0 / end * t)
    if isinstance(start, torch.Tensor):
        steps = (torch.arange(depth_resolution, device=device, dtype=start.dtype) / (depth_resolution - 1))
        depths = start.unsqueeze(-2) + steps.reshape(1, 1, -1, 1) * (end - start).unsqueeze(-2)
        delta = ((end - start) / (depth_resolution - 1)).unsqueeze(-2)
    else:
        depths = torch.linspace(start, end, depth_resolution, device=device).reshape(1, 1, -1, 1).repeat(n, r, 1, 1)
        delta = (end - start) / (depth_resolution - 1)
    if not deterministic:
        depths = depths + torch.rand_like(depths) * delta
    return depths


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n_samples: int, deterministic: bool,
               eps: float = 1e-5) -> torch.Tensor:
    """Inverse-CDF sampling. bins [B, K+2] edges, weights [B, K] -> [B, n_samples]; u is uniform
    random, or linspace(0, 1, n) when ``deterministic`` (fixture README)."""
    b, k = weights.shape
    weights = weights + eps
    cdf = torch.cumsum(weights / weights.sum(-1, keepdim=True), -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)
    if deterministic:
        u = torch.linspace(0, 1, n_samples, device=bins.device).expand(b, n_samples).contiguous()
    else:
        u = torch.rand(b, n_samples, device=bins.device)
    idx = torch.searchsorted(cdf, u, right=True)
    pair = torch.stack([(idx - 1).clamp_min(0), idx.clamp_max(k)], -1).view(b, 2 * n_samples)
    cdf_g = torch.gather(cdf, 1, pair).view(b, n_samples, 2)
    bins_g = torch.gather(bins, 1, pair).view(b, n_samples, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


@torch.no_grad()
def sample_importance(depths: torch.Tensor, weights: torch.Tensor, n_importance: int, deterministic: bool):
    """depths [N, R, D, 1], interval weights [N, R, D−1, 1] -> fine depths [N, R, n_importance, 1].

    Weights are smoothed (max-pool k2 s1 p1, then avg-pool k2 s1) and lifted by 0.01; bins are the
    coarse mid-points and the pdf uses the interior weights (§4.4). No gradient flows through this.
    """
    n, r, d, _ = depths.shape
    z = depths.reshape(n * r, d)
    w = weights.reshape(n * r, 1, -1).float()
    w = torch.nn.functional.avg_pool1d(torch.nn.functional.max_pool1d(w, 2, 1, padding=1), 2, 1).squeeze(1) + 0.01
    mids = 0.5 * (z[:, :-1] + z[:, 1:])
    return sample_pdf(mids, w[:, 1:-1], n_importance, deterministic).reshape(n, r, n_importance, 1)


def crop_mask(points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """points [N, M, 3] -> bool [N, M, 1], True where σ must be masked (outside |x|, |z| ≤ bw/2 − 0.1)."""
    limit = box_warp / 2 - CROP_MARGIN
    return ((points[..., 0].abs() > limit) | (points[..., 2].abs() > limit)).unsqueeze(-1)


class ImportanceRenderer(torch.nn.Module):
    """Coarse + importance volume rendering of the dual spherical tri-planes. No parameters.

    ``chunk_points``: without autograd, points are decoded in chunks of at most this many per
    batch item, so the sampler's [N, 3, M, C] intermediates stay bounded (results are identical:
    every step is point-wise). With autograd the graph keeps them anyway, so no chunking.
    """

    def __init__(self, chunk_points: int = 1 << 17):
        super().__init__()
        self.chunk_points = chunk_points

    def run_model(self, planes: torch.Tensor, decoder, coords: torch.Tensor, dirs: Optional[torch.Tensor],
                  opts: RenderingOptions) -> dict:
        """planes [N, 2, 3, C, H, W], coords [N, M, 3] -> {'rgb' [N, M, C'], 'sigma' [N, M, 1] raw}."""
        m, step = coords.shape[1], self.chunk_points
        if torch.is_grad_enabled() or not step or m <= step:
            out = decoder(spherical_sample(planes, coords, box_warp=opts.box_warp, reduce="mean"), dirs)
        else:
            parts = [decoder(spherical_sample(planes, coords[:, i:i + step], box_warp=opts.box_warp, reduce="mean"),
                             None if dirs is None else dirs[:, i:i + step]) for i in range(0, m, step)]
            out = {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}
        if opts.density_noise > 0:
            out["sigma"] = out["sigma"] + torch.randn_like(out["sigma"]) * opts.density_noise
        return out

    def _evaluate(self, planes, decoder, origins, dirs, depths, opts, crop: bool):
        n, r, k, _ = depths.shape
        points = (origins.unsqueeze(-2) + depths * dirs.unsqueeze(-2)).reshape(n, -1, 3)
        out = self.run_model(planes, decoder, points, dirs.unsqueeze(-2).expand(-1, -1, k, -1).reshape(n, -1, 3), opts)
        sigma = out["sigma"]
        if crop:
            sigma = sigma.masked_fill(crop_mask(points, opts.box_warp), -1e3)
        return out["rgb"].reshape(n, r, k, -1), sigma.reshape(n, r, k, 1)

    def forward(self, planes: torch.Tensor, decoder, origins: torch.Tensor, dirs: torch.Tensor,
                opts: RenderingOptions, deterministic: bool = False, crop: bool = True):
        """origins, dirs [N, R, 3] -> features [N, R, C'], depth [N, R, 1], Σw [N, R, 1]."""
        n, r, _ = origins.shape
        if opts.ray_start == "auto":
            start, end = ray_box_limits(origins, dirs, opts.box_warp)
            valid = end > start
            if valid.any():  # upstream quirk: misses get start = min valid start, end = max valid start
                start = torch.where(valid, start, start[valid].min())
                end = torch.where(valid, end, start[valid].max())
        else:
            start, end = float(opts.ray_start), float(opts.ray_end)
        depths = sample_stratified(n, r, start, end, opts.depth_resolution, opts.disparity_space_sampling,
                                   deterministic, origins.device)
        colors, sigmas = self._evaluate(planes, decoder, origins, dirs, depths, opts, crop)
        if opts.depth_resolution_importance > 0:
            _, _, weights = march(colors, sigmas, depths, opts.white_back)
            fine = sample_importance(depths, weights, opts.depth_resolution_importance, deterministic)
            colors_f, sigmas_f = self._evaluate(planes, decoder, origins, dirs, fine, opts, crop)
            depths = torch.cat([depths, fine], dim=-2)
            order = torch.sort(depths, dim=-2).indices
            depths = torch.gather(depths, -2, order)
            colors = torch.gather(torch.cat([colors, colors_f], -2), -2, order.expand(-1, -1, -1, colors.shape[-1]))
            sigmas = torch.gather(torch.cat([sigmas, sigmas_f], -2), -2, order)
        rgb, depth, weights = march(colors, sigmas, depths, opts.white_back)
        return rgb, depth, weights.sum(2)
