// A key/value cache for decoding LLaMA-family models (DESIGN §1, Inference): per layer, the
// rotated keys and the values of every token already run, with each token's sequence id,
// position and segment (step) id, so that new tokens attend to the cached ones plus
// themselves, exactly as a full recompute would.
//
// Layout. Per layer one f32 tensor of keys and one of values, [capacity, numKvHeads, headDim],
// slots [0, length) in use in append order, every slot past them holding zeros. Attention
// reads all `capacity` slots; unused ones carry position 2³¹−1 so that no query (positions
// are below it) sees them. When an append does not fit, capacity grows (at least doubling),
// so re-layouts cost amortised O(1) per token.
//
// Device-side only, no host round trip: every re-layout is a row copy (src/ops/copy_rows.ts).
//   * append copies the N new key/value rows of a layer into slots [start, start + N): one
//     copyRows per tensor, N·row floats moved. The row pairs are uploaded once per forward (a
//     RowMap of 2·N ints, shared by every layer).
//   * growth copies the used slots into fresh zero tensors of the larger capacity; drop
//     (compaction) copies the kept slots, in order, into fresh zero tensors of the same
//     capacity; both use one RowMap for all layers.
//   * rollback (abort) copies the always-empty last slot over the slots the failed forward
//     wrote, in place, on the layers it touched: the cache is as it was, zeros included.
//
// Views: `tensorView` is Tensor.reshape with the cache's argument checks.

import { Tensor } from '../tensor.js';
import type { Backend } from '../backend/backend.js';
import { ArgumentError, DisposedTensorError, ShapeError, describe } from '../errors.js';
import { copyRows, rowMap, type RowMap } from '../ops/copy_rows.js';
import { attentionLayout, type AttentionLayout } from '../ops/attention.js';

/** Position given to unused cache slots: no query position reaches it. */
export const EMPTY_SLOT_POSITION = 2 ** 31 - 1;
/** Largest token position a batch may use (below EMPTY_SLOT_POSITION). */
export const MAX_POSITION = 2 ** 30;

/**
 * A tensor of another shape with the same element count over `base`'s storage (row-major, no
 * copy). Disposing the view frees nothing; disposing `base` invalidates the view.
 */
export function tensorView(base: Tensor, shape: readonly number[]): Tensor {
  if (!(base instanceof Tensor)) throw new ArgumentError(`tensorView: base: expected a Tensor, got ${describe(base)}`);
  const n = shape.reduce((a, b) => a * b, 1);
  if (!shape.every((d) => Number.isSafeInteger(d) && d > 0) || n !== base.size) {
    throw new ShapeError(`tensorView: shape [${shape.join(', ')}] does not hold the ${base.size} elements of [${base.shape.join(', ')}]`);
  }
  if (base.disposed) throw new DisposedTensorError(`tensorView: base: expected a live tensor, got ${base} after dispose()`);
  return base.reshape(shape);
}

// ---------------------------------------------------------------------------------------
// The cache

export interface KvCacheDims {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
}

export interface KvCacheOptions {
  /** Initial capacity in tokens (slots are allocated on the first append; default 64). */
  capacity?: number;
}

/** Segment (step) mask of the new tokens of one forward, as the model hands it to the cache. */
export interface KvSegments {
  numSegments: number;
  /** [N] segment id of each new token. */
  segment: Int32Array;
  /** [numSeqs, S, S] as in AttentionLayoutInit.segments.blocked. */
  blocked: ArrayLike<number | boolean>;
}

/**
 * One forward's append, between KvCache.begin and commit/abort: the attention layout of the
 * new tokens against every slot and the row pairs that copy them into their slots.
 * @internal used by LlamaModel.forward.
 */
export interface KvAppend {
  readonly cache: KvCache;
  /** New tokens. */
  readonly N: number;
  /** First slot of the new tokens. */
  readonly start: number;
  /** Queries: the new tokens; keys: every slot (capacity). */
  readonly layout: AttentionLayout;
  /** Row n of a layer's new keys/values goes to slot start + n. */
  readonly rows: RowMap;
  readonly seq: Int32Array;
  readonly pos: Int32Array;
  readonly segment: Int32Array | null;
  /** Layers whose rows were written. */
  readonly touched: Set<number>;
}

function positiveInt(op: string, name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0)
    throw new ArgumentError(`${op}: ${name}: expected a positive integer, got ${describe(v)}`);
  return v;
}

export class KvCache {
  readonly backend: Backend;
  readonly numLayers: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly #initial: number;
  #cap = 0;
  #used = 0;
  #seq = new Int32Array(0);
  #pos = new Int32Array(0);
  #seg = new Int32Array(0);
  /** Per layer: keys and values as [capacity, row] (owners) and [capacity, nKv, D] (views). */
  #k2: Tensor[] = [];
  #v2: Tensor[] = [];
  #k3: Tensor[] = [];
  #v3: Tensor[] = [];
  #pending: KvAppend | null = null;
  #disposed = false;

