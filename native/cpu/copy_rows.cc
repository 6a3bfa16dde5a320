// copy_rows family on the CPU; contract in src/ops/copy_rows.ts (CopyRowsKernels).
//   dst: [Rd, W], src: [Rs, W] of one dtype (0 f32, 1 f16, 2 bf16, 3 i32), bytes copied as they
//   are; dst_rows / src_rows: [N] i32. dst[dst_rows[i], :] = src[src_rows[i], :].
// Every index is checked against Rd / Rs before anything is written, so a bad one throws
// instead of reading or writing out of bounds. dst may be src (the op checks that no row is
// both read and written, and dst_rows has no repeats), so rows are copied with memmove.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels.h"
#include "threads.h"

namespace MOTE_CPU_KERNEL_NS {

namespace {

void check_rows(const char* name, const int* rows, int N, int64_t R) {
  for (int i = 0; i < N; i++)
    if (rows[i] < 0 || rows[i] >= R)
      throw std::out_of_range(std::string("copyRows: ") + name + "[" + std::to_string(i) +
                              "] = " + std::to_string(rows[i]) + " not in [0, " + std::to_string(R) + ")");
}

}  // namespace

void copy_rows(void* dst, const void* src, const int* dst_rows, const int* src_rows, int dtype, int N, int W,
               int64_t Rd, int64_t Rs) {
  if (dtype < 0 || dtype > 3)
    throw std::invalid_argument("copyRows: dtype code " + std::to_string(dtype) + " not in [0, 3]");
  if (N < 0 || W < 0) throw std::invalid_argument("copyRows: N and W must be ≥ 0");
  check_rows("dstRows", dst_rows, N, Rd);
  check_rows("srcRows", src_rows, N, Rs);
  const size_t row = size_t(W) * (dtype == 1 || dtype == 2 ? 2 : 4);
  if (N == 0 || row == 0) return;
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  // ~64 KiB per chunk: small copies (a decode step's rows) stay on one thread
  const size_t grain = std::max<size_t>(1, (size_t(1) << 16) / row);
  parallel_for(size_t(N), grain, [&](size_t i0, size_t i1) {
    for (size_t i = i0; i < i1; i++) std::memmove(d + size_t(dst_rows[i]) * row, s + size_t(src_rows[i]) * row, row);
  });
}

}  // namespace MOTE_CPU_KERNEL_NS
