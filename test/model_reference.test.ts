// The float64 references of the LLaMA-family forward ops (src/reference/{embedding, rmsnorm,
// rope, attention, swiglu, xent, residual}.ts): every backward against central finite
// differences of a random linear functional ℓ = Σ out ⊙ G of the forward, on tiny awkward
// shapes, plus semantic checks of each op. Pure JS, no backend.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { embeddingBackwardRef, embeddingRef } from '../src/reference/embedding.js';
import { rmsnormBackwardRef, rmsnormRef, rmsnormRstdRef } from '../src/reference/rmsnorm.js';
import { ropeBackwardRef, ropeInvFreqRef, ropeRef } from '../src/reference/rope.js';
import {
  attentionBackwardRef,
  attentionDecodeRef,
  attentionProbsRef,
  attentionRef,
  type AttentionDims,
  type AttentionLayout,
} from '../src/reference/attention.js';
import { swigluBackwardRef, swigluRef } from '../src/reference/swiglu.js';
import { logSoftmaxRef, xentBackwardRef, xentRef } from '../src/reference/xent.js';
import { residualAddRef } from '../src/reference/residual.js';
import { rng } from './helpers.js';
import { assertClose, fd } from './fd.js';

/** Uniform in ±[0.1, 1]·scale, float64 (never zero). */
function rand64(r: () => number, n: number, scale = 1): Float64Array {
  return Float64Array.from({ length: n }, () => (r() < 0.5 ? -1 : 1) * (0.1 + 0.9 * r()) * scale);
}

/** Σ a ⊙ b */
function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

function assertEqualArrays(name: string, got: ArrayLike<number>, want: ArrayLike<number>): void {
  assert.equal(got.length, want.length, `${name}: length`);
  for (let i = 0; i < want.length; i++) assert.equal(got[i], want[i], `${name}[${i}]`);
}

const FD_TOL = 1e-7;

// ---------------------------------------------------------------- embedding

test('embedding: gathers rows, scatter-adds gradients (repeated ids), rejects bad ids', () => {
  const r = rng(11);
  const V = 7,
    H = 3;
  const ids = [4, 0, 4, 6, 2]; // 4 repeated; 1, 3, 5 absent
  const E = rand64(r, V * H);
  const y = embeddingRef(ids, E, V, H);
  for (let t = 0; t < ids.length; t++) for (let h = 0; h < H; h++) assert.equal(y[t * H + h], E[ids[t]! * H + h]);
  const G = rand64(r, ids.length * H);
  const dE = embeddingBackwardRef(ids, G, V, H);
  assertClose(
    'dE',
    dE,
    fd(E, () => dot(embeddingRef(ids, E, V, H), G)),
    FD_TOL,
  );
  for (const absent of [1, 3, 5]) for (let h = 0; h < H; h++) assert.equal(dE[absent * H + h], 0);
  // accumulation into an existing gradient
  const dE0 = rand64(r, V * H);
  const acc = embeddingBackwardRef(ids, G, V, H, dE0);
  assertClose(
    'dE + dE0',
    acc,
    dE.map((x, i) => x + dE0[i]!),
    1e-15,
  );
  // T = 1, V = 1
  assertEqualArrays('T=1 V=1', embeddingRef([0], [2.5, -1], 1, 2), [2.5, -1]);
  assert.throws(() => embeddingRef([7], E, V, H), /ids\[0\] = 7 not in \[0, 6\]/);
  assert.throws(() => embeddingRef([-1], E, V, H), /ids\[0\] = -1/);
  assert.throws(() => embeddingRef([1.5], E, V, H), /ids\[0\] = 1.5/);
  assert.throws(() => embeddingRef([0], E, V + 1, H), /E: expected 24 entries, got 21/);
});

// ---------------------------------------------------------------- rmsnorm

for (const [T, H] of [
  [1, 1],
  [3, 7],
  [2, 13],
] as const) {
  test(`rmsnorm backward matches finite differences: T=${T} H=${H}`, () => {
    const r = rng(100 + T * H);
    const eps = 1e-5;
    const x = rand64(r, T * H),
      w = rand64(r, H),
      G = rand64(r, T * H);
    const f = () => dot(rmsnormRef(x, w, T, H, eps), G);
    const { dx, dw } = rmsnormBackwardRef(G, x, w, T, H, eps);
    assertClose('dx', dx, fd(x, f), FD_TOL);
    assertClose('dw', dw, fd(w, f), FD_TOL);
  });
}

