// The float64 multi-LoRA references (src/reference/lora.ts) checked against central finite
// differences of a scalar loss, and against each other. Pure JS, no backend.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  loraApplyRef,
  loraExpandRef,
  loraInputGradRef,
  loraShrinkGradRef,
  loraShrinkRef,
  loraWeightGradRef,
  multiLoraLinearBackwardRef,
  multiLoraLinearForwardRef,
  type LoraDims,
  type MultiLoraLinearRef,
} from '../src/reference/lora.js';
import { rng } from './helpers.js';
import { assertClose, fd } from './fd.js';

/** Uniform in ±[0.1, 1], float64 (never zero). */
function rand64(r: () => number, n: number): Float64Array {
  return Float64Array.from({ length: n }, () => (r() < 0.5 ? -1 : 1) * (0.1 + 0.9 * r()));
}

interface Setup {
  d: LoraDims;
  m: MultiLoraLinearRef & { W: Float64Array; A: Float64Array; B: Float64Array };
  x: Float64Array;
  G: Float64Array;
}

function setup(seed: number, d: LoraDims, ranks: number[], slots: number[]): Setup {
  const r = rng(seed);
  const m = {
    A: rand64(r, d.L * d.R * d.Hin),
    B: rand64(r, d.L * d.Hout * d.R),
    W: rand64(r, d.Hout * d.Hin),
    ranks,
    scales: Array.from({ length: d.L }, () => 0.5 + r()),
    slots,
    weights: rand64(r, d.T * d.K),
  };
  return { d, m, x: rand64(r, d.T * d.Hin), G: rand64(r, d.T * d.Hout) };
}

// ℓ(y) = Σ G⊙y + ½ Σ y², so ∂ℓ/∂y = G + y (not constant: the backward must use the forward's y).
function loss(s: Setup, x: ArrayLike<number>, m: MultiLoraLinearRef): number {
  const { y } = multiLoraLinearForwardRef(x, m, s.d);
  let l = 0;
  for (let i = 0; i < y.length; i++) l += s.G[i]! * y[i]! + 0.5 * y[i]! * y[i]!;
  return l;
}
function dLoss(s: Setup): Float64Array {
  const { y } = multiLoraLinearForwardRef(s.x, s.m, s.d);
  return y.map((v, i) => v + s.G[i]!);
}

const CASES: { name: string; d: LoraDims; ranks: number[]; slots: number[] }[] = [
  // K = 2, mixed ranks, -1 slots, a token routed twice to one adapter, adapter 2 absent, unsorted
  {
    name: 'K=2 mixed ranks, -1, duplicate, absent adapter',
    d: { T: 5, K: 2, L: 4, R: 3, Hin: 5, Hout: 4 },
    ranks: [2, 3, 3, 1],
    slots: [3, 0, -1, 1, 1, 1, -1, -1, 0, 3],
  },
  // K = 1, rank 1 everywhere but one, unsorted
  { name: 'K=1 unsorted', d: { T: 4, K: 1, L: 3, R: 2, Hin: 3, Hout: 6 }, ranks: [1, 2, 1], slots: [2, 0, 1, 0] },
  // one adapter, full rank
  { name: 'L=1 full rank', d: { T: 3, K: 2, L: 1, R: 2, Hin: 4, Hout: 3 }, ranks: [2], slots: [0, -1, 0, 0, -1, 0] },
];

