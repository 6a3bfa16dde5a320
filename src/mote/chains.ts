// Chain builder: AlignCoT chains (JSONL or Chain objects) → token-level training examples
// for a MoTE bundle, and packing of examples into training batches.
//
// An example is the prompt's tokens followed by each step's tokens:
//   [prompt …] [<|analysis|> text … <|end_analysis|>] [<|guidance|> … <|end_guidance|>] …
// with stepIds −1 on the prompt and the step's index in config.steps on every token of a
// step, its tags included (the start tag is the first token routed to the step's expert at
// inference, the end tag is still produced by it), and lossMask 1 on the chain, 0 on the
// prompt (lossMask[t] = 1: token t is learned, i.e. predicted from the tokens before it —
// the trainer's TrainExample convention).
//
// Each step's text is encoded on its own and the tags are put in by id, so a tag can never
// merge with the text around it; the step tags must be single special tokens of the
// tokenizer (MoteTokenizer.addSpecialTokens(specialTokens(config)) makes them so).

import { packSequences, type PackedSequences } from '../train/pack.js';
import { ArgumentError, FormatError, describe } from '../errors.js';
import type { ChatMessage, MoteTokenizer } from '../io/tokenizer.js';
import { plainPrompt, readTextFile, textLines } from '../io/prompts.js';
import { checkChain, type Chain, type ChainStep } from './aligncot.js';
import { STEPS, STEP_END_TOKENS, STEP_TOKENS, specialTokens, type MoteConfig, type StepName } from './steps.js';

/** One training example (a TrainExample with step ids). */
export interface ChainExample {
  ids: Int32Array;
  /** −1 on prompt tokens, else the index of the token's step in config.steps. */
  stepIds: Int32Array;
  /** 1 on chain tokens (tags included), 0 on prompt tokens. */
  lossMask: Uint8Array;
}

/** A chain read from a JSONL file, with where it came from. */
export interface ChainRecord extends Chain {
  file: string;
  /** 1-based line. */
  line: number;
}

// ---------------------------------------------------------------------------------------
// JSONL

const META_FIELDS = ['id', 'meta'];

function stepText(v: unknown, where: string): string {
  if (typeof v !== 'string') throw new FormatError(`${where}: expected a string, got ${describe(v)}`);
  if (v.trim() === '') throw new FormatError(`${where}: empty text (leave the step out instead)`);
  return v;
}

function unknownStep(name: unknown): string {
  const hint = name === 'response' ? " (the answer step is called 'answer'; its tag is <|response|>)" : '';
  return `unknown step ${describe(name)} (expected one of ${STEPS.join(', ')})${hint}`;
}

/**
 * One chain from a parsed JSONL entry: `{ prompt, analysis?, guidance?, answer?, check? }` or
 * `{ prompt, steps: [{ step, text }] }`; `messages` may stand for or beside `prompt`, and `id`
 * and `meta` are ignored. `where` (file:line) prefixes every FormatError.
 */
