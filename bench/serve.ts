// Serving benchmark (`node dist/bench/run.js --suite serve`): the Engine (continuous batching,
// adapters in one rank-unit pool, DESIGN §8) on the bundled model and on the SmolLM-135M shape
// (random weights; fewer layers with --serve-layers, all seven linears adapted), with 1, 16, 256
// (and with --full 1,000) adapters of mixed ranks 8, 16, 32, 64, greedy.
//
// Per model and adapter count: requests arrive at a fixed mean rate (Poisson, seeded), request i
// on adapter (37·i) mod N (distinct adapters while N ≥ requests); generated tokens per second
// from the first arrival to the last token, per-token latency (gaps between a request's tokens)
// p50 / p99, time to first token p50, the pool's bytes. The largest count runs again with a
// device budget of a quarter of its adapters' bytes (paging, LRU).
//
// Then, on the 16-adapter engine:
//   - engine vs generate(): the same 64 requests (distinct adapters, all at once) through the
//     engine and through generate() with a router over an AdapterPool holding the same
//     adapters (the same kernels; the difference is the engine's host work per step); the
//     tokens must agree;
//   - adapter-load stall: 32 streams decode while addAdapter loads a new rank-64 adapter (read
//     from its folder, paged in between two steps); the gaps between tokens of the running
//     streams that overlap the load vs the median gap (one decode step).
//
// 1,000 adapters are registered from a smaller number of distinct folders (the engine reads and
// pages in each registration separately: the same bytes as distinct files).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Backend } from '../src/backend/backend.js';
import { loadModel, modelFromTensors } from '../src/model/load.js';
import { parseHFConfig, LINEAR_MODULES, linearShape, type ModelConfig } from '../src/model/config.js';
import type { LlamaModel } from '../src/model/llama.js';
import { DEFAULT_MODEL_DIR } from '../src/mote/default_model_dir.js';
import { createMote } from '../src/mote/bundle.js';
import { saveMote } from '../src/mote/bundle_io.js';
import { SHARED_EXPERT, moteConfig } from '../src/mote/steps.js';
import { Engine } from '../src/serve/engine.js';
import { generate, type GenerateRequest } from '../src/generate/generate.js';
import { readAdapter, stackAdapters, type ReadAdapter } from '../src/adapters/peft_io.js';
import { freeStacks, uploadStacks } from '../src/adapters/stacks.js';
import { AdapterPool } from '../src/adapters/pool.js';
import { openSource } from '../src/io/source.js';
import { MAX_LORA_SLOTS, loraRouting } from '../src/ops/lora.js';
import { mulberry32 } from '../src/rng.js';
import { SMOLLM_135M, modelConfigJson, randomWeights } from './model.js';

export type ServeModel = 'bundled' | 'smollm';

export interface ServeBenchOptions {
  models: ServeModel[];
  /** Layers of the SmolLM-135M shape (30 in the real model). */
  smollmLayers: number;
  adapterCounts: number[];
  /** Requests per adapter count. */
  requests: number;
  promptTokens: number;
  newTokens: number;
  /** Mean arrivals per second (Poisson, seeded) per model; 0: all at once. */
  rate: Record<ServeModel, number>;
  maxSequences: number;
  /** Distinct adapter folders written (registrations cycle over them). */
  distinctFolders: number;
  seed: number;
  /** Runs of every configuration (interleaved); the fastest is kept. */
  repeat: number;
  log: (line: string) => void;
}

export interface ServeRow {
  model: ServeModel;
  adapters: number;
  /** Fraction of the adapters' bytes the device budget holds (1: all resident). */
  budget: number;
  pageIns: number;
  evictions: number;
  requests: number;
  tokens: number;
  seconds: number;
  tokensPerS: number;
  /** Process CPU seconds (every thread: user + system) over the run, and tokens per CPU second: steadier than wall time on a shared machine. */
  cpuSeconds: number;
  tokensPerCpuS: number;
  latencyP50Ms: number;
  latencyP99Ms: number;
  ttftP50Ms: number;
  /** Bytes of the pool entries the resident adapters hold (at the end). */
  adapterBytes: number;
  /** Bytes the pool allocated. */
  poolBytes: number;
  loadSeconds: number;
  /** Engine steps in the run, mean ms per step in BatchDecoder.step and before it (admission, paging). */
  steps: number;
  stepMs: number;
  hostMs: number;
}

