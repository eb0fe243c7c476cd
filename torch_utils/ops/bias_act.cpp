// Python bindings of the bias_act CUDA kernel (bias_act.cu); autograd lives in bias_act.py.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "bindings.h"
#include "bias_act.h"

namespace {

// x contiguous; b [x.shape[dim]] or empty; g like x (modes 1, 2) or empty. Returns a new tensor like x.
at::Tensor bias_act(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g, int64_t mode, int64_t act,
                    int64_t dim, double gain, double clamp) {
  TORCH_CHECK(x.is_cuda() && x.is_contiguous(), "bias_act (CUDA): x must be a contiguous CUDA tensor");
  TORCH_CHECK(mode >= 0 && mode <= 2 && act >= 0 && act <= 5, "bias_act (CUDA): bad mode ", mode, " or act ", act);
  const bool has_bias = b.defined() && b.numel() > 0;
  TORCH_CHECK(x.dim() > 0 || !has_bias, "bias_act (CUDA): a bias needs x with a channel dimension");
  if (has_bias) {
    TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act (CUDA): dim ", dim, " out of range for ", x.sizes());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim) && b.is_contiguous() && b.scalar_type() == x.scalar_type() &&
                    b.device() == x.device(),
                "bias_act (CUDA): b must be contiguous [x.shape[dim]] of x's dtype and device");
  }
  if (mode != 0) {
    TORCH_CHECK(g.defined() && g.sizes() == x.sizes() && g.is_contiguous() && g.scalar_type() == x.scalar_type() &&
                    g.device() == x.device(),
                "bias_act (CUDA): the incoming gradient must be contiguous and shaped like x");
  }
  spherehead::bias_act::Params p;
  p.act = static_cast<int>(act);
  p.mode = static_cast<int>(mode);
  p.gain = static_cast<float>(gain);
  p.clamp = static_cast<float>(clamp);
  p.count = x.numel();
  p.has_bias = has_bias;
  p.channels = has_bias ? x.size(dim) : 1;
  p.inner = 1;
  if (has_bias)
    for (int64_t d = dim + 1; d < x.dim(); ++d) p.inner *= x.size(d);
  const c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int dtype = spherehead::dtype_code(x.scalar_type(), "bias_act (CUDA): x");
  const char* err = spherehead::bias_act_launch(dtype, p, x.data_ptr(),
                                                has_bias ? b.data_ptr() : nullptr, mode != 0 ? g.data_ptr() : nullptr,
                                                y.data_ptr(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "bias_act (CUDA) kernel failed: ", err == nullptr ? "" : err);
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bias_act", &bias_act, "bias + activation + gain + clamp, and its first/second derivative");
}
