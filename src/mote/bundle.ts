// MoTE bundles (DESIGN §1, §6): per adapted linear, one LoRA stack holding an expert per step
// plus the shared expert (L = steps + 1; index i = step i, the last = shared), on the
// model's backend; their step-level routing (K = 2 slots per token: [step, shared] with
// weights [α, 1 − α]); saving as a folder of one PEFT adapter per expert + mote.json, and
// loading it back. Also plain multi-adapter serving sets from ordinary PEFT adapters
// (K = 1, one slot per adapter, ranks may differ).
//
// Saved layout:
//   <dir>/mote.json
//   <dir>/<step>/adapter_config.json, adapter_model.safetensors   (one per step)
//   <dir>/shared/adapter_config.json, adapter_model.safetensors
// Every expert folder is an ordinary PEFT LoRA adapter (PEFT key names, scale alpha / r), so
// any PEFT-compatible engine can serve one alone. A bundle is written into `<dir>.tmp-<pid>`
// and renamed into place, so a reader never sees a half-written bundle; mote-written.json
// marks the folder as mote's (src/io/atomic_dir.ts: a folder mote did not write is never
// replaced without overwrite, and no file mote did not write is ever deleted).

import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor.js';
import { overwriteOption, replaceDirAtomically, tryJson, type ReplaceDirOptions } from '../io/atomic_dir.js';
import { checkRegularFile, readJsonFile as readBoundedJson } from '../io/files.js';
import { mulberry32 } from '../rng.js';
import { bf16BitsToF32, f16BitsToF32 } from '../dtype.js';
import { ArgumentError, FormatError, describe } from '../errors.js';
import { LINEAR_MODULES, linearShape, type LinearModule, type ModelConfig } from '../model/config.js';
import type { LlamaLora, LlamaModel } from '../model/llama.js';
import type { TokenRouter } from '../generate/generate.js';
import type { MoteTokenizer } from '../io/tokenizer.js';
import { loraRouting, loraStack, type LoraRouting, type LoraStack, type LoraStrategy } from '../ops/lora.js';
import {
  ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, makePeftConfig, parsePeftConfig, parsePeftKey, peftExpectedWeights, peftKey,
  peftModulePath, peftRank, peftScale, peftTargets, type PeftConfig,
} from '../io/peft.js';
import { SafetensorsReader, writeSafetensors, type HostTensor, type WritableTensor } from '../io/safetensors.js';
import {
  SHARED_EXPERT, STEP_END_TOKENS, STEP_TOKENS, checkPromptRouting, moteConfig, type MoteConfig, type PromptRouting, type StepName,
  DEFAULT_STEPS, specialTokens,
} from './steps.js';

export const MOTE_FILE = 'mote.json';
export const MOTE_FORMAT_VERSION = 1;

/** Per layer, the stack of each adapted linear (a missing module has no adapters). */
export type LayerStacks = Partial<Record<LinearModule, LoraStack>>;


function checkModel(op: string, model: LlamaModel): void {
  if (!model || typeof model !== 'object' || typeof (model as { forward?: unknown }).forward !== 'function' || !(model as { config?: unknown }).config) {
    throw new ArgumentError(`${op}: model: expected a LlamaModel from loadModel(), got ${describe(model)}`);
  }
  if (model.disposed) throw new ArgumentError(`${op}: model: was disposed`);
}

function checkSeed(op: string, seed: unknown): number {
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed)) throw new ArgumentError(`${op}: seed: expected an integer, got ${describe(seed)}`);
  return seed;
}

function freeStacks(stacks: readonly LayerStacks[]): void {
  for (const layer of stacks) {
    for (const s of Object.values(layer)) {
      if (!s) continue;
      for (const t of [s.A, s.B, s.rank, s.scale]) t.dispose();
    }
  }
}

/** Host factors of one linear's stack, f32, PEFT layouts: A [L, R, in], B [L, out, R]. */
interface HostStack {
  A: Float32Array;
  B: Float32Array;
  R: number;
  ranks: Int32Array;
  scales: Float32Array;
}

