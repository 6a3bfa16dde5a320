// Loads kernels/wgsl/<family>.wgsl and specialises it: weight dtypes become a storage
// alias plus a load function, and named constants are prepended.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import type { DType } from '../dtype.js';

const kernelDir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'kernels', 'wgsl');
const sources = new Map<string, string>();

export function wgslSource(family: string): string {
  let s = sources.get(family);
  if (s === undefined) {
    s = readFileSync(join(kernelDir, `${family}.wgsl`), 'utf8');
    sources.set(family, s);
  }
  return s;
}

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

/** Full shader text: constants, weight loaders, then the family's source. */
export function specialise(family: string, weights: Record<string, DType>, consts: Record<string, number> = {}): string {
  let pre = `// specialised: ${JSON.stringify({ weights, consts })}\n`;
  for (const [k, v] of Object.entries(consts)) pre += `const ${k}: u32 = ${v >>> 0}u;\n`;
  for (const [n, d] of Object.entries(weights)) pre += weightLoader(n, d);
  return pre + wgslSource(family);
}
