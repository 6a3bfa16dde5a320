// Decode-attention benchmark (`npm run bench -- --suite decode`): one decode step (one new token
// per sequence, logits for all) of the SmolLM-135M shape (random weights) at batch 1, 16 and 64,
// every sequence with a `context`-token KV cache (default 1,024). The cache is filled with random
// keys and values through its own append path (no prefill: only the decode step is timed), then
// `steps` decode steps are timed (forward + `await backend.sync()`), median per batch.
//
// The figure of merit is the time per sequence-token: step ms / batch. Batching shares the weight
// reads, so it should fall with the batch; attention whose cost grows with the whole batch's
// cache (every query scanning every sequence's keys) makes it rise instead. Target (issue 15):
// batch 64 ≤ 1.5 × batch 1, per sequence-token.
import type { Backend } from '../src/backend/backend.js';
import { parseHFConfig } from '../src/model/config.js';
import { modelFromTensors } from '../src/model/load.js';
import type { KvCache } from '../src/model/kv_cache.js';
import { attention } from '../src/ops/attention.js';
import { median } from './timing.js';
import { randomFloats } from './random.js';
import { SMOLLM_135M, modelConfigJson, randomWeights, type ModelShape } from './model.js';

export interface DecodeBenchOptions {
  shape: ModelShape;
  batches: number[];
  context: number;
  steps: number;
  log: (line: string) => void;
}

export interface DecodeRow {
  batch: number;
  context: number;
  /** Cached tokens of the whole batch when the steps start. */
  cachedTokens: number;
  msSamples: number[];
  /** Median step time. */
  ms: number;
  /** ms / batch. */
  msPerSeqToken: number;
  tokensPerS: number;
  /** msPerSeqToken / that of batch 1. */
  vsBatch1?: number;
  /** One layer's attention op alone on the decode step's layout (median), and per sequence-token. */
  attentionMs: number;
  attentionMsPerSeqToken: number;
  attentionVsBatch1?: number;
  error?: string;
}

export interface DecodeBenchResult {
  shape: ModelShape;
  rows: DecodeRow[];
  /** Batch `batch` vs batch 1, per sequence-token: the whole step and the attention op alone. */
  target: { batch: number; ratio?: number; met?: boolean; attentionRatio?: number; attentionMet?: boolean };
}

/** Fills `cache` with `context` random tokens for each of sequences 0..batch−1 (chunks of ≤ 4,096 tokens). */
function fillCache(backend: Backend, cache: KvCache, batch: number, context: number, seed: number): void {
  const row = cache.row;
  const total = batch * context;
  for (let t0 = 0; t0 < total; t0 += 4096) {
    const n = Math.min(4096, total - t0);
    const seq = new Int32Array(n),
      pos = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      seq[i] = Math.floor((t0 + i) / context);
      pos[i] = (t0 + i) % context;
    }
    const plan = cache.begin(seq, pos);
    try {
      for (let l = 0; l < cache.numLayers; l++) {
        const k = backend.tensor(randomFloats(n * row, 1, seed++), [n, row], 'f32');
        const v = backend.tensor(randomFloats(n * row, 1, seed++), [n, row], 'f32');
        try {
          cache.append(plan, l, k, v);
        } finally {
          k.dispose();
          v.dispose();
        }
      }
      cache.commit(plan);
    } catch (e) {
      cache.abort(plan);
      throw e;
    }
  }
}

