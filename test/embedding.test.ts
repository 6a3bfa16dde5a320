// embedding / embeddingGrad (src/ops/embedding.ts) on every backend against the float64
// reference (src/reference/embedding.ts), plus determinism and argument checking.
//
// The forward is a gather: its output must equal the (dtype-rounded) rows of E bit for bit,
// beside the relative-error bound. The gradient is a scatter-add grouped by id: rows of
// repeated ids are sums (≤ 1e-5 relative error against float64), rows of ids absent from the
// batch are exactly 0 (or exactly their old value when accumulating).
//
// cpu and cuda run every case with every E dtype; webgpu (Mesa lavapipe in CI, where each
// shader specialisation costs seconds to compile cold) runs the cases marked `webgpu`, one
// E dtype each, which still cover T = 1, V = 1, primes, repeated / all-equal / all-distinct
// ids, and both accumulate paths. MOTE_MODEL_FULL=1 runs the full matrix on webgpu too.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { embedding, embeddingGrad } from '../src/ops/embedding.js';
import { embeddingBackwardRef, embeddingRef } from '../src/reference/embedding.js';
import { roundTo, type DType } from '../src/dtype.js';
import { ArgumentError, BackendMismatchError, DTypeError, DisposedTensorError, ShapeError } from '../src/errors.js';
import { openBackend } from '../src/backend/select.js';
import type { Backend, BackendKind } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { closeBackends, forEachBackend, poisoned, randn, rng } from './helpers.js';
import { Pool, Report, bitsEqual, throwsLike } from './case_helpers.js';

after(closeBackends);

const FULL = process.env.MOTE_MODEL_FULL === '1';
const DTYPES: DType[] = ['f32', 'f16', 'bf16'];

// ---------------------------------------------------------------------------------------
// The case matrix

type Ids = 'random' | 'same' | 'distinct' | number[];
interface Case {
  name: string;
  T: number;
  V: number;
  H: number;
  ids: Ids;
  /** the E dtype this case runs with on webgpu (absent: cpu/cuda only) */
  webgpu?: DType;
}

const CASES: Case[] = [
  { name: 'T=1 V=1 H=1', T: 1, V: 1, H: 1, ids: [0], webgpu: 'f32' },
  { name: 'T=1 V=5 H=37 last id', T: 1, V: 5, H: 37, ids: [4], webgpu: 'f16' },
  {
    name: 'T=17 V=11 H=67 repeated ids, some absent',
    T: 17,
    V: 11,
    H: 67,
    ids: [3, 7, 3, 0, 10, 7, 7, 3, 1, 0, 9, 3, 7, 10, 1, 3, 0],
    webgpu: 'bf16',
  },
  { name: 'T=131 V=257 H=37 random ids', T: 131, V: 257, H: 37, ids: 'random', webgpu: 'f32' },
  { name: 'T=131 V=3 H=131 one id repeated 131 times', T: 131, V: 3, H: 131, ids: 'same' },
  { name: 'T=17 V=131 H=37 all distinct, unsorted', T: 17, V: 131, H: 37, ids: 'distinct' },
  { name: 'T=5 V=7 H=2053 wide rows', T: 5, V: 7, H: 2053, ids: [6, 0, 6, 2, 6] },
];

function makeIds(c: Case, r: () => number): number[] {
  if (Array.isArray(c.ids)) return c.ids;
  switch (c.ids) {
    case 'same':
      return Array(c.T).fill(c.V - 2 >= 0 ? c.V - 2 : 0);
    case 'random':
      return Array.from({ length: c.T }, () => Math.floor(r() * c.V));
    case 'distinct': {
      const perm = Array.from({ length: c.V }, (_, i) => i);
      for (let i = c.V - 1; i > 0; i--) {
        const j = Math.floor(r() * (i + 1));
        [perm[i], perm[j]] = [perm[j]!, perm[i]!];
      }
      const ids = perm.slice(0, c.T);
      if (ids.every((v, i) => i === 0 || ids[i - 1]! < v)) ids.reverse();
      return ids;
    }
  }
}