test('rmsnorm: matches the HF formula, is scale invariant, has unit RMS before the weight', () => {
  const r = rng(5);
  const T = 3,
    H = 11,
    eps = 1e-6;
  const x = rand64(r, T * H),
    w = rand64(r, H);
  const y = rmsnormRef(x, w, T, H, eps);
  const rstd = rmsnormRstdRef(x, T, H, eps);
  for (let t = 0; t < T; t++) {
    const row = x.subarray(t * H, (t + 1) * H);
    const ms = dot(row, row) / H;
    assert.ok(Math.abs(rstd[t]! - 1 / Math.sqrt(ms + eps)) < 1e-15);
    for (let h = 0; h < H; h++) assert.ok(Math.abs(y[t * H + h]! - (w[h]! * x[t * H + h]!) / Math.sqrt(ms + eps)) < 1e-14);
  }
  // eps = 0: exactly invariant to a positive scale of each row (up to rounding)
  const ones = new Float64Array(H).fill(1);
  const y0 = rmsnormRef(x, w, T, H, 0);
  for (const c of [3.7, 1e-3, 250])
    assertClose(
      `scale ${c}`,
      rmsnormRef(
        x.map((v) => c * v),
        w,
        T,
        H,
        0,
      ),
      y0,
      1e-14,
    );
  // with eps, invariant up to O(eps / mean x²)
  assertClose(
    'scale 3 with eps',
    rmsnormRef(
      x.map((v) => 3 * v),
      w,
      T,
      H,
      eps,
    ),
    y,
    1e-4,
  );
  const n = rmsnormRef(x, ones, T, H, 0);
  for (let t = 0; t < T; t++) {
    const row = n.subarray(t * H, (t + 1) * H);
    assert.ok(Math.abs(dot(row, row) / H - 1) < 1e-14, 'unit RMS');
  }
});

// ---------------------------------------------------------------- swiglu

for (const [T, I] of [
  [1, 5],
  [3, 2],
  [2, 7],
] as const) {
  test(`swiglu backward matches finite differences: T=${T} I=${I}`, () => {
    const r = rng(200 + T * I);
    const gate = rand64(r, T * I, 3),
      up = rand64(r, T * I),
      G = rand64(r, T * I);
    const f = () => dot(swigluRef(gate, up, T, I), G);
    const { dgate, dup } = swigluBackwardRef(G, gate, up, T, I);
    assertClose('dgate', dgate, fd(gate, f), FD_TOL);
    assertClose('dup', dup, fd(up, f), FD_TOL);
  });
}

test('swiglu: silu(g)·u values', () => {
  const y = swigluRef([0, 1, -2, 20], [5, 2, 3, 0.5], 2, 2);
  const silu = (g: number) => g / (1 + Math.exp(-g));
  assertClose('y', y, [0, 2 * silu(1), 3 * silu(-2), 0.5 * silu(20)], 1e-15);
  assert.throws(() => swigluRef([1, 2], [1], 1, 2), /up: expected 2 entries, got 1/);
});

// ---------------------------------------------------------------- residual

test('residual add', () => {
  assertEqualArrays('a+b', residualAddRef([1, 2, 3], [0.5, -2, 4], 3), [1.5, 0, 7]);
  assert.throws(() => residualAddRef([1], [1, 2], 1), /b: expected 1 entries, got 2/);
});

// ---------------------------------------------------------------- rope

