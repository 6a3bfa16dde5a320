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
import { openBackend } from '../backend/select.js';
import type { Backend, BackendRequest } from '../backend/backend.js';
import { LlamaModel } from '../model/llama.js';
import { loadModel } from '../model/load.js';
import { loadTokenizer, type ChatMessage, type MoteTokenizer } from '../io/tokenizer.js';
import { plainPrompt } from '../io/prompts.js';
import { DEFAULT_MODEL_DIR } from '../mote/default_model_dir.js';
import { MoteBundle, addStepTokens } from '../mote/bundle.js';
import { readMoteJson } from '../mote/format.js';
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
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new ArgumentError(`openChat: opts: expected { model?, mote?, backend?, dtype? }, got ${describe(o)}`);
  const opts = o as OpenChatOptions;
  for (const k of ['model', 'mote'] as const) {
    if (opts[k] !== undefined && (typeof opts[k] !== 'string' || opts[k] === '')) throw new ArgumentError(`openChat: ${k}: expected a folder path, got ${describe(opts[k])}`);
  }
  if (opts.dtype !== undefined && !['f32', 'f16', 'bf16'].includes(opts.dtype)) throw new ArgumentError(`openChat: dtype: expected 'f32', 'f16' or 'bf16', got ${describe(opts.dtype)}`);
  return opts;
}

/** The steps of the bundle in `dir` (its mote.json), or the default three without one. */
function bundleConfigAt(dir: string | undefined): MoteConfig {
  if (dir === undefined) return moteConfig();
  return readMoteJson(dir).config;
}

/**
 * Opens a model folder (default: the bundled tiny model) and optionally a MoTE bundle for
 * question answering. Throws ArgumentError / FormatError naming what is wrong.
 */
export async function openChat(opts?: OpenChatOptions): Promise<MoteChat> {
  const o = checkOpenOptions(opts);
  const dir = path.resolve(o.model ?? DEFAULT_MODEL_DIR);
  if (!fs.existsSync(path.join(dir, 'config.json'))) throw new ArgumentError(`openChat: model: ${dir} is not a model folder (no config.json)`);
  const config = bundleConfigAt(o.mote);
  const tokenizer = loadTokenizer(dir);
  const own = o.backend === undefined || typeof o.backend === 'string';
  const backend = own ? await openBackend((o.backend as BackendRequest | undefined) ?? 'auto') : (o.backend as Backend);
  if (!own && (typeof backend !== 'object' || backend === null || typeof (backend as Backend).kind !== 'string')) {
    throw new ArgumentError(`openChat: backend: expected 'auto', 'cpu', 'webgpu', 'cuda' or an open Backend, got ${describe(o.backend)}`);
  }
  let model: LlamaModel | null = null;
  try {
    model = await loadModel(dir, o.dtype ? { backend, dtype: o.dtype } : { backend });
    await addStepTokens(model, tokenizer, config);
    const bundle = o.mote !== undefined ? await loadMote(o.mote, model) : null;
    return new MoteChat(model, tokenizer, config, bundle, own ? backend : null);
  } catch (e) {
    model?.dispose();
    if (own) backend.destroy();
    throw e;
  }
}

/** A model (and optional MoTE bundle) ready to answer questions; see openChat. */
export class MoteChat {
  #disposed = false;
  readonly #stepTokens: Map<number, number>;
  readonly #stop: number[];

