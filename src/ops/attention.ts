// Causal grouped-query attention over packed sequences, with MoTE's step-skipping segment
// mask and decode against cached keys/values. Reference: src/reference/attention.ts.
// Query i sees key j when j lies in a key run of i's sequence, kSeq[j] = qSeq[i],
// kPos[j] ≤ qPos[i], and (with segments) the pair (qSeg[i], kSeg[j]) is not blocked in that
// sequence. A query that sees no key gets out = 0, lse = −∞ and zero gradients. kSeq[j] = −1
// marks an empty key slot (a KV cache's free slots): no query sees it.
//
// Key runs (DESIGN §3): each sequence's keys are read as a list of runs [start, end) of key
// indices, so that a query's cost follows its own sequence's length, not the batch's. By
// default the runs are the maximal stretches of consecutive keys with one sequence id; a paged
// KV cache passes its block table instead (`keyRuns`). The keys of a sequence are visited in
// run order, then ascending within a run — the "logical" order every backend sums in, so that
// a sequence's result does not depend on where its keys sit in the cache or what else is there.
// For the backward, each key reads its sequence's query runs (maximal stretches of queries).
//
// The kernels get one i32 tensor `ranges` (checked and built here):
//   [0, 2·Tq)             per query i: (first, count) of its key runs in the run table
//   [2·Tq, 2·Tq + 2·Tk)   per key j: (first, count) of its query runs (count 0 when no query
//                          can see j: an empty slot, or a key outside its sequence's runs)
//   [2·(Tq + Tk), …)      the run table: numRuns pairs (start, end), key runs then query runs
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
  /** Pairs in the run table of `layout.ranges`. */
  numRuns: number;
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
  /**
   * The key runs of each sequence, in the order its keys are read (a paged cache's block table):
   * run r covers keys [start[r], end[r]) of sequence seq[r]. Keys of a sequence outside its runs
   * are not seen. Default: the maximal stretches of consecutive keys with one kSeq.
   */
  keyRuns?: { seq: ArrayLike<number>; start: ArrayLike<number>; end: ArrayLike<number> };
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

/** Maximal stretches of equal ids (−1 skipped), grouped by id in order of first appearance. */
function stretches(ids: Int32Array): Map<number, number[]> {
  const by = new Map<number, number[]>();
  for (let j = 0; j < ids.length;) {
    const s = ids[j]!;
    let e = j + 1;
    while (e < ids.length && ids[e] === s) e++;
    if (s >= 0) {
      let l = by.get(s);
      if (!l) by.set(s, (l = []));
      l.push(j, e);
    }
    j = e;
  }
  return by;
}

