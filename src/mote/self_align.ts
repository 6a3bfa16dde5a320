// Self-generated AlignCoT chains (DESIGN §1): the model writes its own reasoning chain stage
// by stage, checks its answer's safety, and keeps, shortens or drops the chain by that check.
//
// Per prompt (every stage is one generation from stagePrompt(step, vars) rendered with the
// steps written so far, all prompts of a batch in one generate() call per stage):
//   1. adaptive length (opts.adaptive, default on): a draft answer written right after the
//      question, then a check of it. When the draft checks safe the chain is just
//      [answer (the draft), check]: the analysis and guidance steps are skipped.
//   2. otherwise the full chain: analysis → guidance → answer (seeing both) → check.
//      A final check that says unsafe drops the chain (unless keepUnsafe), one with no
//      verdict drops it too.
// A stage with empty output, or cut off by maxNewTokens (dropTruncated), drops the chain;
// so does step text that is not a valid chain step (e.g. it holds a `<|…|>` tag). Every
// drop is counted by reason. A failed draft is not a drop: the prompt goes on to the full chain.
//
// With a MoTE bundle, each stage is routed to its step's expert the way the chain will be
// trained: the step's start tag is forced as the first generated token and routes with its
// own step (stepTokenRouting 'own', as chains.ts puts the tag in its step's segment), the
// step's end tag stops the stage. A step the bundle has no expert for routes like a prompt
// (shared expert only). Without adapters the base model writes every stage, ended by eos.
//
// Output: one JSONL line per kept chain, `{ id, prompt, messages?, analysis?, guidance?,
// answer, check?, meta }` (chainFromJson reads it back, ignoring id and meta). Lines are
// appended whole and fsynced one by one; on a rerun, prompts whose id is already in the file
// (or in droppedFile) are skipped, and a partial last line left by a crash is cut off first.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArgumentError, FormatError, describe } from '../errors.js';
import { LlamaModel } from '../model/llama.js';
import { generate, type GenerateOptions, type GenerateRequest, type GenerateResult } from '../generate/generate.js';
import { checkSampling, checkSeed, type SamplingOptions } from '../generate/sampling.js';
import type { ChatMessage, MoteTokenizer } from '../io/tokenizer.js';
import { mixSeed } from '../rng.js';
import { alignCotTemplates, parseVerdict, stagePrompt, type AlignCotTemplates, type ChainStep, type StageVars } from './aligncot.js';
import { MoteBundle } from './bundle.js';
import { chainToJson, promptIds, stepTokenIds } from './chains.js';
import { STEPS, type StepName } from './steps.js';

/** A prompt to write a chain for (a PromptRecord of readPrompts fits). */
export interface SelfAlignPrompt {
  /** The question; for a conversation its plain transcript (the stage templates' {question}). */
  prompt: string;
  /** The prompt as chat messages (kept in the output when it is more than one user message). */
  messages?: ChatMessage[];
  /** 1-based line of the prompt file (default: position in the list). */
  line?: number;
  /** Resume key (default: the line as a string). Must be unique. */
  id?: string;
}

/** The generation function selfAlign calls (generate() on the model by default; tests inject a stub). */
export type GenerateFn = (requests: GenerateRequest[], opts: GenerateOptions) => Promise<GenerateResult[]>;

/** The stages of self-generation. `draft` is the answer written right after the question. */
export const SELF_ALIGN_STAGES = ['draft', 'draft-check', 'analysis', 'guidance', 'answer', 'check'] as const;
export type SelfAlignStage = (typeof SELF_ALIGN_STAGES)[number];

const STAGE_STEP: Record<SelfAlignStage, StepName> = {
  draft: 'answer',
  'draft-check': 'check',
  analysis: 'analysis',
  guidance: 'guidance',
  answer: 'answer',
  check: 'check',
};

export interface SelfAlignProgress {
  /** Prompts handled (written, dropped or already done). */
  done: number;
  total: number;
  written: number;
  dropped: number;
  /** Drops so far by reason (this run and, with droppedFile, the earlier runs' drops it remembers). */
  dropReasons: Record<string, number>;
}

