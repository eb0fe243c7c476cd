"""The custom CUDA ops against their pure-PyTorch references (architecture.md, "Parity tests for every op").

Two layers:

* CPU (always run): the kernels' math headers (spherical_sample.h, bias_act.h, upfirdn2d.h) are
  compiled for the host with the system C++ compiler (a second or two) and driven through the same
  autograd Functions the CUDA path uses (``_SphericalSampleCuda`` and friends, with their extension
  module replaced by a ctypes emulation of the .cpp bindings). This checks every formula, index,
  adjoint and gradient chain of the kernels and the Python glue against the references on a
  machine without a GPU. Not covered here: the CUDA launch code, atomics, float16/bfloat16
  conversions and the .cpp bindings — the `cuda` tests below cover those when a GPU is present.
  Also here: the build key, the error messages, the SPHEREHEAD_OPS override and the self-check.
* GPU (marker `cuda`, skipped without one): the real kernels, float32/float16/bfloat16, and a full
  generator forward on the parity fixture with the kernels vs with the references.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import types
import warnings
from pathlib import Path

import pytest
import torch

from torch_utils import custom_ops
from torch_utils.ops import bias_act as ba
from torch_utils.ops import dispatch
from torch_utils.ops import spherical_sample as ss
from torch_utils.ops import upfirdn2d as ufd

OPS_DIR = Path(custom_ops.__file__).parent / "ops"

# Points that stress the sampler (world coordinates, box_warp 1): the origin, exact world-axis points
# (the spheres' poles: A's axis is world x, B's is world y), seam points (A: y = 0, z < 0; B: x = 0,
# z > 0), near-axis points, and points outside the box [-0.5, 0.5]^3.
ORIGIN = [[0.0, 0.0, 0.0]]
ON_AXIS = [[0.3, 0.0, 0.0], [-0.2, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, -0.25, 0.0]]
SEAMS = [[0.0, 0.0, -0.3], [0.1, 0.0, -0.3], [0.0, 0.2, 0.3], [0.0, -0.1, 0.2]]
NEAR_AXIS = [[0.3, 0.02, 0.01], [0.01, -0.3, 0.02], [0.25, -0.015, 0.0]]
OUTSIDE = [[0.7, 0.1, -0.2], [-0.9, 0.8, 0.6], [0.1, -1.4, 0.3], [3.0, 2.0, -5.0]]


def _specials(h, w):
    """Special points for planes of size h × w. Seam points put the other sphere's θ′ (and for some φ′)
    at exactly 0, i.e. on a texel centre when the size is odd; bilinear interpolation has a kink
    there and either one-sided derivative is right, so odd sizes get the other specials only."""
    return (SEAMS if h % 2 == 0 and w % 2 == 0 else []) + NEAR_AXIS + OUTSIDE


def _coords(n, m, gen, scale=1.4, special=()):
    """[n, m, 3] random points in (a bit more than) the box, the first rows of item 0 set to ``special``."""
    coords = (torch.rand(n, m, 3, generator=gen) - 0.5) * scale
    special = torch.tensor(list(special), dtype=torch.float32).reshape(-1, 3)
    coords[0, :len(special)] = special[:m]
    return coords


# ----------------------------------------------------------------------------- host build of the kernel math

HOST_SOURCE = r"""
#include <vector>
#include "spherical_sample.h"
#include "bias_act.h"
#include "upfirdn2d.h"
using namespace spherehead;

static sph::Rotations rotations(const float* r) {
  sph::Rotations R;
  for (int s = 0; s < 2; ++s) for (int j = 0; j < 9; ++j) R.r[s][j] = r[s * 9 + j];
  return R;
}

