"""Dual spherical tri-plane sampling (reference.md §3): the pure-PyTorch reference op.

For world points p [N, M, 3] and planes [N, 2 spheres, 3 planes, C, H, W]:

1. q = (2 / box_warp) · p, then two rotated copies q_A = R_A q = (z, y, −x) and
   q_B = R_B q = (−z, −x, y) (§3.1; matrices built in float64 and cast, as upstream).
2. Per copy: r′ = 2‖q‖/√3 − 1, θ′ = 2·atan2(√(x²+y²), z)/π − 1, φ′ = atan2(y, x)/π (§3.2).
3. Planes 0, 1, 2 are sampled at (θ′, φ′), (θ′, r′), (φ′, r′) — first coordinate on the width axis —
   bilinearly with align_corners=False and zero padding (§3.4).
4. Blend: w = ½(1 + cos πθ′)·½(1 + cos πφ′); F = (F_A·w_A + F_B·w_B) / (w_A + w_B + 1e-8) (§3.3).

Output [N, 3, M, C], or [N, M, C] with ``reduce='mean'`` (the decoder's mean over planes).
Gradients flow to the planes and to the point coordinates (camera self-adaptation learns through them).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .dispatch import resolve_impl

FUSION_EPS = 1e-8


def _rot_y(beta: float) -> torch.Tensor:
    c, s = math.cos(beta), math.sin(beta)
    return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)


def _rot_z(gamma: float) -> torch.Tensor:
    c, s = math.cos(gamma), math.sin(gamma)
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)


# R_A = R_y(π/2): (x, y, z) -> (z, y, −x); R_B = R_y(−π/2)·R_z(−π/2): (x, y, z) -> (−z, −x, y).
SPHERE_ROTATIONS = torch.stack([_rot_y(math.pi / 2), _rot_y(-math.pi / 2) @ _rot_z(-math.pi / 2)]).float()


def sphere_coordinates(q: torch.Tensor) -> torch.Tensor:
    """Rotated, box-normalised points q [..., 3] -> (θ′, φ′, r′) [..., 3], each in [−1, 1].

    Grad-safe at the poles and the origin: where √(x²+y²) or ‖q‖ is 0 the forward value is the
    same as the plain formula's but the gradient is 0 instead of NaN (the blend weight is 0 there).
    """
    x, y, z = q.unbind(-1)
    rho2 = x * x + y * y
    r2 = rho2 + z * z
    on_axis = rho2 == 0
    rho = torch.sqrt(torch.where(on_axis, torch.ones_like(rho2), rho2)) * (~on_axis)
    norm = torch.sqrt(torch.where(r2 == 0, torch.ones_like(r2), r2)) * (r2 != 0)
    radius = 2 * norm / math.sqrt(3) - 1
    theta = torch.atan2(rho, torch.where(r2 == 0, torch.ones_like(z), z))
    theta = torch.where(r2 == 0, torch.zeros_like(theta), theta)  # atan2(0, 0) = 0 upstream
    phi = torch.atan2(torch.where(on_axis, torch.zeros_like(y), y), torch.where(on_axis, torch.ones_like(x), x))
    return torch.stack([2 * theta / math.pi - 1, phi / math.pi, radius], dim=-1)


def blend_weight(sph: torch.Tensor) -> torch.Tensor:
    """(θ′, φ′, r′) [..., 3] -> w [...] = ½(1 + cos πθ′)·½(1 + cos πφ′): 1 at the front of the
    sphere's equator, 0 at its poles and on its seam (§3.3)."""
    return 0.5 * (1 + torch.cos(math.pi * sph[..., 0])) * 0.5 * (1 + torch.cos(math.pi * sph[..., 1]))


def plane_grids(sph: torch.Tensor) -> torch.Tensor:
    """(θ′, φ′, r′) [N, M, 3] -> grid_sample coordinates [N, 3 planes, M, 2]: (θ′,φ′), (θ′,r′), (φ′,r′)."""
    t, p, r = sph.unbind(-1)
    return torch.stack([torch.stack([t, p], -1), torch.stack([t, r], -1), torch.stack([p, r], -1)], dim=1)


def spherical_sample(planes: torch.Tensor, coords: torch.Tensor, box_warp: float = 1.0, reduce: str = "none",
                     impl: str = "auto") -> torch.Tensor:
    """planes [N, 2, 3, C, H, W], coords [N, M, 3] (world) -> [N, 3, M, C] or, reduce='mean', [N, M, C]."""
    if planes.ndim != 6 or planes.shape[1] != 2 or planes.shape[2] != 3:
        raise ValueError(f"planes must be [N, 2, 3, C, H, W], got {list(planes.shape)}")
    if coords.ndim != 3 or coords.shape[-1] != 3 or coords.shape[0] != planes.shape[0]:
        raise ValueError(f"coords must be [N={planes.shape[0]}, M, 3], got {list(coords.shape)}")
    if reduce not in ("none", "mean"):
        raise ValueError(f"reduce must be 'none' or 'mean', got {reduce!r}")
    resolve_impl("spherical_sample", impl, planes)  # CUDA kernel: separate work item; seam is here
    return _spherical_sample_ref(planes, coords, box_warp, reduce)


def _spherical_sample_ref(planes, coords, box_warp, reduce):
    n, _, n_planes, c, h, w = planes.shape
    m = coords.shape[1]
    q = (2 / box_warp) * coords
    rot = SPHERE_ROTATIONS.to(device=coords.device, dtype=coords.dtype)
    feats, weights = [], []
    for s in range(2):
        sph = sphere_coordinates(torch.matmul(q, rot[s].t()))  # row vectors times Rᵀ = R·q
        grid = plane_grids(sph).reshape(n * n_planes, 1, m, 2).to(planes.dtype)
        out = F.grid_sample(planes[:, s].reshape(n * n_planes, c, h, w), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False).view(n, n_planes, c, m)
        weight = blend_weight(sph).to(planes.dtype)
        if reduce == "mean":
            # The blend weight is shared by the planes, so averaging the planes first is the same
            # function and keeps only [N, C, M] per sphere alive instead of [N, 3, M, C].
            feats.append(out.mean(1))
            weights.append(weight.reshape(n, 1, m))
        else:
            feats.append(out.permute(0, 1, 3, 2))
            weights.append(weight.reshape(n, 1, m, 1))
    fused = (feats[0] * weights[0] + feats[1] * weights[1]) / (weights[0] + weights[1] + FUSION_EPS)
    return fused.permute(0, 2, 1) if reduce == "mean" else fused.contiguous()