export function chainFromJson(v: unknown, where: string): Chain {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new FormatError(`${where}: expected an object { prompt, analysis, guidance, answer, check? }, got ${describe(v)}`);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (k === 'prompt' || k === 'messages' || k === 'steps' || META_FIELDS.includes(k) || (STEPS as readonly string[]).includes(k))
      continue;
    throw new FormatError(`${where}: field "${k}": ${unknownStep(k)}`);
  }
  let messages: ChatMessage[] | undefined;
  if (o.messages !== undefined) {
    if (!Array.isArray(o.messages) || o.messages.length === 0)
      throw new FormatError(`${where}: "messages": expected a non-empty list of { role, content }, got ${describe(o.messages)}`);
    messages = o.messages.map((m, i) => {
      if (typeof m !== 'object' || m === null || typeof m.role !== 'string' || typeof m.content !== 'string')
        throw new FormatError(`${where}: "messages"[${i}]: expected { role: string, content: string }`);
      return { role: m.role as string, content: m.content as string };
    });
  }
  let prompt: string;
  if (typeof o.prompt === 'string') prompt = o.prompt;
  else if (o.prompt === undefined && messages) prompt = plainPrompt(messages);
  else
    throw new FormatError(`${where}: "prompt": expected a string${messages ? '' : ' (or a "messages" list)'}, got ${describe(o.prompt)}`);

  const steps: ChainStep[] = [];
  const flat = STEPS.filter((s) => o[s] !== undefined && o[s] !== null);
  if (o.steps !== undefined) {
    if (flat.length > 0) throw new FormatError(`${where}: both "steps" and "${flat[0]}": give the steps one way only`);
    if (!Array.isArray(o.steps)) throw new FormatError(`${where}: "steps": expected a list of { step, text }, got ${describe(o.steps)}`);
    for (const [i, s] of o.steps.entries()) {
      if (typeof s !== 'object' || s === null || Array.isArray(s))
        throw new FormatError(`${where}: "steps"[${i}]: expected { step, text }, got ${describe(s)}`);
      if (!(STEPS as readonly unknown[]).includes(s.step)) throw new FormatError(`${where}: "steps"[${i}].step: ${unknownStep(s.step)}`);
      steps.push({ step: s.step as StepName, text: stepText(s.text, `${where}: "steps"[${i}].text`) });
    }
  } else {
    for (const s of flat) steps.push({ step: s, text: stepText(o[s], `${where}: "${s}"`) });
  }
  if (steps.length === 0) throw new FormatError(`${where}: no steps (expected ${STEPS.map((s) => `"${s}"`).join(', ')} or "steps")`);
  // Chain order and repeats, against every step (the bundle's own steps are checked when building).
  try {
    checkChain({ prompt, messages, steps }, { steps: [...STEPS] }, 'chain');
  } catch (e) {
    if (e instanceof ArgumentError) throw new FormatError(`${where}: ${e.message}`);
    throw e;
  }
  return messages ? { prompt, messages, steps } : { prompt, steps };
}

/**
 * Chains from JSONL text (`file` names it in errors). Blank lines are ignored. By default a
 * malformed line (bad JSON, unknown step, steps out of order, ...) throws FormatError naming
 * file:line; with `skipped`, it is recorded there ({ line, reason }) and the read goes on.
 * A file with no chain at all is always a FormatError naming the file.
 */
export function parseChainsJsonl(text: string, file: string, opts: { skipped?: { line: number; reason: string }[] } = {}): ChainRecord[] {
  if (typeof text !== 'string') throw new ArgumentError(`parseChainsJsonl: text: expected a string, got ${describe(text)}`);
  const out: ChainRecord[] = [];
  for (const [i, raw] of textLines(text.replace(/^\uFEFF/, '')).entries()) {
    if (raw.trim() === '') continue;
    const where = `${file}:${i + 1}`;
    try {
      let v: unknown;
      try {
        v = JSON.parse(raw);
      } catch (e) {
        throw new FormatError(`${where}: malformed JSON: ${(e as Error).message}`);
      }
      out.push({ ...chainFromJson(v, where), file, line: i + 1 });
    } catch (e) {
      if (!opts.skipped || !(e instanceof FormatError || e instanceof ArgumentError)) throw e;
      opts.skipped.push({
        line: i + 1,
        reason: (e as Error).message.startsWith(`${where}: `) ? (e as Error).message.slice(where.length + 2) : (e as Error).message,
      });
    }
  }
  if (out.length === 0)
    throw new FormatError(
      `${file}: ${opts.skipped?.length ? `no valid chain (${opts.skipped.length} malformed line(s), the first at line ${opts.skipped[0]!.line}: ${opts.skipped[0]!.reason})` : 'empty: no chains'}`,
    );
  return out;
}

/** Reads a chains JSONL file (gzipped when the name ends in .gz); see parseChainsJsonl. */
export function readChainsJsonl(file: string, opts: { skipped?: { line: number; reason: string }[] } = {}): ChainRecord[] {
  return parseChainsJsonl(readTextFile(file), file, opts);
}

/** A chain as a JSONL entry: `{ prompt, messages?, analysis, guidance, answer, check? }`. */
export function chainToJson(chain: Chain): Record<string, unknown> {
  const c = checkChain(chain, { steps: [...STEPS] }, 'chainToJson: chain');
  const o: Record<string, unknown> = { prompt: c.prompt };
  if (c.messages) o.messages = c.messages.map((m) => ({ role: m.role, content: m.content }));
  for (const s of c.steps) o[s.step] = s.text;
  return o;
}