extern "C" {
void sph_forward(const float* planes, const float* coords, float* out, int64_t N, int64_t M, int C, int H, int W,
                 const float* rot, float scale, int mean) {
  const sph::Shape sh{N, M, C, H, W, mean != 0};
  const sph::Rotations R = rotations(rot);
  for (int64_t i = 0; i < N * M; ++i) sph::forward_point(i, sh, planes, coords, R, scale, out);
}

// The kernels' backward, serially. grad_planes/grad_coords may be null. deterministic: the int64
// fixed-point accumulator with the scale derived from max|grad_out|, as spherical_sample.cpp does.
void sph_backward(const float* gout, const float* planes, const float* coords, float* gplanes, int deterministic,
                  float* gcoords, int64_t N, int64_t M, int C, int H, int W, const float* rot, float scale, int mean) {
  const sph::Shape sh{N, M, C, H, W, mean != 0};
  const sph::Rotations R = rotations(rot);
  const int64_t n_out = N * M * C * (mean ? 1 : 3), n_planes = N * 6 * (int64_t)C * H * W;
  if (deterministic && gplanes != nullptr) {
    float gmax = 0.f;
    for (int64_t j = 0; j < n_out; ++j) gmax = fabsf(gout[j]) > gmax || gout[j] != gout[j] ? fabsf(gout[j]) : gmax;
    std::vector<unsigned long long> acc(n_planes, 0ull);
    const sph::FixedAccum fa{acc.data(), sph::fixed_point_scale(gmax, M), (bool)isfinite(gmax)};
    for (int64_t i = 0; i < N * M; ++i) sph::backward_point(i, sh, gout, planes, coords, R, scale, true, fa, gcoords);
    for (int64_t j = 0; j < n_planes; ++j) gplanes[j] = sph::fixed_to_float(acc[j], gmax, M);
  } else {
    const sph::FloatAccum fa{gplanes};
    for (int64_t i = 0; i < N * M; ++i)
      sph::backward_point(i, sh, gout, planes, coords, R, scale, gplanes != nullptr, fa, gcoords);
  }
}

void bias_act_run(const float* x, const float* b, const float* g, float* y, int64_t count, int64_t channels,
                  int64_t inner, int mode, int act, float gain, float clamp) {
  bias_act::Params p{act, mode, gain, clamp, count, channels, inner, b != nullptr};
  for (int64_t i = 0; i < count; ++i) bias_act::element(i, p, x, b, g, y);
}

void upfirdn2d_run(const float* x, const float* g, float* y, int64_t planes, int in_h, int in_w, int out_h,
                   int out_w, int up, int down, int px0, int py0, int fh, int fw) {
  upfirdn2d::Params p{planes, in_h, in_w, out_h, out_w, up, down, px0, py0, fh, fw};
  for (int64_t i = 0; i < planes * out_h * (int64_t)out_w; ++i) upfirdn2d::output_element(i, p, x, g, y);
}
}
"""


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class HostSampler:
    """spherical_sample.cpp's interface over the host build (float32 only)."""

    def __init__(self, lib):
        self.lib = lib

    def forward(self, planes, coords, rot, scale, mean):
        assert planes.is_contiguous() and coords.is_contiguous() and coords.dtype == torch.float32
        n, _, _, c, h, w = planes.shape
        m = coords.shape[1]
        out = torch.empty((n, m, c) if mean else (n, 3, m, c))
        rot = torch.tensor(rot, dtype=torch.float32)
        self.lib.sph_forward(_ptr(planes), _ptr(coords), _ptr(out), n, m, c, h, w, _ptr(rot), scale, int(mean))
        return out

    def backward(self, grad_out, planes, coords, rot, scale, mean, need_planes, need_coords, deterministic):
        assert grad_out.is_contiguous() and grad_out.dtype == planes.dtype
        n, _, _, c, h, w = planes.shape
        m = coords.shape[1]
        gp = torch.zeros_like(planes) if need_planes else None
        gc = torch.empty_like(coords) if need_coords else None
        rot = torch.tensor(rot, dtype=torch.float32)
        self.lib.sph_backward(_ptr(grad_out), _ptr(planes), _ptr(coords), _ptr(gp), int(deterministic), _ptr(gc),
                              n, m, c, h, w, _ptr(rot), scale, int(mean))
        return gp, gc


class HostBiasAct:
    def __init__(self, lib):
        self.lib = lib

    def bias_act(self, x, b, g, mode, act, dim, gain, clamp):
        assert x.is_contiguous() and x.dtype == torch.float32
        has_b = b.numel() > 0
        inner = 1
        for size in x.shape[dim + 1:]:
            inner *= size
        y = torch.empty_like(x)
        self.lib.bias_act_run(_ptr(x), _ptr(b) if has_b else None, _ptr(g) if mode else None, _ptr(y), x.numel(),
                              x.shape[dim] if has_b else 1, inner if has_b else 1, mode, act, gain, clamp)
        return y


class HostUpFirDn:
    def __init__(self, lib):
        self.lib = lib

    def upfirdn2d(self, x, g, up, down, px0, px1, py0, py1):
        assert x.is_contiguous() and g.is_contiguous() and g.dtype == torch.float32
        n, c, h, w = x.shape
        fh, fw = g.shape
        out_h, out_w = (h * up + py0 + py1 - fh) // down + 1, (w * up + px0 + px1 - fw) // down + 1
        y = torch.empty(n, c, out_h, out_w)
        self.lib.upfirdn2d_run(_ptr(x), _ptr(g), _ptr(y), n * c, h, w, out_h, out_w, up, down, px0, py0, fh, fw)
        return y


@pytest.fixture(scope="session")
def host_lib(tmp_path_factory):
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler for the host build of the kernel math")
    folder = tmp_path_factory.mktemp("host_kernels")
    src, lib_path = folder / "host.cpp", folder / "libhost.so"
    src.write_text(HOST_SOURCE)
    # -ffp-contract=off: no fused multiply-adds, like torch's CPU reference (exactness of the tests
    # below does not depend on it, but it keeps the comparison about formulas, not rounding).
    subprocess.run([compiler, "-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-I", str(OPS_DIR),
                    "-o", str(lib_path), str(src)], check=True, capture_output=True)
    lib = ctypes.CDLL(str(lib_path))
    i64, i32, f32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    lib.sph_forward.argtypes = [ptr, ptr, ptr, i64, i64, i32, i32, i32, ptr, f32, i32]
    lib.sph_backward.argtypes = [ptr, ptr, ptr, ptr, i32, ptr, i64, i64, i32, i32, i32, ptr, f32, i32]
    lib.bias_act_run.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i32, i32, f32, f32]
    lib.upfirdn2d_run.argtypes = [ptr, ptr, ptr, i64, i32, i32, i32, i32, i32, i32, i32, i32, i32, i32]
    return lib


