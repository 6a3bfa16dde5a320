// Batched, step-routed decoding (DESIGN §1, Inference and Batching).
//
// Many sequences decode together: one LlamaModel.forward per step for the whole batch — first
// every prompt packed into one prefill, then one token per live sequence — on a KV cache, with
// logitRows so only the rows that pick a token reach lm_head. Every sequence has its own
// sampling options and seeded RNG, so a sequence generates the same tokens alone as in any
// batch.
//
// Step routing. Each sequence has a current step (−1 while nothing has switched it: the prompt
// and the tokens after it). A token fed to the model is routed with the step that was current
// when it was chosen; when a sequence emits a step-start token (stepTokens), the *following*
// tokens route to that step's expert. The step token itself is computed with the previous
// routing, and every KV entry keeps the routing it was computed with, so a switch costs no
// recompute. Equivalently, in a full forward over prompt + generated tokens, token p routes
// with the step that token p−1 belongs to (prompt tokens: −1; a step-start token belongs to the
// step it starts). opts.stepTokenRouting = 'own' instead routes a fed step-start token with the
// step it starts (token p routes with its own step), as a training chain that puts the start
// token in its step's segment would.
//
// Caller controls, per request:
//   force        at generated index `at` (default 0) the step's start token is emitted instead
//                of a sampled one, and routing switches to it.
//   skipSteps    when the model emits the start token of a skipped step, it is replaced by the
//                start token of the next step (by step index) that is not skipped; if there is
//                none, the sequence ends (stopReason 'step').
//   stopAfterStep  the sequence ends instead of emitting the start token of any later step
//                (stopReason 'step'; that token is not emitted).
//   stop         end tokens: emitted (kept in `tokens`), then the sequence ends ('stop').
//   maxNewTokens ends the sequence after that many tokens ('length').
// The model's context (config max_position_embeddings) bounds prompt + generated tokens: a prompt
// that leaves no room for one generated token is refused (ArgumentError naming the prompt and the
// limit), and a sequence that fills the context ends there ('context').

import { checkKnownKeys, checkPlainOptions } from '../ops/check.js';
import { yieldToEventLoop } from '../yield.js';
import { ArgumentError, MoteError, ShapeError, describe } from '../errors.js';
import type { LinearModule } from '../model/config.js';
import { LlamaModel } from '../model/llama.js';
import type { KvCache } from '../model/kv_cache.js';
import { loraRouting, type LoraRouting, type LoraStack, type LoraStrategy } from '../ops/lora.js';
import { checkSampling, checkSeed, sampleToken, SeededRng, type ResolvedSampling, type SamplingOptions } from './sampling.js';

/** Where a sequence stands when one of its tokens is routed. */
export interface RouteState {
  /** The current step; −1 = prompt (no step started yet). */
  step: number;
}

/** The K adapter slots (−1 = none) and mixing weights of one token. */
export interface RouteSlots {
  slots: readonly number[];
  weights: readonly number[];
}

/**
 * Adapters on the model's linears and how each sequence's tokens use them. Several bundles or
 * plain adapters can be served at once by stacking them into one set of stacks and giving each
 * sequence its own slot range (slotsFor gets the sequence's index in the request list).
 */
export interface TokenRouter {
  /** Slots per token. */
  K: number;
  /** Adapters per stack (default: the first stack's A.shape[0]). */
  L?: number;
  /** stacks[layer][module], one entry per layer (undefined: no adapters on that layer). */
  stacks: ReadonlyArray<Partial<Record<LinearModule, LoraStack>> | undefined>;
  slotsFor(seqIndex: number, state: RouteState): RouteSlots;
  strategy?: LoraStrategy | 'auto';
  /**
   * Routes may have fewer than K slots (an adapter pool: one slot per rank unit, DESIGN §8);
   * each forward then uses K = the longest route among its tokens (at least 1), shorter ones
   * padded with −1.
   */
  variableK?: boolean;
}