for (const c of CASES) {
  test(`multi-LoRA linear backward matches finite differences: ${c.name}`, () => {
    const s = setup(1234 + c.d.T, c.d, c.ranks, c.slots);
    const { d, m } = s;
    const g = multiLoraLinearBackwardRef(s.x, dLoss(s), m, d);
    const f = () => loss(s, s.x, m);
    const TOL = 1e-7;
    assertClose('dx', g.dx, fd(s.x, f), TOL);
    assertClose('dW', g.dW!, fd(m.W, f), TOL);
    const fdA = fd(m.A, f),
      fdB = fd(m.B, f);
    assertClose('dA', g.dA, fdA, TOL);
    assertClose('dB', g.dB, fdB, TOL);

    // Past an adapter's rank, and for adapters absent from the batch: exactly 0, and the
    // forward does not depend on those entries at all.
    const used = new Set(c.slots.filter((e) => e >= 0));
    for (let e = 0; e < d.L; e++)
      for (let r = 0; r < d.R; r++) {
        const dead = r >= c.ranks[e]! || !used.has(e);
        for (let i = 0; i < d.Hin; i++) {
          const j = (e * d.R + r) * d.Hin + i;
          if (dead) {
            assert.equal(g.dA[j], 0, `dA[${e},${r},${i}] must be 0 (rank ${c.ranks[e]}, used ${used.has(e)})`);
            assert.equal(fdA[j], 0, `ℓ must not depend on A[${e},${r},${i}]`);
          } else assert.notEqual(g.dA[j], 0, `dA[${e},${r},${i}] unexpectedly 0`);
        }
        for (let o = 0; o < d.Hout; o++) {
          const j = (e * d.Hout + o) * d.R + r;
          if (dead) {
            assert.equal(g.dB[j], 0, `dB[${e},${o},${r}] must be 0`);
            assert.equal(fdB[j], 0, `ℓ must not depend on B[${e},${o},${r}]`);
          } else assert.notEqual(g.dB[j], 0, `dB[${e},${o},${r}] unexpectedly 0`);
        }
      }
    // v and dv: 0 past rank and for empty slots.
    for (let t = 0; t < d.T; t++)
      for (let k = 0; k < d.K; k++) {
        const e = c.slots[t * d.K + k]!;
        for (let r = 0; r < d.R; r++) {
          const j = (t * d.K + k) * d.R + r;
          if (e < 0 || r >= c.ranks[e]!) {
            assert.equal(g.v[j], 0, `v[${t},${k},${r}] must be 0`);
            assert.equal(g.dv[j], 0, `dv[${t},${k},${r}] must be 0`);
          }
        }
      }
  });

  test(`shrink + expand = apply = the direct formula: ${c.name}`, () => {
    const s = setup(99 + c.d.T, c.d, c.ranks, c.slots);
    const { d, m } = s;
    const noW = { ...m, W: undefined };
    const direct = multiLoraLinearForwardRef(s.x, noW, d).y;
    const v = loraShrinkRef(s.x, m, m, d);
    const split = loraExpandRef(v, m, m, d);
    assertClose('shrink+expand', split, direct, 1e-13);
    const y0 = rand64(rng(7), d.T * d.Hout);
    const ap = loraApplyRef(s.x, m, m, d, y0);
    assertClose(
      'apply.y',
      ap.y,
      split.map((t, i) => t + y0[i]!),
      1e-13,
    );
    assert.deepEqual(ap.v, v);
    // with W: the forward is the base matmul plus the LoRA term
    const withW = multiLoraLinearForwardRef(s.x, m, d).y;
    const base = new Float64Array(d.T * d.Hout);
    for (let t = 0; t < d.T; t++)
      for (let o = 0; o < d.Hout; o++) for (let i = 0; i < d.Hin; i++) base[t * d.Hout + o] += m.W[o * d.Hin + i]! * s.x[t * d.Hin + i]!;
    assertClose('forward with W', withW, loraExpandRef(v, m, m, d, base), 1e-13);
  });

  test(`the per-op references are adjoint pairs and accumulate: ${c.name}`, () => {
    const s = setup(555 + c.d.T, c.d, c.ranks, c.slots);
    const { d, m } = s;
    const r = rng(31);
    // Random everywhere, including past each rank: the ops must ignore those entries.
    const g = rand64(r, d.T * d.K * d.R),
      dy = rand64(r, d.T * d.Hout),
      vIn = rand64(r, d.T * d.K * d.R);
    const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
      let z = 0;
      for (let i = 0; i < a.length; i++) z += a[i]! * b[i]!;
      return z;
    };
    // <shrink(x), g> = <x, inputGrad(g)>
    const lhs1 = dot(loraShrinkRef(s.x, m, m, d), g),
      rhs1 = dot(s.x, loraInputGradRef(g, m, m, d));
    assert.ok(Math.abs(lhs1 - rhs1) <= 1e-12 * Math.abs(lhs1), `shrink/inputGrad adjoint: ${lhs1} vs ${rhs1}`);
    // <expand(v), dy> = <v, shrinkGrad(dy)>
    const lhs2 = dot(loraExpandRef(vIn, m, m, d), dy),
      rhs2 = dot(vIn, loraShrinkGradRef(dy, m, m, d));
    assert.ok(Math.abs(lhs2 - rhs2) <= 1e-12 * Math.abs(lhs2), `expand/shrinkGrad adjoint: ${lhs2} vs ${rhs2}`);
    // accumulate forms add onto what was there
    const dx0 = rand64(r, d.T * d.Hin);
    assertClose(
      'inputGrad accumulate',
      loraInputGradRef(g, m, m, d, dx0),
      loraInputGradRef(g, m, m, d).map((z, i) => z + dx0[i]!),
      1e-14,
    );
    const dA0 = rand64(r, d.L * d.R * d.Hin),
      dB0 = rand64(r, d.L * d.Hout * d.R);
    const fresh = loraWeightGradRef(s.x, dy, vIn, g, m, m, d);
    const accd = loraWeightGradRef(s.x, dy, vIn, g, m, m, d, { dA: dA0, dB: dB0 });
    assertClose(
      'weightGrad accumulate dA',
      accd.dA,
      fresh.dA.map((z, i) => z + dA0[i]!),
      1e-14,
    );
    assertClose(
      'weightGrad accumulate dB',
      accd.dB,
      fresh.dB.map((z, i) => z + dB0[i]!),
      1e-14,
    );
    // dA is the gradient of <shrink(x; A), g> in A, dB the gradient of <expand(v; B), dy> in B
    const mA = { ...m, A: Float64Array.from(m.A) },
      mB = { ...m, B: Float64Array.from(m.B) };
    assertClose(
      'dA = ∂<shrink(x),dv>/∂A',
      fresh.dA,
      fd(mA.A, () => dot(loraShrinkRef(s.x, mA, mA, d), g)),
      1e-8,
    );
    assertClose(
      'dB = ∂<expand(v),dy>/∂B',
      fresh.dB,
      fd(mB.B, () => dot(loraExpandRef(vIn, mB, mB, d), dy)),
      1e-8,
    );
  });
}

