// Training checkpoints: everything a run needs to continue exactly where it stopped.
//
//   <dir>/trainer_state.json    counters (step, epoch, cursor), seed, loss history, options,
//                               the data fingerprint and the parameter list
//   <dir>/params.safetensors    the trained tensors, f32, bit-exact (LoRA stacks by
//                               `lora.<layer>.<module>.A|B`, base weights by HF name)
//   <dir>/optimizer.safetensors AdamW moments `<param>.exp_avg` / `<param>.exp_avg_sq`
//   <dir>/adapters/             the MoTE bundle in its PEFT layout (saveMote), for users
//   <dir>/mote-written.json     mote's marker: every file above with its size and SHA-256
//
// The whole directory is written next to its place and swapped in (src/io/atomic_dir.ts):
// an interrupted save leaves the previous checkpoint intact, and a kill between the two
// renames leaves a complete checkpoint in `<dir>.tmp-<pid>` (the new one) and/or
// `<dir>.old-<pid>` (the previous one). loadCheckpoint takes the newest complete one of
// these (complete = the marker's files all check and the state file parses), moves it into
// place and removes the stale temporaries by their marker. There is no separate RNG state:
// every draw is seeded from (seed, counters), see src/train/trainer.ts.
//
// Checkpoints written before the marker existed are recognised by trainer_state.json's
// format 'mote-checkpoint' (and their adapters/ by mote.json's format 'mote').

import { ArgumentError, FormatError, describe } from '../errors.js';
import {
  MARKER_FILE,
  checkWrittenDir,
  cleanStaleTemporaries,
  overwriteOption,
  readMarker,
  removeFiles,
  removeWrittenDir,
  replaceDirAtomically,
  staleTemporaries,
  testPoint,
  tryJson,
  type ReplaceDirOptions,
} from '../io/atomic_dir.js';
import { jsonText, readJsonFile } from '../io/files.js';
import { checkFinite } from '../io/finite.js';
import { readSafetensorsFrom, safetensorsParts, type WritableTensor } from '../io/safetensors.js';
import { openSource, readSourceJson, type FileSource, type SourceInput } from '../io/source.js';
import { openSink, verifyListedFiles, type FileSink } from '../io/sink.js';
import type { Tensor } from '../tensor.js';
import type { AdapterStacks } from '../adapters/stacks.js';
// Only to recognise the adapters/ folder of a checkpoint written before mote's marker existed.
import { legacyBundleFiles } from '../mote/format.js';
import { nodeBuiltin } from '../io/node_builtins.js';
const fs = nodeBuiltin<typeof import('node:fs')>('node:fs');
const path = nodeBuiltin<typeof import('node:path')>('node:path');

/** The counters a run resumes from. */
export interface TrainerState {
  step: number;
  epoch: number;
  /** Index into the epoch's example order of the next example. */
  cursor: number;
  seed: number;
  /** Loss per optimizer step so far. */
  losses: number[];
}

/** What a checkpoint saves of a trainer and restores into it (a Trainer is one). */
export interface CheckpointTrainer {
  /** The trained tensors with their AdamW moments, in a fixed order. */
  readonly params: readonly { readonly name: string; readonly p: Tensor; readonly m: Tensor; readonly v: Tensor }[];
  readonly options: { readonly seed: number; readonly steps: number };
  readonly state: TrainerState;
  /** The data fingerprint: a resumed run must see the same examples. */
  readonly fingerprint: string;
  /** Adapters that have a folder format of their own are saved into adapters/ too. */
  readonly adapters: AdapterStacks | null;
  restoreState(s: TrainerState): void;
  /** A step is in flight (its tensors are half-updated): saving or loading then is refused. */
  readonly busy?: boolean;
}

function checkNotStepping(op: string, trainer: CheckpointTrainer): void {
  if (trainer && trainer.busy === true)
    throw new ArgumentError(`${op}: trainer: a step is in flight (its parameters are half-updated); await trainStep() first`);
}

export const CHECKPOINT_STATE_FILE = 'trainer_state.json';
export const CHECKPOINT_FORMAT = 'mote-checkpoint';
const VERSION = 1;
const FILES = [CHECKPOINT_STATE_FILE, 'params.safetensors', 'optimizer.safetensors'];

