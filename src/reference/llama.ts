// Float64 reference forward of a LLaMA-family decoder (llama, mistral, qwen2, qwen3), composed from
// the reference ops of this folder and written to be read, not to be fast. It is the oracle
// the device forward (and MoTE routing on top of it) is checked against.
//
//   x      = embed_tokens[ids]                                          [T, H]
//   for each layer i:
//     a    = rmsnorm(x, input_layernorm)
//     q    = rope(lin(q_proj, a)), k = rope(lin(k_proj, a)), v = lin(v_proj, a)
//            (qwen3: rope(rmsnorm(·, q_norm / k_norm)) over each head's head_dim values)
//     x    = x + lin(o_proj, attention(q, k, v; seq, pos, segments))
//     m    = rmsnorm(x, post_attention_layernorm)
//     x    = x + lin(down_proj, silu(lin(gate_proj, m)) ⊙ lin(up_proj, m))
//   logits = rmsnorm(x, norm) · lm_headᵀ  (lm_head = embed_tokens when tied)   [T, V]
//
// lin(m, x) = x·Wᵀ (+ bias where the config has one) + the multi-LoRA term
//   Σ_k weight[t,k]·scale[e]·B[e]·A[e]·x[t] (e = slots[t,k]), the same routing for every
// linear of the batch, as MoTE does (DESIGN §1: K = 2, step expert with α, shared with 1−α).
//
// A batch holds packed sequences: token t belongs to sequence seq[t] at position pos[t];
// attention is causal by position within a sequence, never across sequences, and an optional
// step-skipping segment mask blocks chosen (later step → earlier step) pairs.

import {
  expectedWeights,
  hasQkNorm,
  linearShape,
  linearWeightName,
  qkNormWeightName,
  type LinearModule,
  type ModelConfig,
} from '../model/config.js';
import { embeddingRef } from './embedding.js';
import { rmsnormRef } from './rmsnorm.js';
import { ropeInvFreqRef, ropeRef, type RopeScaling as HFRopeScaling } from './rope.js';
import { attentionRef, type SegmentMask } from './attention.js';
import { swigluRef } from './swiglu.js';
import { residualAddRef } from './residual.js';
import { matmulRef } from './matmul.js';
import { multiLoraLinearForwardRef, type LoraRefStack } from './lora.js';
import { logSoftmaxRef, xentRef } from './xent.js';

/** A model's weights by HF tensor name (`model.layers.0.self_attn.q_proj.weight`), as float64 values already rounded through the storage dtype. */
export type WeightGetter = (name: string) => ArrayLike<number>;

/** Multi-LoRA on the linears of the model, one routing for all of them. */
export interface LlamaLoraRef {
  /**
   * The adapter stack of one linear layer: A: [L, R, Hin], B: [L, Hout, R], ranks, scales: [L]
   * (PEFT layouts, src/reference/lora.ts). L is ranks.length and R is A.length / (L·Hin); they may
   * differ between linears. null/undefined: no LoRA on that linear. Slots must be < L wherever a
   * stack is given.
   */
  stacks: (layer: number, module: LinearModule) => LoraRefStack | null | undefined;
  /** [T, K] adapter index per slot (−1 = none). */
  slots: ArrayLike<number>;
  /** [T, K] mixing weight per slot; default 1. */
  weights?: ArrayLike<number>;
  /** Slots per token. */
  K: number;
}

export interface LlamaRefOptions {
  /** [T] packed-sequence id of each token; default all 0 (one sequence). */
  seq?: ArrayLike<number>;
  /** [T] position of each token within its sequence; default its index among the earlier tokens of the same sequence (0, 1, 2, ...). */
  pos?: ArrayLike<number>;
  /** Optional step-skipping mask, passed to attention as is (see SegmentMask). */
  segments?: SegmentMask;
  /** Optional multi-LoRA on every linear. */
  lora?: LlamaLoraRef;
  /**
   * Receives named intermediates as they are computed, for debugging a device forward:
   * 'embed'; per layer `layers.{i}.` + attn_norm, q, k, v (after bias and LoRA, before rope),
   * (qwen3: q_normed, k_normed, after the per-head norms) q_rope, k_rope, attn, o, resid_mid, mlp_norm, gate, up, act, down, out; then 'norm', 'logits'.
   */
  trace?: (name: string, data: Float64Array) => void;
}

export interface LlamaRefResult {
  /** [T, V] */
  logits: Float64Array;
  /** [T, H] the residual stream after the last layer, before the final norm. */
  hidden: Float64Array;
}

function fail(msg: string): never {
  throw new Error(`llama reference: ${msg}`);
}

