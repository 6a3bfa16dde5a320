// PEFT adapter folders (adapter_config.json + adapter_model.safetensors) to and from adapter
// stacks: reading one folder checked against a model (every tensor's name, shape and dtype
// before any data is read; FormatErrors name the file and tensor), stacking several into one
// LoRA stack per linear, and writing one adapter of a stack back as its own folder.

import { hostToF32 } from '../dtype.js';
import { checkFinite } from '../io/finite.js';
import { ArgumentError, FormatError } from '../errors.js';
import { jsonText } from '../io/files.js';
import type { DirWriter } from '../io/sink.js';
import { readSourceJson, type FileSource } from '../io/source.js';
import { LINEAR_MODULES, linearShape, type LinearModule, type ModelConfig } from '../model/config.js';
import {
  ADAPTER_CONFIG_FILE,
  ADAPTER_WEIGHTS_FILE,
  makePeftConfig,
  parsePeftConfig,
  parsePeftKey,
  peftExpectedWeights,
  peftKey,
  peftModulePath,
  peftRank,
  peftScale,
  peftTargets,
  type PeftConfig,
} from '../io/peft.js';
import { SafetensorsFile, safetensorsParts, type HostTensor, type WritableTensor } from '../io/safetensors.js';
import type { AdapterStacks, HostStack, StackReadCache } from './stacks.js';

function f32Of(t: HostTensor): Float32Array {
  return hostToF32(t.dtype, t.data);
}

/** A PEFT adapter read and checked against a model, on the host. */
export interface ReadAdapter {
  dir: string;
  config: PeftConfig;
  /** (layer, module) → f32 factors A [rank, in], B [out, rank], or absent. */
  modules: Map<string, { A: Float32Array; B: Float32Array; rank: number; scale: number }>;
}

/** adapter_config.json and mote.json are a few KiB; a bound keeps a huge or endless file from being read whole. */
export const MAX_ADAPTER_JSON_BYTES = 16 * 1024 * 1024;

/**
 * Reads one PEFT adapter folder (a path, or any source: src/io/source.ts) and checks every
 * tensor against `cfg`; FormatErrors name the file and tensor.
 */
export async function readAdapter(cfg: ModelConfig, dir: FileSource): Promise<ReadAdapter> {
  const cfgFile = dir.where(ADAPTER_CONFIG_FILE);
  const config = parsePeftConfig(
    await readSourceJson(dir, ADAPTER_CONFIG_FILE, 'a PEFT adapter folder needs adapter_config.json', MAX_ADAPTER_JSON_BYTES),
    cfgFile,
  );
  if (config.layersToTransform) {
    const bad = config.layersToTransform.find((l) => l >= cfg.numLayers);
    if (bad !== undefined)
      throw new FormatError(`${cfgFile}: layers_to_transform names layer ${bad}, the model has ${cfg.numLayers} layers`);
  }
  const file = dir.where(ADAPTER_WEIGHTS_FILE);
  await dir.size(ADAPTER_WEIGHTS_FILE, 'a PEFT adapter folder needs adapter_model.safetensors');
  // Names, shapes and dtypes come from the header and are checked against the config before any tensor data is read.
  const reader = await SafetensorsFile.open(dir, ADAPTER_WEIGHTS_FILE);
  const tensors = new Map<string, HostTensor>();
  {
    const expected = peftExpectedWeights(cfg, config);
    const want = new Map(expected.map((s) => [s.name, s]));
    for (const name of reader.names()) {
      const t = reader.entry(name)!;
      const spec = want.get(name);
      if (!spec) {
        const k = parsePeftKey(name);
        const why =
          k === null
            ? 'not a LoRA factor of a linear layer we adapt'
            : k.layer >= cfg.numLayers
              ? `the model has ${cfg.numLayers} layers`
              : `adapter_config.json does not target ${peftModulePath(k.layer, k.module)}`;
        throw new FormatError(`${file}: tensor '${name}': unexpected (${why})`);
      }
      // A rank the config claims but the tensors do not hold is the config's error: name its field.
      const rankAxis = spec.which === 'A' ? 0 : 1;
      if (t.shape.length === 2 && t.shape[1 - rankAxis] === spec.shape[1 - rankAxis] && t.shape[rankAxis] !== spec.shape[rankAxis]) {
        throw new FormatError(
          `${cfgFile}: r / rank_pattern give ${peftModulePath(spec.layer, spec.module)} rank ${spec.shape[rankAxis]}, ` +
            `but ${file}: tensor '${name}' has shape [${t.shape.join(', ')}] (rank ${t.shape[rankAxis]})`,
        );
      }
      if (t.shape.length !== 2 || t.shape[0] !== spec.shape[0] || t.shape[1] !== spec.shape[1]) {
        throw new FormatError(
          `${file}: tensor '${name}': expected shape [${spec.shape.join(', ')}] for this model, got [${t.shape.join(', ')}]`,
        );
      }
      if (t.dtype === null || t.dtype === 'i32')
        throw new FormatError(`${file}: tensor '${name}': expected a float dtype (F32, F16, BF16), got ${t.storedDType}`);
    }
    for (const s of expected) {
      if (!reader.has(s.name)) throw new FormatError(`${file}: tensor '${s.name}': missing (expected [${s.shape.join(', ')}])`);
    }
    for (const s of expected) {
      const t = await reader.read(s.name);
      checkFinite(file, s.name, t);
      tensors.set(s.name, t);
    }
  }
  const modules = new Map<string, { A: Float32Array; B: Float32Array; rank: number; scale: number }>();
  for (let l = 0; l < cfg.numLayers; l++) {
    for (const m of LINEAR_MODULES) {
      if (!peftTargets(config, l, m)) continue;
      modules.set(`${l}.${m}`, {
        A: f32Of(tensors.get(peftKey(l, m, 'A'))!),
        B: f32Of(tensors.get(peftKey(l, m, 'B'))!),
        rank: peftRank(config, l, m),
        scale: peftScale(config, l, m),
      });
    }
  }
  return { dir: dir.name, config, modules };
}

