// embedding family on the CPU; contracts in src/ops/embedding.ts (EmbeddingKernels).
//   E: [V, H] f32/f16/bf16, ids: [T] i32, y/dy: [T, H] f32, dE: [V, H] f32.
// The backward is grouped by id (order sorted by id, stable; seg_start; seg_ids): each row
// of dE has one owner, which adds its tokens' dy rows in ascending token order. No atomics.
// Index arrays are checked before anything is written: a bad id throws, never reads or
// writes out of bounds.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "half.h"
#include "kernels.h"
#include "threads.h"

namespace MOTE_CPU_KERNEL_NS {

void embedding(float* y, const int* ids, const void* E, int edtype, int T, int V, int H) {
  for (int t = 0; t < T; t++)
    if (ids[t] < 0 || ids[t] >= V)
      throw std::out_of_range("embedding: ids[" + std::to_string(t) + "] = " + std::to_string(ids[t]) + " not in [0, " +
                              std::to_string(V) + ")");
  const size_t grain = std::max<size_t>(1, size_t(16384) / size_t(H));
  parallel_for(size_t(T), grain, [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; t++) to_f32(y + t * size_t(H), E, edtype, size_t(ids[t]) * size_t(H), size_t(H));
  });
}

void embedding_grad(float* dE, const float* dy, const int* order, const int* seg_start, const int* seg_ids, int G,
                    int T, int V, int H, bool accumulate) {
  // The grouping must cover each token at most once and name rows inside dE.
  if (G < 0 || G > T) throw std::out_of_range("embeddingGrad: G = " + std::to_string(G) + " not in [0, T]");
  for (int g = 0; g < G; g++) {
    if (seg_ids[g] < 0 || seg_ids[g] >= V)
      throw std::out_of_range("embeddingGrad: segIds[" + std::to_string(g) + "] = " + std::to_string(seg_ids[g]) +
                              " not in [0, " + std::to_string(V) + ")");
    if (g > 0 && seg_ids[g] <= seg_ids[g - 1])
      throw std::invalid_argument("embeddingGrad: segIds must be strictly ascending");
    if (seg_start[g] < 0 || seg_start[g] > seg_start[g + 1] || seg_start[g + 1] > T)
      throw std::out_of_range("embeddingGrad: segStart must ascend within [0, T]");
  }
  if (G > 0)
    for (int i = seg_start[0]; i < seg_start[G]; i++)
      if (order[i] < 0 || order[i] >= T)
        throw std::out_of_range("embeddingGrad: order[" + std::to_string(i) + "] = " + std::to_string(order[i]) +
                                " not in [0, " + std::to_string(T) + ")");
  const size_t Hs = size_t(H);
  if (!accumulate) {
    // rows of ids absent from the batch are 0; rows present are overwritten below
    const size_t n = size_t(V) * Hs;
    parallel_for(n, size_t(1) << 16, [&](size_t b, size_t e) { std::memset(dE + b, 0, (e - b) * 4); });
  }
  const size_t grain = std::max<size_t>(1, size_t(4096) / Hs);
  parallel_for(size_t(G), grain, [&](size_t g0, size_t g1) {
    for (size_t g = g0; g < g1; g++) {
      float* row = dE + size_t(seg_ids[g]) * Hs;
      for (int i = seg_start[g]; i < seg_start[g + 1]; i++) {
        const float* src = dy + size_t(order[i]) * Hs;
#pragma omp simd
        for (size_t h = 0; h < Hs; h++) row[h] += src[h];
      }
    }
  });
}

}  // namespace MOTE_CPU_KERNEL_NS
