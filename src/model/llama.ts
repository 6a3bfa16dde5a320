// LLaMA-family decoder (llama, mistral, qwen2) on any backend: loading an HF model directory
// and the forward over a batch of packed sequences, with multi-LoRA / MoTE adapters on every
// linear layer, step-skipping segment masks and a KV cache for decoding (DESIGN §1, §6).
//
// Per layer, as transformers' LlamaDecoderLayer:
//   h  = x + o_proj(attn(rope(q_proj(rms₁(x))), rope(k_proj(rms₁(x))), v_proj(rms₁(x))))
//   x' = h + down_proj(silu(gate_proj(rms₂(h))) ⊙ up_proj(rms₂(h)))
// then logits = lm_head(rms_f(x)). Every linear is y = x·Wᵀ (+ bias) (+ Σ_k w·scale·B·A·x for
// the LoRA slots of the token). Activations are f32; weights stay in their stored dtype
// (f32/f16/bf16) unless `dtype` converts them, and every product accumulates in f32.
//
// Biases (qwen2's q/k/v; llama's attention_bias / mlp_bias) are added on the device as a rank-1
// update y += 1·bᵀ (matmulGradInput of a [T, 1] column of ones by the bias as a [1, out]
// "weight", accumulating into y): exact, in the bias's own dtype, no host round trip.

import * as path from 'node:path';
import { Tensor } from '../tensor.js';
import { mixSeed, mulberry32 } from '../rng.js';
import type { Backend } from '../backend/backend.js';
import { WEIGHT_DTYPES, bf16BitsToF32, f16BitsToF32 } from '../dtype.js';
import { ArgumentError, DisposedTensorError, FormatError, ShapeError, describe } from '../errors.js';
import {
  LINEAR_MODULES, checkConfigAgainstWeights, compareWeights, expectedWeights, linearShape, linearWeightName, parseHFConfig,
  type LinearModule, type ModelConfig, type RopeScaling, type WeightReport,
} from './config.js';
import { readTextFile } from '../io/files.js';
import { openModelWeights, type HostTensor, type ModelWeights } from '../io/safetensors.js';
import { ropeInvFreqRef, type RopeScaling as RefRopeScaling } from '../reference/rope.js';
import { matmul, matmulGradInput } from '../ops/matmul.js';
import { LoraRouting, loraApply, type LoraStack, type LoraStrategy } from '../ops/lora.js';
import { checkIds, embedding } from '../ops/embedding.js';
import { rmsnorm } from '../ops/rmsnorm.js';
import { rope } from '../ops/rope.js';
import { attention, attentionLayout, type AttentionLayout } from '../ops/attention.js';
import { swiglu } from '../ops/swiglu.js';
import { add } from '../ops/residual.js';
import { KvCache, MAX_POSITION, tensorView, type KvAppend, type KvCacheOptions } from './kv_cache.js';

export type WeightDType = 'f32' | 'f16' | 'bf16';

/** config.json is a few KiB; anything past this is not a model config. */
const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

export interface LoadModelOptions {
  backend: Backend;
  /** Convert every weight to this dtype on upload (default: keep each tensor's stored dtype). */
  dtype?: WeightDType;
}

/** The device weights of one decoder layer. */
export interface LlamaLayerWeights {
  inputNorm: Tensor;
  postAttentionNorm: Tensor;
  /** [out, in] per linear module (HF layout). */
  linear: Record<LinearModule, Tensor>;
  /** [1, out] per linear that has a bias. */
  bias: Partial<Record<LinearModule, Tensor>>;
}

export interface LlamaWeights {
  /** [V, H] */
  embedTokens: Tensor;
  layers: LlamaLayerWeights[];
  /** [H] */
  norm: Tensor;
  /** [V, H]; the same tensor as embedTokens when the embeddings are tied. */
  lmHead: Tensor;
  /** f32 [headDim / 2]: RoPE inverse frequencies (with the config's scaling). */
  invFreq: Tensor;
}

/** Adapters on the linear layers: one stack per (layer, module) that has adapters, all routed alike. */
export interface LlamaLora {
  /** stacks[layer][module]; a missing layer or module has no adapters. Length numLayers. */
  stacks: ReadonlyArray<Partial<Record<LinearModule, LoraStack>> | undefined>;
  /** Routing of the batch's T tokens (K slots each). */
  routing: LoraRouting;
  strategy?: LoraStrategy | 'auto';
}