/**
 * Stacks adapters (index = slot) per linear: R = the largest rank there, each adapter's own
 * rank and scale; an adapter without that linear gets rank 1, zero factors and scale 0.
 */
export function stackAdapters(cfg: ModelConfig, adapters: readonly ReadAdapter[]): Partial<Record<LinearModule, HostStack>>[] {
  const L = adapters.length;
  const out: Partial<Record<LinearModule, HostStack>>[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const layer: Partial<Record<LinearModule, HostStack>> = {};
    for (const m of LINEAR_MODULES) {
      const mods = adapters.map((a) => a.modules.get(`${l}.${m}`));
      if (mods.every((x) => x === undefined)) continue;
      const [Hout, Hin] = linearShape(cfg, m);
      const R = Math.max(...mods.map((x) => x?.rank ?? 1));
      const A = new Float32Array(L * R * Hin);
      const B = new Float32Array(L * Hout * R);
      const ranks = new Int32Array(L).fill(1);
      const scales = new Float32Array(L);
      mods.forEach((x, e) => {
        if (!x) return;
        ranks[e] = x.rank;
        scales[e] = x.scale;
        A.set(x.A, e * R * Hin); // rows r < rank of [R, Hin] are contiguous
        for (let o = 0; o < Hout; o++) B.set(x.B.subarray(o * x.rank, (o + 1) * x.rank), (e * Hout + o) * R);
      });
      layer[m] = { A, B, R, ranks, scales };
    }
    out.push(layer);
  }
  return out;
}

/** Writes one PEFT adapter folder for adapter `e` of `stacks` into `dir` (a folder of a sink). */
export async function writeExpert(
  stacks: AdapterStacks,
  e: number,
  dir: DirWriter,
  r: number,
  loraAlpha: number,
  baseModel: string | null,
  cache: StackReadCache,
): Promise<void> {
  const cfg = stacks.modelConfig;
  const tensors = new Map<string, WritableTensor>();
  const targets = new Set<LinearModule>();
  const rankPattern: Record<string, number> = {};
  const alphaPattern: Record<string, number> = {};
  const layersWith = new Map<LinearModule, Set<number>>();
  for (let l = 0; l < cfg.numLayers; l++) {
    for (const m of LINEAR_MODULES) {
      const f = await stacks.readExpertCached(e, l, m, cache);
      if (!f) continue;
      targets.add(m);
      if (!layersWith.has(m)) layersWith.set(m, new Set());
      layersWith.get(m)!.add(l);
      const [Hout, Hin] = linearShape(cfg, m);
      tensors.set(peftKey(l, m, 'A'), { dtype: 'f32', shape: [f.rank, Hin], data: f.A });
      tensors.set(peftKey(l, m, 'B'), { dtype: 'f32', shape: [Hout, f.rank], data: f.B });
      const a = Math.fround(f.scale * f.rank);
      const p = peftModulePath(l, m).replace(/\./g, '\\.');
      if (f.rank !== r) rankPattern[p] = f.rank;
      if (Math.abs(a - loraAlpha) > 1e-6 * loraAlpha) alphaPattern[p] = a;
    }
  }
  if (targets.size === 0) throw new ArgumentError(`saveMote: adapter ${e} adapts no linear layer`);
  // Every target module must be adapted on every layer (a list target_modules covers all layers).
  for (const [m, ls] of layersWith) {
    if (ls.size !== cfg.numLayers)
      throw new ArgumentError(`saveMote: adapter ${e} adapts ${m} on only some layers; cannot express that as target_modules`);
  }
  const json = makePeftConfig({
    r,
    loraAlpha,
    targetModules: LINEAR_MODULES.filter((m) => targets.has(m)),
    rankPattern,
    alphaPattern,
    baseModelNameOrPath: baseModel,
  });
  await dir.write(ADAPTER_CONFIG_FILE, jsonText(json));
  await dir.write(ADAPTER_WEIGHTS_FILE, safetensorsParts(tensors));
}