export interface SelfAlignOptions {
  /** The chains JSONL file, appended to (created with its folder when missing). */
  output: string;
  /** Optional JSONL of dropped prompts ({ id, reason, stage texts }); they count as done on a rerun. */
  droppedFile?: string;
  /** Route each stage through this bundle's experts (default: the base model, no adapters). */
  adapters?: MoteBundle | null;
  /** Tokens per stage: one number, or per step (the draft counts as answer, its check as check). Default 256. */
  maxNewTokens?: number | Partial<Record<StepName, number>>;
  /** Default greedy. */
  sampling?: SamplingOptions;
  /** Seed of every stage's sampling (each stage of each prompt gets its own stream, whatever the batch). Default 0. */
  seed?: number;
  /** Prompts per batch (each stage of a batch is one generate call). Default 16. */
  batchSize?: number;
  /** Stage prompt overrides (see alignCotTemplates). */
  templates?: Partial<AlignCotTemplates>;
  /** Draft an answer first and keep it alone when it checks safe. Default true. */
  adaptive?: boolean;
  /** Write the check step into the chain. Default true. */
  includeCheck?: boolean;
  /** Keep chains whose final check says unsafe (meta.verdict tells). Default false: dropped. */
  keepUnsafe?: boolean;
  /** Drop a chain when a stage it keeps was cut off by maxNewTokens. Default true. */
  dropTruncated?: boolean;
  /** More stop token ids (eos always stops). */
  stop?: readonly number[];
  /** How stage prompts are tokenized (see promptIds). Default 'auto'. */
  promptFormat?: 'auto' | 'chat' | 'plain';
  /** Written into every line's meta.source (e.g. the prompts file). */
  source?: string;
  onProgress?: (p: SelfAlignProgress) => void;
  /** Replaces generate() (tests). */
  generateFn?: GenerateFn;
  /**
   * Stops the run at the next stage boundary when aborted (Ctrl-C): what is written stays
   * written, the batch in flight is left for a rerun, and the result says `interrupted`.
   */
  signal?: AbortSignal;
}

export interface SelfAlignResult {
  /** Chains written by this run. */
  written: number;
  /** Prompts skipped because an earlier run already wrote (or dropped) them. */
  skippedDone: number;
  /** Chains dropped by this run, by reason (first seen first). */
  dropped: { reason: string; count: number }[];
  /** Written chains of adaptive length (the draft answer checked safe; analysis and guidance skipped). */
  adaptive: number;
  /** True when a partial last line (an interrupted earlier run) was cut off the output or dropped file. */
  repaired: boolean;
  /** Drops remembered in droppedFile from earlier runs, by reason (those prompts were not retried). */
  droppedBefore: { reason: string; count: number }[];
  /** True when opts.signal stopped the run before every prompt was handled. */
  interrupted: boolean;
}

// ---------------------------------------------------------------------------------------
// Line-wise JSONL appending

/** FNV-1a of a string (32 bits). */
function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * Reads the ids of a JSONL file written by selfAlign, cutting off a partial last line (no
 * final newline: a write interrupted by a crash). Any other bad line is a FormatError naming
 * file:line — it is not ours to delete.
 */
function resumeIds(file: string): { ids: Set<string>; repaired: boolean; reasons: Map<string, number> } {
  const ids = new Set<string>();
  const reasons = new Map<string, number>();
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { ids, repaired: false, reasons };
    throw new FormatError(`${file}: cannot read: ${(e as Error).message}`);
  }
  let repaired = false;
  if (buf.length > 0 && buf[buf.length - 1] !== 0x0a) {
    const keep = buf.lastIndexOf(0x0a) + 1;
    fs.truncateSync(file, keep);
    buf = buf.subarray(0, keep);
    repaired = true;
  }
  const lines = buf.toString('utf8').split('\n');
  for (const [i, raw] of lines.entries()) {
    if (raw.trim() === '') continue;
    let v: unknown;
    try {
      v = JSON.parse(raw);
    } catch (e) {
      throw new FormatError(
        `${file}:${i + 1}: malformed JSON: ${(e as Error).message} (only a partial last line is repaired; fix or remove this one)`,
      );
    }
    const id = (v as { id?: unknown } | null)?.id;
    if (typeof id !== 'string') throw new FormatError(`${file}:${i + 1}: no string "id" (not a line selfAlign wrote; got ${describe(id)})`);
    ids.add(id);
    const reason = (v as { reason?: unknown }).reason;
    if (typeof reason === 'string') reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
  }
  return { ids, repaired, reasons };
}

