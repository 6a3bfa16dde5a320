// HF config.json (llama, mistral, qwen2, qwen3 families) -> ModelConfig, and the list of weights
// such a model must have, in HF naming, so a loader can report what is missing or wrong.

import { FormatError, describe } from '../errors.js';
import type { DType } from '../dtype.js';

export type ModelFamily = 'llama' | 'mistral' | 'qwen2' | 'qwen3';
export const MODEL_FAMILIES: readonly ModelFamily[] = ['llama', 'mistral', 'qwen2', 'qwen3'];

/**
 * Qwen3 normalises every query and key head (RMSNorm over head_dim, weights
 * self_attn.q_norm / k_norm [head_dim], eps rms_norm_eps) after the projections, before RoPE.
 */
export function hasQkNorm(cfg: Pick<ModelConfig, 'family'>): boolean {
  return cfg.family === 'qwen3';
}

/** HF names of a Qwen3 layer's query / key norm weights. */
export function qkNormWeightName(layer: number, which: 'q_norm' | 'k_norm'): string {
  return `model.layers.${layer}.self_attn.${which}.weight`;
}

/** The linear layers of a decoder layer, by their HF names: the layers LoRA experts attach to. */
export const LINEAR_MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LinearModule = (typeof LINEAR_MODULES)[number];

/** The submodule of a decoder layer that holds `m`. */
export function moduleParent(m: LinearModule): 'self_attn' | 'mlp' {
  return m === 'gate_proj' || m === 'up_proj' || m === 'down_proj' ? 'mlp' : 'self_attn';
}

/** RoPE frequency scaling. llama3: Llama 3.1's by-wavelength interpolation; linear: positions divided by `factor`. */
export type RopeScaling =
  | { type: 'linear'; factor: number }
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number };

/** Our normalized model config. */
export interface ModelConfig {
  family: ModelFamily;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  /** Per-head size; usually hiddenSize / numHeads, but a config may set it (e.g. Mistral Nemo: 128 with 5120 / 32). */
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  maxPositionEmbeddings: number;
  /** lm_head shares embed_tokens' weight (no lm_head.weight in the files). */
  tieWordEmbeddings: boolean;
  /** q, k and v projections have biases (always for qwen2; llama when attention_bias). */
  attentionBias: boolean;
  /** o_proj has a bias (llama with attention_bias: true). */
  outputBias: boolean;
  /** gate, up and down projections have biases (llama mlp_bias). */
  mlpBias: boolean;
  /** Sliding-window attention size, or null for full attention. */
  slidingWindow: number | null;
  bosTokenId: number | null;
  eosTokenIds: number[];
  /** The dtype the checkpoint was saved in (torch_dtype), or null when not given. */
  torchDtype: DType | null;
}

const ARCHITECTURES: Readonly<Record<string, ModelFamily>> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
};

/** transformers' defaults for fields a config.json may leave out. */
const DEFAULT_MAX_POSITIONS: Record<ModelFamily, number> = { llama: 2048, mistral: 4096 * 32, qwen2: 32768, qwen3: 32768 };

/** Positions are i32 on the device and KV caches grow toward them: a context longer than this is refused (2^30, as kv_cache's MAX_POSITION). */
export const MAX_POSITIONS = 2 ** 30;

const TORCH_DTYPES: Readonly<Record<string, DType>> = { float32: 'f32', float16: 'f16', bfloat16: 'bf16' };

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Field readers that throw FormatError naming the file and the field. */
class Fields {
  constructor(
    readonly file: string,
    readonly json: Record<string, unknown>,
    readonly prefix = '',
  ) {}

  fail(key: string, what: string): never {
    throw new FormatError(`${this.file}: ${this.prefix}${key} ${what}`);
  }

  has(key: string): boolean {
    return this.json[key] !== undefined && this.json[key] !== null;
  }

