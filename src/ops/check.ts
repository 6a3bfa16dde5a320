import type { DType } from '../dtype.js';
import { ArgumentError, BackendMismatchError, DTypeError, DisposedTensorError, ShapeError, describe } from '../errors.js';
import { Tensor } from '../tensor.js';
import type { Backend } from '../backend/backend.js';

export interface TensorSpec {
  dtypes: readonly DType[];
  /** Expected shape; a string entry names a dimension bound on first use (e.g. 'T'). */
  shape: readonly (number | string)[];
}

/**
 * Argument checking shared by every op: binds named dimensions across tensors and
 * throws an error naming the argument, what was expected and what came.
 */
export class Checker {
  readonly dims = new Map<string, { value: number; from: string }>();
  backend: Backend | null = null;

  constructor(readonly op: string) {}

  tensor(name: string, t: unknown, spec: TensorSpec): Tensor {
    if (!(t instanceof Tensor)) throw new ArgumentError(`${this.op}: ${name}: expected a Tensor, got ${describe(t)}`);
    if (t.disposed) throw new DisposedTensorError(`${this.op}: ${name}: expected a live tensor, got ${t} after dispose()`);
    if (this.backend === null) this.backend = t.backend;
    else if (t.backend !== this.backend) {
      throw new BackendMismatchError(
        `${this.op}: ${name}: expected a tensor on the ${this.backend.kind} backend of the other arguments, got one on ${t.backend.kind}${t.backend.kind === this.backend.kind ? ' (another instance)' : ''}`,
      );
    }
    if (!spec.dtypes.includes(t.dtype))
      throw new DTypeError(`${this.op}: ${name}: expected dtype ${spec.dtypes.join(' or ')}, got ${t.dtype}`);
    // the expected shape as text, built only for a message (this runs on every op call)
    const want = (): string => spec.shape.map((d) => (typeof d === 'number' ? String(d) : d)).join(', ');
    if (t.shape.length !== spec.shape.length)
      throw new ShapeError(`${this.op}: ${name}: expected shape [${want()}], got [${t.shape.join(', ')}]`);
    for (let i = 0; i < spec.shape.length; i++) {
      const d = spec.shape[i]!;
      const got = t.shape[i]!;
      if (typeof d === 'number') {
        if (got !== d)
          throw new ShapeError(`${this.op}: ${name}: expected shape [${want()}], got [${t.shape.join(', ')}] (dim ${i} must be ${d})`);
        continue;
      }
      const bound = this.dims.get(d);
      if (!bound) this.dims.set(d, { value: got, from: name });
      else if (bound.value !== got) {
        throw new ShapeError(
          `${this.op}: ${name}: expected shape [${want()}] with ${d} = ${bound.value} (from ${bound.from}), got [${t.shape.join(', ')}]`,
        );
      }
    }
    return t;
  }

  dim(name: string): number {
    const d = this.dims.get(name);
    if (!d) throw new Error(`internal: dimension ${name} not bound`);
    return d.value;
  }

  /** An optional output tensor: checked when given, allocated (f32) when not. */
  output(name: string, t: Tensor | undefined, shape: readonly string[], dtype: DType = 'f32'): Tensor {
    if (t !== undefined) return this.tensor(name, t, { dtypes: [dtype], shape });
    return this.backend!.empty(
      shape.map((d) => this.dim(d)),
      dtype,
    );
  }

  /** Output must not alias an input: kernels read inputs while writing outputs. */
  distinct(outName: string, out: Tensor, inputs: Record<string, Tensor>): void {
    for (const [n, t] of Object.entries(inputs)) {
      if (t === out) throw new ArgumentError(`${this.op}: ${outName}: must not be the same tensor as ${n}`);
    }
  }
}

export function checkBool(op: string, name: string, v: unknown): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new ArgumentError(`${op}: ${name}: expected a boolean, got ${describe(v)}`);
  return v;
}

// ---- Entry-argument checks shared by every public function (tensor creation, ops, routing,
// layouts, openBackend): each throws a MoteError subclass naming `op: name`.

/** An options object: undefined → {}, anything but a plain object (null, numbers, arrays) throws. */
export function checkOpts<T extends object>(op: string, name: string, v: T | null | undefined): Partial<T> {
  if (v === undefined) return {};
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new ArgumentError(`${op}: ${name}: expected an options object or undefined, got ${describe(v)}`);
  return v;
}

/**
 * A plain options object (not an array, Map or class instance) whose keys are all in `keys`:
 * a misspelt option would otherwise be ignored silently. `where` prefixes the messages, `shape`
 * says what was expected.
 */
export function checkPlainOptions(where: string, v: unknown, keys: readonly string[], shape = 'a plain object'): Record<string, unknown> {
  const proto = v !== null && typeof v === 'object' ? Object.getPrototypeOf(v) : undefined;
  if (!v || typeof v !== 'object' || (proto !== Object.prototype && proto !== null)) {
    throw new ArgumentError(`${where}: expected ${shape}, got ${describe(v)}`);
  }
  checkKnownKeys(where, v, keys);
  return v as Record<string, unknown>;
}

