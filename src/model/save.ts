// Saving a model as an HF model directory (DESIGN §6): config.json in transformers' own
// layout (llama, mistral, qwen2, qwen3), the weights as model.safetensors (or HF-style shards with
// model.safetensors.index.json), generation_config.json and, when given, the tokenizer files.
//
// The weights are read back from the device in their stored dtype (f32, f16 or bf16, bit for
// bit; no conversion), under their HF names; a tied lm_head is not written (transformers ties
// it to model.embed_tokens.weight, as it saves tied models itself). The directory is written
// as a whole (replaceDirAtomically): a reader sees the complete old directory or the complete
// new one. mote-written.json marks it as mote's; a non-empty folder without it (any HF model
// folder, including one saved by a mote older than the marker: config.json proves nothing)
// is refused unless opts.overwrite, and even then none of its files is deleted: those mote
// replaces, and a stale shard index or weights file that would contradict the new weights,
// are renamed to <name>.before-mote (src/io/atomic_dir.ts).

import { ArgumentError, describe } from '../errors.js';
import type { DType } from '../dtype.js';
import type { Tensor } from '../tensor.js';
import { MODEL_FAMILIES, expectedWeights, type ModelConfig, type ModelFamily } from './config.js';
import { LlamaModel } from './llama.js';
import { baseWeights } from './llama_backward.js';
import { INDEX_FILE, writeShardedTo, type WritableTensor } from '../io/safetensors.js';
import { openSink, type FileSink } from '../io/sink.js';
import { overwriteOption } from '../io/atomic_dir.js';
import { jsonText } from '../io/files.js';
import { MoteTokenizer } from '../io/tokenizer.js';

const ARCHITECTURE: Readonly<Record<ModelFamily, string>> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
  qwen3: 'Qwen3ForCausalLM',
};

const TORCH_DTYPE: Readonly<Record<string, string>> = { f32: 'float32', f16: 'float16', bf16: 'bfloat16' };

/** The transformers version whose config layout we write (informational, as transformers writes it). */
const TRANSFORMERS_VERSION = '4.46.0';

function fail(field: string, what: string): never {
  throw new ArgumentError(`hfConfigJson: cfg.${field}: ${what}`);
}

function posInt(field: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) fail(field, `expected a positive integer, got ${describe(v)}`);
  return v;
}

function posNum(field: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(field, `expected a positive number, got ${describe(v)}`);
  return v;
}

function bool(field: string, v: unknown): boolean {
  if (typeof v !== 'boolean') fail(field, `expected true or false, got ${describe(v)}`);
  return v;
}

/**
 * The transformers-style config.json of `cfg` (llama, mistral, qwen2 or qwen3 family): what
 * `save_pretrained` writes for such a model, so that transformers loads it and
 * parseHFConfig(hfConfigJson(cfg)) gives back an equal ModelConfig. Throws ArgumentError
 * naming the field for a config the family cannot express (e.g. a mistral with biases, a
 * llama whose o_proj bias differs from its q/k/v bias, a sliding window on llama).
 */