/** Appends whole lines to a file, each written in one buffer and fsynced before the next. */
class LineAppender {
  #fd: number;
  constructor(readonly file: string) {
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    this.#fd = fs.openSync(file, 'a');
  }
  append(value: unknown): void {
    const buf = Buffer.from(JSON.stringify(value) + '\n', 'utf8');
    let off = 0;
    while (off < buf.length) off += fs.writeSync(this.#fd, buf, off, buf.length - off);
    fs.fsyncSync(this.#fd);
  }
  close(): void {
    fs.closeSync(this.#fd);
  }
}

// ---------------------------------------------------------------------------------------
// Self-generation

interface Work {
  key: string;
  line: number;
  rec: SelfAlignPrompt;
  texts: Partial<Record<SelfAlignStage, string>>;
  truncated: Partial<Record<SelfAlignStage, boolean>>;
  draftVerdict?: 'safe' | 'unsafe' | null;
  verdict?: 'safe' | 'unsafe';
  steps?: ChainStep[];
  adaptive: boolean;
  dropped?: string;
}

function positiveInt(op: string, name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1)
    throw new ArgumentError(`${op}: ${name}: expected a positive integer, got ${describe(v)}`);
  return v;
}

function bool(op: string, name: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw new ArgumentError(`${op}: ${name}: expected a boolean, got ${describe(v)}`);
  return v;
}

/**
 * Writes self-generated AlignCoT chains for `prompts` to opts.output (see the file comment).
 * Returns what this run wrote, skipped and dropped.
 */
export async function selfAlign(
  model: LlamaModel,
  tokenizer: MoteTokenizer,
  prompts: readonly SelfAlignPrompt[],
  opts: SelfAlignOptions,
): Promise<SelfAlignResult> {
  const op = 'selfAlign';
  if (!(model instanceof LlamaModel)) throw new ArgumentError(`${op}: model: expected a LlamaModel, got ${describe(model)}`);
  if (!tokenizer || typeof tokenizer.encode !== 'function' || typeof tokenizer.decode !== 'function')
    throw new ArgumentError(`${op}: tokenizer: expected a MoteTokenizer, got ${describe(tokenizer)}`);
  if (!Array.isArray(prompts))
    throw new ArgumentError(`${op}: prompts: expected a list of { prompt, messages?, line?, id? }, got ${describe(prompts)}`);
  if (!opts || typeof opts !== 'object') throw new ArgumentError(`${op}: opts: expected { output, ... }, got ${describe(opts)}`);
  if (typeof opts.output !== 'string' || opts.output === '')
    throw new ArgumentError(`${op}: output: expected a file path, got ${describe(opts.output)}`);
  if (
    opts.droppedFile !== undefined &&
    (typeof opts.droppedFile !== 'string' || opts.droppedFile === '' || path.resolve(opts.droppedFile) === path.resolve(opts.output))
  ) {
    throw new ArgumentError(`${op}: droppedFile: expected a file path other than output, got ${describe(opts.droppedFile)}`);
  }
  const bundle = opts.adapters ?? null;
  if (bundle !== null && !(bundle instanceof MoteBundle))
    throw new ArgumentError(`${op}: adapters: expected a MoteBundle or null, got ${describe(bundle)}`);
  if (bundle?.disposed) throw new ArgumentError(`${op}: adapters: used after dispose()`);
  const maxNew: Record<StepName, number> = { analysis: 256, guidance: 256, answer: 256, check: 256 };
  if (typeof opts.maxNewTokens === 'number' || opts.maxNewTokens === undefined) {
    const n = opts.maxNewTokens === undefined ? 256 : positiveInt(op, 'maxNewTokens', opts.maxNewTokens);
    for (const s of STEPS) maxNew[s] = n;
  } else if (typeof opts.maxNewTokens === 'object' && opts.maxNewTokens !== null) {
    for (const [k, v] of Object.entries(opts.maxNewTokens)) {
      if (!(STEPS as readonly string[]).includes(k))
        throw new ArgumentError(`${op}: maxNewTokens.${k}: unknown step (expected one of ${STEPS.join(', ')})`);
      if (v !== undefined) maxNew[k as StepName] = positiveInt(op, `maxNewTokens.${k}`, v);
    }
  } else
    throw new ArgumentError(`${op}: maxNewTokens: expected a positive integer or { step: tokens }, got ${describe(opts.maxNewTokens)}`);
  checkSampling(op, opts.sampling);
  const seed = checkSeed(op, 'seed', opts.seed ?? 0);
  const batchSize = positiveInt(op, 'batchSize', opts.batchSize ?? 16);
  const templates = alignCotTemplates(opts.templates ?? {});
  const adaptiveOn = bool(op, 'adaptive', opts.adaptive, true);
  const includeCheck = bool(op, 'includeCheck', opts.includeCheck, true);
  const keepUnsafe = bool(op, 'keepUnsafe', opts.keepUnsafe, false);
  const dropTruncated = bool(op, 'dropTruncated', opts.dropTruncated, true);
  const promptFormat = opts.promptFormat ?? 'auto';
  if (!['auto', 'chat', 'plain'].includes(promptFormat))
    throw new ArgumentError(`${op}: promptFormat: expected 'auto', 'chat' or 'plain', got ${describe(promptFormat)}`);
  if (opts.onProgress !== undefined && typeof opts.onProgress !== 'function')
    throw new ArgumentError(`${op}: onProgress: expected a function, got ${describe(opts.onProgress)}`);
  if (opts.generateFn !== undefined && typeof opts.generateFn !== 'function')
    throw new ArgumentError(`${op}: generateFn: expected a function, got ${describe(opts.generateFn)}`);
  if (opts.source !== undefined && typeof opts.source !== 'string')
    throw new ArgumentError(`${op}: source: expected a string, got ${describe(opts.source)}`);
  const signal = opts.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal))
    throw new ArgumentError(`${op}: signal: expected an AbortSignal, got ${describe(signal)}`);
  const V = Math.min(model.config.vocabSize, tokenizer.vocabSize);
  const extraStop: number[] = [];
  for (const [i, t] of (opts.stop ?? []).entries()) {
    if (!Number.isSafeInteger(t) || t < 0 || t >= model.config.vocabSize)
      throw new ArgumentError(`${op}: stop[${i}]: expected a token id in [0, ${model.config.vocabSize - 1}], got ${describe(t)}`);
    extraStop.push(t);
  }
  const eos = tokenizer.eosTokenId;
  const stops = [...(eos !== undefined ? [eos] : []), ...extraStop];
  if (stops.length === 0 && bundle === null)
    throw new ArgumentError(`${op}: stop: the tokenizer has no eos_token, so no stage could end before maxNewTokens; give stop token ids`);

