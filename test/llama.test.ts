// loadModel / LlamaModel.forward / KvCache (src/model/llama.ts, src/model/kv_cache.ts) on every
// backend against the float64 reference forward (src/reference/llama.ts), on tiny random
// models written in HF layout by test/fixtures/tiny_model.ts.
//
// Logits: relative error ≤ 1e-4 against the reference fed the dtype-rounded weights (the
// device computes in f32 whatever the weights' dtype). Cases: llama GQA untied f32, qwen2
// with q/k/v biases in bf16, mistral with tied embeddings in f16, sharded weights loaded with
// a dtype conversion, multi-LoRA (MoTE routing, K = 2) on every linear, a step-skipping
// segment mask, packed sequences equal to each alone, logitRows; KV-cache decode (prefill 5,
// decode 3 one by one; two sequences decoding side by side; capacity growth; drop; rollback
// after a failed forward) equal to the full forward; bad inputs (malformed config, missing /
// extra / wrong-shape tensor, truncated safetensors, token id ≥ vocab, failure mid-upload)
// each a MoteError naming the file / tensor / id, with nothing left allocated on the backend.
// Shapes are tiny (hidden ≤ 32, ≤ 2 layers, vocab ≤ 48) so that every case also runs on
// webgpu over Mesa lavapipe in about two seconds.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type LlamaModel, type LlamaSegments } from '../src/model/llama.js';
import { loadModel, modelFromTensors } from '../src/model/load.js';
import { KvCache, tensorView } from '../src/model/kv_cache.js';
import { llamaForwardRef, type LlamaRefOptions } from '../src/reference/llama.js';
import { loraRouting, loraStack, type LoraStack } from '../src/ops/lora.js';
import { LINEAR_MODULES, linearShape, type LinearModule } from '../src/model/config.js';
import { roundTo } from '../src/dtype.js';
import { ArgumentError, DisposedTensorError, FormatError, MoteError, ShapeError } from '../src/errors.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import type { Backend } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { loraStacks, writeTinyModel, writeTinyPeftAdapter, type TinyModelOptions, type WrittenTinyModel } from './fixtures/tiny_model.js';
import { closeBackends, forEachBackend, relErr, tracking } from './helpers.js';

after(closeBackends);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-llama-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const TOL = 1e-4;
let dirCount = 0;

function newDir(label: string): string {
  return path.join(tmp, `${label}-${dirCount++}`);
}

const BASE: TinyModelOptions = {
  family: 'llama',
  hidden: 32,
  intermediate: 40,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  vocab: 48,
  tied: false,
  dtype: 'f32',
  seed: 1,
};

/** Models are written once per options and shared by the backends. */
const written = new Map<string, WrittenTinyModel>();
function tiny(o: Partial<TinyModelOptions>): WrittenTinyModel {
  const opts = { ...BASE, ...o };
  const key = JSON.stringify(opts);
  let m = written.get(key);
  if (!m) {
    m = writeTinyModel(newDir(opts.family), opts);
    written.set(key, m);
  }
  return m;
}

function ids(n: number, V: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7 + seed * 13 + 3) % V);
}

function refLogits(m: WrittenTinyModel, tokens: number[], opts: LlamaRefOptions = {}, dtype?: 'f32' | 'f16' | 'bf16'): Float64Array {
  const w = dtype ? (n: string) => roundTo(dtype, m.weights(n)) : m.weights;
  return llamaForwardRef(m.cfg, w, tokens, opts).logits;
}

