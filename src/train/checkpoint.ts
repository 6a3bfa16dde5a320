// Training checkpoints: everything a run needs to continue exactly where it stopped.
//
//   <dir>/trainer_state.json    counters (step, epoch, cursor), seed, loss history, options,
//                               the data fingerprint and the parameter list (written last:
//                               it marks a complete checkpoint)
//   <dir>/params.safetensors    the trained tensors, f32, bit-exact (LoRA stacks by
//                               `lora.<layer>.<module>.A|B`, base weights by HF name)
//   <dir>/optimizer.safetensors AdamW moments `<param>.exp_avg` / `<param>.exp_avg_sq`
//   <dir>/adapters/             the MoTE bundle in its PEFT layout (saveMote), for users
//
// The whole directory is written next to its place and swapped in (src/io/atomic_dir.ts):
// an interrupted save leaves the previous checkpoint intact. There is no separate RNG state:
// every draw is seeded from (seed, counters), see src/train/trainer.ts.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArgumentError, FormatError, describe } from '../errors.js';
import { replaceDirAtomically } from '../io/atomic_dir.js';
import { readSafetensors, writeSafetensors, type WritableTensor } from '../io/safetensors.js';
import { MoteBundle, saveMote } from '../mote/bundle.js';
import type { Trainer, TrainerState } from './trainer.js';

export const CHECKPOINT_STATE_FILE = 'trainer_state.json';
export const CHECKPOINT_FORMAT = 'mote-checkpoint';
const VERSION = 1;

/** Saves `trainer`'s parameters, moments and counters to `dir` atomically. */
export async function saveCheckpoint(trainer: Trainer, dir: string): Promise<void> {
  const op = 'saveCheckpoint';
  if (typeof dir !== 'string' || dir === '') throw new ArgumentError(`${op}: dir: expected a directory path, got ${describe(dir)}`);
  // Read everything first: the device may be busy, the files are written in one go.
  const params = new Map<string, WritableTensor>();
  const moments = new Map<string, WritableTensor>();
  for (const p of trainer.params) {
    params.set(p.name, { dtype: 'f32', shape: [...p.p.shape], data: await p.p.readFloat() });
    moments.set(`${p.name}.exp_avg`, { dtype: 'f32', shape: [...p.m.shape], data: await p.m.readFloat() });
    moments.set(`${p.name}.exp_avg_sq`, { dtype: 'f32', shape: [...p.v.shape], data: await p.v.readFloat() });
  }
  const { onProgress: _drop, ...options } = trainer.options as typeof trainer.options & { onProgress?: unknown };
  const state = {
    format: CHECKPOINT_FORMAT,
    version: VERSION,
    ...trainer.state,
    fingerprint: trainer.fingerprint,
    options,
    params: trainer.params.map((p) => ({ name: p.name, shape: [...p.p.shape] })),
  };
  await replaceDirAtomically(op, dir, CHECKPOINT_STATE_FILE, async (tmp) => {
    writeSafetensors(path.join(tmp, 'params.safetensors'), params);
    writeSafetensors(path.join(tmp, 'optimizer.safetensors'), moments);
    if (trainer.adapters instanceof MoteBundle) await saveMote(trainer.adapters, path.join(tmp, 'adapters'));
    fs.writeFileSync(path.join(tmp, CHECKPOINT_STATE_FILE), JSON.stringify(state, null, 2) + '\n');
  });
}

