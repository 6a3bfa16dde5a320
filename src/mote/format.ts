// mote.json, the index of a saved MoTE bundle (DESIGN §6): its steps, α, rank, target modules,
// expert folders and a summary of the base model. Writing (moteJson), reading and checking
// (parseMoteJson, readMoteJson), and recognising a bundle folder written before mote's
// marker existed (legacyBundleFiles); writing a bundle's files (writeMoteFolder).
//
// Saved layout:
//   <dir>/mote.json
//   <dir>/<step>/adapter_config.json, adapter_model.safetensors   (one per step)
//   <dir>/shared/adapter_config.json, adapter_model.safetensors
// Every expert folder is an ordinary PEFT LoRA adapter (PEFT key names, scale alpha / r), so
// any PEFT-compatible engine can serve one alone.

import { ArgumentError, FormatError, describe } from '../errors.js';
import { jsonText, readJsonFile } from '../io/files.js';
import type { DirWriter } from '../io/sink.js';
import { readSourceJson, type FileSource } from '../io/source.js';
import { tryJson, type ReplaceDirOptions } from '../io/atomic_dir.js';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE } from '../io/peft.js';
import type { LinearModule, ModelConfig } from '../model/config.js';
import { MAX_ADAPTER_JSON_BYTES, writeExpert } from '../adapters/peft_io.js';
import type { AdapterStacks, StackReadCache } from '../adapters/stacks.js';
import { SHARED_EXPERT, STEP_END_TOKENS, STEP_TOKENS, moteConfig, type MoteConfig, type PromptRouting, type StepName } from './steps.js';
import { nodeBuiltin } from '../io/node_builtins.js';
const path = nodeBuiltin<typeof import('node:path')>('node:path');

export const MOTE_FILE = 'mote.json';
export const MOTE_FORMAT_VERSION = 1;

/** What mote.json records of a bundle. */
export interface MoteJsonSource {
  readonly config: MoteConfig;
  readonly modelConfig: ModelConfig;
  readonly baseModel: string | null;
  /** Expert names by index: the steps, then 'shared'. */
  readonly experts: readonly string[];
}

function baseModelSummary(cfg: ModelConfig, nameOrPath: string | null): Record<string, unknown> {
  return {
    name_or_path: nameOrPath,
    family: cfg.family,
    hidden_size: cfg.hiddenSize,
    intermediate_size: cfg.intermediateSize,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    num_key_value_heads: cfg.numKvHeads,
    head_dim: cfg.headDim,
    vocab_size: cfg.vocabSize,
  };
}

/** The mote.json object of a bundle. */
export function moteJson(bundle: MoteJsonSource): Record<string, unknown> {
  const c = bundle.config;
  return {
    format: 'mote',
    version: MOTE_FORMAT_VERSION,
    steps: [...c.steps],
    tokens: Object.fromEntries(c.steps.map((s) => [s, STEP_TOKENS[s]])),
    end_tokens: Object.fromEntries(c.steps.map((s) => [s, STEP_END_TOKENS[s]])),
    experts: Object.fromEntries(bundle.experts.map((e) => [e, e])),
    alpha: c.alpha,
    prompt_routing: c.promptRouting,
    r: c.rank,
    lora_alpha: c.loraAlpha,
    target_modules: [...c.targetModules],
    base_model: baseModelSummary(bundle.modelConfig, bundle.baseModel),
  };
}

