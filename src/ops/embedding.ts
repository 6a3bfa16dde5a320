// Embedding gather and its gradient. Reference: src/reference/embedding.ts.
import { WEIGHT_DTYPES } from '../dtype.js';
import { ArgumentError, describe } from '../errors.js';
import type { Tensor } from '../tensor.js';
import { Checker, checkBool, checkInt, checkIntArray, checkOpts } from './check.js';

export interface EmbeddingDims {
  T: number;
  V: number;
  H: number;
}

export interface EmbeddingKernels {
  /** y[t,:] = E[ids[t],:] (ids already checked < V). */
  embedding(y: Tensor, ids: Tensor, E: Tensor, d: EmbeddingDims): void;
  /**
   * dE[v,:] (+)= Σ_{t: ids[t]=v} dy[t,:], grouped like LoRA routing: order [T] token indices
   * sorted by id (stable), segments [G+1] starts, segIds [G] the id of each segment. Rows of
   * ids absent from the batch are 0 (unchanged when accumulating). No atomics.
   */
  embeddingGrad(
    dE: Tensor,
    dy: Tensor,
    order: Tensor,
    segStart: Tensor,
    segIds: Tensor,
    G: number,
    d: EmbeddingDims,
    accumulate: boolean,
  ): void;
}

/** Checks token ids on the host: integers in [0, V). */
export function checkIds(op: string, ids: ArrayLike<number>, V: number): Int32Array {
  const out = checkIntArray(op, 'ids', ids, 0, V - 1, undefined, undefined, `a token id in [0, ${V - 1}]`);
  if (out.length === 0) throw new ArgumentError(`${op}: ids: expected a non-empty Int32Array or number[], got ${describe(ids)}`);
  return out;
}

/** Gathers rows of E [V, H] (f32/f16/bf16) for host token ids; returns f32 [T, H]. */
export function embedding(E: Tensor, ids: ArrayLike<number>): Tensor {
  const c = new Checker('embedding');
  c.tensor('E', E, { dtypes: WEIGHT_DTYPES, shape: ['V', 'H'] });
  const V = c.dim('V'),
    H = c.dim('H');
  const idv = checkIds('embedding', ids, V);
  const idt = E.backend.tensor(idv, [idv.length], 'i32');
  try {
    const y = E.backend.empty([idv.length, H]);
    E.backend.embedding(y, idt, E, { T: idv.length, V, H });
    return y;
  } finally {
    idt.dispose();
  }
}

/** dE f32 [V, H] from dy f32 [T, H] and the host ids of the forward. */
export function embeddingGrad(ids: ArrayLike<number>, dy: Tensor, V: number, options?: { out?: Tensor; accumulate?: boolean }): Tensor {
  const c = new Checker('embeddingGrad');
  const opts = checkOpts('embeddingGrad', 'opts', options);
  c.tensor('dy', dy, { dtypes: ['f32'], shape: ['T', 'H'] });
  checkInt('embeddingGrad', 'V', V, 1, 2 ** 31 - 1); // token ids are i32
  c.dims.set('V', { value: V, from: 'V' });
  const acc = checkBool('embeddingGrad', 'accumulate', opts.accumulate);
  if (acc && !opts.out) throw new ArgumentError('embeddingGrad: accumulate: needs an out tensor to add into');
  const T = c.dim('T'),
    H = c.dim('H');
  const idv = checkIds('embeddingGrad', ids, V);
  if (idv.length !== T) throw new ArgumentError(`embeddingGrad: ids: expected ${T} ids (one per row of dy), got ${idv.length}`);
  const dE = c.output('out', opts.out, ['V', 'H']);
  // group tokens by id (counting sort keeps t ascending inside a group: fixed summation order)
  const order = Int32Array.from({ length: T }, (_, t) => t).sort((a, b) => idv[a]! - idv[b]! || a - b);
  const segStart: number[] = [],
    segIds: number[] = [];
  for (let i = 0; i < T; i++) {
    if (i === 0 || idv[order[i]!]! !== idv[order[i - 1]!]!) {
      segStart.push(i);
      segIds.push(idv[order[i]!]!);
    }
  }
  segStart.push(T);
  const be = dy.backend;
  const tensors = [
    be.tensor(order, [T], 'i32'),
    be.tensor(segStart, [segStart.length], 'i32'),
    be.tensor(segIds, [segIds.length], 'i32'),
  ] as const;
  try {
    be.embeddingGrad(dE, dy, tensors[0], tensors[1], tensors[2], segIds.length, { T, V, H }, acc);
  } finally {
    for (const t of tensors) t.dispose();
  }
  return dE;
}