export function hfConfigJson(cfg: ModelConfig): Record<string, unknown> {
  if (typeof cfg !== 'object' || cfg === null) throw new ArgumentError(`hfConfigJson: cfg: expected a ModelConfig, got ${describe(cfg)}`);
  const family = cfg.family;
  if (!(MODEL_FAMILIES as readonly string[]).includes(family))
    fail('family', `expected one of ${MODEL_FAMILIES.join(', ')}, got ${describe(family)}`);
  const hidden = posInt('hiddenSize', cfg.hiddenSize);
  const heads = posInt('numHeads', cfg.numHeads);
  const kvHeads = posInt('numKvHeads', cfg.numKvHeads);
  const headDim = posInt('headDim', cfg.headDim);
  if (headDim % 2 !== 0) fail('headDim', `must be even for rotary embeddings, got ${headDim}`);
  if (heads % kvHeads !== 0) fail('numKvHeads', `(${kvHeads}) must divide numHeads (${heads})`);
  const vocab = posInt('vocabSize', cfg.vocabSize);
  const attentionBias = bool('attentionBias', cfg.attentionBias);
  const outputBias = bool('outputBias', cfg.outputBias);
  const mlpBias = bool('mlpBias', cfg.mlpBias);
  const tied = bool('tieWordEmbeddings', cfg.tieWordEmbeddings);

  const out: Record<string, unknown> = {
    architectures: [ARCHITECTURE[family]],
    model_type: family,
    attention_dropout: 0.0,
    hidden_act: 'silu',
    hidden_size: hidden,
    initializer_range: 0.02,
    intermediate_size: posInt('intermediateSize', cfg.intermediateSize),
    max_position_embeddings: posInt('maxPositionEmbeddings', cfg.maxPositionEmbeddings),
    num_attention_heads: heads,
    num_hidden_layers: posInt('numLayers', cfg.numLayers),
    num_key_value_heads: kvHeads,
    rms_norm_eps: posNum('rmsNormEps', cfg.rmsNormEps),
    rope_theta: posNum('ropeTheta', cfg.ropeTheta),
    rope_scaling: ropeScalingJson(cfg),
    tie_word_embeddings: tied,
    use_cache: true,
    vocab_size: vocab,
  };
  // head_dim: llama and mistral configs carry it; qwen2 only when it is not hidden / heads.
  if (family !== 'qwen2' || headDim * heads !== hidden) out.head_dim = headDim;

  const sw = cfg.slidingWindow;
  if (sw !== null && (typeof sw !== 'number' || !Number.isSafeInteger(sw) || sw < 1))
    fail('slidingWindow', `expected null or a positive integer, got ${describe(sw)}`);
  switch (family) {
    case 'llama':
      if (attentionBias !== outputBias)
        fail(
          'outputBias',
          `a llama config has one attention_bias for q/k/v and o_proj; got attentionBias ${attentionBias}, outputBias ${outputBias}`,
        );
      if (sw !== null) fail('slidingWindow', `llama has no sliding-window attention, got ${sw}`);
      out.attention_bias = attentionBias;
      out.mlp_bias = mlpBias;
      out.pretraining_tp = 1;
      break;
    case 'mistral':
      if (attentionBias || outputBias || mlpBias)
        fail(attentionBias ? 'attentionBias' : outputBias ? 'outputBias' : 'mlpBias', 'mistral has no biases');
      out.sliding_window = sw;
      break;
    case 'qwen2':
      if (!attentionBias) fail('attentionBias', 'qwen2 always has q/k/v biases');
      if (outputBias || mlpBias) fail(outputBias ? 'outputBias' : 'mlpBias', 'qwen2 has biases on q/k/v only');
      out.use_sliding_window = sw !== null;
      out.sliding_window = sw;
      out.max_window_layers = cfg.numLayers;
      break;
    case 'qwen3':
      if (attentionBias !== outputBias)
        fail(
          'outputBias',
          `a qwen3 config has one attention_bias for q/k/v and o_proj; got attentionBias ${attentionBias}, outputBias ${outputBias}`,
        );
      if (mlpBias) fail('mlpBias', 'qwen3 has no MLP biases');
      out.attention_bias = attentionBias;
      out.use_sliding_window = sw !== null;
      out.sliding_window = sw;
      out.max_window_layers = cfg.numLayers;
      break;
  }

  const bos = cfg.bosTokenId;
  if (bos !== null && (typeof bos !== 'number' || !Number.isSafeInteger(bos) || bos < 0 || bos >= vocab))
    fail('bosTokenId', `expected null or an id in [0, ${vocab}), got ${describe(bos)}`);
  if (!Array.isArray(cfg.eosTokenIds)) fail('eosTokenIds', `expected a list of ids, got ${describe(cfg.eosTokenIds)}`);
  for (const [i, id] of cfg.eosTokenIds.entries()) {
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0 || id >= vocab)
      fail(`eosTokenIds[${i}]`, `expected an id in [0, ${vocab}), got ${describe(id)}`);
  }
  out.bos_token_id = bos;
  out.eos_token_id = cfg.eosTokenIds.length === 0 ? null : cfg.eosTokenIds.length === 1 ? cfg.eosTokenIds[0] : [...cfg.eosTokenIds];
  if (cfg.torchDtype !== null) {
    const dt = TORCH_DTYPE[cfg.torchDtype];
    if (!dt) fail('torchDtype', `expected null, 'f32', 'f16' or 'bf16', got ${describe(cfg.torchDtype)}`);
    out.torch_dtype = dt;
  }
  out.transformers_version = TRANSFORMERS_VERSION;
  return out;
}

function ropeScalingJson(cfg: ModelConfig): Record<string, unknown> | null {
  const s = cfg.ropeScaling;
  if (s === null) return null;
  if (typeof s !== 'object') fail('ropeScaling', `expected null or { type, factor, ... }, got ${describe(s)}`);
  // Both keys: transformers ≥ 4.43 reads rope_type, older versions read type.
  if (s.type === 'linear') return { rope_type: 'linear', type: 'linear', factor: posNum('ropeScaling.factor', s.factor) };
  if (s.type === 'llama3') {
    return {
      rope_type: 'llama3',
      factor: posNum('ropeScaling.factor', s.factor),
      low_freq_factor: posNum('ropeScaling.lowFreqFactor', s.lowFreqFactor),
      high_freq_factor: posNum('ropeScaling.highFreqFactor', s.highFreqFactor),
      original_max_position_embeddings: posInt('ropeScaling.originalMaxPositionEmbeddings', s.originalMaxPositionEmbeddings),
    };
  }
  return fail('ropeScaling.type', `expected 'linear' or 'llama3', got ${describe((s as { type?: unknown }).type)}`);
}

