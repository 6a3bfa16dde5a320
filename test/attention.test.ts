// attentionLayout / attention / attentionGrad (src/ops/attention.ts) on every backend against
// the float64 reference (src/reference/attention.ts), plus determinism and argument checking.
//
// Relative error ≤ 1e-5 for out, lse, dq, dk and dv. A query that sees no key must give
// out = 0 and lse = −∞ exactly, and zero dq; a key that no query sees gets dk = dv = 0
// exactly. The backward is fed the reference out and lse (rounded to f32) so a forward bug
// does not hide in it; every case also runs the backward from the backend's own forward.
// Layouts: MHA, GQA (6 heads / 2 kv heads), MQA; one sequence, two packed interleaved
// sequences, a step-skipping segment mask with blocked pairs, decode against cached keys
// with their own sequence ids and positions (Tk > Tq, one and several new tokens per
// sequence, with and without segments), queries that see no key; T = 1, primes, D = 5
// (odd), 8, 16, 32, 64, 128, a custom softmax scale and sharp softmaxes.
//
// cpu and cuda run every case; webgpu (Mesa lavapipe in CI: seconds per shader compile)
// runs the cases marked `webgpu`: every layout kind, T = 1, D ≤ 64 and D = 128 (its kernels
// specialise on ceil(D / 64)). MOTE_MODEL_FULL=1 runs every case on webgpu too.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { attention, attentionGrad, attentionLayout, type AttentionLayout, type AttentionLayoutInit } from '../src/ops/attention.js';
import { attentionBackwardRef, attentionDecodeRef, attentionRef } from '../src/reference/attention.js';
import { ArgumentError, BackendMismatchError, DTypeError, DisposedTensorError, ShapeError } from '../src/errors.js';
import { openBackend } from '../src/backend/select.js';
import type { Backend, BackendKind } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { closeBackends, forEachBackend, randn, rng } from './helpers.js';
import { Pool, Report, bitsEqual, throwsLike } from './case_helpers.js';

after(closeBackends);

const FULL = process.env.MOTE_MODEL_FULL === '1';

// ---------------------------------------------------------------------------------------
// Layouts

interface Layout {
  init: AttentionLayoutInit;
  Tq: number;
  Tk: number;
  /** for decode layouts: the cache, to cross-check the reference against attentionDecodeRef */
  cache?: { P: number; seq: number[]; pos: number[]; segment?: number[] };
}

function shuffle<T>(r: () => number, a: T[]): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/** One sequence of T tokens at positions 0..T−1. */
function single(T: number): Layout {
  return { init: { qSeq: Array(T).fill(0), qPos: Array.from({ length: T }, (_, i) => i) }, Tq: T, Tk: T };
}

/** Sequences of the given lengths (starting at the given positions), their tokens interleaved at random. */
function packed(r: () => number, lens: number[], starts: number[]): Layout {
  const order = shuffle(
    r,
    lens.flatMap((n, s) => Array(n).fill(s) as number[]),
  );
  const next = [...starts];
  const qSeq = order,
    qPos = order.map((s) => next[s]!++);
  return { init: { qSeq, qPos }, Tq: qSeq.length, Tk: qSeq.length };
}

/** Segment of a position: steps start at the given positions (segment 0 = prompt). */
const segOf = (starts: number[], pos: number) => starts.filter((s) => s <= pos).length - 1;

/**
 * Two packed sequences with S = 3 segments by position and blocked pairs: in sequence 0 step 2
 * does not see step 1; in sequence 1 steps 1 and 2 do not see the prompt (2 does see 1).
 */
function segmented(r: () => number, lens: [number, number]): Layout {
  const base = packed(r, lens, [0, 0]);
  const starts = [
    [0, 5, 11],
    [0, 3, 9],
  ];
  const S = 3;
  const blocked = new Array(2 * S * S).fill(0);
  blocked[(0 * S + 2) * S + 1] = 1;
  blocked[(1 * S + 1) * S + 0] = 1;
  blocked[(1 * S + 2) * S + 0] = true;
  const qSegment = Array.from(base.init.qSeq, (s, i) => segOf(starts[s]!, base.init.qPos[i]!));
  return { ...base, init: { ...base.init, segments: { numSegments: S, qSegment, blocked } } };
}

