"""The one coordinate convention of the package: poses, intrinsics and 25-value camera labels.

Everything here follows reference.md §1 (the EG3D/PanoHead/SphereHead convention):

* World frame: +y is up, the head centre is at the origin and the face looks toward +z, so the
  frontal camera sits at (0, 0, 2.7) and looks along -z.
* Extrinsics are OpenCV cam2world matrices: rotation columns are the world directions of the
  camera x (image right), y (image down) and z (viewing direction) axes; the last column is the
  camera centre.
* A label ``c`` is ``[N, 25]``: the 4x4 cam2world flattened row-major (16 values) followed by the
  3x3 intrinsics normalised by the image size (9 values, ``fx = fy = 4.2647``, ``cx = cy = 0.5``).

Two angle conventions exist:

* :func:`lookat_pose` takes the upstream sampler's ``(h, v)`` verbatim (§1.4): ``h = pi/2`` is the
  front, ``h = 0`` the -x side; ``v = pi/2`` is level and larger ``v`` is lower, but ``v`` is not
  an angle (the polar angle is ``arccos(1 - 2v/pi)``). Use it to reproduce the official scripts.
* :func:`make_label` / :func:`camera_yaw_pitch` use geometric angles of the camera centre:
  ``yaw`` is its azimuth measured from +z toward +x (0 = frontal, +pi/2 = camera on the +x side,
  which is image right in the frontal view, +-pi = back) and ``pitch`` is its elevation above the
  x-z plane (> 0 puts the camera above the head). Mapping: ``h = pi/2 + yaw`` and
  ``v = (pi/2) * (1 - sin(pitch))``.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch

FOCAL_HEAD = 4.2647     # normalised focal length of the Head/PanoHead/SphereHead labels (§1.3)
RADIUS = 2.7            # camera distance from the world origin (§1.2)
MIRROR_INDICES = (1, 2, 3, 4, 8)   # label entries negated by a horizontal flip (§1.6)

Scalar = Union[float, int, torch.Tensor]

__all__ = [
    "FOCAL_HEAD", "RADIUS", "fov_to_focal", "focal_to_fov", "intrinsics", "lookat_pose",
    "make_label", "label_to_pose", "pose_to_label", "camera_yaw_pitch", "mirror_label",
]


def fov_to_focal(fov_deg: float) -> float:
    """Normalised focal length for a *diagonal* field of view in degrees.

    Keeps the upstream helper's literal constants 3.14159 and 1.414 (§1.3), so
    ``fov_to_focal(18.837) ~= 4.26339`` and ``fov_to_focal(18) ~= 4.46517``.
    """
    return 1.0 / (math.tan(fov_deg * 3.14159 / 360.0) * 1.414)


def focal_to_fov(focal: float) -> float:
    """Inverse of :func:`fov_to_focal` (same literal constants), in degrees."""
    if focal <= 0:
        raise ValueError(f"focal must be positive, got {focal}")
    return math.atan(1.0 / (focal * 1.414)) * 360.0 / 3.14159


def intrinsics(focal: float = FOCAL_HEAD) -> torch.Tensor:
    """Normalised pinhole intrinsics ``[3, 3]`` (fx = fy = focal, cx = cy = 0.5, no skew)."""
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float32)


def _batch(*values) -> Tuple[torch.Tensor, ...]:
    """Broadcast floats / 0-d / [N] tensors to float64 tensors of one shape [N]."""
    ts = [torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in values]
    n = max(t.numel() for t in ts)
    out = []
    for t in ts:
        if t.numel() not in (1, n):
            raise ValueError(f"angle/radius batches must have one size or size 1, got {[x.numel() for x in ts]}")
        out.append(t.expand(n))
    return tuple(out)


def _lookat_batch(lookat, n: int) -> torch.Tensor:
    """Look-at point(s) as float64 ``[N, 3]`` from a 3-sequence, ``[3]`` or ``[N, 3]``."""
    p = torch.as_tensor(lookat, dtype=torch.float64)
    if p.shape == (3,):
        return p.expand(n, 3)
    if p.ndim == 2 and p.shape[1] == 3 and p.shape[0] in (1, n):
        return p.expand(n, 3)
    raise ValueError(f"lookat must have shape [3] or [N, 3], got {list(p.shape)}")


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def lookat_pose(h: Scalar, v: Scalar, radius: Scalar = RADIUS,
                lookat: Union[Sequence[float], torch.Tensor] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """The upstream look-at pose sampler without jitter (reference.md §1.4).

    Args:
        h: horizontal angle(s) in radians, float or ``[N]``; ``pi/2`` front (+z), ``0`` the -x side,
           ``pi`` the +x side, ``-pi/2`` the back.
        v: vertical parameter(s), float or ``[N]``; ``pi/2`` level, larger is lower. Clamped to
           ``[1e-5, pi - 1e-5]``; the polar angle is ``arccos(1 - 2v/pi)``.
        radius: distance of the camera centre from the *world origin* (not from ``lookat``).
        lookat: the point the camera looks at, ``[3]`` or ``[N, 3]``.
    Returns:
        cam2world ``[N, 4, 4]`` float32 (OpenCV axes, no roll).
    """
    h, v, r = _batch(h, v, radius)
    n = h.shape[0]
    v = v.clamp(1e-5, math.pi - 1e-5)
    phi = torch.arccos(1.0 - 2.0 * v / math.pi)
    origin = torch.stack([r * torch.sin(phi) * torch.cos(math.pi - h),
                          r * torch.cos(phi),
                          r * torch.sin(phi) * torch.sin(math.pi - h)], dim=-1)       # [N, 3]
    forward = _normalize(_lookat_batch(lookat, n) - origin)
    up_hint = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(n, 3)
    right = -_normalize(torch.linalg.cross(up_hint, forward))
    cam_y = _normalize(torch.linalg.cross(forward, right))
    pose = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    pose[:, :3, :3] = torch.stack([right, cam_y, forward], dim=-1)
    pose[:, :3, 3] = origin
    return pose.to(torch.float32)


def make_label(yaw: Scalar = 0.0, pitch: Scalar = 0.0, radius: Scalar = RADIUS, focal: float = FOCAL_HEAD,
               lookat: Union[Sequence[float], torch.Tensor] = (0.0, 0.0, 0.0),
               degrees: bool = False) -> torch.Tensor:
    """Camera label(s) ``[N, 25]`` from geometric yaw/pitch of the camera centre.

    ``yaw``: azimuth from +z toward +x (0 frontal, +pi/2 camera on the +x side, +-pi back).
    ``pitch``: elevation of the camera centre, > 0 above the head, in ``(-pi/2, pi/2)``.
    Both are floats or ``[N]`` tensors, in radians unless ``degrees``. The camera sits at distance
    ``radius`` from the world origin and looks at ``lookat``. Implemented through
    :func:`lookat_pose` with ``h = pi/2 + yaw`` and ``v = (pi/2)(1 - sin(pitch))``.
    """
    yaw, pitch = _batch(yaw, pitch)
    if degrees:
        yaw, pitch = torch.deg2rad(yaw), torch.deg2rad(pitch)
    h = math.pi / 2 + yaw
    v = (math.pi / 2) * (1.0 - torch.sin(pitch))
    pose = lookat_pose(h, v, radius=radius, lookat=lookat)
    return pose_to_label(pose, intrinsics(focal))


def _check_label(c: torch.Tensor) -> torch.Tensor:
    if not isinstance(c, torch.Tensor) or c.ndim != 2 or c.shape[1] != 25:
        shape = list(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
        raise ValueError(f"camera label must have shape [N, 25], got {shape}")
    return c


def label_to_pose(c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split labels ``[N, 25]`` into cam2world ``[N, 4, 4]`` and normalised intrinsics ``[N, 3, 3]``."""
    _check_label(c)
    return c[:, :16].reshape(-1, 4, 4), c[:, 16:].reshape(-1, 3, 3)


