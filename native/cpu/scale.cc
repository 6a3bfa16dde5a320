// scale family on the CPU; contract in src/ops/scale.ts (ScaleKernels).
//   y = alpha · x elementwise (f32); y may be x (in place).
#include "kernels.h"
#include "threads.h"

namespace MOTE_CPU_KERNEL_NS {

void scale(float* y, const float* x, float alpha, int64_t n) {
  parallel_for(size_t(n), size_t(1) << 15, [&](size_t s, size_t e) {
#pragma omp simd
    for (size_t i = s; i < e; i++) y[i] = alpha * x[i];
  });
}

}  // namespace MOTE_CPU_KERNEL_NS
