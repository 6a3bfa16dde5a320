// Multi-slot LoRA family in CUDA (DESIGN §4); contracts in src/ops/lora.ts (LoraKernels).
//   A: [L, R, Hin], B: [L, Hout, R] of f32/f16/bf16 (template DT: 0/1/2), rank i32 [L], scale f32 [L]
//   slots i32 [T, K] (-1 = none), weight f32 [T, K]; order/seg_start/seg_adapter: grouped form.
// f32 accumulation everywhere; nothing past rank[e] is read or computed; every output element
// is owned by exactly one thread (no float atomics), so reruns are bit-identical.
//
// Strategy 0 (BGMV, decode): per token.
//   shrink       grid (T, K·⌈R/8⌉), 256 threads: one warp per (t, k, r) row, vectorised dot over
//                Hin, warp-shuffle reduction.
//   expand       grid (T, ⌈Hout/256⌉), 256 threads: a thread owns one output feature and loops
//                over the ≤ rank entries of its K slots (B row read with 16-byte loads).
//   shrink_grad  grid (T·K), 256 threads: threads stride over Hout, 16 rank partials in registers,
//                block reduction.
//   input_grad   grid (T, ⌈Hin/(128·V)⌉), 128 threads: a thread owns V consecutive features.
// Strategy 1 (SGMV, prefill/training): grouped.
//   shrink, shrink_grad  tiles of 32 consecutive entries of `order` (runs of one adapter), A/B and
//                x/dy tiles staged in shared memory; extra blocks zero the rows of empty slots.
//   expand, input_grad   tiles of 32 tokens × 64 features; for each k the tile is split into runs
//                of tokens sharing an adapter, B/A and v tiles staged in shared memory. (Tiling by
//                token keeps y[t] owned by one thread even when K > 1.)
// weight_grad (both strategies): one kernel over all L adapters × (16 ranks × 64 features) tiles,
//   z = 0 for dA, 1 for dB; each block binary-searches its adapter's segment and reduces over it
//   in order; absent adapters and r ≥ rank get 0 (or are left alone when accumulating).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "common.cuh"
#include "kernels.h"

