// Model benchmark (`--suite model`): prefill and decode tokens/s of a whole LLaMA forward on the
// 135M shape of SmolLM-135M (hidden 576, intermediate 1536, 30 layers, 9 heads, 3 KV heads,
// vocab 49152, tied embeddings) with random weights, a batch of 64 sequences, and 0, 1, 4 or 64
// distinct MoTE bundles in the batch (3 steps + shared, rank 16, all 7 linears).
//
// Several bundles are stacked into one stack per linear with L = bundles·4 adapters (bundle b's
// experts are b·4 + {0, 1, 2} for its steps and b·4 + 3 for its shared expert), and every token
// is routed K = 2: [step expert of its bundle, shared expert of its bundle] with weights
// [0.5, 0.5] (sequence s uses bundle s % bundles, step s % 3).
//
//   prefill: 64 sequences × 32 prompt tokens packed into one forward (2048 tokens) into a fresh
//            KV cache, logits of the last token of each sequence;
//   decode:  then `decodeSteps` forwards of 64 tokens (one per sequence) with the KV cache and
//            logitRows = all 64 rows.
// Each forward ends with `await backend.sync()` and is timed by hand (performance.now()); a
// warm-up round (prefill + 2 decode steps) comes first, then `rounds` timed rounds; a row's
// ms/step is the median over all timed prefills, or over all timed decode steps.
//
// Physical bound of the adapters' added decode time: the A/B factors of the distinct experts the
// step uses (up to rank 16, f32), on every layer and linear, read once per step, at the copy
// bandwidth measured in the same run (bench/ceilings.ts).
import { loraRouting, loraStack, type LoraRouting, type LoraStack } from '../src/ops/lora.js';
import { LINEAR_MODULES, expectedWeights, linearShape, parseHFConfig, type LinearModule, type ModelConfig } from '../src/model/config.js';
import { type LlamaLora, type LlamaModel } from '../src/model/llama.js';
import { modelFromTensors } from '../src/model/load.js';
import type { HostTensor } from '../src/io/safetensors.js';
import type { Backend } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { measureCopy, lastLevelCacheBytes, type CopyCeiling } from './ceilings.js';
import { median, type TimeOptions } from './timing.js';
import { randomFloats } from './random.js';

export interface ModelShape {
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
}

/** SmolLM-135M. */
export const SMOLLM_135M: ModelShape = { hidden: 576, intermediate: 1536, layers: 30, heads: 9, kvHeads: 3, vocab: 49152 };

export interface ModelBenchOptions {
  shape: ModelShape;
  dtype: 'f32' | 'bf16';
  seqs: number;
  promptTokens: number;
  decodeSteps: number;
  /** Timed rounds (each: one prefill + decodeSteps decode steps) after one warm-up round. */
  rounds: number;
  bundleCounts: readonly number[];
  rank: number;
  /** Adapter weights are replicated (cycled over the layers) until the distinct experts used span at least this many bytes. */
  coldBytes: number;
  copyTiming: TimeOptions;
  log: (line: string) => void;
}

export interface ModelRow {
  bundles: number;
  /** Adapters per stack (bundles · 4), 0 without adapters. */
  L: number;
  /** Distinct experts used by the batch (per linear). */
  expertsUsed: number;
  /** Distinct copies of the per-layer adapter stacks, cycled over the layers. */
  replicas: number;
  prefill: { tokens: number; msSamples: number[]; ms: number; tokensPerS: number; addedMs?: number; vsNone?: number };
  decode: {
    tokens: number;
    msSamples: number[];
    ms: number;
    tokensPerS: number;
    /** Median step time minus that of the no-adapter row. */
    addedMs?: number;
    /** tokens/s relative to no adapters. */
    vsNone?: number;
    /** A/B bytes of the experts used, per decode step (all layers, all linears, f32). */
    adapterBytes: number;
    boundMs?: number;
    /** addedMs / boundMs. */
    ratio?: number;
  };
  error?: string;
}