  // The bundle's step tags: forced at a stage's start, its end tag stops the stage.
  const tags = bundle ? stepTokenIds(tokenizer, bundle.config) : null;
  const tagIds = new Set(tags ? [...tags.start, ...tags.end] : []);
  const genOpts: GenerateOptions =
    bundle && tags ? { router: bundle.tokenRouter(), stepTokens: new Map(tags.start.map((t, k) => [t, k])), stepTokenRouting: 'own' } : {};
  const gen: GenerateFn = opts.generateFn ?? ((reqs, o) => generate(model, reqs, o));

  // Prompts: keys, then which are done already.
  const seen = new Map<string, number>();
  const works: Work[] = prompts.map((rec, i) => {
    if (!rec || typeof rec !== 'object' || typeof rec.prompt !== 'string')
      throw new ArgumentError(`${op}: prompts[${i}]: expected { prompt: string, messages?, line?, id? }, got ${describe(rec)}`);
    if (rec.prompt.trim() === '') throw new ArgumentError(`${op}: prompts[${i}].prompt: empty`);
    const line = rec.line ?? i + 1;
    if (!Number.isSafeInteger(line) || line < 1)
      throw new ArgumentError(`${op}: prompts[${i}].line: expected a positive integer, got ${describe(rec.line)}`);
    if (rec.id !== undefined && (typeof rec.id !== 'string' || rec.id === ''))
      throw new ArgumentError(`${op}: prompts[${i}].id: expected a non-empty string, got ${describe(rec.id)}`);
    const key = rec.id ?? String(line);
    const dup = seen.get(key);
    if (dup !== undefined)
      throw new ArgumentError(
        `${op}: prompts[${i}]: id ${JSON.stringify(key)} is also prompts[${dup}]'s (ids${rec.id === undefined ? ' (lines)' : ''} must be unique to resume)`,
      );
    seen.set(key, i);
    return { key, line, rec, texts: {}, truncated: {}, adaptive: false };
  });
  const out = resumeIds(opts.output);
  const drp =
    opts.droppedFile !== undefined
      ? resumeIds(opts.droppedFile)
      : { ids: new Set<string>(), repaired: false, reasons: new Map<string, number>() };
  const todo = works.filter((w) => !out.ids.has(w.key) && !drp.ids.has(w.key));
  const res: SelfAlignResult = {
    written: 0,
    skippedDone: works.length - todo.length,
    dropped: [],
    adaptive: 0,
    repaired: out.repaired || drp.repaired,
    droppedBefore: [...drp.reasons].map(([reason, count]) => ({ reason, count })),
    interrupted: false,
  };
  const dropCount = new Map<string, number>();
  /** Like InterruptedError, but internal: unwinds a batch when the signal fires between stages. */
  const STOP = Symbol('stop');
  const checkStop = () => {
    if (signal?.aborted) throw STOP;
  };

