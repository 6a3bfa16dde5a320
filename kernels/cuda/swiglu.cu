// SwiGLU (LLaMA MLP activation) in CUDA; contract in src/ops/swiglu.ts (SwigluKernels), reference
// src/reference/swiglu.ts. gate, up, y, dy, dgate, dup f32 [n] (n = T·I).
//   y     = silu(g)·up,                    silu(g) = g·σ(g),  σ(g) = 1/(1 + e^−g)
//   dgate = dy·up·σ(g)·(1 + g·(1 − σ(g))),  dup = dy·silu(g)
// e^x is 2^(x·log2 e) with the product split into hi + lo (so ex2.approx sees it to ~2^-48 and
// the result is within a few ulp for every x, unlike __expf whose error grows with |x|), and
// 1/(1 + e) is an IEEE reciprocal (1/∞ = 0 for very negative g).
// Launch: elementwise, 256 threads, grid-stride (≤ 2^16 blocks); 4 elements per thread (16-byte
// loads) when every pointer is 16-byte aligned, then a scalar tail.
#include <cuda_runtime.h>
#include <stdint.h>

#include "common.cuh"
#include "kernels.h"

namespace {

using namespace mote_cu;

constexpr int kThreads = 256;

__device__ __forceinline__ float exp_acc(float x) {
  const float kL2E = 1.44269502162933349609375f;  // log2(e) rounded to f32
  const float kL2ELo = 1.925962989091e-08f;       // log2(e) − kL2E
  const float kLn2 = 0.693147182464599609375f;
  const float h = __fmul_rn(x, kL2E);
  float l = fmaf(x, kL2E, -h);  // the rounding error of h, exactly
  l = fmaf(x, kL2ELo, l);
  if (!(fabsf(h) < 256.f)) l = 0.f;  // ±∞, NaN, or sure over/underflow: 2^h alone is right
  return exp2f(h) * fmaf(l, kLn2, 1.f);
}

__device__ __forceinline__ float sigmoid(float g) { return __frcp_rn(1.f + exp_acc(-g)); }

__device__ __forceinline__ float fwd(float g, float u) { return g * sigmoid(g) * u; }

__device__ __forceinline__ void bwd(float d, float g, float u, float& dg, float& du) {
  const float s = sigmoid(g);
  dg = d * u * s * (1.f + g * (1.f - s));
  du = d * (g * s);
}

__global__ void __launch_bounds__(kThreads)
    swiglu_kernel(float* y, const float* gate, const float* up, long long n, int vec) {
  const long long stride = (long long)gridDim.x * kThreads;
  long long i0 = (long long)blockIdx.x * kThreads + threadIdx.x;
  long long done = 0;
  if (vec) {
    const long long n4 = n / 4;
    for (long long i = i0; i < n4; i += stride) {
      const float4 g = reinterpret_cast<const float4*>(gate)[i], u = reinterpret_cast<const float4*>(up)[i];
      reinterpret_cast<float4*>(y)[i] = make_float4(fwd(g.x, u.x), fwd(g.y, u.y), fwd(g.z, u.z), fwd(g.w, u.w));
    }
    done = n4 * 4;
  }
  for (long long i = done + i0; i < n; i += stride) y[i] = fwd(gate[i], up[i]);
}

__global__ void __launch_bounds__(kThreads)
    swiglu_grad_kernel(float* dgate, float* dup, const float* dy, const float* gate, const float* up, long long n,
                       int vec) {
  const long long stride = (long long)gridDim.x * kThreads;
  long long i0 = (long long)blockIdx.x * kThreads + threadIdx.x;
  long long done = 0;
  if (vec) {
    const long long n4 = n / 4;
    for (long long i = i0; i < n4; i += stride) {
      const float4 d = reinterpret_cast<const float4*>(dy)[i], g = reinterpret_cast<const float4*>(gate)[i],
                   u = reinterpret_cast<const float4*>(up)[i];
      float4 a, b;
      bwd(d.x, g.x, u.x, a.x, b.x);
      bwd(d.y, g.y, u.y, a.y, b.y);
      bwd(d.z, g.z, u.z, a.z, b.z);
      bwd(d.w, g.w, u.w, a.w, b.w);
      reinterpret_cast<float4*>(dgate)[i] = a;
      reinterpret_cast<float4*>(dup)[i] = b;
    }
    done = n4 * 4;
  }
  for (long long i = done + i0; i < n; i += stride) bwd(dy[i], gate[i], up[i], dgate[i], dup[i]);
}

}  // namespace

extern "C" int mote_cuda_swiglu(float* y, const float* gate, const float* up, int64_t n, void* stream) {
  if (n < 0) return int(cudaErrorInvalidValue);
  if (n == 0) return int(cudaGetLastError());
  const bool vec = aligned16(y) && aligned16(gate) && aligned16(up);
  MOTE_LAUNCH(elementwise_grid(n, vec, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream), swiglu_kernel)
  (y, gate, up, n, vec);
  return int(cudaGetLastError());
}

extern "C" int mote_cuda_swiglu_grad(float* dgate, float* dup, const float* dy, const float* gate, const float* up,
                                     int64_t n, void* stream) {
  if (n < 0) return int(cudaErrorInvalidValue);
  if (n == 0) return int(cudaGetLastError());
  const bool vec = aligned16(dgate) && aligned16(dup) && aligned16(dy) && aligned16(gate) && aligned16(up);
  MOTE_LAUNCH(elementwise_grid(n, vec, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream), swiglu_grad_kernel)
  (dgate, dup, dy, gate, up, n, vec);
  return int(cudaGetLastError());
}