export interface SaveModelOptions {
  /** Also write this tokenizer's files (tokenizer.json, tokenizer_config.json, ...). */
  tokenizer?: MoteTokenizer;
  /** Largest shard in bytes before the weights are split into HF-style shards. Default 5 GB. */
  maxShardBytes?: number;
  /** Write into a non-empty folder mote did not write (its files are kept, never deleted). */
  overwrite?: boolean;
}

/** Weight files of an HF model folder: a foreign one left beside new weights would be read instead of them (or mixed in). */
function weightFileConflict(rel: string): boolean {
  return rel === INDEX_FILE || rel === 'model.safetensors' || /^model-\d+-of-\d+\.safetensors$/.test(rel);
}

/** Reads a weight back from the device in its stored dtype, bit for bit, under its HF shape. */
async function hostCopy(t: Tensor, shape: readonly number[]): Promise<WritableTensor> {
  const bytes = await t.backend.readStorage(t.storage, t.byteLength);
  const dtype: DType = t.dtype;
  const n = t.size;
  const data =
    dtype === 'f32' ? new Float32Array(bytes, 0, n) : dtype === 'i32' ? new Int32Array(bytes, 0, n) : new Uint16Array(bytes, 0, n);
  return { dtype, shape: [...shape], data };
}

/**
 * Saves `model` as an HF model directory `dir`: config.json (hfConfigJson, torch_dtype from
 * the stored dtype of the embeddings), generation_config.json, model.safetensors (or shards
 * past maxShardBytes, with model.safetensors.index.json) and, with opts.tokenizer, its files.
 * The directory is replaced as a whole, atomically; an existing non-empty `dir` that mote did
 * not write is refused with ArgumentError unless opts.overwrite (see the header: nothing of
 * it is deleted). loadModel(dir) gives back the same weights in the same dtypes. `dir` may
 * also be a FileSink (src/io/sink.ts: an OPFS folder, or memory for a download).
 */
export async function saveModel(model: LlamaModel, dir: string | FileSink, opts: SaveModelOptions = {}): Promise<void> {
  const op = 'saveModel';
  if (!(model instanceof LlamaModel)) throw new ArgumentError(`${op}: model: expected a LlamaModel, got ${describe(model)}`);
  if (model.disposed) throw new ArgumentError(`${op}: model: used after dispose()`);
  if (typeof dir === 'string' && dir === '') throw new ArgumentError(`${op}: dir: expected a directory path, got ${describe(dir)}`);
  const sink = openSink(dir, op);
  if (!opts || typeof opts !== 'object')
    throw new ArgumentError(`${op}: opts: expected { tokenizer?, maxShardBytes?, overwrite? }, got ${describe(opts)}`);
  const tok = opts.tokenizer;
  if (tok !== undefined && !(tok instanceof MoteTokenizer))
    throw new ArgumentError(`${op}: tokenizer: expected a MoteTokenizer, got ${describe(tok)}`);
  if (tok !== undefined && tok.vocabSize > model.config.vocabSize) {
    throw new ArgumentError(
      `${op}: tokenizer: has ${tok.vocabSize} ids but the model's vocabulary has ${model.config.vocabSize} (resize the model's embeddings first)`,
    );
  }
  const overwrite = overwriteOption(op, opts.overwrite);
  const maxShardBytes = opts.maxShardBytes ?? 5e9;
  if (typeof maxShardBytes !== 'number' || !(maxShardBytes > 0))
    throw new ArgumentError(`${op}: maxShardBytes: expected a positive number, got ${describe(maxShardBytes)}`);

  const weights = baseWeights(model);
  const config = hfConfigJson({ ...model.config, torchDtype: model.weights.embedTokens.dtype as ModelConfig['torchDtype'] });
  await model.backend.sync();
  const tensors = new Map<string, WritableTensor>();
  // HF shapes: biases live on the device as [1, out] rows, the files hold them as [out].
  const shapes = new Map(expectedWeights(model.config).map((w) => [w.name, w.shape]));
  for (const [name, t] of weights) {
    const shape = shapes.get(name);
    if (!shape || shape.reduce((a, b) => a * b, 1) !== t.size)
      throw new ArgumentError(`${op}: model: weight '${name}' [${t.shape.join(', ')}] does not fit the model's config`);
    tensors.set(name, await hostCopy(t, shape));
  }

  const gen: Record<string, unknown> = { _from_model_config: true, transformers_version: TRANSFORMERS_VERSION };
  if (config.bos_token_id !== null) gen.bos_token_id = config.bos_token_id;
  if (config.eos_token_id !== null) gen.eos_token_id = config.eos_token_id;

  await sink.replaceDir(op, { kind: 'hf-model', overwrite, conflicts: weightFileConflict }, async (w) => {
    await writeShardedTo(w, tensors, { maxShardBytes, metadata: { format: 'pt' } });
    await w.write('generation_config.json', jsonText(gen));
    await tok?.writeTo(w);
    // config.json last: it marks the folder as a model directory.
    await w.write('config.json', jsonText(config));
  });
}
