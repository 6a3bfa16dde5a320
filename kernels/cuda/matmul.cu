// matmul family in CUDA: one tiled GEMM, C[M,N] (+)= A(m,k)·B(k,n), with A and B read
// through strides so the same kernel serves y = x·Wᵀ, dx = dy·W and dW = dyᵀ·x.
// B may be f32, f16 or bf16 (weights); A is always f32; accumulation is f32.
#include "common.cuh"
#include "kernels.h"

namespace {

using namespace mote_cu;

constexpr int TILE = 64;  // C tile is TILE x TILE
constexpr int KT = 16;    // k slice per shared-memory stage
constexpr int TPT = 4;    // each thread computes TPT x TPT outputs; 16x16 threads

template <int DT>
__global__ void gemm_strided(float* __restrict__ C, const float* __restrict__ A,
                             const typename Wt<DT>::S* __restrict__ B, int M, int N, int Kd, long long sam,
                             long long sak, long long sbk, long long sbn, int accumulate) {
  __shared__ float As[KT][TILE + 1];
  __shared__ float Bs[KT][TILE + 1];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
  const int n0 = blockIdx.x * TILE;
  // row tiles past gridDim.y (≤ 65535) are taken in turn: M may pass 65535 tiles
  for (long long my = blockIdx.y; my * TILE < M; my += gridDim.y) {
    const int m0 = int(my * TILE);
    float acc[TPT][TPT] = {};
    for (int k0 = 0; k0 < Kd; k0 += KT) {
      for (int i = tid; i < KT * TILE; i += 256) {
        int kk = i / TILE, mm = i % TILE;
        int m = m0 + mm, k = k0 + kk;
        As[kk][mm] = (m < M && k < Kd) ? A[m * sam + k * sak] : 0.f;
        int n = n0 + mm;
        Bs[kk][mm] = (n < N && k < Kd) ? ldw<DT>(B, k * sbk + n * sbn) : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < KT; kk++) {
        float a[TPT], b[TPT];
#pragma unroll
        for (int i = 0; i < TPT; i++) a[i] = As[kk][ty * TPT + i];
#pragma unroll
        for (int j = 0; j < TPT; j++) b[j] = Bs[kk][tx * TPT + j];
#pragma unroll
        for (int i = 0; i < TPT; i++)
#pragma unroll
          for (int j = 0; j < TPT; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TPT; i++) {
      int m = m0 + ty * TPT + i;
      if (m >= M) continue;
#pragma unroll
      for (int j = 0; j < TPT; j++) {
        int n = n0 + tx * TPT + j;
        if (n >= N) continue;
        float* c = C + (long long)m * N + n;
        *c = accumulate ? *c + acc[i][j] : acc[i][j];
      }
    }
  }
}

template <int DT>
int launch(float* C, const float* A, const void* B, int M, int N, int Kd, long long sam, long long sak, long long sbk,
           long long sbn, int accumulate, void* stream) {
  if (M <= 0 || N <= 0) return int(cudaGetLastError());  // nothing to write (an empty grid is a launch error)
  dim3 block(16, 16), grid(grid_dim((N + TILE - 1) / TILE, 2147483647LL), grid_dim((M + TILE - 1) / TILE));
  MOTE_LAUNCH(grid, block, 0, static_cast<cudaStream_t>(stream), gemm_strided<DT>)
  (C, A, static_cast<const typename Wt<DT>::S*>(B), M, N, Kd, sam, sak, sbk, sbn, accumulate);
  return int(cudaGetLastError());
}

int dispatch(int dtype, float* C, const float* A, const void* B, int M, int N, int Kd, long long sam, long long sak,
             long long sbk, long long sbn, int accumulate, void* stream){
    MOTE_WEIGHT_DISPATCH(dtype, launch, C, A, B, M, N, Kd, sam, sak, sbk, sbn, accumulate, stream)}

__global__ void copy_kernel(float4* __restrict__ d, const float4* __restrict__ s, long long n4) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4; i += (long long)gridDim.x * blockDim.x)
    d[i] = s[i];
}

}  // namespace

extern "C" int mote_cuda_matmul(float* y, const float* x, const void* w, int wdtype, int T, int K, int N,
                                int accumulate, void* stream) {
  // C = y [T,N]; A = x (m=t, k) ; B(k, n) = W[n*K + k]
  return dispatch(wdtype, y, x, w, T, N, K, K, 1, 1, K, accumulate, stream);
}

extern "C" int mote_cuda_matmul_grad_input(float* dx, const float* dy, const void* w, int wdtype, int T, int K, int N,
                                           int accumulate, void* stream) {
  // C = dx [T,K]; A = dy (m=t, k=n); B(k=n, n'=kcol) = W[n*K + kcol]
  return dispatch(wdtype, dx, dy, w, T, K, N, N, 1, K, 1, accumulate, stream);
}

extern "C" int mote_cuda_matmul_grad_weight(float* dw, const float* dy, const float* x, int T, int K, int N,
                                            int accumulate, void* stream) {
  // C = dW [N,K]; A(m=n, k=t) = dy[t*N + n]; B(k=t, n'=kcol) = x[t*K + kcol]
  return dispatch(MOTE_F32, dw, dy, x, N, K, T, 1, N, K, 1, accumulate, stream);
}

extern "C" int mote_cuda_copy(float* dst, const float* src, int64_t n, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  // float4 copies need 16-byte aligned ends (whole cudaMalloc buffers are; views may not be)
  if (!aligned16(dst) || !aligned16(src))
    return int(cudaMemcpyAsync(dst, src, size_t(n) * 4, cudaMemcpyDeviceToDevice, s));
  long long n4 = n / 4;
  if (n4 > 0)
    MOTE_LAUNCH(1024, 256, 0, s, copy_kernel)(reinterpret_cast<float4*>(dst), reinterpret_cast<const float4*>(src), n4);
  if (n % 4) cudaMemcpyAsync(dst + n4 * 4, src + n4 * 4, (n % 4) * 4, cudaMemcpyDeviceToDevice, s);
  return int(cudaGetLastError());
}
