/* Arguments shared by every multi-LoRA kernel (CPU and CUDA). Plain C so that both
 * native/cpu/kernels.h and kernels/cuda/kernels.h can take it. All pointers live on the
 * device that runs the kernel. Contracts: src/ops/lora.ts (LoraKernels). */
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mote_lora_args {
  int T, K, L, R, Hin, Hout;
  const int* slots;       /* [T*K] adapter of slot (t,k), -1 = none */
  const float* weight;    /* [T*K] mixing weight of slot (t,k) */
  const int* order;       /* [P] t*K+k of every non-empty slot, sorted by adapter (stable) */
  const int* seg_start;   /* [G+1] segment g of order is [seg_start[g], seg_start[g+1]) */
  const int* seg_adapter; /* [G] adapter of segment g, ascending */
  int P, G;               /* non-empty slots; distinct adapters */
  const void* A;          /* [L, R, Hin] of dtype a_dtype (0 f32, 1 f16, 2 bf16) */
  int a_dtype;
  const void* B; /* [L, Hout, R] of dtype b_dtype */
  int b_dtype;
  const int* rank;    /* [L], 1 <= rank[e] <= R */
  const float* scale; /* [L] */
  int strategy;       /* 0 = per token (BGMV), 1 = grouped by adapter (SGMV) */
} mote_lora_args;

#ifdef __cplusplus
}
#endif
