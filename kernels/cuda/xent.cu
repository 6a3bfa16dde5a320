// Log-softmax and masked cross-entropy over the vocabulary in CUDA; contracts in src/ops/xent.ts
// (XentKernels), reference src/reference/xent.ts. logits, out, dlogits f32 [T, V]; targets i32
// [T]; mask f32 [T] (0/1); losses, lse f32 [T].
//   log_softmax  out[t,:] = logits[t,:] − lse[t]
//   xent         lse[t] = logsumexp(logits[t,:]); losses[t] = mask[t]·(lse[t] − logits[t, targets[t]])
//                (0 where mask is 0, and the target is then not read)
//   xent_grad    dlogits[t,v] = scale·mask[t]·(exp(logits[t,v] − lse[t]) − [v = targets[t]]);
//                rows with mask 0 are exactly 0
// Launch: one block of 512 threads per row (grid (T)), threads stride over V (any V; 49152+ is 96
// per thread). logsumexp in one pass: each thread keeps an online (max, Σ e^(x−max)) pair over its
// elements in ascending order, the pairs are merged by a fixed shuffle tree and then warp by warp
// in order (no atomics: reruns are bit-identical); lse = max + log(Σ) in float64 (as
// native/cpu/xent.cc), and out = x − lse and the loss lse − x[target] are formed in float64 before
// one rounding (a loss near 0 keeps its relative accuracy).
// e^x is 2^(x·log2 e) with the product split into hi + lo, accurate to a few ulp for every x.
// out may be logits for log_softmax (each element is read and written by one thread after the
// row's reduction).
#include <cuda_runtime.h>
#include <stdint.h>

#include "common.cuh"
#include "kernels.h"

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

__device__ __forceinline__ float exp_acc(float x) {
  const float kL2E = 1.44269502162933349609375f;  // log2(e) rounded to f32
  const float kL2ELo = 1.925962989091e-08f;       // log2(e) − kL2E
  const float kLn2 = 0.693147182464599609375f;
  const float h = __fmul_rn(x, kL2E);
  float l = fmaf(x, kL2E, -h);  // the rounding error of h, exactly
  l = fmaf(x, kL2ELo, l);
  if (!(fabsf(h) < 256.f)) l = 0.f;  // ±∞, NaN, or sure over/underflow
  return exp2f(h) * fmaf(l, kLn2, 1.f);
}

struct MS {
  float m, s;  // running max, Σ e^(x − m)
};

__device__ __forceinline__ MS ms_merge(MS a, MS b) {
  const float m = fmaxf(a.m, b.m);
  if (m == neg_inf()) return {m, 0.f};
  const float ea = a.m == neg_inf() ? 0.f : exp_acc(a.m - m);
  const float eb = b.m == neg_inf() ? 0.f : exp_acc(b.m - m);
  return {m, a.s * ea + b.s * eb};
}

__device__ __forceinline__ void ms_add(MS& st, float x) {
  if (x > st.m) {
    st.s = fmaf(st.s, exp_acc(st.m - x), 1.f);  // m = −∞: e^−∞ = 0
    st.m = x;
  } else if (st.m != neg_inf() || x != x) {
    st.s += exp_acc(x - st.m);  // x = −∞ adds 0; NaN propagates
  }
}

