// LLaMA-family decoder (llama, mistral, qwen2, qwen3) on any backend: the forward over a batch of
// packed sequences, with multi-LoRA / MoTE adapters on every linear layer, step-skipping
// segment masks and a KV cache for decoding (DESIGN §1, §6). Loading is src/model/load.ts;
// the training pass (src/model/llama_backward.ts) runs this same decoder layer, keeping
// what its backward reads.
//
// Per layer, as transformers' LlamaDecoderLayer:
//   h  = x + o_proj(attn(rope(q_proj(rms₁(x))), rope(k_proj(rms₁(x))), v_proj(rms₁(x))))
//   x' = h + down_proj(silu(gate_proj(rms₂(h))) ⊙ up_proj(rms₂(h)))
// then logits = lm_head(rms_f(x)). Qwen3 normalises each query and key head before RoPE:
//   q = rope(rms_q(q_proj(·)) per head), k = rope(rms_k(k_proj(·)) per head)
// (transformers' Qwen3Attention), with the rmsnorm op on the [T·heads, headDim] view. Every linear is a MultiLoraLinear: y = x·Wᵀ (+ bias)
// (+ Σ_k w·scale·B·A·x for the LoRA slots of the token). Activations are f32; weights stay in
// their stored dtype (f32/f16/bf16) unless loading converts them, and every product
// accumulates in f32.

import { Tensor } from '../tensor.js';
import { mixSeed, mulberry32 } from '../rng.js';
import type { Backend } from '../backend/backend.js';
import { ArgumentError, DisposedTensorError, ShapeError, describe } from '../errors.js';
import { LINEAR_MODULES, linearShape, type LinearModule, type ModelConfig } from './config.js';
import { matmul } from '../ops/matmul.js';
import { LoraRouting, type LoraStack, type LoraStrategy } from '../ops/lora.js';
import { MultiLoraLinear } from '../ops/multi_lora_linear.js';
import { checkIds, embedding } from '../ops/embedding.js';
import { rmsnorm } from '../ops/rmsnorm.js';
import { rope } from '../ops/rope.js';
import { attention, attentionLayout, type AttentionLayout } from '../ops/attention.js';
import { swiglu } from '../ops/swiglu.js';
import { add } from '../ops/residual.js';
import { KvCache, MAX_POSITION, tensorView, type KvAppend, type KvCacheOptions } from './kv_cache.js';

