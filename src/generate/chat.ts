// Text in, text out: load a model (and optionally a MoTE bundle), ask it a question, get the
// reasoning chain back step by step — whole (`ask`) or streamed (`stream`). This is the entry
// most users want first; everything below it (tokenizer, step tags, routing, generate) is the
// lower-level API the CLI and tests also use.
//
// A MoteChat owns what it opened (the backend when it opened one, the model, the bundle) and
// frees it in dispose() / `using`. A backend handed in stays the caller's.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArgumentError, describe } from '../errors.js';
import { BACKEND_KINDS, openBackend } from '../backend/select.js';
import type { Backend, BackendRequest } from '../backend/backend.js';
import { LlamaModel } from '../model/llama.js';
import { loadModel } from '../model/load.js';
import { DecodeStream, loadTokenizer, type ChatMessage, type MoteTokenizer } from '../io/tokenizer.js';
import { plainPrompt } from '../io/prompts.js';
import { DEFAULT_MODEL_DIR } from '../mote/default_model_dir.js';
import { MoteBundle, addStepTokens } from '../mote/bundle.js';
import { MOTE_FILE, readMoteJson } from '../mote/format.js';
import { loadMote } from '../mote/bundle_io.js';
import { promptIds, stepTokenIds } from '../mote/chains.js';
import { moteConfig, type MoteConfig, type StepName } from '../mote/steps.js';
import { checkSampling, checkSeed, type SamplingOptions } from './sampling.js';
import { generate, type GenerateRequest, type StopReason, type TokenEvent } from './generate.js';

export interface OpenChatOptions {
  /** HF model folder (config.json, *.safetensors, tokenizer.json). Default: the bundled tiny model. */
  model?: string;
  /** A MoTE bundle folder (saveMote / `mote train`): each step answered by its own expert. Default: none (the base model). */
  mote?: string;
  /** A backend kind ('auto' default, 'cpu', 'webgpu', 'cuda') or an open Backend (which stays yours). */
  backend?: BackendRequest | Backend;
  /** Weight dtype on the device. Default: as stored. */
  dtype?: 'f32' | 'f16' | 'bf16';
}

export interface AskOptions {
  /** Upper bound on generated tokens for the whole chain. Default 256. */
  maxNewTokens?: number;
  /** Default greedy. */
  sampling?: SamplingOptions;
  /** Seed of the sampling stream. Default 0. */
  seed?: number;
  /** Start the answer with this step's tag (force the first step). */
  firstStep?: StepName;
  /** Steps to leave out: their start tag is never emitted (adaptive length). */
  skip?: readonly StepName[];
  /** Stop once this step is over. Default: the bundle's last step. */
  stopAfter?: StepName;
  /** Stops generation at the next token when aborted; the answer so far is returned. */
  signal?: AbortSignal;
}

/** One step of an answer. `step` is null for text outside any step (before the first step tag). */
export interface AnswerStep {
  step: StepName | null;
  /** Which adapters wrote it: "answer + shared", "shared", or "base" without a bundle. */
  expert: string;
  text: string;
}

export interface ChatAnswer {
  steps: AnswerStep[];
  /** The answer step's text when the chain got that far, else the last step's. */
  text: string;
  /** 'step': the last step ended; 'stop': eos; 'length': maxNewTokens; 'context': the model's context is full; 'aborted': the signal fired. */
  stopReason: StopReason;
  /** Generated tokens. */
  tokens: number;
}

/** A piece of streamed text: `text` continues the step `step` (null: outside any step); `start` marks a step's first piece. */
export interface AnswerChunk {
  step: StepName | null;
  start: boolean;
  text: string;
}

function checkOpenOptions(o: unknown): OpenChatOptions {
  if (o === undefined) return {};
  if (typeof o !== 'object' || o === null || Array.isArray(o))
    throw new ArgumentError(`openChat: opts: expected { model?, mote?, backend?, dtype? }, got ${describe(o)}`);
  const opts = o as OpenChatOptions;
  for (const k of ['model', 'mote'] as const) {
    if (opts[k] !== undefined && (typeof opts[k] !== 'string' || opts[k] === ''))
      throw new ArgumentError(`openChat: ${k}: expected a folder path, got ${describe(opts[k])}`);
  }
  if (opts.dtype !== undefined && !['f32', 'f16', 'bf16'].includes(opts.dtype))
    throw new ArgumentError(`openChat: dtype: expected 'f32', 'f16' or 'bf16', got ${describe(opts.dtype)}`);
  return opts;
}

