// swiglu / swigluGrad (src/ops/swiglu.ts) on every backend against the float64 reference
// (src/reference/swiglu.ts), plus argument checking. Elementwise, f32 only: relative error
// ≤ 1e-5 everywhere, including gates far out in both tails (±30, ±90, ±100), where a
// careless sigmoid gives inf/inf = NaN or 0·inf.
//
// cpu and cuda run every case; webgpu (Mesa lavapipe in CI: seconds per shader compile)
// runs the cases marked `webgpu`. MOTE_MODEL_FULL=1 runs every case on webgpu too.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { swiglu, swigluGrad } from '../src/ops/swiglu.js';
import { swigluBackwardRef, swigluRef } from '../src/reference/swiglu.js';
import { ArgumentError, BackendMismatchError, DTypeError, DisposedTensorError, ShapeError } from '../src/errors.js';
import { openBackend } from '../src/backend/select.js';
import type { Backend, BackendKind } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { closeBackends, forEachBackend, randn, rng } from './helpers.js';
import { Pool, Report, throwsLike } from './case_helpers.js';

after(closeBackends);

const FULL = process.env.MOTE_MODEL_FULL === '1';

// ---------------------------------------------------------------------------------------
// The case matrix
interface Case {
  name: string;
  T: number;
  I: number;
  /** scale of the gates (default 4: both saturated and linear parts of silu) */
  gScale?: number;
  /** put ±30, ±90, ±100 among the gates */
  tails?: boolean;
  webgpu?: boolean;
}

const CASES: Case[] = [
  { name: 'T=1 I=1', T: 1, I: 1 },
  { name: 'T=1 I=37', T: 1, I: 37, webgpu: true },
  { name: 'T=17 I=67', T: 17, I: 67 },
  { name: 'T=131 I=37', T: 131, I: 37, webgpu: true },
  { name: 'T=2 I=11008', T: 2, I: 11008 },
  { name: 'T=7 I=67 gates in both tails', T: 7, I: 67, tails: true, webgpu: true },
  { name: 'T=3 I=37 small gates', T: 3, I: 37, gScale: 0.01 },
];

const TAILS = [30, -30, 90, -90, 100, -100, 17.5, -17.5];

async function runCase(b: Backend, c: Case, seed: number): Promise<void> {
  const r = rng(seed);
  const { T, I } = c;
  const n = T * I;
  const gs = randn(r, n, c.gScale ?? 4),
    us = randn(r, n),
    dys = randn(r, n);
  if (c.tails)
    TAILS.forEach((v, i) => {
      gs[(i * 37 + 5) % n] = v;
    });
  const p = new Pool(b);
  const rep = new Report(`swiglu ${c.name} on ${b.kind}`);
  try {
    const gate = p.t(gs, [T, I]),
      up = p.t(us, [T, I]),
      dy = p.t(dys, [T, I]);
    const yRef = swigluRef(gs, us, T, I);
    await rep.step('swiglu', async () => {
      const out = p.poison([T, I]);
      assert.equal(swiglu(gate, up, { out }), out, 'returns opts.out');
      rep.close('swiglu y', await out.readFloat(), yRef);
    });
    await rep.step('swiglu without out', async () => {
      const y = p.keep(swiglu(gate, up));
      assert.deepEqual(y.shape, [T, I]);
      rep.close('swiglu (allocated) y', await y.readFloat(), yRef);
    });
    await rep.step('swigluGrad', async () => {
      const g = swigluBackwardRef(dys, gs, us, T, I);
      const { dgate, dup } = swigluGrad(dy, gate, up);
      p.keep(dgate);
      p.keep(dup);
      assert.deepEqual(dgate.shape, [T, I]);
      assert.deepEqual(dup.shape, [T, I]);
      rep.close('swigluGrad dgate', await dgate.readFloat(), g.dgate);
      rep.close('swigluGrad dup', await dup.readFloat(), g.dup);
    });
    await rep.step('inputs untouched', async () => {
      rep.exact('gate after the ops', await gate.readFloat(), gs);
      rep.exact('up after the ops', await up.readFloat(), us);
      rep.exact('dy after the ops', await dy.readFloat(), dys);
    });
  } finally {
    p.dispose();
  }
  rep.done();
}

