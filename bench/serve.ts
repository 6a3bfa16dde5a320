// Serving benchmark (`npm run bench -- --suite serve`): the Engine (continuous batching, one
// stacked adapter set) on the bundled model with 1, 16, 256 (and with --full 1,000) distinct
// PEFT adapters of mixed ranks (8, 16, 32, 64), requests arriving at a fixed rate, each on its
// own adapter (request i on adapter i mod N), greedy. Per adapter count: generated tokens per
// second over the whole run, per-token latency (gaps between a request's tokens) p50 / p99,
// time to first token p50, and the device bytes the stacked adapters take.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Backend } from '../src/backend/backend.js';
import { loadModel } from '../src/model/load.js';
import { DEFAULT_MODEL_DIR } from '../src/mote/default_model_dir.js';
import { createMote } from '../src/mote/bundle.js';
import { saveMote } from '../src/mote/bundle_io.js';
import { SHARED_EXPERT, moteConfig } from '../src/mote/steps.js';
import { Engine } from '../src/serve/engine.js';

export interface ServeBenchOptions {
  adapterCounts: number[];
  /** Requests per adapter count. */
  requests: number;
  promptTokens: number;
  newTokens: number;
  /** Arrivals per second (0: all at once). */
  rate: number;
  maxSequences: number;
  log: (line: string) => void;
}

export interface ServeRow {
  adapters: number;
  /** Fraction of the adapters' bytes the device budget holds (1: all resident). */
  budget: number;
  pageIns: number;
  requests: number;
  tokens: number;
  seconds: number;
  tokensPerS: number;
  latencyP50Ms: number;
  latencyP99Ms: number;
  ttftP50Ms: number;
  /** Bytes of the stacked A and B tensors (padded to the largest rank). */
  adapterBytes: number;
  loadSeconds: number;
}

export interface ServeBenchResult {
  rows: ServeRow[];
  /** Throughput at the most adapters over that at 16 (the S-LoRA comparison). */
  throughputRatio?: { from: number; to: number; ratio: number };
}

const RANKS = [8, 16, 32, 64];

function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * (s.length - 1) + 0.5))]!;
}

/** Writes ≥ n PEFT adapter folders (the experts of random MoTE bundles, ranks cycling 8…64). */
async function adapterFolders(backend: Backend, dir: string, n: number, log: (l: string) => void): Promise<string[]> {
  const model = await loadModel(DEFAULT_MODEL_DIR, { backend });
  const out: string[] = [];
  try {
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
      for (const e of names) out.push(path.join(bdir, e));
      if (b % 16 === 15) log(`  ${out.length} adapter folders written`);
    }
  } finally {
    model.dispose();
  }
  return out.slice(0, n);
}

