// CPU kernels (threaded C++). Same contracts as src/ops and kernels/cuda/kernels.h.
// Weight pointers are void* with a dtype code: 0 f32, 1 f16, 2 bf16. Accumulation is f32.
#pragma once
#include <cstdint>

#include "../attention_args.h"
#include "../lora_args.h"
#include "variant.h"

namespace mote::cpu {

// y[T,N] (+)= x[T,K] · W[N,K]^T
void matmul(float* y, const float* x, const void* w, int wdtype, int T, int K, int N, bool accumulate);
// dx[T,K] (+)= dy[T,N] · W[N,K]
void matmul_grad_input(float* dx, const float* dy, const void* w, int wdtype, int T, int K, int N, bool accumulate);
// dW[N,K] (+)= dy[T,N]^T · x[T,K]
void matmul_grad_weight(float* dw, const float* dy, const float* x, int T, int K, int N, bool accumulate);

// Multi-LoRA family (native/cpu/lora.cc); contracts in src/ops/lora.ts (LoraKernels).
void lora_shrink(const mote_lora_args& a, float* v, const float* x);
void lora_expand(const mote_lora_args& a, float* y, const float* v);
void lora_apply(const mote_lora_args& a, float* y, float* v, const float* x);
void lora_shrink_grad(const mote_lora_args& a, float* dv, const float* dy);
void lora_input_grad(const mote_lora_args& a, float* dx, const float* dv, bool accumulate);
void lora_weight_grad(const mote_lora_args& a, float* dA, float* dB, const float* x, const float* dy, const float* v,
                      const float* dv, bool accumulate);

// Model kernel families (native/cpu/<family>.cc); contracts in src/ops/<family>.ts.
// embedding.cc: y[t,:] = E[ids[t],:]; grad grouped by id (order/seg_start/seg_ids), no atomics.
void embedding(float* y, const int* ids, const void* E, int edtype, int T, int V, int H);
void embedding_grad(float* dE, const float* dy, const int* order, const int* seg_start, const int* seg_ids, int G,
                    int T, int V, int H, bool accumulate);
// rmsnorm.cc
void rmsnorm(float* y, float* rstd, const float* x, const void* w, int wdtype, int T, int H, float eps);
void rmsnorm_grad(float* dx, float* dw, const float* dy, const float* x, const void* w, int wdtype, const float* rstd,
                  int T, int H, bool accumulate_dw);
// rope.cc: y may equal x; inverse rotates by -angle.
void rope(float* y, const float* x, const int* positions, const float* inv_freq, int T, int heads, int D, bool inverse);
// attention.cc: layout arrays as in src/ops/attention.ts; S = 0 means no segment mask.
using AttentionArgs = mote_attention_args;  // native/attention_args.h, shared with the CUDA kernels
void attention(const AttentionArgs& a, float* out, float* lse, const float* q, const float* k, const float* v);
void attention_grad(const AttentionArgs& a, float* dq, float* dk, float* dv, const float* dout, const float* q,
                    const float* k, const float* v, const float* out, const float* lse);
// swiglu.cc
void swiglu(float* y, const float* gate, const float* up, int64_t n);
void swiglu_grad(float* dgate, float* dup, const float* dy, const float* gate, const float* up, int64_t n);
// residual.cc: y may equal a
void add(float* y, const float* a, const float* b, int64_t n);
// scale.cc: y = alpha·x; y may equal x
void scale(float* y, const float* x, float alpha, int64_t n);
// xent.cc
void log_softmax(float* out, const float* logits, int T, int V);
void xent(float* losses, float* lse, const float* logits, const int* targets, const float* mask, int T, int V);
void xent_grad(float* dlogits, const float* logits, const float* lse, const int* targets, const float* mask,
               float scale, int T, int V);

// adamw.cc: one AdamW step in place (p, m, v), g read. c1 = 1 − β1, c2 = 1 − β2, decay = 1 − lr·wd,
// bc1/bc2 = 1 − β^t: all formed on the host in double, then rounded to f32.
void adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float c1, float beta2,
           float c2, float eps, float decay, float bc1, float bc2, float grad_scale);
// adamw.cc: out[0] = Σ g², fixed-order (thread-count independent) double accumulation.
void sum_squares(float* out, const float* g, int64_t n);

// copy_rows.cc: dst[dst_rows[i], :] = src[src_rows[i], :] for i < N, rows of W elements of dtype
// (0 f32, 1 f16, 2 bf16, 3 i32; bits copied as they are). Rd / Rs: rows of dst / src; indices are
// checked against them first (throws std::out_of_range). dst may be src when no row is both read
// and written.
void copy_rows(void* dst, const void* src, const int* dst_rows, const int* src_rows, int dtype, int N, int W,
               int64_t Rd, int64_t Rs);

// Streams src to dst (the copy-bandwidth ceiling used by the benchmarks).
void copy(float* dst, const float* src, int64_t n);

// The SIMD level the kernels run at: "x86-64", "x86-64-v3", "x86-64-v4" (dispatch.cc picks the
// best one this CPU supports once, at load; MOTE_CPU_VARIANT lowers it), or "native" / "generic"
// for a build compiled for one target only.
const char* simd_variant();
// True when OpenBLAS was found at load (blas.cc): f32 base matmuls with many rows use its sgemm.
bool blas_loaded();

}  // namespace mote::cpu
