// exp_f32: a float exp that vectorises (the xent and attention kernels' softmax loops).
// Compiled into each kernel file's own copy (anonymous namespace inside the variant namespace of
// variant.h), so every MOTE_CPU_DISPATCH variant keeps its own instruction set.
#pragma once
#include <cstdint>

#include "variant.h"

namespace MOTE_CPU_KERNEL_NS {
namespace {

// exp(x) in float without a library call, so that loops over a row vectorise (std::exp does
// not: it was most of xent's time). Range reduction x = n·ln2 + r with ln2 in two parts, a
// degree-6 polynomial on |r| ≤ ln2/2 (Cephes' expf coefficients), 2^n from the exponent bits.
// Relative error ≤ 2 ulp on [-87, 88]; below -87 it returns ≤ 2^-126 instead of a denormal
// (the terms this adds to a softmax sum are far below its rounding); NaN stays NaN.
inline float exp_f32(float x) {
  const bool nan = x != x;
  const float lo = x < -87.0f ? -87.0f : x;
  const float c = nan ? 0.0f : (lo > 88.0f ? 88.0f : lo);  // selects, not branches: the loop stays one block
  // round to nearest by adding and removing 1.5·2^23 (|t| < 2^22 here): no floor call, so it vectorises
  const float t = c * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;
  float r = c - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale =
      __builtin_bit_cast(float, (int32_t(n) + 127) << 23);  // a register move, unlike memcpy: vectorises
  return nan ? x : p * scale;
}

}  // namespace
}  // namespace MOTE_CPU_KERNEL_NS