@pytest.fixture
def host_kernels(host_lib, monkeypatch):
    """The ops' CUDA autograd Functions running on CPU over the host build."""
    monkeypatch.setattr(ss._KERNEL, "module", HostSampler(host_lib))
    monkeypatch.setattr(ba._KERNEL, "module", HostBiasAct(host_lib))
    monkeypatch.setattr(ufd._KERNEL, "module", HostUpFirDn(host_lib))
    return host_lib


def _sampler_kernel(planes, coords, box_warp, reduce, deterministic=False):
    return ss._SphericalSampleCuda.apply(planes, coords, box_warp, reduce == "mean", deterministic)


def _grads(fn, inputs, grad_out):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    return out.detach(), torch.autograd.grad(out, leaves, grad_out)


# ----------------------------------------------------------------------------- sampler math (host build)

SAMPLER_SHAPES = [  # (N, M, C, H, W, box_warp): odd M, non-square planes, N = 1, odd and even sizes
    (1, 1, 3, 4, 4, 1.0), (2, 37, 5, 6, 10, 1.0), (1, 101, 3, 16, 12, 1.3), (3, 50, 4, 8, 8, 0.7),
    (2, 29, 2, 7, 9, 1.0)]


@pytest.mark.parametrize("shape", SAMPLER_SHAPES)
@pytest.mark.parametrize("reduce", ["none", "mean"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_sampler_kernel_math_matches_reference(host_kernels, shape, reduce, deterministic):
    n, m, c, h, w, box_warp = shape
    gen = torch.Generator().manual_seed(sum(shape[:5]))
    planes = torch.randn(n, 2, 3, c, h, w, generator=gen)
    coords = _coords(n, m, gen, scale=1.4 * box_warp, special=_specials(h, w))
    grad_out = torch.randn(n, *([3] if reduce == "none" else []), m, c, generator=gen)
    ref_out, (ref_gp, ref_gc) = _grads(lambda p, x: ss._spherical_sample_ref(p, x, box_warp, reduce), [planes, coords],
                                       grad_out)
    out, (gp, gc) = _grads(lambda p, x: _sampler_kernel(p, x, box_warp, reduce, deterministic), [planes, coords],
                           grad_out)
    # Same float32 formulas evaluated in the same order up to libm's atan2/cos and summation order:
    # differences are rounding-level. Features and plane gradients are O(1); coordinate gradients
    # reach O(1e3) near the polar axes (∂φ/∂y ~ 1/ρ), hence the relative term.
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gp, ref_gp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gc, ref_gc, atol=1e-4, rtol=1e-4)


def test_sampler_kernel_at_origin_and_on_axes(host_kernels):
    """Exact world-axis points and the origin. Even plane sizes, so that no special point sits exactly on
    a texel centre, where bilinear interpolation has a kink and float rounding picks either one-sided
    derivative."""
    gen = torch.Generator().manual_seed(7)
    planes = torch.randn(1, 2, 3, 4, 8, 10, generator=gen)
    coords = torch.tensor([ORIGIN + ON_AXIS + SEAMS])
    grad_out = torch.randn(1, 3, coords.shape[1], 4, generator=gen)
    ref_out, (ref_gp, ref_gc) = _grads(lambda p, x: ss._spherical_sample_ref(p, x, 1.0, "none"), [planes, coords],
                                       grad_out)
    out, (gp, gc) = _grads(lambda p, x: _sampler_kernel(p, x, 1.0, "none"), [planes, coords], grad_out)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    assert torch.all(out[:, :, 0] == 0)  # both blend weights vanish at the origin
    torch.testing.assert_close(gp, ref_gp, atol=1e-5, rtol=1e-5)
    assert torch.all(gc[0, 0] == 0) and torch.all(ref_gc[0, 0] == 0)  # the reference's origin rule
    assert torch.isfinite(gc).all()
    # On an axis the float32 rotation residuals (~6e-17) leave ρ tiny but non-zero, so ∂φ/∂y ~ 1e16
    # meets a blend weight that is 0 or ~1e-15 depending on the last bit of θ′: the product is
    # ill-conditioned in both implementations. Same machine, same libm: they agree here; on a GPU
    # the tests below only ask for finite values at these points.
    torch.testing.assert_close(gc, ref_gc, atol=1e-3, rtol=1e-4)


def test_sampler_kernel_deterministic_mode_is_exact_and_close_to_float_atomics(host_kernels):
    gen = torch.Generator().manual_seed(3)
    planes = torch.randn(2, 2, 3, 3, 6, 6, generator=gen)
    coords = _coords(2, 400, gen, scale=0.3)  # many points per texel: a real accumulation
    grad_out = torch.randn(2, 400, 3, generator=gen)
    _, (gp_fixed, _) = _grads(lambda p, x: _sampler_kernel(p, x, 1.0, "mean", True), [planes, coords], grad_out)
    _, (gp_float, _) = _grads(lambda p, x: _sampler_kernel(p, x, 1.0, "mean", False), [planes, coords], grad_out)
    # Fixed point: ≤ count·bound·2^-63 per texel (here ~1e-14); float32 summation: ~1e-7 relative.
    torch.testing.assert_close(gp_fixed, gp_float, atol=1e-5, rtol=1e-5)
    bad = grad_out.clone()
    bad[0, 0, 0] = float("inf")
    _, (gp_inf, _) = _grads(lambda p, x: _sampler_kernel(p, x, 1.0, "mean", True), [planes, coords], bad)
    assert torch.isnan(gp_inf).all()  # a non-finite grad_out is reported, not wrapped around


def test_sampler_kernel_gradients_only_where_asked(host_kernels):
    gen = torch.Generator().manual_seed(5)
    planes = torch.randn(1, 2, 3, 2, 5, 5, generator=gen)
    coords = _coords(1, 9, gen).requires_grad_(True)
    out = _sampler_kernel(planes, coords, 1.0, "none")
    (gc,) = torch.autograd.grad(out.sum(), [coords])
    ref = torch.autograd.grad(ss._spherical_sample_ref(planes, coords, 1.0, "none").sum(), [coords])[0]
    torch.testing.assert_close(gc, ref, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- bias_act and upfirdn2d math (host build)

BIAS_ACT_CASES = [(act, 1, None, None) for act in ba.ACTIVATIONS] + [
    ("lrelu", 1, 1.0, 0.5), ("lrelu", 1, None, 256.0), ("linear", 2, 2.0, 0.3), ("tanh", 0, 0.7, None),
    ("sigmoid", 3, 1.5, 0.6), ("softplus", 1, None, 2.0)]


@pytest.mark.parametrize("act, dim, gain, clamp", BIAS_ACT_CASES)
def test_bias_act_kernel_math_matches_reference_to_second_order(host_kernels, act, dim, gain, clamp):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 5, 3, 4, generator=gen) * 4  # reaches the clamp and softplus' linear branch
    x[0, 0, 0, :2] = torch.tensor([0.0, 25.0])     # relu/lrelu kink and softplus threshold
    b = torch.randn(x.shape[dim], generator=gen)

    def run(fn):
        xs, bs = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
        y = fn(xs, bs)
        r = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        gx, gb = torch.autograd.grad(y, [xs, bs], r, create_graph=True)
        # Second order: what the R1 penalty's backward needs (d/dx and d/db of a loss on the gradient).
        # (For 'linear' the reference's gradient is constant and has no graph: zeros then.)
        loss = gx.square().sum() + gb.square().sum()
        ggx, ggb = torch.autograd.grad(loss, [xs, bs], allow_unused=True) if loss.requires_grad else (None, None)
        ggx = torch.zeros_like(x) if ggx is None else ggx
        ggb = torch.zeros_like(b) if ggb is None else ggb
        return y, gx, gb, ggx, ggb

    got = run(lambda x_, b_: ba._cuda_call(x_, b_, dim, act, gain, clamp))
    want = run(lambda x_, b_: ba._bias_act_ref(x_, b_, dim, act, gain, clamp))
    for name, a, e in zip(("y", "dx", "db", "d2x", "d2b"), got, want):
        # float32, one element at a time; libm differences in exp/tanh/log1p only.
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5, msg=f"{name} differs")


