"""Known-answer tests for rays, the ray marcher and the importance renderer (reference.md §4)."""
import math

import pytest
import torch
import torch.nn.functional as F

from spherehead import camera
from spherehead.rendering.options import RenderingOptions
from spherehead.rendering.ray_marcher import march
from spherehead.rendering.ray_sampler import sample_rays
from spherehead.rendering.renderer import (ImportanceRenderer, crop_mask, ray_box_limits, sample_pdf,
                                           sample_stratified)


def _opts(**kw):
    base = dict(triplane_size=8, triplane_depth=3, superresolution_module="training.superresolution.SuperresolutionHybrid2X",
                sr_antialias=True, decoder_activation="none", c_gen_conditioning_zero=False,
                superresolution_noise_mode="none", ray_start=2.25, ray_end=3.3, box_warp=1.0, depth_resolution=12,
                depth_resolution_importance=0, disparity_space_sampling=False, clamp_mode="softplus")
    base.update(kw)
    return RenderingOptions.from_kwargs(base)


class ConstantField(torch.nn.Module):
    """Decoder stand-in: σ_raw and colour constant everywhere (ignores the sampled features)."""

    def __init__(self, sigma_raw, color):
        super().__init__()
        self.sigma_raw, self.color = sigma_raw, torch.tensor(color)

    def forward(self, feats, dirs):
        n, m = feats.shape[0], feats.shape[-2]
        return {"sigma": torch.full((n, m, 1), float(self.sigma_raw)), "rgb": self.color.expand(n, m, -1).clone()}


def _frontal_rays(res=3):
    c = camera.make_label(yaw=0.0, pitch=0.0)
    return sample_rays(c[:, :16].view(-1, 4, 4), c[:, 16:].view(-1, 3, 3), res)


def test_frontal_rays_directions():
    origins, dirs = _frontal_rays(3)
    assert torch.allclose(origins[0, 0], torch.tensor([0.0, 0.0, 2.7]), atol=1e-5)
    assert torch.allclose(dirs[0, 4], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)  # centre pixel
    assert dirs[0, 5, 0] > 0 and dirs[0, 1, 1] > 0  # right column -> +x; top row -> +y (head top)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(1, 9))
    # Pixel-centre geometry: column 2 of 3 has u = 5/6, so x/z = (5/6 − 0.5)/4.2647.
    assert dirs[0, 5, 0] / -dirs[0, 5, 2] == pytest.approx((5 / 6 - 0.5) / 4.2647, rel=1e-5)


def test_constant_density_analytic_transmittance_and_depth():
    sigma_raw, k, start, end = 2.0, 12, 2.25, 3.3
    depths = torch.linspace(start, end, k).reshape(1, 1, k, 1)
    colors = torch.full((1, 1, k, 3), 0.5)
    rgb, depth, w = march(colors, torch.full((1, 1, k, 1), sigma_raw), depths)
    sigma = math.log1p(math.exp(sigma_raw - 1))  # softplus(σ − 1)
    delta = (end - start) / (k - 1)
    alpha = 1 - math.exp(-sigma * delta)
    expect_w = [alpha * (1 - alpha + 1e-10) ** i for i in range(k - 1)]
    assert torch.allclose(w.flatten(), torch.tensor(expect_w), atol=1e-6)
    total = 1 - math.exp(-sigma * (end - start))
    assert float(w.sum()) == pytest.approx(total, abs=1e-5)
    assert torch.allclose(rgb, torch.full((1, 1, 3), 0.5 * total), atol=1e-5)
    mids = [start + (i + 0.5) * delta for i in range(k - 1)]
    assert float(depth) == pytest.approx(sum(a * b for a, b in zip(expect_w, mids)) / sum(expect_w), abs=1e-5)


def test_empty_space_depth_clamps_and_white_back():
    depths = torch.linspace(2.0, 3.0, 5).reshape(1, 1, 5, 1)
    rgb, depth, w = march(torch.zeros(1, 1, 5, 3), torch.full((1, 1, 5, 1), -1e3), depths, white_back=True)
    assert float(w.sum()) == 0.0
    assert float(depth) == pytest.approx(3.0)  # 0/0 -> +inf -> clamped to the max depth
    assert torch.allclose(rgb, torch.ones(1, 1, 3))


def test_ray_box_limits_hit_and_miss():
    o = torch.tensor([[0.0, 0.0, 2.7], [0.0, 2.0, 2.7]])
    d = F.normalize(torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]]), dim=-1)
    s, e = ray_box_limits(o, d, 1.0)
    assert torch.allclose(s.flatten(), torch.tensor([2.2, -1.0])) and torch.allclose(e.flatten(), torch.tensor([3.2, -2.0]))


def test_stratified_samples_stay_in_their_bins():
    d = sample_stratified(2, 5, 2.0, 3.0, 6, False, deterministic=False, device="cpu")
    base = torch.linspace(2.0, 3.0, 6).reshape(1, 1, 6, 1)
    assert torch.all(d >= base) and torch.all(d < base + 0.2 + 1e-6)
    assert torch.equal(sample_stratified(1, 1, 2.0, 3.0, 6, False, True, "cpu"), base)