/** Uploads host stacks; on any failure frees what was already uploaded. */
function uploadStacks(backend: Backend, cfg: ModelConfig, host: readonly Partial<Record<LinearModule, HostStack>>[]): LayerStacks[] {
  const out: LayerStacks[] = [];
  const loose: Tensor[] = [];
  try {
    for (let l = 0; l < host.length; l++) {
      const layer: LayerStacks = {};
      out.push(layer);
      for (const m of LINEAR_MODULES) {
        const h = host[l]![m];
        if (!h) continue;
        const [Hout, Hin] = linearShape(cfg, m);
        const L = h.ranks.length;
        const A = backend.tensor(h.A, [L, h.R, Hin], 'f32');
        loose.push(A);
        const B = backend.tensor(h.B, [L, Hout, h.R], 'f32');
        loose.push(B);
        layer[m] = loraStack(A, B, { rank: h.ranks, scale: h.scales });
        loose.length = 0;
      }
    }
    return out;
  } catch (e) {
    for (const t of loose) t.dispose();
    freeStacks(out);
    throw e;
  }
}

/** One adapter's factors of one linear, as read back from the device. */
export interface ExpertFactors {
  /** [rank, in] */
  A: Float32Array;
  /** [out, rank] */
  B: Float32Array;
  rank: number;
  scale: number;
}

/**
 * Adapter stacks on every linear of a model, routed alike: the common part of a MoTE bundle
 * and of a plain multi-adapter set.
 */
export class AdapterStacks {
  #disposed = false;

  /** @internal */
  constructor(
    readonly modelConfig: ModelConfig,
    readonly backend: Backend,
    /** stacks[layer][module] */
    readonly stacks: LayerStacks[],
    /** Number of adapters in every stack. */
    readonly L: number,
  ) {}

  get disposed(): boolean {
    return this.#disposed || this.backend.destroyed;
  }

  protected live(op: string): void {
    if (this.disposed) throw new ArgumentError(`${op}: used after dispose()`);
  }

  /** The `lora` argument of LlamaModel.forward for a routing built for these stacks. */
  loraFor(routing: LoraRouting, strategy?: LoraStrategy | 'auto'): LlamaLora {
    this.live('loraFor');
    if (!routing || routing.L !== this.L) throw new ArgumentError(`loraFor: routing: expected a LoraRouting built for L = ${this.L} adapters, got ${routing ? `L = ${routing.L}` : describe(routing)}`);
    return strategy === undefined ? { stacks: this.stacks, routing } : { stacks: this.stacks, routing, strategy };
  }

  /** Reads adapter `e`'s factors of one linear back to the host (PEFT layouts), or null when it has none there. */
  async readExpert(e: number, layer: number, module: LinearModule): Promise<ExpertFactors | null> {
    return this.readExpertCached(e, layer, module, null);
  }

  /** @internal readExpert reading each stack from the device once per `cache`. */
  async readExpertCached(e: number, layer: number, module: LinearModule, cache: Map<LoraStack, { A: Float32Array; B: Float32Array; scale: Float32Array }> | null): Promise<ExpertFactors | null> {
    this.live('readExpert');
    if (!Number.isSafeInteger(e) || e < 0 || e >= this.L) throw new ArgumentError(`readExpert: adapter: expected an integer in [0, ${this.L - 1}], got ${describe(e)}`);
    const s = this.stacks[layer]?.[module];
    if (!s) return null;
    let h = cache?.get(s);
    if (!h) {
      h = { A: await s.A.readFloat(), B: await s.B.readFloat(), scale: await s.scale.readFloat() };
      cache?.set(s, h);
    }
    const scale = h.scale[e]!;
    if (scale === 0) return null;
    const [, R, Hin] = s.A.shape as [number, number, number];
    const Hout = s.B.shape[1]!;
    const r = s.ranks[e]!;
    const { A, B } = h;
    const a = new Float32Array(r * Hin);
    for (let i = 0; i < r; i++) a.set(A.subarray((e * R + i) * Hin, (e * R + i + 1) * Hin), i * Hin);
    const b = new Float32Array(Hout * r);
    for (let o = 0; o < Hout; o++) b.set(B.subarray((e * Hout + o) * R, (e * Hout + o) * R + r), o * r);
    return { A: a, B: b, rank: r, scale };
  }