export function modelConfigJson(s: ModelShape): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: 'silu',
    hidden_size: s.hidden,
    initializer_range: 0.02,
    intermediate_size: s.intermediate,
    max_position_embeddings: 2048,
    mlp_bias: false,
    num_attention_heads: s.heads,
    num_hidden_layers: s.layers,
    num_key_value_heads: s.kvHeads,
    pretraining_tp: 1,
    rms_norm_eps: 1e-5,
    rope_scaling: null,
    rope_theta: 10000.0,
    tie_word_embeddings: true,
    torch_dtype: 'bfloat16',
    use_cache: true,
    vocab_size: s.vocab,
  };
}

/** Random f32 weights: linears std-ish 1/√in, embeddings 1/√hidden, norms 1. */
export function randomWeights(cfg: ModelConfig): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  let seed = 100;
  for (const w of expectedWeights(cfg)) {
    const n = w.shape.reduce((a, b) => a * b, 1);
    let data: Float32Array;
    if (w.shape.length === 1) data = new Float32Array(n).fill(1);
    else if (w.name.includes('embed_tokens') || w.name === 'lm_head.weight') data = randomFloats(n, Math.sqrt(3 / cfg.hiddenSize), seed++);
    else data = randomFloats(n, Math.sqrt(3 / w.shape[1]!), seed++);
    out.set(w.name, { dtype: 'f32', shape: [...w.shape], data });
  }
  return out;
}

/** Bytes of A [R, in] + B [out, R] (f32) of one expert on one layer, all linears. */
function expertLayerBytes(cfg: ModelConfig, R: number): number {
  let n = 0;
  for (const m of LINEAR_MODULES) {
    const [o, i] = linearShape(cfg, m);
    n += R * (o + i);
  }
  return 4 * n;
}

/** Per-layer stacks with L adapters, `replicas` distinct copies cycled over the layers. */
function makeStacks(
  backend: Backend,
  cfg: ModelConfig,
  L: number,
  R: number,
  replicas: number,
): { stacks: Partial<Record<LinearModule, LoraStack>>[]; dispose(): void } {
  const owned: Tensor[] = [];
  const sets: Partial<Record<LinearModule, LoraStack>>[] = [];
  let seed = 5000 + L;
  try {
    for (let c = 0; c < replicas; c++) {
      const set: Partial<Record<LinearModule, LoraStack>> = {};
      for (const m of LINEAR_MODULES) {
        const [Hout, Hin] = linearShape(cfg, m);
        const A = backend.tensor(randomFloats(L * R * Hin, 1 / Math.sqrt(Hin), seed++), [L, R, Hin], 'f32');
        owned.push(A);
        const B = backend.tensor(randomFloats(L * Hout * R, 1 / Math.sqrt(R), seed++), [L, Hout, R], 'f32');
        owned.push(B);
        const s = loraStack(A, B, { rank: new Int32Array(L).fill(R), scale: new Float32Array(L).fill(32 / R) });
        owned.push(s.rank, s.scale);
        set[m] = s;
      }
      sets.push(set);
    }
  } catch (e) {
    for (const t of owned) t.dispose();
    throw e;
  }
  return {
    stacks: Array.from({ length: cfg.numLayers }, (_, l) => sets[l % replicas]!),
    dispose: () => {
      for (const t of owned) t.dispose();
    },
  };
}

/** K = 2 routing of tokens of sequences `seqOf`: [b·4 + s % 3, b·4 + 3], b = s % bundles, weights [0.5, 0.5]. */
function routingFor(backend: Backend, seqOf: ArrayLike<number>, bundles: number): { rt: LoraRouting; used: number } {
  const T = seqOf.length;
  const slots = new Int32Array(2 * T);
  const used = new Set<number>();
  for (let t = 0; t < T; t++) {
    const s = seqOf[t]!;
    const b = s % bundles;
    slots[2 * t] = b * 4 + (s % 3);
    slots[2 * t + 1] = b * 4 + 3;
    used.add(slots[2 * t]!).add(slots[2 * t + 1]!);
  }
  return { rt: loraRouting(backend, slots, { K: 2, L: bundles * 4, weight: new Float32Array(2 * T).fill(0.5) }), used: used.size };
}

function randomIds(n: number, vocab: number, seed: number): Int32Array {
  const f = randomFloats(n, 1, seed);
  return Int32Array.from(f, (x) => Math.min(vocab - 1, Math.floor(((x + 1) / 2) * vocab)));
}

