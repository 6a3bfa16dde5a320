// Multi-LoRA benchmarks: `npm run bench -- --backend cpu|webgpu|cuda [--quick] [--filter RE] [--out PATH]`.
// Measures the ceilings (copy bandwidth, matmul FLOP rate) and the LoRA ops with their
// baselines in one run on one backend, prints markdown tables to stdout (progress goes to
// stderr) and writes every row to bench/results/<backend>.json (quick runs: <backend>.quick.json).
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { jsonText } from '../src/io/files.js';
import { cpus, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { openBackend } from '../src/backend/select.js';
import type { Backend, BackendKind } from '../src/backend/backend.js';
import { bestCeilings, CopyProbe, FlopProbe, lastLevelCacheBytes, measureCeilings, type Ceilings } from './ceilings.js';
import { applyRoofline, loraCases, runLoraSuite, type Comparison, type Row, type StrategyChoice, type WeightDType } from './lora.js';
import { median, type TimeOptions } from './timing.js';
import { coldBytesFor, modelBenchDefaults, modelMarkdown, runModelBench } from './model.js';
import { runTorchBaseline, runTrainBench, trainBenchDefaults, trainMarkdown, type TrainBenchResult } from './train.js';
import { runServeBench, serveMarkdown, type ServeBenchOptions, type ServeModel } from './serve.js';
import { decodeBenchDefaults, decodeMarkdown, runDecodeBench } from './decode.js';
import { browserMarkdown, runBrowserBench } from './browser.js';

const USAGE = `usage: npm run bench -- [options]
  --backend cpu|webgpu|cuda   backend to measure (default cpu)
  --suite lora|model|train|serve|decode|browser|all  lora: the multi-LoRA op suite (default); browser: kernels, training
                              and decode in headless Chromium vs Node (bench/results/browser.json); decode: one decode step at batch
                              1/16/64 with 1,024-token contexts (bench/results/<backend>.decode.json); serve: the serving engine with 1, 16,
                              256 (--full: 1,000) adapters of mixed ranks (bench/results/<backend>.serve.json); model: prefill/decode tokens/s of the
                              SmolLM-135M shape with 0, 1, 4, 64 MoTE bundles (bench/results/<backend>.model.json);
                              train: MoTE training tokens/s and peak RSS on that shape, seq 256, with the PyTorch
                              baseline (bench/results/<backend>.train.json); all: lora and model
  --no-baseline               train suite: skip the PyTorch baseline
  --dtype f32|bf16            model suite: weight dtype of the base model (default f32)
  --quick                     short run: T ∈ {1, 64}, distinct ∈ {1, 64}, first H_out only
  --full                      full run even on a software WebGPU adapter (normally forced to --quick, H = 1024)
  --filter RE                 only rows whose name matches RE (case-insensitive), e.g. 'loraApply|baseline'
  --hidden N                  H_in = N, H_out ∈ {N, N·11008/4096} (default 4096; 1024 on software WebGPU)
  --strategy auto|bgmv|sgmv|all   strategy of the LoRA ops (default auto; all = bgmv and sgmv rows)
  --dtypes LIST               extra weight dtypes for loraApply rows (default bf16 in full runs, none in quick)
  --max-time S                seconds benchmark.js may spend per row (default 0.3, quick 0.25)
  --threads N                 cpu worker threads (default: all)
  --repeat N                  lora suite: N times the rounds and the time per row (shared, noisy machines; default 1)
  --cold-mib N                cycle through weight copies of at least N MiB per op (default 2.5 × last-level cache)
  --out PATH                  results file (default bench/results/<backend>.json)
  --serve-models LIST         serve suite: bundled, smollm or both (default bundled,smollm)
  --serve-layers N            serve suite: layers of the SmolLM-135M shape (default 4; the real model has 30)
  --serve-rate R              serve suite: mean Poisson arrivals per second for both models (default 400 bundled, 40 smollm)`;

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

function fail(msg: string): never {
  process.stderr.write(`${msg}\n\n${USAGE}\n`);
  process.exit(2);
}

function parse() {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        backend: { type: 'string', default: 'cpu' },
        suite: { type: 'string', default: 'lora' },
        dtype: { type: 'string', default: 'f32' },
        quick: { type: 'boolean', default: false },
        full: { type: 'boolean', default: false },
        filter: { type: 'string' },
        hidden: { type: 'string' },
        strategy: { type: 'string', default: 'auto' },
        dtypes: { type: 'string' },
        'max-time': { type: 'string' },
        threads: { type: 'string' },
        'cold-mib': { type: 'string' },
        repeat: { type: 'string' },
        out: { type: 'string' },
        'no-baseline': { type: 'boolean', default: false },
        'serve-models': { type: 'string', default: 'bundled,smollm' },
        'serve-layers': { type: 'string', default: '4' },
        'serve-rate': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
    });
  } catch (e) {
    fail((e as Error).message);
  }
  const { values } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const backend = values.backend as BackendKind;
  if (!['cpu', 'webgpu', 'cuda'].includes(backend)) fail(`--backend: expected cpu, webgpu or cuda, got ${values.backend}`);
  const int = (name: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n <= 0) fail(`--${name}: expected a positive integer, got ${v}`);
    return n;
  };
  const strategies: StrategyChoice[] =
    values.strategy === 'all'
      ? ['bgmv', 'sgmv']
      : ['auto', 'bgmv', 'sgmv'].includes(values.strategy!)
        ? [values.strategy as StrategyChoice]
        : fail(`--strategy: expected auto, bgmv, sgmv or all, got ${values.strategy}`);
  const dtypes =
    values.dtypes === undefined
      ? undefined
      : values.dtypes
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean);
  for (const d of dtypes ?? []) if (!['f32', 'f16', 'bf16'].includes(d)) fail(`--dtypes: expected f16, bf16 or f32 entries, got ${d}`);
  let filter: RegExp | undefined;
  try {
    filter = values.filter === undefined ? undefined : new RegExp(values.filter, 'i');
  } catch (e) {
    fail(`--filter: ${(e as Error).message}`);
  }
  if (!['lora', 'model', 'train', 'serve', 'decode', 'browser', 'all'].includes(values.suite!))
    fail(`--suite: expected lora, model, train, serve, decode, browser or all, got ${values.suite}`);
  if (!['f32', 'bf16'].includes(values.dtype!)) fail(`--dtype: expected f32 or bf16, got ${values.dtype}`);
  const serveModels = values['serve-models']!.split(',').map((x) => x.trim());
  for (const m of serveModels) if (m !== 'bundled' && m !== 'smollm') fail(`--serve-models: expected bundled and/or smollm, got ${m}`);
  const serveRate = values['serve-rate'] === undefined ? undefined : Number(values['serve-rate']);
  if (serveRate !== undefined && !(serveRate >= 0))
    fail(`--serve-rate: expected arrivals per second (0: all at once), got ${values['serve-rate']}`);
  const maxTime = values['max-time'] === undefined ? undefined : Number(values['max-time']);
  if (maxTime !== undefined && !(maxTime > 0)) fail(`--max-time: expected a positive number of seconds, got ${values['max-time']}`);
  return {
    backend,
    suite: values.suite as 'lora' | 'model' | 'train' | 'serve' | 'decode' | 'browser' | 'all',
    baseline: !values['no-baseline'],
    modelDType: values.dtype as 'f32' | 'bf16',
    quick: values.quick!,
    full: values.full!,
    filter,
    hidden: int('hidden', values.hidden),
    strategies,
    dtypes: dtypes as WeightDType[] | undefined,
    maxTime,
    threads: int('threads', values.threads),
    coldMiB: int('cold-mib', values['cold-mib']),
    repeat: int('repeat', values.repeat) ?? 1,
    out: values.out,
    serveModels,
    serveLayers: int('serve-layers', values['serve-layers']) ?? 4,
    serveRate,
  };
}

