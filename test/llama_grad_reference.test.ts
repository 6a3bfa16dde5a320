// The float64 reference backward of the whole model (src/reference/llama_grad.ts) checked
// against central finite differences of llamaLossRef, in float64, on tiny models. Every
// parameter tensor (weights, biases, norms, embedding, lm_head, every LoRA A and B) is probed
// on a sample of entries: random ones, random ones where the gradient is nonzero, and the
// entry of largest |grad|. Then the mask: tokens with mask 0 contribute nothing, and the mean
// is taken over the masked-in tokens. Pure JS, no backend.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { llamaLossRef, type LlamaLoraRef, type LlamaRefOptions, type WeightGetter } from '../src/reference/llama.js';
import { llamaGradRef, type LlamaGradRef } from '../src/reference/llama_grad.js';
import { LINEAR_MODULES, linearShape, type LinearModule, type ModelConfig } from '../src/model/config.js';
import type { LoraRefStack } from '../src/reference/lora.js';
import type { SegmentMask } from '../src/reference/attention.js';
import { makeTinyModel, seededRng, type TinyModelOptions } from './fixtures/tiny_model.js';

const H_FD = 1e-5;
const TOL = 1e-6;

/** The model's weights as mutable copies, so finite differences can perturb them in place. */
function mutableWeights(o: TinyModelOptions): { cfg: ModelConfig; names: string[]; values: Map<string, Float64Array>; get: WeightGetter } {
  const m = makeTinyModel(o);
  const values = new Map(m.names.map((n) => [n, Float64Array.from(m.weights(n))]));
  return { cfg: m.cfg, names: m.names, values, get: (n) => values.get(n) ?? assert.fail(`no weight '${n}'`) };
}

/**
 * Random LoRA stacks of L adapters on the linears `on` picks, with mixed ranks (some below R, so
 * the entries past an adapter's rank are exercised) and random nonzero A and B.
 */
function randomStacks(
  cfg: ModelConfig,
  seed: number,
  L: number,
  R: number,
  on: (layer: number, m: LinearModule) => boolean,
): Map<string, LoraRefStack & { A: Float64Array; B: Float64Array }> {
  const r = seededRng(seed);
  const u = (n: number, std: number): Float64Array => Float64Array.from({ length: n }, () => (2 * r() - 1) * Math.sqrt(3) * std);
  const out = new Map<string, LoraRefStack & { A: Float64Array; B: Float64Array }>();
  for (let layer = 0; layer < cfg.numLayers; layer++)
    for (const m of LINEAR_MODULES) {
      if (!on(layer, m)) continue;
      const [hout, hin] = linearShape(cfg, m);
      const ranks = Array.from({ length: L }, (_, e) => 1 + ((e + layer) % R));
      const scales = ranks.map((rk) => 2 / rk); // alpha / r with alpha = 2
      out.set(`${layer}.${m}`, { A: u(L * R * hin, 1 / Math.sqrt(hin)), B: u(L * hout * R, 0.5 / Math.sqrt(R)), ranks, scales });
    }
  return out;
}

interface Case {
  cfg: ModelConfig;
  names: string[];
  values: Map<string, Float64Array>;
  get: WeightGetter;
  stacks: Map<string, LoraRefStack & { A: Float64Array; B: Float64Array }>;
  ids: number[];
  targets: number[];
  mask: number[];
  opts: LlamaRefOptions;
}

/** Entries to probe in a tensor of gradient g: 4 random, 4 random among the nonzero ones, and argmax |g|. */
function sample(g: Float64Array, seed: number): number[] {
  const r = seededRng(seed);
  const nonzero = [...g.keys()].filter((i) => g[i] !== 0);
  const pick = new Set<number>();
  for (let j = 0; j < 4; j++) pick.add(Math.floor(r() * g.length));
  for (let j = 0; j < 4 && nonzero.length > 0; j++) pick.add(nonzero[Math.floor(r() * nonzero.length)]!);
  let arg = 0;
  for (let i = 1; i < g.length; i++) if (Math.abs(g[i]!) > Math.abs(g[arg]!)) arg = i;
  pick.add(arg);
  return [...pick];
}

