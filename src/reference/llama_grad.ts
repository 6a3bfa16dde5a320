// Float64 reference backward of the LLaMA-family decoder (src/reference/llama.ts): the
// gradient of the masked mean next-token cross-entropy with respect to every weight of the
// model and every LoRA factor, composed from the per-op reference backwards of this folder.
// Written to be read, not to be fast; it is the oracle the device backward is checked against
// (and is itself checked against finite differences of llamaLossRef).
//
// The forward is llamaForwardRef itself, run once with its `trace` hook keeping every
// intermediate, so the backward sees exactly the values the loss was computed from (no
// second copy of the layer loop to drift). The backward walks the forward in reverse:
//
//   dlogits = xent′                                   d lm_head = dlogitsᵀ·norm
//   dnorm   = dlogits·lm_head                         d x_L     = rmsnorm′(dnorm)
//   for each layer i, last first (dx: gradient at the layer's output):
//     MLP:  down′ → swiglu′ → gate′ + up′ → rmsnorm′ (post_attention_layernorm), + dx (residual)
//     attn: o′ → attention′ → rope⁻¹ on dq, dk → (qwen3: rmsnorm′ per head, q_norm / k_norm)
//           → q′ + k′ + v′ → rmsnorm′ (input_layernorm), + dx
//   dE = scatter of dx over ids (+ d lm_head when the embedding is tied)
//
// A linear's backward, lin(x) = x·Wᵀ + b + Σ_k w·s·B·A·x:
//   dW = dyᵀ·x,  db = Σ_t dy[t],  dx = dy·W + Σ_k Aᵀ·dv  with dv = loraShrinkGrad(dy),
//   dA, dB from loraWeightGrad (the same split the device kernels use).

import {
  expectedWeights,
  hasQkNorm,
  linearShape,
  linearWeightName,
  qkNormWeightName,
  type LinearModule,
  type ModelConfig,
} from '../model/config.js';
import { defaultPositions, hfRopeScaling, llamaForwardRef, type LlamaRefOptions, type WeightGetter } from './llama.js';
import { embeddingBackwardRef } from './embedding.js';
import { rmsnormBackwardRef } from './rmsnorm.js';
import { ropeBackwardRef, ropeInvFreqRef } from './rope.js';
import { attentionBackwardRef } from './attention.js';
import { swigluBackwardRef } from './swiglu.js';
import { matmulGradInputRef, matmulGradWeightRef } from './matmul.js';
import { loraInputGradRef, loraShrinkGradRef, loraShrinkRef, loraWeightGradRef, type LoraDims, type LoraRefRouting } from './lora.js';
import { xentBackwardRef, xentRef } from './xent.js';

export interface LlamaGradRef {
  /** Masked mean cross-entropy, as llamaLossRef. */
  loss: number;
  /** Number of tokens with mask = 1. */
  count: number;
  /** [T, V] */
  logits: Float64Array;
  /**
   * d loss / d weight, by HF tensor name: every weight of expectedWeights(cfg), biases and
   * lm_head (when untied) included. Tied: the embedding's gradient holds both the input
   * (scatter) and the output (lm_head) contributions.
   */
  weights: Map<string, Float64Array>;
  /**
   * d loss / d LoRA factors for each (layer, module) that has a stack, keyed `${layer}.${module}`:
   * dA [L, R, Hin], dB [L, Hout, R] (0 past an adapter's rank and for adapters the batch does not use).
   */
  lora: Map<string, { dA: Float64Array; dB: Float64Array }>;
}

function fail(msg: string): never {
  throw new Error(`llama grad reference: ${msg}`);
}

/** Does the config give `m` a bias? (as in llama.ts and expectedWeights) */
function hasBias(cfg: ModelConfig, m: LinearModule): boolean {
  if (m === 'o_proj') return cfg.outputBias;
  if (m === 'gate_proj' || m === 'up_proj' || m === 'down_proj') return cfg.mlpBias;
  return cfg.attentionBias;
}

/** a += b, elementwise (gradients from two paths meet). */
function addInto(a: Float64Array, b: ArrayLike<number>): Float64Array {
  for (let i = 0; i < a.length; i++) a[i] += b[i]!;
  return a;
}

