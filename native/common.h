// Shared between the addon, the CPU kernels and the CUDA host code.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace mote {

// Same codes as DTYPE_CODE in src/dtype.ts and MOTE_* in kernels/cuda/kernels.h.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, I32 = 3 };

inline size_t dtype_size(DType d) { return (d == DType::F16 || d == DType::BF16) ? 2 : 4; }

inline DType to_dtype(int code) {
  if (code < 0 || code > 3) throw std::invalid_argument("dtype code out of range: " + std::to_string(code));
  return static_cast<DType>(code);
}

enum class Device : int { CPU = 0, CUDA = 1 };

}  // namespace mote
