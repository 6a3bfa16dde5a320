// The cpu backend of the installed package loads and runs (with no compiler: the prebuilt addon) (scripts/check-consumer.mjs).
import { openBackend, matmul } from 'mote-lora';

const backend = await openBackend('cpu');
const info = backend.info();
const x = backend.tensor(new Float32Array([1, 2, 3, 4]), [2, 2]);
const w = backend.tensor(new Float32Array([1, 0, 0, 1]), [2, 2]);
const y = Array.from(await matmul(x, w).readFloat());
if (y.join() !== '1,2,3,4') throw new Error(`matmul gave ${y}`);
console.log(`cpu backend: ${info.device}; simd=${info.details.simd}; features: ${info.features.join(' ') || '-'}`);
backend.destroy();