/** The `ranges` tensor's contents (see the top of this file) and its run count. */
function buildRanges(
  qSeq: Int32Array,
  kSeq: Int32Array,
  keyRuns: AttentionLayoutInit['keyRuns'],
): { ranges: Int32Array; runs: number; maxKeys: number; maxQueries: number } {
  const Tq = qSeq.length,
    Tk = kSeq.length;
  let kRuns: Map<number, number[]>;
  if (keyRuns === undefined) kRuns = stretches(kSeq);
  else {
    checkObject('attentionLayout', 'keyRuns', keyRuns, 'an object { seq, start, end }');
    const R = checkHostArray('attentionLayout', 'keyRuns.seq', keyRuns.seq).length;
    const seq = ints('keyRuns.seq', keyRuns.seq, R, 0, 2 ** 31 - 1);
    const start = ints('keyRuns.start', keyRuns.start, R, 0, Tk);
    const end = ints('keyRuns.end', keyRuns.end, R, 0, Tk);
    const covered = new Uint8Array(Tk);
    kRuns = new Map();
    for (let r = 0; r < R; r++) {
      if (start[r]! > end[r]!) throw new ArgumentError(`attentionLayout: keyRuns: run ${r}: start ${start[r]} is past its end ${end[r]}`);
      for (let j = start[r]!; j < end[r]!; j++) {
        if (covered[j]) throw new ArgumentError(`attentionLayout: keyRuns: key ${j} lies in two runs (run ${r} is one)`);
        covered[j] = 1;
      }
      if (start[r] === end[r]) continue;
      let l = kRuns.get(seq[r]!);
      if (!l) kRuns.set(seq[r]!, (l = []));
      l.push(start[r]!, end[r]!);
    }
  }
  const qRuns = stretches(qSeq);
  const table: number[] = [];
  // the longest list a row reads (keys of a query, queries of a key): what bounds a GPU dispatch's work
  let maxKeys = 0,
    maxQueries = 0;
  const place = (m: Map<number, number[]>, longest: (n: number) => void) => {
    const at = new Map<number, [number, number]>();
    for (const [s, l] of m) {
      at.set(s, [table.length / 2, l.length / 2]);
      let n = 0;
      for (let r = 0; r < l.length; r += 2) n += l[r + 1]! - l[r]!;
      longest(n);
      for (const x of l) table.push(x);
    }
    return at;
  };
  // only the runs of sequences that have queries are ever read
  for (const s of [...kRuns.keys()]) if (!qRuns.has(s)) kRuns.delete(s);
  const kAt = place(kRuns, (n) => (maxKeys = Math.max(maxKeys, n)));
  const qAt = place(qRuns, (n) => (maxQueries = Math.max(maxQueries, n)));
  // a key is seen only from inside a run of its own sequence
  const inOwnRun = new Uint8Array(Tk);
  for (const [s, l] of kRuns)
    for (let r = 0; r < l.length; r += 2) for (let j = l[r]!; j < l[r + 1]!; j++) if (kSeq[j] === s) inOwnRun[j] = 1;
  const ranges = new Int32Array(2 * (Tq + Tk) + table.length);
  for (let i = 0; i < Tq; i++) {
    const a = kAt.get(qSeq[i]!);
    if (a) [ranges[2 * i], ranges[2 * i + 1]] = a;
  }
  for (let j = 0; j < Tk; j++) {
    const a = inOwnRun[j] ? qAt.get(kSeq[j]!) : undefined;
    if (a) [ranges[2 * (Tq + j)], ranges[2 * (Tq + j) + 1]] = a;
  }
  ranges.set(table, 2 * (Tq + Tk));
  return { ranges, runs: table.length / 2, maxKeys, maxQueries };
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
  /** i32: per-query key runs, per-key query runs and the run table (see the top of this file). */
  readonly ranges: Tensor;
  /** Pairs in the run table. */
  readonly numRuns: number;
  /** Most keys any query's runs hold, and most queries any key's runs hold (bounds of a row's work). */
  readonly maxKeysPerQuery: number;
  readonly maxQueriesPerKey: number;

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
    const kSeq = init.kSeq ? ints('kSeq', init.kSeq, this.Tk, -1, MAX) : qSeq;
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
        // an empty key slot (−1) is seen by no query and needs no entry
        const bad = s.findIndex((v) => v >= this.numSeqs);
        if (bad >= 0)
          throw new ArgumentError(
            `attentionLayout: ${n}[${bad}]: sequence ${s[bad]} has no entry in segments.blocked (numSeqs = ${this.numSeqs})`,
          );
      }
      this.S = S;
    }
    const { ranges, runs, maxKeys, maxQueries } = buildRanges(qSeq, kSeq, init.keyRuns);
    this.numRuns = runs;
    this.maxKeysPerQuery = maxKeys;
    this.maxQueriesPerKey = maxQueries;
    const up = (a: Int32Array) => backend.tensor(a, [a.length], 'i32').seal();
    this.qSeq = up(qSeq);
    this.qPos = up(qPos);
    this.kSeq = up(kSeq);
    this.kPos = up(kPos);
    this.qSeg = up(qSeg);
    this.kSeg = up(kSeg);
    this.blocked = up(blocked);
    this.ranges = up(ranges);
    this.#built = {
      tensors: [this.qSeq, this.qPos, this.kSeq, this.kPos, this.qSeg, this.kSeg, this.blocked, this.ranges],
      Tq: this.Tq,
      Tk: this.Tk,
      S: this.S,
      numSeqs: this.numSeqs,
      numRuns: this.numRuns,
    };
  }

  /** What the constructor built from the checked host arrays: the kernels trust these contents. */
  readonly #built: { tensors: readonly Tensor[]; Tq: number; Tk: number; S: number; numSeqs: number; numRuns: number };

  /**
   * Throws when a layout tensor or count is not the one built from the checked host arrays
   * (replaced after construction): cpu would reject bad ids, a GPU kernel would trust them.
   */
  checkIntact(op: string): void {
    const names = ['qSeq', 'qPos', 'kSeq', 'kPos', 'qSeg', 'kSeg', 'blocked', 'ranges'] as const;
    names.forEach((n, i) => {
      if (this[n] !== this.#built.tensors[i])
        throw new ArgumentError(
          `${op}: layout.${n}: expected the tensor attentionLayout() built from the checked ids, got one put in its place`,
        );
    });
    for (const n of ['Tq', 'Tk', 'S', 'numSeqs', 'numRuns'] as const) {
      if (this[n] !== this.#built[n])
        throw new ArgumentError(`${op}: layout.${n}: expected ${this.#built[n]} (as built), got ${describe(this[n])}`);
    }
  }

  dispose(): void {
    for (const t of [this.qSeq, this.qPos, this.kSeq, this.kPos, this.qSeg, this.kSeg, this.blocked, this.ranges]) t.dispose();
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
  return { Tq: c.dim('Tq'), Tk: c.dim('Tk'), nH, nKv, D, scale: s, S: l.S, numSeqs: l.numSeqs, numRuns: l.numRuns };
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
