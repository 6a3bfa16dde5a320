// Multi-slot LoRA family (DESIGN §4). Layouts follow PEFT:
//   A: [L, R, H_in]  (lora_A.weight per adapter is [r, in])
//   B: [L, H_out, R] (lora_B.weight per adapter is [out, r])
//   rank: i32 [L] (1 ≤ rank[e] ≤ R; work past an adapter's own rank is skipped)
//   scale: f32 [L] (alpha / r)
// Routing: slots i32 [T, K] (-1 = none), weight f32 [T, K].
import { WEIGHT_DTYPES } from '../dtype.js';
import { ArgumentError, ShapeError, describe } from '../errors.js';
import type { Tensor } from '../tensor.js';
import type { Backend } from '../backend/backend.js';
import { Checker, checkBackend, checkBool, checkFloatArray, checkInt, checkIntArray, checkObject, checkOpts } from './check.js';
import { copyRows, RowMap, UNSEAL } from './copy_rows.js';

/** Sizes of one multi-LoRA call. */
export interface LoraDims {
  T: number; // tokens
  K: number; // slots per token
  L: number; // adapters in the stack
  R: number; // max rank (stride of A and B)
  Hin: number;
  Hout: number;
}

/** Per-token (BGMV, decode) or grouped by adapter (SGMV, prefill and training). */
export type LoraStrategy = 'bgmv' | 'sgmv';

/**
 * Routing of one batch, built on the host from slots (like vLLM's LoRA metadata):
 * the per-token form and the grouped form, both on the device.
 */
export class LoraRouting {
  /** i32 [T, K] */
  readonly slots: Tensor;
  /** f32 [T, K] */
  readonly weight: Tensor;
  /** i32 [P]: indices t*K + k of every non-empty slot, sorted by adapter (stable: t, then k ascending). */
  readonly order: Tensor;
  /** i32 [G + 1]: segment g of `order` is [segStart[g], segStart[g+1]). */
  readonly segStart: Tensor;
  /** i32 [G]: the adapter of segment g (ascending). */
  readonly segAdapter: Tensor;
  /** Host copies (the kernels' launch sizes come from these). */
  readonly host: {
    slots: Int32Array;
    weight: Float32Array;
    order: Int32Array;
    segStart: Int32Array;
    segAdapter: Int32Array;
    /** count per adapter, length L */
    counts: Int32Array;
  };

  constructor(
    readonly backend: Backend,
    readonly T: number,
    readonly K: number,
    readonly L: number,
    slots: Int32Array,
    weight: Float32Array,
  ) {
    const counts = new Int32Array(L);
    for (let i = 0; i < T * K; i++) {
      const s = slots[i]!;
      if (!Number.isInteger(s) || s < -1 || s >= L) {
        throw new ArgumentError(
          `loraRouting: slots[${Math.floor(i / K)}, ${i % K}] (token ${Math.floor(i / K)}): expected an adapter index in [-1, ${L - 1}], got ${s}`,
        );
      }
      const w = weight[i]!;
      if (!Number.isFinite(w))
        throw new ArgumentError(
          `loraRouting: weight[${Math.floor(i / K)}, ${i % K}] (token ${Math.floor(i / K)}): expected a finite number, got ${w}`,
        );
      if (s >= 0) counts[s]!++;
    }
    const segAdapter: number[] = [];
    const segStart: number[] = [0];
    const offset = new Int32Array(L);
    let p = 0;
    for (let e = 0; e < L; e++) {
      if (counts[e]! === 0) continue;
      segAdapter.push(e);
      offset[e] = p;
      p += counts[e]!;
      segStart.push(p);
    }
    const order = new Int32Array(Math.max(1, p));
    const fill = offset.slice();
    for (let i = 0; i < T * K; i++) {
      const s = slots[i]!;
      if (s >= 0) order[fill[s]!++] = i;
    }
    const segA = Int32Array.from(segAdapter.length ? segAdapter : [0]);
    const segS = Int32Array.from(segStart);
    this.host = { slots, weight, order: order.subarray(0, p), segStart: segS, segAdapter: Int32Array.from(segAdapter), counts };
    this.slots = backend.tensor(slots, [T, K], 'i32').seal();
    this.weight = backend.tensor(weight, [T, K], 'f32').seal();
    this.order = backend.tensor(order, [order.length], 'i32').seal();
    this.segStart = backend.tensor(segS, [segS.length], 'i32').seal();
    this.segAdapter = backend.tensor(segA, [segA.length], 'i32').seal();
    this.#built = [this.slots, this.weight, this.order, this.segStart, this.segAdapter];
  }

