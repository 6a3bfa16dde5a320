// Regular expressions that come from files (PEFT target_modules / rank_pattern /
// alpha_pattern, tokenizer.json Split and Replace patterns). A JS RegExp backtracks: a
// pattern like `(a+)+$` takes exponential time on a short input and would hang loading or
// encode. The rule:
//
// - Where the matching is ours (PEFT module paths), patterns run on re2js, a port of RE2 whose
//   matching is linear in the input. A pattern RE2 cannot compile (backreferences, lookaround)
//   is refused.
// - Where the pattern is handed to @huggingface/tokenizers, which builds its own backtracking
//   RegExp from it, a pattern is accepted only if
//     (a) it is one of the pre-tokenizer patterns of real tokenizers listed below (vetted by
//         hand: their quantifiers sit on single characters or classes, never nested, and their
//         only lookahead `\s+(?!\S)` is a single-class check), or
//     (b) RE2 compiles it (so no backreferences or lookaround) and the conservative static check
//         below finds no group that is repeated (`*`, `+`, `{n,}`, `{n,m}` with m > 1) while
//         containing a quantifier or an alternation. Nested and ambiguous repetition is what
//         makes backtracking exponential; without it each attempt is polynomial in the input.
//   Any other pattern is refused with a FormatError naming the file and field.

import { RE2JS } from 're2js';
import { FormatError } from '../errors.js';

/** Split patterns of real tokenizers (Llama-3 / cl100k, Qwen2, o200k-style), exactly as their tokenizer.json writes them. */
export const VETTED_TOKENIZER_PATTERNS: readonly string[] = [
  // Llama-3, cl100k_base
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  // Qwen2 / Qwen2.5
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  // GPT-2 (the ByteLevel pre-tokenizer's built-in pattern, sometimes written out as a Split)
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
  // o200k-style (GPT-4o and derived tokenizers)
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
];

/** Patterns longer than this are refused (real ones are a few hundred characters). */
export const MAX_PATTERN_CHARS = 4096;

/** Why `pattern` may backtrack badly, or null: a repeated group holding a quantifier or an alternation. */
export function nestedRepetition(pattern: string): string | null {
  // one entry per open group: does its body hold a quantifier / an alternation?
  const groups: { quant: boolean; alt: boolean; start: number }[] = [{ quant: false, alt: false, start: 0 }];
  let i = 0;
  // the group just closed (its flags), for the quantifier that may follow it
  let closed: { quant: boolean; alt: boolean; start: number } | null = null;
  const repeatAt = (j: number): boolean => {
    const c = pattern[j];
    if (c === '*' || c === '+') return true;
    if (c !== '{') return false;
    const m = /^\{(\d*)(,?)(\d*)\}/.exec(pattern.slice(j));
    if (m === null) return false;
    if (m[2] === '') return Number(m[1]) > 1; // {n}
    return m[3] === '' || Number(m[3]) > 1; // {n,} or {n,m}
  };
  const isQuant = (c: string | undefined) => c === '*' || c === '+' || c === '?' || c === '{';
  while (i < pattern.length) {
    const c = pattern[i]!;
    const top = groups[groups.length - 1]!;
    if (c === '\\') {
      closed = null;
      i += 2;
      continue;
    }
    if (c === '[') {
      // a class: skip to its closing bracket
      let j = i + 1;
      if (pattern[j] === '^') j++;
      if (pattern[j] === ']') j++;
      while (j < pattern.length && pattern[j] !== ']') j += pattern[j] === '\\' ? 2 : 1;
      i = j + 1;
      closed = null;
      continue;
    }
    if (c === '(') {
      groups.push({ quant: false, alt: false, start: i });
      closed = null;
      i++;
      continue;
    }
    if (c === ')') {
      const g = groups.length > 1 ? groups.pop()! : top;
      closed = g;
      const outer = groups[groups.length - 1]!;
      outer.quant ||= g.quant;
      outer.alt ||= g.alt;
      i++;
      continue;
    }
    if (c === '|') top.alt = true;
    if (isQuant(c)) {
      top.quant = true;
      if (closed !== null && repeatAt(i) && (closed.quant || closed.alt)) {
        return `the group at offset ${closed.start} is repeated and holds ${closed.quant ? 'a quantifier' : 'an alternation'} (nested repetition backtracks exponentially)`;
      }
      // skip a {n,m} body and a lazy/possessive marker
      if (c === '{') {
        const end = pattern.indexOf('}', i);
        if (end !== -1) i = end;
      }
      closed = null;
      i++;
      continue;
    }
    closed = null;
    i++;
  }
  return null;
}

/** RE2's verdict on `pattern`: null when it compiles, else why not. */
function re2Error(pattern: string): string | null {
  try {
    RE2JS.compile(pattern);
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}

/**
 * Checks a regex from tokenizer.json before it is handed to the tokenizers library (see the
 * rule at the top). `where` names the file and field.
 */
export function checkTokenizerPattern(pattern: unknown, where: string): void {
  if (typeof pattern !== 'string') throw new FormatError(`${where}: expected a regex string, got ${typeof pattern}`);
  if (VETTED_TOKENIZER_PATTERNS.includes(pattern)) return;
  if (pattern.length > MAX_PATTERN_CHARS)
    throw new FormatError(`${where}: a regex of ${pattern.length} characters, more than ${MAX_PATTERN_CHARS}`);
  const err = re2Error(pattern);
  if (err !== null)
    throw new FormatError(
      `${where}: regex ${JSON.stringify(pattern)} refused: not a known tokenizer pattern and not one a linear-time engine can run (${err})`,
    );
  const nested = nestedRepetition(pattern);
  if (nested !== null) throw new FormatError(`${where}: regex ${JSON.stringify(pattern)} refused: ${nested}`);
}

/** A regex from a file compiled with RE2 (linear-time matching); FormatError naming `where` when RE2 cannot run it. */
export function compileFileRegex(pattern: string, where: string): RE2JS {
  if (pattern.length > MAX_PATTERN_CHARS)
    throw new FormatError(`${where}: a regex of ${pattern.length} characters, more than ${MAX_PATTERN_CHARS}`);
  try {
    return RE2JS.compile(pattern);
  } catch (e) {
    throw new FormatError(
      `${where}: regex ${JSON.stringify(pattern)} is not one mote can match in linear time (RE2 syntax: no backreferences or lookaround): ${(e as Error).message}`,
    );
  }
}