  /** Frees every tensor on the device. Safe to call twice. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    freeStacks(this.stacks);
  }
}

// ---------------------------------------------------------------------------------------
// MoTE bundles

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
export function moteRoutingSlots(stepIds: ArrayLike<number>, numSteps: number, alpha: number, opts: MoteRoutingOptions & { promptRouting: PromptRouting }): { slots: Int32Array; weight: Float32Array } {
  const op = 'MoteBundle.routing';
  if (!stepIds || typeof stepIds.length !== 'number' || stepIds.length === 0) throw new ArgumentError(`${op}: stepIds: expected one step index per token (−1 = prompt), got ${describe(stepIds)}`);
  const T = stepIds.length;
  const promptRouting = checkPromptRouting(op, opts.promptRouting);
  const seq = opts.seq;
  if (seq !== undefined && (!seq || seq.length !== T)) throw new ArgumentError(`${op}: seq: expected ${T} sequence ids (one per token), got ${describe(seq)}`);
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
    if (!Number.isInteger(st) || st < -1 || st >= S) throw new ArgumentError(`${op}: stepIds[${t}]: expected −1 (prompt) or a step index in [0, ${S - 1}], got ${st}`);
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

/** A MoTE bundle on a model's backend: per adapted linear one stack of L = steps + 1 experts. */
export class MoteBundle extends AdapterStacks {
  /** @internal use createMote or loadMote */
  constructor(readonly config: MoteConfig, modelConfig: ModelConfig, backend: Backend, stacks: LayerStacks[], readonly baseModel: string | null) {
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
    const { slots, weight } = moteRoutingSlots(stepIds, this.config.steps.length, this.config.alpha, { ...opts, promptRouting: opts.promptRouting ?? this.config.promptRouting });
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
      // A bundle without a working shared expert (α = 1) has nothing to read the prompt with:
      // its prompt tokens go to the first step's expert instead (it saw prompts in training).
      slotsFor: (_seq, { step }) => (step >= 0 ? { slots: [step, shared], weights: [alpha, 1 - alpha] }
        : alpha === 1 ? { slots: [0, shared], weights: [1, 0] } : { slots: [-1, shared], weights: [0, 1] }),
    };
  }
}

/**
 * Makes the step tokens single tokens of `tokenizer` (added as special tokens when missing)
 * and grows the model's embeddings when their ids pass its vocabulary (new rows drawn around the
 * mean embedding, distinct; see LlamaModel.resizeTokenEmbeddings). Returns the ids, open and close tags
 * of every step in config order. Do this before creating or training a bundle.
 */
