// CUDA kernel of bias_act: one thread per element (grid-stride), math in bias_act.h. Reduced-
// precision inputs are computed in float32 and rounded once on store. No torch headers (see
// bias_act.cpp for the tensor side).
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "bias_act.h"

namespace spherehead {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
bias_act_kernel(bias_act::Params p, const T* __restrict__ x, const T* __restrict__ b, const T* __restrict__ g,
                T* __restrict__ y) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < p.count; i += (int64_t)gridDim.x * blockDim.x)
    bias_act::element(i, p, x, b, g, y);
}

template <typename T>
void launch(const bias_act::Params& p, const void* x, const void* b, const void* g, void* y, cudaStream_t stream) {
  int64_t blocks = (p.count + kThreads - 1) / kThreads;
  if (blocks > ((int64_t)1 << 20)) blocks = (int64_t)1 << 20;
  bias_act_kernel<T><<<(unsigned)blocks, kThreads, 0, stream>>>(p, static_cast<const T*>(x), static_cast<const T*>(b),
                                                               static_cast<const T*>(g), static_cast<T*>(y));
}

}  // namespace

const char* bias_act_launch(int dtype, const bias_act::Params& params, const void* x, const void* b, const void* g,
                            void* y, void* stream) {
  if (params.count == 0) return nullptr;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: launch<float>(params, x, b, g, y, s); break;
    case 1: launch<__half>(params, x, b, g, y, s); break;
    case 2: launch<__nv_bfloat16>(params, x, b, g, y, s); break;
    default: return "bias_act: unsupported dtype code";
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace spherehead