export interface ForceStep {
  step: number;
  /** Generated-token index at which the step's start token is emitted (default 0: right after the prompt). */
  at?: number;
}

export interface GenerateRequest {
  /** Prompt token ids (at least one). */
  prompt: readonly number[];
  /** Upper bound on generated tokens (integer ≥ 0). */
  maxNewTokens: number;
  /** End tokens: emitted, then the sequence stops. */
  stop?: readonly number[];
  /** Default greedy. */
  sampling?: SamplingOptions;
  /** Seed of this sequence's RNG (default 0). */
  seed?: number;
  /** This sequence's routing, overriding router.slotsFor (needs opts.router for the stacks). */
  routing?: (state: RouteState) => RouteSlots;
  force?: readonly ForceStep[];
  skipSteps?: readonly number[];
  stopAfterStep?: number;
}

export interface TokenEvent {
  /** Index of the request. */
  seq: number;
  token: number;
  /** The step the token belongs to (a step-start token: the step it starts); −1 before any. */
  step: number;
  /** Generated-token index within the sequence. */
  index: number;
  /** true when the caller forced it, or it replaced a skipped step's token. */
  forced: boolean;
}

/** 'context': prompt + generated tokens reached the model's max_position_embeddings; 'aborted': opts.signal fired. */
export type StopReason = 'length' | 'stop' | 'step' | 'context' | 'aborted';

export interface GenerateResult {
  tokens: number[];
  /** steps[j]: the step tokens[j] belongs to. */
  steps: number[];
  stopReason: StopReason;
  /** With opts.returnLogits: logits[j] is the row tokens[j] was chosen from (forced tokens too). */
  logits?: Float32Array[];
}

export interface GenerateOptions {
  router?: TokenRouter;
  /** Step-start token id → step index (≥ 0). */
  stepTokens?: ReadonlyMap<number, number>;
  onToken?: (e: TokenEvent) => void;
  /** Keep the logits row of every generated token in the results (for tests and scoring). */
  returnLogits?: boolean;
  /**
   * Routing of a step-start token when it is fed back: 'previous' (default) with the step it was
   * emitted under (only the following tokens switch), 'own' with the step it starts.
   */
  stepTokenRouting?: 'previous' | 'own';
  /** Initial KV cache capacity in tokens (default: total prompt length + 1 step of growth). */
  cacheCapacity?: number;
  /**
   * Ends every live sequence at the next step boundary (stopReason 'aborted'), keeping what was
   * generated. With a signal, each step yields to the event loop so that e.g. a SIGINT handler runs.
   */
  signal?: AbortSignal;
}

/** One request's decoding state (see BatchDecoder). @internal */
export interface SeqState {
  /** Index passed to router.slotsFor and reported in TokenEvent.seq. */
  i: number;
  /** Sequence id in the KV cache (unique for the decoder's life). */
  cacheId: number;
  req: GenerateRequest;
  sampling: ResolvedSampling;
  rng: SeededRng;
  stop: Set<number>;
  skip: Set<number>;
  force: Map<number, number>;
  stopAfter: number;
  step: number;
  result: GenerateResult;
  done: boolean;
  /** Called for each token of this sequence (besides opts.onToken). */
  onToken?: (e: TokenEvent) => void;
  /** The token to feed next (after its prompt has run); null before the prefill. */
  next: number | null;
}

function intIn(op: string, name: string, v: unknown, lo: number, hi = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < lo || v > hi) {
    throw new ArgumentError(
      `${op}: ${name}: expected an integer in [${lo}, ${hi === Number.MAX_SAFE_INTEGER ? '∞)' : hi + ']'}, got ${describe(v)}`,
    );
  }
  return v;
}

