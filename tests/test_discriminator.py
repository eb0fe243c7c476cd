"""Discriminator variants: input channels, conditioning, minibatch std, gradients (reference.md §5)."""
import pytest
import torch

from spherehead import camera
from spherehead.networks.discriminator import (DualDiscriminator, HoloDiscriminator, MaskDualDiscriminatorV2,
                                               MinibatchStdLayer)
from spherehead.networks.presets import discriminator_kwargs


def _kwargs(**kw):
    return discriminator_kwargs(img_resolution=64, channel_base=256, channel_max=16, mbstd_group_size=2,
                                num_fp16_res=0, seg_resolution=32, **kw)


def _imgs(n=2, parsing=False):
    torch.manual_seed(0)
    d = {"image": torch.randn(n, 3, 64, 64), "image_raw": torch.randn(n, 3, 16, 16),
         "image_mask": torch.rand(n, 1, 16, 16)}
    if parsing:
        d["image_parsing"] = torch.softmax(torch.randn(n, 20, 16, 16), 1)
    return d


def _c(n=2):
    return torch.cat([camera.make_label(yaw=0.2), camera.make_label(yaw=3.0)])[:n]


def test_input_channels_per_variant():
    kw = _kwargs()
    dual = {k: v for k, v in kw.items() if k not in ("seg_resolution", "seg_channels")}
    assert DualDiscriminator(**dual).b64.fromrgb.weight.shape[1] == 6
    assert MaskDualDiscriminatorV2(**kw).b64.fromrgb.weight.shape[1] == 7
    assert HoloDiscriminator(**kw, parsing_channels=20).b64.fromrgb.weight.shape[1] == 27


@pytest.mark.parametrize("cls,parsing", [(MaskDualDiscriminatorV2, False), (HoloDiscriminator, True)])
def test_logits_depend_on_every_input_and_camera(cls, parsing):
    torch.manual_seed(0)
    D = cls(**_kwargs(**({"parsing_channels": 20} if parsing else {}))).eval()
    imgs, c = _imgs(parsing=parsing), _c()
    with torch.no_grad():
        base = D(imgs, c)
        assert base.shape == (2, 1)
        for key in imgs:
            changed = dict(imgs)
            changed[key] = imgs[key] + 0.5
            assert not torch.allclose(D(changed, c), base), key
        assert not torch.allclose(D(imgs, _c().flip(0)), base)  # camera conditioning matters


def test_mask_is_rescaled_to_minus_one_one():
    D = MaskDualDiscriminatorV2(**_kwargs())
    chans = D.input_channels(_imgs())
    mask = chans[-1]
    assert mask.shape == (2, 1, 64, 64) and mask.min() >= -1 and mask.max() <= 1


def test_minibatch_std_groups_are_strided():
    x = torch.zeros(4, 2, 1, 1)
    x[0] = 1.0  # group (0, 2) varies, group (1, 3) does not
    y = MinibatchStdLayer(group_size=2)(x)
    assert y.shape == (4, 3, 1, 1)
    std = y[:, 2, 0, 0]
    assert std[0] == std[2] and std[1] == std[3]
    assert std[0] == pytest.approx(0.5, abs=1e-4) and std[1] == pytest.approx(1e-4, abs=1e-5)


def test_gradients_reach_inputs_and_parameters():
    torch.manual_seed(0)
    D = HoloDiscriminator(**_kwargs(), parsing_channels=20)
    imgs = {k: v.requires_grad_(True) for k, v in _imgs(parsing=True).items()}
    D(imgs, _c()).sum().backward()
    for k, v in imgs.items():
        assert v.grad is not None and v.grad.abs().sum() > 0, k
    for name, p in D.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_wrong_inputs_are_clear_errors():
    D = MaskDualDiscriminatorV2(**_kwargs())
    bad = _imgs()
    bad["image"] = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="expected"):
        D(bad, _c())
    with pytest.raises(TypeError, match="unexpected"):
        MaskDualDiscriminatorV2(**_kwargs(), bogus=1)


@pytest.mark.parametrize("cls,extra", [(HoloDiscriminator, {"parsing_channels": 20}), (DualDiscriminator, None)])
def test_upstream_round_trip(cls, extra, tmp_path):
    import spherehead
    from spherehead.legacy_writer import write_upstream_snapshot
    from spherehead.networks.presets import build_preset
    from spherehead.networks.registry import network_spec
    kw = _kwargs(**(extra or {}))
    if extra is None:
        kw = {k: v for k, v in kw.items() if k not in ("seg_resolution", "seg_channels")}
    torch.manual_seed(0)
    D = cls(**kw).eval()
    G, _ = build_preset("tiny")
    path = tmp_path / "snap.pkl"
    write_upstream_snapshot(path, {"G_ema": G, "D": D}, {"G_ema": network_spec(G), "D": network_spec(D)})
    D2 = spherehead.load_network(path)["D"]
    assert type(D2) is cls
    imgs = _imgs(parsing=True)
    with torch.no_grad():
        assert torch.equal(D(imgs, _c()), D2(imgs, _c()))
