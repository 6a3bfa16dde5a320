// matmul family on the CPU: y = x·Wᵀ, dx = dy·W, dW = dyᵀ·x, f32 accumulation.
#include <algorithm>
#include <cstring>
#include <vector>

#include "blas.h"
#include "half.h"
#include "kernels.h"
#include "simd.h"
#include "threads.h"

namespace MOTE_CPU_KERNEL_NS {
namespace {

constexpr int kRows = 4;  // W rows per micro-kernel: each x load feeds 4 dot products

// OpenBLAS (when found at load, blas.cc) pays off once W is reused by enough rows; below that
// (decode) the kernels here stream W once at memory speed, which is the bound.
constexpr int kBlasMinRows = 16;

}  // namespace

void matmul(float* y, const float* x, const void* w, int wdtype, int T, int K, int N, bool accumulate) {
  if (blas_sgemm && wdtype == 0 && T >= kBlasMinRows) {
    blas_sgemm(kCblasRowMajor, kCblasNoTrans, kCblasTrans, T, N, K, 1.f, x, K, static_cast<const float*>(w), K,
               accumulate ? 1.f : 0.f, y, N);
    return;
  }
  // Parallel over blocks of W rows: every W byte is read once (decode is bandwidth-bound),
  // converted to f32 once per block, then reused for every token in cache-sized token tiles.
  const int block = 16;
  const int tTile = 64;
  size_t nBlocks = size_t((N + block - 1) / block);
  parallel_for(nBlocks, 1, [&](size_t b0, size_t b1) {
    std::vector<float> scratch(wdtype == 0 ? 0 : size_t(block) * K);
    for (size_t b = b0; b < b1; b++) {
      int n0 = int(b) * block, n1 = std::min(N, n0 + block);
      const float* wf;
      if (wdtype == 0) {
        wf = static_cast<const float*>(w) + size_t(n0) * K;
      } else {
        to_f32(scratch.data(), w, wdtype, size_t(n0) * K, size_t(n1 - n0) * K);
        wf = scratch.data();
      }
      for (int t0 = 0; t0 < T; t0 += tTile) {
        int t1 = std::min(T, t0 + tTile);
        int n = n0;
        for (; n + kRows <= n1; n += kRows) {
          const float* r = wf + size_t(n - n0) * K;
          for (int t = t0; t < t1; t++) {
            float o[4];
            dot4<0>(r, size_t(K), x + size_t(t) * K, K, o);
            float* yr = y + size_t(t) * N + n;
            for (int j = 0; j < kRows; j++) yr[j] = accumulate ? yr[j] + o[j] : o[j];
          }
        }
        for (; n < n1; n++) {
          const float* r = wf + size_t(n - n0) * K;
          for (int t = t0; t < t1; t++) {
            float o = dot1<0>(r, x + size_t(t) * K, K);
            float& yv = y[size_t(t) * N + n];
            yv = accumulate ? yv + o : o;
          }
        }
      }
    }
  });
}

void matmul_grad_input(float* dx, const float* dy, const void* w, int wdtype, int T, int K, int N, bool accumulate) {
  if (blas_sgemm && wdtype == 0 && T >= kBlasMinRows) {
    blas_sgemm(kCblasRowMajor, kCblasNoTrans, kCblasNoTrans, T, K, N, 1.f, dy, N, static_cast<const float*>(w), K,
               accumulate ? 1.f : 0.f, dx, K);
    return;
  }
  // Register-tiled: a task owns a [TB rows × KC columns] tile of dx and walks W in blocks of NB
  // rows (converted to f32 and packed KC wide, so the block stays in L1/L2); the micro-kernel
  // keeps 4 rows × 16 columns of sums in registers. Every dx element is summed over n in
  // ascending order (sums carry over between blocks), so the result does not depend on the
  // tiling or the thread count.
  constexpr int KC = 64, NB = 128, TB = 64, MR = 4, NR = 16;
  const size_t kChunks = size_t((K + KC - 1) / KC), tBlocks = size_t((T + TB - 1) / TB);
  parallel_for(kChunks * tBlocks, 1, [&](size_t a, size_t b) {
    std::vector<float> wblk(size_t(NB) * KC);
    std::vector<float> acc(size_t(TB) * KC);
    for (size_t task = a; task < b; task++) {
      const int k0 = int(task % kChunks) * KC, kc = std::min(KC, K - k0);
      const int t0 = int(task / kChunks) * TB, tn = std::min(TB, T - t0);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int n0 = 0; n0 < N; n0 += NB) {
        const int nb = std::min(NB, N - n0);
        for (int i = 0; i < nb; i++) {
          float* row = wblk.data() + size_t(i) * KC;
          to_f32(row, w, wdtype, size_t(n0 + i) * K + k0, size_t(kc));
          if (kc < KC) std::fill(row + kc, row + KC, 0.f);
        }
        for (int j0 = 0; j0 < kc; j0 += NR) {
          int t = 0;
          for (; t + MR <= tn; t += MR) {
            float c[MR][NR];
            for (int i = 0; i < MR; i++)
              for (int j = 0; j < NR; j++) c[i][j] = acc[size_t(t + i) * KC + j0 + j];
            const float* g = dy + size_t(t0 + t) * N + n0;
            for (int n = 0; n < nb; n++) {
              const float* wr = wblk.data() + size_t(n) * KC + j0;
              for (int i = 0; i < MR; i++) {
                const float gv = g[size_t(i) * N + n];
#pragma omp simd
                for (int j = 0; j < NR; j++) c[i][j] += gv * wr[j];
              }
            }
            for (int i = 0; i < MR; i++)
              for (int j = 0; j < NR; j++) acc[size_t(t + i) * KC + j0 + j] = c[i][j];
          }
          for (; t < tn; t++) {
            float c[NR];
            for (int j = 0; j < NR; j++) c[j] = acc[size_t(t) * KC + j0 + j];
            const float* g = dy + size_t(t0 + t) * N + n0;
            for (int n = 0; n < nb; n++) {
              const float* wr = wblk.data() + size_t(n) * KC + j0;
#pragma omp simd
              for (int j = 0; j < NR; j++) c[j] += g[n] * wr[j];
            }
            for (int j = 0; j < NR; j++) acc[size_t(t) * KC + j0 + j] = c[j];
          }
        }
      }
      for (int t = 0; t < tn; t++) {
        float* d = dx + size_t(t0 + t) * K + k0;
        const float* s = acc.data() + size_t(t) * KC;
        if (accumulate)
          for (int i = 0; i < kc; i++) d[i] += s[i];
        else
          std::memcpy(d, s, size_t(kc) * 4);
      }
    }
  });
}