/**
 * Decode: sequences with cached tokens (positions 0..len−1, in shuffled order, each with its
 * sequence id), then `fresh` new tokens per sequence at the next positions. Keys = cache ++ new.
 */
function decode(r: () => number, cacheLens: number[], fresh: number, withSegments: boolean): Layout {
  const cSeq = shuffle(
    r,
    cacheLens.flatMap((n, s) => Array(n).fill(s) as number[]),
  );
  const next = cacheLens.map(() => 0);
  const cPos = cSeq.map((s) => next[s]!++);
  const qSeq: number[] = [],
    qPos: number[] = [];
  for (let k = 0; k < fresh; k++)
    for (let s = cacheLens.length - 1; s >= 0; s--) {
      qSeq.push(s);
      qPos.push(next[s]!++);
    }
  const init: AttentionLayoutInit = { qSeq, qPos, kSeq: [...cSeq, ...qSeq], kPos: [...cPos, ...qPos] };
  const cache: Layout['cache'] = { P: cSeq.length, seq: cSeq, pos: cPos };
  if (withSegments) {
    const S = 4,
      starts = [0, 4, 9, 15];
    const numSeqs = cacheLens.length;
    const blocked = new Array(numSeqs * S * S).fill(0);
    for (let s = 0; s < numSeqs; s++) blocked[(s * S + 3) * S + (1 + (s % 2))] = 1; // step 3 skips step 1 or 2
    blocked[(0 * S + 2) * S + 1] = 1;
    const cSeg = cPos.map((p) => segOf(starts, p)),
      qSeg = qPos.map((p) => segOf(starts, p));
    init.segments = { numSegments: S, qSegment: qSeg, kSegment: [...cSeg, ...qSeg], blocked };
    cache.segment = cSeg;
  }
  return { init, Tq: qSeq.length, Tk: cSeq.length + qSeq.length, cache };
}

/**
 * Cross attention to a key set in which query 1's sequence has no key and query 2's keys all
 * lie after it; keys 2, 4 and 6 are seen by no query (key 3 only by query 4).
 */
function noKey(): Layout {
  return {
    init: { qSeq: [0, 1, 2, 0, 2], qPos: [3, 0, 5, 1, 6], kSeq: [0, 0, 0, 2, 2, 0, 2], kPos: [0, 1, 5, 6, 7, 2, 9] },
    Tq: 5,
    Tk: 7,
  };
}

// ---------------------------------------------------------------------------------------
// The case matrix

interface Case {
  name: string;
  nH: number;
  nKv: number;
  D: number;
  layout: (r: () => number) => Layout;
  /** q scale (sharper softmax when larger; default 1) */
  qScale?: number;
  /** softmax scale passed to the ops (default 1/sqrt(D)) */
  scale?: number;
  webgpu?: boolean;
}

