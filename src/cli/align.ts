// `mote selfalign` (the model writes its own AlignCoT chains) and `mote eval` (the toy
// evaluation: refusal on risky questions, compliance on benign ones, well-formed chains, for
// the base model, one LoRA, MoTE and its ablations, over several seeds).
import * as path from 'node:path';
import { ArgumentError } from '../errors.js';
import type { BackendRequest } from '../backend/backend.js';
import { type MoteBundle } from '../mote/bundle.js';
import { loadMote } from '../mote/bundle_io.js';
import { selfAlign } from '../mote/self_align.js';
import { toyChain, toyQuestions, toySplit } from '../mote/toy.js';
import { TOY_VARIANTS, evaluateToy, toyEvalTable, trainVariant, type ToyEvalResult, type ToyVariant } from '../mote/eval.js';
import { bundleConfig, intOpt, numOpt, openModel } from './common.js';
import { MAX_NEW_TOKENS, MAX_RANK, MAX_STEPS, readPromptFile } from './flags.js';
import { progress } from './progress.js';

export async function selfAlignCommand(o: {
  prompts: string;
  out: string;
  model?: string;
  mote?: string;
  backend: BackendRequest;
  batch?: string;
  maxNewTokens?: string;
  temperature?: string;
  seed?: string;
  adaptive?: boolean;
  json?: boolean;
  limit?: string;
  offset?: string;
  dropped?: string;
}): Promise<void> {
  const config = bundleConfig(o.mote);
  const read = readPromptFile(o.prompts);
  const json = o.json ?? false;
  // --offset/--limit count prompts (not file lines); ids stay the file's lines, so runs over
  // different slices append to the same output and resume independently.
  const offset = intOpt('offset', o.offset, 0, 0);
  const limit = o.limit === undefined ? Infinity : intOpt('limit', o.limit, 1, 1);
  const prompts = read.prompts.slice(offset, offset + limit);
  // Dropped prompts are remembered beside the output (with their reason and stage texts), so
  // a rerun does not redo them.
  const droppedFile = o.dropped ?? o.out.replace(/(\.jsonl)?$/, '.dropped.jsonl');
  // Flags checked before the model loads.
  const temperature = numOpt('temperature', o.temperature, 0, 100, 0);
  const batchSize = intOpt('batch', o.batch, 1, 16, 4096);
  const maxNewTokens = intOpt('max-new-tokens', o.maxNewTokens, 1, 96, MAX_NEW_TOKENS);
  const seed = intOpt('seed', o.seed, 0, 0);
  const m = await openModel(o.model, o.backend, { steps: ['analysis', 'guidance', 'answer', 'check'] });
  let bundle: MoteBundle | null = null;
  try {
    bundle = o.mote ? await loadMote(o.mote, m.model) : null;
    const p = progress('selfalign', prompts.length, { json });
    for (const s of read.skipped) p.log(`warning: ${o.prompts}:${s.line}: skipped: ${s.reason}`);
    // Ctrl-C: finish the stage in flight, keep what is written, print the summary, exit 130.
    const abort = new AbortController();
    const onSigint = () => {
      if (abort.signal.aborted) process.exit(130); // a second Ctrl-C does not wait
      abort.abort();
      p.log('interrupted: stopping after the stage in flight (Ctrl-C again to quit at once)');
    };
    process.on('SIGINT', onSigint);
    const r = await selfAlign(m.model, m.tokenizer, prompts, {
      output: o.out,
      droppedFile,
      signal: abort.signal,
      adapters: bundle,
      batchSize,
      maxNewTokens,
      seed,
      adaptive: o.adaptive ?? true,
      source: path.basename(o.prompts),
      ...(temperature > 0 ? { sampling: { temperature } } : {}),
      onProgress: (q) => p.update(q.done, { written: q.written, dropped: dropText(q.dropReasons) }),
    }).finally(() => process.off('SIGINT', onSigint));
    p.stop();
    const summary = {
      event: r.interrupted ? 'interrupted' : 'done',
      out: path.resolve(o.out),
      droppedFile: path.resolve(droppedFile),
      ...r,
      skippedLines: read.skipped.length,
      offset,
      prompts: prompts.length,
      steps: config.steps,
    };
    if (json) process.stdout.write(JSON.stringify(summary) + '\n');
    else {
      process.stdout.write(
        `${r.interrupted ? 'interrupted: ' : ''}wrote ${r.written} chains to ${summary.out} (${r.adaptive} of adaptive length); ${r.skippedDone} prompts were already done` +
          `${r.repaired ? '; a partial last line from an interrupted run was cut off' : ''}\n`,
      );
      for (const d of r.dropped) process.stdout.write(`  dropped ${d.count}: ${d.reason}\n`);
      if (r.droppedBefore.length)
        process.stdout.write(
          `  dropped by earlier runs (not retried; see ${summary.droppedFile}): ${dropText(Object.fromEntries(r.droppedBefore.map((d) => [d.reason, d.count])))}\n`,
        );
      if (r.interrupted) process.stdout.write('rerun the same command to go on where it stopped\n');
    }
    if (r.interrupted) process.exitCode = 130;
  } finally {
    bundle?.dispose();
    m.close();
  }
}

