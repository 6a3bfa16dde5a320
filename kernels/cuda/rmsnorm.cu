// RMSNorm family in CUDA (HF LlamaRMSNorm); contracts in src/ops/rmsnorm.ts (RmsnormKernels),
// reference src/reference/rmsnorm.ts. x, y, dy, dx f32 [T, H]; w [H] of f32/f16/bf16 (template
// DT: 0/1/2); rstd f32 [T]. f32 accumulation (float64 for dx), fixed-order reductions (warp shuffles, then the 8
// warp sums in order), no atomics: reruns are bit-identical.
//   rmsnorm        grid (T), 256 threads: one block per row; Σx² block-reduced,
//                  rstd = 1/sqrt(Σx²/H + eps) with IEEE division and square root (not the
//                  --use_fast_math approximations), y = (x·rstd)·w.
//   rmsnorm_grad   dx: grid (T), 256 threads, one block per row, in float64 (the two terms may
//                    nearly cancel): g = Σ_h dy·w·x,  dx = rstd·(dy·w) − x·(rstd³·g/H).
//                  dw: grid (⌈H/32⌉), 32×16 threads: column h = 32·block + x is owned by the 16
//                    threads of that column, thread y adds rows t ≡ y (mod 16) in ascending order,
//                    then the 16 partials are added in order y = 0..15 (deterministic two-level
//                    order); dw = sum, or dw += sum with accumulate_dw.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "common.cuh"
#include "kernels.h"

namespace {

using namespace mote_cu;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// y and x may be the same buffer (each element is read and then written by one thread).
template <int DT>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_fwd(float* y, float* __restrict__ rstd, const float* x, const typename Wt<DT>::S* __restrict__ w, int T,
                int H, float eps) {
  __shared__ float red[kWarps + 1];
  for (long long t = blockIdx.x; t < T; t += gridDim.x) {
    const float* xr = x + t * H;
    float ss = 0.f;
    for (int h = threadIdx.x; h < H; h += kThreads) {
      const float v = xr[h];
      ss = fmaf(v, v, ss);
    }
    ss = block_sum<kWarps>(ss, red);
    const float r = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(ss, float(H)), eps)));
    if (threadIdx.x == 0) rstd[t] = r;
    float* yr = y + t * H;
    for (int h = threadIdx.x; h < H; h += kThreads) yr[h] = (xr[h] * r) * ldw<DT>(w, h);
  }
}

// dx in float64 (as native/cpu/rmsnorm.cc): the two terms nearly cancel when the row's mean
// square is dominated by few elements (H = 1: dx ∝ eps), so g and the combination are kept in
// double; rstd stays the f32 value saved by the forward.
template <int DT>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_bwd_dx(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ x,
                   const typename Wt<DT>::S* __restrict__ w, const float* __restrict__ rstd, int T, int H) {
  __shared__ double red[kWarps + 1];
  for (long long t = blockIdx.x; t < T; t += gridDim.x) {
    const float* xr = x + t * H;
    const float* gr = dy + t * H;
    double g = 0.0;
    for (int h = threadIdx.x; h < H; h += kThreads)
      g = fma(double(__ldg(gr + h)) * double(ldw<DT>(w, h)), double(__ldg(xr + h)), g);
    g = block_sum<kWarps>(g, red);
    const double r = double(__ldg(rstd + t));
    const double c = r * r * r * g / double(H);
    float* out = dx + t * H;
    for (int h = threadIdx.x; h < H; h += kThreads)
      out[h] = float(fma(r, double(__ldg(gr + h)) * double(ldw<DT>(w, h)), -c * double(__ldg(xr + h))));
  }
}

constexpr int kDwCols = 32, kDwRows = 16;

__global__ void __launch_bounds__(kDwCols* kDwRows)
    rmsnorm_bwd_dw(float* __restrict__ dw, const float* __restrict__ dy, const float* __restrict__ x,
                   const float* __restrict__ rstd, int T, int H, int accumulate) {
  __shared__ float part[kDwRows][kDwCols + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (long long h0 = (long long)blockIdx.x * kDwCols; h0 < H; h0 += (long long)gridDim.x * kDwCols) {
    const long long h = h0 + tx;
    float acc = 0.f;
    if (h < H)
      for (long long t = ty; t < T; t += kDwRows)
        acc = fmaf(__ldg(dy + t * H + h) * __ldg(x + t * H + h), __ldg(rstd + t), acc);
    __syncthreads();  // earlier readers of part are done
    part[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && h < H) {
      float s = 0.f;
#pragma unroll
      for (int r = 0; r < kDwRows; r++) s += part[r][tx];
      dw[h] = accumulate ? dw[h] + s : s;
    }
  }
}

template <int DT>
int launch_fwd(float* y, float* rstd, const float* x, const void* w, int T, int H, float eps, cudaStream_t s) {
  MOTE_LAUNCH(grid_dim(T, 2147483647LL), kThreads, 0, s, rmsnorm_fwd<DT>)
  (y, rstd, x, static_cast<const typename Wt<DT>::S*>(w), T, H, eps);
  return int(cudaGetLastError());
}

template <int DT>
int launch_dx(float* dx, const float* dy, const float* x, const void* w, const float* rstd, int T, int H,
              cudaStream_t s) {
  MOTE_LAUNCH(grid_dim(T, 2147483647LL), kThreads, 0, s, rmsnorm_bwd_dx<DT>)
  (dx, dy, x, static_cast<const typename Wt<DT>::S*>(w), rstd, T, H);
  return int(cudaGetLastError());
}

int dispatch_dx(int wdtype, float* dx, const float* dy, const float* x, const void* w, const float* rstd, int T, int H,
                cudaStream_t s) {
  MOTE_WEIGHT_DISPATCH(wdtype, launch_dx, dx, dy, x, w, rstd, T, H, s)
}

}  // namespace

extern "C" int mote_cuda_rmsnorm(float* y, float* rstd, const float* x, const void* w, int wdtype, int T, int H,
                                 float eps, void* stream) {
  if (T < 0 || H < 0 || wdtype < MOTE_F32 || wdtype > MOTE_BF16) return int(cudaErrorInvalidValue);
  if (T == 0) return int(cudaGetLastError());
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  MOTE_WEIGHT_DISPATCH(wdtype, launch_fwd, y, rstd, x, w, T, H, eps, s)
}

extern "C" int mote_cuda_rmsnorm_grad(float* dx, float* dw, const float* dy, const float* x, const void* w, int wdtype,
                                      const float* rstd, int T, int H, int accumulate_dw, void* stream) {
  if (T < 0 || H < 0 || wdtype < MOTE_F32 || wdtype > MOTE_BF16) return int(cudaErrorInvalidValue);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (T > 0 && H > 0) {
    const int e = dispatch_dx(wdtype, dx, dy, x, w, rstd, T, H, s);
    if (e) return e;
  }
  if (H == 0) return int(cudaGetLastError());
  // T = 0 still writes dw (zeros, or leaves it unchanged when accumulating).
  MOTE_LAUNCH(grid_dim((H + kDwCols - 1) / kDwCols, 2147483647LL), dim3(kDwCols, kDwRows), 0, s, rmsnorm_bwd_dw)
  (dw, dy, x, rstd, T, H, accumulate_dw);
  return int(cudaGetLastError());
}
