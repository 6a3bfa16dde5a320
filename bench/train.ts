// Training benchmark (`--suite train`): tokens/s of one MoTE training step (forward + backward
// + AdamW) on the SmolLM-135M shape with random weights, one sequence of `seq` tokens (`prompt`
// prompt tokens — default 32 — routed to a random step expert, then three equal step segments;
// the suite also runs a 512-token prompt + 256-token chain, where masked logits matter), 3 step
// experts + the shared expert at rank 16 on all 7 linears, base frozen; peak RSS against the
// memory the shapes need; and, as the baseline, the same step in PyTorch on this CPU
// (bench/train_torch.py: PEFT-style masked loop over the experts with autograd).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { LINEAR_MODULES, linearShape, parseHFConfig, type ModelConfig } from '../src/model/config.js';
import { modelFromTensors } from '../src/model/load.js';
import { createMote } from '../src/mote/bundle.js';
import { Trainer, type TrainExample } from '../src/train/trainer.js';
import { opProfile } from '../src/backend/native.js';
import type { Backend } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import type { LlamaWeights } from '../src/model/llama.js';
import { matmul, matmulGradInput } from '../src/ops/matmul.js';
import { median } from './timing.js';
import { SMOLLM_135M, modelConfigJson, randomWeights, type ModelShape } from './model.js';

export interface TrainBenchOptions {
  shape: ModelShape;
  seq: number;
  /** Prompt tokens (no loss) at the start of the sequence (default min(32, seq / 4)). */
  prompt?: number;
  rank: number;
  /** Timed steps after one warm-up step. */
  steps: number;
  log: (line: string) => void;
}

export interface MemoryModel {
  weightsBytes: number;
  adapterBytes: number;
  /** Gradients of the experts plus AdamW's two moments. */
  optimizerBytes: number;
  activationBytes: number;
  totalBytes: number;
}

/** What one step must hold, from the shapes (f32 everywhere): what the forward saves for the backward. */
export function memoryModel(cfg: ModelConfig, T: number, R: number, experts: number): MemoryModel {
  const { hiddenSize: H, intermediateSize: I, numHeads: nH, numKvHeads: nKv, headDim: D, vocabSize: V, numLayers: Ln } = cfg;
  let weights = V * H + Ln * 2 * H + H;
  let adapter = 0;
  for (const m of LINEAR_MODULES) {
    const [o, i] = linearShape(cfg, m);
    weights += Ln * o * i;
    adapter += Ln * experts * R * (o + i);
  }
  if (!cfg.tieWordEmbeddings) weights += V * H;
  // per layer and token: x_in, rms₁ out, q, k, v, attention out, residual h, rms₂ out, gate, up, swiglu out,
  // two rstd, lse per head, and the 7 linears' shrink outputs (K = 2 slots · R)
  const perLayer = 4 * H + 2 * nH * D + 2 * nKv * D + 3 * I + 2 + nH + 7 * 2 * R;
  // plus the head: final norm output, logits and their gradient
  const act = T * (Ln * perLayer + 2 * H + 2 * V);
  return {
    weightsBytes: 4 * weights,
    adapterBytes: 4 * adapter,
    optimizerBytes: 4 * 3 * adapter,
    activationBytes: 4 * act,
    totalBytes: 4 * (weights + 4 * adapter + act),
  };
}

export interface TrainBenchResult {
  shape: ModelShape;
  seq: number;
  prompt: number;
  stepMs: number[];
  stepMsMedian: number;
  tokensPerS: number;
  /**
   * The floor: the base matmuls no LoRA trainer can avoid — each linear's forward and input
   * gradient, and lm_head's on the rows whose loss counts — timed alone on the model's own
   * weights (median of the timed repetitions), and the step as a multiple of it.
   */
  floorMs: number;
  stepOverFloor: number;
  /** cpu: the last step with every kernel call timed (ms per op name, and what was spent outside kernels). */
  profile?: { stepMs: number; inOpsMs: number; ops: { op: string; calls: number; ms: number }[] };
  /** Rows of lm_head the step computes (loss rows) out of seq. */
  lmHeadRows: number;
  peakRssMB: number;
  memory: MemoryModel;
  rssVsModel: number;
  baseline?: Record<string, unknown> & { tokens_per_s?: number; peak_rss_mb?: number };
  baselineError?: string;
  vsPyTorch?: number;
}

export const defaultPrompt = (T: number): number => Math.min(32, Math.floor(T / 4));

function chainExample(T: number, V: number, P: number): TrainExample {
  const seg = Math.floor((T - P) / 3);
  const ids: number[] = [],
    stepIds: number[] = [],
    lossMask: number[] = [];
  for (let t = 0; t < T; t++) {
    ids.push((t * 7919 + 13) % V);
    const s = t < P ? -1 : Math.min(2, Math.floor((t - P) / seg));
    stepIds.push(s);
    lossMask.push(s < 0 ? 0 : 1);
  }
  return { ids, stepIds, lossMask };
}

