// A serving engine: continuous batching over one model with named adapters that come and go.
//
// Requests join and leave at every decode step (BatchDecoder): a new request's prompt runs in
// the same forward as the running sequences' next tokens, a finished or cancelled one leaves
// the KV cache at once. Each request has its own prompt, sampling, stop conditions, step
// controls and adapter — a PEFT LoRA adapter, a MoTE bundle (step routing: a step-start token
// switches its experts, as generate does) or none — and streams its tokens.
//
// Adapters. Every registered adapter (a bundle is its experts) is stacked into one AdapterSet,
// so one forward serves any mix of them (K = 2 slots per token: a bundle's step expert and its
// shared expert; a plain adapter and nothing). Adding or removing one rebuilds that set from
// the folders between two steps; routing is computed at every step from the adapter's name,
// so running requests carry on across the change. A request's adapter cannot be removed while
// it runs.
//
// Batch invariance: a sequence's tokens depend only on its own request — its own RNG, its own
// cache entries — not on what else is in the batch (tested: the same greedy request alone and
// in a busy engine gives the same tokens).

import { yieldToEventLoop } from '../yield.js';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArgumentError, MoteError, describe } from '../errors.js';
import type { LlamaModel } from '../model/llama.js';
import {
  BatchDecoder,
  type GenerateRequest,
  type GenerateResult,
  type RouteSlots,
  type SeqState,
  type StopReason,
  type TokenEvent,
  type TokenRouter,
} from '../generate/generate.js';
import { AdapterSet } from '../adapters/adapter_set.js';
import { readAdapter, stackAdapters, type ReadAdapter } from '../adapters/peft_io.js';
import { openSource } from '../io/source.js';
import { uploadStacks } from '../adapters/stacks.js';
import { LINEAR_MODULES, linearShape } from '../model/config.js';
import { readMoteJson } from '../mote/format.js';
import { moteStepSlots } from '../mote/bundle.js';
import { SHARED_EXPERT, type MoteConfig } from '../mote/steps.js';
import { ADAPTER_CONFIG_FILE } from '../io/peft.js';

export interface EngineOptions {
  /** Step-start token id → step index (the MoTE step tags), as generate's stepTokens. */
  stepTokens?: ReadonlyMap<number, number>;
  /** As generate's; default 'own' (a chain puts a step's start tag in that step). */
  stepTokenRouting?: 'previous' | 'own';
  /** Most sequences decoding at once (default 64); later requests wait in order. */
  maxSequences?: number;
  /** Most prompt tokens started in one step (default 4096; a longer prompt runs alone), so new prompts do not stall running decodes for long. */
  maxPrefillTokens?: number;
  /**
   * Device bytes the stacked adapters may take (default: no limit). Registered adapters are
   * kept on the host; those a request needs are paged in, least recently used ones out —
   * never one a running request uses. A request waits while its adapter cannot fit.
   */
  adapterBudgetBytes?: number;
}

export interface EngineRequest extends Omit<GenerateRequest, 'routing'> {
  /** A name given to addAdapter; default: the base model alone. */
  adapter?: string;
  /** Ends this request at the next step (stopReason 'aborted'); the others go on. */
  signal?: AbortSignal;
}

/** A running request: its tokens as they come, and its result. */
export interface EngineStream extends AsyncIterable<TokenEvent> {
  readonly result: Promise<GenerateResult>;
  /** Ends the request at the next step (stopReason 'aborted'). */
  cancel(): void;
}

export interface AdapterInfo {
  name: string;
  kind: 'lora' | 'mote';
  dir: string;
  /** MoTE bundles: their steps and α. */
  steps?: readonly string[];
  alpha?: number;
}

/** An engine error that carries an HTTP-like status (400 bad request, 404 unknown, 409 conflict). */
export class EngineError extends MoteError {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

interface Registered extends AdapterInfo {
  /** Expert folders, in slot order (a bundle: steps…, shared). */
  dirs: string[];
  config?: MoteConfig;
  /** The experts read and checked on the host (what paging in uploads). */
  host: ReadAdapter[];
}

interface Live {
  s: SeqState;
  adapter: string | null;
  events: TokenEvent[];
  wake: (() => void) | null;
  finished: boolean;
  resolve: (r: GenerateResult) => void;
  reject: (e: unknown) => void;
  unlisten?: () => void;
}

function positiveInt(op: string, name: string, v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1 || v > 1 << 20)
    throw new ArgumentError(`${op}: ${name}: expected an integer in [1, 2^20], got ${describe(v)}`);
  return v;
}

