// swiglu family on the CPU (LLaMA MLP activation); contracts in src/ops/swiglu.ts (SwigluKernels).
//   y = silu(g)·up, silu(g) = g·σ(g), σ(g) = 1/(1 + e^−g)
//   dgate = dy·up·σ(g)·(1 + g·(1 − σ(g))),   dup = dy·silu(g)
// σ is formed as 1/(1 + e^−g): e^−g overflows to +inf for g < −88 and σ becomes 0 (its limit),
// never inf/inf or 0·inf, so both tails stay finite.
#include <cmath>

#include "kernels.h"
#include "threads.h"

namespace MOTE_CPU_KERNEL_NS {
namespace {

constexpr size_t kGrain = size_t(1) << 14;

inline float sigmoid(float g) { return 1.f / (1.f + std::exp(-g)); }

}  // namespace

void swiglu(float* y, const float* gate, const float* up, int64_t n) {
  parallel_for(size_t(n), kGrain, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; i++) {
      const float g = gate[i];
      y[i] = g * sigmoid(g) * up[i];
    }
  });
}

void swiglu_grad(float* dgate, float* dup, const float* dy, const float* gate, const float* up, int64_t n) {
  parallel_for(size_t(n), kGrain, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; i++) {
      const float g = gate[i], s = sigmoid(g), d = dy[i];
      const float dg = d * up[i] * (s * (1.f + g * (1.f - s)));
      const float du = d * (g * s);
      dgate[i] = dg;
      dup[i] = du;
    }
  });
}

}  // namespace MOTE_CPU_KERNEL_NS