export interface ModelBenchResult {
  config: Record<string, unknown>;
  shape: ModelShape;
  params: number;
  copy: CopyCeiling;
  copyRuns: CopyCeiling[];
  rows: ModelRow[];
  targets: { decode4VsNone?: number; decode4Met?: boolean; decode64Ratio?: number; decode64Met?: boolean };
}

export async function runModelBench(backend: Backend, o: ModelBenchOptions): Promise<ModelBenchResult> {
  const log = o.log;
  const configJson = modelConfigJson(o.shape);
  const cfg = parseHFConfig(configJson, 'bench config.json');
  const t0 = performance.now();
  const copyStart = await measureCopy(backend, o.copyTiming);
  log(`  copy ${copyStart.gbps?.toFixed(2) ?? 'n/a'} GB/s`);
  const host = randomWeights(cfg);
  const params = expectedWeights(cfg).reduce((a, w) => a + w.shape.reduce((x, y) => x * y, 1), 0);
  const model: LlamaModel = modelFromTensors(cfg, host, { backend, dtype: o.dtype });
  host.clear();
  log(`  model: ${(params / 1e6).toFixed(1)}M parameters, ${o.dtype}, built in ${((performance.now() - t0) / 1e3).toFixed(1)} s`);

  const { seqs, promptTokens: P } = o;
  const T = seqs * P;
  const preSeq = Int32Array.from({ length: T }, (_, t) => Math.floor(t / P));
  const lastRows = Int32Array.from({ length: seqs }, (_, s) => s * P + P - 1);
  const decSeq = Int32Array.from({ length: seqs }, (_, s) => s);
  const allRows = decSeq;
  const perExpert = expertLayerBytes(cfg, o.rank);
  const rows: ModelRow[] = [];
  interface Setup {
    row: ModelRow;
    stacks: ReturnType<typeof makeStacks> | null;
    rts: LoraRouting[];
    preLora?: LlamaLora;
    decLora?: LlamaLora;
  }
  const setups: Setup[] = [];
  try {
    for (const bundles of o.bundleCounts) {
      const L = bundles * 4;
      const row: ModelRow = {
        bundles,
        L,
        expertsUsed: 0,
        replicas: 0,
        prefill: { tokens: T, msSamples: [], ms: NaN, tokensPerS: NaN },
        decode: { tokens: seqs, msSamples: [], ms: NaN, tokensPerS: NaN, adapterBytes: 0 },
      };
      rows.push(row);
      const su: Setup = { row, stacks: null, rts: [] };
      setups.push(su);
      if (bundles === 0) continue;
      try {
        const pre = routingFor(backend, preSeq, bundles);
        su.rts.push(pre.rt);
        const dec = routingFor(backend, decSeq, bundles);
        su.rts.push(dec.rt);
        row.expertsUsed = dec.used;
        const usedPerLayer = dec.used * perExpert;
        row.replicas = Math.min(cfg.numLayers, Math.max(1, Math.ceil(o.coldBytes / usedPerLayer)));
        su.stacks = makeStacks(backend, cfg, L, o.rank, row.replicas);
        su.preLora = { stacks: su.stacks.stacks, routing: pre.rt };
        su.decLora = { stacks: su.stacks.stacks, routing: dec.rt };
        row.decode.adapterBytes = cfg.numLayers * usedPerLayer;
      } catch (e) {
        row.error = (e as Error).message;
        log(`  ${bundles} bundles: setup error: ${row.error}`);
      }
    }
    // Rounds interleave the rows (round r of every row, then round r + 1), so that a shared
    // machine's load drift hits every row alike; round 0 is the warm-up.
    for (let round = 0; round <= o.rounds; round++) {
      const warm = round === 0;
      for (const su of setups) {
        const row = su.row;
        if (row.error) continue;
        const cache = model.newCache({ capacity: P + o.decodeSteps });
        try {
          const ids = randomIds(T, cfg.vocabSize, 7 + round);
          let s0 = performance.now();
          model.forward({ ids, seq: preSeq, cache, logitRows: lastRows, lora: su.preLora }).dispose();
          await backend.sync();
          if (!warm) row.prefill.msSamples.push(performance.now() - s0);
          const steps = warm ? Math.min(2, o.decodeSteps) : o.decodeSteps;
          for (let k = 0; k < steps; k++) {
            const dIds = randomIds(seqs, cfg.vocabSize, 1000 + 31 * round + k);
            s0 = performance.now();
            model.forward({ ids: dIds, seq: decSeq, cache, logitRows: allRows, lora: su.decLora }).dispose();
            await backend.sync();
            if (!warm) row.decode.msSamples.push(performance.now() - s0);
          }
        } catch (e) {
          row.error = (e as Error).message;
          log(`  ${row.bundles} bundles: error: ${row.error}`);
        } finally {
          cache.dispose();
        }
        if (!warm && !row.error) {
          const n = o.decodeSteps;
          log(
            `  (${((performance.now() - t0) / 1e3).toFixed(0)} s) round ${round}, ${row.bundles} bundles: prefill ${row.prefill.msSamples.at(-1)!.toFixed(1)} ms, decode median ${median(row.decode.msSamples.slice(-n)).toFixed(1)} ms/step`,
          );
        }
      }
    }
    for (const row of rows) {
      if (row.error) continue;
      row.prefill.ms = median(row.prefill.msSamples);
      row.prefill.tokensPerS = (1e3 * T) / row.prefill.ms;
      row.decode.ms = median(row.decode.msSamples);
      row.decode.tokensPerS = (1e3 * seqs) / row.decode.ms;
    }
  } finally {
    for (const su of setups) {
      su.stacks?.dispose();
      for (const rt of su.rts) rt.dispose();
    }
    model.dispose();
  }
  const copyEnd = await measureCopy(backend, o.copyTiming);
  log(`  copy (end) ${copyEnd.gbps?.toFixed(2) ?? 'n/a'} GB/s`);
  const copy = (copyEnd.gbps ?? -1) > (copyStart.gbps ?? -1) ? copyEnd : copyStart;
  const none = rows.find((r) => r.bundles === 0 && !r.error);
  for (const r of rows) {
    if (r.error || !none || r.bundles === 0) continue;
    r.prefill.addedMs = r.prefill.ms - none.prefill.ms;
    r.prefill.vsNone = r.prefill.tokensPerS / none.prefill.tokensPerS;
    r.decode.addedMs = r.decode.ms - none.decode.ms;
    r.decode.vsNone = r.decode.tokensPerS / none.decode.tokensPerS;
    if (copy.gbps) {
      r.decode.boundMs = r.decode.adapterBytes / (copy.gbps * 1e6);
      r.decode.ratio = r.decode.addedMs / r.decode.boundMs;
    }
  }
  const r4 = rows.find((r) => r.bundles === 4 && !r.error);
  const r64 = rows.find((r) => r.bundles === 64 && !r.error);
  const targets: ModelBenchResult['targets'] = {};
  if (r4?.decode.vsNone !== undefined) {
    targets.decode4VsNone = r4.decode.vsNone;
    targets.decode4Met = r4.decode.vsNone >= 0.8;
  }
  if (r64?.decode.ratio !== undefined) {
    targets.decode64Ratio = r64.decode.ratio;
    targets.decode64Met = r64.decode.ratio <= 1.3;
  }
  return { config: configJson, shape: o.shape, params, copy, copyRuns: [copyStart, copyEnd], rows, targets };
}

