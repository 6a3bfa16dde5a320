// Dispatch overhead of the webgpu backend: many tiny ops (residual add of 64 floats, and a
// T = 1 bgmv loraApply), recorded back to back and synced once; prints µs per op, the best of
// a few rounds. `node scripts/bench-dispatch.mjs [ops]` after `npm run build`.
import { openBackend, add, loraApply, loraRouting, loraStack } from '../dist/src/index.js';

const N = Number(process.argv[2] ?? 2000);
const b = await openBackend('webgpu');
const x = b.tensor(new Float32Array(64).fill(1), [64]);
const y = b.zeros([64]);
const A = b.tensor(new Float32Array(4 * 8 * 64).fill(0.01), [4, 8, 64]);
const B = b.tensor(new Float32Array(4 * 64 * 8).fill(0.01), [4, 64, 8]);
const s = loraStack(A, B);
const rt = loraRouting(b, [2], { K: 1, L: 4 });
const h = b.tensor(new Float32Array(64).fill(1), [1, 64]);
const out = b.zeros([1, 64]);
const v = b.zeros([1, 1, 8]);

async function time(name, op) {
  op();
  await b.sync(); // compile
  let best = Infinity;
  for (let round = 0; round < 5; round++) {
    const t0 = performance.now();
    for (let i = 0; i < N; i++) op();
    await b.sync();
    best = Math.min(best, performance.now() - t0);
  }
  console.log(`${name}: ${((best / N) * 1000).toFixed(1)} µs/op (best of 5 rounds of ${N})`);
}
console.log(`adapter: ${b.info().device}`);
await time('add n=64 (1 dispatch)', () => add(x, x, { out: y }));
await time('loraApply T=1 bgmv (2 dispatches)', () => loraApply(out, h, s, rt, { strategy: 'bgmv', v }));
b.destroy();