const CASES: Case[] = [
  { name: 'MHA T=1 nH=2 D=16', nH: 2, nKv: 2, D: 16, layout: () => single(1), webgpu: true },
  { name: 'MHA T=17 nH=4 D=16', nH: 4, nKv: 4, D: 16, layout: () => single(17) },
  { name: 'GQA 6/2 T=37 D=64', nH: 6, nKv: 2, D: 64, layout: () => single(37), webgpu: true },
  { name: 'MQA 4/1 T=13 D=8 sharp', nH: 4, nKv: 1, D: 8, layout: () => single(13), qScale: 6, webgpu: true },
  { name: 'MHA T=131 nH=2 D=64', nH: 2, nKv: 2, D: 64, layout: () => single(131) },
  { name: 'GQA 6/2 two interleaved sequences T=29 D=64', nH: 6, nKv: 2, D: 64, layout: (r) => packed(r, [17, 12], [0, 0]), webgpu: true },
  {
    name: 'MHA three packed sequences, one continuing at position 40, T=31 D=32',
    nH: 3,
    nKv: 3,
    D: 32,
    layout: (r) => packed(r, [11, 1, 19], [0, 0, 40]),
  },
  { name: 'MQA 4/1 segment mask with blocked pairs T=41 D=32', nH: 4, nKv: 1, D: 32, layout: (r) => segmented(r, [23, 18]), webgpu: true },
  { name: 'GQA 6/2 segment mask T=37 D=64 scale 0.3', nH: 6, nKv: 2, D: 64, layout: (r) => segmented(r, [20, 17]), scale: 0.3 },
  {
    name: 'GQA 6/2 decode: 3 new tokens against 28 cached (Tk=31) D=64',
    nH: 6,
    nKv: 2,
    D: 64,
    layout: (r) => decode(r, [13, 1, 14], 1, false),
    webgpu: true,
  },
  {
    name: 'MQA 4/1 decode with segments: 2 new tokens per sequence, D=16',
    nH: 4,
    nKv: 1,
    D: 16,
    layout: (r) => decode(r, [17, 9, 20], 2, true),
    webgpu: true,
  },
  { name: 'MHA decode: 4 new tokens of one sequence against 9 cached, D=8', nH: 2, nKv: 2, D: 8, layout: (r) => decode(r, [9], 4, false) },
  { name: 'GQA 6/2 queries that see no key D=16', nH: 6, nKv: 2, D: 16, layout: () => noKey(), webgpu: true },
  { name: 'MHA T=19 nH=2 D=128 sharp', nH: 2, nKv: 2, D: 128, layout: () => single(19), qScale: 3, webgpu: true },
  { name: 'MQA 3/1 T=11 odd D=5', nH: 3, nKv: 1, D: 5, layout: () => single(11), webgpu: true },
  { name: 'GQA 4/2 T=7 D=1 scale 2', nH: 4, nKv: 2, D: 1, layout: () => single(7), scale: 2 },
];