export async function addStepTokens(model: LlamaModel, tokenizer: MoteTokenizer, config: Pick<MoteConfig, 'steps'> = { steps: [...DEFAULT_STEPS] }): Promise<Record<string, number>> {
  const op = 'addStepTokens';
  checkModel(op, model);
  if (!tokenizer || typeof tokenizer.addSpecialTokens !== 'function') throw new ArgumentError(`${op}: tokenizer: expected a MoteTokenizer, got ${describe(tokenizer)}`);
  const tokens = specialTokens(config);
  const ids = tokenizer.addSpecialTokens(tokens);
  const need = Math.max(...ids) + 1;
  if (need > model.config.vocabSize) await model.resizeTokenEmbeddings(need);
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

/**
 * New f32 adapter stacks (L adapters of rank R) on every target linear, uploaded to the
 * model's backend. PEFT's init: A kaiming-uniform, B = 0 (the adapters start as the base
 * model); 'random' draws B too (tests).
 */
function freshStacks(model: LlamaModel, L: number, R: number, loraAlpha: number, targets: readonly LinearModule[], seed: number, init: 'peft' | 'random'): LayerStacks[] {
  const mc = model.config;
  const r = mulberry32(seed);
  const host: Partial<Record<LinearModule, HostStack>>[] = [];
  for (let l = 0; l < mc.numLayers; l++) {
    const layer: Partial<Record<LinearModule, HostStack>> = {};
    for (const m of targets) {
      const [Hout, Hin] = linearShape(mc, m);
      // PEFT: kaiming_uniform_(A, a=√5) → U(−1/√in, 1/√in); B = 0.
      const A = new Float32Array(L * R * Hin);
      const boundA = 1 / Math.sqrt(Hin);
      for (let i = 0; i < A.length; i++) A[i] = (2 * r() - 1) * boundA;
      const B = new Float32Array(L * Hout * R);
      if (init === 'random') {
        const boundB = 1 / Math.sqrt(R);
        for (let i = 0; i < B.length; i++) B[i] = (2 * r() - 1) * boundB;
      }
      layer[m] = { A, B, R, ranks: new Int32Array(L).fill(R), scales: new Float32Array(L).fill(loraAlpha / R) };
    }
    host.push(layer);
  }
  return uploadStacks(model.backend, mc, host);
}

// ---------------------------------------------------------------------------------------
// Saving

function writeJson(file: string, value: unknown): void {
  fs.writeFileSync(file, JSON.stringify(value, null, 2) + '\n');
}

function baseModelSummary(cfg: ModelConfig, nameOrPath: string | null): Record<string, unknown> {
  return {
    name_or_path: nameOrPath,
    family: cfg.family,
    hidden_size: cfg.hiddenSize,
    intermediate_size: cfg.intermediateSize,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    num_key_value_heads: cfg.numKvHeads,
    head_dim: cfg.headDim,
    vocab_size: cfg.vocabSize,
  };
}

/** The mote.json object of a bundle. */
export function moteJson(bundle: MoteBundle): Record<string, unknown> {
  const c = bundle.config;
  return {
    format: 'mote',
    version: MOTE_FORMAT_VERSION,
    steps: [...c.steps],
    tokens: Object.fromEntries(c.steps.map((s) => [s, STEP_TOKENS[s]])),
    end_tokens: Object.fromEntries(c.steps.map((s) => [s, STEP_END_TOKENS[s]])),
    experts: Object.fromEntries(bundle.experts.map((e) => [e, e])),
    alpha: c.alpha,
    prompt_routing: c.promptRouting,
    r: c.rank,
    lora_alpha: c.loraAlpha,
    target_modules: [...c.targetModules],
    base_model: baseModelSummary(bundle.modelConfig, bundle.baseModel),
  };
}

/** Writes one PEFT adapter folder for adapter `e` of `stacks`. */
async function writeExpert(stacks: AdapterStacks, e: number, dir: string, r: number, loraAlpha: number, baseModel: string | null,
  cache: Map<LoraStack, { A: Float32Array; B: Float32Array; scale: Float32Array }>): Promise<void> {
  const cfg = stacks.modelConfig;
  const tensors = new Map<string, WritableTensor>();
  const targets = new Set<LinearModule>();
  const rankPattern: Record<string, number> = {};
  const alphaPattern: Record<string, number> = {};
  const layersWith = new Map<LinearModule, Set<number>>();
  for (let l = 0; l < cfg.numLayers; l++) {
    for (const m of LINEAR_MODULES) {
      const f = await stacks.readExpertCached(e, l, m, cache);
      if (!f) continue;
      targets.add(m);
      if (!layersWith.has(m)) layersWith.set(m, new Set());
      layersWith.get(m)!.add(l);
      const [Hout, Hin] = linearShape(cfg, m);
      tensors.set(peftKey(l, m, 'A'), { dtype: 'f32', shape: [f.rank, Hin], data: f.A });
      tensors.set(peftKey(l, m, 'B'), { dtype: 'f32', shape: [Hout, f.rank], data: f.B });
      const a = Math.fround(f.scale * f.rank);
      const p = peftModulePath(l, m).replace(/\./g, '\\.');
      if (f.rank !== r) rankPattern[p] = f.rank;
      if (Math.abs(a - loraAlpha) > 1e-6 * loraAlpha) alphaPattern[p] = a;
    }
  }
  if (targets.size === 0) throw new ArgumentError(`saveMote: adapter ${e} adapts no linear layer`);
  // Every target module must be adapted on every layer (a list target_modules covers all layers).
  for (const [m, ls] of layersWith) {
    if (ls.size !== cfg.numLayers) throw new ArgumentError(`saveMote: adapter ${e} adapts ${m} on only some layers; cannot express that as target_modules`);
  }
  const json = makePeftConfig({
    r, loraAlpha, targetModules: LINEAR_MODULES.filter((m) => targets.has(m)), rankPattern, alphaPattern, baseModelNameOrPath: baseModel,
  });
  fs.mkdirSync(dir, { recursive: true });
  writeJson(path.join(dir, ADAPTER_CONFIG_FILE), json);
  writeSafetensors(path.join(dir, ADAPTER_WEIGHTS_FILE), tensors);
}

/**
 * The files of a bundle folder written by mote before the marker existed (recognised by
 * mote.json's format 'mote' and its experts), or null.
 */
export function legacyBundleFiles(dir: string): string[] | null {
  const j = tryJson(path.join(dir, MOTE_FILE));
  if (!j || j.format !== 'mote' || !j.experts || typeof j.experts !== 'object') return null;
  const files = [MOTE_FILE];
  for (const sub of Object.values(j.experts as Record<string, unknown>)) {
    if (typeof sub !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(sub) || sub === '.' || sub === '..') continue;
    files.push(`${sub}/${ADAPTER_CONFIG_FILE}`, `${sub}/${ADAPTER_WEIGHTS_FILE}`);
  }
  return files;
}

export const MOTE_DIR_OPTIONS: ReplaceDirOptions = { kind: 'mote-bundle', legacy: legacyBundleFiles };

/**
 * Saves a bundle to `dir`: mote.json plus one PEFT adapter folder per expert. Written into
 * `<dir>.tmp-<pid>` and swapped into place; an existing bundle at `dir` is replaced only once
 * the new one is complete. A non-empty `dir` that mote did not write is refused unless
 * opts.overwrite (then its files are kept; see src/io/atomic_dir.ts).
 */
export async function saveMote(bundle: MoteBundle, dir: string, opts: { overwrite?: boolean } = {}): Promise<void> {
  const op = 'saveMote';
  if (!(bundle instanceof MoteBundle)) throw new ArgumentError(`${op}: bundle: expected a MoteBundle, got ${describe(bundle)}`);
  if (bundle.disposed) throw new ArgumentError(`${op}: bundle: used after dispose()`);
  if (typeof dir !== 'string' || dir === '') throw new ArgumentError(`${op}: dir: expected a directory path, got ${describe(dir)}`);
  if (!opts || typeof opts !== 'object') throw new ArgumentError(`${op}: opts: expected { overwrite? }, got ${describe(opts)}`);
  const overwrite = overwriteOption(op, opts.overwrite);
  await replaceDirAtomically(op, dir, { ...MOTE_DIR_OPTIONS, overwrite }, async (tmp) => {
    const c = bundle.config;
    const cache = new Map<LoraStack, { A: Float32Array; B: Float32Array; scale: Float32Array }>();
    for (const [e, name] of bundle.experts.entries()) {
      await writeExpert(bundle, e, path.join(tmp, name), c.rank, c.loraAlpha, bundle.baseModel, cache);
    }
    // mote.json last: its presence marks a complete bundle.
    writeJson(path.join(tmp, MOTE_FILE), moteJson(bundle));
  });
}

// ---------------------------------------------------------------------------------------
// Loading PEFT adapters

/** A PEFT adapter read and checked against a model, on the host. */
interface ReadAdapter {
  dir: string;
  config: PeftConfig;
  /** (layer, module) → f32 factors A [rank, in], B [out, rank], or absent. */
  modules: Map<string, { A: Float32Array; B: Float32Array; rank: number; scale: number }>;
}

function toF32(t: HostTensor): Float32Array {
  if (t.dtype === 'f32') return t.data as Float32Array;
  const dec = t.dtype === 'f16' ? f16BitsToF32 : bf16BitsToF32;
  const bits = t.data as Uint16Array;
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = dec(bits[i]!);
  return out;
}

/** adapter_config.json and mote.json are a few KiB; a bound keeps a huge or endless file from being read whole. */
const MAX_ADAPTER_JSON_BYTES = 16 * 1024 * 1024;

function readJsonFile(file: string, what: string): unknown {
  return readBoundedJson(file, what, MAX_ADAPTER_JSON_BYTES);
}

/** Reads one PEFT adapter folder and checks every tensor against `cfg`; FormatErrors name the file and tensor. */
function readAdapter(cfg: ModelConfig, dir: string): ReadAdapter {
  const cfgFile = path.join(dir, ADAPTER_CONFIG_FILE);
  const config = parsePeftConfig(readJsonFile(cfgFile, 'a PEFT adapter folder needs adapter_config.json'), cfgFile);
  if (config.layersToTransform) {
    const bad = config.layersToTransform.find((l) => l >= cfg.numLayers);
    if (bad !== undefined) throw new FormatError(`${cfgFile}: layers_to_transform names layer ${bad}, the model has ${cfg.numLayers} layers`);
  }
  const file = path.join(dir, ADAPTER_WEIGHTS_FILE);
  checkRegularFile(file, 'a PEFT adapter folder needs adapter_model.safetensors');
  // Names, shapes and dtypes come from the header and are checked against the config before any tensor data is read.
  const reader = SafetensorsReader.open(file);
  const tensors = new Map<string, HostTensor>();
  try {
    const expected = peftExpectedWeights(cfg, config);
    const want = new Map(expected.map((s) => [s.name, s]));
    for (const name of reader.names()) {
      const t = reader.entry(name)!;
      const spec = want.get(name);
      if (!spec) {
        const k = parsePeftKey(name);
        const why = k === null ? 'not a LoRA factor of a linear layer we adapt'
          : k.layer >= cfg.numLayers ? `the model has ${cfg.numLayers} layers`
          : `adapter_config.json does not target ${peftModulePath(k.layer, k.module)}`;
        throw new FormatError(`${file}: tensor '${name}': unexpected (${why})`);
      }
      // A rank the config claims but the tensors do not hold is the config's error: name its field.
      const rankAxis = spec.which === 'A' ? 0 : 1;
      if (t.shape.length === 2 && t.shape[1 - rankAxis] === spec.shape[1 - rankAxis] && t.shape[rankAxis] !== spec.shape[rankAxis]) {
        throw new FormatError(`${cfgFile}: r / rank_pattern give ${peftModulePath(spec.layer, spec.module)} rank ${spec.shape[rankAxis]}, ` +
          `but ${file}: tensor '${name}' has shape [${t.shape.join(', ')}] (rank ${t.shape[rankAxis]})`);
      }
      if (t.shape.length !== 2 || t.shape[0] !== spec.shape[0] || t.shape[1] !== spec.shape[1]) {
        throw new FormatError(`${file}: tensor '${name}': expected shape [${spec.shape.join(', ')}] for this model, got [${t.shape.join(', ')}]`);
      }
      if (t.dtype === null || t.dtype === 'i32') throw new FormatError(`${file}: tensor '${name}': expected a float dtype (F32, F16, BF16), got ${t.storedDType}`);
    }
    for (const s of expected) {
      if (!reader.has(s.name)) throw new FormatError(`${file}: tensor '${s.name}': missing (expected [${s.shape.join(', ')}])`);
    }
    for (const s of expected) tensors.set(s.name, reader.read(s.name));
  } finally {
    reader.close();
  }
  const modules = new Map<string, { A: Float32Array; B: Float32Array; rank: number; scale: number }>();
  for (let l = 0; l < cfg.numLayers; l++) {
    for (const m of LINEAR_MODULES) {
      if (!peftTargets(config, l, m)) continue;
      modules.set(`${l}.${m}`, {
        A: toF32(tensors.get(peftKey(l, m, 'A'))!), B: toF32(tensors.get(peftKey(l, m, 'B'))!),
        rank: peftRank(config, l, m), scale: peftScale(config, l, m),
      });
    }
  }
  return { dir, config, modules };
}

/**
 * Stacks adapters (index = slot) per linear: R = the largest rank there, each adapter's own
 * rank and scale; an adapter without that linear gets rank 1, zero factors and scale 0.
 */
function stackAdapters(cfg: ModelConfig, adapters: readonly ReadAdapter[]): Partial<Record<LinearModule, HostStack>>[] {
  const L = adapters.length;
  const out: Partial<Record<LinearModule, HostStack>>[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const layer: Partial<Record<LinearModule, HostStack>> = {};
    for (const m of LINEAR_MODULES) {
      const mods = adapters.map((a) => a.modules.get(`${l}.${m}`));
      if (mods.every((x) => x === undefined)) continue;
      const [Hout, Hin] = linearShape(cfg, m);
      const R = Math.max(...mods.map((x) => x?.rank ?? 1));
      const A = new Float32Array(L * R * Hin);
      const B = new Float32Array(L * Hout * R);
      const ranks = new Int32Array(L).fill(1);
      const scales = new Float32Array(L);
      mods.forEach((x, e) => {
        if (!x) return;
        ranks[e] = x.rank;
        scales[e] = x.scale;
        A.set(x.A, e * R * Hin); // rows r < rank of [R, Hin] are contiguous
        for (let o = 0; o < Hout; o++) B.set(x.B.subarray(o * x.rank, (o + 1) * x.rank), (e * Hout + o) * R);
      });
      layer[m] = { A, B, R, ranks, scales };
    }
    out.push(layer);
  }
  return out;
}

/** Plain multi-adapter serving set: K = 1, one slot per adapter. */
export class AdapterSet extends AdapterStacks {
  /** @internal use loadPeftAdapters */
  constructor(modelConfig: ModelConfig, backend: Backend, stacks: LayerStacks[], readonly dirs: string[], readonly configs: PeftConfig[]) {
    super(modelConfig, backend, stacks, dirs.length);
  }

  /** Routing with K = 1: adapter[t] is the adapter of token t (−1 = base model only). */
  routing(adapter: ArrayLike<number>): LoraRouting {
    this.live('AdapterSet.routing');
    if (!adapter || typeof adapter.length !== 'number' || adapter.length === 0) throw new ArgumentError(`AdapterSet.routing: adapter: expected one adapter index per token (−1 = none), got ${describe(adapter)}`);
    for (let t = 0; t < adapter.length; t++) {
      const a = adapter[t]!;
      if (!Number.isInteger(a) || a < -1 || a >= this.L) throw new ArgumentError(`AdapterSet.routing: adapter[${t}]: expected −1 or an adapter index in [0, ${this.L - 1}], got ${a}`);
    }
    return loraRouting(this.backend, Int32Array.from(adapter), { K: 1, L: this.L });
  }
}

// ---------------------------------------------------------------------------------------
// A fresh plain LoRA: the "one LoRA" baseline of the toy evaluation, an AdapterSet with L = 1
// (the Trainer trains it on every token, AdapterSet.routing serves it).

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
  checkModel(op, model);
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
  const stacks = freshStacks(model, 1, R, loraAlpha, modules, seed, init);
  const config = parsePeftConfig(makePeftConfig({ r: R, loraAlpha, targetModules: modules, baseModelNameOrPath: model.dir }));
  return new AdapterSet(model.config, model.backend, stacks, [NEW_LORA_DIR], [config]);
}

