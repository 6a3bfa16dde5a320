// Row copy / scatter: dst[dstRows[i], :] = src[srcRows[i], :]. Reference: src/reference/copy_rows.ts.
//
// A tensor's rows are its first axis; a row is the product of the other axes (W elements), so
// [capacity, numKvHeads, headDim] and [capacity, numKvHeads·headDim] have the same rows. dst and
// src must have one dtype and one row width; the bits are copied as they are (f16/bf16 as raw
// 16-bit units, NaN payloads kept).
//
// The row indices are host arrays, checked on the host and uploaded once as a RowMap, which a
// caller may keep and reuse across many copies (the KV cache appends the same rows to every
// layer). copyRows(dst, src, dstRows, srcRows) builds a one-off map and frees it after the copy.
//
// Rules the checks enforce, so that every backend computes the same thing with no ordering:
//   * every index is an integer, dstRows[i] in [0, rows of dst), srcRows[i] in [0, rows of src);
//   * dstRows has no repeats (each written row has one owner); srcRows may repeat;
//   * dst and src may share storage (the same tensor, or views of one) only when no row is both
//     read and written, except a row copied onto itself.
import { DTYPES } from '../dtype.js';
import { ArgumentError, DTypeError, DisposedTensorError, ShapeError } from '../errors.js';
import { Tensor } from '../tensor.js';
import type { Backend } from '../backend/backend.js';
import { Checker, checkBackend, checkIntArray } from './check.js';

export interface CopyRowsDims {
  /** Rows copied (> 0). */
  N: number;
  /** Elements per row. */
  W: number;
}

export interface CopyRowsKernels {
  /**
   * dst[dstRows[i], :] = src[srcRows[i], :] for i < N (rows of W elements), dst and src of one
   * dtype, bits copied unchanged. dstRows / srcRows: i32 [N], already checked (in range,
   * dstRows distinct; when dst and src share storage, no row both read and written).
   */
  copyRows(dst: Tensor, src: Tensor, dstRows: Tensor, srcRows: Tensor, d: CopyRowsDims): void;
}

const MAX_ROW = 2 ** 31 - 1;

function hostRows(op: string, name: string, a: unknown): Int32Array {
  return checkIntArray(op, name, a, 0, MAX_ROW, undefined, undefined, 'a row index (an integer ≥ 0)');
}

function maxOf(a: Int32Array): number {
  let m = -1;
  for (let i = 0; i < a.length; i++) if (a[i]! > m) m = a[i]!;
  return m;
}

/**
 * Row pairs (dstRows[i], srcRows[i]) checked on the host and uploaded once (i32 tensors on
 * `backend`), for any number of copyRows calls. Dispose when done (a FinalizationRegistry
 * backstop frees it too, like any tensor).
 */
export class RowMap {
  readonly backend: Backend;
  /** Rows copied per call. */
  readonly N: number;
  /** @internal host copies of the indices (what the checks read; the device holds the same). */
  readonly dstRows: Int32Array;
  /** @internal */
  readonly srcRows: Int32Array;
  /** @internal largest index in each (−1 when N = 0): what the range check compares with. */
  readonly dstMax: number;
  /** @internal */
  readonly srcMax: number;
  readonly #dst: Tensor | null;
  readonly #src: Tensor | null;
  /** The first (i, j) with srcRows[i] = dstRows[j], j ≠ i, or null; undefined until computed. */
  #overlap: { i: number; j: number } | null | undefined;

  /** @internal use rowMap() */
  constructor(backend: Backend, dstRows: Int32Array, srcRows: Int32Array) {
    this.backend = backend;
    this.N = dstRows.length;
    // fresh copies made by the checks (hostRows): a caller changing its arrays later cannot
    // desync the checks from the device
    this.dstRows = dstRows;
    this.srcRows = srcRows;
    this.dstMax = maxOf(dstRows);
    this.srcMax = maxOf(srcRows);
    if (this.N === 0) {
      this.#dst = this.#src = null;
      return;
    }
    this.#dst = backend.tensor(this.dstRows, [this.N], 'i32');
    try {
      this.#src = backend.tensor(this.srcRows, [this.N], 'i32');
    } catch (e) {
      this.#dst.dispose();
      throw e;
    }
  }