UPFIRDN_CASES = [  # (filter, up, down, padding, flip_filter, gain)
    ("4x4", 2, 1, [2, 1, 2, 1], False, 4.0),      # upsample2d
    ("4x4", 1, 2, [1, 1, 1, 1], False, 1.0),      # downsample2d
    ("4x4", 1, 1, [1, 2, 1, 2], False, 1.0),      # plain FIR filter
    ("3x2", 1, 1, [1, 0, -1, 2], False, 1.0),     # negative pad (crop), asymmetric filter
    ("3x2", 3, 2, [0, 2, 1, 1], True, 2.0),       # up 3, down 2, flipped
    ("1x1", 2, 2, [0, 0, 0, 0], False, 1.0),      # zero insertion then decimation: identity
    ("5x3", 2, 3, [-1, 3, 2, -2], True, 0.5)]


def _filter(name, gen):
    if name == "4x4":
        return ufd.setup_filter([1, 3, 3, 1])
    fh, fw = map(int, name.split("x"))
    return torch.rand(fh, fw, generator=gen) + 0.1


@pytest.mark.parametrize("fname, up, down, padding, flip, gain", UPFIRDN_CASES)
def test_upfirdn2d_kernel_math_and_adjoint_match_reference(host_kernels, fname, up, down, padding, flip, gain):
    gen = torch.Generator().manual_seed(13)
    f = _filter(fname, gen)
    x = torch.randn(2, 3, 7, 9, generator=gen)

    def run(fn):
        xs = x.clone().requires_grad_(True)
        y = fn(xs)
        # The op is linear, so the second order that matters (R1's double backward) is the derivative
        # of the input gradient with respect to the incoming gradient: the backward of the backward.
        r = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        (gx,) = torch.autograd.grad(y, [xs], r, create_graph=True)
        (ggr,) = torch.autograd.grad(gx.square().sum(), [r])
        return y, gx, ggr

    got = run(lambda x_: ufd._cuda_call(x_, f, up, down, padding, flip, gain))
    want = run(lambda x_: ufd._upfirdn2d_ref(x_, f, up, down, padding, flip, gain))
    for name, a, e in zip(("y", "dx", "d2"), got, want):
        # float32 sums of at most 15 products (summation order differs from conv2d's).
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5, msg=f"{name} differs")


