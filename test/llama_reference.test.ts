// The float64 reference LLaMA-family forward (src/reference/llama.ts) checked on its own:
// against a naive forward written here from the HF modeling code (independent of the
// reference ops), and by identities that any correct forward satisfies (packing, GQA = MHA
// with copied kv heads, tied = untied with lm_head = embed, LoRA = merged weights, rope
// scaling = rescaled positions, step skipping = the skipped tokens removed). Then the tiny
// model fixture: writeTinyModel / writeTinyPeftAdapter round-trip through the readers.
// Pure JS, no backend.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { llamaForwardRef, llamaLossRef, llamaLogProbsRef, defaultPositions, type WeightGetter } from '../src/reference/llama.js';
import {
  LINEAR_MODULES,
  compareWeights,
  expectedWeights,
  linearShape,
  linearWeightName,
  parseHFConfig,
  type ModelConfig,
} from '../src/model/config.js';
import { openModelWeights, readSafetensors, type HostTensor } from '../src/io/safetensors.js';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, parsePeftConfig, peftExpectedWeights } from '../src/io/peft.js';
import { bf16BitsToF32, f16BitsToF32 } from '../src/dtype.js';
import {
  loraStacks,
  makeTinyModel,
  seededRng,
  writeTinyModel,
  writeTinyPeftAdapter,
  type TinyModelOptions,
} from './fixtures/tiny_model.js';

const BASE: TinyModelOptions = {
  family: 'llama',
  hidden: 32,
  intermediate: 40,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  vocab: 53,
  tied: false,
  dtype: 'f32',
  seed: 1,
};

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'lengths differ');
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num) / Math.sqrt(den);
}

function close(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string): void {
  const e = relErr(a, b);
  assert.ok(e <= tol, `${what}: relative error ${e} > ${tol}`);
}

function differ(a: ArrayLike<number>, b: ArrayLike<number>, min: number, what: string): void {
  const e = relErr(a, b);
  assert.ok(e >= min, `${what}: relative difference ${e} < ${min} (expected a visible change)`);
}

function randomIds(seed: number, T: number, V: number): number[] {
  const r = seededRng(seed);
  return Array.from({ length: T }, () => Math.floor(r() * V));
}

/** Rows `rows` of a [T, V] matrix. */
function pick(m: Float64Array, rows: number[], V: number): Float64Array {
  const out = new Float64Array(rows.length * V);
  rows.forEach((t, i) => out.set(m.subarray(t * V, (t + 1) * V), i * V));
  return out;
}

/** A getter that overrides some names. */
function withOverrides(w: WeightGetter, over: Map<string, ArrayLike<number>>): WeightGetter {
  return (name) => over.get(name) ?? w(name);
}

// ---------------------------------------------------------------------------------------
// An independent naive forward: one sequence at positions 0..T-1, default rope, written
// straight from transformers' LlamaDecoderLayer / Qwen2 / Mistral with arrays of rows.