  int(key: string, opts: { default?: number; min?: number; max?: number } = {}): number {
    const v = this.json[key];
    if (v === undefined || v === null) {
      if (opts.default !== undefined) return opts.default;
      this.fail(key, 'is missing');
    }
    const min = opts.min ?? 1;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
      this.fail(key, `must be an integer >= ${min}, got ${describe(v)}`);
    }
    if (opts.max !== undefined && v > opts.max) this.fail(key, `must be at most ${opts.max}, got ${v}`);
    return v;
  }

  num(key: string, opts: { default?: number; positive?: boolean } = {}): number {
    const v = this.json[key];
    if (v === undefined || v === null) {
      if (opts.default !== undefined) return opts.default;
      this.fail(key, 'is missing');
    }
    if (typeof v !== 'number' || !Number.isFinite(v) || ((opts.positive ?? true) && v <= 0)) {
      this.fail(key, `must be a ${(opts.positive ?? true) ? 'positive ' : ''}number, got ${describe(v)}`);
    }
    return v;
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.json[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'boolean') this.fail(key, `must be true or false, got ${describe(v)}`);
    return v;
  }

  str(key: string): string | null {
    const v = this.json[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'string') this.fail(key, `must be a string, got ${describe(v)}`);
    return v;
  }
}

/** Rotary inverse frequencies above this are refused (θ ≥ 1 and factor ≥ 1 keep them ≤ 1). */
const MAX_INV_FREQ = 1e6;

/** rms_norm_eps is used in f32: it must stay a positive f32 (1e-300 rounds to 0, and an all-zero row is then 0/0), and at most 1. */
function rmsNormEps(f: Fields): number {
  const eps = f.num('rms_norm_eps', { default: 1e-6 });
  if (!(Math.fround(eps) > 0) || eps > 1) f.fail('rms_norm_eps', `must be in [1.2e-38, 1] (a positive f32), got ${eps}`);
  return eps;
}

function parseRopeScaling(f: Fields): RopeScaling | null {
  const type = f.str('rope_type') ?? f.str('type');
  if (type === null || type === 'default') return null;
  const factor = f.num('factor');
  if (factor > 1e6) f.fail('factor', `must be at most 1e6, got ${factor}`);
  if (type === 'linear') return { type, factor };
  if (type === 'llama3') {
    const lowFreqFactor = f.num('low_freq_factor');
    const highFreqFactor = f.num('high_freq_factor');
    if (highFreqFactor <= lowFreqFactor) {
      f.fail('high_freq_factor', `must exceed low_freq_factor (${lowFreqFactor}), got ${highFreqFactor}`);
    }
    return {
      type,
      factor,
      lowFreqFactor,
      highFreqFactor,
      originalMaxPositionEmbeddings: f.int('original_max_position_embeddings', { max: MAX_POSITIONS }),
    };
  }
  return f.fail('rope_type', `'${type}' is not supported (supported: linear, llama3)`);
}

/**
 * Parses an HF config.json (object or JSON text) of the llama, mistral, qwen2 or qwen3 family.
 * Required: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
 * vocab_size; the rest default as transformers does. Throws FormatError naming `file` and
 * the field for anything missing, malformed, unsupported or inconsistent.
 */
