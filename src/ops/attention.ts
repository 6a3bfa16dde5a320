// Causal grouped-query attention over packed sequences, with MoTE's step-skipping segment
// mask and decode against cached keys/values. Reference: src/reference/attention.ts.
// Query i sees key j when kSeq[j] = qSeq[i], kPos[j] ≤ qPos[i], and (with segments) the pair
// (qSeg[i], kSeg[j]) is not blocked in that sequence. A query that sees no key gets out = 0,
// lse = −∞ and zero gradients.
import { ArgumentError, ShapeError, describe } from '../errors.js';
import type { Tensor } from '../tensor.js';
import type { Backend } from '../backend/backend.js';
import { Checker, checkBackend, checkHostArray, checkIntArray, checkFinite, checkObject, checkOpts } from './check.js';

export interface AttentionDims {
  Tq: number;
  Tk: number;
  nH: number;
  nKv: number;
  D: number;
  /** Softmax scale (default 1/sqrt(D)). */
  scale: number;
  /** Segments per sequence (0 = no segment mask). */
  S: number;
  /** Sequences covered by `blocked` (numSeqs·S·S entries). */
  numSeqs: number;
}

export interface AttentionKernels {
  /** out f32 [Tq, nH, D]; lse f32 [Tq, nH] (saved for backward). */
  attention(out: Tensor, lse: Tensor, q: Tensor, k: Tensor, v: Tensor, l: AttentionLayout, d: AttentionDims): void;
  /** dq [Tq,nH,D], dk [Tk,nKv,D], dv [Tk,nKv,D], all overwritten; each element has one owner (no atomics). */
  attentionGrad(
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    l: AttentionLayout,
    d: AttentionDims,
  ): void;
}

export interface AttentionLayoutInit {
  qSeq: ArrayLike<number>;
  qPos: ArrayLike<number>;
  /** default qSeq (self-attention) */
  kSeq?: ArrayLike<number>;
  /** default qPos */
  kPos?: ArrayLike<number>;
  segments?: {
    numSegments: number;
    qSegment: ArrayLike<number>;
    kSegment?: ArrayLike<number>;
    /** [numSeqs, S, S]: nonzero at [seq][later][earlier] = later's tokens do not see earlier's. */
    blocked: ArrayLike<number | boolean>;
  };
}

function ints(name: string, a: ArrayLike<number> | undefined, n: number, lo: number, hi: number): Int32Array {
  if (a === undefined || a === null) throw new ShapeError(`attentionLayout: ${name}: expected ${n} entries, got ${describe(a)}`);
  return checkIntArray('attentionLayout', name, a, lo, hi, n);
}

/** Who attends to whom in one batch, checked on the host and uploaded once (i32 tensors). */
export class AttentionLayout {
  readonly Tq: number;
  readonly Tk: number;
  readonly S: number;
  readonly numSeqs: number;
  readonly qSeq: Tensor;
  readonly qPos: Tensor;
  readonly kSeq: Tensor;
  readonly kPos: Tensor;
  readonly qSeg: Tensor;
  readonly kSeg: Tensor;
  readonly blocked: Tensor;