export interface ServeModelResult {
  model: ServeModel;
  shape: string;
  rows: ServeRow[];
  /** Throughput at the most adapters over that at 16 (target ≥ 0.95), and with the quarter budget (≥ 0.75). */
  throughputRatio?: { from: number; to: number; ratio: number; pagedRatio?: number; cpuRatio: number; pagedCpuRatio?: number };
  /** The engine's wall time for 64 requests over generate()'s on the same batch (target ≤ 1.1). */
  engineVsGenerate?: {
    requests: number;
    engineS: number;
    generateS: number;
    ratio: number;
    msPerStepEngine: number;
    msPerStepGenerate: number;
    sameTokens: boolean;
  };
  /** Gaps of running streams while a rank-64 adapter loads vs the normal gap (target: extra < one decode step). */
  loadStall?: LoadStall[];
  /**
   * The bound the adapters' kernels set: one bare decode forward of 64 tokens routed as the
   * engine routes them (token i on adapter 37·i mod N) through a pool of those adapters, at 16
   * and at the most adapters, and the f32 bytes of the distinct adapters such a step reads.
   */
  forwardBound?: { n: number; ms: number; prefillMs: number; adapterBytesRead: number; paddedMs?: number }[];
  notes: string[];
}

export interface LoadStall {
  /** The pool had to grow (double, one copy of every entry) to take the adapter. */
  grew: boolean;
  loads: number;
  /** Median addAdapter time. */
  addMs: number;
  /** Gaps of a running stream between two tokens: median and p90 away from any load, median and max overlapping a load. */
  normalGapMs: number;
  normalGapP90Ms: number;
  duringLoadP50Ms: number;
  maxGapDuringLoadMs: number;
  /** Median gap during a load minus the normal one, in ms and in decode steps. */
  extraMs: number;
  extraInSteps: number;
}

export interface ServeBenchResult {
  models: ServeModelResult[];
}

const RANKS = [8, 16, 32, 64];

function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * (s.length - 1) + 0.5))]!;
}

/** Device (and host) bytes of one adapter of rank r on every linear of `cfg` (f32). */
function adapterBytesOf(cfg: ModelConfig, r: number): number {
  let n = 0;
  for (const m of LINEAR_MODULES) {
    const [Hout, Hin] = linearShape(cfg, m);
    n += 4 * r * (Hin + Hout);
  }
  return n * cfg.numLayers;
}

/** Writes n PEFT adapter folders (the experts of random MoTE bundles, bundle b of rank RANKS[b mod 4]). */
async function adapterFolders(
  model: LlamaModel,
  dir: string,
  n: number,
  log: (l: string) => void,
): Promise<{ dir: string; rank: number }[]> {
  const out: { dir: string; rank: number }[] = [];
  const names = [...moteConfig().steps, SHARED_EXPERT];
  for (let b = 0; out.length < n; b++) {
    const rank = RANKS[b % RANKS.length]!;
    const bundle = createMote(model, { rank, loraAlpha: 2 * rank }, { seed: b, init: 'random' });
    const bdir = path.join(dir, `bundle-${b}`);
    try {
      await saveMote(bundle, bdir);
    } finally {
      bundle.dispose();
    }
    for (const e of names) out.push({ dir: path.join(bdir, e), rank });
    if (b % 16 === 15) log(`  ${out.length} adapter folders written`);
  }
  return out.slice(0, n);
}

