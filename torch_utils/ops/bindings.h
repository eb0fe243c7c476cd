// Shared by the ops' Python bindings (*.cpp; torch headers allowed here, never in the .cu files).
#pragma once

#include <torch/extension.h>

namespace spherehead {

// The element-type code the launchers take: 0 float32, 1 float16, 2 bfloat16. ``what`` names the
// op and tensor in the error, e.g. "bias_act (CUDA): x".
inline int dtype_code(at::ScalarType t, const char* what) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: TORCH_CHECK(false, what, " must be float32, float16 or bfloat16, got ", t);
  }
  return -1;
}

}  // namespace spherehead