def test_kernel_paths_return_the_reference_dtype_under_autocast(host_kernels):
    """Custom autograd Functions are not autocast-aware: the CUDA paths must hand the same dtype
    downstream as the references do (upfirdn2d's conv2d is autocast-listed; bias_act's ops are not)."""
    x, f, b = torch.randn(1, 2, 6, 6), ufd.setup_filter([1, 3, 3, 1]), torch.randn(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ufd._cuda_call(x, f, 2, 1, [2, 1, 2, 1], False, 4.0)
        want = ufd._upfirdn2d_ref(x, f, 2, 1, [2, 1, 2, 1], False, 4.0)
        assert got.dtype == want.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), atol=0.05, rtol=0.02)  # bf16 rounding
        assert ba._cuda_call(x, b, 1, "lrelu", None, None).dtype == ba._bias_act_ref(x, b, 1, "lrelu", None,
                                                                                     None).dtype


# ----------------------------------------------------------------------------- self-checks

def test_self_checks_accept_the_kernels_and_reject_wrong_ones(host_kernels):
    cpu = torch.device("cpu")
    assert ss.self_check(lambda p, c, bw, red, det: _sampler_kernel(p, c, bw, red, det), cpu) is None
    assert ba.self_check(ba._cuda_call, cpu) is None
    assert ufd.self_check(ufd._cuda_call, cpu) is None
    # Wrong forward: off by a small constant.
    msg = ss.self_check(lambda p, c, bw, red, det: ss._spherical_sample_ref(p, c, bw, red) + 1e-3, cpu)
    assert msg is not None and "output" in msg
    # Right forward, wrong coordinate gradient (detached coords): caught by the gradient comparison.
    msg = ss.self_check(lambda p, c, bw, red, det: ss._spherical_sample_ref(p, c.detach(), bw, red), cpu)
    assert msg is not None and "gradient of input 1" in msg
    # upfirdn2d with the filter flip forgotten; bias_act with the wrong slope.
    msg = ufd.self_check(lambda x, f, up, down, pad, flip, gain: ufd._upfirdn2d_ref(x, f, up, down, pad, not flip,
                                                                                   gain), cpu)
    assert msg is not None and "flip_filter" in msg
    msg = ba.self_check(lambda x, b, dim, act, gain, clamp: ba._bias_act_ref(
        x, b, dim, "relu" if act == "lrelu" else act, gain, clamp), cpu)
    assert msg is not None and "act=lrelu" in msg


def test_refused_kernel_warns_once_and_dispatch_falls_back(monkeypatch):
    """A kernel whose self-check fails is refused with one warning; 'auto' then picks the reference and
    impl='cuda' says why. Runs on CPU: the 'CUDA tensor' is a stand-in object, the candidate a wrong
    CPU function."""
    wrong = lambda p, c, bw, red, det: ss._spherical_sample_ref(p, c, bw, red) * 1.01  # noqa: E731
    kernel = custom_ops.LazyKernel("spherical_sample", build=lambda: types.SimpleNamespace(),
                                   self_check=lambda module: ss.self_check(wrong, torch.device("cpu")))
    monkeypatch.setattr(ss, "_KERNEL", kernel)
    monkeypatch.setitem(dispatch._cuda_available, "spherical_sample", kernel.is_available)
    fake_cuda = types.SimpleNamespace(is_cuda=True, device="cuda:0")
    with pytest.warns(RuntimeWarning, match="self-check against the pure-PyTorch reference failed"):
        assert dispatch.resolve_impl("spherical_sample", "auto", fake_cuda) == "ref"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call must not warn again
        assert dispatch.resolve_impl("spherical_sample", "auto", fake_cuda) == "ref"
        with pytest.raises(RuntimeError, match="self-check"):
            try:
                dispatch.resolve_impl("spherical_sample", "cuda", fake_cuda)
            except RuntimeError as exc:
                raise kernel.explain(exc) from None
    assert "output" in kernel.failure


