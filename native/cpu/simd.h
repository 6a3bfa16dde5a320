// SIMD micro-kernels of the CPU kernels (native/cpu/lora.cc, matmul.cc): weight element types
// and 8-wide loads, dot products, row AXPYs, column sums and the packed outer-product GEMM.
// Compiled into each kernel file's own copy (anonymous namespace inside the variant namespace of
// variant.h), so every MOTE_CPU_DISPATCH variant keeps its own instruction set.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "half.h"
#if defined(__F16C__) || defined(__AVX__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
// The 8-wide vector helpers below are internal (inlined or file-local), so the note that
// their ABI differs with and without AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace MOTE_CPU_KERNEL_NS {
namespace {

// ---------------------------------------------------------------------------
// Weight element types and conversions

template <int DT>
struct Elem {
  using type = uint16_t;  // f16 (1) and bf16 (2)
};
template <>
struct Elem<0> {
  using type = float;
};
template <int DT>
using elem_t = typename Elem<DT>::type;

template <int DT>
inline float cv(elem_t<DT> w) {
  if constexpr (DT == 0)
    return w;
  else if constexpr (DT == 1)
    return h2f(w);
  else
    return bits_f32(uint32_t(w) << 16);
}

template <int DT>
inline const elem_t<DT>* typed(const void* p) {
  return static_cast<const elem_t<DT>*>(p);
}

// ---------------------------------------------------------------------------
// 8-wide f32 vectors (GCC/Clang vector extensions: AVX on x86-64 with -march=native,
// pairs of SSE/NEON registers elsewhere). Explicit vectors keep the accumulators of the
// micro-kernels in registers whatever the auto-vectoriser decides.

typedef float f8 __attribute__((vector_size(32)));
typedef uint32_t u8x32 __attribute__((vector_size(32)));
typedef uint16_t u8x16 __attribute__((vector_size(16)));

inline f8 ld8(const float* p) {
  f8 v;
  std::memcpy(&v, p, 32);
  return v;
}
inline void st8(float* p, const f8& v) { std::memcpy(p, &v, 32); }
inline f8 splat(float c) { return f8{c, c, c, c, c, c, c, c}; }
inline float hsum(const f8& v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }
inline f8 as_f8(const u8x32& u) {
  f8 f;
  std::memcpy(&f, &u, 32);
  return f;
}
inline u8x32 as_u8(const f8& f) {
  u8x32 u;
  std::memcpy(&u, &f, 32);
  return u;
}

// Loads 8 weights of dtype DT as f32.
template <int DT>
inline f8 ld8w(const elem_t<DT>* p) {
  if constexpr (DT == 0) {
    return ld8(p);
  } else {
    u8x16 h;
    std::memcpy(&h, p, 16);
#if defined(__F16C__)
    if constexpr (DT == 1) {
      __m128i hi;
      std::memcpy(&hi, &h, 16);
      __m256 f = _mm256_cvtph_ps(hi);
      f8 r;
      std::memcpy(&r, &f, 32);
      return r;
    }
#endif
#if defined(__AVX2__)
    if constexpr (DT == 2) {
      __m128i hi;
      std::memcpy(&hi, &h, 16);
      __m256i wi = _mm256_slli_epi32(_mm256_cvtepu16_epi32(hi), 16);
      f8 r;
      std::memcpy(&r, &wi, 32);
      return r;
    }
#endif
    u8x32 w = __builtin_convertvector(h, u8x32) << 16;
    if constexpr (DT == 2) {
      return as_f8(w);
    } else {  // h2f on 8 lanes
      const u8x32 sign = w & 0x80000000u;
      const u8x32 two_w = w + w;
      const f8 normalized = as_f8((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
      const f8 denormalized = as_f8((two_w >> 17) | (126u << 23)) - 0.5f;
      const u8x32 m = (u8x32)(two_w < (1u << 27));
      return as_f8(sign | (as_u8(denormalized) & m) | (as_u8(normalized) & ~m));
    }
  }
}

// Converts rows [0, nr) x cols [0, n) of a strided matrix of dtype DT into dst (row stride n).
template <int DT>
void rows_to_f32(float* dst, const elem_t<DT>* src, size_t stride, int nr, int n) {
  for (int r = 0; r < nr; r++) {
    const elem_t<DT>* s = src + size_t(r) * stride;
    float* d = dst + size_t(r) * n;
    int j = 0;
    for (; j + 8 <= n; j += 8) st8(d + j, ld8w<DT>(s + j));
    for (; j < n; j++) d[j] = cv<DT>(s[j]);
  }
}

// ---------------------------------------------------------------------------
// Micro-kernels

// out[q] = Σ_j w[q·stride + j]·x[j], q < 4 (four dot products share each x load).
template <int DT>
inline void dot4(const elem_t<DT>* w, size_t stride, const float* x, int n, float out[4]) {
  const elem_t<DT>*w0 = w, *w1 = w + stride, *w2 = w + 2 * stride, *w3 = w + 3 * stride;
  f8 s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const f8 xv = ld8(x + j);
    s0 += xv * ld8w<DT>(w0 + j);
    s1 += xv * ld8w<DT>(w1 + j);
    s2 += xv * ld8w<DT>(w2 + j);
    s3 += xv * ld8w<DT>(w3 + j);
  }
  float t0 = hsum(s0), t1 = hsum(s1), t2 = hsum(s2), t3 = hsum(s3);
  for (; j < n; j++) {
    const float xv = x[j];
    t0 += xv * cv<DT>(w0[j]);
    t1 += xv * cv<DT>(w1[j]);
    t2 += xv * cv<DT>(w2[j]);
    t3 += xv * cv<DT>(w3[j]);
  }
  out[0] = t0;
  out[1] = t1;
  out[2] = t2;
  out[3] = t3;
}

// y[i] += a·x[i], i < n.
inline void axpy(float* y, float a, const float* x, int n) {
#pragma omp simd
  for (int i = 0; i < n; i++) y[i] += a * x[i];
}

template <int DT>
inline float dot1(const elem_t<DT>* w, const float* x, int n) {
  f8 s = {};
  int j = 0;
  for (; j + 8 <= n; j += 8) s += ld8(x + j) * ld8w<DT>(w + j);
  float t = hsum(s);
  for (; j < n; j++) t += x[j] * cv<DT>(w[j]);
  return t;
}

// Two tokens against four f32 rows: 8 dot products, 6 loads per 8 FMAs.
__attribute__((noinline, unused)) void dot4x2(const float* w, size_t stride, const float* xa, const float* xb, int n,
                                              float out[8]) {
  const float *w0 = w, *w1 = w + stride, *w2 = w + 2 * stride, *w3 = w + 3 * stride;
  f8 a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const f8 xa_ = ld8(xa + j), xb_ = ld8(xb + j);
    const f8 v0 = ld8(w0 + j), v1 = ld8(w1 + j), v2 = ld8(w2 + j), v3 = ld8(w3 + j);
    a0 += xa_ * v0;
    a1 += xa_ * v1;
    a2 += xa_ * v2;
    a3 += xa_ * v3;
    b0 += xb_ * v0;
    b1 += xb_ * v1;
    b2 += xb_ * v2;
    b3 += xb_ * v3;
  }
  float t[8] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3), hsum(b0), hsum(b1), hsum(b2), hsum(b3)};
  for (; j < n; j++) {
    const float xa_ = xa[j], xb_ = xb[j];
    const float v0 = w0[j], v1 = w1[j], v2 = w2[j], v3 = w3[j];
    t[0] += xa_ * v0;
    t[1] += xa_ * v1;
    t[2] += xa_ * v2;
    t[3] += xa_ * v3;
    t[4] += xb_ * v0;
    t[5] += xb_ * v1;
    t[6] += xb_ * v2;
    t[7] += xb_ * v3;
  }
  std::memcpy(out, t, sizeof t);
}

