"""Generator configurations, conditioning, gradients and upstream-format round trips."""
import copy

import pytest
import torch

import spherehead
from spherehead import camera
from spherehead.legacy_writer import write_upstream_snapshot
from spherehead.networks.generator import TriPlaneGenerator
from spherehead.networks.presets import generator_kwargs
from spherehead.networks.registry import network_spec

NRR = 8  # neural rendering resolution for fast tests


def tiny_kwargs(img_resolution=128, **rendering):
    return generator_kwargs(img_resolution=img_resolution, channel_base=256, channel_max=16, triplane_size=16,
                            depth_resolution=4, sr_num_fp16_res=0, **rendering)


def make_g(img_resolution=128, parsing=True, seed=0, **rendering):
    torch.manual_seed(seed)
    kw = tiny_kwargs(img_resolution, **rendering)
    kw["parsing_flag"] = parsing
    G = TriPlaneGenerator(**kw)
    with torch.no_grad():  # non-zero noise strengths and biases so every path matters
        for name, p in G.named_parameters():
            if p.ndim <= 1:
                p.add_(torch.randn_like(p) * 0.1)
        G.backbone.mapping.w_avg.normal_()
    return G.eval()


def _inputs(n=2):
    torch.manual_seed(1)
    c = torch.cat([camera.make_label(yaw=0.3, pitch=0.1), camera.make_label(yaw=-2.5, pitch=-0.2)])[:n]
    return torch.randn(n, 512), c


def _render(G, **kw):
    z, c = _inputs()
    with torch.no_grad():
        return G(z, c, truncation_psi=0.7, neural_rendering_resolution=NRR, deterministic=True, **kw)


VARIANTS = {
    "default": {},
    "no-background": dict(use_background=False),
    "no-torgb": dict(use_torgb_raw=False),
    "auto-range": dict(ray_start="auto", ray_end="auto"),
    "sigmoid": dict(decoder_activation="sigmoid"),
    "lrelu": dict(decoder_activation="lrelu"),
    "cond-zero": dict(c_gen_conditioning_zero=True),
    "white-back": dict(white_back=True),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_upstream_round_trip(name, tmp_path):
    G = make_g(**VARIANTS[name])
    path = tmp_path / "snap.pkl"
    write_upstream_snapshot(path, {"G_ema": G}, {"G_ema": network_spec(G)})
    G2 = spherehead.load_network(path)["G_ema"]
    assert G2.rendering == G.rendering
    a, b = _render(G), _render(G2)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.isfinite(a["image"]).all() and a["image"].abs().max() > 0


@pytest.mark.parametrize("res,sr", [(128, "SuperresolutionHybrid2X"), (256, "SuperresolutionHybrid4X"),
                                    (512, "SuperresolutionHybrid8XDC")])
def test_resolutions_pick_superresolution(res, sr):
    G = make_g(img_resolution=res)
    assert G.superresolution.variant == sr
    out = _render(G)
    assert out["image"].shape == (2, 3, res, res)
    assert out["image_raw"].shape == (2, 3, NRR, NRR) and out["image_parsing"].shape == (2, 20, NRR, NRR)
    assert torch.allclose(out["image_parsing"].sum(1), torch.ones(2, NRR, NRR), atol=1e-5)


def test_optional_heads_and_buffer_names():
    G = make_g(parsing=False, use_background=False, use_torgb_raw=False)
    keys = G.state_dict().keys()
    assert not any(k.startswith(("toparsing.", "bcg_synthesis.", "torgb.")) for k in keys)
    out = _render(G)
    assert "image_parsing" not in out
    # Without torgb the raw image is the first three feature channels (composited features).
    assert out["image_raw"].shape[1] == 3


def test_without_background_mask_relation():
    out = _render(make_g(use_background=False))
    assert out["image_mask"].min() >= -0.001 - 1e-6 and out["image_mask"].max() <= 1.001 + 1e-6
    assert torch.all((out["image_depth"] >= 2.25 - 1e-5) & (out["image_depth"] <= 3.3 + 0.1))


def test_conditioning_zero_and_missing_c_scale_ignore_camera():
    z, c = _inputs()
    c_other = camera.make_label(yaw=1.0).expand(2, -1)
    for kw in (dict(c_gen_conditioning_zero=True), {}):
        G = make_g(**kw)
        if not kw:  # upstream: a missing c_scale key means 0
            rk = G.rendering.to_kwargs()
            rk.pop("c_scale")
            G.rendering_kwargs = rk
            assert G.rendering.c_scale == 0
        with torch.no_grad():
            assert torch.equal(G.mapping(z, c), G.mapping(z, c_other))
    G = make_g()
    with torch.no_grad():
        assert not torch.allclose(G.mapping(z, c), G.mapping(z, c_other))


def test_apply_delta_c_moves_only_camera_centre():
    G = make_g()
    z, c = _inputs()
    with torch.no_grad():
        c2, dc = G.apply_delta_c(z, c)
    assert dc.shape == (2, 3)
    assert torch.equal(c2[:, [3, 7, 11]] - c[:, [3, 7, 11]], dc) or torch.allclose(c2[:, [3, 7, 11]] - c[:, [3, 7, 11]], dc)
    keep = [i for i in range(25) if i not in (3, 7, 11)]
    assert torch.equal(c2[:, keep], c[:, keep])
    G0 = make_g(c_gen_conditioning_zero=True)
    with torch.no_grad():
        c0, dc0 = G0.apply_delta_c(z, c)
    assert torch.equal(c0[:, [3, 7, 11]], dc0) and torch.count_nonzero(c0[:, keep]) == 0  # starts from zeros


def test_truncation_psi_and_cutoff():
    G = make_g()
    z, c = _inputs()
    with torch.no_grad():
        full = G.mapping(z, c)
        w_avg = G.backbone.mapping.w_avg
        assert torch.allclose(G.mapping(z, c, truncation_psi=0), w_avg.expand_as(full))
        cut = G.mapping(z, c, truncation_psi=0, truncation_cutoff=3)
    assert torch.allclose(cut[:, :3], w_avg.expand(2, 3, -1)) and torch.equal(cut[:, 3:], full[:, 3:])


def test_deterministic_and_random_sampling():
    G = make_g()
    z, c = _inputs()
    with torch.no_grad():
        ws = G.mapping(z, c)
        a = G.synthesis(ws, c, neural_rendering_resolution=NRR, deterministic=True)
        b = G.synthesis(ws, c, neural_rendering_resolution=NRR, deterministic=True)
        torch.manual_seed(5)
        r1 = G.synthesis(ws, c, neural_rendering_resolution=NRR)
        torch.manual_seed(6)
        r2 = G.synthesis(ws, c, neural_rendering_resolution=NRR)
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(r1["image_depth"], r2["image_depth"])
    assert G.neural_rendering_resolution == 64  # the argument never changes the attribute


def test_live_rendering_kwargs_update_options():
    G = make_g()
    G.rendering_kwargs["ray_start"] = 2.35
    assert G.rendering.ray_start == 2.35 and G.rendering_kwargs["ray_start"] == 2.35
    with pytest.raises(ValueError, match="ray_end"):
        G.rendering_kwargs["ray_start"] = 4.0


def test_gradients_reach_every_generator_parameter():
    G = make_g().train().requires_grad_(True)
    z, c = _inputs()
    out = G(z, c, neural_rendering_resolution=NRR, noise_mode="const")
    loss = sum((v * torch.randn_like(v)).sum() for v in out.values())
    loss.backward()
    unused = {n for n, _ in G.named_parameters() if n.startswith("superresolution.") and n.endswith("noise_strength")}
    for name, p in G.named_parameters():
        if name in unused:  # SR noise mode is 'none' in the released config
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Camera self-adaptation learns only through the sample coordinates.
    assert G.t_mapping.fc1.weight.grad.abs().sum() > 0


def test_sample_mixed_has_no_crop():
    G = make_g()
    z, c = _inputs()
    pts = torch.tensor([[[0.45, 0.0, 0.0], [0.0, 0.0, 0.0]]]).expand(2, -1, -1)
    with torch.no_grad():
        out = G.sample(pts, torch.zeros_like(pts), z, c)
    assert out["sigma"].shape == (2, 2, 1) and out["rgb"].shape == (2, 2, 32)
    assert torch.all(out["sigma"] > -100)  # the crop's −1000 is a synthesis-only mask


def test_bad_inputs_are_clear():
    G = make_g()
    z, c = _inputs()
    with pytest.raises(ValueError, match=r"\[N, 25\]"):
        G.mapping(z, c[:, :16])
    with pytest.raises(ValueError, match="superresolution_module"):
        TriPlaneGenerator(**tiny_kwargs(superresolution_module="training.superresolution.Nope"))
    bad = copy.deepcopy(tiny_kwargs())
    bad["img_resolution"] = 256
    with pytest.raises(ValueError, match="SuperresolutionHybrid2X produces 128px"):
        TriPlaneGenerator(**bad)


def test_fused_and_unfused_modconv_agree():
    G = make_g()
    z, c = _inputs()
    with torch.no_grad():
        ws = G.mapping(z, c)
        a = G.synthesis(ws, c, neural_rendering_resolution=NRR, deterministic=True, fused_modconv=True)
        b = G.synthesis(ws, c, neural_rendering_resolution=NRR, deterministic=True, fused_modconv=False)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), k  # same function, different summation order


