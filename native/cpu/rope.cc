// rope family on the CPU (HF rotate-half); contracts in src/ops/rope.ts (RopeKernels).
//   x, y: [T, heads, D] f32 (y may be x); positions: [T] i32; inv_freq: [D/2] f32.
//   y[i]       = x[i]·cos θ − x[i+D/2]·sin θ
//   y[i+D/2]   = x[i+D/2]·cos θ + x[i]·sin θ,      θ = positions[t]·inv_freq[i]
// inverse (the backward) rotates by −θ.
//
// θ is never rounded to f32: pos·f is formed exactly as hi + lo in double (a 31-bit integer
// times a 24-bit mantissa needs 55 bits; fma gives the low part), sin/cos are taken of hi in
// double (glibc reduces large arguments exactly) and corrected to first order by lo
// (|lo| ≤ 2^-22 rad, so the second-order term is below double precision of the result).
// The webgpu kernel reduces θ exactly too, so the backends agree at long positions.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"
#include "threads.h"

namespace MOTE_CPU_KERNEL_NS {

void rope(float* y, const float* x, const int* positions, const float* inv_freq, int T, int heads, int D,
          bool inverse) {
  const size_t half = size_t(D) / 2, Ds = size_t(D);
  const size_t row = size_t(heads) * Ds;
  const size_t grain = std::max<size_t>(1, size_t(4096) / (row ? row : 1));
  parallel_for(size_t(T), grain, [&](size_t t0, size_t t1) {
    std::vector<float> cs(half), sn(half);
    for (size_t t = t0; t < t1; t++) {
      const double p = double(positions[t]);
      for (size_t i = 0; i < half; i++) {
        const double f = double(inv_freq[i]);
        const double hi = p * f;
        const double lo = std::fma(p, f, -hi);
        const double s = std::sin(hi), c = std::cos(hi);
        const double sl = s + lo * c, cl = c - lo * s;
        cs[i] = float(cl);
        sn[i] = float(inverse ? -sl : sl);
      }
      const float* cp = cs.data();
      const float* sp = sn.data();
      for (int h = 0; h < heads; h++) {
        const size_t b = t * row + size_t(h) * Ds;
        const float* xa = x + b;
        const float* xb = x + b + half;
        float* ya = y + b;
        float* yb = y + b + half;
        // each (i, i+D/2) pair is read before it is written, by the same iteration: in place is safe
#pragma omp simd
        for (size_t i = 0; i < half; i++) {
          const float x1 = xa[i], x2 = xb[i];
          ya[i] = x1 * cp[i] - x2 * sp[i];
          yb[i] = x2 * cp[i] + x1 * sp[i];
        }
      }
    }
  });
}

}  // namespace MOTE_CPU_KERNEL_NS