/** ModelConfig's rope scaling in the snake_case form of config.json that ropeInvFreqRef takes. */
export function hfRopeScaling(cfg: ModelConfig): HFRopeScaling | null {
  const s = cfg.ropeScaling;
  if (s === null) return null;
  if (s.type === 'linear') return { rope_type: 'linear', factor: s.factor };
  return {
    rope_type: 'llama3',
    factor: s.factor,
    low_freq_factor: s.lowFreqFactor,
    high_freq_factor: s.highFreqFactor,
    original_max_position_embeddings: s.originalMaxPositionEmbeddings,
  };
}

/** Default positions: each token's index among the earlier tokens of its own sequence. */
export function defaultPositions(seq: ArrayLike<number>): number[] {
  const next = new Map<number, number>();
  return Array.from({ length: seq.length }, (_, t) => {
    const p = next.get(seq[t]!) ?? 0;
    next.set(seq[t]!, p + 1);
    return p;
  });
}

/** Does the config give `m` a bias? */
function hasBias(cfg: ModelConfig, m: LinearModule): boolean {
  if (m === 'o_proj') return cfg.outputBias;
  if (m === 'gate_proj' || m === 'up_proj' || m === 'down_proj') return cfg.mlpBias;
  return cfg.attentionBias;
}

/**
 * The forward of `cfg` on the packed batch `ids` ([T] token ids). Checks every weight's length
 * against the config and every id, sequence, position, segment and slot; throws Error naming
 * what is wrong (the reference serves tests; a mismatch is a bug in the test).
 */