function naiveForward(cfg: ModelConfig, W: WeightGetter, ids: number[]): number[][] {
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D, vocabSize: V } = cfg;
  const T = ids.length;
  const lin = (x: number[], name: string, out: number, inp: number, biasName: string | null): number[] => {
    const w = W(name);
    const b = biasName ? W(biasName) : null;
    const y: number[] = [];
    for (let o = 0; o < out; o++) {
      let s = b ? b[o]! : 0;
      for (let i = 0; i < inp; i++) s += w[o * inp + i]! * x[i]!;
      y.push(s);
    }
    return y;
  };
  const norm = (x: number[], w: ArrayLike<number>): number[] => {
    const ms = x.reduce((s, v) => s + v * v, 0) / x.length;
    const r = 1 / Math.sqrt(ms + cfg.rmsNormEps);
    return x.map((v, h) => w[h]! * (v * r));
  };
  const proj = (layer: number, m: (typeof LINEAR_MODULES)[number], x: number[]): number[] => {
    const [out, inp] = linearShape(cfg, m);
    const bias = m === 'o_proj' ? cfg.outputBias : ['gate_proj', 'up_proj', 'down_proj'].includes(m) ? cfg.mlpBias : cfg.attentionBias;
    return lin(x, linearWeightName(layer, m), out, inp, bias ? linearWeightName(layer, m, 'bias') : null);
  };
  // rotate_half rope: the pair (i, i + D/2) of each head turned by pos / theta^(2i/D).
  const rope = (x: number[], heads: number, p: number): number[] => {
    const y = x.slice();
    for (let h = 0; h < heads; h++)
      for (let i = 0; i < D / 2; i++) {
        const ang = p / Math.pow(cfg.ropeTheta, (2 * i) / D);
        const a = x[h * D + i]!;
        const b = x[h * D + i + D / 2]!;
        y[h * D + i] = a * Math.cos(ang) - b * Math.sin(ang);
        y[h * D + i + D / 2] = b * Math.cos(ang) + a * Math.sin(ang);
      }
    return y;
  };
  const E = W('model.embed_tokens.weight');
  let xs = ids.map((id) => Array.from({ length: H }, (_, h) => E[id * H + h]!));
  for (let l = 0; l < cfg.numLayers; l++) {
    const a = xs.map((x) => norm(x, W(`model.layers.${l}.input_layernorm.weight`)));
    // Qwen3Attention: q_norm / k_norm (RMSNorm over head_dim) on each head, then rope.
    const headNorm = (x: number[], heads: number, which: string): number[] =>
      cfg.family !== 'qwen3'
        ? x
        : Array.from({ length: heads }, (_, h) =>
            norm(x.slice(h * D, (h + 1) * D), W(`model.layers.${l}.self_attn.${which}.weight`)),
          ).flat();
    const q = a.map((x, t) => rope(headNorm(proj(l, 'q_proj', x), nH, 'q_norm'), nH, t));
    const k = a.map((x, t) => rope(headNorm(proj(l, 'k_proj', x), nKv, 'k_norm'), nKv, t));
    const v = a.map((x) => proj(l, 'v_proj', x));
    const attn = xs.map((_, t) => {
      const out = new Array<number>(nH * D).fill(0);
      for (let h = 0; h < nH; h++) {
        const g = Math.floor(h / (nH / nKv)); // repeat_kv
        const s: number[] = [];
        for (let j = 0; j <= t; j++) {
          let d = 0;
          for (let c = 0; c < D; c++) d += q[t]![h * D + c]! * k[j]![g * D + c]!;
          s.push(d / Math.sqrt(D));
        }
        const mx = Math.max(...s);
        const e = s.map((z) => Math.exp(z - mx));
        const Z = e.reduce((p, z) => p + z, 0);
        for (let j = 0; j <= t; j++) for (let c = 0; c < D; c++) out[h * D + c] += (e[j]! / Z) * v[j]![g * D + c]!;
      }
      return out;
    });
    xs = xs.map((x, t) => {
      const o = proj(l, 'o_proj', attn[t]!);
      return x.map((z, h) => z + o[h]!);
    });
    xs = xs.map((x) => {
      const m = norm(x, W(`model.layers.${l}.post_attention_layernorm.weight`));
      const g = proj(l, 'gate_proj', m);
      const u = proj(l, 'up_proj', m);
      const act = g.map((z, i) => (z / (1 + Math.exp(-z))) * u[i]!);
      const d = proj(l, 'down_proj', act);
      return x.map((z, h) => z + d[h]!);
    });
  }
  const head = cfg.tieWordEmbeddings ? E : W('lm_head.weight');
  return xs.map((x) => {
    const n = norm(x, W('model.norm.weight'));
    return Array.from({ length: V }, (_, v) => n.reduce((s, z, h) => s + head[v * H + h]! * z, 0));
  });
}

