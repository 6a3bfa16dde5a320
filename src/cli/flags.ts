// Parsing of the CLI's flag values and prompt files into clear one-line errors. Every numeric
// flag is checked for form and range here (commander hands over raw strings), so a typo such as
// `--max-new-tokens 1e12`, `--top-p 2` or `--seed ''` is refused before any work starts.
import { ArgumentError, FormatError } from '../errors.js';
import { parsePrompts, readTextFile, type PromptRead } from '../io/prompts.js';

/** Most tokens one sequence may ask for; generation also ends at the model's context. */
export const MAX_NEW_TOKENS = 1 << 20;
/** Training / evaluation sizes a flag may ask for. */
export const MAX_STEPS = 10_000_000;
export const MAX_RANK = 4096;

/** Integer flags stay in i32 unless a flag states a smaller bound. */
export const MAX_INT_FLAG = 2 ** 31 - 1;

/**
 * An integer flag written in decimal digits, in [lo, hi]; `dflt` when the flag is absent.
 * Exponent and hex forms ('1e6', '0x10'), fractions, blanks and signs other than a leading '-'
 * are refused.
 */
export function intFlag(name: string, v: string | undefined, lo: number, hi: number, dflt: number): number {
  if (v === undefined) return dflt;
  const text = String(v).trim();
  const n = /^-?\d{1,16}$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < lo || n > hi) {
    throw new ArgumentError(`--${name}: expected an integer in [${lo}, ${hi}], got ${JSON.stringify(String(v))}`);
  }
  return n;
}

/**
 * A decimal number flag in [lo, hi] (or (lo, hi] with `openLow`); `dflt` when absent. Blank
 * text, NaN and infinities are refused.
 */
export function numFlag(
  name: string,
  v: string | undefined,
  lo: number,
  hi: number,
  dflt: number,
  opts: { openLow?: boolean } = {},
): number {
  if (v === undefined) return dflt;
  const text = String(v).trim();
  const n = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text) ? Number(text) : NaN;
  const lowOk = opts.openLow ? n > lo : n >= lo;
  if (!Number.isFinite(n) || !lowOk || n > hi) {
    throw new ArgumentError(`--${name}: expected a number in ${opts.openLow ? '(' : '['}${lo}, ${hi}], got ${JSON.stringify(String(v))}`);
  }
  return n;
}

/**
 * Reads a prompt file (JSONL, HH-RLHF transcripts or text lines; *.gz gunzipped) through the
 * bounded data reader (readTextFile): folders, FIFOs, binary files and text that is not UTF-8
 * are FormatErrors naming the file.
 */
export function readPromptFile(file: string): PromptRead {
  return parsePrompts(readTextFile(file, 'a prompt file'), file);
}
