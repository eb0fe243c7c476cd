"""gen_samples.py end to end on a tiny network, its library function, input parsing and bad input."""
import math
import os
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from spherehead import camera
from spherehead.generation import (DEFAULT_VIEWS, PARSING_PALETTE, SAMPLE_PITCH_DEG, GenerationError, SampleOptions,
                                   generate_samples, load_generator, parse_floats, parse_grid, parse_range, png_bytes,
                                   resolve_focal, rng_context, seed_latents, to_uint8, yaw_tag)
from spherehead.networks.presets import build_preset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gen_samples  # noqa: E402  (the CLI module in the repository root)
from helpers import assert_user_error  # noqa: E402


def open_png(path):
    """PIL.Image.open, or a skip (for the tests that read PNGs back) when Pillow is not installed."""
    return pytest.importorskip("PIL.Image", reason="reading PNGs back needs Pillow").open(path)


def run(args):
    return CliRunner().invoke(gen_samples.main, args + ["--quiet", "--device", "cpu"])


# ----- parsing -----

def test_parse_range_and_lists():
    assert parse_range("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_range(" 5 ") == [5] and parse_range("2-2,0") == [2, 0]
    for bad in ["", "a", "3-1", "1-", "-1", "1,,2", "0-x", str(2 ** 32)]:
        with pytest.raises(GenerationError, match="malformed seed list"):
            parse_range(bad)
    assert parse_floats("0,-45,90.5") == [0.0, -45.0, 90.5]
    with pytest.raises(GenerationError):
        parse_floats("0,,1")
    assert parse_grid("3x2") == (3, 2)
    for bad in ["2", "0x1", "2x", "axb"]:
        with pytest.raises(GenerationError):
            parse_grid(bad)


def test_default_focal_is_the_training_focal_not_the_integer_fov():
    assert resolve_focal(None, None) == camera.FOCAL_HEAD == 4.2647
    assert resolve_focal(18.837, None) == pytest.approx(4.26339, abs=1e-5)
    assert resolve_focal(18, None) == pytest.approx(4.46517, abs=1e-5)  # upstream's effective value (§1.3)
    assert resolve_focal(None, 5.0) == 5.0
    with pytest.raises(GenerationError, match="not both"):
        resolve_focal(18.0, 4.0)


def test_png_encoder_round_trips(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    index = np.arange(35, dtype=np.uint8).reshape(5, 7) % 20
    (tmp_path / "a.png").write_bytes(png_bytes(rgb))
    (tmp_path / "b.png").write_bytes(png_bytes(index, palette=PARSING_PALETTE))
    np.testing.assert_array_equal(np.asarray(open_png(tmp_path / "a.png")), rgb)
    b = open_png(tmp_path / "b.png")
    assert b.mode == "P"
    np.testing.assert_array_equal(np.asarray(b), index)
    np.testing.assert_array_equal(np.asarray(b.convert("RGB")), PARSING_PALETTE[index])


def test_default_views_and_pitch_are_upstream_gen_samples_cameras():
    """Upstream renders h = π/2 + {0, −45, −90, −135, −180}°, v = π/2 − 0.2 (reference.md §1.5)."""
    ours = camera.make_label(torch.tensor(DEFAULT_VIEWS), SAMPLE_PITCH_DEG, degrees=True)
    h = math.pi / 2 + torch.deg2rad(torch.tensor([0.0, -45.0, -90.0, -135.0, -180.0], dtype=torch.float64))
    upstream = camera.lookat_pose(h, math.pi / 2 - 0.2)
    assert torch.allclose(ours[:, :16].reshape(-1, 4, 4), upstream, atol=1e-5)


def test_to_uint8_follows_upstream_mapping():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]).reshape(1, 1, 1, 6)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 191, 255, 255]  # x·127.5 + 128, clamped


# ----- end to end -----

