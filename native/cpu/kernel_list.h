// Every kernel of kernels.h as X(return, name, (parameters), (arguments)), for dispatch.cc to
// declare each per-variant copy and forward mote::cpu::<name> to the chosen one. A kernel added to
// kernels.h and not here fails to link (its mote::cpu:: symbol is never defined).
#pragma once

#define MOTE_CPU_KERNELS(X)                                                                                            \
  X(void, matmul, (float* y, const float* x, const void* w, int wdtype, int T, int K, int N, bool accumulate),         \
    (y, x, w, wdtype, T, K, N, accumulate))                                                                            \
  X(void, matmul_grad_input,                                                                                           \
    (float* dx, const float* dy, const void* w, int wdtype, int T, int K, int N, bool accumulate),                     \
    (dx, dy, w, wdtype, T, K, N, accumulate))                                                                          \
  X(void, matmul_grad_weight, (float* dw, const float* dy, const float* x, int T, int K, int N, bool accumulate),      \
    (dw, dy, x, T, K, N, accumulate))                                                                                  \
  X(void, lora_shrink, (const mote_lora_args& a, float* v, const float* x), (a, v, x))                                 \
  X(void, lora_expand, (const mote_lora_args& a, float* y, const float* v), (a, y, v))                                 \
  X(void, lora_apply, (const mote_lora_args& a, float* y, float* v, const float* x), (a, y, v, x))                     \
  X(void, lora_shrink_grad, (const mote_lora_args& a, float* dv, const float* dy), (a, dv, dy))                        \
  X(void, lora_input_grad, (const mote_lora_args& a, float* dx, const float* dv, bool accumulate),                     \
    (a, dx, dv, accumulate))                                                                                           \
  X(void, lora_weight_grad,                                                                                            \
    (const mote_lora_args& a, float* dA, float* dB, const float* x, const float* dy, const float* v, const float* dv,  \
     bool accumulate),                                                                                                 \
    (a, dA, dB, x, dy, v, dv, accumulate))                                                                             \
  X(void, embedding, (float* y, const int* ids, const void* E, int edtype, int T, int V, int H),                       \
    (y, ids, E, edtype, T, V, H))                                                                                      \
  X(void, embedding_grad,                                                                                              \
    (float* dE, const float* dy, const int* order, const int* seg_start, const int* seg_ids, int G, int T, int V,      \
     int H, bool accumulate),                                                                                          \
    (dE, dy, order, seg_start, seg_ids, G, T, V, H, accumulate))                                                       \
  X(void, rmsnorm, (float* y, float* rstd, const float* x, const void* w, int wdtype, int T, int H, float eps),        \
    (y, rstd, x, w, wdtype, T, H, eps))                                                                                \
  X(void, rmsnorm_grad,                                                                                                \
    (float* dx, float* dw, const float* dy, const float* x, const void* w, int wdtype, const float* rstd, int T,       \
     int H, bool accumulate_dw),                                                                                       \
    (dx, dw, dy, x, w, wdtype, rstd, T, H, accumulate_dw))                                                             \
  X(void, rope,                                                                                                        \
    (float* y, const float* x, const int* positions, const float* inv_freq, int T, int heads, int D, bool inverse),    \
    (y, x, positions, inv_freq, T, heads, D, inverse))                                                                 \
  X(void, attention, (const AttentionArgs& a, float* out, float* lse, const float* q, const float* k, const float* v), \
    (a, out, lse, q, k, v))                                                                                            \
  X(void, attention_grad,                                                                                              \
    (const AttentionArgs& a, float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,       \
     const float* v, const float* out, const float* lse),                                                              \
    (a, dq, dk, dv, dout, q, k, v, out, lse))                                                                          \
  X(void, swiglu, (float* y, const float* gate, const float* up, int64_t n), (y, gate, up, n))                         \
  X(void, swiglu_grad, (float* dgate, float* dup, const float* dy, const float* gate, const float* up, int64_t n),     \
    (dgate, dup, dy, gate, up, n))                                                                                     \
  X(void, add, (float* y, const float* a, const float* b, int64_t n), (y, a, b, n))                                    \
  X(void, log_softmax, (float* out, const float* logits, int T, int V), (out, logits, T, V))                           \
  X(void, xent, (float* losses, float* lse, const float* logits, const int* targets, const float* mask, int T, int V), \
    (losses, lse, logits, targets, mask, T, V))                                                                        \
  X(void, xent_grad,                                                                                                   \
    (float* dlogits, const float* logits, const float* lse, const int* targets, const float* mask, float scale, int T, \
     int V),                                                                                                           \
    (dlogits, logits, lse, targets, mask, scale, T, V))                                                                \
  X(void, adamw,                                                                                                       \
    (float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float c1, float beta2, float c2,  \
     float eps, float decay, float bc1, float bc2, float grad_scale),                                                  \
    (p, g, m, v, n, lr, beta1, c1, beta2, c2, eps, decay, bc1, bc2, grad_scale))                                       \
  X(void, sum_squares, (float* out, const float* g, int64_t n), (out, g, n))                                           \
  X(void, copy_rows,                                                                                                   \
    (void* dst, const void* src, const int* dst_rows, const int* src_rows, int dtype, int N, int W, int64_t Rd,        \
     int64_t Rs),                                                                                                      \
    (dst, src, dst_rows, src_rows, dtype, N, W, Rd, Rs))                                                               \
  X(void, copy, (float* dst, const float* src, int64_t n), (dst, src, n))