/** MoTE's step-skipping mask (DESIGN §1): per-token segment (step) ids and blocked pairs. */
export interface LlamaSegments {
  numSegments: number;
  /** [T] segment id of each token. */
  segment: ArrayLike<number>;
  /** [numSeqs, S, S]: nonzero at [seq][later][earlier] = later's tokens do not see earlier's. */
  blocked: ArrayLike<number | boolean>;
}

/** Segments after checking: per-token segment ids as an Int32Array. */
export interface CheckedSegments { numSegments: number; segment: Int32Array; blocked: ArrayLike<number | boolean> }

/** What LlamaModel.logits needs of a MoTE bundle or an adapter set (src/mote/bundle.ts). */
interface RoutableAdapters {
  loraFor(routing: LoraRouting): LlamaLora;
  routing(ids: ArrayLike<number>, opts?: { seq?: ArrayLike<number> }): LoraRouting;
}

/** Routing sugar of LlamaModel.logits. */
export interface LogitsRouting {
  /** A MoteBundle or an AdapterSet. */
  adapters?: RoutableAdapters;
  /** MoTE: per token −1 (prompt) or the step index. */
  steps?: ArrayLike<number>;
  /** Adapter set: the adapter of every token, or one per token (−1 = base only). */
  adapter?: number | ArrayLike<number>;
}

/** A batch of packed sequences. */
export interface LlamaBatch {
  /** [T] token ids. */
  ids: ArrayLike<number>;
  /** [T] sequence id of each token (default: all 0, one sequence). */
  seq?: ArrayLike<number>;
  /**
   * [T] position of each token within its sequence (default: consecutive per sequence in
   * batch order, starting after the sequence's cached tokens when a cache is given).
   */
  pos?: ArrayLike<number>;
  lora?: LlamaLora;
  segments?: LlamaSegments;
  /** Attend to the cached tokens too, and append this batch's keys/values to the cache. */
  cache?: KvCache;
  /** Only these rows of the batch get logits (e.g. the last token of each sequence); default all. */
  logitRows?: ArrayLike<number>;
}

const NAMES = {
  embed: 'model.embed_tokens.weight',
  norm: 'model.norm.weight',
  lmHead: 'lm_head.weight',
  inputNorm: (l: number) => `model.layers.${l}.input_layernorm.weight`,
  postNorm: (l: number) => `model.layers.${l}.post_attention_layernorm.weight`,
};

/** Extra tensors transformers itself ignores when loading. */
function ignorable(name: string, cfg: ModelConfig, shape: readonly number[]): boolean {
  if (/^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/.test(name)) return true;
  // A tied checkpoint that still holds lm_head.weight: transformers ties it to the embeddings.
  return cfg.tieWordEmbeddings && name === NAMES.lmHead && shape.length === 2 && shape[0] === cfg.vocabSize && shape[1] === cfg.hiddenSize;
}

function toRefScaling(s: RopeScaling | null): RefRopeScaling | null {
  if (s === null) return null;
  if (s.type === 'linear') return { rope_type: 'linear', factor: s.factor };
  return {
    rope_type: 'llama3', factor: s.factor, low_freq_factor: s.lowFreqFactor, high_freq_factor: s.highFreqFactor,
    original_max_position_embeddings: s.originalMaxPositionEmbeddings,
  };
}

/** A source of host tensors by name (a model directory or a map), with the file each is in. */
interface WeightSource {
  names(): string[];
  shape(name: string): { shape: number[]; storedDType: string; file: string };
  get(name: string): HostTensor;
  /** Where a missing tensor was looked for. */
  where: string;
}

function describeProblems(src: WeightSource, report: WeightReport, extra: string[]): string {
  const lines: string[] = [];
  for (const w of report.missing) lines.push(`${src.where}: tensor '${w.name}' is missing (expected shape [${w.shape.join(', ')}])`);
  for (const w of report.wrongShape) lines.push(`${src.shape(w.name).file}: tensor '${w.name}' has shape [${w.actual.join(', ')}], expected [${w.expected.join(', ')}]`);
  for (const n of extra) lines.push(`${src.shape(n).file}: tensor '${n}' is not part of this model (unexpected)`);
  const shown = lines.slice(0, 8);
  if (lines.length > shown.length) shown.push(`… and ${lines.length - shown.length} more`);
  return shown.join('; ');
}

