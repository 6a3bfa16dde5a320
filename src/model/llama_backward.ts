// The training pass of the LLaMA-family model: a forward that keeps what the backward needs,
// the masked next-token cross-entropy, and the backward into the LoRA / MoTE experts (and,
// for full-parameter training of small models, into every base weight). Reference:
// src/reference/llama_grad.ts (float64, checked against finite differences).
//
// The forward is LlamaModel.forward's decoder (runDecoder in src/model/llama.ts) with
// `saved`: the residual adds are out of place (rmsnormGrad needs each norm's input) and
// nothing is freed until the backward has used it. The backward walks the layers in reverse:
//   down ← swigluGrad ← gate, up ← rms₂ ← (residual) ← o ← attentionGrad ← ropeGrad ← (qwen3: rms_q, rms_k per head) ← q, k, v ← rms₁ ← (residual)
// Each linear's backward is its MultiLoraLinear's backwardTo: dx = dy·W (+ Σ_k Aᵀ·dv),
// dW = dyᵀ·x when the base is trained, db = dyᵀ·1 for a bias, and the expert gradients from
// loraWeightGrad using the shrink output v saved by the forward.
//
// Gradients are written into (or, with `accumulate`, added to) one f32 tensor per trained
// tensor, keyed by the trained tensor itself: a tied embedding gets the lm_head and the
// embedding contributions in one gradient.

import type { Tensor } from '../tensor.js';
import { ArgumentError, ShapeError, describe } from '../errors.js';
import { LINEAR_MODULES, qkNormWeightName, type LinearModule } from './config.js';
import { Scope, beginPass, passLayout, runDecoder, type LayerSaved, type LlamaBatch, type LlamaModel } from './llama.js';
import { matmul, matmulGradInput, matmulGradWeight } from '../ops/matmul.js';
import type { LoraStack } from '../ops/lora.js';
import type { LinearGradTargets } from '../ops/multi_lora_linear.js';
import { embeddingGrad } from '../ops/embedding.js';
import { rmsnormGrad } from '../ops/rmsnorm.js';
import { ropeGrad } from '../ops/rope.js';
import { attentionGrad } from '../ops/attention.js';
import { swigluGrad } from '../ops/swiglu.js';
import { add } from '../ops/residual.js';
import { xent, xentGrad } from '../ops/xent.js';
import { copyRows } from '../ops/copy_rows.js';

/** A training batch: packed sequences with a next-token target and a loss mask per token. */
export interface LlamaTrainBatch extends Omit<LlamaBatch, 'cache' | 'logitRows'> {
  /** [T] the token that should follow token t (read only where lossMask[t] = 1). */
  targets: ArrayLike<number>;
  /** [T] 1 where token t's prediction counts in the loss, else 0. */
  lossMask: ArrayLike<number>;
}

/** Gradient tensors (f32, the trained tensor's element count), keyed by the trained tensor. */
export interface LlamaGrads {
  /** Per adapter stack: dA [L, R, Hin] and dB [L, Hout, R]. */
  lora: Map<LoraStack, { dA: Tensor; dB: Tensor }>;
  /** Per base weight (only when the base is trained). */
  weights: Map<Tensor, Tensor>;
}

export interface LlamaGradOptions {
  /** Gradients of lossScale·Σ(masked token losses); default 1/count (the masked mean). */
  lossScale?: number;
  /** Write into these (allocated when missing); default: fresh tensors. */
  grads?: LlamaGrads;
  /** Add into `grads` instead of overwriting (gradient accumulation over micro-batches). */
  accumulate?: boolean;
  /** Also compute the gradients of every base weight (full-parameter training; f32 weights). Default false. */
  trainBase?: boolean;
  /** Compute the experts' gradients (default true when the batch has LoRA). */
  trainLora?: boolean;
}

export interface LlamaGradResult {
  /** Σ of the masked token losses (nats). */
  lossSum: number;
  /** Tokens with lossMask 1. */
  count: number;
  grads: LlamaGrads;
}