const fmt = (x: number | undefined, digits = 2): string => (x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(digits));
const fmtMs = (x: number | undefined): string => (x === undefined ? 'n/a' : x < 1 ? x.toFixed(4) : x < 100 ? x.toFixed(3) : x.toFixed(1));

function table(head: string[], rows: string[][]): string {
  return [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

interface Targets {
  /** Fused loraApply at T=64, 64 adapters, H = H_in = H_out, r = 16: % of copy bandwidth (goal ≥ 60). */
  applyT64d64PctOfCopy?: number;
  /** Rows (ops, f32 and others) below 50% of their roofline bound, with the ceilings measured among the row's own rounds. */
  rowsBelowHalfBound: string[];
  /** The same with the run's best ceilings (start or end of the run, whichever was higher). */
  rowsBelowHalfRunBound: string[];
  rowsMeasured: number;
  /** Smallest speedup of loraApply over the per-adapter loop (goal ≥ 1). */
  minSpeedupVsLoop?: number;
  slowerThanLoop: string[];
  /** Smallest speedup of loraApply over the PEFT-style masked pair (goal ≥ 1). */
  minSpeedupVsMasked?: number;
  slowerThanMasked: string[];
}

const shapeOf = (c: Comparison): string => `Hout=${c.Hout} r=${c.R}${c.K !== 1 ? ` K=${c.K}` : ''} T=${c.T} d=${c.distinct}`;

function targets(rows: Row[], cmps: Comparison[], ceil: Ceilings): Targets {
  const ops = rows.filter((r) => r.kind === 'op' && r.pctOfBound !== undefined);
  const pctNow = (r: Row): number => r.pctOfBoundNow ?? r.pctOfBound!;
  const t: Targets = {
    rowsBelowHalfBound: ops
      .filter((r) => pctNow(r) < 50)
      .sort((a, b) => pctNow(a) - pctNow(b))
      .map((r) => `${r.name} (${pctNow(r).toFixed(0)}%)`),
    rowsBelowHalfRunBound: ops
      .filter((r) => r.pctOfBound! < 50)
      .sort((a, b) => a.pctOfBound! - b.pctOfBound!)
      .map((r) => `${r.name} (${r.pctOfBound!.toFixed(0)}%)`),
    rowsMeasured: ops.length,
    slowerThanLoop: cmps
      .filter((c) => c.speedupVsLoop !== undefined && c.speedupVsLoop < 1)
      .map((c) => `${shapeOf(c)} (${c.speedupVsLoop!.toFixed(2)}×)`),
    slowerThanMasked: cmps
      .filter((c) => c.speedupVsMasked !== undefined && c.speedupVsMasked < 1)
      .map((c) => `${shapeOf(c)} (${c.speedupVsMasked!.toFixed(2)}×)`),
  };
  const a =
    rows.find(
      (r) =>
        r.op === 'loraApply' &&
        r.dtype === 'f32' &&
        r.T === 64 &&
        r.K === 1 &&
        r.distinct === 64 &&
        r.Hout === r.Hin &&
        r.R === 16 &&
        r.gbps !== undefined &&
        r.strategy.startsWith('auto'),
    ) ??
    rows.find(
      (r) => r.op === 'loraApply' && r.dtype === 'f32' && r.T === 64 && r.distinct === 64 && r.Hout === r.Hin && r.gbps !== undefined,
    );
  if (a && ceil.copy.gbps) t.applyT64d64PctOfCopy = (100 * a.gbps!) / ceil.copy.gbps;
  const sp = cmps.map((c) => c.speedupVsLoop).filter((x): x is number => x !== undefined);
  if (sp.length) t.minSpeedupVsLoop = Math.min(...sp);
  const sm = cmps.map((c) => c.speedupVsMasked).filter((x): x is number => x !== undefined);
  if (sm.length) t.minSpeedupVsMasked = Math.min(...sm);
  return t;
}

type Args = ReturnType<typeof parse>;

/** What every suite's results file starts with: which suite, where and when it ran, and the load. */
function resultHeader(suite: string, info: ReturnType<Backend['info']>, loadBefore: number[]) {
  return {
    suite,
    backend: info,
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    cpus: cpus().length,
    loadavg: { before: loadBefore, after: loadavg() },
  };
}

/** Writes a results file whole or not at all (a temporary renamed into place). */
function writeResults(out: string, text: string): void {
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(`${out}.tmp`, text);
  renameSync(`${out}.tmp`, out);
}
const log = (line: string): void => void process.stderr.write(`${line}\n`);

async function main(): Promise<void> {
  const args = parse();
  if (args.suite === 'browser') return runBrowser(args);
  let backend: Backend;
  try {
    backend = await openBackend(args.backend, args.threads ? { threads: args.threads } : {});
  } catch (e) {
    process.stderr.write(`bench: cannot open backend ${args.backend}: ${(e as Error).message}\n`);
    process.exit(1);
  }
  try {
    if (args.suite === 'train') await runTrain(args, backend);
    else if (args.suite === 'serve') await runServe(args, backend);
    else if (args.suite === 'decode') await runDecode(args, backend);
    else {
      if (args.suite !== 'model') await runLora(args, backend);
      if (args.suite !== 'lora') await runModel(args, backend);
    }
  } finally {
    backend.destroy();
  }
}

/** The serving suite: writes bench/results/<backend>[.quick].serve.json and prints its markdown. */
async function runServe(args: Args, backend: Backend): Promise<void> {
  const info = backend.info();
  const loadBefore = loadavg();
  const opts: ServeBenchOptions = {
    models: args.serveModels as ServeModel[],
    smollmLayers: args.serveLayers,
    adapterCounts: args.quick ? [1, 16] : args.full ? [1, 16, 256, 1000] : [1, 16, 256],
    requests: args.quick ? 32 : 128,
    promptTokens: 16,
    newTokens: 32,
    rate: { bundled: args.serveRate ?? 400, smollm: args.serveRate ?? 40 },
    maxSequences: 64,
    distinctFolders: 64,
    seed: 1,
    repeat: args.repeat,
    log,
  };
  log(`bench: serve suite on ${backend.kind} — ${info.device}${args.quick ? ' (quick)' : ''}`);
  const r = await runServeBench(backend, opts);
  const doc = {
    ...resultHeader('serve', info, loadBefore),
    options: { ...opts, log: undefined },
    result: r,
  };
  const out = resolve(args.out ?? join(packageRoot, 'bench', 'results', `${backend.kind}${args.quick ? '.quick' : ''}.serve.json`));
  writeResults(out, jsonText(doc));
  process.stdout.write(
    `# mote serving benchmark: ${backend.kind} (${info.device}), load average ${loadBefore.map((x) => x.toFixed(2)).join(' ')} at the start, ${cpus().length} cores\n\n${serveMarkdown(r, opts)}\n`,
  );
  log(`bench: wrote ${out}`);
}

/** The browser suite (its own backends: Chromium's, Node's webgpu and cpu): writes bench/results/browser.json. */
async function runBrowser(args: Args): Promise<void> {
  const loadBefore = loadavg();
  log('bench: browser suite (Chromium vs Node)');
  const r = await runBrowserBench(
    packageRoot,
    { trainSteps: args.quick ? 3 : 5, decodeRequests: 8, decodeTokens: args.quick ? 8 : 16 },
    log,
  );
  const doc = {
    suite: 'browser',
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    cpus: cpus().length,
    loadavg: { before: loadBefore, after: loadavg() },
    result: r,
  };
  const out = resolve(args.out ?? join(packageRoot, 'bench', 'results', `browser${args.quick ? '.quick' : ''}.json`));
  writeResults(out, jsonText(doc));
  process.stdout.write(
    `# mote browser benchmark, load average ${loadBefore.map((x) => x.toFixed(2)).join(' ')} at the start, ${cpus().length} cores\n\n${browserMarkdown(r)}\n`,
  );
  log(`bench: wrote ${out}`);
}

/** The decode suite: writes bench/results/<backend>[.quick].decode.json and prints its markdown. */
async function runDecode(args: Args, backend: Backend): Promise<void> {
  const info = backend.info();
  const d = decodeBenchDefaults(backend, args.quick);
  const quick = args.quick || d.notes.length > 0;
  const loadBefore = loadavg();
  log(`bench: decode suite on ${backend.kind} — ${info.device}${quick ? ' (quick)' : ''}`);
  for (const n of d.notes) log(`bench: ${n}`);
  const opts = { shape: d.shape, batches: [1, 16, 64], context: d.context, steps: args.repeat > 1 ? args.repeat : d.steps, log };
  const r = await runDecodeBench(backend, opts);
  const doc = { ...resultHeader('decode', info, loadBefore), notes: d.notes, result: r };
  const out = resolve(args.out ?? join(packageRoot, 'bench', 'results', `${backend.kind}${quick ? '.quick' : ''}.decode.json`));
  writeResults(out, jsonText(doc));
  process.stdout.write(
    `# mote decode benchmark: ${backend.kind} (${info.device}), load average ${loadBefore.map((x) => x.toFixed(2)).join(' ')} at the start, ${cpus().length} cores\n\n${decodeMarkdown(r)}\n`,
  );
  log(`bench: wrote ${out}`);
}

/** The training suite: writes bench/results/<backend>[.quick].train.json and prints its markdown. */
async function runTrain(args: Args, backend: Backend): Promise<void> {
  const info = backend.info();
  const d = trainBenchDefaults(backend, args.quick);
  const quick = args.quick || d.notes.length > 0;
  const loadBefore = loadavg();
  log(`bench: train suite on ${backend.kind} — ${info.device}${quick ? ' (quick)' : ''}`);
  for (const n of d.notes) log(`bench: ${n}`);
  // the chain shape, and (not on a software adapter) a long prompt, where masked logits matter
  const shapes = [{ seq: d.seq }, ...(d.notes.some((n) => n.startsWith('software')) ? [] : [{ seq: 768, prompt: 512 }])];
  const results: TrainBenchResult[] = [];
  for (const sh of shapes) {
    const opts = { shape: d.shape, ...sh, rank: 16, steps: args.repeat > 1 ? args.repeat : d.steps, log };
    const r = await runTrainBench(backend, opts);
    if (args.baseline) {
      // PyTorch on the GPU against cuda; on the CPU against cpu and webgpu
      const b = runTorchBaseline(packageRoot, opts, args.threads, backend.kind === 'cuda' ? 'cuda' : 'cpu');
      if (b.json) {
        r.baseline = b.json;
        if (typeof b.json.tokens_per_s === 'number') r.vsPyTorch = r.tokensPerS / b.json.tokens_per_s;
      } else r.baselineError = b.error;
    } else r.baselineError = 'skipped (--no-baseline)';
    results.push(r);
  }
  const doc = {
    ...resultHeader('train', info, loadBefore),
    notes: d.notes,
    result: results[0],
    results,
  };
  const out = resolve(args.out ?? join(packageRoot, 'bench', 'results', `${backend.kind}${quick ? '.quick' : ''}.train.json`));
  writeResults(out, jsonText(doc));
  process.stdout.write(
    `# mote training benchmark: ${backend.kind} (${info.device}), load average ${loadBefore.map((x) => x.toFixed(2)).join(' ')} at the start\n\n${results.map((r) => trainMarkdown(r, backend.kind)).join('\n\n')}\n`,
  );
  log(`bench: wrote ${out}`);
}

/** The model suite: writes bench/results/<backend>[.quick].model.json and prints its markdown. */
async function runModel(args: Args, backend: Backend): Promise<void> {
  const info = backend.info();
  const d = modelBenchDefaults(backend, args.quick);
  const quick = args.quick || d.notes.length > 0;
  const started = Date.now();
  const loadBefore = loadavg();
  log(`bench: model suite on ${backend.kind} — ${info.device}${quick ? ' (quick)' : ''}`);
  for (const n of d.notes) log(`bench: ${n}`);
  const opts = {
    shape: d.shape,
    dtype: args.modelDType,
    seqs: 64,
    promptTokens: 32,
    decodeSteps: d.decodeSteps,
    rounds: args.repeat > 1 ? args.repeat : d.rounds,
    bundleCounts: [0, 1, 4, 64],
    rank: 16,
    coldBytes: args.coldMiB !== undefined ? args.coldMiB * 2 ** 20 : coldBytesFor(backend),
    copyTiming: { maxTime: 1, minSamples: 5, warmup: 2 },
    log,
  };
  const r = await runModelBench(backend, opts);
  const seconds = (Date.now() - started) / 1e3;
  const load = { before: loadBefore, after: loadavg(), cores: cpus().length };
  const notes = [...d.notes];
  if (load.before[0]! > 0.5 * load.cores) {
    notes.push(
      `the machine was busy when the run started (load average ${load.before.map((x) => x.toFixed(2)).join(', ')}, ${load.cores} cores; ${load.after.map((x) => x.toFixed(2)).join(', ')} at the end, this run included): figures may be low`,
    );
  }
  const result = {
    suite: 'model',
    backend: info,
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    args: {
      quick,
      dtype: args.modelDType,
      seqs: opts.seqs,
      promptTokens: opts.promptTokens,
      decodeSteps: opts.decodeSteps,
      rounds: opts.rounds,
      bundleCounts: opts.bundleCounts,
      rank: opts.rank,
      coldBytes: opts.coldBytes,
    },
    notes,
    seconds,
    load,
    ...r,
  };
  const out = resolve(
    args.suite === 'model' && args.out
      ? args.out
      : join(packageRoot, 'bench', 'results', `${backend.kind}${quick ? '.quick' : ''}.model.json`),
  );
  writeResults(out, `${JSON.stringify(result, null, 1)}\n`);
  const threads = info.details.threads !== undefined ? `, ${info.details.threads} threads` : '';
  const md: string[] = [`# mote model benchmark: ${backend.kind} (${info.device}${threads})`, ''];
  md.push(
    `${result.date}, node ${process.version}, ${quick ? 'quick' : 'full'} run, ${seconds.toFixed(0)} s, load average ${load.before.map((x) => x.toFixed(2)).join(' ')} (start) / ${load.after.map((x) => x.toFixed(2)).join(' ')} (end), ${load.cores} cores. Results: ${out}`,
    '',
  );
  for (const n of notes) md.push(`> ${n}`, '');
  md.push(modelMarkdown(r, { seqs: opts.seqs, promptTokens: opts.promptTokens, decodeSteps: opts.decodeSteps, dtype: args.modelDType }));
  process.stdout.write(`${md.join('\n')}\n`);
}

async function runLora(args: Args, backend: Backend): Promise<void> {
  const info = backend.info();
  const notes: string[] = [];
  let quick = args.quick;
  let Hin = args.hidden ?? 4096;
  if (backend.kind === 'webgpu' && info.software && !args.full) {
    if (!quick) notes.push(`software WebGPU adapter (${info.device}): forced --quick (pass --full to override)`);
    quick = true;
    if (args.hidden === undefined) {
      Hin = 1024;
      notes.push('software WebGPU adapter: H_in = 1024 instead of 4096 (pass --hidden N to override)');
    }
  }
  const Houts = [Hin, Math.round((Hin * 11008) / 4096)];
  const extraDTypes = args.dtypes ?? (quick ? [] : (['bf16'] as WeightDType[]));
  const timing: TimeOptions = { maxTime: args.maxTime ?? (quick ? 0.25 : 0.3), minSamples: quick ? 5 : 6, warmup: 2 };
  // lora rows: interleaved, one sample per row per round (bench/timing.ts timeInterleaved)
  const rounds = quick ? 5 : 6;
  const coldBytes = args.coldMiB !== undefined ? args.coldMiB * 2 ** 20 : Math.round(2.5 * lastLevelCacheBytes(backend));
  const started = Date.now();
  const loadAvgBefore = loadavg();
  const loadBefore = loadAvgBefore[0]!;

  log(`bench: ${backend.kind} — ${info.device}${quick ? ' (quick)' : ''}`);
  for (const n of notes) log(`bench: ${n}`);
  const ceilingTiming: TimeOptions = { ...timing, maxTime: Math.max(1, timing.maxTime * 2), minSamples: 5 };
  const ceilingRun = async (when: string): Promise<Ceilings> => {
    log(`ceilings (${when})…`);
    const c = await measureCeilings(backend, ceilingTiming);
    log(
      `  (${((Date.now() - started) / 1e3).toFixed(1)} s) copy ${fmt(c.copy.gbps ?? undefined)} GB/s${c.copy.reason ? ` (${c.copy.reason})` : ''}, matmul ${fmt(c.flops.gflops)} GFLOP/s, read ${fmt(c.read?.gbps)} GB/s, sync ${fmtMs(c.syncMs)} ms, call ${fmtMs(c.callMs)} ms`,
    );
    return c;
  };
  const first = await ceilingRun('start');
  log('lora suites…');
  const cases = loraCases({ quick, Hin, Houts, extraDTypes });
  const probe = await CopyProbe.open(backend);
  const flopProbe = FlopProbe.open(backend);
  const { rows, comparisons } = await runLoraSuite(backend, cases, {
    timing,
    ceilings: first,
    coldBytes,
    strategies: args.strategies,
    filter: args.filter,
    probe,
    flopProbe,
    rounds,
    repeat: args.repeat,
    log,
  }).finally(() => {
    probe.dispose();
    flopProbe.dispose();
  });
  const last = await ceilingRun('end');
  const ceilingRuns = [first, last];
  const ceilings = bestCeilings(ceilingRuns);
  applyRoofline(rows, ceilings);
  const tg = targets(rows, comparisons, ceilings);
  const seconds = (Date.now() - started) / 1e3;
  const loadAvgAfter = loadavg();
  const load = { before: loadBefore, after: loadAvgAfter[0]!, cores: cpus().length, beforeAll: loadAvgBefore, afterAll: loadAvgAfter };
  // The load after the run includes this run's own threads; only the load before says who else was there.
  if (load.before > 0.5 * load.cores) {
    notes.push(
      `the machine was busy when the run started (1-minute load average ${load.before.toFixed(1)}, ${load.cores} cores; ${load.after.toFixed(1)} at the end, this run included): figures may be low`,
    );
  }

  const method = {
    timer: `rows of one shape (ops and baselines) timed together, interleaved: ${timing.warmup} untimed warm-up calls per row (also sizing its samples), then ${rounds * args.repeat} rounds, each running every row for one sample (the mean of \`count\` back-to-back calls, about ${((timing.maxTime * 1e3) / rounds).toFixed(0)} ms) in a fresh seeded random order; figure = median of the row's samples; every call ends with \`await backend.sync()\` (bench/timing.ts timeInterleaved)`,
    timing,
    warmColdPolicy: `weights (A, B, per-adapter tensors, dA/dB) are replicated, and calls cycle through the copies, until the weights one op touches in a cycle (A alone for shrink and inputGrad, B alone for expand and shrinkGrad) exceed ${(coldBytes / 2 ** 20).toFixed(0)} MiB (${args.coldMiB !== undefined ? '--cold-mib' : '2.5 × last-level cache'}), so they are read from memory as in a real model (copies capped by a memory budget: a quarter of the free memory, at most 4 GiB); weightGrad writes cycle through zeroed (already faulted-in) dA/dB copies sized the same way, as a training step reuses its gradient buffers; activations (x, y, v, dy, dv, dx) are shared and may stay in cache`,
    bytes:
      'A/B rows of the adapters used up to their rank + x + y (read and written where accumulated) + v, each once; weightGrad: x, dy, v, dv read, dA, dB (f32) written',
    flops: '2·T·K·r·H per shrink or expand (apply and weightGrad: both)',
    roofline:
      'bound = max(bytes / copy bandwidth, flops / matmul FLOP rate); % of bound = bound time / median time; "now": the ceilings of the row\'s own rounds (targets); "run": ceilings measured at the start and at the end of this run (median of each), the higher of the two',
    copyNow:
      'the ceilings measured again as two more rows of every shape, in its interleaved rounds: a 64 MiB copy and the FLOP-ceiling matmul (medians); "% of bound now" is the roofline with those (what the machine had while the rows ran: on a shared machine the start/end ceilings swing by 2-4×); "% of run bound" uses the run\'s best start/end ceilings',
    routing:
      'K = 1, weight 1, slot of token t = t % distinct, L = distinct, rank 16 for every adapter, scale 2; (T, distinct) with distinct > T skipped (same work as distinct = T); unit rows (the serving engine’s rank-8 units): K = 16 slots of rank 8 per token, slot k of token t = (16·t + k) % 64, 64 units, H_out = H_in',
    baselines: {
      loop: 'per adapter: read x and y to the host, gather its rows, upload, matmul(x_e, A_e) then matmul(·, B_e), read back, scatter-add ·scale·weight, write y back (host time counted)',
      masked:
        'per adapter: matmul(x, A_e) over all T tokens, read back, zero rows of other adapters (host mask, ·scale·weight), upload, matmul(·, B_e) accumulated into y over all T tokens',
    },
  };
  const result = {
    backend: info,
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    args: { ...args, filter: args.filter?.source, quick, Hin, Houts, extraDTypes },
    notes,
    seconds,
    load,
    method,
    ceilings,
    ceilingRuns,
    targets: tg,
    rows,
    comparisons,
  };
  const out = resolve(args.out ?? join(packageRoot, 'bench', 'results', `${backend.kind}${quick ? '.quick' : ''}.json`));
  writeResults(out, `${JSON.stringify(result, null, 1)}\n`);

  // Markdown report.
  const threads = info.details.threads !== undefined ? `, ${info.details.threads} threads` : '';
  const md: string[] = [];
  md.push(`# mote multi-LoRA benchmark: ${backend.kind} (${info.device}${threads})`, '');
  md.push(
    `${result.date}, node ${process.version}, ${quick ? 'quick' : 'full'} run, H_in = ${Hin}, r = 16 (unit rows: r = 8, K = 16), ${seconds.toFixed(0)} s, load average ${loadAvgBefore.map((x) => x.toFixed(2)).join(' ')} (start) / ${loadAvgAfter.map((x) => x.toFixed(2)).join(' ')} (end, this run included), ${load.cores} cores. Results: ${out}`,
    '',
  );
  for (const n of notes) md.push(`> ${n}`, '');
  md.push('## Ceilings (same run, same backend)', '');
  const c = ceilings;
  const gb = (x: number | null): string => (x === null ? 'n/a' : `${fmt(x)} GB/s`);
  md.push(
    table(
      ['ceiling', 'used', 'start: median / best sample', 'end: median / best sample', 'how'],
      [
        [
          'copy bandwidth',
          gb(c.copy.gbps),
          `${gb(first.copy.gbps)} / ${gb(first.copy.bestGbps)}`,
          `${gb(last.copy.gbps)} / ${gb(last.copy.bestGbps)}`,
          c.copy.reason ?? c.copy.method,
        ],
        [
          'FLOP rate',
          `${fmt(c.flops.gflops)} GFLOP/s`,
          `${fmt(first.flops.gflops)} / ${fmt(first.flops.bestGflops)} GFLOP/s`,
          `${fmt(last.flops.gflops)} / ${fmt(last.flops.bestGflops)} GFLOP/s`,
          c.flops.method,
        ],
        [
          'read rate (GEMV)',
          c.read ? gb(c.read.gbps) : 'n/a',
          first.read ? gb(first.read.gbps) : 'n/a',
          last.read ? gb(last.read.gbps) : 'n/a',
          c.read
            ? `${c.read.method}: streaming reads without writes, informative (not in the roofline); read-mostly LoRA ops can pass copy bandwidth up to about this`
            : 'not measured on webgpu: its matmul is tiled for throughput, not a streaming GEMV',
        ],
        [
          'sync round trip',
          `${fmtMs(c.syncMs)} ms`,
          `${fmtMs(first.syncMs)} ms`,
          `${fmtMs(last.syncMs)} ms`,
          'median of `await backend.sync()` alone: the per-call floor of this harness (not in the roofline)',
        ],
        [
          'op call floor',
          `${fmtMs(c.callMs)} ms`,
          `${fmtMs(first.callMs)} ms`,
          `${fmtMs(last.callMs)} ms`,
          'median of loraApply at T = 1, H = 64, r = 16 (checks, routing, launch, sync): what the smallest rows pay on top of their bytes (not in the roofline)',
        ],
      ],
    ),
    '',
  );
  md.push('## LoRA ops', '');
  md.push(
    table(
      [
        'op',
        'w',
        'H_out',
        'r',
        'K',
        'T',
        'adapters',
        'strategy',
        'median ms',
        'GB/s',
        'GFLOP/s',
        'bound now ms',
        'limit',
        '% of bound now',
        '% of run bound',
        'copy now GB/s',
        'matmul now GFLOP/s',
      ],
      rows
        .filter((r) => r.kind === 'op')
        .map((r) => [
          r.op,
          r.dtype,
          String(r.Hout),
          String(r.R),
          String(r.K),
          String(r.T),
          String(r.distinct),
          r.strategy,
          r.error ? `error: ${r.error}` : fmtMs(r.medianMs),
          fmt(r.gbps),
          fmt(r.gflops),
          fmtMs((r.boundNow ?? r.bound).ms),
          (r.boundNow ?? r.bound).limit,
          r.pctOfBoundNow === undefined ? 'n/a' : `${r.pctOfBoundNow.toFixed(0)}%`,
          r.pctOfBound === undefined ? 'n/a' : `${r.pctOfBound.toFixed(0)}%`,
          fmt(r.copyNowGbps, 1),
          fmt(r.flopsNowGflops, 0),
        ]),
    ),
    '',
  );
  if (comparisons.length) {
    md.push('## Fused loraApply vs the baselines users would run', '');
    const base = new Map(rows.filter((r) => r.kind === 'baseline').map((r) => [r.name, r]));
    md.push(
      table(
        [
          'H_out',
          'r',
          'K',
          'T',
          'adapters',
          'loraApply ms',
          'loop ms',
          'masked ms',
          '× vs loop',
          '× vs masked',
          'loop % of bound',
          'masked % of bound',
          'rel err loop / masked',
        ],
        comparisons.map((m) => {
          const b = (k: string): Row | undefined =>
            base.get(
              `baseline:${k} ${m.dtype} Hin=${m.Hin} Hout=${m.Hout} r=${m.R}${m.K !== 1 ? ` K=${m.K}` : ''} T=${m.T} d=${m.distinct}`,
            );
          const pct = (r: Row | undefined): string => {
            const p = r?.pctOfBoundNow ?? r?.pctOfBound;
            return p === undefined ? 'n/a' : `${p.toFixed(0)}%`;
          };
          return [
            String(m.Hout),
            String(m.R),
            String(m.K),
            String(m.T),
            String(m.distinct),
            fmtMs(m.applyMs),
            fmtMs(m.loopMs),
            fmtMs(m.maskedMs),
            fmt(m.speedupVsLoop),
            fmt(m.speedupVsMasked),
            pct(b('loop')),
            pct(b('masked')),
            `${m.relErrLoop?.toExponential(1) ?? 'n/a'} / ${m.relErrMasked?.toExponential(1) ?? 'n/a'}`,
          ];
        }),
      ),
      '',
    );
  }
  md.push('## Per op: % of roofline bound (now) over the shapes above', '');
  const byOp = new Map<string, Row[]>();
  for (const r of rows)
    if (r.kind === 'op' && (r.pctOfBoundNow ?? r.pctOfBound) !== undefined)
      (byOp.get(`${r.op} ${r.dtype}`) ?? byOp.set(`${r.op} ${r.dtype}`, []).get(`${r.op} ${r.dtype}`)!).push(r);
  md.push(
    table(
      ['op', 'shapes', 'worst', 'median', 'best', 'worst shape'],
      [...byOp].map(([k, rs]) => {
        const sorted = [...rs].sort((a, b) => (a.pctOfBoundNow ?? a.pctOfBound!) - (b.pctOfBoundNow ?? b.pctOfBound!));
        const pct = (r: Row): string => `${(r.pctOfBoundNow ?? r.pctOfBound!).toFixed(0)}%`;
        const w = sorted[0]!;
        return [
          k,
          String(rs.length),
          pct(w),
          `${median(rs.map((r) => r.pctOfBoundNow ?? r.pctOfBound!)).toFixed(0)}%`,
          pct(sorted[sorted.length - 1]!),
          `H_out ${w.Hout}, r ${w.R}, K ${w.K}, T ${w.T}, ${w.distinct} adapters`,
        ];
      }),
    ),
    '',
  );
  md.push('## Targets', '');
  md.push(
    `- fused loraApply, T = 64, 64 adapters, H_out = H_in, r = 16: ${tg.applyT64d64PctOfCopy === undefined ? 'not measured' : `${tg.applyT64d64PctOfCopy.toFixed(0)}% of copy bandwidth`} (goal ≥ 60%)`,
  );
  const below = tg.rowsBelowHalfBound;
  md.push(
    `- op rows at ≥ 50% of their roofline bound (ceilings measured in the rows' own rounds): ${tg.rowsMeasured - below.length} of ${tg.rowsMeasured}${below.length ? `; below: ${below.slice(0, 8).join(', ')}${below.length > 8 ? ` and ${below.length - 8} more (targets.rowsBelowHalfBound in the JSON)` : ''}` : ''}`,
  );
  const belowRun = tg.rowsBelowHalfRunBound;
  md.push(
    `- the same against the run's best start/end ceilings: ${tg.rowsMeasured - belowRun.length} of ${tg.rowsMeasured}${belowRun.length ? `; below: ${belowRun.slice(0, 8).join(', ')}${belowRun.length > 8 ? ` and ${belowRun.length - 8} more (targets.rowsBelowHalfRunBound)` : ''}` : ''}`,
  );
  md.push(
    `- loraApply vs per-adapter loop: smallest speedup ${fmt(tg.minSpeedupVsLoop)}×${tg.slowerThanLoop.length ? `; slower at ${tg.slowerThanLoop.join(', ')}` : ''} (goal: never slower)`,
    `- loraApply vs the PEFT-style masked pair: smallest speedup ${fmt(tg.minSpeedupVsMasked)}×${tg.slowerThanMasked.length ? `; slower at ${tg.slowerThanMasked.join(', ')}` : ''} (goal: never slower)`,
    '',
  );
  md.push('## Method', '');
  md.push(
    `- timing: ${method.timer}; about ${(timing.maxTime * args.repeat).toFixed(2)} s of timed calls per row${args.repeat > 1 ? ` (--repeat ${args.repeat})` : ''}`,
  );
  md.push(`- cache: ${method.warmColdPolicy}`);
  md.push(`- bytes: ${method.bytes}; flops: ${method.flops}`);
  md.push(`- roofline: ${method.roofline}`);
  md.push(
    `- above 100% of bound: the bound is not tight there. Compute-bound rows: our matmul, the FLOP ceiling, is slower than the LoRA kernel at that shape; memory-bound rows: the LoRA ops mostly read, and reads stream faster than a copy (see the read rate)`,
  );
  md.push(`- copy now: ${method.copyNow}`);
  md.push(`- routing: ${method.routing}`);
  md.push(`- baseline loop: ${method.baselines.loop}`);
  md.push(`- baseline masked: ${method.baselines.masked}`);
  process.stdout.write(`${md.join('\n')}\n`);
}

main().catch((e) => {
  process.stderr.write(`bench: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