let seed = 400;
for (const c of CASES) {
  const kinds: BackendKind[] = FULL || c.webgpu ? ['cpu', 'webgpu', 'cuda'] : ['cpu', 'cuda'];
  const s = seed++;
  forEachBackend(`swiglu ${c.name}`, (b) => runCase(b, c, s), { kinds });
}

// ---------------------------------------------------------------------------------------
// Bad input: the right MoteError subclass, a message naming the argument, and no kernel run

forEachBackend('swiglu ops reject bad input', async (b) => {
  const r = rng(23);
  const T = 3,
    I = 5;
  const p = new Pool(b);
  let other: Backend | null = null;
  try {
    const gate = p.t(randn(r, T * I), [T, I]),
      up = p.t(randn(r, T * I), [T, I]),
      dy = p.t(randn(r, T * I), [T, I]);
    const out = p.t(randn(r, T * I), [T, I]);
    const before = await out.readFloat();

    throwsLike(
      () => swiglu(gate, p.t(randn(r, T * (I + 1)), [T, I + 1]), { out }),
      ShapeError,
      /swiglu: up: expected shape \[T, I\] with I = 5 \(from gate\), got \[3, 6\]/,
      'up of another I',
    );
    throwsLike(() => swiglu(gate, p.t(randn(r, I), [1, I]), { out }), ShapeError, /swiglu: up: .*T = 3/, 'up of another T');
    throwsLike(
      () => swiglu(p.t(randn(r, T * I), [T * I]), up, { out }),
      ShapeError,
      /swiglu: gate: expected shape \[T, I\], got \[15\]/,
      'gate 1-D',
    );
    throwsLike(
      () => swiglu(p.t(randn(r, T * I), [T, I], 'f16'), up, { out }),
      DTypeError,
      /swiglu: gate: expected dtype f32, got f16/,
      'gate f16',
    );
    throwsLike(
      () => swiglu(gate, p.t(randn(r, T * I), [T, I], 'bf16'), { out }),
      DTypeError,
      /swiglu: up: expected dtype f32, got bf16/,
      'up bf16',
    );
    throwsLike(() => swiglu(gate, up, { out: p.poison([I, T]) }), ShapeError, /swiglu: out: /, 'out transposed');
    throwsLike(
      () => swiglu(gate, up, { out: p.t(new Int32Array(T * I), [T, I], 'i32') }),
      DTypeError,
      /swiglu: out: expected dtype f32, got i32/,
      'out i32',
    );
    throwsLike(() => swiglu(gate, 3 as unknown as Tensor), ArgumentError, /swiglu: up: expected a Tensor/, 'up a number');
    throwsLike(() => swigluGrad(p.t(randn(r, T * I), [T * I]), gate, up), ShapeError, /swigluGrad: dy: expected shape \[T, I\]/, 'dy 1-D');
    throwsLike(
      () => swigluGrad(dy, p.t(randn(r, 2 * I), [2, I]), up),
      ShapeError,
      /swigluGrad: gate: .*T = 3 \(from dy\)/,
      'grad gate of another T',
    );
    throwsLike(
      () => swigluGrad(dy, gate, p.t(randn(r, T * I), [T, I], 'f16')),
      DTypeError,
      /swigluGrad: up: expected dtype f32, got f16/,
      'grad up f16',
    );
    const ud = p.t(randn(r, T * I), [T, I]);
    ud.dispose();
    throwsLike(() => swiglu(gate, ud, { out }), DisposedTensorError, /swiglu: up\b/, 'disposed up');
    other = (await openBackend('cpu').catch(() => null)) ?? (await openBackend(b.kind));
    const uo = other.tensor(randn(r, T * I), [T, I]);
    throwsLike(
      () => swiglu(gate, uo, { out }),
      BackendMismatchError,
      /swiglu: up: expected a tensor on the .* backend/,
      'up of another backend',
    );
    throwsLike(() => swigluGrad(dy, gate, uo), BackendMismatchError, /swigluGrad: up: /, 'grad up of another backend');

    assert.deepEqual(await out.readFloat(), before, 'a rejected call must not have run a kernel');
  } finally {
    p.dispose();
    other?.destroy();
  }
});

test('case matrix: T = 1, primes and both tails reach webgpu', () => {
  const wg = CASES.filter((c) => c.webgpu);
  assert.ok(wg.some((c) => c.T === 1) && wg.some((c) => c.tails) && wg.some((c) => c.T === 131));
});