/** A checkpoint folder written by mote before the marker existed: its files, or null. */
function legacyCheckpointFiles(dir: string): string[] | null {
  const st = tryJson(path.join(dir, CHECKPOINT_STATE_FILE));
  if (!st || st.format !== CHECKPOINT_FORMAT) return null;
  const adapters = legacyBundleFiles(path.join(dir, 'adapters')) ?? [];
  return [...FILES, ...adapters.map((f) => `adapters/${f}`)];
}

export const CHECKPOINT_DIR_OPTIONS: ReplaceDirOptions = { kind: CHECKPOINT_FORMAT, legacy: legacyCheckpointFiles };

/**
 * Saves `trainer`'s parameters, moments and counters to `dir` atomically. A non-empty `dir`
 * that mote did not write is refused unless opts.overwrite (then its own files are kept; see
 * src/io/atomic_dir.ts).
 */
export async function saveCheckpoint(
  trainer: CheckpointTrainer,
  dir: string | FileSink,
  opts: { overwrite?: boolean } = {},
): Promise<void> {
  const op = 'saveCheckpoint';
  checkNotStepping(op, trainer);
  if (typeof dir === 'string' && dir === '') throw new ArgumentError(`${op}: dir: expected a directory path, got ${describe(dir)}`);
  const sink = openSink(dir, op);
  if (!opts || typeof opts !== 'object') throw new ArgumentError(`${op}: opts: expected { overwrite? }, got ${describe(opts)}`);
  const overwrite = overwriteOption(op, opts.overwrite);
  // Read everything first: the device may be busy, the files are written in one go.
  const params = new Map<string, WritableTensor>();
  const moments = new Map<string, WritableTensor>();
  const step0 = trainer.state.step;
  for (const p of trainer.params) {
    params.set(p.name, { dtype: 'f32', shape: [...p.p.shape], data: await p.p.readFloat() });
    moments.set(`${p.name}.exp_avg`, { dtype: 'f32', shape: [...p.m.shape], data: await p.m.readFloat() });
    moments.set(`${p.name}.exp_avg_sq`, { dtype: 'f32', shape: [...p.v.shape], data: await p.v.readFloat() });
  }
  // A step that ran during the reads would leave a checkpoint mixing two steps.
  checkNotStepping(op, trainer);
  if (trainer.state.step !== step0)
    throw new ArgumentError(`${op}: trainer: a step ran while the checkpoint was being read; save between steps`);
  const { onProgress: _drop, ...options } = trainer.options as typeof trainer.options & { onProgress?: unknown };
  const state = {
    format: CHECKPOINT_FORMAT,
    version: VERSION,
    ...trainer.state,
    fingerprint: trainer.fingerprint,
    options,
    params: trainer.params.map((p) => ({ name: p.name, shape: [...p.p.shape] })),
  };
  await sink.replaceDir(op, { ...CHECKPOINT_DIR_OPTIONS, overwrite }, async (w) => {
    await w.write('params.safetensors', safetensorsParts(params));
    testPoint('checkpoint-file');
    await w.write('optimizer.safetensors', safetensorsParts(moments));
    testPoint('checkpoint-file');
    // On disk adapters/ is a saved bundle of its own (with its marker), as before sinks existed.
    if (trainer.adapters)
      await trainer.adapters.saveForCheckpoint(w.path !== undefined ? path.join(w.path, 'adapters') : w.sub('adapters'));
    testPoint('checkpoint-file');
    await w.write(CHECKPOINT_STATE_FILE, jsonText(state));
  });
}

type CheckpointState = TrainerState & {
  fingerprint: string;
  params: { name: string; shape: number[] }[];
  options: Record<string, unknown>;
};

/** Reads a checkpoint's state file (checked), without touching a trainer. */
export function readCheckpointState(dir: string): CheckpointState {
  const file = path.join(dir, CHECKPOINT_STATE_FILE);
  return checkCheckpointState(readJsonFile(file, 'not a mote checkpoint directory'), file);
}

