// adamw family on the CPU (optimizer step, torch.optim.AdamW semantics, and the sum of squares
// for global-norm clipping); contracts in src/ops/adamw.ts (AdamwKernels), reference
// src/reference/adamw.ts. Everything f32 [n]; p, m, v updated in place, g read.
//   g' = g·gs;  p = p·decay;  m = β1·m + c1·g';  v = β2·v + c2·g'²
//   p = p − lr·(m / bc1) / (sqrt(v / bc2) + eps)
// decay = 1 − lr·wd, c1 = 1 − β1, c2 = 1 − β2, bc1 = 1 − β1^t, bc2 = 1 − β2^t come from the host,
// formed in double (as torch does) and rounded to f32 once.
// sum_squares: Σ g² accumulated in double over fixed blocks of kBlock elements (boundaries
// depend only on n), then the block sums added in order: the result does not depend on the
// thread count, and reruns are bit-identical.
#include <cmath>
#include <algorithm>
#include <vector>

#include "kernels.h"
#include "threads.h"

namespace MOTE_CPU_KERNEL_NS {
namespace {

constexpr size_t kGrain = size_t(1) << 14;
constexpr size_t kBlock = size_t(1) << 14;

}  // namespace

void adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float c1, float beta2,
           float c2, float eps, float decay, float bc1, float bc2, float grad_scale) {
  parallel_for(size_t(n), kGrain, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; i++) {
      const float gi = g[i] * grad_scale;
      const float mi = beta1 * m[i] + c1 * gi;
      const float vi = beta2 * v[i] + c2 * (gi * gi);
      const float pi = p[i] * decay;
      p[i] = pi - lr * (mi / bc1) / (std::sqrt(vi / bc2) + eps);
      m[i] = mi;
      v[i] = vi;
    }
  });
}

void sum_squares(float* out, const float* g, int64_t n) {
  const size_t blocks = (size_t(n) + kBlock - 1) / kBlock;
  std::vector<double> part(blocks, 0.0);
  parallel_for(blocks, 1, [&](size_t b, size_t e) {
    for (size_t k = b; k < e; k++) {
      const size_t lo = k * kBlock, hi = std::min(size_t(n), lo + kBlock);
      double s = 0.0;
      for (size_t i = lo; i < hi; i++) s += double(g[i]) * double(g[i]);
      part[k] = s;
    }
  });
  double s = 0.0;
  for (double x : part) s += x;
  out[0] = float(s);
}

}  // namespace MOTE_CPU_KERNEL_NS
