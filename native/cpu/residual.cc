// residual family on the CPU; contract in src/ops/residual.ts (ResidualKernels).
//   y = a + b elementwise (f32); y may be a (in place).
#include "kernels.h"
#include "threads.h"

namespace MOTE_CPU_KERNEL_NS {

void add(float* y, const float* a, const float* b, int64_t n) {
  parallel_for(size_t(n), size_t(1) << 15, [&](size_t s, size_t e) {
#pragma omp simd
    for (size_t i = s; i < e; i++) y[i] = a[i] + b[i];
  });
}

}  // namespace MOTE_CPU_KERNEL_NS
