import { after } from 'node:test';
import assert from 'node:assert/strict';
import { MultiLoraLinear } from '../src/ops/multi_lora_linear.js';
import { loraRouting, loraStack } from '../src/ops/lora.js';
import { multiLoraLinearForwardRef, multiLoraLinearBackwardRef } from '../src/reference/lora.js';
import { roundTo, type DType } from '../src/dtype.js';
import { forEachBackend, closeBackends, rng, randn, relErr } from './helpers.js';

after(closeBackends);

/**
 * MoTE routing for one batch: experts 0..2 are analysis/guidance/answer, 3 is shared.
 * Prompt tokens go to the shared expert only; chain tokens to [step, shared] with [α, 1 − α].
 */
function moteSlots(T: number, r: () => number, alpha: number): { slots: number[]; weight: number[] } {
  const slots: number[] = [],
    weight: number[] = [];
  for (let t = 0; t < T; t++) {
    const step = Math.floor(r() * 4) - 1; // -1: prompt token
    if (step < 0) {
      slots.push(-1, 3);
      weight.push(0, 1);
    } else {
      slots.push(step, 3);
      weight.push(alpha, 1 - alpha);
    }
  }
  return { slots, weight };
}

for (const [dtype, T, Hin, Hout, R] of [
  ['f32', 1, 37, 29, 16],
  ['bf16', 19, 53, 41, 8],
  ['f16', 131, 24, 19, 4],
] as [DType, number, number, number, number][]) {
  forEachBackend(`MultiLoraLinear (MoTE K=2, ${dtype}, T=${T}) forward and backward match the reference`, async (b) => {
    const r = rng(T * 7 + Hin);
    const L = 4,
      K = 2;
    const ranks = [R, Math.max(1, R >> 1), 1, R];
    const scales = [2, 1.5, 0.5, 1];
    const Ws = randn(r, Hout * Hin, 0.3),
      As = randn(r, L * R * Hin, 0.3),
      Bs = randn(r, L * Hout * R, 0.3);
    const xs = randn(r, T * Hin),
      dys = randn(r, T * Hout);
    const { slots, weight } = moteSlots(T, r, 0.5);
    const W = b.tensor(Ws, [Hout, Hin], dtype);
    const stack = loraStack(b.tensor(As, [L, R, Hin], dtype), b.tensor(Bs, [L, Hout, R], dtype), { rank: ranks, scale: scales });
    const rt = loraRouting(b, slots, { K, L, weight });
    const layer = new MultiLoraLinear(W, stack);
    const x = b.tensor(xs, [T, Hin]),
      dy = b.tensor(dys, [T, Hout]);
    const m = { W: roundTo(dtype, Ws), A: roundTo(dtype, As), B: roundTo(dtype, Bs), ranks, scales, slots, weights: weight };
    const d = { T, K, L, R, Hin, Hout };
    const ref = multiLoraLinearForwardRef(xs, m, d);
    const { y, v } = layer.forward(x, rt);
    assert.ok(relErr(await y.readFloat(), ref.y) <= 1e-5, 'y');
    assert.ok(relErr(await v.readFloat(), ref.v) <= 1e-5, 'v');
    const g = layer.backward(x, v, dy, rt, { trainBase: true });
    const gr = multiLoraLinearBackwardRef(xs, dys, m, d);
    assert.ok(relErr(await g.dx!.readFloat(), gr.dx) <= 1e-5, 'dx');
    assert.ok(relErr(await g.dA.readFloat(), gr.dA) <= 1e-5, 'dA');
    assert.ok(relErr(await g.dB.readFloat(), gr.dB) <= 1e-5, 'dB');
    assert.ok(relErr(await g.dW!.readFloat(), gr.dW!) <= 1e-5, 'dW');
    // gradient accumulation: a second backward into the same tensors doubles them
    const g2 = layer.backward(x, v, dy, rt, { trainBase: true, accumulate: true, grads: g, inputGrad: false });
    assert.ok(
      relErr(
        await g2.dA.readFloat(),
        gr.dA.map((q) => 2 * q),
      ) <= 1e-5,
      'dA accumulated',
    );
    assert.ok(
      relErr(
        await g2.dW!.readFloat(),
        gr.dW!.map((q) => 2 * q),
      ) <= 1e-5,
      'dW accumulated',
    );
    for (const t of [x, dy, y, v, g.dx!, g.dA, g.dB, g.dW!, W, stack.A, stack.B, stack.rank, stack.scale]) t.dispose();
    rt.dispose();
  });
}

forEachBackend('MultiLoraLinear with a bias and no adapters: apply and backwardTo match the float64 sums', async (b) => {
  const r = rng(11);
  const T = 5,
    Hin = 7,
    Hout = 6;
  const Ws = randn(r, Hout * Hin, 0.3),
    bs = randn(r, Hout, 0.3),
    xs = randn(r, T * Hin),
    dys = randn(r, T * Hout);
  const W = b.tensor(Ws, [Hout, Hin]),
    bias = b.tensor(bs, [1, Hout]);
  const layer = new MultiLoraLinear(W, null, { bias });
  const x = b.tensor(xs, [T, Hin]),
    dy = b.tensor(dys, [T, Hout]);
  const { y, v } = layer.apply(x, null);
  assert.equal(v, null);
  const yRef = new Float64Array(T * Hout),
    dxRef = new Float64Array(T * Hin),
    dWRef = new Float64Array(Hout * Hin),
    dbRef = new Float64Array(Hout);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < Hout; o++) {
      let s = bs[o]!;
      for (let i = 0; i < Hin; i++) {
        s += xs[t * Hin + i]! * Ws[o * Hin + i]!;
        dxRef[t * Hin + i]! += dys[t * Hout + o]! * Ws[o * Hin + i]!;
        dWRef[o * Hin + i]! += dys[t * Hout + o]! * xs[t * Hin + i]!;
      }
      yRef[t * Hout + o] = s;
      dbRef[o]! += dys[t * Hout + o]!;
    }
  }
  assert.ok(relErr(await y.readFloat(), yRef) <= 1e-5, 'y');
  const g = layer.backwardTo(x, null, dy, null, { dx: {}, dW: {}, db: {} });
  assert.ok(relErr(await g.dx!.readFloat(), dxRef) <= 1e-5, 'dx');
  assert.ok(relErr(await g.dW!.readFloat(), dWRef) <= 1e-5, 'dW');
  assert.deepEqual(g.db!.shape, [Hout, 1]);
  assert.ok(relErr(await g.db!.readFloat(), dbRef) <= 1e-5, 'db');
  // accumulate: a second pass into the same tensors doubles them
  layer.backwardTo(x, null, dy, null, { db: { out: g.db!, accumulate: true } });
  assert.ok(
    relErr(
      await g.db!.readFloat(),
      dbRef.map((q) => 2 * q),
    ) <= 1e-5,
    'db accumulated',
  );
  assert.throws(() => layer.forward(x, null as never), /no adapter stack/);
  assert.throws(() => layer.backwardTo(x, null, dy, null, { lora: {} }), /targets\.lora/);
  assert.throws(() => new MultiLoraLinear(W, null).backwardTo(x, null, dy, null, { db: {} }), /no bias/);
  for (const t of [x, dy, y, g.dx!, g.dW!, g.db!, W, bias]) t.dispose();
});
