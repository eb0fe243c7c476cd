// Fused dual spherical tri-plane sampler: the per-point math, shared by the CUDA kernels
// (spherical_sample.cu) and a plain C++ host build used by the CPU tests (tests/test_cuda_ops.py).
//
// The spec is `_spherical_sample_ref` in spherical_sample.py (reference.md §3). For one point p:
//   q = scale·p (scale = 2/box_warp); per sphere s: q' = R_s q;
//   θ′ = 2·atan2(√(x'²+y'²), z')/π − 1, φ′ = atan2(y', x')/π, r′ = 2‖q'‖/√3 − 1;
//   planes 0, 1, 2 read (u, v) = (θ′, φ′), (θ′, r′), (φ′, r′), u on the width axis, bilinearly with
//   align_corners=False and zero padding;
//   w_s = ½(1 + cos πθ′)·½(1 + cos πφ′);  F_k = (F_Ak·w_A + F_Bk·w_B) / (w_A + w_B + 1e-8);
//   output F_k per plane ([N, 3, M, C]) or their mean ([N, M, C]).
//
// Thread mapping (see spherical_sample.cu): one thread per point, looping over channels. The
// geometry (two rotations, atan2/sqrt/cos, 24 texel offsets and weights) is shared by all C
// channels, so it is computed once per point instead of once per (point, channel); with the
// [N, 2, 3, C, H, W] layout the generator produces, neighbouring threads (neighbouring samples on
// a ray) then read neighbouring texels of the same channel slab, as torch's grid_sample does.
//
// Everything here is plain C++ plus the SPHEREHEAD_HD qualifier, so the host build and the CUDA
// build run the same code; no torch headers (the .cpp bindings own all tensor handling).
#pragma once

#include <math.h>
#include <stdint.h>

#include "elem.h"