def test_gen_samples_writes_what_it_promises(tmp_path, tiny_network):
    out = tmp_path / "out"
    result = run(["--network", tiny_network, "--seeds", "3,5", "--views=0,90,-135.5", "--nrr", "16",
                  "--depth", "--mask", "--parsing", "--outdir", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 32 files for 2 seed(s)" in result.output  # per seed: a strip + 3 views × 5 files
    assert len([p for p in out.rglob("*") if p.is_file()]) == 32
    for seed in ("0003", "0005"):
        strip = open_png(out / f"seed{seed}.png")
        assert strip.size == (3 * 128, 128) and strip.mode == "RGB"
        for tag in ("yaw+000", "yaw+090", "yaw-135.5"):
            image = open_png(out / f"seed{seed}" / f"image_{tag}.png")
            assert image.size == (128, 128) and image.mode == "RGB"
            depth = np.load(out / f"seed{seed}" / f"depth_{tag}.npy")
            assert depth.shape == (16, 16) and depth.dtype == np.float32
            assert 2.25 <= depth.min() and depth.max() <= 3.3 + 1e-4  # ray distances in the ray range
            assert open_png(out / f"seed{seed}" / f"depth_{tag}.png").mode == "L"
            mask = open_png(out / f"seed{seed}" / f"mask_{tag}.png")
            assert mask.size == (16, 16) and mask.mode == "L"
            parsing = open_png(out / f"seed{seed}" / f"parsing_{tag}.png")
            assert parsing.mode == "P" and np.asarray(parsing).max() < 20
    assert not [p for p in out.rglob(".*")]  # no temporary files left


@torch.no_grad()
def test_generate_samples_renders_the_seed_from_each_view(tmp_path):
    """The written front image is the uint8 of G.synthesis for RandomState(seed) latents and a yaw-0 camera
    (up to a rounding step: generate_samples computes the planes once for all views, at batch 1)."""
    G, _ = build_preset("tiny")
    G.eval()
    opts = SampleOptions(seeds=[7], views=[0.0, 180.0], pitch=10.0, neural_rendering_resolution=8, batch=2)
    generate_samples(G, str(tmp_path), opts, progress=False)
    with rng_context(7, torch.device("cpu")):
        ws = G.mapping(seed_latents([7], G.z_dim, "cpu"), camera.make_label(0.0, 0.0), truncation_psi=0.7)
        c = camera.make_label(torch.tensor([0.0, 180.0]), 10.0, degrees=True)
        expected = to_uint8(G.synthesis(ws.expand(2, -1, -1), c, 8, noise_mode="const")["image"])
    for view, tag in enumerate(["yaw+000", "yaw+180"]):
        written = np.asarray(open_png(tmp_path / "seed0007" / f"image_{tag}.png")).astype(int)
        assert np.abs(written - expected[view]).max() <= 1 and np.mean(written == expected[view]) > 0.99
    assert not np.array_equal(expected[0], expected[1])


def test_gen_samples_shapes(tmp_path, tiny_network):
    trimesh = pytest.importorskip("trimesh")
    pytest.importorskip("mcubes")
    out = tmp_path / "out"
    # Random weights put σ near 0 (never 10), so mesh at level 0.5.
    result = run(["--network", tiny_network, "--seeds", "1", "--views", "0", "--nrr", "8", "--shapes",
                  "--shape-res", "20", "--shape-level", "0.5", "--shape-format", "ply", "--shape-format", "glb",
                  "--outdir", str(out)])
    assert result.exit_code == 0, result.output
    for fmt in ("ply", "glb"):
        mesh = trimesh.load(out / "seed0001" / f"shape.{fmt}", process=False, force="mesh")
        assert len(mesh.vertices) > 0 and mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
        assert np.abs(mesh.vertices).max() <= 0.5 + 1e-5  # inside the tri-plane box, world units


def test_yaw_tags():
    assert [yaw_tag(v) for v in (0, 45, -90, 180, 22.5)] == ["yaw+000", "yaw+045", "yaw-090", "yaw+180",
                                                              "yaw+022.5"]


# ----- bad input -----

def test_missing_network(tmp_path):
    result = run(["--network", str(tmp_path / "nope.pkl"), "--outdir", str(tmp_path / "out")])
    assert_user_error(result, "no such file")
    assert not (tmp_path / "out").exists()


def test_unreadable_network(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"this is not a network")
    result = run(["--network", str(bad), "--outdir", str(tmp_path / "out")])
    assert_user_error(result, "bad.pkl")
    assert not (tmp_path / "out").exists()


def test_malformed_seeds(tmp_path, tiny_network):
    result = run(["--network", tiny_network, "--seeds", "3-1", "--outdir", str(tmp_path / "out")])
    assert_user_error(result, "malformed seed list")
    assert not (tmp_path / "out").exists()


def test_unwritable_outdir(tmp_path, tiny_network):
    (tmp_path / "file").write_text("a file, not a folder")
    result = run(["--network", tiny_network, "--outdir", str(tmp_path / "file" / "out")])
    assert_user_error(result, "cannot create this output folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_unknown_shape_format_and_fov_with_focal(tmp_path, tiny_network):
    assert_user_error(run(["--network", tiny_network, "--shapes", "--shape-format", "stl"]), "'stl' is not one of")
    assert_user_error(run(["--network", tiny_network, "--fov", "18", "--focal", "4", "--outdir", str(tmp_path)]),
                      "not both")


def test_parsing_without_parsing_head(tmp_path):
    G, _ = build_preset("tiny")
    G.toparsing, G.parsing_flag = None, False
    with pytest.raises(GenerationError, match="no parsing head"):
        generate_samples(G, str(tmp_path / "out"), SampleOptions(parsing=True), progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_extra_names_the_pip_extra(monkeypatch, tmp_path, tiny_network):
    monkeypatch.setitem(sys.modules, "trimesh", None)  # import trimesh now raises ImportError
    result = run(["--network", tiny_network, "--shapes", "--outdir", str(tmp_path / "out")])
    assert_user_error(result, 'pip install -e ".[mesh]"')
    assert not (tmp_path / "out").exists()


def test_load_generator_without_g_ema(tmp_path, monkeypatch):
    import spherehead.api as api
    monkeypatch.setattr(api, "load_network", lambda path, device: {"D": None})
    with pytest.raises(GenerationError, match="no G_ema"):
        load_generator("x.pkl", torch.device("cpu"))


def test_default_network_is_the_bundled_demo(tmp_path):
    result = run(["--seeds", "3", "--views=0,180", "--outdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "seed0003")) == ["image_yaw+000.png", "image_yaw+180.png"]
    front, back = (np.asarray(open_png(tmp_path / "seed0003" / f"image_yaw{y}.png")) for y in ("+000", "+180"))
    assert front.shape == (128, 128, 3) and front.std() > 5   # the demo's 128 px, not a flat image
    assert np.abs(front.astype(float) - back).mean() > 5      # the back view is another image
