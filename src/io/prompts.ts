// Prompt sources for self-generated AlignCoT chains: JSONL of prompts, HH-RLHF transcripts,
// plain text lines. Files may be gzipped (name ending in .gz), as HH-RLHF ships.
//
// JSONL, one entry per line, any of:
//   "a question"                                   a plain string
//   {"prompt": "..."} / {"question": "..."}         a question
//   {"prompt": [{"role", "content"}, ...]}          a chat (also under "messages")
//   {"chosen": "\n\nHuman: …\n\nAssistant: …"}     an HH-RLHF pair (the "chosen" side)
// A string that starts with "Human:" or "Assistant:" (after whitespace) is read as an HH
// transcript wherever it stands. A multi-turn prompt is the conversation up to and including the last user
// (Human) turn, kept as chat messages; what follows it (the answer to be written) is dropped.
//
// Malformed entries do not stop the read: each is reported as { line, reason } and skipped.
// An empty file, or one with no usable prompt, is a FormatError naming the file.

import * as zlib from 'node:zlib';
import { ArgumentError, FormatError, describe } from '../errors.js';
import { stepOfEndToken, stepOfToken } from '../mote/steps.js';
import type { ChatMessage } from './tokenizer.js';
import { readFileBounded } from './files.js';

export interface PromptRecord {
  /** The prompt as plain text: the question, or for a conversation its "Human: … / Assistant: …" transcript. */
  prompt: string;
  /** The prompt as chat messages, ending with a user message. */
  messages: ChatMessage[];
  /** 1-based line of the file. */
  line: number;
}

export interface SkippedLine {
  line: number;
  reason: string;
}

export interface PromptRead {
  prompts: PromptRecord[];
  skipped: SkippedLine[];
  /** The format the file was read as. */
  format: 'jsonl' | 'text';
}

export type PromptFormat = 'auto' | 'jsonl' | 'text';

export interface ReadPromptsOptions {
  /** 'auto' (default): JSONL for *.jsonl / *.json, text for *.txt, else JSONL when the first line starts with { or ". */
  format?: PromptFormat;
}

/** Data files (prompts, chains) larger than this, before or after gunzip, are refused: a data set, not a corpus. */
export const MAX_DATA_FILE_BYTES = 256 * 1024 * 1024;

/**
 * Reads a data file of text (prompts, chains; *.gz gunzipped) through the bounded reader:
 * missing files, folders, FIFOs, files or gzip contents over MAX_DATA_FILE_BYTES, binary files
 * (a NUL byte) and text that is not UTF-8 are FormatErrors naming the file.
 */
export function readTextFile(file: string, what = 'a text data file'): string {
  if (typeof file !== 'string' || file.length === 0) throw new ArgumentError(`readTextFile: file: expected a path, got ${describe(file)}`);
  let bytes = readFileBounded(file, what, MAX_DATA_FILE_BYTES);
  if (file.endsWith('.gz')) {
    try {
      bytes = zlib.gunzipSync(bytes, { maxOutputLength: MAX_DATA_FILE_BYTES });
    } catch (e) {
      throw new FormatError(`${file}: not a gzip file of at most ${MAX_DATA_FILE_BYTES} bytes unpacked: ${(e as Error).message}`);
    }
  }
  const nul = bytes.indexOf(0);
  if (nul >= 0) throw new FormatError(`${file}: binary file (NUL byte at offset ${nul}), expected text (${what})`);
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new FormatError(`${file}: not UTF-8 text (${what})`);
  }
}

/** The lines of a text, 1-based, without line ends (LF or CRLF). */
export function textLines(text: string): string[] {
  const lines = text.split(/\r?\n/);
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  return lines;
}

const HH_START = /^\s*(?:Human|Assistant):/;

/**
 * The turns of an HH-RLHF transcript ("\n\nHuman: …\n\nAssistant: …", Human first, turns
 * alternating) as chat messages (user / assistant), contents trimmed. A final empty Assistant
 * turn (a generation cue) is left out. Throws FormatError saying what is wrong.
 */