/** The steps of the bundle in `dir` (its mote.json), or the default three without one. */
export function bundleConfigAt(dir: string | undefined, what = 'mote'): MoteConfig {
  if (dir === undefined) return moteConfig();
  if (!fs.existsSync(path.join(dir, MOTE_FILE))) throw new ArgumentError(`${what}: ${dir} is not a MoTE bundle (no ${MOTE_FILE})`);
  return readMoteJson(dir).config;
}

/** A model folder opened on a backend, with its tokenizer and the step tags added. */
export interface OpenedModel {
  backend: Backend;
  model: LlamaModel;
  tokenizer: MoteTokenizer;
  dir: string;
  /** Frees the model, and the backend when it was opened here (not one handed in). */
  close(): void;
}

/**
 * Opens the model folder `dirOpt` (default: the bundled tiny model) on `backend` (a kind to
 * open, or an open Backend that stays the caller's), with its tokenizer and `config`'s step
 * tags added as single tokens (growing the embeddings when needed). `what` names the
 * argument in errors ('--model' in the CLI). Nothing stays allocated when it fails.
 */
export async function openModelFolder(
  dirOpt: string | undefined,
  backendReq: BackendRequest | Backend,
  config: Pick<MoteConfig, 'steps'>,
  opts: { dtype?: 'f32' | 'f16' | 'bf16'; what?: string; backendWhat?: string } = {},
): Promise<OpenedModel> {
  const what = opts.what ?? 'model';
  const dir = path.resolve(dirOpt ?? DEFAULT_MODEL_DIR);
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    throw new ArgumentError(
      dirOpt === undefined
        ? `the bundled model is missing (${dir}); reinstall mote or pass ${what}`
        : `${what}: ${dir} is not a model folder (no config.json)`,
    );
  }
  if (!fs.existsSync(path.join(dir, 'tokenizer.json')))
    throw new ArgumentError(`${what}: ${dir} has no tokenizer.json (mote needs the model's tokenizer)`);
  const own = typeof backendReq === 'string';
  const badBackend = own
    ? !(['auto', ...BACKEND_KINDS] as string[]).includes(backendReq)
    : typeof backendReq !== 'object' || backendReq === null || typeof (backendReq as Backend).kind !== 'string';
  if (badBackend)
    throw new ArgumentError(
      `${opts.backendWhat ?? 'backend'}: expected 'auto', 'cpu', 'webgpu', 'cuda' or an open Backend, got ${describe(backendReq)}`,
    );
  const tokenizer = loadTokenizer(dir);
  const backend = own ? await openBackend(backendReq) : backendReq;
  let model: LlamaModel | null = null;
  try {
    model = await loadModel(dir, opts.dtype ? { backend, dtype: opts.dtype } : { backend });
    await addStepTokens(model, tokenizer, config);
    const m = model;
    return {
      backend,
      model: m,
      tokenizer,
      dir,
      close: () => {
        m.dispose();
        if (own) backend.destroy();
      },
    };
  } catch (e) {
    model?.dispose();
    if (own) backend.destroy();
    throw e;
  }
}

/**
 * Opens a model folder (default: the bundled tiny model) and optionally a MoTE bundle for
 * question answering. Throws ArgumentError / FormatError naming what is wrong.
 */
export async function openChat(opts?: OpenChatOptions): Promise<MoteChat> {
  const o = checkOpenOptions(opts);
  const config = bundleConfigAt(o.mote, 'openChat: mote');
  const m = await openModelFolder(o.model, o.backend ?? 'auto', config, {
    ...(o.dtype ? { dtype: o.dtype } : {}),
    what: 'openChat: model',
    backendWhat: 'openChat: backend',
  });
  try {
    const bundle = o.mote !== undefined ? await loadMote(o.mote, m.model) : null;
    return new MoteChat(m.model, m.tokenizer, config, bundle, m.close);
  } catch (e) {
    m.close();
    throw e;
  }
}

/** A model (and optional MoTE bundle) ready to answer questions; see openChat. */
export class MoteChat {
  #disposed = false;
  readonly #stepTokens: Map<number, number>;
  readonly #stop: number[];

  /**
   * Use openChat(); this constructor takes ownership of `bundle`, and `release` frees the rest
   * on dispose() (default: the model).
   */
  constructor(
    readonly model: LlamaModel,
    readonly tokenizer: MoteTokenizer,
    readonly config: MoteConfig,
    readonly bundle: MoteBundle | null,
    private readonly release: () => void = () => model.dispose(),
  ) {
    const tags = stepTokenIds(tokenizer, config);
    this.#stepTokens = new Map(tags.start.map((id, i) => [id, i]));
    this.#stop = tokenizer.eosTokenId !== undefined ? [tokenizer.eosTokenId] : [];
  }

