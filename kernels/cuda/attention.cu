// Attention family in CUDA: causal grouped-query attention over packed sequences with MoTE's
// step-skipping segment mask; contracts in src/ops/attention.ts (AttentionKernels), reference
// src/reference/attention.ts.
//   q, out, dOut, dq f32 [Tq, nH, D]; k, v, dk, dv f32 [Tk, nKv, D]; lse f32 [Tq, nH].
//   Query head h reads kv head h / (nH/nKv). Query i sees key j when j lies in one of i's key
//   runs (a.ranges), k_seq[j] = q_seq[i], k_pos[j] ≤ q_pos[i] and (S > 0) not
//   blocked[(q_seq[i]·S + q_seg[i])·S + k_seg[j]]. A query that sees no key gets out = 0,
//   lse = −∞ and zero gradients. A query reads only its runs (its own sequence's keys); a key's
//   backward reads its sequence's query runs. Warps split the keys by their logical index (the
//   position in the concatenated runs) mod 8, so a sequence's result does not depend on where
//   its keys sit. Run lists and runs are clamped into the table and into [0, Tk] / [0, Tq]
//   (tampered tensors read nothing outside their buffers).
//
// Every block has 8 warps. A warp holds a head-dim vector spread over its lanes (element
// c = 32u + lane in register u, u < NC = ⌈D/32⌉ rounded up to 1, 2, 4, 8 or 16, so D ≤ 512);
// dot products are lane partials in order u = 0.., then a butterfly shuffle sum (the same value
// in every lane, so branches on it are warp-uniform). Work is split over the warps by index
// mod 8 and the 8 warp partials are combined through shared memory in warp order: every output
// element has one owner and the order of every sum is fixed (no atomics; reruns bit-identical).
// e^x is 2^(x·log2 e) with the product split into hi + lo (a few ulp for every x); log is
// float64; the final division is IEEE.
//
// attention       grid (Tq·nH), 256 threads: one block per (query i, head h). Warp w runs an
//                 online softmax (running max m, Σ l, o = Σ p·v) over the visible keys
//                 j ≡ w (mod 8), ascending; then M = max m_w, L = Σ_w l_w·e^(m_w − M),
//                 out = Σ_w o_w·e^(m_w − M) / L, lse = M + log L.
// attention_grad  delta[i,h] = dOut·out (a scratch buffer of Tq·nH floats from cudaMallocAsync
//                 on the stream, freed with cudaFreeAsync after the two kernels).
//   dq kernel     grid (Tq·nH), 256 threads: one block per (query i, head h), writes delta[i,h]
//                 and dq = scale·Σ_j dS·k[j] over visible keys j ≡ w (mod 8) per warp, with
//                 p = e^(s − lse), dS = p·(dOut·v[j] − delta).
//   dk/dv kernel  grid (Tk·nKv), 256 threads: one block per (key j, kv head): warp w takes the
//                 visible queries i ≡ w (mod 8) ascending and, for each, the group's heads in
//                 ascending order: dk = scale·Σ dS·q[i,h], dv = Σ p·dOut[i,h].
// Grids larger than 2^31 − 1 blocks loop (grid-stride over blocks).
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "common.cuh"
#include "kernels.h"