// ---------------------------------------------------------------------------------------
// Tokens

/** The ids of the step tags of `config`'s steps. */
export interface StepTokenIds {
  start: number[];
  end: number[];
}

/**
 * The ids of the bundle's step tags, checking that each is a single special token of the
 * tokenizer (encodes alone as its own id, and is left out by decode with skipSpecialTokens).
 * Throws ArgumentError naming the tag otherwise.
 */
export function stepTokenIds(tokenizer: MoteTokenizer, config: Pick<MoteConfig, 'steps'>): StepTokenIds {
  const fix = `add them first: tokenizer.addSpecialTokens(${JSON.stringify(specialTokens(config))}) (and resize the model's embeddings)`;
  const one = (tag: string): number => {
    const id = tokenizer.tokenToId(tag);
    const enc = tokenizer.encode(tag, { addSpecialTokens: false });
    if (id === undefined || enc.length !== 1 || enc[0] !== id) {
      throw new ArgumentError(`tokenizer: the step tag '${tag}' is not a single token (it encodes as ${enc.length} ids); ${fix}`);
    }
    if (tokenizer.decode([id], { skipSpecialTokens: true }) !== '')
      throw new ArgumentError(`tokenizer: the step tag '${tag}' is a token but not a special one; ${fix}`);
    return id;
  };
  return { start: config.steps.map((s) => one(STEP_TOKENS[s])), end: config.steps.map((s) => one(STEP_END_TOKENS[s])) };
}

export interface ChainExampleOptions {
  /** Longest example in tokens; trailing steps are dropped to fit. Default no limit. */
  maxLength?: number;
  /** 'chat': the tokenizer's chat template (user turn + generation prompt); 'plain': the prompt text with the tokenizer's special tokens (e.g. <s>); 'auto' (default): chat when the tokenizer has a template. */
  promptFormat?: 'auto' | 'chat' | 'plain';
  /** Append the eos token after the last step (learned, routed to that step). Default false: generation stops at the last step's end tag. */
  appendEos?: boolean;
  /**
   * Steps of the chain the bundle has no expert for. 'check' (default): a safety-check step is
   * data, not an expert (DESIGN §1: it builds the data and decides which steps a chain keeps), so
   * it is left out of the example unless the bundle has a check expert; any other extra step is
   * an error. 'error': every extra step is an error. 'drop': every extra step is left out.
   */
  extraSteps?: 'check' | 'error' | 'drop';
}

interface Resolved {
  maxLength: number;
  promptFormat: 'auto' | 'chat' | 'plain';
  appendEos: boolean;
  extraSteps: 'check' | 'error' | 'drop';
}

function resolve(op: string, opts: ChainExampleOptions): Resolved {
  if (typeof opts !== 'object' || opts === null) throw new ArgumentError(`${op}: opts: expected an object, got ${describe(opts)}`);
  const maxLength = opts.maxLength ?? Infinity;
  if (maxLength !== Infinity && (typeof maxLength !== 'number' || !Number.isSafeInteger(maxLength) || maxLength < 2)) {
    throw new ArgumentError(`${op}: maxLength: expected an integer ≥ 2, got ${describe(maxLength)}`);
  }
  const promptFormat = opts.promptFormat ?? 'auto';
  if (!['auto', 'chat', 'plain'].includes(promptFormat))
    throw new ArgumentError(`${op}: promptFormat: expected 'auto', 'chat' or 'plain', got ${describe(promptFormat)}`);
  const extraSteps = opts.extraSteps ?? 'check';
  if (extraSteps !== 'check' && extraSteps !== 'error' && extraSteps !== 'drop')
    throw new ArgumentError(`${op}: extraSteps: expected 'check', 'error' or 'drop', got ${describe(extraSteps)}`);
  return { maxLength, promptFormat, appendEos: opts.appendEos ?? false, extraSteps };
}

