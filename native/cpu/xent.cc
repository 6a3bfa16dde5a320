// xent family on the CPU: log-softmax over the vocabulary and masked cross-entropy; contracts
// in src/ops/xent.ts (XentKernels). logits/out/dlogits: [T, V] f32; targets: [T] i32;
// mask: [T] f32 (0/1); losses/lse: [T] f32.
//   lse[t]      = max + log Σ_v exp(logits − max)   (the sum in double, v ascending)
//   logSoftmax  = logits − lse
//   losses[t]   = mask·(lse − logits[t, target])     (0, target not read, where mask is 0)
//   dlogits     = scale·mask·(exp(logits − lse) − [v = target]), exactly 0 where mask is 0
// One row per work item; targets of live rows are checked before anything is written.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels.h"
#include "threads.h"
#include "fast_exp.h"

namespace MOTE_CPU_KERNEL_NS {
namespace {

size_t row_grain(int V) { return std::max<size_t>(1, size_t(16384) / size_t(V)); }

// log Σ exp(row), max-subtracted (one order for every thread count).
double row_lse(const float* x, int V) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int v = 0; v < V; v++) m = std::max(m, x[v]);
  // float partial sums of 256 terms (vectorised), added in double: the f32 → f64 conversion in
  // the inner loop kept it from vectorising
  double s = 0;
  for (int v0 = 0; v0 < V; v0 += 256) {
    const int n = std::min(256, V - v0);
    const float* xs = x + v0;
    float cs = 0;
#pragma omp simd reduction(+ : cs)
    for (int v = 0; v < n; v++) cs += exp_f32(xs[v] - m);
    s += double(cs);
  }
  return double(m) + std::log(s);
}

// o[v] = c·exp(x[v] − L) for a whole row (a function of its own so that the loop vectorises).
void grad_row(float* __restrict o, const float* __restrict x, float c, float L, int V) {
#pragma omp simd
  for (int v = 0; v < V; v++) o[v] = c * exp_f32(x[v] - L);
}

void check_targets(const char* op, const int* targets, const float* mask, int T, int V) {
  for (int t = 0; t < T; t++)
    if (mask[t] != 0.f && (targets[t] < 0 || targets[t] >= V))
      throw std::out_of_range(std::string(op) + ": targets[" + std::to_string(t) + "] = " + std::to_string(targets[t]) +
                              " not in [0, " + std::to_string(V) + ")");
}

}  // namespace

void log_softmax(float* out, const float* logits, int T, int V) {
  const size_t Vs = size_t(V);
  parallel_for(size_t(T), row_grain(V), [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; t++) {
      const float* x = logits + t * Vs;
      const double z = row_lse(x, V);
      float* o = out + t * Vs;
#pragma omp simd
      for (size_t v = 0; v < Vs; v++) o[v] = float(double(x[v]) - z);
    }
  });
}

void xent(float* losses, float* lse, const float* logits, const int* targets, const float* mask, int T, int V) {
  check_targets("xent", targets, mask, T, V);
  const size_t Vs = size_t(V);
  parallel_for(size_t(T), row_grain(V), [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; t++) {
      const float* x = logits + t * Vs;
      const double z = row_lse(x, V);
      lse[t] = float(z);
      const float m = mask[t];
      losses[t] = m != 0.f ? float(double(m) * (z - double(x[targets[t]]))) : 0.f;
    }
  });
}

void xent_grad(float* dlogits, const float* logits, const float* lse, const int* targets, const float* mask,
               float scale, int T, int V) {
  check_targets("xentGrad", targets, mask, T, V);
  const size_t Vs = size_t(V);
  parallel_for(size_t(T), row_grain(V), [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; t++) {
      float* o = dlogits + t * Vs;
      const float m = mask[t];
      if (m == 0.f) {
        std::memset(o, 0, Vs * 4);
        continue;
      }
      const float* x = logits + t * Vs;
      const double L = double(lse[t]);
      const float c = scale * m;
      grad_row(o, x, c, float(L), V);
      const size_t y = size_t(targets[t]);
      o[y] = c * (exp_f32(float(double(x[y]) - L)) - 1.f);
    }
  });
}

}  // namespace MOTE_CPU_KERNEL_NS
