// PEFT LoRA adapters: tensor key names and adapter_config.json.
//
// PEFT saves adapter weights (adapter_model.safetensors) under the base model's module path
// wrapped twice (PeftModel -> LoraModel, hence "base_model.model."), without the adapter's
// name: `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` is A: [r, in] and
// `...lora_B.weight` is B: [out, r]. The update is y += scale · B·A·x with scale = alpha/r,
// or alpha/sqrt(r) with use_rslora.
//
// Which modules an adapter covers, and their ranks and alphas, follow PEFT's rules: a
// target_modules list matches a module whose path equals an entry or ends with "." + entry;
// a string is a regular expression that must match the whole path; rank_pattern and
// alpha_pattern keys are regexes matched against the end of the path, first match wins. The
// path PEFT matches is the module's name in the HF model: `model.layers.3.mlp.down_proj`.

import { RE2JS } from 're2js';
import { ArgumentError, FormatError, describe } from '../errors.js';
import { MAX_PATTERN_CHARS } from './regex.js';
import { LINEAR_MODULES, linearShape, moduleParent, type LinearModule, type ModelConfig } from '../model/config.js';

export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';

const KEY_PREFIX = 'base_model.model.';

/** Bound on the lists and pattern maps of adapter_config.json (one entry per layer and module of a 500-layer model fits). */
export const MAX_CONFIG_ENTRIES = 4096;

/** Normalized LoRA adapter config. */
export interface PeftConfig {
  r: number;
  loraAlpha: number;
  /** Module names (PEFT suffix matching) or one regex string (full match); 'all-linear' means every linear layer. */
  targetModules: string[] | string;
  /** Modules left out even when targeted (same matching rules), or null. */
  excludeModules: string[] | string | null;
  /** Only these layer indices are adapted, or null for all. */
  layersToTransform: number[] | null;
  useRslora: boolean;
  /** Per-module rank overrides: regex (matched at the end of the module path) -> rank. */
  rankPattern: Record<string, number>;
  /** Per-module alpha overrides, same matching. */
  alphaPattern: Record<string, number>;
  loraDropout: number;
  /** Always 'none': we read and write no LoRA bias terms. */
  bias: 'none';
  taskType: string | null;
  baseModelNameOrPath: string | null;
}

/** `model.layers.{layer}.self_attn.q_proj`: the module path PEFT matches its patterns against. */
export function peftModulePath(layer: number, module: LinearModule): string {
  return `model.layers.${layer}.${moduleParent(module)}.${module}`;
}

/** PEFT's saved key of a LoRA factor: `base_model.model.model.layers.{layer}.self_attn.q_proj.lora_A.weight`. */
export function peftKey(layer: number, module: LinearModule, which: 'A' | 'B'): string {
  if (!Number.isSafeInteger(layer) || layer < 0)
    throw new ArgumentError(`peftKey: layer must be a non-negative integer, got ${describe(layer)}`);
  if (!(LINEAR_MODULES as readonly string[]).includes(module)) {
    throw new ArgumentError(`peftKey: module must be one of ${LINEAR_MODULES.join(', ')}, got ${describe(module)}`);
  }
  if (which !== 'A' && which !== 'B') throw new ArgumentError(`peftKey: which must be 'A' or 'B', got ${describe(which)}`);
  return `${KEY_PREFIX}${peftModulePath(layer, module)}.lora_${which}.weight`;
}

const KEY_RE = /^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)\.lora_([AB])\.weight$/;

/** Inverse of `peftKey`; null for any other key (DoRA magnitudes, embeddings, biases, ...). */
export function parsePeftKey(key: string): { layer: number; module: LinearModule; which: 'A' | 'B' } | null {
  const m = KEY_RE.exec(key);
  if (!m) return null;
  const module = m[3] as LinearModule;
  if (!(LINEAR_MODULES as readonly string[]).includes(module) || moduleParent(module) !== m[2]) return null;
  return { layer: Number(m[1]), module, which: m[4] as 'A' | 'B' };
}

// ---------------------------------------------------------------------------------------
// Matching, as PEFT does it

// Patterns come from adapter_config.json: they run on RE2 (re2js), whose matching is linear
// in the input, so a pattern like `(a+)+$` cannot hang loading (see src/io/regex.ts).
const compiledPatterns = new Map<string, RE2JS>();
function re2(pattern: string): RE2JS {
  let re = compiledPatterns.get(pattern);
  if (re === undefined) {
    re = RE2JS.compile(pattern);
    if (compiledPatterns.size > 1024) compiledPatterns.clear();
    compiledPatterns.set(pattern, re);
  }
  return re;
}