/** The prompt's token ids: through the chat template (with the generation prompt) or plain. */
export function promptIds(
  tokenizer: MoteTokenizer,
  chain: Pick<Chain, 'prompt' | 'messages'>,
  format: 'auto' | 'chat' | 'plain' = 'auto',
): number[] {
  const chat = format === 'chat' || (format === 'auto' && tokenizer.chatTemplate !== null);
  if (chat) {
    const messages = chain.messages ?? [{ role: 'user', content: chain.prompt }];
    // The template writes bos itself, so no more special tokens (as transformers' apply_chat_template).
    return tokenizer.encode(tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true }), { addSpecialTokens: false });
  }
  return tokenizer.encode(chain.prompt, { addSpecialTokens: true });
}

/** A chain too long for maxLength even with only its first step. */
export class ChainTooLongError extends ArgumentError {}

interface Built {
  example: ChainExample;
  dropped: StepName[];
}

function build(
  chain: Chain,
  tokenizer: MoteTokenizer,
  config: Pick<MoteConfig, 'steps'>,
  tags: StepTokenIds,
  o: Resolved,
  where: string,
): Built {
  let steps = chain.steps;
  if (o.extraSteps !== 'error' && Array.isArray(steps)) {
    steps = steps.filter((s) => config.steps.includes(s?.step) || (o.extraSteps === 'check' && s?.step !== 'check'));
  }
  checkChain({ ...chain, steps }, config, where);
  const prompt = promptIds(tokenizer, chain, o.promptFormat);
  if (prompt.length === 0) throw new ArgumentError(`${where}.prompt: encodes to no tokens (nothing to predict the first step from)`);
  const parts = steps.map((s) => {
    const k = config.steps.indexOf(s.step);
    return { step: s.step, k, ids: [tags.start[k]!, ...tokenizer.encode(s.text, { addSpecialTokens: false }), tags.end[k]!] };
  });
  const eos = o.appendEos ? tokenizer.eosTokenId : undefined;
  if (o.appendEos && eos === undefined) throw new ArgumentError(`${where}: appendEos: the tokenizer has no eos_token`);
  const extra = eos === undefined ? 0 : 1;
  let keep = parts.length;
  let total = prompt.length + extra + parts.reduce((n, p) => n + p.ids.length, 0);
  // Drop whole trailing steps, never a part of one: a cut step would teach an unclosed tag.
  while (total > o.maxLength && keep > 1) total -= parts[--keep]!.ids.length;
  if (total > o.maxLength) {
    throw new ChainTooLongError(
      `${where}: too long: the prompt (${prompt.length} tokens) and the first step '${parts[0]!.step}' (${parts[0]!.ids.length} tokens)${extra ? ' and eos' : ''} make ${total} tokens > maxLength ${o.maxLength}`,
    );
  }
  const ids = new Int32Array(total),
    stepIds = new Int32Array(total).fill(-1),
    lossMask = new Uint8Array(total);
  ids.set(prompt, 0);
  let at = prompt.length;
  for (const p of parts.slice(0, keep)) {
    ids.set(p.ids, at);
    stepIds.fill(p.k, at, at + p.ids.length);
    lossMask.fill(1, at, at + p.ids.length);
    at += p.ids.length;
  }
  if (eos !== undefined) {
    ids[at] = eos;
    stepIds[at] = parts[keep - 1]!.k;
    lossMask[at] = 1;
  }
  return { example: { ids, stepIds, lossMask }, dropped: parts.slice(keep).map((p) => p.step) };
}

/**
 * The training example of one chain, and the trailing steps dropped to fit maxLength.
 * Throws ArgumentError for a chain the bundle cannot take (unknown or extra step, steps out
 * of order, step tags not single special tokens) or too long even with only its first step.
 */
export function chainExample(
  chain: Chain,
  tokenizer: MoteTokenizer,
  config: Pick<MoteConfig, 'steps'>,
  opts: ChainExampleOptions = {},
): { example: ChainExample; dropped: StepName[] } {
  const o = resolve('chainExample', opts);
  const where = chainWhere(chain, 'chainExample: chain');
  return build(chain, tokenizer, config, stepTokenIds(tokenizer, config), o, where);
}

function chainWhere(chain: unknown, fallback: string): string {
  const r = chain as Partial<ChainRecord> | null;
  return r && typeof r.file === 'string' && typeof r.line === 'number' ? `${r.file}:${r.line}: chain` : fallback;
}