export async function runServeBench(backend: Backend, o: ServeBenchOptions): Promise<ServeBenchResult> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-serve-bench-'));
  try {
    const maxN = Math.max(...o.adapterCounts);
    o.log(`writing ${maxN} adapter folders (ranks ${RANKS.join(', ')})…`);
    const folders = await adapterFolders(backend, tmp, maxN, o.log);
    const model = await loadModel(DEFAULT_MODEL_DIR, { backend });
    const rows: ServeRow[] = [];
    try {
      const V = model.config.vocabSize;
      const maxN = Math.max(...o.adapterCounts);
      const runs = [...o.adapterCounts.map((n) => ({ n, budget: 1 })), ...(maxN >= 16 ? [{ n: maxN, budget: 0.25 }] : [])];
      let fullBytes = 0;
      for (const { n, budget } of runs) {
        const engine = new Engine(model, {
          maxSequences: o.maxSequences,
          ...(budget < 1 ? { adapterBudgetBytes: Math.ceil(fullBytes * budget) } : {}),
        });
        try {
          const t0 = performance.now();
          await engine.addAdapters(folders.slice(0, n).map((dir, i) => ({ name: `a${i}`, dir })));
          const loadSeconds = (performance.now() - t0) / 1e3;
          // A warm-up request compiles and allocates what the run needs.
          await engine.submit({ prompt: [1, 5, 9], maxNewTokens: 4, adapter: 'a0' }).result;
          const gaps: number[] = [];
          const ttft: number[] = [];
          let tokens = 0;
          const start = performance.now();
          const runs: Promise<void>[] = [];
          for (let i = 0; i < o.requests; i++) {
            const prompt = Array.from({ length: o.promptTokens }, (_, k) => 3 + ((i * 131 + k * 17) % (V - 3)));
            const arrive = o.rate > 0 ? (i * 1000) / o.rate : 0;
            runs.push(
              (async () => {
                if (arrive > 0) await new Promise((r) => setTimeout(r, arrive - (performance.now() - start)));
                const sent = performance.now();
                let last = sent;
                const s = engine.submit({ prompt, maxNewTokens: o.newTokens, adapter: `a${i % n}` });
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
          await Promise.all(runs);
          const seconds = (performance.now() - start) / 1e3;
          const set = engine.adapterBytes();
          if (budget === 1 && n === maxN) fullBytes = set;
          const row: ServeRow = {
            adapters: n,
            budget,
            pageIns: engine.paging.pageIns,
            requests: o.requests,
            tokens,
            seconds,
            tokensPerS: tokens / seconds,
            latencyP50Ms: quantile(gaps, 0.5),
            latencyP99Ms: quantile(gaps, 0.99),
            ttftP50Ms: quantile(ttft, 0.5),
            adapterBytes: set,
            loadSeconds,
          };
          rows.push(row);
          o.log(
            `  ${n} adapters${budget < 1 ? ` (budget ${budget} of their bytes)` : ''}: ${row.tokensPerS.toFixed(0)} tok/s, per-token p50 ${row.latencyP50Ms.toFixed(1)} ms, p99 ${row.latencyP99Ms.toFixed(1)} ms, TTFT p50 ${row.ttftP50Ms.toFixed(1)} ms (load ${loadSeconds.toFixed(1)} s)`,
          );
        } finally {
          await engine.close();
        }
      }
    } finally {
      model.dispose();
    }
    const r16 = rows.find((r) => r.adapters === 16 && r.budget === 1);
    const top = rows.filter((r) => r.budget === 1).at(-1)!;
    return {
      rows,
      ...(r16 && top.adapters > 16 ? { throughputRatio: { from: 16, to: top.adapters, ratio: top.tokensPerS / r16.tokensPerS } } : {}),
    };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

export function serveMarkdown(r: ServeBenchResult, o: ServeBenchOptions): string {
  const lines = [
    `Engine on the bundled model (4 layers, hidden 128), ${o.requests} requests of ${o.promptTokens} prompt tokens and ${o.newTokens} new tokens (greedy), ` +
      `${o.rate > 0 ? `arriving at ${o.rate}/s` : 'all at once'}, at most ${o.maxSequences} decoding together; request i on adapter i mod N; ranks 8/16/32/64 (stacked, padded to 64).`,
    '',
    '| adapters | budget | page-ins | tokens/s | per-token p50 (ms) | p99 (ms) | TTFT p50 (ms) | adapter bytes | load (s) |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.rows.map(
      (x) =>
        `| ${x.adapters} | ${x.budget === 1 ? 'all' : `${x.budget * 100}%`} | ${x.pageIns} | ${x.tokensPerS.toFixed(0)} | ${x.latencyP50Ms.toFixed(2)} | ${x.latencyP99Ms.toFixed(2)} | ${x.ttftP50Ms.toFixed(1)} | ${(x.adapterBytes / 2 ** 20).toFixed(1)} MiB | ${x.loadSeconds.toFixed(1)} |`,
    ),
  ];
  if (r.throughputRatio)
    lines.push(
      '',
      `Throughput at ${r.throughputRatio.to} adapters / at ${r.throughputRatio.from}: ${r.throughputRatio.ratio.toFixed(3)} (target ≥ 0.95; S-LoRA: 0.945 from 5 to 2,000).`,
    );
  return lines.join('\n');
}
