// Adapter stacks on the linears of a model (DESIGN §1): per adapted linear one LoRA stack of
// L adapters on the model's backend, all routed alike. The common part of a MoTE bundle
// (src/mote/bundle.ts) and of a plain multi-adapter set (src/adapters/adapter_set.ts), and
// what the trainer and checkpoints see of either: the routing of a training batch, the steps
// a training example's stepIds index, and saving into a checkpoint.

import type { DirWriter } from '../io/sink.js';
import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor.js';
import { mulberry32 } from '../rng.js';
import { ArgumentError, describe } from '../errors.js';
import { LINEAR_MODULES, linearShape, type LinearModule, type ModelConfig } from '../model/config.js';
import type { LlamaLora, LlamaModel } from '../model/llama.js';
import { loraRouting, loraStack, type LoraRouting, type LoraStack, type LoraStrategy } from '../ops/lora.js';

/** Per layer, the stack of each adapted linear (a missing module has no adapters). */
export type LayerStacks = Partial<Record<LinearModule, LoraStack>>;

/** How prompt (question) tokens of a step-routed set are routed. */
export type PromptRouting = 'shared' | 'random-step';
export const PROMPT_ROUTINGS: readonly PromptRouting[] = ['shared', 'random-step'];

/** Checks a prompt routing value; `op` prefixes the error. */
export function checkPromptRouting(op: string, v: unknown): PromptRouting {
  if (typeof v !== 'string' || !(PROMPT_ROUTINGS as readonly string[]).includes(v)) {
    throw new ArgumentError(`${op}: promptRouting: expected 'shared' or 'random-step', got ${describe(v)}`);
  }
  return v as PromptRouting;
}

/** A packed training batch, as the trainer routes it (see AdapterStacks.batchRouting). */
export interface TrainBatchRouting {
  /** [T] −1 for a prompt token, else its step index (all −1 for a set without steps). */
  stepIds: Int32Array;
  /** [T] sequence id of each token. */
  seq: Int32Array;
  promptRouting: PromptRouting;
  /** Seed of the routing's random draws (prompt tokens' step per sequence). */
  seed: number;
}

/** @internal */
export function checkModel(op: string, model: LlamaModel): void {
  if (
    !model ||
    typeof model !== 'object' ||
    typeof (model as { forward?: unknown }).forward !== 'function' ||
    !(model as { config?: unknown }).config
  ) {
    throw new ArgumentError(`${op}: model: expected a LlamaModel from loadModel(), got ${describe(model)}`);
  }
  if (model.disposed) throw new ArgumentError(`${op}: model: was disposed`);
}

/** @internal */
export function checkSeed(op: string, seed: unknown): number {
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed))
    throw new ArgumentError(`${op}: seed: expected an integer, got ${describe(seed)}`);
  return seed;
}

/** Frees every tensor of the stacks. @internal */
export function freeStacks(stacks: readonly LayerStacks[]): void {
  for (const layer of stacks) {
    for (const s of Object.values(layer)) {
      if (!s) continue;
      for (const t of [s.A, s.B, s.rank, s.scale]) t.dispose();
    }
  }
}

/** Host factors of one linear's stack, f32, PEFT layouts: A [L, R, in], B [L, out, R]. @internal */
export interface HostStack {
  A: Float32Array;
  B: Float32Array;
  R: number;
  ranks: Int32Array;
  scales: Float32Array;
}

/** Uploads host stacks; on any failure frees what was already uploaded. @internal */
export function uploadStacks(backend: Backend, cfg: ModelConfig, host: readonly Partial<Record<LinearModule, HostStack>>[]): LayerStacks[] {
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

/**
 * New f32 adapter stacks (L adapters of rank R) on every target linear, uploaded to the
 * model's backend. PEFT's init: A kaiming-uniform, B = 0 (the adapters start as the base
 * model); 'random' draws B too (tests). @internal
 */
export function freshStacks(
  model: LlamaModel,
  L: number,
  R: number,
  loraAlpha: number,
  targets: readonly LinearModule[],
  seed: number,
  init: 'peft' | 'random',
): LayerStacks[] {
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

/** One adapter's factors of one linear, as read back from the device. */
export interface ExpertFactors {
  /** [rank, in] */
  A: Float32Array;
  /** [out, rank] */
  B: Float32Array;
  rank: number;
  scale: number;
}

/** Host copies of stacks read from the device, so that each is read once per save. @internal */
export type StackReadCache = Map<LoraStack, { A: Float32Array; B: Float32Array; scale: Float32Array }>;

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
    if (!routing || routing.L !== this.L)
      throw new ArgumentError(
        `loraFor: routing: expected a LoraRouting built for L = ${this.L} adapters, got ${routing ? `L = ${routing.L}` : describe(routing)}`,
      );
    return strategy === undefined ? { stacks: this.stacks, routing } : { stacks: this.stacks, routing, strategy };
  }

  /**
   * Steps a training example's stepIds index (the trainer checks them against this); 0 for
   * a set whose adapters are not routed by step.
   */
  get numSteps(): number {
    return 0;
  }

  /**
   * The routing of a packed training batch. A plain set trains its first adapter on every
   * token (K = 1); a step-routed set (MoteBundle) overrides this. Dispose it when done.
   */
  batchRouting(b: TrainBatchRouting): LoraRouting {
    this.live('batchRouting');
    return loraRouting(this.backend, new Int32Array(b.stepIds.length), { K: 1, L: this.L });
  }

  /**
   * Writes these adapters for a checkpoint (its adapters/ folder, for users): true when
   * written, false when the set has no folder format of its own (a plain set: the
   * checkpoint's params.safetensors holds it).
   */
  async saveForCheckpoint(dir: string | DirWriter): Promise<boolean> {
    void dir;
    return false;
  }

  /** Reads adapter `e`'s factors of one linear back to the host (PEFT layouts), or null when it has none there. */
  async readExpert(e: number, layer: number, module: LinearModule): Promise<ExpertFactors | null> {
    return this.readExpertCached(e, layer, module, null);
  }

  /** @internal readExpert reading each stack from the device once per `cache`. */
  async readExpertCached(e: number, layer: number, module: LinearModule, cache: StackReadCache | null): Promise<ExpertFactors | null> {
    this.live('readExpert');
    if (!Number.isSafeInteger(e) || e < 0 || e >= this.L)
      throw new ArgumentError(`readExpert: adapter: expected an integer in [0, ${this.L - 1}], got ${describe(e)}`);
    if (!Number.isSafeInteger(layer) || layer < 0 || layer >= this.stacks.length)
      throw new ArgumentError(`readExpert: layer: expected an integer in [0, ${this.stacks.length - 1}], got ${describe(layer)}`);
    if (!(LINEAR_MODULES as readonly unknown[]).includes(module))
      throw new ArgumentError(`readExpert: module: expected one of ${LINEAR_MODULES.join(', ')}, got ${describe(module)}`);
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

  /** dispose(), for `using`: the adapters are freed when their block ends. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