async function openBenchModel(backend: Backend, which: ServeModel, layers: number): Promise<{ model: LlamaModel; shape: string }> {
  if (which === 'bundled') {
    const model = await loadModel(DEFAULT_MODEL_DIR, { backend });
    const c = model.config;
    return {
      model,
      shape: `bundled model (${c.numLayers} layers, hidden ${c.hiddenSize}, intermediate ${c.intermediateSize}, vocab ${c.vocabSize})`,
    };
  }
  const shape = { ...SMOLLM_135M, layers };
  const cfg = parseHFConfig(modelConfigJson(shape), 'bench config.json');
  const host = randomWeights(cfg);
  const model = modelFromTensors(cfg, host, { backend, dtype: 'f32' });
  host.clear();
  return {
    model,
    shape: `SmolLM-135M shape (hidden 576, intermediate 1536, 9 heads, 3 KV heads, vocab 49152), random f32 weights, ${layers} of its 30 layers`,
  };
}

/** Poisson arrival times (ms from the start), seeded. */
function arrivals(n: number, rate: number, seed: number): number[] {
  if (rate <= 0) return new Array<number>(n).fill(0);
  const r = mulberry32(seed);
  const out: number[] = [];
  let t = 0;
  for (let i = 0; i < n; i++) {
    out.push(t);
    t += (-Math.log(1 - r()) / rate) * 1000;
  }
  return out;
}

const promptOf = (i: number, P: number, V: number) => Array.from({ length: P }, (_, k) => 3 + ((i * 131 + k * 17) % (V - 3)));

export async function runServeBench(backend: Backend, o: ServeBenchOptions): Promise<ServeBenchResult> {
  const models: ServeModelResult[] = [];
  for (const which of o.models) models.push(await runOne(backend, o, which));
  return { models };
}