export function llamaForwardRef(
  cfg: ModelConfig,
  weights: WeightGetter,
  ids: ArrayLike<number>,
  opts: LlamaRefOptions = {},
): LlamaRefResult {
  const T = ids.length;
  const H = cfg.hiddenSize;
  const V = cfg.vocabSize;
  const I = cfg.intermediateSize;
  const D = cfg.headDim;
  const nH = cfg.numHeads;
  const nKv = cfg.numKvHeads;
  const eps = cfg.rmsNormEps;
  if (T < 1) fail('ids: expected at least one token');

  const shapes = new Map(expectedWeights(cfg).map((w) => [w.name, w.shape.reduce((a, b) => a * b, 1)]));
  const get = (name: string): ArrayLike<number> => {
    const n = shapes.get(name);
    if (n === undefined) fail(`weight '${name}' is not part of this config`);
    const w = weights(name);
    if (!w || w.length !== n) fail(`weight '${name}': expected ${n} values, got ${w?.length}`);
    return w;
  };

  const seq = opts.seq ?? new Array<number>(T).fill(0);
  if (seq.length !== T) fail(`seq: expected ${T} entries, got ${seq.length}`);
  const pos = opts.pos ?? defaultPositions(seq);
  if (pos.length !== T) fail(`pos: expected ${T} entries, got ${pos.length}`);
  if (cfg.slidingWindow !== null) {
    // Sliding-window attention is not modelled: accept only batches it cannot affect.
    for (let t = 0; t < T; t++)
      if (pos[t]! >= cfg.slidingWindow)
        fail(`pos[${t}] = ${pos[t]} reaches the sliding window (${cfg.slidingWindow}), which this reference does not model`);
  }

  const lora = opts.lora;
  if (lora !== undefined) {
    if (!Number.isInteger(lora.K) || lora.K < 1) fail(`lora.K: expected a positive integer, got ${lora.K}`);
    if (lora.slots.length !== T * lora.K) fail(`lora.slots: expected T·K = ${T * lora.K} entries, got ${lora.slots.length}`);
    if (lora.weights !== undefined && lora.weights.length !== T * lora.K)
      fail(`lora.weights: expected T·K = ${T * lora.K} entries, got ${lora.weights.length}`);
  }
  const trace = opts.trace ?? (() => {});

  /** y = x·Wᵀ (+ b) (+ LoRA) for the linear `m` of `layer`; x: [T, in] → [T, out]. */
  const linear = (layer: number, m: LinearModule, x: Float64Array): Float64Array => {
    const [out, inp] = linearShape(cfg, m);
    const W = get(linearWeightName(layer, m));
    const stack = lora?.stacks(layer, m);
    let y: Float64Array;
    if (lora !== undefined && stack) {
      const L = stack.ranks.length;
      const R = L > 0 ? stack.A.length / (L * inp) : 0;
      if (L < 1 || !Number.isInteger(R) || R < 1)
        fail(`lora stack of layer ${layer} ${m}: A has ${stack.A.length} values, not [L = ${L}, R, ${inp}]`);
      y = multiLoraLinearForwardRef(
        x,
        { ...stack, W, slots: lora.slots, ...(lora.weights ? { weights: lora.weights } : {}) },
        { T, K: lora.K, L, R, Hin: inp, Hout: out },
      ).y;
    } else {
      y = matmulRef(x, W, T, inp, out);
    }
    if (hasBias(cfg, m)) {
      const b = get(linearWeightName(layer, m, 'bias'));
      for (let t = 0; t < T; t++) for (let o = 0; o < out; o++) y[t * out + o] += b[o]!;
    }
    return y;
  };

  const invFreq = ropeInvFreqRef(D, cfg.ropeTheta, hfRopeScaling(cfg));
  const attnDims = { Tq: T, Tk: T, numHeads: nH, numKvHeads: nKv, headDim: D };
  const layout = { qSeq: seq, qPos: pos, ...(opts.segments ? { segments: opts.segments } : {}) };

  let x = embeddingRef(ids, get('model.embed_tokens.weight'), V, H);
  trace('embed', x);
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `layers.${i}.`;
    const a = rmsnormRef(x, get(`model.layers.${i}.input_layernorm.weight`), T, H, eps);
    trace(p + 'attn_norm', a);
    const q = linear(i, 'q_proj', a);
    const k = linear(i, 'k_proj', a);
    const v = linear(i, 'v_proj', a);
    trace(p + 'q', q);
    trace(p + 'k', k);
    trace(p + 'v', v);
    let qIn = q,
      kIn = k;
    if (hasQkNorm(cfg)) {
      // Every head's D values normed on their own: [T, heads·D] is [T·heads, D] row-major.
      qIn = rmsnormRef(q, get(qkNormWeightName(i, 'q_norm')), T * nH, D, eps);
      kIn = rmsnormRef(k, get(qkNormWeightName(i, 'k_norm')), T * nKv, D, eps);
      trace(p + 'q_normed', qIn);
      trace(p + 'k_normed', kIn);
    }
    const qr = ropeRef(qIn, pos, invFreq, T, nH, D);
    const kr = ropeRef(kIn, pos, invFreq, T, nKv, D);
    trace(p + 'q_rope', qr);
    trace(p + 'k_rope', kr);
    const attn = attentionRef(qr, kr, v, attnDims, layout).out;
    trace(p + 'attn', attn);
    const o = linear(i, 'o_proj', attn);
    trace(p + 'o', o);
    x = residualAddRef(x, o, T * H);
    trace(p + 'resid_mid', x);
    const mIn = rmsnormRef(x, get(`model.layers.${i}.post_attention_layernorm.weight`), T, H, eps);
    trace(p + 'mlp_norm', mIn);
    const gate = linear(i, 'gate_proj', mIn);
    const up = linear(i, 'up_proj', mIn);
    trace(p + 'gate', gate);
    trace(p + 'up', up);
    const act = swigluRef(gate, up, T, I);
    trace(p + 'act', act);
    const down = linear(i, 'down_proj', act);
    trace(p + 'down', down);
    x = residualAddRef(x, down, T * H);
    trace(p + 'out', x);
  }
  const n = rmsnormRef(x, get('model.norm.weight'), T, H, eps);
  trace('norm', n);
  const head = cfg.tieWordEmbeddings ? get('model.embed_tokens.weight') : get('lm_head.weight');
  const logits = matmulRef(n, head, T, H, V);
  trace('logits', logits);
  return { logits, hidden: x };
}

/** log-softmax of the forward's logits: [T, V]. */
export function llamaLogProbsRef(
  cfg: ModelConfig,
  weights: WeightGetter,
  ids: ArrayLike<number>,
  opts: LlamaRefOptions = {},
): Float64Array {
  return logSoftmaxRef(llamaForwardRef(cfg, weights, ids, opts).logits, ids.length, cfg.vocabSize);
}

/**
 * Masked mean next-token cross-entropy of the forward (xentRef): targets[t] is the token that
 * should follow token t (anything where mask[t] = 0).
 */
export function llamaLossRef(
  cfg: ModelConfig,
  weights: WeightGetter,
  ids: ArrayLike<number>,
  targets: ArrayLike<number>,
  mask: ArrayLike<number>,
  opts: LlamaRefOptions = {},
): { loss: number; losses: Float64Array; count: number; logits: Float64Array } {
  const { logits } = llamaForwardRef(cfg, weights, ids, opts);
  return { ...xentRef(logits, targets, mask, ids.length, cfg.vocabSize), logits };
}