def test_failed_build_is_refused_with_the_build_error(monkeypatch):
    def build():
        raise RuntimeError("building the CUDA extension 'x' failed: nvcc exploded")
    kernel = custom_ops.LazyKernel("bias_act", build=build, self_check=lambda module: None)
    with pytest.warns(RuntimeWarning, match="nvcc exploded"):
        assert kernel.is_available() is False
    assert kernel.is_available() is False and "nvcc exploded" in kernel.failure


def test_accepted_kernel_is_available():
    kernel = custom_ops.LazyKernel("upfirdn2d", build=lambda: "module", self_check=lambda module: None)
    assert kernel.is_available() and kernel.module == "module" and kernel.failure is None


# ----------------------------------------------------------------------------- build and dispatch plumbing

def test_build_key_changes_with_sources_flags_versions_and_arch(tmp_path):
    src, hdr = tmp_path / "op.cu", tmp_path / "op.h"
    src.write_text("// kernel v1\n")
    hdr.write_text("#pragma once\n")
    base = dict(torch_version="2.13.0", cuda_version="12.8", capability=(9, 0))
    key = custom_ops.build_key("op", [src], [hdr], ["-O3"], **base)
    assert key == custom_ops.build_key("op", [src], [hdr], ["-O3"], **base)  # stable
    src.write_text("// kernel v2\n")
    changed_src = custom_ops.build_key("op", [src], [hdr], ["-O3"], **base)
    hdr.write_text("#pragma once // edited\n")
    changed_hdr = custom_ops.build_key("op", [src], [hdr], ["-O3"], **base)
    others = [custom_ops.build_key("op", [src], [hdr], ["-O2"], **base),
              custom_ops.build_key("op", [src], [hdr], ["-O3"], **{**base, "capability": (8, 0)}),
              custom_ops.build_key("op", [src], [hdr], ["-O3"], **{**base, "torch_version": "2.14.0"}),
              custom_ops.build_key("op", [src], [hdr], ["-O3"], **{**base, "cuda_version": "13.0"})]
    keys = [key, changed_src, changed_hdr] + others
    assert len(set(keys)) == len(keys)


def test_arch_flags_name_one_architecture():
    assert custom_ops.arch_flags((9, 0)) == ["-gencode=arch=compute_90,code=sm_90"]
    assert custom_ops.arch_flags((8, 6)) == ["-gencode=arch=compute_86,code=sm_86"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_get_extension_without_cuda_names_the_toolchain():
    with pytest.raises(RuntimeError) as info:
        custom_ops.get_extension("spherical_sample", ["spherical_sample.cpp", "spherical_sample.cu"])
    msg = str(info.value)
    for word in ("nvcc", "CUDA_HOME", "ninja", "SPHEREHEAD_OPS=ref", "torch.cuda.is_available() is False"):
        assert word in msg, word


def test_impl_cuda_on_cpu_tensors_is_a_clear_error():
    planes, coords = torch.zeros(1, 2, 3, 2, 4, 4), torch.zeros(1, 3, 3)
    with pytest.raises(RuntimeError, match="impl='cuda' needs CUDA tensors"):
        ss.spherical_sample(planes, coords, impl="cuda")
    with pytest.raises(RuntimeError, match="impl='cuda' needs CUDA tensors"):
        ba.bias_act(torch.zeros(2, 3), impl="cuda")
    with pytest.raises(RuntimeError, match="impl='cuda' needs CUDA tensors"):
        ufd.upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(1, 1), impl="cuda")


def test_sphereheads_ops_ref_overrides_an_available_kernel(monkeypatch):
    fake_cuda = types.SimpleNamespace(is_cuda=True, device="cuda:0")
    monkeypatch.setitem(dispatch._cuda_available, "bias_act", lambda: True)
    monkeypatch.delenv("SPHEREHEAD_OPS", raising=False)
    assert dispatch.resolve_impl("bias_act", "auto", fake_cuda) == "cuda"
    monkeypatch.setenv("SPHEREHEAD_OPS", "ref")
    assert dispatch.resolve_impl("bias_act", "auto", fake_cuda) == "ref"
    with custom_ops.reference_ops():  # the benchmarks' in-process switch does the same without the environment
        monkeypatch.delenv("SPHEREHEAD_OPS")
        assert dispatch.resolve_impl("bias_act", "auto", fake_cuda) == "ref"
    assert dispatch.resolve_impl("bias_act", "auto", fake_cuda) == "cuda"


def test_cpu_calls_never_build_or_check(monkeypatch):
    """impl='auto' on CPU tensors must not touch the kernel loader (nothing is compiled on CPU machines)."""
    called = []
    monkeypatch.setitem(dispatch._cuda_available, "spherical_sample", lambda: called.append(1) or True)
    ss.spherical_sample(torch.randn(1, 2, 3, 2, 4, 4), torch.zeros(1, 2, 3))
    assert not called