/** Checks a parsed trainer_state.json; `file` names it in errors. */
function checkCheckpointState(json: unknown, file: string): CheckpointState {
  const j = json as Record<string, unknown>;
  if (!j || typeof j !== 'object' || j.format !== CHECKPOINT_FORMAT)
    throw new FormatError(`${file}: not a mote checkpoint (format ${describe(j?.format)})`);
  if (j.version !== VERSION)
    throw new FormatError(`${file}: checkpoint version ${describe(j.version)}, this mote reads version ${VERSION}`);
  for (const k of ['step', 'epoch', 'cursor', 'seed'] as const) {
    if (!Number.isSafeInteger(j[k]) || (j[k] as number) < 0)
      throw new FormatError(`${file}: ${k}: expected a non-negative integer, got ${describe(j[k])}`);
  }
  if (!Array.isArray(j.losses) || !j.losses.every((v) => typeof v === 'number'))
    throw new FormatError(`${file}: losses: expected a list of numbers`);
  if (typeof j.fingerprint !== 'string') throw new FormatError(`${file}: fingerprint: expected a string`);
  if (!Array.isArray(j.params)) throw new FormatError(`${file}: params: expected a list`);
  j.params.forEach((p: unknown, i) => {
    const e = p as { name?: unknown; shape?: unknown } | null;
    if (
      !e ||
      typeof e !== 'object' ||
      typeof e.name !== 'string' ||
      !Array.isArray(e.shape) ||
      !e.shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)
    )
      throw new FormatError(`${file}: params[${i}]: expected { name: string, shape: [non-negative integers] }, got ${describe(p)}`);
  });
  return j as unknown as CheckpointState;
}

/** Why `dir` is not a complete checkpoint, or null when it is. */
function incompleteCheckpoint(dir: string): string | null {
  const marker = readMarker(dir);
  if (marker) {
    if (marker.kind !== CHECKPOINT_FORMAT) return `${path.join(dir, MARKER_FILE)}: a mote ${marker.kind}, not a checkpoint`;
    const why = checkWrittenDir(dir);
    if (why) return why;
  } else {
    // Written before the marker: the state file was written last and marks it complete.
    for (const f of FILES.slice(1)) if (!fs.existsSync(path.join(dir, f))) return `${path.join(dir, f)}: missing`;
  }
  try {
    readCheckpointState(dir);
  } catch (e) {
    return (e as Error).message;
  }
  return null;
}

/** Where a resume starts: the folder taken, its step, and one line that says so. */
export interface ResumePoint {
  dir: string;
  step: number;
  recoveredFrom: string | null;
  message: string;
}

/**
 * The newest complete checkpoint for `dir`: `dir` itself or a complete `<dir>.tmp-<pid>` /
 * `<dir>.old-<pid>` left by a writer that was killed (at equal steps `dir` wins). Null when
 * there is none of any kind; a FormatError when there are checkpoint folders but none is
 * complete (the message lists why), so that a resume never silently starts over.
 */
export function findCheckpoint(dir: string): { dir: string; step: number; which: 'dir' | 'tmp' | 'old'; rejected: string[] } | null {
  dir = path.resolve(dir);
  const candidates: { dir: string; which: 'dir' | 'tmp' | 'old' }[] = [];
  if (fs.existsSync(dir)) candidates.push({ dir, which: 'dir' });
  for (const s of staleTemporaries(dir)) candidates.push({ dir: s.path, which: s.which });
  let best: { dir: string; step: number; which: 'dir' | 'tmp' | 'old' } | null = null;
  const rejected: string[] = [];
  let any = false;
  for (const c of candidates) {
    // Neither mote's marker nor its earlier layout: not a checkpoint (nothing to resume from).
    // A marker still in progress: a save killed before it finished (removed by the next one).
    const m = fs.statSync(c.dir).isDirectory() ? readMarker(c.dir) : null;
    if (!fs.statSync(c.dir).isDirectory() || (!m && legacyCheckpointFiles(c.dir) === null) || (m && !m.complete)) continue;
    any = true;
    const why = incompleteCheckpoint(c.dir);
    if (why) {
      rejected.push(why);
      continue;
    }
    const step = readCheckpointState(c.dir).step;
    if (!best || step > best.step) best = { ...c, step };
  }
  if (best) return { ...best, rejected };
  if (!any) return null;
  throw new FormatError(`${dir}: no complete checkpoint (${rejected.join('; ')})`);
}