export function parseHHTranscript(text: string): ChatMessage[] {
  if (typeof text !== 'string') throw new ArgumentError(`parseHHTranscript: text: expected a string, got ${describe(text)}`);
  const re = /(?:^|\n\n)[ \t]*(Human|Assistant):/g;
  const marks = [...text.matchAll(re)];
  if (marks.length === 0) throw new FormatError('not an HH transcript: no "Human:" turn');
  const head = text.slice(0, marks[0]!.index);
  if (head.trim() !== '') throw new FormatError(`text before the first turn: ${JSON.stringify(head.trim().slice(0, 40))}`);
  const turns: ChatMessage[] = marks.map((m, i) => {
    const from = m.index! + m[0].length;
    const to = i + 1 < marks.length ? marks[i + 1]!.index! : text.length;
    return { role: m[1] === 'Human' ? 'user' : 'assistant', content: text.slice(from, to).trim() };
  });
  if (turns[0]!.role !== 'user') throw new FormatError('the transcript starts with an Assistant turn (expected Human first)');
  if (turns.length > 1 && turns[turns.length - 1]!.role === 'assistant' && turns[turns.length - 1]!.content === '') turns.pop();
  for (const [i, t] of turns.entries()) {
    if (i > 0 && t.role === turns[i - 1]!.role)
      throw new FormatError(`turn ${i + 1}: two ${t.role === 'user' ? 'Human' : 'Assistant'} turns in a row`);
    if (t.content === '') throw new FormatError(`turn ${i + 1}: empty ${t.role === 'user' ? 'Human' : 'Assistant'} turn`);
  }
  return turns;
}

/** The conversation up to and including its last user message; FormatError when it has none. */
export function promptMessages(messages: readonly ChatMessage[]): ChatMessage[] {
  let last = -1;
  for (let i = messages.length - 1; i >= 0; i--)
    if (messages[i]!.role === 'user') {
      last = i;
      break;
    }
  if (last < 0) throw new FormatError('no user message');
  return messages.slice(0, last + 1).map((m) => ({ role: m.role, content: m.content }));
}

/** The prompt of an HH-RLHF transcript: its turns up to the last Human turn, as chat messages. */
export function hhPrompt(text: string): ChatMessage[] {
  return promptMessages(parseHHTranscript(text));
}

const ROLE_NAMES: Record<string, string> = { user: 'Human', assistant: 'Assistant', system: 'System' };

/** Plain text of a prompt: a lone user message is its content; a conversation is written as an HH transcript. */
export function plainPrompt(messages: readonly ChatMessage[]): string {
  if (messages.length === 1 && messages[0]!.role === 'user') return messages[0]!.content;
  return messages.map((m) => `${ROLE_NAMES[m.role] ?? m.role}: ${m.content}`).join('\n\n');
}

function checkMessages(v: unknown[]): ChatMessage[] {
  const out: ChatMessage[] = [];
  for (const [i, m] of v.entries()) {
    if (
      typeof m !== 'object' ||
      m === null ||
      typeof (m as ChatMessage).role !== 'string' ||
      typeof (m as ChatMessage).content !== 'string'
    ) {
      throw new FormatError(`messages[${i}]: expected { role: string, content: string }`);
    }
    out.push({ role: (m as ChatMessage).role, content: (m as ChatMessage).content });
  }
  return promptMessages(out);
}

function fromString(s: string): ChatMessage[] {
  if (HH_START.test(s)) return hhPrompt(s);
  const q = s.trim();
  if (q === '') throw new FormatError('empty prompt');
  return [{ role: 'user', content: q }];
}

