// A rank-unit adapter pool (S-LoRA-style unified paging, DESIGN §8): adapters of any ranks on
// the device side by side, each paged in and out at the cost of its own bytes, without
// touching the others' device tensors and without padding to the largest rank.
//
// Layout. Per adapted linear, one stack of the ordinary multi-LoRA layout (DESIGN §4) with
// R = u, the unit: A [N, u, H_in], B [N, H_out, u], rank and scale per entry. An adapter of
// rank r takes ceil(r/u) entries — any free ones, not contiguous; entry k holds its A rows
// [k·u, (k+1)·u) and its B columns [k·u, (k+1)·u), its own scale, and rank min(u, r − k·u)
// (storage of a rank that is not a multiple of u is padded to the next multiple only).
// Because y = Σ_r B[:, r]·A[r, :]·x splits exactly over rank rows, a token routed to that
// adapter with weight w gets one slot per entry, all with weight w, and the unchanged
// loraApply / shrink / expand kernels compute the same y. Only the summation order differs
// from a stack padded to the largest rank: per entry, y += Σ_{r in entry} instead of one sum
// over all r (rounding-level differences; routes list their entries in ascending order, the
// order the grouped kernels visit them, so both strategies add in one order).
//
// Entries are shared by all adapted linears: an adapter has the same entry indices in every
// stack (one routing serves every layer), as many as its largest per-linear rank needs; on a
// linear where it has a smaller rank or none (rank_pattern, fewer target modules), the extra
// entries hold zeros with scale 0.
//
// Page-in: one staging upload and one row copy (copyRows) per tensor of the adapter's entries.
// Page-out: the entries go back to the free list (nothing is copied). Capacity: fixed by the
// caller (a device budget) or grown by doubling, with one device copy of the used rows
// (amortised O(1) per entry).

import type { Backend } from '../backend/backend.js';
import { ArgumentError, describe } from '../errors.js';
import { LINEAR_MODULES, linearShape, type LinearModule, type ModelConfig } from '../model/config.js';
import { loraStack, loraStackWrite, type LoraStack } from '../ops/lora.js';
import { copyRows, rowMap } from '../ops/copy_rows.js';
import { makeTensor, type Tensor } from '../tensor.js';
import type { LayerStacks } from './stacks.js';

/** Default rank unit: ranks 8, 16, 32, 64 are multiples (no padding), rank 64 takes 8 entries. */
export const DEFAULT_POOL_UNIT = 8;

/** What a pool needs of an adapter: its factors per `${layer}.${module}` (a ReadAdapter has this). */
export interface PoolAdapter {
  modules: ReadonlyMap<string, { A: Float32Array; B: Float32Array; rank: number; scale: number }>;
}

export interface AdapterPoolOptions {
  /** Rank unit u (default 8). */
  unit?: number;
  /** Device bytes the pool may allocate (a budget): at most floor(maxBytes / bytesPerEntry) entries; default: no limit (grown by doubling). */
  maxBytes?: number;
  /** Entries of the first allocation when there is no maxEntries (default 64). */
  initialEntries?: number;
  /** With maxBytes: allocate every entry it allows on the first page-in (no growth copies later; default true). */
  preallocate?: boolean;
}

interface Slot {
  l: number;
  m: LinearModule;
  Hin: number;
  Hout: number;
}

/** Entries an adapter takes in a pool of unit u: its largest rank over its linears, in units. */
export function poolUnitsOf(a: PoolAdapter, unit: number): number {
  let n = 0;
  for (const x of a.modules.values()) n = Math.max(n, Math.ceil(x.rank / unit));
  return n;
}

