// logSoftmax / xent / xentGrad (src/ops/xent.ts) on every backend against the float64
// reference (src/reference/xent.ts), plus determinism and argument checking.
//
// Relative error ≤ 1e-5 for log-probabilities, per-token losses, lse, the masked mean and
// dlogits. Rows with mask 0 have loss exactly 0 and gradient exactly 0 (their target, e.g.
// −100, is never read). Shapes: V = 1 (log-softmax ≡ 0), primes, V = 257 and 4099 (wider than
// any workgroup), 32003; logits offset by +100 (exp overflows without the max subtracted);
// all tokens masked out (count 0, loss 0, gradient 0).
//
// cpu and cuda run every case; webgpu (Mesa lavapipe in CI: seconds per shader compile) runs
// the cases marked `webgpu`. MOTE_MODEL_FULL=1 runs every case on webgpu too.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { logSoftmax, xent, xentGrad } from '../src/ops/xent.js';
import { logSoftmaxRef, xentBackwardRef, xentRef } from '../src/reference/xent.js';
import { ArgumentError, BackendMismatchError, DTypeError, DisposedTensorError, ShapeError } from '../src/errors.js';
import { openBackend } from '../src/backend/select.js';
import type { Backend, BackendKind } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { closeBackends, forEachBackend, poisoned, randn, rng } from './helpers.js';
import { Pool, Report, bitsEqual, rejectsLike, throwsLike } from './case_helpers.js';

after(closeBackends);

const FULL = process.env.MOTE_MODEL_FULL === '1';

// ---------------------------------------------------------------------------------------
// The case matrix

interface Case {
  name: string;
  T: number;
  V: number;
  /** logits = offset + scale·uniform±[0.05, 1] */
  scale: number;
  offset?: number;
  /** 0/1 per token (default all 1); masked tokens get the targets in `dead` in turn */
  mask?: number[];
  webgpu?: boolean;
}

const DEAD = [-100, 1 << 30, -1, 0.5];

const CASES: Case[] = [
  { name: 'T=1 V=1', T: 1, V: 1, scale: 3, webgpu: true },
  { name: 'T=3 V=1 one masked out', T: 3, V: 1, scale: 3, mask: [1, 0, 1] },
  {
    name: 'T=17 V=257 masked-out tokens',
    T: 17,
    V: 257,
    scale: 4,
    mask: [1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 0],
    webgpu: true,
  },
  { name: 'T=131 V=37', T: 131, V: 37, scale: 3 },
  { name: 'T=2 V=4099 logits near +100', T: 2, V: 4099, scale: 10, offset: 100, webgpu: true },
  { name: 'T=7 V=101 logits near +100, masked', T: 7, V: 101, scale: 10, offset: 100, mask: [0, 1, 1, 0, 1, 1, 1] },
  { name: 'T=3 V=32003', T: 3, V: 32003, scale: 5, mask: [1, 0, 1] },
  { name: 'T=4 V=67 every token masked out', T: 4, V: 67, scale: 2, mask: [0, 0, 0, 0], webgpu: true },
  { name: 'T=5 V=2 small logits', T: 5, V: 2, scale: 0.01 },
];

async function runCase(b: Backend, c: Case, seed: number): Promise<void> {
  const r = rng(seed);
  const { T, V } = c;
  const ls = randn(r, T * V, c.scale).map((v) => v + (c.offset ?? 0));
  const mask = c.mask ?? Array(T).fill(1);
  assert.equal(mask.length, T);
  let dead = 0;
  const targets = mask.map((m, t) => (m ? (t === 0 ? V - 1 : t === 1 ? 0 : Math.floor(r() * V)) : DEAD[dead++ % DEAD.length]!));
  const ref = xentRef(ls, targets, mask, T, V);
  const lp = logSoftmaxRef(ls, T, V);
  const lseRef = Float64Array.from({ length: T }, (_, t) => ls[t * V]! - lp[t * V]!);
  const masked = (t: number) => mask[t] === 0;
  const p = new Pool(b);
  const rep = new Report(`xent ${c.name} on ${b.kind}`);
  try {
    const logits = p.t(ls, [T, V]);

    await rep.step('logSoftmax', async () => {
      const out = p.poison([T, V]);
      assert.equal(logSoftmax(logits, { out }), out, 'returns opts.out');
      rep.close('logSoftmax', await out.readFloat(), lp);
    });
    await rep.step('logSoftmax without out', async () => {
      const y = p.keep(logSoftmax(logits));
      rep.close('logSoftmax (allocated)', await y.readFloat(), lp);
    });

    let lse: Tensor | null = null;
    await rep.step('xent', async () => {
      const res = await xent(logits, targets, mask);
      p.keep(res.losses);
      lse = p.keep(res.lse);
      assert.equal(res.count, ref.count, 'count');
      assert.deepEqual(res.losses.shape, [T]);
      assert.deepEqual(res.lse.shape, [T]);
      const losses = await res.losses.readFloat();
      rep.close('xent losses', losses, ref.losses);
      rep.exact('xent losses (masked-out tokens)', losses, 0, masked);
      rep.close('xent lse', await res.lse.readFloat(), lseRef);
      rep.close('xent loss (masked mean)', [res.loss], [ref.loss]);
      if (ref.count === 0) assert.equal(res.loss, 0, 'loss with every token masked out');
    });

    const scale = ref.count ? 1 / ref.count : 0.37;
    for (const [what, s] of [
      ['scale = 1/count', scale],
      ['scale = 2.5', 2.5],
    ] as const) {
      await rep.step(`xentGrad ${what}`, async () => {
        if (!lse) throw new Error('no lse from xent');
        const out = p.poison([T, V]);
        assert.equal(xentGrad(logits, lse, targets, mask, s, { out }), out, 'returns opts.out');
        const d = await out.readFloat();
        rep.close(`xentGrad dlogits (${what})`, d, xentBackwardRef(ls, targets, mask, T, V, s * ref.count));
        rep.exact(`xentGrad dlogits (${what}, masked-out rows)`, d, 0, (i) => masked(Math.floor(i / V)));
      });
    }
    await rep.step('xentGrad without out, reference lse', async () => {
      const lseT = p.t(Float32Array.from(lseRef), [T]);
      const d = p.keep(xentGrad(logits, lseT, targets, mask, scale));
      assert.deepEqual(d.shape, [T, V]);
      rep.close('xentGrad (allocated) dlogits', await d.readFloat(), xentBackwardRef(ls, targets, mask, T, V, scale * ref.count));
    });
    await rep.step('inputs untouched', async () => {
      rep.exact('logits after the ops', await logits.readFloat(), ls);
    });
  } finally {
    p.dispose();
  }
  rep.done();
}