def test_sample_pdf_uniform_weights_are_linear_in_u():
    bins = torch.linspace(0.0, 1.0, 6).expand(3, 6)
    s = sample_pdf(bins, torch.ones(3, 5), 11, deterministic=True)
    assert torch.allclose(s, torch.linspace(0, 1, 11).expand(3, 11), atol=1e-5)
    # All weight in one bin: every sample lands inside that bin.
    w = torch.zeros(1, 5)
    w[0, 2] = 1.0
    s = sample_pdf(bins[:1], w, 50, deterministic=False)
    assert torch.all((s >= 0.4 - 1e-3) & (s <= 0.6 + 1e-3)) or (((s < 0.4) | (s > 0.6)).float().mean() < 0.01)


def test_crop_mask_limits_x_and_z_only():
    pts = torch.tensor([[[0.39, 5.0, 0.0], [0.41, 0.0, 0.0], [0.0, 0.0, -0.41], [0.0, -0.49, 0.39]]])
    assert crop_mask(pts, 1.0).flatten().tolist() == [False, True, True, False]


def test_renderer_constant_field_with_importance_and_crop():
    origins, dirs = _frontal_rays(3)
    planes = torch.zeros(1, 2, 3, 32, 8, 8)
    opts = _opts(depth_resolution_importance=12)
    r = ImportanceRenderer()
    feats, depth, wsum = r(planes, ConstantField(3.0, [0.2, 0.4, 0.6]), origins, dirs, opts, deterministic=True)
    # Density is masked outside |z| <= 0.4, so a ray crosses at most ~0.8 units of σ = softplus(2):
    # opacity below 1 − exp(−0.8σ) ≈ 0.818; the mid-point rule loses at most part of one interval.
    sigma = math.log1p(math.exp(2.0))
    assert torch.all(wsum > 0.7) and torch.all(wsum < 1 - math.exp(-sigma * 0.8) + 1e-3)
    assert torch.allclose(feats / wsum, torch.tensor([0.2, 0.4, 0.6]).expand_as(feats), atol=1e-5)
    assert torch.all((depth > 2.25) & (depth < 2.7))
    again = r(planes, ConstantField(3.0, [0.2, 0.4, 0.6]), origins, dirs, opts, deterministic=True)
    assert torch.equal(again[1], depth)


def test_auto_ray_range_uses_box():
    origins, dirs = _frontal_rays(3)
    opts = _opts(ray_start="auto", ray_end="auto", depth_resolution=8)
    feats, depth, wsum = ImportanceRenderer()(torch.zeros(1, 2, 3, 32, 8, 8), ConstantField(50.0, [1.0, 1.0, 1.0]),
                                              origins, dirs, opts, deterministic=True)
    # Box entry t = 2.2, exit 3.2, samples every 1/7. The first sample (z = 0.5) is cropped, so the
    # opaque field starts at the second interval, whose mid-point is 2.2 + 1.5/7.
    assert torch.allclose(depth[0, 4], torch.tensor([2.2 + 1.5 / 7]), atol=1e-3)  # α = 1 − e^−7 per interval


def test_rendering_options_validation():
    with pytest.raises(ValueError, match="triplane_depth"):
        _opts(triplane_depth=2)
    with pytest.raises(ValueError, match="missing required"):
        RenderingOptions.from_kwargs({"ray_start": 2.0})
    with pytest.raises(ValueError, match="both be 'auto'"):
        _opts(ray_start="auto")


def test_chunked_evaluation_is_identical():
    torch.manual_seed(0)
    from spherehead.networks.decoder import OSGDecoder
    dec = OSGDecoder(32, {"decoder_output_dim": 32})
    planes = torch.randn(2, 2, 3, 32, 8, 8)
    pts = (torch.rand(2, 1000, 3) - 0.5)
    with torch.no_grad():
        whole = ImportanceRenderer(chunk_points=0).run_model(planes, dec, pts, None, _opts())
        chunked = ImportanceRenderer(chunk_points=96).run_model(planes, dec, pts, None, _opts())
    for k in whole:
        assert torch.equal(whole[k], chunked[k])


def test_density_noise_perturbs_raw_sigma_only_when_set():
    torch.manual_seed(0)
    from spherehead.networks.decoder import OSGDecoder
    dec = OSGDecoder(32, {"decoder_output_dim": 32})
    planes, pts = torch.randn(1, 2, 3, 32, 8, 8), torch.rand(1, 500, 3) - 0.5
    r = ImportanceRenderer()
    with torch.no_grad():
        clean = r.run_model(planes, dec, pts, None, _opts())
        noisy = r.run_model(planes, dec, pts, None, _opts(density_noise=0.5))
    diff = noisy["sigma"] - clean["sigma"]
    assert torch.equal(noisy["rgb"], clean["rgb"])
    assert 0.4 < float(diff.std()) < 0.6 and abs(float(diff.mean())) < 0.1  # N(0, 1)·0.5