export async function runDecodeBench(backend: Backend, o: DecodeBenchOptions): Promise<DecodeBenchResult> {
  const configJson = modelConfigJson(o.shape);
  const cfg = parseHFConfig(configJson);
  const model = modelFromTensors(cfg, randomWeights(cfg), { backend });
  const rows: DecodeRow[] = [];
  try {
    for (const batch of o.batches) {
      const row: DecodeRow = {
        batch,
        context: o.context,
        cachedTokens: batch * o.context,
        msSamples: [],
        ms: NaN,
        msPerSeqToken: NaN,
        tokensPerS: NaN,
        attentionMs: NaN,
        attentionMsPerSeqToken: NaN,
      };
      const cache = model.newCache({ capacity: batch * (o.context + o.steps + 2) + 64 });
      try {
        fillCache(backend, cache, batch, o.context, 7000 + batch);
        await backend.sync();
        const seq = Int32Array.from({ length: batch }, (_, s) => s);
        const ids = Int32Array.from({ length: batch }, (_, s) => (17 + 31 * s) % cfg.vocabSize);
        for (let step = 0; step < o.steps + 1; step++) {
          const pos = new Int32Array(batch).fill(o.context + step);
          const t0 = performance.now();
          const logits = model.forward({ ids, seq, pos, cache });
          await backend.sync();
          const ms = performance.now() - t0;
          logits.dispose();
          if (step > 0) row.msSamples.push(ms); // the first step warms up
        }
        // the attention op alone: layer 0's cache, the next step's layout, random queries
        const attSamples: number[] = [];
        const pos = new Int32Array(batch).fill(o.context + o.steps + 1);
        const plan = cache.begin(seq, pos);
        const q = backend.tensor(randomFloats(batch * cfg.numHeads * cfg.headDim, 1, 99), [batch, cfg.numHeads, cfg.headDim], 'f32');
        try {
          for (let i = 0; i < o.steps + 2; i++) {
            const t0 = performance.now();
            const r = attention(q, cache.keys(0), cache.values(0), plan.layout);
            await backend.sync();
            if (i > 0) attSamples.push(performance.now() - t0);
            r.out.dispose();
            r.lse.dispose();
          }
        } finally {
          q.dispose();
          cache.abort(plan);
        }
        row.attentionMs = median(attSamples);
        row.attentionMsPerSeqToken = row.attentionMs / batch;
        row.ms = median(row.msSamples);
        row.msPerSeqToken = row.ms / batch;
        row.tokensPerS = (1000 * batch) / row.ms;
      } catch (e) {
        row.error = (e as Error).message;
      } finally {
        cache.dispose();
      }
      o.log(
        `decode: batch ${batch} × ${o.context} cached: ${row.error ?? `${row.ms.toFixed(1)} ms/step, ${row.msPerSeqToken.toFixed(2)} ms per sequence-token; attention (one layer) ${row.attentionMs.toFixed(2)} ms`}`,
      );
      rows.push(row);
    }
  } finally {
    model.dispose();
  }
  const b1 = rows.find((r) => r.batch === 1 && !r.error);
  for (const r of rows) {
    if (!b1 || r.error) continue;
    r.vsBatch1 = r.msPerSeqToken / b1.msPerSeqToken;
    r.attentionVsBatch1 = r.attentionMsPerSeqToken / b1.attentionMsPerSeqToken;
  }
  const top = rows.filter((r) => !r.error).at(-1);
  const target: DecodeBenchResult['target'] = { batch: top?.batch ?? 0 };
  if (top?.vsBatch1 !== undefined && top.batch > 1) {
    target.ratio = top.vsBatch1;
    target.met = top.vsBatch1 <= 1.5;
    target.attentionRatio = top.attentionVsBatch1;
    target.attentionMet = top.attentionVsBatch1! <= 1.5;
  }
  return { shape: o.shape, rows, target };
}

/** Default options: the SmolLM-135M shape (quick: 4 layers), batches 1/16/64, 1,024-token contexts. */
export function decodeBenchDefaults(
  backend: Backend,
  quick: boolean,
): { shape: ModelShape; context: number; steps: number; notes: string[] } {
  if (backend.kind === 'webgpu' && backend.info().software) {
    const shape = { hidden: 192, intermediate: 512, layers: 2, heads: 3, kvHeads: 1, vocab: 8192 };
    return {
      shape,
      context: 256,
      steps: 2,
      notes: ['software WebGPU adapter: a smaller model (hidden 192, 2 layers, head dim 64) and 256-token contexts'],
    };
  }
  if (quick)
    return { shape: { ...SMOLLM_135M, layers: 4 }, context: 1024, steps: 3, notes: ['quick run: SmolLM-135M shape with 4 layers'] };
  return { shape: SMOLLM_135M, context: 1024, steps: 4, notes: [] };
}

export function decodeMarkdown(r: DecodeBenchResult): string {
  const s = r.shape;
  const md = [
    `## Decode with long contexts: LLaMA hidden ${s.hidden}, ${s.layers} layers, ${s.heads} heads / ${s.kvHeads} KV heads, vocab ${s.vocab} (random weights)`,
    '',
    '| batch | context | cached tokens | ms/step | ms per sequence-token | tokens/s | × batch 1 (per sequence-token) | attention ms (one layer) | attention µs per sequence-token | attention × batch 1 |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const w of r.rows) {
    if (w.error) md.push(`| ${w.batch} | ${w.context} | ${w.cachedTokens} | error: ${w.error} | | | | | | |`);
    else
      md.push(
        `| ${w.batch} | ${w.context} | ${w.cachedTokens} | ${w.ms.toFixed(1)} | ${w.msPerSeqToken.toFixed(2)} | ${w.tokensPerS.toFixed(0)} | ${w.vsBatch1?.toFixed(2) ?? 'n/a'} | ${w.attentionMs.toFixed(2)} | ${(1000 * w.attentionMsPerSeqToken).toFixed(1)} | ${w.attentionVsBatch1?.toFixed(2) ?? 'n/a'} |`,
      );
  }
  md.push('');
  md.push(
    `Target: batch ${r.target.batch} ≤ 1.5 × batch 1 per sequence-token — whole step ${r.target.ratio === undefined ? 'not measured' : `${r.target.ratio.toFixed(2)}×, ${r.target.met ? 'met' : 'not met'}`}; attention alone ${r.target.attentionRatio === undefined ? 'not measured' : `${r.target.attentionRatio.toFixed(2)}×, ${r.target.attentionMet ? 'met' : 'not met'}`} (the step shares weight reads across the batch, so the attention ratio is the one that shows whether a query reads only its own sequence's keys).`,
  );
  return md.join('\n');
}
