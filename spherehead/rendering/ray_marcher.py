"""Volume rendering by the mid-point rule with softplus(σ − 1) density (reference.md §4.6)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def march(colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor, white_back: bool = False):
    """colors [N, R, K, C], densities [N, R, K, 1] (raw), depths [N, R, K, 1] sorted along K.

    Returns (rgb [N, R, C], depth [N, R, 1], weights [N, R, K−1, 1]) over the K−1 intervals:
    Δ = t_{k+1} − t_k; colour, σ and t averaged at interval mid-points; σ = softplus(σ_mid − 1);
    α = 1 − exp(−σΔ); T_k = Π_{j<k}(1 − α_j + 1e−10); w = αT. Depth = Σ w·t_mid / Σ w, NaN → +inf,
    clamped to the min/max of all ``depths`` in the batch (upstream quirk, §10 item 9).
    There is no 2x − 1 rescale here (unlike EG3D).
    """
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = F.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - 1)
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    alpha = 1 - torch.exp(-densities_mid * deltas)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], dim=-2), dim=-2)
    weights = alpha * transmittance[:, :, :-1]
    rgb = torch.sum(weights * colors_mid, dim=-2)
    weight_total = weights.sum(2)
    depth = torch.nan_to_num(torch.sum(weights * depths_mid, dim=-2) / weight_total, float("inf"))
    depth = torch.clamp(depth, torch.min(depths), torch.max(depths))
    if white_back:
        rgb = rgb + 1 - weight_total
    return rgb, depth, weights
