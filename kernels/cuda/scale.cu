// scale in CUDA; contract in src/ops/scale.ts (ScaleKernels), reference src/reference/scale.ts:
// y[i] = alpha · x[i] over n f32 elements; y may be x (each element read, then written, by one thread).
// Launch: elementwise, 256 threads, grid-stride; 4 elements per thread when both are 16-byte aligned.
#include <cuda_runtime.h>
#include <stdint.h>

#include "common.cuh"
#include "kernels.h"

namespace {

using namespace mote_cu;

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) scale_kernel(float* y, const float* x, float alpha, long long n, int vec) {
  const long long stride = (long long)gridDim.x * kThreads;
  const long long i0 = (long long)blockIdx.x * kThreads + threadIdx.x;
  long long done = 0;
  if (vec) {
    const long long n4 = n / 4;
    for (long long i = i0; i < n4; i += stride) {
      const float4 u = reinterpret_cast<const float4*>(x)[i];
      reinterpret_cast<float4*>(y)[i] = make_float4(alpha * u.x, alpha * u.y, alpha * u.z, alpha * u.w);
    }
    done = n4 * 4;
  }
  for (long long i = done + i0; i < n; i += stride) y[i] = alpha * x[i];
}

}  // namespace

extern "C" int mote_cuda_scale(float* y, const float* x, float alpha, int64_t n, void* stream) {
  if (n < 0) return int(cudaErrorInvalidValue);
  if (n == 0) return int(cudaGetLastError());
  const bool vec = aligned16(y) && aligned16(x);
  MOTE_LAUNCH(elementwise_grid(n, vec, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream), scale_kernel)
  (y, x, alpha, n, vec);
  return int(cudaGetLastError());
}