def test_w_avg_tracking_in_training():
    G = make_g()
    z, c = _inputs()
    before = G.backbone.mapping.w_avg.clone()
    with torch.no_grad():
        ws = G.mapping(z, c)
        G.mapping(z, c, update_emas=True)
    expect = ws[:, 0].mean(0).lerp(before, 0.998)  # w_avg ← lerp(batch mean, w_avg, β = 0.998)
    assert torch.allclose(G.backbone.mapping.w_avg, expect, atol=1e-6)


@pytest.mark.parametrize("background", [True, False])
def test_scene_renders_what_synthesis_renders(background):
    """A latent's planes/background computed once (batch 1) and rendered from two cameras give the
    images of plain synthesis; a scene of the wrong batch is refused."""
    G = make_g(use_background=background)
    z, c = _inputs()
    with torch.no_grad():
        ws = G.mapping(z[:1], c[:1]).expand(2, -1, -1)
        scene = G.scene(ws[:1])
        assert (scene["background"] is not None) == background and scene["planes"].shape[:3] == (1, 2, 3)
        plain = G.synthesis(ws, c, neural_rendering_resolution=NRR, deterministic=True)
        cached = G.synthesis(ws, c, neural_rendering_resolution=NRR, deterministic=True, scene=scene)
        per_item = G.synthesis(ws, c, neural_rendering_resolution=NRR, deterministic=True, scene=G.scene(ws))
        assert set(cached) == set(plain)
        for key in plain:
            torch.testing.assert_close(cached[key], plain[key], rtol=1e-5, atol=1e-5)
            assert torch.equal(per_item[key], plain[key])   # a batch-N scene is exactly synthesis' own work
        assert not torch.allclose(plain["image"][0], plain["image"][1])   # two cameras, two images
        with pytest.raises(ValueError, match=r"scene\['planes'\] has batch 2; expected 1 or 3"):
            G.synthesis(ws[:1].expand(3, -1, -1), c[:1].expand(3, -1), NRR, scene=G.scene(ws))
