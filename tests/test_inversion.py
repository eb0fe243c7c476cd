"""Inversion with a tiny generator on CPU: known-w targets, several views, outputs, CLI errors."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import spherehead
from spherehead import camera
from spherehead import inversion as I
from spherehead.networks.presets import build_preset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import invert  # noqa: E402  (the CLI module in the repository root)

FAST = dict(w_avg_samples=1000, mse_weight=1.0, w_reg=0.0, noise_scale=0.0, deterministic=True, delta_c=False)


@pytest.fixture(scope="module")
def tiny():
    G, _ = build_preset("tiny")
    G = G.eval().requires_grad_(False)
    w_avg, w_std = I.w_statistics(G, 1000)
    z = torch.from_numpy(np.random.RandomState(5).randn(1, G.z_dim)).float()
    w_far = G.mapping(z, camera.make_label())[:, :1]
    w_true = (w_avg + 0.25 * (w_far - w_avg)).expand(1, G.backbone.num_ws, -1).clone()  # a known w near the mean
    return G, w_avg, w_true


def render(G, ws, cams):
    with torch.no_grad():
        return G.synthesis(ws.expand(len(cams), -1, -1), cams, noise_mode="const", deterministic=True)["image"]


@pytest.fixture(scope="module")
def single_view(tiny):
    G, w_avg, w_true = tiny
    c = camera.make_label(yaw=20.0, pitch=5.0, degrees=True)
    target = render(G, w_true, c)
    opts = I.InversionOptions(steps=12, pti_steps=5, w_plus=False, lr=0.015, **FAST)
    return I.invert(G, target, c, opts, progress=False), target, c


def test_known_w_is_recovered(tiny, single_view):
    G, w_avg, w_true = tiny
    result, target, c = single_view
    start = float(I.psnr(render(G, w_avg.expand(1, G.backbone.num_ws, -1), c), target))
    stage1, final = result.metrics["stage1"]["psnr"], result.metrics["pti"]["psnr"]
    assert stage1 > start + 5 and final > stage1, (start, stage1, final)
    # A random tiny generator ignores most directions of w, so w moves toward the known one only a little.
    assert float((result.ws[:, :1] - w_true[:, :1]).norm()) < float((w_avg - w_true[:, :1]).norm())
    assert result.ws.shape == (1, G.backbone.num_ws, G.w_dim)
    assert -1 <= result.metrics["pti"]["ssim"] <= 1 and result.metrics["pti"]["lpips"] is None
    assert result.G is not G and not any(p.requires_grad for p in G.parameters())


def test_views_share_one_latent(tiny):
    G, w_avg, w_true = tiny
    cams = camera.make_label(yaw=torch.tensor([-30.0, 30.0]), pitch=0.0, degrees=True)
    targets = render(G, w_true, cams)
    opts = I.InversionOptions(steps=5, pti_steps=0, w_plus=True, lr=0.02, **FAST)
    result = I.invert(G, targets, cams, opts, progress=False)
    assert result.ws.shape == (1, G.backbone.num_ws, G.w_dim) and result.G is G
    assert result.metrics["views"] == 2 and len(result.metrics["pti"]["psnr_per_view"]) == 2
    start = I.psnr(render(G, w_avg.expand(1, G.backbone.num_ws, -1), cams), targets)
    assert (torch.tensor(result.metrics["stage1"]["psnr_per_view"]) > start + 2).all()  # both views improve


def test_invert_rejects_bad_arguments(tiny):
    G = tiny[0]
    with pytest.raises(I.GenerationError, match="images must be"):
        I.invert(G, torch.zeros(3, 64, 64))
    with pytest.raises(I.GenerationError, match="one per image"):
        I.invert(G, torch.zeros(2, 3, 64, 64), camera.make_label())
    with pytest.raises(I.GenerationError, match="unknown perceptual"):
        I.make_perceptual("vgg", "cpu")


def test_lpips_missing_is_a_clear_error():
    try:
        import lpips  # noqa: F401
        pytest.skip("lpips is installed here")
    except ImportError:
        pass
    with pytest.raises(I.GenerationError, match="needs the 'lpips' package"):
        I.make_perceptual("lpips", "cpu")


def test_perceptual_seam_and_metrics():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3).requires_grad_(False)

    def features(x, y):  # a stand-in feature network: any callable (x, y) -> [N]
        return ((conv(x) - conv(y)) ** 2).flatten(1).mean(1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(I.ssim(x, x), torch.ones(2)) and torch.isinf(I.psnr(x, x)).logical_not().all()
    assert float(I.psnr(x, x + 0.02).mean()) == pytest.approx(10 * np.log10(4 / 0.02 ** 2), rel=1e-3)
    opts = I.InversionOptions(mse_weight=0.1)
    loss, mse, perc = I._image_loss(x, -x, opts, features)
    assert perc > 0 and float(loss) == pytest.approx(0.1 * mse + perc, rel=1e-5)
    assert I.lr_schedule(0.0, opts) == 0 and I.lr_schedule(0.5, opts) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def tiny_network(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("net") / "tiny.safetensors"
    spherehead.save_network(str(path), G_ema=tiny[0])
    return str(path)


def face_photo(tmp_path):
    """A grey photo and landmark file of a template face seen from yaw 15° (test_alignment's projection)."""
    from test_alignment import synthetic_landmarks
    lm = synthetic_landmarks(15, 0, 0, centre=(160, 150), size=220, noise=0.5)
    photo = np.full((300, 320, 3), 90, np.uint8)
    for x, y in lm.astype(int):
        photo[y - 1:y + 2, x - 1:x + 2] = 230
    Image.fromarray(photo).save(tmp_path / "face.png")
    np.savetxt(tmp_path / "face.txt", lm)
    return str(tmp_path / "face.png"), str(tmp_path / "face.txt")


def run_cli(args):
    return CliRunner().invoke(invert.main, args + ["--quiet", "--device", "cpu"])


def test_cli_end_to_end(tmp_path, tiny_network):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    image, landmarks = face_photo(tmp_path)
    out = tmp_path / "out"
    r = run_cli(["--network", tiny_network, "--image", image, "--landmarks", landmarks, "--outdir", str(out),
                 "--steps", "2", "--pti-steps", "1", "--perceptual", "none", "--video-frames", "2",
                 "--mesh-res", "32", "--mesh-level", "0", "--no-delta-c"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    for name in ("view00_aligned.png", "view00_reconstruction.png", "view00_difference.png", "latent.npz",
                 "generator.safetensors", "turntable.mp4", "mesh.ply", "report.json"):
        assert name in report["files"] and (out / name).exists(), name
    assert abs(report["views"][0]["yaw_deg"] - 15) < 3 and {"alignment", "stage1", "pti"} <= set(report["seconds"])
    tuned = spherehead.load_network(str(out / "generator.safetensors"))["G_ema"]
    assert np.load(out / "latent.npz")["w"].shape == (1, tuned.backbone.num_ws, tuned.w_dim)


def test_cli_bad_inputs(tmp_path, tiny_network):
    (tmp_path / "notes.jpg").write_text("hello")
    base = ["--network", tiny_network, "--outdir", str(tmp_path / "o"), "--perceptual", "none"]
    r = run_cli(base + ["--image", str(tmp_path / "notes.jpg"), "--landmarks", str(tmp_path / "notes.jpg")])
    assert r.exit_code == 1 and "not an image" in r.output
    Image.new("RGB", (64, 64)).save(tmp_path / "blank.png")
    r = run_cli(base + ["--image", str(tmp_path / "blank.png")])   # no detector here, or no face in it
    assert r.exit_code == 1 and ("face-alignment" in r.output or "no face" in r.output), r.output
    r = run_cli(base + ["--image", str(tmp_path / "blank.png"), "--image", str(tmp_path / "blank.png"),
                        "--landmarks", str(tmp_path / "x.txt")])
    assert r.exit_code != 0 and "one --landmarks per --image" in r.output
    r = run_cli(base + ["--image", str(tmp_path / "blank.png"), "--perceptual", "lpips"])
    assert r.exit_code == 1 and ("lpips" in r.output)
