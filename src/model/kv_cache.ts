// A key/value cache for decoding LLaMA-family models (DESIGN §1, Inference; §8 serving): per
// layer, the rotated keys and the values of every token already run, with each token's sequence
// id, position and segment (step) id, so that new tokens attend to the cached ones plus
// themselves, exactly as a full recompute would.
//
// Layout: paged, as vLLM's paged attention. Per layer one f32 tensor of keys and one of values,
// [capacity, numKvHeads, headDim], cut into blocks of `blockSize` slots. Each sequence owns a
// list of blocks (its block table); its t-th token sits in slot blocks[t / B]·B + t % B. The
// attention layout of a forward gives each sequence's blocks as its key runs (adjacent blocks
// merged), so a query reads only its own sequence's keys: decode attention costs O(own length),
// not O(batch × cache). A slot that holds no token has sequence −1 (seen by no query) and
// arbitrary contents.
//   * append copies the N new key/value rows of a layer into their slots (one copyRows per
//     tensor; the row pairs are uploaded once per forward and shared by every layer).
//   * a sequence takes a free block when its last one is full; when none is free, capacity
//     grows (at least doubling): the slots are copied into larger tensors, block ids unchanged,
//     so re-layouts cost amortised O(1) per token.
//   * drop frees the sequences' blocks: nothing is copied, O(their blocks).
//   * abort (a forward that failed) frees the blocks that forward took; the slots it wrote are
//     not part of any sequence and are never read.
//
// Views: `tensorView` is Tensor.reshape with the cache's argument checks.

import { Tensor } from '../tensor.js';
import type { Backend } from '../backend/backend.js';
import { ArgumentError, DisposedTensorError, ShapeError, describe } from '../errors.js';
import { copyRows, rowMap, type RowMap } from '../ops/copy_rows.js';
import { attentionLayout, type AttentionLayout } from '../ops/attention.js';
import { checkPlainOptions } from '../ops/check.js';

/** Position given to unused cache slots: no query position reaches it. */
export const EMPTY_SLOT_POSITION = 2 ** 31 - 1;
/** Largest token position a batch may use (below EMPTY_SLOT_POSITION). */
export const MAX_POSITION = 2 ** 30;
/** Slots per block of a KvCache unless given (DESIGN §8). */
export const DEFAULT_KV_BLOCK = 64;
/** Largest block size a KvCache accepts. */
export const MAX_KV_BLOCK = 4096;

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
  /** Slots per block (default 64): the unit a sequence takes; a sequence wastes < one block. */
  blockSize?: number;
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
  /** Slot of each new token. */
  readonly slots: Int32Array;
  /** Queries: the new tokens; keys: every slot (capacity), read through each sequence's blocks. */
  readonly layout: AttentionLayout;
  /** Row n of a layer's new keys/values goes to slot slots[n]. */
  readonly rows: RowMap;
  readonly seq: Int32Array;
  readonly pos: Int32Array;
  readonly segment: Int32Array | null;
  /** Blocks this append took, per sequence (returned to the free list on abort). */
  readonly taken: Map<number, number[]>;
  /** Layers whose rows were written. */
  readonly touched: Set<number>;
}

function positiveInt(op: string, name: string, v: unknown, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0 || v > max)
    throw new ArgumentError(
      `${op}: ${name}: expected a positive integer${max < Number.MAX_SAFE_INTEGER ? ` ≤ ${max}` : ''}, got ${describe(v)}`,
    );
  return v;
}

/** A sequence held by the cache: its block table, token count and next position. */
interface SeqState {
  blocks: number[];
  len: number;
  next: number;
}