namespace {

using namespace mote_cu;

// Indices read from buffers stay in range whatever their contents, as in kernels/wgsl/lora_*.wgsl:
// an adapter index (≥ 0) is clamped to L − 1, a rank to [0, R], an entry of order to [0, T·K), a
// segment to [0, P]. Tampered tensors give wrong sums, never an access outside the buffers or a
// runaway loop.
__device__ __forceinline__ int clamp_adapter(int e, int L) { return e < L ? e : L - 1; }
__device__ __forceinline__ int clamp_rank(int r, int R) { return r < 0 ? 0 : (r < R ? r : R); }
__device__ __forceinline__ int clamp_index(int i, int n) { return i < 0 ? 0 : (i < n ? i : n - 1); }

// ---- BGMV (strategy 0) -----------------------------------------------------

constexpr int kShrinkWarps = 8;  // rank rows per shrink block (one per warp)

// v[t,k,r] = A[e,r,:]·x[t,:]
template <int DT, bool VEC>
__global__ void __launch_bounds__(256)
    bgmv_shrink(float* __restrict__ v, const float* __restrict__ x, const typename Wt<DT>::S* __restrict__ A,
                const int* __restrict__ slots, const int* __restrict__ rank, int L, int K, int R, int Hin) {
  constexpr int VE = VEC ? Wt<DT>::VE : 1;
  const int t = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int RG = (R + kShrinkWarps - 1) / kShrinkWarps;
  const float* xr = x + (long long)t * Hin;
  for (int ky = blockIdx.y; ky < K * RG; ky += gridDim.y) {
    const int k = ky / RG, r = (ky % RG) * kShrinkWarps + warp;
    if (r >= R) continue;
    const long long pair = (long long)t * K + k;
    const int e = slots[pair];
    float* out = v + pair * R + r;
    if (e < 0 || r >= clamp_rank(rank[clamp_adapter(e, L)], R)) {
      if (lane == 0) *out = 0.f;
      continue;
    }
    const typename Wt<DT>::S* a = A + ((long long)clamp_adapter(e, L) * R + r) * Hin;
    float acc = 0.f;
    if constexpr (VEC) {
      constexpr int step = 32 * VE;
      int h = lane * VE;
      for (; h + 3 * step < Hin; h += 4 * step) {
        float w[4][VE], xv[4][VE];
#pragma unroll
        for (int u = 0; u < 4; u++) {
          Vec<DT>::load(a + h + u * step, w[u]);
          ldx<VE>(xr + h + u * step, xv[u]);
        }
#pragma unroll
        for (int u = 0; u < 4; u++)
#pragma unroll
          for (int j = 0; j < VE; j++) acc = fmaf(w[u][j], xv[u][j], acc);
      }
      for (; h < Hin; h += step) {
        float w[VE], xv[VE];
        Vec<DT>::load(a + h, w);
        ldx<VE>(xr + h, xv);
#pragma unroll
        for (int j = 0; j < VE; j++) acc = fmaf(w[j], xv[j], acc);
      }
    } else {
#pragma unroll 4
      for (int h = lane; h < Hin; h += 32) acc = fmaf(ldw<DT>(a, h), __ldg(xr + h), acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) *out = acc;
  }
}

// y[t,o] += Σ_k weight·scale·Σ_{r<rank} B[e,o,r]·v[t,k,r]
template <int DT, bool VEC>
__global__ void __launch_bounds__(256)
    bgmv_expand(float* __restrict__ y, const float* __restrict__ v, const typename Wt<DT>::S* __restrict__ B,
                const int* __restrict__ slots, const float* __restrict__ weight, const int* __restrict__ rank,
                const float* __restrict__ scale, int L, int K, int R, int Hout) {
  MOTE_DYNAMIC_SHARED(float, vs);  // [R]: weight·scale·v[t,k,:]
  constexpr int VE = Wt<DT>::VE;
  const int t = blockIdx.x, tid = threadIdx.x;
  for (int oy = blockIdx.y; oy * 256 < Hout; oy += gridDim.y) {
    const int o = oy * 256 + tid;
    float acc = 0.f;
    bool any = false;
    for (int k = 0; k < K; k++) {
      const long long pair = (long long)t * K + k;
      int e = slots[pair];
      if (e < 0) continue;  // uniform over the block
      e = clamp_adapter(e, L);
      const int rk = clamp_rank(rank[e], R);
      const float c = weight[pair] * scale[e];
      __syncthreads();  // previous readers of vs are done
      for (int r = tid; r < rk; r += 256) vs[r] = c * v[pair * R + r];
      __syncthreads();
      any = true;
      if (o < Hout) {
        const typename Wt<DT>::S* b = B + ((long long)e * Hout + o) * R;
        int r = 0;
        if (VEC) {
          for (; r + VE <= rk; r += VE) {
            float w[VE];
            Vec<DT>::load(b + r, w);
#pragma unroll
            for (int j = 0; j < VE; j++) acc = fmaf(w[j], vs[r + j], acc);
          }
        }
        for (; r < rk; r++) acc = fmaf(ldw<DT>(b, r), vs[r], acc);
      }
    }
    if (any && o < Hout) y[(long long)t * Hout + o] += acc;
  }
}

constexpr int kGradR = 16;  // rank partials per thread in bgmv_shrink_grad

// dv[t,k,r] = weight·scale·Σ_o B[e,o,r]·dy[t,o]
template <int DT, bool VEC>
__global__ void __launch_bounds__(256)
    bgmv_shrink_grad(float* __restrict__ dv, const float* __restrict__ dy, const typename Wt<DT>::S* __restrict__ B,
                     const int* __restrict__ slots, const float* __restrict__ weight, const int* __restrict__ rank,
                     const float* __restrict__ scale, int L, int K, int R, int Hout) {
  __shared__ float red[8][kGradR];
  constexpr int VE = Wt<DT>::VE;
  const long long pair = blockIdx.x;
  const int t = int(pair / K), tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int e0 = slots[pair];
  float* out = dv + pair * R;
  if (e0 < 0) {
    for (int r = tid; r < R; r += 256) out[r] = 0.f;
    return;
  }
  const int e = clamp_adapter(e0, L), rk = clamp_rank(rank[e], R);
  const float c = weight[pair] * scale[e];
  const float* g = dy + (long long)t * Hout;
  for (int r0 = 0; r0 < R; r0 += kGradR) {
    if (r0 >= rk) {  // uniform
      for (int r = r0 + tid; r < R && r < r0 + kGradR; r += 256) out[r] = 0.f;
      continue;
    }
    const int nr = min(kGradR, rk - r0);
    float acc[kGradR];
#pragma unroll
    for (int j = 0; j < kGradR; j++) acc[j] = 0.f;
    if (VEC && nr == kGradR) {
      for (int o = tid; o < Hout; o += 256) {
        const float gv = __ldg(g + o);
        const typename Wt<DT>::S* b = B + ((long long)e * Hout + o) * R + r0;
#pragma unroll
        for (int j = 0; j < kGradR; j += VE) {
          float w[VE];
          Vec<DT>::load(b + j, w);
#pragma unroll
          for (int q = 0; q < VE; q++) acc[j + q] = fmaf(w[q], gv, acc[j + q]);
        }
      }
    } else {
      for (int o = tid; o < Hout; o += 256) {
        const float gv = __ldg(g + o);
        const typename Wt<DT>::S* b = B + ((long long)e * Hout + o) * R + r0;
#pragma unroll
        for (int j = 0; j < kGradR; j++)
          if (j < nr) acc[j] = fmaf(ldw<DT>(b, j), gv, acc[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < kGradR; j++) acc[j] = warp_sum(acc[j]);
    if (lane == 0) {
#pragma unroll
      for (int j = 0; j < kGradR; j++) red[warp][j] = acc[j];
    }
    __syncthreads();
    if (tid < kGradR) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < 8; w++) s += red[w][tid];
      const int r = r0 + tid;
      if (r < R) out[r] = r < rk ? c * s : 0.f;
    }
    __syncthreads();
  }
}

// dx[t,h] (+)= Σ_k Σ_{r<rank} A[e,r,h]·dv[t,k,r]; a thread owns NV consecutive h.
template <int DT, bool VEC>
__global__ void __launch_bounds__(128)
    bgmv_input_grad(float* __restrict__ dx, const float* __restrict__ dv, const typename Wt<DT>::S* __restrict__ A,
                    const int* __restrict__ slots, const int* __restrict__ rank, int L, int K, int R, int Hin,
                    int accumulate) {
  MOTE_DYNAMIC_SHARED(float, vs);  // [R]: dv[t,k,:]
  constexpr int NV = VEC ? Wt<DT>::VE : 1;
  const int t = blockIdx.x, tid = threadIdx.x;
  for (int hy = blockIdx.y; (long long)hy * 128 * NV < Hin; hy += gridDim.y) {
    const int h0 = (hy * 128 + tid) * NV;
    float acc[NV];
#pragma unroll
    for (int j = 0; j < NV; j++) acc[j] = 0.f;
    for (int k = 0; k < K; k++) {
      const long long pair = (long long)t * K + k;
      int e = slots[pair];
      if (e < 0) continue;  // uniform
      e = clamp_adapter(e, L);
      const int rk = clamp_rank(rank[e], R);
      __syncthreads();
      for (int r = tid; r < rk; r += 128) vs[r] = dv[pair * R + r];
      __syncthreads();
      if (h0 < Hin) {
        const typename Wt<DT>::S* a = A + (long long)e * R * Hin + h0;
        for (int r = 0; r < rk; r++) {
          const float d = vs[r];
          float w[NV];
          if constexpr (VEC)
            Vec<DT>::load(a + (long long)r * Hin, w);
          else
            w[0] = ldw<DT>(a, (long long)r * Hin);
#pragma unroll
          for (int j = 0; j < NV; j++) acc[j] = fmaf(w[j], d, acc[j]);
        }
      }
    }
    float* o = dx + (long long)t * Hin;
#pragma unroll
    for (int j = 0; j < NV; j++) {
      const int h = h0 + j;
      if (h < Hin) o[h] = accumulate ? o[h] + acc[j] : acc[j];
    }
  }
}

// ---- SGMV (strategy 1) -----------------------------------------------------

constexpr int kPT = 32;  // entries of `order` per tile
constexpr int kRT = 16;  // rank rows per pass
constexpr int kNC = 32;  // reduction chunk

// MODE 0 (shrink):      out[i, r] = Σ_n A[e, r, n]·x[t, n],                 N = Hin
// MODE 1 (shrink_grad): out[i, r] = weight·scale·Σ_n B[e, n, r]·dy[t, n],   N = Hout
// over i = order[p] for p in this block's tile; blocks past pair_tiles zero the rows of empty slots.
template <int DT, int MODE>
__global__ void __launch_bounds__(256)
    sgmv_pairs(float* __restrict__ out, const float* __restrict__ X, const typename Wt<DT>::S* __restrict__ W,
               const int* __restrict__ order, const int* __restrict__ slots, const float* __restrict__ weight,
               const int* __restrict__ rank, const float* __restrict__ scale, int P, int TK, int L, int K, int R, int N,
               int pair_tiles) {
  __shared__ float Ws[kNC][kRT + 1];
  __shared__ float Xs[kPT][kNC + 1];
  __shared__ long long s_idx[kPT];
  __shared__ int s_e[kPT];
  __shared__ float s_m[kPT];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  if ((int)blockIdx.x >= pair_tiles) {
    const long long total = (long long)TK * R;
    const long long stride = (long long)(gridDim.x - pair_tiles) * 256;
    for (long long i = (long long)(blockIdx.x - pair_tiles) * 256 + tid; i < total; i += stride)
      if (slots[i / R] < 0) out[i] = 0.f;
    return;
  }
  const int p0 = blockIdx.x * kPT;
  const int np = min(kPT, P - p0);
  if (tid < np) {
    const int idx = clamp_index(order[p0 + tid], TK);
    const int e = slots[idx] < 0 ? -1 : clamp_adapter(slots[idx], L);  // -1: an empty slot in order (tampered)
    s_idx[tid] = idx;
    s_e[tid] = e;
    s_m[tid] = MODE == 1 && e >= 0 ? weight[idx] * scale[e] : 1.f;
  }
  __syncthreads();
  for (int ps = 0; ps < np;) {
    const int e = s_e[ps];
    int pe = ps + 1;
    while (pe < np && s_e[pe] == e) pe++;
    if (e < 0) {  // uniform; the zeroing blocks write these rows
      ps = pe;
      continue;
    }
    const int rk = clamp_rank(rank[e], R);
    for (int r0 = 0; r0 < R; r0 += kRT) {
      float acc0 = 0.f, acc1 = 0.f;
      if (r0 < rk) {  // uniform
        for (int n0 = 0; n0 < N; n0 += kNC) {
          for (int i = tid; i < kRT * kNC; i += 256) {
            int rr, kk;
            if (MODE == 0) {
              rr = i / kNC;
              kk = i % kNC;
            }  // n contiguous in A
            else {
              kk = i / kRT;
              rr = i % kRT;
            }  // r contiguous in B
            const int r = r0 + rr, n = n0 + kk;
            float w = 0.f;
            if (r < rk && n < N)
              w = MODE == 0 ? ldw<DT>(W, ((long long)e * R + r) * N + n) : ldw<DT>(W, ((long long)e * N + n) * R + r);
            Ws[kk][rr] = w;
          }
          for (int i = tid; i < kPT * kNC; i += 256) {
            const int pp = i / kNC, kk = i % kNC, n = n0 + kk;
            float xv = 0.f;
            if (pp >= ps && pp < pe && n < N) xv = __ldg(X + (s_idx[pp] / K) * N + n);
            Xs[pp][kk] = xv;
          }
          __syncthreads();
#pragma unroll
          for (int kk = 0; kk < kNC; kk++) {
            const float w = Ws[kk][tx];
            acc0 = fmaf(w, Xs[ty][kk], acc0);
            acc1 = fmaf(w, Xs[ty + 16][kk], acc1);
          }
          __syncthreads();
        }
      }
      const int r = r0 + tx;
      if (r < R) {
        if (ty >= ps && ty < pe) out[s_idx[ty] * R + r] = r < rk ? acc0 * s_m[ty] : 0.f;
        if (ty + 16 >= ps && ty + 16 < pe) out[s_idx[ty + 16] * R + r] = r < rk ? acc1 * s_m[ty + 16] : 0.f;
      }
    }
    ps = pe;
  }
}

constexpr int kTT = 32;  // tokens per tile
constexpr int kNT = 64;  // output features per tile
constexpr int kRC = 16;  // rank chunk

// MODE 0 (expand):     out[t, n] += Σ_k weight·scale·Σ_{r<rank} B[e, n, r]·V[t, k, r],   N = Hout
// MODE 1 (input_grad): out[t, n] (+)= Σ_k Σ_{r<rank} A[e, r, n]·V[t, k, r],              N = Hin
template <int DT, int MODE>
__global__ void __launch_bounds__(256)
    sgmv_tokens(float* __restrict__ out, const float* __restrict__ V, const typename Wt<DT>::S* __restrict__ W,
                const int* __restrict__ slots, const float* __restrict__ weight, const int* __restrict__ rank,
                const float* __restrict__ scale, int T, int L, int K, int R, int N, int accumulate) {
  __shared__ float Ws[kRC][kNT + 1];
  __shared__ float Vs[kTT][kRC + 1];
  __shared__ int s_e[kTT];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int t0 = blockIdx.x * kTT;
  const int nt = min(kTT, T - t0);
  for (int ny = blockIdx.y; ny * kNT < N; ny += gridDim.y) {
    const int n0 = ny * kNT;
    float acc[2][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
      for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
    for (int k = 0; k < K; k++) {
      __syncthreads();  // readers of s_e from the previous k are done
      if (tid < kTT) {
        const int e = tid < nt ? slots[(long long)(t0 + tid) * K + k] : -1;
        s_e[tid] = e < 0 ? -1 : clamp_adapter(e, L);
      }
      __syncthreads();
      for (int ts = 0; ts < nt;) {
        const int e = s_e[ts];
        int te = ts + 1;
        while (te < nt && s_e[te] == e) te++;
        if (e >= 0) {  // uniform
          const int rk = clamp_rank(rank[e], R);
          const float sc = MODE == 0 ? scale[e] : 1.f;
          for (int r0 = 0; r0 < rk; r0 += kRC) {
            for (int i = tid; i < kRC * kNT; i += 256) {
              int rr, nn;
              if (MODE == 0) {
                nn = i / kRC;
                rr = i % kRC;
              }  // r contiguous in B
              else {
                rr = i / kNT;
                nn = i % kNT;
              }  // n contiguous in A
              const int r = r0 + rr, n = n0 + nn;
              float w = 0.f;
              if (r < rk && n < N)
                w = MODE == 0 ? ldw<DT>(W, ((long long)e * N + n) * R + r) : ldw<DT>(W, ((long long)e * R + r) * N + n);
              Ws[rr][nn] = w;
            }
            for (int i = tid; i < kTT * kRC; i += 256) {
              const int tt = i / kRC, rr = i % kRC, r = r0 + rr;
              float val = 0.f;
              if (tt >= ts && tt < te && r < rk) {
                const long long pair = (long long)(t0 + tt) * K + k;
                val = V[pair * R + r];
                if (MODE == 0) val *= weight[pair] * sc;
              }
              Vs[tt][rr] = val;
            }
            __syncthreads();
#pragma unroll
            for (int rr = 0; rr < kRC; rr++) {
              const float v0 = Vs[ty][rr], v1 = Vs[ty + 16][rr];
#pragma unroll
              for (int j = 0; j < 4; j++) {
                const float w = Ws[rr][tx + 16 * j];
                acc[0][j] = fmaf(v0, w, acc[0][j]);
                acc[1][j] = fmaf(v1, w, acc[1][j]);
              }
            }
            __syncthreads();
          }
        }
        ts = te;
      }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
      const int tt = ty + 16 * i;
      if (tt >= nt) continue;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int n = n0 + tx + 16 * j;
        if (n >= N) continue;
        float* o = out + (long long)(t0 + tt) * N + n;
        *o = (MODE == 0 || accumulate) ? *o + acc[i][j] : acc[i][j];
      }
    }
  }
}

// ---- weight gradients (grouped GEMMs, both strategies) ---------------------

constexpr int kWR = 16;  // ranks per tile
constexpr int kWN = 64;  // features per tile
constexpr int kWP = 64;  // pairs per reduction chunk

// z = 0: dA[e, r, n] (+)= Σ_{i∈seg(e)} dv[i, r]·x[t_i, n]                 (n over Hin)
// z = 1: dB[e, n, r] (+)= Σ_{i∈seg(e)} weight_i·scale_e·v[i, r]·dy[t_i, n] (n over Hout)
__global__ void __launch_bounds__(256)
    lora_weight_grad_kernel(float* __restrict__ dA, float* __restrict__ dB, const float* __restrict__ x,
                            const float* __restrict__ dy, const float* __restrict__ v, const float* __restrict__ dv,
                            const int* __restrict__ order, const int* __restrict__ seg_start,
                            const int* __restrict__ seg_adapter, const float* __restrict__ weight,
                            const int* __restrict__ rank, const float* __restrict__ scale, int G, int P, int TK, int L,
                            int K, int R, int Hin, int Hout, int accumulate) {
  __shared__ float Ls[kWP][kWR + 1];
  __shared__ float Xs[kWP][kWN + 1];
  __shared__ long long s_idx[kWP];
  const bool isB = blockIdx.z == 1;
  const int N = isB ? Hout : Hin;
  const int ntiles = (N + kWN - 1) / kWN, rtiles = (R + kWR - 1) / kWR;
  if ((int)blockIdx.x >= ntiles * rtiles) return;
  const int n0 = (blockIdx.x % ntiles) * kWN, r0 = (blockIdx.x / ntiles) * kWR;
  const int tid = threadIdx.x, nn = tid & (kWN - 1), rq = tid / kWN;  // ranks r0 + rq + 4j
  const float* Xsrc = isB ? dy : x;
  for (int e = blockIdx.y; e < L; e += gridDim.y) {
    int lo = 0, hi = G;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (seg_adapter[mid] < e)
        lo = mid + 1;
      else
        hi = mid;
    }
    const bool present = lo < G && seg_adapter[lo] == e;
    const int rk = clamp_rank(rank[e], R);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (present && r0 < rk) {  // uniform
      const int s1 = clamp_rank(seg_start[lo + 1], P), s0 = clamp_rank(seg_start[lo], s1);
      const float sc = scale[e];
      for (int p0 = s0; p0 < s1; p0 += kWP) {
        const int np = min(kWP, s1 - p0);
        __syncthreads();
        if (tid < kWP) s_idx[tid] = tid < np ? clamp_index(order[p0 + tid], TK) : 0;
        __syncthreads();
        for (int i = tid; i < kWP * kWR; i += 256) {
          const int pp = i / kWR, rr = i % kWR, r = r0 + rr;
          float l = 0.f;
          if (pp < np && r < rk) {
            const long long idx = s_idx[pp];
            l = isB ? v[idx * R + r] * (weight[idx] * sc) : dv[idx * R + r];
          }
          Ls[pp][rr] = l;
        }
        for (int i = tid; i < kWP * kWN; i += 256) {
          const int pp = i / kWN, c = i % kWN, n = n0 + c;
          float xv = 0.f;
          if (pp < np && n < N) xv = __ldg(Xsrc + (s_idx[pp] / K) * N + n);
          Xs[pp][c] = xv;
        }
        __syncthreads();
#pragma unroll 8
        for (int pp = 0; pp < kWP; pp++) {
          const float xv = Xs[pp][nn];
#pragma unroll
          for (int j = 0; j < 4; j++) acc[j] = fmaf(Ls[pp][rq + 4 * j], xv, acc[j]);
        }
      }
    }
    const int n = n0 + nn;
    if (n < N) {
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int r = r0 + rq + 4 * j;
        if (r >= R) continue;
        float* o = isB ? dB + ((long long)e * Hout + n) * R + r : dA + ((long long)e * R + r) * Hin + n;
        if (present && r < rk)
          *o = accumulate ? *o + acc[j] : acc[j];
        else if (!accumulate)
          *o = 0.f;
      }
    }
  }
}

// ---- launchers -------------------------------------------------------------

inline bool valid_dtype(int dt) { return dt == MOTE_F32 || dt == MOTE_F16 || dt == MOTE_BF16; }

template <int DT>
int shrink_t(const mote_lora_args& a, float* v, const float* x, cudaStream_t s) {
  using S = typename Wt<DT>::S;
  const S* A = static_cast<const S*>(a.A);
  const long long TK = (long long)a.T * a.K;
  if (a.strategy == 0) {
    const int RG = (a.R + kShrinkWarps - 1) / kShrinkWarps;
    dim3 grid(a.T, grid_dim((long long)a.K * RG));
    const bool vec = a.Hin % Wt<DT>::VE == 0 && aligned16(a.A) && aligned16(x);
    if (vec)
      MOTE_LAUNCH(grid, 256, 0, s, bgmv_shrink<DT, true>)(v, x, A, a.slots, a.rank, a.L, a.K, a.R, a.Hin);
    else
      MOTE_LAUNCH(grid, 256, 0, s, bgmv_shrink<DT, false>)(v, x, A, a.slots, a.rank, a.L, a.K, a.R, a.Hin);
  } else {
    const int tiles = (a.P + kPT - 1) / kPT;
    long long zb = (TK * a.R + 255) / 256;
    if (zb > 1024) zb = 1024;
    MOTE_LAUNCH(unsigned(tiles + zb), 256, 0, s, sgmv_pairs<DT, 0>)
    (v, x, A, a.order, a.slots, a.weight, a.rank, a.scale, a.P, int(TK), a.L, a.K, a.R, a.Hin, tiles);
  }
  return int(cudaGetLastError());
}

template <int DT>
int expand_t(const mote_lora_args& a, float* y, const float* v, cudaStream_t s) {
  using S = typename Wt<DT>::S;
  const S* B = static_cast<const S*>(a.B);
  if (a.Hout == 0) return int(cudaGetLastError());
  if (a.strategy == 0) {
    dim3 grid(a.T, grid_dim((a.Hout + 255) / 256));
    const size_t smem = size_t(a.R) * sizeof(float);
    const bool vec = a.R % Wt<DT>::VE == 0 && aligned16(a.B);
    if (vec) MOTE_LAUNCH(grid, 256, smem, s, bgmv_expand<DT, true>)
    (y, v, B, a.slots, a.weight, a.rank, a.scale, a.L, a.K, a.R, a.Hout);
    else MOTE_LAUNCH(grid, 256, smem, s, bgmv_expand<DT, false>)(y, v, B, a.slots, a.weight, a.rank, a.scale, a.L, a.K,
                                                                 a.R, a.Hout);
  } else {
    dim3 grid((a.T + kTT - 1) / kTT, grid_dim((a.Hout + kNT - 1) / kNT));
    MOTE_LAUNCH(grid, 256, 0, s, sgmv_tokens<DT, 0>)
    (y, v, B, a.slots, a.weight, a.rank, a.scale, a.T, a.L, a.K, a.R, a.Hout, 1);
  }
  return int(cudaGetLastError());
}

template <int DT>
int shrink_grad_t(const mote_lora_args& a, float* dv, const float* dy, cudaStream_t s) {
  using S = typename Wt<DT>::S;
  const S* B = static_cast<const S*>(a.B);
  const long long TK = (long long)a.T * a.K;
  if (a.strategy == 0) {
    const bool vec = a.R % Wt<DT>::VE == 0 && aligned16(a.B);
    if (vec) MOTE_LAUNCH(unsigned(TK), 256, 0, s, bgmv_shrink_grad<DT, true>)
    (dv, dy, B, a.slots, a.weight, a.rank, a.scale, a.L, a.K, a.R, a.Hout);
    else MOTE_LAUNCH(unsigned(TK), 256, 0, s, bgmv_shrink_grad<DT, false>)(dv, dy, B, a.slots, a.weight, a.rank,
                                                                           a.scale, a.L, a.K, a.R, a.Hout);
  } else {
    const int tiles = (a.P + kPT - 1) / kPT;
    long long zb = (TK * a.R + 255) / 256;
    if (zb > 1024) zb = 1024;
    MOTE_LAUNCH(unsigned(tiles + zb), 256, 0, s, sgmv_pairs<DT, 1>)
    (dv, dy, B, a.order, a.slots, a.weight, a.rank, a.scale, a.P, int(TK), a.L, a.K, a.R, a.Hout, tiles);
  }
  return int(cudaGetLastError());
}

template <int DT>
int input_grad_t(const mote_lora_args& a, float* dx, const float* dv, int accumulate, cudaStream_t s) {
  using S = typename Wt<DT>::S;
  const S* A = static_cast<const S*>(a.A);
  if (a.Hin == 0) return int(cudaGetLastError());
  if (a.strategy == 0) {
    const size_t smem = size_t(a.R) * sizeof(float);
    const bool vec = a.Hin % Wt<DT>::VE == 0 && aligned16(a.A);
    if (vec) {
      dim3 grid(a.T, grid_dim((a.Hin + 128 * Wt<DT>::VE - 1) / (128 * Wt<DT>::VE)));
      MOTE_LAUNCH(grid, 128, smem, s, bgmv_input_grad<DT, true>)
      (dx, dv, A, a.slots, a.rank, a.L, a.K, a.R, a.Hin, accumulate);
    } else {
      dim3 grid(a.T, grid_dim((a.Hin + 127) / 128));
      MOTE_LAUNCH(grid, 128, smem, s, bgmv_input_grad<DT, false>)
      (dx, dv, A, a.slots, a.rank, a.L, a.K, a.R, a.Hin, accumulate);
    }
  } else {
    dim3 grid((a.T + kTT - 1) / kTT, grid_dim((a.Hin + kNT - 1) / kNT));
    MOTE_LAUNCH(grid, 256, 0, s, sgmv_tokens<DT, 1>)
    (dx, dv, A, a.slots, a.weight, a.rank, a.scale, a.T, a.L, a.K, a.R, a.Hin, accumulate);
  }
  return int(cudaGetLastError());
}

// Common argument checks; returns 0 when the launch may go ahead, -1 when there is nothing to do,
// or a CUDA error code.
int check_args(const mote_lora_args* a) {
  if (a == nullptr) return int(cudaErrorInvalidValue);
  if (a->T < 0 || a->K < 1 || a->L < 1 || a->R < 1 || a->Hin < 0 || a->Hout < 0 || a->P < 0 || a->G < 0 ||
      (a->strategy != 0 && a->strategy != 1))
    return int(cudaErrorInvalidValue);
  if (a->R > 12288) return int(cudaErrorInvalidValue);  // dynamic shared memory of the BGMV kernels
  if (a->T == 0) return -1;
  return 0;
}

}  // namespace

