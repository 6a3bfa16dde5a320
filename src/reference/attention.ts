// Float64 reference for the attention family: causal multi-head attention with grouped-query
// heads over a batch of packed sequences, with an optional step-skipping segment mask
// (DESIGN §1) and decoding against a KV cache. Plain loops, written to be read, not to be fast.
//
//   q: [Tq, numHeads, D]      k, v: [Tk, numKvHeads, D]      out: [Tq, numHeads, D]
//   query head h reads kv head h / (numHeads / numKvHeads) (integer division; GQA/MQA/MHA)
//
// Which keys a query sees is given per token, not by the position of a row in the batch:
// query i sees key j when
//   kSeq[j] = qSeq[i]                 (same packed sequence; kSeq = −1 is an empty slot)
//   j lies in a key run of qSeq[i]    (only when keyRuns is given: a paged cache's block table)
//   kPos[j] ≤ qPos[i]                 (causal, by position within the sequence)
//   not blocked[seq][qSeg[i]][kSeg[j]] (step skipping: segment `later` may not see segment `earlier`)
// Prefill / training: keys are the queries themselves (k, v, kSeq, kPos from the same tokens).
// Decode: keys are the cached tokens followed by the new tokens (attentionDecodeRef), so the
// result equals full attention over the concatenation, restricted to the new rows.
//
//   s[h,i,j] = scale · q[i,h]·k[j,kv(h)]   (scale = 1/sqrt(D) unless given)
//   P[h,i,:] = softmax over the visible j of s[h,i,:]   (0 for the keys not visible)
//   out[i,h] = Σ_j P[h,i,j] · v[j,kv(h)]
// A query that sees no key at all (possible only with an unusual layout) gets out = 0, lse = −∞
// and zero gradients.

/** The step-skipping mask. Segment ids are step indices in chain order (0 = prompt, ...). */
export interface SegmentMask {
  /** Number of segments S; segment ids are in [0, S). */
  numSegments: number;
  /** [Tq] segment id of each query token. */
  qSegment: ArrayLike<number>;
  /** [Tk] segment id of each key token; default qSegment (keys are the queries). */
  kSegment?: ArrayLike<number>;
  /**
   * [numSeqs, S, S], nonzero/true at [seq][later][earlier]: in sequence `seq`, tokens of segment
   * `later` do not attend to tokens of segment `earlier`. Only later > earlier may be set (a
   * segment always sees itself). numSeqs = blocked.length / S², and every sequence id must be
   * below it.
   */
  blocked: ArrayLike<number | boolean>;
}

/** Which token is which: packed-sequence ids and positions of queries and keys. */
export interface AttentionLayout {
  /** [Tq] sequence id (≥ 0) of each query token. */
  qSeq: ArrayLike<number>;
  /** [Tq] position of each query token within its sequence. */
  qPos: ArrayLike<number>;
  /** [Tk] sequence id of each key token; default qSeq (then Tk = Tq). */
  kSeq?: ArrayLike<number>;
  /** [Tk] position of each key token; default qPos. */
  kPos?: ArrayLike<number>;
  /** Runs [start, end) of keys per sequence; when given, a key outside its sequence's runs is not seen. */
  keyRuns?: { seq: ArrayLike<number>; start: ArrayLike<number>; end: ArrayLike<number> };
  /** Optional step-skipping mask. */
  segments?: SegmentMask;
}

export interface AttentionDims {
  /** Query tokens. */
  Tq: number;
  /** Key/value tokens; for self-attention Tk = Tq. */
  Tk: number;
  numHeads: number;
  /** Divides numHeads. */
  numKvHeads: number;
  headDim: number;
  /** Softmax scale; default 1/sqrt(headDim). */
  scale?: number;
}

function fail(msg: string): never {
  throw new Error(`attention reference: ${msg}`);
}

function need(name: string, a: ArrayLike<unknown> | undefined, n: number): void {
  if (a === undefined || a.length !== n) fail(`${name}: expected ${n} entries, got ${a?.length}`);
}

function checkInts(name: string, a: ArrayLike<number>, lo: number, hi: number): void {
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    if (!Number.isInteger(x) || x < lo || x > hi) fail(`${name}[${i}] = ${x} not an integer in [${lo}, ${hi === Infinity ? '∞' : hi}]`);
  }
}

interface Resolved {
  Tq: number;
  Tk: number;
  nH: number;
  nKv: number;
  D: number;
  group: number;
  scale: number;
  /** visible[i * Tk + j] */
  visible: Uint8Array;
}