namespace spherehead {
namespace sph {

constexpr float kPi = 3.14159265358979323846f;
constexpr float kSqrt3 = 1.73205080756887729353f;
constexpr float kFusionEps = 1e-8f;  // FUSION_EPS in spherical_sample.py

// Element types: to_float / store from elem.h (float always; __half / __nv_bfloat16 in CUDA builds).

// The two sphere rotations, row-major: q' = R_s q. Passed by value (72 bytes of kernel argument),
// taken from SPHERE_ROTATIONS so that the float64-built matrices' ~6e-17 residual entries match the
// reference bit for bit (they decide whether a world-axis point is exactly on a sphere's axis).
struct Rotations {
  float r[2][9];
};

// One bilinear lookup in an [H, W] plane, laid out as torch's grid_sampler_2d does it.
struct Tap {
  int32_t off[4];     // y·W + x of the nw, ne, sw, se texels (0 where invalid)
  float w[4];         // their bilinear weights
  float tx, ty;       // ix − x0, iy − y0
  float ux, uy;       // x0 + 1 − ix, y0 + 1 − iy
  uint32_t valid;     // bit j: texel j lies inside the plane (zero padding otherwise)
};

// Spherical coordinates of one rotated copy, its blend weight and (backward only) derivatives.
struct Sphere {
  float t, p, r;      // θ′, φ′, r′
  float w;            // blend weight
  float dw_dt, dw_dp; // ∂w/∂θ′, ∂w/∂φ′
  float x, y, z;      // the rotated point q'
};

struct PointGeom {
  Sphere sph[2];
  Tap tap[2][3];      // [sphere][plane]
};

// align_corners=False unnormalisation ((coord + 1)·size − 1)/2, then the four texels around it.
// ix is clamped to [−2, size + 1] first: outside [−1, size] all four texels are padding anyway, and
// the clamp keeps the float → int conversion defined for far-away (or non-finite) points.
SPHEREHEAD_HD Tap make_tap(float u, float v, int H, int W) {
  float ix = ((u + 1.f) * W - 1.f) / 2.f;
  float iy = ((v + 1.f) * H - 1.f) / 2.f;
  ix = fminf(fmaxf(ix, -2.f), (float)W + 1.f);
  iy = fminf(fmaxf(iy, -2.f), (float)H + 1.f);
  const float x0f = floorf(ix), y0f = floorf(iy);
  const int x0 = (int)x0f, y0 = (int)y0f;
  Tap t;
  t.tx = ix - x0f;
  t.ux = (x0f + 1.f) - ix;
  t.ty = iy - y0f;
  t.uy = (y0f + 1.f) - iy;
  t.w[0] = t.ux * t.uy;  // nw
  t.w[1] = t.tx * t.uy;  // ne
  t.w[2] = t.ux * t.ty;  // sw
  t.w[3] = t.tx * t.ty;  // se
  t.valid = 0;
  for (int j = 0; j < 4; ++j) {
    const int x = x0 + (j & 1), y = y0 + (j >> 1);
    const bool in = x >= 0 && x < W && y >= 0 && y < H;
    t.valid |= (in ? 1u : 0u) << j;
    t.off[j] = in ? y * W + x : 0;
  }
  return t;
}

// Mirrors sphere_coordinates() and blend_weight() of the reference, including its pole/origin
// handling: on the polar axis (x'² + y'² == 0) ρ = 0 and φ = 0; at the origin θ = 0 and ‖q‖ = 0.
SPHEREHEAD_HD Sphere make_sphere(const float* R, float qx, float qy, float qz) {
  Sphere s;
  s.x = R[0] * qx + R[1] * qy + R[2] * qz;
  s.y = R[3] * qx + R[4] * qy + R[5] * qz;
  s.z = R[6] * qx + R[7] * qy + R[8] * qz;
  const float rho2 = s.x * s.x + s.y * s.y;
  const float r2 = rho2 + s.z * s.z;
  const bool on_axis = rho2 == 0.f, origin = r2 == 0.f;
  const float rho = on_axis ? 0.f : sqrtf(rho2);
  const float norm = origin ? 0.f : sqrtf(r2);
  const float theta = origin ? 0.f : atan2f(rho, s.z);
  const float phi = on_axis ? 0.f : atan2f(s.y, s.x);
  s.t = 2.f * theta / kPi - 1.f;
  s.p = phi / kPi;
  s.r = 2.f * norm / kSqrt3 - 1.f;
  const float ct = cosf(kPi * s.t), cp = cosf(kPi * s.p);
  s.w = 0.5f * (1.f + ct) * 0.5f * (1.f + cp);
  s.dw_dt = -0.25f * kPi * sinf(kPi * s.t) * (1.f + cp);
  s.dw_dp = -0.25f * kPi * (1.f + ct) * sinf(kPi * s.p);
  return s;
}

SPHEREHEAD_HD void make_geom(const Rotations& rot, float scale, const float* p, int H, int W, PointGeom& g) {
  const float qx = scale * p[0], qy = scale * p[1], qz = scale * p[2];
  for (int s = 0; s < 2; ++s) {
    const Sphere sp = make_sphere(rot.r[s], qx, qy, qz);
    g.sph[s] = sp;
    g.tap[s][0] = make_tap(sp.t, sp.p, H, W);  // plane 0: (θ′, φ′)
    g.tap[s][1] = make_tap(sp.t, sp.r, H, W);  // plane 1: (θ′, r′)
    g.tap[s][2] = make_tap(sp.p, sp.r, H, W);  // plane 2: (φ′, r′)
  }
}

template <typename T>
SPHEREHEAD_HD float bilinear(const T* slab, const Tap& t) {
  float v = 0.f;
  for (int j = 0; j < 4; ++j)
    if (t.valid & (1u << j)) v += t.w[j] * to_float(slab[t.off[j]]);
  return v;
}

// Value and ∂/∂ix, ∂/∂iy of one lookup (torch's grid_sampler_2d_backward formulas; padding reads 0).
template <typename T>
SPHEREHEAD_HD void bilinear_grad(const T* slab, const Tap& t, float& v, float& dx, float& dy) {
  float c[4];
  for (int j = 0; j < 4; ++j) c[j] = (t.valid & (1u << j)) ? to_float(slab[t.off[j]]) : 0.f;
  v = t.w[0] * c[0] + t.w[1] * c[1] + t.w[2] * c[2] + t.w[3] * c[3];
  dx = -t.uy * c[0] + t.uy * c[1] - t.ty * c[2] + t.ty * c[3];
  dy = -t.ux * c[0] - t.tx * c[1] + t.ux * c[2] + t.tx * c[3];
}

// Shapes of one call. Element (n, s, k, c, y, x) of planes is at ((n·6 + s·3 + k)·C + c)·H·W + y·W + x.
struct Shape {
  int64_t N, M;
  int C, H, W;
  bool mean;  // output [N, M, C] (mean over planes) instead of [N, 3, M, C]
};

SPHEREHEAD_HD int64_t slab_index(const Shape& sh, int64_t n, int s, int k, int c) {
  return ((n * 6 + s * 3 + k) * sh.C + c) * ((int64_t)sh.H * sh.W);
}

// Output offset of (n, k, m, channel 0); with `mean` the plane index is ignored.
SPHEREHEAD_HD int64_t out_index(const Shape& sh, int64_t n, int k, int64_t m) {
  return sh.mean ? (n * sh.M + m) * sh.C : ((n * 3 + k) * sh.M + m) * sh.C;
}

// Forward for point i = n·M + m.
template <typename T>
SPHEREHEAD_HD void forward_point(int64_t i, const Shape& sh, const T* planes, const float* coords,
                                 const Rotations& rot, float scale, T* out) {
  const int64_t n = i / sh.M, m = i - n * sh.M;
  PointGeom g;
  make_geom(rot, scale, coords + 3 * i, sh.H, sh.W, g);
  const float wa = g.sph[0].w, wb = g.sph[1].w;
  const float denom = wa + wb + kFusionEps;
  for (int c = 0; c < sh.C; ++c) {
    float sum = 0.f;
    for (int k = 0; k < 3; ++k) {
      const float fa = bilinear(planes + slab_index(sh, n, 0, k, c), g.tap[0][k]);
      const float fb = bilinear(planes + slab_index(sh, n, 1, k, c), g.tap[1][k]);
      const float f = (fa * wa + fb * wb) / denom;
      if (sh.mean) sum += f;
      else store(out + out_index(sh, n, k, m) + c, f);
    }
    if (sh.mean) store(out + out_index(sh, n, 0, m) + c, sum / 3.f);
  }
}

// Plane-gradient accumulators. On the GPU they add atomically; in the host build, serially.
// FloatAccum: float32 atomicAdd (fast; summation order, hence the last bits, vary run to run).
struct FloatAccum {
  float* base;
  SPHEREHEAD_HD void add(int64_t idx, float v) const {
#if defined(__CUDA_ARCH__)
    atomicAdd(base + idx, v);
#else
    base[idx] += v;
#endif
  }
};

// FixedAccum: deterministic. Each contribution is rounded to a fixed-point int64 with a scale of
// 2^(62 − e), where 2^e > bound = max|grad_out|·M bounds the magnitude of any texel's total (a
// texel of one batch item receives at most one contribution per point of that item, each at most
// |grad_out| in size: bilinear weights ≤ 1, w_s/(w_A + w_B + ε) ≤ 1). Integer addition is
// associative, so the result does not depend on the order the atomics land in. Error: at most
// 0.5/scale per contribution, i.e. ≤ count·bound·2^−63 for a texel hit `count` times.
SPHEREHEAD_HD double fixed_point_scale(float gmax, int64_t M) {
  const double bound = (double)gmax * (double)M;
  if (!(bound > 0.0) || !isfinite(bound)) return 1.0;
  int e = 0;
  frexp(bound, &e);  // bound < 2^e
  return ldexp(1.0, 62 - e);
}

struct FixedAccum {
  unsigned long long* base;
  double scale;
  bool ok;  // false when max|grad_out| is not finite: nothing is added, the result becomes NaN
  SPHEREHEAD_HD void add(int64_t idx, float v) const {
    if (!ok) return;
    const long long q = llrint((double)v * scale);
#if defined(__CUDA_ARCH__)
    atomicAdd(base + idx, (unsigned long long)q);
#else
    base[idx] += (unsigned long long)q;
#endif
  }
};

SPHEREHEAD_HD float fixed_to_float(unsigned long long acc, float gmax, int64_t M) {
  if (!isfinite(gmax)) return NAN;
  return (float)((double)(long long)acc / fixed_point_scale(gmax, M));
}

// Backward for point i: adds ∂L/∂planes into `acc` (when need_planes) and writes ∂L/∂p to
// grad_coords[3i..3i+2] (when need_coords). The coordinate gradient chains: bilinear position →
// (θ′, φ′, r′) of both spheres, plus the blend weights → spherical coordinates → rotation → scale.
// Where the reference's gradient is 0 by construction (on the polar axis: θ′ and φ′; at the
// origin: all three), so is this one.
template <typename T, typename Accum>
SPHEREHEAD_HD void backward_point(int64_t i, const Shape& sh, const T* grad_out, const T* planes,
                                  const float* coords, const Rotations& rot, float scale,
                                  bool need_planes, const Accum& acc, float* grad_coords) {
  const int64_t n = i / sh.M, m = i - n * sh.M;
  PointGeom g;
  make_geom(rot, scale, coords + 3 * i, sh.H, sh.W, g);
  const float w[2] = {g.sph[0].w, g.sph[1].w};
  const float denom = w[0] + w[1] + kFusionEps;
  float gw[2] = {0.f, 0.f};                    // ∂L/∂w_s
  float gix[2][3] = {{0.f}}, giy[2][3] = {{0.f}};  // ∂L/∂ix, ∂L/∂iy per sphere and plane
  for (int c = 0; c < sh.C; ++c) {
    for (int k = 0; k < 3; ++k) {
      const float go = sh.mean ? to_float(grad_out[out_index(sh, n, 0, m) + c]) / 3.f
                               : to_float(grad_out[out_index(sh, n, k, m) + c]);
      if (go == 0.f) continue;
      float v[2], dx[2], dy[2];
      int64_t slab[2];
      for (int s = 0; s < 2; ++s) {
        slab[s] = slab_index(sh, n, s, k, c);
        bilinear_grad(planes + slab[s], g.tap[s][k], v[s], dx[s], dy[s]);
      }
      const float f = (v[0] * w[0] + v[1] * w[1]) / denom;
      for (int s = 0; s < 2; ++s) {
        gw[s] += go * (v[s] - f) / denom;  // ∂F/∂w_s = (F_s − F)/(w_A + w_B + ε)
        const float coef = go * w[s] / denom;
        gix[s][k] += coef * dx[s];
        giy[s][k] += coef * dy[s];
        if (need_planes && coef != 0.f) {
          const Tap& t = g.tap[s][k];
          for (int j = 0; j < 4; ++j)
            if (t.valid & (1u << j)) acc.add(slab[s] + t.off[j], coef * t.w[j]);
        }
      }
    }
  }
  if (grad_coords == nullptr) return;
  const float hw = 0.5f * (float)sh.W, hh = 0.5f * (float)sh.H;  // ∂ix/∂u, ∂iy/∂v
  float gq[3] = {0.f, 0.f, 0.f};
  for (int s = 0; s < 2; ++s) {
    const Sphere& sp = g.sph[s];
    const float gt = (gix[s][0] + gix[s][1]) * hw + gw[s] * sp.dw_dt;    // θ′: u of planes 0, 1
    const float gp = giy[s][0] * hh + gix[s][2] * hw + gw[s] * sp.dw_dp;  // φ′: v of 0, u of 2
    const float gr = (giy[s][1] + giy[s][2]) * hh;                        // r′: v of planes 1, 2
    const float x = sp.x, y = sp.y, z = sp.z;
    const float rho2 = x * x + y * y, r2 = rho2 + z * z;
    float d[3] = {0.f, 0.f, 0.f};  // ∂L/∂q'
    if (r2 != 0.f) {
      const float norm = sqrtf(r2);
      const float kr = gr * (2.f / kSqrt3) / norm;  // r′ = 2‖q'‖/√3 − 1
      d[0] += kr * x; d[1] += kr * y; d[2] += kr * z;
      if (rho2 != 0.f) {
        const float rho = sqrtf(rho2);
        // θ = atan2(ρ, z): ∂θ/∂ρ = z/(ρ² + z²), ∂θ/∂z = −ρ/(ρ² + z²); ∂ρ/∂(x, y) = (x, y)/ρ;
        // θ′ = 2θ/π − 1.
        const float kt = gt * (2.f / kPi) / (rho * rho + z * z);
        d[0] += kt * z * (x / rho);
        d[1] += kt * z * (y / rho);
        d[2] -= kt * rho;
        // φ = atan2(y, x): ∂φ/∂x = −y/ρ², ∂φ/∂y = x/ρ²; φ′ = φ/π.
        const float kp = gp / kPi / rho2;
        d[0] -= kp * y;
        d[1] += kp * x;
      }
    }
    const float* R = rot.r[s];  // ∂L/∂q = Rᵀ ∂L/∂q'
    for (int j = 0; j < 3; ++j) gq[j] += R[j] * d[0] + R[3 + j] * d[1] + R[6 + j] * d[2];
  }
  for (int j = 0; j < 3; ++j) grad_coords[3 * i + j] = scale * gq[j];
}

}  // namespace sph

// Launchers, defined in spherical_sample.cu and called by spherical_sample.cpp. Pointers are device
// pointers; `dtype` is 0 float32, 1 float16, 2 bfloat16 (planes, output and grad_out share it);
// `stream` is a cudaStream_t. Each returns nullptr on success, else the CUDA error string.
const char* spherical_sample_forward_launch(int dtype, const sph::Shape& shape, const void* planes,
                                            const float* coords, const sph::Rotations& rot, float scale,
                                            void* out, void* stream);
// Exactly one of grad_planes_f32 / grad_planes_fixed is used when grad planes are wanted (both
// null otherwise; the buffer must be zeroed); grad_coords may be null. grad_out_absmax (one float,
// device) is read only in the fixed-point (deterministic) mode.
const char* spherical_sample_backward_launch(int dtype, const sph::Shape& shape, const void* grad_out,
                                             const void* planes, const float* coords,
                                             const sph::Rotations& rot, float scale, float* grad_planes_f32,
                                             unsigned long long* grad_planes_fixed,
                                             const float* grad_out_absmax, float* grad_coords, void* stream);
const char* spherical_sample_fixed_to_float_launch(const unsigned long long* acc, const float* grad_out_absmax,
                                                   int64_t M, int64_t count, float* out, void* stream);

}  // namespace spherehead