async function runCase(b: Backend, c: Case, dtype: DType, seed: number): Promise<void> {
  const r = rng(seed);
  const { T, V, H } = c;
  const ids = makeIds(c, r);
  assert.equal(ids.length, T);
  const present = new Set(ids);
  const livesRow = (i: number) => present.has(Math.floor(i / H));
  const E = randn(r, V * H),
    dys = randn(r, T * H);
  const Er = roundTo(dtype, E);
  const p = new Pool(b);
  const rep = new Report(`embedding ${c.name} E ${dtype} on ${b.kind}`);
  try {
    const Et = p.t(E, [V, H], dtype);
    const dy = p.t(dys, [T, H]);

    await rep.step('embedding', async () => {
      const y = p.keep(embedding(Et, Int32Array.from(ids)));
      assert.deepEqual(y.shape, [T, H]);
      assert.equal(y.dtype, 'f32');
      const out = await y.readFloat();
      const ref = embeddingRef(ids, Er, V, H);
      rep.close('embedding y', out, ref);
      rep.exact('embedding y (a gather is exact)', out, ref);
    });

    const gRef = embeddingBackwardRef(ids, dys, V, H);
    await rep.step('embeddingGrad into poisoned out', async () => {
      const out = p.poison([V, H]);
      assert.equal(embeddingGrad(ids, dy, V, { out }), out, 'returns opts.out');
      const dE = await out.readFloat();
      rep.close('embeddingGrad dE', dE, gRef);
      rep.exact('embeddingGrad dE (rows of absent ids)', dE, 0, (i) => !livesRow(i));
    });

    await rep.step('embeddingGrad accumulate', async () => {
      const dE0 = randn(r, V * H);
      const out = p.t(dE0, [V, H]);
      assert.equal(embeddingGrad(ids, dy, V, { out, accumulate: true }), out, 'returns opts.out');
      const dE = await out.readFloat();
      rep.close('embeddingGrad accumulate dE', dE, embeddingBackwardRef(ids, dys, V, H, dE0));
      rep.exact('embeddingGrad accumulate dE (rows of absent ids keep their value)', dE, dE0, (i) => !livesRow(i));
    });

    await rep.step('embeddingGrad accumulate: false, no out', async () => {
      const g = p.keep(embeddingGrad(ids, dy, V, { accumulate: false }));
      assert.deepEqual(g.shape, [V, H]);
      const dE = await g.readFloat();
      rep.close('embeddingGrad (allocated) dE', dE, gRef);
      rep.exact('embeddingGrad (allocated) dE (rows of absent ids)', dE, 0, (i) => !livesRow(i));
    });

    await rep.step('inputs untouched', async () => {
      rep.exact('E after the ops', await Et.readFloat(), Er);
      rep.exact('dy after the ops', await dy.readFloat(), dys);
    });
  } finally {
    p.dispose();
  }
  rep.done();
}

let seed = 100;
for (const c of CASES) {
  for (const dtype of DTYPES) {
    const kinds: BackendKind[] = FULL || c.webgpu === dtype ? ['cpu', 'webgpu', 'cuda'] : ['cpu', 'cuda'];
    const s = seed++;
    forEachBackend(`embedding ${c.name} E ${dtype}`, (b) => runCase(b, c, dtype, s), { kinds });
  }
}

// ---------------------------------------------------------------------------------------
// Determinism: the scatter-add gives the same bits twice (many repeats of few ids)

