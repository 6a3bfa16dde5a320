// f16 / bf16 <-> f32 conversions for the CPU kernels (round to nearest even).
#pragma once
#include <cstdint>
#include <cstring>

#include "variant.h"

namespace MOTE_CPU_KERNEL_NS {

inline float bits_f32(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
inline uint32_t f32_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// f16 -> f32 without branches so that it vectorises inside `omp simd` loops; exact for
// every input (normals, subnormals, ±0, inf, NaN), same values as half.h's f16_to_f32.
inline float h2f(uint16_t h) {
  const uint32_t w = uint32_t(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = bits_f32((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t r = sign | (two_w < (1u << 27) ? f32_bits(denormalized) : f32_bits(normalized));
  return bits_f32(r);
}

inline float bf16_to_f32(uint16_t h) {
  uint32_t b = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) {
        mant <<= 1;
        exp--;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Converts n weights of the given dtype (0 f32, 1 f16, 2 bf16) starting at element `offset` to f32.
inline void to_f32(float* dst, const void* src, int dtype, size_t offset, size_t n) {
  if (dtype == 0) {
    std::memcpy(dst, static_cast<const float*>(src) + offset, n * 4);
  } else if (dtype == 1) {
    const uint16_t* s = static_cast<const uint16_t*>(src) + offset;
    for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(s[i]);
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src) + offset;
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
      uint32_t b = uint32_t(s[i]) << 16;
      float f;
      std::memcpy(&f, &b, 4);
      dst[i] = f;
    }
  }
}

}  // namespace MOTE_CPU_KERNEL_NS