test('rope inverse frequencies: default, linear, llama3 (all three regimes, as HF _compute_llama3_parameters)', () => {
  const D = 8,
    theta = 10000;
  const base = [1, 0.1, 0.01, 0.001];
  assertClose('default', ropeInvFreqRef(D, theta), base, 1e-14);
  assertClose('default (null)', ropeInvFreqRef(D, theta, null), base, 1e-14);
  assertClose('default (rope_type)', ropeInvFreqRef(D, theta, { rope_type: 'default' }), base, 1e-14);
  assertClose(
    'linear',
    ropeInvFreqRef(D, theta, { type: 'linear', factor: 4 }),
    base.map((f) => f / 4),
    1e-14,
  );
  // wavelengths 2π/f: 6.28, 62.8, 628, 6283. orig = 256, low = 1, high = 8: lowWl = 256,
  // highWl = 32. 6.28 < 32 → kept; 32 ≤ 62.8 ≤ 256 → smoothed; 628, 6283 > 256 → / factor.
  const factor = 8,
    orig = 256,
    low = 1,
    high = 8;
  const wl = (2 * Math.PI) / 0.1;
  const smooth = (orig / wl - low) / (high - low);
  const medium = ((1 - smooth) * 0.1) / factor + smooth * 0.1;
  const want = [1, medium, 0.01 / factor, 0.001 / factor];
  const got = ropeInvFreqRef(D, theta, {
    rope_type: 'llama3',
    factor,
    low_freq_factor: low,
    high_freq_factor: high,
    original_max_position_embeddings: orig,
  });
  assertClose('llama3', got, want, 1e-14);
  assert.ok(got[1]! < 0.1 && got[1]! > 0.1 / factor, 'the medium frequency lies between the two');
  // Llama 3.1 defaults (theta 5e5, factor 8, low 1, high 4, orig 8192, D = 128): frequencies with
  // wavelength < 2048 are untouched, > 8192 are divided by 8, in between are interpolated.
  const D31 = 128;
  const l31 = ropeInvFreqRef(D31, 500000, {
    rope_type: 'llama3',
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 8192,
  });
  const plain = ropeInvFreqRef(D31, 500000);
  let kept = 0,
    divided = 0,
    mid = 0;
  for (let i = 0; i < D31 / 2; i++) {
    const w = (2 * Math.PI) / plain[i]!;
    if (w < 2048) {
      assert.equal(l31[i], plain[i]);
      kept++;
    } else if (w > 8192) {
      assert.ok(Math.abs(l31[i]! - plain[i]! / 8) <= 1e-15 * plain[i]!);
      divided++;
    } else {
      assert.ok(l31[i]! < plain[i]! && l31[i]! > plain[i]! / 8);
      mid++;
    }
  }
  assert.ok(kept > 0 && divided > 0 && mid > 0, `${kept} kept, ${mid} interpolated, ${divided} divided`);
  assert.throws(() => ropeInvFreqRef(7, theta), /headDim: expected an even integer/);
  assert.throws(() => ropeInvFreqRef(D, theta, { rope_type: 'yarn', factor: 2 }), /'yarn' is not supported/);
  assert.throws(() => ropeInvFreqRef(D, theta, { rope_type: 'llama3', factor: 8 }), /low_freq_factor/);
});

test('rope: rotate-half convention, position 0 is the identity, norms kept, q·k depends on relative position', () => {
  const r = rng(7);
  const T = 4,
    heads = 3,
    D = 6;
  const inv = ropeInvFreqRef(D, 10000);
  const x = rand64(r, T * heads * D);
  const pos = [0, 1, 17, 1000];
  const y = ropeRef(x, pos, inv, T, heads, D);
  // explicit HF form: cos = cat(cos θ, cos θ), rotate_half(x) = cat(−x2, x1)
  for (let t = 0; t < T; t++)
    for (let h = 0; h < heads; h++) {
      const b = (t * heads + h) * D;
      const xs = Array.from(x.subarray(b, b + D));
      const rot = [...xs.slice(D / 2).map((v) => -v), ...xs.slice(0, D / 2)];
      for (let c = 0; c < D; c++) {
        const th = pos[t]! * inv[c % (D / 2)]!;
        assert.ok(Math.abs(y[b + c]! - (xs[c]! * Math.cos(th) + rot[c]! * Math.sin(th))) < 1e-14);
      }
      const yr = y.subarray(b, b + D);
      assert.ok(Math.abs(dot(yr, yr) - dot(xs, xs)) < 1e-13, 'rotation keeps the norm');
    }
  // position 0: identity (exactly)
  for (let i = 0; i < heads * D; i++) assert.equal(y[i], x[i]);
  // backward undoes forward (orthogonal)
  assertClose('R^T R x = x', ropeBackwardRef(y, pos, inv, T, heads, D), x, 1e-14);
  // ⟨rope(q, m), rope(k, n)⟩ depends on m − n only
  const q = rand64(r, D),
    k = rand64(r, D);
  const score = (m: number, n: number) => dot(ropeRef(q, [m], inv, 1, 1, D), ropeRef(k, [n], inv, 1, 1, D));
  assert.ok(Math.abs(score(5, 2) - score(103, 100)) < 1e-12);
  assert.ok(Math.abs(score(5, 2) - score(2, 5)) > 1e-6, 'not symmetric in m, n');
  assert.throws(() => ropeRef(x, [0, 1], inv, T, heads, D), /positions: expected 4 entries, got 2/);
});