/** Python's re.fullmatch, for the patterns PEFT configs use (Python and RE2 syntax agree on them). */
function fullMatch(pattern: string, s: string): boolean {
  return re2(pattern).matches(s);
}

function listMatch(list: readonly string[], path: string): boolean {
  return list.some((t) => path === t || path.endsWith(`.${t}`));
}

/** Does the adapter cover `module` of `layer`? */
export function peftTargets(cfg: PeftConfig, layer: number, module: LinearModule): boolean {
  const p = peftModulePath(layer, module);
  const ex = cfg.excludeModules;
  if (ex !== null && (typeof ex === 'string' ? fullMatch(ex, p) : listMatch(ex, p))) return false;
  const t = cfg.targetModules;
  if (t === 'all-linear') return true; // every linear layer except lm_head, which we never adapt
  if (typeof t === 'string') return fullMatch(t, p); // PEFT applies layers_to_transform only to lists
  return listMatch(t, p) && (cfg.layersToTransform === null || cfg.layersToTransform.includes(layer));
}

/** PEFT's get_pattern_key: an exact key first, else the first key that matches the end of the path. */
function patternValue(pattern: Record<string, number>, path: string): number | undefined {
  if (Object.hasOwn(pattern, path)) return pattern[path];
  for (const [k, v] of Object.entries(pattern)) {
    if (re2(`(?:.*\\.)?(?:${k})`).matches(path)) return v;
  }
  return undefined;
}

export function peftRank(cfg: PeftConfig, layer: number, module: LinearModule): number {
  return patternValue(cfg.rankPattern, peftModulePath(layer, module)) ?? cfg.r;
}

export function peftAlpha(cfg: PeftConfig, layer: number, module: LinearModule): number {
  return patternValue(cfg.alphaPattern, peftModulePath(layer, module)) ?? cfg.loraAlpha;
}

/** The LoRA scale of one module: alpha / r, or alpha / sqrt(r) with use_rslora. */
export function peftScale(cfg: PeftConfig, layer: number, module: LinearModule): number {
  const r = peftRank(cfg, layer, module);
  const a = peftAlpha(cfg, layer, module);
  return cfg.useRslora ? a / Math.sqrt(r) : a / r;
}

export interface PeftWeightSpec {
  name: string;
  shape: [number, number];
  layer: number;
  module: LinearModule;
  which: 'A' | 'B';
}