// acc[j] += Σ_{q < nr} m[q·stride + j]·d[q], j < n; rows taken four at a time.
template <int DT>
inline void rows_axpy(float* __restrict acc, const elem_t<DT>* m, size_t stride, int nr, const float* d, int n) {
  int q = 0;
  for (; q + 4 <= nr; q += 4) {
    const elem_t<DT>*m0 = m + size_t(q) * stride, *m1 = m0 + stride, *m2 = m1 + stride, *m3 = m2 + stride;
    const float d0 = d[q], d1 = d[q + 1], d2 = d[q + 2], d3 = d[q + 3];
    const f8 e0 = splat(d0), e1 = splat(d1), e2 = splat(d2), e3 = splat(d3);
    int j = 0;
    for (; j + 8 <= n; j += 8)
      st8(acc + j, ld8(acc + j) + ((ld8w<DT>(m0 + j) * e0 + ld8w<DT>(m1 + j) * e1) +
                                   (ld8w<DT>(m2 + j) * e2 + ld8w<DT>(m3 + j) * e3)));
    for (; j < n; j++) acc[j] += (cv<DT>(m0[j]) * d0 + cv<DT>(m1[j]) * d1) + (cv<DT>(m2[j]) * d2 + cv<DT>(m3[j]) * d3);
  }
  for (; q < nr; q++) {
    const elem_t<DT>* m0 = m + size_t(q) * stride;
    const float d0 = d[q];
    const f8 e0 = splat(d0);
    int j = 0;
    for (; j + 8 <= n; j += 8) st8(acc + j, ld8(acc + j) + ld8w<DT>(m0 + j) * e0);
    for (; j < n; j++) acc[j] += cv<DT>(m0[j]) * d0;
  }
}