  get disposed(): boolean {
    return (this.#dst?.disposed ?? false) || this.backend.destroyed;
  }

  /** @internal the device index tensors (null when N = 0). */
  get tensors(): { dst: Tensor; src: Tensor } | null {
    return this.#dst && this.#src ? { dst: this.#dst, src: this.#src } : null;
  }

  /** @internal a read of src row srcRows[i] that another pair j writes, or null (computed once). */
  overlap(): { i: number; j: number } | null {
    if (this.#overlap === undefined) {
      const writer = new Map<number, number>();
      this.dstRows.forEach((r, j) => writer.set(r, j));
      this.#overlap = null;
      for (let i = 0; i < this.N; i++) {
        const j = writer.get(this.srcRows[i]!);
        if (j !== undefined && j !== i) {
          this.#overlap = { i, j };
          break;
        }
      }
    }
    return this.#overlap;
  }

  dispose(): void {
    this.#dst?.dispose();
    this.#src?.dispose();
  }

  /** dispose(), for `using`: the RowMap is freed when its block ends. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * Checks host row indices (integers ≥ 0, as many srcRows as dstRows, no repeated dstRows) and
 * uploads them to `backend`. The bounds against a dst and a src are checked by copyRows.
 */
export function rowMap(backend: Backend, dstRows: ArrayLike<number>, srcRows: ArrayLike<number>): RowMap {
  const op = 'rowMap';
  checkBackend(op, 'backend', backend);
  return makeRowMap(op, backend, hostRows(op, 'dstRows', dstRows), hostRows(op, 'srcRows', srcRows));
}

/** Checks the pairing of checked host rows (lengths, distinct dstRows), then uploads them. */
function makeRowMap(op: string, backend: Backend, d: Int32Array, s: Int32Array): RowMap {
  if (s.length !== d.length)
    throw new ArgumentError(`${op}: srcRows: expected ${d.length} entries (one per dstRows entry), got ${s.length}`);
  const first = new Map<number, number>();
  for (let i = 0; i < d.length; i++) {
    const j = first.get(d[i]!);
    if (j !== undefined)
      throw new ArgumentError(`${op}: dstRows[${i}]: row ${d[i]} is already written by dstRows[${j}] (rows written must be distinct)`);
    first.set(d[i]!, i);
  }
  return new RowMap(backend, d, s);
}

/** @internal the token that lets loraStackWrite copy into a sealed tensor. */
export const UNSEAL: unique symbol = Symbol('unseal');

function rowsOf(c: Checker, name: string, t: unknown): { R: number; W: number } {
  const shape = t instanceof Tensor ? t.shape : [];
  c.tensor(name, t, { dtypes: DTYPES, shape });
  const R = shape[0]!;
  return { R, W: shape.reduce((a, b) => a * b, 1) / R };
}

function firstAbove(a: Int32Array, limit: number): number {
  for (let i = 0; i < a.length; i++) if (a[i]! >= limit) return i;
  return -1;
}

/**
 * dst[dstRows[i], :] = src[srcRows[i], :] for every i, in place on dst (rows not named keep
 * their contents). dst and src: tensors of one dtype (f32, f16, bf16 or i32) whose rows (first
 * axis) hold the same number of elements. Rows are host arrays, or a RowMap made by rowMap()
 * for reuse. An index out of range throws an ArgumentError naming it; nothing runs then.
 */
export function copyRows(dst: Tensor, src: Tensor, dstRows: ArrayLike<number>, srcRows: ArrayLike<number>): void;
export function copyRows(dst: Tensor, src: Tensor, rows: RowMap): void;
/** @internal loraStackWrite: copies into a sealed rank tensor and updates the checked host copy itself. */
export function copyRows(dst: Tensor, src: Tensor, rows: RowMap, unseal: typeof UNSEAL): void;
export function copyRows(dst: Tensor, src: Tensor, a: ArrayLike<number> | RowMap, b?: ArrayLike<number> | typeof UNSEAL): void {
  const op = 'copyRows';
  const c = new Checker(op);
  const { R: Rd, W } = rowsOf(c, 'dst', dst);
  const unseal = b === UNSEAL;
  if (unseal) b = undefined;
  if (dst.sealed && !unseal)
    throw new ArgumentError(
      `${op}: dst: tensor #${dst.id} is read-only (the indices of a routing, layout or stack, checked when it was built); build a new one instead`,
    );
  const { R: Rs, W: Ws } = rowsOf(c, 'src', src);
  if (src.dtype !== dst.dtype) throw new DTypeError(`${op}: src: expected dtype ${dst.dtype} (the dtype of dst), got ${src.dtype}`);
  if (Ws !== W)
    throw new ShapeError(
      `${op}: src: expected rows of ${W} elements like dst [${dst.shape.join(', ')}], got [${src.shape.join(', ')}] (rows of ${Ws})`,
    );
  let map: RowMap;
  let own = false;
  if (a instanceof RowMap) {
    if (b !== undefined) throw new ArgumentError(`${op}: srcRows: not expected with a RowMap (it holds both)`);
    if (a.disposed) throw new DisposedTensorError(`${op}: rows: the RowMap was used after dispose()`);
    if (a.backend !== c.backend)
      throw new ArgumentError(`${op}: rows: a RowMap made on another backend (${a.backend.kind}) than dst (${c.backend!.kind})`);
    map = a;
  } else {
    if (b === undefined) throw new ArgumentError(`${op}: srcRows: expected an Int32Array or number[] of row indices, got undefined`);
    // check everything before uploading anything
    const d = hostRows(op, 'dstRows', a),
      s = hostRows(op, 'srcRows', b);
    checkBounds(op, d, maxOf(d), Rd, s, maxOf(s), Rs);
    map = makeRowMap(op, c.backend!, d, s);
    own = true;
  }
  try {
    checkBounds(op, map.dstRows, map.dstMax, Rd, map.srcRows, map.srcMax, Rs);
    if (map.N === 0) return;
    if (dst.storage === src.storage) {
      const o = map.overlap();
      if (o) {
        throw new ArgumentError(
          `${op}: srcRows[${o.i}]: row ${map.srcRows[o.i]} is read while dstRows[${o.j}] writes it; dst and src share storage, so rows read and rows written must not overlap`,
        );
      }
    }
    const t = map.tensors!;
    c.backend!.copyRows(dst, src, t.dst, t.src, { N: map.N, W });
  } finally {
    if (own) map.dispose();
  }
}

function checkBounds(op: string, d: Int32Array, dMax: number, Rd: number, s: Int32Array, sMax: number, Rs: number): void {
  if (dMax >= Rd) {
    const i = firstAbove(d, Rd);
    throw new ArgumentError(`${op}: dstRows[${i}]: expected a row of dst in [0, ${Rd - 1}], got ${d[i]}`);
  }
  if (sMax >= Rs) {
    const i = firstAbove(s, Rs);
    throw new ArgumentError(`${op}: srcRows[${i}]: expected a row of src in [0, ${Rs - 1}], got ${s[i]}`);
  }
}
