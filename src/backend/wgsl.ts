// Builds the shader text of a kernel family from kernels/wgsl: resolves its `#include` lines,
// then prepends named constants and the weight loaders of its weight dtypes. Platform-free:
// the caller says how to read a file of kernels/wgsl (from disk in Node, see wgsl_node.ts;
// embedded at build time in the browser bundle, see src/web).
import type { DType } from '../dtype.js';

/** Reads kernels/wgsl/<path>, e.g. 'lora_shrink.wgsl' or 'include/lora_tile.wgsl'. */
export type WgslReader = (path: string) => string;

/**
 * Tile sizes of the LoRA GEMMs (kernels/wgsl/include/lora_tile.wgsl). The only place they are
 * written: shaders that include lora_tile.wgsl get them as constants, and the launches in
 * webgpu_lora.ts divide their grids by them.
 */
export const LORA_TILE = {
  /** slots (token, k) per sgmv tile */
  LORA_SLOTS: 64,
  /** ranks per workgroup */
  LORA_RANKS: 16,
  /** outputs (h) per workgroup */
  LORA_OUTS: 64,
  /** reduction step staged in workgroup memory (h, r or slots) */
  LORA_STEP: 16,
} as const;

/** Constants an include needs, prepended to every shader that includes it. */
const INCLUDE_CONSTS: Record<string, Record<string, number>> = {
  'include/lora_tile.wgsl': LORA_TILE,
};

const INCLUDE = /^#include "([\w/.-]+\.wgsl)"[ \t]*$/gm;

/**
 * For a binding `name` of weight dtype: `alias <name>_store` (f32, or u32 holding two
 * 16-bit values) and `fn load_<name>(i: u32) -> f32`. f16 uses core WGSL's
 * unpack2x16float, so no shader-f16 feature is needed; bf16 is the high half of an f32.
 */
export function weightLoader(name: string, dtype: DType): string {
  switch (dtype) {
    case 'f32':
      return `alias ${name}_store = f32;\nfn load_${name}(i: u32) -> f32 { return ${name}[i]; }\n`;
    case 'f16':
      return `alias ${name}_store = u32;\nfn load_${name}(i: u32) -> f32 { let p = unpack2x16float(${name}[i >> 1u]); return select(p.x, p.y, (i & 1u) == 1u); }\n`;
    case 'bf16':
      return `alias ${name}_store = u32;\nfn load_${name}(i: u32) -> f32 { let v = ${name}[i >> 1u]; return bitcast<f32>(select(v << 16u, v & 0xffff0000u, (i & 1u) == 1u)); }\n`;
    case 'i32':
      throw new Error('internal: i32 is not a weight dtype');
  }
}

/**
 * `path`'s text with each `#include "<file>"` line replaced by that file (once per shader; a
 * second include of the same file becomes empty). Adds the constants of included files to
 * `consts`.
 */
function resolveIncludes(read: WgslReader, path: string, seen: Set<string>, consts: Record<string, number>): string {
  return read(path).replace(INCLUDE, (_line, inc: string) => {
    if (seen.has(inc)) return `// (${inc} included above)`;
    seen.add(inc);
    Object.assign(consts, INCLUDE_CONSTS[inc]);
    return `// ---- ${inc}\n${resolveIncludes(read, inc, seen, consts)}// ---- end of ${inc}`;
  });
}

/** Full shader text of kernels/wgsl/<family>.wgsl: constants, weight loaders, then the source with its includes. */
export function specialise(read: WgslReader, family: string, weights: Record<string, DType>, consts: Record<string, number> = {}): string {
  const all: Record<string, number> = {};
  const body = resolveIncludes(read, `${family}.wgsl`, new Set(), all);
  Object.assign(all, consts);
  let pre = `// specialised: ${JSON.stringify({ weights, consts: all })}\n`;
  for (const [k, v] of Object.entries(all)) pre += `const ${k}: u32 = ${v >>> 0}u;\n`;
  for (const [n, d] of Object.entries(weights)) pre += weightLoader(n, d);
  return pre + body;
}
