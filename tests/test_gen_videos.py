"""gen_videos.py: camera path, W interpolation, normals, chunked rendering, writers, CLI end to end, bad input."""
import math
import os
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import spherehead
from spherehead import camera
from spherehead.generation import PARSING_PALETTE, GenerationError, depth_range, rng_context
from spherehead.networks.presets import build_preset
from spherehead.rendering.ray_sampler import sample_rays
from spherehead.video import (PITCH_AMPLITUDE_DEG, PITCH_OFFSET_DEG, Mp4Writer, VideoOptions, frame_pictures,
                              interpolate_ws, iter_frames, normals_from_depth, render_video, tile, turntable_cameras,
                              turntable_path)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gen_videos  # noqa: E402  (the CLI module in the repository root)
from helpers import assert_user_error  # noqa: E402


@pytest.fixture(scope="module")
def tiny_g():
    G, _ = build_preset("tiny")
    return G.eval()


@pytest.fixture(scope="module")
def tiny_network(tmp_path_factory, tiny_g):
    path = tmp_path_factory.mktemp("net") / "tiny.safetensors"
    spherehead.save_network(str(path), G_ema=tiny_g)
    return str(path)


def run(args):
    return CliRunner().invoke(gen_videos.main, args + ["--quiet", "--device", "cpu"])


# ----- camera path -----

@pytest.mark.parametrize("loops", [1, 2])
def test_turntable_yaw_covers_two_pi_per_loop(loops):
    yaw, _ = turntable_path(48, loops=loops)
    step = 2 * math.pi * loops / 48
    assert yaw[0] == 0 and torch.allclose(yaw.diff(), torch.full((47,), step, dtype=torch.float64))
    assert float(yaw[-1] + step) == pytest.approx(2 * math.pi * loops)  # the next frame would be the first


def test_turntable_pitch_wave_amplitude():
    _, pitch = turntable_path(40, pitch=0.0, amplitude=25.0)
    assert float(pitch.max()) == pytest.approx(math.radians(25.0), abs=1e-9)  # frames 30 and 10: sin = ∓1
    assert float(pitch.min()) == pytest.approx(-math.radians(25.0), abs=1e-9)
    assert float(pitch[10]) < 0  # a quarter loop in (camera on the +x side) the camera is below, as upstream


def test_turntable_defaults_are_upstream_head_path():
    """h = π/2 + 2πt and v = π/2 − 0.05 + 0.5·sin(2πt) (reference.md §1.5, with π for 3.14)."""
    frames = 60
    yaw, pitch = turntable_path(frames)
    t = torch.arange(frames, dtype=torch.float64) / frames
    v = math.pi / 2 * (1 - torch.sin(pitch))
    assert torch.allclose(v, math.pi / 2 - 0.05 + 0.5 * torch.sin(2 * math.pi * t), atol=2e-5)
    assert PITCH_OFFSET_DEG == pytest.approx(math.degrees(math.asin(0.1 / math.pi)), abs=1e-4)
    assert PITCH_AMPLITUDE_DEG == pytest.approx(math.degrees(math.asin(1 / math.pi)), abs=1e-4)
    c = turntable_cameras(frames, radius=2.7, focal=4.2647)
    upstream = camera.lookat_pose(math.pi / 2 + 2 * math.pi * t, math.pi / 2 - 0.05 + 0.5 * torch.sin(2 * math.pi * t))
    assert torch.allclose(c[:, :16].reshape(-1, 4, 4), upstream, atol=1e-4)
    assert torch.allclose(c[:, 16:], camera.intrinsics(4.2647).reshape(1, 9))


# ----- W interpolation -----

