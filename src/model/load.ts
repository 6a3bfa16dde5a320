// Loading a LLaMA-family model (llama, mistral, qwen2, qwen3): an HF model directory or host
// tensors in HF naming, every tensor's name, shape and dtype checked against the config
// before anything is uploaded, and nothing left allocated on the backend when loading fails.

import type { Tensor } from '../tensor.js';
import type { Backend } from '../backend/backend.js';
import { WEIGHT_DTYPES, hostToF32 } from '../dtype.js';
import { ArgumentError, FormatError, describe } from '../errors.js';
import {
  LINEAR_MODULES,
  checkConfigAgainstWeights,
  compareWeights,
  expectedWeights,
  hasQkNorm,
  linearShape,
  linearWeightName,
  parseHFConfig,
  qkNormWeightName,
  type LinearModule,
  type ModelConfig,
  type WeightReport,
} from './config.js';
import { openSource, type SourceInput } from '../io/source.js';
import { SourceWeights, type HostTensor } from '../io/safetensors.js';
import { checkFinite } from '../io/finite.js';
import { ropeInvFreq } from './rope_freq.js';
import { LlamaModel, type LlamaLayerWeights } from './llama.js';

export type WeightDType = 'f32' | 'f16' | 'bf16';

/** config.json is a few KiB; anything past this is not a model config. */
const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

export interface LoadModelOptions {
  backend: Backend;
  /** Convert every weight to this dtype on upload (default: keep each tensor's stored dtype). */
  dtype?: WeightDType;
}

const NAMES = {
  embed: 'model.embed_tokens.weight',
  norm: 'model.norm.weight',
  lmHead: 'lm_head.weight',
  inputNorm: (l: number) => `model.layers.${l}.input_layernorm.weight`,
  postNorm: (l: number) => `model.layers.${l}.post_attention_layernorm.weight`,
};

/** Extra tensors transformers itself ignores when loading. */
function ignorable(name: string, cfg: ModelConfig, shape: readonly number[]): boolean {
  if (/^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/.test(name)) return true;
  // A tied checkpoint that still holds lm_head.weight: transformers ties it to the embeddings.
  return cfg.tieWordEmbeddings && name === NAMES.lmHead && shape.length === 2 && shape[0] === cfg.vocabSize && shape[1] === cfg.hiddenSize;
}

/** A source of host tensors by name (a model directory or a map), with the file each is in. */
interface WeightSource {
  names(): string[];
  shape(name: string): { shape: number[]; storedDType: string; file: string };
  /** Where a missing tensor was looked for. */
  where: string;
}

function describeProblems(src: WeightSource, report: WeightReport, extra: string[]): string {
  const lines: string[] = [];
  for (const w of report.missing) lines.push(`${src.where}: tensor '${w.name}' is missing (expected shape [${w.shape.join(', ')}])`);
  for (const w of report.wrongShape)
    lines.push(`${src.shape(w.name).file}: tensor '${w.name}' has shape [${w.actual.join(', ')}], expected [${w.expected.join(', ')}]`);
  for (const n of extra) lines.push(`${src.shape(n).file}: tensor '${n}' is not part of this model (unexpected)`);
  const shown = lines.slice(0, 8);
  if (lines.length > shown.length) shown.push(`… and ${lines.length - shown.length} more`);
  return shown.join('; ');
}

function upload(backend: Backend, h: HostTensor, shape: readonly number[], want: WeightDType | undefined): Tensor {
  const dt = want ?? h.dtype;
  if (dt === h.dtype) return backend.tensor(h.data, shape, dt);
  return backend.tensor(hostToF32(h.dtype, h.data), shape, dt);
}

function checkOptions(op: string, opts: LoadModelOptions): void {
  if (!opts || typeof opts !== 'object') throw new ArgumentError(`${op}: options: expected { backend, dtype? }, got ${describe(opts)}`);
  const b = opts.backend as Backend | undefined;
  if (!b || typeof b.tensor !== 'function' || typeof b.allocStorage !== 'function')
    throw new ArgumentError(`${op}: backend: expected a Backend from openBackend(), got ${describe(b)}`);
  if (b.destroyed) throw new ArgumentError(`${op}: backend: this ${b.kind} backend was destroyed`);
  if (opts.dtype !== undefined && !(WEIGHT_DTYPES as readonly string[]).includes(opts.dtype)) {
    throw new ArgumentError(`${op}: dtype: expected one of ${WEIGHT_DTYPES.join(', ')}, got ${describe(opts.dtype)}`);
  }
}

/**
 * Checks names, shapes and dtypes of every tensor, then uploads them one by one: yields each
 * tensor's name and is sent its host tensor back (so that one body serves the synchronous
 * map of modelFromTensors and the asynchronous reads of loadModel). Nothing stays allocated
 * on failure.
 */
