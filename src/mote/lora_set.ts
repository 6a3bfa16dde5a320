// A fresh trainable plain LoRA (one adapter, f32, PEFT init) on every target linear of a
// model: the "one LoRA" baseline of the toy evaluation. It is an AdapterSet with L = 1, so
// the Trainer trains it on every token and AdapterSet.routing serves it. Built like
// createMote's stacks (same init draw); it would sit naturally next to createMote in
// bundle.ts, which does not export its upload helper, hence the small upload here.

import type { Tensor } from '../tensor.js';
import { ArgumentError, describe } from '../errors.js';
import { LINEAR_MODULES, linearShape, type LinearModule } from '../model/config.js';
import type { LlamaModel } from '../model/llama.js';
import { loraStack } from '../ops/lora.js';
import { makePeftConfig, parsePeftConfig } from '../io/peft.js';
import { AdapterSet, type LayerStacks } from './bundle.js';
import { mulberry32 } from '../rng.js';

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


/** A fresh trainable LoRA adapter (AdapterSet with L = 1, f32) on `model`'s backend. */
export function createLora(model: LlamaModel, opts: CreateLoraOptions = {}): AdapterSet {
  const op = 'createLora';
  if (!model || typeof model !== 'object' || typeof (model as { forward?: unknown }).forward !== 'function') throw new ArgumentError(`${op}: model: expected a LlamaModel, got ${describe(model)}`);
  if (model.disposed) throw new ArgumentError(`${op}: model: was disposed`);
  if (!opts || typeof opts !== 'object') throw new ArgumentError(`${op}: opts: expected an object, got ${describe(opts)}`);
  const R = opts.rank ?? 16;
  if (typeof R !== 'number' || !Number.isSafeInteger(R) || R < 1) throw new ArgumentError(`${op}: rank: expected a positive integer, got ${describe(opts.rank)}`);
  const loraAlpha = opts.loraAlpha ?? 2 * R;
  if (typeof loraAlpha !== 'number' || !Number.isFinite(loraAlpha) || loraAlpha <= 0) throw new ArgumentError(`${op}: loraAlpha: expected a positive number, got ${describe(opts.loraAlpha)}`);
  const targets = opts.targetModules ?? [...LINEAR_MODULES];
  if (!Array.isArray(targets) || targets.length === 0) throw new ArgumentError(`${op}: targetModules: expected a non-empty list of ${LINEAR_MODULES.join(', ')}, got ${describe(targets)}`);
  targets.forEach((m, i) => {
    if (!(LINEAR_MODULES as readonly unknown[]).includes(m)) throw new ArgumentError(`${op}: targetModules[${i}]: unknown module ${describe(m)} (expected one of ${LINEAR_MODULES.join(', ')})`);
    if (targets.indexOf(m) !== i) throw new ArgumentError(`${op}: targetModules[${i}]: '${m}' is listed twice`);
  });
  const seed = opts.seed ?? 0;
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed)) throw new ArgumentError(`${op}: seed: expected an integer, got ${describe(opts.seed)}`);
  const init = opts.init ?? 'peft';
  if (init !== 'peft' && init !== 'random') throw new ArgumentError(`${op}: init: expected 'peft' or 'random', got ${describe(init)}`);
  const modules = LINEAR_MODULES.filter((m) => targets.includes(m));
  const mc = model.config, be = model.backend;
  const r = mulberry32(seed);
  const stacks: LayerStacks[] = [];
  const made: Tensor[] = [];
  try {
    for (let l = 0; l < mc.numLayers; l++) {
      const layer: LayerStacks = {};
      for (const m of modules) {
        const [Hout, Hin] = linearShape(mc, m);
        // PEFT: kaiming_uniform_(A, a=√5) → U(−1/√in, 1/√in); B = 0.
        const A = new Float32Array(R * Hin);
        const bound = 1 / Math.sqrt(Hin);
        for (let i = 0; i < A.length; i++) A[i] = (2 * r() - 1) * bound;
        const B = new Float32Array(Hout * R);
        if (init === 'random') for (let i = 0; i < B.length; i++) B[i] = (2 * r() - 1) / Math.sqrt(R);
        const tA = be.tensor(A, [1, R, Hin], 'f32');
        made.push(tA);
        const tB = be.tensor(B, [1, Hout, R], 'f32');
        made.push(tB);
        const s = loraStack(tA, tB, { rank: [R], scale: [loraAlpha / R] });
        made.push(s.rank, s.scale);
        layer[m] = s;
      }
      stacks.push(layer);
    }
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
  const config = parsePeftConfig(makePeftConfig({ r: R, loraAlpha, targetModules: modules, baseModelNameOrPath: model.dir }));
  return new AdapterSet(mc, be, stacks, [NEW_LORA_DIR], [config]);
}
