/* C ABI of the CUDA kernels. Every launcher returns a cudaError_t code (0 = success)
 * and never aborts; the host side turns codes into exceptions. Pointers are device
 * pointers; `stream` is a cudaStream_t (NULL = default stream). Same contracts as
 * native/cpu/kernels.h. */
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { MOTE_F32 = 0, MOTE_F16 = 1, MOTE_BF16 = 2, MOTE_I32 = 3 };

/* y[T,N] (+)= x[T,K] · W[N,K]^T, W of dtype wdtype (f32/f16/bf16) */
int mote_cuda_matmul(float* y, const float* x, const void* w, int wdtype, int T, int K, int N, int accumulate, void* stream);
/* dx[T,K] (+)= dy[T,N] · W[N,K] */
int mote_cuda_matmul_grad_input(float* dx, const float* dy, const void* w, int wdtype, int T, int K, int N, int accumulate, void* stream);
/* dW[N,K] (+)= dy[T,N]^T · x[T,K] */
int mote_cuda_matmul_grad_weight(float* dw, const float* dy, const float* x, int T, int K, int N, int accumulate, void* stream);
/* dst[0..n) = src[0..n) (bandwidth ceiling for the benchmarks) */
int mote_cuda_copy(float* dst, const float* src, int64_t n, void* stream);

#ifdef __cplusplus
}
#endif