// y[j] (+)= Σ_{q < nr} m[q·stride + j]·u[q] for j < n (SET: y = sum, else y += sum):
// 32 outputs held in registers while all nr rows stream past.
template <int DT, bool SET>
inline void rows_axpy_reg(float* y, const elem_t<DT>* m, size_t stride, int nr, const float* u, int n) {
  auto put = [&](float* p, const f8& a) { st8(p, SET ? a : ld8(p) + a); };
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    f8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    const elem_t<DT>* mj = m + j;
    for (int q = 0; q < nr; q++, mj += stride) {
      const f8 e = splat(u[q]);
      a0 += ld8w<DT>(mj) * e;
      a1 += ld8w<DT>(mj + 8) * e;
      a2 += ld8w<DT>(mj + 16) * e;
      a3 += ld8w<DT>(mj + 24) * e;
    }
    put(y + j, a0);
    put(y + j + 8, a1);
    put(y + j + 16, a2);
    put(y + j + 24, a3);
  }
  for (; j + 8 <= n; j += 8) {
    f8 a0 = {};
    for (int q = 0; q < nr; q++) a0 += ld8w<DT>(m + size_t(q) * stride + j) * splat(u[q]);
    put(y + j, a0);
  }
  for (; j < n; j++) {
    float s = 0;
    for (int q = 0; q < nr; q++) s += cv<DT>(m[size_t(q) * stride + j]) * u[q];
    y[j] = SET ? s : y[j] + s;
  }
}

// out[r] = Σ_{o < n} m[o·stride + r]·d[o] for r < nc (a column sum of a row-major block;
// B[e]ᵀ·dy). Up to 32 columns in registers, two rows per step into separate accumulators.
template <int DT, int NV>
inline void colsum_vec(float* out, const elem_t<DT>* m, size_t stride, int n, const float* d) {
  f8 a[NV] = {}, b[NV] = {};
  int o = 0;
  for (; o + 2 <= n; o += 2) {
    const f8 d0 = splat(d[o]), d1 = splat(d[o + 1]);
    const elem_t<DT>* m0 = m + size_t(o) * stride;
    const elem_t<DT>* m1 = m0 + stride;
    for (int i = 0; i < NV; i++) {
      a[i] += ld8w<DT>(m0 + 8 * i) * d0;
      b[i] += ld8w<DT>(m1 + 8 * i) * d1;
    }
  }
  if (o < n) {
    const f8 d0 = splat(d[o]);
    for (int i = 0; i < NV; i++) a[i] += ld8w<DT>(m + size_t(o) * stride + 8 * i) * d0;
  }
  for (int i = 0; i < NV; i++) st8(out + 8 * i, a[i] + b[i]);
}

template <int DT>
void colsum(float* out, const elem_t<DT>* m, size_t stride, int n, const float* d, int nc) {
  int c = 0;
  for (; c + 32 <= nc; c += 32) colsum_vec<DT, 4>(out + c, m + c, stride, n, d);
  switch ((nc - c) / 8) {
    case 3:
      colsum_vec<DT, 3>(out + c, m + c, stride, n, d);
      c += 24;
      break;
    case 2:
      colsum_vec<DT, 2>(out + c, m + c, stride, n, d);
      c += 16;
      break;
    case 1:
      colsum_vec<DT, 1>(out + c, m + c, stride, n, d);
      c += 8;
      break;
    default:
      break;
  }
  for (; c < nc; c++) {  // columns past the last full vector (never past nc)
    float s0 = 0, s1 = 0;
    int o = 0;
    for (; o + 2 <= n; o += 2) {
      s0 += cv<DT>(m[size_t(o) * stride + c]) * d[o];
      s1 += cv<DT>(m[size_t(o + 1) * stride + c]) * d[o + 1];
    }
    if (o < n) s0 += cv<DT>(m[size_t(o) * stride + c]) * d[o];
    out[c] = s0 + s1;
  }
}

