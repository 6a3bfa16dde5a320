// One PEFT adapter per step, for servers that run one adapter per request (vLLM, LoRAX,
// S-LoRA). MoTE's mix is linear: a token of step s computes
//   y = W0·x + α·s_s·B_s·A_s·x + (1−α)·s_h·B_h·A_h·x
// (s_s, s_h the experts' own PEFT scales), which is exactly one LoRA of rank r_s + r_h with
//   A = [A_s; A_h] (rows stacked),  B = [α·s_s·B_s | (1−α)·s_h·B_h],  scale 1.
// Prompt tokens, which a bundle routes to the shared expert alone at inference, keep the
// shared expert as it is. Nothing here needs the base model: it works on the files.
import * as path from 'node:path';
import { ArgumentError, FormatError, describe } from '../errors.js';
import { hostToF32 } from '../dtype.js';
import { readJsonFile } from '../io/files.js';
import {
  ADAPTER_CONFIG_FILE,
  ADAPTER_WEIGHTS_FILE,
  makePeftConfig,
  parsePeftConfig,
  parsePeftKey,
  peftKey,
  peftModulePath,
  peftScale,
  type PeftConfig,
} from '../io/peft.js';
import { checkFinite } from '../io/finite.js';
import { readSafetensors, type HostTensor, type WritableTensor } from '../io/safetensors.js';
import type { LinearModule } from '../model/config.js';
import { SHARED_EXPERT } from './steps.js';
import { readMoteJson } from './format.js';

/** A PEFT adapter in memory: its adapter_config.json object and its tensors (f32). */
export interface MergedAdapter {
  config: Record<string, unknown>;
  tensors: Map<string, WritableTensor>;
}

interface Factors {
  A: Float32Array;
  B: Float32Array;
  r: number;
  nIn: number;
  nOut: number;
  scale: number;
}

function toF32(t: HostTensor, where: string): Float32Array {
  if (t.dtype !== 'f32' && t.dtype !== 'f16' && t.dtype !== 'bf16')
    throw new FormatError(`${where}: dtype ${t.dtype} is not a LoRA weight dtype`);
  return hostToF32(t.dtype, t.data);
}

/** Reads one expert folder: (layer, module) → its factors and PEFT scale. */
function readExpert(dir: string): { cfg: PeftConfig; modules: Map<string, Factors & { layer: number; module: LinearModule }> } {
  const cfgFile = path.join(dir, ADAPTER_CONFIG_FILE);
  const cfg = parsePeftConfig(readJsonFile(cfgFile, 'a PEFT adapter needs adapter_config.json'), cfgFile);
  const file = path.join(dir, ADAPTER_WEIGHTS_FILE);
  const { tensors } = readSafetensors(file);
  const halves = new Map<string, { layer: number; module: LinearModule; A?: HostTensor; B?: HostTensor }>();
  for (const [name, t] of tensors) {
    const k = parsePeftKey(name);
    if (!k) throw new FormatError(`${file}: tensor '${name}' is not a PEFT LoRA factor (expected …layers.N.<module>.lora_A/lora_B.weight)`);
    checkFinite(file, name, t);
    const id = `${k.layer}.${k.module}`;
    const h = halves.get(id) ?? { layer: k.layer, module: k.module };
    h[k.which] = t;
    halves.set(id, h);
  }
  const modules = new Map<string, Factors & { layer: number; module: LinearModule }>();
  for (const [id, h] of halves) {
    const where = `${file}: ${peftModulePath(h.layer, h.module)}`;
    if (!h.A || !h.B) throw new FormatError(`${where}: lora_${h.A ? 'B' : 'A'} is missing`);
    if (h.A.shape.length !== 2 || h.B.shape.length !== 2 || h.A.shape[0] !== h.B.shape[1]) {
      throw new FormatError(
        `${where}: lora_A ${JSON.stringify(h.A.shape)} and lora_B ${JSON.stringify(h.B.shape)} do not form [r, in] · [out, r]`,
      );
    }
    const [r, nIn] = h.A.shape as [number, number];
    modules.set(id, {
      layer: h.layer,
      module: h.module,
      r,
      nIn,
      nOut: h.B.shape[0]!,
      A: toF32(h.A, where),
      B: toF32(h.B, where),
      scale: peftScale(cfg, h.layer, h.module),
    });
  }
  return { cfg, modules };
}