for (const c of [
  { name: 'default theta, T=1', T: 1, heads: 1, D: 2, pos: [3], scaling: undefined },
  {
    name: 'llama3 scaling, 3 kv heads, D=8',
    T: 5,
    heads: 3,
    D: 8,
    pos: [0, 7, 31, 250, 4099],
    scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 8, original_max_position_embeddings: 256 },
  },
  { name: 'linear scaling, 2 heads, D=4', T: 3, heads: 2, D: 4, pos: [11, 2, 5], scaling: { type: 'linear', factor: 2 } },
]) {
  test(`rope backward matches finite differences: ${c.name}`, () => {
    const r = rng(300 + c.T);
    const inv = ropeInvFreqRef(c.D, 10000, c.scaling);
    const n = c.T * c.heads * c.D;
    const x = rand64(r, n),
      G = rand64(r, n);
    const dx = ropeBackwardRef(G, c.pos, inv, c.T, c.heads, c.D);
    assertClose(
      'dx',
      dx,
      fd(x, () => dot(ropeRef(x, c.pos, inv, c.T, c.heads, c.D), G)),
      FD_TOL,
    );
  });
}

// ---------------------------------------------------------------- attention

interface AttnCase {
  name: string;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  layout: AttentionLayout;
}

// Two packed sequences: seq 0 has 4 tokens in segments [0, 1, 1, 2] and segment 2 may not see
// segment 1; seq 1 has 3 tokens in segments [0, 0, 1], nothing blocked. Rows interleaved and
// out of position order, to show that only the per-token ids and positions matter.
const PACKED: AttentionLayout = {
  qSeq: [0, 0, 1, 0, 1, 0, 1],
  qPos: [0, 1, 0, 2, 1, 3, 2],
  segments: {
    numSegments: 3,
    qSegment: [0, 1, 0, 1, 0, 2, 1],
    // [seq][later][earlier]
    blocked: [
      0,
      0,
      0,
      /**/ 0,
      0,
      0,
      /**/ 0,
      1,
      0, // seq 0: blocked[2][1]
      0,
      0,
      0,
      /**/ 0,
      0,
      0,
      /**/ 0,
      0,
      0, // seq 1: nothing
    ],
  },
};

const ATTN_CASES: AttnCase[] = [
  {
    name: 'GQA 6 heads / 2 kv heads, 2 packed sequences, segment mask with a blocked pair',
    numHeads: 6,
    numKvHeads: 2,
    headDim: 3,
    layout: PACKED,
  },
  { name: 'T=1', numHeads: 2, numKvHeads: 1, headDim: 5, layout: { qSeq: [0], qPos: [0] } },
  {
    name: 'MHA 3 heads, one sequence of 5',
    numHeads: 3,
    numKvHeads: 3,
    headDim: 2,
    layout: { qSeq: [0, 0, 0, 0, 0], qPos: [0, 1, 2, 3, 4] },
  },
  {
    name: 'MQA 5 heads / 1 kv head, sequences 0 and 3 (ids need not be dense)',
    numHeads: 5,
    numKvHeads: 1,
    headDim: 4,
    layout: { qSeq: [3, 3, 0, 0, 0], qPos: [0, 1, 0, 1, 2] },
  },
];

function attnSetup(seed: number, c: AttnCase) {
  const r = rng(seed);
  const T = c.layout.qSeq.length;
  const d: AttentionDims = { Tq: T, Tk: T, numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim };
  return {
    d,
    T,
    q: rand64(r, T * c.numHeads * c.headDim, 1.5),
    k: rand64(r, T * c.numKvHeads * c.headDim, 1.5),
    v: rand64(r, T * c.numKvHeads * c.headDim),
    G: rand64(r, T * c.numHeads * c.headDim),
  };
}