export function parseHFConfig(json: unknown, file = 'config.json'): ModelConfig {
  if (typeof json === 'string') {
    try {
      json = JSON.parse(json);
    } catch (e) {
      throw new FormatError(`${file}: not valid JSON: ${(e as Error).message}`);
    }
  }
  if (!isPlainObject(json)) throw new FormatError(`${file}: expected a JSON object, got ${describe(json)}`);
  const f: Fields = new Fields(file, json);

  // Family: model_type, else the architecture class.
  const archs = json.architectures;
  if (archs !== undefined && archs !== null && (!Array.isArray(archs) || !archs.every((a) => typeof a === 'string'))) {
    f.fail('architectures', `must be a list of class names, got ${describe(archs)}`);
  }
  const archList = (archs as string[] | null | undefined) ?? [];
  const modelType = f.str('model_type');
  let family: ModelFamily;
  if (modelType !== null) {
    if (!(MODEL_FAMILIES as readonly string[]).includes(modelType)) {
      f.fail('model_type', `'${modelType}' is not supported (supported: ${MODEL_FAMILIES.join(', ')})`);
    }
    family = modelType as ModelFamily;
  } else {
    const known = archList.find((a) => Object.hasOwn(ARCHITECTURES, a));
    if (!known)
      f.fail(
        'model_type',
        `is missing and architectures ${describe(archList)} name no supported class (${Object.keys(ARCHITECTURES).join(', ')})`,
      );
    family = ARCHITECTURES[known]!;
  }
  // A config for e.g. LlamaForSequenceClassification has a score head instead of lm_head.
  const notLM = archList.find((a) => !a.endsWith('ForCausalLM'));
  if (notLM) f.fail('architectures', `names '${notLM}', not a causal LM (expected e.g. ${Object.keys(ARCHITECTURES).join(', ')})`);

  const act = f.str('hidden_act') ?? 'silu';
  if (act !== 'silu' && act !== 'swish') f.fail('hidden_act', `'${act}' is not supported (the MLP is SwiGLU: silu)`);

  const hiddenSize = f.int('hidden_size');
  const intermediateSize = f.int('intermediate_size');
  const numLayers = f.int('num_hidden_layers');
  const numHeads = f.int('num_attention_heads');
  let headDim: number;
  if (f.has('head_dim')) {
    headDim = f.int('head_dim');
  } else if (family === 'qwen3') {
    headDim = 128; // Qwen3Config's default: q/k/v width is heads × 128, whatever hidden_size is
  } else {
    if (hiddenSize % numHeads !== 0) {
      f.fail('num_attention_heads', `(${numHeads}) must divide hidden_size (${hiddenSize}) when head_dim is not given`);
    }
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) f.fail('head_dim', `must be even for rotary embeddings, got ${headDim}`);
  const numKvHeads = f.int('num_key_value_heads', { default: numHeads });
  if (numHeads % numKvHeads !== 0) {
    f.fail('num_key_value_heads', `(${numKvHeads}) must divide num_attention_heads (${numHeads})`);
  }
  const vocabSize = f.int('vocab_size');

  // Rotary embeddings: rope_theta / rope_scaling, or transformers v5's rope_parameters holding both.
  let ropeTheta = 10000;
  let ropeScaling: RopeScaling | null = null;
  const rp = json.rope_parameters;
  if (isPlainObject(rp)) {
    const rf = new Fields(file, rp, 'rope_parameters.');
    ropeTheta = rf.num('rope_theta', { default: ropeTheta });
    ropeScaling = parseRopeScaling(rf);
  } else if (rp !== undefined && rp !== null) {
    f.fail('rope_parameters', `must be an object, got ${describe(rp)}`);
  }
  ropeTheta = f.num('rope_theta', { default: ropeTheta });
  const rs = json.rope_scaling;
  if (isPlainObject(rs)) ropeScaling = parseRopeScaling(new Fields(file, rs, 'rope_scaling.'));
  else if (rs !== undefined && rs !== null) f.fail('rope_scaling', `must be an object or null, got ${describe(rs)}`);

  // The kernels rotate by position × inverse frequency in f32: a θ below 1 or a scaling factor
  // near 0 (1e-300) gives ∞ there, and every logit is NaN.
  // θ^(−2i/D) is largest at i = 0 (θ ≥ 1) or i = D/2 − 1 (θ < 1); scaling divides by at most factor.
  // (Computed, not listed: head_dim is still only a claim here.)
  const worst = Math.max(1, Math.pow(ropeTheta, -(headDim - 2) / headDim)) * (ropeScaling ? Math.max(1, 1 / ropeScaling.factor) : 1);
  if (!(worst <= MAX_INV_FREQ)) {
    const field = ropeScaling
      ? `${isPlainObject(rp) && !isPlainObject(rs) ? 'rope_parameters' : 'rope_scaling'}.factor (${ropeScaling.factor}) or rope_theta`
      : 'rope_theta';
    f.fail(field, `(${ropeTheta}) gives a rotary frequency of ${worst}, more than ${MAX_INV_FREQ} (θ is normally ≥ 10000 and factor ≥ 1)`);
  }

  // Biases: qwen2 always has q/k/v biases and none elsewhere; llama's and qwen3's attention_bias
  // switches q/k/v and o together (qwen3 ships without); mistral has none.
  const llamaBias = (family === 'llama' || family === 'qwen3') && f.bool('attention_bias', false);
  const attentionBias = family === 'qwen2' || llamaBias;
  const mlpBias = family === 'llama' && f.bool('mlp_bias', false);

  let slidingWindow: number | null = null;
  if (family === 'mistral' && f.has('sliding_window')) slidingWindow = f.int('sliding_window');
  if ((family === 'qwen2' || family === 'qwen3') && f.bool('use_sliding_window', false) && f.has('sliding_window'))
    slidingWindow = f.int('sliding_window');

  const bosTokenId = f.has('bos_token_id') ? f.int('bos_token_id', { min: 0 }) : null;
  let eosTokenIds: number[] = [];
  const eos = json.eos_token_id;
  if (Array.isArray(eos)) {
    eosTokenIds = eos.map((v, i) => new Fields(file, { [`eos_token_id[${i}]`]: v }).int(`eos_token_id[${i}]`, { min: 0 }));
  } else if (eos !== undefined && eos !== null) {
    eosTokenIds = [f.int('eos_token_id', { min: 0 })];
  }
  if (bosTokenId !== null && bosTokenId >= vocabSize)
    f.fail('bos_token_id', `${bosTokenId} is outside the vocabulary (vocab_size ${vocabSize})`);
  for (const id of eosTokenIds) {
    if (id >= vocabSize) f.fail('eos_token_id', `${id} is outside the vocabulary (vocab_size ${vocabSize})`);
  }

  // transformers v5 writes "dtype" where older versions wrote "torch_dtype".
  const dtKey = f.has('torch_dtype') ? 'torch_dtype' : 'dtype';
  const dt = f.str(dtKey);
  if (dt !== null && !Object.hasOwn(TORCH_DTYPES, dt))
    f.fail(dtKey, `'${dt}' is not supported (supported: ${Object.keys(TORCH_DTYPES).join(', ')})`);

  return {
    family,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    rmsNormEps: rmsNormEps(f),
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings: f.int('max_position_embeddings', { default: DEFAULT_MAX_POSITIONS[family], max: MAX_POSITIONS }),
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    attentionBias,
    outputBias: llamaBias,
    mlpBias,
    slidingWindow,
    bosTokenId,
    eosTokenIds,
    torchDtype: dt === null ? null : TORCH_DTYPES[dt]!,
  };
}

