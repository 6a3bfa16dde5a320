// CPU kernels (threaded C++). Same contracts as src/ops and kernels/cuda/kernels.h.
// Weight pointers are void* with a dtype code: 0 f32, 1 f16, 2 bf16. Accumulation is f32.
#pragma once
#include <cstdint>

namespace mote::cpu {

// y[T,N] (+)= x[T,K] · W[N,K]^T
void matmul(float* y, const float* x, const void* w, int wdtype, int T, int K, int N, bool accumulate);
// dx[T,K] (+)= dy[T,N] · W[N,K]
void matmul_grad_input(float* dx, const float* dy, const void* w, int wdtype, int T, int K, int N, bool accumulate);
// dW[N,K] (+)= dy[T,N]^T · x[T,K]
void matmul_grad_weight(float* dw, const float* dy, const float* x, int T, int K, int N, bool accumulate);

// Streams src to dst (the copy-bandwidth ceiling used by the benchmarks).
void copy(float* dst, const float* src, int64_t n);

}  // namespace mote::cpu