for (const c of ATTN_CASES) {
  test(`attention backward matches finite differences: ${c.name}`, () => {
    const s = attnSetup(400 + c.numHeads, c);
    const f = () => dot(attentionRef(s.q, s.k, s.v, s.d, c.layout).out, s.G);
    const { dq, dk, dv } = attentionBackwardRef(s.G, s.q, s.k, s.v, s.d, c.layout);
    if (s.T === 1) {
      // one token sees only itself: P = 1 whatever q and k are, so dq = dk = 0 exactly
      assert.ok(fd(s.q, f).every((x) => Math.abs(x) < 1e-9) && fd(s.k, f).every((x) => Math.abs(x) < 1e-9));
      assert.ok(dq.every((x) => x === 0) && dk.every((x) => x === 0));
    } else {
      assertClose('dq', dq, fd(s.q, f), FD_TOL);
      assertClose('dk', dk, fd(s.k, f), FD_TOL);
    }
    assertClose('dv', dv, fd(s.v, f), FD_TOL);
  });
}

test('attention: probabilities are a softmax over exactly the visible keys; lse and scale agree', () => {
  const c = ATTN_CASES[0]!;
  const s = attnSetup(1, c);
  const { numHeads: nH, numKvHeads: nKv, headDim: D } = c;
  const P = attentionProbsRef(s.q, s.k, s.d, c.layout);
  const { out, lse } = attentionRef(s.q, s.k, s.v, s.d, c.layout);
  const l = c.layout,
    seg = l.segments!;
  for (let h = 0; h < nH; h++)
    for (let i = 0; i < s.T; i++) {
      let sum = 0,
        expSum = 0;
      for (let j = 0; j < s.T; j++) {
        const p = P[(h * s.T + i) * s.T + j]!;
        const visible =
          l.qSeq[j] === l.qSeq[i] && l.qPos[j]! <= l.qPos[i]! && !(l.qSeq[i] === 0 && seg.qSegment[i] === 2 && seg.qSegment[j] === 1);
        if (!visible) assert.equal(p, 0, `P[${h},${i},${j}] must be exactly 0`);
        else {
          assert.ok(p > 0);
          const kv = Math.floor(h / (nH / nKv));
          const sc =
            dot(s.q.subarray((i * nH + h) * D, (i * nH + h + 1) * D), s.k.subarray((j * nKv + kv) * D, (j * nKv + kv + 1) * D)) /
            Math.sqrt(D);
          expSum += Math.exp(sc);
          assert.ok(Math.abs(p - Math.exp(sc - lse[i * nH + h]!)) < 1e-14);
        }
        sum += p;
      }
      assert.ok(Math.abs(sum - 1) < 1e-14, 'rows sum to 1');
      assert.ok(Math.abs(lse[i * nH + h]! - Math.log(expSum)) < 1e-13);
    }
  // a token at position 0 sees only itself: out = its own v
  const first = 0; // seq 0, pos 0
  for (let h = 0; h < nH; h++) {
    const kv = Math.floor(h / (nH / nKv));
    for (let d = 0; d < D; d++) assert.ok(Math.abs(out[(first * nH + h) * D + d]! - s.v[(first * nKv + kv) * D + d]!) < 1e-15);
  }
  // an explicit scale
  const half = attentionProbsRef(
    s.q.map((x) => x * 0.5),
    s.k,
    s.d,
    c.layout,
  );
  assertClose('scale', attentionProbsRef(s.q, s.k, { ...s.d, scale: 0.5 / Math.sqrt(D) }, c.layout), half, 1e-14);
});