async function runOne(backend: Backend, o: ServeBenchOptions, which: ServeModel): Promise<ServeModelResult> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-serve-bench-'));
  const { model, shape } = await openBenchModel(backend, which, o.smollmLayers);
  const notes: string[] = [];
  const rows: ServeRow[] = [];
  const res: ServeModelResult = { model: which, shape, rows, notes };
  o.log(`${which}: ${shape}`);
  try {
    const cfg = model.config;
    const V = cfg.vocabSize;
    const D = Math.min(o.distinctFolders, Math.max(...o.adapterCounts));
    o.log(`  writing ${D} adapter folders (ranks ${RANKS.join(', ')})…`);
    const folders = await adapterFolders(model, tmp, Math.max(D, 16), o.log);
    // the load-stall adapter: a rank-64 folder, registered again under a new name (read and paged in like any new adapter)
    const big = folders.find((f) => f.rank === 64)!;
    const folderOf = (i: number) => folders[i % D]!;
    // Memory guard: host copies + pool (cpu: the same RAM).
    const counts = o.adapterCounts.filter((n) => {
      let bytes = 0;
      for (let i = 0; i < n; i++) bytes += adapterBytesOf(cfg, folderOf(i).rank);
      if (2 * bytes > 0.4 * os.freemem()) {
        notes.push(
          `${n} adapters skipped: they need ${((2 * bytes) / 2 ** 30).toFixed(1)} GiB (host copies + pool), more than 40% of the free memory`,
        );
        return false;
      }
      return true;
    });
    const maxN = Math.max(...counts);
    const runs = [...counts.map((n) => ({ n, budget: 1 })), ...(maxN >= 16 ? [{ n: maxN, budget: 0.25 }] : [])];
    let fullBytes = 0;
    for (let rep = 0; rep < o.repeat; rep++)
      for (const { n, budget } of runs) {
        const engine = new Engine(model, {
          maxSequences: o.maxSequences,
          ...(budget < 1 ? { adapterBudgetBytes: Math.ceil(fullBytes * budget) } : {}),
        });
        try {
          const t0 = performance.now();
          await engine.addAdapters(Array.from({ length: n }, (_, i) => ({ name: `a${i}`, dir: folderOf(i).dir })));
          const loadSeconds = (performance.now() - t0) / 1e3;
          // A warm-up request compiles and allocates what the run needs.
          await engine.submit({ prompt: [1, 5, 9], maxNewTokens: 4, adapter: 'a0' }).result;
          const paged0 = { ...engine.paging };
          const stats0 = { ...engine.stats };
          const gaps: number[] = [];
          const ttft: number[] = [];
          let tokens = 0;
          const at = arrivals(o.requests, o.rate[which], o.seed);
          const start = performance.now();
          const cpu0 = process.cpuUsage();
          const streams: Promise<void>[] = [];
          for (let i = 0; i < o.requests; i++) {
            const prompt = promptOf(i, o.promptTokens, V);
            streams.push(
              (async () => {
                const wait = at[i]! - (performance.now() - start);
                if (wait > 0) await new Promise((r) => setTimeout(r, wait));
                const sent = performance.now();
                let last = sent;
                const s = engine.submit({ prompt, maxNewTokens: o.newTokens, adapter: `a${(37 * i) % n}` });
                for await (const _ of s) {
                  const now = performance.now();
                  if (last === sent) ttft.push(now - sent);
                  else gaps.push(now - last);
                  last = now;
                  tokens++;
                }
              })(),
            );
          }
          await Promise.all(streams);
          const seconds = (performance.now() - start) / 1e3;
          const cpu = process.cpuUsage(cpu0);
          const cpuSeconds = (cpu.user + cpu.system) / 1e6;
          const set = engine.adapterBytes();
          if (budget === 1 && n === maxN) fullBytes = set;
          const row: ServeRow = {
            model: which,
            adapters: n,
            budget,
            pageIns: engine.paging.pageIns - paged0.pageIns,
            evictions: engine.paging.evictions - paged0.evictions,
            requests: o.requests,
            tokens,
            seconds,
            tokensPerS: tokens / seconds,
            cpuSeconds,
            tokensPerCpuS: tokens / cpuSeconds,
            latencyP50Ms: quantile(gaps, 0.5),
            latencyP99Ms: quantile(gaps, 0.99),
            ttftP50Ms: quantile(ttft, 0.5),
            adapterBytes: set,
            poolBytes: engine.poolInfo().allocatedBytes,
            loadSeconds,
            steps: engine.stats.steps - stats0.steps,
            stepMs: (engine.stats.stepMs - stats0.stepMs) / Math.max(1, engine.stats.steps - stats0.steps),
            hostMs: (engine.stats.hostMs - stats0.hostMs) / Math.max(1, engine.stats.steps - stats0.steps),
          };
          // --repeat: every configuration runs that many times (interleaved), the fastest run is kept
          const prev = rows.findIndex((r) => r.adapters === n && r.budget === budget);
          if (prev < 0) rows.push(row);
          else if (row.tokensPerS > rows[prev]!.tokensPerS) rows[prev] = row;
          o.log(
            `  ${n} adapters${budget < 1 ? ` (budget ${budget} of their bytes)` : ''}: ${row.tokensPerS.toFixed(0)} tok/s (${row.tokensPerCpuS.toFixed(0)} per CPU-s), per-token p50 ${row.latencyP50Ms.toFixed(1)} ms, p99 ${row.latencyP99Ms.toFixed(1)} ms, TTFT p50 ${row.ttftP50Ms.toFixed(1)} ms, ${row.pageIns} page-ins, ${row.steps} steps of ${row.stepMs.toFixed(1)} ms + ${row.hostMs.toFixed(2)} ms before (load ${loadSeconds.toFixed(1)} s)`,
          );
          if (n === 16 && budget === 1 && rep === 0) {
            res.engineVsGenerate = await engineVsGenerate(engine, model, o, folderOf, n);
            o.log(`  engine vs generate(): ${res.engineVsGenerate.ratio.toFixed(3)} (same tokens: ${res.engineVsGenerate.sameTokens})`);
            // twice: the first load may grow the pool (one copy of every entry), the second reuses the first's freed entries
            res.loadStall = [await loadStall(engine, o, big.dir, V, 1), await loadStall(engine, o, big.dir, V, 8)];
            for (const ls of res.loadStall)
              o.log(
                `  load stall${ls.grew ? ' (pool grew)' : ''}: ${ls.loads} loads, addAdapter ${ls.addMs.toFixed(1)} ms; gap during a load p50 ${ls.duringLoadP50Ms.toFixed(1)} max ${ls.maxGapDuringLoadMs.toFixed(1)} ms vs ${ls.normalGapMs.toFixed(1)} ms (p90 ${ls.normalGapP90Ms.toFixed(1)}) otherwise`,
              );
          }
        } finally {
          await engine.close();
        }
      }
    res.forwardBound = [];
    for (const n of [0, ...counts.filter((c) => c >= 16)]) {
      const fb = await forwardBound(model, o, folderOf, n);
      res.forwardBound.push(fb);
      o.log(
        `  bare forwards on ${n} adapters: decode (64 tokens) ${fb.ms.toFixed(1)} ms${fb.paddedMs !== undefined ? ` (padded stack: ${fb.paddedMs.toFixed(1)} ms)` : ''} (${(fb.adapterBytesRead / 2 ** 20).toFixed(0)} MiB of adapters read), prefill (64 × ${o.promptTokens} tokens) ${fb.prefillMs.toFixed(1)} ms`,
      );
    }
    const r16 = rows.find((r) => r.adapters === 16 && r.budget === 1);
    const top = rows.filter((r) => r.budget === 1).at(-1)!;
    const paged = rows.find((r) => r.budget < 1);
    if (r16 && top.adapters > 16)
      res.throughputRatio = {
        from: 16,
        to: top.adapters,
        ratio: top.tokensPerS / r16.tokensPerS,
        cpuRatio: top.tokensPerCpuS / r16.tokensPerCpuS,
        ...(paged ? { pagedRatio: paged.tokensPerS / r16.tokensPerS, pagedCpuRatio: paged.tokensPerCpuS / r16.tokensPerCpuS } : {}),
      };
  } finally {
    model.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return res;
}