/** Refuses a key of `v` not in `keys` (a misspelt option would otherwise be ignored silently); `noun` names what a key is. */
export function checkKnownKeys(where: string, v: object, keys: readonly string[], noun = 'option'): void {
  for (const k of Object.keys(v)) {
    if (!keys.includes(k)) throw new ArgumentError(`${where}: unknown ${noun} '${k}' (expected ${keys.join(', ')})`);
  }
}

/** A required object argument (LoraStack, layout init, ...). */
export function checkObject<T extends object>(op: string, name: string, v: T | null | undefined, what = 'an object'): T {
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new ArgumentError(`${op}: ${name}: expected ${what}, got ${describe(v)}`);
  return v;
}

const KINDS = ['cpu', 'webgpu', 'cuda'];

/** A live Backend from openBackend(). */
export function checkBackend(op: string, name: string, b: unknown): Backend {
  const be = b as Partial<Backend> | null;
  if (
    be === null ||
    typeof be !== 'object' ||
    typeof be.tensor !== 'function' ||
    typeof be.allocStorage !== 'function' ||
    !KINDS.includes(be.kind as string)
  ) {
    throw new ArgumentError(`${op}: ${name}: expected a Backend from openBackend(), got ${describe(b)}`);
  }
  if (be.destroyed) throw new DisposedTensorError(`${op}: ${name}: the ${be.kind} backend was destroyed`);
  return be as Backend;
}

/** An integer in [lo, hi] (a JS number: no strings, no NaN, no 1.5, no 2^32 where hi is smaller). */
export function checkInt(op: string, name: string, v: unknown, lo: number, hi: number = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < lo || v > hi) {
    const capped = hi !== Number.MAX_SAFE_INTEGER;
    const what = lo === 1 ? 'a positive integer' : capped ? `an integer in [${lo}, ${hi}]` : `an integer ≥ ${lo}`;
    throw new ArgumentError(`${op}: ${name}: expected ${what}, got ${describe(v)}${lo === 1 && capped ? ` (at most ${hi})` : ''}`);
  }
  return v;
}

/** A finite number, optionally > 0. */
export function checkFinite(op: string, name: string, v: unknown, positive = false): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || (positive && !(v > 0))) {
    throw new ArgumentError(`${op}: ${name}: expected a ${positive ? 'positive ' : ''}finite number, got ${describe(v)}`);
  }
  return v;
}

/** A host array of numbers: a number[] or a numeric typed array (not a string, not an array-like object). */
export function checkHostArray(op: string, name: string, a: unknown, length?: number): ArrayLike<number> {
  const ok =
    Array.isArray(a) ||
    (ArrayBuffer.isView(a) && !(a instanceof DataView) && !(a instanceof BigInt64Array) && !(a instanceof BigUint64Array));
  if (!ok)
    throw new ArgumentError(`${op}: ${name}: expected an Int32Array or number[] (or another numeric typed array), got ${describe(a)}`);
  const arr = a as ArrayLike<number>;
  if (length !== undefined && arr.length !== length) throw new ShapeError(`${op}: ${name}: expected ${length} entries, got ${arr.length}`);
  return arr;
}

/** A host array of integers in [lo, hi], copied into a fresh Int32Array (no silent wrap of 2^32 or 1.5). */
export function checkIntArray(
  op: string,
  name: string,
  a: unknown,
  lo: number,
  hi: number,
  length?: number,
  index: (i: number) => string = (i) => `[${i}]`,
  what?: string,
): Int32Array {
  const arr = checkHostArray(op, name, a, length);
  const out = new Int32Array(arr.length);
  const top = Math.min(hi, 2 ** 31 - 1);
  for (let i = 0; i < arr.length; i++) {
    const v = arr[i];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > top) {
      throw new ArgumentError(`${op}: ${name}${index(i)}: expected ${what ?? `an integer in [${lo}, ${top}]`}, got ${describe(v)}`);
    }
    out[i] = v;
  }
  return out;
}

/** A host array of finite numbers, copied into a fresh Float32Array. */
export function checkFloatArray(
  op: string,
  name: string,
  a: unknown,
  length?: number,
  index: (i: number) => string = (i) => `[${i}]`,
): Float32Array {
  const arr = checkHostArray(op, name, a, length);
  const out = new Float32Array(arr.length);
  for (let i = 0; i < arr.length; i++) {
    const v = arr[i];
    if (typeof v !== 'number' || !Number.isFinite(v) || !Number.isFinite(Math.fround(v))) {
      throw new ArgumentError(`${op}: ${name}${index(i)}: expected a finite (f32) number, got ${describe(v)}`);
    }
    out[i] = v;
  }
  return out;
}