/** Parses mote.json (object or text); FormatError naming `file` and the field otherwise. */
export function parseMoteJson(
  json: unknown,
  file = MOTE_FILE,
): { config: MoteConfig; experts: Record<string, string>; baseModel: string | null } {
  if (typeof json === 'string') {
    try {
      json = JSON.parse(json);
    } catch (e) {
      throw new FormatError(`${file}: not valid JSON: ${(e as Error).message}`);
    }
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    throw new FormatError(`${file}: expected a JSON object, got ${describe(json)}`);
  const j = json as Record<string, unknown>;
  if (j.format !== undefined && j.format !== 'mote') throw new FormatError(`${file}: format: expected 'mote', got ${describe(j.format)}`);
  if (j.version !== undefined && j.version !== MOTE_FORMAT_VERSION)
    throw new FormatError(`${file}: version: ${describe(j.version)} is not supported (expected ${MOTE_FORMAT_VERSION})`);
  for (const k of ['steps', 'alpha', 'r', 'lora_alpha']) if (j[k] === undefined) throw new FormatError(`${file}: ${k} is missing`);
  let config: MoteConfig;
  try {
    config = moteConfig(
      {
        steps: j.steps as StepName[],
        rank: j.r as number,
        loraAlpha: j.lora_alpha as number,
        alpha: j.alpha as number,
        ...(j.prompt_routing !== undefined ? { promptRouting: j.prompt_routing as PromptRouting } : {}),
        ...(j.target_modules !== undefined ? { targetModules: j.target_modules as LinearModule[] } : {}),
      },
      file,
    );
  } catch (e) {
    // moteConfig names its options; a file's reader wants the JSON field names.
    if (e instanceof ArgumentError) {
      const names: Record<string, string> = {
        rank: 'r',
        loraAlpha: 'lora_alpha',
        targetModules: 'target_modules',
        promptRouting: 'prompt_routing',
      };
      const prefix = `${file}: `;
      let msg = e.message;
      if (msg.startsWith(prefix)) {
        msg = prefix + msg.slice(prefix.length).replace(/^(rank|loraAlpha|targetModules|promptRouting)\b/, (k) => names[k]!);
      }
      throw new FormatError(msg);
    }
    throw e;
  }
  const experts: Record<string, string> = {};
  const ex = j.experts;
  if (ex !== undefined && (typeof ex !== 'object' || ex === null || Array.isArray(ex)))
    throw new FormatError(`${file}: experts: expected an object of expert -> folder, got ${describe(ex)}`);
  for (const name of [...config.steps, SHARED_EXPERT]) {
    const folder = (ex as Record<string, unknown> | undefined)?.[name] ?? name;
    if (typeof folder !== 'string' || folder === '' || folder.includes('/') || folder.includes('\\') || folder === '.' || folder === '..') {
      throw new FormatError(`${file}: experts.${name}: expected a folder name inside the bundle, got ${describe(folder)}`);
    }
    experts[name] = folder;
  }
  if (j.tokens !== undefined) {
    const t = j.tokens as Record<string, unknown>;
    for (const s of config.steps) {
      if (t?.[s] !== undefined && t[s] !== STEP_TOKENS[s])
        throw new FormatError(`${file}: tokens.${s}: expected '${STEP_TOKENS[s]}', got ${describe(t[s])}`);
    }
  }
  const bm = j.base_model as Record<string, unknown> | undefined;
  const baseModel = typeof bm?.name_or_path === 'string' ? bm.name_or_path : null;
  return { config, experts, baseModel };
}

/** Reads and checks `dir`/mote.json (bounded; FormatError naming the file and field). */
export function readMoteJson(dir: string): ReturnType<typeof parseMoteJson> {
  const file = path.join(dir, MOTE_FILE);
  return parseMoteJson(readJsonFile(file, 'a MoTE bundle needs mote.json', MAX_ADAPTER_JSON_BYTES), file);
}

/** Reads and checks mote.json of a source (a folder, URL, Files, bytes), as readMoteJson does for a path. */
export async function readMoteJsonFrom(src: FileSource): Promise<ReturnType<typeof parseMoteJson>> {
  return parseMoteJson(await readSourceJson(src, MOTE_FILE, 'a MoTE bundle needs mote.json', MAX_ADAPTER_JSON_BYTES), src.where(MOTE_FILE));
}

/**
 * The files of a bundle folder written by mote before the marker existed (recognised by
 * mote.json's format 'mote' and its experts), or null.
 */
export function legacyBundleFiles(dir: string): string[] | null {
  const j = tryJson(path.join(dir, MOTE_FILE));
  if (!j || j.format !== 'mote' || !j.experts || typeof j.experts !== 'object') return null;
  const files = [MOTE_FILE];
  for (const sub of Object.values(j.experts as Record<string, unknown>)) {
    if (typeof sub !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(sub) || sub === '.' || sub === '..') continue;
    files.push(`${sub}/${ADAPTER_CONFIG_FILE}`, `${sub}/${ADAPTER_WEIGHTS_FILE}`);
  }
  return files;
}

export const MOTE_DIR_OPTIONS: ReplaceDirOptions = { kind: 'mote-bundle', legacy: legacyBundleFiles };

/**
 * Writes a bundle's files into the (empty) folder `dir`: one PEFT adapter folder per expert,
 * then mote.json (last: its presence marks a complete bundle).
 */
export async function writeMoteFolder(bundle: MoteJsonSource & AdapterStacks, dir: DirWriter): Promise<void> {
  const c = bundle.config;
  const cache: StackReadCache = new Map();
  for (const [e, name] of bundle.experts.entries()) {
    await writeExpert(bundle, e, dir.sub(name), c.rank, c.loraAlpha, bundle.baseModel, cache);
  }
  await dir.write(MOTE_FILE, jsonText(moteJson(bundle)));
}
