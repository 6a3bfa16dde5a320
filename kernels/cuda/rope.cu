// Rotary position embedding (HF rotate-half convention) in CUDA; contract in src/ops/rope.ts
// (RopeKernels), reference src/reference/rope.ts. x, y f32 [T, heads, D]; positions i32 [T];
// inv_freq f32 [D/2].
//   y[t,h,i]       = x[t,h,i]·cos θ − x[t,h,i+D/2]·sin θ
//   y[t,h,i+D/2]   = x[t,h,i+D/2]·cos θ + x[t,h,i]·sin θ,     θ = positions[t]·inv_freq[i]
// inverse (the backward) rotates by −θ. y may be x: each (t, h, i) pair is read and then written
// by the same thread.
// θ is never rounded to f32 (an f32 product is off by ~1e-4 rad at positions in the thousands):
// as in native/cpu/rope.cc, pos·f is formed exactly as hi + lo in float64 (a 31-bit integer times
// a 24-bit mantissa needs 55 bits; fma gives the low part), sin/cos of hi are float64 (CUDA's
// sincos reduces large arguments exactly and is unaffected by --use_fast_math) and corrected to
// first order by lo; cos/sin are then rounded to f32 once.
// Launch: one thread per (t, i < D/2), looping over the heads so that sin/cos are computed once
// per (t, i); 256 threads per block, 1-D grid-stride over T·D/2 (grid capped at 2^20 blocks).
#include <cuda_runtime.h>
#include <stdint.h>

#include "common.cuh"
#include "kernels.h"

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    rope_kernel(float* y, const float* x, const int* __restrict__ positions, const float* __restrict__ inv_freq, int T,
                int heads, int D, int inverse) {
  const int half = D / 2;
  const long long n = (long long)T * half;
  for (long long idx = (long long)blockIdx.x * kThreads + threadIdx.x; idx < n;
       idx += (long long)gridDim.x * kThreads) {
    const long long t = idx / half;
    const int i = int(idx - t * half);
    const double p = double(__ldg(positions + t)), f = double(__ldg(inv_freq + i));
    const double hi = __dmul_rn(p, f), lo = fma(p, f, -hi);  // θ = hi + lo exactly
    double sd, cd;
    sincos(hi, &sd, &cd);
    const double sl = fma(lo, cd, sd), cl = fma(-lo, sd, cd);  // first-order correction by lo (|lo| ≤ 2^-22)
    const float c = float(cl), s = inverse ? -float(sl) : float(sl);
    for (int h = 0; h < heads; h++) {
      const long long base = (t * heads + h) * D;
      const float x1 = x[base + i], x2 = x[base + i + half];
      y[base + i] = x1 * c - x2 * s;
      y[base + i + half] = x2 * c + x1 * s;
    }
  }
}

}  // namespace

extern "C" int mote_cuda_rope(float* y, const float* x, const int* positions, const float* inv_freq, int T, int heads,
                              int D, int inverse, void* stream) {
  if (T < 0 || heads < 0 || D < 0 || D % 2 != 0) return int(cudaErrorInvalidValue);
  const long long n = (long long)T * (D / 2);
  if (n == 0 || heads == 0) return int(cudaGetLastError());
  MOTE_LAUNCH(mote_cu::grid_dim((n + kThreads - 1) / kThreads, 1LL << 20), kThreads, 0,
              static_cast<cudaStream_t>(stream), rope_kernel)
  (y, x, positions, inv_freq, T, heads, D, inverse);
  return int(cudaGetLastError());
}
