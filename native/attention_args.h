/* Arguments of the attention family (CPU and CUDA). Plain C so that both native/cpu/kernels.h
 * and kernels/cuda/kernels.h can take it. All pointers live on the device that runs the kernel.
 * Contracts: src/ops/attention.ts (AttentionKernels). */
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mote_attention_args {
  int Tq, Tk, nH, nKv, D, S, num_seqs;
  float scale;
  const int *q_seq, *q_pos, *k_seq, *k_pos, *q_seg, *k_seg, *blocked; /* i32 layout arrays */
  /* i32 [2·Tq + 2·Tk + 2·num_runs]: per query (first, count) of its key runs, per key (first,
   * count) of its query runs, then num_runs (start, end) pairs (src/ops/attention.ts). */
  const int* ranges;
  int num_runs;
} mote_attention_args;

#ifdef __cplusplus
}
#endif
