// README "API" example, as a consumer of the installed package writes it (scripts/check-consumer.mjs).
import { openBackend, matmul, loraStack, loraRouting, loraApply } from 'mote-lora';

const backend = await openBackend('auto'); // 'cpu' | 'webgpu' | 'cuda' | 'auto'
const T = 4,
  H = 64,
  R = 16,
  L = 3;
const x = backend.tensor(new Float32Array(T * H).fill(0.1), [T, H]);
const W = backend.tensor(new Float32Array(H * H).fill(0.01), [H, H], 'bf16'); // HF [out, in]
const y = matmul(x, W); // y = x·Wᵀ

// three adapters in PEFT layout: A [L, R, in], B [L, out, R]; adapter 2 has rank 8
const A = backend.tensor(new Float32Array(L * R * H).fill(0.02), [L, R, H], 'f16');
const B = backend.tensor(new Float32Array(L * H * R).fill(0.03), [L, H, R], 'f16');
const stack = loraStack(A, B, { rank: [16, 16, 8], scale: [2, 2, 2] });
// MoTE routing, K = 2: [step expert, shared expert] per token with weights [α, 1 − α]
const routing = loraRouting(backend, [0, 2, 1, 2, 1, 2, -1, 2], { K: 2, L, weight: [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0, 1] });
const v = loraApply(y, x, stack, routing); // y += Σ_k weight·scale·B·A·x  (v kept for backward)
console.log(await y.readFloat());
void v;
backend.dispose();