forEachBackend('embeddingGrad is deterministic', async (b) => {
  const r = rng(7);
  const T = 131,
    V = 5,
    H = 67;
  const ids = Array.from({ length: T }, () => Math.floor(r() * (V - 1))); // id V-1 absent
  const p = new Pool(b);
  try {
    const dys = randn(r, T * H);
    const dy = p.t(dys, [T, H]);
    const dE0 = randn(r, V * H);
    const runs: Float32Array[] = [],
      accRuns: Float32Array[] = [];
    for (let i = 0; i < 2; i++) {
      runs.push(await p.keep(embeddingGrad(ids, dy, V)).readFloat());
      accRuns.push(await embeddingGrad(ids, dy, V, { out: p.t(dE0, [V, H]), accumulate: true }).readFloat());
    }
    assert.ok(runs[0]!.every(Number.isFinite), 'non-finite dE');
    assert.ok(bitsEqual(runs[0]!, runs[1]!), 'embeddingGrad: two runs differ in their bits');
    assert.ok(bitsEqual(accRuns[0]!, accRuns[1]!), 'embeddingGrad accumulate: two runs differ in their bits');
    const rep = new Report(`embeddingGrad determinism on ${b.kind}`);
    rep.close('dE', runs[0]!, embeddingBackwardRef(ids, dys, V, H));
    rep.close('dE accumulate', accRuns[0]!, embeddingBackwardRef(ids, dys, V, H, dE0));
    rep.done();
  } finally {
    p.dispose();
  }
});

// ---------------------------------------------------------------------------------------
// Bad input: the right MoteError subclass, a message naming the argument, and no kernel run

