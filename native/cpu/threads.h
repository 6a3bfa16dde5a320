// A small persistent thread pool: parallel_for splits [0, n) into contiguous chunks.
#pragma once
#include <cstddef>
#include <functional>

namespace mote::cpu {

int num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint chunks covering [0, n); chunks are at least `grain` long.
// Chunk boundaries depend only on n, grain and the thread count, so results are reproducible.
void parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn);

}  // namespace mote::cpu
