// Embedding family in CUDA; contracts in src/ops/embedding.ts (EmbeddingKernels), reference
// src/reference/embedding.ts.
//   embedding       y[t,:] = E[ids[t],:], E [V, H] of f32/f16/bf16 (template DT: 0/1/2).
//                   grid (min(T, 2^31-1)), 256 threads: a block copies one token's row, threads
//                   stride over H.
//   embedding_grad  dE[v,:] (+)= Σ_{t: ids[t]=v} dy[t,:] in the grouped form: order [T] (tokens
//                   sorted by id, t ascending inside an id), seg_start [G+1], seg_ids [G].
//                   Without accumulate, dE is zeroed first (cudaMemsetAsync) and the rows of ids in
//                   the batch are then written. grid (G, ⌈H/256⌉ capped at 65535), 256 threads: a
//                   thread owns one (segment, h) and adds its segment's rows in order (no atomics,
//                   bit-identical reruns).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "common.cuh"
#include "kernels.h"

namespace {

using namespace mote_cu;

constexpr int kThreads = 256;

template <int DT>
__global__ void __launch_bounds__(kThreads)
    embedding_fwd(float* __restrict__ y, const int* __restrict__ ids, const typename Wt<DT>::S* __restrict__ E, int T,
                  int V, int H) {
  for (long long t = blockIdx.x; t < T; t += gridDim.x) {
    const int id = __ldg(ids + t);
    float* yr = y + t * H;
    if (id < 0 || id >= V) {  // checked on the host; never read outside E
      const float nan = __int_as_float(0x7fc00000);
      for (int h = threadIdx.x; h < H; h += kThreads) yr[h] = nan;
      continue;
    }
    const typename Wt<DT>::S* er = E + (long long)id * H;
    for (int h = threadIdx.x; h < H; h += kThreads) yr[h] = cvt<DT>(__ldg(er + h));
  }
}

__global__ void __launch_bounds__(kThreads)
    embedding_bwd(float* __restrict__ dE, const float* __restrict__ dy, const int* __restrict__ order,
                  const int* __restrict__ seg_start, const int* __restrict__ seg_ids, int G, int T, int V, int H,
                  int accumulate) {
  for (long long g = blockIdx.x; g < G; g += gridDim.x) {
    const int id = __ldg(seg_ids + g);
    if (id < 0 || id >= V) continue;  // checked on the host
    const int b = max(__ldg(seg_start + g), 0), e = min(__ldg(seg_start + g + 1), T);
    float* row = dE + (long long)id * H;
    for (long long h = blockIdx.y * (long long)kThreads + threadIdx.x; h < H; h += (long long)gridDim.y * kThreads) {
      float acc = accumulate ? row[h] : 0.f;
      for (int i = b; i < e; i++) {
        const int t = __ldg(order + i);
        if (t >= 0 && t < T) acc += __ldg(dy + (long long)t * H + h);  // checked on the host; never read outside dy
      }
      row[h] = acc;
    }
  }
}

template <int DT>
int launch_fwd(float* y, const int* ids, const void* E, int T, int V, int H, cudaStream_t s) {
  MOTE_LAUNCH(grid_dim(T, 2147483647LL), kThreads, 0, s, embedding_fwd<DT>)
  (y, ids, static_cast<const typename Wt<DT>::S*>(E), T, V, H);
  return int(cudaGetLastError());
}

}  // namespace

extern "C" int mote_cuda_embedding(float* y, const int* ids, const void* E, int edtype, int T, int V, int H,
                                   void* stream) {
  if (T < 0 || V < 0 || H < 0) return int(cudaErrorInvalidValue);
  if (T == 0 || H == 0) return int(cudaGetLastError());
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  MOTE_WEIGHT_DISPATCH(edtype, launch_fwd, y, ids, E, T, V, H, s)
}

extern "C" int mote_cuda_embedding_grad(float* dE, const float* dy, const int* order, const int* seg_start,
                                        const int* seg_ids, int G, int T, int V, int H, int accumulate, void* stream) {
  if (G < 0 || T < 0 || V < 0 || H < 0) return int(cudaErrorInvalidValue);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (!accumulate && V > 0 && H > 0) {
    const cudaError_t e = cudaMemsetAsync(dE, 0, size_t(V) * size_t(H) * sizeof(float), s);
    if (e != cudaSuccess) return int(e);
  }
  if (G == 0 || H == 0) return int(cudaGetLastError());
  dim3 grid(grid_dim(G, 2147483647LL), grid_dim((H + kThreads - 1) / kThreads));
  MOTE_LAUNCH(grid, kThreads, 0, s, embedding_bwd)(dE, dy, order, seg_start, seg_ids, G, T, V, H, accumulate);
  return int(cudaGetLastError());
}