/** The distinct base weights of a model (a tied lm_head is the embedding). */
export function baseWeights(model: LlamaModel): Map<string, Tensor> {
  const w = model.weights;
  const out = new Map<string, Tensor>();
  out.set('model.embed_tokens.weight', w.embedTokens);
  w.layers.forEach((lw, l) => {
    out.set(`model.layers.${l}.input_layernorm.weight`, lw.inputNorm);
    out.set(`model.layers.${l}.post_attention_layernorm.weight`, lw.postAttentionNorm);
    for (const m of LINEAR_MODULES) {
      const group = m === 'gate_proj' || m === 'up_proj' || m === 'down_proj' ? 'mlp' : 'self_attn';
      out.set(`model.layers.${l}.${group}.${m}.weight`, lw.linear[m]);
      const b = lw.bias[m];
      if (b) out.set(`model.layers.${l}.${group}.${m}.bias`, b);
      if (m === 'o_proj' && lw.qNorm && lw.kNorm) {
        out.set(qkNormWeightName(l, 'q_norm'), lw.qNorm);
        out.set(qkNormWeightName(l, 'k_norm'), lw.kNorm);
      }
    }
  });
  out.set('model.norm.weight', w.norm);
  if (w.lmHead !== w.embedTokens) out.set('lm_head.weight', w.lmHead);
  return out;
}

/** Frees every gradient tensor. */
export function disposeGrads(g: LlamaGrads): void {
  for (const { dA, dB } of g.lora.values()) {
    dA.dispose();
    dB.dispose();
  }
  for (const t of g.weights.values()) t.dispose();
  g.lora.clear();
  g.weights.clear();
}

/**
 * Loss and gradients of one batch. All arguments are checked on the host before any kernel
 * runs. Frozen tensors are only read. Returns Σ loss over the masked tokens, their count and
 * the gradients (of lossScale·Σ loss).
 */