/** Checks dims and layout and computes the visibility matrix [Tq, Tk] (shared by all heads). */
function resolve(d: AttentionDims, l: AttentionLayout): Resolved {
  const { Tq, Tk, numHeads: nH, numKvHeads: nKv, headDim: D } = d;
  for (const [k, v] of Object.entries({ Tq, Tk, numHeads: nH, numKvHeads: nKv, headDim: D }))
    if (!Number.isInteger(v) || v < (k === 'Tq' || k === 'Tk' ? 0 : 1)) fail(`${k}: expected a positive integer, got ${v}`);
  if (nH % nKv !== 0) fail(`numKvHeads (${nKv}) must divide numHeads (${nH})`);
  const kSeq = l.kSeq ?? l.qSeq;
  const kPos = l.kPos ?? l.qPos;
  need('qSeq', l.qSeq, Tq);
  need('qPos', l.qPos, Tq);
  need('kSeq', kSeq, Tk);
  need('kPos', kPos, Tk);
  checkInts('qSeq', l.qSeq, 0, Infinity);
  checkInts('kSeq', kSeq, -1, Infinity);
  checkInts('qPos', l.qPos, 0, Infinity);
  checkInts('kPos', kPos, 0, Infinity);
  const m = l.segments;
  let blockedAt: (seq: number, later: number, earlier: number) => boolean = () => false;
  if (m !== undefined) {
    const S = m.numSegments;
    if (!Number.isInteger(S) || S < 1) fail(`segments.numSegments: expected a positive integer, got ${S}`);
    const kSeg = m.kSegment ?? m.qSegment;
    need('segments.qSegment', m.qSegment, Tq);
    need('segments.kSegment', kSeg, Tk);
    checkInts('segments.qSegment', m.qSegment, 0, S - 1);
    checkInts('segments.kSegment', kSeg, 0, S - 1);
    if (m.blocked.length % (S * S) !== 0) fail(`segments.blocked: expected [numSeqs, ${S}, ${S}] entries, got ${m.blocked.length}`);
    const numSeqs = m.blocked.length / (S * S);
    checkInts('qSeq (against segments.blocked)', l.qSeq, 0, numSeqs - 1);
    for (let s = 0; s < numSeqs; s++)
      for (let a = 0; a < S; a++)
        for (let b = a; b < S; b++)
          if (m.blocked[(s * S + a) * S + b]) fail(`segments.blocked[${s}][${a}][${b}] is set: only later > earlier may be blocked`);
    blockedAt = (seq, later, earlier) => Boolean(m.blocked[(seq * S + later) * S + earlier]);
  }
  // runOf[j]: the sequence whose run holds key j (−2: none); without keyRuns every key is in its own sequence's
  let runOf: ArrayLike<number> = kSeq;
  if (l.keyRuns !== undefined) {
    const kr = l.keyRuns;
    const R = kr.seq.length;
    need('keyRuns.start', kr.start, R);
    need('keyRuns.end', kr.end, R);
    const o = new Int32Array(Tk).fill(-2);
    for (let r = 0; r < R; r++)
      for (let j = kr.start[r]!; j < kr.end[r]!; j++) {
        if (j < 0 || j >= Tk || o[j] !== -2) fail(`keyRuns: run ${r} covers key ${j}, outside [0, Tk) or already in a run`);
        o[j] = kr.seq[r]!;
      }
    runOf = o;
  }
  const visible = new Uint8Array(Tq * Tk);
  for (let i = 0; i < Tq; i++)
    for (let j = 0; j < Tk; j++) {
      const seq = l.qSeq[i]!;
      if (kSeq[j] !== seq || runOf[j] !== seq || kPos[j]! > l.qPos[i]!) continue;
      if (m !== undefined && blockedAt(seq, m.qSegment[i]!, (m.kSegment ?? m.qSegment)[j]!)) continue;
      visible[i * Tk + j] = 1;
    }
  return { Tq, Tk, nH, nKv, D, group: nH / nKv, scale: d.scale ?? 1 / Math.sqrt(D), visible };
}

