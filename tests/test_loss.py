"""The training loss: schedules, blur, ViCo pairing, and each phase on tiny networks."""
import math

import pytest
import torch

from spherehead import camera
from spherehead.networks.discriminator import HoloDiscriminator
from spherehead.networks.presets import build_preset, discriminator_kwargs
from training.loss import LossOptions, SphereHeadLoss, blur_images, drop_parsing, schedule, shuffled_cameras


def test_schedule_values():
    o = LossOptions(nrr_initial=64, nrr_final=128, nrr_fade_kimg=1000)
    s0, s100, s2000 = schedule(o, 0), schedule(o, 100_000), schedule(o, 2_000_000)
    assert s0.blur_sigma == 10 and s100.blur_sigma == pytest.approx(5) and s2000.blur_sigma == 0
    assert s0.neural_rendering_resolution == 64 and s100.neural_rendering_resolution == round(64 * 0.9 + 128 * 0.1)
    assert s2000.neural_rendering_resolution == 128
    assert s0.gpc_prob == 1 and s100.gpc_prob == pytest.approx(0.9 + 0.1 * 0.7) and s2000.gpc_prob == pytest.approx(0.7)
    assert s0.density_noise == 1 and s100.density_noise == pytest.approx(0.5) and s2000.density_noise == 0
    resumed = schedule(o, 0, fade_disabled=True)
    assert resumed.blur_sigma == 0 and resumed.gpc_prob == pytest.approx(0.7)


def test_blur_preserves_constants_and_mass():
    x = torch.ones(1, 3, 40, 40)
    y = blur_images(x, 2.0)
    assert torch.allclose(y[..., 8:-8, 8:-8], torch.ones(1, 3, 24, 24), atol=1e-6)
    imp = torch.zeros(1, 1, 41, 41)
    imp[..., 20, 20] = 1
    out = blur_images(imp, 3.0)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    taps = [2 ** (-(i / 3.0) ** 2) for i in range(-9, 10)]
    assert float(out[0, 0, 20, 20]) == pytest.approx((1 / sum(taps)) ** 2, rel=1e-4)  # centre tap²
    assert torch.equal(blur_images(imp, 0.0), imp)


def test_vico_pairs_are_distinct_and_far_enough():
    c = torch.cat([camera.make_label(yaw=a) for a in (0.0, 0.1, math.pi / 2, math.pi, -math.pi / 2)])
    neg, valid = shuffled_cameras(c, min_angle_deg=30)
    assert valid.all()
    dirs = lambda x: torch.nn.functional.normalize(x[:, [3, 7, 11]], dim=1)
    cos = (dirs(c) * dirs(neg)).sum(1)
    assert torch.all(cos <= math.cos(math.radians(30)) + 1e-6)
    same = camera.make_label(yaw=0.2).expand(4, -1)
    _, valid = shuffled_cameras(same, 30)
    assert not valid.any()  # no admissible partner: left out, never paired with itself


def _setup(vico_weight=1.0, parsing=True):
    torch.manual_seed(0)
    G, _ = build_preset("tiny")
    kw = discriminator_kwargs(128, 256, 16, mbstd_group_size=2, num_fp16_res=0, seg_resolution=64,
                              parsing_channels=20)
    D = HoloDiscriminator(**kw)
    G.train().requires_grad_(True)
    D.train().requires_grad_(True)
    opts = LossOptions(nrr_initial=8, vico_weight=vico_weight, parsing=parsing)
    n = 2
    real = {"image": torch.rand(n, 3, 128, 128) * 2 - 1, "mask": torch.rand(n, 1, 128, 128),
            "parsing": torch.randint(0, 20, (n, 128, 128))}
    real_c = torch.cat([camera.make_label(yaw=0.0), camera.make_label(yaw=math.pi)])
    gen_c = torch.cat([camera.make_label(yaw=1.0), camera.make_label(yaw=-2.0)])
    return G, D, SphereHeadLoss(G, D, opts), real, real_c, torch.randn(n, 512), gen_c


def test_vico_term_reaches_discriminator():
    grads = {}
    for w in (0.0, 1.0):
        G, D, loss, real, real_c, z, gen_c = _setup(vico_weight=w)
        torch.manual_seed(1)
        stats = loss.accumulate_gradients("Dmain", real, real_c, z, gen_c, gain=1, cur_nimg=0)
        assert ("Loss/D/vico" in stats) == (w > 0)
        grads[w] = torch.cat([p.grad.flatten() for p in D.parameters() if p.grad is not None])
        assert all(p.grad is None for p in G.parameters())  # fakes are made without G gradients
    assert math.isfinite(stats["Loss/D/vico"]) and stats["Loss/D/vico_valid_frac"] == 1.0
    assert not torch.allclose(grads[0.0], grads[1.0])