/**
 * Checks the config's sizes against the tensors a checkpoint actually holds (name -> shape, read
 * from the safetensors headers), before anything is allocated by them: a config that claims
 * 10⁹ layers or a vocabulary its embeddings do not have is a FormatError naming `file` and the
 * field, not a loop or an allocation sized by the claim.
 */
export function checkConfigAgainstWeights(
  cfg: ModelConfig,
  shapes: ReadonlyMap<string, readonly number[]>,
  file = 'config.json',
  weightsWhere = 'the weights',
): void {
  const fail = (field: string, what: string): never => {
    throw new FormatError(`${file}: ${field} ${what} (checked against ${weightsWhere})`);
  };
  const layers = new Set<number>();
  for (const name of shapes.keys()) {
    const m = /^model\.layers\.(\d{1,9})\./.exec(name);
    if (m) layers.add(Number(m[1]));
  }
  if (cfg.numLayers > layers.size)
    fail('num_hidden_layers', `is ${cfg.numLayers}, but the weights hold ${layers.size} layer${layers.size === 1 ? '' : 's'}`);
  let top = -1;
  for (const l of layers) if (l > top) top = l;
  if (top >= cfg.numLayers) fail('num_hidden_layers', `is ${cfg.numLayers}, but the weights hold layer ${top} (model.layers.${top}.*)`);
  const dims = (name: string): readonly number[] | undefined => {
    const s = shapes.get(name);
    return s && s.length === 2 ? s : undefined;
  };
  const embed = dims('model.embed_tokens.weight');
  // Blame a config field only when the tensor agrees on its other axis; a tensor wrong on both
  // (e.g. transposed) is the tensor's error, reported by compareWeights with its file.
  if (embed) {
    if (embed[1] === cfg.hiddenSize && embed[0] !== cfg.vocabSize)
      fail('vocab_size', `is ${cfg.vocabSize}, but model.embed_tokens.weight has ${embed[0]} rows`);
    if (embed[0] === cfg.vocabSize && embed[1] !== cfg.hiddenSize)
      fail('hidden_size', `is ${cfg.hiddenSize}, but model.embed_tokens.weight has ${embed[1]} columns`);
  }
  const q = dims(linearWeightName(0, 'q_proj'));
  if (q && q[1] === cfg.hiddenSize && q[0] !== cfg.numHeads * cfg.headDim) {
    fail('num_attention_heads', `× head_dim is ${cfg.numHeads} × ${cfg.headDim}, but ${linearWeightName(0, 'q_proj')} has ${q[0]} rows`);
  }
  const k = dims(linearWeightName(0, 'k_proj'));
  if (k && k[1] === cfg.hiddenSize && k[0] !== cfg.numKvHeads * cfg.headDim) {
    fail('num_key_value_heads', `× head_dim is ${cfg.numKvHeads} × ${cfg.headDim}, but ${linearWeightName(0, 'k_proj')} has ${k[0]} rows`);
  }
  const g = dims(linearWeightName(0, 'gate_proj'));
  if (g && g[1] === cfg.hiddenSize && g[0] !== cfg.intermediateSize)
    fail('intermediate_size', `is ${cfg.intermediateSize}, but ${linearWeightName(0, 'gate_proj')} has ${g[0]} rows`);
}