extern "C" int mote_cuda_lora_shrink(const mote_lora_args* a, float* v, const float* x, void* stream) {
  const int c = check_args(a);
  if (c) return c < 0 ? int(cudaGetLastError()) : c;
  MOTE_WEIGHT_DISPATCH(a->a_dtype, shrink_t, *a, v, x, static_cast<cudaStream_t>(stream))
}

extern "C" int mote_cuda_lora_expand(const mote_lora_args* a, float* y, const float* v, void* stream) {
  const int c = check_args(a);
  if (c) return c < 0 ? int(cudaGetLastError()) : c;
  MOTE_WEIGHT_DISPATCH(a->b_dtype, expand_t, *a, y, v, static_cast<cudaStream_t>(stream))
}

extern "C" int mote_cuda_lora_apply(const mote_lora_args* a, float* y, float* v, const float* x, void* stream) {
  const int c = check_args(a);
  if (c) return c < 0 ? int(cudaGetLastError()) : c;
  if (!valid_dtype(a->a_dtype) || !valid_dtype(a->b_dtype)) return int(cudaErrorInvalidValue);
  const int e = mote_cuda_lora_shrink(a, v, x, stream);
  if (e) return e;
  return mote_cuda_lora_expand(a, y, v, stream);
}

extern "C" int mote_cuda_lora_shrink_grad(const mote_lora_args* a, float* dv, const float* dy, void* stream) {
  const int c = check_args(a);
  if (c) return c < 0 ? int(cudaGetLastError()) : c;
  MOTE_WEIGHT_DISPATCH(a->b_dtype, shrink_grad_t, *a, dv, dy, static_cast<cudaStream_t>(stream))
}

