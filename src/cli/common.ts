// What the CLI commands share: opening a backend and a model directory with its tokenizer
// and the MoTE step tokens, and parsing numeric options into clear one-line errors.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArgumentError } from '../errors.js';
import { MAX_INT_FLAG, intFlag, numFlag } from './flags.js';
import type { BackendRequest } from '../backend/backend.js';
import type { MoteConfig } from '../mote/steps.js';
import { bundleConfigAt, openModelFolder, type OpenedModel } from '../generate/chat.js';

export type Opened = OpenedModel;

/**
 * Opens `dir` (default: the bundled model) on `backend` with its tokenizer, the step tags
 * added as single tokens (growing the embeddings when needed); errors name --model.
 */
export function openModel(
  dirOpt: string | undefined,
  backendReq: BackendRequest,
  config: Pick<MoteConfig, 'steps'>,
  opts: { dtype?: 'f32' | 'f16' | 'bf16' } = {},
): Promise<Opened> {
  return openModelFolder(dirOpt, backendReq, config, { ...opts, what: '--model' });
}

/** An integer flag in [lo, hi] (default: i32 range), `dflt` when absent; see intFlag. */
export function intOpt(name: string, v: string | undefined, lo: number, dflt: number, hi = MAX_INT_FLAG): number {
  return intFlag(name, v, lo, hi, dflt);
}

/** A number flag in [lo, hi], `dflt` when absent; see numFlag. */
export function numOpt(name: string, v: string | undefined, lo: number, hi: number, dflt: number): number {
  return numFlag(name, v, lo, hi, dflt);
}

/** The MoTE config of the bundle in `dir` (its mote.json), or the default config without one. */
export function bundleConfig(dir: string | undefined): MoteConfig {
  return bundleConfigAt(dir, '--mote');
}

/** `p` resolved through symlinks as far as it exists (the rest appended), so two spellings of one folder compare equal. */
function realish(p: string): string {
  const abs = path.resolve(p);
  const rest: string[] = [];
  for (let d = abs; ; d = path.dirname(d)) {
    try {
      return path.join(fs.realpathSync(d), ...rest);
    } catch {
      if (path.dirname(d) === d) return abs;
      rest.unshift(path.basename(d));
    }
  }
}

/**
 * Refuses an output folder that is, holds or lies in an input folder: replacing it would
 * delete or overwrite the input the same command reads (--overwrite does not change that).
 */
export function checkApart(outFlag: string, out: string, inFlag: string, input: string): void {
  const a = realish(out);
  const b = realish(input);
  const inside = (x: string, y: string) => x === y || x.startsWith(y.endsWith(path.sep) ? y : y + path.sep);
  if (inside(a, b) || inside(b, a))
    throw new ArgumentError(
      `${outFlag}: ${out} ${a === b ? 'is' : inside(a, b) ? 'lies in' : 'holds'} ${inFlag} ${input}; writing there would replace it: choose another folder`,
    );
}
