// add (src/ops/residual.ts) on every backend against the float64 reference
// (src/reference/residual.ts), plus argument checking. An f32 sum of two f32 values is
// correctly rounded, so beside the relative-error bound every element must equal
// fround(a + b) bit for bit. The residual's backward is the identity (no kernel).
//
// add is a single elementwise kernel, so webgpu runs the whole (small) matrix: ranks 1–3,
// size 1, primes, out = a (in place), a + a, and out = a = b.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { add } from '../src/ops/residual.js';
import { residualAddRef } from '../src/reference/residual.js';
import { ArgumentError, BackendMismatchError, DTypeError, DisposedTensorError, ShapeError } from '../src/errors.js';
import { openBackend } from '../src/backend/select.js';
import type { Backend } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { closeBackends, forEachBackend, poisoned, randn, rng } from './helpers.js';
import { Pool, Report, throwsLike } from './case_helpers.js';

after(closeBackends);

// ---------------------------------------------------------------------------------------
// The case matrix
const SHAPES: number[][] = [[1], [37], [1, 1], [17, 67], [131, 37], [2, 3, 5], [3, 4099]];

const size = (s: number[]) => s.reduce((a, c) => a * c, 1);
const f32sum = (a: Float32Array, c: Float32Array) => Float32Array.from(a, (v, i) => v + c[i]!);

let seed = 500;
for (const shape of SHAPES) {
  const s = seed++;
  forEachBackend(`add [${shape.join(', ')}]`, async (b) => {
    const r = rng(s);
    const n = size(shape);
    const as = randn(r, n),
      bs = randn(r, n, 3);
    const ref = residualAddRef(as, bs, n);
    const p = new Pool(b);
    const rep = new Report(`add [${shape.join(', ')}] on ${b.kind}`);
    try {
      const a = p.t(as, shape),
        bt = p.t(bs, shape);
      await rep.step('add into poisoned out', async () => {
        const out = p.poison(shape);
        assert.equal(add(a, bt, { out }), out, 'returns opts.out');
        const y = await out.readFloat();
        rep.close('add y', y, ref);
        rep.exact('add y (f32 addition is correctly rounded)', y, f32sum(as, bs));
      });
      await rep.step('add without out', async () => {
        const y = p.keep(add(a, bt));
        assert.deepEqual(y.shape, shape);
        rep.exact('add (allocated) y', await y.readFloat(), f32sum(as, bs));
      });
      await rep.step('inputs untouched', async () => {
        rep.exact('a after add', await a.readFloat(), as);
        rep.exact('b after add', await bt.readFloat(), bs);
      });
      await rep.step('add in place (out = a)', async () => {
        const ai = p.t(as, shape);
        assert.equal(add(ai, bt, { out: ai }), ai, 'returns a');
        const y = await ai.readFloat();
        rep.close('add in place y', y, ref);
        rep.exact('add in place y', y, f32sum(as, bs));
      });
      await rep.step('a + a', async () => {
        const out = p.poison(shape);
        add(a, a, { out });
        rep.exact('a + a', await out.readFloat(), f32sum(as, as));
      });
      await rep.step('a + a in place (out = a = b)', async () => {
        const ai = p.t(as, shape);
        add(ai, ai, { out: ai });
        rep.exact('a + a in place', await ai.readFloat(), f32sum(as, as));
      });
    } finally {
      p.dispose();
    }
    rep.done();
  });
}

// ---------------------------------------------------------------------------------------
// Bad input: the right MoteError subclass, a message naming the argument, and no kernel run

forEachBackend('add rejects bad input', async (b) => {
  const r = rng(29);
  const p = new Pool(b);
  let other: Backend | null = null;
  try {
    const a = p.t(randn(r, 12), [3, 4]),
      bt = p.t(randn(r, 12), [3, 4]);
    const out = p.t(randn(r, 12), [3, 4]);
    const before = [await out.readFloat(), await bt.readFloat()];

    throwsLike(
      () => add(a, p.t(randn(r, 15), [3, 5]), { out }),
      ShapeError,
      /add: b: expected shape \[d0, d1\] with d1 = 4 \(from a\), got \[3, 5\]/,
      'b of another shape',
    );
    throwsLike(
      () => add(a, p.t(randn(r, 12), [12]), { out }),
      ShapeError,
      /add: b: expected shape \[d0, d1\], got \[12\]/,
      'b of another rank',
    );
    throwsLike(() => add(a, p.t(randn(r, 12), [4, 3]), { out }), ShapeError, /add: b: /, 'b transposed');
    throwsLike(() => add(p.t(new Int32Array(12), [3, 4], 'i32'), bt, { out }), DTypeError, /add: a: expected dtype f32, got i32/, 'a i32');
    throwsLike(() => add(a, p.t(randn(r, 12), [3, 4], 'f16'), { out }), DTypeError, /add: b: expected dtype f32, got f16/, 'b f16');
    throwsLike(() => add(a, bt, { out: p.poison([3, 5]) }), ShapeError, /add: out: /, 'out of another shape');
    throwsLike(
      () => add(a, bt, { out: p.t(poisoned(12), [3, 4], 'bf16') }),
      DTypeError,
      /add: out: expected dtype f32, got bf16/,
      'out bf16',
    );
    throwsLike(() => add(a, bt, { out: bt }), ArgumentError, /add: out: may alias a, not b/, 'out = b');
    throwsLike(() => add(a, null as unknown as Tensor), ArgumentError, /add: b: expected a Tensor/, 'b null');
    const bd = p.t(randn(r, 12), [3, 4]);
    bd.dispose();
    throwsLike(() => add(a, bd, { out }), DisposedTensorError, /add: b\b/, 'disposed b');
    const o = (other = (await openBackend('cpu').catch(() => null)) ?? (await openBackend(b.kind)));
    throwsLike(
      () => add(a, o.tensor(randn(r, 12), [3, 4]), { out }),
      BackendMismatchError,
      /add: b: expected a tensor on the .* backend/,
      'b of another backend',
    );
    throwsLike(() => add(a, bt, { out: o.tensor(randn(r, 12), [3, 4]) }), BackendMismatchError, /add: out: /, 'out of another backend');

    assert.deepEqual([await out.readFloat(), await bt.readFloat()], before, 'a rejected call must not have run a kernel');
  } finally {
    p.dispose();
    other?.destroy();
  }
});

test('residual reference is the plain sum', () => {
  assert.deepEqual(Array.from(residualAddRef([1, 2.5], [-3, 0.25], 2)), [-2, 2.75]);
});