/**
 * Checks llamaGradRef against central differences of llamaLossRef on every tensor of the case.
 * An entry passes when |grad − fd| ≤ TOL·max(|fd|, 1e-2·max|grad of the tensor|): relative error,
 * with a floor for the entries whose gradient is far below the tensor's scale, where the finite
 * difference's own rounding error (≈ ε·loss/h ≈ 1e-10 absolute) would dominate.
 */
function checkAgainstFd(c: Case): { tensors: number; entries: number; worst: number } {
  const loss = (): number => llamaLossRef(c.cfg, c.get, c.ids, c.targets, c.mask, c.opts).loss;
  const g = llamaGradRef(c.cfg, c.get, c.ids, c.targets, c.mask, c.opts);
  const ref = llamaLossRef(c.cfg, c.get, c.ids, c.targets, c.mask, c.opts);
  assert.equal(g.loss, ref.loss, 'loss equals llamaLossRef');
  assert.equal(g.count, ref.count, 'count equals llamaLossRef');
  assert.deepEqual(g.logits, ref.logits, 'logits equal llamaLossRef');

  assert.deepEqual([...g.weights.keys()], c.names, 'a gradient for every weight of expectedWeights, in order');
  assert.deepEqual([...g.lora.keys()].sort(), [...c.stacks.keys()].sort(), 'a LoRA gradient for every stack');

  const probes: { name: string; param: Float64Array; grad: Float64Array }[] = [];
  for (const name of c.names) probes.push({ name, param: c.values.get(name)!, grad: g.weights.get(name)! });
  for (const [key, s] of c.stacks) {
    const lg = g.lora.get(key)!;
    assert.equal(lg.dA.length, s.A.length, `${key} dA length`);
    assert.equal(lg.dB.length, s.B.length, `${key} dB length`);
    probes.push({ name: `lora ${key} A`, param: s.A, grad: lg.dA }, { name: `lora ${key} B`, param: s.B, grad: lg.dB });
  }

  let entries = 0;
  let worst = 0;
  probes.forEach(({ name, param, grad }, n) => {
    assert.equal(grad.length, param.length, `${name}: gradient length`);
    const scale = grad.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    assert.ok(scale > 0, `${name}: gradient is all zeros (the check would be vacuous)`);
    for (const i of sample(grad, 1000 + n)) {
      const keep = param[i]!;
      param[i] = keep + H_FD;
      const up = loss();
      param[i] = keep - H_FD;
      const down = loss();
      param[i] = keep;
      const fd = (up - down) / (2 * H_FD);
      const err = Math.abs(grad[i]! - fd) / Math.max(Math.abs(fd), 1e-2 * scale);
      assert.ok(err <= TOL, `${name}[${i}]: grad ${grad[i]} vs finite difference ${fd} (relative error ${err} > ${TOL})`);
      worst = Math.max(worst, err);
      entries++;
    }
  });
  return { tensors: probes.length, entries, worst };
}

/** Every LoRA stack of `stacks` past an adapter's rank has exactly zero gradient (the forward never reads those entries). */
function checkPastRankZero(g: LlamaGradRef, c: Case): void {
  for (const [key, s] of c.stacks) {
    const m = key.split('.')[1] as LinearModule;
    const [hout, hin] = linearShape(c.cfg, m);
    const L = s.ranks.length;
    const R = s.A.length / (L * hin);
    const { dA, dB } = g.lora.get(key)!;
    for (let e = 0; e < L; e++)
      for (let r = s.ranks[e]!; r < R; r++) {
        for (let i = 0; i < hin; i++) assert.equal(dA[(e * R + r) * hin + i], 0, `${key} dA[${e},${r},${i}] past rank`);
        for (let o = 0; o < hout; o++) assert.equal(dB[(e * hout + o) * R + r], 0, `${key} dB[${e},${o},${r}] past rank`);
      }
  }
}

// ---------------------------------------------------------------------------------------
// Case 1 (MoTE training batch): llama, GQA (4 heads, 2 kv heads), untied, two packed
// sequences, step segments with a blocked (answer → analysis) pair, K = 2 LoRA with weights
// [α, 1−α] on a different subset of linears per layer, prompt tokens with slot −1.