/** Reads a checkpoint's state file (checked), without touching a trainer. */
export function readCheckpointState(dir: string): TrainerState & { fingerprint: string; params: { name: string; shape: number[] }[]; options: Record<string, unknown> } {
  const file = path.join(dir, CHECKPOINT_STATE_FILE);
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new FormatError(`${file}: not found (not a mote checkpoint directory)`);
    throw new FormatError(`${file}: not valid JSON: ${(e as Error).message}`);
  }
  const j = json as Record<string, unknown>;
  if (!j || typeof j !== 'object' || j.format !== CHECKPOINT_FORMAT) throw new FormatError(`${file}: not a mote checkpoint (format ${describe(j?.format)})`);
  if (j.version !== VERSION) throw new FormatError(`${file}: checkpoint version ${describe(j.version)}, this mote reads version ${VERSION}`);
  for (const k of ['step', 'epoch', 'cursor', 'seed'] as const) {
    if (!Number.isSafeInteger(j[k]) || (j[k] as number) < 0) throw new FormatError(`${file}: ${k}: expected a non-negative integer, got ${describe(j[k])}`);
  }
  if (!Array.isArray(j.losses) || !j.losses.every((v) => typeof v === 'number')) throw new FormatError(`${file}: losses: expected a list of numbers`);
  if (typeof j.fingerprint !== 'string') throw new FormatError(`${file}: fingerprint: expected a string`);
  if (!Array.isArray(j.params)) throw new FormatError(`${file}: params: expected a list`);
  return j as unknown as ReturnType<typeof readCheckpointState>;
}

/**
 * Restores `trainer` from `dir`: parameters, moments and counters. The trainer must have been
 * built for the same model shape, adapters and data (the data fingerprint is checked), and
 * with the same seed. Options that change the trajectory (lr, batch sizes, pSkip, ...) are
 * taken from the trainer, so a resumed run may change them on purpose.
 */
export async function loadCheckpoint(trainer: Trainer, dir: string): Promise<void> {
  const op = 'loadCheckpoint';
  const st = readCheckpointState(dir);
  const file = path.join(dir, CHECKPOINT_STATE_FILE);
  if (st.fingerprint !== trainer.fingerprint) {
    throw new ArgumentError(`${op}: ${file}: the checkpoint was trained on other data (fingerprint ${st.fingerprint}, these examples ${trainer.fingerprint})`);
  }
  if (st.seed !== trainer.options.seed) throw new ArgumentError(`${op}: ${file}: the checkpoint's seed is ${st.seed}, the trainer's ${trainer.options.seed}`);
  if (st.step > trainer.options.steps) throw new ArgumentError(`${op}: ${file}: the checkpoint is at step ${st.step}, past the trainer's ${trainer.options.steps} steps`);
  const want = trainer.params.map((p) => `${p.name} [${p.p.shape.join(', ')}]`).join(', ');
  const have = st.params.map((p) => `${p.name} [${p.shape.join(', ')}]`).join(', ');
  if (want !== have) throw new ArgumentError(`${op}: ${file}: the checkpoint holds other parameters than this trainer trains`);
  const pf = path.join(dir, 'params.safetensors');
  const of = path.join(dir, 'optimizer.safetensors');
  const params = readSafetensors(pf).tensors;
  const moments = readSafetensors(of).tensors;
  // Check every tensor before writing any: a bad checkpoint leaves the trainer as it was.
  const writes: [import('../tensor.js').Tensor, Float32Array][] = [];
  for (const p of trainer.params) {
    for (const [f, map, name, t] of [[pf, params, p.name, p.p], [of, moments, `${p.name}.exp_avg`, p.m], [of, moments, `${p.name}.exp_avg_sq`, p.v]] as const) {
      const h = map.get(name);
      if (!h) throw new FormatError(`${f}: tensor '${name}' is missing`);
      if (h.dtype !== 'f32' || h.shape.join(',') !== t.shape.join(',')) throw new FormatError(`${f}: tensor '${name}': expected f32 [${t.shape.join(', ')}], got ${h.dtype} [${h.shape.join(', ')}]`);
      writes.push([t, h.data as Float32Array]);
    }
  }
  for (const [t, d] of writes) t.write(d);
  trainer.restoreState({ step: st.step, epoch: st.epoch, cursor: st.cursor, seed: st.seed, losses: st.losses });
}
