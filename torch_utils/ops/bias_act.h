// bias_act: y = clamp(gain·act(x + b), −clamp, clamp) and its first and second derivatives, per
// element. Shared by the CUDA kernel (bias_act.cu) and the host build of the CPU tests. The spec is
// `_bias_act_ref` in bias_act.py (reference.md §2.4); the derivatives are those torch's autograd
// takes through it (relu: 0 at x = 0; leaky relu: the slope at x = 0; clamp: gradient passes
// where −clamp ≤ y ≤ clamp; softplus: linear above 20, torch's default threshold).
#pragma once

#include <math.h>
#include <stdint.h>

#include "elem.h"

namespace spherehead {
namespace bias_act {

// Activation codes; the order of ACTIVATION_CODES in bias_act.py.
enum Act : int { kLinear = 0, kRelu = 1, kLrelu = 2, kTanh = 3, kSigmoid = 4, kSoftplus = 5 };

// What one launch computes: 0 y; 1 g·∂y/∂x (the backward); 2 g·∂²y/∂x² (the double backward).
enum Mode : int { kForward = 0, kGrad = 1, kGradGrad = 2 };

constexpr float kLreluSlope = 0.2f;
constexpr float kSoftplusThreshold = 20.f;

struct Params {
  int act;
  int mode;
  float gain;
  float clamp;     // < 0: no clamping
  int64_t count;   // elements of x
  int64_t channels;  // x.shape[dim] (bias length)
  int64_t inner;     // product of x.shape[dim + 1:]
  bool has_bias;
};


// f(x), f'(x), f''(x) of the activation.
SPHEREHEAD_HD void activation(int act, float x, float& f, float& d1, float& d2) {
  switch (act) {
    case kRelu:
      f = x > 0.f ? x : 0.f; d1 = x > 0.f ? 1.f : 0.f; d2 = 0.f; break;
    case kLrelu:
      f = x > 0.f ? x : x * kLreluSlope; d1 = x > 0.f ? 1.f : kLreluSlope; d2 = 0.f; break;
    case kTanh: {
      const float t = tanhf(x);
      f = t; d1 = 1.f - t * t; d2 = -2.f * t * d1; break;
    }
    case kSigmoid: {
      const float s = 1.f / (1.f + expf(-x));
      f = s; d1 = s * (1.f - s); d2 = d1 * (1.f - 2.f * s); break;
    }
    case kSoftplus:
      if (x > kSoftplusThreshold) {
        f = x; d1 = 1.f; d2 = 0.f;
      } else {
        const float z = expf(x), s = 1.f / (1.f + expf(-x));
        f = log1pf(z); d1 = z / (z + 1.f); d2 = s * (1.f - s);
      }
      break;
    default:  // linear
      f = x; d1 = 1.f; d2 = 0.f; break;
  }
}

// Element i. x, b, g and y share one element type; b is indexed by (i / inner) % channels.
template <typename T>
SPHEREHEAD_HD void element(int64_t i, const Params& p, const T* x, const T* b, const T* g, T* y) {
  float v = to_float(x[i]);
  if (p.has_bias) v += to_float(b[(i / p.inner) % p.channels]);
  float f, d1, d2;
  activation(p.act, v, f, d1, d2);
  const float out = f * p.gain;
  if (p.mode == kForward) {
    store(y + i, p.clamp >= 0.f ? fminf(fmaxf(out, -p.clamp), p.clamp) : out);
    return;
  }
  const bool passes = p.clamp < 0.f || (out >= -p.clamp && out <= p.clamp);
  const float d = passes ? p.gain * (p.mode == kGrad ? d1 : d2) : 0.f;
  store(y + i, to_float(g[i]) * d);
}

}  // namespace bias_act

// Defined in bias_act.cu. dtype 0 float32, 1 float16, 2 bfloat16; b may be null (has_bias false),
// g is read in modes 1 and 2 only; stream is a cudaStream_t. Returns nullptr or the CUDA error.
const char* bias_act_launch(int dtype, const bias_act::Params& params, const void* x, const void* b, const void* g,
                            void* y, void* stream);

}  // namespace spherehead
