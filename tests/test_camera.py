"""The coordinate convention (reference.md §1), checked by known values and round trips."""
import math

import pytest
import torch

from spherehead import camera

HALF_PI = math.pi / 2


def _centre(pose):
    return pose[:, :3, 3]


def _project(c, point):
    """Normalised image coordinates (u right, v down) of a world point seen by labels ``c``."""
    pose, K = camera.label_to_pose(c)
    R, t = pose[:, :3, :3], pose[:, :3, 3]
    p_cam = torch.einsum("nji,nj->ni", R, torch.as_tensor(point, dtype=torch.float32) - t)  # R^T (p - t)
    uvw = torch.einsum("nij,nj->ni", K, p_cam)
    return uvw[:, :2] / uvw[:, 2:]


def test_frontal_pose_matches_reference_matrix():
    pose = camera.lookat_pose(HALF_PI, HALF_PI, radius=2.7)
    expected = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                             [0.0, -1.0, 0.0, 0.0],
                             [0.0, 0.0, -1.0, 2.7],
                             [0.0, 0.0, 0.0, 1.0]])
    assert pose.shape == (1, 4, 4) and pose.dtype == torch.float32
    torch.testing.assert_close(pose[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("h, expected", [
    (0.0, (-2.7, 0.0, 0.0)),          # -x side
    (math.pi, (2.7, 0.0, 0.0)),       # +x side
    (-HALF_PI, (0.0, 0.0, -2.7)),     # back
    (3 * HALF_PI, (0.0, 0.0, -2.7)),  # back, other way round
])
def test_lookat_sides(h, expected):
    centre = _centre(camera.lookat_pose(h, HALF_PI))[0]
    torch.testing.assert_close(centre, torch.tensor(expected), atol=1e-5, rtol=0)


def test_lookat_pitch_quirk():
    # v = pi/2 - 0.2 is an elevation of ~7.3 degrees, not 0.2 rad (§1.4).
    centre = _centre(camera.lookat_pose(HALF_PI, HALF_PI - 0.2))[0]
    assert centre[1].item() == pytest.approx(0.34377, abs=1e-4)
    assert math.degrees(math.asin(centre[1].item() / 2.7)) == pytest.approx(7.315, abs=1e-3)
    assert centre.norm().item() == pytest.approx(2.7, abs=1e-5)
    lower = _centre(camera.lookat_pose(HALF_PI, HALF_PI + 0.3))[0]
    assert lower[1].item() < 0


def test_lookat_batches_and_lookat_point():
    h = torch.tensor([0.1, 1.0, 2.5])
    pose = camera.lookat_pose(h, 1.2, radius=torch.tensor([2.5, 2.7, 3.0]), lookat=(0.0, 0.0, 0.2))
    assert pose.shape == (3, 4, 4)
    torch.testing.assert_close(_centre(pose).norm(dim=1), torch.tensor([2.5, 2.7, 3.0]))
    forward = pose[:, :3, 2]
    to_target = torch.tensor([0.0, 0.0, 0.2]) - _centre(pose)
    torch.testing.assert_close(forward, to_target / to_target.norm(dim=1, keepdim=True), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        camera.lookat_pose(torch.zeros(2), torch.zeros(3))


def test_fov_focal():
    assert camera.fov_to_focal(18.837) == pytest.approx(4.26339, abs=1e-5)
    assert camera.fov_to_focal(18) == pytest.approx(4.46517, abs=1e-5)
    assert camera.focal_to_fov(camera.fov_to_focal(18.837)) == pytest.approx(18.837, abs=1e-9)
    K = camera.intrinsics()
    torch.testing.assert_close(K, torch.tensor([[4.2647, 0, 0.5], [0, 4.2647, 0.5], [0, 0, 1.0]]))


def test_make_label_frontal_and_layout():
    c = camera.make_label()
    assert c.shape == (1, 25) and c.dtype == torch.float32
    torch.testing.assert_close(camera.label_to_pose(c)[0], camera.lookat_pose(HALF_PI, HALF_PI))
    torch.testing.assert_close(c[0, 16:], camera.intrinsics().reshape(9))
    assert c[0, 11].item() == pytest.approx(2.7, abs=1e-6)            # tz at index 11
    side = camera.make_label(yaw=HALF_PI)
    assert side[0, 3].item() == pytest.approx(2.7, abs=1e-5)          # +yaw: camera on +x side
    above = camera.make_label(pitch=0.3)
    assert above[0, 7].item() == pytest.approx(2.7 * math.sin(0.3), abs=1e-5)  # pitch is true elevation
    deg = camera.make_label(yaw=30.0, pitch=10.0, degrees=True)
    torch.testing.assert_close(deg, camera.make_label(yaw=math.radians(30), pitch=math.radians(10)))


def test_make_label_matches_upstream_mapping():
    # h = pi/2 + yaw, v = (pi/2)(1 - sin(pitch)).
    yaw, pitch = -0.7, 0.25
    pose = camera.label_to_pose(camera.make_label(yaw=yaw, pitch=pitch))[0]
    ref = camera.lookat_pose(HALF_PI + yaw, HALF_PI * (1 - math.sin(pitch)))
    torch.testing.assert_close(pose, ref)


def test_yaw_pitch_round_trip_including_back_views():
    yaws = torch.linspace(-math.pi + 0.01, math.pi, 13)
    pitches = torch.tensor([-1.2, -0.5, 0.0, 0.3, 1.2])
    yy, pp = torch.meshgrid(yaws, pitches, indexing="ij")
    c = camera.make_label(yaw=yy.reshape(-1), pitch=pp.reshape(-1), lookat=(0.0, 0.0, 0.2))
    yaw, pitch = camera.camera_yaw_pitch(c)
    wrapped = torch.remainder(yaw - yy.reshape(-1) + math.pi, 2 * math.pi) - math.pi
    assert wrapped.abs().max().item() < 1e-5
    torch.testing.assert_close(pitch, pp.reshape(-1), atol=1e-5, rtol=0)
    yaw_d, pitch_d = camera.camera_yaw_pitch(camera.make_label(yaw=-135.0, pitch=20.0, degrees=True), degrees=True)
    assert yaw_d.item() == pytest.approx(-135.0, abs=1e-3) and pitch_d.item() == pytest.approx(20.0, abs=1e-3)


def test_label_pose_round_trip():
    c = camera.make_label(yaw=torch.tensor([0.0, 1.0, -2.5]), pitch=torch.tensor([0.1, -0.2, 0.4]), focal=4.46517)
    pose, K = camera.label_to_pose(c)
    assert pose.shape == (3, 4, 4) and K.shape == (3, 3, 3)
    torch.testing.assert_close(camera.pose_to_label(pose, K), c)
    torch.testing.assert_close(camera.pose_to_label(pose, K[0]), c)
    assert K[0, 0, 0].item() == pytest.approx(4.46517, abs=1e-5)


def test_rotation_orthonormal_right_handed():
    c = camera.make_label(yaw=torch.linspace(-3.0, 3.0, 7), pitch=torch.linspace(-1.0, 1.0, 7))
    R = camera.label_to_pose(c)[0][:, :3, :3]
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3).expand(7, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(7), atol=1e-6, rtol=0)
    # No roll: the camera x axis stays horizontal.
    assert R[:, 1, 0].abs().max().item() < 1e-6


def test_camera_looks_at_lookat_point():
    lookat = torch.tensor([0.05, -0.1, 0.2])
    pose = camera.label_to_pose(camera.make_label(yaw=torch.tensor([0.4, -2.0]), pitch=0.3, lookat=lookat))[0]
    d = lookat - _centre(pose)
    torch.testing.assert_close(pose[:, :3, 2], d / d.norm(dim=1, keepdim=True), atol=1e-6, rtol=0)
    c = camera.make_label(yaw=0.4, pitch=0.3, lookat=lookat)
    torch.testing.assert_close(_project(c, lookat), torch.tensor([[0.5, 0.5]]), atol=1e-5, rtol=0)


def test_mirror_label():
    c = camera.make_label(yaw=torch.tensor([0.6, -1.1]), pitch=torch.tensor([0.2, -0.1]))
    m = camera.mirror_label(c)
    torch.testing.assert_close(camera.mirror_label(m), c)
    torch.testing.assert_close(m[:, 3], -c[:, 3])
    torch.testing.assert_close(m[:, [7, 11]], c[:, [7, 11]])
    yaw, pitch = camera.camera_yaw_pitch(m)
    torch.testing.assert_close(yaw, torch.tensor([-0.6, 1.1]))
    torch.testing.assert_close(pitch, torch.tensor([0.2, -0.1]))
    # The mirrored label is exactly the camera made at the mirrored yaw.
    torch.testing.assert_close(m, camera.make_label(yaw=torch.tensor([-0.6, 1.1]), pitch=torch.tensor([0.2, -0.1])),
                               atol=1e-6, rtol=0)


def test_projection_directions_frontal():
    c = camera.make_label()
    right = _project(c, (0.1, 0.0, 0.0))[0]
    up = _project(c, (0.0, 0.1, 0.0))[0]
    assert right[0].item() == pytest.approx(0.5 + 4.2647 * 0.1 / 2.7, abs=1e-5)
    assert right[1].item() == pytest.approx(0.5, abs=1e-6)
    assert up[1].item() < 0.5 and up[0].item() == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("bad", [torch.zeros(25), torch.zeros(2, 24), torch.zeros(1, 5, 5)])
def test_label_shape_validation(bad):
    for fn in (camera.label_to_pose, camera.camera_yaw_pitch, camera.mirror_label):
        with pytest.raises(ValueError, match=r"\[N, 25\]"):
            fn(bad)