/** P[h,i,j] for one (h, i), written into p (length Tk); returns lse (−∞ when nothing is visible). */
function probsRow(r: Resolved, q: ArrayLike<number>, k: ArrayLike<number>, h: number, i: number, p: Float64Array): number {
  const { Tk, nH, nKv, D, scale } = r;
  const kv = Math.floor(h / r.group);
  let max = -Infinity;
  let nan = false; // a NaN score makes the row NaN (the max alone would skip it)
  for (let j = 0; j < Tk; j++) {
    if (!r.visible[i * Tk + j]) {
      p[j] = -Infinity;
      continue;
    }
    let dot = 0;
    for (let c = 0; c < D; c++) dot += q[(i * nH + h) * D + c]! * k[(j * nKv + kv) * D + c]!;
    p[j] = scale * dot;
    if (p[j]! > max) max = p[j]!;
    else if (Number.isNaN(p[j])) nan = true;
  }
  if (max === -Infinity && !nan) {
    p.fill(0);
    return -Infinity;
  }
  let sum = 0;
  for (let j = 0; j < Tk; j++) {
    p[j] = r.visible[i * Tk + j] ? Math.exp(p[j]! - max) : 0;
    sum += p[j]!;
  }
  for (let j = 0; j < Tk; j++) p[j] = p[j]! / sum;
  return max + Math.log(sum);
}

function checkQkv(r: Resolved, q: ArrayLike<number>, k: ArrayLike<number>, v?: ArrayLike<number>): void {
  need('q', q, r.Tq * r.nH * r.D);
  need('k', k, r.Tk * r.nKv * r.D);
  if (v !== undefined) need('v', v, r.Tk * r.nKv * r.D);
}

/**
 * The attention weights P: [numHeads, Tq, Tk] (exact zeros where a key is not visible).
 * q: [Tq, numHeads, D], k: [Tk, numKvHeads, D].
 */
export function attentionProbsRef(q: ArrayLike<number>, k: ArrayLike<number>, d: AttentionDims, l: AttentionLayout): Float64Array {
  const r = resolve(d, l);
  checkQkv(r, q, k);
  const P = new Float64Array(r.nH * r.Tq * r.Tk);
  const row = new Float64Array(r.Tk);
  for (let h = 0; h < r.nH; h++)
    for (let i = 0; i < r.Tq; i++) {
      probsRow(r, q, k, h, i, row);
      P.set(row, (h * r.Tq + i) * r.Tk);
    }
  return P;
}

/**
 * out[i,h] = Σ_j P[h,i,j]·v[j, kv(h)], and lse[i,h] = log Σ_{j visible} exp(s[h,i,j]) (what a
 * flash-attention kernel keeps for backward; −∞ for a query that sees nothing).
 * q: [Tq, numHeads, D], k, v: [Tk, numKvHeads, D] → out: [Tq, numHeads, D], lse: [Tq, numHeads].
 */
export function attentionRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  d: AttentionDims,
  l: AttentionLayout,
): { out: Float64Array; lse: Float64Array } {
  const r = resolve(d, l);
  checkQkv(r, q, k, v);
  const { Tq, Tk, nH, nKv, D } = r;
  const out = new Float64Array(Tq * nH * D);
  const lse = new Float64Array(Tq * nH);
  const p = new Float64Array(Tk);
  for (let i = 0; i < Tq; i++)
    for (let h = 0; h < nH; h++) {
      lse[i * nH + h] = probsRow(r, q, k, h, i, p);
      const kv = Math.floor(h / r.group);
      for (let c = 0; c < D; c++) {
        let acc = 0;
        for (let j = 0; j < Tk; j++) if (p[j] !== 0) acc += p[j]! * v[(j * nKv + kv) * D + c]!;
        out[(i * nH + h) * D + c] = acc;
      }
    }
  return { out, lse };
}

/**
 * Gradients given dOut = ∂ℓ/∂out: with P recomputed, dP[h,i,j] = dOut[i,h]·v[j,kv(h)] and
 * dS = P ⊙ (dP − Σ_j P·dP) (the row term equals dOut[i,h]·out[i,h]):
 *   dq[i,h]      = scale · Σ_j dS[h,i,j] · k[j,kv(h)]
 *   dk[j,kv]     = scale · Σ_{h: kv(h)=kv} Σ_i dS[h,i,j] · q[i,h]
 *   dv[j,kv]     = Σ_{h: kv(h)=kv} Σ_i P[h,i,j] · dOut[i,h]
 * dOut: [Tq, numHeads, D] → dq: [Tq, numHeads, D], dk, dv: [Tk, numKvHeads, D].
 */