forEachBackend('embedding ops reject bad input', async (b) => {
  const r = rng(9);
  const T = 3,
    V = 5,
    H = 4;
  const p = new Pool(b);
  let other: Backend | null = null;
  try {
    const E = p.t(randn(r, V * H), [V, H], 'bf16');
    const dy = p.t(randn(r, T * H), [T, H]);
    const out = p.t(randn(r, V * H), [V, H]);
    const outBefore = await out.readFloat();

    // ids: out of range (the message names the index of the bad id), negative, fractional, empty
    throwsLike(() => embedding(E, [0, 5, 2]), ArgumentError, /embedding: ids\[1\]: expected a token id in \[0, 4\], got 5/, 'id = V');
    throwsLike(() => embedding(E, Int32Array.from([1, 2, 3, 4, 99])), ArgumentError, /embedding: ids\[4\]: .*got 99/, 'id > V');
    throwsLike(() => embedding(E, [0, -1]), ArgumentError, /embedding: ids\[1\]: .*got -1/, 'id < 0');
    throwsLike(() => embedding(E, [0.5]), ArgumentError, /embedding: ids\[0\]: .*got 0\.5/, 'fractional id');
    throwsLike(() => embedding(E, []), ArgumentError, /embedding: ids: expected a non-empty/, 'no ids');
    throwsLike(() => embedding(E, null as unknown as number[]), ArgumentError, /embedding: ids: /, 'ids null');
    throwsLike(
      () => embeddingGrad([0, 1, 5], dy, V, { out }),
      ArgumentError,
      /embeddingGrad: ids\[2\]: expected a token id in \[0, 4\], got 5/,
      'grad id = V',
    );
    throwsLike(
      () => embeddingGrad([0, 1], dy, V, { out }),
      ArgumentError,
      /embeddingGrad: ids: expected 3 ids .*got 2/,
      'grad ids not one per row of dy',
    );

    // E: dtype and rank
    const Ei = p.t(new Int32Array(V * H), [V, H], 'i32');
    throwsLike(() => embedding(Ei, [0]), DTypeError, /embedding: E: expected dtype f32 or f16 or bf16, got i32/, 'E i32');
    const E1 = p.t(randn(r, V * H), [V * H]);
    throwsLike(() => embedding(E1, [0]), ShapeError, /embedding: E: expected shape \[V, H\], got \[20\]/, 'E 1-D');
    throwsLike(() => embedding([1, 2] as unknown as Tensor, [0]), ArgumentError, /embedding: E: expected a Tensor/, 'E not a tensor');

    // grad: dy dtype/shape, out shape/dtype, V, accumulate
    const dyh = p.t(randn(r, T * H), [T, H], 'f16');
    throwsLike(() => embeddingGrad([0, 1, 2], dyh, V), DTypeError, /embeddingGrad: dy: expected dtype f32, got f16/, 'dy f16');
    const dy3 = p.t(randn(r, T * H), [T, 1, H]);
    throwsLike(() => embeddingGrad([0, 1, 2], dy3, V), ShapeError, /embeddingGrad: dy: expected shape \[T, H\]/, 'dy 3-D');
    throwsLike(
      () => embeddingGrad([0, 1, 2], dy, V, { out: p.poison([V, H + 1]) }),
      ShapeError,
      /embeddingGrad: out: .*H = 4/,
      'out with another H',
    );
    throwsLike(
      () => embeddingGrad([0, 1, 2], dy, V, { out: p.poison([V + 1, H]) }),
      ShapeError,
      /embeddingGrad: out: .*V = 5/,
      'out with another V',
    );
    throwsLike(
      () => embeddingGrad([0, 1, 2], dy, V, { out: p.t(poisoned(V * H), [V, H], 'bf16') }),
      DTypeError,
      /embeddingGrad: out: expected dtype f32, got bf16/,
      'out bf16',
    );
    throwsLike(() => embeddingGrad([0, 1, 2], dy, 0), ArgumentError, /embeddingGrad: V: expected a positive integer, got 0/, 'V = 0');
    throwsLike(
      () => embeddingGrad([0, 1, 2], dy, 2.5),
      ArgumentError,
      /embeddingGrad: V: expected a positive integer, got 2\.5/,
      'V fractional',
    );
    throwsLike(
      () => embeddingGrad([0, 1, 2], dy, V, { accumulate: true }),
      ArgumentError,
      /embeddingGrad: accumulate: needs an out/,
      'accumulate without out',
    );
    throwsLike(
      () => embeddingGrad([0, 1, 2], dy, V, { out, accumulate: 'yes' as unknown as boolean }),
      ArgumentError,
      /embeddingGrad: accumulate: expected a boolean/,
      'accumulate not boolean',
    );

    // disposed, another backend (another kind where available, else another instance)
    const Ed = p.t(randn(r, V * H), [V, H]);
    Ed.dispose();
    throwsLike(() => embedding(Ed, [0]), DisposedTensorError, /embedding: E\b/, 'disposed E');
    const dyd = p.t(randn(r, T * H), [T, H]);
    dyd.dispose();
    throwsLike(() => embeddingGrad([0, 1, 2], dyd, V), DisposedTensorError, /embeddingGrad: dy\b/, 'disposed dy');
    other = (await openBackend('cpu').catch(() => null)) ?? (await openBackend(b.kind));
    const outO = other.tensor(poisoned(V * H), [V, H]);
    throwsLike(
      () => embeddingGrad([0, 1, 2], dy, V, { out: outO }),
      BackendMismatchError,
      /embeddingGrad: out: expected a tensor on the .* backend/,
      'out of another backend',
    );
    outO.dispose();

    // nothing ran: out is as it was after all those rejected calls
    assert.deepEqual(await out.readFloat(), outBefore, 'a rejected call must not have run a kernel');
  } finally {
    p.dispose();
    other?.destroy();
  }
});

test('case matrix: every webgpu case names a dtype of the matrix; every feature reaches webgpu', () => {
  for (const c of CASES) if (c.webgpu) assert.ok(DTYPES.includes(c.webgpu), c.name);
  const wg = CASES.filter((c) => c.webgpu);
  assert.ok(new Set(wg.map((c) => c.webgpu)).size === DTYPES.length, 'every E dtype on webgpu');
  assert.ok(
    wg.some((c) => c.T === 1) && wg.some((c) => c.V === 1) && wg.some((c) => Array.isArray(c.ids) && new Set(c.ids).size < c.ids.length),
  );
});
