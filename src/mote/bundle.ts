// MoTE bundles in memory (DESIGN §1): per adapted linear one LoRA stack holding an expert per
// step plus the shared expert (L = steps + 1; index i = step i, the last = shared), on the
// model's backend, and their step-level routing (K = 2 slots per token: [step, shared] with
// weights [α, 1 − α]). The folder format is src/mote/format.ts; saveMote and loadMote are
// src/mote/bundle_io.ts. A bundle is written into `<dir>.tmp-<pid>` and renamed into place,
// so a reader never sees a half-written bundle; mote-written.json marks the folder as mote's
// (src/io/atomic_dir.ts: a folder mote did not write is never replaced without overwrite,
// and no file mote did not write is ever deleted).

import type { Backend } from '../backend/backend.js';
import { overwriteOption } from '../io/atomic_dir.js';
import { openSink, type DirWriter, type FileSink } from '../io/sink.js';
import { mulberry32 } from '../rng.js';
import { ArgumentError, FormatError, describe } from '../errors.js';
import type { ModelConfig } from '../model/config.js';
import type { LlamaModel } from '../model/llama.js';
import type { RouteSlots, TokenRouter } from '../generate/generate.js';
import type { MoteTokenizer } from '../io/tokenizer.js';
import { fileIn } from '../io/source.js';
import { loraRouting, type LoraRouting } from '../ops/lora.js';
import {
  AdapterStacks,
  checkModel,
  checkPromptRouting,
  checkSeed,
  freshStacks,
  type LayerStacks,
  type PromptRouting,
  type TrainBatchRouting,
} from '../adapters/stacks.js';
import { SHARED_EXPERT, moteConfig, type MoteConfig, DEFAULT_STEPS, specialTokens } from './steps.js';
import { MOTE_DIR_OPTIONS, writeMoteFolder } from './format.js';

export interface MoteRoutingOptions {
  /** [T] sequence id of each token (default all 0); 'random-step' draws one step per sequence. */
  seq?: ArrayLike<number>;
  /** Default: the bundle's config. */
  promptRouting?: PromptRouting;
  /** Seed of the 'random-step' draw; the same seed gives the same routing. Default: a random seed. */
  seed?: number;
}

/**
 * Host side of MoTE routing: slots and weights [T, 2]. stepIds[t] = −1 for a prompt token,
 * else the index of its step. A chain token gets [step, shared] with [α, 1 − α]; a prompt
 * token [−1, shared] with [0, 1] ('shared'), or a step drawn per sequence with [α, 1 − α]
 * ('random-step'). The shared expert is index numSteps.
 */
export function moteRoutingSlots(
  stepIds: ArrayLike<number>,
  numSteps: number,
  alpha: number,
  opts: MoteRoutingOptions & { promptRouting: PromptRouting },
): { slots: Int32Array; weight: Float32Array } {
  const op = 'MoteBundle.routing';
  if (!stepIds || typeof stepIds.length !== 'number' || stepIds.length === 0)
    throw new ArgumentError(`${op}: stepIds: expected one step index per token (−1 = prompt), got ${describe(stepIds)}`);
  const T = stepIds.length;
  const promptRouting = checkPromptRouting(op, opts.promptRouting);
  const seq = opts.seq;
  if (seq !== undefined && (!seq || seq.length !== T))
    throw new ArgumentError(`${op}: seq: expected ${T} sequence ids (one per token), got ${describe(seq)}`);
  const S = numSteps;
  const slots = new Int32Array(2 * T);
  const weight = new Float32Array(2 * T);
  let seed: number;
  if (opts.seed === undefined) seed = Math.floor(Math.random() * 0x100000000);
  else seed = checkSeed(op, opts.seed);
  const drawn = new Map<number, number>();
  const stepOfSeq = (s: number): number => {
    let v = drawn.get(s);
    if (v === undefined) {
      // Depends only on (seed, sequence id): the same sequence gets the same step whatever the batch order.
      const r = mulberry32((seed ^ Math.imul(s + 1, 0x9e3779b1)) >>> 0);
      r();
      v = Math.min(S - 1, Math.floor(r() * S));
      drawn.set(s, v);
    }
    return v;
  };
  for (let t = 0; t < T; t++) {
    const st = stepIds[t]!;
    if (!Number.isInteger(st) || st < -1 || st >= S)
      throw new ArgumentError(`${op}: stepIds[${t}]: expected −1 (prompt) or a step index in [0, ${S - 1}], got ${st}`);
    slots[2 * t + 1] = S;
    if (st >= 0) {
      slots[2 * t] = st;
      weight[2 * t] = alpha;
      weight[2 * t + 1] = 1 - alpha;
    } else if (promptRouting === 'shared') {
      slots[2 * t] = -1;
      weight[2 * t] = 0;
      weight[2 * t + 1] = 1;
    } else {
      const s = seq === undefined ? 0 : seq[t]!;
      if (!Number.isSafeInteger(s) || s < 0) throw new ArgumentError(`${op}: seq[${t}]: expected a non-negative integer, got ${s}`);
      slots[2 * t] = stepOfSeq(s);
      weight[2 * t] = alpha;
      weight[2 * t + 1] = 1 - alpha;
    }
  }
  return { slots, weight };
}