export function attentionBackwardRef(
  dOut: ArrayLike<number>,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  d: AttentionDims,
  l: AttentionLayout,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const r = resolve(d, l);
  checkQkv(r, q, k, v);
  const { Tq, Tk, nH, nKv, D, scale } = r;
  need('dOut', dOut, Tq * nH * D);
  const dq = new Float64Array(Tq * nH * D);
  const dk = new Float64Array(Tk * nKv * D);
  const dv = new Float64Array(Tk * nKv * D);
  const p = new Float64Array(Tk);
  const dp = new Float64Array(Tk);
  for (let i = 0; i < Tq; i++)
    for (let h = 0; h < nH; h++) {
      probsRow(r, q, k, h, i, p);
      const kv = Math.floor(h / r.group);
      const qi = (i * nH + h) * D;
      let rowDot = 0; // Σ_j P·dP
      for (let j = 0; j < Tk; j++) {
        if (p[j] === 0) {
          dp[j] = 0;
          continue;
        }
        let s = 0;
        for (let c = 0; c < D; c++) s += dOut[qi + c]! * v[(j * nKv + kv) * D + c]!;
        dp[j] = s;
        rowDot += p[j]! * s;
      }
      for (let j = 0; j < Tk; j++) {
        if (p[j] === 0) continue;
        const kj = (j * nKv + kv) * D;
        const dS = p[j]! * (dp[j]! - rowDot);
        for (let c = 0; c < D; c++) {
          dq[qi + c] += scale * dS * k[kj + c]!;
          dk[kj + c] += scale * dS * q[qi + c]!;
          dv[kj + c] += p[j]! * dOut[qi + c]!;
        }
      }
    }
  return { dq, dk, dv };
}

/** The tokens already in a KV cache: their keys, values, sequence ids, positions (and segments). */
export interface KvCacheRef {
  /** [P, numKvHeads, D] */
  k: ArrayLike<number>;
  /** [P, numKvHeads, D] */
  v: ArrayLike<number>;
  /** [P] */
  seq: ArrayLike<number>;
  /** [P] */
  pos: ArrayLike<number>;
  /** [P], required when the new tokens carry a segment mask */
  segment?: ArrayLike<number>;
}

/**
 * Decode step: the new tokens' queries attend to the cached keys/values plus the new tokens'
 * own keys/values (causally, within their sequence, under the segment mask). Exactly
 * attentionRef with keys = [cache; new]. q: [N, numHeads, D], k, v: [N, numKvHeads, D] (the new
 * tokens), cache of P tokens → out: [N, numHeads, D], lse: [N, numHeads]. `d.Tq` = N, `d.Tk` is
 * ignored (it is P + N). `l` describes the new tokens (qSeq, qPos, segments.qSegment; kSeq,
 * kPos and kSegment must be absent).
 */
export function attentionDecodeRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  cache: KvCacheRef,
  d: AttentionDims,
  l: AttentionLayout,
): { out: Float64Array; lse: Float64Array } {
  if (l.kSeq !== undefined || l.kPos !== undefined || l.segments?.kSegment !== undefined)
    fail('attentionDecodeRef: the key layout comes from the cache and the new tokens; leave kSeq/kPos/kSegment out');
  const P = cache.seq.length;
  const row = d.numKvHeads * d.headDim;
  need('cache.k', cache.k, P * row);
  need('cache.v', cache.v, P * row);
  need('cache.pos', cache.pos, P);
  need('k', k, d.Tq * row);
  need('v', v, d.Tq * row);
  const cat = (a: ArrayLike<number>, b: ArrayLike<number>): Float64Array => {
    const o = new Float64Array(a.length + b.length);
    o.set(Array.from(a), 0);
    o.set(Array.from(b), a.length);
    return o;
  };
  let segments: SegmentMask | undefined;
  if (l.segments !== undefined) {
    if (cache.segment === undefined) fail('cache.segment: required when the new tokens carry a segment mask');
    need('cache.segment', cache.segment, P);
    segments = { ...l.segments, kSegment: cat(cache.segment, l.segments.qSegment) };
  }
  return attentionRef(
    q,
    cat(cache.k, k),
    cat(cache.v, v),
    { ...d, Tk: P + d.Tq },
    {
      qSeq: l.qSeq,
      qPos: l.qPos,
      kSeq: cat(cache.seq, l.qSeq),
      kPos: cat(cache.pos, l.qPos),
      ...(segments ? { segments } : {}),
    },
  );
}