/**
 * Loads ordinary PEFT LoRA adapters (any ranks, rank/alpha patterns, target sets) as one
 * multi-adapter set on the model's backend. Everything is read and checked before anything
 * is uploaded; nothing stays allocated when loading fails.
 */
export function loadPeftAdapters(model: LlamaModel, dirs: readonly string[]): AdapterSet {
  const op = 'loadPeftAdapters';
  checkModel(op, model);
  if (!Array.isArray(dirs) || dirs.length === 0) throw new ArgumentError(`${op}: dirs: expected a non-empty list of adapter folders, got ${describe(dirs)}`);
  dirs.forEach((d, i) => {
    if (typeof d !== 'string' || d === '') throw new ArgumentError(`${op}: dirs[${i}]: expected a folder path, got ${describe(d)}`);
  });
  const adapters = dirs.map((d) => readAdapter(model.config, d));
  const stacks = uploadStacks(model.backend, model.config, stackAdapters(model.config, adapters));
  return new AdapterSet(model.config, model.backend, stacks, [...dirs], adapters.map((a) => a.config));
}

// ---------------------------------------------------------------------------------------
// Loading MoTE bundles

/** Parses mote.json (object or text); FormatError naming `file` and the field otherwise. */
export function parseMoteJson(json: unknown, file = MOTE_FILE): { config: MoteConfig; experts: Record<string, string>; baseModel: string | null } {
  if (typeof json === 'string') {
    try {
      json = JSON.parse(json);
    } catch (e) {
      throw new FormatError(`${file}: not valid JSON: ${(e as Error).message}`);
    }
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new FormatError(`${file}: expected a JSON object, got ${describe(json)}`);
  const j = json as Record<string, unknown>;
  if (j.format !== undefined && j.format !== 'mote') throw new FormatError(`${file}: format: expected 'mote', got ${describe(j.format)}`);
  if (j.version !== undefined && j.version !== MOTE_FORMAT_VERSION) throw new FormatError(`${file}: version: ${describe(j.version)} is not supported (expected ${MOTE_FORMAT_VERSION})`);
  for (const k of ['steps', 'alpha', 'r', 'lora_alpha']) if (j[k] === undefined) throw new FormatError(`${file}: ${k} is missing`);
  let config: MoteConfig;
  try {
    config = moteConfig({
      steps: j.steps as StepName[], rank: j.r as number, loraAlpha: j.lora_alpha as number, alpha: j.alpha as number,
      ...(j.prompt_routing !== undefined ? { promptRouting: j.prompt_routing as PromptRouting } : {}),
      ...(j.target_modules !== undefined ? { targetModules: j.target_modules as LinearModule[] } : {}),
    }, file);
  } catch (e) {
    // moteConfig names its options; a file's reader wants the JSON field names.
    if (e instanceof ArgumentError) {
      const names: Record<string, string> = { rank: 'r', loraAlpha: 'lora_alpha', targetModules: 'target_modules', promptRouting: 'prompt_routing' };
      const prefix = `${file}: `;
      let msg = e.message;
      if (msg.startsWith(prefix)) {
        msg = prefix + msg.slice(prefix.length).replace(/^(rank|loraAlpha|targetModules|promptRouting)\b/, (k) => names[k]!);
      }
      throw new FormatError(msg);
    }
    throw e;
  }
  const experts: Record<string, string> = {};
  const ex = j.experts;
  if (ex !== undefined && (typeof ex !== 'object' || ex === null || Array.isArray(ex))) throw new FormatError(`${file}: experts: expected an object of expert -> folder, got ${describe(ex)}`);
  for (const name of [...config.steps, SHARED_EXPERT]) {
    const folder = (ex as Record<string, unknown> | undefined)?.[name] ?? name;
    if (typeof folder !== 'string' || folder === '' || folder.includes('/') || folder.includes('\\') || folder === '.' || folder === '..') {
      throw new FormatError(`${file}: experts.${name}: expected a folder name inside the bundle, got ${describe(folder)}`);
    }
    experts[name] = folder;
  }
  if (j.tokens !== undefined) {
    const t = j.tokens as Record<string, unknown>;
    for (const s of config.steps) {
      if (t?.[s] !== undefined && t[s] !== STEP_TOKENS[s]) throw new FormatError(`${file}: tokens.${s}: expected '${STEP_TOKENS[s]}', got ${describe(t[s])}`);
    }
  }
  const bm = j.base_model as Record<string, unknown> | undefined;
  const baseModel = typeof bm?.name_or_path === 'string' ? bm.name_or_path : null;
  return { config, experts, baseModel };
}

/**
 * Loads a bundle saved by saveMote onto `model`'s backend. Every expert folder is checked
 * against the model (FormatError naming the file and tensor) and must adapt exactly the
 * bundle's target modules on every layer; nothing stays allocated when loading fails.
 */
/** Reads and checks `dir`/mote.json (bounded; FormatError naming the file and field). */
export function readMoteJson(dir: string): ReturnType<typeof parseMoteJson> {
  const file = path.join(dir, MOTE_FILE);
  return parseMoteJson(readJsonFile(file, 'a MoTE bundle needs mote.json'), file);
}

export function loadMote(dir: string, model: LlamaModel): MoteBundle {
  const op = 'loadMote';
  checkModel(op, model);
  if (typeof dir !== 'string' || dir === '') throw new ArgumentError(`${op}: dir: expected a bundle folder, got ${describe(dir)}`);
  const { config, experts, baseModel } = readMoteJson(dir);
  const cfg = model.config;
  const names = [...config.steps, SHARED_EXPERT];
  const adapters = names.map((n) => readAdapter(cfg, path.join(dir, experts[n]!)));
  adapters.forEach((a, e) => {
    const cfgFile = path.join(a.dir, ADAPTER_CONFIG_FILE);
    for (let l = 0; l < cfg.numLayers; l++) {
      for (const m of LINEAR_MODULES) {
        const has = a.modules.has(`${l}.${m}`);
        const want = config.targetModules.includes(m);
        if (has && !want) throw new FormatError(`${cfgFile}: adapts ${peftModulePath(l, m)}, which ${MOTE_FILE}'s target_modules does not list`);
        if (!has && want) throw new FormatError(`${cfgFile}: does not adapt ${peftModulePath(l, m)}, which ${MOTE_FILE}'s target_modules lists (expert '${names[e]}')`);
      }
    }
  });
  const stacks = uploadStacks(model.backend, cfg, stackAdapters(cfg, adapters));
  return new MoteBundle(config, cfg, model.backend, stacks, baseModel);
}