/**
 * The K = 2 slots of one token of a bundle whose experts sit at slots first.. (steps) and
 * `shared`: a step's token → [that step's expert, shared] with [α, 1 − α]; a prompt token
 * (step −1) → the shared expert alone, or, when α = 1 (no working shared expert: nothing to
 * read the prompt with), the first step's expert, which saw prompts in training.
 */
export function moteStepSlots(step: number, alpha: number, first: number, shared: number): RouteSlots {
  if (step >= 0) return { slots: [first + step, shared], weights: [alpha, 1 - alpha] };
  return alpha === 1 ? { slots: [first, shared], weights: [1, 0] } : { slots: [-1, shared], weights: [0, 1] };
}

/** A MoTE bundle on a model's backend: per adapted linear one stack of L = steps + 1 experts. */
export class MoteBundle extends AdapterStacks {
  /** @internal use createMote or loadMote */
  constructor(
    readonly config: MoteConfig,
    modelConfig: ModelConfig,
    backend: Backend,
    stacks: LayerStacks[],
    readonly baseModel: string | null,
  ) {
    super(modelConfig, backend, stacks, config.steps.length + 1);
  }

  /** Index of the shared expert (the last). */
  get shared(): number {
    return this.config.steps.length;
  }

  /** Expert names by index: the steps, then 'shared'. */
  get experts(): string[] {
    return [...this.config.steps, SHARED_EXPERT];
  }

  /**
   * The routing of a batch (K = 2): stepIds[t] = −1 for a prompt token, else its step index.
   * See moteRoutingSlots. Dispose the routing when done.
   */
  routing(stepIds: ArrayLike<number>, opts: MoteRoutingOptions = {}): LoraRouting {
    this.live('MoteBundle.routing');
    if (!opts || typeof opts !== 'object') throw new ArgumentError(`MoteBundle.routing: opts: expected an object, got ${describe(opts)}`);
    const { slots, weight } = moteRoutingSlots(stepIds, this.config.steps.length, this.config.alpha, {
      ...opts,
      promptRouting: opts.promptRouting ?? this.config.promptRouting,
    });
    return loraRouting(this.backend, slots, { K: 2, L: this.L, weight });
  }

  /**
   * The bundle as a generate() router: chain tokens go to [their step's expert, shared]
   * with [α, 1 − α]; prompt tokens to the shared expert only (inference default), or, when
   * α = 1 (no shared expert), to the first step's expert.
   */
  tokenRouter(): TokenRouter {
    this.live('MoteBundle.tokenRouter');
    const { alpha } = this.config;
    const shared = this.shared;
    return {
      K: 2,
      L: this.L,
      stacks: this.stacks,
      slotsFor: (_seq, { step }) => moteStepSlots(step, alpha, 0, shared),
    };
  }

  override get numSteps(): number {
    return this.config.steps.length;
  }

  /**
   * A training batch's routing: chain tokens to [step, shared] with [α, 1 − α]; prompt tokens
   * as b.promptRouting says ('random-step': one step drawn per sequence from b.seed).
   */
  override batchRouting(b: TrainBatchRouting): LoraRouting {
    return this.routing(b.stepIds, { seq: b.seq, promptRouting: b.promptRouting, seed: b.seed });
  }

  /**
   * Saves the bundle to `dir` (see saveMote): written into `<dir>.tmp-<pid>` and swapped into
   * place; a non-empty `dir` that mote did not write is refused unless opts.overwrite.
   */
  async save(dir: string | FileSink, opts: { overwrite?: boolean } = {}): Promise<void> {
    const op = 'saveMote';
    this.live(op);
    if (typeof dir === 'string' && dir === '') throw new ArgumentError(`${op}: dir: expected a directory path, got ${describe(dir)}`);
    const sink = openSink(dir, op);
    if (!opts || typeof opts !== 'object') throw new ArgumentError(`${op}: opts: expected { overwrite? }, got ${describe(opts)}`);
    const overwrite = overwriteOption(op, opts.overwrite);
    await sink.replaceDir(op, { ...MOTE_DIR_OPTIONS, overwrite }, (w) => writeMoteFolder(this, w));
  }