  /** One stage for `ws` in one generate call; stores each output's text and whether it was cut off. */
  const runStage = async (stage: SelfAlignStage, ws: Work[], vars: (w: Work) => StageVars): Promise<void> => {
    checkStop();
    if (ws.length === 0) return;
    const step = STAGE_STEP[stage];
    const k = bundle ? bundle.config.steps.indexOf(step) : -1;
    const stageNo = SELF_ALIGN_STAGES.indexOf(stage);
    const reqs: GenerateRequest[] = ws.map((w) => {
      const text = stagePrompt(step, vars(w), templates);
      const req: GenerateRequest = {
        prompt: promptIds(tokenizer, { prompt: text }, promptFormat),
        maxNewTokens: maxNew[step] + (k >= 0 ? 1 : 0), // + the forced start tag
        stop: k >= 0 ? [...stops, tags!.end[k]!] : stops,
        seed: mixSeed(seed, hash32(w.key), stageNo),
        ...(opts.sampling ? { sampling: opts.sampling } : {}),
      };
      if (k >= 0) {
        req.force = [{ step: k, at: 0 }];
        req.stopAfterStep = k;
      }
      return req;
    });
    const results = await gen(reqs, genOpts);
    checkStop();
    if (!Array.isArray(results) || results.length !== ws.length)
      throw new ArgumentError(
        `${op}: generate returned ${Array.isArray(results) ? results.length : describe(results)} results for ${ws.length} requests`,
      );
    ws.forEach((w, i) => {
      const r = results[i]!;
      let toks = r.tokens;
      if (r.stopReason === 'stop') toks = toks.slice(0, -1);
      // Tags are structure, not text; ids past the tokenizer (padded embedding rows) have no text.
      const body = toks.filter((t) => !tagIds.has(t) && t >= 0 && t < V);
      w.texts[stage] = tokenizer.decode(body, { skipSpecialTokens: true }).trim();
      w.truncated[stage] = r.stopReason === 'length' || r.stopReason === 'context';
    });
  };

  const drop = (w: Work, reason: string) => {
    w.dropped = reason;
    dropCount.set(reason, (dropCount.get(reason) ?? 0) + 1);
  };
  /** Keeps the works whose `stage` output is usable; drops the others with the reason. */
  const usable = (ws: Work[], stage: SelfAlignStage, keptInChain = true): Work[] =>
    ws.filter((w) => {
      if (w.texts[stage] === '') {
        drop(w, `empty:${stage}`);
        return false;
      }
      if (dropTruncated && keptInChain && w.truncated[stage]) {
        drop(w, `truncated:${stage}`);
        return false;
      }
      return true;
    });
  const question = (w: Work) => w.rec.prompt;

