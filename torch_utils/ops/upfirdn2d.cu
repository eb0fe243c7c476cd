// CUDA kernel of upfirdn2d: a general direct kernel, one thread per output element (grid-stride)
// looping over the filter taps that can hit a non-zero of the upsampled input (upfirdn2d.h). It
// reads each input texel from L1/L2 up to ceil(fh/up)·ceil(fw/up) times instead of staging tiles in
// shared memory: simple and general (any up, down, pad, filter size); a tiled variant for the 4×4
// up/down-by-2 case is the obvious next step once it can be measured. Accumulates in float32.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "upfirdn2d.h"

namespace spherehead {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
upfirdn2d_kernel(upfirdn2d::Params p, const T* __restrict__ x, const float* __restrict__ g, T* __restrict__ y) {
  const int64_t total = p.planes * p.out_h * (int64_t)p.out_w;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    upfirdn2d::output_element(i, p, x, g, y);
}

template <typename T>
void launch(const upfirdn2d::Params& p, const void* x, const float* g, void* y, cudaStream_t stream) {
  const int64_t total = p.planes * p.out_h * (int64_t)p.out_w;
  int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > ((int64_t)1 << 20)) blocks = (int64_t)1 << 20;
  upfirdn2d_kernel<T><<<(unsigned)blocks, kThreads, 0, stream>>>(p, static_cast<const T*>(x), g, static_cast<T*>(y));
}

}  // namespace

const char* upfirdn2d_launch(int dtype, const upfirdn2d::Params& params, const void* x, const float* g, void* y,
                             void* stream) {
  if (params.planes * params.out_h * (int64_t)params.out_w == 0) return nullptr;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: launch<float>(params, x, g, y, s); break;
    case 1: launch<__half>(params, x, g, y, s); break;
    case 2: launch<__nv_bfloat16>(params, x, g, y, s); break;
    default: return "upfirdn2d: unsupported dtype code";
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace spherehead
