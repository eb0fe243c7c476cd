// CUDA kernels of the fused dual spherical tri-plane sampler. The math lives in
// spherical_sample.h (shared with the host build the CPU tests run); this file only maps threads to
// points and picks the element type. No torch headers: tensors are handled in spherical_sample.cpp,
// which keeps this file quick to compile (also in CI, with no GPU).
//
// Thread mapping: one thread per point, looping over the C channels (see spherical_sample.h for
// why). Backward: the same mapping; ∂L/∂point is a per-thread sum in a fixed order (deterministic),
// ∂L/∂planes is scattered with atomics — float32 atomicAdd by default, or int64 fixed-point
// atomics (FixedAccum) when determinism is asked for. For float16/bfloat16 planes the texels are
// read as such and everything is accumulated in float32; ∂L/∂planes goes through a float32 (or
// int64) buffer and is cast by the caller.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "spherical_sample.h"

namespace spherehead {
namespace {

constexpr int kThreads = 128;  // the backward keeps ~24 taps + 14 accumulators per thread in registers

int64_t num_blocks(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return blocks < (int64_t)1 << 20 ? blocks : (int64_t)1 << 20;  // grid-stride loops cover the rest
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
forward_kernel(sph::Shape sh, const T* __restrict__ planes, const float* __restrict__ coords, sph::Rotations rot,
               float scale, T* __restrict__ out) {
  const int64_t total = sh.N * sh.M;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    sph::forward_point(i, sh, planes, coords, rot, scale, out);
}

template <typename T, typename Accum>
__global__ void __launch_bounds__(kThreads)
backward_kernel(sph::Shape sh, const T* __restrict__ grad_out, const T* __restrict__ planes,
                const float* __restrict__ coords, sph::Rotations rot, float scale, bool need_planes, Accum acc,
                float* __restrict__ grad_coords) {
  const int64_t total = sh.N * sh.M;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    sph::backward_point(i, sh, grad_out, planes, coords, rot, scale, need_planes, acc, grad_coords);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
backward_fixed_kernel(sph::Shape sh, const T* __restrict__ grad_out, const T* __restrict__ planes,
                      const float* __restrict__ coords, sph::Rotations rot, float scale,
                      unsigned long long* __restrict__ acc_base, const float* __restrict__ absmax,
                      float* __restrict__ grad_coords) {
  // The scale is derived on the device from max|grad_out| (no host synchronisation).
  const float gmax = *absmax;
  const sph::FixedAccum acc{acc_base, sph::fixed_point_scale(gmax, sh.M), (bool)isfinite(gmax)};
  const int64_t total = sh.N * sh.M;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    sph::backward_point(i, sh, grad_out, planes, coords, rot, scale, true, acc, grad_coords);
}

__global__ void fixed_to_float_kernel(const unsigned long long* __restrict__ acc, const float* __restrict__ absmax,
                                      int64_t M, int64_t count, float* __restrict__ out) {
  const float gmax = *absmax;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = sph::fixed_to_float(acc[i], gmax, M);
}

template <typename T>
void launch_forward(const sph::Shape& sh, const void* planes, const float* coords, const sph::Rotations& rot,
                    float scale, void* out, cudaStream_t stream) {
  forward_kernel<T><<<(unsigned)num_blocks(sh.N * sh.M), kThreads, 0, stream>>>(
      sh, static_cast<const T*>(planes), coords, rot, scale, static_cast<T*>(out));
}

template <typename T>
void launch_backward(const sph::Shape& sh, const void* grad_out, const void* planes, const float* coords,
                     const sph::Rotations& rot, float scale, float* gp32, unsigned long long* gpfix,
                     const float* absmax, float* gc, cudaStream_t stream) {
  const unsigned blocks = (unsigned)num_blocks(sh.N * sh.M);
  const T* go = static_cast<const T*>(grad_out);
  const T* pl = static_cast<const T*>(planes);
  if (gpfix != nullptr) {
    backward_fixed_kernel<T><<<blocks, kThreads, 0, stream>>>(sh, go, pl, coords, rot, scale, gpfix, absmax, gc);
  } else {
    const sph::FloatAccum acc{gp32};
    backward_kernel<T, sph::FloatAccum><<<blocks, kThreads, 0, stream>>>(sh, go, pl, coords, rot, scale,
                                                                         gp32 != nullptr, acc, gc);
  }
}

const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* spherical_sample_forward_launch(int dtype, const sph::Shape& shape, const void* planes,
                                            const float* coords, const sph::Rotations& rot, float scale,
                                            void* out, void* stream) {
  if (shape.N * shape.M == 0) return nullptr;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: launch_forward<float>(shape, planes, coords, rot, scale, out, s); break;
    case 1: launch_forward<__half>(shape, planes, coords, rot, scale, out, s); break;
    case 2: launch_forward<__nv_bfloat16>(shape, planes, coords, rot, scale, out, s); break;
    default: return "spherical_sample: unsupported dtype code";
  }
  return last_error();
}

const char* spherical_sample_backward_launch(int dtype, const sph::Shape& shape, const void* grad_out,
                                             const void* planes, const float* coords,
                                             const sph::Rotations& rot, float scale, float* grad_planes_f32,
                                             unsigned long long* grad_planes_fixed,
                                             const float* grad_out_absmax, float* grad_coords, void* stream) {
  if (shape.N * shape.M == 0) return nullptr;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: launch_backward<float>(shape, grad_out, planes, coords, rot, scale, grad_planes_f32,
                                   grad_planes_fixed, grad_out_absmax, grad_coords, s); break;
    case 1: launch_backward<__half>(shape, grad_out, planes, coords, rot, scale, grad_planes_f32,
                                    grad_planes_fixed, grad_out_absmax, grad_coords, s); break;
    case 2: launch_backward<__nv_bfloat16>(shape, grad_out, planes, coords, rot, scale, grad_planes_f32,
                                           grad_planes_fixed, grad_out_absmax, grad_coords, s); break;
    default: return "spherical_sample: unsupported dtype code";
  }
  return last_error();
}

const char* spherical_sample_fixed_to_float_launch(const unsigned long long* acc, const float* grad_out_absmax,
                                                   int64_t M, int64_t count, float* out, void* stream) {
  if (count == 0) return nullptr;
  fixed_to_float_kernel<<<(unsigned)num_blocks(count), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      acc, grad_out_absmax, M, count, out);
  return last_error();
}

}  // namespace spherehead
