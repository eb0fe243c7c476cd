"""Invariants and known answers of the spherical tri-plane sampler reference (reference.md §3)."""
import math

import pytest
import torch

from torch_utils.ops.spherical_sample import (SPHERE_ROTATIONS, blend_weight, sphere_coordinates,
                                              spherical_sample)


def test_rotations_map_axes_as_documented():
    p = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(SPHERE_ROTATIONS[0] @ p, torch.tensor([3.0, 2.0, -1.0]), atol=1e-6)   # (z, y, −x)
    assert torch.allclose(SPHERE_ROTATIONS[1] @ p, torch.tensor([-3.0, -1.0, 2.0]), atol=1e-6)  # (−z, −x, y)


def _sph_world(p, sphere):
    q = 2 * torch.as_tensor(p, dtype=torch.float32)  # box_warp 1
    return sphere_coordinates(SPHERE_ROTATIONS[sphere] @ q)


def test_spherical_coordinates_world_meaning():
    # Sphere A: polar axis world x (θ′ −1 at −x), φ′ = 0 at +z, +0.5 at +y. Sphere B: polar axis y (θ′ −1 at +y).
    assert torch.allclose(_sph_world([0, 0, 0.3], 0)[:2], torch.tensor([0.0, 0.0]), atol=1e-6)
    assert torch.allclose(_sph_world([-0.3, 0, 0], 0)[0], torch.tensor(-1.0), atol=1e-6)
    assert torch.allclose(_sph_world([0, 0.3, 0], 0)[1], torch.tensor(0.5), atol=1e-6)
    assert torch.allclose(_sph_world([0, 0.3, 0], 1)[0], torch.tensor(-1.0), atol=1e-6)
    assert torch.allclose(_sph_world([0, 0, -0.3], 1)[:2], torch.tensor([0.0, 0.0]), atol=1e-6)
    assert torch.allclose(_sph_world([-0.3, 0, 0], 1)[1], torch.tensor(0.5), atol=1e-6)
    # Radius: −1 at the centre, 1 at the cube corner, 2/√3 − 1 at a face centre.
    assert torch.allclose(_sph_world([0.5, 0.5, 0.5], 0)[2], torch.tensor(1.0), atol=1e-6)
    assert torch.allclose(_sph_world([0, 0, 0.5], 0)[2], torch.tensor(2 / math.sqrt(3) - 1), atol=1e-6)
    assert torch.allclose(_sph_world([0, 0, 0], 0), torch.tensor([-1.0, 0.0, -1.0]))


def test_blend_weights_front_back_poles_and_seam():
    w = lambda p, s: float(blend_weight(_sph_world(p, s)))
    assert w([0, 0, 0.3], 0) == pytest.approx(1.0) and w([0, 0, 0.3], 1) == pytest.approx(0.0, abs=1e-6)
    assert w([0, 0, -0.3], 1) == pytest.approx(1.0) and w([0, 0, -0.3], 0) == pytest.approx(0.0, abs=1e-6)
    assert w([0.3, 0, 0], 0) == pytest.approx(0.0, abs=1e-6)  # sphere A's poles are at the ears
    assert w([0, 0.3, 0], 1) == pytest.approx(0.0, abs=1e-6)  # sphere B's poles are top/bottom
    assert w([0, 0.05, -0.3], 0) < 0.03  # near sphere A's seam (−z half-plane)


def _planes_with(sphere, plane, value, n=1, c=2, h=8, w=8):
    planes = torch.zeros(n, 2, 3, c, h, w)
    planes[:, sphere, plane] = value
    return planes


def test_each_plane_reads_its_coordinate_pair():
    # Plane values linear in the width (u) or height (v) coordinate of pixel centres: bilinear sampling
    # (align_corners=False) returns the coordinate itself in the interior.
    h = w = 64
    u = ((torch.arange(w) + 0.5) / w * 2 - 1).expand(h, w)
    v = u.t()
    planes = torch.zeros(1, 2, 3, 2, h, w)
    for k in range(3):
        planes[0, 0, k, 0], planes[0, 0, k, 1] = u, v
        planes[0, 1, k, 0], planes[0, 1, k, 1] = u, v
    pts = torch.tensor([[[0.2, 0.1, 0.15], [-0.15, -0.1, 0.1], [0.2, -0.15, -0.1]]])  # away from seams/poles
    out = spherical_sample(planes, pts)  # [1, 3, M, 2]
    sph = [_sph_world(p, s) for s in range(2) for p in pts[0]]
    sph_a, sph_b = torch.stack(sph[:3]), torch.stack(sph[3:])
    wa, wb = blend_weight(sph_a), blend_weight(sph_b)
    assert torch.cat([sph_a, sph_b]).abs().max() < 1 - 1 / w  # interior: no zero-padding at play
    expect_pairs = [(0, 1), (0, 2), (1, 2)]  # (θ′,φ′), (θ′,r′), (φ′,r′)
    for k, (i, j) in enumerate(expect_pairs):
        for ch, idx in ((0, i), (1, j)):
            expect = (sph_a[:, idx] * wa + sph_b[:, idx] * wb) / (wa + wb + 1e-8)
            assert torch.allclose(out[0, k, :, ch], expect, atol=1e-5), (k, ch)


def test_origin_gives_zero_and_mean_reduction():
    torch.manual_seed(0)
    planes = torch.randn(2, 2, 3, 4, 8, 8)
    pts = torch.randn(2, 5, 3) * 0.2
    pts[:, 0] = 0
    out = spherical_sample(planes, pts)
    assert torch.all(out[:, :, 0] == 0)  # both weights vanish at the exact origin
    assert torch.allclose(spherical_sample(planes, pts, reduce="mean"), out.mean(1))


def test_gradcheck_float64_planes_and_coords():
    torch.manual_seed(0)
    planes = torch.randn(1, 2, 3, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    pts = (torch.rand(1, 6, 3, dtype=torch.float64) - 0.5) * 0.8
    pts.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, x: spherical_sample(p, x), (planes, pts), eps=1e-6, atol=1e-5)


def test_gradients_finite_at_poles_seam_and_origin():
    planes = torch.randn(1, 2, 3, 3, 8, 8, requires_grad=True)
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, -0.3], [0.0, 0.0, 0.3]]],
                       requires_grad=True)
    spherical_sample(planes, pts).sum().backward()
    assert torch.isfinite(pts.grad).all() and torch.isfinite(planes.grad).all()


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match=r"planes must be \[N, 2, 3, C, H, W\]"):
        spherical_sample(torch.zeros(1, 3, 32, 8, 8), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="coords must be"):
        spherical_sample(torch.zeros(1, 2, 3, 4, 8, 8), torch.zeros(2, 4, 3))