test('reference forward equals an independent naive forward (llama GQA, qwen2 biases, mistral, qwen3 q/k norms, tied, 1 and 2 layers)', () => {
  const cases: TinyModelOptions[] = [
    { ...BASE, layers: 1 },
    { ...BASE },
    { ...BASE, family: 'qwen2', tied: true, seed: 2 },
    { ...BASE, family: 'mistral', kvHeads: 1, seed: 3, dtype: 'bf16' },
    { ...BASE, attentionBias: true, mlpBias: true, seed: 4, heads: 2, kvHeads: 2, headDim: 12, dtype: 'f16' },
    { ...BASE, family: 'qwen3', headDim: 16, seed: 5, dtype: 'bf16' },
    { ...BASE, family: 'qwen3', tied: true, kvHeads: 1, seed: 6 },
  ];
  for (const o of cases) {
    const m = makeTinyModel(o);
    const ids = randomIds(o.seed, 11, o.vocab);
    const ref = llamaForwardRef(m.cfg, m.weights, ids).logits;
    const naive = Float64Array.from(naiveForward(m.cfg, m.weights, ids).flat());
    close(ref, naive, 1e-12, `${o.family} layers=${o.layers} heads=${o.heads}/${o.kvHeads}`);
    // Logits are O(1): the fixture's scales are sane.
    const maxAbs = ref.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
    assert.ok(maxAbs > 0.3 && maxAbs < 30, `max |logit| = ${maxAbs}`);
  }
});

