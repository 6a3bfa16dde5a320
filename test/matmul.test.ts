import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { matmul, matmulGradInput, matmulGradWeight } from '../src/ops/matmul.js';
import { matmulRef, matmulGradInputRef, matmulGradWeightRef } from '../src/reference/matmul.js';
import { roundTo, type DType } from '../src/dtype.js';
import { ArgumentError, BackendMismatchError, DTypeError, DisposedTensorError, ShapeError } from '../src/errors.js';
import { forEachBackend, closeBackends, rng, randn, relErr, poisoned, backendFor } from './helpers.js';

after(closeBackends);

// [T, K, N]: ones, primes, sizes that are not multiples of any tile, one larger than a tile in every dim.
const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [1, 37, 53],
  [3, 17, 5],
  [17, 64, 48],
  [131, 67, 37],
  [33, 129, 65],
];
const DTYPES: DType[] = ['f32', 'f16', 'bf16'];
const TOL = 1e-5; // references use the dtype-rounded weights, so every dtype meets the f32 bound

forEachBackend('matmul family matches the float64 reference', async (b) => {
  const r = rng(1);
  for (const dtype of DTYPES) {
    for (const [T, K, N] of SHAPES) {
      const xs = randn(r, T * K),
        ws = randn(r, N * K),
        dys = randn(r, T * N);
      const wr = roundTo(dtype, ws);
      const x = b.tensor(xs, [T, K]),
        w = b.tensor(ws, [N, K], dtype),
        dy = b.tensor(dys, [T, N]);
      const tag = `${b.kind} ${dtype} T=${T} K=${K} N=${N}`;

      const y = matmul(x, w, { out: b.tensor(poisoned(T * N), [T, N]) });
      assert.ok(relErr(await y.readFloat(), matmulRef(xs, wr, T, K, N)) <= TOL, `matmul ${tag}`);
      const dx = matmulGradInput(dy, w, { out: b.tensor(poisoned(T * K), [T, K]) });
      assert.ok(relErr(await dx.readFloat(), matmulGradInputRef(dys, wr, T, K, N)) <= TOL, `matmulGradInput ${tag}`);
      if (dtype === 'f32') {
        const dw = matmulGradWeight(dy, x, { out: b.tensor(poisoned(N * K), [N, K]) });
        assert.ok(relErr(await dw.readFloat(), matmulGradWeightRef(dys, xs, T, K, N)) <= TOL, `matmulGradWeight ${tag}`);
        dw.dispose();
      }
      for (const t of [x, w, dy, y, dx]) t.dispose();
    }
  }
});

forEachBackend('matmul accumulate adds into out', async (b) => {
  const r = rng(2);
  const [T, K, N] = [5, 23, 19];
  const xs = randn(r, T * K),
    ws = randn(r, N * K),
    dys = randn(r, T * N);
  const y0 = randn(r, T * N),
    dx0 = randn(r, T * K),
    dw0 = randn(r, N * K);
  const x = b.tensor(xs, [T, K]),
    w = b.tensor(ws, [N, K], 'bf16'),
    dy = b.tensor(dys, [T, N]);
  const wr = roundTo('bf16', ws);
  const add = (a: ArrayLike<number>, c: ArrayLike<number>) => Float64Array.from(a, (v, i) => v + c[i]!);
  const y = matmul(x, w, { out: b.tensor(y0, [T, N]), accumulate: true });
  assert.ok(relErr(await y.readFloat(), add(y0, matmulRef(xs, wr, T, K, N))) <= TOL);
  const dx = matmulGradInput(dy, w, { out: b.tensor(dx0, [T, K]), accumulate: true });
  assert.ok(relErr(await dx.readFloat(), add(dx0, matmulGradInputRef(dys, wr, T, K, N))) <= TOL);
  const dw = matmulGradWeight(dy, x, { out: b.tensor(dw0, [N, K]), accumulate: true });
  assert.ok(relErr(await dw.readFloat(), add(dw0, matmulGradWeightRef(dys, xs, T, K, N))) <= TOL);
});

