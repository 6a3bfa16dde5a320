// Every op (the kernel families' contracts), exported by both entries (src/index.ts, src/web/index.ts).
export { matmul, matmulGradInput, matmulGradWeight, type MatmulDims, type AccumulateOptions } from './matmul.js';
export {
  loraRouting,
  loraStack,
  loraShrink,
  loraExpand,
  loraApply,
  loraShrinkGrad,
  loraInputGrad,
  loraWeightGrad,
  chooseStrategy,
  LoraRouting,
  type LoraStack,
  type LoraDims,
  type LoraStrategy,
  type LoraOptions,
  type LoraKernels,
} from './lora.js';
export {
  MultiLoraLinear,
  type MultiLoraForward,
  type MultiLoraGrads,
  type GradTarget,
  type LinearGradTargets,
  type LinearPassOptions,
} from './multi_lora_linear.js';
export { embedding, embeddingGrad } from './embedding.js';
export { copyRows, rowMap, RowMap, type CopyRowsDims, type CopyRowsKernels } from './copy_rows.js';
export { rmsnorm, rmsnormGrad } from './rmsnorm.js';
export { rope, ropeGrad } from './rope.js';
export { attention, attentionGrad, attentionLayout, AttentionLayout, type AttentionLayoutInit } from './attention.js';
export { swiglu, swigluGrad } from './swiglu.js';
export { add } from './residual.js';
export { scale } from './scale.js';
export { logSoftmax, xent, xentGrad } from './xent.js';
export { adamw, adamwScalars, sumSquares, type AdamwOptions, type AdamwScalars } from './adamw.js';