namespace {

using namespace mote_cu;

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxD = 512;

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

__device__ __forceinline__ float exp_acc(float x) {
  const float kL2E = 1.44269502162933349609375f;  // log2(e) rounded to f32
  const float kL2ELo = 1.925962989091e-08f;       // log2(e) − kL2E
  const float kLn2 = 0.693147182464599609375f;
  const float h = __fmul_rn(x, kL2E);
  float l = fmaf(x, kL2E, -h);  // the rounding error of h, exactly
  l = fmaf(x, kL2ELo, l);
  if (!(fabsf(h) < 256.f)) l = 0.f;  // ±∞, NaN, or sure over/underflow
  return exp2f(h) * fmaf(l, kLn2, 1.f);
}

// The D-vector at p spread over the warp's lanes (0 past D).
template <int NC>
__device__ __forceinline__ void load_vec(float (&r)[NC], const float* __restrict__ p, int D, int lane) {
#pragma unroll
  for (int u = 0; u < NC; u++) {
    const int c = u * 32 + lane;
    r[u] = c < D ? __ldg(p + c) : 0.f;
  }
}

template <int NC>
__device__ __forceinline__ float dot(const float (&a)[NC], const float* __restrict__ p, int D, int lane) {
  float d = 0.f;
#pragma unroll
  for (int u = 0; u < NC; u++) {
    const int c = u * 32 + lane;
    if (c < D) d = fmaf(a[u], __ldg(p + c), d);
  }
  return warp_sum(d);
}

template <int NC>
__device__ __forceinline__ float dot(const float (&a)[NC], const float (&b)[NC]) {
  float d = 0.f;
#pragma unroll
  for (int u = 0; u < NC; u++) d = fmaf(a[u], b[u], d);
  return warp_sum(d);
}

// Segment test for a (query, key) pair of the same sequence `seq`. A pair whose entry would lie
// outside blocked (tampered layout tensors; the host checks them) counts as blocked: nothing is
// read outside the buffer.
__device__ __forceinline__ bool seg_blocked(const mote_attention_args& a, int seq, int qg, int kg) {
  if (a.S <= 0) return false;
  if (seq < 0 || seq >= a.num_seqs || qg < 0 || qg >= a.S || kg < 0 || kg >= a.S) return true;
  return __ldg(a.blocked + ((long long)seq * a.S + qg) * a.S + kg) != 0;
}

// Entry e of the per-token run lists (queries: e = i; keys: e = Tq + j), clamped into the table.
__device__ __forceinline__ void run_list(const mote_attention_args& a, long long e, int& first, int& count) {
  const int f = __ldg(a.ranges + 2 * e), c = __ldg(a.ranges + 2 * e + 1);
  first = min(max(f, 0), a.num_runs);
  count = min(max(c, 0), a.num_runs - first);
}

// Run r of the table as [s, e), clamped into [0, limit].
__device__ __forceinline__ void run_at(const mote_attention_args& a, int r, int limit, int& s, int& e) {
  const int* t = a.ranges + 2 * ((long long)a.Tq + a.Tk) + 2LL * r;
  s = min(max(__ldg(t), 0), limit);
  e = min(max(__ldg(t + 1), s), limit);
}

// Calls f(x) for the indices x of the runs of list entry `e` whose logical index ≡ warp (mod 8),
// ascending in logical order.
template <typename F>
__device__ __forceinline__ void for_warp_runs(const mote_attention_args& a, long long e, int limit, int warp, F f) {
  int first, count;
  run_list(a, e, first, count);
  int base = 0;  // logical index of the run's first element, mod 8
  for (int r = first; r < first + count; r++) {
    int s, t;
    run_at(a, r, limit, s, t);
    for (int x = s + ((warp - base) & (kWarps - 1)); x < t; x += kWarps) f(x);
    base = (base + (t - s)) & (kWarps - 1);
  }
}

template <int NC>
__global__ void __launch_bounds__(kThreads)
    attn_fwd(const mote_attention_args a, float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ q,
             const float* __restrict__ k, const float* __restrict__ v) {
  constexpr int DP = NC * 32;
  __shared__ float so[kWarps][DP];
  __shared__ float sm[kWarps], sl[kWarps];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int D = a.D, group = a.nH / a.nKv;
  const long long nblk = (long long)a.Tq * a.nH;
  for (long long b = blockIdx.x; b < nblk; b += gridDim.x) {
    const int i = int(b / a.nH), h = int(b - (long long)i * a.nH), kvh = h / group;
    const int qs = __ldg(a.q_seq + i), qp = __ldg(a.q_pos + i), qg = a.S > 0 ? __ldg(a.q_seg + i) : 0;
    float qr[NC], o[NC];
    load_vec<NC>(qr, q + b * D, D, lane);
#pragma unroll
    for (int u = 0; u < NC; u++) o[u] = 0.f;
    float m = neg_inf(), l = 0.f;
    for_warp_runs(a, i, a.Tk, warp, [&](int j) {
      if (__ldg(a.k_seq + j) != qs || __ldg(a.k_pos + j) > qp) return;
      if (seg_blocked(a, qs, qg, a.S > 0 ? __ldg(a.k_seg + j) : 0)) return;
      const long long kv = ((long long)j * a.nKv + kvh) * D;
      const float s = a.scale * dot<NC>(qr, k + kv, D, lane);
      float vr[NC];
      load_vec<NC>(vr, v + kv, D, lane);
      if (s > m) {                          // warp-uniform
        const float corr = exp_acc(m - s);  // 0 for the first key (m = −∞)
        l = fmaf(l, corr, 1.f);
#pragma unroll
        for (int u = 0; u < NC; u++) o[u] = fmaf(o[u], corr, vr[u]);
        m = s;
      } else {
        const float p = exp_acc(s - m);
        l += p;
#pragma unroll
        for (int u = 0; u < NC; u++) o[u] = fmaf(p, vr[u], o[u]);
      }
    });
#pragma unroll
    for (int u = 0; u < NC; u++) so[warp][u * 32 + lane] = o[u];
    if (lane == 0) {
      sm[warp] = m;
      sl[warp] = l;
    }
    __syncthreads();
    float M = neg_inf();
    bool seen = false;  // l > 0, or NaN: a NaN score (skipped by the max) must make the row NaN
#pragma unroll
    for (int w = 0; w < kWarps; w++) {
      M = fmaxf(M, sm[w]);
      seen |= sl[w] != 0.f;
    }
    float* orow = out + b * D;
    if (!seen) {  // no visible key
      for (int c = threadIdx.x; c < D; c += kThreads) orow[c] = 0.f;
      if (threadIdx.x == 0) lse[b] = neg_inf();
    } else {
      float f[kWarps], L = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; w++) {
        f[w] = sm[w] == neg_inf() && sl[w] == 0.f ? 0.f : exp_acc(sm[w] - M);
        L = fmaf(sl[w], f[w], L);
      }
      for (int c = threadIdx.x; c < D; c += kThreads) {
        float acc = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; w++) acc = fmaf(so[w][c], f[w], acc);
        orow[c] = __fdiv_rn(acc, L);
      }
      if (threadIdx.x == 0) lse[b] = M + float(log(double(L)));
    }
    __syncthreads();  // shared memory is reused by the next (i, h)
  }
}