// Grouped GEMM of the weight gradients: out[r][j] (+)= Σ_p C[p][r]·X[p][j], p ascending.
// Operands are packed per work item: Xp[jt][p][16] (16-column slabs, zero-padded) and
// Cp[p][rp] (rp = rank rounded up to 4, zero-padded), so the 4 x 16 register tile always
// runs full and streams contiguous memory.
constexpr int kOuterJ = 16;
constexpr int kOuterR = 4;

// res[q][j] = Σ_p coef(p, q)·xs[p][j], one FMA chain per element over p ascending; the two
// entries below differ only in where the broadcast operand comes from.
template <class Coef>
__attribute__((always_inline)) inline void outer_tile_with(const float* xs, int np, Coef coef,
                                                           float res[kOuterR][kOuterJ]) {
  f8 a00 = {}, a01 = {}, a10 = {}, a11 = {}, a20 = {}, a21 = {}, a30 = {}, a31 = {};
  for (int p = 0; p < np; p++, xs += kOuterJ) {
    const f8 x0 = ld8(xs), x1 = ld8(xs + 8);
    const f8 c0 = splat(coef(p, 0)), c1 = splat(coef(p, 1)), c2 = splat(coef(p, 2)), c3 = splat(coef(p, 3));
    a00 += c0 * x0;
    a01 += c0 * x1;
    a10 += c1 * x0;
    a11 += c1 * x1;
    a20 += c2 * x0;
    a21 += c2 * x1;
    a30 += c3 * x0;
    a31 += c3 * x1;
  }
  st8(res[0], a00);
  st8(res[0] + 8, a01);
  st8(res[1], a10);
  st8(res[1] + 8, a11);
  st8(res[2], a20);
  st8(res[2] + 8, a21);
  st8(res[3], a30);
  st8(res[3] + 8, a31);
}

// Packed coefficients: c(p, q) = cs[p·cstride + q].
__attribute__((noinline, unused)) void outer_tile(const float* xs, const float* cs, size_t cstride, int np,
                                                  float res[kOuterR][kOuterJ]) {
  outer_tile_with(
      xs, np, [cs, cstride](int p, int q) { return cs[size_t(p) * cstride + q]; }, res);
}

// Coefficients read from four rows directly: c(p, q) = rows[q][p].
__attribute__((noinline, unused)) void outer_tile_rows(const float* xs, const float* const rows[kOuterR], int np,
                                                       float res[kOuterR][kOuterJ]) {
  const float *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
  outer_tile_with(
      xs, np,
      [r0, r1, r2, r3](int p, int q) {
        return (q == 0 ? r0 : q == 1 ? r1 : q == 2 ? r2 : r3)[p];
      },
      res);
}

constexpr int kPackAhead = 4;  // rows prefetched ahead while packing

// Packs rows X[p][0, nj) into xp[jt][p][16] (zero-padded to a multiple of 16 columns).
__attribute__((unused)) void pack_x(float* xp, const float* const* X, int np, int nj) {
  const int njt = (nj + kOuterJ - 1) / kOuterJ;
  for (int p = 0; p < np; p++) {
    const float* src = X[p];
    if (p + kPackAhead < np)
      for (int j = 0; j < nj; j += 16) __builtin_prefetch(X[p + kPackAhead] + j);
    for (int jt = 0; jt < njt; jt++) {
      float* d = xp + (size_t(jt) * np + p) * kOuterJ;
      const int w = std::min(kOuterJ, nj - jt * kOuterJ);
      if (w == kOuterJ) {
        st8(d, ld8(src + jt * kOuterJ));
        st8(d + 8, ld8(src + jt * kOuterJ + 8));
      } else {
        for (int j = 0; j < kOuterJ; j++) d[j] = j < w ? src[jt * kOuterJ + j] : 0.f;
      }
    }
  }
}

