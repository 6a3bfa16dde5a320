// Multi-slot LoRA family on the CPU (DESIGN §4); contracts in src/ops/lora.ts (LoraKernels).
//   A: [L, R, Hin], B: [L, Hout, R], weights f32/f16/bf16, f32 accumulation.
// Work past an adapter's rank is skipped: A rows r >= rank[e] and B columns r >= rank[e]
// are never read.
//
// Determinism: every output element belongs to exactly one work item, and a work item
// sums in a fixed order. Work items are cut from the problem (dims and routing) only,
// never from the thread count, so results are bit-identical for any number of threads;
// parallel_for only decides which thread runs which items. No atomics.
//
// Strategies: 0 = per token (BGMV: each (token, slot) gathers its adapter; weights are
// converted on the fly), 1 = grouped (SGMV: segments of `order` share one adapter, whose
// A/B block is converted to f32 once per work item and reused by all its tokens).
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "blas.h"
#include "half.h"
#include "kernels.h"
#include "simd.h"
#include "threads.h"

namespace MOTE_CPU_KERNEL_NS {
namespace {

// ---------------------------------------------------------------------------
// Argument checks (cheap, O(T·K + L)): index ranges, so a bad routing can never make
// the kernels read or write out of bounds, and the grouped form's consistency, which
// the race-freedom of the grouped kernels relies on.

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("lora: " + what); }

void check_args(const mote_lora_args& a, bool segments) {
  if (a.T <= 0 || a.K <= 0 || a.L <= 0 || a.R <= 0 || a.Hin <= 0 || a.Hout <= 0)
    bad("T, K, L, R, Hin, Hout: expected positive integers");
  if (a.a_dtype < 0 || a.a_dtype > 2)
    bad("A dtype: expected f32, f16 or bf16 (0..2), got " + std::to_string(a.a_dtype));
  if (a.b_dtype < 0 || a.b_dtype > 2)
    bad("B dtype: expected f32, f16 or bf16 (0..2), got " + std::to_string(a.b_dtype));
  if (a.strategy != 0 && a.strategy != 1)
    bad("strategy: expected 0 (bgmv) or 1 (sgmv), got " + std::to_string(a.strategy));
  for (int e = 0; e < a.L; e++)
    if (a.rank[e] < 1 || a.rank[e] > a.R)
      bad("rank[" + std::to_string(e) + "]: expected an integer in [1, " + std::to_string(a.R) + "], got " +
          std::to_string(a.rank[e]));
  const size_t TK = size_t(a.T) * a.K;
  size_t used = 0;
  for (size_t i = 0; i < TK; i++) {
    int s = a.slots[i];
    if (s < -1 || s >= a.L)
      bad("slots[" + std::to_string(i) + "]: expected an adapter in [-1, " + std::to_string(a.L - 1) + "], got " +
          std::to_string(s));
    used += s >= 0;
  }
  if (!segments) return;
  if (a.P < 0 || size_t(a.P) != used)
    bad("P: expected the number of non-empty slots, " + std::to_string(used) + ", got " + std::to_string(a.P));
  if (a.G < 0 || a.G > a.L) bad("G: expected a count in [0, L], got " + std::to_string(a.G));
  if (a.seg_start[0] != 0 || a.seg_start[a.G] != a.P) bad("segStart: expected to start at 0 and end at P");
  for (int g = 0; g < a.G; g++) {
    int e = a.seg_adapter[g];
    if (e < 0 || e >= a.L || (g > 0 && e <= a.seg_adapter[g - 1]))
      bad("segAdapter: expected strictly ascending adapters in [0, L)");
    if (a.seg_start[g + 1] < a.seg_start[g]) bad("segStart: expected non-decreasing offsets");
  }
  std::vector<char> seen(TK, 0);
  for (int g = 0; g < a.G; g++) {
    int e = a.seg_adapter[g];
    for (int p = a.seg_start[g]; p < a.seg_start[g + 1]; p++) {
      int q = a.order[p];
      if (q < 0 || size_t(q) >= TK || seen[q] || a.slots[q] != e)
        bad("order[" + std::to_string(p) + "]: not a slot of adapter " + std::to_string(e) + " (or listed twice)");
      seen[q] = 1;
    }
  }
}

// Zeroes v entries that no kernel item writes: empty slots and entries past the rank.
void zero_unused(const mote_lora_args& a, float* v) {
  const size_t TK = size_t(a.T) * a.K;
  for (size_t p = 0; p < TK; p++) {
    int e = a.slots[p];
    int from = e < 0 ? 0 : a.rank[e];
    if (from < a.R) std::memset(v + p * a.R + from, 0, size_t(a.R - from) * 4);
  }
}

// Calls with less work than this (bytes of weights and activations streamed) run on the
// calling thread: waking a worker costs more than it saves. Which thread runs an item never
// changes its result (see the top of this file).
constexpr size_t kSerialBytes = size_t(96) << 10;
template <typename F>
void par_for(size_t work_bytes, size_t n, size_t grain, F&& fn) {
  if (work_bytes < kSerialBytes)
    fn(size_t(0), n);
  else
    parallel_for(n, grain, fn);
}
// Bytes a call streams: every (token, slot) pair reads R·H weights (an upper bound).
inline size_t lora_work(const mote_lora_args& a, int H) {
  return size_t(a.T) * a.K * a.R * H * 4 + size_t(a.T) * H * 4;
}

// ---------------------------------------------------------------------------
// One adapter for the whole batch (K = 1, every token routed to the same adapter, f32 B,
// enough tokens, OpenBLAS loaded): the expand is a plain rank-r matmul y += u·Bᵀ, which
// OpenBLAS's register-blocked sgemm (leading dims stopping at the rank) runs 2-3× faster than
// the grouped kernel here (measured on this machine; the shrink and the backward ops were not
// faster through it, so they keep the kernels below). Each output element is one dot product
// over a fixed range in OpenBLAS's fixed order: mote's thread count does not enter.

constexpr int kBlasMinTokens = 16;  // as the base matmul (matmul.cc): below, the streaming kernels win

// The adapter every token uses, or -1 when the batch is not a single-adapter one. Needs slots
// already checked (check_args).
int single_adapter(const mote_lora_args& a, bool b_f32) {
  if (!blas_sgemm || a.K != 1 || a.T < kBlasMinTokens || !b_f32) return -1;
  const int e = a.slots[0];
  if (e < 0) return -1;
  for (int t = 1; t < a.T; t++)
    if (a.slots[t] != e) return -1;
  return e;
}

inline const float* B_of(const mote_lora_args& a, int e) {
  return static_cast<const float*>(a.B) + size_t(e) * a.Hout * a.R;
}

// u[t, r] = weight[t]·scale[e]·v[t, r], r < rank (packed, row stride rank).
void scaled_rows(const mote_lora_args& a, int e, const float* v, std::vector<float>& u) {
  const int re = a.rank[e];
  const float sc = a.scale[e];
  u.resize(size_t(a.T) * re);
  for (int t = 0; t < a.T; t++) {
    const float c = a.weight[t] * sc;
    for (int r = 0; r < re; r++) u[size_t(t) * re + r] = c * v[size_t(t) * a.R + r];
  }
}

// y[t] += u[t]·B[e]ᵀ (rank columns of B).
void expand_one(const mote_lora_args& a, int e, float* y, const float* v) {
  std::vector<float> u;
  scaled_rows(a, e, v, u);
  const int re = a.rank[e];
  blas_sgemm(kCblasRowMajor, kCblasNoTrans, kCblasTrans, a.T, a.Hout, re, 1.f, u.data(), re, B_of(a, e), a.R, 1.f, y,
             a.Hout);
}

// Grouped work split into tiles of at most `per` pairs of one segment.
struct Tile {
  int g, p0, p1;
};
std::vector<Tile> tiles_of(const mote_lora_args& a, int per) {
  std::vector<Tile> t;
  for (int g = 0; g < a.G; g++)
    for (int p = a.seg_start[g]; p < a.seg_start[g + 1]; p += per)
      t.push_back({g, p, std::min(a.seg_start[g + 1], p + per)});
  return t;
}

// Items over (segment, block) when every token sits in at most one segment (K = 1);
// otherwise items over blocks, each visiting all segments in order (a token's slots can
// name different adapters, and its output row must have a single owner).
template <typename F>
void for_segment_blocks(const mote_lora_args& a, int nBlocks, size_t work, F&& body) {
  if (a.K == 1) {
    par_for(work, size_t(a.G) * nBlocks, 1, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; i++) body(int(i / nBlocks), int(i / nBlocks) + 1, int(i % nBlocks));
    });
  } else {
    par_for(work, size_t(nBlocks), 1, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; i++) body(0, a.G, int(i));
    });
  }
}