/**
 * Finds the newest complete checkpoint for `dir` (findCheckpoint), moves it into place when
 * it is a temporary left by a killed writer, and removes the stale temporaries (only the
 * ones mote wrote, by their marker). Null when there is no checkpoint at all.
 */
export function recoverCheckpoint(dir: string): ResumePoint | null {
  const op = 'recoverCheckpoint';
  if (typeof dir !== 'string' || dir === '') throw new ArgumentError(`${op}: dir: expected a directory path, got ${describe(dir)}`);
  dir = path.resolve(dir);
  const found = findCheckpoint(dir);
  if (!found) return null;
  let from = found.dir;
  if (found.which !== 'dir') {
    try {
      // What stands at `dir` is an older or incomplete checkpoint of mote's (a foreign folder
      // there would not be replaced: then the temporary is read where it is).
      const aside = `${dir}.old-${process.pid}`;
      const movable = !fs.existsSync(dir) || ((readMarker(dir) !== null || legacyCheckpointFiles(dir) !== null) && !fs.existsSync(aside));
      if (movable) {
        if (fs.existsSync(dir)) fs.renameSync(dir, aside);
        fs.renameSync(found.dir, dir);
        from = dir;
        if (fs.existsSync(aside)) removeWrittenDir(aside) || removeLegacy(aside);
      }
    } catch {
      /* read-only or raced: read the temporary where it is */
    }
  }
  if (from === dir) cleanStaleTemporaries(dir);
  const recoveredFrom = found.which === 'dir' ? null : found.dir;
  const message = recoveredFrom
    ? `resumed from ${recoveredFrom} at step ${found.step} (the newest complete checkpoint, left by an interrupted save${from === dir ? `; moved to ${dir}` : ''})`
    : `resumed from ${dir} at step ${found.step}`;
  return { dir: from, step: found.step, recoveredFrom, message };
}

function removeLegacy(dir: string): boolean {
  const files = legacyCheckpointFiles(dir);
  if (!files) return false;
  removeFiles(dir, files);
  return true;
}

/**
 * Restores `trainer` from the newest complete checkpoint for `dir` (recoverCheckpoint):
 * parameters, moments and counters; returns where it resumed, with a one-line message. No
 * checkpoint at all is a FormatError (a caller that wants a fresh start checks
 * findCheckpoint first). The trainer must have been
 * built for the same model shape, adapters and data (the data fingerprint is checked), and
 * with the same seed. Options that change the trajectory (lr, batch sizes, pSkip, ...) are
 * taken from the trainer, so a resumed run may change them on purpose.
 *
 * `dir` may also be a source (a URL, File/Blob objects, bytes, an OPFS folder, a FileSource:
 * src/io/source.ts): that folder is read as it is (there are no temporaries beside it to
 * recover from); its marker, when present, must be complete and every file it lists must
 * have the size and SHA-256 written.
 */