// Stores the 16 floats of src at dst: a streaming (non-temporal) store when asked and dst is
// 32-byte aligned (the line is written whole, so it need not be read first), else a plain one.
inline void store16(float* dst, const float* src, bool stream) {
#if defined(__AVX__)
  if (stream && (reinterpret_cast<uintptr_t>(dst) & 31) == 0) {
    _mm256_stream_ps(dst, _mm256_loadu_ps(src));
    _mm256_stream_ps(dst + 8, _mm256_loadu_ps(src + 8));
    return;
  }
#else
  (void)stream;
#endif
  std::memcpy(dst, src, 64);
}

// Stores 8 floats (half a line): streamed when asked and aligned (whole lines are written by
// the neighbouring store, as in rows of 8 floats), else plain.
inline void store8(float* dst, const float* src, bool stream) {
#if defined(__AVX__)
  if (stream && (reinterpret_cast<uintptr_t>(dst) & 31) == 0) {
    _mm256_stream_ps(dst, _mm256_loadu_ps(src));
    return;
  }
#else
  (void)stream;
#endif
  std::memcpy(dst, src, 32);
}

// Zeroes n floats at dst, with streaming stores for the aligned 8-float runs when asked.
inline void zero_floats(float* dst, size_t n, bool stream) {
#if defined(__AVX__)
  if (stream) {
    size_t i = 0;
    while (i < n && (reinterpret_cast<uintptr_t>(dst + i) & 31) != 0) dst[i++] = 0.f;
    const __m256 z = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, z);
    for (; i < n; i++) dst[i] = 0.f;
    return;
  }
#else
  (void)stream;
#endif
  std::memset(dst, 0, n * 4);
}

// Orders this thread's streaming stores before whatever it does next (the pool's hand-back).
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// out[r·ostride + j] (+)= Σ_p cp[p·rp + r]·X[p][j] for r < nr, j < nj; xp from pack_x.
// stream: full 16-wide rows of a fresh (non-accumulated) output go out with streaming stores.
__attribute__((unused)) void outer_packed(const float* xp, const float* cp, int rp, int np, int nr, int nj, float* out,
                                          size_t ostride, bool acc, bool stream = false) {
  const int njt = (nj + kOuterJ - 1) / kOuterJ;
  float res[kOuterR][kOuterJ];
  for (int jt = 0; jt < njt; jt++) {
    const int j0 = jt * kOuterJ, w = std::min(kOuterJ, nj - j0);
    for (int r0 = 0; r0 < nr; r0 += kOuterR) {
      outer_tile(xp + size_t(jt) * np * kOuterJ, cp + r0, rp, np, res);
      for (int q = 0; q < std::min(kOuterR, nr - r0); q++) {
        float* o = out + size_t(r0 + q) * ostride + j0;
        if (!acc && w == kOuterJ)
          store16(o, res[q], stream);
        else
          for (int j = 0; j < w; j++) o[j] = acc ? o[j] + res[q][j] : res[q][j];
      }
    }
  }
}

// The transposed product, rows whole: out[o·R + r] (+)= Σ_p dq[o/4][p][o%4]·ck[r/16][p][r%16]
// for o < no, r < re (ck: packed in 16-wide slabs of r, zero past re; dq: the per-row operand
// in groups of 4 rows, zero-padded). Entries r in [re, R) are zeroed unless acc. Same tile,
// same order over p as outer_packed.
__attribute__((unused)) void outer_packed_rows(const float* ck, const float* dq, int np, int no, int re, int R,
                                               float* out, bool acc, bool stream = false) {
  const int nrt = (re + kOuterJ - 1) / kOuterJ;
  float res[kOuterR][kOuterJ];
  for (int o0 = 0; o0 < no; o0 += kOuterR) {
    const int nq = std::min(kOuterR, no - o0);
    for (int rt = 0; rt < nrt; rt++) {
      const int r0 = rt * kOuterJ, w = std::min(kOuterJ, re - r0);
      outer_tile(ck + size_t(rt) * np * kOuterJ, dq + size_t(o0 / kOuterR) * np * kOuterR, kOuterR, np, res);
      for (int q = 0; q < nq; q++) {
        float* o = out + size_t(o0 + q) * R + r0;
        if (!acc && w == kOuterJ)
          store16(o, res[q], stream);
        else if (!acc && w == 8)
          store8(o, res[q], stream);
        else
          for (int j = 0; j < w; j++) o[j] = acc ? o[j] + res[q][j] : res[q][j];
      }
    }
    if (!acc && re < R)
      for (int q = 0; q < nq; q++) std::memset(out + size_t(o0 + q) * R + re, 0, size_t(R - re) * 4);
  }
}