/** The device weights of one decoder layer. */
export interface LlamaLayerWeights {
  inputNorm: Tensor;
  postAttentionNorm: Tensor;
  /** [out, in] per linear module (HF layout). */
  linear: Record<LinearModule, Tensor>;
  /** [1, out] per linear that has a bias. */
  bias: Partial<Record<LinearModule, Tensor>>;
  /** Qwen3: [headDim] RMSNorm weights of every query / key head (self_attn.q_norm / k_norm). */
  qNorm?: Tensor;
  kNorm?: Tensor;
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
export interface CheckedSegments {
  numSegments: number;
  segment: Int32Array;
  blocked: ArrayLike<number | boolean>;
}

/** What LlamaModel.logits needs of a MoTE bundle or an adapter set (src/adapters/stacks.ts AdapterStacks). */
interface RoutableAdapters {
  /** > 0: routed by step (MoTE); 0: by adapter index. */
  readonly numSteps?: number;
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

// ---------------------------------------------------------------------------------------

function intArray(op: string, name: string, a: ArrayLike<number> | undefined, n: number, lo: number, hi: number): Int32Array {
  if (!a || typeof a.length !== 'number') throw new ArgumentError(`${op}: ${name}: expected ${n} integers, got ${describe(a)}`);
  if (a.length !== n) throw new ShapeError(`${op}: ${name}: expected ${n} entries (one per token), got ${a.length}`);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const v = a[i]!;
    if (!Number.isInteger(v) || v < lo || v > hi)
      throw new ArgumentError(`${op}: ${name}[${i}]: expected an integer in [${lo}, ${hi}], got ${v}`);
    out[i] = v;
  }
  return out;
}

/** Tracks temporaries of a pass so that each is freed exactly once, also on errors. @internal shared with the training pass */
export class Scope {
  readonly #held = new Set<Tensor>();
  keep<T extends Tensor>(t: T): T {
    this.#held.add(t);
    return t;
  }
  free(...ts: (Tensor | undefined | null)[]): void {
    for (const t of ts) if (t && this.#held.delete(t)) t.dispose();
  }
  release(t: Tensor): Tensor {
    this.#held.delete(t);
    return t;
  }
  close(): void {
    for (const t of this.#held) t.dispose();
    this.#held.clear();
  }
}

/** What the training pass keeps of one layer for its backward. @internal */
export interface LayerSaved {
  xIn: Tensor;
  rstd1: Tensor;
  n1: Tensor;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  att: Tensor;
  lse: Tensor;
  h: Tensor;
  rstd2: Tensor;
  n2: Tensor;
  g: Tensor;
  u: Tensor;
  s: Tensor;
  /** LoRA shrink outputs per module (when the module has a stack). */
  lv: Partial<Record<LinearModule, Tensor>>;
  /** Qwen3: the projections before the per-head norm ([T, heads·D]) and the norms' rstd ([T·heads]). */
  qk?: { qIn: Tensor; qRstd: Tensor; kIn: Tensor; kRstd: Tensor };
}

/** One pass over the decoder layers: what every layer reads. @internal shared with the training pass */
export interface DecoderPass {
  ids: Int32Array;
  /** i32 [T] positions. */
  posT: Tensor;
  /** f32 [T, 1] ones for the bias updates, when a linear has a bias. */
  ones: Tensor | null;
  layout: AttentionLayout;
  lora: LlamaLora | undefined;
  cache: { cache: KvCache; plan: KvAppend } | null;
  scope: Scope;
  /**
   * Training: residuals out of place (rmsnormGrad needs each norm's input) and every
   * activation the backward reads kept here, one entry per layer. Inference: null (residuals
   * in place, temporaries freed as soon as they are used).
   */
  saved: LayerSaved[] | null;
}

/** The attention layout of a batch without a cache. @internal */
export function passLayout(be: Backend, seq: Int32Array, pos: Int32Array, segments: CheckedSegments | undefined): AttentionLayout {
  return attentionLayout(be, {
    qSeq: seq,
    qPos: pos,
    ...(segments ? { segments: { numSegments: segments.numSegments, qSegment: segments.segment, blocked: segments.blocked } } : {}),
  });
}

/** Uploads the per-pass tensors (positions, the ones of the bias updates) into the pass's scope. @internal */
export function beginPass(model: LlamaModel, p: Omit<DecoderPass, 'posT' | 'ones'> & { pos: Int32Array }): DecoderPass {
  const be = model.backend;
  const T = p.ids.length;
  const { pos, ...rest } = p;
  const posT = p.scope.keep(be.tensor(pos, [T], 'i32'));
  const hasBias = model.weights.layers.some((l) => Object.keys(l.bias).length > 0);
  const ones = hasBias ? p.scope.keep(be.tensor(new Float32Array(T).fill(1), [T, 1], 'f32')) : null;
  return { ...rest, posT, ones };
}

/**
 * Embedding, every decoder layer and the final norm. Returns the normed hidden states; a
 * training pass also gets the last residual stream and the final norm's rstd. @internal
 */
export function runDecoder(model: LlamaModel, p: DecoderPass): { hidden: Tensor; x: Tensor | null; rstd: Tensor | null } {
  const { scope } = p;
  let x = scope.keep(embedding(model.weights.embedTokens, p.ids));
  for (let l = 0; l < model.config.numLayers; l++) x = decoderLayer(model, p, l, x);
  const nf = rmsnorm(x, model.weights.norm, model.config.rmsNormEps);
  scope.keep(nf.y);
  scope.keep(nf.rstd);
  if (p.saved) return { hidden: nf.y, x, rstd: nf.rstd };
  scope.free(nf.rstd, x);
  return { hidden: nf.y, x: null, rstd: null };
}

/** One decoder layer on the residual stream x; returns the layer's output stream. */
function decoderLayer(model: LlamaModel, p: DecoderPass, l: number, x: Tensor): Tensor {
  const { scope, lora } = p;
  const T = p.ids.length;
  const { numHeads: nH, numKvHeads: nKv, headDim: D, rmsNormEps: eps } = model.config;
  const lw = model.weights.layers[l]!;
  const keep = p.saved !== null;
  /** Frees temporaries in inference; the training pass keeps them for its backward. */
  const drop = (...ts: (Tensor | undefined | null)[]): void => {
    if (!keep) scope.free(...ts);
  };
  const lv: LayerSaved['lv'] = {};
  const linear = (xin: Tensor, m: LinearModule): Tensor => {
    const { y, v } = model
      .linear(l, m, lora)
      .apply(xin, lora?.routing ?? null, { strategy: lora?.strategy, ...(p.ones ? { ones: p.ones } : {}) });
    scope.keep(y);
    if (v) {
      scope.keep(v);
      if (keep) lv[m] = v;
      else scope.free(v);
    }
    return y;
  };

  const r1 = rmsnorm(x, lw.inputNorm, eps);
  const n1 = scope.keep(r1.y),
    rstd1 = scope.keep(r1.rstd);
  drop(rstd1);
  let q = linear(n1, 'q_proj'),
    k = linear(n1, 'k_proj');
  const v = linear(n1, 'v_proj');
  drop(n1);
  let qk: LayerSaved['qk'];
  if (lw.qNorm && lw.kNorm) {
    // RMSNorm over each head's D values: the rmsnorm op on [T·heads, D] views, into a [T, heads·D] tensor.
    const headNorm = (xin: Tensor, heads: number, w: Tensor): { y: Tensor; rstd: Tensor } => {
      const y = scope.keep(model.backend.empty([T, heads * D], 'f32'));
      const xv = scope.keep(tensorView(xin, [T * heads, D])),
        yv = scope.keep(tensorView(y, [T * heads, D]));
      const rstd = scope.keep(rmsnorm(xv, w, eps, { out: yv }).rstd);
      scope.free(xv, yv);
      return { y, rstd };
    };
    const qn = headNorm(q, nH, lw.qNorm),
      kn = headNorm(k, nKv, lw.kNorm);
    if (keep) qk = { qIn: q, qRstd: qn.rstd, kIn: k, kRstd: kn.rstd };
    else scope.free(q, k, qn.rstd, kn.rstd);
    q = qn.y;
    k = kn.y;
  }
  const q3 = scope.keep(tensorView(q, [T, nH, D]));
  const k3 = scope.keep(tensorView(k, [T, nKv, D]));
  rope(q3, p.posT, model.weights.invFreq, { out: q3 });
  rope(k3, p.posT, model.weights.invFreq, { out: k3 });
  let K: Tensor, V: Tensor;
  if (p.cache) {
    p.cache.cache.append(p.cache.plan, l, k, v);
    K = p.cache.cache.keys(l);
    V = p.cache.cache.values(l);
  } else {
    K = k3;
    V = scope.keep(tensorView(v, [T, nKv, D]));
  }
  const a = attention(q3, K, V, p.layout);
  const att = scope.keep(a.out),
    lse = scope.keep(a.lse);
  drop(lse, q, k, v);
  if (!p.cache) scope.free(V); // a view: freeing it never frees v's storage
  scope.free(q3, k3);
  const a2 = scope.keep(tensorView(att, [T, nH * D]));
  const o = linear(a2, 'o_proj');
  scope.free(a2);
  drop(att);
  // The residual: in place for inference, a new tensor for training (rms₂'s input is kept).
  const h = keep ? scope.keep(add(x, o)) : add(x, o, { out: x });
  scope.free(o);
  const r2 = rmsnorm(h, lw.postAttentionNorm, eps);
  const n2 = scope.keep(r2.y),
    rstd2 = scope.keep(r2.rstd);
  drop(rstd2);
  const g = linear(n2, 'gate_proj'),
    u = linear(n2, 'up_proj');
  drop(n2);
  const s = scope.keep(swiglu(g, u));
  drop(g, u);
  const d = linear(s, 'down_proj');
  drop(s);
  const xOut = keep ? scope.keep(add(h, d)) : add(h, d, { out: h });
  scope.free(d);
  p.saved?.push({ xIn: x, rstd1, n1, q, k, v, att, lse, h, rstd2, n2, g, u, s, lv, ...(qk ? { qk } : {}) });
  return xOut;
}

function checkRowSeed(op: string, seed: unknown): number {
  const s = seed ?? 0;
  if (typeof s !== 'number' || !Number.isSafeInteger(s) || s < 0)
    throw new ArgumentError(`${op}: seed: expected a non-negative integer, got ${describe(s)}`);
  return s;
}

export class LlamaModel {
  #disposed = false;

  /** @internal use loadModel or modelFromTensors */
  constructor(
    readonly config: ModelConfig,
    readonly backend: Backend,
    readonly weights: LlamaWeights,
    readonly dir: string | null,
  ) {}

  get disposed(): boolean {
    return this.#disposed || this.backend.destroyed;
  }

  #live(op: string): void {
    if (this.disposed) throw new DisposedTensorError(`LlamaModel.${op}: the model was used after dispose()`);
  }

  /** A KV cache shaped for this model, on its backend. */
  newCache(opts: KvCacheOptions = {}): KvCache {
    this.#live('newCache');
    return new KvCache(
      this.backend,
      { numLayers: this.config.numLayers, numKvHeads: this.config.numKvHeads, headDim: this.config.headDim },
      opts,
    );
  }

  /**
   * Checks a batch on the host before any kernel runs: ids, sequence ids, positions
   * (defaulted), segments, LoRA and logit rows. @internal shared by forward and the training pass.
   */
  checkBatch(
    op: string,
    batch: LlamaBatch,
  ): { ids: Int32Array; seq: Int32Array; pos: Int32Array; segments: CheckedSegments | undefined; rows: Int32Array | null } {
    this.#live(op.slice(op.lastIndexOf('.') + 1));
    if (!batch || typeof batch !== 'object')
      throw new ArgumentError(`${op}: batch: expected { ids, seq?, pos?, lora?, segments?, cache? }, got ${describe(batch)}`);
    const cfg = this.config;
    const be = this.backend;
    const ids = checkIds(op, batch.ids, cfg.vocabSize);
    const T = ids.length;
    const seq = batch.seq === undefined ? new Int32Array(T) : intArray(op, 'seq', batch.seq, T, 0, 2 ** 31 - 1);
    const cache = batch.cache;
    if (cache !== undefined) {
      if (!(cache instanceof KvCache))
        throw new ArgumentError(`${op}: cache: expected a KvCache from model.newCache(), got ${describe(cache)}`);
      if (cache.disposed) throw new DisposedTensorError(`${op}: cache: used after dispose()`);
      if (cache.backend !== be)
        throw new ArgumentError(`${op}: cache: lives on another backend (${cache.backend.kind}) than the model (${be.kind})`);
      if (cache.numLayers !== cfg.numLayers || cache.numKvHeads !== cfg.numKvHeads || cache.headDim !== cfg.headDim) {
        throw new ShapeError(
          `${op}: cache: made for ${cache.numLayers} layers × ${cache.numKvHeads} kv heads × ${cache.headDim}, the model has ${cfg.numLayers} × ${cfg.numKvHeads} × ${cfg.headDim}`,
        );
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
      if (far >= 0)
        throw new ArgumentError(
          `${op}: pos[${far}] = ${pos[far]}: sliding-window attention (window ${cfg.slidingWindow}) is not supported; positions must stay below the window`,
        );
    }
    let segments: CheckedSegments | undefined;
    if (batch.segments !== undefined) {
      const sg = batch.segments;
      if (!sg || typeof sg !== 'object')
        throw new ArgumentError(`${op}: segments: expected { numSegments, segment, blocked }, got ${describe(sg)}`);
      const S = sg.numSegments;
      if (!Number.isSafeInteger(S) || S <= 0)
        throw new ArgumentError(`${op}: segments.numSegments: expected a positive integer, got ${describe(S)}`);
      const segment = intArray(op, 'segments.segment', sg.segment, T, 0, S - 1);
      if (!sg.blocked || typeof sg.blocked.length !== 'number' || sg.blocked.length === 0 || sg.blocked.length % (S * S) !== 0) {
        throw new ShapeError(`${op}: segments.blocked: expected numSeqs·${S}·${S} entries, got ${describe(sg.blocked)}`);
      }
      const numSeqs = sg.blocked.length / (S * S);
      const bad = seq.findIndex((s) => s >= numSeqs);
      if (bad >= 0)
        throw new ArgumentError(`${op}: seq[${bad}] = ${seq[bad]} has no entry in segments.blocked (it covers ${numSeqs} sequences)`);
      segments = { numSegments: S, segment, blocked: sg.blocked };
    }
    const lora = batch.lora;
    if (lora !== undefined) this.#checkLora(op, lora, T);
    let rows: Int32Array | null = null;
    if (batch.logitRows !== undefined) {
      const lr = batch.logitRows;
      if (!lr || typeof lr.length !== 'number' || lr.length === 0)
        throw new ArgumentError(`${op}: logitRows: expected a non-empty list of row indices, got ${describe(lr)}`);
      rows = intArray(op, 'logitRows', lr, lr.length, 0, T - 1);
    }
    return { ids, seq, pos, segments, rows };
  }

  /**
   * The linear `m` of layer `l` with the batch's adapters there (if any). @internal shared
   * by the forward and the training pass.
   */
  linear(l: number, m: LinearModule, lora: LlamaLora | undefined): MultiLoraLinear {
    const lw = this.weights.layers[l]!;
    return new MultiLoraLinear(lw.linear[m], lora?.stacks[l]?.[m] ?? null, { bias: lw.bias[m] ?? null });
  }

  /**
   * Logits f32 [R, V] of a batch of packed sequences (R = T, or logitRows.length). With a
   * cache the batch attends to the cached tokens and its keys/values are appended (only when
   * the forward succeeds). All arguments are checked before any kernel runs.
   */
  forward(batch: LlamaBatch): Tensor {
    const op = 'LlamaModel.forward';
    const { ids, seq, pos, segments, rows } = this.checkBatch(op, batch);
    const cache = batch.cache;
    const scope = new Scope();
    let plan: KvAppend | null = null;
    let ownLayout: AttentionLayout | null = null;
    try {
      let layout: AttentionLayout;
      if (cache) {
        plan = cache.begin(seq, pos, segments);
        layout = plan.layout;
      } else {
        layout = ownLayout = passLayout(this.backend, seq, pos, segments);
      }
      const pass = beginPass(this, {
        ids,
        pos,
        layout,
        lora: batch.lora,
        cache: plan ? { cache: cache!, plan } : null,
        scope,
        saved: null,
      });
      const { hidden } = runDecoder(this, pass);
      let h = hidden;
      if (rows) {
        h = scope.keep(embedding(hidden, rows)); // a row gather of the f32 hidden states
        scope.free(hidden);
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
    if (!(rt instanceof LoraRouting))
      throw new ArgumentError(`${op}: lora.routing: expected a LoraRouting from loraRouting(), got ${describe(rt)}`);
    if (rt.backend !== this.backend)
      throw new ArgumentError(`${op}: lora.routing: lives on another backend (${rt.backend.kind}) than the model (${this.backend.kind})`);
    if (rt.T !== T) throw new ShapeError(`${op}: lora.routing: routes ${rt.T} tokens, the batch has ${T}`);
    if (!Array.isArray(lora.stacks))
      throw new ArgumentError(`${op}: lora.stacks: expected an array with one entry per layer, got ${describe(lora.stacks)}`);
    if (lora.stacks.length !== this.config.numLayers)
      throw new ShapeError(`${op}: lora.stacks: expected ${this.config.numLayers} entries (one per layer), got ${lora.stacks.length}`);
    lora.stacks.forEach((mods, l) => {
      if (mods === undefined || mods === null) return;
      for (const [m, s] of Object.entries(mods)) {
        if (!(LINEAR_MODULES as readonly string[]).includes(m))
          throw new ArgumentError(`${op}: lora.stacks[${l}]: unknown module '${m}' (expected one of ${LINEAR_MODULES.join(', ')})`);
        if (s === undefined) continue;
        const [out, inn] = linearShape(this.config, m as LinearModule);
        const A = (s as LoraStack | null)?.A,
          B = (s as LoraStack | null)?.B;
        if (!(A instanceof Tensor) || !(B instanceof Tensor))
          throw new ArgumentError(`${op}: lora.stacks[${l}].${m}: expected a LoraStack from loraStack(), got ${describe(s)}`);
        if (A.backend !== this.backend)
          throw new ArgumentError(
            `${op}: lora.stacks[${l}].${m}: lives on another backend (${A.backend.kind}) than the model (${this.backend.kind})`,
          );
        if (A.shape.length !== 3 || A.shape[2] !== inn || B.shape.length !== 3 || B.shape[1] !== out) {
          throw new ShapeError(
            `${op}: lora.stacks[${l}].${m}: expected A [L, R, ${inn}] and B [L, ${out}, R], got [${A.shape.join(', ')}] and [${B.shape.join(', ')}]`,
          );
        }
        if (A.shape[0] !== rt.L)
          throw new ShapeError(`${op}: lora.stacks[${l}].${m}: holds ${A.shape[0]} adapters, the routing was built for L = ${rt.L}`);
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
      if (
        !adapters ||
        typeof (adapters as RoutableAdapters).loraFor !== 'function' ||
        typeof (adapters as RoutableAdapters).routing !== 'function'
      ) {
        throw new ArgumentError(`LlamaModel.logits: adapters: expected a MoteBundle or an AdapterSet, got ${describe(adapters)}`);
      }
      const n = ids?.length ?? 0;
      // Step-routed (a MoTE bundle) or routed by adapter index (an adapter set).
      if ((adapters.numSteps ?? 0) > 0) {
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
    const V = this.config.vocabSize;
    if (!Number.isSafeInteger(vocabSize) || vocabSize < V)
      throw new ArgumentError(
        `${op}: vocabSize: expected an integer ≥ the current ${V} (shrinking would drop rows), got ${describe(vocabSize)}`,
      );
    const seed = checkRowSeed(op, opts.seed);
    if (vocabSize === V) return;
    await this.#drawRows(
      Array.from({ length: vocabSize - V }, (_, i) => V + i),
      V,
      seed,
    );
  }

  /**
   * Gives the token rows `rows` of the embedding (and of an untied lm_head) fresh values drawn
   * as resizeTokenEmbeddings draws new rows: around the mean of the rows [0, meanRows) that are
   * not being drawn, with their per-dimension spread, from a stream seeded by `seed`, so the
   * same call gives the same rows on every load. For tokens that take rows a checkpoint
   * already has but never trained (real checkpoints pad the embedding past the tokenizer:
   * Qwen2.5 151,936 rows for 151,665 tokens). Rows at or past the vocabulary grow it; they
   * must continue it without gaps. meanRows defaults to the vocabulary size; give the
   * tokenizer's size to leave the padding out of the mean.
   */
  async initTokenRows(rows: ArrayLike<number>, opts: { seed?: number; meanRows?: number } = {}): Promise<void> {
    const op = 'LlamaModel.initTokenRows';
    this.#live('initTokenRows');
    const V = this.config.vocabSize;
    if (!rows || typeof rows.length !== 'number')
      throw new ArgumentError(`${op}: rows: expected a list of token ids, got ${describe(rows)}`);
    if (!opts || typeof opts !== 'object') throw new ArgumentError(`${op}: opts: expected { seed?, meanRows? }, got ${describe(opts)}`);
    const seed = checkRowSeed(op, opts.seed);
    const set = new Set<number>();
    for (let i = 0; i < rows.length; i++) {
      const r = rows[i]!;
      if (!Number.isSafeInteger(r) || r < 0)
        throw new ArgumentError(`${op}: rows[${i}]: expected a non-negative integer, got ${describe(r)}`);
      set.add(r);
    }
    const sorted = [...set].sort((a, b) => a - b);
    // Growth only by listed rows: the allocation is bounded by the list, never by one large id.
    const past = sorted.filter((r) => r >= V);
    past.forEach((r, i) => {
      if (r !== V + i)
        throw new ArgumentError(
          `${op}: rows: ${r} would leave rows ${V + i}..${r - 1} past the vocabulary (${V}) unset; rows past it must continue it without gaps`,
        );
    });
    const meanRows = opts.meanRows ?? V;
    if (!Number.isSafeInteger(meanRows) || meanRows < 1 || meanRows > V)
      throw new ArgumentError(`${op}: meanRows: expected an integer in [1, ${V}], got ${describe(meanRows)}`);
    if (sorted.filter((r) => r < meanRows).length >= meanRows)
      throw new ArgumentError(`${op}: rows: cover every row below meanRows (${meanRows}); no row is left to draw the mean from`);
    if (sorted.length === 0) return;
    await this.#drawRows(sorted, meanRows, seed);
  }

  /** Draws `rows` (ascending; those past the vocabulary continue it) around the mean of the other rows below meanRows. */
  async #drawRows(rows: readonly number[], meanRows: number, seed: number): Promise<void> {
    const V = this.config.vocabSize,
      H = this.config.hiddenSize;
    const newV = Math.max(V, rows[rows.length - 1]! + 1);
    const drawn = new Set(rows);
    const draw = async (t: Tensor, salt: number): Promise<Tensor> => {
      const old = await t.readFloat();
      const data = new Float32Array(newV * H);
      data.set(old);
      const mean = new Float64Array(H),
        sq = new Float64Array(H);
      let n = 0;
      for (let v = 0; v < meanRows; v++) {
        if (drawn.has(v)) continue;
        n++;
        for (let h = 0; h < H; h++) mean[h] += old[v * H + h]!;
      }
      for (let h = 0; h < H; h++) mean[h] /= n;
      for (let v = 0; v < meanRows; v++) {
        if (drawn.has(v)) continue;
        for (let h = 0; h < H; h++) sq[h] += (old[v * H + h]! - mean[h]!) ** 2;
      }
      // Box–Muller over a seeded stream, rows in ascending order: the same call gives the same rows.
      const uni = mulberry32(mixSeed(seed, salt));
      for (const v of rows) {
        for (let h = 0; h < H; h++) {
          const z = Math.sqrt(-2 * Math.log(1 - uni())) * Math.cos(2 * Math.PI * uni());
          data[v * H + h] = mean[h]! + z * Math.sqrt(sq[h]! / n);
        }
      }
      return this.backend.tensor(data, [newV, H], t.dtype);
    };
    const w = this.weights;
    const tied = w.lmHead === w.embedTokens;
    const embed = await draw(w.embedTokens, 0x45);
    let head: Tensor;
    try {
      head = tied ? embed : await draw(w.lmHead, 0x4c);
    } catch (e) {
      embed.dispose();
      throw e;
    }
    w.embedTokens.dispose();
    if (!tied) w.lmHead.dispose();
    w.embedTokens = embed;
    w.lmHead = head;
    if (newV !== V) (this as { config: ModelConfig }).config = { ...this.config, vocabSize: newV };
  }

  /** Frees every weight on the device. Safe to call twice. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    const w = this.weights;
    const all = new Set<Tensor>([w.embedTokens, w.norm, w.lmHead, w.invFreq]);
    for (const l of w.layers) {
      all.add(l.inputNorm);
      all.add(l.postAttentionNorm);
      if (l.qNorm) all.add(l.qNorm);
      if (l.kNorm) all.add(l.kNorm);
      for (const t of Object.values(l.linear)) all.add(t);
      for (const t of Object.values(l.bias)) if (t) all.add(t);
    }
    for (const t of all) t.dispose();
  }

  /** dispose(), for `using`: the LlamaModel is freed when its block ends. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