def pose_to_label(cam2world: torch.Tensor, K: torch.Tensor = None) -> torch.Tensor:
    """Labels ``[N, 25]`` (float32) from cam2world ``[N, 4, 4]`` and intrinsics ``[3, 3]`` or ``[N, 3, 3]``.

    ``K`` defaults to :func:`intrinsics` with the Head focal length.
    """
    if cam2world.ndim != 3 or cam2world.shape[1:] != (4, 4):
        raise ValueError(f"cam2world must have shape [N, 4, 4], got {list(cam2world.shape)}")
    n = cam2world.shape[0]
    K = intrinsics() if K is None else K
    K = K.to(device=cam2world.device, dtype=torch.float32)
    if K.shape == (3, 3):
        K = K.expand(n, 3, 3)
    if K.ndim != 3 or K.shape[1:] != (3, 3) or K.shape[0] not in (1, n):
        raise ValueError(f"intrinsics must have shape [3, 3] or [N, 3, 3], got {list(K.shape)}")
    K = K.expand(n, 3, 3)
    return torch.cat([cam2world.to(torch.float32).reshape(n, 16), K.reshape(n, 9)], dim=1)


def camera_yaw_pitch(c: torch.Tensor, degrees: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Geometric yaw ``[N]`` in ``(-pi, pi]`` and pitch ``[N]`` of the camera centres of labels ``[N, 25]``.

    Inverse of :func:`make_label` (same convention); depends only on the camera centre.
    """
    _check_label(c)
    t = c[:, [3, 7, 11]].to(torch.float64)
    yaw = torch.atan2(t[:, 0], t[:, 2])
    pitch = torch.atan2(t[:, 1], torch.hypot(t[:, 0], t[:, 2]))
    if degrees:
        yaw, pitch = torch.rad2deg(yaw), torch.rad2deg(pitch)
    return yaw.to(torch.float32), pitch.to(torch.float32)


def mirror_label(c: torch.Tensor) -> torch.Tensor:
    """Labels ``[N, 25]`` of the horizontally flipped images: world x -> -x (§1.6).

    Conjugating cam2world with diag(-1, 1, 1) negates r01, r02, tx, r10, r20 (entries 1, 2, 3, 4, 8);
    cx = 0.5 is unchanged by the flip.
    """
    _check_label(c)
    out = c.clone()
    out[:, list(MIRROR_INDICES)] = -out[:, list(MIRROR_INDICES)]
    return out