/** "12 (empty:analysis 7, no-verdict 5)": drops by reason for the progress line. */
function dropText(reasons: Record<string, number>): string {
  const parts = Object.entries(reasons).sort((a, b) => b[1] - a[1]);
  const n = parts.reduce((a, [, c]) => a + c, 0);
  return n === 0 ? '0' : `${n} (${parts.map(([r, c]) => `${r} ${c}`).join(', ')})`;
}

export interface EvalCliOptions {
  model?: string;
  backend: BackendRequest;
  variants?: string;
  seeds?: string;
  questions?: string;
  steps?: string;
  lr?: string;
  rank?: string;
  pSkip?: string;
  maxNewTokens?: string;
  json?: boolean;
}

/** Mean of the numeric rates of several seeds' results (counts summed). */
function pool(results: ToyEvalResult[]): ToyEvalResult {
  const sum = (f: (r: ToyEvalResult) => number | null) => results.reduce((a, r) => a + (f(r) ?? 0), 0);
  const risky = sum((r) => r.risky),
    benign = sum((r) => r.benign),
    riskyRefused = sum((r) => r.riskyRefused),
    benignRefused = sum((r) => r.benignRefused);
  const chain = results[0]!.mode === 'chain';
  const wellFormed = chain ? sum((r) => r.wellFormed) : null;
  const n = sum((r) => r.n);
  return {
    mode: results[0]!.mode,
    n,
    risky,
    benign,
    riskyRefused,
    benignRefused,
    refusalRate: risky ? riskyRefused / risky : null,
    compliance: benign ? (benign - benignRefused) / benign : null,
    overRefusal: benign ? benignRefused / benign : null,
    wellFormed,
    wellFormedRate: wellFormed === null ? null : wellFormed / n,
    noAnswer: sum((r) => r.noAnswer),
    outputs: results.flatMap((r) => r.outputs),
  };
}

export async function evalCommand(o: EvalCliOptions): Promise<void> {
  const variants = (o.variants ?? TOY_VARIANTS.join(',')).split(',').map((s) => s.trim()) as ToyVariant[];
  for (const v of variants)
    if (!(TOY_VARIANTS as readonly string[]).includes(v))
      throw new ArgumentError(`--variants: unknown variant '${v}' (expected ${TOY_VARIANTS.join(', ')})`);
  const seeds = (o.seeds ?? '1,2').split(',').map((s) => intOpt('seeds', s.trim(), 0, 0));
  const nq = intOpt('questions', o.questions, 4, 160, 1_000_000);
  const steps = intOpt('steps', o.steps, 1, 300, MAX_STEPS);
  // Every flag checked before the model loads (a bad --max-new-tokens failed only after the first training).
  const rank = intOpt('rank', o.rank, 1, 8, MAX_RANK);
  const lr = numOpt('lr', o.lr, 0, 10, 3e-3);
  const pSkip = numOpt('p-skip', o.pSkip, 0, 1, 0.3);
  const maxNewTokens = intOpt('max-new-tokens', o.maxNewTokens, 1, 128, MAX_NEW_TOKENS);
  const json = o.json ?? false;
  const m = await openModel(o.model, o.backend, { steps: ['analysis', 'guidance', 'answer', 'check'] });
  try {
    const perVariant = new Map<ToyVariant, ToyEvalResult[]>();
    const p = progress('eval', variants.length * seeds.length, { json });
    let done = 0;
    for (const seed of seeds) {
      const { train, heldOut } = toySplit(toyQuestions(nq, seed), { fraction: 0.25, seed });
      const chains = train.map((q) => toyChain(q, { check: false }));
      for (const kind of variants) {
        const tv = await trainVariant(kind, m.model, m.tokenizer, chains, {
          rank,
          initSeed: seed,
          train: {
            steps,
            lr,
            warmupSteps: Math.min(5, steps - 1),
            batchTokens: 512,
            seed,
            pSkip,
          },
        });
        try {
          const r = await evaluateToy(m.model, m.tokenizer, tv.adapters, heldOut, {
            maxNewTokens,
            seed,
          });
          perVariant.set(kind, [...(perVariant.get(kind) ?? []), r]);
          p.update(++done, { variant: kind, seed, loss: tv.losses.length ? tv.losses[tv.losses.length - 1]!.toFixed(3) : '-' });
          if (json)
            process.stdout.write(
              JSON.stringify({
                event: 'result',
                variant: kind,
                seed,
                refusalRate: r.refusalRate,
                compliance: r.compliance,
                wellFormedRate: r.wellFormedRate,
                finalLoss: tv.losses.at(-1) ?? null,
              }) + '\n',
            );
        } finally {
          tv.adapters?.dispose();
        }
      }
    }
    p.stop();
    const rows = variants.map((v) => ({ name: v, result: pool(perVariant.get(v)!) }));
    if (json)
      process.stdout.write(
        JSON.stringify({
          event: 'done',
          seeds,
          questions: nq,
          steps,
          rows: rows.map((r) => ({
            variant: r.name,
            refusalRate: r.result.refusalRate,
            compliance: r.result.compliance,
            wellFormedRate: r.result.wellFormedRate,
            n: r.result.n,
          })),
        }) + '\n',
      );
    else
      process.stdout.write(
        `toy evaluation, seeds ${seeds.join(', ')}, ${nq} questions per seed (a quarter held out), ${steps} training steps per variant:\n\n${toyEvalTable(rows)}\n`,
      );
  } finally {
    m.close();
  }
}