test('attention: a blocked segment gets zero weight and its keys/values change nothing for the blocked queries', () => {
  const c = ATTN_CASES[0]!;
  const s = attnSetup(2, c);
  const { numHeads: nH, numKvHeads: nKv, headDim: D } = c;
  const l = c.layout,
    seg = l.segments!;
  const rowsOf = (pred: (i: number) => boolean) => Array.from({ length: s.T }, (_, i) => i).filter(pred);
  const blockedQ = rowsOf((i) => l.qSeq[i] === 0 && seg.qSegment[i] === 2);
  const blockedK = rowsOf((j) => l.qSeq[j] === 0 && seg.qSegment[j] === 1);
  assert.deepEqual(blockedQ, [5]);
  assert.deepEqual(blockedK, [1, 3]);
  const base = attentionRef(s.q, s.k, s.v, s.d, l).out;
  const k2 = Float64Array.from(s.k),
    v2 = Float64Array.from(s.v);
  for (const j of blockedK)
    for (let x = 0; x < nKv * D; x++) {
      k2[j * nKv * D + x] = 3 - k2[j * nKv * D + x]!;
      v2[j * nKv * D + x] += 7;
    }
  const changed = attentionRef(s.q, k2, v2, s.d, l).out;
  const rowDiff = (a: Float64Array, b: Float64Array, i: number) => {
    let m = 0;
    for (let x = 0; x < nH * D; x++) m = Math.max(m, Math.abs(a[i * nH * D + x]! - b[i * nH * D + x]!));
    return m;
  };
  for (const i of blockedQ) assert.equal(rowDiff(base, changed, i), 0, `blocked query ${i} must not see segment 1`);
  // the segment-1 queries (rows 1 and 3) do see segment 1
  for (const i of [1, 3]) assert.ok(rowDiff(base, changed, i) > 1e-3, `query ${i} sees segment 1`);
  // seq 1 is untouched by seq 0's keys
  for (const i of rowsOf((i) => l.qSeq[i] === 1)) assert.equal(rowDiff(base, changed, i), 0);
  // without the mask, the blocked query does see them
  const noMask = { qSeq: l.qSeq, qPos: l.qPos };
  const a = attentionRef(s.q, s.k, s.v, s.d, noMask).out,
    b = attentionRef(s.q, k2, v2, s.d, noMask).out;
  assert.ok(rowDiff(a, b, 5) > 1e-3);
  // and the gradient reaching blocked keys from blocked queries is zero: only query 5 weighted
  const G = new Float64Array(s.T * nH * D);
  for (let x = 0; x < nH * D; x++) G[5 * nH * D + x] = 1;
  const { dk, dv } = attentionBackwardRef(G, s.q, s.k, s.v, s.d, l);
  for (const j of blockedK)
    for (let x = 0; x < nKv * D; x++) {
      assert.equal(dk[j * nKv * D + x], 0);
      assert.equal(dv[j * nKv * D + x], 0);
    }
});

test('attention: causal within a sequence, isolated across sequences', () => {
  const c = ATTN_CASES[0]!;
  const s = attnSetup(3, c);
  const { numHeads: nH, numKvHeads: nKv, headDim: D } = c;
  const l = { qSeq: c.layout.qSeq, qPos: c.layout.qPos };
  const base = attentionRef(s.q, s.k, s.v, s.d, l).out;
  // perturb the last token of seq 0 (row 5, pos 3): no other row changes
  const k2 = Float64Array.from(s.k),
    v2 = Float64Array.from(s.v);
  for (let x = 0; x < nKv * D; x++) {
    k2[5 * nKv * D + x] += 1;
    v2[5 * nKv * D + x] -= 2;
  }
  const out = attentionRef(s.q, k2, v2, s.d, l).out;
  for (let i = 0; i < s.T; i++) {
    let diff = 0;
    for (let x = 0; x < nH * D; x++) diff = Math.max(diff, Math.abs(out[i * nH * D + x]! - base[i * nH * D + x]!));
    if (i === 5) assert.ok(diff > 1e-3, 'row 5 sees itself');
    else assert.equal(diff, 0, `row ${i} must not see row 5`);
  }
});

test('attention: GQA reads kv head h / (numHeads / numKvHeads), same as MHA with replicated kv heads', () => {
  const c = ATTN_CASES[0]!;
  const s = attnSetup(4, c);
  const { numHeads: nH, numKvHeads: nKv, headDim: D } = c;
  const rep = (a: Float64Array) => {
    const o = new Float64Array(s.T * nH * D);
    for (let t = 0; t < s.T; t++)
      for (let h = 0; h < nH; h++) for (let d = 0; d < D; d++) o[(t * nH + h) * D + d] = a[(t * nKv + Math.floor(h / (nH / nKv))) * D + d]!;
    return o;
  };
  const mha = { ...s.d, numKvHeads: nH };
  assertClose('out', attentionRef(s.q, s.k, s.v, s.d, c.layout).out, attentionRef(s.q, rep(s.k), rep(s.v), mha, c.layout).out, 1e-14);
  // backward: dk of GQA = sum over the group of MHA's dk
  const g = attentionBackwardRef(s.G, s.q, s.k, s.v, s.d, c.layout);
  const m = attentionBackwardRef(s.G, s.q, rep(s.k), rep(s.v), mha, c.layout);
  const fold = (a: Float64Array) => {
    const o = new Float64Array(s.T * nKv * D);
    for (let t = 0; t < s.T; t++)
      for (let h = 0; h < nH; h++)
        for (let d = 0; d < D; d++) o[(t * nKv + Math.floor(h / (nH / nKv))) * D + d] += a[(t * nH + h) * D + d]!;
    return o;
  };
  assertClose('dq', g.dq, m.dq, 1e-14);
  assertClose('dk', g.dk, fold(m.dk), 1e-14);
  assertClose('dv', g.dv, fold(m.dv), 1e-14);
});