/** The same batch through the engine (on `engine`, adapters a0…) and through generate() with a router over a pool of the same adapters. */
async function engineVsGenerate(
  engine: Engine,
  model: LlamaModel,
  o: ServeBenchOptions,
  folderOf: (i: number) => { dir: string },
  n: number,
): Promise<NonNullable<ServeModelResult['engineVsGenerate']>> {
  const R = Math.min(64, o.maxSequences);
  const V = model.config.vocabSize;
  const reqs: GenerateRequest[] = Array.from({ length: R }, (_, i) => ({
    prompt: promptOf(1000 + i, o.promptTokens, V),
    maxNewTokens: o.newTokens,
  }));
  const adapterOf = (i: number) => (37 * i) % n;
  const pool = new AdapterPool(model.backend, model.config, { unit: engine.poolInfo().unit });
  try {
    const entries: Int32Array[] = [];
    for (let a = 0; a < n; a++) entries.push(pool.add(`a${a}`, await readAdapter(model.config, openSource(folderOf(a).dir))));
    const router = {
      K: MAX_LORA_SLOTS,
      variableK: true,
      L: pool.capacity,
      stacks: pool.stacks,
      slotsFor: (i: number) => {
        const e = [...entries[adapterOf(i)]!];
        return { slots: e, weights: e.map(() => 1) };
      },
    };
    let engineS = Infinity,
      generateS = Infinity;
    let same = true;
    for (let round = 0; round < 4; round++) {
      // alternate which goes first (a shared machine's load drifts)
      const runEngine = async () => {
        const t = performance.now();
        const r = await Promise.all(reqs.map((q, i) => engine.submit({ ...q, adapter: `a${adapterOf(i)}` }).result));
        engineS = Math.min(engineS, (performance.now() - t) / 1e3);
        return r;
      };
      const runGenerate = async () => {
        const t = performance.now();
        const r = await generate(model, reqs, { router });
        generateS = Math.min(generateS, (performance.now() - t) / 1e3);
        return r;
      };
      let viaEngine, viaGenerate;
      if (round % 2 === 0) {
        viaEngine = await runEngine();
        viaGenerate = await runGenerate();
      } else {
        viaGenerate = await runGenerate();
        viaEngine = await runEngine();
      }
      viaEngine.forEach((r, i) => {
        if (r.tokens.join() !== viaGenerate[i]!.tokens.join()) same = false;
      });
    }
    // one prefill step and newTokens − 1 decode steps each
    const steps = o.newTokens;
    return {
      requests: R,
      engineS,
      generateS,
      ratio: engineS / generateS,
      msPerStepEngine: (engineS * 1e3) / steps,
      msPerStepGenerate: (generateS * 1e3) / steps,
      sameTokens: same,
    };
  } finally {
    pool.dispose();
  }
}