export async function runTrainBench(backend: Backend, o: TrainBenchOptions): Promise<TrainBenchResult> {
  const cfg = parseHFConfig(modelConfigJson(o.shape), 'bench config.json');
  const t0 = performance.now();
  const model = modelFromTensors(cfg, randomWeights(cfg), { backend });
  const bundle = createMote(model, { rank: o.rank, loraAlpha: 2 * o.rank }, { seed: 1, init: 'random' });
  o.log(`  model and bundle built in ${((performance.now() - t0) / 1e3).toFixed(1)} s`);
  const stepMs: number[] = [];
  const P = o.prompt ?? defaultPrompt(o.seq);
  const trainer = new Trainer(model, bundle, [chainExample(o.seq, cfg.vocabSize, P)], {
    steps: o.steps + 1,
    lr: 2e-4,
    batchTokens: o.seq,
    seed: 1,
    clipNorm: 1,
    onProgress: (p) => {
      if (p.step > 1) stepMs.push(p.elapsedMs);
      o.log(`  step ${p.step}: ${p.elapsedMs.toFixed(0)} ms, loss ${p.loss.toFixed(3)}`);
    },
  });
  let floorMs = NaN;
  const example = chainExample(o.seq, cfg.vocabSize, P);
  const lmHeadRows = Array.from(example.lossMask).filter((m) => m === 1).length;
  let profile: TrainBenchResult['profile'];
  try {
    while (!trainer.done) {
      // the last step, with every addon call timed (cpu: the kernels' own time)
      const last = trainer.state.step === o.steps;
      if (last && backend.kind !== 'webgpu') opProfile(true, backend);
      const t = performance.now();
      await trainer.trainStep();
      const stepMsNow = performance.now() - t;
      const p = last ? opProfile(false) : null;
      if (p) {
        const ops = [...p].map(([op, r]) => ({ op, calls: r.calls, ms: r.ms })).sort((a, b) => b.ms - a.ms);
        const inOps = ops.reduce((a, r) => a + r.ms, 0);
        profile = { stepMs: stepMsNow, inOpsMs: inOps, ops };
        o.log(
          `  profile of the last step: ${stepMsNow.toFixed(0)} ms, ${inOps.toFixed(0)} ms in kernels, ${(stepMsNow - inOps).toFixed(0)} ms outside them`,
        );
        for (const r of ops.slice(0, 14))
          o.log(`    ${r.op.padEnd(22)} ${String(r.calls).padStart(5)} calls ${r.ms.toFixed(1).padStart(8)} ms`);
      }
    }
    floorMs = await baseMatmulFloor(backend, model.weights, o.seq, lmHeadRows, Math.max(3, o.steps));
    o.log(`  floor (base matmuls alone): ${floorMs.toFixed(0)} ms`);
  } finally {
    trainer.dispose();
    bundle.dispose();
    model.dispose();
  }
  const peakRssMB = process.resourceUsage().maxRSS / 1024;
  const memory = memoryModel(cfg, o.seq, o.rank, 4);
  const ms = median(stepMs);
  return {
    shape: o.shape,
    seq: o.seq,
    prompt: P,
    stepMs,
    stepMsMedian: ms,
    tokensPerS: o.seq / (ms / 1e3),
    floorMs,
    stepOverFloor: ms / floorMs,
    ...(profile ? { profile } : {}),
    lmHeadRows,
    peakRssMB,
    memory,
    rssVsModel: (peakRssMB * 2 ** 20) / memory.totalBytes,
  };
}

/** Median time of the step's unavoidable base matmuls (forward and input gradient of every linear, lm_head on `rows` rows). */
async function baseMatmulFloor(backend: Backend, w: LlamaWeights, T: number, rows: number, reps: number): Promise<number> {
  const inputs = new Map<string, Tensor>();
  const act = (n: number, d: number) => {
    const key = `${n}x${d}`;
    let t = inputs.get(key);
    if (!t) {
      t = backend.tensor(
        Float32Array.from({ length: n * d }, (_, i) => Math.sin(i * 0.37) * 0.1),
        [n, d],
      );
      inputs.set(key, t);
    }
    return t;
  };
  const times: number[] = [];
  try {
    for (let r = 0; r < reps + 1; r++) {
      await backend.sync();
      const t0 = performance.now();
      for (const layer of w.layers) {
        for (const m of LINEAR_MODULES) {
          const W = layer.linear[m];
          const [out, inp] = W.shape as [number, number];
          matmul(act(T, inp), W).dispose();
          matmulGradInput(act(T, out), W).dispose();
        }
      }
      const [V, H] = w.lmHead.shape as [number, number];
      if (rows > 0) {
        matmul(act(rows, H), w.lmHead).dispose();
        matmulGradInput(act(rows, V), w.lmHead).dispose();
      }
      await backend.sync();
      if (r > 0) times.push(performance.now() - t0); // the first is a warm-up
    }
  } finally {
    for (const t of inputs.values()) t.dispose();
  }
  return median(times);
}