function tokenList(op: string, name: string, a: unknown, V: number, minLen: number): number[] {
  if (!Array.isArray(a) && !ArrayBuffer.isView(a))
    throw new ArgumentError(`${op}: ${name}: expected an array of token ids, got ${describe(a)}`);
  const arr = Array.from(a as ArrayLike<number>);
  if (arr.length < minLen) throw new ShapeError(`${op}: ${name}: expected at least ${minLen} token id(s), got ${arr.length}`);
  arr.forEach((t, k) => intIn(op, `${name}[${k}]`, t, 0, V - 1));
  return arr;
}

const REQUEST_KEYS = ['prompt', 'maxNewTokens', 'stop', 'sampling', 'seed', 'routing', 'force', 'skipSteps', 'stopAfterStep'];

const GENERATE_OPTION_KEYS = ['router', 'stepTokens', 'onToken', 'returnLogits', 'stepTokenRouting', 'cacheCapacity', 'signal'];

/**
 * The decoding loop shared by `generate` (one batch, all requests known up front) and the
 * serving engine (requests join and leave at every step): a KV cache, the step routing and
 * each sequence's state machine. Each `step()` runs one forward over the prompts admitted
 * since the last step (prefill) and one token of every running sequence (decode), packed
 * together, then picks every sequence's next token. A sequence's tokens do not depend on
 * which others share its steps: it has its own RNG, and its rows are computed from its own
 * cache entries. @internal use generate() or Engine.
 */
export class BatchDecoder {
  readonly V: number;
  readonly maxContext: number;
  readonly stepOf = new Map<number, number>();
  readonly tokenOfStep = new Map<number, number>();
  readonly stepList: number[];
  readonly stepTokenRouting: 'previous' | 'own';
  #router: TokenRouter | undefined;
  #L = 0;
  #cache: KvCache | null = null;
  #capacity: number | undefined;
  #nextId = 0;
  /** Admitted, prompt not yet run. */
  #waiting: SeqState[] = [];
  /** Prompt run, waiting for their next token to be fed. */
  #running: SeqState[] = [];