function assertClose(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = TOL): void {
  const e = relErr(got, want);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(2)} > ${tol}`);
}

/** Rows [from, to) of a [T, V] matrix. */
function rowsOf(a: ArrayLike<number>, V: number, rows: number[]): Float64Array {
  const out = new Float64Array(rows.length * V);
  rows.forEach((r, i) => {
    for (let v = 0; v < V; v++) out[i * V + v] = a[r * V + v]!;
  });
  return out;
}

async function withModel<T>(
  b: Backend,
  m: WrittenTinyModel,
  body: (model: LlamaModel) => Promise<T>,
  dtype?: 'f32' | 'f16' | 'bf16',
): Promise<T> {
  const model = await loadModel(m.dir, { backend: b, ...(dtype ? { dtype } : {}) });
  try {
    return await body(model);
  } finally {
    model.dispose();
  }
}

function cases(name: string, body: (b: Backend) => Promise<void>): void {
  forEachBackend(name, body);
}

// ---------------------------------------------------------------------------------------
// Logits against the reference

cases('llama GQA, untied, f32: logits match the reference; two packed sequences; weights stay f32', async (b) => {
  const m = tiny({});
  await withModel(b, m, async (model) => {
    assert.equal(model.weights.layers[0]!.linear.q_proj.dtype, 'f32');
    assert.notEqual(model.weights.lmHead, model.weights.embedTokens);
    const tokens = ids(7, 48, 1);
    assertClose('logits', await model.logits(tokens), refLogits(m, tokens));
    // Two sequences packed and interleaved, explicit positions.
    const seq = [0, 1, 1, 0, 0, 1, 0];
    assertClose('packed logits', await model.logits(tokens, { seq }), refLogits(m, tokens, { seq }));
  });
});

cases('qwen2 with q/k/v biases, bf16 weights', async (b) => {
  const m = tiny({ family: 'qwen2', dtype: 'bf16', seed: 2, heads: 4, kvHeads: 1, hidden: 16, intermediate: 24, vocab: 40 });
  assert.equal(m.cfg.attentionBias, true);
  await withModel(b, m, async (model) => {
    assert.equal(model.weights.layers[1]!.linear.k_proj.dtype, 'bf16');
    assert.deepEqual(model.weights.layers[1]!.bias.q_proj!.shape, [1, 16]);
    assert.equal(model.weights.layers[1]!.bias.o_proj, undefined);
    const tokens = ids(6, 40, 2);
    assertClose('logits', await model.logits(tokens), refLogits(m, tokens));
  });
});

cases(
  'qwen3: per-head q/k RMSNorm before rope, head_dim 16 (q width 64 ≠ hidden 32), no biases, bf16; packed; KV-cache decode = full forward',
  async (b) => {
    const m = tiny({ family: 'qwen3', dtype: 'bf16', headDim: 16, kvHeads: 1, seed: 30 });
    assert.equal(m.cfg.attentionBias, false);
    await withModel(b, m, async (model) => {
      const l0 = model.weights.layers[0]!;
      assert.deepEqual(l0.linear.q_proj.shape, [64, 32]);
      assert.deepEqual(l0.qNorm!.shape, [16]);
      assert.deepEqual(l0.kNorm!.shape, [16]);
      assert.deepEqual(Object.keys(l0.bias), []);
      const V = 48;
      const tokens = ids(8, V, 30);
      const full = await model.logits(tokens);
      const want = refLogits(m, tokens);
      assertClose('logits', full, want);
      const seq = [0, 1, 1, 0, 0, 1, 0, 1];
      assertClose('packed logits', await model.logits(tokens, { seq }), refLogits(m, tokens, { seq }));
      // the cache holds normed and rotated keys: prefill + decode equals the full forward
      const cache = model.newCache({ capacity: 2 });
      try {
        assertClose('prefill', await model.logits(tokens.slice(0, 5), { cache }), rowsOf(full, V, [0, 1, 2, 3, 4]), 1e-5);
        for (let t = 5; t < 8; t++)
          assertClose(`decode token ${t}`, await model.logits([tokens[t]!], { cache }), rowsOf(full, V, [t]), 1e-5);
      } finally {
        cache.dispose();
      }
    });
  },
);

cases('tied embeddings, f16 (mistral family); llama biases everywhere (attention_bias, mlp_bias)', async (b) => {
  const m = tiny({ family: 'mistral', tied: true, dtype: 'f16', seed: 3, layers: 1 });
  await withModel(b, m, async (model) => {
    assert.equal(model.weights.lmHead, model.weights.embedTokens);
    assert.equal(model.weights.lmHead.dtype, 'f16');
    const tokens = ids(5, 48, 3);
    assertClose('logits', await model.logits(tokens), refLogits(m, tokens));
  });
  const mb = tiny({ attentionBias: true, mlpBias: true, seed: 4, layers: 1 });
  await withModel(b, mb, async (model) => {
    for (const mod of LINEAR_MODULES) assert.ok(model.weights.layers[0]!.bias[mod], `${mod} bias`);
    const tokens = ids(4, 48, 4);
    assertClose('logits (biases)', await model.logits(tokens), refLogits(mb, tokens));
  });
});

cases('sharded weights (3 shards + index); dtype option converts (f32 files -> bf16, f16 -> f32)', async (b) => {
  const m = tiny({ shards: 3, seed: 5 });
  assert.ok(m.files.includes('model.safetensors.index.json'), `files ${m.files}`);
  const tokens = ids(6, 48, 5);
  await withModel(b, m, async (model) => {
    assertClose('logits', await model.logits(tokens), refLogits(m, tokens));
  });
  await withModel(
    b,
    m,
    async (model) => {
      assert.equal(model.weights.layers[0]!.linear.down_proj.dtype, 'bf16');
      assert.equal(model.weights.norm.dtype, 'bf16');
      assertClose('logits (as bf16)', await model.logits(tokens), refLogits(m, tokens, {}, 'bf16'));
    },
    'bf16',
  );
  const h = tiny({ dtype: 'f16', seed: 6, layers: 1 });
  await withModel(
    b,
    h,
    async (model) => {
      assert.equal(model.weights.embedTokens.dtype, 'f32');
      assertClose('logits (f16 as f32)', await model.logits(tokens), refLogits(h, tokens));
    },
    'f32',
  );
});

cases('llama3 rope scaling and an explicit head_dim ≠ hidden / heads', async (b) => {
  const m = tiny({
    seed: 7,
    layers: 1,
    headDim: 6,
    heads: 4,
    kvHeads: 2,
    ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8 },
    ropeTheta: 10000,
  });
  await withModel(b, m, async (model) => {
    const tokens = ids(9, 48, 7);
    const pos = [0, 3, 7, 20, 21, 22, 100, 101, 500];
    assertClose('logits', await model.logits(tokens, { pos }), refLogits(m, tokens, { pos }));
  });
});

cases('two packed sequences give the logits of each alone; logitRows picks rows', async (b) => {
  const m = tiny({});
  await withModel(b, m, async (model) => {
    const V = 48;
    const a = ids(4, V, 8),
      c = ids(3, V, 9);
    const packed = [a[0]!, c[0]!, a[1]!, a[2]!, c[1]!, c[2]!, a[3]!];
    const seq = [5, 2, 5, 5, 2, 2, 5]; // any non-negative ids
    const both = await model.logits(packed, { seq });
    const aloneA = await model.logits(a);
    const aloneC = await model.logits(c);
    assertClose('sequence A', rowsOf(both, V, [0, 2, 3, 6]), aloneA, 1e-5);
    assertClose('sequence C', rowsOf(both, V, [1, 4, 5]), aloneC, 1e-5);
    const picked = await model.logits(packed, { seq, logitRows: [6, 5] });
    assert.equal(picked.length, 2 * V);
    assertClose('logitRows', picked, rowsOf(both, V, [6, 5]), 1e-6);
  });
});

cases('multi-LoRA on every linear (MoTE routing, K = 2, per-token slots)', async (b) => {
  const m = tiny({ seed: 10 });
  const cfg = m.cfg;
  const adapters = [
    writeTinyPeftAdapter(newDir('ad'), cfg, { r: 2, alpha: 4, seed: 11 }),
    writeTinyPeftAdapter(newDir('ad'), cfg, { r: 4, alpha: 4, seed: 12 }),
    writeTinyPeftAdapter(newDir('ad'), cfg, { r: 3, alpha: 6, seed: 13, targetModules: ['q_proj', 'v_proj', 'down_proj'] }),
  ];
  const refStacks = loraStacks(cfg, adapters);
  const T = 6;
  const slots = [0, 2, 1, 2, -1, 2, 0, -1, 1, 2, 0, 1];
  const weights = [0.5, 0.5, 0.5, 0.5, 1, 0.5, 1, 0, 0.5, 0.5, 0.3, 0.7];
  const tokens = ids(T, 48, 10);
  const seq = [0, 0, 0, 1, 1, 1];
  await withModel(b, m, async (model) => {
    const made: Tensor[] = [];
    const stacks: Partial<Record<LinearModule, LoraStack>>[] = [];
    for (let l = 0; l < cfg.numLayers; l++) {
      const mods: Partial<Record<LinearModule, LoraStack>> = {};
      for (const mod of LINEAR_MODULES) {
        const s = refStacks(l, mod);
        if (!s) continue;
        const L = s.ranks.length;
        const [Hout, Hin] = linearShape(cfg, mod);
        const R = s.A.length / (L * Hin);
        const A = b.tensor(Float32Array.from(s.A), [L, R, Hin], 'f32');
        const B = b.tensor(Float32Array.from(s.B), [L, Hout, R], 'f32');
        const st = loraStack(A, B, { rank: Array.from(s.ranks), scale: Array.from(s.scales) });
        made.push(A, B, st.rank, st.scale);
        mods[mod] = st;
      }
      stacks.push(mods);
    }
    const routing = loraRouting(b, slots, { K: 2, L: 3, weight: weights });
    try {
      const got = await model.logits(tokens, { seq, lora: { stacks, routing } });
      const want = refLogits(m, tokens, { seq, lora: { stacks: refStacks, slots, weights, K: 2 } });
      assertClose('logits with LoRA', got, want);
      const plain = refLogits(m, tokens, { seq });
      assert.ok(relErr(plain, want) > 1e-2, 'the adapters must change the logits (else the test is vacuous)');
      // A routing of the wrong length is refused before anything runs.
      const short = loraRouting(b, slots.slice(0, 4), { K: 2, L: 3 });
      try {
        assert.throws(
          () => model.forward({ ids: tokens, lora: { stacks, routing: short } }),
          (e: Error) => e instanceof ShapeError && /routes 2 tokens, the batch has 6/.test(e.message),
        );
      } finally {
        short.dispose();
      }
    } finally {
      routing.dispose();
      for (const t of made) t.dispose();
    }
  });
});

const SEGMENTS = (T: number): { segments: LlamaSegments; seq: number[] } => {
  // seq 0: tokens 0..4, steps 0 0 1 1 2 (step 2 blocked from step 0); seq 1: tokens 5..7, steps 0 1 2 (none blocked)
  const seq = [0, 0, 0, 0, 0, 1, 1, 1].slice(0, T);
  const segment = [0, 0, 1, 1, 2, 0, 1, 2].slice(0, T);
  const blocked = new Array(2 * 9).fill(0);
  blocked[0 * 9 + 2 * 3 + 0] = 1;
  blocked[0 * 9 + 2 * 3 + 1] = 0;
  return { seq, segments: { numSegments: 3, segment, blocked } };
};

cases('step-skipping segment mask', async (b) => {
  const m = tiny({ seed: 14 });
  await withModel(b, m, async (model) => {
    const tokens = ids(8, 48, 14);
    const { seq, segments } = SEGMENTS(8);
    const got = await model.logits(tokens, { seq, segments });
    const want = refLogits(m, tokens, { seq, segments: { numSegments: 3, qSegment: segments.segment, blocked: segments.blocked } });
    assertClose('logits with segments', got, want);
    assert.ok(relErr(refLogits(m, tokens, { seq }), want) > 1e-3, 'the mask must matter');
  });
});

// ---------------------------------------------------------------------------------------
// KV cache

cases('KV cache: prefill 5 tokens, decode 3 one by one = full forward', async (b) => {
  const m = tiny({ seed: 15 });
  const V = 48;
  await withModel(b, m, async (model) => {
    const tokens = ids(8, V, 15);
    const full = await model.logits(tokens);
    assertClose('full vs reference', full, refLogits(m, tokens));
    const cache = model.newCache({ capacity: 4 });
    try {
      const pre = await model.logits(tokens.slice(0, 5), { cache });
      assertClose('prefill', pre, rowsOf(full, V, [0, 1, 2, 3, 4]), 1e-5);
      assert.equal(cache.length, 5);
      for (let t = 5; t < 8; t++) {
        const step = await model.logits([tokens[t]!], { cache });
        assertClose(`decode token ${t}`, step, rowsOf(full, V, [t]), 1e-5);
      }
      assert.equal(cache.length, 8);
      assert.ok(cache.capacity >= 9);
      assert.deepEqual([...cache.entries().pos], [0, 1, 2, 3, 4, 5, 6, 7]);
      assert.equal(cache.nextPosition(0), 8);
    } finally {
      cache.dispose();
    }
  });
});

cases('KV cache: two sequences decoding side by side, growth, drop, rollback after a failed forward, segments', async (b) => {
  const m = tiny({ seed: 16 });
  const V = 48;
  await withModel(b, m, async (model) => {
    const A = ids(8, V, 16),
      C = ids(6, V, 17);
    const fullA = await model.logits(A),
      fullC = await model.logits(C);
    const cache = model.newCache({ capacity: 2 });
    try {
      // Prefill A[0..4) and C[0..3) packed, seq ids 3 and 1.
      const pre = await model.logits([A[0]!, C[0]!, A[1]!, C[1]!, A[2]!, C[2]!, A[3]!], { seq: [3, 1, 3, 1, 3, 1, 3], cache });
      assertClose('prefill A', rowsOf(pre, V, [0, 2, 4, 6]), rowsOf(fullA, V, [0, 1, 2, 3]), 1e-5);
      assertClose('prefill C', rowsOf(pre, V, [1, 3, 5]), rowsOf(fullC, V, [0, 1, 2]), 1e-5);
      // A forward that fails after layer 0 appended (a broken stack on layer 1): the cache is unchanged.
      const bad = {
        A: b.tensor(new Float32Array(2 * 32), [1, 2, 32]),
        B: b.tensor(new Float32Array(2 * 32), [1, 32, 2]),
        rank: b.tensor([2], [1], 'f32'),
        scale: b.tensor([1], [1], 'f32'),
        ranks: Int32Array.of(2),
      };
      const rt = loraRouting(b, [0, 0], { K: 1, L: 1 });
      try {
        assert.throws(
          () => model.forward({ ids: [A[4]!, C[3]!], seq: [3, 1], cache, lora: { stacks: [undefined, { q_proj: bad }], routing: rt } }),
          MoteError,
        );
      } finally {
        rt.dispose();
        for (const t of [bad.A, bad.B, bad.rank, bad.scale]) t.dispose();
      }
      assert.equal(cache.length, 7);
      // Decode both side by side, one token each per step, with growth along the way.
      for (let s = 0; s < 3; s++) {
        const step = await model.logits([A[4 + s]!, C[3 + s]!], { seq: [3, 1], cache });
        assertClose(`decode A ${4 + s}`, rowsOf(step, V, [0]), rowsOf(fullA, V, [4 + s]), 1e-5);
        assertClose(`decode C ${3 + s}`, rowsOf(step, V, [1]), rowsOf(fullC, V, [3 + s]), 1e-5);
      }
      assert.deepEqual(cache.sequences(), [1, 3]);
      // Dropping C leaves A decodable (its slots are compacted).
      cache.drop([1]);
      assert.equal(cache.length, 7);
      assert.equal(cache.tokenCount(3), 7);
      const after = await model.logits([A[7]!], { seq: [3], cache });
      assertClose('decode A 7 after dropping C', after, rowsOf(fullA, V, [7]), 1e-5);
      cache.drop([3]);
      assert.equal(cache.length, 0);
      const p2 = await model.logits(A.slice(0, 6), { cache });
      assertClose('prefill after drop', p2, rowsOf(fullA, V, [0, 1, 2, 3, 4, 5]), 1e-5);
      const d2 = await model.logits([A[6]!], { cache });
      assertClose('decode after drop', d2, rowsOf(fullA, V, [6]), 1e-5);
      cache.clear();
      assert.equal(cache.length, 0);
      assert.equal(cache.capacity, 0);

      // Segments: prefill with a step mask, decode the rest of the steps = full forward with the mask.
      const tokens = ids(8, V, 18);
      const { seq, segments } = SEGMENTS(8);
      const full = await model.logits(tokens, { seq, segments });
      const cut = [0, 1, 2, 5, 6]; // seq 0 steps 0 0 1, seq 1 steps 0 1
      const rest = [3, 4, 7];
      const pick = <T>(a: ArrayLike<T>, r: number[]) => r.map((i) => a[i]!);
      const pre2 = await model.logits(pick(tokens, cut), {
        seq: pick(seq, cut),
        segments: { ...segments, segment: pick(segments.segment, cut) },
        cache,
      });
      assertClose('segment prefill', pre2, rowsOf(full, V, cut), 1e-5);
      const dec = await model.logits(pick(tokens, rest), {
        seq: pick(seq, rest),
        segments: { ...segments, segment: pick(segments.segment, rest) },
        cache,
      });
      assertClose('segment decode', dec, rowsOf(full, V, rest), 1e-5);
    } finally {
      cache.dispose();
    }
  });
});

// ---------------------------------------------------------------------------------------
// Errors and resources

/** Copies the files of a written model into a fresh dir, for breaking them. */
function copyModel(m: WrittenTinyModel, label: string): string {
  const dir = newDir(label);
  fs.mkdirSync(dir, { recursive: true });
  for (const f of fs.readdirSync(m.dir)) fs.copyFileSync(path.join(m.dir, f), path.join(dir, f));
  return dir;
}

async function rejectsLoad(b: Backend, dir: string, match: RegExp, cls: new (...a: never[]) => Error = FormatError): Promise<void> {
  await tracking(b, async (live) => {
    await assert.rejects(loadModel(dir, { backend: b }), (e: Error) => {
      assert.ok(e instanceof cls, `expected ${cls.name}, got ${e.constructor.name}: ${e.message}`);
      assert.match(e.message, match);
      return true;
    });
    assert.equal(live.size, 0, `${live.size} tensors left allocated after a failed load`);
  });
}

cases(
  'qwen3 directories without their q/k norms (or a qwen2 checkpoint labelled qwen3): FormatErrors naming the tensor; nothing left allocated',
  async (b) => {
    const m = tiny({ family: 'qwen3', seed: 31, layers: 1 });
    const tensors = readSafetensors(path.join(m.dir, 'model.safetensors')).tensors;
    const d = copyModel(m, 'q3-nonorm');
    const t = new Map(tensors);
    t.delete('model.layers.0.self_attn.k_norm.weight');
    writeSafetensors(path.join(d, 'model.safetensors'), t);
    await rejectsLoad(b, d, /model\.safetensors: tensor 'model\.layers\.0\.self_attn\.k_norm\.weight' is missing \(expected shape \[8\]\)/);
    const q2 = tiny({ family: 'qwen2', seed: 32, layers: 1 });
    const relabelled = copyModel(q2, 'q2-as-q3');
    fs.writeFileSync(
      path.join(relabelled, 'config.json'),
      JSON.stringify({ ...q2.config, model_type: 'qwen3', architectures: ['Qwen3ForCausalLM'], head_dim: 8 }),
    );
    await rejectsLoad(b, relabelled, /self_attn\.q_norm\.weight' is missing[^]*self_attn\.q_proj\.bias' is not part of this model/);
  },
);

cases('bad model directories: clear FormatErrors naming file and tensor; nothing left allocated', async (b) => {
  const m = tiny({ seed: 20, layers: 1 });
  // Malformed config: not JSON, a missing field, an unsupported model type; no config at all.
  let dir = copyModel(m, 'badcfg');
  fs.writeFileSync(path.join(dir, 'config.json'), '{ "model_type": "llama", ');
  await rejectsLoad(b, dir, /config\.json: not valid JSON/);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...m.config, hidden_size: undefined }));
  await rejectsLoad(b, dir, /config\.json: hidden_size is missing/);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...m.config, model_type: 'gpt2' }));
  await rejectsLoad(b, dir, /config\.json: model_type 'gpt2' is not supported/);
  fs.rmSync(path.join(dir, 'config.json'));
  await rejectsLoad(b, dir, /config\.json: not found/);

  // Missing, extra and wrong-shape tensors.
  const tensors = readSafetensors(path.join(m.dir, 'model.safetensors')).tensors;
  const rewrite = (
    label: string,
    edit: (
      t: Map<string, { dtype: 'f32' | 'f16' | 'bf16' | 'i32'; shape: number[]; data: Float32Array | Uint16Array | Int32Array }>,
    ) => void,
  ): string => {
    const d = copyModel(m, label);
    const t = new Map(tensors);
    edit(t);
    writeSafetensors(path.join(d, 'model.safetensors'), t);
    return d;
  };
  dir = rewrite('missing', (t) => t.delete('model.layers.0.mlp.up_proj.weight'));
  await rejectsLoad(b, dir, /model\.safetensors: tensor 'model\.layers\.0\.mlp\.up_proj\.weight' is missing \(expected shape \[40, 32\]\)/);
  dir = rewrite('extra', (t) => t.set('model.layers.0.mlp.extra.weight', { dtype: 'f32', shape: [2], data: new Float32Array(2) }));
  await rejectsLoad(b, dir, /model\.safetensors: tensor 'model\.layers\.0\.mlp\.extra\.weight' is not part of this model/);
  dir = rewrite('shape', (t) =>
    t.set('model.layers.0.self_attn.k_proj.weight', { dtype: 'f32', shape: [32, 16], data: new Float32Array(512) }),
  );
  await rejectsLoad(
    b,
    dir,
    /model\.safetensors: tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \[32, 16\], expected \[16, 32\]/,
  );
  dir = rewrite('int', (t) => t.set('model.norm.weight', { dtype: 'i32', shape: [32], data: new Int32Array(32) }));
  await rejectsLoad(b, dir, /model\.safetensors: tensor 'model\.norm\.weight': dtype I32 is not a float weight dtype/);
  // Benign extras transformers ignores: rotary inv_freq buffers.
  dir = rewrite('invfreq', (t) =>
    t.set('model.layers.0.self_attn.rotary_emb.inv_freq', { dtype: 'f32', shape: [4], data: new Float32Array(4) }),
  );
  (await loadModel(dir, { backend: b })).dispose();

  // Truncated safetensors (single and one shard of several).
  dir = copyModel(m, 'trunc');
  const file = path.join(dir, 'model.safetensors');
  fs.truncateSync(file, fs.statSync(file).size - 100);
  await rejectsLoad(b, dir, /model\.safetensors: tensor '[^']+': data_offsets .* run past the end of the data/);
  const sh = tiny({ seed: 21, layers: 1, shards: 3 });
  dir = copyModel(sh, 'trunc-shard');
  const shard = path.join(
    dir,
    sh.files.find((f) => f.endsWith('-00002-of-00003.safetensors'))!,
  );
  fs.truncateSync(shard, 20);
  await rejectsLoad(b, dir, /model-00002-of-00003\.safetensors: /);
  fs.rmSync(shard);
  await rejectsLoad(b, dir, /model\.safetensors\.index\.json: shard 'model-00002-of-00003\.safetensors' not found/);
});

cases('a load that fails mid-upload frees what it uploaded; dispose frees everything', async (b) => {
  const m = tiny({ seed: 22, layers: 1 });
  // Count the allocations of one good load, then fail each of a few of them in turn.
  const total = await tracking(b, async (live) => {
    const model = await loadModel(m.dir, { backend: b });
    const n = live.size;
    assert.ok(n >= 12, `a model of one layer has at least 12 tensors, got ${n}`);
    model.dispose();
    assert.equal(live.size, 0, 'dispose() frees every tensor');
    assert.ok(model.disposed);
    assert.throws(() => model.forward({ ids: [1] }), DisposedTensorError);
    model.dispose(); // twice is fine
    return n;
  });
  for (const failAt of [1, 2, Math.floor(total / 2), total]) {
    await tracking(
      b,
      async (live) => {
        await assert.rejects(loadModel(m.dir, { backend: b }), /allocation \d+ fails on purpose/);
        assert.equal(live.size, 0, `failing allocation ${failAt}: ${live.size} tensors left`);
      },
      failAt,
    );
  }
  // A forward frees its temporaries (only the logits remain), with a cache too.
  await withModel(b, m, async (model) => {
    await tracking(b, async (live) => {
      const logits = model.forward({ ids: [1, 2, 3] });
      assert.equal(live.size, 1);
      logits.dispose();
      const cache = model.newCache();
      (await Promise.resolve(model.forward({ ids: [1, 2], cache }))).dispose();
      assert.equal(live.size, 2 * m.cfg.numLayers, 'keys and values per layer');
      cache.dispose();
      assert.equal(live.size, 0);
    });
  });
});

cases('bad batches: token id ≥ vocab and other arguments, refused before anything runs', async (b) => {
  const m = tiny({ seed: 23, layers: 1 });
  await withModel(b, m, async (model) => {
    await tracking(b, async (live) => {
      const bad = (batch: Parameters<LlamaModel['forward']>[0], cls: new (...a: never[]) => Error, re: RegExp) => {
        assert.throws(
          () => model.forward(batch),
          (e: Error) => {
            assert.ok(e instanceof cls, `expected ${cls.name}, got ${e.constructor.name}: ${e.message}`);
            assert.match(e.message, re);
            return true;
          },
        );
      };
      bad({ ids: [1, 48, 2] }, ArgumentError, /LlamaModel\.forward: ids\[1\]: expected a token id in \[0, 47\], got 48/);
      bad({ ids: [1, -1] }, ArgumentError, /ids\[1\]: expected a token id in \[0, 47\], got -1/);
      bad({ ids: [1, 2.5] }, ArgumentError, /ids\[1\]/);
      bad({ ids: [] }, ArgumentError, /ids: expected a non-empty/);
      bad({ ids: [1, 2], seq: [0] }, ShapeError, /seq: expected 2 entries/);
      bad({ ids: [1, 2], pos: [0, -3] }, ArgumentError, /pos\[1\]: expected an integer/);
      bad({ ids: [1, 2], logitRows: [2] }, ArgumentError, /logitRows\[0\]: expected an integer in \[0, 1\], got 2/);
      bad({ ids: [1, 2], segments: { numSegments: 2, segment: [0, 2], blocked: [0, 0, 0, 0] } }, ArgumentError, /segments\.segment\[1\]/);
      bad(
        { ids: [1, 2], seq: [0, 1], segments: { numSegments: 2, segment: [0, 1], blocked: [0, 0, 1, 0] } },
        ArgumentError,
        /seq\[1\] = 1 has no entry in segments\.blocked/,
      );
      bad({ ids: [1], cache: {} as KvCache }, ArgumentError, /cache: expected a KvCache/);
      const other = new KvCache(b, { numLayers: 3, numKvHeads: 2, headDim: 8 });
      bad({ ids: [1], cache: other }, ShapeError, /cache: made for 3 layers/);
      assert.equal(live.size, 0, 'nothing allocated by refused batches');
    });
  });
});

cases('modelFromTensors and tensorView', async (b) => {
  const m = tiny({ seed: 24, layers: 1 });
  const host = readSafetensors(path.join(m.dir, 'model.safetensors')).tensors;
  const model = modelFromTensors(m.cfg, host, { backend: b });
  try {
    const tokens = ids(4, 48, 24);
    assertClose('logits', await model.logits(tokens), refLogits(m, tokens));
  } finally {
    model.dispose();
  }
  const smaller = new Map(host);
  smaller.delete('model.norm.weight');
  assert.throws(() => modelFromTensors(m.cfg, smaller, { backend: b }), /<tensors>: tensor 'model\.norm\.weight' is missing/);
  const t = b.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
  const v = tensorView(t, [3, 2]);
  assert.deepEqual([...(await v.readFloat())], [1, 2, 3, 4, 5, 6]);
  v.dispose();
  assert.deepEqual([...(await t.readFloat())], [1, 2, 3, 4, 5, 6], 'disposing a view frees nothing');
  const v2 = tensorView(t, [6]);
  t.dispose();
  assert.ok(v2.disposed);
  assert.throws(() => v2.storage, DisposedTensorError);
  assert.throws(() => tensorView(b.tensor([1, 2], [2]), [3]), ShapeError);
});
