// Python bindings of the fused spherical tri-plane sampler: argument checks, allocation and the
// launch on the current stream. The kernels are in spherical_sample.cu, the math in
// spherical_sample.h; the autograd wrapper is _SphericalSampleCuda in spherical_sample.py.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "bindings.h"
#include "spherical_sample.h"

namespace {

spherehead::sph::Rotations to_rotations(const std::vector<double>& rot) {
  TORCH_CHECK(rot.size() == 18, "spherical_sample (CUDA): expected 18 rotation entries (2 row-major 3x3), got ",
              rot.size());
  spherehead::sph::Rotations r;
  for (int s = 0; s < 2; ++s)
    for (int j = 0; j < 9; ++j) r.r[s][j] = static_cast<float>(rot[s * 9 + j]);
  return r;
}

spherehead::sph::Shape check_inputs(const at::Tensor& planes, const at::Tensor& coords, bool mean) {
  TORCH_CHECK(planes.is_cuda() && coords.is_cuda(), "spherical_sample (CUDA): planes and coords must be CUDA tensors");
  TORCH_CHECK(planes.device() == coords.device(), "spherical_sample (CUDA): planes and coords on different devices");
  TORCH_CHECK(planes.dim() == 6 && planes.size(1) == 2 && planes.size(2) == 3,
              "spherical_sample (CUDA): planes must be [N, 2, 3, C, H, W], got ", planes.sizes());
  TORCH_CHECK(planes.is_contiguous(), "spherical_sample (CUDA): planes must be contiguous");
  TORCH_CHECK(coords.dim() == 3 && coords.size(0) == planes.size(0) && coords.size(2) == 3,
              "spherical_sample (CUDA): coords must be [N, M, 3], got ", coords.sizes());
  TORCH_CHECK(coords.scalar_type() == at::kFloat && coords.is_contiguous(),
              "spherical_sample (CUDA): coords must be contiguous float32");
  const int64_t C = planes.size(3), H = planes.size(4), W = planes.size(5);
  TORCH_CHECK(H >= 1 && W >= 1, "spherical_sample (CUDA): empty planes ", planes.sizes());
  TORCH_CHECK(C < (1LL << 31) && H * W < (1LL << 31), "spherical_sample (CUDA): planes too large ", planes.sizes());
  spherehead::sph::Shape sh;
  sh.N = planes.size(0);
  sh.M = coords.size(1);
  sh.C = static_cast<int>(C);
  sh.H = static_cast<int>(H);
  sh.W = static_cast<int>(W);
  sh.mean = mean;
  return sh;
}

void check_launch(const char* err, const char* what) {
  TORCH_CHECK(err == nullptr, "spherical_sample (CUDA) ", what, " failed: ", err == nullptr ? "" : err);
}

// planes [N, 2, 3, C, H, W], coords [N, M, 3] float32 -> [N, 3, M, C] (or [N, M, C] if mean), planes' dtype.
at::Tensor forward(const at::Tensor& planes, const at::Tensor& coords, const std::vector<double>& rot, double scale,
                   bool mean) {
  const auto sh = check_inputs(planes, coords, mean);
  const c10::cuda::CUDAGuard guard(planes.device());
  auto out = mean ? at::empty({sh.N, sh.M, sh.C}, planes.options())
                  : at::empty({sh.N, 3, sh.M, sh.C}, planes.options());
  const int dtype = spherehead::dtype_code(planes.scalar_type(), "spherical_sample (CUDA): planes");
  check_launch(spherehead::spherical_sample_forward_launch(
                   dtype, sh, planes.data_ptr(), coords.data_ptr<float>(),
                   to_rotations(rot), static_cast<float>(scale), out.data_ptr(),
                   c10::cuda::getCurrentCUDAStream().stream()),
               "forward");
  return out;
}

// Returns {grad_planes (planes' dtype, or undefined), grad_coords (float32, or undefined)}.
std::vector<at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& planes, const at::Tensor& coords,
                                 const std::vector<double>& rot, double scale, bool mean, bool need_planes,
                                 bool need_coords, bool deterministic) {
  const auto sh = check_inputs(planes, coords, mean);
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == planes.scalar_type() &&
                  grad_out.device() == planes.device(),
              "spherical_sample (CUDA): grad_out must be contiguous, on the planes' device and of their dtype");
  if (mean) {
    TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == sh.N && grad_out.size(1) == sh.M && grad_out.size(2) == sh.C,
                "spherical_sample (CUDA): grad_out must be [N, M, C], got ", grad_out.sizes());
  } else {
    TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == sh.N && grad_out.size(1) == 3 && grad_out.size(2) == sh.M &&
                    grad_out.size(3) == sh.C,
                "spherical_sample (CUDA): grad_out must be [N, 3, M, C], got ", grad_out.sizes());
  }
  const c10::cuda::CUDAGuard guard(planes.device());
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto f32 = planes.options().dtype(at::kFloat);
  at::Tensor gp32, gpfix, absmax, gc;
  if (need_planes && deterministic) {
    gpfix = at::zeros(planes.sizes(), planes.options().dtype(at::kLong));
    absmax = grad_out.abs().amax().to(at::kFloat).reshape({1});
  } else if (need_planes) {
    gp32 = at::zeros(planes.sizes(), f32);
  }
  if (need_coords) gc = at::empty({sh.N, sh.M, 3}, f32);
  if (!need_planes && !need_coords) return {at::Tensor(), at::Tensor()};
  const int dtype = spherehead::dtype_code(planes.scalar_type(), "spherical_sample (CUDA): planes");
  check_launch(spherehead::spherical_sample_backward_launch(
                   dtype, sh, grad_out.data_ptr(), planes.data_ptr(),
                   coords.data_ptr<float>(), to_rotations(rot), static_cast<float>(scale),
                   gp32.defined() ? gp32.data_ptr<float>() : nullptr,
                   gpfix.defined() ? reinterpret_cast<unsigned long long*>(gpfix.data_ptr<int64_t>()) : nullptr,
                   absmax.defined() ? absmax.data_ptr<float>() : nullptr, gc.defined() ? gc.data_ptr<float>() : nullptr,
                   stream),
               "backward");
  if (gpfix.defined()) {
    gp32 = at::empty(planes.sizes(), f32);
    check_launch(spherehead::spherical_sample_fixed_to_float_launch(
                     reinterpret_cast<const unsigned long long*>(gpfix.data_ptr<int64_t>()), absmax.data_ptr<float>(),
                     sh.M, gp32.numel(), gp32.data_ptr<float>(), stream),
                 "fixed-point conversion");
  }
  at::Tensor gp = gp32.defined() && planes.scalar_type() != at::kFloat ? gp32.to(planes.scalar_type()) : gp32;
  return {gp, gc};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused dual spherical tri-plane sampling (forward)");
  m.def("backward", &backward, "fused dual spherical tri-plane sampling (backward)");
}
