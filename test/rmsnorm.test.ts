// rmsnorm / rmsnormGrad (src/ops/rmsnorm.ts) on every backend against the float64 reference
// (src/reference/rmsnorm.ts), plus determinism and argument checking.
//
// The reference sees w rounded through its storage dtype (roundTo), so every backend must
// match it to f32 accumulation accuracy: relative error ≤ 1e-5 for y, rstd, dx and dw, for
// w in f32, f16 and bf16. The backward is fed the reference rstd (rounded to f32), so a
// forward bug does not hide in it; the determinism test runs the forward → backward chain.
//
// cpu and cuda run every case with every w dtype; webgpu (Mesa lavapipe in CI, where each
// shader specialisation costs seconds to compile cold) runs the cases marked `webgpu`, one
// w dtype each, which still cover T = 1, primes, a row wider than any workgroup, eps
// dominating mean(x²), and both dw paths. MOTE_MODEL_FULL=1 runs the full matrix on webgpu.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { rmsnorm, rmsnormGrad } from '../src/ops/rmsnorm.js';
import { rmsnormBackwardRef, rmsnormRef, rmsnormRstdRef } from '../src/reference/rmsnorm.js';
import { roundTo, type DType } from '../src/dtype.js';
import { ArgumentError, BackendMismatchError, DTypeError, DisposedTensorError, ShapeError } from '../src/errors.js';
import { openBackend } from '../src/backend/select.js';
import type { Backend, BackendKind } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { closeBackends, forEachBackend, poisoned, randn, rng } from './helpers.js';
import { Pool, Report, bitsEqual, throwsLike } from './case_helpers.js';

after(closeBackends);

const TOL = 1e-5;
const FULL = process.env.MOTE_MODEL_FULL === '1';
const DTYPES: DType[] = ['f32', 'f16', 'bf16'];

// ---------------------------------------------------------------------------------------
// The case matrix
interface Case {
  name: string;
  T: number;
  H: number;
  eps: number;
  /** scale of x (default 1) */
  xScale?: number;
  /** the w dtype this case runs with on webgpu (absent: cpu/cuda only) */
  webgpu?: DType;
}

const CASES: Case[] = [
  { name: 'T=1 H=1', T: 1, H: 1, eps: 1e-5 },
  { name: 'T=1 H=37', T: 1, H: 37, eps: 1e-6, webgpu: 'f16' },
  { name: 'T=3 H=67', T: 3, H: 67, eps: 1e-5 },
  { name: 'T=17 H=67', T: 17, H: 67, eps: 1e-5, webgpu: 'f32' },
  { name: 'T=131 H=37', T: 131, H: 37, eps: 1e-6, webgpu: 'bf16' },
  { name: 'T=5 H=2053 wide rows', T: 5, H: 2053, eps: 1e-5, webgpu: 'f32' },
  { name: 'T=2 H=4096', T: 2, H: 4096, eps: 1e-5 },
  { name: 'T=7 H=37 tiny x (eps dominates mean x²)', T: 7, H: 37, eps: 1e-5, xScale: 1e-3, webgpu: 'bf16' },
  { name: 'T=7 H=67 large x', T: 7, H: 67, eps: 1e-6, xScale: 1e3 },
];

