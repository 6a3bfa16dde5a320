// The kernel families of a LLaMA-family transformer's forward and backward, beside the
// matmul and multi-LoRA families. Each backend implements all of them.
import type { Backend } from '../backend/backend.js';
import { BackendUnavailableError } from '../errors.js';
import type { AdamwKernels } from './adamw.js';
import type { AttentionKernels } from './attention.js';
import type { EmbeddingKernels } from './embedding.js';
import type { ResidualKernels } from './residual.js';
import type { RmsnormKernels } from './rmsnorm.js';
import type { RopeKernels } from './rope.js';
import type { SwigluKernels } from './swiglu.js';
import type { XentKernels } from './xent.js';

export interface ModelKernels extends EmbeddingKernels, RmsnormKernels, RopeKernels, AttentionKernels, SwigluKernels, ResidualKernels, XentKernels, AdamwKernels {}

/** The model kernels of a backend; a clear error while a backend still lacks them. */
export function modelKernels(b: Backend): ModelKernels {
  const k = b as unknown as Partial<ModelKernels>;
  if (typeof k.rmsnorm !== 'function') throw new BackendUnavailableError(b.kind, 'this backend does not implement the model kernels yet');
  return k as ModelKernels;
}