  constructor(
    readonly backend: Backend,
    init: AttentionLayoutInit,
  ) {
    checkBackend('attentionLayout', 'backend', backend);
    checkObject('attentionLayout', 'init', init, 'an AttentionLayoutInit object');
    const MAX = 2 ** 31 - 1;
    this.Tq = checkHostArray('attentionLayout', 'qSeq', init.qSeq).length;
    if (this.Tq === 0) throw new ShapeError('attentionLayout: qSeq: expected at least one query token');
    const qSeq = ints('qSeq', init.qSeq, this.Tq, 0, MAX);
    const qPos = ints('qPos', init.qPos, this.Tq, 0, MAX);
    this.Tk = init.kSeq?.length ?? this.Tq;
    const kSeq = init.kSeq ? ints('kSeq', init.kSeq, this.Tk, 0, MAX) : qSeq;
    const kPos = init.kPos ? ints('kPos', init.kPos, this.Tk, 0, MAX) : init.kSeq ? ints('kPos', init.kPos, this.Tk, 0, MAX) : qPos;
    let qSeg: Int32Array = new Int32Array(1),
      kSeg: Int32Array = new Int32Array(1),
      blocked: Int32Array = new Int32Array(1);
    this.S = 0;
    this.numSeqs = 0;
    const sg = init.segments;
    if (sg) {
      const S = sg.numSegments;
      if (!Number.isSafeInteger(S) || S <= 0)
        throw new ArgumentError(`attentionLayout: segments.numSegments: expected a positive integer, got ${describe(S)}`);
      qSeg = ints('segments.qSegment', sg.qSegment, this.Tq, 0, S - 1);
      kSeg = sg.kSegment
        ? ints('segments.kSegment', sg.kSegment, this.Tk, 0, S - 1)
        : init.kSeq
          ? ints('segments.kSegment', sg.kSegment, this.Tk, 0, S - 1)
          : qSeg;
      if (!sg.blocked || sg.blocked.length === 0 || sg.blocked.length % (S * S) !== 0) {
        throw new ShapeError(`attentionLayout: segments.blocked: expected numSeqs·${S}·${S} entries, got ${sg.blocked?.length}`);
      }
      this.numSeqs = sg.blocked.length / (S * S);
      blocked = new Int32Array(sg.blocked.length);
      for (let i = 0; i < blocked.length; i++) {
        const b = sg.blocked[i] ? 1 : 0;
        const later = Math.floor(i / S) % S,
          earlier = i % S;
        if (b && later <= earlier)
          throw new ArgumentError(
            `attentionLayout: segments.blocked[${Math.floor(i / (S * S))}][${later}][${earlier}]: only a later segment may be blocked from an earlier one`,
          );
        blocked[i] = b;
      }
      for (const [n, s] of [
        ['qSeq', qSeq],
        ['kSeq', kSeq],
      ] as const) {
        const bad = s.findIndex((v) => v >= this.numSeqs);
        if (bad >= 0)
          throw new ArgumentError(
            `attentionLayout: ${n}[${bad}]: sequence ${s[bad]} has no entry in segments.blocked (numSeqs = ${this.numSeqs})`,
          );
      }
      this.S = S;
    }
    const up = (a: Int32Array) => backend.tensor(a, [a.length], 'i32');
    this.qSeq = up(qSeq);
    this.qPos = up(qPos);
    this.kSeq = up(kSeq);
    this.kPos = up(kPos);
    this.qSeg = up(qSeg);
    this.kSeg = up(kSeg);
    this.blocked = up(blocked);
    this.#built = {
      tensors: [this.qSeq, this.qPos, this.kSeq, this.kPos, this.qSeg, this.kSeg, this.blocked],
      Tq: this.Tq,
      Tk: this.Tk,
      S: this.S,
      numSeqs: this.numSeqs,
    };
  }

  /** What the constructor built from the checked host arrays: the kernels trust these contents. */
  readonly #built: { tensors: readonly Tensor[]; Tq: number; Tk: number; S: number; numSeqs: number };

  /**
   * Throws when a layout tensor or count is not the one built from the checked host arrays
   * (replaced after construction): cpu would reject bad ids, a GPU kernel would trust them.
   */
  checkIntact(op: string): void {
    const names = ['qSeq', 'qPos', 'kSeq', 'kPos', 'qSeg', 'kSeg', 'blocked'] as const;
    names.forEach((n, i) => {
      if (this[n] !== this.#built.tensors[i])
        throw new ArgumentError(
          `${op}: layout.${n}: expected the tensor attentionLayout() built from the checked ids, got one put in its place`,
        );
    });
    for (const n of ['Tq', 'Tk', 'S', 'numSeqs'] as const) {
      if (this[n] !== this.#built[n])
        throw new ArgumentError(`${op}: layout.${n}: expected ${this.#built[n]} (as built), got ${describe(this[n])}`);
    }
  }

  dispose(): void {
    for (const t of [this.qSeq, this.qPos, this.kSeq, this.kPos, this.qSeg, this.kSeg, this.blocked]) t.dispose();
  }

  /** dispose(), for `using`: the AttentionLayout is freed when its block ends. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

export function attentionLayout(backend: Backend, init: AttentionLayoutInit): AttentionLayout {
  return new AttentionLayout(backend, init);
}

function check(op: string, c: Checker, q: Tensor, k: Tensor, v: Tensor, l: AttentionLayout, scale: number | undefined): AttentionDims {
  c.tensor('q', q, { dtypes: ['f32'], shape: ['Tq', 'nH', 'D'] });
  c.tensor('k', k, { dtypes: ['f32'], shape: ['Tk', 'nKv', 'D'] });
  c.tensor('v', v, { dtypes: ['f32'], shape: ['Tk', 'nKv', 'D'] });
  if (!(l instanceof AttentionLayout))
    throw new ArgumentError(`${op}: layout: expected an AttentionLayout from attentionLayout(), got ${describe(l)}`);
  l.checkIntact(op); // contents were checked on the host when built; no GPU readback here
  c.tensor('layout.qSeq', l.qSeq, { dtypes: ['i32'], shape: ['Tq'] });
  c.tensor('layout.kSeq', l.kSeq, { dtypes: ['i32'], shape: ['Tk'] });
  const nH = c.dim('nH'),
    nKv = c.dim('nKv'),
    D = c.dim('D');
  if (nH % nKv !== 0) throw new ShapeError(`${op}: k: kv heads (${nKv}) must divide query heads (${nH})`);
  const s = scale === undefined ? 1 / Math.sqrt(D) : checkFinite(op, 'scale', scale, true);
  return { Tq: c.dim('Tq'), Tk: c.dim('Tk'), nH, nKv, D, scale: s, S: l.S, numSeqs: l.numSeqs };
}

/** q f32 [Tq, nH, D], k/v f32 [Tk, nKv, D] → out f32 [Tq, nH, D] and lse f32 [Tq, nH]. */
export function attention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  layout: AttentionLayout,
  options?: { scale?: number },
): { out: Tensor; lse: Tensor } {
  const c = new Checker('attention');
  const opts = checkOpts('attention', 'opts', options);
  const d = check('attention', c, q, k, v, layout, opts.scale);
  const out = c.output('out', undefined, ['Tq', 'nH', 'D']);
  const lse = c.output('lse', undefined, ['Tq', 'nH']);
  q.backend.attention(out, lse, q, k, v, layout, d);
  return { out, lse };
}

/** Gradients of attention given dOut and the forward's out and lse. */
export function attentionGrad(
  dOut: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  lse: Tensor,
  layout: AttentionLayout,
  options?: { scale?: number },
): { dq: Tensor; dk: Tensor; dv: Tensor } {
  const c = new Checker('attentionGrad');
  const opts = checkOpts('attentionGrad', 'opts', options);
  const d = check('attentionGrad', c, q, k, v, layout, opts.scale);
  c.tensor('dOut', dOut, { dtypes: ['f32'], shape: ['Tq', 'nH', 'D'] });
  c.tensor('out', out, { dtypes: ['f32'], shape: ['Tq', 'nH', 'D'] });
  c.tensor('lse', lse, { dtypes: ['f32'], shape: ['Tq', 'nH'] });
  const dq = c.output('dq', undefined, ['Tq', 'nH', 'D']);
  const dk = c.output('dk', undefined, ['Tk', 'nKv', 'D']);
  const dv = c.output('dv', undefined, ['Tk', 'nKv', 'D']);
  q.backend.attentionGrad(dq, dk, dv, dOut, q, k, v, out, lse, layout, d);
  return { dq, dk, dv };
}