async function runCase(b: Backend, c: Case, dtype: DType, seed: number): Promise<void> {
  const r = rng(seed);
  const { T, H, eps } = c;
  const xs = randn(r, T * H, c.xScale ?? 1),
    ws = randn(r, H),
    dys = randn(r, T * H);
  const wr = roundTo(dtype, ws);
  const rstdRef = rmsnormRstdRef(xs, T, H, eps);
  const p = new Pool(b);
  const rep = new Report(`rmsnorm ${c.name} eps=${eps} w ${dtype} on ${b.kind}`);
  try {
    const x = p.t(xs, [T, H]),
      w = p.t(ws, [H], dtype),
      dy = p.t(dys, [T, H]);

    await rep.step('rmsnorm', async () => {
      const out = p.poison([T, H]);
      const { y, rstd } = rmsnorm(x, w, eps, { out });
      p.keep(rstd);
      assert.equal(y, out, 'returns opts.out as y');
      assert.deepEqual(rstd.shape, [T]);
      rep.close('rmsnorm y', await y.readFloat(), rmsnormRef(xs, wr, T, H, eps));
      rep.close('rmsnorm rstd', await rstd.readFloat(), rstdRef);
    });

    await rep.step('rmsnorm without out', async () => {
      const { y, rstd } = rmsnorm(x, w, eps);
      p.keep(y);
      p.keep(rstd);
      rep.close('rmsnorm (allocated) y', await y.readFloat(), rmsnormRef(xs, wr, T, H, eps));
    });

    const g = rmsnormBackwardRef(dys, xs, wr, T, H, eps);
    const rstd = p.t(Float32Array.from(rstdRef), [T]);
    // dx = r·g − r³·x·(g·x)/H: at H = 1 the two terms cancel to r·g·eps/(x² + eps), so a
    // rounding of the f32 rstd input alone moves dx by far more than 1e-5 of itself. There dx
    // is held to 1e-5 of the size of its terms (‖r·dy·w‖) instead.
    const dxScale = H === 1 ? Float64Array.from(dys, (v, i) => v * rstdRef[Math.floor(i / H)]! * wr[i % H]!) : null;
    const closeDx = (what: string, out: Float32Array) => {
      if (!dxScale) return rep.close(what, out, g.dx);
      let num = 0,
        den = 0;
      for (let i = 0; i < out.length; i++) {
        num += (out[i]! - g.dx[i]!) ** 2;
        den += dxScale[i]! ** 2;
      }
      const e = Math.sqrt(num / den);
      if (!(e <= TOL)) rep.fails.push(`${what}: error ${e.toExponential(2)} of ‖rstd·dy·w‖ > ${TOL}`);
    };
    await rep.step('rmsnormGrad into poisoned dw', async () => {
      const dwOut = p.poison([H]);
      const { dx, dw } = rmsnormGrad(dy, x, w, rstd, eps, { dw: dwOut });
      p.keep(dx);
      assert.equal(dw, dwOut, 'returns opts.dw');
      closeDx('rmsnormGrad dx', await dx.readFloat());
      rep.close('rmsnormGrad dw', await dw.readFloat(), g.dw);
    });

    await rep.step('rmsnormGrad accumulateDw', async () => {
      const dw0 = randn(r, H, Math.sqrt(T));
      const dwOut = p.t(dw0, [H]);
      const { dx, dw } = rmsnormGrad(dy, x, w, rstd, eps, { dw: dwOut, accumulateDw: true });
      p.keep(dx);
      assert.equal(dw, dwOut, 'returns opts.dw');
      closeDx('rmsnormGrad accumulate dx', await dx.readFloat());
      rep.close(
        'rmsnormGrad accumulate dw',
        await dw.readFloat(),
        g.dw.map((v, i) => v + dw0[i]!),
      );
    });

    await rep.step('rmsnormGrad without dw', async () => {
      const { dx, dw } = rmsnormGrad(dy, x, w, rstd, eps, { accumulateDw: false });
      p.keep(dx);
      p.keep(dw);
      assert.deepEqual(dw.shape, [H]);
      rep.close('rmsnormGrad (allocated) dw', await dw.readFloat(), g.dw);
    });

    await rep.step('inputs untouched', async () => {
      rep.exact('x after the ops', await x.readFloat(), xs);
      rep.exact('w after the ops', await w.readFloat(), wr);
      rep.exact('dy after the ops', await dy.readFloat(), dys);
      rep.exact('rstd after rmsnormGrad', await rstd.readFloat(), Float32Array.from(rstdRef));
    });
  } finally {
    p.dispose();
  }
  rep.done();
}

let seed = 200;
for (const c of CASES) {
  for (const dtype of DTYPES) {
    const kinds: BackendKind[] = FULL || c.webgpu === dtype ? ['cpu', 'webgpu', 'cuda'] : ['cpu', 'cuda'];
    const s = seed++;
    forEachBackend(`rmsnorm ${c.name} w ${dtype}`, (b) => runCase(b, c, dtype, s), { kinds });
  }
}

// ---------------------------------------------------------------------------------------
// Determinism: forward → backward twice gives the same bits (dw is a reduction over T)

