// The browser-vs-Node benchmark's body (`npm run bench -- --suite browser`): the same code runs
// in a Chromium page (through the browser bundle, `mote-lora/web`) and in Node (the package's
// Node entry), so the figures differ only by where they ran. Runtime imports: none (the API is
// passed in), so the page's copy of this file is a few kilobytes next to the bundle.
//
//   kernels  median of 10 timed calls (after one untimed) of matmul and loraApply at small
//            shapes, each call followed by `await backend.sync()`;
//   train    MoTE expert training on the bundled model (toy chains, rank 8, batches of 128
//            tokens): median tokens/s and ms of the steps after the first (the trainer's own count);
//   decode   greedy generation on the bundled model: 8 prompts of 8 tokens, 16 new tokens each;
//            generated tokens / wall time of generate().
import type * as Web from '../src/web/index.js';
import type { Backend } from '../src/backend/backend.js';

export type WebBenchApi = Pick<
  typeof Web,
  | 'matmul'
  | 'loraApply'
  | 'loraStack'
  | 'loraRouting'
  | 'loadModel'
  | 'loadTokenizer'
  | 'addStepTokens'
  | 'toyQuestions'
  | 'toyChain'
  | 'trainVariant'
  | 'generate'
>;

export interface WebBenchOptions {
  trainSteps: number;
  decodeRequests: number;
  decodeTokens: number;
}

export interface WebBenchResult {
  device: string;
  kernels: { name: string; ms: number }[];
  train: { steps: number; tokensPerS: number; msPerStep: number };
  decode: { requests: number; newTokens: number; seconds: number; tokensPerS: number };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

async function timeIt(backend: Backend, f: () => unknown, reps = 10): Promise<number> {
  const ts: number[] = [];
  for (let i = 0; i < reps + 1; i++) {
    await backend.sync();
    const t0 = performance.now();
    const out = f();
    await backend.sync();
    if (i) ts.push(performance.now() - t0);
    for (const t of ([] as unknown[]).concat(out)) (t as { dispose?: () => void } | undefined)?.dispose?.();
  }
  return median(ts);
}

export async function runWebBench(m: WebBenchApi, backend: Backend, model: string | URL, o: WebBenchOptions): Promise<WebBenchResult> {
  const rnd = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37) * 0.1);
  const kernels: WebBenchResult['kernels'] = [];
  for (const [T, K, N] of [
    [1, 256, 256],
    [64, 256, 256],
    [64, 576, 1536],
  ] as const) {
    const x = backend.tensor(rnd(T * K), [T, K]),
      W = backend.tensor(rnd(N * K), [N, K]);
    kernels.push({ name: `matmul x[${T}, ${K}]·W[${N}, ${K}]ᵀ`, ms: await timeIt(backend, () => m.matmul(x, W)) });
    x.dispose();
    W.dispose();
  }
  for (const [T, L] of [
    [1, 4],
    [16, 4],
    [64, 16],
  ] as const) {
    const H = 256,
      R = 16;
    const x = backend.tensor(rnd(T * H), [T, H]),
      y = backend.zeros([T, H]);
    const A = backend.tensor(rnd(L * R * H), [L, R, H]),
      B = backend.tensor(rnd(L * H * R), [L, H, R]);
    const stack = m.loraStack(A, B, { rank: Array(L).fill(R), scale: Array(L).fill(2) });
    const rt = m.loraRouting(
      backend,
      Array.from({ length: T }, (_, t) => t % L),
      { K: 1, L },
    );
    kernels.push({
      name: `loraApply T=${T}, ${L} adapters, H=${H}, r=${R}`,
      ms: await timeIt(backend, () => m.loraApply(y, x, stack, rt)),
    });
    for (const t of [x, y, A, B, rt, stack.rank, stack.scale]) t.dispose();
  }

  const lm = await m.loadModel(model, { backend });
  try {
    const tokenizer = (await (typeof model === 'string' ? m.loadTokenizer(model) : m.loadTokenizer(model))) as Parameters<
      WebBenchApi['trainVariant']
    >[2];
    await m.addStepTokens(lm, tokenizer);
    const chains = m.toyQuestions(24, 3).map((q) => m.toyChain(q, { check: false }));
    const rates: number[] = [],
      times: number[] = [];
    const tv = await m.trainVariant('mote', lm, tokenizer, chains, {
      rank: 8,
      initSeed: 1,
      train: {
        steps: o.trainSteps,
        lr: 3e-3,
        warmupSteps: 1,
        batchTokens: 128,
        seed: 1,
        pSkip: 0.3,
        onProgress: (p) => {
          if (p.step > 1) {
            rates.push(p.tokensPerSecond);
            times.push(p.elapsedMs);
          }
        },
      },
    });
    tv.adapters?.dispose();
    const msPerStep = times.length ? median(times) : NaN;
    const prompts = Array.from({ length: o.decodeRequests }, (_, r) => Array.from({ length: 8 }, (_, i) => 5 + ((r * 31 + i * 7) % 200)));
    await m.generate(lm, [{ prompt: prompts[0]!, maxNewTokens: 2 }]); // warm-up (pipelines)
    const t0 = performance.now();
    const res = await m.generate(
      lm,
      prompts.map((prompt) => ({ prompt, maxNewTokens: o.decodeTokens, stop: [] })),
    );
    const seconds = (performance.now() - t0) / 1000;
    const newTokens = res.reduce((a, r) => a + r.tokens.length, 0);
    return {
      device: `${backend.kind}: ${backend.info().device}`,
      kernels,
      train: { steps: o.trainSteps, tokensPerS: median(rates), msPerStep },
      decode: { requests: o.decodeRequests, newTokens, seconds, tokensPerS: newTokens / seconds },
    };
  } finally {
    lm.dispose();
  }
}
