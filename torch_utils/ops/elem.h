// Shared by the custom ops' math headers (spherical_sample.h, bias_act.h, upfirdn2d.h): the
// host/device qualifier and the element conversions. Math is done in float32; reduced-precision
// elements (CUDA builds only) are read with to_float and rounded once by store.
#pragma once

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

#ifndef SPHEREHEAD_HD
#if defined(__CUDACC__)
#define SPHEREHEAD_HD __host__ __device__ __forceinline__
#else
#define SPHEREHEAD_HD inline
#endif
#endif

namespace spherehead {

SPHEREHEAD_HD float to_float(float v) { return v; }
SPHEREHEAD_HD void store(float* p, float v) { *p = v; }

#if defined(__CUDACC__)
SPHEREHEAD_HD float to_float(__half v) { return __half2float(v); }
SPHEREHEAD_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
SPHEREHEAD_HD void store(__half* p, float v) { *p = __float2half_rn(v); }
SPHEREHEAD_HD void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
#endif

}  // namespace spherehead