#define MOTE_LORA_DISPATCH(dt, fn, ...) \
  switch (dt) {                         \
    case 0:                             \
      fn<0>(__VA_ARGS__);               \
      break;                            \
    case 1:                             \
      fn<1>(__VA_ARGS__);               \
      break;                            \
    default:                            \
      fn<2>(__VA_ARGS__);               \
      break;                            \
  }

// ---------------------------------------------------------------------------
// shrink: v[t,k,r] = A[e][r,:]·x[t]

constexpr int kShrinkRows = 4;   // rows of A per BGMV item
constexpr int kShrinkTile = 16;  // pairs per SGMV tile

template <int DT>
void shrink_bgmv(const mote_lora_args& a, float* v, const float* x) {
  // Items: (pair, block of 4 rows). One token still spreads over R/4 items.
  const int nrb = (a.R + kShrinkRows - 1) / kShrinkRows;
  const size_t TK = size_t(a.T) * a.K;
  const auto* A = typed<DT>(a.A);
  par_for(lora_work(a, a.Hin), TK * nrb, 1, [&](size_t b, size_t end) {
    for (size_t i = b; i < end; i++) {
      size_t p = i / nrb;
      int r0 = int(i % nrb) * kShrinkRows, r1 = std::min(a.R, r0 + kShrinkRows);
      int e = a.slots[p];
      float* vp = v + p * a.R;
      int re = e < 0 ? 0 : std::min(r1, a.rank[e]);
      int r = r0;
      if (r < re) {
        const float* xt = x + (p / a.K) * a.Hin;
        const auto* Ae = A + size_t(e) * a.R * a.Hin;
        if (re - r == kShrinkRows) {
          dot4<DT>(Ae + size_t(r) * a.Hin, a.Hin, xt, a.Hin, vp + r);
          r += kShrinkRows;
        }
        for (; r < re; r++) vp[r] = dot1<DT>(Ae + size_t(r) * a.Hin, xt, a.Hin);
      }
      for (r = std::max(r, r0); r < r1; r++) vp[r] = 0.f;
    }
  });
}