def test_cubic_interpolation_passes_through_keyframes_and_wraps():
    keys = torch.randn(2, 4, 3, 5)  # [cells, K, num_ws, w_dim]
    t = torch.arange(4, dtype=torch.float64) / 4
    torch.testing.assert_close(interpolate_ws(keys, t), keys)
    dense = torch.linspace(0, 1, 41, dtype=torch.float64)[:-1]
    torch.testing.assert_close(interpolate_ws(keys, dense + 1), interpolate_ws(keys, dense))  # period 1
    eps = 1e-6  # continuous across the wrap: just before t = 1 is the first keyframe
    torch.testing.assert_close(interpolate_ws(keys, torch.tensor([1 - eps], dtype=torch.float64))[:, 0], keys[:, 0],
                               atol=1e-4, rtol=0)
    mid = interpolate_ws(keys, torch.tensor([0.125], dtype=torch.float64))[:, 0]
    assert not torch.allclose(mid, (keys[:, 0] + keys[:, 1]) / 2)  # cubic, not linear
    one = torch.randn(1, 1, 3, 5)
    torch.testing.assert_close(interpolate_ws(one, dense), one.expand(1, 40, 3, 5))


def test_cubic_interpolation_is_smooth():
    keys = torch.randn(1, 5, 1, 1, dtype=torch.float64)
    t = torch.linspace(0, 2, 2001, dtype=torch.float64)
    y = interpolate_ws(keys, t)[0, :, 0, 0]
    slope = y.diff() / (t[1] - t[0])
    assert slope.diff().abs().max() < 0.05 * slope.abs().max()  # C¹: no jump in slope, wrap included


# ----- normals -----

def _plane_depth(normal, offset, c, res):
    """Ray distance to the plane n·p = offset for the cameras c."""
    pose, K = camera.label_to_pose(c)
    origins, dirs = sample_rays(pose, K, res)
    n = torch.tensor(normal, dtype=torch.float32)
    depth = (offset - origins @ n) / (dirs @ n)
    return depth.reshape(len(c), 1, res, res)


@pytest.mark.parametrize("normal,yaw", [((0.0, 0.0, 1.0), 0.0), ((0.6, 0.0, 0.8), 20.0), ((0.0, 0.6, 0.8), -30.0)])
def test_normals_of_a_plane_are_constant_unit_and_face_the_camera(normal, yaw):
    c = camera.make_label(yaw, 5.0, degrees=True)
    normals = normals_from_depth(_plane_depth(normal, 0.1, c, 24), c)
    assert normals.shape == (1, 3, 24, 24)
    torch.testing.assert_close(normals.norm(dim=1), torch.ones(1, 24, 24))
    expected = camera.label_to_pose(c)[0][0, :3, :3].t() @ torch.tensor(normal)  # Rᵀ·n, camera axes
    expected = expected if expected[2] < 0 else -expected                       # toward the camera (−z)
    torch.testing.assert_close(normals, expected.view(1, 3, 1, 1).expand_as(normals), atol=1e-3, rtol=0)


def test_frame_pictures_modes():
    c = camera.make_label(0.0, 0.0)
    depth = _plane_depth((0.0, 0.0, 1.0), 0.0, c, 8)
    out = {"image_depth": depth, "image_mask": torch.ones(1, 1, 8, 8), "image": torch.zeros(1, 3, 16, 16),
           "image_parsing": torch.zeros(1, 20, 8, 8).index_fill_(1, torch.tensor([3]), 1.0)}
    normals = frame_pictures(out, "normals", c, (2.25, 3.3))
    assert (normals == [128, 128, 255]).all()  # a plane facing the camera: +z toward the viewer
    grey = frame_pictures(dict(out, image_depth=torch.full((1, 1, 8, 8), 2.7)), "depth", c, (2.2, 3.2))
    assert grey.shape == (1, 8, 8, 3) and (grey == 128).all()  # half-way from near (255) to far (0)
    assert (frame_pictures(out, "parsing", c, (0, 1)) == PARSING_PALETTE[3]).all()  # the colour of class 3
    assert frame_pictures(out, "image", c, (0, 1)).shape == (1, 16, 16, 3)
    with pytest.raises(GenerationError, match="unknown mode"):
        frame_pictures(out, "sketch", c, (0, 1))