template <int NC>
__global__ void __launch_bounds__(kThreads)
    attn_bwd_dq(const mote_attention_args a, float* __restrict__ dq, float* __restrict__ delta,
                const float* __restrict__ dout, const float* __restrict__ q, const float* __restrict__ k,
                const float* __restrict__ v, const float* __restrict__ out, const float* __restrict__ lse) {
  constexpr int DP = NC * 32;
  __shared__ float sp[kWarps][DP];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int D = a.D, group = a.nH / a.nKv;
  const long long nblk = (long long)a.Tq * a.nH;
  for (long long b = blockIdx.x; b < nblk; b += gridDim.x) {
    const int i = int(b / a.nH), h = int(b - (long long)i * a.nH), kvh = h / group;
    const int qs = __ldg(a.q_seq + i), qp = __ldg(a.q_pos + i), qg = a.S > 0 ? __ldg(a.q_seg + i) : 0;
    float qr[NC], gr[NC], acc[NC];
    load_vec<NC>(qr, q + b * D, D, lane);
    load_vec<NC>(gr, dout + b * D, D, lane);
    const float dl = dot<NC>(gr, out + b * D, D, lane);  // the same in every warp
    if (threadIdx.x == 0) delta[b] = dl;
    const float L = __ldg(lse + b);
#pragma unroll
    for (int u = 0; u < NC; u++) acc[u] = 0.f;
    if (L != neg_inf()) {
      for_warp_runs(a, i, a.Tk, warp, [&](int j) {
        if (__ldg(a.k_seq + j) != qs || __ldg(a.k_pos + j) > qp) return;
        if (seg_blocked(a, qs, qg, a.S > 0 ? __ldg(a.k_seg + j) : 0)) return;
        const long long kv = ((long long)j * a.nKv + kvh) * D;
        float kr[NC];
        load_vec<NC>(kr, k + kv, D, lane);
        const float s = a.scale * dot<NC>(qr, kr);
        const float p = exp_acc(s - L);
        const float dp = dot<NC>(gr, v + kv, D, lane);
        const float ds = p * (dp - dl);
#pragma unroll
        for (int u = 0; u < NC; u++) acc[u] = fmaf(ds, kr[u], acc[u]);
      });
    }
#pragma unroll
    for (int u = 0; u < NC; u++) sp[warp][u * 32 + lane] = acc[u];
    __syncthreads();
    float* row = dq + b * D;
    for (int c = threadIdx.x; c < D; c += kThreads) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; w++) s += sp[w][c];
      row[c] = a.scale * s;
    }
    __syncthreads();
  }
}