/** The default options of a run; quick: 4 layers and 8 decode steps; software WebGPU: a smaller model too. */
export function modelBenchDefaults(
  backend: Backend,
  quick: boolean,
): { shape: ModelShape; decodeSteps: number; rounds: number; notes: string[] } {
  const notes: string[] = [];
  let shape = SMOLLM_135M;
  if (backend.kind === 'webgpu' && backend.info().software) {
    shape = { hidden: 192, intermediate: 512, layers: 4, heads: 3, kvHeads: 1, vocab: 8192 };
    notes.push(
      `software WebGPU adapter: forced --quick with a smaller model (hidden ${shape.hidden}, intermediate ${shape.intermediate}, ${shape.layers} layers, ${shape.heads} heads, ${shape.kvHeads} KV head, head dim 64, vocab ${shape.vocab}, tied embeddings)`,
    );
    return { shape, decodeSteps: 4, rounds: 2, notes };
  }
  if (quick) {
    shape = { ...shape, layers: 4 };
    notes.push('quick run: SmolLM-135M shape with 4 layers instead of 30, 8 decode steps instead of 16, 3 timed rounds');
    return { shape, decodeSteps: 8, rounds: 3, notes };
  }
  return { shape, decodeSteps: 16, rounds: 2, notes };
}

export function coldBytesFor(backend: Backend): number {
  return Math.round(2.5 * lastLevelCacheBytes(backend));
}