def test_unsupported_dtype_falls_back_under_auto_and_errors_under_cuda(monkeypatch):
    """float64 planes are reference-only: 'auto' takes the reference silently, 'cuda' refuses clearly."""
    monkeypatch.setitem(dispatch._cuda_available, "spherical_sample", lambda: True)
    planes = types.SimpleNamespace(is_cuda=True, device="cuda:0", dtype=torch.float64)
    coords = types.SimpleNamespace(device="cuda:0", dtype=torch.float32, is_floating_point=lambda: True)
    assert ss._use_cuda("auto", planes, coords) is False
    with pytest.raises(RuntimeError, match="float64"):
        ss._use_cuda("cuda", planes, coords)


# ----------------------------------------------------------------------------- GPU: the real kernels

cuda = pytest.mark.cuda
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Relative tolerances for comparing a reduced-precision kernel result with the float32 reference on
# the same (already rounded) inputs: the kernel computes in float32 and rounds once on output, so the
# error is about one output ulp (fp16 2^-11, bf16 2^-8) times the value, doubled for headroom.
ROUNDING = {torch.float32: 1e-5, torch.float16: 2 * 2 ** -11, torch.bfloat16: 2 * 2 ** -8}


def _require(op_module):
    assert op_module._KERNEL.is_available(), op_module._KERNEL.failure