forEachBackend('rmsnorm and rmsnormGrad are deterministic', async (b) => {
  const r = rng(11);
  const T = 131,
    H = 67,
    eps = 1e-5;
  const p = new Pool(b);
  try {
    const xs = randn(r, T * H),
      ws = randn(r, H),
      dys = randn(r, T * H),
      dw0 = randn(r, H);
    const x = p.t(xs, [T, H]),
      w = p.t(ws, [H], 'bf16'),
      dy = p.t(dys, [T, H]);
    const runs: Record<string, Float32Array>[] = [];
    for (let i = 0; i < 2; i++) {
      const { y, rstd } = rmsnorm(x, w, eps);
      p.keep(y);
      p.keep(rstd);
      const { dx, dw } = rmsnormGrad(dy, x, w, rstd, eps);
      p.keep(dx);
      p.keep(dw);
      const acc = rmsnormGrad(dy, x, w, rstd, eps, { dw: p.t(dw0, [H]), accumulateDw: true });
      p.keep(acc.dx);
      runs.push({
        y: await y.readFloat(),
        rstd: await rstd.readFloat(),
        dx: await dx.readFloat(),
        dw: await dw.readFloat(),
        dwAcc: await acc.dw.readFloat(),
      });
    }
    for (const k of Object.keys(runs[0]!)) {
      assert.ok(runs[0]![k]!.every(Number.isFinite), `${k}: non-finite output`);
      assert.ok(bitsEqual(runs[0]![k]!, runs[1]![k]!), `${k}: two runs differ in their bits`);
    }
    // and the chain is right, not only repeatable
    const g = rmsnormBackwardRef(dys, xs, roundTo('bf16', ws), T, H, eps);
    const rep = new Report(`rmsnorm chain on ${b.kind}`);
    rep.close('dx (from the backend rstd)', runs[0]!.dx!, g.dx);
    rep.close('dw (from the backend rstd)', runs[0]!.dw!, g.dw);
    rep.close(
      'dw accumulate',
      runs[0]!.dwAcc!,
      g.dw.map((v, i) => v + dw0[i]!),
    );
    rep.done();
  } finally {
    p.dispose();
  }
});

// ---------------------------------------------------------------------------------------
// Bad input: the right MoteError subclass, a message naming the argument, and no kernel run