export async function loadCheckpoint(trainer: CheckpointTrainer, dir: SourceInput): Promise<ResumePoint> {
  const op = 'loadCheckpoint';
  checkNotStepping(op, trainer);
  if (dir === '' || dir === null || dir === undefined)
    throw new ArgumentError(`${op}: dir: expected a directory path, got ${describe(dir)}`);
  let src: FileSource;
  let point: ResumePoint;
  if (typeof dir === 'string' && !/^https?:\/\//i.test(dir)) {
    const found = recoverCheckpoint(dir);
    if (!found) {
      // Not a checkpoint: say what is there (the usual message of a folder without a state file).
      readCheckpointState(dir);
      throw new FormatError(`${dir}: no checkpoint`);
    }
    point = found;
    src = openSource(point.dir, op, 'dir');
  } else {
    src = openSource(dir, op, 'dir');
    const why = await incompleteSource(src);
    if (why) throw new FormatError(`${src.name}: not a complete checkpoint (${why})`);
    point = { dir: src.name, step: 0, recoveredFrom: null, message: '' };
  }
  const file = src.where(CHECKPOINT_STATE_FILE);
  const st = checkCheckpointState(await readSourceJson(src, CHECKPOINT_STATE_FILE, 'not a mote checkpoint directory'), file);
  if (!point.message) point = { ...point, step: st.step, message: `resumed from ${src.name} at step ${st.step}` };
  if (st.fingerprint !== trainer.fingerprint) {
    throw new ArgumentError(
      `${op}: ${file}: the checkpoint was trained on other data (fingerprint ${st.fingerprint}, these examples ${trainer.fingerprint})`,
    );
  }
  if (st.seed !== trainer.options.seed)
    throw new ArgumentError(`${op}: ${file}: the checkpoint's seed is ${st.seed}, the trainer's ${trainer.options.seed}`);
  if (st.step > trainer.options.steps)
    throw new ArgumentError(`${op}: ${file}: the checkpoint is at step ${st.step}, past the trainer's ${trainer.options.steps} steps`);
  const want = trainer.params.map((p) => `${p.name} [${p.p.shape.join(', ')}]`).join(', ');
  const have = st.params.map((p) => `${p.name} [${p.shape.join(', ')}]`).join(', ');
  if (want !== have) throw new ArgumentError(`${op}: ${file}: the checkpoint holds other parameters than this trainer trains`);
  const pf = src.where('params.safetensors');
  const of = src.where('optimizer.safetensors');
  const params = (await readSafetensorsFrom(src, 'params.safetensors')).tensors;
  const moments = (await readSafetensorsFrom(src, 'optimizer.safetensors')).tensors;
  // Check every tensor before writing any: a bad checkpoint leaves the trainer as it was.
  const writes: [Tensor, Float32Array][] = [];
  for (const p of trainer.params) {
    for (const [f, map, name, t] of [
      [pf, params, p.name, p.p],
      [of, moments, `${p.name}.exp_avg`, p.m],
      [of, moments, `${p.name}.exp_avg_sq`, p.v],
    ] as const) {
      const h = map.get(name);
      if (!h) throw new FormatError(`${f}: tensor '${name}' is missing`);
      if (h.dtype !== 'f32' || h.shape.join(',') !== t.shape.join(','))
        throw new FormatError(`${f}: tensor '${name}': expected f32 [${t.shape.join(', ')}], got ${h.dtype} [${h.shape.join(', ')}]`);
      // A NaN or ∞ would only surface steps later as a "loss is not finite"; a negative
      // second moment makes AdamW's sqrt NaN.
      checkFinite(f, name, h);
      if (map === moments && name.endsWith('.exp_avg_sq')) {
        const i = (h.data as Float32Array).findIndex((x) => x < 0);
        if (i >= 0) throw new FormatError(`${f}: tensor '${name}': element ${i} is ${h.data[i]}; a second moment must be ≥ 0`);
      }
      writes.push([t, h.data as Float32Array]);
    }
  }
  checkNotStepping(op, trainer);
  for (const [t, d] of writes) t.write(d);
  trainer.restoreState({ step: st.step, epoch: st.epoch, cursor: st.cursor, seed: st.seed, losses: st.losses });
  return point;
}

/** Why a checkpoint folder of a source is not complete by its marker (when it has one), or null. */
async function incompleteSource(src: FileSource): Promise<string | null> {
  if (!(await src.has(MARKER_FILE))) return null;
  const m = (await readSourceJson(src, MARKER_FILE, 'the marker of a folder mote wrote', 16 * 1024 * 1024)) as Record<string, unknown>;
  if (!m || typeof m !== 'object' || m.format !== 'mote-written') return `${src.where(MARKER_FILE)}: not mote's marker`;
  if (m.kind !== CHECKPOINT_FORMAT) return `${src.where(MARKER_FILE)}: a mote ${String(m.kind)}, not a checkpoint`;
  if (m.complete !== true) return `${src.where(MARKER_FILE)}: the write was interrupted`;
  return verifyListedFiles(src, m.files);
}