/** One decode-shaped forward (64 tokens, one per sequence, token i on adapter 37·i mod n; n = 0: no adapters), median of 9 after 2 warm-ups. */
async function forwardBound(
  model: LlamaModel,
  o: ServeBenchOptions,
  folderOf: (i: number) => { dir: string; rank: number },
  n: number,
): Promise<NonNullable<ServeModelResult['forwardBound']>[number]> {
  const T = Math.min(64, o.maxSequences);
  const P = o.promptTokens;
  const ids = Array.from({ length: T }, (_, t) => 3 + ((t * 17) % (model.config.vocabSize - 3)));
  const pool = new AdapterPool(model.backend, model.config, {});
  let routing: ReturnType<typeof loraRouting> | null = null;
  let prefillRouting: ReturnType<typeof loraRouting> | null = null;
  let paddedMs: number | undefined;
  try {
    let bytes = 0;
    const opts: Parameters<LlamaModel['logits']>[1] = {};
    if (n > 0) {
      const used = [...new Set(Array.from({ length: T }, (_, t) => (37 * t) % n))];
      const entries = new Map<number, Int32Array>();
      const host: ReadAdapter[] = [];
      for (const a of used) {
        host.push(await readAdapter(model.config, openSource(folderOf(a).dir)));
        entries.set(a, pool.add(`a${a}`, host.at(-1)!));
        bytes += adapterBytesOf(model.config, folderOf(a).rank);
      }
      // the same step on the layout the engine had before the pool: one stack padded to the largest rank, K = 1
      const padded = uploadStacks(model.backend, model.config, stackAdapters(model.config, host));
      const prt = loraRouting(
        model.backend,
        Array.from({ length: T }, (_, t) => used.indexOf((37 * t) % n)),
        { K: 1, L: used.length },
      );
      try {
        const pm: number[] = [];
        for (let i = 0; i < 11; i++) {
          const t = performance.now();
          await model.logits(ids, { lora: { stacks: padded, routing: prt } });
          if (i >= 2) pm.push(performance.now() - t);
        }
        paddedMs = quantile(pm, 0.5);
      } finally {
        prt.dispose();
        freeStacks(padded);
      }
      const routes = Array.from({ length: T }, (_, t) => entries.get((37 * t) % n)!);
      const K = Math.max(...routes.map((e) => e.length));
      const slots = new Int32Array(T * K).fill(-1);
      const weight = new Float32Array(T * K);
      routes.forEach((e, t) =>
        e.forEach((x, k) => {
          slots[t * K + k] = x;
          weight[t * K + k] = 1;
        }),
      );
      routing = loraRouting(model.backend, slots, { K, L: pool.capacity, weight });
      opts.lora = { stacks: pool.stacks, routing };
      const ps = new Int32Array(T * P * K).fill(-1);
      const pw = new Float32Array(T * P * K);
      for (let t = 0; t < T * P; t++) {
        ps.set(slots.subarray(Math.floor(t / P) * K, Math.floor(t / P) * K + K), t * K);
        pw.set(weight.subarray(Math.floor(t / P) * K, Math.floor(t / P) * K + K), t * K);
      }
      prefillRouting = loraRouting(model.backend, ps, { K, L: pool.capacity, weight: pw });
    }
    // the prefill of T prompts of P tokens (one forward, logits of each prompt's last token)
    const pids = Array.from({ length: T * P }, (_, t) => 3 + ((t * 29) % (model.config.vocabSize - 3)));
    const pre: Parameters<LlamaModel['logits']>[1] = {
      seq: Array.from({ length: T * P }, (_, t) => Math.floor(t / P)),
      logitRows: Array.from({ length: T }, (_, s) => s * P + P - 1),
      ...(prefillRouting ? { lora: { stacks: pool.stacks, routing: prefillRouting } } : {}),
    };
    const pms: number[] = [];
    for (let i = 0; i < 4; i++) {
      const t = performance.now();
      await model.logits(pids, pre);
      if (i >= 1) pms.push(performance.now() - t);
    }
    const ms: number[] = [];
    for (let i = 0; i < 11; i++) {
      const t = performance.now();
      await model.logits(ids, opts);
      if (i >= 2) ms.push(performance.now() - t);
    }
    return {
      n,
      ms: quantile(ms, 0.5),
      prefillMs: quantile(pms, 0.5),
      adapterBytesRead: bytes,
      ...(paddedMs !== undefined ? { paddedMs } : {}),
    };
  } finally {
    routing?.dispose();
    prefillRouting?.dispose();
    pool.dispose();
  }
}

