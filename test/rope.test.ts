// rope / ropeGrad (src/ops/rope.ts) on every backend against the float64 reference
// (src/reference/rope.ts), plus argument checking.
//
// invFreq comes from ropeInvFreqRef (default, linear and llama3 scaling) and is uploaded as
// f32; the reference is fed those same f32 values, so every backend must match it to
// relative error ≤ 1e-5. Positions are non-consecutive (unsorted, repeated, gaps) and reach
// 2^20 in the long-context cases: θ = position·invFreq must not be rounded to f32 before
// sin/cos there (an f32 θ near 10^5 rad is off by ~10^-3 rad), which the contract's
// reference does not do either.
//
// cpu and cuda run every case; webgpu (Mesa lavapipe in CI: seconds per shader compile) runs
// the cases marked `webgpu`, which still cover T = 1, D = 2 and 64, the three scalings,
// heads = 37, long positions, and the in-place entry for both directions.
// MOTE_MODEL_FULL=1 runs every case on webgpu too.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { rope, ropeGrad } from '../src/ops/rope.js';
import { ropeBackwardRef, ropeInvFreqRef, ropeRef, type RopeScaling } from '../src/reference/rope.js';
import { ropeInvFreq } from '../src/model/rope_freq.js';
import { ArgumentError, BackendMismatchError, DTypeError, DisposedTensorError, ShapeError } from '../src/errors.js';
import { openBackend } from '../src/backend/select.js';
import type { Backend, BackendKind } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { closeBackends, forEachBackend, poisoned, randn, rng } from './helpers.js';
import { Pool, Report, throwsLike } from './case_helpers.js';

after(closeBackends);

const FULL = process.env.MOTE_MODEL_FULL === '1';

// ---------------------------------------------------------------------------------------
// The case matrix
const SCALINGS: Record<string, { theta: number; scaling: RopeScaling | null }> = {
  default: { theta: 10000, scaling: null },
  linear: { theta: 10000, scaling: { rope_type: 'linear', factor: 4 } },
  // Llama 3.1: the three wavelength bands (kept, smoothed, scaled) all occur for D ≥ 64
  llama3: {
    theta: 500000,
    scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
  },
};

interface Case {
  name: string;
  T: number;
  heads: number;
  D: number;
  scaling: keyof typeof SCALINGS;
  /** 'gaps': unsorted positions below 4096 with a repeat and gaps; 'long': up to 2^20 */
  pos: 'gaps' | 'long' | number[];
  webgpu?: boolean;
}

const CASES: Case[] = [
  { name: 'T=1 heads=1 D=2', T: 1, heads: 1, D: 2, scaling: 'default', pos: [7], webgpu: true },
  { name: 'T=17 heads=37 D=2 linear', T: 17, heads: 37, D: 2, scaling: 'linear', pos: 'gaps' },
  { name: 'T=3 heads=5 D=2 llama3', T: 3, heads: 5, D: 2, scaling: 'llama3', pos: [4095, 17, 2] },
  { name: 'T=17 heads=3 D=64', T: 17, heads: 3, D: 64, scaling: 'default', pos: 'gaps', webgpu: true },
  { name: 'T=131 heads=2 D=64 llama3', T: 131, heads: 2, D: 64, scaling: 'llama3', pos: 'gaps', webgpu: true },
  { name: 'T=37 heads=37 D=64 linear', T: 37, heads: 37, D: 64, scaling: 'linear', pos: 'gaps', webgpu: true },
  { name: 'T=5 heads=8 D=128 llama3', T: 5, heads: 8, D: 128, scaling: 'llama3', pos: 'gaps' },
  { name: 'T=7 heads=4 D=64 llama3 long context', T: 7, heads: 4, D: 64, scaling: 'llama3', pos: 'long', webgpu: true },
  { name: 'T=7 heads=67 D=2 long context', T: 7, heads: 67, D: 2, scaling: 'default', pos: 'long' },
  { name: 'T=7 heads=1 D=128 long context', T: 7, heads: 1, D: 128, scaling: 'default', pos: 'long' },
];

