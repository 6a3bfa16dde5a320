import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkConfigAgainstWeights,
  compareWeights,
  expectedWeights,
  linearShape,
  linearWeightName,
  parseHFConfig,
  LINEAR_MODULES,
  type ModelConfig,
} from '../src/model/config.js';
import { FormatError } from '../src/errors.js';

// Configs as their hubs ship them (fields copied from the published config.json files).

const SMOLLM_135M = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 0,
  eos_token_id: 0,
  hidden_act: 'silu',
  hidden_size: 576,
  initializer_range: 0.02,
  intermediate_size: 1536,
  max_position_embeddings: 2048,
  model_type: 'llama',
  num_attention_heads: 9,
  num_hidden_layers: 30,
  num_key_value_heads: 3,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  rope_theta: 10000.0,
  tie_word_embeddings: true,
  torch_dtype: 'float32',
  transformers_version: '4.40.1',
  use_cache: true,
  vocab_size: 49152,
};

const LLAMA2_7B = {
  _name_or_path: 'meta-llama/Llama-2-7b-hf',
  architectures: ['LlamaForCausalLM'],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 11008,
  max_position_embeddings: 4096,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 32,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  tie_word_embeddings: false,
  torch_dtype: 'float16',
  transformers_version: '4.31.0.dev0',
  use_cache: true,
  vocab_size: 32000,
};

const LLAMA31_8B = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  rope_theta: 500000.0,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.43.0.dev0',
  use_cache: true,
  vocab_size: 128256,
};

const MISTRAL_7B = {
  architectures: ['MistralForCausalLM'],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 32768,
  model_type: 'mistral',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  sliding_window: 4096,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.34.0.dev0',
  use_cache: true,
  vocab_size: 32000,
};

