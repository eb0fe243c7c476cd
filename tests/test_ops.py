"""Known answers for the StyleGAN2 ops' reference implementations."""
import math

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops.bias_act import bias_act
from torch_utils.ops.conv2d_resample import conv2d_resample
from torch_utils.ops.dispatch import resolve_impl
from torch_utils.ops.upfirdn2d import downsample2d, setup_filter, upfirdn2d, upsample2d


def test_setup_filter_is_normalised_outer_product():
    f = setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4)
    assert torch.allclose(f, torch.tensor([1., 3, 3, 1]).ger(torch.tensor([1., 3, 3, 1])) / 64)


def test_upsample_preserves_constants_and_size():
    x = torch.full([1, 2, 5, 7], 3.0)
    y = upsample2d(x, setup_filter())
    assert y.shape == (1, 2, 10, 14)
    # Interior pixels of an upsampled constant image equal the constant (gain up² compensates zeros).
    assert torch.allclose(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 3.0))


def test_downsample_of_constant_and_size():
    x = torch.full([2, 1, 8, 8], -2.0)
    y = downsample2d(x, setup_filter())
    assert y.shape == (2, 1, 4, 4)
    assert torch.allclose(y[..., 1:-1, 1:-1], torch.full_like(y[..., 1:-1, 1:-1], -2.0))


def test_upfirdn2d_impulse_response_is_flipped_filter():
    f = torch.arange(1., 10.).reshape(3, 3)
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1
    y = upfirdn2d(x, f, padding=1)
    assert torch.allclose(y[0, 0, 1:4, 1:4], f)  # true convolution: impulse reproduces the filter


def _upfirdn2d_by_definition(x, f, up, down, padding, flip_filter, gain):
    """reference.md §2.4 literally, one output pixel at a time (float64)."""
    x, f = x.double(), f.double() * gain
    n, c, h, w = x.shape
    fh, fw = f.shape
    px0, px1, py0, py1 = padding
    z = torch.zeros(n, c, h * up, w * up, dtype=torch.float64)
    z[:, :, ::up, ::up] = x
    taps = f if flip_filter else f.flip([0, 1])   # correlation taps
    out_h, out_w = h * up + py0 + py1 - fh + 1, w * up + px0 + px1 - fw + 1
    y = torch.zeros(n, c, out_h, out_w, dtype=torch.float64)
    for oy in range(out_h):
        for ox in range(out_w):
            for ky in range(fh):
                for kx in range(fw):
                    zy, zx = oy + ky - py0, ox + kx - px0
                    if 0 <= zy < h * up and 0 <= zx < w * up:
                        y[:, :, oy, ox] += taps[ky, kx] * z[:, :, zy, zx]
    return y[:, :, ::down, ::down]


@pytest.mark.parametrize("up,down,padding,flip_filter,fshape", [
    (1, 1, (1, 2, 0, 1), False, (3, 2)), (2, 1, (2, 1, 2, 1), False, (4, 4)), (2, 1, (0, 0, -1, 3), True, (3, 4)),
    (3, 1, (4, -2, 1, 1), False, (5, 3)), (1, 2, (1, 1, 2, 1), False, (4, 4)), (1, 3, (-1, 2, 0, 0), True, (2, 3)),
    (2, 2, (1, 2, 0, 1), False, (4, 2)), (2, 1, (5, 5, 4, 6), False, (2, 2))])
def test_upfirdn2d_reference_matches_definition(up, down, padding, flip_filter, fshape):
    """The reference path (transposed/strided convolutions) equals the loop over the definition,
    borders, negative padding, non-square filters and flip_filter included; so do its gradients."""
    torch.manual_seed(up * 10 + down)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    f = torch.randn(*fshape, dtype=torch.float64)
    y = upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=1.7, impl="ref")
    want = _upfirdn2d_by_definition(x.detach(), f, up, down, padding, flip_filter, 1.7)
    assert y.shape == want.shape
    assert torch.allclose(y, want, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda t: upfirdn2d(t, f, up=up, down=down, padding=padding, flip_filter=flip_filter, impl="ref"), (x,))


def test_bias_act_lrelu_gain_and_clamp():
    x = torch.tensor([[-1.0, 2.0]]).reshape(1, 2, 1, 1)
    b = torch.tensor([0.5, 0.0])
    y = bias_act(x, b, act="lrelu").flatten()
    assert torch.allclose(y, torch.tensor([-0.5 * 0.2 * math.sqrt(2), 2 * math.sqrt(2)]))
    y = bias_act(x, b, act="lrelu", gain=1, clamp=1.0).flatten()
    assert torch.allclose(y, torch.tensor([-0.1, 1.0]))


@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_resample_up_matches_naive(groups):
    torch.manual_seed(1)
    x = torch.randn(1, 4, 6, 6)
    w = torch.randn(6, 4 // groups, 3, 3)
    f = setup_filter()
    y = conv2d_resample(x, w, f=f, up=2, padding=1, groups=groups, flip_weight=False)
    # Naive: zero-insert upsampling, full-support true 3×3 convolution, FIR at gain 4 with full
    # support, then the centred 12×12 window (the fast path must equal this exactly, borders too).
    u = upfirdn2d(x, torch.ones(1, 1), up=2)
    full = F.conv2d(F.pad(u, [2, 2, 2, 2]), w.flip([2, 3]), groups=groups)
    full = upfirdn2d(full, f, padding=3, gain=4)
    ref = full[..., 2:14, 2:14]
    assert y.shape == (1, 6, 12, 12)
    assert torch.allclose(y, ref, atol=1e-4)


def test_conv2d_resample_down_matches_naive():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(5, 3, 3, 3)
    f = setup_filter()
    y = conv2d_resample(x, w, f=f, down=2, padding=1)
    ref = F.conv2d(upfirdn2d(x, f, padding=2), w)[:, :, ::2, ::2]
    assert y.shape == (2, 5, 4, 4)
    assert torch.allclose(y, ref, atol=1e-5)


def test_impl_switch(monkeypatch):
    x = torch.zeros(1)
    assert resolve_impl("bias_act", "auto", x) == "ref"
    assert resolve_impl("bias_act", "ref", x) == "ref"
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve_impl("bias_act", "cuda", x)
    with pytest.raises(ValueError, match="impl"):
        resolve_impl("bias_act", "fast", x)
    monkeypatch.setenv("SPHEREHEAD_OPS", "bogus")
    with pytest.raises(ValueError, match="SPHEREHEAD_OPS"):
        resolve_impl("bias_act", "auto", x)