function moteCase(): Case {
  const w = mutableWeights({
    family: 'llama',
    hidden: 16,
    intermediate: 24,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    vocab: 29,
    tied: false,
    dtype: 'f32',
    seed: 11,
  });
  const cfg = w.cfg;
  // Adapters: 0 analysis, 1 guidance, 2 answer, 3 shared. Segments: 0 prompt, 1..3 the steps.
  const SHARED = 3;
  const onLayer: LinearModule[][] = [
    ['q_proj', 'v_proj', 'o_proj', 'down_proj'],
    ['k_proj', 'gate_proj', 'up_proj'],
  ];
  const stacks = randomStacks(cfg, 5, 4, 3, (layer, m) => onLayer[layer]!.includes(m));
  // Sequence 0: prompt ×2, analysis ×2, guidance ×1, answer ×2; sequence 1: prompt ×2, analysis ×1, answer ×3.
  const seg = [0, 0, 1, 1, 2, 3, 3, 0, 0, 1, 3, 3, 3];
  const seq = [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1];
  const T = seg.length;
  const r = seededRng(77);
  const ids = Array.from({ length: T }, () => Math.floor(r() * cfg.vocabSize));
  // Next-token targets inside each sequence; the prompt and each sequence's last token are masked out.
  const mask = seg.map((s, t) => (s === 0 || t === T - 1 || seq[t + 1] !== seq[t] ? 0 : 1));
  const targets = mask.map((m, t) => (m ? ids[t + 1]! : -100));
  const alpha = 0.6;
  const slots: number[] = [];
  const weights: number[] = [];
  seg.forEach((s, t) => {
    // Prompt tokens: shared expert only (the step slot is −1); one of them gets no adapter at all.
    if (s === 0) {
      slots.push(-1, t === 7 ? -1 : SHARED);
      weights.push(0, 1);
    } else {
      slots.push(s - 1, SHARED);
      weights.push(alpha, 1 - alpha);
    }
  });
  const blocked = new Array<number>(2 * 4 * 4).fill(0);
  blocked[(0 * 4 + 3) * 4 + 1] = 1; // sequence 0: answer does not see analysis (step skipping)
  const segments: SegmentMask = { numSegments: 4, qSegment: seg, blocked };
  const lora: LlamaLoraRef = { stacks: (layer, m) => stacks.get(`${layer}.${m}`) ?? null, slots, weights, K: 2 };
  return { ...w, stacks, ids, targets, mask, opts: { seq, segments, lora } };
}

test('llama backward = finite differences: GQA, untied, K=2 weighted multi-LoRA (slot −1), segments with a blocked pair, two packed sequences', () => {
  const c = moteCase();
  const g = llamaGradRef(c.cfg, c.get, c.ids, c.targets, c.mask, c.opts);
  checkPastRankZero(g, c);
  const s = checkAgainstFd(c);
  // Every weight (2 layers × (2 norms + 7 linears) + embed + norm + lm_head) and 7 stacks × (A, B).
  assert.equal(s.tensors, 2 * 9 + 3 + 14);
  console.log(`# MoTE case: ${s.tensors} tensors, ${s.entries} entries, worst relative error ${s.worst.toExponential(2)}`);
});