export class Engine {
  readonly #dec: BatchDecoder;
  readonly #maxSequences: number;
  readonly #maxPrefill: number;
  #adapters = new Map<string, Registered>();
  /** Adapters on the device, least recently used first; #set holds exactly these. */
  #resident: string[] = [];
  #dirty = false;
  readonly #budget: number;
  /** Slot offset of each resident adapter in the current set. */
  #offsets = new Map<string, number>();
  #set: AdapterSet | null = null;
  /** Page-ins and evictions so far (for tests and the benchmark). */
  readonly paging = { pageIns: 0, evictions: 0, rebuilds: 0 };
  #queue: Live[] = [];
  #live = new Map<SeqState, Live>();
  #nextIndex = 0;
  #loop: Promise<void> | null = null;
  #closed = false;
  /** Adapter changes wait for the step in flight to end. */
  #lock: Promise<void> = Promise.resolve();
  /** Resolves when the step in flight ends: the old adapter set is freed only after it. */
  #inflight: Promise<void> = Promise.resolve();

  constructor(
    readonly model: LlamaModel,
    opts: EngineOptions = {},
  ) {
    const op = 'Engine';
    if (!opts || typeof opts !== 'object') throw new ArgumentError(`${op}: opts: expected an object, got ${describe(opts)}`);
    this.#maxSequences = positiveInt(op, 'maxSequences', opts.maxSequences, 64);
    this.#maxPrefill = positiveInt(op, 'maxPrefillTokens', opts.maxPrefillTokens, 4096);
    const budget = opts.adapterBudgetBytes ?? Infinity;
    if (typeof budget !== 'number' || !(budget > 0))
      throw new ArgumentError(`${op}: adapterBudgetBytes: expected a positive number of bytes, got ${describe(budget)}`);
    this.#budget = budget;
    this.#dec = new BatchDecoder(
      model,
      {
        ...(opts.stepTokens ? { stepTokens: opts.stepTokens } : {}),
        stepTokenRouting: opts.stepTokenRouting ?? 'own',
      },
      'Engine',
    );
  }

  /** The adapters registered, in registration order. */
  adapters(): AdapterInfo[] {
    return [...this.#adapters.values()].map(({ name, kind, dir, steps, alpha }) => ({
      name,
      kind,
      dir,
      ...(steps ? { steps, alpha: alpha! } : {}),
    }));
  }

  /** Device bytes of the stacked adapter tensors (A and B, every layer and module). */
  adapterBytes(): number {
    let n = 0;
    for (const layer of this.#set?.stacks ?? []) {
      for (const st of Object.values(layer ?? {})) if (st) n += st.A.byteLength + st.B.byteLength;
    }
    return n;
  }

  /** Requests decoding and waiting. */
  get load(): { running: number; waiting: number } {
    return { running: this.#live.size, waiting: this.#queue.length };
  }

  /**
   * Registers the adapter in `dir` under `name`: a PEFT LoRA folder (adapter_config.json) or a
   * MoTE bundle (mote.json). Takes effect between two steps; running requests go on.
   */
  async addAdapter(name: string, dir: string): Promise<AdapterInfo> {
    return (await this.addAdapters([{ name, dir }]))[0]!;
  }

  /** Registers several adapters (read and checked now, on the host; see addAdapter). */
  async addAdapters(list: readonly { name: string; dir: string }[]): Promise<AdapterInfo[]> {
    const op = 'Engine.addAdapter';
    this.#open(op);
    if (!Array.isArray(list) || list.length === 0)
      throw new EngineError(`${op}: expected a non-empty list of { name, dir }, got ${describe(list)}`, 400);
    const added = new Map<string, Registered>();
    for (const { name, dir } of list) {
      if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$/.test(name))
        throw new EngineError(`${op}: name: expected 1-128 characters of letters, digits and _ . : / -, got ${describe(name)}`, 400);
      if (typeof dir !== 'string' || dir === '') throw new EngineError(`${op}: dir: expected an adapter folder, got ${describe(dir)}`, 400);
      if (this.#adapters.has(name) || added.has(name))
        throw new EngineError(`${op}: an adapter named '${name}' is already loaded (unload it first)`, 409);
      const reg = await this.#describe(op, name, dir);
      if (this.#bytesOf([reg]) > this.#budget)
        throw new EngineError(
          `${op}: ${dir}: needs ${this.#bytesOf([reg])} device bytes alone, more than adapterBudgetBytes (${this.#budget})`,
          400,
        );
      added.set(name, reg);
    }
    await this.#lock;
    for (const [n, r] of added) this.#adapters.set(n, r);
    // On the device at once while they fit without evicting anything.
    for (const n of added.keys()) {
      if (this.#bytesOf([...this.#resident, n].map((x) => this.#adapters.get(x)!)) > this.#budget) break;
      this.#resident.push(n);
      this.#dirty = true;
    }
    await this.#syncSet();
    const all = this.adapters();
    return list.map(({ name }) => all.find((a) => a.name === name)!);
  }

  async #describe(op: string, name: string, dir: string): Promise<Registered> {
    let reg: Omit<Registered, 'host'>;
    if (fs.existsSync(path.join(dir, 'mote.json'))) {
      const { config, experts } = readMoteJson(dir);
      const known = new Set(this.#dec.tokenOfStep.keys());
      for (let k = 0; k < config.steps.length; k++) {
        if (!known.has(k))
          throw new EngineError(
            `${op}: ${dir}: its step '${config.steps[k]}' has no step token in this engine (start it with the bundle's steps)`,
            400,
          );
      }
      reg = {
        name,
        kind: 'mote',
        dir,
        steps: config.steps,
        alpha: config.alpha,
        config,
        dirs: [...config.steps, SHARED_EXPERT].map((n) => path.join(dir, experts[n]!)),
      };
    } else if (fs.existsSync(path.join(dir, ADAPTER_CONFIG_FILE))) reg = { name, kind: 'lora', dir, dirs: [dir] };
    else throw new EngineError(`${op}: ${dir}: neither a PEFT adapter (no ${ADAPTER_CONFIG_FILE}) nor a MoTE bundle (no mote.json)`, 400);
    try {
      return { ...reg, host: await Promise.all(reg.dirs.map((d) => readAdapter(this.model.config, openSource(d)))) };
    } catch (e) {
      throw e instanceof MoteError ? new EngineError(e.message, 400) : e;
    }
  }

  /** Device bytes of the stacked set holding `regs` (f32 A and B per adapted linear, padded to the largest rank there). */
  #bytesOf(regs: readonly Registered[]): number {
    const cfg = this.model.config;
    const experts = regs.flatMap((r) => r.host);
    let bytes = 0;
    for (let l = 0; l < cfg.numLayers; l++) {
      for (const m of LINEAR_MODULES) {
        let R = 0;
        for (const a of experts) R = Math.max(R, a.modules.get(`${l}.${m}`)?.rank ?? 0);
        if (R === 0) continue;
        const [Hout, Hin] = linearShape(cfg, m);
        bytes += 4 * experts.length * R * (Hin + Hout);
      }
    }
    return bytes;
  }

  /** Unregisters `name`; refused (409) while a request uses it. */
  async removeAdapter(name: string): Promise<void> {
    const op = 'Engine.removeAdapter';
    this.#open(op);
    if (!this.#adapters.has(name)) throw new EngineError(`${op}: no adapter named ${describe(name)}`, 404);
    const users = [...this.#live.values(), ...this.#queue].filter((l) => l.adapter === name).length;
    if (users) throw new EngineError(`${op}: '${name}' is used by ${users} running request(s)`, 409);
    await this.#lock;
    this.#adapters.delete(name);
    if (this.#resident.includes(name)) {
      this.#resident = this.#resident.filter((n) => n !== name);
      this.#dirty = true;
    }
    await this.#syncSet();
  }

  /** Adapters running or admitted requests use: never evicted. */
  #inUse(extra: Iterable<Live> = []): Set<string> {
    const used = new Set<string>();
    for (const l of [...this.#live.values(), ...extra]) if (l.adapter !== null) used.add(l.adapter);
    return used;
  }

  /**
   * Makes `name` resident, evicting least recently used adapters that nothing in `keep` uses;
   * returns false when it cannot fit now. Marks it most recently used.
   */
  #pageIn(name: string, keep: Set<string>): boolean {
    const i = this.#resident.indexOf(name);
    if (i >= 0) {
      this.#resident.splice(i, 1);
      this.#resident.push(name);
      return true;
    }
    const next = [...this.#resident, name];
    const evicted: string[] = [];
    for (let k = 0; this.#bytesOf(next.map((n) => this.#adapters.get(n)!)) > this.#budget;) {
      while (k < next.length - 1 && keep.has(next[k]!)) k++;
      if (k >= next.length - 1) return false; // everything left is in use
      evicted.push(...next.splice(k, 1));
    }
    this.#resident = next;
    this.paging.pageIns++;
    this.paging.evictions += evicted.length;
    this.#dirty = true;
    return true;
  }

  /** Rebuilds the device set when the resident adapters changed (between steps only). */
  async #syncSet(): Promise<void> {
    if (!this.#dirty) return;
    const run = this.#lock.then(async () => {
      if (!this.#dirty) return;
      await this.#inflight;
      const offsets = new Map<string, number>();
      const host: ReadAdapter[] = [];
      const dirs: string[] = [];
      for (const n of this.#resident) {
        const r = this.#adapters.get(n)!;
        offsets.set(n, host.length);
        host.push(...r.host);
        dirs.push(...r.dirs);
      }
      const set = host.length ? adapterSetOf(this.model, host, dirs) : null;
      const old = this.#set;
      this.#set = set;
      this.#offsets = offsets;
      this.#dirty = false;
      this.paging.rebuilds++;
      this.#dec.setRouter(set ? this.#router(set) : undefined);
      old?.dispose();
    });
    this.#lock = run.catch(() => undefined);
    return run;
  }

  #router(set: AdapterSet): TokenRouter {
    return { K: 2, L: set.L, stacks: set.stacks, slotsFor: () => ({ slots: [-1, -1], weights: [0, 0] }) };
  }

  /** The slots of a token of a request on `adapter` at `step` (names → offsets of the current set). */
  #slots(adapter: string | null, step: number): RouteSlots {
    if (adapter === null) return { slots: [-1, -1], weights: [0, 0] };
    const reg = this.#adapters.get(adapter)!;
    const off = this.#offsets.get(adapter)!;
    if (reg.kind === 'lora') return { slots: [off, -1], weights: [1, 0] };
    return moteStepSlots(step, reg.alpha!, off, off + reg.steps!.length);
  }

  #open(op: string): void {
    if (this.#closed) throw new EngineError(`${op}: the engine is closed`, 503);
  }

  /** Starts a request; its tokens stream from the returned iterable, its result resolves when it ends. */
  submit(req: EngineRequest): EngineStream {
    const op = 'Engine.submit';
    this.#open(op);
    if (!req || typeof req !== 'object') throw new EngineError(`${op}: request: expected an object, got ${describe(req)}`, 400);
    const adapter = req.adapter ?? null;
    if (adapter !== null && (typeof adapter !== 'string' || !this.#adapters.has(adapter))) {
      throw new EngineError(
        `${op}: adapter: no adapter named ${describe(adapter)} (loaded: ${[...this.#adapters.keys()].join(', ') || 'none'})`,
        404,
      );
    }
    if (req.signal !== undefined && !(req.signal instanceof AbortSignal))
      throw new EngineError(`${op}: signal: expected an AbortSignal, got ${describe(req.signal)}`, 400);
    const { adapter: _a, signal, ...gen } = req;
    let s: SeqState;
    try {
      s = this.#dec.prepare(
        adapter === null ? gen : { ...gen, routing: (st) => this.#slots(adapter, st.step) },
        this.#nextIndex++,
        'request',
      );
    } catch (e) {
      throw e instanceof MoteError ? new EngineError(e.message, 400) : e;
    }
    let resolve!: (r: GenerateResult) => void, reject!: (e: unknown) => void;
    const result = new Promise<GenerateResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    result.catch(() => undefined); // a caller that only iterates still sees the error there
    const l: Live = { s, adapter, events: [], wake: null, finished: false, resolve, reject };
    s.onToken = (e) => {
      l.events.push(e);
      l.wake?.();
    };
    const cancel = () => this.#cancel(l, 'aborted');
    if (signal) {
      if (signal.aborted) cancel();
      else {
        signal.addEventListener('abort', cancel, { once: true });
        l.unlisten = () => signal.removeEventListener('abort', cancel);
      }
    }
    if (s.done)
      this.#finish(l); // maxNewTokens 0 or cancelled already
    else {
      this.#queue.push(l);
      this.#kick();
    }
    const events = l.events;
    const self = this;
    return {
      result,
      cancel,
      async *[Symbol.asyncIterator]() {
        let i = 0;
        for (;;) {
          while (i < events.length) yield events[i++]!;
          if (l.finished) break;
          await new Promise<void>((res) => {
            l.wake = res;
          });
          l.wake = null;
        }
        await result; // rethrows a failure
        void self;
      },
    };
  }

  #cancel(l: Live, reason: StopReason): void {
    if (l.finished) return;
    const queued = this.#queue.indexOf(l);
    if (queued >= 0) {
      this.#queue.splice(queued, 1);
      l.s.done = true;
      l.s.result.stopReason = reason;
      this.#finish(l);
      return;
    }
    this.#dec.end(l.s, reason); // leaves at the next step
  }

  /** Ends `l` once: with its result, or with `error` when a step failed under it. */
  #finish(l: Live, error?: { e: unknown }): void {
    if (l.finished) return;
    l.finished = true;
    l.unlisten?.();
    this.#live.delete(l.s);
    if (error) l.reject(error.e);
    else l.resolve(l.s.result);
    l.wake?.();
  }

  #kick(): void {
    if (this.#loop) return;
    this.#loop = this.#run().finally(() => {
      this.#loop = null;
      if (this.#queue.length && !this.#closed) this.#kick();
    });
  }

  async #run(): Promise<void> {
    while (this.#queue.length || this.#live.size) {
      await this.#lock; // an adapter change in progress finishes first
      // Admit waiting requests in order: up to maxSequences running, maxPrefillTokens of prompt
      // per step; one whose adapter cannot be paged in now waits (later ones may pass it).
      let prefill = 0;
      const admit: Live[] = [];
      const waiting: Live[] = [];
      while (this.#queue.length && this.#live.size + admit.length < this.#maxSequences) {
        const l = this.#queue[0]!;
        const n = l.s.req.prompt.length;
        if (admit.length && prefill + n > this.#maxPrefill) break;
        this.#queue.shift();
        if (l.adapter !== null && !this.#pageIn(l.adapter, this.#inUse(admit))) {
          waiting.push(l);
          continue;
        }
        prefill += n;
        admit.push(l);
      }
      this.#queue.unshift(...waiting);
      await this.#syncSet();
      if (admit.length === 0 && this.#live.size === 0) {
        // Nothing can run now (only possible while an adapter change is pending): try again shortly.
        await new Promise<void>((res) => setTimeout(res, 5));
        continue;
      }
      for (const l of admit) this.#live.set(l.s, l);
      this.#dec.admit(admit.map((l) => l.s));
      let stepEnded!: () => void;
      this.#inflight = new Promise<void>((res) => {
        stepEnded = res;
      });
      try {
        const ended = await this.#dec.step();
        for (const s of ended) {
          const l = this.#live.get(s);
          if (l) this.#finish(l);
        }
      } catch (e) {
        // A failed forward (a lost device, …): every running request gets the error; the engine starts afresh.
        for (const l of [...this.#live.values()]) this.#finish(l, { e });
        this.#dec.dispose();
      } finally {
        stepEnded();
      }
      // Let I/O run (new requests, disconnects) between steps.
      await yieldToEventLoop();
    }
  }

  /** Ends every request (stopReason 'aborted'), waits for the loop, frees the adapters (not the model). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const l of [...this.#queue]) this.#cancel(l, 'aborted');
    for (const l of [...this.#live.values()]) this.#cancel(l, 'aborted');
    await this.#loop;
    await this.#lock;
    this.#dec.dispose();
    this.#set?.dispose();
    this.#set = null;
  }
}

/** An AdapterSet from adapters already read on the host (what loadPeftAdapters does after reading). */
function adapterSetOf(model: LlamaModel, host: readonly ReadAdapter[], dirs: string[]): AdapterSet {
  const stacks = uploadStacks(model.backend, model.config, stackAdapters(model.config, host));
  return new AdapterSet(
    model.config,
    model.backend,
    stacks,
    dirs,
    host.map((a) => a.config),
  );
}