async function runCase(b: Backend, c: Case, seed: number): Promise<void> {
  const r = rng(seed);
  const L = c.layout(r);
  const { Tq, Tk } = L;
  const { nH, nKv, D } = c;
  const qs = randn(r, Tq * nH * D, c.qScale ?? 1),
    ks = randn(r, Tk * nKv * D),
    vs = randn(r, Tk * nKv * D),
    dOs = randn(r, Tq * nH * D);
  const dims = { Tq, Tk, numHeads: nH, numKvHeads: nKv, headDim: D, ...(c.scale !== undefined ? { scale: c.scale } : {}) };
  const ref = attentionRef(qs, ks, vs, dims, L.init);
  const g = attentionBackwardRef(dOs, qs, ks, vs, dims, L.init);
  if (L.cache) {
    // the decode layout means what it says: the same as attentionDecodeRef with that cache
    const P = L.cache.P,
      row = nKv * D;
    const dec = attentionDecodeRef(
      qs,
      ks.slice(P * row),
      vs.slice(P * row),
      { k: ks.slice(0, P * row), v: vs.slice(0, P * row), seq: L.cache.seq, pos: L.cache.pos, segment: L.cache.segment },
      dims,
      { qSeq: L.init.qSeq, qPos: L.init.qPos, ...(L.init.segments ? { segments: { ...L.init.segments, kSegment: undefined } } : {}) },
    );
    assert.deepEqual(dec.out, ref.out, 'decode layout vs attentionDecodeRef');
  }
  // which rows are empty: queries that see no key (lse = −∞), keys no query sees
  const deadQ = new Set<number>();
  for (let i = 0; i < Tq; i++) if (ref.lse[i * nH] === -Infinity) deadQ.add(i);
  const deadK = new Set<number>();
  for (let j = 0; j < Tk; j++) {
    let seen = false;
    for (let h = 0; h < nKv * D; h++) if (g.dv[j * nKv * D + h] !== 0) seen = true;
    if (!seen) deadK.add(j);
  }
  const qRow = (i: number) => Math.floor(i / (nH * D)),
    kRow = (i: number) => Math.floor(i / (nKv * D));
  const lseLive = (i: number) => !deadQ.has(Math.floor(i / nH));
  const opts = c.scale !== undefined ? { scale: c.scale } : {};

  const p = new Pool(b);
  const rep = new Report(`attention ${c.name} on ${b.kind}`);
  let l: AttentionLayout | null = null;
  try {
    l = attentionLayout(b, L.init);
    assert.equal(l.Tq, Tq);
    assert.equal(l.Tk, Tk);
    const q = p.t(qs, [Tq, nH, D]),
      k = p.t(ks, [Tk, nKv, D]),
      v = p.t(vs, [Tk, nKv, D]),
      dOut = p.t(dOs, [Tq, nH, D]);
    const layout = l;

    const checkGrad = async (what: string, res: { dq: Tensor; dk: Tensor; dv: Tensor }) => {
      p.keep(res.dq);
      p.keep(res.dk);
      p.keep(res.dv);
      assert.deepEqual(res.dq.shape, [Tq, nH, D]);
      assert.deepEqual(res.dk.shape, [Tk, nKv, D]);
      assert.deepEqual(res.dv.shape, [Tk, nKv, D]);
      const dq = await res.dq.readFloat(),
        dk = await res.dk.readFloat(),
        dv = await res.dv.readFloat();
      rep.close(`${what} dq`, dq, g.dq);
      rep.close(`${what} dk`, dk, g.dk);
      rep.close(`${what} dv`, dv, g.dv);
      rep.exact(`${what} dq (queries that see no key)`, dq, 0, (i) => deadQ.has(qRow(i)));
      rep.exact(`${what} dk (keys no query sees)`, dk, 0, (i) => deadK.has(kRow(i)));
      rep.exact(`${what} dv (keys no query sees)`, dv, 0, (i) => deadK.has(kRow(i)));
    };

    let fwd: { out: Tensor; lse: Tensor } | null = null;
    await rep.step('attention', async () => {
      const res = attention(q, k, v, layout, opts);
      p.keep(res.out);
      p.keep(res.lse);
      assert.deepEqual(res.out.shape, [Tq, nH, D]);
      assert.deepEqual(res.lse.shape, [Tq, nH]);
      const out = await res.out.readFloat(),
        lse = await res.lse.readFloat();
      rep.close('attention out', out, ref.out);
      rep.close('attention lse', lse, ref.lse, lseLive);
      rep.exact('attention lse (queries that see no key)', lse, -Infinity, (i) => !lseLive(i));
      rep.exact('attention out (queries that see no key)', out, 0, (i) => deadQ.has(qRow(i)));
      fwd = res;
    });

    await rep.step('attentionGrad (reference out, lse)', async () => {
      const out = p.t(Float32Array.from(ref.out), [Tq, nH, D]),
        lse = p.t(Float32Array.from(ref.lse), [Tq, nH]);
      await checkGrad('attentionGrad', attentionGrad(dOut, q, k, v, out, lse, layout, opts));
    });

    await rep.step('attentionGrad (backend out, lse)', async () => {
      if (!fwd) throw new Error('no forward result');
      const f = fwd as { out: Tensor; lse: Tensor };
      await checkGrad('attentionGrad after the backend forward', attentionGrad(dOut, q, k, v, f.out, f.lse, layout, opts));
    });

    await rep.step('inputs untouched', async () => {
      rep.exact('q after the ops', await q.readFloat(), qs);
      rep.exact('k after the ops', await k.readFloat(), ks);
      rep.exact('v after the ops', await v.readFloat(), vs);
      rep.exact('dOut after the ops', await dOut.readFloat(), dOs);
      assert.deepEqual(Array.from(await layout.kPos.read()), Array.from(L.init.kPos ?? L.init.qPos), 'layout.kPos after the ops');
    });
  } finally {
    p.dispose();
    l?.dispose();
  }
  // the case is what it claims to be
  if (c.name.includes('no key')) assert.ok(deadQ.size >= 2 && deadK.size >= 2, 'the no-key layout has dead queries and keys');
  if (c.name.includes('segment')) {
    const free = attentionRef(qs, ks, vs, dims, { ...L.init, segments: undefined });
    assert.notDeepEqual(free.out, ref.out, 'the segment mask blocks something');
  }
  rep.done();
}

let seed = 700;
for (const c of CASES) {
  const kinds: BackendKind[] = FULL || c.webgpu ? ['cpu', 'webgpu', 'cuda'] : ['cpu', 'cuda'];
  const s = seed++;
  forEachBackend(`attention ${c.name}`, (b) => runCase(b, c, s), { kinds });
}

