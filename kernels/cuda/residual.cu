// Residual add in CUDA; contract in src/ops/residual.ts (ResidualKernels), reference
// src/reference/residual.ts: y[i] = a[i] + b[i] over n f32 elements; y may be a (in place: each
// element is read and then written by the same thread).
// Launch: elementwise, 256 threads, grid-stride (≤ 2^16 blocks); 4 elements per thread (16-byte
// loads and stores) when y, a and b are 16-byte aligned, then a scalar tail.
#include <cuda_runtime.h>
#include <stdint.h>

#include "common.cuh"
#include "kernels.h"

namespace {

using namespace mote_cu;

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) add_kernel(float* y, const float* a, const float* b, long long n, int vec) {
  const long long stride = (long long)gridDim.x * kThreads;
  const long long i0 = (long long)blockIdx.x * kThreads + threadIdx.x;
  long long done = 0;
  if (vec) {
    const long long n4 = n / 4;
    for (long long i = i0; i < n4; i += stride) {
      const float4 u = reinterpret_cast<const float4*>(a)[i], v = reinterpret_cast<const float4*>(b)[i];
      reinterpret_cast<float4*>(y)[i] = make_float4(u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w);
    }
    done = n4 * 4;
  }
  for (long long i = done + i0; i < n; i += stride) y[i] = a[i] + b[i];
}

}  // namespace

extern "C" int mote_cuda_add(float* y, const float* a, const float* b, int64_t n, void* stream) {
  if (n < 0) return int(cudaErrorInvalidValue);
  if (n == 0) return int(cudaGetLastError());
  const bool vec = aligned16(y) && aligned16(a) && aligned16(b);
  MOTE_LAUNCH(elementwise_grid(n, vec, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream), add_kernel)
  (y, a, b, n, vec);
  return int(cudaGetLastError());
}
