// cpu and cuda backends: both run through the native addon (native/addon.cc).
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { BackendUnavailableError, NativeError } from '../errors.js';
import { DTYPE_CODE, type DType, type HostData } from '../dtype.js';
import { makeHostTensor, makeTensor, type Tensor } from '../tensor.js';
import type { MatmulDims } from '../ops/matmul.js';
import type { LoraDims, LoraRouting, LoraStack, LoraStrategy } from '../ops/lora.js';
import type { EmbeddingDims } from '../ops/embedding.js';
import type { RmsnormDims } from '../ops/rmsnorm.js';
import type { RopeDims } from '../ops/rope.js';
import type { AttentionDims, AttentionLayout } from '../ops/attention.js';
import type { XentDims } from '../ops/xent.js';
import type { AdamwScalars } from '../ops/adamw.js';
import type { CopyRowsDims } from '../ops/copy_rows.js';
import type { Backend, BackendInfo } from './backend.js';

/** The addon's exports (see native/addon.cc and native/bind_*.cc). */
export interface Addon {
  info(): {
    cpu: { model: string; threads: number; hardwareThreads: number; features: string[]; simd: string };
    cuda: {
      built: boolean;
      available: boolean;
      reason: string;
      name?: string;
      computeCapability?: string;
      multiprocessors?: number;
      memoryBytes?: number;
      runtimeVersion?: number;
      driverVersion?: number;
    };
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
  loraShrink(args: LoraCallArgs, v: object, x: object): void;
  loraExpand(args: LoraCallArgs, y: object, v: object): void;
  loraApply(args: LoraCallArgs, y: object, v: object, x: object): void;
  loraShrinkGrad(args: LoraCallArgs, dv: object, dy: object): void;
  loraInputGrad(args: LoraCallArgs, dx: object, dv: object, acc: boolean): void;
  loraWeightGrad(args: LoraCallArgs, dA: object, dB: object, x: object, dy: object, v: object, dv: object, acc: boolean): void;
  /** Prepared halves of a lora call (parsed and size-checked once) and the call that takes them. */
  loraRoutingHandle(args: LoraRoutingArgs): object;
  loraStackHandle(args: LoraStackArgs): object;
  loraRun(op: number, routing: object, stack: object, strategy: number, acc: boolean, ...buffers: object[]): void;
  // model kernel families (native/bind_model.cc)
  embedding(y: object, ids: object, E: object, edtype: number, T: number, V: number, H: number): void;
  embeddingGrad(
    dE: object,
    dy: object,
    order: object,
    segStart: object,
    segIds: object,
    G: number,
    T: number,
    V: number,
    H: number,
    acc: boolean,
  ): void;
  rmsnorm(y: object, rstd: object, x: object, w: object, wdtype: number, T: number, H: number, eps: number): void;
  rmsnormGrad(
    dx: object,
    dw: object,
    dy: object,
    x: object,
    w: object,
    wdtype: number,
    rstd: object,
    T: number,
    H: number,
    accDw: boolean,
  ): void;
  rope(y: object, x: object, positions: object, invFreq: object, T: number, heads: number, D: number, inverse: boolean): void;
  attention(args: AttentionCallArgs, out: object, lse: object, q: object, k: object, v: object): void;
  attentionGrad(
    args: AttentionCallArgs,
    dq: object,
    dk: object,
    dv: object,
    dOut: object,
    q: object,
    k: object,
    v: object,
    out: object,
    lse: object,
  ): void;
  swiglu(y: object, gate: object, up: object, n: number): void;
  swigluGrad(dgate: object, dup: object, dy: object, gate: object, up: object, n: number): void;
  add(y: object, a: object, b: object, n: number): void;
  scale(y: object, x: object, alpha: number, n: number): void;
  logSoftmax(out: object, logits: object, T: number, V: number): void;
  xent(losses: object, lse: object, logits: object, targets: object, mask: object, T: number, V: number): void;
  xentGrad(dlogits: object, logits: object, lse: object, targets: object, mask: object, scale: number, T: number, V: number): void;
  // adamw family (native/bind_adamw.cc)
  adamw(
    p: object,
    g: object,
    m: object,
    v: object,
    n: number,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    weightDecay: number,
    bc1: number,
    bc2: number,
    gradScale: number,
  ): void;
  sumSquares(out: object, g: object, n: number): void;
  // copy_rows family (native/bind_model.cc)
  copyRows(dst: object, src: object, dstRows: object, srcRows: object, dtype: number, N: number, W: number): void;
  [k: string]: unknown;
}

/** First argument of attention/attentionGrad (native/bind_model.cc): the layout's i32 buffers and the dims. */
export interface AttentionCallArgs {
  qSeq: object;
  qPos: object;
  kSeq: object;
  kPos: object;
  qSeg: object;
  kSeg: object;
  blocked: object;
  /** per-query key runs, per-key query runs, the run table (src/ops/attention.ts) */
  ranges: object;
  numRuns: number;
  Tq: number;
  Tk: number;
  nH: number;
  nKv: number;
  D: number;
  /** segments per sequence (0 = no segment mask) and sequences covered by blocked */
  S: number;
  numSeqs: number;
  scale: number;
}

/** First argument of every lora* binding (native/bind_lora.cc): routing and stack buffers, dims, dtypes. */
export interface LoraCallArgs {
  slots: object;
  weight: object;
  order: object;
  segStart: object;
  segAdapter: object;
  A: object;
  B: object;
  rank: object;
  scale: object;
  T: number;
  K: number;
  L: number;
  R: number;
  Hin: number;
  Hout: number;
  /** non-empty slots; distinct adapters in the batch */
  P: number;
  G: number;
  aDtype: number;
  bDtype: number;
  /** 0 = per token (BGMV), 1 = grouped by adapter (SGMV) */
  strategy: number;
}

/** loraRoutingHandle's argument: the routing half of LoraCallArgs. */
export type LoraRoutingArgs = Pick<LoraCallArgs, 'slots' | 'weight' | 'order' | 'segStart' | 'segAdapter' | 'T' | 'K' | 'L' | 'P' | 'G'>;
/** loraStackHandle's argument: the adapter-stack half of LoraCallArgs. */
export type LoraStackArgs = Pick<LoraCallArgs, 'A' | 'B' | 'rank' | 'scale' | 'L' | 'R' | 'Hin' | 'Hout' | 'aDtype' | 'bDtype'>;

const STRATEGY_CODE: Record<LoraStrategy, number> = { bgmv: 0, sgmv: 1 };
/** loraRun's op codes (native/bind_lora.cc). */
const LORA_OP = { shrink: 0, expand: 1, apply: 2, shrinkGrad: 3, inputGrad: 4, weightGrad: 5 } as const;

/** A prepared half and what it was built from (compared at every call: a replaced tensor or a new shape rebuilds it). */
interface RoutingHandleEntry {
  h: object;
  slots: object;
  weight: object;
  order: object;
  segStart: object;
  segAdapter: object;
  T: number;
  K: number;
  L: number;
}
interface StackHandleEntry {
  h: object;
  A: object;
  B: object;
  rank: object;
  scale: object;
  L: number;
  R: number;
  Hin: number;
  Hout: number;
  aDtype: number;
  bDtype: number;
}

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

let cached: { addon: Addon | null; reason: string } | null = null;

/**
 * Where the addon is looked for, in order: MOTE_ADDON_PATH; build/Release/mote.node (compiled from
 * source at install, e.g. with CUDA, or by `npm rebuild`); the prebuilt CPU addon shipped in the
 * package, prebuilds/<platform>-<arch>/mote.node (scripts/prebuild.mjs).
 */
export function addonCandidates(): string[] {
  if (process.env.MOTE_ADDON_PATH) return [process.env.MOTE_ADDON_PATH];
  return [
    join(packageRoot, 'build', 'Release', 'mote.node'),
    join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`, 'mote.node'),
  ];
}

/** Loads the addon once (the first candidate that exists); returns why not when it cannot. */
export function loadAddon(): { addon: Addon | null; reason: string } {
  if (cached) return cached;
  const candidates = addonCandidates();
  const failures: string[] = [];
  for (const path of candidates) {
    if (!existsSync(path)) continue;
    try {
      cached = { addon: createRequire(import.meta.url)(path) as Addon, reason: '' };
      return cached;
    } catch (e) {
      failures.push(`the native addon at ${path} failed to load: ${(e as Error).message}`);
    }
  }
  if (failures.length) {
    cached = { addon: null, reason: failures.join('; ') };
    return cached;
  }
  let why = process.env.MOTE_ADDON_PATH
    ? `MOTE_ADDON_PATH names no file (${process.env.MOTE_ADDON_PATH})`
    : 'the native addon is not built';
  try {
    const status = JSON.parse(readFileSync(join(packageRoot, 'build', 'native-status.json'), 'utf8')) as { reason?: string };
    if (status.reason) why += ` (${status.reason})`;
  } catch {
    /* no status file: install never ran the build */
  }
  cached = {
    addon: null,
    reason: `${why}; run \`npm rebuild mote-lora\` (MOTE_BUILD_FROM_SOURCE=1 to compile) with cmake and a C++17 compiler`,
  };
  return cached;
}

/** Turns an addon exception into a NativeError (keeps TypeError/RangeError messages). */
export function nativeCall<T>(what: string, fn: () => T): T {
  const t0 = profile ? performance.now() : 0;
  try {
    return fn();
  } catch (e) {
    throw new NativeError(`${what}: ${(e as Error).message}`);
  } finally {
    if (profile) {
      if (profileSync) {
        try {
          profileSync();
        } catch {
          /* a fault is reported by the next call, which names its op */
        }
      }
      const r = profile.get(what) ?? { calls: 0, ms: 0 };
      r.calls++;
      r.ms += performance.now() - t0;
      profile.set(what, r);
    }
  }
}

let profile: Map<string, { calls: number; ms: number }> | null = null;
let profileSync: (() => void) | null = null;

/**
 * Starts timing every addon call by name (on: true) or stops; returns what was gathered since
 * the last start. cpu calls are synchronous, so the times are the kernels' own; cuda calls only
 * launch, so for cuda pass `backend` and every call waits for the device before it is timed
 * (the step gets slower; the split between ops is what this is for). @internal for the benchmarks
 */
export function opProfile(on: boolean, backend?: Backend): Map<string, { calls: number; ms: number }> | null {
  const p = profile;
  profile = on ? new Map() : null;
  profileSync = null;
  if (on && backend instanceof NativeBackend && backend.kind === 'cuda') {
    const { addon, device } = backend;
    profileSync = () => addon.sync(device);
  }
  return p;
}

const DEVICE_CODE = { cpu: 0, cuda: 1 } as const;

/** cpu or cuda through the addon. */
export class NativeBackend implements Backend {
  readonly device: number;
  #destroyed = false;
  /** live buffers and their sizes (memoryInUse) */
  readonly #live = new Map<object, number>();