let seed = 600;
for (const c of CASES) {
  const kinds: BackendKind[] = FULL || c.webgpu ? ['cpu', 'webgpu', 'cuda'] : ['cpu', 'cuda'];
  const s = seed++;
  forEachBackend(`xent ${c.name}`, (b) => runCase(b, c, s), { kinds });
}

// ---------------------------------------------------------------------------------------
// Determinism: two runs give the same bits (row reductions over V)

forEachBackend('xent family is deterministic', async (b) => {
  const r = rng(31);
  const T = 17,
    V = 4099;
  const p = new Pool(b);
  try {
    const ls = randn(r, T * V, 6);
    const logits = p.t(ls, [T, V]);
    const targets = Array.from({ length: T }, () => Math.floor(r() * V));
    const mask = targets.map((_, t) => (t % 5 === 3 ? 0 : 1));
    const runs: Record<string, Float32Array>[] = [];
    for (let i = 0; i < 2; i++) {
      const res = await xent(logits, targets, mask);
      p.keep(res.losses);
      p.keep(res.lse);
      const lp = p.keep(logSoftmax(logits));
      const d = p.keep(xentGrad(logits, res.lse, targets, mask, 1 / res.count));
      runs.push({
        losses: await res.losses.readFloat(),
        lse: await res.lse.readFloat(),
        loss: Float32Array.of(res.loss),
        logSoftmax: await lp.readFloat(),
        dlogits: await d.readFloat(),
      });
    }
    for (const k of Object.keys(runs[0]!)) {
      assert.ok(runs[0]![k]!.every(Number.isFinite), `${k}: non-finite output`);
      assert.ok(bitsEqual(runs[0]![k]!, runs[1]![k]!), `${k}: two runs differ in their bits`);
    }
    const ref = xentRef(ls, targets, mask, T, V);
    const rep = new Report(`xent determinism on ${b.kind}`);
    rep.close('losses', runs[0]!.losses!, ref.losses);
    rep.close('dlogits', runs[0]!.dlogits!, xentBackwardRef(ls, targets, mask, T, V));
    rep.done();
  } finally {
    p.dispose();
  }
});

// ---------------------------------------------------------------------------------------
// Bad input: the right MoteError subclass, a message naming the argument, and no kernel run

