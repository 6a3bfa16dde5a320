// Reading files that come from outside (model folders, adapters, tokenizers, checkpoints,
// prompt sets): every reader goes through here so that a folder, a FIFO, a device or a huge
// file in place of the expected one gives a FormatError naming the file instead of EISDIR,
// a hang on open() or an unbounded allocation.

import { FormatError } from '../errors.js';
import type { Stats } from 'node:fs';
import { nodeBuiltin } from './node_builtins.js';
const fs = nodeBuiltin<typeof import('node:fs')>('node:fs');

/** JSON files mote reads (configs, tokenizer.json, mote.json, checkpoint state) stay below this. */
export const MAX_JSON_BYTES = 256 * 1024 * 1024;

function sizeText(n: number): string {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${n} bytes`;
}

/**
 * Checks that `file` is a regular file (following symlinks) of at most `maxBytes` and
 * returns its size. Missing files, folders, FIFOs, sockets and devices are FormatErrors.
 */
export function checkRegularFile(file: string, what: string, maxBytes = Number.MAX_SAFE_INTEGER): number {
  let st: Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new FormatError(`${file}: not found (${what})`);
    throw new FormatError(`${file}: cannot read (${what}): ${(e as Error).message}`);
  }
  if (st.isDirectory()) throw new FormatError(`${file}: is a folder, expected a file (${what})`);
  if (!st.isFile()) throw new FormatError(`${file}: not a regular file (${what}); FIFOs, sockets and devices are refused`);
  if (st.size > maxBytes) throw new FormatError(`${file}: ${sizeText(st.size)}, more than the ${sizeText(maxBytes)} a ${what} may have`);
  return st.size;
}

/** Reads a whole regular file of at most `maxBytes`. */
export function readFileBounded(file: string, what: string, maxBytes: number): Buffer {
  checkRegularFile(file, what, maxBytes);
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new FormatError(`${file}: cannot read (${what}): ${(e as Error).message}`);
  }
}

/** Reads a UTF-8 text file of at most `maxBytes`; invalid UTF-8 is a FormatError. */
export function readTextFile(file: string, what: string, maxBytes = MAX_JSON_BYTES): string {
  const bytes = readFileBounded(file, what, maxBytes);
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new FormatError(`${file}: not UTF-8 text (${what})`);
  }
}

/** Parses JSON text; malformed text and nesting too deep for the engine are FormatErrors naming `where`. */
export function parseJson(text: string, where: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    const msg = e instanceof RangeError ? 'nested too deeply' : (e as Error).message;
    throw new FormatError(`${where}: malformed JSON: ${msg}`);
  }
}

/** Reads and parses a JSON file (see checkRegularFile for what is refused). */
export function readJsonFile(file: string, what: string, maxBytes = MAX_JSON_BYTES): unknown {
  return parseJson(readTextFile(file, what, maxBytes), file);
}

/** The nesting depth of a parsed JSON value, stopping early once it passes `limit`. */
export function jsonDepth(v: unknown, limit: number): number {
  // iterative: a recursive walk is exactly what overflows the stack on hostile input
  let max = 0;
  const stack: [unknown, number][] = [[v, 1]];
  while (stack.length) {
    const [x, d] = stack.pop()!;
    if (x === null || typeof x !== 'object') continue;
    if (d > max) max = d;
    if (max > limit) return max;
    for (const c of Array.isArray(x) ? x : Object.values(x)) stack.push([c, d + 1]);
  }
  return max;
}

/** Writes `value` as JSON text indented by 2 with a final newline: the one form of every JSON file mote writes. */
export function jsonText(value: unknown): string {
  return JSON.stringify(value, null, 2) + '\n';
}

/** Writes `value` to `file` as jsonText. */
export function writeJsonFile(file: string, value: unknown): void {
  fs.writeFileSync(file, jsonText(value));
}