def test_tile_is_row_major():
    cells = np.arange(6)[:, None, None, None] * np.ones((6, 2, 3, 1), np.uint8)
    grid = tile(cells, cols=3, rows=2)
    assert grid.shape == (4, 9, 1) and grid[0, ::3, 0].tolist() == [0, 1, 2] and grid[2, ::3, 0].tolist() == [3, 4, 5]


# ----- rendering -----

def test_frames_are_rendered_in_bounded_batches(tiny_g, monkeypatch):
    calls = []
    synthesis = tiny_g.synthesis

    def counting(ws, c, *args, **kwargs):
        calls.append(len(ws))
        return synthesis(ws, c, *args, **kwargs)

    monkeypatch.setattr(tiny_g, "synthesis", counting)
    opts = VideoOptions(grid=(2, 1), frames=3, batch=3, neural_rendering_resolution=8)
    key_ws = torch.randn(2, 1, tiny_g.backbone.mapping.num_ws, 512)
    with torch.no_grad():
        frames = iter_frames(tiny_g, key_ws, turntable_cameras(3), opts)
        first = next(frames)
        assert calls == [2]  # frames stream out: the first arrives before the others are rendered
        frames = [first] + list(frames)
    assert len(frames) == 3 and all(f.shape == (128, 256, 3) for f in frames)
    assert max(calls) <= 3 and sum(calls) == 6  # 3 frames × 2 cells, never more than --batch at once


def test_turntable_renders_each_cells_planes_once(tiny_g, monkeypatch):
    """One keyframe per cell: the backbones run once per cell, and the frames equal a frame-by-frame
    render without the shared scene."""
    key_ws = tiny_g.mapping(torch.randn(2, tiny_g.z_dim), camera.make_label(0.0, 0.0).expand(2, -1))[:, None]
    cams = turntable_cameras(3)
    opts = VideoOptions(grid=(2, 1), frames=3, batch=3, neural_rendering_resolution=8)
    calls = []
    planes = tiny_g.planes
    monkeypatch.setattr(tiny_g, "planes", lambda ws, **kw: (calls.append(len(ws)), planes(ws, **kw))[1])
    with torch.no_grad(), rng_context(0, torch.device("cpu")):
        frames = list(iter_frames(tiny_g, key_ws, cams, opts))
    assert calls == [2]
    monkeypatch.setattr(tiny_g, "planes", planes)
    limits = depth_range(tiny_g, tiny_g.rendering.avg_camera_radius)
    with torch.no_grad(), rng_context(0, torch.device("cpu")):
        for f, frame in enumerate(frames):
            ws, c = key_ws[:, 0], cams[f:f + 1].expand(2, -1)
            out = tiny_g.synthesis(ws, c, 8, noise_mode="const")
            expected = tile(frame_pictures(out, "image", c, limits), 2, 1)
            assert np.abs(frame.astype(int) - expected.astype(int)).max() <= 1
            assert np.mean(frame == expected) > 0.99


@pytest.mark.parametrize("suffix", [".mp4", ""])
def test_failure_mid_video_leaves_nothing(tmp_path, tiny_g, monkeypatch, suffix):
    if suffix:
        pytest.importorskip("imageio_ffmpeg")
    calls = []
    synthesis = tiny_g.synthesis

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return synthesis(*args, **kwargs)

    monkeypatch.setattr(tiny_g, "synthesis", failing)
    opts = VideoOptions(frames=6, batch=1, neural_rendering_resolution=8, mode="mask")
    with pytest.raises(RuntimeError, match="out of memory"):
        render_video(tiny_g, str(tmp_path / f"v{suffix}"), opts, progress=False)
    assert os.listdir(tmp_path) == []  # neither the output nor a temporary file


