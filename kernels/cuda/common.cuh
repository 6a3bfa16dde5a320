// Shared by the kernel files of kernels/cuda.
#pragma once
#include <cuda_runtime.h>

// MOTE_LAUNCH(grid, block, shmem, stream, kernel)(args...) is kernel<<<grid, block, shmem, stream>>>(args...)
// under nvcc; the C++ test driver's CUDA emulator (native/test/cuda_emu) runs the same launch on
// the CPU. The kernel comes last so that a template's commas need no parentheses.
#ifdef MOTE_CUDA_EMU
#define MOTE_LAUNCH(grid, block, shmem, stream, ...) \
  ::mote_emu::launcher(#__VA_ARGS__, grid, block, shmem, stream, __VA_ARGS__)
// dynamic shared memory of the running block
#define MOTE_DYNAMIC_SHARED(T, name) T* const name = ::mote_emu::dynamic_shared<T>()
#else
#define MOTE_LAUNCH(grid, block, shmem, stream, ...) __VA_ARGS__<<<grid, block, shmem, stream>>>
#define MOTE_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "kernels.h"

namespace mote_cu {

// ---- weights: f32 / f16 / bf16 (DT = MOTE_F32 / MOTE_F16 / MOTE_BF16) -------------------

template <int DT>
struct Wt {
  using S = uint16_t;           // storage element
  static constexpr int VE = 8;  // elements per 16-byte load
};
template <>
struct Wt<MOTE_F32> {
  using S = float;
  static constexpr int VE = 4;
};

template <int DT>
__device__ __forceinline__ float cvt(typename Wt<DT>::S s);
template <>
__device__ __forceinline__ float cvt<MOTE_F32>(float s) {
  return s;
}
template <>
__device__ __forceinline__ float cvt<MOTE_F16>(uint16_t s) {
  return __half2float(__ushort_as_half(s));
}
template <>
__device__ __forceinline__ float cvt<MOTE_BF16>(uint16_t s) {
  return __uint_as_float(uint32_t(s) << 16);
}

// element i of a weight array, through the read-only cache
template <int DT>
__device__ __forceinline__ float ldw(const typename Wt<DT>::S* __restrict__ p, long long i) {
  return cvt<DT>(__ldg(p + i));
}

// Wt<DT>::VE consecutive weights from a 16-byte aligned address.
template <int DT>
struct Vec {
  static __device__ __forceinline__ void load(const uint16_t* __restrict__ p, float* o) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      o[2 * i] = cvt<DT>(uint16_t(w[i] & 0xffffu));
      o[2 * i + 1] = cvt<DT>(uint16_t(w[i] >> 16));
    }
  }
};
template <>
struct Vec<MOTE_F32> {
  static __device__ __forceinline__ void load(const float* __restrict__ p, float* o) {
    const float4 f = __ldg(reinterpret_cast<const float4*>(p));
    o[0] = f.x;
    o[1] = f.y;
    o[2] = f.z;
    o[3] = f.w;
  }
};

// N (a multiple of 4) consecutive f32 activations from a 16-byte aligned address.
template <int N>
__device__ __forceinline__ void ldx(const float* __restrict__ p, float* o) {
#pragma unroll
  for (int i = 0; i < N / 4; i++) {
    const float4 f = __ldg(reinterpret_cast<const float4*>(p) + i);
    o[4 * i] = f.x;
    o[4 * i + 1] = f.y;
    o[4 * i + 2] = f.z;
    o[4 * i + 3] = f.w;
  }
}

// ---- reductions (fixed order: reruns are bit-identical) -----------------------------

// Sum over the 32 lanes of a warp, the same value in every lane.
template <typename F>
__device__ __forceinline__ F warp_sum(F v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of WARPS full warps, the same value returned to every thread. red: WARPS + 1
// entries of shared memory; every thread of the block must call it.
template <int WARPS, typename F>
__device__ __forceinline__ F block_sum(F v, F* red) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  v = warp_sum(v);
  __syncthreads();  // earlier readers of red are done
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    F s = 0;
#pragma unroll
    for (int w = 0; w < WARPS; w++) s += red[w];
    red[WARPS] = s;
  }
  __syncthreads();
  return red[WARPS];
}

// ---- launch helpers ---------------------------------------------------------------

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// A grid dimension of n blocks, at most `limit` (the kernels stride over the rest): 65535 for
// gridDim.y/z, up to 2^31 − 1 for gridDim.x.
inline unsigned grid_dim(long long n, long long limit = 65535) { return unsigned(n < 1 ? 1 : (n < limit ? n : limit)); }

// Grid of an elementwise grid-stride kernel over n elements (n/4 float4 when vec), at most 2^16 blocks.
inline unsigned elementwise_grid(long long n, bool vec, int threads) {
  const long long work = vec ? (n + 3) / 4 : n;
  return grid_dim((work + threads - 1) / threads, 65536);
}

}  // namespace mote_cu

// The one weight-dtype dispatch: returns fn<MOTE_F32 / MOTE_F16 / MOTE_BF16>(args...), or
// cudaErrorInvalidValue for any other code.
#define MOTE_WEIGHT_DISPATCH(dtype, fn, ...) \
  switch (dtype) {                           \
    case MOTE_F32:                           \
      return fn<MOTE_F32>(__VA_ARGS__);      \
    case MOTE_F16:                           \
      return fn<MOTE_F16>(__VA_ARGS__);      \
    case MOTE_BF16:                          \
      return fn<MOTE_BF16>(__VA_ARGS__);     \
    default:                                 \
      return int(cudaErrorInvalidValue);     \
  }