void matmul_grad_weight(float* dw, const float* dy, const float* x, int T, int K, int N, bool accumulate) {
  if (blas_sgemm && T >= kBlasMinRows) {
    blas_sgemm(kCblasRowMajor, kCblasTrans, kCblasNoTrans, N, K, T, 1.f, dy, N, x, K, accumulate ? 1.f : 0.f, dw, K);
    return;
  }
  // Parallel over rows of dW; each row is Σ_t dy[t,n]·x[t,:], t ascending.
  parallel_for(size_t(N), 4, [&](size_t n0, size_t n1) {
    std::vector<float> acc(K);
    for (size_t n = n0; n < n1; n++) {
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int t = 0; t < T; t++) {
        float g = dy[size_t(t) * N + n];
        axpy(acc.data(), g, x + size_t(t) * K, K);
      }
      float* d = dw + n * size_t(K);
      if (accumulate)
        for (int k = 0; k < K; k++) d[k] += acc[k];
      else
        std::memcpy(d, acc.data(), size_t(K) * 4);
    }
  });
}

void copy(float* dst, const float* src, int64_t n) {
  parallel_for(size_t(n), 1 << 16, [&](size_t b, size_t e) { std::memcpy(dst + b, src + b, (e - b) * 4); });
}

}  // namespace MOTE_CPU_KERNEL_NS