  constructor(
    readonly model: LlamaModel,
    readonly opts: GenerateOptions,
    readonly op = 'generate',
    requestsHint = 1,
  ) {
    if (!(model instanceof LlamaModel)) throw new ArgumentError(`${op}: model: expected a LlamaModel, got ${describe(model)}`);
    checkPlainOptions(`${op}: opts`, opts, GENERATE_OPTION_KEYS);
    this.V = model.config.vocabSize;
    this.maxContext = model.config.maxPositionEmbeddings;
    // Steps: token → step and step → token.
    if (opts.stepTokens !== undefined) {
      if (!(opts.stepTokens instanceof Map))
        throw new ArgumentError(`${op}: stepTokens: expected a Map of token id → step index, got ${describe(opts.stepTokens)}`);
      for (const [t, s] of opts.stepTokens) {
        intIn(op, `stepTokens key ${describe(t)}`, t, 0, this.V - 1);
        intIn(op, `stepTokens[${t}]`, s, 0);
        if (this.tokenOfStep.has(s))
          throw new ArgumentError(`${op}: stepTokens: step ${s} has two start tokens (${this.tokenOfStep.get(s)} and ${t})`);
        this.stepOf.set(t, s);
        this.tokenOfStep.set(s, t);
      }
    }
    this.stepList = [...this.tokenOfStep.keys()].sort((a, b) => a - b);
    this.setRouter(opts.router);
    if (opts.onToken !== undefined && typeof opts.onToken !== 'function')
      throw new ArgumentError(`${op}: onToken: expected a function, got ${describe(opts.onToken)}`);
    // The cache never needs more than every sequence at the full context: a larger capacity is a mistake, not a reason to allocate.
    if (opts.cacheCapacity !== undefined)
      this.#capacity = intIn(op, 'cacheCapacity', opts.cacheCapacity, 1, Math.max(1, requestsHint) * this.maxContext);
    if (opts.returnLogits !== undefined && typeof opts.returnLogits !== 'boolean')
      throw new ArgumentError(`${op}: returnLogits: expected a boolean, got ${describe(opts.returnLogits)}`);
    if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal))
      throw new ArgumentError(`${op}: signal: expected an AbortSignal, got ${describe(opts.signal)}`);
    const stepTokenRouting = opts.stepTokenRouting ?? 'previous';
    if (stepTokenRouting !== 'previous' && stepTokenRouting !== 'own')
      throw new ArgumentError(`${op}: stepTokenRouting: expected 'previous' or 'own', got ${describe(stepTokenRouting)}`);
    this.stepTokenRouting = stepTokenRouting;
  }

  /** Replaces the adapters (between steps): routes are computed at every step, so running sequences switch at the next one. */
  setRouter(router: TokenRouter | undefined): void {
    const op = this.op;
    let L = 0;
    if (router !== undefined) {
      if (!router || typeof router !== 'object') throw new ArgumentError(`${op}: router: expected a TokenRouter, got ${describe(router)}`);
      intIn(op, 'router.K', router.K, 1);
      if (!Array.isArray(router.stacks))
        throw new ArgumentError(`${op}: router.stacks: expected one entry per layer, got ${describe(router.stacks)}`);
      if (typeof router.slotsFor !== 'function')
        throw new ArgumentError(`${op}: router.slotsFor: expected a function, got ${describe(router.slotsFor)}`);
      if (router.L !== undefined) L = intIn(op, 'router.L', router.L, 1);
      else {
        const first = router.stacks.flatMap((m) => Object.values(m ?? {})).find((s) => s !== undefined) as LoraStack | undefined;
        if (!first) throw new ArgumentError(`${op}: router.stacks: no adapter stack on any layer (give router.L or leave the router out)`);
        L = first.A.shape[0]!;
      }
    }
    this.#router = router;
    this.#L = L;
  }

  get router(): TokenRouter | undefined {
    return this.#router;
  }

  /** Sequences admitted or running. */
  get size(): number {
    return this.#waiting.length + this.#running.length;
  }

  /** Checks one request (`r` names it in errors) and returns its state; nothing runs yet. */
  prepare(req: GenerateRequest, i: number, r = `requests[${i}]`): SeqState {
    const op = this.op;
    if (!req || typeof req !== 'object') throw new ArgumentError(`${op}: ${r}: expected { prompt, maxNewTokens, … }, got ${describe(req)}`);
    checkKnownKeys(`${op}: ${r}`, req, REQUEST_KEYS, 'field');
    const prompt = tokenList(op, `${r}.prompt`, req.prompt, this.V, 1);
    if (prompt.length >= this.maxContext) {
      throw new ArgumentError(
        `${op}: ${r}.prompt: ${prompt.length} tokens, but the model's context (max_position_embeddings) is ${this.maxContext} ` +
          `tokens: a prompt may have at most ${this.maxContext - 1} to leave room for a generated token`,
      );
    }
    intIn(op, `${r}.maxNewTokens`, req.maxNewTokens, 0);
    const stop = new Set(req.stop === undefined ? [] : tokenList(op, `${r}.stop`, req.stop, this.V, 0));
    const sampling = checkSampling(`${op}: ${r}.sampling`, req.sampling);
    const seed = req.seed === undefined ? 0 : checkSeed(op, `${r}.seed`, req.seed);
    if (req.routing !== undefined) {
      if (typeof req.routing !== 'function')
        throw new ArgumentError(`${op}: ${r}.routing: expected a function (state) => { slots, weights }, got ${describe(req.routing)}`);
      if (!this.#router) throw new ArgumentError(`${op}: ${r}.routing: needs opts.router (its stacks hold the adapters)`);
    }
    const knownStep = (name: string, s: unknown): number => {
      intIn(op, name, s, 0);
      if (!this.tokenOfStep.has(s as number))
        throw new ArgumentError(`${op}: ${name}: step ${s as number} has no start token in stepTokens`);
      return s as number;
    };
    const skip = new Set<number>();
    if (req.skipSteps !== undefined) {
      if (!Array.isArray(req.skipSteps))
        throw new ArgumentError(`${op}: ${r}.skipSteps: expected an array of step indices, got ${describe(req.skipSteps)}`);
      (req.skipSteps as readonly number[]).forEach((s, k) => skip.add(knownStep(`${r}.skipSteps[${k}]`, s)));
    }
    const force = new Map<number, number>();
    if (req.force !== undefined) {
      if (!Array.isArray(req.force))
        throw new ArgumentError(`${op}: ${r}.force: expected an array of { step, at? }, got ${describe(req.force)}`);
      (req.force as readonly ForceStep[]).forEach((f, k) => {
        if (!f || typeof f !== 'object') throw new ArgumentError(`${op}: ${r}.force[${k}]: expected { step, at? }, got ${describe(f)}`);
        const s = knownStep(`${r}.force[${k}].step`, f.step);
        if (skip.has(s)) throw new ArgumentError(`${op}: ${r}.force[${k}].step: step ${s} is also in skipSteps`);
        const at = f.at === undefined ? 0 : intIn(op, `${r}.force[${k}].at`, f.at, 0);
        if (force.has(at)) throw new ArgumentError(`${op}: ${r}.force[${k}].at: two steps forced at generated index ${at}`);
        force.set(at, s);
      });
    }
    const stopAfter = req.stopAfterStep === undefined ? Infinity : intIn(op, `${r}.stopAfterStep`, req.stopAfterStep, 0);
    const result: GenerateResult = { tokens: [], steps: [], stopReason: 'length' };
    if (this.opts.returnLogits) result.logits = [];
    return {
      i,
      cacheId: -1,
      req: { ...req, prompt },
      sampling,
      rng: new SeededRng(seed),
      stop,
      skip,
      force,
      stopAfter,
      step: -1,
      result,
      done: req.maxNewTokens === 0,
      next: null,
    };
  }

  /** Queues prepared sequences: their prompts run (packed with the running decodes) at the next step. */
  admit(seqs: readonly SeqState[]): void {
    for (const s of seqs) {
      if (s.done) continue;
      s.cacheId = this.#nextId++;
      this.#waiting.push(s);
    }
  }

  /** Ends `s` now (stopReason as given) and frees its cache entries at the next step. */
  end(s: SeqState, reason: StopReason): void {
    if (s.done) return;
    s.done = true;
    s.result.stopReason = reason;
  }

  #routeOf(s: SeqState, step: number): RouteSlots {
    const router = this.#router!;
    const state: RouteState = { step };
    const rs = s.req.routing ? s.req.routing(state) : router.slotsFor(s.i, state);
    const K = router.K;
    const who = s.req.routing ? `requests[${s.i}].routing` : 'router.slotsFor';
    const n = rs?.slots?.length;
    if (!rs || typeof rs !== 'object' || !rs.slots || !rs.weights || rs.weights.length !== n || (router.variableK ? !(n <= K) : n !== K)) {
      throw new ShapeError(
        `${this.op}: ${who}(step ${step}) for sequence ${s.i}: expected { slots, weights } with ${router.variableK ? `at most ${K}` : K} entries each, got ${describe(rs)}`,
      );
    }
    return rs;
  }

  /** The step the last emitted token of `s` is routed with when fed back. */
  #routeStepOfLast(s: SeqState): number {
    const st = s.result.steps;
    const n = st.length;
    if (this.stepTokenRouting === 'own') return st[n - 1]!;
    return n >= 2 ? st[n - 2]! : -1;
  }

  /** Picks, rewrites and emits the next token of `s` from its logits row; returns the token to feed or null when it ended. */
  #choose(s: SeqState, row: Float32Array): number | null {
    const res = s.result;
    const index = res.tokens.length;
    let forced = false;
    let token: number;
    const f = s.force.get(index);
    if (f !== undefined) {
      token = this.tokenOfStep.get(f)!;
      forced = true;
    } else token = sampleToken(row, s.sampling, s.rng);
    let step = this.stepOf.get(token);
    if (step !== undefined && !forced && s.skip.has(step)) {
      const next = this.stepList.find((x) => x > step! && !s.skip.has(x));
      if (next === undefined) {
        s.done = true;
        res.stopReason = 'step';
        return null;
      }
      step = next;
      token = this.tokenOfStep.get(next)!;
      forced = true;
    }
    if (step !== undefined && step > s.stopAfter) {
      s.done = true;
      res.stopReason = 'step';
      return null;
    }
    if (step !== undefined) s.step = step;
    res.tokens.push(token);
    res.steps.push(s.step);
    res.logits?.push(row);
    const e: TokenEvent = { seq: s.i, token, step: s.step, index, forced };
    this.opts.onToken?.(e);
    s.onToken?.(e);
    if (s.stop.has(token)) {
      s.done = true;
      res.stopReason = 'stop';
      return null;
    }
    if (res.tokens.length >= s.req.maxNewTokens) {
      s.done = true;
      res.stopReason = 'length';
      return null;
    }
    // The next token would be fed at position prompt + generated: past the context, stop here.
    if (s.req.prompt.length + res.tokens.length >= this.maxContext) {
      s.done = true;
      res.stopReason = 'context';
      return null;
    }
    return token;
  }

  /**
   * One forward: the waiting prompts (prefill) and the next token of every running sequence
   * (decode), packed; then every one of them gets its next token. Sequences that end (or were
   * ended) leave the cache. Returns the sequences that ended in this step.
   */
  async step(): Promise<SeqState[]> {
    const ended: SeqState[] = [];
    // Sequences ended from outside (end()) since the last step leave first.
    const gone = this.#running.filter((s) => s.done);
    if (gone.length) {
      this.#running = this.#running.filter((s) => !s.done);
      this.#cache?.drop(gone.map((s) => s.cacheId));
      ended.push(...gone);
    }
    const cancelledWaiting = this.#waiting.filter((s) => s.done);
    ended.push(...cancelledWaiting);
    const prefill = this.#waiting.filter((s) => !s.done);
    this.#waiting = [];
    const decode = this.#running;
    if (prefill.length === 0 && decode.length === 0) return ended;
    if (!this.#cache) {
      const need = prefill.reduce((a, s) => a + s.req.prompt.length, 0) + decode.length + prefill.length + 1;
      this.#cache = this.model.newCache({ capacity: this.#capacity ?? need });
    }
    const batch: { s: SeqState; token: number; step: number }[] = [];
    const rows: number[] = [];
    const order: SeqState[] = [];
    for (const s of decode) {
      batch.push({ s, token: s.next!, step: this.#routeStepOfLast(s) });
      rows.push(batch.length - 1);
      order.push(s);
    }
    // Prefill: each prompt routed with step −1, logits only for its last token.
    for (const s of prefill) {
      for (const t of s.req.prompt) batch.push({ s, token: t, step: -1 });
      rows.push(batch.length - 1);
      order.push(s);
    }
    const logits = await this.#run(batch, rows);
    const V = this.V;
    // No silent NaN: argmax and sampling skip NaN entries, so a broken model would still "generate".
    for (let r = 0; r < order.length; r++) {
      if (order[r]!.done) continue;
      for (let j = r * V; j < (r + 1) * V; j++) {
        if (Number.isNaN(logits[j]!)) {
          const s = order[r]!;
          throw new MoteError(
            `${this.op}: the logits of sequence ${s.i} for generated token ${s.result.tokens.length} hold NaN (logit ${j - r * V}): ` +
              `the model's weights or adapters hold NaN or Inf; no token was chosen`,
          );
        }
      }
    }
    const next: SeqState[] = [];
    const finished: SeqState[] = [];
    order.forEach((s, r) => {
      if (s.done) {
        finished.push(s);
        return;
      } // ended from outside during the forward
      const t = this.#choose(s, logits.slice(r * V, (r + 1) * V));
      if (t === null) finished.push(s);
      else {
        s.next = t;
        next.push(s);
      }
    });
    // Nothing left: clearing is cheaper than compacting.
    if (finished.length) {
      if (next.length || this.#waiting.length) this.#cache.drop(finished.map((s) => s.cacheId));
      else this.#cache.clear();
    }
    this.#running = next;
    ended.push(...finished);
    return ended;
  }

  /** One forward over tokens [sequence, token, routing step]; returns the chosen rows' logits. */
  async #run(batch: { s: SeqState; token: number; step: number }[], rows: number[]): Promise<Float32Array> {
    const router = this.#router;
    let routing: LoraRouting | undefined;
    if (router) {
      const memo = new Map<string, RouteSlots>();
      const routes: RouteSlots[] = [];
      let K = router.variableK ? 1 : router.K;
      for (const { s, step } of batch) {
        const key = `${s.cacheId}:${step}`;
        let rs = memo.get(key);
        if (!rs) {
          rs = this.#routeOf(s, step);
          memo.set(key, rs);
        }
        routes.push(rs);
        if (rs.slots.length > K) K = rs.slots.length;
      }
      const slots = new Int32Array(batch.length * K).fill(-1);
      const weights = new Float32Array(batch.length * K);
      routes.forEach((rs, t) => {
        for (let k = 0; k < rs.slots.length; k++) {
          slots[t * K + k] = rs.slots[k]!;
          weights[t * K + k] = rs.weights[k]!;
        }
      });
      routing = loraRouting(this.model.backend, slots, { K, L: this.#L, weight: weights });
    }
    try {
      return await this.model.logits(
        batch.map((b) => b.token),
        {
          seq: batch.map((b) => b.s.cacheId),
          cache: this.#cache!,
          logitRows: rows,
          ...(router
            ? { lora: { stacks: router.stacks, routing: routing!, ...(router.strategy ? { strategy: router.strategy } : {}) } }
            : {}),
        },
      );
    } finally {
      routing?.dispose();
    }
  }

  dispose(): void {
    this.#cache?.dispose();
    this.#cache = null;
    this.#waiting = [];
    this.#running = [];
  }
}

/**
 * Generates continuations of `requests` in one batch. Returns one result per request, in order;
 * streams every token through opts.onToken as it is chosen.
 */
export async function generate(
  model: LlamaModel,
  requests: readonly GenerateRequest[],
  opts: GenerateOptions = {},
): Promise<GenerateResult[]> {
  const op = 'generate';
  if (!(model instanceof LlamaModel)) throw new ArgumentError(`${op}: model: expected a LlamaModel, got ${describe(model)}`);
  if (!Array.isArray(requests)) throw new ArgumentError(`${op}: requests: expected an array of requests, got ${describe(requests)}`);
  const dec = new BatchDecoder(model, opts, op, requests.length);
  // Every request is checked before anything runs.
  const seqs = requests.map((req, i) => dec.prepare(req, i));
  const active = seqs.filter((s) => !s.done);
  const signal = opts.signal;
  if (active.length === 0) return seqs.map((s) => s.result);
  if (signal?.aborted) {
    for (const s of active) s.result.stopReason = 'aborted';
    return seqs.map((s) => s.result);
  }
  try {
    dec.admit(active);
    for (;;) {
      await dec.step();
      if (dec.size === 0) break;
      if (signal) {
        // Let pending events (a SIGINT handler) run: backends may compute without yielding.
        await yieldToEventLoop();
        if (signal.aborted) {
          for (const s of active) dec.end(s, 'aborted');
          break;
        }
      }
    }
  } finally {
    dec.dispose();
  }
  return seqs.map((s) => s.result);
}