function makePositions(c: Case, r: () => number): number[] {
  if (Array.isArray(c.pos)) return c.pos;
  if (c.pos === 'long') {
    const p = [131071, 0, 8192, 1048575, 65537, 8191, 100003];
    return p.slice(0, c.T);
  }
  const p = Array.from({ length: c.T }, () => Math.floor(r() * 4096));
  if (c.T >= 3) {
    p[1] = p[0]!; // a repeated position
    p[2] = 0;
  }
  if (p.every((v, i) => i === 0 || p[i - 1]! <= v)) p.reverse();
  return p;
}

async function runCase(b: Backend, c: Case, seed: number): Promise<void> {
  const r = rng(seed);
  const { T, heads, D } = c;
  const { theta, scaling } = SCALINGS[c.scaling]!;
  const inv = Float32Array.from(ropeInvFreqRef(D, theta, scaling)); // what the device sees
  const pos = makePositions(c, r);
  assert.equal(pos.length, T);
  const shape = [T, heads, D];
  const xs = randn(r, T * heads * D),
    dys = randn(r, T * heads * D);
  const yRef = ropeRef(xs, pos, inv, T, heads, D);
  const dxRef = ropeBackwardRef(dys, pos, inv, T, heads, D);
  const p = new Pool(b);
  const rep = new Report(`rope ${c.name} (${c.scaling}) positions [${pos.join(', ')}] on ${b.kind}`.slice(0, 300));
  try {
    const x = p.t(xs, shape),
      dy = p.t(dys, shape);
    const positions = p.t(Int32Array.from(pos), [T], 'i32');
    const invFreq = p.t(inv, [D / 2]);

    await rep.step('rope', async () => {
      const out = p.poison(shape);
      assert.equal(rope(x, positions, invFreq, { out }), out, 'returns opts.out');
      rep.close('rope y', await out.readFloat(), yRef);
    });
    await rep.step('ropeGrad', async () => {
      const out = p.poison(shape);
      assert.equal(ropeGrad(dy, positions, invFreq, { out }), out, 'returns opts.out');
      rep.close('ropeGrad dx', await out.readFloat(), dxRef);
    });
    await rep.step('rope inverse: true is ropeGrad', async () => {
      const out = p.poison(shape);
      rope(dy, positions, invFreq, { out, inverse: true });
      rep.close('rope inverse dx', await out.readFloat(), dxRef);
    });
    await rep.step('rope in place', async () => {
      const xi = p.t(xs, shape);
      assert.equal(rope(xi, positions, invFreq, { out: xi }), xi, 'returns x');
      rep.close('rope in place y', await xi.readFloat(), yRef);
    });
    await rep.step('ropeGrad in place', async () => {
      const di = p.t(dys, shape);
      assert.equal(ropeGrad(di, positions, invFreq, { out: di }), di, 'returns dy');
      rep.close('ropeGrad in place dx', await di.readFloat(), dxRef);
    });
    await rep.step('rope without out', async () => {
      const y = p.keep(rope(x, positions, invFreq));
      assert.deepEqual(y.shape, shape);
      rep.close('rope (allocated) y', await y.readFloat(), yRef);
      const back = p.keep(ropeGrad(y, positions, invFreq));
      rep.close('ropeGrad(rope(x)) = x', await back.readFloat(), xs);
    });
    await rep.step('inputs untouched', async () => {
      rep.exact('x after rope', await x.readFloat(), xs);
      rep.exact('dy after ropeGrad', await dy.readFloat(), dys);
      rep.exact('invFreq after the ops', await invFreq.readFloat(), inv);
      assert.deepEqual(Array.from(await positions.read()), pos, 'positions after the ops');
    });
  } finally {
    p.dispose();
  }
  rep.done();
}

let seed = 300;
for (const c of CASES) {
  const kinds: BackendKind[] = FULL || c.webgpu ? ['cpu', 'webgpu', 'cuda'] : ['cpu', 'cuda'];
  const s = seed++;
  forEachBackend(`rope ${c.name} (${c.scaling})`, (b) => runCase(b, c, s), { kinds });
}