// Packs rows [0, nr) x cols [0, n) of a strided matrix of dtype DT, or (transpose) its
// columns, into 16-column slabs dst[jt][r][16] (zero-padded past n), the xs operand of outer_tile.
template <int DT>
void pack_slabs(float* dst, const elem_t<DT>* src, size_t stride, int nr, int n) {
  const int njt = (n + kOuterJ - 1) / kOuterJ;
  for (int jt = 0; jt < njt; jt++) {
    const int j0 = jt * kOuterJ, w = std::min(kOuterJ, n - j0);
    for (int r = 0; r < nr; r++) {
      float* d = dst + (size_t(jt) * nr + r) * kOuterJ;
      const elem_t<DT>* s = src + size_t(r) * stride + j0;
      if (w == kOuterJ) {
        st8(d, ld8w<DT>(s));
        st8(d + 8, ld8w<DT>(s + 8));
      } else {
        for (int j = 0; j < kOuterJ; j++) d[j] = j < w ? cv<DT>(s[j]) : 0.f;
      }
    }
  }
}
#if defined(__AVX__)
// Transposes the 8 x 8 block in r[0..8) in place (row i becomes column i).
inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
#endif

// The same from a row-major [n][stride] block read by columns: dst[jt][r][16] = src[(16jt + j)·stride + r].
template <int DT>
void pack_slabs_t(float* dst, const elem_t<DT>* src, size_t stride, int nr, int n) {
  const int njt = (n + kOuterJ - 1) / kOuterJ;
  for (int jt = 0; jt < njt; jt++) {
    const int j0 = jt * kOuterJ, w = std::min(kOuterJ, n - j0);
    float* d = dst + size_t(jt) * nr * kOuterJ;
#if defined(__AVX__)
    if (w == kOuterJ && nr % 8 == 0) {  // 8 x 8 blocks through registers
      for (int h = 0; h < kOuterJ; h += 8)
        for (int r0 = 0; r0 < nr; r0 += 8) {
          __m256 m[8];
          for (int i = 0; i < 8; i++) {
            const f8 row = ld8w<DT>(src + size_t(j0 + h + i) * stride + r0);
            std::memcpy(&m[i], &row, 32);
          }
          transpose8(m);
          for (int i = 0; i < 8; i++) _mm256_storeu_ps(d + size_t(r0 + i) * kOuterJ + h, m[i]);
        }
      continue;
    }
#endif
    for (int j = 0; j < kOuterJ; j++) {
      const elem_t<DT>* s = src + size_t(j0 + j) * stride;
      for (int r = 0; r < nr; r++) d[size_t(r) * kOuterJ + j] = j < w ? cv<DT>(s[r]) : 0.f;
    }
  }
}

// Up to four output rows at once: rows[q][j] (+)= Σ_{r < nr} up[r·4 + q]·S[jt][r][j % 16] for
// j < n, q < nq (S from pack_slabs; up zero past nq). SET overwrites instead of adding. Each
// entry is one FMA chain over r ascending, as a row-at-a-time axpy over the same rows gives.
template <bool SET>
inline void slab_rows4(const float* S, int nr, int n, const float* up, float* const rows[4], int nq) {
  const int njt = (n + kOuterJ - 1) / kOuterJ;
  float res[kOuterR][kOuterJ];
  for (int jt = 0; jt < njt; jt++) {
    const int j0 = jt * kOuterJ, w = std::min(kOuterJ, n - j0);
    outer_tile(S + size_t(jt) * nr * kOuterJ, up, kOuterR, nr, res);
    for (int q = 0; q < nq; q++) {
      float* o = rows[q] + j0;
      if (w == kOuterJ) {
        st8(o, SET ? ld8(res[q]) : ld8(o) + ld8(res[q]));
        st8(o + 8, SET ? ld8(res[q] + 8) : ld8(o + 8) + ld8(res[q] + 8));
      } else {
        for (int j = 0; j < w; j++) o[j] = SET ? res[q][j] : o[j] + res[q][j];
      }
    }
  }
}

}  // namespace
}  // namespace MOTE_CPU_KERNEL_NS
