// copy_rows family in CUDA; contract in src/ops/copy_rows.ts (CopyRowsKernels), reference
// src/reference/copy_rows.ts, CPU twin native/cpu/copy_rows.cc.
//   copy_rows  dst[dst_rows[i], :] = src[src_rows[i], :] for i < N, rows of W elements of 2 or 4
//              bytes, moved as raw bits in the widest unit that divides a row and both base
//              pointers (16, 8, 4 or 2 bytes: a 4 KiB f32 KV row is 256 16-byte loads). One
//              thread per (pair, unit), grid-stride over N·units; consecutive threads take
//              consecutive units of a row (coalesced). No __restrict__: dst may be src (the host
//              has checked that no row is both read and written, and that dst_rows has no
//              repeats, so every unit has one writer and results do not depend on order).
#include <cuda_runtime.h>
#include <stdint.h>

#include "common.cuh"
#include "kernels.h"

namespace {

constexpr int kThreads = 256;

template <typename U>
__global__ void __launch_bounds__(kThreads)
    copy_rows_k(U* dst, const U* src, const int* __restrict__ dst_rows, const int* __restrict__ src_rows, int N,
                long long units, long long Rd, long long Rs) {
  const long long total = (long long)N * units;
  for (long long t = blockIdx.x * (long long)kThreads + threadIdx.x; t < total; t += (long long)gridDim.x * kThreads) {
    const long long i = t / units, j = t - i * units;
    const int d = __ldg(dst_rows + i), s = __ldg(src_rows + i);
    if (d < 0 || d >= Rd || s < 0 || s >= Rs) continue;  // checked on the host; never touch memory outside
    dst[d * units + j] = src[s * units + j];
  }
}

template <typename U>
int launch(void* dst, const void* src, const int* dst_rows, const int* src_rows, int N, long long row_bytes,
           long long Rd, long long Rs, cudaStream_t s) {
  const long long units = row_bytes / (long long)sizeof(U);
  const long long total = (long long)N * units;
  const long long blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = mote_cu::grid_dim(blocks, 1LL << 20);
  MOTE_LAUNCH(grid, kThreads, 0, s, copy_rows_k<U>)
  (static_cast<U*>(dst), static_cast<const U*>(src), dst_rows, src_rows, N, units, Rd, Rs);
  return int(cudaGetLastError());
}

}  // namespace

extern "C" int mote_cuda_copy_rows(void* dst, const void* src, const int* dst_rows, const int* src_rows, int dtype,
                                   int N, int W, int64_t Rd, int64_t Rs, void* stream) {
  if (N < 0 || W < 0 || Rd < 0 || Rs < 0 || dtype < MOTE_F32 || dtype > MOTE_I32) return int(cudaErrorInvalidValue);
  if (N == 0 || W == 0) return int(cudaGetLastError());
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const long long row_bytes = (long long)W * (dtype == MOTE_F16 || dtype == MOTE_BF16 ? 2 : 4);
  // the widest unit that divides the row and both bases (every row then starts aligned to it)
  const uintptr_t align = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src);
  auto fits = [&](long long u) { return row_bytes % u == 0 && align % uintptr_t(u) == 0; };
  if (fits(16)) return launch<uint4>(dst, src, dst_rows, src_rows, N, row_bytes, Rd, Rs, s);
  if (fits(8)) return launch<uint2>(dst, src, dst_rows, src_rows, N, row_bytes, Rd, Rs, s);
  if (fits(4)) return launch<uint32_t>(dst, src, dst_rows, src_rows, N, row_bytes, Rd, Rs, s);
  return launch<uint16_t>(dst, src, dst_rows, src_rows, N, row_bytes, Rd, Rs, s);
}