// Case 2: qwen2 (q/k/v biases), tied embeddings (the embedding gets both gradients), MQA
// (one kv head), plain K = 1 multi-LoRA serving with default weights on every linear.
test('llama backward = finite differences: qwen2 biases, tied embeddings, MQA, K=1 LoRA on every linear', () => {
  const w = mutableWeights({
    family: 'qwen2',
    hidden: 12,
    intermediate: 20,
    layers: 2,
    heads: 3,
    kvHeads: 1,
    vocab: 23,
    tied: true,
    dtype: 'f32',
    seed: 3,
  });
  const stacks = randomStacks(w.cfg, 9, 3, 2, () => true);
  const T = 9;
  const r = seededRng(4);
  const ids = Array.from({ length: T }, () => Math.floor(r() * w.cfg.vocabSize));
  const mask = ids.map((_, t) => (t === 0 || t === T - 1 ? 0 : 1));
  const targets = mask.map((m, t) => (m ? ids[t + 1]! : 0));
  const slots = ids.map((_, t) => (t === 4 ? -1 : t % 3));
  const c: Case = { ...w, stacks, ids, targets, mask, opts: { lora: { stacks: (l, m) => stacks.get(`${l}.${m}`) ?? null, slots, K: 1 } } };
  assert.ok(
    c.names.includes('model.layers.0.self_attn.q_proj.bias') && !c.names.includes('lm_head.weight'),
    'qwen2 tied: q bias, no lm_head',
  );
  const s = checkAgainstFd(c);
  assert.equal(s.tensors, 2 * (9 + 3) + 2 + 2 * 7 * 2);
  console.log(`# qwen2 tied case: ${s.tensors} tensors, ${s.entries} entries, worst relative error ${s.worst.toExponential(2)}`);
});

// Case 2b: qwen3: per-head q/k RMSNorm before rope (gradients into q_norm / k_norm and through
// them into q_proj / k_proj and their LoRA), head_dim 8 with q width 24 ≠ hidden 12, GQA,
// untied, K = 2 weighted LoRA on the q and k projections, two packed sequences.
test('llama backward = finite differences: qwen3 q/k norms, head_dim ≠ hidden / heads, K=2 LoRA on q and k, packed', () => {
  const w = mutableWeights({
    family: 'qwen3',
    hidden: 12,
    intermediate: 20,
    layers: 2,
    heads: 3,
    kvHeads: 1,
    headDim: 8,
    vocab: 23,
    tied: false,
    dtype: 'f32',
    seed: 31,
  });
  assert.equal(linearShape(w.cfg, 'q_proj')[0], 24);
  const stacks = randomStacks(w.cfg, 32, 3, 2, (_l, m) => m === 'q_proj' || m === 'k_proj');
  const T = 10;
  const r = seededRng(33);
  const ids = Array.from({ length: T }, () => Math.floor(r() * w.cfg.vocabSize));
  const seq = ids.map((_, t) => (t < 6 ? 0 : 1));
  const mask = ids.map((_, t) => (t === 5 || t === T - 1 ? 0 : 1));
  const targets = mask.map((m, t) => (m ? ids[t + 1]! : 0));
  const slots = ids.flatMap((_, t) => [t % 3, (t + 1) % 3]);
  const weights = ids.flatMap((_, t) => [0.7, t % 2 ? 0.3 : 0]);
  const c: Case = {
    ...w,
    stacks,
    ids,
    targets,
    mask,
    opts: { seq, lora: { stacks: (l, m) => stacks.get(`${l}.${m}`) ?? null, slots, weights, K: 2 } },
  };
  assert.ok(
    c.names.includes('model.layers.1.self_attn.q_norm.weight') && c.names.includes('model.layers.1.self_attn.k_norm.weight'),
    'qwen3: q/k norm weights',
  );
  assert.ok(!c.names.includes('model.layers.0.self_attn.q_proj.bias'), 'qwen3: no attention biases');
  const s = checkAgainstFd(c);
  assert.equal(s.tensors, 2 * 11 + 3 + 2 * 2 * 2);
  console.log(`# qwen3 case: ${s.tensors} tensors, ${s.entries} entries, worst relative error ${s.worst.toExponential(2)}`);
});

