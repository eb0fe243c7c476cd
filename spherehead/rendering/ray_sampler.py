"""Pinhole ray sampler with normalised intrinsics (reference.md §4.1)."""
from __future__ import annotations

import torch


def sample_rays(cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int):
    """cam2world [N, 4, 4], intrinsics [N, 3, 3] (normalised) -> origins, unit directions [N, S², 3].

    Rays are row-major (index = row·S + col) through pixel centres u = (col + ½)/S, v = (row + ½)/S.
    Camera-space direction: x = (u − cx + cy·sk/fy − sk·v/fy)/fx, y = (v − cy)/fy, z = 1 (OpenCV).
    """
    if cam2world.ndim != 3 or cam2world.shape[1:] != (4, 4) or intrinsics.shape[1:] != (3, 3):
        raise ValueError(f"cam2world must be [N, 4, 4] and intrinsics [N, 3, 3], got "
                         f"{list(cam2world.shape)} and {list(intrinsics.shape)}")
    n, dev = cam2world.shape[0], cam2world.device
    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
    cx, cy, sk = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
    ticks = torch.arange(resolution, dtype=torch.float32, device=dev) * (1.0 / resolution) + (0.5 / resolution)
    v, u = torch.meshgrid(ticks, ticks, indexing="ij")
    u, v = u.reshape(1, -1), v.reshape(1, -1)
    x = (u - cx + cy * sk / fy - sk * v / fy) / fx
    y = (v - cy) / fy
    one = torch.ones_like(x)
    cam_points = torch.stack([x, y, one, one], dim=1)  # [N, 4, S²] homogeneous points at z = 1
    world_points = torch.bmm(cam2world.to(torch.float32), cam_points)[:, :3].transpose(1, 2)
    origins = cam2world[:, :3, 3].to(torch.float32)
    # Direction as (camera-to-world point) − origin, as upstream computes it (parity to the last bits).
    dirs = torch.nn.functional.normalize(world_points - origins[:, None, :], dim=2)
    return origins[:, None, :].expand(n, resolution * resolution, 3), dirs