extern "C" int mote_cuda_lora_input_grad(const mote_lora_args* a, float* dx, const float* dv, int accumulate,
                                         void* stream) {
  const int c = check_args(a);
  if (c) return c < 0 ? int(cudaGetLastError()) : c;
  MOTE_WEIGHT_DISPATCH(a->a_dtype, input_grad_t, *a, dx, dv, accumulate, static_cast<cudaStream_t>(stream))
}

extern "C" int mote_cuda_lora_weight_grad(const mote_lora_args* a, float* dA, float* dB, const float* x,
                                          const float* dy, const float* v, const float* dv, int accumulate,
                                          void* stream) {
  const int c = check_args(a);
  if (c > 0) return c;
  const int Nmax = a->Hin > a->Hout ? a->Hin : a->Hout;
  if (Nmax == 0) return int(cudaGetLastError());
  // T == 0 still has to zero dA/dB when not accumulating: every adapter is absent then.
  const int G = a->T == 0 ? 0 : a->G;
  const long long tiles = (long long)((Nmax + kWN - 1) / kWN) * ((a->R + kWR - 1) / kWR);
  dim3 grid(unsigned(tiles), grid_dim(a->L), 2);
  MOTE_LAUNCH(grid, 256, 0, static_cast<cudaStream_t>(stream), lora_weight_grad_kernel)
  (dA, dB, x, dy, v, dv, a->order, a->seg_start, a->seg_adapter, a->weight, a->rank, a->scale, G, a->P, a->T * a->K,
   a->L, a->K, a->R, a->Hin, a->Hout, accumulate);
  return int(cudaGetLastError());
}