function* build(
  cfg: ModelConfig,
  src: WeightSource,
  opts: LoadModelOptions,
  dir: string | null,
  configFile: string,
): Generator<string, LlamaModel, HostTensor> {
  const actual = new Map<string, number[]>();
  for (const n of src.names()) actual.set(n, src.shape(n).shape);
  // The config's sizes are only claims: check them against the tensors before listing or allocating by them.
  checkConfigAgainstWeights(cfg, actual, configFile, src.where);
  const expected = expectedWeights(cfg);
  const report = compareWeights(expected, actual);
  const extra = report.extra.filter((n) => !ignorable(n, cfg, actual.get(n)!));
  if (report.missing.length || report.wrongShape.length || extra.length) throw new FormatError(describeProblems(src, report, extra));
  for (const w of expected) {
    const e = src.shape(w.name);
    if (!['F32', 'F16', 'BF16', 'F64'].includes(e.storedDType)) {
      throw new FormatError(
        `${e.file}: tensor '${w.name}': dtype ${e.storedDType} is not a float weight dtype (expected F32, F16 or BF16)`,
      );
    }
  }

  const be = opts.backend;
  const made: Tensor[] = [];
  function* up(name: string, shape?: readonly number[]): Generator<string, Tensor, HostTensor> {
    const h = yield name;
    checkFinite(src.shape(name).file, name, h, opts.dtype ?? h.dtype);
    const t = upload(be, h, shape ?? h.shape, opts.dtype);
    made.push(t);
    return t;
  }
  try {
    const embedTokens = yield* up(NAMES.embed);
    const layers: LlamaLayerWeights[] = [];
    for (let l = 0; l < cfg.numLayers; l++) {
      const inputNorm = yield* up(NAMES.inputNorm(l));
      const postAttentionNorm = yield* up(NAMES.postNorm(l));
      const linear = {} as Record<LinearModule, Tensor>;
      const bias: Partial<Record<LinearModule, Tensor>> = {};
      for (const m of LINEAR_MODULES) {
        linear[m] = yield* up(linearWeightName(l, m));
        const bn = linearWeightName(l, m, 'bias');
        if (expected.some((w) => w.name === bn)) bias[m] = yield* up(bn, [1, linearShape(cfg, m)[0]]);
      }
      const layer: LlamaLayerWeights = { inputNorm, postAttentionNorm, linear, bias };
      if (hasQkNorm(cfg)) {
        layer.qNorm = yield* up(qkNormWeightName(l, 'q_norm'));
        layer.kNorm = yield* up(qkNormWeightName(l, 'k_norm'));
      }
      layers.push(layer);
    }
    const norm = yield* up(NAMES.norm);
    const lmHead = cfg.tieWordEmbeddings ? embedTokens : yield* up(NAMES.lmHead);
    const inv = ropeInvFreq(cfg.headDim, cfg.ropeTheta, cfg.ropeScaling);
    const invFreq = be.tensor(Float32Array.from(inv), [inv.length], 'f32');
    made.push(invFreq);
    return new LlamaModel(cfg, be, { embedTokens, layers, norm, lmHead, invFreq }, dir);
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
}

/** Runs `build`, reading each tensor it asks for with `get`; a failed read disposes what was uploaded. */
async function buildAsync(g: Generator<string, LlamaModel, HostTensor>, get: (name: string) => Promise<HostTensor>): Promise<LlamaModel> {
  let r = g.next();
  while (!r.done) {
    let h: HostTensor;
    try {
      h = await get(r.value);
    } catch (e) {
      g.throw(e); // runs build's cleanup, then rethrows
      throw e;
    }
    r = g.next(h);
  }
  return r.value;
}

/**
 * Loads an HF model directory: config.json (llama, mistral, qwen2 or qwen3) and model.safetensors or
 * the shards of model.safetensors.index.json. `dir` is a folder path (Node) or anything
 * openSource takes: a URL (tensors fetched by HTTP Range requests where the server allows),
 * File/Blob objects, bytes, a FileSource. Every tensor's name, shape and dtype is checked
 * against the config before anything is uploaded; problems are FormatErrors naming the file
 * and the tensor. A weight holding NaN or ±∞ (or a value `dtype` f16 cannot hold) is a
 * FormatError naming it. Weights go to `backend` in their stored dtype, or in `dtype` when given.
 * Nothing stays allocated on the backend when loading fails.
 */
export async function loadModel(dir: SourceInput, opts: LoadModelOptions): Promise<LlamaModel> {
  checkOptions('loadModel', opts);
  if (dir === '' || dir === null || dir === undefined)
    throw new ArgumentError(`loadModel: dir: expected a model directory path, got ${describe(dir)}`);
  const src = openSource(dir, 'loadModel', 'dir');
  const configFile = src.where('config.json');
  // Bounded, regular-file-only read: a FIFO or a huge file in place of config.json is a FormatError, not a hang.
  const cfg = parseHFConfig(await src.text('config.json', 'an HF model directory needs config.json', MAX_CONFIG_BYTES), configFile);
  const weights = await SourceWeights.open(src);
  const where = weights.index ?? src.where(weights.fileNames()[0] ?? 'model.safetensors');
  const shapes = new Map<string, { shape: number[]; storedDType: string; file: string }>();
  for (const n of weights.names()) {
    const e = await weights.entry(n);
    shapes.set(n, { shape: e.shape, storedDType: e.storedDType, file: e.file });
  }
  const ws: WeightSource = { where, names: () => weights.names(), shape: (n) => shapes.get(n)! };
  return buildAsync(build(cfg, ws, opts, typeof dir === 'string' ? dir : src.name, configFile), (n) => weights.get(n));
}

/**
 * A model from host tensors in HF naming (e.g. freshly initialised, or read by other means),
 * checked and uploaded like loadModel.
 */
export function modelFromTensors(config: ModelConfig, tensors: ReadonlyMap<string, HostTensor>, opts: LoadModelOptions): LlamaModel {
  checkOptions('modelFromTensors', opts);
  const src: WeightSource = {
    where: '<tensors>',
    names: () => [...tensors.keys()],
    shape: (n) => {
      const t = tensors.get(n)!;
      return {
        shape: [...t.shape],
        storedDType: ({ f32: 'F32', f16: 'F16', bf16: 'BF16', i32: 'I32' } as const)[t.dtype],
        file: '<tensors>',
      };
    },
  };
  const g = build(config, src, opts, null, '<config>');
  let r = g.next();
  while (!r.done) r = g.next(tensors.get(r.value)!);
  return r.value;
}