/** The prompt messages of one parsed JSONL entry; FormatError saying why it is not one. */
function fromEntry(v: unknown): ChatMessage[] {
  if (typeof v === 'string') return fromString(v);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new FormatError(
      `expected a string or an object with "prompt", "question", "messages" or "chosen", got ${Array.isArray(v) ? 'a list' : describe(v)}`,
    );
  }
  const o = v as Record<string, unknown>;
  for (const key of ['prompt', 'question', 'messages', 'chosen']) {
    const x = o[key];
    if (x === undefined || x === null) continue;
    if (typeof x === 'string') return key === 'chosen' ? hhPrompt(x) : fromString(x);
    if (Array.isArray(x) && (key === 'prompt' || key === 'messages')) return checkMessages(x);
    throw new FormatError(
      `"${key}": expected a ${key === 'prompt' || key === 'messages' ? 'string or a list of messages' : 'string'}, got ${describe(x)}`,
    );
  }
  throw new FormatError(`no "prompt", "question", "messages" or "chosen" field (fields: ${Object.keys(o).join(', ') || 'none'})`);
}

function record(messages: ChatMessage[], line: number): PromptRecord {
  for (const m of messages) {
    for (const t of m.content.matchAll(/<\|[^|<>\s]*\|>/g)) {
      if (stepOfToken(t[0]) || stepOfEndToken(t[0])) throw new FormatError(`the prompt holds the step tag '${t[0]}'`);
    }
  }
  return { prompt: plainPrompt(messages), messages, line };
}

function detect(file: string, text: string): 'jsonl' | 'text' {
  const name = file.replace(/\.gz$/, '');
  if (/\.jsonl?$/i.test(name)) return 'jsonl';
  if (/\.txt$/i.test(name)) return 'text';
  const first = textLines(text).find((l) => l.trim() !== '') ?? '';
  return /^\s*[{"]/.test(first) ? 'jsonl' : 'text';
}

/**
 * Parses prompts from `text` (the content of `file`, which names it in errors). Blank lines
 * are ignored; malformed entries are skipped and reported. Throws FormatError naming the file
 * when it has no non-blank line, or no usable prompt (with the first reasons).
 */
export function parsePrompts(text: string, file: string, opts: ReadPromptsOptions = {}): PromptRead {
  if (typeof text !== 'string') throw new ArgumentError(`parsePrompts: text: expected a string, got ${describe(text)}`);
  const format = opts.format ?? 'auto';
  if (!['auto', 'jsonl', 'text'].includes(format))
    throw new ArgumentError(`parsePrompts: format: expected 'auto', 'jsonl' or 'text', got ${describe(format)}`);
  const lines = textLines(text.replace(/^\uFEFF/, ''));
  if (!lines.some((l) => l.trim() !== '')) throw new FormatError(`${file}: empty: no prompts`);
  const fmt = format === 'auto' ? detect(file, text) : format;
  if (fmt === 'jsonl') {
    const first = lines.find((l) => l.trim() !== '')!;
    if (first.trim() === '[') throw new FormatError(`${file}: a JSON list, not JSONL (expected one prompt per line)`);
  }
  const prompts: PromptRecord[] = [];
  const skipped: SkippedLine[] = [];
  for (const [i, raw] of lines.entries()) {
    const line = i + 1;
    if (raw.trim() === '') continue;
    try {
      if (fmt === 'text') {
        prompts.push(record([{ role: 'user', content: raw.trim() }], line));
        continue;
      }
      let v: unknown;
      try {
        v = JSON.parse(raw);
      } catch (e) {
        throw new FormatError(`malformed JSON: ${(e as Error).message}`);
      }
      prompts.push(record(fromEntry(v), line));
    } catch (e) {
      if (!(e instanceof FormatError)) throw e;
      skipped.push({ line, reason: e.message });
    }
  }
  if (prompts.length === 0) {
    const first = skipped
      .slice(0, 3)
      .map((s) => `line ${s.line}: ${s.reason}`)
      .join('; ');
    throw new FormatError(`${file}: no usable prompt (${skipped.length} line${skipped.length === 1 ? '' : 's'} skipped; ${first})`);
  }
  return { prompts, skipped, format: fmt };
}

/** Reads prompts from a JSONL, HH-RLHF or text file (see parsePrompts). */
export function readPrompts(file: string, opts: ReadPromptsOptions = {}): PromptRead {
  return parsePrompts(readTextFile(file), file, opts);
}