/** [out, in] of a linear layer's weight (HF layout: y = x·Wᵀ). */
export function linearShape(cfg: ModelConfig, m: LinearModule): [number, number] {
  const q = cfg.numHeads * cfg.headDim;
  const kv = cfg.numKvHeads * cfg.headDim;
  switch (m) {
    case 'q_proj':
      return [q, cfg.hiddenSize];
    case 'k_proj':
    case 'v_proj':
      return [kv, cfg.hiddenSize];
    case 'o_proj':
      return [cfg.hiddenSize, q];
    case 'gate_proj':
    case 'up_proj':
      return [cfg.intermediateSize, cfg.hiddenSize];
    case 'down_proj':
      return [cfg.hiddenSize, cfg.intermediateSize];
  }
}

/** HF name of a linear layer's weight (or bias): `model.layers.{i}.self_attn.q_proj.weight`. */
export function linearWeightName(layer: number, m: LinearModule, what: 'weight' | 'bias' = 'weight'): string {
  return `model.layers.${layer}.${moduleParent(m)}.${m}.${what}`;
}

export interface WeightSpec {
  name: string;
  shape: number[];
}

/** Every tensor the checkpoint of `cfg` must hold, in HF naming and layer order. */
export function expectedWeights(cfg: ModelConfig): WeightSpec[] {
  const out: WeightSpec[] = [{ name: 'model.embed_tokens.weight', shape: [cfg.vocabSize, cfg.hiddenSize] }];
  const hasBias = (m: LinearModule) => (m === 'o_proj' ? cfg.outputBias : moduleParent(m) === 'mlp' ? cfg.mlpBias : cfg.attentionBias);
  for (let i = 0; i < cfg.numLayers; i++) {
    out.push({ name: `model.layers.${i}.input_layernorm.weight`, shape: [cfg.hiddenSize] });
    for (const m of LINEAR_MODULES) {
      const shape = linearShape(cfg, m);
      out.push({ name: linearWeightName(i, m), shape });
      if (hasBias(m)) out.push({ name: linearWeightName(i, m, 'bias'), shape: [shape[0]] });
      if (m === 'o_proj') {
        if (hasQkNorm(cfg)) {
          out.push({ name: qkNormWeightName(i, 'q_norm'), shape: [cfg.headDim] });
          out.push({ name: qkNormWeightName(i, 'k_norm'), shape: [cfg.headDim] });
        }
        out.push({ name: `model.layers.${i}.post_attention_layernorm.weight`, shape: [cfg.hiddenSize] });
      }
    }
  }
  out.push({ name: 'model.norm.weight', shape: [cfg.hiddenSize] });
  if (!cfg.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [cfg.vocabSize, cfg.hiddenSize] });
  return out;
}

export interface WeightReport {
  missing: WeightSpec[];
  /** Names present but not expected (e.g. rotary_emb.inv_freq buffers in old checkpoints, or lm_head.weight of a tied model). */
  extra: string[];
  wrongShape: { name: string; expected: number[]; actual: number[] }[];
}

/** Compares what a checkpoint holds (name -> shape) with `expected`. */
export function compareWeights(
  expected: readonly WeightSpec[],
  actual: ReadonlyMap<string, readonly number[]> | Iterable<[string, readonly number[]]>,
): WeightReport {
  const have =
    actual instanceof Map ? (actual as ReadonlyMap<string, readonly number[]>) : new Map(actual as Iterable<[string, readonly number[]]>);
  const report: WeightReport = { missing: [], extra: [], wrongShape: [] };
  const want = new Set<string>();
  for (const w of expected) {
    want.add(w.name);
    const shape = have.get(w.name);
    if (!shape) report.missing.push(w);
    else if (shape.length !== w.shape.length || shape.some((d, i) => d !== w.shape[i])) {
      report.wrongShape.push({ name: w.name, expected: [...w.shape], actual: [...shape] });
    }
  }
  for (const name of have.keys()) if (!want.has(name)) report.extra.push(name);
  report.extra.sort();
  return report;
}