/** Every tensor adapter_model.safetensors must hold for `peft` on `model`: A [r, in], B [out, r]. */
export function peftExpectedWeights(model: ModelConfig, peft: PeftConfig): PeftWeightSpec[] {
  const out: PeftWeightSpec[] = [];
  for (let layer = 0; layer < model.numLayers; layer++) {
    for (const module of LINEAR_MODULES) {
      if (!peftTargets(peft, layer, module)) continue;
      const r = peftRank(peft, layer, module);
      const [o, i] = linearShape(model, module);
      out.push({ name: peftKey(layer, module, 'A'), shape: [r, i], layer, module, which: 'A' });
      out.push({ name: peftKey(layer, module, 'B'), shape: [o, r], layer, module, which: 'B' });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// adapter_config.json

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkRegex(fail: (what: string) => never, pattern: string): void {
  if (pattern.length > MAX_PATTERN_CHARS) fail(`is a regex of ${pattern.length} characters, more than ${MAX_PATTERN_CHARS}`);
  try {
    re2(pattern);
  } catch (e) {
    fail(
      `is not a regular expression mote can match in linear time (RE2 syntax: no backreferences or lookaround): ${(e as Error).message}`,
    );
  }
}

/** A module list may name our linear layers by name or by a dotted path ending in one ('self_attn.q_proj'). */
function checkModuleList(failAt: (key: string) => (what: string) => never, key: string, list: unknown[]): string[] {
  for (const [i, t] of list.entries()) {
    if (typeof t !== 'string' || t === '') return failAt(`${key}[${i}]`)(`must be a non-empty string, got ${describe(t)}`);
    const last = t.split('.').pop()!;
    if (!(LINEAR_MODULES as readonly string[]).includes(last)) {
      failAt(`${key}[${i}]`)(`'${t}' is not a linear layer we adapt (${LINEAR_MODULES.join(', ')})`);
    }
  }
  return list as string[];
}

/**
 * Parses adapter_config.json (object or JSON text) of a PEFT LoRA adapter. Throws FormatError
 * naming `file` and the field for anything malformed or not supported: peft_type other than
 * LORA, bias other than 'none', fan_in_fan_out, DoRA, modules_to_save, layer replication.
 */
export function parsePeftConfig(json: unknown, file = ADAPTER_CONFIG_FILE): PeftConfig {
  if (typeof json === 'string') {
    try {
      json = JSON.parse(json);
    } catch (e) {
      throw new FormatError(`${file}: not valid JSON: ${(e as Error).message}`);
    }
  }
  if (!isPlainObject(json)) throw new FormatError(`${file}: expected a JSON object, got ${describe(json)}`);
  const j = json;
  const failer =
    (key: string) =>
    (what: string): never => {
      throw new FormatError(`${file}: ${key} ${what}`);
    };
  const given = (k: string) => j[k] !== undefined && j[k] !== null;

  if (given('peft_type') && j.peft_type !== 'LORA') failer('peft_type')(`${describe(j.peft_type)} is not supported (only LORA)`);

  const posInt = (k: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) failer(k)(`must be a positive integer, got ${describe(v)}`);
    return v as number;
  };
  const posNum = (k: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) failer(k)(`must be a positive number, got ${describe(v)}`);
    return v as number;
  };
  if (!given('r')) failer('r')('is missing');
  const r = posInt('r', j.r);
  // PEFT's default lora_alpha is 8.
  const loraAlpha = given('lora_alpha') ? posNum('lora_alpha', j.lora_alpha) : 8;

  const modules = (key: string, v: unknown): string[] | string => {
    if (typeof v === 'string') {
      if (v !== 'all-linear') checkRegex(failer(key), v);
      return v;
    }
    if (!Array.isArray(v)) return failer(key)(`must be a list of module names or a regex string, got ${describe(v)}`);
    // Every entry is matched against every module of every layer: bound the list before any matching.
    if (v.length > MAX_CONFIG_ENTRIES) failer(key)(`lists ${v.length} entries, more than the ${MAX_CONFIG_ENTRIES} mote accepts`);
    return checkModuleList(failer, key, v);
  };
  if (!given('target_modules')) failer('target_modules')('is missing');
  const targetModules = modules('target_modules', j.target_modules);
  if (Array.isArray(targetModules) && targetModules.length === 0) failer('target_modules')('is empty');
  let excludeModules: string[] | string | null = null;
  if (given('exclude_modules')) {
    const v = j.exclude_modules;
    if (typeof v === 'string') checkRegex(failer('exclude_modules'), v);
    else if (!Array.isArray(v) || !v.every((s) => typeof s === 'string'))
      failer('exclude_modules')(`must be a list of names or a regex string, got ${describe(v)}`);
    else if (v.length > MAX_CONFIG_ENTRIES)
      failer('exclude_modules')(`lists ${v.length} entries, more than the ${MAX_CONFIG_ENTRIES} mote accepts`);
    excludeModules = v as string[] | string;
  }

  let layersToTransform: number[] | null = null;
  if (given('layers_to_transform')) {
    const v = j.layers_to_transform;
    const list = typeof v === 'number' ? [v] : v;
    if (!Array.isArray(list) || !list.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)) {
      failer('layers_to_transform')(`must be a layer index or a list of them, got ${describe(v)}`);
    }
    if ((list as number[]).length > MAX_CONFIG_ENTRIES)
      failer('layers_to_transform')(`lists ${(list as number[]).length} entries, more than the ${MAX_CONFIG_ENTRIES} mote accepts`);
    layersToTransform = [...new Set(list as number[])];
  }

  const flag = (k: string, dflt: boolean): boolean => {
    if (!given(k)) return dflt;
    if (typeof j[k] !== 'boolean') failer(k)(`must be true or false, got ${describe(j[k])}`);
    return j[k] as boolean;
  };
  const useRslora = flag('use_rslora', false);
  if (flag('fan_in_fan_out', false))
    failer('fan_in_fan_out')('must be false (weights stored transposed, as for GPT-2 Conv1D, are not supported)');
  if (flag('use_dora', false)) failer('use_dora')('must be false (DoRA is not supported)');
  if (flag('lora_bias', false)) failer('lora_bias')('must be false (LoRA bias terms are not supported)');
  if (given('bias') && j.bias !== 'none') failer('bias')(`${describe(j.bias)} is not supported (only 'none')`);
  for (const k of ['modules_to_save', 'layer_replication', 'target_parameters', 'trainable_token_indices']) {
    const v = j[k];
    const empty =
      v === undefined || v === null || (Array.isArray(v) && v.length === 0) || (isPlainObject(v) && Object.keys(v).length === 0);
    if (!empty) failer(k)(`must be null or empty (not supported), got ${describe(v)}`);
  }

  const pattern = (k: string, value: (key: string, v: unknown) => number): Record<string, number> => {
    if (!given(k)) return {};
    const v = j[k];
    if (!isPlainObject(v)) return failer(k)(`must be an object of module pattern -> value, got ${describe(v)}`);
    const n = Object.keys(v).length;
    if (n > MAX_CONFIG_ENTRIES) failer(k)(`has ${n} entries, more than the ${MAX_CONFIG_ENTRIES} mote accepts`);
    const out: Record<string, number> = {};
    for (const [pk, pv] of Object.entries(v)) {
      checkRegex(failer(`${k}['${pk}']`), pk);
      out[pk] = value(`${k}['${pk}']`, pv);
    }
    return out;
  };
  const rankPattern = pattern('rank_pattern', posInt);
  const alphaPattern = pattern('alpha_pattern', posNum);

  let loraDropout = 0;
  if (given('lora_dropout')) {
    const v = j.lora_dropout;
    if (typeof v !== 'number' || !(v >= 0 && v < 1)) failer('lora_dropout')(`must be a number in [0, 1), got ${describe(v)}`);
    loraDropout = v as number;
  }
  const optStr = (k: string): string | null => {
    if (!given(k)) return null;
    if (typeof j[k] !== 'string') failer(k)(`must be a string or null, got ${describe(j[k])}`);
    return j[k] as string;
  };
  const taskType = optStr('task_type');
  if (taskType !== null && taskType !== 'CAUSAL_LM') failer('task_type')(`'${taskType}' is not supported (CAUSAL_LM or null)`);

  return {
    r,
    loraAlpha,
    targetModules,
    excludeModules,
    layersToTransform,
    useRslora,
    rankPattern,
    alphaPattern,
    loraDropout,
    bias: 'none',
    taskType,
    baseModelNameOrPath: optStr('base_model_name_or_path'),
  };
}