// Case 3: llama3 rope scaling whose frequencies fall in all three bands (head dim 8, theta 100:
// wavelengths 6.3, 20, 63, 199 against 32/4 = 8 and 32/1 = 32: kept, smoothed, scaled, scaled),
// llama attention_bias (q, k, v, o) and mlp_bias, MHA, no LoRA, positions not starting at 0.
test('llama backward = finite differences: llama3 rope scaling, attention_bias and mlp_bias, no LoRA', () => {
  const w = mutableWeights({
    family: 'llama',
    hidden: 16,
    intermediate: 20,
    layers: 2,
    heads: 2,
    kvHeads: 2,
    vocab: 19,
    tied: false,
    dtype: 'f32',
    seed: 21,
    ropeTheta: 100,
    attentionBias: true,
    mlpBias: true,
    ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 32 },
  });
  const T = 8;
  const r = seededRng(8);
  const ids = Array.from({ length: T }, () => Math.floor(r() * w.cfg.vocabSize));
  const mask = ids.map((_, t) => (t === T - 1 ? 0 : 1));
  const targets = mask.map((m, t) => (m ? ids[t + 1]! : -1));
  const pos = ids.map((_, t) => 5 + 3 * t);
  const c: Case = { ...w, stacks: new Map(), ids, targets, mask, opts: { pos } };
  assert.ok(
    c.names.includes('model.layers.1.self_attn.o_proj.bias') && c.names.includes('model.layers.1.mlp.down_proj.bias'),
    'llama biases present',
  );
  const s = checkAgainstFd(c);
  assert.equal(s.tensors, 2 * (9 + 7) + 3);
  console.log(`# llama3 rope case: ${s.tensors} tensors, ${s.entries} entries, worst relative error ${s.worst.toExponential(2)}`);
});

// ---------------------------------------------------------------------------------------
// The mask.

/** Every gradient tensor of g (weights then LoRA), flattened into one array. */
function flat(g: LlamaGradRef): Float64Array {
  const parts = [...g.weights.values(), ...[...g.lora.keys()].sort().flatMap((k) => [g.lora.get(k)!.dA, g.lora.get(k)!.dB])];
  const out = new Float64Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function maxAbsDiff(a: Float64Array, b: Float64Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

test('llama backward: tokens with mask 0 contribute nothing; the loss is the mean over mask = 1 tokens', () => {
  const c = moteCase();
  const grad = (targets: number[], mask: number[]): LlamaGradRef => llamaGradRef(c.cfg, c.get, c.ids, targets, mask, c.opts);
  const base = grad(c.targets, c.mask);
  const gBase = flat(base);
  const scale = gBase.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
  assert.ok(scale > 0);

  // Whatever target a masked-out token has, nothing changes (bit for bit).
  const otherTargets = c.targets.map((y, t) => (c.mask[t] ? y : (t * 7) % c.cfg.vocabSize));
  const other = grad(otherTargets, c.mask);
  assert.equal(other.loss, base.loss);
  assert.deepEqual(flat(other), gBase, 'targets under mask 0 change no gradient');

  // Unmasking one of them does change the gradient (the previous check is not vacuous).
  const t0 = c.mask.indexOf(0);
  const unmasked = grad(
    otherTargets,
    c.mask.map((m, t) => (t === t0 ? 1 : m)),
  );
  assert.ok(maxAbsDiff(flat(unmasked), gBase) > 1e-3 * scale, 'a masked-in token moves the gradient');

  // Mean over the masked-in tokens: splitting the mask in two disjoint halves a, b,
  // n·g = n_a·g_a + n_b·g_b (and the same for the loss).
  const on = c.mask.flatMap((m, t) => (m ? [t] : []));
  const half = new Set(on.filter((_, j) => j % 2 === 0));
  const ga = grad(
    c.targets,
    c.mask.map((m, t) => (m && half.has(t) ? 1 : 0)),
  );
  const gb = grad(
    c.targets,
    c.mask.map((m, t) => (m && !half.has(t) ? 1 : 0)),
  );
  assert.equal(ga.count + gb.count, base.count);
  assert.ok(Math.abs(ga.count * ga.loss + gb.count * gb.loss - base.count * base.loss) < 1e-12 * base.count * base.loss);
  const fa = flat(ga);
  const fb = flat(gb);
  const combined = fa.map((x, i) => (ga.count * x + gb.count * fb[i]!) / base.count);
  assert.ok(maxAbsDiff(combined, gBase) <= 1e-12 * scale, 'gradient is the count-weighted mean of the halves');

  // No token masked in: loss 0 and every gradient exactly 0 (not NaN).
  const none = grad(
    c.targets,
    c.mask.map(() => 0),
  );
  assert.equal(none.loss, 0);
  assert.equal(none.count, 0);
  assert.ok(
    flat(none).every((x) => x === 0),
    'all-zero mask gives zero gradients',
  );
});
