// cblas_sgemm from OpenBLAS when it was found at load (blas.cc), else null. The CBLAS ABI:
// enums are ints with the values below (cblas.h), 32-bit indices (libopenblas, not openblas64).
#pragma once

namespace mote::cpu {

enum { kCblasRowMajor = 101, kCblasNoTrans = 111, kCblasTrans = 112 };
using SgemmFn = void (*)(int order, int trans_a, int trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                         const float* B, int ldb, float beta, float* C, int ldc);
extern const SgemmFn blas_sgemm;

}  // namespace mote::cpu