function hostToFloat32(h: HostTensor): Float32Array {
  if (h.dtype === 'f32') return h.data as Float32Array;
  const bits = h.data as Uint16Array;
  const conv = h.dtype === 'f16' ? f16BitsToF32 : bf16BitsToF32;
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = conv(bits[i]!);
  return out;
}

function upload(backend: Backend, h: HostTensor, shape: readonly number[], want: WeightDType | undefined): Tensor {
  const dt = want ?? h.dtype;
  if (dt === h.dtype) return backend.tensor(h.data, shape, dt);
  return backend.tensor(hostToFloat32(h), shape, dt);
}

function checkOptions(op: string, opts: LoadModelOptions): void {
  if (!opts || typeof opts !== 'object') throw new ArgumentError(`${op}: options: expected { backend, dtype? }, got ${describe(opts)}`);
  const b = opts.backend as Backend | undefined;
  if (!b || typeof b.tensor !== 'function' || typeof b.allocStorage !== 'function') throw new ArgumentError(`${op}: backend: expected a Backend from openBackend(), got ${describe(b)}`);
  if (b.destroyed) throw new ArgumentError(`${op}: backend: this ${b.kind} backend was destroyed`);
  if (opts.dtype !== undefined && !(WEIGHT_DTYPES as readonly string[]).includes(opts.dtype)) {
    throw new ArgumentError(`${op}: dtype: expected one of ${WEIGHT_DTYPES.join(', ')}, got ${describe(opts.dtype)}`);
  }
}

