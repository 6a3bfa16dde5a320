// Node's reader of kernels/wgsl: the files shipped in the package, read once each.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import type { WgslReader } from './wgsl.js';

const kernelDir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'kernels', 'wgsl');
const sources = new Map<string, string>();

export const readWgslFile: WgslReader = (path) => {
  let s = sources.get(path);
  if (s === undefined) {
    s = readFileSync(join(kernelDir, path), 'utf8');
    sources.set(path, s);
  }
  return s;
};