test('weights default to 1 and -1 slots contribute nothing', () => {
  const d: LoraDims = { T: 2, K: 2, L: 2, R: 2, Hin: 3, Hout: 2 };
  const s = setup(5, d, [2, 1], [1, -1, -1, -1]);
  const withOnes = { ...s.m, weights: [1, 1, 1, 1] };
  const noWeights = { ...s.m, weights: undefined };
  assert.deepEqual(loraApplyRef(s.x, noWeights, noWeights, d).y, loraApplyRef(s.x, withOnes, withOnes, d).y);
  const y = loraApplyRef(s.x, s.m, s.m, d).y;
  assert.deepEqual(Array.from(y.subarray(d.Hout)), [0, 0], 'token 1 has no adapter');
  assert.notEqual(y[0], 0);
});

test('the references reject inconsistent inputs', () => {
  const d: LoraDims = { T: 2, K: 1, L: 2, R: 2, Hin: 3, Hout: 2 };
  const s = setup(6, d, [2, 1], [1, 0]);
  assert.throws(() => loraShrinkRef(s.x.subarray(1), s.m, s.m, d), /x: expected 6/);
  assert.throws(() => loraShrinkRef(s.x, { ...s.m, ranks: [3, 1] }, s.m, d), /ranks\[0\]/);
  assert.throws(() => loraShrinkRef(s.x, s.m, { slots: [2, 0] }, d), /slots\[0\]/);
  assert.throws(() => loraShrinkRef(s.x, s.m, { slots: [0, -2] }, d), /slots\[1\]/);
});