def test_missing_video_extra(monkeypatch, tmp_path, tiny_network):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(GenerationError, match=r'pip install -e "\.\[video\]"'):
        Mp4Writer(str(tmp_path / "v.mp4"), fps=30)
    assert_user_error(run(["--network", tiny_network, "--output", str(tmp_path / "v.mp4")]), '".[video]"')
    assert os.listdir(tmp_path) == []


# ----- end to end -----

def test_gen_videos_writes_an_mp4_that_reads_back(tmp_path, tiny_network):
    iio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    out = tmp_path / "videos" / "grid.mp4"
    result = run(["--network", tiny_network, "--seeds", "0-1", "--grid", "2x1", "--frames", "5", "--nrr", "8",
                  "--batch", "4", "--fps", "24", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "5 frames of 256x128 at 24 fps" in result.output
    reader = iio.get_reader(str(out))
    meta = reader.get_meta_data()
    frames = [f for f in reader]
    reader.close()
    assert meta["codec"] == "h264" and meta["fps"] == 24
    assert len(frames) == 5 and all(f.shape == (128, 256, 3) for f in frames)
    assert sorted(os.listdir(out.parent)) == ["grid.mp4"]


def test_gen_videos_png_frames_in_depth_mode(tmp_path, tiny_network):
    Image = pytest.importorskip("PIL.Image")
    out = tmp_path / "frames"
    result = run(["--network", tiny_network, "--seeds", "2", "--frames", "3", "--nrr", "12", "--mode", "depth",
                  "--output", str(out)])
    assert result.exit_code == 0, result.output
    names = sorted(os.listdir(out))
    assert names == ["frame00000.png", "frame00001.png", "frame00002.png"]
    frame = np.asarray(Image.open(out / names[0]))
    assert frame.shape == (12, 12, 3) and (frame[..., 0] == frame[..., 2]).all()  # grey, at the rendering resolution


def test_gen_videos_shapes_beside_the_video(tmp_path, tiny_network):
    pytest.importorskip("mcubes")
    pytest.importorskip("trimesh")
    out = tmp_path / "frames"
    result = run(["--network", tiny_network, "--seeds", "4", "--frames", "1", "--nrr", "8", "--mode", "mask",
                  "--shapes", "--shape-res", "16", "--shape-level", "0.5", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == ["frames", "frames-seed0004.ply"]


# ----- bad input -----

@pytest.mark.parametrize("args,text", [
    (["--mode", "sketch"], "Invalid value for '--mode'"),
    (["--seeds", "0-2", "--grid", "2x1"], "do not fill a 2x1 grid"),
    (["--seeds", "1,x"], "malformed seed list"),
    (["--grid", "2by2"], "malformed grid"),
])
def test_bad_arguments(tmp_path, tiny_network, args, text):
    result = run(["--network", tiny_network, "--frames", "1", "--nrr", "8", "--output", str(tmp_path / "v.mp4")] + args)
    assert_user_error(result, text)
    assert os.listdir(tmp_path) == []


def test_bad_outputs(tmp_path, tiny_network):
    (tmp_path / "file").write_text("x")
    assert_user_error(run(["--network", tiny_network, "--output", str(tmp_path / "v.gif")]), "unsupported output")
    assert_user_error(run(["--network", tiny_network, "--output", str(tmp_path / "file" / "v.mp4")]),
                      "cannot create this output folder")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "old.png").write_text("x")
    assert_user_error(run(["--network", tiny_network, "--output", str(tmp_path / "taken")]), "already exists")
    assert sorted(os.listdir(tmp_path)) == ["file", "taken"]


def test_missing_and_unreadable_network(tmp_path):
    assert_user_error(run(["--network", str(tmp_path / "none.safetensors"), "--output", str(tmp_path / "v.mp4")]),
                      "no such file")
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04junk")
    assert_user_error(run(["--network", str(tmp_path / "junk.pkl"), "--output", str(tmp_path / "v.mp4")]), "junk.pkl")
    assert sorted(os.listdir(tmp_path)) == ["junk.pkl"]