export interface ChainExamplesResult {
  examples: ChainExample[];
  /** Chains too long even with only their first step, by index (and file line when read from JSONL). */
  tooLong: { index: number; where: string; reason: string }[];
  /** Chains that lost trailing steps to fit maxLength. */
  truncated: { index: number; where: string; dropped: StepName[] }[];
}

/**
 * Training examples of many chains. A chain too long even with only its first step is left
 * out and reported in `tooLong`; any other problem (unknown step, steps out of order, ...)
 * throws ArgumentError naming the chain (file:line for a ChainRecord, else chains[i]).
 */
export function chainExamples(
  chains: readonly Chain[],
  tokenizer: MoteTokenizer,
  config: Pick<MoteConfig, 'steps'>,
  opts: ChainExampleOptions = {},
): ChainExamplesResult {
  if (!Array.isArray(chains)) throw new ArgumentError(`chainExamples: chains: expected a list, got ${describe(chains)}`);
  const o = resolve('chainExamples', opts);
  const tags = stepTokenIds(tokenizer, config);
  const res: ChainExamplesResult = { examples: [], tooLong: [], truncated: [] };
  for (const [index, chain] of chains.entries()) {
    const where = chainWhere(chain, `chainExamples: chains[${index}]`);
    let built: Built;
    try {
      built = build(chain, tokenizer, config, tags, o, where);
    } catch (e) {
      if (e instanceof ChainTooLongError) {
        res.tooLong.push({ index, where, reason: e.message });
        continue;
      }
      throw e;
    }
    res.examples.push(built.example);
    if (built.dropped.length > 0) res.truncated.push({ index, where, dropped: built.dropped });
  }
  return res;
}

// ---------------------------------------------------------------------------------------
// Packing

/** A packed batch (src/train/pack.ts) with the indices of its examples. */
export interface PackedBatch extends PackedSequences {
  /** Indices of the packed examples, in batch order. */
  examples: number[];
}

/**
 * Packs examples greedily, in order, into batches of at most `maxTokens` tokens, each
 * example a whole sequence. Throws ArgumentError naming the example when one is longer than
 * maxTokens or its arrays disagree in length.
 */
export function packExamples(
  examples: readonly { ids: ArrayLike<number>; lossMask: ArrayLike<number>; stepIds?: ArrayLike<number> }[],
  maxTokens: number,
): PackedBatch[] {
  if (!Array.isArray(examples)) throw new ArgumentError(`packExamples: examples: expected a list, got ${describe(examples)}`);
  if (typeof maxTokens !== 'number' || !Number.isSafeInteger(maxTokens) || maxTokens < 1)
    throw new ArgumentError(`packExamples: maxTokens: expected a positive integer, got ${describe(maxTokens)}`);
  for (const [i, e] of examples.entries()) {
    if (!e || typeof e !== 'object' || !e.ids || typeof e.ids.length !== 'number')
      throw new ArgumentError(`packExamples: examples[${i}]: expected { ids, lossMask, stepIds? }, got ${describe(e)}`);
    const n = e.ids.length;
    if (n === 0) throw new ArgumentError(`packExamples: examples[${i}].ids: empty`);
    if (n > maxTokens) throw new ArgumentError(`packExamples: examples[${i}]: ${n} tokens > maxTokens ${maxTokens}`);
    if (!e.lossMask || e.lossMask.length !== n)
      throw new ArgumentError(
        `packExamples: examples[${i}].lossMask: expected ${n} entries, got ${e.lossMask ? e.lossMask.length : describe(e.lossMask)}`,
      );
    if (e.stepIds && e.stepIds.length !== n)
      throw new ArgumentError(`packExamples: examples[${i}].stepIds: expected ${n} entries, got ${e.stepIds.length}`);
  }
  const groups: number[][] = [];
  let cur: number[] = [],
    tokens = 0;
  for (const [i, e] of examples.entries()) {
    if (cur.length > 0 && tokens + e.ids.length > maxTokens) {
      groups.push(cur);
      cur = [];
      tokens = 0;
    }
    cur.push(i);
    tokens += e.ids.length;
  }
  if (cur.length > 0) groups.push(cur);

  return groups.map((g) => ({ ...packSequences(examples, g), examples: g }));
}