  constructor(backend: Backend, dims: KvCacheDims, opts: KvCacheOptions = {}) {
    if (!backend || typeof (backend as Backend).empty !== 'function')
      throw new ArgumentError(`KvCache: backend: expected a Backend, got ${describe(backend)}`);
    this.backend = backend;
    this.numLayers = positiveInt('KvCache', 'numLayers', dims?.numLayers);
    this.numKvHeads = positiveInt('KvCache', 'numKvHeads', dims?.numKvHeads);
    this.headDim = positiveInt('KvCache', 'headDim', dims?.headDim);
    this.#initial = opts.capacity === undefined ? 64 : positiveInt('KvCache', 'capacity', opts.capacity);
  }

  /** Tokens held. */
  get length(): number {
    return this.#used;
  }

  /** Slots allocated per layer (0 before the first append); the last one always stays empty. */
  get capacity(): number {
    return this.#cap;
  }

  get disposed(): boolean {
    return this.#disposed || this.backend.destroyed;
  }

  /** Floats per token per layer for keys (and for values): numKvHeads·headDim. */
  get row(): number {
    return this.numKvHeads * this.headDim;
  }

  #live(op: string): void {
    if (this.disposed) throw new DisposedTensorError(`KvCache.${op}: the cache was used after dispose()`);
  }

  /** Sequence ids, positions and segment ids of the cached tokens, in slot order (copies). */
  entries(): { seq: Int32Array; pos: Int32Array; segment: Int32Array } {
    return { seq: this.#seq.slice(0, this.#used), pos: this.#pos.slice(0, this.#used), segment: this.#seg.slice(0, this.#used) };
  }

  /** Distinct sequence ids held, ascending. */
  sequences(): number[] {
    return [...new Set(this.#seq.subarray(0, this.#used))].sort((a, b) => a - b);
  }

  /** Number of cached tokens of `seq`. */
  tokenCount(seq: number): number {
    let n = 0;
    for (let i = 0; i < this.#used; i++) if (this.#seq[i] === seq) n++;
    return n;
  }

  /** 1 + the largest cached position of `seq` (0 when it has none): where its next token goes. */
  nextPosition(seq: number): number {
    let p = 0;
    for (let i = 0; i < this.#used; i++) if (this.#seq[i] === seq) p = Math.max(p, this.#pos[i]! + 1);
    return p;
  }

  #layer(op: string, layer: number): void {
    this.#live(op);
    if (!Number.isSafeInteger(layer) || layer < 0 || layer >= this.numLayers)
      throw new ArgumentError(`KvCache.${op}: layer: expected an integer in [0, ${this.numLayers - 1}], got ${describe(layer)}`);
    if (this.#cap === 0) throw new ArgumentError(`KvCache.${op}: the cache is empty (nothing appended yet)`);
  }

  /** Keys of `layer`: f32 [capacity, numKvHeads, headDim] (slots ≥ length are zeros). Valid until the next append, drop or clear. */
  keys(layer: number): Tensor {
    this.#layer('keys', layer);
    return this.#k3[layer]!;
  }

  /** Values of `layer`, like keys(). */
  values(layer: number): Tensor {
    this.#layer('values', layer);
    return this.#v3[layer]!;
  }

  /** The cached keys and values of `layer` on the host, [length, numKvHeads, headDim] each. */
  async read(layer: number): Promise<{ k: Float32Array; v: Float32Array }> {
    if (this.#used === 0) return { k: new Float32Array(0), v: new Float32Array(0) };
    this.#layer('read', layer);
    const n = this.#used * this.row;
    const [k, v] = await Promise.all([this.#k2[layer]!.readFloat(), this.#v2[layer]!.readFloat()]);
    return { k: k.slice(0, n), v: v.slice(0, n) };
  }

  /** Sets the layers' tensors (disposing the old ones). */
  #install(k2: Tensor[], v2: Tensor[], cap: number): void {
    this.#release();
    const shape = [cap, this.numKvHeads, this.headDim];
    this.#k2 = k2;
    this.#v2 = v2;
    this.#k3 = k2.map((t) => tensorView(t, shape));
    this.#v3 = v2.map((t) => tensorView(t, shape));
    this.#cap = cap;
  }

  #release(): void {
    for (const t of [...this.#k3, ...this.#v3, ...this.#k2, ...this.#v2]) t.dispose();
    this.#k2 = [];
    this.#v2 = [];
    this.#k3 = [];
    this.#v3 = [];
    this.#cap = 0;
  }

  /**
   * Rebuilds every layer with `cap` slots: slot i takes old slot src[i] (i < src.length),
   * every other slot is zero (fresh zero tensors, then one row copy per tensor).
   */
  #relayout(src: ArrayLike<number>, cap: number): void {
    const made: Tensor[] = [];
    let map: RowMap | null = null;
    try {
      for (let l = 0; l < 2 * this.numLayers; l++) made.push(this.backend.zeros([cap, this.row]));
      if (this.#cap > 0 && src.length > 0) {
        map = rowMap(
          this.backend,
          Int32Array.from({ length: src.length }, (_, i) => i),
          src,
        );
        const old = [...this.#k2, ...this.#v2];
        old.forEach((t, i) => copyRows(made[i]!, t, map!));
      }
    } catch (e) {
      for (const t of made) t.dispose();
      throw e;
    } finally {
      map?.dispose();
    }
    this.#install(made.slice(0, this.numLayers), made.slice(this.numLayers), cap);
  }

  #resizeMeta(cap: number): void {
    const grow = (a: Int32Array) => {
      const b = new Int32Array(cap);
      b.set(a.subarray(0, Math.min(a.length, cap)));
      return b;
    };
    this.#seq = grow(this.#seq);
    this.#pos = grow(this.#pos);
    this.#seg = grow(this.#seg);
  }

  /**
   * Starts appending N new tokens (seq, pos: [N]; segments when the forward has a segment
   * mask): grows the slots if needed and returns the layout of the new tokens against every
   * slot. Commit after every layer's append, or abort.
   * @internal used by LlamaModel.forward.
   */
  begin(seq: Int32Array, pos: Int32Array, segments?: KvSegments): KvAppend {
    this.#live('begin');
    if (this.#pending) throw new ArgumentError('KvCache.begin: another forward is appending to this cache (commit or abort it first)');
    const N = seq.length;
    if (N === 0 || pos.length !== N || (segments && segments.segment.length !== N))
      throw new ShapeError(`KvCache.begin: expected N > 0 tokens with as many positions (and segments), got ${N}, ${pos.length}`);
    const start = this.#used;
    const need = start + N + 1; // + the always-empty last slot
    let cap = this.#cap;
    if (cap < need) cap = Math.ceil(Math.max(need, 2 * this.#cap, this.#initial) / 16) * 16;

    // Key metadata over the (future) capacity.
    const kSeq = new Int32Array(cap),
      kPos = new Int32Array(cap).fill(EMPTY_SLOT_POSITION),
      kSeg = new Int32Array(cap);
    kSeq.set(this.#seq.subarray(0, start));
    kPos.set(this.#pos.subarray(0, start));
    kSeg.set(this.#seg.subarray(0, start));
    kSeq.set(seq, start);
    kPos.set(pos, start);
    if (segments) kSeg.set(segments.segment, start);
    let segInit;
    if (segments) {
      // Cached sequences the new tokens' mask does not cover are not blocked: pad with zeros.
      const S = segments.numSegments;
      let maxSeq = 0;
      for (let i = 0; i < start + N; i++) maxSeq = Math.max(maxSeq, kSeq[i]!);
      let blocked: ArrayLike<number | boolean> = segments.blocked;
      const have = Math.floor(blocked.length / (S * S));
      if (blocked.length % (S * S) === 0 && have > 0 && have <= maxSeq) {
        const padded = new Int32Array((maxSeq + 1) * S * S);
        for (let i = 0; i < blocked.length; i++) padded[i] = blocked[i] ? 1 : 0;
        blocked = padded;
      }
      segInit = { numSegments: S, qSegment: segments.segment, kSegment: kSeg, blocked };
    }
    const layout = attentionLayout(this.backend, { qSeq: seq, qPos: pos, kSeq, kPos, ...(segInit ? { segments: segInit } : {}) });
    let rows: RowMap | undefined;
    try {
      rows = rowMap(
        this.backend,
        Int32Array.from({ length: N }, (_, n) => start + n),
        Int32Array.from({ length: N }, (_, n) => n),
      );
      if (cap !== this.#cap) {
        const keep = Int32Array.from({ length: start }, (_, i) => i);
        this.#relayout(keep, cap);
        this.#resizeMeta(cap);
      }
    } catch (e) {
      layout.dispose();
      rows?.dispose();
      throw e;
    }
    const plan: KvAppend = {
      cache: this,
      N,
      start,
      layout,
      rows,
      seq: seq.slice(),
      pos: pos.slice(),
      segment: segments ? segments.segment.slice() : null,
      touched: new Set(),
    };
    this.#pending = plan;
    return plan;
  }

  #check(op: string, plan: KvAppend): void {
    this.#live(op);
    if (plan !== this.#pending || plan.cache !== this) throw new ArgumentError(`KvCache.${op}: not the pending append of this cache`);
  }

  /**
   * Writes the new tokens' keys and values of `layer` (f32 [N, numKvHeads·headDim], keys
   * already rotated) into their slots. @internal used by LlamaModel.forward.
   */
  append(plan: KvAppend, layer: number, k: Tensor, v: Tensor): void {
    this.#check('append', plan);
    if (!Number.isSafeInteger(layer) || layer < 0 || layer >= this.numLayers)
      throw new ArgumentError(`KvCache.append: layer: expected an integer in [0, ${this.numLayers - 1}], got ${describe(layer)}`);
    if (plan.touched.has(layer)) throw new ArgumentError(`KvCache.append: layer ${layer} was already appended in this forward`);
    for (const [name, t] of [
      ['k', k],
      ['v', v],
    ] as const) {
      if (t instanceof Tensor && (t.shape[0] !== plan.N || t.size !== plan.N * this.row)) {
        throw new ShapeError(
          `KvCache.append: ${name}: expected [${plan.N}, ${this.row}] (one row of numKvHeads·headDim per new token), got [${t.shape.join(', ')}]`,
        );
      }
    }
    plan.touched.add(layer);
    copyRows(this.#k2[layer]!, k, plan.rows);
    copyRows(this.#v2[layer]!, v, plan.rows);
  }

  /** Makes the pending append part of the cache. @internal */
  commit(plan: KvAppend): void {
    this.#check('commit', plan);
    if (plan.touched.size !== this.numLayers)
      throw new ArgumentError(`KvCache.commit: only ${plan.touched.size} of ${this.numLayers} layers were appended`);
    this.#seq.set(plan.seq, plan.start);
    this.#pos.set(plan.pos, plan.start);
    if (plan.segment) this.#seg.set(plan.segment, plan.start);
    else this.#seg.fill(0, plan.start, plan.start + plan.N);
    this.#used += plan.N;
    this.#finish(plan);
  }

  /** Forgets the pending append: slots it wrote are cleared again. @internal */
  abort(plan: KvAppend): void {
    if (plan !== this.#pending) return;
    let zero: RowMap | null = null;
    try {
      if (!this.disposed && plan.touched.size > 0) {
        // the last slot is never used: copy its zeros over the slots this forward wrote
        zero = rowMap(
          this.backend,
          Int32Array.from({ length: plan.N }, (_, n) => plan.start + n),
          new Int32Array(plan.N).fill(this.#cap - 1),
        );
        for (const l of plan.touched) {
          copyRows(this.#k2[l]!, this.#k2[l]!, zero);
          copyRows(this.#v2[l]!, this.#v2[l]!, zero);
        }
      }
    } finally {
      zero?.dispose();
      this.#finish(plan);
    }
  }

  #finish(plan: KvAppend): void {
    plan.layout.dispose();
    plan.rows.dispose();
    this.#pending = null;
  }

  /** Removes every cached token of the given sequences (the rest keep their order). */
  drop(seqs: Iterable<number>): void {
    this.#live('drop');
    if (this.#pending) throw new ArgumentError('KvCache.drop: a forward is appending to this cache');
    const gone = new Set(seqs);
    const keep: number[] = [];
    for (let i = 0; i < this.#used; i++) if (!gone.has(this.#seq[i]!)) keep.push(i);
    if (keep.length === this.#used) return;
    if (keep.length === 0) {
      this.clear();
      return;
    }
    this.#relayout(keep, this.#cap);
    const pick = (a: Int32Array) => {
      const b = new Int32Array(this.#cap);
      keep.forEach((s, i) => {
        b[i] = a[s]!;
      });
      return b;
    };
    this.#seq = pick(this.#seq);
    this.#pos = pick(this.#pos);
    this.#seg = pick(this.#seg);
    this.#used = keep.length;
  }

  /** Removes every token and frees the slots. */
  clear(): void {
    this.#live('clear');
    if (this.#pending) throw new ArgumentError('KvCache.clear: a forward is appending to this cache');
    this.#release();
    this.#used = 0;
    this.#seq = new Int32Array(0);
    this.#pos = new Int32Array(0);
    this.#seg = new Int32Array(0);
  }

  /** Frees the device memory. Safe to call twice. */
  dispose(): void {
    if (this.#disposed) return;
    if (this.#pending) {
      this.#pending.layout.dispose();
      this.#pending.rows.dispose();
      this.#pending = null;
    }
    this.#release();
    this.#used = 0;
    this.#disposed = true;
  }

  /** dispose(), for `using`: the KvCache is freed when its block ends. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