forEachBackend('xent ops reject bad input', async (b) => {
  const r = rng(37);
  const T = 3,
    V = 10;
  const p = new Pool(b);
  let other: Backend | null = null;
  try {
    const logits = p.t(randn(r, T * V), [T, V]);
    const lse = p.t(randn(r, T), [T]);
    const out = p.t(randn(r, T * V), [T, V]);
    const before = await out.readFloat();
    const tg = [1, 2, 3],
      m = [1, 1, 1];

    // targets and mask (xent is async: its checks reject)
    await rejectsLike(
      () => xent(logits, [1, 10, 2], m),
      ArgumentError,
      /xent: targets\[1\]: expected a token id in \[0, 9\], got 10/,
      'target = V',
    );
    await rejectsLike(() => xent(logits, [1, 2, -100], m), ArgumentError, /xent: targets\[2\]: .*got -100/, 'target −100 with mask 1');
    await rejectsLike(() => xent(logits, [1.5, 2, 3], m), ArgumentError, /xent: targets\[0\]: .*got 1\.5/, 'fractional target');
    await rejectsLike(() => xent(logits, tg, [1, 0.5, 1]), ArgumentError, /xent: mask\[1\]: expected 0 or 1, got 0\.5/, 'mask 0.5');
    await rejectsLike(() => xent(logits, tg, [1, 1, 2]), ArgumentError, /xent: mask\[2\]: expected 0 or 1, got 2/, 'mask 2');
    await rejectsLike(() => xent(logits, tg, [-1, 1, 1]), ArgumentError, /xent: mask\[0\]: .*got -1/, 'mask −1');
    await rejectsLike(() => xent(logits, [1, 2], m), ArgumentError, /xent: targets: expected 3 entries, got 2/, 'targets length');
    await rejectsLike(() => xent(logits, tg, [1, 1, 1, 1]), ArgumentError, /xent: mask: expected 3 entries, got 4/, 'mask length');
    // logits
    await rejectsLike(
      () => xent(p.t(randn(r, T * V), [T, V], 'bf16'), tg, m),
      DTypeError,
      /xent: logits: expected dtype f32, got bf16/,
      'logits bf16',
    );
    await rejectsLike(
      () => xent(p.t(randn(r, T * V), [T * V]), tg, m),
      ShapeError,
      /xent: logits: expected shape \[T, V\], got \[30\]/,
      'logits 1-D',
    );
    const gone = p.t(randn(r, T * V), [T, V]);
    gone.dispose();
    await rejectsLike(() => xent(gone, tg, m), DisposedTensorError, /xent: logits\b/, 'disposed logits');

    // xentGrad: the same checks, plus lse, scale and out
    throwsLike(
      () => xentGrad(logits, lse, [1, 2, 10], m, 1, { out }),
      ArgumentError,
      /xentGrad: targets\[2\]: expected a token id in \[0, 9\], got 10/,
      'grad target = V',
    );
    throwsLike(
      () => xentGrad(logits, lse, tg, [1, 1, 0.25], 1, { out }),
      ArgumentError,
      /xentGrad: mask\[2\]: expected 0 or 1, got 0\.25/,
      'grad mask 0.25',
    );
    throwsLike(
      () => xentGrad(logits, p.t(randn(r, T + 1), [T + 1]), tg, m, 1, { out }),
      ShapeError,
      /xentGrad: lse: expected shape \[T\] with T = 3 \(from logits\), got \[4\]/,
      'lse of another T',
    );
    throwsLike(
      () => xentGrad(logits, p.t(randn(r, T), [T], 'f16'), tg, m, 1, { out }),
      DTypeError,
      /xentGrad: lse: expected dtype f32, got f16/,
      'lse f16',
    );
    for (const s of [NaN, Infinity])
      throwsLike(() => xentGrad(logits, lse, tg, m, s, { out }), ArgumentError, /xentGrad: scale: expected a finite number/, `scale ${s}`);
    throwsLike(
      () => xentGrad(logits, lse, tg, m, 1, { out: logits }),
      ArgumentError,
      /xentGrad: out: must not be the same tensor as logits/,
      'out = logits',
    );
    throwsLike(
      () => xentGrad(logits, lse, tg, m, 1, { out: p.poison([T, V + 1]) }),
      ShapeError,
      /xentGrad: out: .*V = 10/,
      'out of another V',
    );
    throwsLike(
      () => xentGrad(logits, lse, tg, m, 1, { out: p.t(poisoned(T * V), [T, V], 'bf16') }),
      DTypeError,
      /xentGrad: out: expected dtype f32, got bf16/,
      'out bf16',
    );
    throwsLike(
      () => logSoftmax(p.t(new Int32Array(T * V), [T, V], 'i32')),
      DTypeError,
      /logSoftmax: logits: expected dtype f32, got i32/,
      'logSoftmax logits i32',
    );
    throwsLike(() => logSoftmax(logits, { out: p.poison([V, T]) }), ShapeError, /logSoftmax: out: /, 'logSoftmax out transposed');
    other = (await openBackend('cpu').catch(() => null)) ?? (await openBackend(b.kind));
    const lo = other.tensor(randn(r, T), [T]);
    throwsLike(
      () => xentGrad(logits, lo, tg, m, 1, { out }),
      BackendMismatchError,
      /xentGrad: lse: expected a tensor on the .* backend/,
      'lse of another backend',
    );

    assert.deepEqual(await out.readFloat(), before, 'a rejected call must not have run a kernel');
  } finally {
    p.dispose();
    other?.destroy();
  }
});

test('case matrix: V = 1, V > 256, +100 logits, masked-out tokens and count 0 reach webgpu', () => {
  const wg = CASES.filter((c) => c.webgpu);
  assert.ok(wg.some((c) => c.V === 1) && wg.some((c) => c.V === 257) && wg.some((c) => (c.offset ?? 0) >= 100));
  assert.ok(wg.some((c) => c.mask?.includes(0) && c.mask.includes(1)) && wg.some((c) => c.mask?.every((v) => v === 0)));
});