test('attention with a KV cache equals full attention over the concatenation', () => {
  // Full: PACKED (7 tokens). Split: cache = the first 2 positions of seq 0 and first 1 of seq 1;
  // new = the rest, in a different row order, with segment ids carried along.
  const c = ATTN_CASES[0]!;
  const s = attnSetup(5, c);
  const { numHeads: nH, numKvHeads: nKv, headDim: D } = c;
  const l = c.layout,
    seg = l.segments!;
  const full = attentionRef(s.q, s.k, s.v, s.d, l).out;
  const cached = [0, 1, 2]; // seq 0 pos 0,1; seq 1 pos 0
  const fresh = [6, 3, 5, 4]; // the remaining rows, shuffled
  const take = (a: Float64Array, rows: number[], w: number) =>
    Float64Array.from(rows.flatMap((i) => Array.from(a.subarray(i * w, (i + 1) * w))));
  const pick = (a: ArrayLike<number>, rows: number[]) => rows.map((i) => a[i]!);
  const kvW = nKv * D,
    qW = nH * D;
  const cache = {
    k: take(s.k, cached, kvW),
    v: take(s.v, cached, kvW),
    seq: pick(l.qSeq, cached),
    pos: pick(l.qPos, cached),
    segment: pick(seg.qSegment, cached),
  };
  const dec = attentionDecodeRef(
    take(s.q, fresh, qW),
    take(s.k, fresh, kvW),
    take(s.v, fresh, kvW),
    cache,
    { ...s.d, Tq: fresh.length, Tk: 0 },
    { qSeq: pick(l.qSeq, fresh), qPos: pick(l.qPos, fresh), segments: { ...seg, qSegment: pick(seg.qSegment, fresh) } },
  );
  assertClose('decode = rows of full', dec.out, take(full, fresh, qW), 1e-14);
  // one token at a time (generation): seq 1's last token against everything before it
  const one = attentionDecodeRef(
    take(s.q, [6], qW),
    take(s.k, [6], kvW),
    take(s.v, [6], kvW),
    { k: take(s.k, [2, 4], kvW), v: take(s.v, [2, 4], kvW), seq: [1, 1], pos: [0, 1], segment: [0, 0] },
    { ...s.d, Tq: 1, Tk: 0 },
    { qSeq: [1], qPos: [2], segments: { ...seg, qSegment: [1] } },
  );
  assertClose('single-token decode', one.out, take(full, [6], qW), 1e-14);
  assert.throws(
    () =>
      attentionDecodeRef(
        take(s.q, [6], qW),
        take(s.k, [6], kvW),
        take(s.v, [6], kvW),
        { k: [], v: [], seq: [], pos: [] },
        { ...s.d, Tq: 1, Tk: 0 },
        { qSeq: [1], qPos: [2], segments: { ...seg, qSegment: [1] } },
      ),
    /cache.segment: required/,
  );
});