  /** Use openChat(); this constructor takes ownership of `bundle` and `ownBackend`. */
  constructor(readonly model: LlamaModel, readonly tokenizer: MoteTokenizer, readonly config: MoteConfig, readonly bundle: MoteBundle | null, private readonly ownBackend: Backend | null) {
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

  #request(op: string, question: string | readonly ChatMessage[], opts: AskOptions): GenerateRequest {
    let messages: ChatMessage[];
    if (typeof question === 'string') {
      if (question.trim() === '') throw new ArgumentError(`${op}: question: empty`);
      messages = [{ role: 'user', content: question }];
    } else if (Array.isArray(question) && question.length > 0) {
      messages = question.map((m, i) => {
        if (typeof m !== 'object' || m === null || typeof m.role !== 'string' || typeof m.content !== 'string') throw new ArgumentError(`${op}: question[${i}]: expected { role: string, content: string }, got ${describe(m)}`);
        return { role: m.role, content: m.content };
      });
      if (messages.at(-1)!.role !== 'user') throw new ArgumentError(`${op}: question: the last message must be the user's (got role ${JSON.stringify(messages.at(-1)!.role)})`);
    } else throw new ArgumentError(`${op}: question: expected a string or a non-empty list of chat messages, got ${describe(question)}`);
    if (typeof opts !== 'object' || opts === null) throw new ArgumentError(`${op}: opts: expected an object, got ${describe(opts)}`);
    const maxNewTokens = opts.maxNewTokens ?? 256;
    if (!Number.isSafeInteger(maxNewTokens) || maxNewTokens < 1) throw new ArgumentError(`${op}: maxNewTokens: expected a positive integer, got ${describe(opts.maxNewTokens)}`);
    checkSampling(op, opts.sampling);
    const seed = checkSeed(op, 'seed', opts.seed ?? 0);
    const stepIndex = (name: string, what: string): number => {
      const k = this.config.steps.indexOf(name as StepName);
      if (k < 0) throw new ArgumentError(`${op}: ${what}: unknown step ${describe(name)} (this ${this.bundle ? 'bundle' : 'model'} has ${this.config.steps.join(', ')})`);
      return k;
    };
    if (opts.skip !== undefined && !Array.isArray(opts.skip)) throw new ArgumentError(`${op}: skip: expected a list of steps, got ${describe(opts.skip)}`);
    const skip = (opts.skip ?? []).map((s, i) => stepIndex(s, `skip[${i}]`));
    const last = this.config.steps.length - 1;
    const stopAfter = opts.stopAfter === undefined ? last : stepIndex(opts.stopAfter, 'stopAfter');
    if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw new ArgumentError(`${op}: signal: expected an AbortSignal, got ${describe(opts.signal)}`);
    const req: GenerateRequest = {
      prompt: promptIds(this.tokenizer, { prompt: plainPrompt(messages), messages }),
      maxNewTokens, stop: this.#stop, seed, stopAfterStep: stopAfter,
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

  /** Runs one request, calling onText with each decoded piece; the answer by step. */
  async #run(op: string, question: string | readonly ChatMessage[], opts: AskOptions, onText?: (c: AnswerChunk) => void): Promise<ChatAnswer> {
    this.#live(op);
    const req = this.#request(op, question, opts);
    const tagIds = new Set(this.#stepTokens.keys());
    const steps: { k: number; ids: number[]; shown: string }[] = [];
    const onToken = (e: TokenEvent) => {
      let cur = steps.at(-1);
      if (!cur || cur.k !== e.step) {
        cur = { k: e.step, ids: [], shown: '' };
        steps.push(cur);
      }
      if (!tagIds.has(e.token) && !this.#stop.includes(e.token)) cur.ids.push(e.token);
      if (onText) {
        const text = this.tokenizer.decode(cur.ids, { skipSpecialTokens: true }).trimStart();
        // Only growth is sent: a piece that changes earlier text (a multi-byte character still
        // completing) waits for the next token; a tag alone has no text yet.
        if (text.length > cur.shown.length && text.startsWith(cur.shown)) {
          onText({ step: e.step < 0 ? null : this.config.steps[e.step]!, start: cur.shown === '', text: text.slice(cur.shown.length) });
          cur.shown = text;
        }
      }
    };
    const results = await generate(this.model, [req], {
      ...(this.bundle ? { router: this.bundle.tokenRouter() } : {}),
      stepTokens: this.#stepTokens, stepTokenRouting: 'own', onToken,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    const r = results[0]!;
    const out: AnswerStep[] = steps
      .map((s) => ({ step: s.k < 0 ? null : this.config.steps[s.k]!, expert: this.#expert(s.k), text: this.tokenizer.decode(s.ids, { skipSpecialTokens: true }).trim() }))
      .filter((s) => s.text !== '' || s.step !== null);
    const answer = out.find((s) => s.step === 'answer') ?? out.at(-1);
    return { steps: out, text: answer?.text ?? '', stopReason: r.stopReason, tokens: r.tokens.length };
  }

  /** Answers `question` (a string, or chat messages ending with the user's), step by step. */
  ask(question: string | readonly ChatMessage[], opts: AskOptions = {}): Promise<ChatAnswer> {
    return this.#run('MoteChat.ask', question, opts);
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
    const run = this.#run('MoteChat.stream', question, { ...opts, signal: stopper.signal }, (c) => {
      queue.push(c);
      wake?.();
    }).then(
      (a) => { done = true; wake?.(); return a; },
      (e) => { done = true; failure = e; wake?.(); return null; },
    );
    try {
      for (;;) {
        while (queue.length) yield queue.shift()!;
        if (done) break;
        await new Promise<void>((res) => { wake = res; });
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
    this.model.dispose();
    this.ownBackend?.destroy();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
