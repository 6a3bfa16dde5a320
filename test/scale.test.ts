// scale (src/ops/scale.ts) on every backend against the float64 reference
// (src/reference/scale.ts): out of place and in place, awkward sizes, and argument checking.
// A product of two f32 values is correctly rounded, so every element must also equal
// fround(alpha · x) bit for bit.
import { after } from 'node:test';
import assert from 'node:assert/strict';
import { scale } from '../src/ops/scale.js';
import { scaleRef } from '../src/reference/scale.js';
import { ArgumentError, DTypeError } from '../src/errors.js';
import { closeBackends, forEachBackend, poisoned, randn, relErr, rng } from './helpers.js';

after(closeBackends);

for (const shape of [[1], [37], [17, 67], [3, 4099]]) {
  forEachBackend(`scale [${shape.join(', ')}]`, async (b) => {
    const n = shape.reduce((a, c) => a * c, 1);
    const xs = randn(rng(700 + n), n);
    for (const alpha of [0.5, -3.25, 1e-3]) {
      const want = scaleRef(xs, alpha, n);
      const bits = Float32Array.from(xs, (v) => Math.fround(alpha) * v);
      const x = b.tensor(xs, shape);
      const y = scale(x, alpha);
      const got = await y.readFloat();
      assert.ok(relErr(got, want) < 1e-6, `scale ${alpha}`);
      assert.deepEqual(got, bits, 'bit for bit fround(alpha · x)');
      // in place, and into a poisoned out
      const out = b.tensor(poisoned(n), shape);
      scale(x, alpha, { out });
      assert.deepEqual(await out.readFloat(), bits);
      scale(x, alpha, { out: x });
      assert.deepEqual(await x.readFloat(), bits);
      for (const t of [x, y, out]) t.dispose();
    }
  });
}

forEachBackend('scale: bad arguments name what is wrong', async (b) => {
  const x = b.tensor(new Float32Array(6), [2, 3]);
  assert.throws(
    () => scale(x, NaN),
    (e: unknown) => e instanceof ArgumentError && /alpha/.test((e as Error).message),
  );
  assert.throws(
    () => scale(x, '2' as unknown as number),
    (e: unknown) => e instanceof ArgumentError && /alpha/.test((e as Error).message),
  );
  assert.throws(
    () => scale(b.tensor(new Int32Array(6), [2, 3], 'i32'), 2),
    (e: unknown) => e instanceof DTypeError && /\bx\b/.test((e as Error).message),
  );
  assert.throws(() => scale(x, 2, { out: b.tensor(new Float32Array(5), [5]) }), /out/);
  x.dispose();
});
