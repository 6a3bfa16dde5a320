// adamw family in CUDA: the AdamW optimizer step (torch.optim.AdamW semantics) and the sum of
// squares used for global-norm clipping. Contracts in src/ops/adamw.ts (AdamwKernels), reference
// src/reference/adamw.ts. p, g, m, v f32 [n]; p, m, v updated in place, g read.
//   g' = g·gs;  p = p·decay;  m = β1·m + c1·g';  v = β2·v + c2·g'²
//   p = p − lr·(m / bc1) / (sqrt(v / bc2) + eps)
// decay = 1 − lr·wd, c1 = 1 − β1, c2 = 1 − β2, bc1 = 1 − β1^t, bc2 = 1 − β2^t come from the host,
// formed in double (as torch does) and rounded to f32 once.
// The file is built with --use_fast_math: the divisions and the square root are spelled as
// IEEE-rounded intrinsics (__fdiv_rn, __fsqrt_rn) so the step matches the CPU kernel's math.
// Launch (adamw): elementwise, 256 threads, grid-stride (≤ 2^16 blocks), float4 when every
// pointer is 16-byte aligned, then a scalar tail.
// sum_squares: pass 1, B = min(⌈n / 2048⌉, 1024) blocks (B depends on n only) of 256 threads;
// each thread accumulates its grid-stride elements in double, the block sums them by a fixed
// shared-memory tree into partials[block]; pass 2, one block adds the B partials by the same
// fixed tree and writes out[0] as f32. No atomics: reruns are bit-identical. partials is a
// per-device __device__ array, so two calls on different streams of one device must not overlap.
#include <cuda_runtime.h>
#include <stdint.h>

#include "common.cuh"
#include "kernels.h"

namespace {

using namespace mote_cu;

constexpr int kThreads = 256;
constexpr int kMaxPartials = 1024;

__device__ double g_partials[kMaxPartials];

struct Hyper {
  float lr, beta1, beta2, eps, decay, c1, c2, bc1, bc2, gs;
};

__device__ __forceinline__ void step(const Hyper& h, float& p, float g, float& m, float& v) {
  const float gi = __fmul_rn(g, h.gs);
  const float mi = h.beta1 * m + h.c1 * gi;
  const float vi = h.beta2 * v + h.c2 * (gi * gi);
  const float pi = p * h.decay;
  p = pi - h.lr * __fdiv_rn(__fdiv_rn(mi, h.bc1), __fsqrt_rn(__fdiv_rn(vi, h.bc2)) + h.eps);
  m = mi;
  v = vi;
}

__global__ void __launch_bounds__(kThreads)
    adamw_kernel(float* p, const float* g, float* m, float* v, long long n, Hyper h, int vec) {
  const long long stride = (long long)gridDim.x * kThreads;
  const long long i0 = (long long)blockIdx.x * kThreads + threadIdx.x;
  long long done = 0;
  if (vec) {
    const long long n4 = n / 4;
    for (long long i = i0; i < n4; i += stride) {
      float4 pp = reinterpret_cast<float4*>(p)[i], mm = reinterpret_cast<float4*>(m)[i],
             vv = reinterpret_cast<float4*>(v)[i];
      const float4 gg = reinterpret_cast<const float4*>(g)[i];
      step(h, pp.x, gg.x, mm.x, vv.x);
      step(h, pp.y, gg.y, mm.y, vv.y);
      step(h, pp.z, gg.z, mm.z, vv.z);
      step(h, pp.w, gg.w, mm.w, vv.w);
      reinterpret_cast<float4*>(p)[i] = pp;
      reinterpret_cast<float4*>(m)[i] = mm;
      reinterpret_cast<float4*>(v)[i] = vv;
    }
    done = n4 * 4;
  }
  for (long long i = done + i0; i < n; i += stride) {
    float pp = p[i], mm = m[i], vv = v[i];
    step(h, pp, g[i], mm, vv);
    p[i] = pp;
    m[i] = mm;
    v[i] = vv;
  }
}

// Fixed-order tree over the block's kThreads doubles in sh; returns the sum in thread 0.
__device__ __forceinline__ double tree_sum(double s, double* sh) {
  sh[threadIdx.x] = s;
  __syncthreads();
  for (unsigned w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  return sh[0];
}

__global__ void __launch_bounds__(kThreads) sum_squares_partial(const float* g, long long n) {
  __shared__ double sh[kThreads];
  const long long stride = (long long)gridDim.x * kThreads;
  double s = 0.0;
  for (long long i = (long long)blockIdx.x * kThreads + threadIdx.x; i < n; i += stride) {
    const double x = g[i];
    s += x * x;
  }
  const double t = tree_sum(s, sh);
  if (threadIdx.x == 0) g_partials[blockIdx.x] = t;
}

__global__ void __launch_bounds__(kThreads) sum_squares_final(float* out, int B) {
  __shared__ double sh[kThreads];
  double s = 0.0;
  for (int i = threadIdx.x; i < B; i += kThreads) s += g_partials[i];
  const double t = tree_sum(s, sh);
  if (threadIdx.x == 0) out[0] = float(t);
}

}  // namespace

extern "C" int mote_cuda_adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float c1,
                               float beta2, float c2, float eps, float decay, float bc1, float bc2, float grad_scale,
                               void* stream) {
  if (n < 0) return int(cudaErrorInvalidValue);
  if (n == 0) return int(cudaGetLastError());
  Hyper h;
  h.lr = lr;
  h.beta1 = beta1;
  h.beta2 = beta2;
  h.eps = eps;
  h.decay = decay;
  h.c1 = c1;
  h.c2 = c2;
  h.bc1 = bc1;
  h.bc2 = bc2;
  h.gs = grad_scale;
  const bool vec = aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v);
  MOTE_LAUNCH(elementwise_grid(n, vec, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream), adamw_kernel)
  (p, g, m, v, n, h, vec);
  return int(cudaGetLastError());
}

extern "C" int mote_cuda_sum_squares(float* out, const float* g, int64_t n, void* stream) {
  if (n < 0) return int(cudaErrorInvalidValue);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  long long b = (n + 2047) / 2048;
  if (b > kMaxPartials) b = kMaxPartials;
  if (b < 1) b = 1;
  MOTE_LAUNCH(unsigned(b), kThreads, 0, s, sum_squares_partial)(g, n);
  MOTE_LAUNCH(1, kThreads, 0, s, sum_squares_final)(out, int(b));
  return int(cudaGetLastError());
}