export interface MakePeftConfigOptions {
  r: number;
  loraAlpha: number;
  /** Default: every linear layer (q, k, v, o, gate, up, down). */
  targetModules?: string[] | string;
  excludeModules?: string[] | string | null;
  layersToTransform?: number[] | null;
  useRslora?: boolean;
  rankPattern?: Record<string, number>;
  alphaPattern?: Record<string, number>;
  loraDropout?: number;
  taskType?: string | null;
  baseModelNameOrPath?: string | null;
}

/**
 * An adapter_config.json object as PEFT writes it (JSON.stringify it to save). It is checked
 * by `parsePeftConfig`, so what we write we can read, and the fields PEFT needs to load it
 * (peft_type, r, lora_alpha, target_modules, ...) are all present.
 */
export function makePeftConfig(opts: MakePeftConfigOptions): Record<string, unknown> {
  const out: Record<string, unknown> = {
    alpha_pattern: { ...(opts.alphaPattern ?? {}) },
    auto_mapping: null,
    base_model_name_or_path: opts.baseModelNameOrPath ?? null,
    bias: 'none',
    exclude_modules: opts.excludeModules ?? null,
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layers_pattern: null,
    layers_to_transform: opts.layersToTransform ?? null,
    lora_alpha: opts.loraAlpha,
    lora_dropout: opts.loraDropout ?? 0,
    modules_to_save: null,
    peft_type: 'LORA',
    r: opts.r,
    rank_pattern: { ...(opts.rankPattern ?? {}) },
    revision: null,
    target_modules: Array.isArray(opts.targetModules) ? [...opts.targetModules] : (opts.targetModules ?? [...LINEAR_MODULES]),
    task_type: opts.taskType === undefined ? 'CAUSAL_LM' : opts.taskType,
    use_dora: false,
    use_rslora: opts.useRslora ?? false,
  };
  try {
    parsePeftConfig(out, 'makePeftConfig');
  } catch (e) {
    // The options are the caller's arguments, not a file: report them as such.
    if (e instanceof FormatError) throw new ArgumentError(e.message);
    throw e;
  }
  return out;
}

/** The makePeftConfig options that reproduce `cfg`. */
export function peftConfigOptions(cfg: PeftConfig): MakePeftConfigOptions {
  return {
    r: cfg.r,
    loraAlpha: cfg.loraAlpha,
    targetModules: cfg.targetModules,
    excludeModules: cfg.excludeModules,
    layersToTransform: cfg.layersToTransform,
    useRslora: cfg.useRslora,
    rankPattern: cfg.rankPattern,
    alphaPattern: cfg.alphaPattern,
    loraDropout: cfg.loraDropout,
    taskType: cfg.taskType,
    baseModelNameOrPath: cfg.baseModelNameOrPath,
  };
}