export class KvCache {
  readonly backend: Backend;
  readonly numLayers: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly blockSize: number;
  readonly #initial: number;
  /** Slots allocated per layer (a multiple of blockSize). */
  #cap = 0;
  #used = 0;
  /** Per slot: sequence (−1: free), position, segment. */
  #seq = new Int32Array(0);
  #pos = new Int32Array(0);
  #seg = new Int32Array(0);
  #seqs = new Map<number, SeqState>();
  /** Free block ids, descending (pop() takes the lowest). */
  #free: number[] = [];
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
    checkPlainOptions('KvCache: opts', opts, ['capacity', 'blockSize']);
    this.backend = backend;
    this.numLayers = positiveInt('KvCache', 'numLayers', dims?.numLayers);
    this.numKvHeads = positiveInt('KvCache', 'numKvHeads', dims?.numKvHeads);
    this.headDim = positiveInt('KvCache', 'headDim', dims?.headDim);
    this.blockSize = opts.blockSize === undefined ? DEFAULT_KV_BLOCK : positiveInt('KvCache', 'blockSize', opts.blockSize, MAX_KV_BLOCK);
    this.#initial = opts.capacity === undefined ? 64 : positiveInt('KvCache', 'capacity', opts.capacity);
  }

  /** Tokens held. */
  get length(): number {
    return this.#used;
  }

  /** Slots allocated per layer (0 before the first append). */
  get capacity(): number {
    return this.#cap;
  }

  /** Blocks not owned by any sequence. */
  get freeBlocks(): number {
    return this.#free.length;
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

  /** Slots holding a token, ascending. */
  #usedSlots(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.#cap; i++) if (this.#seq[i]! >= 0) out.push(i);
    return out;
  }

  /** Sequence ids, positions and segment ids of the cached tokens, in slot order (copies). */
  entries(): { seq: Int32Array; pos: Int32Array; segment: Int32Array } {
    const at = this.#usedSlots();
    const pick = (a: Int32Array) => Int32Array.from(at, (i) => a[i]!);
    return { seq: pick(this.#seq), pos: pick(this.#pos), segment: pick(this.#seg) };
  }

  /** Distinct sequence ids held, ascending. */
  sequences(): number[] {
    return [...this.#seqs.keys()].sort((a, b) => a - b);
  }

  /** Number of cached tokens of `seq`. */
  tokenCount(seq: number): number {
    return this.#seqs.get(seq)?.len ?? 0;
  }

  /** 1 + the largest cached position of `seq` (0 when it has none): where its next token goes. */
  nextPosition(seq: number): number {
    return this.#seqs.get(seq)?.next ?? 0;
  }

  /** The block table of `seq` (block ids in token order; slot = block·blockSize + t % blockSize). */
  blocksOf(seq: number): number[] {
    return [...(this.#seqs.get(seq)?.blocks ?? [])];
  }

  #layer(op: string, layer: number): void {
    this.#live(op);
    if (!Number.isSafeInteger(layer) || layer < 0 || layer >= this.numLayers)
      throw new ArgumentError(`KvCache.${op}: layer: expected an integer in [0, ${this.numLayers - 1}], got ${describe(layer)}`);
    if (this.#cap === 0) throw new ArgumentError(`KvCache.${op}: the cache is empty (nothing appended yet)`);
  }

  /** Keys of `layer`: f32 [capacity, numKvHeads, headDim] (slots without a token hold anything). Valid until the next append, drop or clear. */
  keys(layer: number): Tensor {
    this.#layer('keys', layer);
    return this.#k3[layer]!;
  }

  /** Values of `layer`, like keys(). */
  values(layer: number): Tensor {
    this.#layer('values', layer);
    return this.#v3[layer]!;
  }

  /** The cached keys and values of `layer` on the host, [length, numKvHeads, headDim] each, in slot order (as entries()). */
  async read(layer: number): Promise<{ k: Float32Array; v: Float32Array }> {
    if (this.#used === 0) return { k: new Float32Array(0), v: new Float32Array(0) };
    this.#layer('read', layer);
    const at = this.#usedSlots();
    const row = this.row;
    const [k, v] = await Promise.all([this.#k2[layer]!.readFloat(), this.#v2[layer]!.readFloat()]);
    const gather = (a: Float32Array) => {
      const o = new Float32Array(at.length * row);
      at.forEach((slot, n) => o.set(a.subarray(slot * row, (slot + 1) * row), n * row));
      return o;
    };
    return { k: gather(k), v: gather(v) };
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

  /** Grows every layer to `cap` slots: the used slots keep their ids (one row copy per tensor). */
  #grow(cap: number): void {
    const made: Tensor[] = [];
    let map: RowMap | null = null;
    const keep = this.#usedSlots();
    try {
      for (let l = 0; l < 2 * this.numLayers; l++) made.push(this.backend.zeros([cap, this.row]));
      if (this.#cap > 0 && keep.length > 0) {
        map = rowMap(this.backend, keep, keep);
        const old = [...this.#k2, ...this.#v2];
        old.forEach((t, i) => copyRows(made[i]!, t, map!));
      }
    } catch (e) {
      for (const t of made) t.dispose();
      throw e;
    } finally {
      map?.dispose();
    }
    const oldBlocks = this.#cap / this.blockSize;
    this.#install(made.slice(0, this.numLayers), made.slice(this.numLayers), cap);
    const grow = (a: Int32Array, fill: number) => {
      const b = new Int32Array(cap).fill(fill);
      b.set(a);
      return b;
    };
    this.#seq = grow(this.#seq, -1);
    this.#pos = grow(this.#pos, EMPTY_SLOT_POSITION);
    this.#seg = grow(this.#seg, 0);
    for (let b = cap / this.blockSize - 1; b >= oldBlocks; b--) this.#free.push(b);
    this.#free.sort((x, y) => y - x);
  }

  /**
   * Starts appending N new tokens (seq, pos: [N]; segments when the forward has a segment
   * mask): takes blocks (growing if needed) and returns the layout of the new tokens against
   * every slot, each sequence reading its own blocks. Commit after every layer's append, or abort.
   * @internal used by LlamaModel.forward.
   */
  begin(seq: Int32Array, pos: Int32Array, segments?: KvSegments): KvAppend {
    this.#live('begin');
    if (this.#pending) throw new ArgumentError('KvCache.begin: another forward is appending to this cache (commit or abort it first)');
    const N = seq.length;
    if (N === 0 || pos.length !== N || (segments && segments.segment.length !== N))
      throw new ShapeError(`KvCache.begin: expected N > 0 tokens with as many positions (and segments), got ${N}, ${pos.length}`);
    const B = this.blockSize;
    // new tokens per sequence, in order of first appearance
    const adds = new Map<number, number>();
    for (let n = 0; n < N; n++) adds.set(seq[n]!, (adds.get(seq[n]!) ?? 0) + 1);
    let need = 0;
    for (const [s, c] of adds) {
      const st = this.#seqs.get(s);
      const len = st?.len ?? 0;
      need += Math.ceil((len + c) / B) - (st?.blocks.length ?? 0);
    }
    if (need > this.#free.length) {
      const blocks = this.#cap / B;
      const want = Math.max(blocks + need - this.#free.length, 2 * blocks, Math.ceil(this.#initial / B));
      this.#grow(want * B);
    }
    // take blocks and place the tokens (the sequences' states change only at commit)
    const taken = new Map<number, number[]>();
    const tables = new Map<number, { blocks: number[]; len: number }>();
    const slots = new Int32Array(N);
    for (let n = 0; n < N; n++) {
      const s = seq[n]!;
      let t = tables.get(s);
      if (!t) {
        const st = this.#seqs.get(s);
        t = { blocks: st ? [...st.blocks] : [], len: st?.len ?? 0 };
        tables.set(s, t);
      }
      if (t.len === t.blocks.length * B) {
        const b = this.#free.pop()!;
        t.blocks.push(b);
        let l = taken.get(s);
        if (!l) taken.set(s, (l = []));
        l.push(b);
      }
      slots[n] = t.blocks[Math.floor(t.len / B)]! * B + (t.len % B);
      t.len++;
    }
    const cap = this.#cap;
    const kSeq = this.#seq.slice(),
      kPos = this.#pos.slice(),
      kSeg = this.#seg.slice();
    for (let n = 0; n < N; n++) {
      kSeq[slots[n]!] = seq[n]!;
      kPos[slots[n]!] = pos[n]!;
      if (segments) kSeg[slots[n]!] = segments.segment[n]!;
    }
    // each sequence's blocks as its key runs, adjacent blocks merged
    const runSeq: number[] = [],
      runStart: number[] = [],
      runEnd: number[] = [];
    for (const [s, t] of tables) {
      for (let k = 0; k < t.blocks.length;) {
        let e = k + 1;
        while (e < t.blocks.length && t.blocks[e] === t.blocks[e - 1]! + 1) e++;
        runSeq.push(s);
        runStart.push(t.blocks[k]! * B);
        runEnd.push((t.blocks[e - 1]! + 1) * B);
        k = e;
      }
    }
    let segInit;
    if (segments) {
      // Cached sequences the new tokens' mask does not cover are not blocked: pad with zeros.
      const S = segments.numSegments;
      let maxSeq = 0;
      for (let i = 0; i < cap; i++) maxSeq = Math.max(maxSeq, kSeq[i]!);
      let blocked: ArrayLike<number | boolean> = segments.blocked;
      const have = Math.floor(blocked.length / (S * S));
      if (blocked.length % (S * S) === 0 && have > 0 && have <= maxSeq) {
        const padded = new Int32Array((maxSeq + 1) * S * S);
        for (let i = 0; i < blocked.length; i++) padded[i] = blocked[i] ? 1 : 0;
        blocked = padded;
      }
      segInit = { numSegments: S, qSegment: segments.segment, kSegment: kSeg, blocked };
    }
    const giveBack = () => {
      for (const l of taken.values()) this.#free.push(...l);
      this.#free.sort((x, y) => y - x);
    };
    let layout: AttentionLayout | undefined;
    let rows: RowMap | undefined;
    try {
      layout = attentionLayout(this.backend, {
        qSeq: seq,
        qPos: pos,
        kSeq,
        kPos,
        keyRuns: { seq: runSeq, start: runStart, end: runEnd },
        ...(segInit ? { segments: segInit } : {}),
      });
      rows = rowMap(
        this.backend,
        slots,
        Int32Array.from({ length: N }, (_, n) => n),
      );
    } catch (e) {
      layout?.dispose();
      rows?.dispose();
      giveBack();
      throw e;
    }
    const plan: KvAppend = {
      cache: this,
      N,
      slots,
      layout,
      rows,
      seq: seq.slice(),
      pos: pos.slice(),
      segment: segments ? segments.segment.slice() : null,
      taken,
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
    for (let n = 0; n < plan.N; n++) {
      const slot = plan.slots[n]!,
        s = plan.seq[n]!;
      this.#seq[slot] = s;
      this.#pos[slot] = plan.pos[n]!;
      this.#seg[slot] = plan.segment ? plan.segment[n]! : 0;
      let st = this.#seqs.get(s);
      if (!st) this.#seqs.set(s, (st = { blocks: [], len: 0, next: 0 }));
      st.len++;
      st.next = Math.max(st.next, plan.pos[n]! + 1);
    }
    for (const [s, l] of plan.taken) this.#seqs.get(s)!.blocks.push(...l);
    this.#used += plan.N;
    this.#finish(plan);
  }

  /** Forgets the pending append: the blocks it took are free again; the slots it wrote belong to no sequence. @internal */
  abort(plan: KvAppend): void {
    if (plan !== this.#pending) return;
    for (const l of plan.taken.values()) this.#free.push(...l);
    this.#free.sort((x, y) => y - x);
    this.#finish(plan);
  }

  #finish(plan: KvAppend): void {
    plan.layout.dispose();
    plan.rows.dispose();
    this.#pending = null;
  }

  /** Removes every cached token of the given sequences and frees their blocks (nothing is copied). */
  drop(seqs: Iterable<number>): void {
    this.#live('drop');
    if (this.#pending) throw new ArgumentError('KvCache.drop: a forward is appending to this cache');
    const B = this.blockSize;
    let freed = false;
    for (const s of new Set(seqs)) {
      const st = this.#seqs.get(s);
      if (!st) continue;
      for (const b of st.blocks) {
        this.#seq.fill(-1, b * B, (b + 1) * B);
        this.#pos.fill(EMPTY_SLOT_POSITION, b * B, (b + 1) * B);
        this.#seg.fill(0, b * B, (b + 1) * B);
        this.#free.push(b);
      }
      this.#used -= st.len;
      this.#seqs.delete(s);
      freed = true;
    }
    if (freed) this.#free.sort((x, y) => y - x);
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
    this.#seqs.clear();
    this.#free = [];
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
    this.#seqs.clear();
    this.#free = [];
    this.#disposed = true;
  }

  /** dispose(), for `using`: the KvCache is freed when its block ends. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