const QWEN2_05B = {
  architectures: ['Qwen2ForCausalLM'],
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151643,
  hidden_act: 'silu',
  hidden_size: 896,
  initializer_range: 0.02,
  intermediate_size: 4864,
  max_position_embeddings: 131072,
  max_window_layers: 24,
  model_type: 'qwen2',
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 131072,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.40.1',
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

test('SmolLM-135M: GQA 9/3 heads, tied embeddings, f32', () => {
  const c = parseHFConfig(SMOLLM_135M);
  assert.deepEqual(c, {
    family: 'llama',
    hiddenSize: 576,
    intermediateSize: 1536,
    numLayers: 30,
    numHeads: 9,
    numKvHeads: 3,
    headDim: 64,
    vocabSize: 49152,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: null,
    maxPositionEmbeddings: 2048,
    tieWordEmbeddings: true,
    attentionBias: false,
    outputBias: false,
    mlpBias: false,
    slidingWindow: null,
    bosTokenId: 0,
    eosTokenIds: [0],
    torchDtype: 'f32',
  } satisfies ModelConfig);
  const w = expectedWeights(c);
  // embed + 30 layers x (2 norms + 7 linears) + final norm; no lm_head (tied). The published checkpoint has 272 tensors.
  assert.equal(w.length, 272);
  assert.ok(!w.some((x) => x.name === 'lm_head.weight'));
  const byName = new Map(w.map((x) => [x.name, x.shape]));
  assert.deepEqual(byName.get('model.embed_tokens.weight'), [49152, 576]);
  assert.deepEqual(byName.get('model.layers.0.self_attn.q_proj.weight'), [576, 576]);
  assert.deepEqual(byName.get('model.layers.29.self_attn.k_proj.weight'), [192, 576]);
  assert.deepEqual(byName.get('model.layers.7.self_attn.v_proj.weight'), [192, 576]);
  assert.deepEqual(byName.get('model.layers.7.self_attn.o_proj.weight'), [576, 576]);
  assert.deepEqual(byName.get('model.layers.3.mlp.gate_proj.weight'), [1536, 576]);
  assert.deepEqual(byName.get('model.layers.3.mlp.up_proj.weight'), [1536, 576]);
  assert.deepEqual(byName.get('model.layers.3.mlp.down_proj.weight'), [576, 1536]);
  assert.deepEqual(byName.get('model.layers.3.input_layernorm.weight'), [576]);
  assert.deepEqual(byName.get('model.layers.3.post_attention_layernorm.weight'), [576]);
  assert.deepEqual(byName.get('model.norm.weight'), [576]);
  assert.equal(new Set(w.map((x) => x.name)).size, w.length, 'no duplicate names');
});

test('Llama 2 and Llama 3.1: defaults, rope_scaling llama3, several eos ids', () => {
  const l2 = parseHFConfig(LLAMA2_7B);
  assert.equal(l2.numKvHeads, 32);
  assert.equal(l2.headDim, 128);
  assert.equal(l2.ropeTheta, 10000, 'rope_theta absent: transformers default');
  assert.equal(l2.torchDtype, 'f16');
  assert.deepEqual(l2.eosTokenIds, [2]);
  assert.equal(l2.bosTokenId, 1);
  assert.equal(expectedWeights(l2).length, 1 + 32 * 9 + 2);
  assert.deepEqual(expectedWeights(l2).at(-1), { name: 'lm_head.weight', shape: [32000, 4096] });

  const l3 = parseHFConfig(JSON.stringify(LLAMA31_8B), 'Meta-Llama-3.1-8B/config.json');
  assert.equal(l3.family, 'llama');
  assert.equal(l3.numKvHeads, 8);
  assert.equal(l3.ropeTheta, 500000);
  assert.deepEqual(l3.ropeScaling, { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
  assert.deepEqual(l3.eosTokenIds, [128001, 128008, 128009]);
  assert.equal(l3.maxPositionEmbeddings, 131072);
  assert.equal(l3.torchDtype, 'bf16');
  assert.deepEqual(linearShape(l3, 'k_proj'), [1024, 4096]);
  assert.deepEqual(linearShape(l3, 'down_proj'), [4096, 14336]);

  const linear = parseHFConfig({ ...LLAMA2_7B, rope_scaling: { type: 'linear', factor: 2 } });
  assert.deepEqual(linear.ropeScaling, { type: 'linear', factor: 2 });
  assert.equal(parseHFConfig({ ...LLAMA2_7B, rope_scaling: { rope_type: 'default' } }).ropeScaling, null);
  // transformers v5 keeps theta and scaling together in rope_parameters, and says "dtype".
  const { rope_scaling: rs, rope_theta: theta, torch_dtype: _dt, ...v5 } = LLAMA31_8B;
  const c5 = parseHFConfig({ ...v5, dtype: 'bfloat16', rope_parameters: { ...rs, rope_theta: theta } });
  assert.deepEqual([c5.ropeTheta, c5.ropeScaling, c5.torchDtype], [l3.ropeTheta, l3.ropeScaling, 'bf16']);
});

test('llama with attention_bias and mlp_bias, and an explicit head_dim', () => {
  const c = parseHFConfig({ ...SMOLLM_135M, attention_bias: true, mlp_bias: true, head_dim: 32, tie_word_embeddings: false });
  assert.equal(c.headDim, 32);
  assert.deepEqual(linearShape(c, 'q_proj'), [288, 576]);
  assert.deepEqual(linearShape(c, 'o_proj'), [576, 288]);
  const names = new Set(expectedWeights(c).map((w) => w.name));
  for (const m of LINEAR_MODULES) assert.ok(names.has(linearWeightName(0, m, 'bias')), m);
  assert.ok(names.has('lm_head.weight'));
});

test('Mistral 7B: sliding window, GQA', () => {
  const c = parseHFConfig(MISTRAL_7B);
  assert.equal(c.family, 'mistral');
  assert.equal(c.slidingWindow, 4096);
  assert.equal(c.numKvHeads, 8);
  assert.equal(c.attentionBias, false);
  assert.equal(parseHFConfig({ ...MISTRAL_7B, sliding_window: null }).slidingWindow, null);
  // Mistral Nemo: head_dim 128 although 5120 / 32 = 160.
  const nemo = parseHFConfig({ ...MISTRAL_7B, hidden_size: 5120, head_dim: 128, num_hidden_layers: 40, vocab_size: 131072 });
  assert.deepEqual(linearShape(nemo, 'q_proj'), [4096, 5120]);
  assert.deepEqual(linearShape(nemo, 'v_proj'), [1024, 5120]);
  assert.equal(expectedWeights(c).length, 1 + 32 * 9 + 2);
});

test('Qwen2-0.5B: q/k/v biases, tied, sliding window off', () => {
  const c = parseHFConfig(QWEN2_05B);
  assert.equal(c.family, 'qwen2');
  assert.equal(c.headDim, 64);
  assert.equal(c.attentionBias, true);
  assert.equal(c.outputBias, false);
  assert.equal(c.slidingWindow, null, 'use_sliding_window: false');
  assert.equal(c.rmsNormEps, 1e-6);
  assert.equal(c.ropeTheta, 1e6);
  const w = expectedWeights(c);
  assert.equal(w.length, 1 + 24 * 12 + 1, 'three biases per layer, no lm_head');
  const byName = new Map(w.map((x) => [x.name, x.shape]));
  assert.deepEqual(byName.get('model.layers.0.self_attn.q_proj.bias'), [896]);
  assert.deepEqual(byName.get('model.layers.0.self_attn.k_proj.bias'), [128]);
  assert.deepEqual(byName.get('model.layers.23.self_attn.v_proj.bias'), [128]);
  assert.ok(!byName.has('model.layers.0.self_attn.o_proj.bias'));
  // model_type may be left out when architectures says it.
  const { model_type: _mt, ...noType } = QWEN2_05B;
  assert.equal(parseHFConfig(noType).family, 'qwen2');
});

// Qwen/Qwen3-0.6B config.json (transformers 4.51.0).
const QWEN3_06B = {
  architectures: ['Qwen3ForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151645,
  head_dim: 128,
  hidden_act: 'silu',
  hidden_size: 1024,
  initializer_range: 0.02,
  intermediate_size: 3072,
  max_position_embeddings: 40960,
  max_window_layers: 28,
  model_type: 'qwen3',
  num_attention_heads: 16,
  num_hidden_layers: 28,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-6,
  rope_scaling: null,
  rope_theta: 1000000,
  sliding_window: null,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.51.0',
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

test('Qwen3-0.6B: head_dim 128 (q width 2048 ≠ hidden 1024), q/k norms [head_dim], no biases, tied', () => {
  const c = parseHFConfig(QWEN3_06B);
  assert.equal(c.family, 'qwen3');
  assert.equal(c.headDim, 128);
  assert.deepEqual(linearShape(c, 'q_proj'), [2048, 1024]);
  assert.deepEqual(linearShape(c, 'k_proj'), [1024, 1024]);
  assert.deepEqual(linearShape(c, 'o_proj'), [1024, 2048]);
  assert.equal(c.attentionBias, false);
  assert.equal(c.outputBias, false);
  assert.equal(c.slidingWindow, null);
  assert.equal(c.maxPositionEmbeddings, 40960);
  assert.deepEqual(c.eosTokenIds, [151645]);
  const w = expectedWeights(c);
  assert.equal(w.length, 1 + 28 * 11 + 1, 'q_norm and k_norm per layer, no biases, no lm_head');
  const byName = new Map(w.map((x) => [x.name, x.shape]));
  assert.deepEqual(byName.get('model.layers.0.self_attn.q_norm.weight'), [128]);
  assert.deepEqual(byName.get('model.layers.27.self_attn.k_norm.weight'), [128]);
  assert.ok(!byName.has('model.layers.0.self_attn.q_proj.bias'));
  // Qwen3Config's defaults: head_dim 128 when left out, whatever hidden / heads is; attention_bias switches q/k/v and o.
  const { head_dim: _hd, model_type: _mt, ...bare } = QWEN3_06B;
  assert.equal(parseHFConfig(bare).family, 'qwen3', 'from architectures');
  assert.equal(parseHFConfig(bare).headDim, 128);
  const biased = parseHFConfig({ ...QWEN3_06B, attention_bias: true });
  assert.equal(biased.attentionBias, true);
  assert.equal(biased.outputBias, true);
  assert.equal(parseHFConfig({ ...QWEN3_06B, use_sliding_window: true, sliding_window: 4096 }).slidingWindow, 4096);
  // The config's head_dim is checked against q_proj before anything is allocated.
  const shapes = new Map(expectedWeights({ ...c, numLayers: 1 }).map((x) => [x.name, x.shape]));
  shapes.set(linearWeightName(0, 'q_proj'), [1024, 1024]);
  assert.throws(
    () => checkConfigAgainstWeights({ ...c, numLayers: 1 }, shapes),
    (e: Error) =>
      e instanceof FormatError &&
      /num_attention_heads × head_dim is 16 × 128, but model\.layers\.0\.self_attn\.q_proj\.weight has 1024 rows/.test(e.message),
  );
});

test('compareWeights reports missing, extra and wrong-shape tensors', () => {
  const c = parseHFConfig({ ...SMOLLM_135M, num_hidden_layers: 2 });
  const expected = expectedWeights(c);
  const actual = new Map(expected.map((w) => [w.name, w.shape]));
  assert.deepEqual(compareWeights(expected, actual), { missing: [], extra: [], wrongShape: [] });
  actual.delete('model.layers.1.mlp.up_proj.weight');
  actual.set('model.layers.0.self_attn.rotary_emb.inv_freq', [32]);
  actual.set('model.layers.0.self_attn.k_proj.weight', [576, 576]);
  const r = compareWeights(expected, actual);
  assert.deepEqual(r.missing, [{ name: 'model.layers.1.mlp.up_proj.weight', shape: [1536, 576] }]);
  assert.deepEqual(r.extra, ['model.layers.0.self_attn.rotary_emb.inv_freq']);
  assert.deepEqual(r.wrongShape, [{ name: 'model.layers.0.self_attn.k_proj.weight', expected: [192, 576], actual: [576, 576] }]);
});

/** Asserts a FormatError naming the file and the field. */
function rejects(json: unknown, field: string, re: RegExp, file = 'some/model/config.json'): void {
  assert.throws(
    () => parseHFConfig(json, file),
    (e: unknown) => {
      assert.ok(e instanceof FormatError, `expected FormatError, got ${String(e)}`);
      assert.ok(e.message.startsWith(`${file}: `), e.message);
      assert.ok(e.message.includes(field), `names ${field}: ${e.message}`);
      assert.match(e.message, re);
      return true;
    },
  );
}

test('invalid configs are FormatErrors naming the file and the field', () => {
  const { hidden_size: _h, ...noHidden } = SMOLLM_135M;
  rejects(noHidden, 'hidden_size', /is missing/);
  rejects({ ...SMOLLM_135M, num_hidden_layers: 0 }, 'num_hidden_layers', /integer >= 1, got 0/);
  rejects({ ...SMOLLM_135M, vocab_size: '49152' }, 'vocab_size', /integer/);
  rejects({ ...SMOLLM_135M, num_attention_heads: 7 }, 'num_attention_heads', /\(7\) must divide hidden_size \(576\)/);
  rejects({ ...SMOLLM_135M, num_key_value_heads: 2 }, 'num_key_value_heads', /\(2\) must divide num_attention_heads \(9\)/);
  rejects({ ...SMOLLM_135M, model_type: 'gpt2' }, 'model_type', /'gpt2' is not supported/);
  const { model_type: _m, ...noType } = SMOLLM_135M;
  rejects({ ...noType, architectures: ['GPT2LMHeadModel'] }, 'model_type', /is missing and architectures/);
  rejects({ ...SMOLLM_135M, architectures: ['LlamaForSequenceClassification'] }, 'architectures', /not a causal LM/);
  rejects({ ...SMOLLM_135M, hidden_act: 'gelu' }, 'hidden_act', /not supported/);
  rejects({ ...LLAMA31_8B, rope_scaling: { rope_type: 'yarn', factor: 4 } }, 'rope_scaling.rope_type', /'yarn' is not supported/);
  rejects(
    { ...LLAMA31_8B, rope_scaling: { ...LLAMA31_8B.rope_scaling, low_freq_factor: undefined } },
    'rope_scaling.low_freq_factor',
    /is missing/,
  );
  rejects(
    { ...LLAMA31_8B, rope_scaling: { ...LLAMA31_8B.rope_scaling, high_freq_factor: 0.5 } },
    'rope_scaling.high_freq_factor',
    /must exceed/,
  );
  rejects({ ...LLAMA31_8B, rope_scaling: 8 }, 'rope_scaling', /must be an object or null/);
  rejects({ ...LLAMA31_8B, rope_theta: -1 }, 'rope_theta', /positive number/);
  rejects({ ...LLAMA31_8B, eos_token_id: [128001, 'x'] }, 'eos_token_id[1]', /integer/);
  rejects({ ...SMOLLM_135M, eos_token_id: 49152 }, 'eos_token_id', /outside the vocabulary/);
  rejects({ ...SMOLLM_135M, torch_dtype: 'float8_e4m3fn' }, 'torch_dtype', /not supported/);
  rejects({ ...SMOLLM_135M, head_dim: 33 }, 'head_dim', /even/);
  rejects({ ...SMOLLM_135M, tie_word_embeddings: 'yes' }, 'tie_word_embeddings', /true or false/);
  rejects('{"model_type": "llama",', 'not valid JSON', /JSON/);
  rejects([SMOLLM_135M], 'JSON object', /expected a JSON object/);
  // Values that pass as positive numbers but are ∞ or 0 in the f32 kernels (NaN logits).
  rejects({ ...LLAMA31_8B, rope_theta: 1e-300 }, 'rope_theta', /rotary frequency of .* more than 1000000/);
  rejects({ ...LLAMA2_7B, rope_scaling: { rope_type: 'linear', factor: 1e-300 } }, 'rope_scaling.factor', /rotary frequency/);
  rejects({ ...SMOLLM_135M, rms_norm_eps: 1e308 }, 'rms_norm_eps', /a positive f32/);
  rejects({ ...SMOLLM_135M, rms_norm_eps: 1e-300 }, 'rms_norm_eps', /a positive f32/);
});

test('config sizes are checked against the tensors present before anything is listed or allocated by them', () => {
  const base = {
    model_type: 'llama',
    hidden_size: 32,
    intermediate_size: 40,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 64,
  };
  const cfg = parseHFConfig(base);
  const shapes = new Map(expectedWeights(cfg).map((w) => [w.name, w.shape]));
  checkConfigAgainstWeights(cfg, shapes, 'config.json');
  const bad = (over: Record<string, unknown>, field: string) => {
    const t0 = performance.now();
    assert.throws(
      () => checkConfigAgainstWeights(parseHFConfig({ ...base, ...over }), shapes, '/m/config.json', '/m/model.safetensors'),
      (e: Error) => e instanceof FormatError && e.message.startsWith('/m/config.json: ') && e.message.includes(field),
      `${JSON.stringify(over)} names ${field}`,
    );
    assert.ok(performance.now() - t0 < 100, 'no work sized by the claim');
  };
  bad({ num_hidden_layers: 1e9 }, 'num_hidden_layers');
  bad({ num_hidden_layers: 1 }, 'num_hidden_layers');
  bad({ vocab_size: 1e9 }, 'vocab_size');
  bad({ hidden_size: 2 ** 40 }, 'hidden_size');
  bad({ intermediate_size: 1e12 }, 'intermediate_size');
  bad({ head_dim: 2 ** 30 }, 'num_attention_heads');
  bad({ num_key_value_heads: 4 }, 'num_key_value_heads');
  // Positions and rope fields past 2^30 are refused at parse time.
  assert.throws(
    () => parseHFConfig({ ...base, max_position_embeddings: 2 ** 40 }),
    (e: Error) => e instanceof FormatError && /max_position_embeddings/.test(e.message),
  );
  assert.throws(
    () =>
      parseHFConfig({
        ...base,
        rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 1e15 },
      }),
    (e: Error) => e instanceof FormatError && /rope_scaling\.original_max_position_embeddings/.test(e.message),
  );
  assert.throws(
    () => parseHFConfig({ ...base, rope_scaling: { rope_type: 'linear', factor: 1e300 } }),
    (e: Error) => e instanceof FormatError && /rope_scaling\.factor/.test(e.message),
  );
});