/**
 * 32 streams decode while addAdapter loads rank-64 adapters, one at a time, `loads` times (each
 * read from its folder and paged in between two steps, then removed): the gaps of stream 0
 * (all streams get their tokens in the same step) that overlap a load vs its other gaps.
 */
async function loadStall(engine: Engine, o: ServeBenchOptions, dir: string, V: number, loads: number): Promise<LoadStall> {
  const grows = engine.poolInfo().grows;
  const S = Math.min(32, o.maxSequences);
  const every = 6;
  const N = 8 + every * (loads + 1);
  const times: number[] = [];
  const windows: [number, number][] = [];
  let chain: Promise<void> = Promise.resolve();
  await Promise.all(
    Array.from({ length: S }, async (_, i) => {
      const s = engine.submit({ prompt: promptOf(2000 + i, o.promptTokens, V), maxNewTokens: N, adapter: `a${i % 16}` });
      for await (const _ of s) {
        if (i !== 0) continue;
        times.push(performance.now());
        const k = times.length;
        if (k >= 8 && (k - 8) % every === 0 && windows.length < loads) {
          const w: [number, number] = [performance.now(), Infinity];
          windows.push(w);
          const name = `stall-64-${windows.length}`;
          chain = chain.then(async () => {
            await engine.addAdapter(name, dir);
            w[1] = performance.now();
            await engine.removeAdapter(name);
          });
        }
      }
    }),
  );
  await chain;
  const normal: number[] = [];
  const during: number[] = [];
  for (let k = 2; k < times.length; k++) {
    const a = times[k - 1]!,
      b = times[k]!;
    const hit = windows.filter(([s, e]) => b >= s && a <= e).length;
    if (hit) during.push(b - a);
    else normal.push(b - a);
  }
  const normalGap = quantile(normal, 0.5);
  const maxDuring = Math.max(...during);
  return {
    grew: engine.poolInfo().grows > grows,
    loads: windows.length,
    addMs: quantile(
      windows.map(([s, e]) => e - s),
      0.5,
    ),
    normalGapMs: normalGap,
    normalGapP90Ms: quantile(normal, 0.9),
    duringLoadP50Ms: quantile(during, 0.5),
    maxGapDuringLoadMs: maxDuring,
    extraMs: quantile(during, 0.5) - normalGap,
    extraInSteps: (quantile(during, 0.5) - normalGap) / normalGap,
  };
}

