// The kernel families of a LLaMA-family transformer's forward and backward, beside the
// matmul and multi-LoRA families. Each backend implements all of them.
import type { AdamwKernels } from './adamw.js';
import type { AttentionKernels } from './attention.js';
import type { CopyRowsKernels } from './copy_rows.js';
import type { EmbeddingKernels } from './embedding.js';
import type { ResidualKernels } from './residual.js';
import type { ScaleKernels } from './scale.js';
import type { RmsnormKernels } from './rmsnorm.js';
import type { RopeKernels } from './rope.js';
import type { SwigluKernels } from './swiglu.js';
import type { XentKernels } from './xent.js';

export interface ModelKernels
  extends
    EmbeddingKernels,
    RmsnormKernels,
    RopeKernels,
    AttentionKernels,
    SwigluKernels,
    ResidualKernels,
    ScaleKernels,
    XentKernels,
    AdamwKernels,
    CopyRowsKernels {}