export class AdapterPool {
  readonly unit: number;
  /** stacks[layer][module]: one pool stack per adapted linear (the router's stacks; replaced on growth). */
  readonly stacks: LayerStacks[];
  /** Device bytes copied by page-ins (A and B of the adapters' entries) and by growth. */
  readonly copied = { pageInBytes: 0, growBytes: 0, pageIns: 0, grows: 0 };
  readonly #backend: Backend;
  readonly #cfg: ModelConfig;
  readonly #maxBytes: number;
  readonly #initial: number;
  readonly #preallocate: boolean;
  /** The pooled linears, in (layer, module) order. */
  #slots: Slot[] = [];
  #keys = new Set<string>();
  /** Host copy of each stack's scales (rank's host copy is the stack's `ranks`). */
  #scales = new Map<LoraStack, Float32Array>();
  #cap = 0;
  /** Free entries; the next page-in takes from the end (lowest first on a fresh pool). */
  #free: number[] = [];
  #entries = new Map<string, Int32Array>();
  #disposed = false;
  /** Staging tensors by shape (one per distinct adapter size and linear shape: a few). */
  #stage = new Map<string, { host: Float32Array; dev: Tensor }>();

  constructor(backend: Backend, cfg: ModelConfig, opts: AdapterPoolOptions = {}) {
    const op = 'AdapterPool';
    this.unit = intOpt(op, 'unit', opts.unit, DEFAULT_POOL_UNIT, 1 << 12);
    const mb = opts.maxBytes ?? Infinity;
    if (typeof mb !== 'number' || !(mb > 0))
      throw new ArgumentError(`${op}: maxBytes: expected a positive number of bytes, got ${describe(mb)}`);
    this.#maxBytes = mb;
    this.#initial = intOpt(op, 'initialEntries', opts.initialEntries, 64, 2 ** 31 - 1);
    this.#preallocate = opts.preallocate ?? true;
    this.#backend = backend;
    this.#cfg = cfg;
    this.stacks = Array.from({ length: cfg.numLayers }, () => ({}));
  }

  /** Entries allocated on the device (per stack). */
  get capacity(): number {
    return this.#cap;
  }

  /** Entries held by adapters. */
  get usedEntries(): number {
    return this.#cap - this.#free.length;
  }

