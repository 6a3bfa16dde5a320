// cpu and cuda backends: both run through the native addon (native/addon.cc).
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { BackendUnavailableError, NativeError } from '../errors.js';
import { DTYPE_CODE, type DType, type HostData } from '../dtype.js';
import { makeTensor, type Tensor } from '../tensor.js';
import type { MatmulDims } from '../ops/matmul.js';
import type { Backend, BackendInfo } from './backend.js';

/** The addon's exports (see native/addon.cc and native/bind_*.cc). */
export interface Addon {
  info(): {
    cpu: { model: string; threads: number; hardwareThreads: number; features: string[] };
    cuda: { built: boolean; available: boolean; reason: string; name?: string; computeCapability?: string; multiprocessors?: number; memoryBytes?: number; runtimeVersion?: number; driverVersion?: number };
  };
  alloc(device: number, bytes: number): object;
  free(buf: object): void;
  write(buf: object, data: Uint8Array, byteOffset?: number): void;
  read(buf: object, data: Uint8Array, byteOffset?: number): void;
  sync(device: number): void;
  setThreads(n: number): void;
  copy(dst: object, src: object, n: number): void;
  matmul(y: object, x: object, w: object, wdtype: number, T: number, K: number, N: number, acc: boolean): void;
  matmulGradInput(dx: object, dy: object, w: object, wdtype: number, T: number, K: number, N: number, acc: boolean): void;
  matmulGradWeight(dw: object, dy: object, x: object, T: number, K: number, N: number, acc: boolean): void;
  [k: string]: unknown;
}

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

let cached: { addon: Addon | null; reason: string } | null = null;

/** Loads build/Release/mote.node once; returns why not when it cannot. */
export function loadAddon(): { addon: Addon | null; reason: string } {
  if (cached) return cached;
  const path = process.env.MOTE_ADDON_PATH ?? join(packageRoot, 'build', 'Release', 'mote.node');
  if (!existsSync(path)) {
    let why = 'the native addon is not built';
    try {
      const status = JSON.parse(readFileSync(join(packageRoot, 'build', 'native-status.json'), 'utf8')) as { reason?: string };
      if (status.reason) why += ` (${status.reason})`;
    } catch { /* no status file: install never ran the build */ }
    cached = { addon: null, reason: `${why}; run \`npm rebuild mote\` or \`node scripts/build-native.mjs\` with cmake and a C++17 compiler` };
    return cached;
  }
  try {
    cached = { addon: createRequire(import.meta.url)(path) as Addon, reason: '' };
  } catch (e) {
    cached = { addon: null, reason: `the native addon at ${path} failed to load: ${(e as Error).message}` };
  }
  return cached;
}

/** Turns an addon exception into a NativeError (keeps TypeError/RangeError messages). */
export function nativeCall<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw new NativeError(`${what}: ${(e as Error).message}`);
  }
}

const DEVICE_CODE = { cpu: 0, cuda: 1 } as const;

/** cpu or cuda through the addon. */
export class NativeBackend implements Backend {
  readonly device: number;
  #destroyed = false;
  readonly #live = new Set<object>();

  private constructor(readonly kind: 'cpu' | 'cuda', readonly addon: Addon) {
    this.device = DEVICE_CODE[kind];
  }

  static open(kind: 'cpu' | 'cuda', opts: { threads?: number } = {}): NativeBackend {
    const { addon, reason } = loadAddon();
    if (!addon) throw new BackendUnavailableError(kind, reason);
    if (kind === 'cuda') {
      const cu = addon.info().cuda;
      if (!cu.built) throw new BackendUnavailableError('cuda', cu.reason);
      if (!cu.available) throw new BackendUnavailableError('cuda', cu.reason);
    }
    if (opts.threads !== undefined) nativeCall('threads', () => addon.setThreads(opts.threads!));
    return new NativeBackend(kind, addon);
  }

  get destroyed(): boolean {
    return this.#destroyed;
  }

  info(): BackendInfo {
    const i = this.addon.info();
    if (this.kind === 'cpu') {
      return { name: 'cpu', device: i.cpu.model, software: false, features: i.cpu.features, details: { threads: i.cpu.threads, hardwareThreads: i.cpu.hardwareThreads, cudaBuilt: i.cuda.built } };
    }
    return {
      name: 'cuda', device: i.cuda.name ?? 'CUDA device', software: false, features: [`sm_${(i.cuda.computeCapability ?? '').replace('.', '')}`],
      memoryBytes: i.cuda.memoryBytes,
      details: { computeCapability: i.cuda.computeCapability, multiprocessors: i.cuda.multiprocessors, runtimeVersion: i.cuda.runtimeVersion, driverVersion: i.cuda.driverVersion },
    };
  }

  tensor(data: HostData, shape: readonly number[], dtype: DType = 'f32'): Tensor {
    return makeTensor(this, data, shape, dtype);
  }
  empty(shape: readonly number[], dtype: DType = 'f32'): Tensor {
    return makeTensor(this, null, shape, dtype);
  }
  zeros(shape: readonly number[], dtype: DType = 'f32'): Tensor {
    return makeTensor(this, null, shape, dtype, true);
  }

  allocStorage(byteLength: number): unknown {
    this.#checkAlive();
    const buf = nativeCall(`${this.kind}: allocating ${byteLength} bytes`, () => this.addon.alloc(this.device, byteLength));
    this.#live.add(buf);
    return buf;
  }
  writeStorage(storage: unknown, bytes: Uint8Array): void {
    nativeCall(`${this.kind}: upload`, () => this.addon.write(storage as object, bytes));
  }
  async readStorage(storage: unknown, byteLength: number): Promise<ArrayBuffer> {
    const out = new Uint8Array(byteLength);
    nativeCall(`${this.kind}: download`, () => this.addon.read(storage as object, out));
    return out.buffer;
  }
  freeStorage(storage: unknown): void {
    if (this.#live.delete(storage as object)) this.addon.free(storage as object);
  }
  async sync(): Promise<void> {
    nativeCall(`${this.kind}: sync`, () => this.addon.sync(this.device));
  }
  destroy(): void {
    if (this.#destroyed) return;
    for (const b of this.#live) this.addon.free(b);
    this.#live.clear();
    this.#destroyed = true;
  }
  #checkAlive(): void {
    if (this.#destroyed) throw new BackendUnavailableError(this.kind, 'this backend was destroyed');
  }

  /** Copies n floats (the bandwidth ceiling for benchmarks). */
  copy(dst: Tensor, src: Tensor, n: number): void {
    nativeCall('copy', () => this.addon.copy(dst.storage as object, src.storage as object, n));
  }

  matmul(y: Tensor, x: Tensor, w: Tensor, d: MatmulDims, acc: boolean): void {
    nativeCall('matmul', () => this.addon.matmul(y.storage as object, x.storage as object, w.storage as object, DTYPE_CODE[w.dtype], d.T, d.K, d.N, acc));
  }
  matmulGradInput(dx: Tensor, dy: Tensor, w: Tensor, d: MatmulDims, acc: boolean): void {
    nativeCall('matmulGradInput', () => this.addon.matmulGradInput(dx.storage as object, dy.storage as object, w.storage as object, DTYPE_CODE[w.dtype], d.T, d.K, d.N, acc));
  }
  matmulGradWeight(dw: Tensor, dy: Tensor, x: Tensor, d: MatmulDims, acc: boolean): void {
    nativeCall('matmulGradWeight', () => this.addon.matmulGradWeight(dw.storage as object, dy.storage as object, x.storage as object, d.T, d.K, d.N, acc));
  }
}