/** Runs bench/train_torch.py with the same shape (installing Debian's python3-torch first when missing). */
export function runTorchBaseline(
  root: string,
  o: TrainBenchOptions,
  threads: number | undefined,
  device: 'cpu' | 'cuda' = 'cpu',
): { json?: Record<string, unknown>; error?: string } {
  const setup = join(root, 'bench', 'setup_torch.sh');
  const script = join(root, 'bench', 'train_torch.py');
  if (!existsSync(script)) return { error: `${script} not found` };
  if (existsSync(setup)) {
    const s = spawnSync('bash', [setup], { stdio: ['ignore', 'inherit', 'inherit'] });
    if (s.status !== 0) return { error: `bench/setup_torch.sh failed (exit ${s.status})` };
  }
  const s = o.shape;
  const args = [
    script,
    '--hidden',
    `${s.hidden}`,
    '--intermediate',
    `${s.intermediate}`,
    '--layers',
    `${s.layers}`,
    '--heads',
    `${s.heads}`,
    '--kv-heads',
    `${s.kvHeads}`,
    '--vocab',
    `${s.vocab}`,
    '--seq',
    `${o.seq}`,
    '--prompt',
    `${o.prompt ?? defaultPrompt(o.seq)}`,
    '--steps',
    `${o.steps}`,
    '--rank',
    `${o.rank}`,
  ];
  if (threads) args.push('--threads', `${threads}`);
  if (device !== 'cpu') args.push('--device', device);
  o.log(`  pytorch baseline: python3 ${args.slice(1).join(' ')}`);
  const r = spawnSync('python3', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 24 });
  if (r.status !== 0) return { error: `bench/train_torch.py failed (exit ${r.status})` };
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return { json: JSON.parse(line) as Record<string, unknown> };
  } catch {
    return { error: `bench/train_torch.py printed no JSON line: ${line.slice(0, 200)}` };
  }
}

/** Default shape: SmolLM-135M; on a software WebGPU adapter a small model (lavapipe runs ~1 GFLOP/s). */
export function trainBenchDefaults(backend: Backend, quick: boolean): { shape: ModelShape; seq: number; steps: number; notes: string[] } {
  if (backend.kind === 'webgpu' && backend.info().software) {
    return {
      shape: { hidden: 192, intermediate: 512, layers: 4, heads: 3, kvHeads: 1, vocab: 8192 },
      seq: 128,
      steps: 2,
      notes: ['software WebGPU adapter: a small model (hidden 192, 4 layers, vocab 8192), sequence 128'],
    };
  }
  if (quick) return { shape: { ...SMOLLM_135M, layers: 4 }, seq: 256, steps: 2, notes: ['quick run: SmolLM-135M shape with 4 layers'] };
  return { shape: SMOLLM_135M, seq: 256, steps: 3, notes: [] };
}

export function trainMarkdown(r: TrainBenchResult, backendName: string): string {
  const mb = (b: number) => (b / 2 ** 20).toFixed(0);
  const lines = [
    `| impl | shape | prompt + chain tokens | step ms (median) | tokens/s | peak RSS MB |`,
    `| --- | --- | --- | --- | --- | --- |`,
    `| mote ${backendName} | ${r.shape.layers} layers × hidden ${r.shape.hidden} | ${r.prompt} + ${r.seq - r.prompt} | ${r.stepMsMedian.toFixed(0)} | ${r.tokensPerS.toFixed(1)} | ${r.peakRssMB.toFixed(0)} |`,
  ];
  const b = r.baseline;
  if (b)
    lines.push(
      `| PyTorch ${String(b.torch ?? '')} ${String(b.device ?? 'cpu')} (${String(b.threads ?? '?')} threads) | same | ${r.prompt} + ${r.seq - r.prompt} | ${Number(b.step_ms_median).toFixed(0)} | ${Number(b.tokens_per_s).toFixed(1)} | ${Number(b.peak_rss_mb).toFixed(0)} |`,
    );
  lines.push('');
  lines.push(
    `Memory from the shapes: weights ${mb(r.memory.weightsBytes)} MB + experts ${mb(r.memory.adapterBytes)} MB + gradients and AdamW moments ${mb(r.memory.optimizerBytes)} MB + activations ${mb(r.memory.activationBytes)} MB = ${mb(r.memory.totalBytes)} MB; peak RSS is ${r.rssVsModel.toFixed(2)}× that (target ≤ 2×).`,
  );
  lines.push(
    `Floor: the base matmuls no LoRA trainer avoids (each linear's forward and input gradient; lm_head on the ${r.lmHeadRows} of ${r.seq} rows whose loss counts — mote skips the other ${r.seq - r.lmHeadRows}, PEFT computes them) take ${r.floorMs.toFixed(0)} ms alone; the step is ${r.stepOverFloor.toFixed(2)}× that.`,
  );
  if (r.vsPyTorch !== undefined) lines.push(`mote / PyTorch tokens/s: ${r.vsPyTorch.toFixed(2)}×.`);
  if (r.baselineError) lines.push(`PyTorch baseline not measured: ${r.baselineError}.`);
  return lines.join('\n');
}