test('attention rejects bad layouts', () => {
  const c = ATTN_CASES[0]!;
  const s = attnSetup(6, c);
  const seg = c.layout.segments!;
  const bad = (blocked: number[]) => ({ ...c.layout, segments: { ...seg, blocked } });
  const diag = Array.from(seg.blocked, Number);
  diag[1 * 9 + 1 * 3 + 1] = 1;
  assert.throws(() => attentionRef(s.q, s.k, s.v, s.d, bad(diag)), /blocked\[1\]\[1\]\[1\] is set: only later > earlier/);
  const upper = Array.from(seg.blocked, Number);
  upper[0 * 3 + 2] = 1;
  assert.throws(() => attentionRef(s.q, s.k, s.v, s.d, bad(upper)), /blocked\[0\]\[0\]\[2\]/);
  assert.throws(
    () => attentionRef(s.q, s.k, s.v, s.d, bad((seg.blocked as number[]).slice(0, 9))),
    /qSeq \(against segments.blocked\)\[2\] = 1/,
  );
  assert.throws(() => attentionRef(s.q, s.k, s.v, s.d, bad([0, 0])), /blocked: expected \[numSeqs, 3, 3\]/);
  assert.throws(() => attentionRef(s.q, s.k, s.v, { ...s.d, numKvHeads: 4 }, c.layout), /numKvHeads \(4\) must divide numHeads \(6\)/);
  assert.throws(
    () => attentionRef(s.q, s.k, s.v, s.d, { ...c.layout, segments: { ...seg, qSegment: [0, 1, 0, 1, 0, 3, 1] } }),
    /qSegment\[5\] = 3/,
  );
  assert.throws(() => attentionRef(s.q, s.k.subarray(1), s.v, s.d, c.layout), /k: expected 42 entries, got 41/);
});

// ---------------------------------------------------------------- xent

test('xent: log-softmax rows exp-sum to 1; loss is the masked mean of −logp[target]', () => {
  const r = rng(8);
  const T = 5,
    V = 7;
  const logits = rand64(r, T * V, 4);
  logits[3] = 800; // large logit: max subtraction keeps it finite
  const logp = logSoftmaxRef(logits, T, V);
  for (let t = 0; t < T; t++) {
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(logp[t * V + v]!);
    assert.ok(Math.abs(s - 1) < 1e-14, `row ${t} sums to ${s}`);
  }
  const targets = [3, -100, 6, 0, 2],
    mask = [1, 0, 1, 1, 0];
  const { loss, losses, count } = xentRef(logits, targets, mask, T, V);
  assert.equal(count, 3);
  const want = -(logp[0 * V + 3]! + logp[2 * V + 6]! + logp[3 * V + 0]!) / 3;
  assert.ok(Math.abs(loss - want) < 1e-14);
  assert.equal(losses[1], 0);
  assert.equal(losses[4], 0);
  assert.ok(Math.abs(losses[0]!) < 1e-12, 'target 3 of row 0 holds the 800 logit');
  // all masked out: 0, not NaN
  assert.deepEqual(xentRef(logits, targets, [0, 0, 0, 0, 0], T, V).loss, 0);
  assert.ok(xentBackwardRef(logits, targets, [0, 0, 0, 0, 0], T, V).every((x) => x === 0));
  assert.throws(() => xentRef(logits, [7, 0, 0, 0, 0], mask, T, V), /targets\[0\] = 7 not in \[0, 6\]/);
  assert.throws(() => xentRef(logits, targets, [1, 0, 0.5, 1, 0], T, V), /mask\[2\] = 0.5/);
});

for (const [T, V] of [
  [1, 2],
  [4, 11],
  [3, 1],
] as const) {
  test(`xent backward matches finite differences: T=${T} V=${V}`, () => {
    const r = rng(500 + T * V);
    const logits = rand64(r, T * V, 3);
    const targets = Array.from({ length: T }, () => Math.floor(r() * V));
    const mask = Array.from({ length: T }, (_, t) => (t === 1 ? 0 : 1)); // token 1 (if any) masked out
    const dLoss = 0.5 + r();
    const f = () => dLoss * xentRef(logits, targets, mask, T, V).loss;
    const d = xentBackwardRef(logits, targets, mask, T, V, dLoss);
    if (V === 1) {
      // one class: the loss is identically 0
      assert.ok(d.every((x) => x === 0));
      assert.equal(f(), 0);
      return;
    }
    assertClose('dlogits', d, fd(logits, f), FD_TOL);
    for (let t = 0; t < T; t++) {
      let s = 0;
      for (let v = 0; v < V; v++) s += d[t * V + v]!;
      assert.ok(Math.abs(s) < 1e-15, 'each row of dlogits sums to 0');
      if (mask[t] === 0) for (let v = 0; v < V; v++) assert.equal(d[t * V + v], 0, `masked token ${t} has zero gradient`);
    }
  });
}
