// A serving engine: continuous batching over one model with named adapters that come and go.
//
// Requests join and leave at every decode step (BatchDecoder): a new request's prompt runs in
// the same forward as the running sequences' next tokens, a finished or cancelled one leaves
// the KV cache at once. Each request has its own prompt, sampling, stop conditions, step
// controls and adapter — a PEFT LoRA adapter, a MoTE bundle (step routing: a step-start token
// switches its experts, as generate does) or none — and streams its tokens.
//
// Adapters. Registered adapters are read and kept on the host; those on the device live in one
// rank-unit AdapterPool (src/adapters/pool.ts, DESIGN §8): each expert (a bundle is its
// experts) takes ceil(rank / u) entries of unit u, so ranks mix without padding to the largest
// and one forward serves any mix of them. A token gets one slot per entry of its experts (a
// bundle's step expert with α, its shared expert with 1 − α; a plain adapter with 1), so K
// per forward is the most units a token of it needs. Paging an adapter in uploads its own
// entries, paging one out frees them: the others' device tensors are never rebuilt. Routing is
// computed at every step from the adapter's name, so running requests carry on across a change.
// A request's adapter cannot be removed, nor evicted, while it runs.
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
import { readAdapter, type ReadAdapter } from '../adapters/peft_io.js';
import { AdapterPool, DEFAULT_POOL_UNIT, poolEntryBytes, poolUnitsOf } from '../adapters/pool.js';
import { openSource } from '../io/source.js';
import { MAX_LORA_SLOTS } from '../ops/lora.js';
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
  /**
   * Most requests waiting to start (default 1024): a request past it is refused (EngineError,
   * status 503) instead of queueing without bound.
   */
  maxWaiting?: number;
  /** Most prompt tokens started in one step (default 4096; a longer prompt runs alone), so new prompts do not stall running decodes for long. */
  maxPrefillTokens?: number;
  /**
   * Device bytes the stacked adapters may take (default: no limit). Registered adapters are
   * kept on the host; those a request needs are paged in, least recently used ones out —
   * never one a running request uses. A request waits while its adapter cannot fit.
   */
  adapterBudgetBytes?: number;
  /**
   * Rank unit of the adapter pool (default 8): an adapter of rank r takes ceil(r / u) entries
   * and a token ceil(r / u) slots; at most 64 slots per token (MAX_LORA_SLOTS), so ranks above
   * 64·u (a bundle: step + shared) need a larger unit.
   */
  poolUnit?: number;
  /**
   * Pool entries allocated at the first page-in when there is no budget (default 64); the pool
   * doubles when full (one copy of every entry: a pause of the running streams), so a server that
   * knows its adapters can size it once. With adapterBudgetBytes the pool takes the whole budget
   * at once and never grows.
   */
  poolEntries?: number;
}