template <int DT>
void shrink_sgmv(const mote_lora_args& a, float* v, const float* x) {
  zero_unused(a, v);
  const std::vector<Tile> tiles = tiles_of(a, kShrinkTile);
  // Many tiles: one item per tile reads each x row once for all rows of A. Few tiles
  // (small batches): split the rows too so every thread has work.
  const int rb = tiles.size() >= 8 ? (a.R + 3) / 4 * 4 : kShrinkRows;
  const int nrb = (a.R + rb - 1) / rb;
  const auto* A = typed<DT>(a.A);
  par_for(lora_work(a, a.Hin), tiles.size() * nrb, 1, [&](size_t b, size_t end) {
    std::vector<float> scratch;
    for (size_t i = b; i < end; i++) {
      const Tile& tl = tiles[i / nrb];
      const int e = a.seg_adapter[tl.g], re = a.rank[e];
      const int r0 = int(i % nrb) * rb, r1 = std::min(re, r0 + rb);
      if (r0 >= r1) continue;
      const int np = tl.p1 - tl.p0;
      const auto* Ae = A + (size_t(e) * a.R + r0) * a.Hin;
      if (DT != 0 && np == 1) {  // one token: convert on the fly, like BGMV
        const int p = a.order[tl.p0];
        const float* xt = x + size_t(p / a.K) * a.Hin;
        float* vp = v + size_t(p) * a.R;
        int r = r0;
        for (; r + 4 <= r1; r += 4) dot4<DT>(Ae + size_t(r - r0) * a.Hin, a.Hin, xt, a.Hin, vp + r);
        for (; r < r1; r++) vp[r] = dot1<DT>(Ae + size_t(r - r0) * a.Hin, xt, a.Hin);
        continue;
      }
      const float* Af;
      if constexpr (DT == 0) {
        Af = Ae;
      } else {
        scratch.resize(size_t(r1 - r0) * a.Hin);
        rows_to_f32<DT>(scratch.data(), Ae, a.Hin, r1 - r0, a.Hin);
        Af = scratch.data();
      }
      // Row groups outer, tokens inner: a group of 4 rows of A is reused by the whole tile.
      const int n = a.Hin;
      for (int r = r0; r < r1; r += 4) {
        const int nr = std::min(4, r1 - r);
        const float* Ar = Af + size_t(r - r0) * n;
        int pi = tl.p0;
        for (; pi + 2 <= tl.p1; pi += 2) {
          const int pa = a.order[pi], pb = a.order[pi + 1];
          const float* xa = x + size_t(pa / a.K) * n;
          const float* xb = x + size_t(pb / a.K) * n;
          float* va = v + size_t(pa) * a.R + r;
          float* vb = v + size_t(pb) * a.R + r;
          if (nr == 4) {
            float o[8];
            dot4x2(Ar, n, xa, xb, n, o);
            std::memcpy(va, o, 16);
            std::memcpy(vb, o + 4, 16);
          } else {
            for (int q = 0; q < nr; q++) {
              va[q] = dot1<0>(Ar + size_t(q) * n, xa, n);
              vb[q] = dot1<0>(Ar + size_t(q) * n, xb, n);
            }
          }
        }
        if (pi < tl.p1) {
          const int p = a.order[pi];
          const float* xt = x + size_t(p / a.K) * n;
          float* vp = v + size_t(p) * a.R + r;
          if (nr == 4)
            dot4<0>(Ar, n, xt, n, vp);
          else
            for (int q = 0; q < nr; q++) vp[q] = dot1<0>(Ar + size_t(q) * n, xt, n);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// expand: y[t] += Σ_k weight·scale[e]·B[e]·v[t,k]

constexpr int kExpandBgmvBlock = 512;  // outputs per BGMV item (32 KiB of f32 B at R = 16)
constexpr int kExpandSgmvBlock = 256;  // outputs per SGMV item
constexpr int kTransposeMin = 8;       // tokens of one adapter that pay for a transposed f32 copy of B

// y[o] += Σ_{r<re} B[o,r]·u[r] for o < n (B rows of stride R), four rows at a time.
template <int DT>
inline void expand_rows(float* y, const elem_t<DT>* Bb, int R, int re, const float* u, int n) {
  int o = 0;
#if defined(__AVX__)
  if (re % 8 == 0) {  // 8 rows at a time, their 8 partial vectors reduced by one transpose-add
    for (; o + 8 <= n; o += 8) {
      const elem_t<DT>* b = Bb + size_t(o) * R;
      __m256 p[8];
      for (int q = 0; q < 8; q++) p[q] = _mm256_setzero_ps();
      for (int r = 0; r < re; r += 8) {
        const f8 ur = ld8(u + r);
        for (int q = 0; q < 8; q++) p[q] = (__m256)((f8)p[q] + ld8w<DT>(b + size_t(q) * R + r) * ur);
      }
      const __m256 t0 = _mm256_hadd_ps(p[0], p[1]), t1 = _mm256_hadd_ps(p[2], p[3]);
      const __m256 t2 = _mm256_hadd_ps(p[4], p[5]), t3 = _mm256_hadd_ps(p[6], p[7]);
      const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
      const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
      _mm256_storeu_ps(y + o, _mm256_add_ps(_mm256_loadu_ps(y + o), sum));
    }
  }
#endif
  for (; o + 4 <= n; o += 4) {
    float s[4];
    dot4<DT>(Bb + size_t(o) * R, R, u, re, s);
    y[o] += s[0];
    y[o + 1] += s[1];
    y[o + 2] += s[2];
    y[o + 3] += s[3];
  }
  for (; o < n; o++) y[o] += dot1<DT>(Bb + size_t(o) * R, u, re);
}

// Many slots per token (rank-8 units: K up to 16), every rank a multiple of 8: for each 8
// outputs, all slots' products go into the same 8 lane-vectors and are reduced and added to y
// once, instead of once per slot. False (nothing done) when a rank is not a multiple of 8 or
// the build has no AVX; the caller then takes the slot-at-a-time loop.
template <int DT>
bool expand_slots(const mote_lora_args& a, size_t t, int o0, int o1, float* y, const float* v, const elem_t<DT>* B,
                  std::vector<float>& us, std::vector<const elem_t<DT>*>& bs, std::vector<int>& rs) {
#if defined(__AVX__)
  us.clear();
  bs.clear();
  rs.clear();
  for (int k = 0; k < a.K; k++) {
    const size_t p = t * a.K + k;
    const int e = a.slots[p];
    if (e < 0) continue;
    const int re = a.rank[e];
    if (re % 8 != 0) return false;
    const float c = a.weight[p] * a.scale[e];
    for (int r = 0; r < re; r++) us.push_back(c * v[p * a.R + r]);
    bs.push_back(B + (size_t(e) * a.Hout + o0) * a.R);
    rs.push_back(re);
  }
  const int ns = int(bs.size()), n = o1 - o0, R = a.R;
  float* yr = y + t * a.Hout + o0;
  int o = 0;
  for (; o + 8 <= n; o += 8) {
    __m256 p[8];
    for (int q = 0; q < 8; q++) p[q] = _mm256_setzero_ps();
    const float* u = us.data();
    for (int k = 0; k < ns; k++) {
      const elem_t<DT>* bk = bs[k] + size_t(o) * R;
      for (int r = 0; r < rs[k]; r += 8, u += 8) {
        const f8 ur = ld8(u);
        for (int q = 0; q < 8; q++) p[q] = (__m256)((f8)p[q] + ld8w<DT>(bk + size_t(q) * R + r) * ur);
      }
    }
    const __m256 t0 = _mm256_hadd_ps(p[0], p[1]), t1 = _mm256_hadd_ps(p[2], p[3]);
    const __m256 t2 = _mm256_hadd_ps(p[4], p[5]), t3 = _mm256_hadd_ps(p[6], p[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(yr + o, _mm256_add_ps(_mm256_loadu_ps(yr + o), sum));
  }
  if (o < n) {  // the last outputs (n not a multiple of 8): slot at a time
    const float* u = us.data();
    for (int k = 0; k < ns; k++) {
      expand_rows<DT>(yr + o, bs[k] + size_t(o) * R, R, rs[k], u, n - o);
      u += rs[k];
    }
  }
  return true;
#else
  (void)a, (void)t, (void)o0, (void)o1, (void)y, (void)v, (void)B, (void)us, (void)bs, (void)rs;
  return false;
#endif
}

template <int DT>
void expand_bgmv(const mote_lora_args& a, float* y, const float* v) {
  // Items: (token, block of outputs): each reads a contiguous run of B per slot.
  const int nb = (a.Hout + kExpandBgmvBlock - 1) / kExpandBgmvBlock;
  const auto* B = typed<DT>(a.B);
  par_for(lora_work(a, a.Hout), size_t(a.T) * nb, 1, [&](size_t b, size_t end) {
    std::vector<float> u(a.R);
    std::vector<float> us;
    std::vector<const elem_t<DT>*> bs;
    std::vector<int> rs;
    for (size_t i = b; i < end; i++) {
      const size_t t = i / nb;
      const int o0 = int(i % nb) * kExpandBgmvBlock, o1 = std::min(a.Hout, o0 + kExpandBgmvBlock);
      if (a.K > 1 && expand_slots<DT>(a, t, o0, o1, y, v, B, us, bs, rs)) continue;
      for (int k = 0; k < a.K; k++) {
        const size_t p = t * a.K + k;
        const int e = a.slots[p];
        if (e < 0) continue;
        const int re = a.rank[e];
        const float c = a.weight[p] * a.scale[e];
        for (int r = 0; r < re; r++) u[r] = c * v[p * a.R + r];
        expand_rows<DT>(y + t * a.Hout + o0, B + (size_t(e) * a.Hout + o0) * a.R, a.R, re, u.data(), o1 - o0);
      }
    }
  });
}

// Prefetches the n floats at p (a block of the next token's output row) for writing.
inline void prefetch_rw(const float* p, int n) {
  for (int j = 0; j < n; j += 16) __builtin_prefetch(p + j, 1);
}

template <int DT>
void expand_sgmv(const mote_lora_args& a, float* y, const float* v) {
  const int nb = (a.Hout + kExpandSgmvBlock - 1) / kExpandSgmvBlock;
  const auto* B = typed<DT>(a.B);
  for_segment_blocks(a, nb, lora_work(a, a.Hout), [&](int g0, int g1, int blk) {
    const int o0 = blk * kExpandSgmvBlock, o1 = std::min(a.Hout, o0 + kExpandSgmvBlock), ob = o1 - o0;
    std::vector<float> u(a.R), Bs, up;
    for (int g = g0; g < g1; g++) {
      const int e = a.seg_adapter[g], re = a.rank[e];
      const int ps = a.seg_start[g], pe = a.seg_start[g + 1];
      const float sc = a.scale[e];
      const auto* Bb = B + (size_t(e) * a.Hout + o0) * a.R;
      // (ranks a multiple of 8 transpose through registers, cheap enough for four tokens)
      if (pe - ps >= ((re % 8 == 0) ? kOuterR : kTransposeMin)) {
        // Bᵀ of the block in f32 16-output slabs, then four tokens at a time through a 4 x 16
        // register tile: each slab load feeds four tokens.
        Bs.resize(size_t((ob + kOuterJ - 1) / kOuterJ) * re * kOuterJ);
        pack_slabs_t<DT>(Bs.data(), Bb, a.R, re, ob);
        up.resize(size_t(re) * kOuterR);
        for (int pi = ps; pi < pe; pi += kOuterR) {
          const int nq = std::min(kOuterR, pe - pi);
          float* rows[kOuterR] = {};
          for (int q = 0; q < kOuterR; q++) {
            const int p = q < nq ? a.order[pi + q] : -1;
            const float c = q < nq ? a.weight[p] * sc : 0.f;
            for (int r = 0; r < re; r++) up[size_t(r) * kOuterR + q] = q < nq ? c * v[size_t(p) * a.R + r] : 0.f;
            if (q < nq) rows[q] = y + size_t(p / a.K) * a.Hout + o0;
          }
          if (pi + kOuterR < pe) prefetch_rw(y + size_t(a.order[pi + kOuterR] / a.K) * a.Hout + o0, ob);
          slab_rows4<false>(Bs.data(), re, ob, up.data(), rows, nq);
        }
        continue;
      }
      for (int pi = ps; pi < pe; pi++) {
        const int p = a.order[pi];
        if (pi + 1 < pe) prefetch_rw(y + size_t(a.order[pi + 1] / a.K) * a.Hout + o0, ob);
        const float c = a.weight[p] * sc;
        for (int r = 0; r < re; r++) u[r] = c * v[size_t(p) * a.R + r];
        expand_rows<DT>(y + size_t(p / a.K) * a.Hout + o0, Bb, a.R, re, u.data(), ob);
      }
    }
  });
}

// ---------------------------------------------------------------------------
// shrink grad: dv[t,k,r] = weight·scale·Σ_o B[e][o,r]·dy[t,o]
// Items cut Hout into chunks when there are few tokens; partial sums per chunk are added
// in chunk order in a second pass (deterministic two-pass reduction).

constexpr int kGradChunkMin = 256;
constexpr int kGradTile = 16;

int grad_chunks(size_t items, int Hout) {
  int maxc = std::max(1, Hout / kGradChunkMin);
  int want = int(std::min<size_t>(64, (64 + items - 1) / std::max<size_t>(1, items)));
  return std::max(1, std::min(maxc, want));
}

void shrink_grad_finish(const mote_lora_args& a, float* dv, const float* partial, int nc) {
  const size_t TK = size_t(a.T) * a.K;
  parallel_for(TK, 64, [&](size_t b, size_t end) {
    for (size_t p = b; p < end; p++) {
      const int e = a.slots[p];
      float* d = dv + p * a.R;
      if (e < 0) {
        std::fill(d, d + a.R, 0.f);
        continue;
      }
      const int re = a.rank[e];
      const float c = a.weight[p] * a.scale[e];
      const float* pp = partial + p * size_t(nc) * a.R;
      for (int r = 0; r < re; r++) {
        float s = pp[r];
        for (int ci = 1; ci < nc; ci++) s += pp[size_t(ci) * a.R + r];
        d[r] = c * s;
      }
      std::fill(d + re, d + a.R, 0.f);
    }
  });
}

template <int DT>
void shrink_grad_bgmv(const mote_lora_args& a, float* dv, const float* dy) {
  const size_t TK = size_t(a.T) * a.K;
  const int nc = grad_chunks(TK, a.Hout);
  const int oc = (a.Hout + nc - 1) / nc;
  std::vector<float> part(nc == 1 ? 0 : TK * nc * a.R);
  float* partial = nc == 1 ? dv : part.data();
  const auto* B = typed<DT>(a.B);
  par_for(lora_work(a, a.Hout), TK * nc, 1, [&](size_t b, size_t end) {
    for (size_t i = b; i < end; i++) {
      const size_t p = i / nc;
      const int ci = int(i % nc);
      const int e = a.slots[p];
      if (e < 0) continue;
      const int re = a.rank[e];
      const int o0 = ci * oc, o1 = std::min(a.Hout, o0 + oc);
      float* acc = partial + (p * nc + ci) * a.R;
      colsum<DT>(acc, B + (size_t(e) * a.Hout + o0) * a.R, a.R, std::max(0, o1 - o0), dy + (p / a.K) * a.Hout + o0, re);
    }
  });
  shrink_grad_finish(a, dv, partial, nc);
}

template <int DT>
void shrink_grad_sgmv(const mote_lora_args& a, float* dv, const float* dy) {
  const size_t TK = size_t(a.T) * a.K;
  const std::vector<Tile> tiles = tiles_of(a, kGradTile);
  const int nc = grad_chunks(tiles.size(), a.Hout);
  const int oc = (a.Hout + nc - 1) / nc;
  std::vector<float> part(nc == 1 ? 0 : TK * nc * a.R);
  float* partial = nc == 1 ? dv : part.data();
  const auto* B = typed<DT>(a.B);
  par_for(lora_work(a, a.Hout), tiles.size() * nc, 1, [&](size_t b, size_t end) {
    std::vector<float> scratch;
    for (size_t i = b; i < end; i++) {
      const Tile& tl = tiles[i / nc];
      const int ci = int(i % nc);
      const int e = a.seg_adapter[tl.g], re = a.rank[e];
      const int o0 = ci * oc, o1 = std::min(a.Hout, o0 + oc), n = std::max(0, o1 - o0);
      const auto* Bb = B + (size_t(e) * a.Hout + o0) * a.R;
      // (the slab pack pays for itself with B of rank 16 in f32, which needs none, or 8+ tokens)
      const bool direct = DT == 0 && a.R == kOuterJ && re == kOuterJ;
      if (n > 0 && (direct ? tl.p1 - tl.p0 >= kOuterR : tl.p1 - tl.p0 >= 2 * kOuterR)) {
        // Four tokens at a time through a 4 x 16 register tile over the rank: B's rows in f32
        // 16-wide rank slabs (f32 B of rank R = 16 already is one), dy of the four packed by output.
        const int nrt = (re + kOuterJ - 1) / kOuterJ;
        const float* S = nullptr;
        if constexpr (DT == 0) {
          if (direct) S = Bb;
        }
        if (!direct) {
          scratch.resize(size_t(nrt) * n * kOuterJ);
          pack_slabs<DT>(scratch.data(), Bb, a.R, n, re);
          S = scratch.data();
        }
        float res[kOuterR][kOuterJ];
        for (int pi = tl.p0; pi < tl.p1; pi += kOuterR) {
          const int nq = std::min(kOuterR, tl.p1 - pi);
          // the four tokens' dy rows, read in place (a missing fourth repeats a row; its sums are dropped)
          const float* rows[kOuterR];
          for (int q = 0; q < kOuterR; q++)
            rows[q] = dy + size_t(a.order[pi + std::min(q, nq - 1)] / a.K) * a.Hout + o0;
          for (int rt = 0; rt < nrt; rt++) {
            outer_tile_rows(S + size_t(rt) * n * kOuterJ, rows, n, res);
            const int w = std::min(kOuterJ, re - rt * kOuterJ);
            for (int q = 0; q < nq; q++)
              std::memcpy(partial + (size_t(a.order[pi + q]) * nc + ci) * a.R + rt * kOuterJ, res[q], size_t(w) * 4);
          }
        }
        continue;
      }
      const bool convert = DT != 0 && tl.p1 - tl.p0 >= 2 && n > 0;
      if (convert) {
        scratch.resize(size_t(n) * re);
        rows_to_f32<DT>(scratch.data(), Bb, a.R, n, re);
      }
      for (int pi = tl.p0; pi < tl.p1; pi++) {
        const int p = a.order[pi];
        float* acc = partial + (size_t(p) * nc + ci) * a.R;
        const float* d = dy + size_t(p / a.K) * a.Hout + o0;
        if (convert)
          colsum<0>(acc, scratch.data(), re, n, d, re);
        else
          colsum<DT>(acc, Bb, a.R, n, d, re);
      }
    }
  });
  shrink_grad_finish(a, dv, partial, nc);
}

// ---------------------------------------------------------------------------
// input grad: dx[t] (+)= Σ_k A[e]ᵀ·dv[t,k]

constexpr int kInputBgmvBlock = 512;
constexpr int kInputSgmvBlock = 512;

template <int DT>
void input_grad_bgmv(const mote_lora_args& a, float* dx, const float* dv, bool accumulate) {
  const int nb = (a.Hin + kInputBgmvBlock - 1) / kInputBgmvBlock;
  const auto* A = typed<DT>(a.A);
  // Rows of A four at a time into an L1 accumulator (rows Hin apart share L1 sets, so
  // streaming all rank rows at once would thrash it), then one write of dx.
  par_for(lora_work(a, a.Hin), size_t(a.T) * nb, 1, [&](size_t b, size_t end) {
    std::vector<float> acc(kInputBgmvBlock);
    for (size_t i = b; i < end; i++) {
      const size_t t = i / nb;
      const int i0 = int(i % nb) * kInputBgmvBlock, n = std::min(a.Hin, i0 + kInputBgmvBlock) - i0;
      std::fill(acc.begin(), acc.begin() + n, 0.f);
      for (int k = 0; k < a.K; k++) {
        const size_t p = t * a.K + k;
        const int e = a.slots[p];
        if (e < 0) continue;
        rows_axpy<DT>(acc.data(), A + size_t(e) * a.R * a.Hin + i0, a.Hin, a.rank[e], dv + p * a.R, n);
      }
      float* d = dx + t * a.Hin + i0;
      if (accumulate) {
        int j = 0;
        for (; j + 8 <= n; j += 8) st8(d + j, ld8(d + j) + ld8(acc.data() + j));
        for (; j < n; j++) d[j] += acc[j];
      } else {
        std::memcpy(d, acc.data(), size_t(n) * 4);
      }
    }
  });
}

template <int DT>
void input_grad_sgmv(const mote_lora_args& a, float* dx, const float* dv, bool accumulate) {
  const int nb = (a.Hin + kInputSgmvBlock - 1) / kInputSgmvBlock;
  const auto* A = typed<DT>(a.A);
  const bool one = a.K == 1;
  if (one && !accumulate) {  // tokens without an adapter get 0 (K = 1: no item owns them)
    for (int t = 0; t < a.T; t++)
      if (a.slots[t] < 0) std::memset(dx + size_t(t) * a.Hin, 0, size_t(a.Hin) * 4);
  }
  for_segment_blocks(a, nb, lora_work(a, a.Hin), [&](int g0, int g1, int blk) {
    const int i0 = blk * kInputSgmvBlock, n = std::min(a.Hin, i0 + kInputSgmvBlock) - i0;
    // K > 1: this item owns dx[:, block] for all tokens; clear it, then add every slot.
    if (!one && !accumulate)
      for (int t = 0; t < a.T; t++) std::memset(dx + size_t(t) * a.Hin + i0, 0, size_t(n) * 4);
    const bool add = accumulate || !one;
    std::vector<float> scratch, up;
    for (int g = g0; g < g1; g++) {
      const int e = a.seg_adapter[g], re = a.rank[e];
      const int ps = a.seg_start[g], pe = a.seg_start[g + 1];
      const auto* Ab = A + size_t(e) * a.R * a.Hin + i0;
      if (pe - ps >= kOuterR) {
        // The block in f32 16-column slabs, four tokens at a time through a 4 x 16 register tile.
        scratch.resize(size_t((n + kOuterJ - 1) / kOuterJ) * re * kOuterJ);
        pack_slabs<DT>(scratch.data(), Ab, a.Hin, re, n);
        up.resize(size_t(re) * kOuterR);
        for (int pi = ps; pi < pe; pi += kOuterR) {
          const int nq = std::min(kOuterR, pe - pi);
          float* rows[kOuterR] = {};
          for (int q = 0; q < kOuterR; q++) {
            const int p = q < nq ? a.order[pi + q] : -1;
            for (int r = 0; r < re; r++) up[size_t(r) * kOuterR + q] = q < nq ? dv[size_t(p) * a.R + r] : 0.f;
            if (q < nq) rows[q] = dx + size_t(p / a.K) * a.Hin + i0;
          }
          if (pi + kOuterR < pe) prefetch_rw(dx + size_t(a.order[pi + kOuterR] / a.K) * a.Hin + i0, n);
          if (add)
            slab_rows4<false>(scratch.data(), re, n, up.data(), rows, nq);
          else
            slab_rows4<true>(scratch.data(), re, n, up.data(), rows, nq);
        }
        continue;
      }
      // Packed f32 copy of the block (also for f32: rows Hin apart alias in the L1 sets).
      const bool convert = pe - ps >= 2;
      if (convert) {
        scratch.resize(size_t(re) * n);
        rows_to_f32<DT>(scratch.data(), Ab, a.Hin, re, n);
      }
      for (int pi = ps; pi < pe; pi++) {
        const int p = a.order[pi];
        if (pi + 1 < pe) prefetch_rw(dx + size_t(a.order[pi + 1] / a.K) * a.Hin + i0, n);
        const float* d = dv + size_t(p) * a.R;
        float* out = dx + size_t(p / a.K) * a.Hin + i0;
        if (convert) {
          if (add)
            rows_axpy_reg<0, false>(out, scratch.data(), n, re, d, n);
          else
            rows_axpy_reg<0, true>(out, scratch.data(), n, re, d, n);
        } else {
          if (add)
            rows_axpy_reg<DT, false>(out, Ab, a.Hin, re, d, n);
          else
            rows_axpy_reg<DT, true>(out, Ab, a.Hin, re, d, n);
        }
      }
    }
  });
}

// weight grad: columns per item. 128 (a packed block of 512 B per token) unless that leaves
// fewer than 32 items (few adapters, narrow layers); never narrower than one 16-wide tile.
constexpr size_t kStreamMinBytes = size_t(4) << 20;  // dA + dB at least this large: streaming stores
inline int wgrad_block(int used, int H) {
  int w = 128;
  while (w > kOuterJ && size_t(used) * ((H + w - 1) / w) < 32) w /= 2;
  return w;
}

}  // namespace

// ---------------------------------------------------------------------------

void lora_shrink(const mote_lora_args& a, float* v, const float* x) {
  check_args(a, a.strategy == 1);
  if (a.strategy == 1) {
    MOTE_LORA_DISPATCH(a.a_dtype, shrink_sgmv, a, v, x);
  } else {
    MOTE_LORA_DISPATCH(a.a_dtype, shrink_bgmv, a, v, x);
  }
}

void lora_expand(const mote_lora_args& a, float* y, const float* v) {
  check_args(a, a.strategy == 1);
  if (int e = single_adapter(a, a.b_dtype == 0); e >= 0) return expand_one(a, e, y, v);
  if (a.strategy == 1) {
    MOTE_LORA_DISPATCH(a.b_dtype, expand_sgmv, a, y, v);
  } else {
    MOTE_LORA_DISPATCH(a.b_dtype, expand_bgmv, a, y, v);
  }
}

void lora_apply(const mote_lora_args& a, float* y, float* v, const float* x) {
  // v is needed by backward, so it is written; it is tiny (T·K·R), so the two passes
  // read A and B once each, the same traffic as a single fused pass.
  check_args(a, a.strategy == 1);
  if (a.strategy == 1) {
    MOTE_LORA_DISPATCH(a.a_dtype, shrink_sgmv, a, v, x);
  } else {
    MOTE_LORA_DISPATCH(a.a_dtype, shrink_bgmv, a, v, x);
  }
  if (int e = single_adapter(a, a.b_dtype == 0); e >= 0) return expand_one(a, e, y, v);
  if (a.strategy == 1) {
    MOTE_LORA_DISPATCH(a.b_dtype, expand_sgmv, a, y, v);
  } else {
    MOTE_LORA_DISPATCH(a.b_dtype, expand_bgmv, a, y, v);
  }
}

void lora_shrink_grad(const mote_lora_args& a, float* dv, const float* dy) {
  check_args(a, a.strategy == 1);
  if (a.strategy == 1) {
    MOTE_LORA_DISPATCH(a.b_dtype, shrink_grad_sgmv, a, dv, dy);
  } else {
    MOTE_LORA_DISPATCH(a.b_dtype, shrink_grad_bgmv, a, dv, dy);
  }
}

void lora_input_grad(const mote_lora_args& a, float* dx, const float* dv, bool accumulate) {
  check_args(a, a.strategy == 1);
  if (a.strategy == 1) {
    MOTE_LORA_DISPATCH(a.a_dtype, input_grad_sgmv, a, dx, dv, accumulate);
  } else {
    MOTE_LORA_DISPATCH(a.a_dtype, input_grad_bgmv, a, dx, dv, accumulate);
  }
}

void lora_weight_grad(const mote_lora_args& a, float* dA, float* dB, const float* x, const float* dy, const float* v,
                      const float* dv, bool accumulate) {
  // Grouped GEMMs (always by adapter): items (adapter, block of columns) own their slice
  // of dA[e] / dB[e]; tokens are summed in segment order (t, then k ascending) by every item
  // alike, so the block width changes which item computes an entry, never its bits. Blocks are
  // narrowed (from the dims only) until there are enough items for every thread, however few
  // adapters the batch has.
  check_args(a, true);
  std::vector<int> seg_of(a.L, -1);
  for (int g = 0; g < a.G; g++) seg_of[a.seg_adapter[g]] = g;
  const int used = std::max(1, a.G);
  // Large fresh outputs are written with streaming stores: no read-for-ownership of lines
  // that are overwritten whole (a cold dA/dB moves half the bytes).
  const bool stream = !accumulate && size_t(a.L) * a.R * (size_t(a.Hin) + a.Hout) * 4 >= kStreamMinBytes;

  // dA[e][r][j] = Σ_p dv[p][r]·x[p][j]: x packed in 16-column slabs, dv as the broadcast operand.
  const int bwA = wgrad_block(used, a.Hin);
  const int nbA = (a.Hin + bwA - 1) / bwA;
  const size_t work = size_t(a.L) * a.R * (size_t(a.Hin) + a.Hout) * 4 + lora_work(a, a.Hin + a.Hout);
  par_for(work, size_t(a.L) * nbA, 1, [&](size_t b, size_t end) {
    std::vector<const float*> X;
    std::vector<float> xp, cp;
    for (size_t i = b; i < end; i++) {
      const int e = int(i / nbA);
      const int i0 = int(i % nbA) * bwA, n = std::min(a.Hin, i0 + bwA) - i0;
      const int g = seg_of[e];
      const int re = g < 0 ? 0 : a.rank[e];
      float* D = dA + size_t(e) * a.R * a.Hin + i0;
      if (!accumulate)
        for (int r = re; r < a.R; r++) zero_floats(D + size_t(r) * a.Hin, size_t(n), stream);
      if (g < 0) continue;
      const int ps = a.seg_start[g], np = a.seg_start[g + 1] - ps;
      const int rp = (re + kOuterR - 1) / kOuterR * kOuterR;
      X.resize(np);
      cp.assign(size_t(np) * rp, 0.f);
      for (int q = 0; q < np; q++) {
        const int p = a.order[ps + q];
        X[q] = x + size_t(p / a.K) * a.Hin + i0;
        std::memcpy(cp.data() + size_t(q) * rp, dv + size_t(p) * a.R, size_t(re) * 4);
      }
      xp.resize(size_t(np) * ((n + kOuterJ - 1) / kOuterJ) * kOuterJ);
      pack_x(xp.data(), X.data(), np, n);
      outer_packed(xp.data(), cp.data(), rp, np, re, n, D, a.Hin, accumulate, stream);
    }
    if (stream) stream_fence();
  });

  // dB[e][o][r] = Σ_p dy[p][o]·c[p][r], c = weight·scale·v: the same tile with the roles
  // swapped (c packed in 16-wide rank slabs, dy as the broadcast operand), so rows of dB come
  // out whole in their own [o][r] layout.
  const int bwB = wgrad_block(used, a.Hout);
  const int nbB = (a.Hout + bwB - 1) / bwB;
  par_for(work, size_t(a.L) * nbB, 1, [&](size_t b, size_t end) {
    std::vector<float> cpk, dyp;
    for (size_t i = b; i < end; i++) {
      const int e = int(i / nbB);
      const int o0 = int(i % nbB) * bwB, n = std::min(a.Hout, o0 + bwB) - o0;
      const int g = seg_of[e];
      const int re = g < 0 ? 0 : a.rank[e];
      float* D = dB + (size_t(e) * a.Hout + o0) * a.R;
      if (g < 0) {
        if (!accumulate) zero_floats(D, size_t(n) * a.R, stream);
        continue;
      }
      const int ps = a.seg_start[g], np = a.seg_start[g + 1] - ps;
      const int nrt = (re + kOuterJ - 1) / kOuterJ;  // 16-wide rank slabs
      const int np4 = (n + kOuterR - 1) / kOuterR * kOuterR;
      const float sc = a.scale[e];
      cpk.assign(size_t(nrt) * np * kOuterJ, 0.f);
      // dy of the segment's tokens in groups of 4 outputs, dyq[og][q][4]: every tile reads its
      // broadcast operand contiguously
      dyp.resize(size_t(np4 / kOuterR) * np * kOuterR);
      for (int q = 0; q < np; q++) {
        const int p = a.order[ps + q];
        const float c = a.weight[p] * sc;
        const float* vp = v + size_t(p) * a.R;
        for (int r = 0; r < re; r++) cpk[(size_t(r / kOuterJ) * np + q) * kOuterJ + r % kOuterJ] = c * vp[r];
        const float* d = dy + size_t(p / a.K) * a.Hout + o0;
        const int full = n / kOuterR;
        for (int og = 0; og < full; og++)
          std::memcpy(dyp.data() + (size_t(og) * np + q) * kOuterR, d + og * kOuterR, 16);
        if (full * kOuterR < n) {
          float* dq = dyp.data() + (size_t(full) * np + q) * kOuterR;
          for (int j = 0; j < kOuterR; j++) dq[j] = full * kOuterR + j < n ? d[full * kOuterR + j] : 0.f;
        }
      }
      outer_packed_rows(cpk.data(), dyp.data(), np, n, re, a.R, D, accumulate, stream);
    }
    if (stream) stream_fence();
  });
}

}  // namespace MOTE_CPU_KERNEL_NS