const fmt = (x: number | undefined, d = 1): string => (x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(d));

export function modelMarkdown(r: ModelBenchResult, o: { seqs: number; promptTokens: number; decodeSteps: number; dtype: string }): string {
  const s = r.shape;
  const md: string[] = [];
  md.push(
    `## Model: LLaMA hidden ${s.hidden}, intermediate ${s.intermediate}, ${s.layers} layers, ${s.heads} heads / ${s.kvHeads} KV heads, vocab ${s.vocab}, tied (${(r.params / 1e6).toFixed(1)}M parameters, random ${o.dtype} weights)`,
    '',
  );
  md.push(
    `Batch: ${o.seqs} sequences; prefill ${o.seqs} × ${o.promptTokens} tokens packed; decode ${o.decodeSteps} steps of ${o.seqs} tokens with the KV cache, logits for all ${o.seqs}. MoTE bundles: 3 steps + shared, rank 16, all 7 linears, K = 2 [step, shared] weights [0.5, 0.5]. Copy bandwidth ${fmt(r.copy.gbps ?? undefined, 2)} GB/s.`,
    '',
  );
  md.push(
    '| bundles | L | experts used | prefill tok/s | prefill ms | prefill × none | decode tok/s | decode ms/step | decode × none | added ms | adapter MB/step | bound ms | added / bound |',
  );
  md.push('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const w of r.rows) {
    if (w.error) {
      md.push(`| ${w.bundles} | ${w.L} | error: ${w.error} | | | | | | | | | | |`);
      continue;
    }
    md.push(
      `| ${w.bundles} | ${w.L} | ${w.expertsUsed} | ${fmt(w.prefill.tokensPerS, 0)} | ${fmt(w.prefill.ms)} | ${fmt(w.prefill.vsNone, 2)} | ${fmt(w.decode.tokensPerS, 0)} | ${fmt(w.decode.ms)} | ${fmt(w.decode.vsNone, 2)} | ${fmt(w.decode.addedMs)} | ${fmt(w.decode.adapterBytes / 1e6)} | ${fmt(w.decode.boundMs)} | ${fmt(w.decode.ratio, 2)} |`,
    );
  }
  md.push('');
  const t = r.targets;
  md.push('### Targets', '');
  md.push(
    `- 4 distinct bundles: decode ${t.decode4VsNone === undefined ? 'not measured' : `${t.decode4VsNone.toFixed(2)}× the tokens/s of no adapters — ${t.decode4Met ? 'met' : 'not met'}`} (goal ≥ 0.8×)`,
  );
  md.push(
    `- 64 distinct bundles: added decode time ${t.decode64Ratio === undefined ? 'not measured' : `${t.decode64Ratio.toFixed(2)}× its physical bound — ${t.decode64Met ? 'met' : 'not met'}${t.decode64Ratio < 0.5 ? ' (far below the bound, which cannot be: the run-to-run noise is larger than the added time, so this is not resolved)' : ''}`} (goal ≤ 1.3×)`,
    '',
  );
  md.push(
    '- bound: A/B bytes (f32, rank 16) of the distinct experts the decode batch uses, all layers and linears, read once per step, / copy bandwidth (read + write bytes per second) measured at the start and end of this suite (the higher used)',
  );
  md.push(
    '- timing: performance.now() around forward + `await backend.sync()`; one warm-up round (prefill + 2 decode steps), then timed rounds, the rows interleaved round by round; medians over all timed prefills / decode steps',
  );
  md.push(
    '- adapter weights: per-layer stacks replicated and cycled over the layers until the experts used span ≥ 2.5 × last-level cache, so they are read from memory',
  );
  return md.join('\n');
}
