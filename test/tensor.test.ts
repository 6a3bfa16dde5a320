import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../src/dtype.js';
import { ArgumentError, DTypeError, DisposedTensorError, MoteError, ShapeError } from '../src/errors.js';
import { hostSized } from '../src/tensor.js';
import { forEachBackend, closeBackends, rng, randn } from './helpers.js';

after(closeBackends);

test('f16 and bf16 conversions round to nearest even and keep specials', () => {
  assert.equal(f32ToF16Bits(1), 0x3c00);
  assert.equal(f32ToF16Bits(-2), 0xc000);
  assert.equal(f32ToF16Bits(65504), 0x7bff);
  assert.equal(f32ToF16Bits(1e6), 0x7c00); // overflow -> inf
  assert.equal(f32ToF16Bits(2 ** -24), 0x0001); // smallest subnormal
  assert.equal(f32ToF16Bits(1 + 2 ** -11), 0x3c00); // tie -> even
  assert.equal(f32ToF16Bits(1 + 3 * 2 ** -11), 0x3c02);
  assert.ok(Number.isNaN(f16BitsToF32(f32ToF16Bits(NaN))));
  assert.equal(f16BitsToF32(0x3555), 0.333251953125);
  assert.equal(f32ToBf16Bits(1), 0x3f80);
  assert.equal(bf16BitsToF32(0x3f80), 1);
  assert.equal(bf16BitsToF32(f32ToBf16Bits(1 + 2 ** -8)), 1); // tie -> even
  assert.ok(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(NaN))));
  const r = rng(1);
  for (let i = 0; i < 1000; i++) {
    const v = (r() - 0.5) * 100;
    assert.ok(Math.abs(f16BitsToF32(f32ToF16Bits(v)) - v) <= Math.abs(v) * 2 ** -11 + 2 ** -25);
    assert.ok(Math.abs(bf16BitsToF32(f32ToBf16Bits(v)) - v) <= Math.abs(v) * 2 ** -8);
  }
});

forEachBackend('tensors round-trip every dtype and odd sizes', async (b) => {
  const r = rng(2);
  for (const n of [1, 3, 7, 1025]) {
    const f = randn(r, n);
    assert.deepEqual(await b.tensor(f, [n]).read(), f);
    const i = Int32Array.from({ length: n }, (_, k) => k * 7919 - 5000);
    assert.deepEqual(await b.tensor(i, [n], 'i32').read(), i);
    const h = await b.tensor(f, [n], 'f16').read();
    assert.deepEqual(
      h,
      Float32Array.from(f, (v) => f16BitsToF32(f32ToF16Bits(v))),
    );
    const bb = await b.tensor(f, [n], 'bf16').read();
    assert.deepEqual(
      bb,
      Float32Array.from(f, (v) => bf16BitsToF32(f32ToBf16Bits(v))),
    );
  }
  const z = await b.zeros([3, 5]).read();
  assert.deepEqual(z, new Float32Array(15));
  const t = b.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
  t.write([6, 5, 4, 3, 2, 1]);
  assert.deepEqual(await t.read(), Float32Array.from([6, 5, 4, 3, 2, 1]));
});

forEachBackend('tensor misuse is a clear error', async (b) => {
  assert.throws(
    () => b.tensor([1, 2, 3], [2, 2]),
    (e: Error) => e instanceof ShapeError && /data: expected 4 elements for shape \[2, 2\], got 3/.test(e.message),
  );
  assert.throws(
    () => b.empty([2, 0]),
    (e: Error) => e instanceof ShapeError && /shape\[1\]: expected a positive integer, got 0/.test(e.message),
  );
  assert.throws(() => b.empty([2.5]), ShapeError);
  assert.throws(() => b.empty([]), ShapeError);
  assert.throws(
    () => b.empty([2], 'f64' as never),
    (e: Error) => e instanceof DTypeError && /dtype/.test(e.message),
  );
  assert.throws(
    () => b.tensor([1.5], [1], 'i32'),
    (e: Error) => e instanceof ArgumentError && /data\[0\]: expected a 32-bit integer, got 1.5/.test(e.message),
  );
  assert.throws(() => b.tensor(new Int32Array(2), [2], 'f32'), DTypeError);
  const t = b.tensor([1, 2], [2]);
  t.dispose();
  t.dispose(); // twice is fine
  assert.ok(t.disposed);
  await assert.rejects(() => t.read(), DisposedTensorError);
  assert.throws(() => t.write([1, 2]), DisposedTensorError);
});

forEachBackend('reshape views the same storage and never frees it', async (b) => {
  const t = b.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
  const v = t.reshape([3, 2]);
  assert.deepEqual(v.shape, [3, 2]);
  assert.deepEqual(await v.read(), Float32Array.from([1, 2, 3, 4, 5, 6]));
  v.write([6, 5, 4, 3, 2, 1]);
  assert.deepEqual(await t.read(), Float32Array.from([6, 5, 4, 3, 2, 1]));
  v.dispose();
  assert.deepEqual(await t.read(), Float32Array.from([6, 5, 4, 3, 2, 1])); // base untouched
  const w = t.reshape([6]);
  assert.throws(
    () => t.reshape([4, 2]),
    (e: Error) => e instanceof ShapeError && /holds 8 elements/.test(e.message),
  );
  t.dispose();
  assert.ok(w.disposed);
  await assert.rejects(
    () => w.read(),
    (e: Error) => e instanceof DisposedTensorError && /a view of tensor/.test(e.message),
  );
});

// A host typed array past the engine's limit (2^31 f32 on Node 20; Node 24 allows far more, so
// a real allocation of that size is no portable test) throws a bare RangeError; hostSized says
// which tensor, for sync and async staging alike, and passes other errors through.
test("a host array past the engine's limit is a ShapeError naming the tensor, not a bare RangeError", async () => {
  const tooBig = () => {
    throw new RangeError('Invalid typed array length: 8589934592');
  };
  assert.throws(
    () => hostSized('zeros: shape [2147483648] f32', 2 ** 33, tooBig),
    (e: Error) =>
      e instanceof ShapeError && /^zeros: shape \[2147483648\] f32: 8589934592 bytes do not fit in one host array/.test(e.message),
  );
  await assert.rejects(
    hostSized('read: tensor #7 [2147483648] f32', 2 ** 33, async () => tooBig()),
    (e: Error) => e instanceof ShapeError && /^read: tensor #7/.test(e.message),
  );
  assert.throws(
    () =>
      hostSized('x', 4, () => {
        throw new TypeError('other');
      }),
    TypeError,
  );
  assert.equal(
    hostSized('x', 4, () => 3),
    3,
  );
});
