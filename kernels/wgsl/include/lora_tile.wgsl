// Shared by the tiled GEMMs of lora_shrink, lora_expand and lora_grad (pulled in by
// `#include`, resolved in src/backend/wgsl.ts). The tile sizes are constants prepended from
// LORA_TILE in src/backend/wgsl.ts, the same values the launches in
// src/backend/webgpu_lora.ts divide by:
//   LORA_SLOTS  slots (token, k) per sgmv tile
//   LORA_RANKS  ranks per workgroup
//   LORA_OUTS   outputs (h) per workgroup
//   LORA_STEP   reduction step: h (shrink), r (expand) or slots (grad) staged per pass
// Every invocation of a tiled GEMM owns a 4×4 block of outputs, rows and columns strided by
// a quarter of the tile so that neighbouring invocations read neighbouring words.
const_assert LORA_SLOTS % 4u == 0u && LORA_RANKS % 4u == 0u && LORA_OUTS % 4u == 0u;

// acc[i][j] of the 4×4 block is acc[i][j]
alias Tile4 = array<vec4f, 4>;

// acc[i][j] = fma(a[i], b[j], acc[i][j])
fn tile_fma(acc: ptr<function, Tile4>, a: vec4f, b: vec4f) {
  for (var i = 0u; i < 4u; i++) { (*acc)[i] = fma(vec4f(a[i]), b, (*acc)[i]); }
}