export function serveMarkdown(r: ServeBenchResult, o: ServeBenchOptions): string {
  const lines: string[] = [];
  for (const m of r.models) {
    lines.push(
      `### ${m.shape}`,
      '',
      `${o.repeat > 1 ? `Best of ${o.repeat} interleaved runs per row. ` : ''}${o.requests} requests of ${o.promptTokens} prompt tokens and ${o.newTokens} new tokens (greedy), Poisson arrivals at ${o.rate[m.model]}/s (seed ${o.seed}), ` +
        `at most ${o.maxSequences} decoding together; request i on adapter 37·i mod N; ranks 8/16/32/64 in a pool of unit 8 (no padding), all seven linears adapted.`,
      '',
      '| adapters | budget | page-ins | tokens/s | tokens/CPU-s | per-token p50 (ms) | p99 (ms) | TTFT p50 (ms) | steps | ms/step (+ before) | adapter bytes | pool bytes | load (s) |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
      ...m.rows.map(
        (x) =>
          `| ${x.adapters} | ${x.budget === 1 ? 'all' : `${x.budget * 100}%`} | ${x.pageIns} | ${x.tokensPerS.toFixed(0)} | ${x.tokensPerCpuS.toFixed(0)} | ${x.latencyP50Ms.toFixed(2)} | ${x.latencyP99Ms.toFixed(2)} | ${x.ttftP50Ms.toFixed(1)} | ${x.steps} | ${x.stepMs.toFixed(1)} (+${x.hostMs.toFixed(2)}) | ${(x.adapterBytes / 2 ** 20).toFixed(1)} MiB | ${(x.poolBytes / 2 ** 20).toFixed(1)} MiB | ${x.loadSeconds.toFixed(1)} |`,
      ),
      '',
    );
    const t = m.throughputRatio;
    if (t)
      lines.push(
        `- throughput at ${t.to} adapters / at ${t.from}: **${t.ratio.toFixed(3)}** in tokens/s, **${t.cpuRatio.toFixed(3)}** in tokens per CPU-second (target ≥ 0.95)` +
          (t.pagedRatio !== undefined
            ? `; with the budget at a quarter of the bytes: **${t.pagedRatio.toFixed(3)}** / **${t.pagedCpuRatio!.toFixed(3)}** (target ≥ 0.75)`
            : ''),
      );
    const g = m.engineVsGenerate;
    if (g)
      lines.push(
        `- engine vs generate() on the same ${g.requests} requests (16 adapters, all at once): ${g.engineS.toFixed(2)} s vs ${g.generateS.toFixed(2)} s, ` +
          `${g.msPerStepEngine.toFixed(1)} vs ${g.msPerStepGenerate.toFixed(1)} ms per step: **${g.ratio.toFixed(3)}×** (target ≤ 1.1×); same tokens: ${g.sameTokens}`,
      );
    for (const s of m.loadStall ?? [])
      lines.push(
        `- adapter-load stall, ${s.loads} load${s.loads > 1 ? 's' : ''} of a rank-64 adapter while 32 streams decode${s.grew ? ' (the pool grew: one copy of every entry)' : ' (no pool growth)'}: addAdapter ${s.addMs.toFixed(1)} ms (median); ` +
          `gap between tokens during a load ${s.duringLoadP50Ms.toFixed(1)} ms (median; max ${s.maxGapDuringLoadMs.toFixed(1)}) vs ${s.normalGapMs.toFixed(1)} ms (p90 ${s.normalGapP90Ms.toFixed(1)}) otherwise: **${s.extraInSteps.toFixed(2)} decode steps extra** (target < 1)`,
      );
    const fb = m.forwardBound ?? [];
    if (fb.length > 1) {
      const f16 = fb.find((x) => x.n === 16);
      const top = fb.at(-1)!;
      lines.push(
        `- the kernels' bound: one bare decode forward of 64 tokens takes ${fb.map((x) => `${x.ms.toFixed(1)} ms on ${x.n} adapters${x.n ? ` (${(x.adapterBytesRead / 2 ** 20).toFixed(0)} MiB of them read)` : ''}`).join(', ')}` +
          (f16 && top.n > 16 ? ` (${top.n} / 16: **${(f16.ms / top.ms).toFixed(3)}**)` : '') +
          `; the same steps on one stack padded to rank 64 (the engine's layout before the pool): ${fb
            .filter((x) => x.paddedMs !== undefined)
            .map((x) => `${x.paddedMs!.toFixed(1)} ms on ${x.n}`)
            .join(', ')}` +
          `; the prefill of 64 prompts of ${o.promptTokens} tokens ${fb.map((x) => `${x.prefillMs.toFixed(1)} ms on ${x.n}`).join(', ')}` +
          (f16 && top.n > 16 ? ` (${top.n} / 16: **${(f16.prefillMs / top.prefillMs).toFixed(3)}**)` : ''),
      );
    }
    for (const n of m.notes) lines.push(`- note: ${n}`);
    lines.push('');
  }
  return lines.join('\n');
}