/** Checks names, shapes and dtypes of every tensor, then uploads them; nothing stays allocated on failure. */
function build(cfg: ModelConfig, src: WeightSource, opts: LoadModelOptions, dir: string | null, configFile: string): LlamaModel {
  const actual = new Map<string, number[]>();
  for (const n of src.names()) actual.set(n, src.shape(n).shape);
  // The config's sizes are only claims: check them against the tensors before listing or allocating by them.
  checkConfigAgainstWeights(cfg, actual, configFile, src.where);
  const expected = expectedWeights(cfg);
  const report = compareWeights(expected, actual);
  const extra = report.extra.filter((n) => !ignorable(n, cfg, actual.get(n)!));
  if (report.missing.length || report.wrongShape.length || extra.length) throw new FormatError(describeProblems(src, report, extra));
  for (const w of expected) {
    const e = src.shape(w.name);
    if (!['F32', 'F16', 'BF16', 'F64'].includes(e.storedDType)) {
      throw new FormatError(`${e.file}: tensor '${w.name}': dtype ${e.storedDType} is not a float weight dtype (expected F32, F16 or BF16)`);
    }
  }

  const be = opts.backend;
  const made: Tensor[] = [];
  const up = (name: string, shape?: readonly number[]): Tensor => {
    const h = src.get(name);
    const t = upload(be, h, shape ?? h.shape, opts.dtype);
    made.push(t);
    return t;
  };
  try {
    const embedTokens = up(NAMES.embed);
    const layers: LlamaLayerWeights[] = [];
    for (let l = 0; l < cfg.numLayers; l++) {
      const inputNorm = up(NAMES.inputNorm(l));
      const postAttentionNorm = up(NAMES.postNorm(l));
      const linear = {} as Record<LinearModule, Tensor>;
      const bias: Partial<Record<LinearModule, Tensor>> = {};
      for (const m of LINEAR_MODULES) {
        linear[m] = up(linearWeightName(l, m));
        const bn = linearWeightName(l, m, 'bias');
        if (expected.some((w) => w.name === bn)) bias[m] = up(bn, [1, linearShape(cfg, m)[0]]);
      }
      layers.push({ inputNorm, postAttentionNorm, linear, bias });
    }
    const norm = up(NAMES.norm);
    const lmHead = cfg.tieWordEmbeddings ? embedTokens : up(NAMES.lmHead);
    const inv = ropeInvFreqRef(cfg.headDim, cfg.ropeTheta, toRefScaling(cfg.ropeScaling));
    const invFreq = be.tensor(Float32Array.from(inv), [inv.length], 'f32');
    made.push(invFreq);
    return new LlamaModel(cfg, be, { embedTokens, layers, norm, lmHead, invFreq }, dir);
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
}

/**
 * Loads an HF model directory: config.json (llama, mistral or qwen2) and model.safetensors or
 * the shards of model.safetensors.index.json. Every tensor's name, shape and dtype is checked
 * against the config before anything is uploaded; problems are FormatErrors naming the file
 * and the tensor. Weights go to `backend` in their stored dtype, or in `dtype` when given.
 * Nothing stays allocated on the backend when loading fails.
 */
export async function loadModel(dir: string, opts: LoadModelOptions): Promise<LlamaModel> {
  checkOptions('loadModel', opts);
  if (typeof dir !== 'string' || dir === '') throw new ArgumentError(`loadModel: dir: expected a model directory path, got ${describe(dir)}`);
  const configFile = path.join(dir, 'config.json');
  // Bounded, regular-file-only read: a FIFO or a huge file in place of config.json is a FormatError, not a hang.
  const cfg = parseHFConfig(readTextFile(configFile, 'an HF model directory needs config.json', MAX_CONFIG_BYTES), configFile);
  const weights: ModelWeights = openModelWeights(dir);
  try {
    const where = weights.index ?? path.join(dir, weights.files()[0] ?? 'model.safetensors');
    const src: WeightSource = {
      where,
      names: () => weights.names(),
      shape: (n) => { const e = weights.entry(n); return { shape: e.shape, storedDType: e.storedDType, file: e.file }; },
      get: (n) => weights.get(n),
    };
    return build(cfg, src, opts, dir, configFile);
  } finally {
    weights.close();
  }
}

/**
 * A model from host tensors in HF naming (e.g. freshly initialised, or read by other means),
 * checked and uploaded like loadModel.
 */
export function modelFromTensors(config: ModelConfig, tensors: ReadonlyMap<string, HostTensor>, opts: LoadModelOptions): LlamaModel {
  checkOptions('modelFromTensors', opts);
  const src: WeightSource = {
    where: '<tensors>',
    names: () => [...tensors.keys()],
    shape: (n) => { const t = tensors.get(n)!; return { shape: [...t.shape], storedDType: ({ f32: 'F32', f16: 'F16', bf16: 'BF16', i32: 'I32' } as const)[t.dtype], file: '<tensors>' }; },
    get: (n) => tensors.get(n)!,
  };
  return build(config, src, opts, null, '<config>');
}

// ---------------------------------------------------------------------------------------

function intArray(op: string, name: string, a: ArrayLike<number> | undefined, n: number, lo: number, hi: number): Int32Array {
  if (!a || typeof a.length !== 'number') throw new ArgumentError(`${op}: ${name}: expected ${n} integers, got ${describe(a)}`);
  if (a.length !== n) throw new ShapeError(`${op}: ${name}: expected ${n} entries (one per token), got ${a.length}`);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const v = a[i]!;
    if (!Number.isInteger(v) || v < lo || v > hi) throw new ArgumentError(`${op}: ${name}[${i}]: expected an integer in [${lo}, ${hi}], got ${v}`);
    out[i] = v;
  }
  return out;
}