template <int NC>
__global__ void __launch_bounds__(kThreads)
    attn_bwd_dkdv(const mote_attention_args a, float* __restrict__ dk, float* __restrict__ dv,
                  const float* __restrict__ delta, const float* __restrict__ dout, const float* __restrict__ q,
                  const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ lse) {
  constexpr int DP = NC * 32;
  __shared__ float sk[kWarps][DP];
  __shared__ float sv[kWarps][DP];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int D = a.D, group = a.nH / a.nKv;
  const long long nblk = (long long)a.Tk * a.nKv;
  for (long long b = blockIdx.x; b < nblk; b += gridDim.x) {
    const int j = int(b / a.nKv), kvh = int(b - (long long)j * a.nKv);
    const int ks = __ldg(a.k_seq + j), kp = __ldg(a.k_pos + j), kg = a.S > 0 ? __ldg(a.k_seg + j) : 0;
    float kr[NC], vr[NC], gk[NC], gv[NC];
    load_vec<NC>(kr, k + b * D, D, lane);
    load_vec<NC>(vr, v + b * D, D, lane);
#pragma unroll
    for (int u = 0; u < NC; u++) gk[u] = gv[u] = 0.f;
    for_warp_runs(a, (long long)a.Tq + j, a.Tq, warp, [&](int i) {
      if (__ldg(a.q_seq + i) != ks || kp > __ldg(a.q_pos + i)) return;
      if (seg_blocked(a, ks, a.S > 0 ? __ldg(a.q_seg + i) : 0, kg)) return;
      for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        const long long qi = (long long)i * a.nH + h;
        const float L = __ldg(lse + qi);
        if (L == neg_inf()) continue;  // cannot happen for a visible pair; never divide by it
        float qr[NC], gr[NC];
        load_vec<NC>(qr, q + qi * D, D, lane);
        load_vec<NC>(gr, dout + qi * D, D, lane);
        const float s = a.scale * dot<NC>(qr, kr);
        const float p = exp_acc(s - L);
        const float dp = dot<NC>(gr, vr);
        const float ds = p * (dp - __ldg(delta + qi));
#pragma unroll
        for (int u = 0; u < NC; u++) {
          gk[u] = fmaf(ds, qr[u], gk[u]);
          gv[u] = fmaf(p, gr[u], gv[u]);
        }
      }
    });
#pragma unroll
    for (int u = 0; u < NC; u++) {
      sk[warp][u * 32 + lane] = gk[u];
      sv[warp][u * 32 + lane] = gv[u];
    }
    __syncthreads();
    float* rk = dk + b * D;
    float* rv = dv + b * D;
    for (int c = threadIdx.x; c < D; c += kThreads) {
      float s1 = 0.f, s2 = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; w++) {
        s1 += sk[w][c];
        s2 += sv[w][c];
      }
      rk[c] = a.scale * s1;
      rv[c] = s2;
    }
    __syncthreads();
  }
}

int check_args(const mote_attention_args* a) {
  if (!a) return int(cudaErrorInvalidValue);
  if (a->Tq < 0 || a->Tk < 0 || a->nH <= 0 || a->nKv <= 0 || a->nH % a->nKv != 0 || a->D <= 0 || a->S < 0 ||
      a->num_runs < 0)
    return int(cudaErrorInvalidValue);
  if (a->D > kMaxD) return int(cudaErrorNotSupported);
  return 0;
}

int chunks(int D) { return D <= 32 ? 1 : D <= 64 ? 2 : D <= 128 ? 4 : D <= 256 ? 8 : 16; }

