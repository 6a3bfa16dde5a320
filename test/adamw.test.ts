// adamw / sumSquares (src/ops/adamw.ts) on every backend against the float64 reference
// (src/reference/adamw.ts), plus argument checking.
//
// adamw: 5 steps on random p, g (fresh g every step), from random non-zero moments and from
// zero moments (a real first step). After every step p, m, v are compared (relative error
// ≤ 1e-5) with (a) the float64 reference run for the same steps from the same start, and
// (b) one float64 step from the backend's own state before the step; the update Δp of (b) is
// also compared on its own (≤ 1e-4: Δp is formed from two f32-rounded p values).
// sumSquares: against Σ g² in float64 (≤ 1e-5) and bit-identical on a rerun.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { adamw, sumSquares, type AdamwOptions } from '../src/ops/adamw.js';
import { adamwRef, sumSquaresRef } from '../src/reference/adamw.js';
import { ArgumentError, BackendMismatchError, DTypeError, DisposedTensorError, ShapeError } from '../src/errors.js';
import { openBackend } from '../src/backend/select.js';
import type { Backend } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { closeBackends, forEachBackend, poisoned, randn, rng } from './helpers.js';
import { Pool, Report, bitsEqual, throwsLike } from './case_helpers.js';

after(closeBackends);

const STEPS = 5;

// ---------------------------------------------------------------------------------------
// adamw

interface Case {
  name: string;
  shape: number[];
  lr: number;
  weightDecay: number;
  gradScale?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** start from m = v = 0 (a real first step) instead of random moments */
  zeroMoments?: boolean;
  /** gradient scale (default 1) */
  gMag?: number;
}

const CASES: Case[] = [
  { name: 'n=1', shape: [1], lr: 1e-2, weightDecay: 0.1 },
  { name: 'n=7 wd=0', shape: [7], lr: 1e-2, weightDecay: 0 },
  { name: 'n=131 wd=0.01 from zero moments', shape: [131], lr: 3e-3, weightDecay: 0.01, zeroMoments: true },
  { name: '[37, 67] gradScale=0.25', shape: [37, 67], lr: 1e-2, weightDecay: 0.05, gradScale: 0.25 },
  { name: 'n=4099 gradScale=3 wd=0', shape: [4099], lr: 1e-3, weightDecay: 0, gradScale: 3 },
  { name: 'n=4099 β1=0 β2=0.95 eps=1e-6 wd=0.1', shape: [4099], lr: 2e-2, weightDecay: 0.1, beta1: 0, beta2: 0.95, eps: 1e-6 },
  { name: 'n=4099 small gradients (eps matters)', shape: [4099], lr: 1e-2, weightDecay: 0.01, gMag: 1e-5, eps: 1e-6, zeroMoments: true },
  { name: 'n=100003 (several blocks)', shape: [100003], lr: 1e-3, weightDecay: 0.01, gradScale: 0.5 },
];