/** Tracks temporaries of a pass so that each is freed exactly once, also on errors. @internal shared with the training pass */
export class Scope {
  readonly #held = new Set<Tensor>();
  keep<T extends Tensor>(t: T): T { this.#held.add(t); return t; }
  free(...ts: (Tensor | undefined | null)[]): void {
    for (const t of ts) if (t && this.#held.delete(t)) t.dispose();
  }
  release(t: Tensor): Tensor { this.#held.delete(t); return t; }
  close(): void { for (const t of this.#held) t.dispose(); this.#held.clear(); }
}

export class LlamaModel {
  #disposed = false;

  /** @internal use loadModel or modelFromTensors */
  constructor(readonly config: ModelConfig, readonly backend: Backend, readonly weights: LlamaWeights, readonly dir: string | null) {}

  get disposed(): boolean {
    return this.#disposed || this.backend.destroyed;
  }

  #live(op: string): void {
    if (this.disposed) throw new DisposedTensorError(`LlamaModel.${op}: the model was used after dispose()`);
  }

  /** A KV cache shaped for this model, on its backend. */
  newCache(opts: KvCacheOptions = {}): KvCache {
    this.#live('newCache');
    return new KvCache(this.backend, { numLayers: this.config.numLayers, numKvHeads: this.config.numKvHeads, headDim: this.config.headDim }, opts);
  }

  /**
   * Checks a batch on the host before any kernel runs: ids, sequence ids, positions
   * (defaulted), segments, LoRA and logit rows. @internal shared by forward and the training pass.
   */
  checkBatch(op: string, batch: LlamaBatch): { ids: Int32Array; seq: Int32Array; pos: Int32Array; segments: CheckedSegments | undefined; rows: Int32Array | null } {
    this.#live(op.slice(op.lastIndexOf('.') + 1));
    if (!batch || typeof batch !== 'object') throw new ArgumentError(`${op}: batch: expected { ids, seq?, pos?, lora?, segments?, cache? }, got ${describe(batch)}`);
    const cfg = this.config;
    const be = this.backend;
    const ids = checkIds(op, batch.ids, cfg.vocabSize);
    const T = ids.length;
    const seq = batch.seq === undefined ? new Int32Array(T) : intArray(op, 'seq', batch.seq, T, 0, 2 ** 31 - 1);
    const cache = batch.cache;
    if (cache !== undefined) {
      if (!(cache instanceof KvCache)) throw new ArgumentError(`${op}: cache: expected a KvCache from model.newCache(), got ${describe(cache)}`);
      if (cache.disposed) throw new DisposedTensorError(`${op}: cache: used after dispose()`);
      if (cache.backend !== be) throw new ArgumentError(`${op}: cache: lives on another backend (${cache.backend.kind}) than the model (${be.kind})`);
      if (cache.numLayers !== cfg.numLayers || cache.numKvHeads !== cfg.numKvHeads || cache.headDim !== cfg.headDim) {
        throw new ShapeError(`${op}: cache: made for ${cache.numLayers} layers × ${cache.numKvHeads} kv heads × ${cache.headDim}, the model has ${cfg.numLayers} × ${cfg.numKvHeads} × ${cfg.headDim}`);
      }
    }
    let pos: Int32Array;
    if (batch.pos !== undefined) pos = intArray(op, 'pos', batch.pos, T, 0, MAX_POSITION);
    else {
      pos = new Int32Array(T);
      const next = new Map<number, number>();
      for (let t = 0; t < T; t++) {
        const s = seq[t]!;
        const p = next.get(s) ?? (cache ? cache.nextPosition(s) : 0);
        pos[t] = p;
        next.set(s, p + 1);
      }
    }
    if (cfg.slidingWindow !== null) {
      const far = pos.findIndex((p) => p >= cfg.slidingWindow!);
      if (far >= 0) throw new ArgumentError(`${op}: pos[${far}] = ${pos[far]}: sliding-window attention (window ${cfg.slidingWindow}) is not supported; positions must stay below the window`);
    }
    let segments: CheckedSegments | undefined;
    if (batch.segments !== undefined) {
      const sg = batch.segments;
      if (!sg || typeof sg !== 'object') throw new ArgumentError(`${op}: segments: expected { numSegments, segment, blocked }, got ${describe(sg)}`);
      const S = sg.numSegments;
      if (!Number.isSafeInteger(S) || S <= 0) throw new ArgumentError(`${op}: segments.numSegments: expected a positive integer, got ${describe(S)}`);
      const segment = intArray(op, 'segments.segment', sg.segment, T, 0, S - 1);
      if (!sg.blocked || typeof sg.blocked.length !== 'number' || sg.blocked.length === 0 || sg.blocked.length % (S * S) !== 0) {
        throw new ShapeError(`${op}: segments.blocked: expected numSeqs·${S}·${S} entries, got ${describe(sg.blocked)}`);
      }
      const numSeqs = sg.blocked.length / (S * S);
      const bad = seq.findIndex((s) => s >= numSeqs);
      if (bad >= 0) throw new ArgumentError(`${op}: seq[${bad}] = ${seq[bad]} has no entry in segments.blocked (it covers ${numSeqs} sequences)`);
      segments = { numSegments: S, segment, blocked: sg.blocked };
    }
    const lora = batch.lora;
    if (lora !== undefined) this.#checkLora(op, lora, T);
    let rows: Int32Array | null = null;
    if (batch.logitRows !== undefined) {
      const lr = batch.logitRows;
      if (!lr || typeof lr.length !== 'number' || lr.length === 0) throw new ArgumentError(`${op}: logitRows: expected a non-empty list of row indices, got ${describe(lr)}`);
      rows = intArray(op, 'logitRows', lr, lr.length, 0, T - 1);
    }
    return { ids, seq, pos, segments, rows };
  }

  /**
   * Logits f32 [R, V] of a batch of packed sequences (R = T, or logitRows.length). With a
   * cache the batch attends to the cached tokens and its keys/values are appended (only when
   * the forward succeeds). All arguments are checked before any kernel runs.
   */
  forward(batch: LlamaBatch): Tensor {
    const op = 'LlamaModel.forward';
    const { ids, seq, pos, segments, rows } = this.checkBatch(op, batch);
    const cfg = this.config;
    const be = this.backend;
    const T = ids.length;
    const cache = batch.cache;
    const lora = batch.lora;

    const scope = new Scope();
    let plan: KvAppend | null = null;
    let ownLayout: AttentionLayout | null = null;
    try {
      const posT = scope.keep(be.tensor(pos, [T], 'i32'));
      const needsOnes = this.weights.layers.some((l) => Object.keys(l.bias).length > 0);
      const ones = needsOnes ? scope.keep(be.tensor(new Float32Array(T).fill(1), [T, 1], 'f32')) : null;
      let layout: AttentionLayout;
      if (cache) {
        plan = cache.begin(seq, pos, segments);
        layout = plan.layout;
      } else {
        layout = attentionLayout(be, {
          qSeq: seq, qPos: pos,
          ...(segments ? { segments: { numSegments: segments.numSegments, qSegment: segments.segment, blocked: segments.blocked } } : {}),
        });
        ownLayout = layout;
      }
      const { numHeads: nH, numKvHeads: nKv, headDim: D, rmsNormEps: eps } = cfg;
      const linear = (x: Tensor, l: number, m: LinearModule): Tensor => {
        const lw = this.weights.layers[l]!;
        const y = scope.keep(matmul(x, lw.linear[m]));
        const b = lw.bias[m];
        if (b) matmulGradInput(ones!, b, { out: y, accumulate: true });
        const stack = lora?.stacks[l]?.[m];
        if (stack) scope.free(scope.keep(loraApply(y, x, stack, lora!.routing, { strategy: lora!.strategy })));
        return y;
      };
      const x = scope.keep(embedding(this.weights.embedTokens, ids));
      for (let l = 0; l < cfg.numLayers; l++) {
        const lw = this.weights.layers[l]!;
        const n1 = rmsnorm(x, lw.inputNorm, eps);
        scope.keep(n1.y); scope.free(scope.keep(n1.rstd));
        const q = linear(n1.y, l, 'q_proj');
        const k = linear(n1.y, l, 'k_proj');
        const v = linear(n1.y, l, 'v_proj');
        scope.free(n1.y);
        const q3 = scope.keep(tensorView(q, [T, nH, D]));
        const k3 = scope.keep(tensorView(k, [T, nKv, D]));
        rope(q3, posT, this.weights.invFreq, { out: q3 });
        rope(k3, posT, this.weights.invFreq, { out: k3 });
        let K: Tensor, V: Tensor;
        if (plan) {
          cache!.append(plan, l, k, v);
          K = cache!.keys(l);
          V = cache!.values(l);
        } else {
          K = k3;
          V = scope.keep(tensorView(v, [T, nKv, D]));
        }
        const att = attention(q3, K, V, layout);
        scope.keep(att.out); scope.free(scope.keep(att.lse));
        scope.free(q3, k3, q, k, v);
        if (!plan) scope.free(V);
        const a2 = scope.keep(tensorView(att.out, [T, nH * D]));
        const o = linear(a2, l, 'o_proj');
        scope.free(a2, att.out);
        add(x, o, { out: x });
        scope.free(o);
        const n2 = rmsnorm(x, lw.postAttentionNorm, eps);
        scope.keep(n2.y); scope.free(scope.keep(n2.rstd));
        const g = linear(n2.y, l, 'gate_proj');
        const u = linear(n2.y, l, 'up_proj');
        scope.free(n2.y);
        const s = scope.keep(swiglu(g, u));
        scope.free(g, u);
        const d = linear(s, l, 'down_proj');
        scope.free(s);
        add(x, d, { out: x });
        scope.free(d);
      }
      const nf = rmsnorm(x, this.weights.norm, eps);
      scope.keep(nf.y); scope.free(scope.keep(nf.rstd), x);
      let h = nf.y;
      if (rows) {
        h = scope.keep(embedding(nf.y, rows)); // a row gather of the f32 hidden states
        scope.free(nf.y);
      }
      const logits = matmul(h, this.weights.lmHead);
      if (plan) cache!.commit(plan);
      plan = null;
      return logits;
    } catch (e) {
      if (plan) cache!.abort(plan);
      throw e;
    } finally {
      scope.close();
      ownLayout?.dispose();
    }
  }

  #checkLora(op: string, lora: LlamaLora, T: number): void {
    if (!lora || typeof lora !== 'object') throw new ArgumentError(`${op}: lora: expected { stacks, routing }, got ${describe(lora)}`);
    const rt = lora.routing;
    if (!(rt instanceof LoraRouting)) throw new ArgumentError(`${op}: lora.routing: expected a LoraRouting from loraRouting(), got ${describe(rt)}`);
    if (rt.backend !== this.backend) throw new ArgumentError(`${op}: lora.routing: lives on another backend (${rt.backend.kind}) than the model (${this.backend.kind})`);
    if (rt.T !== T) throw new ShapeError(`${op}: lora.routing: routes ${rt.T} tokens, the batch has ${T}`);
    if (!Array.isArray(lora.stacks)) throw new ArgumentError(`${op}: lora.stacks: expected an array with one entry per layer, got ${describe(lora.stacks)}`);
    if (lora.stacks.length !== this.config.numLayers) throw new ShapeError(`${op}: lora.stacks: expected ${this.config.numLayers} entries (one per layer), got ${lora.stacks.length}`);
    lora.stacks.forEach((mods, l) => {
      if (mods === undefined || mods === null) return;
      for (const [m, s] of Object.entries(mods)) {
        if (!(LINEAR_MODULES as readonly string[]).includes(m)) throw new ArgumentError(`${op}: lora.stacks[${l}]: unknown module '${m}' (expected one of ${LINEAR_MODULES.join(', ')})`);
        if (s === undefined) continue;
        const [out, inn] = linearShape(this.config, m as LinearModule);
        const A = (s as LoraStack | null)?.A, B = (s as LoraStack | null)?.B;
        if (!(A instanceof Tensor) || !(B instanceof Tensor)) throw new ArgumentError(`${op}: lora.stacks[${l}].${m}: expected a LoraStack from loraStack(), got ${describe(s)}`);
        if (A.backend !== this.backend) throw new ArgumentError(`${op}: lora.stacks[${l}].${m}: lives on another backend (${A.backend.kind}) than the model (${this.backend.kind})`);
        if (A.shape.length !== 3 || A.shape[2] !== inn || B.shape.length !== 3 || B.shape[1] !== out) {
          throw new ShapeError(`${op}: lora.stacks[${l}].${m}: expected A [L, R, ${inn}] and B [L, ${out}, R], got [${A.shape.join(', ')}] and [${B.shape.join(', ')}]`);
        }
        if (A.shape[0] !== rt.L) throw new ShapeError(`${op}: lora.stacks[${l}].${m}: holds ${A.shape[0]} adapters, the routing was built for L = ${rt.L}`);
      }
    });
  }

  /**
   * Convenience: forward and read the logits back, Float32Array [R, V]; the tensor is freed.
   * `adapters` routes the tokens without building a routing by hand: a MoTE bundle by
   * `steps` (per token −1 = prompt, else the step index; default all prompt), an adapter set
   * by `adapter` (per token, or one index for all; −1 = base only).
   */
  async logits(ids: ArrayLike<number>, opts: Omit<LlamaBatch, 'ids'> & LogitsRouting = {}): Promise<Float32Array> {
    const { adapters, steps, adapter, ...batch } = opts;
    let routing: LoraRouting | null = null;
    if (adapters !== undefined) {
      if (batch.lora !== undefined) throw new ArgumentError('LlamaModel.logits: adapters: give either adapters or lora, not both');
      if (!adapters || typeof (adapters as RoutableAdapters).loraFor !== 'function' || typeof (adapters as RoutableAdapters).routing !== 'function') {
        throw new ArgumentError(`LlamaModel.logits: adapters: expected a MoteBundle or an AdapterSet, got ${describe(adapters)}`);
      }
      const n = ids?.length ?? 0;
      const isMote = 'config' in adapters && Array.isArray((adapters as { config?: { steps?: unknown } }).config?.steps);
      if (isMote) {
        if (adapter !== undefined) throw new ArgumentError('LlamaModel.logits: adapter: a MoTE bundle is routed by steps, not adapter');
        routing = adapters.routing(steps ?? new Int32Array(n).fill(-1), batch.seq === undefined ? {} : { seq: batch.seq });
      } else {
        if (steps !== undefined) throw new ArgumentError('LlamaModel.logits: steps: an adapter set is routed by adapter, not steps');
        const a = adapter ?? 0;
        routing = adapters.routing(typeof a === 'number' ? new Int32Array(n).fill(a) : a);
      }
      batch.lora = adapters.loraFor(routing);
    } else if (steps !== undefined || adapter !== undefined) {
      throw new ArgumentError(`LlamaModel.logits: ${steps !== undefined ? 'steps' : 'adapter'}: needs adapters`);
    }
    try {
      const t = this.forward({ ...batch, ids });
      try {
        return await t.readFloat();
      } finally {
        t.dispose();
      }
    } finally {
      routing?.dispose();
    }
  }

  /**
   * Grows the vocabulary to `vocabSize` rows (e.g. for added step tokens): the embedding (and
   * an untied lm_head) get new rows drawn around the mean of the existing rows with their
   * per-dimension spread, as transformers' resize_token_embeddings(mean_resizing=True) draws
   * them from a normal fitted to the old rows, but seeded (deterministic) and with the full
   * spread: rows that all equal the mean would give the new tokens identical logits forever
   * when only adapters are trained, so no tag could ever be told from another. Smaller sizes
   * are refused (rows would be lost). Weights keep their dtype.
   */
  async resizeTokenEmbeddings(vocabSize: number, opts: { seed?: number } = {}): Promise<void> {
    const op = 'LlamaModel.resizeTokenEmbeddings';
    this.#live('resizeTokenEmbeddings');
    const V = this.config.vocabSize, H = this.config.hiddenSize;
    if (!Number.isSafeInteger(vocabSize) || vocabSize < V) throw new ArgumentError(`${op}: vocabSize: expected an integer ≥ the current ${V} (shrinking would drop rows), got ${describe(vocabSize)}`);
    const seed = opts.seed ?? 0;
    if (!Number.isSafeInteger(seed) || seed < 0) throw new ArgumentError(`${op}: seed: expected a non-negative integer, got ${describe(seed)}`);
    if (vocabSize === V) return;
    const grow = async (t: Tensor, salt: number): Promise<Tensor> => {
      const old = await t.readFloat();
      const data = new Float32Array(vocabSize * H);
      data.set(old);
      const mean = new Float64Array(H), sq = new Float64Array(H);
      for (let v = 0; v < V; v++) for (let h = 0; h < H; h++) mean[h] += old[v * H + h]!;
      for (let h = 0; h < H; h++) mean[h] /= V;
      for (let v = 0; v < V; v++) for (let h = 0; h < H; h++) sq[h] += (old[v * H + h]! - mean[h]!) ** 2;
      // Box–Muller over a seeded stream: the same call gives the same rows.
      const uni = mulberry32(mixSeed(seed, salt));
      for (let v = V; v < vocabSize; v++) {
        for (let h = 0; h < H; h++) {
          const z = Math.sqrt(-2 * Math.log(1 - uni())) * Math.cos(2 * Math.PI * uni());
          data[v * H + h] = mean[h]! + z * Math.sqrt(sq[h]! / V);
        }
      }
      return this.backend.tensor(data, [vocabSize, H], t.dtype);
    };
    const w = this.weights;
    const tied = w.lmHead === w.embedTokens;
    const embed = await grow(w.embedTokens, 0x45);
    let head: Tensor;
    try {
      head = tied ? embed : await grow(w.lmHead, 0x4c);
    } catch (e) {
      embed.dispose();
      throw e;
    }
    w.embedTokens.dispose();
    if (!tied) w.lmHead.dispose();
    w.embedTokens = embed;
    w.lmHead = head;
    (this as { config: ModelConfig }).config = { ...this.config, vocabSize };
  }

  /** Frees every weight on the device. Safe to call twice. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    const w = this.weights;
    const all = new Set<Tensor>([w.embedTokens, w.norm, w.lmHead, w.invFreq]);
    for (const l of w.layers) {
      all.add(l.inputNorm); all.add(l.postAttentionNorm);
      for (const t of Object.values(l.linear)) all.add(t);
      for (const t of Object.values(l.bias)) if (t) all.add(t);
    }
    for (const t of all) t.dispose();
  }
}