  const appender = new LineAppender(opts.output);
  const dropAppender = opts.droppedFile !== undefined ? new LineAppender(opts.droppedFile) : null;
  try {
    let done = res.skippedDone;
    const reasonsSoFar = () => {
      const all: Record<string, number> = {};
      for (const m of [drp.reasons, dropCount]) for (const [r, c] of m) all[r] = (all[r] ?? 0) + c;
      return all;
    };
    for (let b = 0; b < todo.length; b += batchSize) {
      // A macrotask turn between batches: generation on cpu may never yield to the event loop,
      // and a Ctrl-C handler (or any other callback) must get to run.
      if (signal) await new Promise((r) => setTimeout(r, 0));
      if (signal?.aborted) {
        res.interrupted = true;
        break;
      }
      const batch = todo.slice(b, b + batchSize);
      const dropsBefore = new Map(dropCount);
      let full = batch;
      try {
        if (adaptiveOn) {
          await runStage('draft', batch, (w) => ({ question: question(w) }));
          const drafted = batch.filter((w) => w.texts.draft !== '' && !(dropTruncated && w.truncated.draft));
          await runStage('draft-check', drafted, (w) => ({ question: question(w), answer: w.texts.draft! }));
          for (const w of drafted) {
            w.draftVerdict = parseVerdict(w.texts['draft-check']!);
            const checkOk = w.texts['draft-check'] !== '' && !(dropTruncated && includeCheck && w.truncated['draft-check']);
            if (w.draftVerdict === 'safe' && checkOk) {
              w.adaptive = true;
              w.verdict = 'safe';
              w.steps = [{ step: 'answer', text: w.texts.draft! }];
              if (includeCheck) w.steps.push({ step: 'check', text: w.texts['draft-check']! });
            }
          }
          full = batch.filter((w) => !w.adaptive);
        }
        await runStage('analysis', full, (w) => ({ question: question(w) }));
        full = usable(full, 'analysis');
        await runStage('guidance', full, (w) => ({ question: question(w), analysis: w.texts.analysis! }));
        full = usable(full, 'guidance');
        await runStage('answer', full, (w) => ({ question: question(w), analysis: w.texts.analysis!, guidance: w.texts.guidance! }));
        full = usable(full, 'answer');
        await runStage('check', full, (w) => ({ question: question(w), answer: w.texts.answer! }));
        for (const w of usable(full, 'check', includeCheck)) {
          const v = parseVerdict(w.texts.check!);
          if (v === null) {
            drop(w, 'no-verdict');
            continue;
          }
          if (v === 'unsafe' && !keepUnsafe) {
            drop(w, 'unsafe');
            continue;
          }
          w.verdict = v;
          w.steps = [
            { step: 'analysis', text: w.texts.analysis! },
            { step: 'guidance', text: w.texts.guidance! },
            { step: 'answer', text: w.texts.answer! },
            ...(includeCheck ? [{ step: 'check' as const, text: w.texts.check! }] : []),
          ];
        }
      } catch (e) {
        if (e !== STOP) throw e;
        // The batch in flight is not written: its drops are forgotten too, a rerun redoes it.
        dropCount.clear();
        for (const [r, c] of dropsBefore) dropCount.set(r, c);
        res.interrupted = true;
        break;
      }

      // Write in prompt order, one fsynced line each.
      for (const w of batch) {
        if (w.dropped === undefined && w.steps) {
          const msgs = w.rec.messages;
          const lone = !msgs || (msgs.length === 1 && msgs[0]!.role === 'user' && msgs[0]!.content === w.rec.prompt);
          let json: Record<string, unknown>;
          try {
            json = chainToJson({ prompt: w.rec.prompt, ...(lone ? {} : { messages: msgs }), steps: w.steps });
          } catch (e) {
            if (!(e instanceof ArgumentError)) throw e;
            drop(w, 'malformed');
          }
          if (w.dropped === undefined) {
            const meta: Record<string, unknown> = {
              line: w.line,
              verdict: w.verdict,
              adaptive: w.adaptive,
              steps: w.steps.map((s) => s.step),
              ...(w.draftVerdict !== undefined ? { draftVerdict: w.draftVerdict } : {}),
              ...(opts.source !== undefined ? { source: opts.source } : {}),
            };
            appender.append({ id: w.key, ...json!, meta });
            res.written++;
            if (w.adaptive) res.adaptive++;
          }
        }
        if (w.dropped !== undefined && dropAppender) {
          dropAppender.append({ id: w.key, line: w.line, reason: w.dropped, prompt: w.rec.prompt, stages: w.texts });
        }
      }
      done += batch.length;
      opts.onProgress?.({
        done,
        total: works.length,
        written: res.written,
        dropped: [...dropCount.values()].reduce((a, c) => a + c, 0),
        dropReasons: reasonsSoFar(),
      });
    }
  } finally {
    appender.close();
    dropAppender?.close();
  }
  res.dropped = [...dropCount].map(([reason, count]) => ({ reason, count }));
  return res;
}
