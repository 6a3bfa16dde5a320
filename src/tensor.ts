import { bytesPerElement, checkDType, decode, encode, type DType, type HostData } from './dtype.js';
import { ArgumentError, DTypeError, DisposedTensorError, ShapeError, describe } from './errors.js';
import type { Backend } from './backend/backend.js';

interface Held {
  backend: Backend;
  storage: unknown;
}

// Backstop for tensors that were dropped without dispose(): frees their device memory.
const registry = new FinalizationRegistry<Held>((held) => {
  if (!held.backend.destroyed) held.backend.freeStorage(held.storage);
});

let nextId = 1;

/** A dense row-major tensor living on one backend. */
export class Tensor {
  readonly id = nextId++;
  readonly shape: readonly number[];
  readonly size: number;
  readonly byteLength: number;
  #storage: unknown;
  #disposed = false;
  #sealed = false;
  /** The tensor whose storage this one views (reshape); views never free storage. */
  readonly #base: Tensor | null;

  /** @internal use backend.tensor / backend.empty */
  constructor(
    readonly backend: Backend,
    shape: readonly number[],
    readonly dtype: DType,
    storage: unknown,
    base: Tensor | null = null,
  ) {
    this.shape = Object.freeze([...shape]);
    this.size = shape.reduce((a, b) => a * b, 1);
    this.byteLength = this.size * bytesPerElement(dtype);
    this.#storage = storage;
    this.#base = base;
    if (!base) registry.register(this, { backend, storage }, this);
  }

  get disposed(): boolean {
    return this.#disposed || this.backend.destroyed || (this.#base?.disposed ?? false);
  }

  /**
   * @internal Makes the contents read-only: indices checked on the host when a routing, layout
   * or rank tensor was built, which GPU kernels trust (write() would bypass the check).
   */
  seal(): this {
    this.#sealed = true;
    return this;
  }

  /** True for a tensor whose contents only mote may change (a LoraRouting's, an AttentionLayout's, a LoraStack's rank). */
  get sealed(): boolean {
    return this.#sealed || (this.#base?.sealed ?? false);
  }

  /** @internal the backend's storage handle; throws when disposed. */
  get storage(): unknown {
    if (this.disposed) {
      const of = this.#base ? ` (a view of tensor #${this.#base.id})` : '';
      throw new DisposedTensorError(`tensor #${this.id} [${this.shape.join(', ')}] ${this.dtype}${of} was used after dispose()`);
    }
    return this.#storage;
  }