forEachBackend('rmsnorm ops reject bad input', async (b) => {
  const r = rng(13);
  const T = 3,
    H = 4,
    eps = 1e-5;
  const p = new Pool(b);
  let other: Backend | null = null;
  try {
    const x = p.t(randn(r, T * H), [T, H]),
      w = p.t(randn(r, H), [H], 'f16'),
      dy = p.t(randn(r, T * H), [T, H]);
    const rstd = p.t(randn(r, T), [T]);
    const out = p.t(randn(r, T * H), [T, H]),
      dwOut = p.t(randn(r, H), [H]);
    const before = [await out.readFloat(), await dwOut.readFloat()];

    // forward: x, w, eps, out
    throwsLike(
      () => rmsnorm(p.t(new Int32Array(T * H), [T, H], 'i32'), w, eps),
      DTypeError,
      /rmsnorm: x: expected dtype f32, got i32/,
      'x i32',
    );
    throwsLike(
      () => rmsnorm(p.t(randn(r, T * H), [T, H], 'bf16'), w, eps),
      DTypeError,
      /rmsnorm: x: expected dtype f32, got bf16/,
      'x bf16',
    );
    throwsLike(
      () => rmsnorm(p.t(randn(r, T * H), [T * H]), w, eps),
      ShapeError,
      /rmsnorm: x: expected shape \[T, H\], got \[12\]/,
      'x 1-D',
    );
    throwsLike(
      () => rmsnorm(x, p.t(randn(r, H + 1), [H + 1]), eps),
      ShapeError,
      /rmsnorm: w: expected shape \[H\] with H = 4 \(from x\), got \[5\]/,
      'w of another H',
    );
    throwsLike(() => rmsnorm(x, p.t(randn(r, H), [1, H]), eps), ShapeError, /rmsnorm: w: expected shape \[H\]/, 'w 2-D');
    throwsLike(
      () => rmsnorm(x, p.t(new Int32Array(H), [H], 'i32'), eps),
      DTypeError,
      /rmsnorm: w: expected dtype f32 or f16 or bf16, got i32/,
      'w i32',
    );
    for (const bad of [0, -1e-5, NaN, Infinity, '1e-5', undefined])
      throwsLike(
        () => rmsnorm(x, w, bad as number),
        ArgumentError,
        /rmsnorm: eps: expected a positive finite number/,
        `eps ${String(bad)}`,
      );
    throwsLike(() => rmsnorm(x, w, eps, { out: p.poison([T, H + 1]) }), ShapeError, /rmsnorm: out: .*H = 4/, 'out of another shape');
    throwsLike(
      () => rmsnorm(x, w, eps, { out: p.t(poisoned(T * H), [T, H], 'f16') }),
      DTypeError,
      /rmsnorm: out: expected dtype f32, got f16/,
      'out f16',
    );
    throwsLike(() => rmsnorm(x, {} as Tensor, eps), ArgumentError, /rmsnorm: w: expected a Tensor/, 'w not a tensor');

    // backward: dy, x, w, rstd, eps, dw, accumulateDw
    throwsLike(
      () => rmsnormGrad(p.t(randn(r, T * H), [T * H]), x, w, rstd, eps),
      ShapeError,
      /rmsnormGrad: dy: expected shape \[T, H\]/,
      'dy 1-D',
    );
    throwsLike(
      () => rmsnormGrad(dy, p.t(randn(r, 2 * H), [2, H]), w, rstd, eps),
      ShapeError,
      /rmsnormGrad: x: .*T = 3 \(from dy\)/,
      'x of another T',
    );
    throwsLike(() => rmsnormGrad(dy, x, p.t(randn(r, 2), [2]), rstd, eps), ShapeError, /rmsnormGrad: w: .*H = 4/, 'grad w of another H');
    throwsLike(
      () => rmsnormGrad(dy, x, w, p.t(randn(r, T + 1), [T + 1]), eps),
      ShapeError,
      /rmsnormGrad: rstd: expected shape \[T\] with T = 3/,
      'rstd of another T',
    );
    throwsLike(
      () => rmsnormGrad(dy, x, w, p.t(randn(r, T), [T], 'bf16'), eps),
      DTypeError,
      /rmsnormGrad: rstd: expected dtype f32, got bf16/,
      'rstd bf16',
    );
    throwsLike(() => rmsnormGrad(dy, x, w, rstd, -1), ArgumentError, /rmsnormGrad: eps: /, 'grad eps < 0');
    throwsLike(
      () => rmsnormGrad(dy, x, w, rstd, eps, { accumulateDw: true }),
      ArgumentError,
      /rmsnormGrad: accumulateDw: needs a dw/,
      'accumulateDw without dw',
    );
    throwsLike(
      () => rmsnormGrad(dy, x, w, rstd, eps, { dw: dwOut, accumulateDw: 1 as unknown as boolean }),
      ArgumentError,
      /rmsnormGrad: accumulateDw: expected a boolean/,
      'accumulateDw not boolean',
    );
    throwsLike(
      () => rmsnormGrad(dy, x, w, rstd, eps, { dw: p.poison([H + 1]) }),
      ShapeError,
      /rmsnormGrad: dw: .*H = 4/,
      'dw of another H',
    );
    throwsLike(
      () => rmsnormGrad(dy, x, w, rstd, eps, { dw: p.t(poisoned(H), [H], 'bf16') }),
      DTypeError,
      /rmsnormGrad: dw: expected dtype f32, got bf16/,
      'dw bf16',
    );

    // disposed, another backend
    const wd = p.t(randn(r, H), [H]);
    wd.dispose();
    throwsLike(() => rmsnorm(x, wd, eps), DisposedTensorError, /rmsnorm: w\b/, 'disposed w');
    throwsLike(() => rmsnormGrad(dy, x, wd, rstd, eps), DisposedTensorError, /rmsnormGrad: w\b/, 'grad disposed w');
    other = (await openBackend('cpu').catch(() => null)) ?? (await openBackend(b.kind));
    const wo = other.tensor(randn(r, H), [H]);
    throwsLike(() => rmsnorm(x, wo, eps), BackendMismatchError, /rmsnorm: w: expected a tensor on the .* backend/, 'w of another backend');
    const dwo = other.tensor(randn(r, H), [H]);
    throwsLike(
      () => rmsnormGrad(dy, x, w, rstd, eps, { dw: dwo }),
      BackendMismatchError,
      /rmsnormGrad: dw: expected a tensor on the/,
      'dw of another backend',
    );

    assert.deepEqual([await out.readFloat(), await dwOut.readFloat()], before, 'a rejected call must not have run a kernel');
  } finally {
    p.dispose();
    other?.destroy();
  }
});

test('case matrix: every w dtype and the awkward shapes reach webgpu', () => {
  const wg = CASES.filter((c) => c.webgpu);
  assert.equal(new Set(wg.map((c) => c.webgpu)).size, DTYPES.length);
  assert.ok(wg.some((c) => c.T === 1) && wg.some((c) => c.H > 1024) && wg.some((c) => c.xScale !== undefined && c.xScale < 1));
});