  /** The steps an answer can have, in order. */
  get steps(): readonly StepName[] {
    return this.config.steps;
  }

  #live(op: string): void {
    if (this.#disposed) throw new ArgumentError(`MoteChat.${op}: used after dispose()`);
  }

  #request(op: string, question: string | readonly ChatMessage[], opts: AskOptions, what = 'question', seedOffset = 0): GenerateRequest {
    let messages: ChatMessage[];
    if (typeof question === 'string') {
      if (question.trim() === '') throw new ArgumentError(`${op}: ${what}: empty`);
      messages = [{ role: 'user', content: question }];
    } else if (Array.isArray(question) && question.length > 0) {
      messages = question.map((m, i) => {
        if (typeof m !== 'object' || m === null || typeof m.role !== 'string' || typeof m.content !== 'string')
          throw new ArgumentError(`${op}: ${what}[${i}]: expected { role: string, content: string }, got ${describe(m)}`);
        return { role: m.role, content: m.content };
      });
      if (messages.at(-1)!.role !== 'user')
        throw new ArgumentError(`${op}: ${what}: the last message must be the user's (got role ${JSON.stringify(messages.at(-1)!.role)})`);
    } else throw new ArgumentError(`${op}: ${what}: expected a string or a non-empty list of chat messages, got ${describe(question)}`);
    if (typeof opts !== 'object' || opts === null) throw new ArgumentError(`${op}: opts: expected an object, got ${describe(opts)}`);
    const maxNewTokens = opts.maxNewTokens ?? 256;
    if (!Number.isSafeInteger(maxNewTokens) || maxNewTokens < 1)
      throw new ArgumentError(`${op}: maxNewTokens: expected a positive integer, got ${describe(opts.maxNewTokens)}`);
    checkSampling(`${op}: sampling`, opts.sampling);
    const seed = checkSeed(op, 'seed', opts.seed ?? 0);
    const stepIndex = (name: string, what: string): number => {
      const k = this.config.steps.indexOf(name as StepName);
      if (k < 0)
        throw new ArgumentError(
          `${op}: ${what}: unknown step ${describe(name)} (this ${this.bundle ? 'bundle' : 'model'} has ${this.config.steps.join(', ')})`,
        );
      return k;
    };
    if (opts.skip !== undefined && !Array.isArray(opts.skip))
      throw new ArgumentError(`${op}: skip: expected a list of steps, got ${describe(opts.skip)}`);
    const skip = (opts.skip ?? []).map((s, i) => stepIndex(s, `skip[${i}]`));
    const last = this.config.steps.length - 1;
    const stopAfter = opts.stopAfter === undefined ? last : stepIndex(opts.stopAfter, 'stopAfter');
    if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal))
      throw new ArgumentError(`${op}: signal: expected an AbortSignal, got ${describe(opts.signal)}`);
    const prompt = promptIds(this.tokenizer, { prompt: plainPrompt(messages), messages });
    const context = this.model.config.maxPositionEmbeddings;
    if (prompt.length >= context) {
      const text = plainPrompt(messages);
      const head = text.length > 40 ? `${text.slice(0, 40)}…` : text;
      throw new ArgumentError(
        `${op}: ${what} (${JSON.stringify(head)}): ${prompt.length} tokens, but the model's context (max_position_embeddings) is ${context}: shorten it to under ${context} tokens`,
      );
    }
    const req: GenerateRequest = {
      prompt,
      maxNewTokens,
      stop: this.#stop,
      seed: (seed + seedOffset) % 2 ** 31,
      stopAfterStep: stopAfter,
      ...(opts.sampling ? { sampling: opts.sampling } : {}),
      ...(skip.length ? { skipSteps: skip } : {}),
    };
    if (opts.firstStep !== undefined) req.force = [{ step: stepIndex(opts.firstStep, 'firstStep'), at: 0 }];
    return req;
  }

  #expert(k: number): string {
    if (!this.bundle) return 'base';
    return k < 0 ? 'shared' : `${this.config.steps[k]} + shared`;
  }

  /** Runs the requests as one batch, calling onText with each decoded piece of the first; the answers by step. */
  async #run(
    op: string,
    questions: readonly (string | readonly ChatMessage[])[],
    opts: AskOptions,
    onText?: (c: AnswerChunk) => void,
  ): Promise<ChatAnswer[]> {
    this.#live(op);
    const listed = op === 'MoteChat.askAll';
    const reqs = questions.map((q, i) => this.#request(op, q, opts, listed ? `questions[${i}]` : 'question', i));
    const tagIds = new Set(this.#stepTokens.keys());
    const steps: { k: number; ids: number[]; stream: DecodeStream | null; shown: boolean }[][] = questions.map(() => []);
    const onToken = (e: TokenEvent) => {
      const seq = steps[e.seq]!;
      let cur = seq.at(-1);
      if (!cur || cur.k !== e.step) {
        // the first request's text is streamed piece by piece (DecodeStream: constant work per token)
        cur = { k: e.step, ids: [], stream: onText && e.seq === 0 ? new DecodeStream(this.tokenizer) : null, shown: false };
        seq.push(cur);
      }
      if (tagIds.has(e.token) || this.#stop.includes(e.token)) return;
      cur.ids.push(e.token);
      if (!cur.stream) return;
      // a piece waits while a multi-byte character completes; each step's text starts trimmed
      let text = cur.stream.push(e.token);
      if (!cur.shown) text = text.trimStart();
      if (text === '') return;
      onText!({ step: e.step < 0 ? null : this.config.steps[e.step]!, start: !cur.shown, text });
      cur.shown = true;
    };
    const results = await generate(this.model, reqs, {
      ...(this.bundle ? { router: this.bundle.tokenRouter() } : {}),
      stepTokens: this.#stepTokens,
      stepTokenRouting: 'own',
      onToken,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    return results.map((r, i) => {
      const out: AnswerStep[] = steps[i]!.map((s) => ({
        step: s.k < 0 ? null : this.config.steps[s.k]!,
        expert: this.#expert(s.k),
        text: this.tokenizer.decode(s.ids, { skipSpecialTokens: true }).trim(),
      })).filter((s) => s.text !== '' || s.step !== null);
      const answer = out.find((s) => s.step === 'answer') ?? out.at(-1);
      return { steps: out, text: answer?.text ?? '', stopReason: r.stopReason, tokens: r.tokens.length };
    });
  }

  /** How many tokens `question` is as the model sees it (chat template applied); the model's context is model.config.maxPositionEmbeddings. */
  promptTokens(question: string | readonly ChatMessage[]): number {
    this.#live('promptTokens');
    const messages =
      typeof question === 'string' ? [{ role: 'user', content: question }] : question.map((m) => ({ role: m.role, content: m.content }));
    return promptIds(this.tokenizer, { prompt: plainPrompt(messages), messages }).length;
  }

  /** Answers `question` (a string, or chat messages ending with the user's), step by step. */
  async ask(question: string | readonly ChatMessage[], opts: AskOptions = {}): Promise<ChatAnswer> {
    return (await this.#run('MoteChat.ask', [question], opts))[0]!;
  }

  /**
   * Answers several questions in one batch (faster than one by one). Question i samples with
   * seed `opts.seed + i`; a signal stops them all.
   */
  async askAll(questions: readonly (string | readonly ChatMessage[])[], opts: AskOptions = {}): Promise<ChatAnswer[]> {
    if (!Array.isArray(questions) || questions.length === 0)
      throw new ArgumentError(`MoteChat.askAll: questions: expected a non-empty list, got ${describe(questions)}`);
    return this.#run('MoteChat.askAll', questions, opts);
  }

  /**
   * Streams the answer as it is generated: pieces of text, each with its step. Breaking out
   * of the loop stops generation.
   */
  async *stream(question: string | readonly ChatMessage[], opts: AskOptions = {}): AsyncGenerator<AnswerChunk, ChatAnswer, void> {
    const queue: AnswerChunk[] = [];
    let wake: (() => void) | null = null;
    let done = false;
    let failure: unknown = null;
    const stopper = new AbortController();
    const outer = opts.signal;
    const onOuter = () => stopper.abort();
    outer?.addEventListener('abort', onOuter);
    if (outer?.aborted) stopper.abort();
    const run = this.#run('MoteChat.stream', [question], { ...opts, signal: stopper.signal }, (c) => {
      queue.push(c);
      wake?.();
    }).then(
      (a) => {
        done = true;
        wake?.();
        return a[0]!;
      },
      (e) => {
        done = true;
        failure = e;
        wake?.();
        return null;
      },
    );
    try {
      for (;;) {
        while (queue.length) yield queue.shift()!;
        if (done) break;
        await new Promise<void>((res) => {
          wake = res;
        });
        wake = null;
      }
      const answer = await run;
      if (failure !== null) throw failure;
      return answer!;
    } finally {
      stopper.abort(); // the consumer broke out early: stop generating
      outer?.removeEventListener('abort', onOuter);
      await run;
    }
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Frees the bundle, the model and the backend this chat opened (not one handed in). */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.bundle?.dispose();
    this.release();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
