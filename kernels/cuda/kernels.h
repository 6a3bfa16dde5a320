/* C ABI of the CUDA kernels. Every launcher returns a cudaError_t code (0 = success)
 * and never aborts; the host side turns codes into exceptions. Pointers are device
 * pointers; `stream` is a cudaStream_t (NULL = default stream). Same contracts as
 * native/cpu/kernels.h. */
#pragma once
#include <stdint.h>

#include "attention_args.h" /* native/attention_args.h */
#include "lora_args.h"      /* native/lora_args.h */

#ifdef __cplusplus
extern "C" {
#endif

enum { MOTE_F32 = 0, MOTE_F16 = 1, MOTE_BF16 = 2, MOTE_I32 = 3 };

/* y[T,N] (+)= x[T,K] · W[N,K]^T, W of dtype wdtype (f32/f16/bf16) */
int mote_cuda_matmul(float* y, const float* x, const void* w, int wdtype, int T, int K, int N, int accumulate,
                     void* stream);
/* dx[T,K] (+)= dy[T,N] · W[N,K] */
int mote_cuda_matmul_grad_input(float* dx, const float* dy, const void* w, int wdtype, int T, int K, int N,
                                int accumulate, void* stream);
/* dW[N,K] (+)= dy[T,N]^T · x[T,K] */
int mote_cuda_matmul_grad_weight(float* dw, const float* dy, const float* x, int T, int K, int N, int accumulate,
                                 void* stream);
/* dst[0..n) = src[0..n) (bandwidth ceiling for the benchmarks) */
int mote_cuda_copy(float* dst, const float* src, int64_t n, void* stream);

/* Multi-LoRA family (kernels/cuda/lora.cu); contracts in src/ops/lora.ts. `a` is a host
 * pointer to the args (its pointers are device pointers). */
int mote_cuda_lora_shrink(const mote_lora_args* a, float* v, const float* x, void* stream);
int mote_cuda_lora_expand(const mote_lora_args* a, float* y, const float* v, void* stream);
int mote_cuda_lora_apply(const mote_lora_args* a, float* y, float* v, const float* x, void* stream);
int mote_cuda_lora_shrink_grad(const mote_lora_args* a, float* dv, const float* dy, void* stream);
int mote_cuda_lora_input_grad(const mote_lora_args* a, float* dx, const float* dv, int accumulate, void* stream);
int mote_cuda_lora_weight_grad(const mote_lora_args* a, float* dA, float* dB, const float* x, const float* dy,
                               const float* v, const float* dv, int accumulate, void* stream);

/* Model kernel families (kernels/cuda/<family>.cu); same contracts as native/cpu/kernels.h. */
int mote_cuda_embedding(float* y, const int* ids, const void* E, int edtype, int T, int V, int H, void* stream);
int mote_cuda_embedding_grad(float* dE, const float* dy, const int* order, const int* seg_start, const int* seg_ids,
                             int G, int T, int V, int H, int accumulate, void* stream);
int mote_cuda_rmsnorm(float* y, float* rstd, const float* x, const void* w, int wdtype, int T, int H, float eps,
                      void* stream);
int mote_cuda_rmsnorm_grad(float* dx, float* dw, const float* dy, const float* x, const void* w, int wdtype,
                           const float* rstd, int T, int H, int accumulate_dw, void* stream);
int mote_cuda_rope(float* y, const float* x, const int* positions, const float* inv_freq, int T, int heads, int D,
                   int inverse, void* stream);
int mote_cuda_attention(const mote_attention_args* a, float* out, float* lse, const float* q, const float* k,
                        const float* v, void* stream);
int mote_cuda_attention_grad(const mote_attention_args* a, float* dq, float* dk, float* dv, const float* dout,
                             const float* q, const float* k, const float* v, const float* out, const float* lse,
                             void* stream);
int mote_cuda_swiglu(float* y, const float* gate, const float* up, int64_t n, void* stream);
int mote_cuda_swiglu_grad(float* dgate, float* dup, const float* dy, const float* gate, const float* up, int64_t n,
                          void* stream);
int mote_cuda_add(float* y, const float* a, const float* b, int64_t n, void* stream);
int mote_cuda_scale(float* y, const float* x, float alpha, int64_t n, void* stream);
int mote_cuda_log_softmax(float* out, const float* logits, int T, int V, void* stream);
int mote_cuda_xent(float* losses, float* lse, const float* logits, const int* targets, const float* mask, int T, int V,
                   void* stream);
int mote_cuda_xent_grad(float* dlogits, const float* logits, const float* lse, const int* targets, const float* mask,
                        float scale, int T, int V, void* stream);

/* copy_rows family (kernels/cuda/copy_rows.cu); contract in src/ops/copy_rows.ts. dst[dst_rows[i], :] =
 * src[src_rows[i], :] for i < N, rows of W elements of dtype (MOTE_F32/F16/BF16/I32), bits copied as
 * they are. Rd / Rs: rows of dst / src (an index outside them is skipped; the host checks them).
 * dst may be src when no row is both read and written. */
int mote_cuda_copy_rows(void* dst, const void* src, const int* dst_rows, const int* src_rows, int dtype, int N, int W,
                        int64_t Rd, int64_t Rs, void* stream);

/* adamw family (kernels/cuda/adamw.cu); contracts in src/ops/adamw.ts. p, m, v in place, g read;
 * c1 = 1 − β1, c2 = 1 − β2, decay = 1 − lr·wd, bc1/bc2 = 1 − β^t computed on the host in double. sum_squares: out[0] =
 * Σ g², two fixed-order passes (no atomics, bit-identical reruns); its partials live in a per-device scratch array of
 * the .cu, so concurrent calls on different streams of one device must not overlap. */
int mote_cuda_adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float c1,
                    float beta2, float c2, float eps, float decay, float bc1, float bc2, float grad_scale,
                    void* stream);
int mote_cuda_sum_squares(float* out, const float* g, int64_t n, void* stream);

#ifdef __cplusplus
}
#endif