  /** Device bytes of one entry across every pooled linear (f32 A and B). */
  get bytesPerEntry(): number {
    let n = 0;
    for (const s of this.#slots) n += 4 * this.unit * (s.Hin + s.Hout);
    return n;
  }

  /** Most entries maxBytes allows (Infinity without maxBytes). */
  get maxEntries(): number {
    const b = this.bytesPerEntry;
    return this.#maxBytes === Infinity || b === 0 ? Infinity : Math.max(0, Math.floor(this.#maxBytes / b));
  }

  /** Bytes of the entries adapters hold (what a budget counts). */
  get usedBytes(): number {
    return this.usedEntries * this.bytesPerEntry;
  }

  /** Bytes of every allocated entry. */
  get allocatedBytes(): number {
    return this.#cap * this.bytesPerEntry;
  }

  /** Entries `a` takes here. */
  unitsOf(a: PoolAdapter): number {
    return poolUnitsOf(a, this.unit);
  }

  /** The entries adapter `id` holds, ascending (its routing slots), or undefined when it is not paged in. */
  entriesOf(id: string): Int32Array | undefined {
    return this.#entries.get(id);
  }

  has(id: string): boolean {
    return this.#entries.has(id);
  }

  /**
   * Pools the linears `a` adapts (a linear not pooled yet gets its stack now, at the current
   * capacity, zero for every entry; the other stacks are not touched). Called when an adapter
   * is registered, so that bytesPerEntry covers it before it is paged in.
   */
  addLinearsOf(a: PoolAdapter): void {
    this.#live('AdapterPool.addLinearsOf');
    const added: Slot[] = [];
    for (const key of a.modules.keys()) {
      if (this.#keys.has(key)) continue;
      const dot = key.indexOf('.');
      const l = Number(key.slice(0, dot));
      const m = key.slice(dot + 1) as LinearModule;
      if (!Number.isInteger(l) || l < 0 || l >= this.#cfg.numLayers || !LINEAR_MODULES.includes(m))
        throw new ArgumentError(`AdapterPool: adapter module '${key}': expected '<layer>.<module>' of this model`);
      const [Hout, Hin] = linearShape(this.#cfg, m);
      this.#keys.add(key);
      added.push({ l, m, Hin, Hout });
    }
    if (added.length === 0) return;
    const order = (s: Slot) => s.l * LINEAR_MODULES.length + LINEAR_MODULES.indexOf(s.m);
    this.#slots = [...this.#slots, ...added].sort((x, y) => order(x) - order(y));
    if (this.#cap > 0) for (const s of added) this.#setStack(s, this.#emptyStack(s, this.#cap));
  }

  /**
   * Pages adapter `id` in: takes unitsOf(a) free entries (growing the pool when needed and
   * allowed) and uploads its blocks into them. Returns its entries (ascending). Throws when
   * the pool is at maxEntries.
   */
  add(id: string, a: PoolAdapter): Int32Array {
    const op = 'AdapterPool.add';
    this.#live(op);
    if (this.#entries.has(id)) throw new ArgumentError(`${op}: '${id}' is already in the pool`);
    this.addLinearsOf(a);
    const n = this.unitsOf(a);
    if (n === 0) throw new ArgumentError(`${op}: '${id}' adapts no linear`);
    if (this.#free.length < n) this.#grow(this.usedEntries + n);
    const entries = Int32Array.from(this.#free.splice(this.#free.length - n, n).reverse()).sort();
    try {
      this.#upload(a, entries);
    } catch (e) {
      this.#free.push(...[...entries].reverse());
      throw e;
    }
    this.#entries.set(id, entries);
    this.copied.pageIns++;
    return entries;
  }

  /** Pages adapter `id` out: its entries become free; nothing on the device changes. */
  remove(id: string): void {
    const e = this.#entries.get(id);
    if (!e) return;
    this.#entries.delete(id);
    for (let i = e.length - 1; i >= 0; i--) this.#free.push(e[i]!);
  }

  /** Uploads a's blocks into `entries` of every pooled stack: one staging tensor and one row copy per tensor. */
  #upload(a: PoolAdapter, entries: Int32Array): void {
    const u = this.unit,
      n = entries.length;
    const rows = rowMap(
      this.#backend,
      entries,
      Int32Array.from({ length: n }, (_, i) => i),
    );
    try {
      for (const s of this.#slots) {
        const st = this.stacks[s.l]![s.m]!;
        const x = a.modules.get(`${s.l}.${s.m}`);
        const sa = this.#staging(n, u, s.Hin);
        const sb = this.#staging(n, s.Hout, u);
        const A = sa.host,
          B = sb.host;
        const rank = new Int32Array(n).fill(1);
        const scale = new Float32Array(n);
        if (x) {
          const r = x.rank;
          A.set(x.A.subarray(0, r * s.Hin)); // [r, Hin] rows are entry k's rows k·u…
          A.fill(0, r * s.Hin);
          B.fill(0);
          const xb = x.B;
          for (let k = 0; k * u < r; k++) {
            const w = Math.min(u, r - k * u);
            rank[k] = w;
            scale[k] = x.scale;
            for (let o = 0; o < s.Hout; o++) {
              const from = o * r + k * u,
                to = (k * s.Hout + o) * u;
              for (let j = 0; j < w; j++) B[to + j] = xb[from + j]!;
            }
          }
        } else {
          A.fill(0);
          B.fill(0);
        }
        sa.dev.write(A);
        sb.dev.write(B);
        loraStackWrite(st, rows, { A: sa.dev, B: sb.dev, rank, scale });
        const sc = this.#scales.get(st)!;
        for (let i = 0; i < n; i++) sc[entries[i]!] = scale[i]!;
        this.copied.pageInBytes += 4 * (A.length + B.length);
      }
    } finally {
      rows.dispose();
    }
  }

  /** A staging tensor [n, d1, d2] and its host buffer, kept for the next page-in of that shape. */
  #staging(n: number, d1: number, d2: number): { host: Float32Array; dev: Tensor } {
    const key = `${n}:${d1}:${d2}`;
    let st = this.#stage.get(key);
    if (!st) {
      const host = new Float32Array(n * d1 * d2);
      st = { host, dev: this.#backend.tensor(host, [n, d1, d2], 'f32') };
      this.#stage.set(key, st);
    }
    return st;
  }

  /** Grows every stack to hold at least `need` entries (doubling, or maxEntries at once), copying the old rows once. */
  #grow(need: number): void {
    const max = this.maxEntries;
    if (need > max)
      throw new ArgumentError(
        `AdapterPool: needs ${need} entries of ${this.bytesPerEntry} bytes, more than maxBytes (${this.#maxBytes}) holds (${max})`,
      );
    let cap: number;
    if (max !== Infinity && this.#preallocate) cap = Math.max(max, this.#cap);
    else cap = Math.min(max, Math.max(need, this.#cap * 2, this.#initial));
    const old = this.#cap;
    const rows = old > 0 ? rowMap(this.#backend, iota(old), iota(old)) : null;
    try {
      for (const s of this.#slots) {
        const prev = this.stacks[s.l]![s.m];
        // free entries may hold anything (a page-in writes every row of its entries, and routing
        // names only entries adapters hold), so the new rows are not zeroed: the copy is the cost
        const next = this.#emptyStack(s, cap, prev, false);
        if (prev && rows) {
          copyRows(next.A, prev.A, rows);
          copyRows(next.B, prev.B, rows);
          this.copied.growBytes += prev.A.byteLength + prev.B.byteLength;
        }
        this.#setStack(s, next);
        if (prev) {
          for (const t of [prev.A, prev.B, prev.rank, prev.scale]) t.dispose();
          this.#scales.delete(prev);
        }
      }
    } finally {
      rows?.dispose();
    }
    // the free entries left are taken first, then the new ones, lowest first
    const fresh: number[] = [];
    for (let e = cap - 1; e >= old; e--) fresh.push(e);
    this.#free = [...fresh, ...this.#free];
    this.#cap = cap;
    if (old > 0) this.copied.grows++;
  }

  /** A stack of `cap` entries with rank 1 and scale 0 (zeros when `zero`), or `prev`'s ranks and scales for its rows. */
  #emptyStack(s: Slot, cap: number, prev?: LoraStack, zero = true): LoraStack {
    const u = this.unit;
    const A = makeTensor(this.#backend, null, [cap, u, s.Hin], 'f32', zero);
    let B: Tensor | null = null;
    try {
      B = makeTensor(this.#backend, null, [cap, s.Hout, u], 'f32', zero);
      const rank = new Int32Array(cap).fill(1);
      const scale = new Float32Array(cap);
      if (prev) {
        rank.set(prev.ranks.subarray(0, Math.min(cap, prev.ranks.length)));
        scale.set(this.#scales.get(prev)!.subarray(0, Math.min(cap, prev.ranks.length)));
      }
      const st = loraStack(A, B, { rank, scale });
      this.#scales.set(st, scale);
      return st;
    } catch (e) {
      A.dispose();
      B?.dispose();
      throw e;
    }
  }

  #setStack(s: Slot, st: LoraStack): void {
    if (!this.#scales.has(st)) throw new Error('unreachable: a pool stack without its host scales');
    this.stacks[s.l]![s.m] = st;
  }

  #live(op: string): void {
    if (this.#disposed) throw new ArgumentError(`${op}: used after dispose()`);
  }

  /** Frees every stack. Safe to call twice. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const layer of this.stacks) {
      for (const m of LINEAR_MODULES) {
        const s = layer[m];
        if (s) for (const t of [s.A, s.B, s.rank, s.scale]) t.dispose();
        delete layer[m];
      }
    }
    this.#entries.clear();
    this.#free = [];
    for (const st of this.#stage.values()) st.dev.dispose();
    this.#stage.clear();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Bytes of one entry of unit u over the linears `keys` ('<layer>.<module>'): what a pool of them would take per entry. */
export function poolEntryBytes(cfg: ModelConfig, unit: number, keys: Iterable<string>): number {
  let n = 0;
  for (const key of keys) {
    const [Hout, Hin] = linearShape(cfg, key.slice(key.indexOf('.') + 1) as LinearModule);
    n += 4 * unit * (Hin + Hout);
  }
  return n;
}

function iota(n: number): Int32Array {
  return Int32Array.from({ length: n }, (_, i) => i);
}

function intOpt(op: string, name: string, v: unknown, dflt: number, max: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1 || v > max)
    throw new ArgumentError(`${op}: ${name}: expected an integer in [1, ${max}], got ${describe(v)}`);
  return v;
}
