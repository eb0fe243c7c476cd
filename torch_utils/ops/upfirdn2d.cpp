// Python bindings of the upfirdn2d CUDA kernel (upfirdn2d.cu); autograd lives in upfirdn2d.py.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "bindings.h"
#include "upfirdn2d.h"

namespace {

// x [N, C, H, W] contiguous; g [fh, fw] float32 correlation filter (flip and gain already applied).
at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& g, int64_t up, int64_t down, int64_t px0, int64_t px1,
                     int64_t py0, int64_t py1) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 4 && x.is_contiguous(), "upfirdn2d (CUDA): x must be contiguous [N, C, H, W]");
  TORCH_CHECK(g.is_cuda() && g.device() == x.device() && g.dim() == 2 && g.is_contiguous() &&
                  g.scalar_type() == at::kFloat,
              "upfirdn2d (CUDA): the filter must be a contiguous float32 [fh, fw] on x's device");
  TORCH_CHECK(up >= 1 && down >= 1, "upfirdn2d (CUDA): up and down must be >= 1");
  const int64_t H = x.size(2), W = x.size(3), fh = g.size(0), fw = g.size(1);
  TORCH_CHECK(fh >= 1 && fw >= 1, "upfirdn2d (CUDA): empty filter");
  const int64_t padded_h = H * up + py0 + py1, padded_w = W * up + px0 + px1;
  TORCH_CHECK(padded_h >= fh && padded_w >= fw, "upfirdn2d (CUDA): the padded input (", padded_h, "x", padded_w,
              ") is smaller than the filter (", fh, "x", fw, ")");
  const int64_t out_h = (padded_h - fh) / down + 1, out_w = (padded_w - fw) / down + 1;
  TORCH_CHECK(H * up < (1LL << 31) && W * up < (1LL << 31) && out_h < (1LL << 31) && out_w < (1LL << 31),
              "upfirdn2d (CUDA): image too large");
  spherehead::upfirdn2d::Params p;
  p.planes = x.size(0) * x.size(1);
  p.in_h = static_cast<int>(H);
  p.in_w = static_cast<int>(W);
  p.out_h = static_cast<int>(out_h);
  p.out_w = static_cast<int>(out_w);
  p.up = static_cast<int>(up);
  p.down = static_cast<int>(down);
  p.pad_x0 = static_cast<int>(px0);
  p.pad_y0 = static_cast<int>(py0);
  p.filter_h = static_cast<int>(fh);
  p.filter_w = static_cast<int>(fw);
  const c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
  const int dtype = spherehead::dtype_code(x.scalar_type(), "upfirdn2d (CUDA): x");
  const char* err = spherehead::upfirdn2d_launch(dtype, p, x.data_ptr(), g.data_ptr<float>(),
                                                 y.data_ptr(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "upfirdn2d (CUDA) kernel failed: ", err == nullptr ? "" : err);
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d, "FIR upsample, pad, filter, downsample");
}