async function runCase(b: Backend, c: Case, seed: number): Promise<void> {
  const r = rng(seed);
  const n = c.shape.reduce((a, d) => a * d, 1);
  const p0 = randn(r, n);
  const m0 = c.zeroMoments ? new Float32Array(n) : randn(r, n, 0.1);
  const v0 = c.zeroMoments ? new Float32Array(n) : Float32Array.from(randn(r, n, 0.1), (x) => x * x);
  const pool = new Pool(b);
  const rep = new Report(`adamw ${c.name} on ${b.kind}`);
  try {
    const p = pool.t(p0, c.shape),
      m = pool.t(m0, c.shape),
      v = pool.t(v0, c.shape);
    let P: ArrayLike<number> = p0,
      M: ArrayLike<number> = m0,
      V: ArrayLike<number> = v0;
    for (let t = 1; t <= STEPS; t++) {
      const gs = randn(r, n, c.gMag ?? 1);
      const g = pool.t(gs, c.shape);
      const o: AdamwOptions = {
        lr: c.lr,
        weightDecay: c.weightDecay,
        step: t,
        gradScale: c.gradScale,
        beta1: c.beta1,
        beta2: c.beta2,
        eps: c.eps,
      };
      const ro = {
        lr: c.lr,
        weightDecay: c.weightDecay,
        step: t,
        gradScale: c.gradScale ?? 1,
        beta1: c.beta1 ?? 0.9,
        beta2: c.beta2 ?? 0.999,
        eps: c.eps ?? 1e-8,
      };
      const [pb, mb, vb] = [await p.readFloat(), await m.readFloat(), await v.readFloat()];
      await rep.step(`step ${t}`, async () => {
        assert.equal(adamw(p, g, m, v, o), undefined);
        const chained = adamwRef(P, gs, M, V, ro);
        ({ p: P, m: M, v: V } = chained);
        const local = adamwRef(pb, gs, mb, vb, ro);
        const [pa, ma, va] = [await p.readFloat(), await m.readFloat(), await v.readFloat()];
        rep.close(`step ${t} p (chained reference)`, pa, chained.p);
        rep.close(`step ${t} m (chained reference)`, ma, chained.m);
        rep.close(`step ${t} v (chained reference)`, va, chained.v);
        rep.close(`step ${t} p (one step from the backend's state)`, pa, local.p);
        rep.close(`step ${t} m (one step from the backend's state)`, ma, local.m);
        rep.close(`step ${t} v (one step from the backend's state)`, va, local.v);
        rep.close(
          `step ${t} Δp`,
          pa.map((x, i) => x - pb[i]!),
          Float64Array.from(local.p, (x, i) => x - pb[i]!),
          undefined,
          1e-4,
        );
        const gAfter = await g.readFloat();
        if (!bitsEqual(gAfter, gs)) rep.fails.push(`step ${t}: g was modified`);
      });
    }
  } finally {
    pool.dispose();
  }
  rep.done();
}

let seed = 900;
for (const c of CASES) {
  const s = seed++;
  forEachBackend(`adamw ${c.name}`, (b) => runCase(b, c, s));
}

forEachBackend('adamw: step 1 with zero moments is the sign step lr·g/(|g| + eps) (torch semantics)', async (b) => {
  const pool = new Pool(b);
  try {
    const gs = Float32Array.from([0.5, -2, 1e-3, -7]);
    const p = pool.t(new Float32Array([1, 1, 1, 1]), [4]),
      g = pool.t(gs, [4]);
    const m = pool.t(new Float32Array(4), [4]),
      v = pool.t(new Float32Array(4), [4]);
    adamw(p, g, m, v, { lr: 0.1, weightDecay: 0.5, step: 1, eps: 1e-8 });
    const out = await p.readFloat();
    // p·(1 − 0.05) − 0.1·sign(g)·|g|/(|g| + 1e-8)
    const want = Array.from(gs, (x) => 0.95 - (0.1 * x) / (Math.abs(x) + 1e-8));
    out.forEach((x, i) => assert.ok(Math.abs(x - want[i]!) <= 1e-6, `p[${i}] = ${x}, want ${want[i]}`));
  } finally {
    pool.dispose();
  }
});

// ---------------------------------------------------------------------------------------
// sumSquares

const SUM_SIZES: { shape: number[]; scale?: number }[] = [
  { shape: [1] },
  { shape: [7] },
  { shape: [2048] },
  { shape: [2049] },
  { shape: [37, 67] },
  { shape: [4099] },
  { shape: [100003], scale: 3 },
  { shape: [5000011], scale: 1e-3 },
];

forEachBackend('sumSquares vs reference, bit-identical reruns', async (b) => {
  const r = rng(77);
  const pool = new Pool(b);
  const rep = new Report(`sumSquares on ${b.kind}`);
  try {
    for (const { shape, scale } of SUM_SIZES) {
      const n = shape.reduce((a, d) => a * d, 1);
      const gs = randn(r, n, scale ?? 1);
      const g = pool.t(gs, shape);
      await rep.step(`shape [${shape}]`, async () => {
        const out = pool.t(poisoned(1), [1]);
        assert.equal(sumSquares(g, { out }), out, 'returns opts.out');
        const a = await out.readFloat();
        rep.close(`sumSquares [${shape}]`, a, [sumSquaresRef(gs)]);
        const again = pool.keep(sumSquares(g));
        assert.deepEqual(again.shape, [1]);
        const c = await again.readFloat();
        if (!bitsEqual(a, c)) rep.fails.push(`sumSquares [${shape}]: rerun gave ${c[0]}, first run ${a[0]} (not bit-identical)`);
        if (!bitsEqual(await g.readFloat(), gs)) rep.fails.push(`sumSquares [${shape}]: g was modified`);
      });
    }
  } finally {
    pool.dispose();
  }
  rep.done();
});