forEachBackend('matmul is deterministic: two runs give identical bits', async (b) => {
  const r = rng(3);
  const [T, K, N] = [37, 129, 41];
  const x = b.tensor(randn(r, T * K), [T, K]),
    w = b.tensor(randn(r, N * K), [N, K], 'f16');
  const a = await matmul(x, w).readFloat();
  const c = await matmul(x, w).readFloat();
  assert.deepEqual(new Uint32Array(a.buffer), new Uint32Array(c.buffer));
});

forEachBackend('matmul rejects bad input before any kernel runs', async (b) => {
  const x = b.tensor(randn(rng(4), 6), [2, 3]);
  const w = b.tensor(randn(rng(5), 12), [4, 3]);
  assert.throws(
    () => matmul(x, b.tensor(randn(rng(6), 8), [4, 2])),
    (e: Error) => e instanceof ShapeError && /matmul: w: expected shape \[N, K\] with K = 3/.test(e.message),
  );
  assert.throws(
    () => matmul(b.tensor(new Int32Array(6), [2, 3], 'i32'), w),
    (e: Error) => e instanceof DTypeError && /x: expected dtype f32, got i32/.test(e.message),
  );
  assert.throws(
    () => matmul(x, w, { out: b.zeros([2, 5]) }),
    (e: Error) => e instanceof ShapeError && /out/.test(e.message),
  );
  assert.throws(
    () => matmul(x, w, { accumulate: true }),
    (e: Error) => e instanceof ArgumentError && /accumulate/.test(e.message),
  );
  assert.throws(
    () => matmul(x, {} as never),
    (e: Error) => e instanceof ArgumentError && /w: expected a Tensor/.test(e.message),
  );
  assert.throws(
    () => matmulGradWeight(x, x, { out: x }),
    (e: Error) => e instanceof ShapeError || e instanceof ArgumentError,
  );
  const gone = b.tensor(randn(rng(7), 12), [4, 3]);
  gone.dispose();
  assert.throws(() => matmul(x, gone), DisposedTensorError);
  // a tensor of another backend (or another instance of the same kind)
  const other = b.kind === 'cpu' ? await backendFor('webgpu') : await backendFor('cpu');
  if (typeof other !== 'string') {
    const wo = other.tensor(randn(rng(8), 12), [4, 3]);
    assert.throws(
      () => matmul(x, wo),
      (e: Error) => e instanceof BackendMismatchError && /w: expected a tensor on the/.test(e.message),
    );
    wo.dispose();
  }
});

test('reference gradients match float64 finite differences', () => {
  const r = rng(9);
  const [T, K, N] = [3, 4, 5];
  const x = Float64Array.from(randn(r, T * K)),
    w = Float64Array.from(randn(r, N * K)),
    g = Float64Array.from(randn(r, T * N));
  const loss = (xx: Float64Array, ww: Float64Array) => matmulRef(xx, ww, T, K, N).reduce((s, v, i) => s + v * g[i]!, 0);
  const dx = matmulGradInputRef(g, w, T, K, N),
    dw = matmulGradWeightRef(g, x, T, K, N);
  const h = 1e-6;
  const fd = (arr: Float64Array, i: number, f: () => number) => {
    const v = arr[i]!;
    arr[i] = v + h;
    const p = f();
    arr[i] = v - h;
    const m = f();
    arr[i] = v;
    return (p - m) / (2 * h);
  };
  for (let i = 0; i < x.length; i++) assert.ok(Math.abs(fd(x, i, () => loss(x, w)) - dx[i]!) < 1e-7, `dx[${i}]`);
  for (let i = 0; i < w.length; i++) assert.ok(Math.abs(fd(w, i, () => loss(x, w)) - dw[i]!) < 1e-7, `dw[${i}]`);
});
