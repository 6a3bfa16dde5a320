// rmsnorm family on the CPU (HF LlamaRMSNorm); contracts in src/ops/rmsnorm.ts (RmsnormKernels).
//   x, y, dy, dx: [T, H] f32; w: [H] f32/f16/bf16; rstd: [T] f32; dw: [H] f32.
//   rstd[t] = 1/sqrt(mean_h x² + eps)        (the mean in double)
//   y       = x·rstd·w
//   dx      = rstd·dy·w − rstd³·x·(Σ_h dy·w·x)/H   (in double)
//   dw[h]  (+)= Σ_t dy·x·rstd                 (one owner per column chunk, t ascending, double)
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "half.h"
#include "kernels.h"
#include "threads.h"

namespace MOTE_CPU_KERNEL_NS {
namespace {

// w as f32: the pointer itself for f32, else a converted copy.
const float* weights_f32(const void* w, int wdtype, int H, std::vector<float>& buf) {
  if (wdtype == 0) return static_cast<const float*>(w);
  buf.resize(size_t(H));
  to_f32(buf.data(), w, wdtype, 0, size_t(H));
  return buf.data();
}

}  // namespace

void rmsnorm(float* y, float* rstd, const float* x, const void* w, int wdtype, int T, int H, float eps) {
  std::vector<float> wbuf;
  const float* wf = weights_f32(w, wdtype, H, wbuf);
  const size_t Hs = size_t(H);
  const size_t grain = std::max<size_t>(1, size_t(8192) / Hs);
  parallel_for(size_t(T), grain, [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; t++) {
      const float* xr = x + t * Hs;
      double ss = 0;
#pragma omp simd reduction(+ : ss)
      for (size_t h = 0; h < Hs; h++) ss += double(xr[h]) * double(xr[h]);
      const float r = float(1.0 / std::sqrt(ss / double(H) + double(eps)));
      rstd[t] = r;
      float* yr = y + t * Hs;
#pragma omp simd
      for (size_t h = 0; h < Hs; h++) yr[h] = xr[h] * r * wf[h];
    }
  });
}

void rmsnorm_grad(float* dx, float* dw, const float* dy, const float* x, const void* w, int wdtype, const float* rstd,
                  int T, int H, bool accumulate_dw) {
  std::vector<float> wbuf;
  const float* wf = weights_f32(w, wdtype, H, wbuf);
  const size_t Hs = size_t(H);
  // dx: one row per work item
  parallel_for(size_t(T), std::max<size_t>(1, size_t(8192) / Hs), [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; t++) {
      const float* xr = x + t * Hs;
      const float* gr = dy + t * Hs;
      double gx = 0;
#pragma omp simd reduction(+ : gx)
      for (size_t h = 0; h < Hs; h++) gx += double(gr[h]) * double(wf[h]) * double(xr[h]);
      const double rd = double(rstd[t]);
      const double c = rd * rd * rd * gx / double(H);
      float* o = dx + t * Hs;
      // in double: the two terms may nearly cancel
#pragma omp simd
      for (size_t h = 0; h < Hs; h++) o[h] = float(rd * double(gr[h]) * double(wf[h]) - c * double(xr[h]));
    }
  });
  // dw: column chunks; inside one, t ascending
  constexpr size_t kCols = 256;
  const size_t chunks = (Hs + kCols - 1) / kCols;
  parallel_for(chunks, 1, [&](size_t c0, size_t c1) {
    double acc[kCols];
    for (size_t c = c0; c < c1; c++) {
      const size_t h0 = c * kCols, n = std::min(kCols, Hs - h0);
      std::fill(acc, acc + n, 0.0);
      for (size_t t = 0; t < size_t(T); t++) {
        const float* xr = x + t * Hs + h0;
        const float* gr = dy + t * Hs + h0;
        const double r = double(rstd[t]);
#pragma omp simd
        for (size_t j = 0; j < n; j++) acc[j] += double(gr[j]) * double(xr[j]) * r;
      }
      float* o = dw + h0;
      if (accumulate_dw)
        for (size_t j = 0; j < n; j++) o[j] = float(double(o[j]) + acc[j]);
      else
        for (size_t j = 0; j < n; j++) o[j] = float(acc[j]);
    }
  });
}

}  // namespace MOTE_CPU_KERNEL_NS