test('packing sequences (contiguous and interleaved) equals running each alone, with per-sequence LoRA routing', () => {
  const m = makeTinyModel({ ...BASE, family: 'qwen2' });
  const V = m.cfg.vocabSize;
  const a = randomIds(10, 5, V);
  const b = randomIds(11, 7, V);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-llama-'));
  try {
    const ad = [0, 1].map((i) => writeTinyPeftAdapter(path.join(dir, `a${i}`), m.cfg, { r: 3 + i, alpha: 8, seed: 20 + i }));
    const stacks = loraStacks(m.cfg, ad);
    for (const withLora of [false, true]) {
      const lora = (slotOf: number[]) => (withLora ? { lora: { stacks, K: 1, slots: slotOf, weights: slotOf.map(() => 1) } } : {});
      const la = llamaForwardRef(m.cfg, m.weights, a, lora(a.map(() => 0))).logits;
      const lb = llamaForwardRef(m.cfg, m.weights, b, lora(b.map(() => 1))).logits;
      // Contiguous: [a; b].
      const seq = [...a.map(() => 0), ...b.map(() => 1)];
      const packed = llamaForwardRef(m.cfg, m.weights, [...a, ...b], { seq, ...lora(seq) }).logits;
      close(packed.subarray(0, a.length * V), la, 1e-13, 'packed a');
      close(packed.subarray(a.length * V), lb, 1e-13, 'packed b');
      // Interleaved and shuffled rows, positions given explicitly.
      const rows = [...a.map((_, i) => [1, i]), ...b.map((_, i) => [3, i])];
      const r = seededRng(5);
      for (let i = rows.length - 1; i > 0; i--) {
        const j = Math.floor(r() * (i + 1));
        [rows[i], rows[j]] = [rows[j]!, rows[i]!];
      }
      const ids = rows.map(([s, i]) => (s === 1 ? a[i!]! : b[i!]!));
      const seqI = rows.map(([s]) => s!);
      const pos = rows.map(([, i]) => i!);
      const mixed = llamaForwardRef(m.cfg, m.weights, ids, { seq: seqI, pos, ...lora(seqI.map((s) => (s === 1 ? 0 : 1))) }).logits;
      rows.forEach(([s, i], t) => {
        const alone = s === 1 ? la : lb;
        close(mixed.subarray(t * V, (t + 1) * V), alone.subarray(i! * V, (i! + 1) * V), 1e-13, `interleaved row ${t}`);
      });
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(defaultPositions([0, 1, 0, 2, 1, 0]), [0, 0, 1, 0, 1, 2]);
});

test('GQA equals MHA with the kv heads copied', () => {
  for (const family of ['llama', 'qwen2'] as const) {
    const m = makeTinyModel({ ...BASE, family, heads: 4, kvHeads: 2, seed: 7 });
    const cfg = m.cfg;
    const D = cfg.headDim;
    const H = cfg.hiddenSize;
    const group = cfg.numHeads / cfg.numKvHeads;
    const mha: ModelConfig = { ...cfg, numKvHeads: cfg.numHeads };
    const over = new Map<string, Float64Array>();
    for (let l = 0; l < cfg.numLayers; l++)
      for (const mod of ['k_proj', 'v_proj'] as const) {
        const w = m.weights(linearWeightName(l, mod));
        const wm = new Float64Array(cfg.numHeads * D * H);
        for (let h = 0; h < cfg.numHeads; h++)
          wm.set(w.subarray(Math.floor(h / group) * D * H, (Math.floor(h / group) + 1) * D * H), h * D * H);
        over.set(linearWeightName(l, mod), wm);
        if (cfg.attentionBias) {
          const b = m.weights(linearWeightName(l, mod, 'bias'));
          const bm = new Float64Array(cfg.numHeads * D);
          for (let h = 0; h < cfg.numHeads; h++) bm.set(b.subarray(Math.floor(h / group) * D, (Math.floor(h / group) + 1) * D), h * D);
          over.set(linearWeightName(l, mod, 'bias'), bm);
        }
      }
    const ids = randomIds(8, 9, cfg.vocabSize);
    close(
      llamaForwardRef(mha, withOverrides(m.weights, over), ids).logits,
      llamaForwardRef(cfg, m.weights, ids).logits,
      1e-13,
      `${family} GQA vs MHA`,
    );
  }
});

test('tied embeddings equal untied with lm_head = embed_tokens; an untied head differs', () => {
  const tied = makeTinyModel({ ...BASE, tied: true, seed: 9 });
  const untiedCfg: ModelConfig = { ...tied.cfg, tieWordEmbeddings: false };
  const ids = randomIds(12, 8, BASE.vocab);
  const lt = llamaForwardRef(tied.cfg, tied.weights, ids).logits;
  const lu = llamaForwardRef(
    untiedCfg,
    withOverrides(tied.weights, new Map([['lm_head.weight', tied.weights('model.embed_tokens.weight')]])),
    ids,
  ).logits;
  assert.deepEqual(lu, lt);
  const untied = makeTinyModel({ ...BASE, tied: false, seed: 9 });
  differ(llamaForwardRef(untied.cfg, untied.weights, ids).logits, lt, 1e-2, 'random lm_head');
  // The tied model has no lm_head.weight; the reference must not ask for one.
  assert.throws(() => tied.weights('lm_head.weight'));
});

test('qwen2 q/k/v biases change the output; zero biases equal the bias-free llama forward', () => {
  const m = makeTinyModel({ ...BASE, family: 'qwen2', seed: 13 });
  assert.equal(m.cfg.attentionBias, true);
  const ids = randomIds(14, 10, BASE.vocab);
  const over = new Map<string, Float64Array>();
  for (let l = 0; l < m.cfg.numLayers; l++)
    for (const mod of ['q_proj', 'k_proj', 'v_proj'] as const)
      over.set(linearWeightName(l, mod, 'bias'), new Float64Array(linearShape(m.cfg, mod)[0]));
  const noBias = withOverrides(m.weights, over);
  const llamaCfg: ModelConfig = { ...m.cfg, family: 'llama', attentionBias: false };
  const l0 = llamaForwardRef(m.cfg, noBias, ids).logits;
  close(l0, llamaForwardRef(llamaCfg, m.weights, ids).logits, 1e-14, 'zero biases vs no biases');
  differ(llamaForwardRef(m.cfg, m.weights, ids).logits, l0, 1e-2, 'biases');
  // Only the k bias of one layer: q·(k + b) changes by q·b per query, which softmax ignores;
  // with rope, b is rotated by the key's position, so it does change the output.
  const kOnly = new Map(over);
  kOnly.delete(linearWeightName(0, 'k_proj', 'bias'));
  differ(llamaForwardRef(m.cfg, withOverrides(m.weights, kOnly), ids).logits, l0, 1e-4, 'k bias of layer 0');
});

test('LoRA: B = 0 and empty slots equal no LoRA; uniform routing equals the merged weights', () => {
  const m = makeTinyModel({ ...BASE, seed: 15 });
  const cfg = m.cfg;
  const T = 9;
  const ids = randomIds(16, T, cfg.vocabSize);
  const plain = llamaForwardRef(cfg, m.weights, ids).logits;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-llama-'));
  try {
    const zero = [0, 1].map((i) => writeTinyPeftAdapter(path.join(dir, `z${i}`), cfg, { r: 4, alpha: 16, seed: 30 + i, zeroB: true }));
    const slots = Array.from({ length: T }, (_, t) => [t % 2, 1 - (t % 2)]).flat();
    const weights = slots.map((_, i) => (i % 2 === 0 ? 0.5 : 0.5));
    const zl = llamaForwardRef(cfg, m.weights, ids, { lora: { stacks: loraStacks(cfg, zero), K: 2, slots, weights } }).logits;
    close(zl, plain, 1e-15, 'B = 0');

    // Two adapters with different ranks, alphas and targets (the second covers only attention).
    const ad = [
      writeTinyPeftAdapter(path.join(dir, 'a0'), cfg, { r: 4, alpha: 8, seed: 40 }),
      writeTinyPeftAdapter(path.join(dir, 'a1'), cfg, {
        r: 2,
        alpha: 6,
        seed: 41,
        targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'],
        useRslora: true,
      }),
    ];
    const stacks = loraStacks(cfg, ad);
    const none = llamaForwardRef(cfg, m.weights, ids, { lora: { stacks, K: 2, slots: slots.map(() => -1), weights } }).logits;
    close(none, plain, 1e-15, 'slots −1');

    // Every token: α·E0 + (1−α)·E1 (MoTE's step + shared) == W' = W + α·s0·B0A0 + (1−α)·s1·B1A1.
    const alpha = 0.3;
    const uni = llamaForwardRef(cfg, m.weights, ids, {
      lora: {
        stacks,
        K: 2,
        slots: Array.from({ length: T }, () => [0, 1]).flat(),
        weights: Array.from({ length: T }, () => [alpha, 1 - alpha]).flat(),
      },
    }).logits;
    const merged = new Map<string, Float64Array>();
    for (let l = 0; l < cfg.numLayers; l++)
      for (const mod of LINEAR_MODULES) {
        const [out, inp] = linearShape(cfg, mod);
        const W = Float64Array.from(m.weights(linearWeightName(l, mod)));
        ad.forEach((a, e) => {
          const f = a.module(l, mod);
          if (!f) return;
          const c = (e === 0 ? alpha : 1 - alpha) * f.scale;
          for (let o = 0; o < out; o++)
            for (let i = 0; i < inp; i++) {
              let s = 0;
              for (let r = 0; r < f.rank; r++) s += f.B[o * f.rank + r]! * f.A[r * inp + i]!;
              W[o * inp + i] += c * s;
            }
        });
        merged.set(linearWeightName(l, mod), W);
      }
    const mergedLogits = llamaForwardRef(cfg, withOverrides(m.weights, merged), ids).logits;
    close(uni, mergedLogits, 1e-12, 'LoRA vs merged');
    differ(uni, plain, 1e-2, 'LoRA changes the output');
    // Per-token routing differs from uniform routing.
    differ(
      llamaForwardRef(cfg, m.weights, ids, { lora: { stacks, K: 2, slots, weights: slots.map(() => 0.5) } }).logits,
      uni,
      1e-3,
      'routing',
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('step skipping: a blocked segment is as if its tokens were absent (positions kept); nothing blocked = no mask', () => {
  const m = makeTinyModel({ ...BASE, family: 'mistral', seed: 17 });
  const V = m.cfg.vocabSize;
  // Two packed sequences, segments 0 (prompt), 1, 2. Sequence 0 blocks 2 -> 1; sequence 1 blocks nothing.
  const s0 = randomIds(18, 10, V);
  const s1 = randomIds(19, 6, V);
  const seg0 = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2];
  const seg1 = [0, 0, 1, 1, 2, 2];
  const ids = [...s0, ...s1];
  const seq = [...s0.map(() => 0), ...s1.map(() => 1)];
  const qSegment = [...seg0, ...seg1];
  const S = 3;
  const blocked = new Uint8Array(2 * S * S);
  const free = llamaForwardRef(m.cfg, m.weights, ids, { seq }).logits;
  close(llamaForwardRef(m.cfg, m.weights, ids, { seq, segments: { numSegments: S, qSegment, blocked } }).logits, free, 0, 'empty mask');
  blocked[(0 * S + 2) * S + 1] = 1;
  const masked = llamaForwardRef(m.cfg, m.weights, ids, { seq, segments: { numSegments: S, qSegment, blocked } }).logits;
  // Sequence 0 without its segment-1 tokens, at their original positions.
  const keep = seg0.map((s, t) => (s === 1 ? -1 : t)).filter((t) => t >= 0);
  const without = llamaForwardRef(
    m.cfg,
    m.weights,
    keep.map((t) => s0[t]!),
    { pos: keep },
  ).logits;
  close(pick(masked, keep, V), without, 1e-13, 'blocked segment = removed tokens');
  // Segment 1 rows of sequence 0 and all of sequence 1 are untouched.
  close(pick(masked, [3, 4, 5], V), pick(free, [3, 4, 5], V), 0, 'segment 1 unchanged');
  close(masked.subarray(10 * V), free.subarray(10 * V), 0, 'other sequence unchanged');
  differ(pick(masked, [6, 7, 8, 9], V), pick(free, [6, 7, 8, 9], V), 1e-3, 'segment 2 changed');
});

test('rope scaling: linear(f) = positions·f (f = 3); llama3 scaling all-low = linear, all-high = none', () => {
  const o: TinyModelOptions = { ...BASE, seed: 21 };
  const m = makeTinyModel(o);
  const ids = randomIds(22, 8, BASE.vocab);
  const pos = ids.map((_, t) => t);
  const plain = llamaForwardRef(m.cfg, m.weights, ids).logits;
  const lin = makeTinyModel({ ...o, ropeScaling: { type: 'linear', factor: 3 } });
  assert.deepEqual(lin.cfg.ropeScaling, { type: 'linear', factor: 3 });
  close(llamaForwardRef(lin.cfg, lin.weights, ids, { pos: pos.map((p) => p * 3) }).logits, plain, 1e-12, 'linear scaling');
  differ(llamaForwardRef(lin.cfg, lin.weights, ids).logits, plain, 1e-4, 'linear scaling matters');
  // original_max_position_embeddings 4 with low 1: every wavelength (≥ 2π) exceeds 4 → all scaled by factor.
  const low = makeTinyModel({
    ...o,
    ropeScaling: { type: 'llama3', factor: 3, lowFreqFactor: 1, highFreqFactor: 2, originalMaxPositionEmbeddings: 4 },
  });
  close(llamaForwardRef(low.cfg, low.weights, ids, { pos: pos.map((p) => p * 3) }).logits, plain, 1e-12, 'llama3 all low');
  // A huge original length (2^30, the most config.json may say): every wavelength is below original / high → nothing scaled.
  const high = makeTinyModel({
    ...o,
    ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 2 ** 30 },
  });
  close(llamaForwardRef(high.cfg, high.weights, ids).logits, plain, 1e-14, 'llama3 all high');
  // The usual Llama 3.1 numbers with a small theta put the frequencies in all three bands: different from both.
  const mid = makeTinyModel({
    ...o,
    ropeTheta: 10000,
    ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
  });
  const midPlain = makeTinyModel({ ...o, ropeTheta: 10000 });
  differ(
    llamaForwardRef(mid.cfg, mid.weights, ids).logits,
    llamaForwardRef(midPlain.cfg, midPlain.weights, ids).logits,
    1e-5,
    'llama3 mid',
  );
});

test('loss and log-probs helpers; argument checks', () => {
  const m = makeTinyModel({ ...BASE, seed: 23 });
  const ids = randomIds(24, 6, BASE.vocab);
  const lp = llamaLogProbsRef(m.cfg, m.weights, ids);
  const targets = [...ids.slice(1), -100];
  const mask = [1, 1, 1, 1, 1, 0];
  const { loss, count } = llamaLossRef(m.cfg, m.weights, ids, targets, mask);
  let want = 0;
  for (let t = 0; t < 5; t++) want -= lp[t * BASE.vocab + targets[t]!]!;
  assert.equal(count, 5);
  assert.ok(Math.abs(loss - want / 5) < 1e-12);
  // A near-uniform predictor over 53 tokens has loss ≈ log 53; random weights stay near it.
  assert.ok(loss > 1 && loss < 3 * Math.log(BASE.vocab), `loss ${loss}`);
  assert.throws(
    () => llamaForwardRef(m.cfg, (n) => (n.endsWith('q_proj.weight') ? new Float64Array(3) : m.weights(n)), ids),
    /q_proj.weight': expected 1024 values, got 3/,
  );
  assert.throws(() => llamaForwardRef(m.cfg, m.weights, [0, BASE.vocab]), /ids\[1\]/);
  assert.throws(() => llamaForwardRef(m.cfg, m.weights, ids, { seq: [0, 0] }), /seq: expected 6/);
  assert.throws(() => llamaForwardRef(m.cfg, m.weights, ids, { lora: { stacks: () => null, K: 2, slots: [0] } }), /lora.slots/);
  const sw = makeTinyModel({ ...BASE, family: 'mistral', slidingWindow: 4 });
  assert.equal(sw.cfg.slidingWindow, 4);
  llamaForwardRef(sw.cfg, sw.weights, ids.slice(0, 4));
  assert.throws(() => llamaForwardRef(sw.cfg, sw.weights, ids), /sliding window/);
});

// ---------------------------------------------------------------------------------------
// Fixture round trips

function toF64(t: HostTensor): Float64Array {
  if (t.dtype === 'f16') return Float64Array.from(t.data, (b) => f16BitsToF32(b));
  if (t.dtype === 'bf16') return Float64Array.from(t.data, (b) => bf16BitsToF32(b));
  return Float64Array.from(t.data);
}

test('writeTinyModel round-trips through parseHFConfig, readSafetensors and openModelWeights (f32, f16, bf16; single and sharded)', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-tiny-'));
  try {
    const fams = ['llama', 'qwen2', 'mistral', 'qwen3'] as const;
    let k = 0;
    for (const dtype of ['f32', 'f16', 'bf16'] as const)
      for (const shards of [undefined, 3]) {
        const family = fams[k % fams.length]!;
        const o: TinyModelOptions = {
          ...BASE,
          family,
          dtype,
          seed: 100 + k,
          tied: k % 2 === 0,
          ...(shards ? { shards } : {}),
          ...(family === 'llama'
            ? { ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 } }
            : {}),
        };
        k++;
        const dir = path.join(root, `${dtype}-${shards ?? 1}`);
        const m = writeTinyModel(dir, o);
        const what = `${family} ${dtype} shards=${shards ?? 1}`;
        const cfg = parseHFConfig(fs.readFileSync(path.join(dir, 'config.json'), 'utf-8'));
        assert.deepEqual(cfg, m.cfg, what);
        assert.equal(cfg.family, family);
        assert.equal(cfg.torchDtype, dtype);
        assert.deepEqual([...fs.readdirSync(dir)].sort(), [...m.files].sort(), `${what}: files`);
        if (shards) {
          assert.ok(m.files.includes('model.safetensors.index.json'), `${what}: index`);
          assert.equal(m.files.filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)).length, shards, `${what}: shard count`);
        } else {
          const all = readSafetensors(path.join(dir, 'model.safetensors'));
          assert.equal(all.tensors.size, m.names.length);
          for (const name of m.names) assert.deepEqual(toF64(all.tensors.get(name)!), m.weights(name), `${what}: ${name}`);
        }
        const mw = openModelWeights(dir);
        try {
          const report = compareWeights(
            expectedWeights(cfg),
            mw.names().map((n) => [n, mw.entry(n).shape] as [string, number[]]),
          );
          assert.deepEqual(report, { missing: [], extra: [], wrongShape: [] }, what);
          for (const name of m.names) {
            const t = mw.get(name);
            assert.equal(t.dtype, dtype, `${what}: ${name} dtype`);
            assert.deepEqual(toF64(t), m.weights(name), `${what}: ${name}`);
          }
          // The reference on weights read back equals the reference on the getter.
          if (k === 1 || k === 6) {
            const ids = randomIds(k, 5, cfg.vocabSize);
            assert.deepEqual(llamaForwardRef(cfg, (n) => toF64(mw.get(n)), ids).logits, llamaForwardRef(m.cfg, m.weights, ids).logits);
          }
        } finally {
          mw.close();
        }
      }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test('writeTinyPeftAdapter writes PEFT keys and config that read back', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-peft-'));
  try {
    const m = makeTinyModel({ ...BASE, seed: 200 });
    for (const [i, opts] of [
      { r: 4, alpha: 8, seed: 1 },
      { r: 2, alpha: 4, seed: 2, targetModules: ['q_proj', 'v_proj'], dtype: 'bf16' as const },
      { r: 8, alpha: 16, seed: 3, rankPattern: { down_proj: 3 }, layersToTransform: [1], dtype: 'f16' as const },
    ].entries()) {
      const dir = path.join(root, `a${i}`);
      const ad = writeTinyPeftAdapter(dir, m.cfg, opts);
      const cfg = parsePeftConfig(fs.readFileSync(path.join(dir, ADAPTER_CONFIG_FILE), 'utf-8'));
      assert.deepEqual(cfg, ad.config);
      const specs = peftExpectedWeights(m.cfg, cfg);
      assert.deepEqual(
        ad.names,
        specs.map((s) => s.name),
      );
      const st = readSafetensors(path.join(dir, ADAPTER_WEIGHTS_FILE));
      assert.deepEqual([...st.tensors.keys()].sort(), specs.map((s) => s.name).sort());
      for (const s of specs) {
        const t = st.tensors.get(s.name)!;
        assert.deepEqual(t.shape, s.shape);
        assert.equal(t.dtype, opts.dtype ?? 'f32');
        assert.deepEqual(toF64(t), ad.weights(s.name));
        assert.match(s.name, /^base_model\.model\.model\.layers\.\d+\.(self_attn|mlp)\.[a-z_]+\.lora_[AB]\.weight$/);
      }
      if (i === 1) {
        assert.equal(ad.module(0, 'k_proj'), null);
        assert.equal(ad.module(1, 'q_proj')!.scale, 2);
      }
      if (i === 2) {
        assert.equal(ad.module(0, 'q_proj'), null);
        assert.equal(ad.module(1, 'down_proj')!.rank, 3);
        assert.equal(ad.module(1, 'down_proj')!.scale, 16 / 3);
      }
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