  /**
   * A checkpoint's adapters/ folder holds the bundle in its PEFT layout, for users: a folder
   * on disk as its own saved bundle (marker included), a folder of a sink as plain files.
   */
  override async saveForCheckpoint(dir: string | DirWriter): Promise<boolean> {
    if (typeof dir === 'string') await this.save(dir);
    else await writeMoteFolder(this, dir);
    return true;
  }
}

/**
 * Makes the step tokens single tokens of `tokenizer` (added as special tokens when missing)
 * and gives every row a new tag takes a seeded row drawn around the mean embedding of the
 * tokenizer's tokens (distinct; see LlamaModel.initTokenRows), in the embedding and an
 * untied lm_head: rows past the model's vocabulary grow it, and rows inside a checkpoint's
 * padding (vocab_size > the tokenizer's ids, as Qwen2.5 and Phi-3 ship) are drawn too, not
 * left untrained and possibly identical. The same on every load. Tags the tokenizer already
 * had keep their rows (they may be trained). Returns the ids, open and close tags of every
 * step in config order. Do this before creating or training a bundle.
 */
export async function addStepTokens(
  model: LlamaModel,
  tokenizer: MoteTokenizer,
  config: Pick<MoteConfig, 'steps'> = { steps: [...DEFAULT_STEPS] },
): Promise<Record<string, number>> {
  const op = 'addStepTokens';
  checkModel(op, model);
  if (!tokenizer || typeof tokenizer.addSpecialTokens !== 'function')
    throw new ArgumentError(`${op}: tokenizer: expected a MoteTokenizer, got ${describe(tokenizer)}`);
  const tokens = specialTokens(config);
  const before = tokenizer.vocabSize;
  const V = model.config.vocabSize;
  // Rows past the model's vocabulary are made up here: fine for step tags, but a text token
  // there would silently get an invented embedding (a tokenizer of another model).
  const tags = new Set(tokens);
  for (let id = V; id < before; id++) {
    const t = tokenizer.idToToken(id);
    if (t !== undefined && !tags.has(t)) {
      throw new FormatError(
        `${fileIn(tokenizer.source, 'tokenizer.json')}: token ${JSON.stringify(t)} has id ${id}, past the model's vocabulary ` +
          `(vocab_size ${V}${model.dir ? ` in ${fileIn(model.dir, 'config.json')}` : ''}): the tokenizer does not belong to this model`,
      );
    }
  }
  const ids = tokenizer.addSpecialTokens(tokens);
  // New tags get ids from the tokenizer's size up; rows past the model's vocabulary are drawn whatever took them.
  const rows = new Set(ids.filter((id) => id >= before));
  const need = Math.max(...ids) + 1;
  for (let r = V; r < need; r++) rows.add(r);
  if (rows.size > 0) await model.initTokenRows([...rows], { meanRows: Math.min(V, before) });
  return Object.fromEntries(tokens.map((t, i) => [t, ids[i]!]));
}

export interface CreateMoteOptions {
  /** Seed of the initial weights (default 0). */
  seed?: number;
  /** 'peft' (default): A kaiming-uniform as PEFT draws it, B = 0 (the bundle starts as the base model); 'random': B random too (tests). */
  init?: 'peft' | 'random';
}

/** A fresh MoTE bundle for `model`: one expert per step plus the shared one on every target linear. */
export function createMote(model: LlamaModel, config: Partial<MoteConfig> = {}, opts: CreateMoteOptions = {}): MoteBundle {
  const op = 'createMote';
  checkModel(op, model);
  const cfg = moteConfig(config, op);
  if (!opts || typeof opts !== 'object') throw new ArgumentError(`${op}: opts: expected { seed?, init? }, got ${describe(opts)}`);
  const seed = checkSeed(op, opts.seed ?? 0);
  const init = opts.init ?? 'peft';
  if (init !== 'peft' && init !== 'random') throw new ArgumentError(`${op}: init: expected 'peft' or 'random', got ${describe(init)}`);
  const stacks = freshStacks(model, cfg.steps.length + 1, cfg.rank, cfg.loraAlpha, cfg.targetModules, seed, init);
  return new MoteBundle(cfg, model.config, model.backend, stacks, model.dir);
}