  private constructor(
    readonly kind: 'cpu' | 'cuda',
    readonly addon: Addon,
  ) {
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
      return {
        name: 'cpu',
        device: i.cpu.model,
        software: false,
        features: i.cpu.features,
        details: { simd: i.cpu.simd, threads: i.cpu.threads, hardwareThreads: i.cpu.hardwareThreads, cudaBuilt: i.cuda.built },
      };
    }
    return {
      name: 'cuda',
      device: i.cuda.name ?? 'CUDA device',
      software: false,
      features: [`sm_${(i.cuda.computeCapability ?? '').replace('.', '')}`],
      memoryBytes: i.cuda.memoryBytes,
      details: {
        computeCapability: i.cuda.computeCapability,
        multiprocessors: i.cuda.multiprocessors,
        runtimeVersion: i.cuda.runtimeVersion,
        driverVersion: i.cuda.driverVersion,
      },
    };
  }

  tensor(data: HostData, shape: readonly number[], dtype: DType = 'f32'): Tensor {
    return makeHostTensor(this, data, shape, dtype);
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
    this.#live.set(buf, byteLength);
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
  memoryInUse(): { buffers: number; bytes: number } {
    let bytes = 0;
    for (const n of this.#live.values()) bytes += n;
    return { buffers: this.#live.size, bytes };
  }
  async sync(): Promise<void> {
    nativeCall(`${this.kind}: sync`, () => this.addon.sync(this.device));
  }
  dispose(): void {
    this.destroy();
  }
  [Symbol.dispose](): void {
    this.destroy();
  }
  destroy(): void {
    if (this.#destroyed) return;
    for (const b of this.#live.keys()) this.addon.free(b);
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
    nativeCall('matmul', () =>
      this.addon.matmul(y.storage as object, x.storage as object, w.storage as object, DTYPE_CODE[w.dtype], d.T, d.K, d.N, acc),
    );
  }
  matmulGradInput(dx: Tensor, dy: Tensor, w: Tensor, d: MatmulDims, acc: boolean): void {
    nativeCall('matmulGradInput', () =>
      this.addon.matmulGradInput(dx.storage as object, dy.storage as object, w.storage as object, DTYPE_CODE[w.dtype], d.T, d.K, d.N, acc),
    );
  }
  matmulGradWeight(dw: Tensor, dy: Tensor, x: Tensor, d: MatmulDims, acc: boolean): void {
    nativeCall('matmulGradWeight', () =>
      this.addon.matmulGradWeight(dw.storage as object, dy.storage as object, x.storage as object, d.T, d.K, d.N, acc),
    );
  }

  /** Prepared routing halves, one per routing (a batch), and stack halves, one per adapter stack (a layer). */
  readonly #routingHandles = new WeakMap<LoraRouting, RoutingHandleEntry>();
  readonly #stackHandles = new WeakMap<LoraStack, StackHandleEntry>();

  /** The two prepared halves of a lora call, built on first use and rebuilt when what they hold changed. */
  #loraHandles(s: LoraStack, rt: LoraRouting, d: LoraDims): [object, object] {
    const slots = rt.slots.storage as object,
      weight = rt.weight.storage as object,
      order = rt.order.storage as object,
      segStart = rt.segStart.storage as object,
      segAdapter = rt.segAdapter.storage as object;
    let r = this.#routingHandles.get(rt);
    if (
      r === undefined ||
      r.slots !== slots ||
      r.weight !== weight ||
      r.order !== order ||
      r.segStart !== segStart ||
      r.segAdapter !== segAdapter ||
      r.T !== d.T ||
      r.K !== d.K ||
      r.L !== d.L
    ) {
      const args = { slots, weight, order, segStart, segAdapter, T: d.T, K: d.K, L: d.L, P: rt.pairs, G: rt.groups };
      const h = nativeCall('loraRouting', () => this.addon.loraRoutingHandle(args));
      r = { h, slots, weight, order, segStart, segAdapter, T: d.T, K: d.K, L: d.L };
      this.#routingHandles.set(rt, r);
    }
    const A = s.A.storage as object,
      B = s.B.storage as object,
      rank = s.rank.storage as object,
      scale = s.scale.storage as object;
    const aDtype = DTYPE_CODE[s.A.dtype],
      bDtype = DTYPE_CODE[s.B.dtype];
    let k = this.#stackHandles.get(s);
    if (
      k === undefined ||
      k.A !== A ||
      k.B !== B ||
      k.rank !== rank ||
      k.scale !== scale ||
      k.L !== d.L ||
      k.R !== d.R ||
      k.Hin !== d.Hin ||
      k.Hout !== d.Hout ||
      k.aDtype !== aDtype ||
      k.bDtype !== bDtype
    ) {
      const args = { A, B, rank, scale, L: d.L, R: d.R, Hin: d.Hin, Hout: d.Hout, aDtype, bDtype };
      const h = nativeCall('loraStack', () => this.addon.loraStackHandle(args));
      k = { h, A, B, rank, scale, L: d.L, R: d.R, Hin: d.Hin, Hout: d.Hout, aDtype, bDtype };
      this.#stackHandles.set(s, k);
    }
    return [r.h, k.h];
  }
  loraShrink(v: Tensor, x: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy): void {
    const [rh, sh] = this.#loraHandles(s, rt, d);
    nativeCall('loraShrink', () =>
      this.addon.loraRun(LORA_OP.shrink, rh, sh, STRATEGY_CODE[strategy], false, v.storage as object, x.storage as object),
    );
  }
  loraExpand(y: Tensor, v: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy): void {
    const [rh, sh] = this.#loraHandles(s, rt, d);
    nativeCall('loraExpand', () =>
      this.addon.loraRun(LORA_OP.expand, rh, sh, STRATEGY_CODE[strategy], false, y.storage as object, v.storage as object),
    );
  }
  loraApply(y: Tensor, v: Tensor, x: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy): void {
    const [rh, sh] = this.#loraHandles(s, rt, d);
    nativeCall('loraApply', () =>
      this.addon.loraRun(
        LORA_OP.apply,
        rh,
        sh,
        STRATEGY_CODE[strategy],
        false,
        y.storage as object,
        v.storage as object,
        x.storage as object,
      ),
    );
  }
  loraShrinkGrad(dv: Tensor, dy: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy): void {
    const [rh, sh] = this.#loraHandles(s, rt, d);
    nativeCall('loraShrinkGrad', () =>
      this.addon.loraRun(LORA_OP.shrinkGrad, rh, sh, STRATEGY_CODE[strategy], false, dv.storage as object, dy.storage as object),
    );
  }
  loraInputGrad(dx: Tensor, dv: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy, accumulate: boolean): void {
    const [rh, sh] = this.#loraHandles(s, rt, d);
    nativeCall('loraInputGrad', () =>
      this.addon.loraRun(LORA_OP.inputGrad, rh, sh, STRATEGY_CODE[strategy], accumulate, dx.storage as object, dv.storage as object),
    );
  }
  loraWeightGrad(
    dA: Tensor,
    dB: Tensor,
    x: Tensor,
    dy: Tensor,
    v: Tensor,
    dv: Tensor,
    s: LoraStack,
    rt: LoraRouting,
    d: LoraDims,
    accumulate: boolean,
  ): void {
    // Always grouped by adapter (the gradients are per-adapter GEMMs).
    const [rh, sh] = this.#loraHandles(s, rt, d);
    nativeCall('loraWeightGrad', () =>
      this.addon.loraRun(
        LORA_OP.weightGrad,
        rh,
        sh,
        STRATEGY_CODE.sgmv,
        accumulate,
        dA.storage as object,
        dB.storage as object,
        x.storage as object,
        dy.storage as object,
        v.storage as object,
        dv.storage as object,
      ),
    );
  }

  // Model kernel families (native/bind_model.cc, native/cpu/<family>.cc, kernels/cuda/<family>.cu).

  embedding(y: Tensor, ids: Tensor, E: Tensor, d: EmbeddingDims): void {
    nativeCall('embedding', () => this.addon.embedding(st(y), st(ids), st(E), DTYPE_CODE[E.dtype], d.T, d.V, d.H));
  }
  embeddingGrad(
    dE: Tensor,
    dy: Tensor,
    order: Tensor,
    segStart: Tensor,
    segIds: Tensor,
    G: number,
    d: EmbeddingDims,
    accumulate: boolean,
  ): void {
    nativeCall('embeddingGrad', () =>
      this.addon.embeddingGrad(st(dE), st(dy), st(order), st(segStart), st(segIds), G, d.T, d.V, d.H, accumulate),
    );
  }
  rmsnorm(y: Tensor, rstd: Tensor, x: Tensor, w: Tensor, d: RmsnormDims): void {
    nativeCall('rmsnorm', () => this.addon.rmsnorm(st(y), st(rstd), st(x), st(w), DTYPE_CODE[w.dtype], d.T, d.H, d.eps));
  }
  rmsnormGrad(dx: Tensor, dw: Tensor, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor, d: RmsnormDims, accumulateDw: boolean): void {
    nativeCall('rmsnormGrad', () =>
      this.addon.rmsnormGrad(st(dx), st(dw), st(dy), st(x), st(w), DTYPE_CODE[w.dtype], st(rstd), d.T, d.H, accumulateDw),
    );
  }
  rope(y: Tensor, x: Tensor, positions: Tensor, invFreq: Tensor, d: RopeDims, inverse: boolean): void {
    nativeCall(inverse ? 'ropeGrad' : 'rope', () => this.addon.rope(st(y), st(x), st(positions), st(invFreq), d.T, d.heads, d.D, inverse));
  }
  #attentionArgs(l: AttentionLayout, d: AttentionDims): AttentionCallArgs {
    return {
      qSeq: st(l.qSeq),
      qPos: st(l.qPos),
      kSeq: st(l.kSeq),
      kPos: st(l.kPos),
      qSeg: st(l.qSeg),
      kSeg: st(l.kSeg),
      blocked: st(l.blocked),
      ranges: st(l.ranges),
      numRuns: d.numRuns,
      Tq: d.Tq,
      Tk: d.Tk,
      nH: d.nH,
      nKv: d.nKv,
      D: d.D,
      S: d.S,
      numSeqs: d.numSeqs,
      scale: d.scale,
    };
  }
  attention(out: Tensor, lse: Tensor, q: Tensor, k: Tensor, v: Tensor, l: AttentionLayout, d: AttentionDims): void {
    const args = this.#attentionArgs(l, d);
    nativeCall('attention', () => this.addon.attention(args, st(out), st(lse), st(q), st(k), st(v)));
  }
  attentionGrad(
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    l: AttentionLayout,
    d: AttentionDims,
  ): void {
    const args = this.#attentionArgs(l, d);
    nativeCall('attentionGrad', () =>
      this.addon.attentionGrad(args, st(dq), st(dk), st(dv), st(dOut), st(q), st(k), st(v), st(out), st(lse)),
    );
  }
  swiglu(y: Tensor, gate: Tensor, up: Tensor, n: number): void {
    nativeCall('swiglu', () => this.addon.swiglu(st(y), st(gate), st(up), n));
  }
  swigluGrad(dgate: Tensor, dup: Tensor, dy: Tensor, gate: Tensor, up: Tensor, n: number): void {
    nativeCall('swigluGrad', () => this.addon.swigluGrad(st(dgate), st(dup), st(dy), st(gate), st(up), n));
  }
  scale(y: Tensor, x: Tensor, alpha: number, n: number): void {
    nativeCall('scale', () => this.addon.scale(st(y), st(x), alpha, n));
  }
  add(y: Tensor, a: Tensor, b: Tensor, n: number): void {
    nativeCall('add', () => this.addon.add(st(y), st(a), st(b), n));
  }
  logSoftmax(out: Tensor, logits: Tensor, d: XentDims): void {
    nativeCall('logSoftmax', () => this.addon.logSoftmax(st(out), st(logits), d.T, d.V));
  }
  xent(losses: Tensor, lse: Tensor, logits: Tensor, targets: Tensor, mask: Tensor, d: XentDims): void {
    nativeCall('xent', () => this.addon.xent(st(losses), st(lse), st(logits), st(targets), st(mask), d.T, d.V));
  }
  xentGrad(dlogits: Tensor, logits: Tensor, lse: Tensor, targets: Tensor, mask: Tensor, scale: number, d: XentDims): void {
    nativeCall('xentGrad', () => this.addon.xentGrad(st(dlogits), st(logits), st(lse), st(targets), st(mask), scale, d.T, d.V));
  }
  adamw(p: Tensor, g: Tensor, m: Tensor, v: Tensor, n: number, s: AdamwScalars): void {
    nativeCall('adamw', () =>
      this.addon.adamw(st(p), st(g), st(m), st(v), n, s.lr, s.beta1, s.beta2, s.eps, s.weightDecay, s.bc1, s.bc2, s.gradScale),
    );
  }
  sumSquares(out: Tensor, g: Tensor, n: number): void {
    nativeCall('sumSquares', () => this.addon.sumSquares(st(out), st(g), n));
  }
  copyRows(dst: Tensor, src: Tensor, dstRows: Tensor, srcRows: Tensor, d: CopyRowsDims): void {
    nativeCall('copyRows', () => this.addon.copyRows(st(dst), st(src), st(dstRows), st(srcRows), DTYPE_CODE[dst.dtype], d.N, d.W));
  }
}

/** A tensor's addon buffer. */
function st(t: Tensor): object {
  return t.storage as object;
}