  /**
   * The same storage under another shape with the same element count (row-major, no copy).
   * Disposing the view frees nothing; disposing this tensor invalidates the view.
   */
  reshape(shape: readonly number[]): Tensor {
    checkShape('shape', shape);
    const n = shape.reduce((a, b) => a * b, 1);
    if (n !== this.size)
      throw new ShapeError(
        `reshape: shape: [${shape.join(', ')}] holds ${n} elements, the tensor [${this.shape.join(', ')}] has ${this.size}`,
      );
    return new Tensor(this.backend, shape, this.dtype, this.storage, this.#base ?? this);
  }

  /** Copies the tensor to the host: Float32Array for f32/f16/bf16, Int32Array for i32. */
  async read(): Promise<Float32Array | Int32Array> {
    const storage = this.storage;
    return hostSized(`read: tensor #${this.id} [${this.shape.join(', ')}] ${this.dtype}`, this.byteLength, async () =>
      decode(await this.backend.readStorage(storage, this.byteLength), this.dtype, this.size),
    );
  }

  /** Like read() but for float tensors only, typed as Float32Array. */
  async readFloat(): Promise<Float32Array> {
    if (this.dtype === 'i32') throw new DTypeError(`readFloat: tensor #${this.id} is i32; use read()`);
    return (await this.read()) as Float32Array;
  }

  /** Overwrites the contents from host data of the same length. */
  write(data: HostData): void {
    const storage = this.storage; // a disposed tensor throws first
    if (this.sealed)
      throw new ArgumentError(
        `write: tensor #${this.id} [${this.shape.join(', ')}] ${this.dtype} is read-only: it holds indices checked when its routing, layout or stack was built; build a new one instead`,
      );
    checkHostData('write: data', data, this.size, this.shape);
    this.backend.writeStorage(storage, encode('write: data', data, this.dtype));
  }

  /** Frees device memory now. Safe to call twice. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#base) return; // a view owns nothing
    registry.unregister(this);
    if (!this.backend.destroyed) this.backend.freeStorage(this.#storage);
    this.#storage = undefined;
  }

  /** dispose(), for `using`: the tensor is freed when its block ends. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(#${this.id}, [${this.shape.join(', ')}], ${this.dtype}, ${this.backend.kind})`;
  }
}

export function checkShape(name: string, shape: unknown): number[] {
  if (!Array.isArray(shape) || shape.length === 0)
    throw new ShapeError(`${name}: expected a non-empty array of positive integers, got ${describe(shape)}`);
  let size = 1;
  for (const [i, d] of shape.entries()) {
    if (!Number.isSafeInteger(d) || d <= 0) throw new ShapeError(`${name}[${i}]: expected a positive integer, got ${describe(d)}`);
    size *= d;
  }
  // a product past 2^53 is not even an exact element count
  if (!Number.isSafeInteger(size * 4))
    throw new ShapeError(`${name}: [${shape.join(', ')}] holds ${size} elements, more than any device can address`);
  return shape as number[];
}

/**
 * Host data for a tensor: a Float32Array, Float64Array, Int32Array, Uint16Array (f16/bf16 bits)
 * or an array of numbers, of `size` elements. Other typed arrays, strings and array-likes are
 * refused rather than converted (Float32Array.from would turn them into NaNs or zeros).
 */
export function checkHostData(name: string, data: unknown, size: number, shape: readonly number[]): HostData {
  const typed = data instanceof Float32Array || data instanceof Float64Array || data instanceof Int32Array || data instanceof Uint16Array;
  if (!typed && !Array.isArray(data)) {
    throw new ArgumentError(`${name}: expected a Float32Array, Float64Array, Int32Array, Uint16Array or number[], got ${describe(data)}`);
  }
  const d = data as HostData;
  if (d.length !== size) throw new ShapeError(`${name}: expected ${size} elements for shape [${shape.join(', ')}], got ${d.length}`);
  if (!typed) {
    for (let i = 0; i < d.length; i++) {
      if (typeof d[i] !== 'number') throw new ArgumentError(`${name}[${i}]: expected a number, got ${describe(d[i])}`);
    }
  }
  return d;
}

/**
 * Runs `f`, which stages `byteLength` bytes in one host typed array: past the engine's largest
 * (4 GiB on Node 20) that is a RangeError without context; this says which tensor and why.
 */
export function hostSized<T>(what: string, byteLength: number, f: () => T): T {
  const fail = (e: unknown): never => {
    if (e instanceof RangeError && /typed array length|Array buffer allocation failed/i.test(e.message))
      throw new ShapeError(`${what}: ${byteLength} bytes do not fit in one host array here (${e.message})`);
    throw e;
  };
  try {
    const r = f();
    return (r instanceof Promise ? r.catch(fail) : r) as T;
  } catch (e) {
    return fail(e);
  }
}

/** Backend.tensor(): like makeTensor, but data is required (null would make an uninitialised tensor). */
export function makeHostTensor(backend: Backend, data: HostData, shape: readonly number[], dtype: DType = 'f32'): Tensor {
  if (data === null)
    throw new ArgumentError(
      `data: expected a Float32Array, Float64Array, Int32Array, Uint16Array or number[], got null (use empty() for an uninitialised tensor)`,
    );
  return makeTensor(backend, data, shape, dtype);
}

/** Shared tensor creation for every backend. */
export function makeTensor(backend: Backend, data: HostData | null, shape: readonly number[], dtype: DType = 'f32', fill0 = false): Tensor {
  checkShape('shape', shape);
  checkDType('dtype', dtype);
  const size = shape.reduce((a, b) => a * b, 1);
  let bytes: Uint8Array | null = null;
  if (data !== null) {
    checkHostData('data', data, size, shape);
    bytes = encode('data', data, dtype);
  }
  const byteLength = size * bytesPerElement(dtype);
  const storage = backend.allocStorage(byteLength, byteLength / shape[0]!);
  try {
    if (bytes) backend.writeStorage(storage, bytes);
    else if (fill0) {
      const zeros = hostSized(`zeros: shape [${shape.join(', ')}] ${dtype}`, byteLength, () => new Uint8Array(byteLength));
      backend.writeStorage(storage, zeros);
    }
  } catch (e) {
    backend.freeStorage(storage);
    throw e;
  }
  return new Tensor(backend, shape, dtype, storage);
}