def test_generator_phase_and_r1():
    G, D, loss, real, real_c, z, gen_c = _setup()
    stats = loss.accumulate_gradients("Gmain", real, real_c, z, gen_c, gain=1, cur_nimg=0)
    assert math.isfinite(stats["Loss/G/loss"]) and stats["Loss/G/trans_reg"] >= 0
    assert G.toparsing.weight.grad.abs().sum() > 0  # the parsing branch learns through D's channels
    assert G.t_mapping.fc1.weight.grad.abs().sum() > 0
    D.zero_grad(set_to_none=True)
    stats = loss.accumulate_gradients("Dreg", real, real_c, z, gen_c, gain=1, cur_nimg=0)
    assert stats["Loss/r1_penalty"] > 0
    # R1 is a penalty on input gradients, so it reaches the convolution weights (not the last bias).
    assert D.b128.fromrgb.weight.grad.abs().sum() > 0 and D.b8.conv1.weight.grad.abs().sum() > 0


def test_parsing_requires_holo_discriminator():
    G, D = build_preset("tiny")
    with pytest.raises(ValueError, match="HoloDiscriminator"):
        SphereHeadLoss(G, D, LossOptions(parsing=True))
    SphereHeadLoss(G, D, LossOptions(parsing=False))  # mask-only ablation is fine


def test_drop_parsing_zeroes_whole_samples_at_the_given_rate():
    x = torch.rand(4000, 20, 2, 2) + 0.5
    torch.manual_seed(0)
    y = drop_parsing(x, 0.25)
    kept = (y != 0).flatten(1)
    assert torch.all(kept.all(1) | ~kept.any(1))          # a sample is kept whole or zeroed whole
    assert torch.equal(y[kept.all(1)], x[kept.all(1)])     # kept maps are unchanged
    assert float((~kept.any(1)).float().mean()) == pytest.approx(0.25, abs=0.03)
    assert torch.equal(drop_parsing(x, 0.0), x) and not drop_parsing(x, 1.0).any()


@pytest.mark.parametrize("phase", ["Dmain", "Gmain", "Dreg"])
def test_parsing_drop_hides_parsing_from_discriminator(phase):
    """prob 1: D's output, and so every gradient, no longer depends on the parsing channels: the
    generator's parsing head gets no gradient and R1 sees a zero slope on them; prob 0 is the reference."""
    for prob in (0.0, 1.0):
        G, D, loss, real, real_c, z, gen_c = _setup()
        loss.opts.parsing_drop_prob = prob
        seen = []
        hook = D.register_forward_pre_hook(lambda m, args: seen.append(args[0]["image_parsing"].detach().clone()))
        torch.manual_seed(1)
        stats = loss.accumulate_gradients(phase, real, real_c, z, gen_c, gain=1, cur_nimg=0)
        hook.remove()
        assert seen and all(bool(p.any()) != (prob == 1.0) for p in seen)
        if phase == "Gmain":
            grad = G.toparsing.weight.grad
            assert (grad is None or not grad.any()) if prob == 1.0 else grad.abs().sum() > 0
            assert G.t_mapping.fc1.weight.grad.abs().sum() > 0   # the image still trains G
        else:
            assert all(math.isfinite(v) for v in stats.values())


def test_parsing_drop_without_parsing_is_refused():
    from training.presets import make_training_options
    opts = make_training_options("tiny-128", "x.zip", parsing=False, parsing_drop=0.5)
    with pytest.raises(ValueError, match="--parsing-drop 0.5 .*--no-parsing"):
        opts.validate(1)
    make_training_options("tiny-128", "x.zip", parsing_drop=0.5).validate(1)


def test_density_regulariser_runs():
    G, D, loss, real, real_c, z, gen_c = _setup()
    loss.opts.density_reg = 0.25
    stats = loss.accumulate_gradients("Greg", real, real_c, z, gen_c, gain=1, cur_nimg=0)
    assert stats["Loss/G/density_reg"] > 0
    assert G.decoder.net[0].weight.grad.abs().sum() > 0
