// Plain multi-adapter serving sets (K = 1, one slot per adapter, ranks may differ): ordinary
// PEFT LoRA adapters loaded side by side, and a fresh trainable LoRA (the "one LoRA"
// baseline of the toy evaluation).

import type { Backend } from '../backend/backend.js';
import { ArgumentError, describe } from '../errors.js';
import { LINEAR_MODULES, type LinearModule, type ModelConfig } from '../model/config.js';
import type { LlamaModel } from '../model/llama.js';
import { MAX_LORA_RANK, loraRouting, type LoraRouting } from '../ops/lora.js';
import { makePeftConfig, parsePeftConfig, type PeftConfig } from '../io/peft.js';
import { checkKnownKeys } from '../ops/check.js';
import { AdapterStacks, checkModel, freshStacks, uploadStacks, type LayerStacks } from './stacks.js';
import { readAdapter, stackAdapters, type ReadAdapter } from './peft_io.js';
import { openSource, type SourceInput } from '../io/source.js';

/** Plain multi-adapter serving set: K = 1, one slot per adapter. */
export class AdapterSet extends AdapterStacks {
  /** @internal use loadPeftAdapters */
  constructor(
    modelConfig: ModelConfig,
    backend: Backend,
    stacks: LayerStacks[],
    readonly dirs: string[],
    readonly configs: PeftConfig[],
  ) {
    super(modelConfig, backend, stacks, dirs.length);
  }

  /** Routing with K = 1: adapter[t] is the adapter of token t (−1 = base model only). */
  routing(adapter: ArrayLike<number>): LoraRouting {
    this.live('AdapterSet.routing');
    if (!adapter || typeof adapter.length !== 'number' || adapter.length === 0)
      throw new ArgumentError(`AdapterSet.routing: adapter: expected one adapter index per token (−1 = none), got ${describe(adapter)}`);
    for (let t = 0; t < adapter.length; t++) {
      const a = adapter[t]!;
      if (!Number.isInteger(a) || a < -1 || a >= this.L)
        throw new ArgumentError(`AdapterSet.routing: adapter[${t}]: expected −1 or an adapter index in [0, ${this.L - 1}], got ${a}`);
    }
    return loraRouting(this.backend, Int32Array.from(adapter), { K: 1, L: this.L });
  }
}

// A fresh plain LoRA: an AdapterSet with L = 1 (the Trainer trains it on every token,
// AdapterSet.routing serves it).

export interface CreateLoraOptions {
  /** LoRA rank. Default 16. */
  rank?: number;
  /** LoRA alpha (scale = alpha / rank). Default 2·rank. */
  loraAlpha?: number;
  /** The linears that get the adapter. Default all seven. */
  targetModules?: LinearModule[];
  /** Seed of the initial A (default 0). */
  seed?: number;
  /** 'peft' (default): A kaiming-uniform, B = 0 (starts as the base model); 'random': B random too (tests). */
  init?: 'peft' | 'random';
}

/** Name of the adapter in AdapterSet.dirs: it was made in memory, not loaded from a folder. */
export const NEW_LORA_DIR = '<new lora>';

const CREATE_LORA_KEYS = ['rank', 'loraAlpha', 'targetModules', 'seed', 'init'];

/** A fresh trainable LoRA adapter (AdapterSet with L = 1, f32) on `model`'s backend. */
export function createLora(model: LlamaModel, opts: CreateLoraOptions = {}): AdapterSet {
  const op = 'createLora';
  checkModel(op, model);
  if (!opts || typeof opts !== 'object') throw new ArgumentError(`${op}: opts: expected an object, got ${describe(opts)}`);
  checkKnownKeys(`${op}: opts`, opts, CREATE_LORA_KEYS);
  const R = opts.rank ?? 16;
  // the factors are allocated by it: 2^40 used to throw a RangeError from a typed array
  if (typeof R !== 'number' || !Number.isSafeInteger(R) || R < 1 || R > MAX_LORA_RANK)
    throw new ArgumentError(`${op}: rank: expected an integer in [1, ${MAX_LORA_RANK}], got ${describe(opts.rank)}`);
  const loraAlpha = opts.loraAlpha ?? 2 * R;
  if (typeof loraAlpha !== 'number' || !Number.isFinite(loraAlpha) || loraAlpha <= 0)
    throw new ArgumentError(`${op}: loraAlpha: expected a positive number, got ${describe(opts.loraAlpha)}`);
  const targets = opts.targetModules ?? [...LINEAR_MODULES];
  if (!Array.isArray(targets) || targets.length === 0)
    throw new ArgumentError(`${op}: targetModules: expected a non-empty list of ${LINEAR_MODULES.join(', ')}, got ${describe(targets)}`);
  targets.forEach((m, i) => {
    if (!(LINEAR_MODULES as readonly unknown[]).includes(m))
      throw new ArgumentError(`${op}: targetModules[${i}]: unknown module ${describe(m)} (expected one of ${LINEAR_MODULES.join(', ')})`);
    if (targets.indexOf(m) !== i) throw new ArgumentError(`${op}: targetModules[${i}]: '${m}' is listed twice`);
  });
  const seed = opts.seed ?? 0;
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed))
    throw new ArgumentError(`${op}: seed: expected an integer, got ${describe(opts.seed)}`);
  const init = opts.init ?? 'peft';
  if (init !== 'peft' && init !== 'random') throw new ArgumentError(`${op}: init: expected 'peft' or 'random', got ${describe(init)}`);
  const modules = LINEAR_MODULES.filter((m) => targets.includes(m));
  const stacks = freshStacks(model, 1, R, loraAlpha, modules, seed, init);
  const config = parsePeftConfig(makePeftConfig({ r: R, loraAlpha, targetModules: modules, baseModelNameOrPath: model.dir }));
  return new AdapterSet(model.config, model.backend, stacks, [NEW_LORA_DIR], [config]);
}

/**
 * Loads ordinary PEFT LoRA adapters (any ranks, rank/alpha patterns, target sets) as one
 * multi-adapter set on the model's backend. Everything is read and checked before anything
 * is uploaded; nothing stays allocated when loading fails.
 */
export async function loadPeftAdapters(model: LlamaModel, dirs: readonly SourceInput[]): Promise<AdapterSet> {
  const op = 'loadPeftAdapters';
  checkModel(op, model);
  if (!Array.isArray(dirs) || dirs.length === 0)
    throw new ArgumentError(`${op}: dirs: expected a non-empty list of adapter folders, got ${describe(dirs)}`);
  // Each a folder path (Node) or any source (a URL, Files, bytes: src/io/source.ts).
  const sources = dirs.map((d, i) => {
    if (typeof d === 'string' && d === '') throw new ArgumentError(`${op}: dirs[${i}]: expected a folder path, got ${describe(d)}`);
    return openSource(d, op, `dirs[${i}]`);
  });
  const adapters: ReadAdapter[] = [];
  for (const src of sources) adapters.push(await readAdapter(model.config, src));
  const stacks = uploadStacks(model.backend, model.config, stackAdapters(model.config, adapters));
  return new AdapterSet(
    model.config,
    model.backend,
    stacks,
    adapters.map((a) => a.dir),
    adapters.map((a) => a.config),
  );
}