template <int NC>
int launch_fwd(const mote_attention_args& a, float* out, float* lse, const float* q, const float* k, const float* v,
               cudaStream_t s) {
  MOTE_LAUNCH(grid_dim((long long)a.Tq * a.nH, 2147483647LL), kThreads, 0, s, attn_fwd<NC>)(a, out, lse, q, k, v);
  return int(cudaGetLastError());
}

template <int NC>
int launch_bwd(const mote_attention_args& a, float* dq, float* dk, float* dv, float* delta, const float* dout,
               const float* q, const float* k, const float* v, const float* out, const float* lse, cudaStream_t s) {
  MOTE_LAUNCH(grid_dim((long long)a.Tq * a.nH, 2147483647LL), kThreads, 0, s, attn_bwd_dq<NC>)
  (a, dq, delta, dout, q, k, v, out, lse);
  const int e = int(cudaGetLastError());
  if (e || a.Tk == 0) return e;
  MOTE_LAUNCH(grid_dim((long long)a.Tk * a.nKv, 2147483647LL), kThreads, 0, s, attn_bwd_dkdv<NC>)
  (a, dk, dv, delta, dout, q, k, v, lse);
  return int(cudaGetLastError());
}

}  // namespace

extern "C" int mote_cuda_attention(const mote_attention_args* a, float* out, float* lse, const float* q, const float* k,
                                   const float* v, void* stream) {
  if (const int e = check_args(a)) return e;
  if (a->Tq == 0) return int(cudaGetLastError());
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (chunks(a->D)) {
    case 1:
      return launch_fwd<1>(*a, out, lse, q, k, v, s);
    case 2:
      return launch_fwd<2>(*a, out, lse, q, k, v, s);
    case 4:
      return launch_fwd<4>(*a, out, lse, q, k, v, s);
    case 8:
      return launch_fwd<8>(*a, out, lse, q, k, v, s);
    default:
      return launch_fwd<16>(*a, out, lse, q, k, v, s);
  }
}

extern "C" int mote_cuda_attention_grad(const mote_attention_args* a, float* dq, float* dk, float* dv,
                                        const float* dout, const float* q, const float* k, const float* v,
                                        const float* out, const float* lse, void* stream) {
  if (const int e = check_args(a)) return e;
  if (a->Tq == 0) {  // no queries: dk = dv = 0
    if (a->Tk == 0) return int(cudaGetLastError());
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    const size_t bytes = size_t(a->Tk) * size_t(a->nKv) * size_t(a->D) * sizeof(float);
    cudaError_t e = cudaMemsetAsync(dk, 0, bytes, s);
    if (e == cudaSuccess) e = cudaMemsetAsync(dv, 0, bytes, s);
    return int(e);
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t dbytes = size_t(a->Tq) * size_t(a->nH) * sizeof(float);
  float* delta = nullptr;
  bool async = true;
  cudaError_t ae = cudaMallocAsync(reinterpret_cast<void**>(&delta), dbytes, s);
  if (ae == cudaErrorNotSupported) {  // no stream-ordered allocator: plain allocation
    cudaGetLastError();
    async = false;
    ae = cudaMalloc(reinterpret_cast<void**>(&delta), dbytes);
  }
  if (ae != cudaSuccess) {
    cudaGetLastError();
    return int(ae);
  }
  int e;
  switch (chunks(a->D)) {
    case 1:
      e = launch_bwd<1>(*a, dq, dk, dv, delta, dout, q, k, v, out, lse, s);
      break;
    case 2:
      e = launch_bwd<2>(*a, dq, dk, dv, delta, dout, q, k, v, out, lse, s);
      break;
    case 4:
      e = launch_bwd<4>(*a, dq, dk, dv, delta, dout, q, k, v, out, lse, s);
      break;
    case 8:
      e = launch_bwd<8>(*a, dq, dk, dv, delta, dout, q, k, v, out, lse, s);
      break;
    default:
      e = launch_bwd<16>(*a, dq, dk, dv, delta, dout, q, k, v, out, lse, s);
      break;
  }
  cudaError_t fe;
  if (async) {
    fe = cudaFreeAsync(delta, s);
  } else {
    fe = cudaStreamSynchronize(s);  // the kernels must be done with delta before it is freed
    const cudaError_t fe2 = cudaFree(delta);
    if (fe == cudaSuccess) fe = fe2;
  }
  if (e) return e;
  return int(fe);
}