/**
 * Loss, logits and gradients of llamaLossRef(cfg, weights, ids, targets, mask, opts) with
 * respect to every model weight and every LoRA factor of opts.lora. Takes the same arguments
 * and checks them the same way (the forward is llamaForwardRef); opts.trace, if given, still
 * receives the forward's intermediates.
 */
export function llamaGradRef(
  cfg: ModelConfig,
  weights: WeightGetter,
  ids: ArrayLike<number>,
  targets: ArrayLike<number>,
  mask: ArrayLike<number>,
  opts: LlamaRefOptions = {},
): LlamaGradRef {
  const T = ids.length;
  const H = cfg.hiddenSize;
  const V = cfg.vocabSize;
  const I = cfg.intermediateSize;
  const D = cfg.headDim;
  const nH = cfg.numHeads;
  const nKv = cfg.numKvHeads;
  const eps = cfg.rmsNormEps;

  // Forward, keeping every named intermediate (llamaForwardRef validates all inputs).
  const saved = new Map<string, Float64Array>();
  const userTrace = opts.trace;
  const { logits, hidden } = llamaForwardRef(cfg, weights, ids, {
    ...opts,
    trace: (name, data) => {
      saved.set(name, data.slice()); // a copy: the forward owes us no immutability
      userTrace?.(name, data);
    },
  });
  const act = (name: string): Float64Array => saved.get(name) ?? fail(`the forward did not trace '${name}'`);
  const { loss, count } = xentRef(logits, targets, mask, T, V);

  const seq = opts.seq ?? new Array<number>(T).fill(0);
  const pos = opts.pos ?? defaultPositions(seq);
  const invFreq = ropeInvFreqRef(D, cfg.ropeTheta, hfRopeScaling(cfg));
  const attnDims = { Tq: T, Tk: T, numHeads: nH, numKvHeads: nKv, headDim: D };
  const layout = { qSeq: seq, qPos: pos, ...(opts.segments ? { segments: opts.segments } : {}) };

  const lora = opts.lora;
  const routing: LoraRefRouting | undefined = lora && { slots: lora.slots, ...(lora.weights ? { weights: lora.weights } : {}) };

  const grads = new Map<string, Float64Array>();
  const loraGrads = new Map<string, { dA: Float64Array; dB: Float64Array }>();

  /**
   * Backward of lin(layer, m) at input x given dy: records dW (and db, dA, dB) and returns dx.
   * x: [T, in], dy: [T, out] → dx: [T, in].
   */
  const linearBackward = (layer: number, m: LinearModule, x: Float64Array, dy: Float64Array): Float64Array => {
    const [out, inp] = linearShape(cfg, m);
    const W = weights(linearWeightName(layer, m));
    grads.set(linearWeightName(layer, m), matmulGradWeightRef(dy, x, T, inp, out));
    if (hasBias(cfg, m)) {
      const db = new Float64Array(out);
      for (let t = 0; t < T; t++) for (let o = 0; o < out; o++) db[o] += dy[t * out + o]!;
      grads.set(linearWeightName(layer, m, 'bias'), db);
    }
    let dx = matmulGradInputRef(dy, W, T, inp, out);
    const stack = lora?.stacks(layer, m);
    if (lora && routing && stack) {
      const L = stack.ranks.length;
      const d: LoraDims = { T, K: lora.K, L, R: stack.A.length / (L * inp), Hin: inp, Hout: out };
      const v = loraShrinkRef(x, stack, routing, d); // the forward's shrink output, recomputed
      const dv = loraShrinkGradRef(dy, stack, routing, d);
      dx = loraInputGradRef(dv, stack, routing, d, dx);
      loraGrads.set(`${layer}.${m}`, loraWeightGradRef(x, dy, v, dv, stack, routing, d));
    }
    return dx;
  };

  // Head: logits = norm · headᵀ.
  const dlogits = xentBackwardRef(logits, targets, mask, T, V);
  const norm = act('norm');
  const headName = cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
  const dHead = matmulGradWeightRef(dlogits, norm, T, H, V);
  const dNorm = matmulGradInputRef(dlogits, weights(headName), T, H, V);
  const fin = rmsnormBackwardRef(dNorm, hidden, weights('model.norm.weight'), T, H, eps);
  grads.set('model.norm.weight', fin.dw);
  let dx = fin.dx; // gradient at the current point of the residual stream

  for (let i = cfg.numLayers - 1; i >= 0; i--) {
    const p = `layers.${i}.`;
    const lnName = (which: string): string => `model.layers.${i}.${which}.weight`;

    // MLP block: out = resid_mid + down(swiglu(gate(n), up(n))), n = rmsnorm(resid_mid).
    const dAct = linearBackward(i, 'down_proj', act(p + 'act'), dx);
    const { dgate, dup } = swigluBackwardRef(dAct, act(p + 'gate'), act(p + 'up'), T, I);
    const mlpNorm = act(p + 'mlp_norm');
    const dMlpNorm = addInto(linearBackward(i, 'gate_proj', mlpNorm, dgate), linearBackward(i, 'up_proj', mlpNorm, dup));
    const mlpLn = rmsnormBackwardRef(dMlpNorm, act(p + 'resid_mid'), weights(lnName('post_attention_layernorm')), T, H, eps);
    grads.set(lnName('post_attention_layernorm'), mlpLn.dw);
    dx = addInto(mlpLn.dx, dx); // the residual passes dx through unchanged

    // Attention block: resid_mid = in + o(attention(rope(q(n)), rope(k(n)), v(n))), n = rmsnorm(in).
    const dAttn = linearBackward(i, 'o_proj', act(p + 'attn'), dx);
    const v = act(p + 'v');
    const g = attentionBackwardRef(dAttn, act(p + 'q_rope'), act(p + 'k_rope'), v, attnDims, layout);
    // Rope is a rotation: its backward rotates by the opposite angle.
    let dq = ropeBackwardRef(g.dq, pos, invFreq, T, nH, D);
    let dk = ropeBackwardRef(g.dk, pos, invFreq, T, nKv, D);
    if (hasQkNorm(cfg)) {
      const qn = rmsnormBackwardRef(dq, act(p + 'q'), weights(qkNormWeightName(i, 'q_norm')), T * nH, D, eps);
      const kn = rmsnormBackwardRef(dk, act(p + 'k'), weights(qkNormWeightName(i, 'k_norm')), T * nKv, D, eps);
      grads.set(qkNormWeightName(i, 'q_norm'), qn.dw);
      grads.set(qkNormWeightName(i, 'k_norm'), kn.dw);
      dq = qn.dx;
      dk = kn.dx;
    }
    const attnNorm = act(p + 'attn_norm');
    const dAttnNorm = linearBackward(i, 'q_proj', attnNorm, dq);
    addInto(dAttnNorm, linearBackward(i, 'k_proj', attnNorm, dk));
    addInto(dAttnNorm, linearBackward(i, 'v_proj', attnNorm, g.dv));
    const layerIn = i === 0 ? act('embed') : act(`layers.${i - 1}.out`);
    const attnLn = rmsnormBackwardRef(dAttnNorm, layerIn, weights(lnName('input_layernorm')), T, H, eps);
    grads.set(lnName('input_layernorm'), attnLn.dw);
    dx = addInto(attnLn.dx, dx);
  }

  // Embedding: scatter-add of dx over the ids; when tied it also carries the head's gradient.
  if (cfg.tieWordEmbeddings) {
    grads.set('model.embed_tokens.weight', embeddingBackwardRef(ids, dx, V, H, dHead));
  } else {
    grads.set('model.embed_tokens.weight', embeddingBackwardRef(ids, dx, V, H));
    grads.set('lm_head.weight', dHead);
  }

  // In expectedWeights order, and every weight present (a missing one is a bug here).
  const ordered = new Map<string, Float64Array>();
  for (const w of expectedWeights(cfg)) ordered.set(w.name, grads.get(w.name) ?? fail(`no gradient computed for '${w.name}'`));
  if (ordered.size !== grads.size)
    fail(`gradients computed for weights outside expectedWeights: ${[...grads.keys()].filter((k) => !ordered.has(k)).join(', ')}`);
  return { loss, count, logits, weights: ordered, lora: loraGrads };
}