// ---------------------------------------------------------------------------------------
// Bad input: the right MoteError subclass, a message naming the argument, and no kernel run

forEachBackend('rope ops reject bad input', async (b) => {
  const r = rng(17);
  const T = 3,
    heads = 2,
    D = 4;
  const shape = [T, heads, D];
  const p = new Pool(b);
  let other: Backend | null = null;
  try {
    const x = p.t(randn(r, T * heads * D), shape);
    const positions = p.t(Int32Array.from([0, 5, 2]), [T], 'i32');
    const invFreq = p.t(Float32Array.from(ropeInvFreqRef(D, 10000)), [D / 2]);
    const out = p.t(randn(r, T * heads * D), shape);
    const before = await out.readFloat();

    // odd head dim
    const x3 = p.t(randn(r, T * heads * 3), [T, heads, 3]);
    throwsLike(() => rope(x3, positions, invFreq), ArgumentError, /rope: x: head dim must be even, got 3/, 'odd head dim');
    // x / dy: dtype and rank
    throwsLike(
      () => rope(p.t(randn(r, T * heads * D), shape, 'f16'), positions, invFreq),
      DTypeError,
      /rope: x: expected dtype f32, got f16/,
      'x f16',
    );
    throwsLike(
      () => rope(p.t(randn(r, T * D), [T, D]), positions, invFreq),
      ShapeError,
      /rope: x: expected shape \[T, heads, D\], got \[3, 4\]/,
      'x 2-D',
    );
    // positions
    throwsLike(
      () => rope(x, p.t(Float32Array.from([0, 1, 2]), [T]), invFreq),
      DTypeError,
      /rope: positions: expected dtype i32, got f32/,
      'positions f32',
    );
    throwsLike(
      () => rope(x, p.t(Int32Array.from([0, 1]), [2], 'i32'), invFreq),
      ShapeError,
      /rope: positions: expected shape \[T\] with T = 3 \(from x\), got \[2\]/,
      'positions of another T',
    );
    // invFreq
    throwsLike(
      () => rope(x, positions, p.t(randn(r, D), [D])),
      ShapeError,
      /rope: invFreq: expected shape \[2\], got \[4\]/,
      'invFreq of length D',
    );
    throwsLike(
      () => rope(x, positions, p.t(randn(r, D / 2), [D / 2], 'f16')),
      DTypeError,
      /rope: invFreq: expected dtype f32, got f16/,
      'invFreq f16',
    );
    throwsLike(
      () => rope(x, positions, Float32Array.from([1, 0.01]) as unknown as Tensor),
      ArgumentError,
      /rope: invFreq: expected a Tensor/,
      'invFreq a Float32Array',
    );
    // out, inverse
    throwsLike(
      () => rope(x, positions, invFreq, { out: p.poison([T, heads + 1, D]) }),
      ShapeError,
      /rope: out: .*heads = 2/,
      'out of another shape',
    );
    throwsLike(
      () => rope(x, positions, invFreq, { out: p.t(poisoned(T * heads * D), shape, 'bf16') }),
      DTypeError,
      /rope: out: expected dtype f32, got bf16/,
      'out bf16',
    );
    throwsLike(
      () => rope(x, positions, invFreq, { inverse: 'yes' as unknown as boolean }),
      ArgumentError,
      /rope(Grad)?: inverse: expected a boolean, got "yes"/,
      'inverse not boolean',
    );
    // disposed, another backend
    const invd = p.t(Float32Array.from([1, 0.01]), [2]);
    invd.dispose();
    throwsLike(() => rope(x, positions, invd), DisposedTensorError, /rope: invFreq\b/, 'disposed invFreq');
    other = (await openBackend('cpu').catch(() => null)) ?? (await openBackend(b.kind));
    const po = other.tensor(Int32Array.from([0, 1, 2]), [T], 'i32');
    throwsLike(
      () => rope(x, po, invFreq),
      BackendMismatchError,
      /rope: positions: expected a tensor on the .* backend/,
      'positions of another backend',
    );
    const oo = other.tensor(poisoned(T * heads * D), shape);
    throwsLike(
      () => ropeGrad(x, positions, invFreq, { out: oo }),
      BackendMismatchError,
      /ropeGrad: out: /,
      'ropeGrad out of another backend',
    );

    assert.deepEqual(await out.readFloat(), before, 'a rejected call must not have run a kernel');
  } finally {
    p.dispose();
    other?.destroy();
  }
});

