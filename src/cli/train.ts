// `mote train`: MoTE SFT of a fresh bundle (step experts + shared) on AlignCoT chains, with a
// progress bar, checkpoints and SIGINT → save → `--resume`.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArgumentError } from '../errors.js';
import type { BackendRequest } from '../backend/backend.js';
import { readChainsJsonl, chainExamples } from '../mote/chains.js';
import { createMote } from '../mote/bundle.js';
import { MOTE_DIR_OPTIONS } from '../mote/format.js';
import { saveMote } from '../mote/bundle_io.js';
import { moteConfig, type StepName } from '../mote/steps.js';
import { Trainer } from '../train/trainer.js';
import { CHECKPOINT_DIR_OPTIONS, findCheckpoint, loadCheckpoint } from '../train/checkpoint.js';
import { checkReplaceable } from '../io/atomic_dir.js';
import { checkApart, intOpt, numOpt, openModel } from './common.js';
import { progress } from './progress.js';

export interface TrainCliOptions {
  chains: string;
  out: string;
  model?: string;
  backend: BackendRequest;
  steps?: string;
  lr?: string;
  warmup?: string;
  rank?: string;
  loraAlpha?: string;
  alpha?: string;
  schema?: string;
  pSkip?: string;
  batchTokens?: string;
  gradAccum?: string;
  maxLength?: string;
  seed?: string;
  checkpoint?: string;
  checkpointEvery?: string;
  resume?: boolean;
  overwrite?: boolean;
  json?: boolean;
}

export async function trainCommand(o: TrainCliOptions): Promise<void> {
  const json = o.json ?? false;
  const config = moteConfig(
    {
      ...(o.schema ? { steps: o.schema.split(',').map((s) => s.trim()) as StepName[] } : {}),
      rank: intOpt('rank', o.rank, 1, 16),
      loraAlpha: numOpt('lora-alpha', o.loraAlpha, 0, 1e6, 2 * intOpt('rank', o.rank, 1, 16)),
      alpha: numOpt('alpha', o.alpha, 0, 1, 0.5),
      promptRouting: 'random-step',
    },
    '--schema/--rank/--alpha',
  );
  const steps = intOpt('steps', o.steps, 1, 200);
  const seed = intOpt('seed', o.seed, 0, 0);
  if (o.resume && !o.checkpoint) throw new ArgumentError('--resume: needs --checkpoint DIR');
  // Without a folder to save in, the flag would be ignored and a long run left without checkpoints.
  if (o.checkpointEvery !== undefined && !o.checkpoint) throw new ArgumentError('--checkpoint-every: needs --checkpoint DIR');
  // The bundle saved at the end would replace the checkpoint (refused only after training, before).
  if (o.checkpoint) checkApart('--out', o.out, '--checkpoint', o.checkpoint);
  // Before any work: a folder mote may not write into fails now, not after training.
  const overwrite = o.overwrite === true;
  checkReplaceable('--out', o.out, { ...MOTE_DIR_OPTIONS, overwrite });
  if (o.checkpoint) checkReplaceable('--checkpoint', o.checkpoint, { ...CHECKPOINT_DIR_OPTIONS, overwrite });
  const skipped: { line: number; reason: string }[] = [];
  const chains = readChainsJsonl(o.chains, { skipped });
  const m = await openModel(o.model, o.backend, config);
  try {
    const res = chainExamples(chains, m.tokenizer, config, { maxLength: intOpt('max-length', o.maxLength, 2, 256) });
    const p = progress('train', steps, { json });
    for (const s of skipped) p.log(`warning: ${o.chains}:${s.line}: skipped: ${s.reason}`);
    if (skipped.length) p.log(`warning: ${skipped.length} malformed line(s) of ${o.chains} skipped`);
    for (const t of res.tooLong) p.log(`warning: ${t.where}: left out: ${t.reason}`);
    if (res.truncated.length) p.log(`note: ${res.truncated.length} chain(s) lost trailing steps to fit --max-length`);
    if (res.examples.length === 0) throw new ArgumentError(`--chains: no chain of ${o.chains} fits --max-length`);
    const bundle = createMote(m.model, config, { seed });
    const trainer = new Trainer(m.model, bundle, res.examples, {
      steps,
      lr: numOpt('lr', o.lr, 0, 10, 2e-4),
      warmupSteps: intOpt('warmup', o.warmup, 0, Math.min(10, steps - 1)),
      pSkip: numOpt('p-skip', o.pSkip, 0, 1, 0.3),
      batchTokens: intOpt('batch-tokens', o.batchTokens, 2, 512),
      gradAccum: intOpt('grad-accum', o.gradAccum, 1, 1),
      seed,
      onProgress: (q) => p.update(q.step, { loss: q.loss.toFixed(4), lr: q.lr.toExponential(2), 'tok/s': q.tokensPerSecond.toFixed(0) }),
    });
    try {
      if (o.resume) {
        // The newest complete checkpoint, also one a killed save left beside --checkpoint; none
        // at all is a first run (said so); checkpoints none of which is complete are an error.
        if (findCheckpoint(o.checkpoint!) === null) p.log(`--resume: no checkpoint in ${o.checkpoint} yet: starting fresh at step 0`);
        else p.log((await loadCheckpoint(trainer, o.checkpoint!)).message);
      }
      const r = await trainer.run({
        ...(o.checkpoint
          ? {
              checkpointDir: o.checkpoint,
              checkpointEvery: intOpt('checkpoint-every', o.checkpointEvery, 0, 0),
              checkpointOverwrite: overwrite,
            }
          : {}),
        handleSigint: true,
      });
      p.stop();
      if (r.interrupted) {
        const msg = `interrupted at step ${r.state.step}${o.checkpoint ? `; checkpoint saved in ${o.checkpoint}, rerun with --resume` : ' (no --checkpoint: progress is lost)'}`;
        if (json)
          process.stdout.write(JSON.stringify({ event: 'interrupted', step: r.state.step, checkpoint: o.checkpoint ?? null }) + '\n');
        else process.stderr.write(`${msg}\n`);
        process.exitCode = 130;
        return;
      }
      await saveMote(bundle, o.out, { overwrite });
      const losses = r.state.losses;
      const summary = {
        event: 'done',
        out: path.resolve(o.out),
        steps: r.state.step,
        firstLoss: losses[0],
        lastLoss: losses[losses.length - 1],
        examples: res.examples.length,
      };
      if (json) process.stdout.write(JSON.stringify(summary) + '\n');
      else
        process.stdout.write(
          `trained ${r.state.step} steps on ${res.examples.length} chains: loss ${summary.firstLoss?.toFixed(4)} → ${summary.lastLoss?.toFixed(4)}; bundle saved to ${summary.out}\n`,
        );
    } finally {
      trainer.dispose();
      bundle.dispose();
    }
  } finally {
    m.close();
  }
}