/** The adapter pool as the engine uses it (for tests and the benchmark). */
export interface PoolInfo {
  unit: number;
  /** Entries allocated / held by adapters. */
  capacity: number;
  usedEntries: number;
  bytesPerEntry: number;
  allocatedBytes: number;
  /** Bytes page-ins copied (A and B of the adapters' entries) and growth copies. */
  pageInBytes: number;
  growBytes: number;
  grows: number;
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
  /** Pool entries each expert takes. */
  units: number[];
  /** Routes by step while its entries stay put (cleared at page-in). */
  routes: Map<number, RouteSlots>;
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
  readonly #maxWaiting: number;
  readonly #maxPrefill: number;
  #adapters = new Map<string, Registered>();
  /** Adapters meant to be on the device, least recently used first; the pool holds these after #syncSet. */
  #resident: string[] = [];
  /** Pool entries of the resident adapters (what the budget counts). */
  #residentUnits = 0;
  #dirty = false;
  readonly #budget: number;
  readonly #unit: number;
  readonly #pool: AdapterPool;
  /** Adapters in the pool now → their expert count. */
  #inPool = new Map<string, number>();
  /** The linears ('<layer>.<module>') any registered adapter adapts: the pool's entries span these. */
  #linears = new Set<string>();
  /** Registered experts whose linears the pool has not taken on yet (at the next sync, before any page-in). */
  #newLinears: ReadAdapter[] = [];
  /** Page-ins and evictions so far; rebuilds: pool growths (for tests and the benchmark). */
  readonly paging = { pageIns: 0, evictions: 0, rebuilds: 0 };
  /** Steps run; ms in them (BatchDecoder.step: routing, forward, sampling) and before them (admission, paging). For the benchmark. */
  readonly stats = { steps: 0, stepMs: 0, hostMs: 0 };
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
    this.#maxWaiting = positiveInt(op, 'maxWaiting', opts.maxWaiting, 1024);
    this.#maxPrefill = positiveInt(op, 'maxPrefillTokens', opts.maxPrefillTokens, 4096);
    const budget = opts.adapterBudgetBytes ?? Infinity;
    if (typeof budget !== 'number' || !(budget > 0))
      throw new ArgumentError(`${op}: adapterBudgetBytes: expected a positive number of bytes, got ${describe(budget)}`);
    this.#budget = budget;
    this.#unit = positiveInt(op, 'poolUnit', opts.poolUnit, DEFAULT_POOL_UNIT);
    this.#pool = new AdapterPool(model.backend, model.config, {
      unit: this.#unit,
      initialEntries: positiveInt(op, 'poolEntries', opts.poolEntries, 64),
      ...(budget === Infinity ? {} : { maxBytes: budget }),
    });
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

  /** Device bytes of the pool entries the resident adapters hold (A and B, every adapted linear; not the free entries). */
  adapterBytes(): number {
    return this.#pool.usedBytes;
  }

  /** The adapter pool's figures. */
  poolInfo(): PoolInfo {
    const p = this.#pool;
    return {
      unit: p.unit,
      capacity: p.capacity,
      usedEntries: p.usedEntries,
      bytesPerEntry: p.bytesPerEntry,
      allocatedBytes: p.allocatedBytes,
      pageInBytes: p.copied.pageInBytes,
      growBytes: p.copied.growBytes,
      grows: p.copied.grows,
    };
  }

  /** The pool entries of adapter `name`'s experts (in slot order), or null when it is not on the device. For tests. */
  adapterEntries(name: string): Int32Array[] | null {
    const n = this.#inPool.get(name);
    if (n === undefined) return null;
    return Array.from({ length: n }, (_, k) => this.#pool.entriesOf(`${name}#${k}`)!.slice());
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
      const slots = this.#slotsPerToken(reg);
      if (slots > MAX_LORA_SLOTS)
        throw new EngineError(
          `${op}: ${dir}: a token of it needs ${slots} slots at poolUnit ${this.#unit} (one per ${this.#unit} ranks), ` +
            `more than ${MAX_LORA_SLOTS} (MAX_LORA_SLOTS); start the engine with poolUnit ≥ ${this.#unitFor(reg)}`,
          400,
        );
      const alone = this.#unitsOf(reg) * this.#entryBytes([reg]);
      if (alone > this.#budget)
        throw new EngineError(`${op}: ${dir}: needs ${alone} device bytes alone, more than adapterBudgetBytes (${this.#budget})`, 400);
      added.set(name, reg);
    }
    await this.#lock;
    // Another addAdapter of the same name may have finished while this one read its files.
    for (const n of added.keys())
      if (this.#adapters.has(n)) throw new EngineError(`${op}: an adapter named '${n}' is already loaded (unload it first)`, 409);
    this.#open(op);
    for (const [n, r] of added) {
      this.#adapters.set(n, r);
      for (const h of r.host) for (const k of h.modules.keys()) this.#linears.add(k);
      this.#newLinears.push(...r.host);
    }
    // On the device at once while they fit without evicting anything.
    for (const [n, r] of added) {
      if ((this.#residentUnits + this.#unitsOf(r)) * this.#entryBytes() > this.#budget) break;
      this.#resident.push(n);
      this.#residentUnits += this.#unitsOf(r);
      this.#dirty = true;
    }
    try {
      await this.#syncSet();
    } catch (e) {
      // Not paged in (device memory, …): not registered either, else /v1/models lists an adapter no request can use.
      for (const [n, r] of added) {
        this.#adapters.delete(n);
        this.#dropResident(n, r);
      }
      this.#dirty = true;
      await this.#syncSet().catch(() => undefined);
      throw e instanceof MoteError && !(e instanceof EngineError) ? new EngineError(`${op}: ${e.message}`, 507) : e;
    }
    const all = this.adapters();
    return list.map(({ name }) => all.find((a) => a.name === name)!);
  }

  async #describe(op: string, name: string, dir: string): Promise<Registered> {
    let reg: Omit<Registered, 'host' | 'units' | 'routes'>;
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
      const host = await Promise.all(reg.dirs.map((d) => readAdapter(this.model.config, openSource(d))));
      return { ...reg, host, units: host.map((h) => poolUnitsOf(h, this.#unit)), routes: new Map() };
    } catch (e) {
      throw e instanceof MoteError ? new EngineError(e.message, 400) : e;
    }
  }

  /** Takes `name` off the resident list, its units no longer counted; false when it was not on it. */
  #dropResident(name: string, reg: Registered): boolean {
    if (!this.#resident.includes(name)) return false;
    this.#resident = this.#resident.filter((n) => n !== name);
    this.#residentUnits -= this.#unitsOf(reg);
    return true;
  }

  /** Pool entries `reg` takes (all its experts). */
  #unitsOf(reg: Registered): number {
    return reg.units.reduce((a, b) => a + b, 0);
  }

  /** Bytes of one pool entry over the linears of the registered adapters (and `extra`'s). */
  #entryBytes(extra: readonly Registered[] = []): number {
    const keys = new Set(this.#linears);
    for (const r of extra) for (const h of r.host) for (const k of h.modules.keys()) keys.add(k);
    return poolEntryBytes(this.model.config, this.#unit, keys);
  }

  /** Most slots a token on `reg` needs: a plain adapter's units; a bundle's largest step units + its shared units. */
  #slotsPerToken(reg: Registered, unit = this.#unit): number {
    const units = reg.host.map((h) => poolUnitsOf(h, unit));
    if (reg.kind === 'lora') return units[0]!;
    return Math.max(0, ...units.slice(0, -1)) + units.at(-1)!;
  }

  /** The smallest unit at which a token on `reg` fits in MAX_LORA_SLOTS slots. */
  #unitFor(reg: Registered): number {
    let u = this.#unit;
    while (this.#slotsPerToken(reg, u) > MAX_LORA_SLOTS) u *= 2;
    return u;
  }

  /** Unregisters `name`; refused (409) while a request uses it. */
  async removeAdapter(name: string): Promise<void> {
    const op = 'Engine.removeAdapter';
    this.#open(op);
    const check = () => {
      if (!this.#adapters.has(name)) throw new EngineError(`${op}: no adapter named ${describe(name)}`, 404);
      const users = [...this.#live.values(), ...this.#queue].filter((l) => l.adapter === name).length;
      if (users) throw new EngineError(`${op}: '${name}' is used by ${users} running request(s)`, 409);
    };
    check();
    await this.#lock;
    // Requests submitted (or another removal) while waiting for the lock.
    check();
    const reg = this.#adapters.get(name)!;
    this.#adapters.delete(name);
    if (this.#dropResident(name, reg)) this.#dirty = true;
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
    const entry = this.#entryBytes();
    let units = this.#residentUnits + this.#unitsOf(this.#adapters.get(name)!);
    for (let k = 0; units * entry > this.#budget;) {
      while (k < next.length - 1 && keep.has(next[k]!)) k++;
      if (k >= next.length - 1) return false; // everything left is in use
      const [out] = next.splice(k, 1);
      evicted.push(out!);
      units -= this.#unitsOf(this.#adapters.get(out!)!);
    }
    this.#resident = next;
    this.#residentUnits = units;
    this.paging.pageIns++;
    this.paging.evictions += evicted.length;
    this.#dirty = true;
    return true;
  }

  /**
   * Brings the pool in line with the resident list (between steps only): pages out adapters
   * no longer resident (their entries become free), then pages in the new ones (their own
   * entries uploaded). Nothing else on the device is touched, except a pool growth (one copy).
   */
  async #syncSet(): Promise<void> {
    if (!this.#dirty) return;
    const run = this.#lock.then(async () => {
      if (!this.#dirty) return;
      await this.#inflight;
      this.#dirty = false;
      const pool = this.#pool;
      // every registered adapter's linears first: the pool's bytes per entry (its budget's
      // entries) then match what the budget checks count
      for (const h of this.#newLinears.splice(0)) pool.addLinearsOf(h);
      const want = new Set(this.#resident);
      for (const [name, n] of [...this.#inPool]) {
        if (want.has(name)) continue;
        for (let k = 0; k < n; k++) pool.remove(`${name}#${k}`);
        this.#inPool.delete(name);
        const reg = this.#adapters.get(name);
        reg?.routes.clear();
      }
      for (const name of this.#resident) {
        if (this.#inPool.has(name)) continue;
        const reg = this.#adapters.get(name)!;
        for (const h of reg.host) pool.addLinearsOf(h);
        const grows = pool.copied.grows;
        try {
          reg.host.forEach((h, k) => pool.add(`${name}#${k}`, h));
        } catch (e) {
          reg.host.forEach((_, k) => pool.remove(`${name}#${k}`));
          this.#dropResident(name, reg);
          this.#dirty = true; // the resident adapters after this one are not in the pool yet
          this.#setRouter();
          throw e;
        }
        this.paging.rebuilds += pool.copied.grows - grows;
        this.#inPool.set(name, reg.host.length);
        reg.routes.clear();
      }
      this.#setRouter();
    });
    this.#lock = run.catch(() => undefined);
    return run;
  }

  /** The router over the pool (its stacks are replaced when it grows, so set again after every change). */
  #setRouter(): void {
    const pool = this.#pool;
    this.#dec.setRouter(
      pool.capacity > 0
        ? { K: MAX_LORA_SLOTS, variableK: true, L: pool.capacity, stacks: pool.stacks, slotsFor: () => ({ slots: [], weights: [] }) }
        : undefined,
    );
  }

  /**
   * The slots of a token of a request on `adapter` at `step`: one per pool entry of each expert
   * it uses, with that expert's weight, in ascending entry order (the order the grouped kernels
   * add them in, so both strategies sum alike). Cached until the adapter's entries change.
   */
  #slots(adapter: string | null, step: number): RouteSlots {
    if (adapter === null) return { slots: [], weights: [] };
    const reg = this.#adapters.get(adapter)!;
    let rs = reg.routes.get(step);
    if (rs) return rs;
    const experts: RouteSlots = reg.kind === 'lora' ? { slots: [0], weights: [1] } : moteStepSlots(step, reg.alpha!, 0, reg.steps!.length);
    const pairs: [number, number][] = [];
    experts.slots.forEach((k, i) => {
      const w = experts.weights[i]!;
      if (k < 0 || w === 0) return;
      const entries = this.#pool.entriesOf(`${adapter}#${k}`);
      if (!entries) throw new Error(`Engine: adapter '${adapter}' is routed while not on the device`);
      for (const e of entries) pairs.push([e, w]);
    });
    pairs.sort((a, b) => a[0] - b[0]);
    rs = { slots: pairs.map((p) => p[0]), weights: pairs.map((p) => p[1]) };
    reg.routes.set(step, rs);
    return rs;
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
    if (this.#queue.length >= this.#maxWaiting)
      throw new EngineError(`${op}: ${this.#queue.length} requests are waiting already (maxWaiting); try again later`, 503);
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
    this.#loop = this.#run()
      .catch((e: unknown) => {
        // A failure outside a step (paging in an adapter, …): the requests get it, the process goes on.
        for (const l of [...this.#live.values(), ...this.#queue]) this.#finish(l, { e });
        this.#queue = [];
        this.#dec.dispose();
      })
      .finally(() => {
        this.#loop = null;
        if (this.#queue.length && !this.#closed) this.#kick();
      });
  }

  async #run(): Promise<void> {
    while (this.#queue.length || this.#live.size) {
      await this.#lock; // an adapter change in progress finishes first
      const t0 = performance.now();
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
        if (l.adapter !== null && !this.#adapters.has(l.adapter)) {
          this.#finish(l, { e: new EngineError(`Engine.submit: adapter: '${l.adapter}' was removed before the request started`, 404) });
          continue;
        }
        if (l.adapter !== null && !this.#pageIn(l.adapter, this.#inUse(admit))) {
          waiting.push(l);
          continue;
        }
        prefill += n;
        admit.push(l);
      }
      this.#queue.unshift(...waiting);
      try {
        await this.#syncSet();
      } catch (e) {
        // Paging in failed (device memory, …): the requests admitted for it get the error.
        for (const l of admit) this.#finish(l, { e });
        admit.length = 0;
      }
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
      const t1 = performance.now();
      try {
        const ended = await this.#dec.step();
        this.stats.steps++;
        this.stats.stepMs += performance.now() - t1;
        this.stats.hostMs += t1 - t0;
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
    this.#pool.dispose();
    this.#inPool.clear();
  }
}