// logsumexp of one row (float64: max + log Σ), returned to every thread of the block. Fixed
// reduction order.
__device__ double row_lse(const float* row, int V, MS* red /* [kWarps] */, double* bcast) {
  MS st{neg_inf(), 0.f};
  for (int v = threadIdx.x; v < V; v += kThreads) ms_add(st, row[v]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MS other;
    other.m = __shfl_down_sync(0xffffffffu, st.m, o);
    other.s = __shfl_down_sync(0xffffffffu, st.s, o);
    st = ms_merge(st, other);  // lane 0 ends with the warp's pair
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // earlier readers of red / bcast are done
  if (lane == 0) red[warp] = st;
  __syncthreads();
  if (threadIdx.x == 0) {
    MS tot = red[0];
    for (int w = 1; w < kWarps; w++) tot = ms_merge(tot, red[w]);
    *bcast = double(tot.m) + log(double(tot.s));
  }
  __syncthreads();
  return *bcast;
}

__global__ void __launch_bounds__(kThreads) log_softmax_kernel(float* out, const float* logits, int T, int V) {
  __shared__ MS red[kWarps];
  __shared__ double bcast;
  for (long long t = blockIdx.x; t < T; t += gridDim.x) {
    const float* row = logits + t * V;
    const double lse = row_lse(row, V, red, &bcast);
    float* o = out + t * V;
    for (int v = threadIdx.x; v < V; v += kThreads) o[v] = float(double(row[v]) - lse);
  }
}

__global__ void __launch_bounds__(kThreads)
    xent_kernel(float* __restrict__ losses, float* __restrict__ lse_out, const float* __restrict__ logits,
                const int* __restrict__ targets, const float* __restrict__ mask, int T, int V) {
  __shared__ MS red[kWarps];
  __shared__ double bcast;
  for (long long t = blockIdx.x; t < T; t += gridDim.x) {
    const float* row = logits + t * V;
    const double lse = row_lse(row, V, red, &bcast);
    if (threadIdx.x == 0) {
      lse_out[t] = float(lse);
      const float m = mask[t];
      float loss = 0.f;
      if (m != 0.f) {
        const int y = targets[t];  // checked on the host; never read outside the row
        loss = (y >= 0 && y < V) ? float(double(m) * (lse - double(row[y]))) : __int_as_float(0x7fc00000);
      }
      losses[t] = loss;
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    xent_grad_kernel(float* __restrict__ dlogits, const float* __restrict__ logits, const float* __restrict__ lse,
                     const int* __restrict__ targets, const float* __restrict__ mask, float scale, int T, int V) {
  for (long long t = blockIdx.x; t < T; t += gridDim.x) {
    float* d = dlogits + t * V;
    const float m = __ldg(mask + t);
    if (m == 0.f) {
      for (int v = threadIdx.x; v < V; v += kThreads) d[v] = 0.f;
      continue;
    }
    const float c = scale * m, L = __ldg(lse + t);
    const int y = __ldg(targets + t);
    const float* row = logits + t * V;
    for (int v = threadIdx.x; v < V; v += kThreads) {
      const float p = exp_acc(__ldg(row + v) - L);
      d[v] = c * (v == y ? p - 1.f : p);
    }
  }
}

}  // namespace

extern "C" int mote_cuda_log_softmax(float* out, const float* logits, int T, int V, void* stream) {
  if (T < 0 || V < 0) return int(cudaErrorInvalidValue);
  if (T == 0 || V == 0) return int(cudaGetLastError());
  MOTE_LAUNCH(mote_cu::grid_dim(T, 2147483647LL), kThreads, 0, static_cast<cudaStream_t>(stream), log_softmax_kernel)
  (out, logits, T, V);
  return int(cudaGetLastError());
}

extern "C" int mote_cuda_xent(float* losses, float* lse, const float* logits, const int* targets, const float* mask,
                              int T, int V, void* stream) {
  if (T < 0 || V < 0) return int(cudaErrorInvalidValue);
  if (T == 0) return int(cudaGetLastError());
  MOTE_LAUNCH(mote_cu::grid_dim(T, 2147483647LL), kThreads, 0, static_cast<cudaStream_t>(stream), xent_kernel)
  (losses, lse, logits, targets, mask, T, V);
  return int(cudaGetLastError());
}

extern "C" int mote_cuda_xent_grad(float* dlogits, const float* logits, const float* lse, const int* targets,
                                   const float* mask, float scale, int T, int V, void* stream) {
  if (T < 0 || V < 0) return int(cudaErrorInvalidValue);
  if (T == 0 || V == 0) return int(cudaGetLastError());
  MOTE_LAUNCH(mote_cu::grid_dim(T, 2147483647LL), kThreads, 0, static_cast<cudaStream_t>(stream), xent_grad_kernel)
  (dlogits, logits, lse, targets, mask, scale, T, V);
  return int(cudaGetLastError());
}