  /** The tensors the constructor built from the checked host copies: the kernels trust their contents. */
  readonly #built: readonly Tensor[];

  /**
   * Throws when a routing tensor is not the one built from the checked host copy (replaced
   * after construction): cpu would reject bad contents, a GPU kernel would trust them.
   */
  checkIntact(op: string): void {
    const b = this.#built;
    if (this.slots === b[0] && this.weight === b[1] && this.order === b[2] && this.segStart === b[3] && this.segAdapter === b[4]) return;
    const names = ['slots', 'weight', 'order', 'segStart', 'segAdapter'] as const;
    names.forEach((n, i) => {
      if (this[n] !== b[i])
        throw new ArgumentError(
          `${op}: routing.${n}: expected the tensor loraRouting() built from the checked slots, got one put in its place`,
        );
    });
  }

  /** Number of non-empty slots. */
  get pairs(): number {
    return this.host.order.length;
  }
  /** Number of distinct adapters in the batch. */
  get groups(): number {
    return this.host.segAdapter.length;
  }

  readonly #attached: Tensor[] = [];

  /** Ties a backend's derived metadata (e.g. a tile table) to this routing's lifetime. */
  attach(t: Tensor): Tensor {
    this.#attached.push(t);
    return t;
  }

  dispose(): void {
    for (const t of [this.slots, this.weight, this.order, this.segStart, this.segAdapter, ...this.#attached]) t.dispose();
    this.#attached.length = 0;
  }

  /** dispose(), for `using`: the LoraRouting is freed when its block ends. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Most adapters one routing may address (its per-adapter tables are sized by L): 2^16. */
export const MAX_LORA_ADAPTERS = 1 << 16;
/** Highest LoRA rank createLora / createMote accept (an adapter's factors are sized by it; PEFT ranks are at most a few hundred). */
export const MAX_LORA_RANK = 4096;
/** Most slots per token: MoTE uses 2; 64 leaves room for any mixing scheme. */
export const MAX_LORA_SLOTS = 64;

/**
 * Builds the routing of a batch. slots: T·K adapter indices (−1 = none); weight: T·K
 * mixing weights (default 1). MoTE: K = 2, [step expert, shared], weights [α, 1 − α].
 */
export function loraRouting(
  backend: Backend,
  slots: Int32Array | readonly number[],
  opts: { K: number; L: number; weight?: Float32Array | readonly number[] },
): LoraRouting {
  const op = 'loraRouting';
  checkBackend(op, 'backend', backend);
  checkObject(op, 'opts', opts, 'an options object with K and L');
  // The routing allocates per-adapter tables of length L: bound it before anything is sized by it.
  const K = checkInt(op, 'K', opts.K, 1, MAX_LORA_SLOTS);
  const L = checkInt(op, 'L', opts.L, 1, MAX_LORA_ADAPTERS);
  const at = (i: number) => `[${Math.floor(i / K)}, ${i % K}] (token ${Math.floor(i / K)})`;
  // every entry checked as given: 2^32 or 1.5 must not wrap through an Int32Array into a valid slot
  const s = checkIntArray(op, 'slots', slots, -1, L - 1, undefined, at);
  if (s.length === 0 || s.length % K !== 0) throw new ShapeError(`${op}: slots: expected T·K entries with K = ${K}, got ${s.length}`);
  const T = s.length / K;
  const w = opts.weight === undefined ? new Float32Array(T * K).fill(1) : checkFloatArray(op, 'weight', opts.weight, T * K, at);
  return new LoraRouting(backend, T, K, L, s, w);
}

/** The adapter stack of one linear layer. */
export interface LoraStack {
  /** [L, R, H_in], f32/f16/bf16 */
  A: Tensor;
  /** [L, H_out, R], f32/f16/bf16 */
  B: Tensor;
  /** i32 [L] */
  rank: Tensor;
  /** f32 [L] */
  scale: Tensor;
  /** Host copy of rank, checked against R. */
  ranks: Int32Array;
}

export interface LoraKernels {
  /** v[t,k,r] = A[e]·x[t] for r < rank(e); 0 for r ≥ rank(e) and for empty slots. v: f32 [T, K, R]. */
  loraShrink(v: Tensor, x: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy): void;
  /** y[t] += Σ_k weight[t,k]·scale[e]·B[e]·v[t,k] (only r < rank(e) read). */
  loraExpand(y: Tensor, v: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy): void;
  /** y[t] += Σ_k weight·scale·B[e]·A[e]·x[t]; writes v (the shrink output, kept for backward). */
  loraApply(y: Tensor, v: Tensor, x: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy): void;
  /** dv[t,k,r] = weight·scale·(B[e]ᵀ·dy[t])[r] for r < rank(e); 0 beyond rank and for empty slots. */
  loraShrinkGrad(dv: Tensor, dy: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy): void;
  /** dx[t] (+)= Σ_k A[e]ᵀ·dv[t,k] (dx overwritten unless accumulate). */
  loraInputGrad(dx: Tensor, dv: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy, accumulate: boolean): void;
  /**
   * Grouped GEMMs, no atomics: dA[e][r,:] (+)= Σ_{(t,k)→e} dv[t,k,r]·x[t];
   * dB[e][o,r] (+)= Σ_{(t,k)→e} weight·scale·dy[t,o]·v[t,k,r]. dA f32 [L,R,H_in], dB f32 [L,H_out,R].
   * Entries of adapters absent from the batch, and past an adapter's rank, are 0 (or unchanged when accumulating).
   */
  loraWeightGrad(
    dA: Tensor,
    dB: Tensor,
    x: Tensor,
    dy: Tensor,
    v: Tensor,
    dv: Tensor,
    s: LoraStack,
    rt: LoraRouting,
    d: LoraDims,
    accumulate: boolean,
  ): void;
}

/** A private copy of the checked contents of every rank tensor loraStack() built (the host copy the checks use). */
const checkedRanks = new WeakMap<Tensor, Int32Array>();

/** Builds a checked adapter stack. ranks: host copy of rank (default: R for every adapter). */
export function loraStack(
  A: Tensor,
  B: Tensor,
  options?: { rank?: Int32Array | readonly number[]; scale?: Float32Array | readonly number[] },
): LoraStack {
  const c = new Checker('loraStack');
  const opts = checkOpts('loraStack', 'opts', options);
  c.tensor('A', A, { dtypes: WEIGHT_DTYPES, shape: ['L', 'R', 'Hin'] });
  c.tensor('B', B, { dtypes: WEIGHT_DTYPES, shape: ['L', 'Hout', 'R'] });
  const L = c.dim('L'),
    R = c.dim('R');
  const ranks = opts.rank === undefined ? new Int32Array(L).fill(R) : checkIntArray('loraStack', 'rank', opts.rank, 1, R, L);
  const scales = opts.scale === undefined ? new Float32Array(L).fill(1) : checkFloatArray('loraStack', 'scale', opts.scale, L);
  const be = A.backend;
  const rank = be.tensor(ranks, [L], 'i32').seal();
  checkedRanks.set(rank, ranks.slice());
  try {
    return { A, B, rank, scale: be.tensor(scales, [L], 'f32'), ranks };
  } catch (e) {
    rank.dispose();
    throw e;
  }
}

/**
 * Overwrites some adapters of a stack in place (an adapter pool's page-in, DESIGN §8): for
 * every pair i of `rows`, adapter e = dstRows[i] of `s` gets source adapter j = srcRows[i]:
 * A[e] = src.A[j], B[e] = src.B[j], rank[e] = src.rank[j], scale[e] = src.scale[j]. src.A
 * [n, R, H_in] and src.B [n, H_out, R] have the stack's R, H_in, H_out and dtypes; rank and
 * scale are host arrays of n entries (1 ≤ rank ≤ R). Adapters not named keep their tensors
 * untouched; the host copies the checks use follow. Run it between forwards (not while a
 * kernel reads the stack).
 */
export function loraStackWrite(
  s: LoraStack,
  rows: RowMap,
  src: { A: Tensor; B: Tensor; rank: ArrayLike<number>; scale: ArrayLike<number> },
): void {
  const op = 'loraStackWrite';
  const c = new Checker(op);
  checkObject(op, 'stack', s, 'a LoraStack from loraStack()');
  c.tensor('stack.A', s.A, { dtypes: WEIGHT_DTYPES, shape: ['L', 'R', 'Hin'] });
  c.tensor('stack.B', s.B, { dtypes: WEIGHT_DTYPES, shape: ['L', 'Hout', 'R'] });
  c.tensor('src.A', src.A, { dtypes: [s.A.dtype], shape: ['n', 'R', 'Hin'] });
  c.tensor('src.B', src.B, { dtypes: [s.B.dtype], shape: ['n', 'Hout', 'R'] });
  const n = c.dim('n'),
    R = c.dim('R');
  const ranks = checkIntArray(op, 'src.rank', src.rank, 1, R, n);
  const scales = checkFloatArray(op, 'src.scale', src.scale, n);
  const held = checkedRanks.get(s.rank);
  if (!held) throw new ArgumentError(`${op}: stack.rank: expected the rank tensor of a loraStack(), got a tensor it did not build`);
  if (!(rows instanceof RowMap)) throw new ArgumentError(`${op}: rows: expected a RowMap from rowMap(), got ${describe(rows)}`);
  const be = s.A.backend;
  const rank = be.tensor(ranks, [n], 'i32');
  try {
    const scale = be.tensor(scales, [n], 'f32');
    try {
      // copyRows checks every index against both sides before it copies anything
      copyRows(s.A, src.A, rows);
      copyRows(s.B, src.B, rows);
      copyRows(s.rank, rank, rows, UNSEAL);
      copyRows(s.scale, scale, rows);
    } finally {
      scale.dispose();
    }
  } finally {
    rank.dispose();
  }
  for (let i = 0; i < rows.N; i++) {
    const e = rows.dstRows[i]!;
    held[e] = ranks[rows.srcRows[i]!]!;
    s.ranks[e] = held[e]!;
  }
}

export interface LoraOptions {
  /** Force a strategy; default: chosen from T and the number of distinct adapters. */
  strategy?: LoraStrategy | 'auto';
}

/** SGMV pays off once each adapter's weights are reused by several tokens. */
export function chooseStrategy(rt: LoraRouting, requested: LoraStrategy | 'auto' | undefined): LoraStrategy {
  if (requested === 'bgmv' || requested === 'sgmv') return requested;
  if (requested !== undefined && requested !== 'auto')
    throw new ArgumentError(`lora: strategy: expected 'bgmv', 'sgmv' or 'auto', got ${describe(requested)}`);
  return rt.pairs >= 4 * Math.max(1, rt.groups) ? 'sgmv' : 'bgmv';
}

function checkAll(
  op: string,
  s: LoraStack,
  rt: LoraRouting,
  tensors: Record<string, [Tensor | undefined, readonly string[], boolean?]>,
): { c: Checker; d: LoraDims } {
  const c = new Checker(op);
  checkObject(op, 'stack', s, 'a LoraStack from loraStack()');
  c.tensor('stack.A', s.A, { dtypes: WEIGHT_DTYPES, shape: ['L', 'R', 'Hin'] });
  c.tensor('stack.B', s.B, { dtypes: WEIGHT_DTYPES, shape: ['L', 'Hout', 'R'] });
  c.tensor('stack.rank', s.rank, { dtypes: ['i32'], shape: ['L'] });
  c.tensor('stack.scale', s.scale, { dtypes: ['f32'], shape: ['L'] });
  if (!(rt instanceof LoraRouting))
    throw new ArgumentError(`${op}: routing: expected a LoraRouting from loraRouting(), got ${describe(rt)}`);
  c.tensor('routing.slots', rt.slots, { dtypes: ['i32'], shape: ['T', 'K'] });
  c.tensor('routing.weight', rt.weight, { dtypes: ['f32'], shape: ['T', 'K'] });
  if (!(s.ranks instanceof Int32Array) || s.ranks.length !== c.dim('L'))
    throw new ArgumentError(`${op}: stack.ranks: expected an Int32Array of ${c.dim('L')} ranks, got ${describe(s.ranks)}`);
  if (rt.L !== c.dim('L')) throw new ShapeError(`${op}: routing: built for L = ${rt.L} adapters, but the stack has L = ${c.dim('L')}`);
  // contents, from the host copies kept when the tensors were built (no GPU readback): a GPU
  // kernel would run with a bad rank or routing, cpu rejects it; both throw this instead
  rt.checkIntact(op);
  const ranks = checkedRanks.get(s.rank);
  if (!ranks)
    throw new ArgumentError(
      `${op}: rank: expected the rank tensor of a loraStack() (its contents are checked there), got a tensor it did not build`,
    );
  const R = c.dim('R');
  // only the adapters the routing names: kernels read no other rank (O(distinct adapters), not
  // O(L): an adapter pool has thousands of entries, and this runs for every linear of every layer)
  const used = rt.host.segAdapter;
  for (let i = 0; i < used.length; i++) {
    const e = used[i]!,
      r = ranks[e]!;
    if (r < 1 || r > R) throw new ArgumentError(`${op}: rank[${e}]: expected an integer in [1, ${R}], got ${r}`);
    if (s.ranks[e] !== r)
      throw new ArgumentError(`${op}: ranks[${e}]: the stack's host copy says ${s.ranks[e]}, but its rank tensor holds ${r}`);
  }
  for (const [name, [t, shape, optional]] of Object.entries(tensors)) {
    if (t === undefined && optional) continue;
    c.tensor(name, t, { dtypes: ['f32'], shape });
  }
  const d: LoraDims = { T: c.dim('T'), K: c.dim('K'), L: c.dim('L'), R: c.dim('R'), Hin: c.dim('Hin'), Hout: c.dim('Hout') };
  return { c, d };
}

/** v = shrink(x): f32 [T, K, R]. */
export function loraShrink(x: Tensor, s: LoraStack, rt: LoraRouting, options?: LoraOptions & { out?: Tensor }): Tensor {
  const opts = checkOpts('loraShrink', 'opts', options);
  const { c, d } = checkAll('loraShrink', s, rt, { x: [x, ['T', 'Hin']], out: [opts.out, ['T', 'K', 'R'], true] });
  const v = opts.out ?? c.output('out', undefined, ['T', 'K', 'R']);
  c.distinct('out', v, { x });
  v.backend.loraShrink(v, x, s, rt, d, chooseStrategy(rt, opts.strategy));
  return v;
}

/** y += expand(v), in place; returns y. */
export function loraExpand(y: Tensor, v: Tensor, s: LoraStack, rt: LoraRouting, options?: LoraOptions): Tensor {
  const opts = checkOpts('loraExpand', 'opts', options);
  const { c, d } = checkAll('loraExpand', s, rt, { y: [y, ['T', 'Hout']], v: [v, ['T', 'K', 'R']] });
  c.distinct('y', y, { v });
  y.backend.loraExpand(y, v, s, rt, d, chooseStrategy(rt, opts.strategy));
  return y;
}

/** y += Σ_k weight·scale·B·A·x, in place; returns the shrink output v (kept for backward). */
export function loraApply(y: Tensor, x: Tensor, s: LoraStack, rt: LoraRouting, options?: LoraOptions & { v?: Tensor }): Tensor {
  const opts = checkOpts('loraApply', 'opts', options);
  const { c, d } = checkAll('loraApply', s, rt, { y: [y, ['T', 'Hout']], x: [x, ['T', 'Hin']], v: [opts.v, ['T', 'K', 'R'], true] });
  const v = opts.v ?? c.output('v', undefined, ['T', 'K', 'R']);
  c.distinct('y', y, { x, v });
  c.distinct('v', v, { x });
  y.backend.loraApply(y, v, x, s, rt, d, chooseStrategy(rt, opts.strategy));
  return v;
}

/** dv = weight·scale·Bᵀ·dy: f32 [T, K, R]. */
export function loraShrinkGrad(dy: Tensor, s: LoraStack, rt: LoraRouting, options?: LoraOptions & { out?: Tensor }): Tensor {
  const opts = checkOpts('loraShrinkGrad', 'opts', options);
  const { c, d } = checkAll('loraShrinkGrad', s, rt, { dy: [dy, ['T', 'Hout']], out: [opts.out, ['T', 'K', 'R'], true] });
  const dv = opts.out ?? c.output('out', undefined, ['T', 'K', 'R']);
  c.distinct('out', dv, { dy });
  dv.backend.loraShrinkGrad(dv, dy, s, rt, d, chooseStrategy(rt, opts.strategy));
  return dv;
}

/** dx (+)= Σ_k Aᵀ·dv: f32 [T, H_in]. */
export function loraInputGrad(
  dv: Tensor,
  s: LoraStack,
  rt: LoraRouting,
  options?: LoraOptions & { out?: Tensor; accumulate?: boolean },
): Tensor {
  const opts = checkOpts('loraInputGrad', 'opts', options);
  const acc = checkBool('loraInputGrad', 'accumulate', opts.accumulate);
  if (acc && !opts.out) throw new ArgumentError('loraInputGrad: accumulate: needs an out tensor to add into');
  const { c, d } = checkAll('loraInputGrad', s, rt, { dv: [dv, ['T', 'K', 'R']], out: [opts.out, ['T', 'Hin'], true] });
  const dx = opts.out ?? c.output('out', undefined, ['T', 'Hin']);
  c.distinct('out', dx, { dv });
  dx.backend.loraInputGrad(dx, dv, s, rt, d, chooseStrategy(rt, opts.strategy), acc);
  return dx;
}

/** Gradients of the adapter weights: { dA f32 [L,R,H_in], dB f32 [L,H_out,R] }. */
export function loraWeightGrad(
  x: Tensor,
  dy: Tensor,
  v: Tensor,
  dv: Tensor,
  s: LoraStack,
  rt: LoraRouting,
  options?: { dA?: Tensor; dB?: Tensor; accumulate?: boolean },
): { dA: Tensor; dB: Tensor } {
  const opts = checkOpts('loraWeightGrad', 'opts', options);
  const acc = checkBool('loraWeightGrad', 'accumulate', opts.accumulate);
  if (acc && (!opts.dA || !opts.dB)) throw new ArgumentError('loraWeightGrad: accumulate: needs dA and dB tensors to add into');
  const { c, d } = checkAll('loraWeightGrad', s, rt, {
    x: [x, ['T', 'Hin']],
    dy: [dy, ['T', 'Hout']],
    v: [v, ['T', 'K', 'R']],
    dv: [dv, ['T', 'K', 'R']],
    dA: [opts.dA, ['L', 'R', 'Hin'], true],
    dB: [opts.dB, ['L', 'Hout', 'R'], true],
  });
  const dA = opts.dA ?? c.output('dA', undefined, ['L', 'R', 'Hin']);
  const dB = opts.dB ?? c.output('dB', undefined, ['L', 'Hout', 'R']);
  c.distinct('dA', dA, { x, dy, v, dv, dB });
  c.distinct('dB', dB, { x, dy, v, dv });
  dA.backend.loraWeightGrad(dA, dB, x, dy, v, dv, s, rt, d, acc);
  return { dA, dB };
}
