"""Alignment: image loading (modes, EXIF, bad files), landmark files, pose fit against a known camera, crop."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from spherehead import alignment as A
from spherehead import camera


def synthetic_landmarks(yaw_deg, pitch_deg, roll_deg, centre=(210.0, 170.0), size=260.0, noise=1.0, seed=0):
    """Project the template with a known camera (look-at pose, then an in-plane roll) into a photo."""
    r = math.radians(roll_deg)
    roll = torch.tensor([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1.0]],
                        dtype=torch.float64)
    pose, _ = camera.label_to_pose(camera.make_label(yaw=yaw_deg, pitch=pitch_deg, degrees=True).double())
    w2c = roll @ pose[0, :3, :3].T
    lm = A.project(torch.as_tensor(A.TEMPLATE_68), w2c, torch.tensor(centre, dtype=torch.float64),
                   torch.tensor(size, dtype=torch.float64)).numpy()
    return lm + np.random.RandomState(seed).randn(*lm.shape) * noise


@pytest.mark.parametrize("yaw,pitch,roll", [(0, 0, 0), (20, -10, 5), (-50, 15, -10), (70, 5, 3)])
def test_pose_recovery_68_points(yaw, pitch, roll):
    # 1 px landmark noise on a 260 px crop: measured errors are ≤ 1.1° (see docs/inversion.md).
    fit = A.fit_pose(synthetic_landmarks(yaw, pitch, roll))
    assert abs(math.degrees(fit.yaw) - yaw) < 2.0
    assert abs(math.degrees(fit.pitch) - pitch) < 2.0
    assert abs(math.degrees(fit.roll) - roll) < 1.0
    assert np.allclose(fit.centre, (210, 170), atol=3) and abs(fit.size / 260 - 1) < 0.02
    assert fit.rms_px < 2.0


def test_pose_recovery_5_points():
    fit = A.fit_pose(A.landmarks_to_5(synthetic_landmarks(-50, 15, -10)))
    # 5 points leave depth cues weak: a few degrees, and the size to ~5 %.
    assert abs(math.degrees(fit.yaw) + 50) < 4 and abs(math.degrees(fit.pitch) - 15) < 4
    assert abs(fit.size / 260 - 1) < 0.05


def test_label_and_crop_follow_the_training_rule():
    lm = synthetic_landmarks(25, 8, 12, noise=0.0) - 0.5       # landmark convention: pixel centres at integers
    photo = np.full((360, 420, 3), 40, np.uint8)
    cx, cy = 210, 170                                           # the head centre: a white dot there
    photo[cy - 3:cy + 3, cx - 3:cx + 3] = 255
    crop, label, fit = A.align_photo(photo, lm, 64)
    yaw, pitch = camera.camera_yaw_pitch(label, degrees=True)
    assert abs(float(yaw) - 25) < 0.1 and abs(float(pitch) - 8) < 0.1
    assert torch.allclose(label[0, 16:], camera.intrinsics().reshape(-1))
    assert abs(float(label[0, [3, 7, 11]].norm()) - camera.RADIUS) < 1e-4
    ys, xs = np.nonzero(crop[..., 0] > 150)                     # head centre lands on the crop centre
    assert abs(xs.mean() + 0.5 - 32) < 1 and abs(ys.mean() + 0.5 - 32) < 1
    # In the crop, the landmarks sit where the label's camera projects the template (roll undone).
    pose, K = camera.label_to_pose(label.double())
    X = torch.as_tensor(A.TEMPLATE_68)
    p = (X - pose[0, :3, 3]) @ pose[0, :3, :3]
    uv = (p[:, :2] / p[:, 2:] * K[0, 0, 0] + 0.5) * 64
    assert np.abs(fit.to_crop(lm + 0.5, 64) - uv.numpy()).max() < 0.05


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK"])
def test_load_image_modes(tmp_path, mode):
    rgb = Image.new("RGB", (6, 4), (200, 100, 50))
    if mode == "I;16":
        im = Image.fromarray(np.full((4, 6), 51400, np.uint16))   # 51400 / 257 = 200
    elif mode == "LA":
        im = Image.new("LA", (6, 4), (100, 0))                     # fully transparent: white
    elif mode == "RGBA":
        im = Image.new("RGBA", (6, 4), (200, 100, 50, 255))
    else:
        im = rgb.convert(mode)
    path = str(tmp_path / ("x.tif" if mode in ("I;16", "CMYK") else "x.png"))
    im.save(path)
    out = A.load_image(path)
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    expected = {"I;16": (200, 200, 200), "LA": (255, 255, 255)}.get(mode)
    if expected:
        assert tuple(out[0, 0]) == expected
    if mode in ("RGBA", "P"):
        assert np.abs(out[0, 0].astype(int) - (200, 100, 50)).max() <= 8   # P: web-palette quantisation


def test_load_image_applies_exif_rotation(tmp_path):
    im = Image.new("RGB", (6, 4), (0, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6                                            # "rotate 90° clockwise to display"
    im.save(tmp_path / "r.jpg", exif=exif)
    assert A.load_image(str(tmp_path / "r.jpg")).shape == (6, 4, 3)


def test_bad_inputs(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(A.AlignmentError, match="not an image"):
        A.load_image(str(tmp_path / "notes.jpg"))
    good = tmp_path / "t.png"
    Image.new("RGB", (64, 64)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(A.AlignmentError, match="unreadable|not an image"):
        A.load_image(str(tmp_path / "cut.png"))
    with pytest.raises(A.AlignmentError, match="no such file"):
        A.load_image(str(tmp_path / "missing.png"))
    with pytest.raises(A.AlignmentError, match="no face"):
        A.choose_face([], None)
    faces = [np.zeros((68, 2)), np.ones((68, 2))]
    with pytest.raises(A.AlignmentError, match="2 faces found; choose one with --face-index"):
        A.choose_face(faces, None)
    assert A.choose_face(faces, 1) is faces[1]
    with pytest.raises(A.AlignmentError, match="out of range"):
        A.choose_face(faces, 2)
    small = synthetic_landmarks(0, 0, 0, size=60)
    with pytest.raises(A.AlignmentError, match="face too small"):
        A.align_photo(np.zeros((360, 420, 3), np.uint8), small, 64)


def test_detector_missing_is_a_clear_error():
    try:
        import face_alignment  # noqa: F401
        pytest.skip("face-alignment is installed here")
    except ImportError:
        pass
    with pytest.raises(A.AlignmentError, match="face-alignment"):
        A.detect_landmarks(np.zeros((64, 64, 3), np.uint8))


def test_landmark_files(tmp_path):
    lm = synthetic_landmarks(0, 0, 0)
    np.savetxt(tmp_path / "a.txt", lm)
    np.save(tmp_path / "a.npy", lm)
    (tmp_path / "a.json").write_text(json.dumps(A.landmarks_to_5(lm).tolist()))
    assert np.allclose(A.read_landmarks(str(tmp_path / "a.txt")), lm)
    assert np.allclose(A.read_landmarks(str(tmp_path / "a.npy")), lm)
    assert A.read_landmarks(str(tmp_path / "a.json")).shape == (5, 2)
    np.savetxt(tmp_path / "b.txt", lm[:10])
    with pytest.raises(A.AlignmentError, match="expected 68 or 5"):
        A.read_landmarks(str(tmp_path / "b.txt"))
    (tmp_path / "c.txt").write_text("a b\nc d\n")
    with pytest.raises(A.AlignmentError, match="unreadable landmark file"):
        A.read_landmarks(str(tmp_path / "c.txt"))
