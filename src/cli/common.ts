// What the CLI commands share: opening a backend and a model directory with its tokenizer
// and the MoTE step tokens, and parsing numeric options into clear one-line errors.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_MODEL_DIR } from '../mote/default_model_dir.js';
import { ArgumentError } from '../errors.js';
import { MAX_INT_FLAG, intFlag, numFlag } from './flags.js';
import { openBackend } from '../backend/select.js';
import type { Backend, BackendRequest } from '../backend/backend.js';
import { type LlamaModel } from '../model/llama.js';
import { loadModel } from '../model/load.js';
import { loadTokenizer, type MoteTokenizer } from '../io/tokenizer.js';
import { addStepTokens } from '../mote/bundle.js';
import { MOTE_FILE, readMoteJson } from '../mote/format.js';
import { moteConfig, type MoteConfig } from '../mote/steps.js';


export interface Opened {
  backend: Backend;
  model: LlamaModel;
  tokenizer: MoteTokenizer;
  dir: string;
  close(): void;
}

/**
 * Opens `dir` (default: the bundled model) on `backend` with its tokenizer, the step tags
 * added as single tokens (growing the embeddings when needed).
 */
export async function openModel(dirOpt: string | undefined, backendReq: BackendRequest, config: Pick<MoteConfig, 'steps'>, opts: { dtype?: 'f32' | 'f16' | 'bf16' } = {}): Promise<Opened> {
  const dir = path.resolve(dirOpt ?? DEFAULT_MODEL_DIR);
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    throw new ArgumentError(dirOpt === undefined ? `the bundled model is missing (${dir}); reinstall mote or pass --model DIR` : `--model: ${dir} is not a model directory (no config.json)`);
  }
  if (!fs.existsSync(path.join(dir, 'tokenizer.json'))) throw new ArgumentError(`--model: ${dir} has no tokenizer.json (mote needs the model's tokenizer)`);
  const tokenizer = loadTokenizer(dir);
  const backend = await openBackend(backendReq);
  try {
    const model = await loadModel(dir, opts.dtype ? { backend, dtype: opts.dtype } : { backend });
    await addStepTokens(model, tokenizer, config);
    return { backend, model, tokenizer, dir, close: () => { model.dispose(); backend.destroy(); } };
  } catch (e) {
    backend.destroy();
    throw e;
  }
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
  if (dir === undefined) return moteConfig();
  const f = path.join(dir, MOTE_FILE);
  if (!fs.existsSync(f)) throw new ArgumentError(`--mote: ${dir} is not a MoTE bundle (no ${MOTE_FILE})`);
  return readMoteJson(dir).config;
}