// ---------------------------------------------------------------------------------------
// Bad input: the right MoteError subclass, a message naming the argument, and no kernel run

forEachBackend('adamw / sumSquares reject bad input', async (b) => {
  const r = rng(31);
  const n = 12;
  const pool = new Pool(b);
  let other: Backend | null = null;
  try {
    const p = pool.t(randn(r, n), [3, 4]),
      g = pool.t(randn(r, n), [3, 4]),
      m = pool.t(randn(r, n), [3, 4]),
      v = pool.t(randn(r, n), [3, 4]);
    const before = await p.readFloat();
    const ok: AdamwOptions = { lr: 1e-3, step: 1 };

    throwsLike(
      () => adamw(p, pool.t(randn(r, n), [4, 3]), m, v, ok),
      ShapeError,
      /adamw: g: expected shape \[d0, d1\] with d0 = 3 \(from p\), got \[4, 3\]/,
      'g of another shape',
    );
    throwsLike(
      () => adamw(p, g, pool.t(randn(r, n), [12]), v, ok),
      ShapeError,
      /adamw: m: expected shape \[d0, d1\], got \[12\]/,
      'm of another rank',
    );
    throwsLike(() => adamw(p, g, m, pool.t(randn(r, 15), [3, 5]), ok), ShapeError, /adamw: v: .*d1 = 4/, 'v of another n');
    throwsLike(() => adamw(pool.t(randn(r, n), [3, 4], 'f16'), g, m, v, ok), DTypeError, /adamw: p: expected dtype f32, got f16/, 'p f16');
    throwsLike(
      () => adamw(p, pool.t(randn(r, n), [3, 4], 'bf16'), m, v, ok),
      DTypeError,
      /adamw: g: expected dtype f32, got bf16/,
      'g bf16',
    );
    throwsLike(
      () => adamw(p, g, m, pool.t(new Int32Array(n), [3, 4], 'i32'), ok),
      DTypeError,
      /adamw: v: expected dtype f32, got i32/,
      'v i32',
    );
    throwsLike(() => adamw(p, g, 3 as unknown as Tensor, v, ok), ArgumentError, /adamw: m: expected a Tensor/, 'm a number');
    throwsLike(() => adamw(p, g, p, v, ok), ArgumentError, /adamw: p: must not be the same tensor as m/, 'm is p');
    throwsLike(() => adamw(p, g, m, g, ok), ArgumentError, /adamw: v: must not be the same tensor as g/, 'v is g');
    throwsLike(() => adamw(p, g, m, v, { ...ok, lr: NaN }), ArgumentError, /adamw: lr: expected a finite number, got NaN/, 'lr NaN');
    throwsLike(() => adamw(p, g, m, v, { ...ok, lr: -1 }), ArgumentError, /adamw: lr: expected a number ≥ 0, got -1/, 'lr < 0');
    throwsLike(() => adamw(p, g, m, v, { ...ok, lr: Infinity }), ArgumentError, /adamw: lr: expected a finite number/, 'lr inf');
    throwsLike(
      () => adamw(p, g, m, v, { ...ok, beta1: 1 }),
      ArgumentError,
      /adamw: beta1: expected a number in \[0, 1\), got 1/,
      'beta1 = 1',
    );
    throwsLike(
      () => adamw(p, g, m, v, { ...ok, beta2: -0.1 }),
      ArgumentError,
      /adamw: beta2: expected a number in \[0, 1\), got -0.1/,
      'beta2 < 0',
    );
    throwsLike(() => adamw(p, g, m, v, { ...ok, eps: 0 }), ArgumentError, /adamw: eps: expected a number > 0, got 0/, 'eps = 0');
    throwsLike(() => adamw(p, g, m, v, { ...ok, eps: 1e-60 }), ArgumentError, /adamw: eps: .*f32/, 'eps underflows f32');
    throwsLike(
      () => adamw(p, g, m, v, { ...ok, weightDecay: -0.01 }),
      ArgumentError,
      /adamw: weightDecay: expected a number ≥ 0/,
      'wd < 0',
    );
    throwsLike(
      () => adamw(p, g, m, v, { ...ok, gradScale: Infinity }),
      ArgumentError,
      /adamw: gradScale: expected a finite number/,
      'gradScale inf',
    );
    throwsLike(
      () => adamw(p, g, m, v, { ...ok, gradScale: '2' as unknown as number }),
      ArgumentError,
      /adamw: gradScale: expected a finite number, got/,
      'gradScale a string',
    );
    throwsLike(() => adamw(p, g, m, v, { ...ok, step: 0 }), ArgumentError, /adamw: step: expected an integer ≥ 1, got 0/, 'step 0');
    throwsLike(() => adamw(p, g, m, v, { ...ok, step: 1.5 }), ArgumentError, /adamw: step: expected an integer ≥ 1, got 1.5/, 'step 1.5');
    throwsLike(() => adamw(p, g, m, v, { lr: 1e-3 } as AdamwOptions), ArgumentError, /adamw: step: /, 'step missing');
    throwsLike(() => adamw(p, g, m, v, undefined as unknown as AdamwOptions), ArgumentError, /adamw: opts: /, 'opts missing');
    const gd = pool.t(randn(r, n), [3, 4]);
    gd.dispose();
    throwsLike(() => adamw(p, gd, m, v, ok), DisposedTensorError, /adamw: g\b/, 'disposed g');
    other = (await openBackend('cpu').catch(() => null)) ?? (await openBackend(b.kind));
    const vo = other.tensor(randn(r, n), [3, 4]);
    throwsLike(() => adamw(p, g, m, vo, ok), BackendMismatchError, /adamw: v: expected a tensor on the .* backend/, 'v of another backend');

    throwsLike(
      () => sumSquares(pool.t(randn(r, n), [3, 4], 'f16')),
      DTypeError,
      /sumSquares: g: expected dtype f32, got f16/,
      'sumSquares g f16',
    );
    throwsLike(
      () => sumSquares(g, { out: pool.t(randn(r, 2), [2]) }),
      ShapeError,
      /sumSquares: out: expected shape \[1\], got \[2\]/,
      'sumSquares out [2]',
    );
    throwsLike(
      () => sumSquares(g, { out: pool.t(new Int32Array(1), [1], 'i32') }),
      DTypeError,
      /sumSquares: out: expected dtype f32, got i32/,
      'sumSquares out i32',
    );
    throwsLike(
      () => sumSquares(g, { out: other!.tensor(new Float32Array(1), [1]) }),
      BackendMismatchError,
      /sumSquares: out: /,
      'sumSquares out of another backend',
    );
    throwsLike(() => sumSquares(null as unknown as Tensor), ArgumentError, /sumSquares: g: expected a Tensor/, 'sumSquares null');

    assert.deepEqual(await p.readFloat(), before, 'a rejected call must not have run a kernel');
  } finally {
    pool.dispose();
    other?.destroy();
  }
});

test('case matrix covers n = 1, primes, 4099, wd 0 and > 0, gradScale ≠ 1', () => {
  const size = (c: Case) => c.shape.reduce((a, d) => a * d, 1);
  assert.ok(CASES.some((c) => size(c) === 1) && CASES.some((c) => size(c) === 4099) && CASES.some((c) => size(c) === 131));
  assert.ok(CASES.some((c) => c.weightDecay === 0) && CASES.some((c) => c.weightDecay > 0));
  assert.ok(CASES.some((c) => (c.gradScale ?? 1) !== 1));
});