// ropeGrad's first argument is dy: its errors name dy (and ropeGrad), not rope's x
forEachBackend('ropeGrad errors name its argument dy', async (b) => {
  const r = rng(19);
  const T = 3,
    heads = 2;
  const p = new Pool(b);
  try {
    const positions = p.t(Int32Array.from([0, 5, 2]), [T], 'i32');
    const invFreq = p.t(Float32Array.from(ropeInvFreqRef(4, 10000)), [2]);
    throwsLike(
      () => ropeGrad(p.t(randn(r, T * heads * 3), [T, heads, 3]), positions, invFreq),
      ArgumentError,
      /ropeGrad: dy: head dim must be even, got 3/,
      'ropeGrad odd head dim',
    );
    throwsLike(
      () => ropeGrad(p.t(randn(r, T * heads * 4), [T, heads, 4], 'bf16'), positions, invFreq),
      DTypeError,
      /ropeGrad: dy: expected dtype f32, got bf16/,
      'dy bf16',
    );
  } finally {
    p.dispose();
  }
});

test('case matrix: D = 2 and 64, every scaling, long positions and T = 1 reach webgpu', () => {
  const wg = CASES.filter((c) => c.webgpu);
  assert.ok(wg.some((c) => c.D === 2) && wg.some((c) => c.D === 64) && wg.some((c) => c.T === 1) && wg.some((c) => c.pos === 'long'));
  assert.deepEqual(new Set(wg.map((c) => c.scaling)), new Set(Object.keys(SCALINGS)));
  // the llama3 cases really exercise all three bands
  const inv = ropeInvFreqRef(64, 500000),
    sc = ropeInvFreqRef(64, 500000, SCALINGS.llama3!.scaling);
  const ratio = Array.from(sc, (v, i) => v / inv[i]!);
  assert.ok(ratio.some((q) => q === 1) && ratio.some((q) => Math.abs(q - 1 / 8) < 1e-12) && ratio.some((q) => q < 1 && q > 1 / 8));
});

test("the model's inverse frequencies (src/model/rope_freq.ts) equal the reference's for every scaling", () => {
  const cases: [number, number, Parameters<typeof ropeInvFreq>[2], RopeScaling | null][] = [
    [64, 500000, null, null],
    [2, 10000, null, null],
    [64, 10000, { type: 'linear', factor: 4 }, { rope_type: 'linear', factor: 4 }],
    [
      128,
      500000,
      { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
      { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    ],
    [
      16,
      10000,
      { type: 'llama3', factor: 2, lowFreqFactor: 1, highFreqFactor: 2, originalMaxPositionEmbeddings: 16 },
      { rope_type: 'llama3', factor: 2, low_freq_factor: 1, high_freq_factor: 2, original_max_position_embeddings: 16 },
    ],
  ];
  for (const [D, theta, model, ref] of cases) {
    const got = ropeInvFreq(D, theta, model);
    const want = ropeInvFreqRef(D, theta, ref);
    assert.deepEqual([...got], [...want], `D=${D} ${model?.type ?? 'default'}`);
  }
  assert.throws(
    () => ropeInvFreq(7, 10000, null),
    (e: Error) => e instanceof ArgumentError && /headDim/.test(e.message),
  );
  assert.throws(
    () => ropeInvFreq(8, 0, null),
    (e: Error) => e instanceof ArgumentError && /theta/.test(e.message),
  );
});