export async function llamaLossAndGrad(model: LlamaModel, batch: LlamaTrainBatch, opts: LlamaGradOptions = {}): Promise<LlamaGradResult> {
  const op = 'llamaLossAndGrad';
  if (!batch || typeof batch !== 'object')
    throw new ArgumentError(`${op}: batch: expected { ids, targets, lossMask, seq?, pos?, lora?, segments? }, got ${describe(batch)}`);
  if ((batch as LlamaBatch).cache !== undefined) throw new ArgumentError(`${op}: batch.cache: a training pass does not use a KV cache`);
  if ((batch as LlamaBatch).logitRows !== undefined) throw new ArgumentError(`${op}: batch.logitRows: a training pass computes every row`);
  const { ids, seq, pos, segments } = model.checkBatch(op, batch);
  const cfg = model.config;
  const be = model.backend;
  const T = ids.length;
  const V = cfg.vocabSize;
  // targets / mask: checked here (xent checks again; this names the batch fields)
  const tg = batch.targets,
    mk = batch.lossMask;
  if (!tg || tg.length !== T)
    throw new ShapeError(`${op}: batch.targets: expected ${T} entries (one per token), got ${tg ? tg.length : describe(tg)}`);
  if (!mk || mk.length !== T)
    throw new ShapeError(`${op}: batch.lossMask: expected ${T} entries (one per token), got ${mk ? mk.length : describe(mk)}`);
  const mask = new Float32Array(T);
  const targets = new Int32Array(T);
  let count = 0;
  for (let t = 0; t < T; t++) {
    const m = mk[t]!;
    if (m !== 0 && m !== 1) throw new ArgumentError(`${op}: batch.lossMask[${t}]: expected 0 or 1, got ${describe(m)}`);
    if (m === 1) {
      const y = tg[t]!;
      if (!Number.isInteger(y) || y < 0 || y >= V)
        throw new ArgumentError(`${op}: batch.targets[${t}]: expected a token id in [0, ${V - 1}], got ${describe(y)}`);
      targets[t] = y;
      mask[t] = 1;
      count++;
    }
  }
  const trainBase = opts.trainBase ?? false;
  if (typeof trainBase !== 'boolean') throw new ArgumentError(`${op}: trainBase: expected a boolean, got ${describe(trainBase)}`);
  const lora = batch.lora;
  const trainLora = opts.trainLora ?? lora !== undefined;
  if (typeof trainLora !== 'boolean') throw new ArgumentError(`${op}: trainLora: expected a boolean, got ${describe(trainLora)}`);
  if (trainLora && !lora) throw new ArgumentError(`${op}: trainLora: the batch has no lora to train`);
  if (!trainBase && !trainLora) throw new ArgumentError(`${op}: nothing to train: give the batch a lora, or set trainBase`);
  const acc = opts.accumulate ?? false;
  if (typeof acc !== 'boolean') throw new ArgumentError(`${op}: accumulate: expected a boolean, got ${describe(acc)}`);
  const grads: LlamaGrads = opts.grads ?? { lora: new Map(), weights: new Map() };
  if (!grads || !(grads.lora instanceof Map) || !(grads.weights instanceof Map))
    throw new ArgumentError(`${op}: grads: expected { lora: Map, weights: Map }, got ${describe(grads)}`);
  if (acc && !opts.grads) throw new ArgumentError(`${op}: accumulate: needs grads to add into`);
  const scale = opts.lossScale ?? (count > 0 ? 1 / count : 0);
  if (typeof scale !== 'number' || !Number.isFinite(scale))
    throw new ArgumentError(`${op}: lossScale: expected a finite number, got ${describe(scale)}`);
  if (trainBase) {
    for (const [name, t] of baseWeights(model)) {
      if (t.dtype !== 'f32')
        throw new ArgumentError(
          `${op}: trainBase: weight '${name}' is ${t.dtype}; full-parameter training needs f32 weights (load the model with dtype 'f32')`,
        );
    }
  }
  if (trainLora) {
    for (const mods of lora!.stacks)
      for (const s of Object.values(mods ?? {})) {
        if (s && (s.A.dtype !== 'f32' || s.B.dtype !== 'f32'))
          throw new ArgumentError(`${op}: lora: training needs f32 adapter factors, got A ${s.A.dtype} and B ${s.B.dtype}`);
      }
  }

  // Gradient targets: the first write of a pass overwrites unless accumulating.
  const written = new Set<Tensor>();
  const gradOf = (key: Tensor): { out: Tensor; accumulate: boolean } => {
    let g = grads.weights.get(key);
    if (!g) {
      if (acc) throw new ArgumentError(`${op}: grads: accumulate: no gradient tensor for a weight [${key.shape.join(', ')}]`);
      g = be.empty([...key.shape], 'f32');
      grads.weights.set(key, g);
    }
    const first = !written.has(key);
    written.add(key);
    return { out: g, accumulate: acc || !first };
  };
  const loraGradOf = (s: LoraStack): { dA: Tensor; dB: Tensor; accumulate: boolean } => {
    let g = grads.lora.get(s);
    if (!g) {
      if (acc) throw new ArgumentError(`${op}: grads: accumulate: no gradient tensors for an adapter stack`);
      g = { dA: be.empty([...s.A.shape], 'f32'), dB: be.empty([...s.B.shape], 'f32') };
      grads.lora.set(s, g);
    }
    const first = !written.has(s.A);
    written.add(s.A);
    return { ...g, accumulate: acc || !first };
  };

  const pool = new Scope();
  const layout = passLayout(be, seq, pos, segments);
  try {
    const { numHeads: nH, numKvHeads: nKv, headDim: D, rmsNormEps: eps } = cfg;
    const W = model.weights;

    // ---- forward (LlamaModel's decoder), keeping what the backward reads
    const saved: LayerSaved[] = [];
    const pass = beginPass(model, { ids, pos, layout, lora, cache: null, scope: pool, saved });
    const { posT, ones } = pass;
    const dec = runDecoder(model, pass);
    const x = dec.x!,
      nf = dec.hidden,
      rstdF = dec.rstd!;
    // Logits, loss and the lm_head backward only for the rows whose loss counts (prompt tokens
    // in SFT are most of a long prompt's rows): gathered into [count, H], scattered back after.
    // Each row's arithmetic is the same as over all T rows.
    const H = cfg.hiddenSize;
    const rows: number[] = [];
    for (let t = 0; t < T; t++) if (mask[t] === 1) rows.push(t);
    const all = rows.length === T;
    const M = rows.length;
    let lossSum = 0;
    let dnf: Tensor;
    if (M === 0) {
      dnf = pool.keep(be.zeros([T, H], 'f32'));
      if (trainBase) {
        const g = gradOf(W.lmHead); // nothing counts: lm_head's gradient is zero
        if (!g.accumulate) g.out.write(new Float32Array(g.out.size));
      }
    } else {
      const iota = Array.from({ length: M }, (_, i) => i);
      const nfM = all ? nf : pool.keep(be.empty([M, H], 'f32'));
      if (!all) copyRows(nfM, nf, iota, rows);
      const tgM = all ? targets : Int32Array.from(rows, (t) => targets[t]!);
      const maskM = all ? mask : new Float32Array(M).fill(1);
      const logits = pool.keep(matmul(nfM, W.lmHead));
      const xe = await xent(logits, tgM, maskM);
      pool.keep(xe.losses);
      pool.keep(xe.lse);
      lossSum = xe.loss * xe.count;
      const dlogits = pool.keep(xentGrad(logits, xe.lse, tgM, maskM, scale));
      pool.free(xe.losses, logits);
      // ---- backward
      const dnfM = pool.keep(matmulGradInput(dlogits, W.lmHead));
      if (trainBase) matmulGradWeight(dlogits, nfM, gradOf(W.lmHead));
      pool.free(dlogits, xe.lse);
      if (all) dnf = dnfM;
      else {
        dnf = pool.keep(be.zeros([T, H], 'f32'));
        copyRows(dnf, dnfM, rows, iota);
        pool.free(dnfM, nfM);
      }
    }
    const normGrad = (dy: Tensor, xin: Tensor, w: Tensor, rstd: Tensor): Tensor => {
      if (trainBase) {
        const t = gradOf(w);
        return rmsnormGrad(dy, xin, w, rstd, eps, { dw: t.out, accumulateDw: t.accumulate }).dx;
      }
      const r = rmsnormGrad(dy, xin, w, rstd, eps);
      r.dw.dispose();
      return r.dx;
    };
    let dx = pool.keep(normGrad(dnf, x, W.norm, rstdF));
    pool.free(dnf, nf, rstdF, x);

    /** Backward of one linear: adds dy's contribution to dIn (allocated when null). */
    const linearBack = (l: number, m: LinearModule, xin: Tensor, dy: Tensor, dIn: Tensor | null, lv: LayerSaved['lv']): Tensor => {
      const lw = W.layers[l]!;
      const dxm = dIn ?? pool.keep(be.empty([T, xin.shape[1]!], 'f32'));
      const targets: LinearGradTargets = { dx: { out: dxm, accumulate: dIn !== null } };
      if (trainBase) {
        targets.dW = gradOf(lw.linear[m]);
        const b = lw.bias[m];
        if (b) {
          const t = gradOf(b);
          targets.db = { out: t.out.reshape([b.shape[1]!, 1]), accumulate: t.accumulate };
        }
      }
      const stack = lora?.stacks[l]?.[m];
      if (stack && trainLora) targets.lora = loraGradOf(stack);
      model
        .linear(l, m, lora)
        .backwardTo(xin, lv[m] ?? null, dy, lora?.routing ?? null, targets, { strategy: lora?.strategy, ...(ones ? { ones } : {}) });
      return dxm;
    };

    for (let l = cfg.numLayers - 1; l >= 0; l--) {
      const sv = saved[l]!;
      const lw = W.layers[l]!;
      // MLP: x' = h + down(swiglu(gate(n2), up(n2)))
      const ds = linearBack(l, 'down_proj', sv.s, dx, null, sv.lv);
      const sg = swigluGrad(ds, sv.g, sv.u);
      pool.keep(sg.dgate);
      pool.keep(sg.dup);
      pool.free(ds, sv.s);
      const dn2 = linearBack(l, 'gate_proj', sv.n2, sg.dgate, null, sv.lv);
      linearBack(l, 'up_proj', sv.n2, sg.dup, dn2, sv.lv);
      pool.free(sg.dgate, sg.dup, sv.g, sv.u, sv.n2, sv.lv.gate_proj, sv.lv.up_proj, sv.lv.down_proj);
      const dhNorm = pool.keep(normGrad(dn2, sv.h, lw.postAttentionNorm, sv.rstd2));
      pool.free(dn2, sv.h, sv.rstd2);
      add(dx, dhNorm, { out: dx }); // dh = dx' + rms₂'s input gradient
      pool.free(dhNorm);
      const dh = dx;
      // attention: h = x + o(attn(rope(q), rope(k), v))
      const datt = linearBack(l, 'o_proj', sv.att.reshape([T, nH * D]), dh, null, sv.lv);
      const ag = attentionGrad(
        datt.reshape([T, nH, D]),
        sv.q.reshape([T, nH, D]),
        sv.k.reshape([T, nKv, D]),
        sv.v.reshape([T, nKv, D]),
        sv.att,
        sv.lse,
        layout,
      );
      pool.keep(ag.dq);
      pool.keep(ag.dk);
      pool.keep(ag.dv);
      pool.free(datt, sv.att, sv.lse, sv.q, sv.k, sv.v, sv.lv.o_proj);
      ropeGrad(ag.dq, posT, W.invFreq, { out: ag.dq });
      ropeGrad(ag.dk, posT, W.invFreq, { out: ag.dk });
      let dq = ag.dq.reshape([T, nH * D]),
        dk = ag.dk.reshape([T, nKv * D]);
      let dqk: Tensor[] = [];
      if (sv.qk) {
        // Qwen3: back through the per-head norms, on the [T·heads, D] views the forward used.
        const { qIn, qRstd, kIn, kRstd } = sv.qk;
        dqk = [
          pool.keep(normGrad(ag.dq.reshape([T * nH, D]), qIn.reshape([T * nH, D]), lw.qNorm!, qRstd)),
          pool.keep(normGrad(ag.dk.reshape([T * nKv, D]), kIn.reshape([T * nKv, D]), lw.kNorm!, kRstd)),
        ];
        dq = dqk[0]!.reshape([T, nH * D]);
        dk = dqk[1]!.reshape([T, nKv * D]);
      }
      const dn1 = linearBack(l, 'q_proj', sv.n1, dq, null, sv.lv);
      linearBack(l, 'k_proj', sv.n1, dk, dn1, sv.lv);
      linearBack(l, 'v_proj', sv.n1, ag.dv.reshape([T, nKv * D]), dn1, sv.lv);
      pool.free(ag.dq, ag.dk, ag.dv, sv.n1, sv.lv.q_proj, sv.lv.k_proj, sv.lv.v_proj);
      if (sv.qk) pool.free(...dqk, sv.qk.qIn, sv.qk.qRstd, sv.qk.kIn, sv.qk.kRstd);
      const dxNorm = pool.keep(normGrad(dn1, sv.xIn, lw.inputNorm, sv.rstd1));
      pool.free(dn1, sv.rstd1);
      add(dh, dxNorm, { out: dh });
      pool.free(dxNorm);
      if (l > 0) pool.free(sv.xIn);
      dx = dh;
    }
    if (trainBase) embeddingGrad(ids, dx, V, gradOf(W.embedTokens));
    return { lossSum, count, grads };
  } catch (e) {
    if (!opts.grads) disposeGrads(grads);
    throw e;
  } finally {
    pool.close();
    layout.dispose();
  }
}