// ---------------------------------------------------------------------------------------
// Determinism: forward and backward twice give the same bits (reductions over keys / queries)

forEachBackend('attention and attentionGrad are deterministic', async (b) => {
  const r = rng(41);
  const L = segmented(r, [40, 27]);
  const nH = 6,
    nKv = 2,
    D = 64,
    { Tq, Tk } = L;
  const qs = randn(r, Tq * nH * D, 2),
    ks = randn(r, Tk * nKv * D),
    vs = randn(r, Tk * nKv * D),
    dOs = randn(r, Tq * nH * D);
  const p = new Pool(b);
  const l = attentionLayout(b, L.init);
  try {
    const q = p.t(qs, [Tq, nH, D]),
      k = p.t(ks, [Tk, nKv, D]),
      v = p.t(vs, [Tk, nKv, D]),
      dOut = p.t(dOs, [Tq, nH, D]);
    const runs: Record<string, Float32Array>[] = [];
    for (let i = 0; i < 2; i++) {
      const { out, lse } = attention(q, k, v, l);
      p.keep(out);
      p.keep(lse);
      const { dq, dk, dv } = attentionGrad(dOut, q, k, v, out, lse, l);
      p.keep(dq);
      p.keep(dk);
      p.keep(dv);
      runs.push({
        out: await out.readFloat(),
        lse: await lse.readFloat(),
        dq: await dq.readFloat(),
        dk: await dk.readFloat(),
        dv: await dv.readFloat(),
      });
    }
    for (const key of Object.keys(runs[0]!)) {
      assert.ok(runs[0]![key]!.every(Number.isFinite), `${key}: non-finite output`);
      assert.ok(bitsEqual(runs[0]![key]!, runs[1]![key]!), `${key}: two runs differ in their bits`);
    }
    const dims = { Tq, Tk, numHeads: nH, numKvHeads: nKv, headDim: D };
    const g = attentionBackwardRef(dOs, qs, ks, vs, dims, L.init);
    const rep = new Report(`attention determinism on ${b.kind}`);
    rep.close('out', runs[0]!.out!, attentionRef(qs, ks, vs, dims, L.init).out);
    rep.close('dq', runs[0]!.dq!, g.dq);
    rep.close('dk', runs[0]!.dk!, g.dk);
    rep.close('dv', runs[0]!.dv!, g.dv);
    rep.done();
  } finally {
    p.dispose();
    l.dispose();
  }
});

// A NaN score must reach the output: the running max skips NaN, and a row whose scores were all
// NaN looked like a row with no visible key (output 0, lse −∞), so a NaN query vanished.
// webgpu: WGSL lets a compiler assume no NaN, so the kernel tests L's bits (x != x folds to false
// on lavapipe); checked here on the adapter at hand, not guaranteed on every driver.
forEachBackend(
  'a NaN in q or k makes exactly the rows that read it NaN, not zero',
  async (b) => {
    const r = rng(43);
    const L = packed(r, [12, 9], [0, 0]);
    const nH = 2,
      nKv = 1,
      D = 8,
      { Tq, Tk } = L;
    const qs = randn(r, Tq * nH * D),
      ks = randn(r, Tk * nKv * D),
      vs = randn(r, Tk * nKv * D);
    qs[(4 * nH + 1) * D + 3] = NaN; // query 4, head 1: every score of that row is NaN
    ks[(15 * nKv + 0) * D + 2] = NaN; // key 15 (the second sequence): rows that see it
    const dims = { Tq, Tk, numHeads: nH, numKvHeads: nKv, headDim: D };
    const ref = attentionRef(qs, ks, vs, dims, L.init);
    const nanRows = (out: ArrayLike<number>) =>
      Array.from({ length: Tq * nH }, (_, row) => Number.isNaN(out[row * D]!)).flatMap((n, row) => (n ? [row] : []));
    const want = nanRows(ref.out);
    assert.ok(want.includes(4 * nH + 1) && want.length > 2, `the reference propagates the NaN (rows ${want.join(', ')})`);
    const p = new Pool(b);
    const l = attentionLayout(b, L.init);
    try {
      const { out, lse } = attention(p.t(qs, [Tq, nH, D]), p.t(ks, [Tk, nKv, D]), p.t(vs, [Tk, nKv, D]), l);
      p.keep(out);
      p.keep(lse);
      const o = await out.readFloat(),
        e = await lse.readFloat();
      assert.deepEqual(nanRows(o), want, 'NaN rows');
      for (const row of want) assert.ok(Number.isNaN(e[row]!), `lse of row ${row}: ${e[row]}`);
      for (let row = 0; row < Tq * nH; row++)
        if (!want.includes(row))
          for (let c = 0; c < D; c++) assert.ok(Math.abs(o[row * D + c]! - ref.out[row * D + c]!) < 1e-4, `row ${row} elsewhere`);
    } finally {
      p.dispose();
      l.dispose();
    }
  },
  { kinds: ['cpu', 'cuda', 'webgpu'] },
);