/** The merged adapter of one step: [A_s; A_h] and [a·s_s·B_s | b·s_h·B_h] for every module either adapts. */
function merge(
  step: ReturnType<typeof readExpert>,
  shared: ReturnType<typeof readExpert>,
  a: number,
  b: number,
  baseModel: string | null,
): MergedAdapter {
  const ids = [...new Set([...step.modules.keys(), ...shared.modules.keys()])];
  const tensors = new Map<string, WritableTensor>();
  const ranks = new Map<string, number>();
  const targets = new Set<LinearModule>();
  for (const id of ids) {
    // A weight of 0 (α = 0 or 1) drops that expert's rows instead of storing zeros.
    const parts = [
      { f: step.modules.get(id), w: a },
      { f: shared.modules.get(id), w: b },
    ].filter((p) => p.f !== undefined && p.w !== 0) as { f: Factors & { layer: number; module: LinearModule }; w: number }[];
    if (parts.length === 0) continue;
    const { layer, module, nIn, nOut } = parts[0]!.f;
    for (const p of parts) {
      if (p.f.nIn !== nIn || p.f.nOut !== nOut)
        throw new FormatError(
          `${peftModulePath(layer, module)}: the step and shared experts disagree on its shape ([${p.f.nOut}, ${p.f.nIn}] vs [${nOut}, ${nIn}])`,
        );
    }
    const R = parts.reduce((n, p) => n + p.f.r, 0);
    const A = new Float32Array(R * nIn);
    const B = new Float32Array(nOut * R);
    let off = 0;
    for (const { f, w } of parts) {
      A.set(f.A, off * nIn);
      const s = w * f.scale;
      for (let o = 0; o < nOut; o++) for (let k = 0; k < f.r; k++) B[o * R + off + k] = s * f.B[o * f.r + k]!;
      off += f.r;
    }
    tensors.set(peftKey(layer, module, 'A'), { dtype: 'f32', shape: [R, nIn], data: A });
    tensors.set(peftKey(layer, module, 'B'), { dtype: 'f32', shape: [nOut, R], data: B });
    ranks.set(peftModulePath(layer, module), R);
    targets.add(module);
  }
  // The most common rank is r; the others go to rank_pattern, each with alpha = its rank (scale 1).
  const count = new Map<number, number>();
  for (const r of ranks.values()) count.set(r, (count.get(r) ?? 0) + 1);
  const r = [...count].sort((x, y) => y[1] - x[1] || x[0] - y[0])[0]?.[0] ?? 1;
  const rankPattern: Record<string, number> = {};
  for (const [p, rr] of ranks) if (rr !== r) rankPattern[`^${p.replaceAll('.', '\\.')}$`] = rr;
  const config = makePeftConfig({
    r,
    loraAlpha: r,
    targetModules: [...targets],
    rankPattern,
    alphaPattern: { ...rankPattern },
    baseModelNameOrPath: baseModel,
  });
  return { config, tensors };
}

/**
 * The step experts of the MoTE bundle in `dir`, each folded with the shared expert into one
 * PEFT adapter (see the top of this file), plus the shared expert unchanged (for prompt
 * tokens): name → adapter. Throws FormatError naming the file when the bundle is malformed.
 */
export function mergeStepExperts(dir: string): Map<string, MergedAdapter> {
  if (typeof dir !== 'string' || dir === '')
    throw new ArgumentError(`mergeStepExperts: dir: expected a MoTE bundle folder, got ${describe(dir)}`);
  const { config, experts, baseModel } = readMoteJson(dir);
  const shared = readExpert(path.join(dir, experts[SHARED_EXPERT]!));
  const out = new Map<string, MergedAdapter>();
  for (const step of config.steps) {
    out.set(step, merge(readExpert(path.join(dir, experts[step]!)), shared, config.alpha, 1 - config.alpha, baseModel));
  }
  // The shared expert alone, scale kept as its file says: A and B as they are.
  const sharedOnly = merge({ cfg: shared.cfg, modules: new Map() }, shared, 0, 1, baseModel);
  out.set(SHARED_EXPERT, sharedOnly);
  return out;
}
