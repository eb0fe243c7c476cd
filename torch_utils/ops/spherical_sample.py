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

The CUDA kernel (spherical_sample.cu, math in spherical_sample.h) fuses all of the above per point:
no [N, 3, M, C] per-sphere intermediates, and with reduce='mean' not even the fused per-plane
tensor. It takes float32/float16/bfloat16 planes (float32 arithmetic) and float32 coordinates;
anything else runs the reference under impl='auto'. Its backward returns plane and coordinate
gradients; it is once-differentiable (no double backward).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import custom_ops

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
                     impl: str = "auto", *, deterministic: Optional[bool] = None) -> torch.Tensor:
    """planes [N, 2, 3, C, H, W], coords [N, M, 3] (world) -> [N, 3, M, C] or, reduce='mean', [N, M, C].

    ``deterministic`` concerns the CUDA kernel's plane gradient only: True accumulates it with
    int64 fixed-point atomics (bitwise reproducible), False with float32 atomics (faster, last bits
    vary run to run); None follows ``torch.are_deterministic_algorithms_enabled()``. The reference
    ignores it (on CUDA, torch's grid_sample backward is itself atomic).
    """
    if planes.ndim != 6 or planes.shape[1] != 2 or planes.shape[2] != 3:
        raise ValueError(f"planes must be [N, 2, 3, C, H, W], got {list(planes.shape)}")
    if coords.ndim != 3 or coords.shape[-1] != 3 or coords.shape[0] != planes.shape[0]:
        raise ValueError(f"coords must be [N={planes.shape[0]}, M, 3], got {list(coords.shape)}")
    if reduce not in ("none", "mean"):
        raise ValueError(f"reduce must be 'none' or 'mean', got {reduce!r}")
    if _use_cuda(impl, planes, coords):
        if deterministic is None:
            deterministic = torch.are_deterministic_algorithms_enabled()
        return _SphericalSampleCuda.apply(planes, coords, float(box_warp), reduce == "mean", bool(deterministic))
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


# ----------------------------------------------------------------------------- CUDA path

_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _use_cuda(impl: str, planes: torch.Tensor, coords: torch.Tensor) -> bool:
    def problem():
        if planes.dtype not in _CUDA_DTYPES:
            return f"planes of dtype {planes.dtype} (it takes float32, float16 or bfloat16)"
        if coords.device != planes.device or not coords.is_floating_point():
            return f"coords of dtype {coords.dtype} on {coords.device} (needs floating point on {planes.device})"
        return None
    return _KERNEL.wanted(impl, planes, problem)


def _rotation_entries() -> list:
    """The float32 rotation matrices as 18 Python floats (exact), row-major, sphere A then B."""
    return [float(v) for v in SPHERE_ROTATIONS.reshape(-1).tolist()]


def _float32_scale(box_warp: float) -> float:
    """2 / box_warp rounded to float32, as the reference's scalar multiply of a float32 tensor uses it."""
    return float(torch.tensor(2.0 / box_warp, dtype=torch.float32))


class _SphericalSampleCuda(torch.autograd.Function):
    """The fused kernel; gradients to planes and coords (float32 coords inside, cast back)."""

    @staticmethod
    def forward(ctx, planes, coords, box_warp, mean, deterministic):
        planes_c = planes.contiguous()
        coords_c = coords.to(torch.float32).contiguous()
        rot, scale = _rotation_entries(), _float32_scale(box_warp)
        out = _KERNEL.module.forward(planes_c, coords_c, rot, scale, mean)
        ctx.save_for_backward(planes_c, coords_c)
        ctx.args = (rot, scale, mean, deterministic, coords.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        planes, coords = ctx.saved_tensors
        rot, scale, mean, deterministic, coords_dtype = ctx.args
        need_planes, need_coords = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_planes or need_coords):
            return None, None, None, None, None
        grad_planes, grad_coords = _KERNEL.module.backward(
            grad_out.to(planes.dtype).contiguous(), planes, coords, rot, scale, mean, need_planes, need_coords,
            deterministic)
        if grad_coords is not None:
            grad_coords = grad_coords.to(coords_dtype)
        return grad_planes, grad_coords, None, None, None


def self_check(candidate: Callable, device: torch.device) -> Optional[str]:
    """Compare ``candidate(planes, coords, box_warp, reduce, deterministic)`` with the reference on tiny
    inputs on ``device``: forward and gradients, both reductions, both accumulation modes. None when
    they agree. Points include the origin, a seam, points outside the box and odd sizes; exact world-axis
    points are left to the tests (their coordinate gradients hinge on 1-ulp differences, see there).
    """
    with custom_ops.autograd_enabled():
        gen = torch.Generator().manual_seed(1234)
        planes = torch.randn(2, 2, 3, 5, 6, 10, generator=gen)
        coords = (torch.rand(2, 23, 3, generator=gen) - 0.5) * 1.3  # partly outside the box
        coords[0, :3] = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, -0.3], [-0.2, 0.15, 0.05]])
        planes, coords = planes.to(device), coords.to(device)
        # float32 both ways: the same operations up to atan2/cos rounding; 1e-4 leaves room for that
        # and for atomic summation order, and is far below any indexing or formula error (O(0.1-1)).
        for reduce, box_warp, det in (("none", 1.0, False), ("mean", 1.3, False), ("none", 0.9, True)):
            problem = custom_ops.compare_with_reference(
                lambda p, c: candidate(p, c, box_warp, reduce, det),
                lambda p, c: _spherical_sample_ref(p, c, box_warp, reduce),
                [planes, coords], atol=1e-4, rtol=1e-4)
            if problem:
                return f"reduce={reduce}, box_warp={box_warp}, deterministic={det}: {problem}"
    return None


_KERNEL = custom_ops.op_kernel(
    "spherical_sample", self_check,
    lambda p, c, bw, red, det: _SphericalSampleCuda.apply(p, c, bw, red == "mean", det))