// ---------------------------------------------------------------------------------------
// Bad input: the right MoteError subclass and a message naming the argument

forEachBackend('attention ops reject bad input', async (b) => {
  const r = rng(43);
  const T = 3,
    nH = 6,
    nKv = 2,
    D = 8;
  const p = new Pool(b);
  const layouts: AttentionLayout[] = [];
  const lay = (init: AttentionLayoutInit) => {
    const l = attentionLayout(b, init);
    layouts.push(l);
    return l;
  };
  let other: Backend | null = null;
  try {
    const base = { qSeq: [0, 0, 0], qPos: [0, 1, 2] };
    const l = lay(base);
    const q = p.t(randn(r, T * nH * D), [T, nH, D]),
      k = p.t(randn(r, T * nKv * D), [T, nKv, D]),
      v = p.t(randn(r, T * nKv * D), [T, nKv, D]);
    const out = p.t(randn(r, T * nH * D), [T, nH, D]),
      lse = p.t(randn(r, T * nH), [T, nH]),
      dOut = p.t(randn(r, T * nH * D), [T, nH, D]);

    // heads
    const k4 = p.t(randn(r, T * 4 * D), [T, 4, D]);
    throwsLike(
      () => attention(q, k4, p.t(randn(r, T * 4 * D), [T, 4, D]), l),
      ShapeError,
      /attention: k: kv heads \(4\) must divide query heads \(6\)/,
      'kv heads not dividing heads',
    );
    throwsLike(
      () => attentionGrad(dOut, q, k4, p.t(randn(r, T * 4 * D), [T, 4, D]), out, lse, l),
      ShapeError,
      /attentionGrad: k: kv heads \(4\) must divide query heads \(6\)/,
      'grad kv heads not dividing heads',
    );
    // shapes and dtypes of q, k, v
    throwsLike(
      () => attention(p.t(randn(r, T * nH * D), [T, nH, D], 'f16'), k, v, l),
      DTypeError,
      /attention: q: expected dtype f32, got f16/,
      'q f16',
    );
    throwsLike(
      () => attention(q, p.t(randn(r, T * nKv * D), [T, nKv, D], 'bf16'), v, l),
      DTypeError,
      /attention: k: expected dtype f32, got bf16/,
      'k bf16',
    );
    throwsLike(
      () => attention(p.t(randn(r, T * nH * D), [T, nH * D]), k, v, l),
      ShapeError,
      /attention: q: expected shape \[Tq, nH, D\], got \[3, 48\]/,
      'q 2-D',
    );
    throwsLike(
      () => attention(q, p.t(randn(r, T * nKv * 4), [T, nKv, 4]), v, l),
      ShapeError,
      /attention: k: .*D = 8 \(from q\)/,
      'k of another head dim',
    );
    throwsLike(
      () => attention(q, k, p.t(randn(r, 4 * nKv * D), [4, nKv, D]), l),
      ShapeError,
      /attention: v: .*Tk = 3 \(from k\)/,
      'v of another Tk',
    );
    // layout against the tensors
    throwsLike(
      () => attention(q, k, v, lay({ qSeq: [0, 0], qPos: [0, 1] })),
      ShapeError,
      /attention: layout\.qSeq: expected shape \[Tq\] with Tq = 3 \(from q\), got \[2\]/,
      'layout of another Tq',
    );
    throwsLike(
      () => attention(q, k, v, lay({ ...base, kSeq: [0, 0, 0, 0], kPos: [0, 1, 2, 3] })),
      ShapeError,
      /attention: layout\.kSeq: .*Tk = 3/,
      'layout of another Tk',
    );
    throwsLike(
      () => attention(q, k, v, base as unknown as AttentionLayout),
      ArgumentError,
      /attention: layout: expected an AttentionLayout/,
      'layout a plain object',
    );
    for (const s of [0, -1, NaN, Infinity])
      throwsLike(
        () => attention(q, k, v, l, { scale: s }),
        ArgumentError,
        /attention: scale: expected a positive finite number/,
        `scale ${s}`,
      );
    // attentionGrad's own tensors
    throwsLike(
      () => attentionGrad(p.t(randn(r, T * nH * 4), [T, nH, 4]), q, k, v, out, lse, l),
      ShapeError,
      /attentionGrad: dOut: .*D = 8/,
      'dOut of another D',
    );
    throwsLike(
      () => attentionGrad(dOut, q, k, v, p.t(randn(r, T * nH * D), [T, nH, D], 'f16'), lse, l),
      DTypeError,
      /attentionGrad: out: expected dtype f32, got f16/,
      'out f16',
    );
    throwsLike(
      () => attentionGrad(dOut, q, k, v, out, p.t(randn(r, T * nKv), [T, nKv]), l),
      ShapeError,
      /attentionGrad: lse: expected shape \[Tq, nH\] with nH = 6/,
      'lse [Tq, nKv]',
    );
    throwsLike(
      () => attentionGrad(dOut, q, k, v, out, p.t(randn(r, T * nH), [T * nH]), l),
      ShapeError,
      /attentionGrad: lse: expected shape \[Tq, nH\]/,
      'lse 1-D',
    );

    // the layout itself
    const seg = (blocked: number[], extra: Partial<NonNullable<AttentionLayoutInit['segments']>> = {}) => ({
      ...base,
      segments: { numSegments: 3, qSegment: [0, 1, 2], blocked, ...extra },
    });
    const z = () => new Array(9).fill(0);
    const up = z();
    up[0 * 3 + 1] = 1; // [0][0][1]: segment 0 blocked from the later segment 1
    throwsLike(
      () => lay(seg(up)),
      ArgumentError,
      /attentionLayout: segments\.blocked\[0\]\[0\]\[1\]: only a later segment may be blocked from an earlier one/,
      'blocked earlier → later',
    );
    const diag = z();
    diag[1 * 3 + 1] = 1;
    throwsLike(
      () => lay(seg(diag)),
      ArgumentError,
      /attentionLayout: segments\.blocked\[0\]\[1\]\[1\]: only a later segment/,
      'segment blocked from itself',
    );
    const two = [...z(), ...z()];
    two[9 + 0 * 3 + 2] = 1;
    throwsLike(
      () => lay(seg(two)),
      ArgumentError,
      /attentionLayout: segments\.blocked\[1\]\[0\]\[2\]: /,
      'blocked earlier → later in sequence 1',
    );
    throwsLike(
      () => lay(seg(new Array(10).fill(0))),
      ShapeError,
      /attentionLayout: segments\.blocked: expected numSeqs·3·3 entries, got 10/,
      'blocked not numSeqs·S·S',
    );
    throwsLike(
      () => lay(seg(z(), { qSegment: [0, 1, 3] })),
      ArgumentError,
      /attentionLayout: segments\.qSegment\[2\]: expected an integer in \[0, 2\], got 3/,
      'segment id ≥ S',
    );
    throwsLike(
      () => lay(seg(z(), { numSegments: 0 })),
      ArgumentError,
      /attentionLayout: segments\.numSegments: expected a positive integer, got 0/,
      'numSegments 0',
    );
    throwsLike(
      () => lay({ qSeq: [0, 1, 0], qPos: [0, 0, 1], segments: { numSegments: 3, qSegment: [0, 0, 1], blocked: z() } }),
      ArgumentError,
      /attentionLayout: qSeq\[1\]: sequence 1 has no entry in segments\.blocked \(numSeqs = 1\)/,
      'sequence without a blocked table',
    );
    throwsLike(
      () => lay({ ...base, kSeq: [0, 0, 0, 0], kPos: [0, 1, 2, 3], segments: { numSegments: 3, qSegment: [0, 1, 2], blocked: z() } }),
      ShapeError,
      /attentionLayout: segments\.kSegment: expected 4 entries/,
      'kSegment missing with own keys',
    );
    throwsLike(() => lay({ qSeq: [0, 0, 0], qPos: [0, 1] }), ShapeError, /attentionLayout: qPos: expected 3 entries, got 2/, 'qPos length');
    throwsLike(
      () => lay({ qSeq: [0, 0, 0], qPos: [0, -1, 2] }),
      ArgumentError,
      /attentionLayout: qPos\[1\]: expected an integer in \[0, /,
      'negative position',
    );
    throwsLike(
      () => lay({ qSeq: [0, 0.5, 0], qPos: [0, 1, 2] }),
      ArgumentError,
      /attentionLayout: qSeq\[1\]: expected an integer/,
      'fractional sequence id',
    );
    throwsLike(() => lay({ ...base, kSeq: [0, 0, 0, 0] }), ShapeError, /attentionLayout: kPos: expected 4 entries/, 'kSeq without kPos');
    throwsLike(() => lay({ qSeq: [], qPos: [] }), ShapeError, /attentionLayout: qSeq: expected at least one query token/, 'no queries');

    // disposed, another backend
    const ld = attentionLayout(b, base);
    ld.dispose();
    throwsLike(() => attention(q, k, v, ld), DisposedTensorError, /attention: layout\.qSeq\b/, 'disposed layout');
    const vd = p.t(randn(r, T * nKv * D), [T, nKv, D]);
    vd.dispose();
    throwsLike(() => attention(q, k, vd, l), DisposedTensorError, /attention: v\b/, 'disposed v');
    const o = (other = (await openBackend('cpu').catch(() => null)) ?? (await openBackend(b.kind)));
    const lo = attentionLayout(o, base);
    throwsLike(
      () => attention(q, k, v, lo),
      BackendMismatchError,
      /attention: layout\.qSeq: expected a tensor on the .* backend/,
      'layout of another backend',
    );
    lo.dispose();
    throwsLike(
      () => attentionGrad(dOut, q, k, v, out, o.tensor(randn(r, T * nH), [T, nH]), l),
      BackendMismatchError,
      /attentionGrad: lse: expected a tensor on the/,
      'lse of another backend',
    );
  } finally {
    p.dispose();
    for (const l of layouts) l.dispose();
    other?.destroy();
  }
});

test('case matrix: MHA, GQA, MQA, packing, segments, decode, no-key queries and both D ranges reach webgpu', () => {
  const wg = CASES.filter((c) => c.webgpu);
  assert.ok(wg.some((c) => c.nH === c.nKv) && wg.some((c) => c.nKv === 1) && wg.some((c) => c.nKv > 1 && c.nKv < c.nH));
  for (const word of ['interleaved', 'segment', 'decode', 'no key', 'T=1 ', 'odd'])
    assert.ok(
      wg.some((c) => c.name.includes(word)),
      word,
    );
  assert.ok(wg.some((c) => c.D <= 64) && wg.some((c) => c.D > 64));
});

forEachBackend('layout tensors are read-only: write() into them is refused', async (b) => {
  const l = attentionLayout(b, {
    qSeq: [0, 0, 0],
    qPos: [0, 1, 2],
    segments: { numSegments: 2, qSegment: [0, 1, 1], blocked: [0, 0, 1, 0] },
  });
  try {
    // A GPU kernel trusts these (checked on the host when built): ranges of 10^8 used to be writable.
    for (const n of ['qSeq', 'qPos', 'kSeq', 'kPos', 'qSeg', 'kSeg', 'blocked', 'ranges'] as const) {
      const t = l[n];
      assert.throws(
        () => t.write(new Array(t.size).fill(100_000_000)),
        (e: Error) => e instanceof ArgumentError && /write: tensor #\d+ .* is read-only/.test(e.message),
        n,
      );
    }
  } finally {
    l.dispose();
  }
});