GPU_SAMPLER_SHAPES = [(1, 1, 3, 4, 4, 1.0), (2, 37, 5, 6, 10, 1.0), (1, 1001, 32, 32, 24, 1.3),
                      (3, 50, 4, 8, 8, 0.7), (2, 129, 7, 7, 9, 1.0)]


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", GPU_SAMPLER_SHAPES)
@pytest.mark.parametrize("reduce", ["none", "mean"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_gpu_sampler_matches_reference(dtype, shape, reduce, deterministic):
    _require(ss)
    n, m, c, h, w, box_warp = shape
    gen = torch.Generator().manual_seed(m)
    planes = torch.randn(n, 2, 3, c, h, w, generator=gen).to("cuda", dtype)
    coords = _coords(n, m, gen, scale=1.4 * box_warp, special=_specials(h, w)).cuda()
    grad_out = torch.randn(n, *([3] if reduce == "none" else []), m, c, generator=gen).to("cuda", dtype)
    out, (gp, gc) = _grads(lambda p, x: ss.spherical_sample(p, x, box_warp, reduce, impl="cuda",
                                                            deterministic=deterministic), [planes, coords], grad_out)
    # The spec in float32 on the same rounded planes and grad_out.
    ref_out, (ref_gp, ref_gc) = _grads(lambda p, x: ss.spherical_sample(p, x, box_warp, reduce, impl="ref"),
                                       [planes.float(), coords], grad_out.float())
    assert out.dtype == dtype and gp.dtype == dtype and gc.dtype == torch.float32
    tol = ROUNDING[dtype]
    # Features and plane gradients are O(1) (|planes| ≲ 4): tol absolute and relative.
    torch.testing.assert_close(out.float(), ref_out, atol=tol * 4, rtol=tol)
    torch.testing.assert_close(gp.float(), ref_gp, atol=tol * 4, rtol=tol)
    # Coordinate gradients are computed in float32 from the same texels in both, so float32 rounding
    # (atan2/cos, float atomics' order does not enter) scaled by their magnitude (up to ~1e3 near axes).
    torch.testing.assert_close(gc, ref_gc, atol=1e-3, rtol=1e-4)


@cuda
def test_gpu_sampler_poles_origin_seams():
    _require(ss)
    gen = torch.Generator().manual_seed(7)
    planes = torch.randn(1, 2, 3, 4, 8, 10, generator=gen).cuda()
    coords = torch.tensor([ORIGIN + ON_AXIS + SEAMS]).cuda()
    grad_out = torch.randn(1, 3, coords.shape[1], 4, generator=gen).cuda()
    out, (gp, gc) = _grads(lambda p, x: ss.spherical_sample(p, x, impl="cuda"), [planes, coords], grad_out)
    ref_out, (ref_gp, _) = _grads(lambda p, x: ss.spherical_sample(p, x, impl="ref"), [planes, coords], grad_out)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)  # float32 rounding only
    torch.testing.assert_close(gp, ref_gp, atol=1e-5, rtol=1e-5)
    assert torch.all(gc[0, 0] == 0)  # origin: zero gradient, as the reference
    # Exact axis points: ill-conditioned in both implementations (see the host test); finite is the contract.
    assert torch.isfinite(gc).all()


@cuda
def test_gpu_sampler_deterministic_is_bitwise_repeatable():
    _require(ss)
    gen = torch.Generator().manual_seed(9)
    planes = torch.randn(2, 2, 3, 8, 16, 16, generator=gen).cuda()
    coords = _coords(2, 20000, gen, scale=0.6).cuda()  # ~80 points per texel: atomics collide
    grad_out = torch.randn(2, 20000, 8, generator=gen).cuda()
    runs = [_grads(lambda p, x: ss.spherical_sample(p, x, reduce="mean", impl="cuda", deterministic=True),
                   [planes, coords], grad_out)[1][0] for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act, dim, gain, clamp", BIAS_ACT_CASES)
def test_gpu_bias_act_matches_reference(dtype, act, dim, gain, clamp):
    _require(ba)
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(2, 5, 3, 33, generator=gen) * 4).to("cuda", dtype)
    b = torch.randn(x.shape[dim], generator=gen).to("cuda", dtype)
    r = torch.randn(x.shape, generator=gen).to("cuda", dtype)

    def run(fn, x_, b_, r_):
        xs, bs = x_.clone().requires_grad_(True), b_.clone().requires_grad_(True)
        y = fn(xs, bs)
        gx, gb = torch.autograd.grad(y, [xs, bs], r_, create_graph=True)
        loss = gx.float().square().sum()
        ggx, ggb = torch.autograd.grad(loss, [xs, bs], allow_unused=True) if loss.requires_grad else (None, None)
        return [t if t is not None else torch.zeros_like(s) for t, s in ((y, x_), (gx, x_), (gb, b_), (ggx, x_),
                                                                          (ggb, b_))]

    got = run(lambda x_, b_: ba.bias_act(x_, b_, dim, act, gain, clamp, impl="cuda"), x, b, r)
    want = run(lambda x_, b_: ba.bias_act(x_, b_, dim, act, gain, clamp, impl="ref"), x.float(), b.float(), r.float())
    tol = ROUNDING[dtype]
    for name, a, e in zip(("y", "dx", "db", "d2x", "d2b"), got, want):
        # Values up to ~|gain·x| ≈ 20 (and sums of 30-200 of them for db): scale atol accordingly.
        # Reduced precision: the bias/second-order reductions run in that dtype in torch.sum, so
        # their error grows with the count; the relative tolerance is widened 8x for them.
        scale = 8 if name in ("db", "d2b") and dtype != torch.float32 else 1
        torch.testing.assert_close(a.float(), e.float(), atol=tol * 20 * scale, rtol=tol * scale, msg=name)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fname, up, down, padding, flip, gain", UPFIRDN_CASES)
def test_gpu_upfirdn2d_matches_reference(dtype, fname, up, down, padding, flip, gain):
    _require(ufd)
    gen = torch.Generator().manual_seed(13)
    f = _filter(fname, gen).cuda()
    x = torch.randn(2, 3, 17, 24, generator=gen).to("cuda", dtype)

    def run(fn, x_):
        xs = x_.clone().requires_grad_(True)
        y = fn(xs)
        r = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(y.device, y.dtype)
        r.requires_grad_(True)  # linear op: second order = backward of the backward (see the host test)
        (gx,) = torch.autograd.grad(y, [xs], r, create_graph=True)
        (ggr,) = torch.autograd.grad(gx.float().square().sum(), [r])
        return y, gx, ggr

    got = run(lambda x_: ufd.upfirdn2d(x_, f, up, down, padding, flip, gain, impl="cuda"), x)
    want = run(lambda x_: ufd.upfirdn2d(x_, f, up, down, padding, flip, gain, impl="ref"), x.float())
    tol = ROUNDING[dtype]
    for name, a, e in zip(("y", "dx", "d2"), got, want):
        # Outputs are gain-weighted sums of ≤ 15 O(1) inputs; the second order multiplies two of them.
        torch.testing.assert_close(a.float(), e.float(), atol=tol * 40, rtol=tol * 4, msg=name)


@cuda
def test_gpu_generator_forward_with_kernels_equals_reference(official_small, monkeypatch):
    """The parity fixture's synthesis on the GPU with the CUDA ops vs with the references (and both vs
    the fixture's CPU outputs). The importance step re-samples depths from the coarse pass, so float
    rounding in the sampler is amplified: the fixture's own synthesis tolerance (2e-3) applies."""
    import numpy as np

    import spherehead
    for op in (ss, ba, ufd):
        _require(op)
    # cuDNN convolutions default to TF32 on Ampere/Hopper (~1e-3 relative): off, so that the comparison
    # with the fixture's float32 CPU outputs measures the kernels, not the convolution precision.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    nets = spherehead.load_network(official_small / "network-snapshot.pkl", device=torch.device("cuda"))
    G = nets["G_ema"]
    with np.load(official_small / "expected.npz") as data:
        e = {k: torch.from_numpy(data[k]).cuda() for k in data.files}

    def synth():
        with torch.no_grad():
            return G.synthesis(e["ws"], e["c_adapted"], noise_mode="const", deterministic=True)

    monkeypatch.setenv("SPHEREHEAD_OPS", "ref")
    ref = synth()
    monkeypatch.delenv("SPHEREHEAD_OPS")
    got = synth()
    for key in ("image", "image_raw", "image_depth", "image_mask", "image_parsing"):
        torch.testing.assert_close(got[key], ref[key], atol=2e-3, rtol=0, msg=key)
        torch.testing.assert_close(got[key].float(), e["synthesis_" + key].float(), atol=2e-3, rtol=0, msg=key)
