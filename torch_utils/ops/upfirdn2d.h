// upfirdn2d: upsample by zero insertion, pad, correlate with a 2-D filter, keep every down-th
// sample — one output element at a time. Shared by the CUDA kernel (upfirdn2d.cu) and the host
// build of the CPU tests. The spec is `_upfirdn2d_ref` in upfirdn2d.py (reference.md §2.4).
//
// Along one axis, with u = zero-inserted input (u[k] = x[k/up] when k % up == 0, 0 ≤ k < n·up) and
// g the correlation filter (the caller flips f unless flip_filter, and folds in the gain):
//     y[o] = Σ_t g[t] · u[o·down + t − pad0],   t = 0 … taps − 1.
// Only taps with (o·down + t − pad0) % up == 0 can hit a non-zero of u, so the loop starts at the
// first such t and steps by `up`.
#pragma once

#include <stdint.h>

#include "elem.h"

namespace spherehead {
namespace upfirdn2d {

struct Params {
  int64_t planes;     // N·C
  int in_h, in_w;
  int out_h, out_w;
  int up, down;
  int pad_x0, pad_y0;  // the leading pads (negative: crop); the trailing ones only set out_h/out_w
  int filter_h, filter_w;
};


// The first tap t ≥ 0 with (j0 + t) divisible by up.
SPHEREHEAD_HD int first_tap(int j0, int up) {
  const int r = (-j0) % up;
  return r < 0 ? r + up : r;
}

// Output element i of [N·C, out_h, out_w]; x is [N·C, in_h, in_w], g is [filter_h, filter_w] float32.
template <typename T>
SPHEREHEAD_HD void output_element(int64_t i, const Params& p, const T* x, const float* g, T* y) {
  const int ox = (int)(i % p.out_w);
  const int oy = (int)((i / p.out_w) % p.out_h);
  const int64_t plane = i / ((int64_t)p.out_w * p.out_h);
  const T* xs = x + plane * p.in_h * (int64_t)p.in_w;
  const int jy0 = oy * p.down - p.pad_y0, jx0 = ox * p.down - p.pad_x0;
  const int ty0 = first_tap(jy0, p.up), tx0 = first_tap(jx0, p.up);
  float acc = 0.f;
  for (int ty = ty0; ty < p.filter_h; ty += p.up) {
    const int iy = (jy0 + ty) / p.up;  // exact: jy0 + ty is a multiple of up
    if (iy < 0 || iy >= p.in_h) continue;
    for (int tx = tx0; tx < p.filter_w; tx += p.up) {
      const int ix = (jx0 + tx) / p.up;
      if (ix < 0 || ix >= p.in_w) continue;
      acc += g[ty * p.filter_w + tx] * to_float(xs[(int64_t)iy * p.in_w + ix]);
    }
  }
  store(y + i, acc);
}

}  // namespace upfirdn2d

// Defined in upfirdn2d.cu. dtype 0 float32, 1 float16, 2 bfloat16 (x and y); g float32 on the
// device; stream is a cudaStream_t. Returns nullptr or the CUDA error string.
const char* upfirdn2d_launch(int dtype, const upfirdn2d::Params& params, const void* x, const float* g, void* y,
                             void* stream);

}  // namespace spherehead
