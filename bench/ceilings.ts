// Ceilings, measured in the same run on the same backend as the suites:
//   copy bandwidth (bytes read + bytes written per second) and FLOP rate of our own matmul,
//   which make the roofline; and, for reading the table only, the streaming-read rate (GEMV),
//   the sync round trip, the fixed cost of one op call, and a short copy probe run before each row.
import { readFileSync } from 'node:fs';
import { matmul } from '../src/ops/matmul.js';
import { loraApply, loraRouting, loraStack } from '../src/ops/lora.js';
import type { Backend } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { median, time, type TimeOptions, type Timing } from './timing.js';
import { randomFloats } from './random.js';

export interface CopyCeiling {
  /** Rate of the median sample: what rooflines use (rows are medians too). */
  gbps: number | null;
  /** Rate of the fastest sample, for reference. */
  bestGbps: number | null;
  /** Bytes moved per copy: read + write. */
  bytes: number;
  method: string;
  timing?: Timing;
  /** Why there is no figure. */
  reason?: string;
}

export interface FlopCeiling {
  /** Rate of the median sample: what rooflines use. */
  gflops: number;
  /** Rate of the fastest sample, for reference. */
  bestGflops: number;
  /** matmul shape T x K -> N (x: [T,K], W: [N,K]) */
  shape: { T: number; K: number; N: number };
  method: string;
  timing: Timing;
}

/** Streaming-read rate of our matmul at T = 1 (a GEMV over a large W): informative, not in the roofline. */
export interface ReadRate {
  gbps: number;
  bytes: number;
  method: string;
  timing: Timing;
}

export interface Ceilings {
  copy: CopyCeiling;
  flops: FlopCeiling;
  /** Kernels that mostly read (the LoRA ops) can beat copy bandwidth, which also writes: this shows by how much. */
  read?: ReadRate;
  /** One empty round trip: `await backend.sync()` under the same harness (not part of the roofline). */
  syncMs?: number;
  /** Fixed cost of one op call: loraApply on a tiny shape (T = 1, H = 64, r = 16), sync included (not in the roofline). */
  callMs?: number;
}

const MiB = 1 << 20;

/** One copy of `size` bytes on the device, ready to run again and again. */
interface Copier {
  /** Copies src to dst once and waits for it. */
  run(): Promise<void>;
  /** Bytes per copy actually used (may be capped by the device). */
  size: number;
  method: string;
  dispose(): void;
}

/** cpu/cuda: NativeBackend.copy; webgpu: copyBufferToBuffer on the backend's GPUDevice. A string says why not. */
async function makeCopier(backend: Backend, size: number): Promise<Copier | string> {
  if (backend.kind === 'webgpu') {
    const device = (backend as unknown as { device?: GPUDevice }).device;
    if (!device || typeof device.createCommandEncoder !== 'function') return 'the webgpu backend does not expose its GPUDevice';
    size = Math.min(size, Math.floor(device.limits.maxBufferSize / 4) * 4);
    await backend.sync(); // submit whatever the backend recorded before we use the queue directly
    const usage = GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const src = device.createBuffer({ size, usage });
    const dst = device.createBuffer({ size, usage });
    // Fill both: untouched memory of a software adapter may read as the shared zero page.
    const chunk = new Float32Array(4 * MiB).fill(1.5);
    for (let off = 0; off < size; off += chunk.byteLength) {
      const n = Math.min(chunk.byteLength, size - off);
      device.queue.writeBuffer(src, off, chunk.buffer, 0, n);
      device.queue.writeBuffer(dst, off, chunk.buffer, 0, n);
    }
    await device.queue.onSubmittedWorkDone();
    return {
      size,
      method: `webgpu: copyBufferToBuffer of ${size / MiB} MiB on the backend's GPUDevice (bytes = read + write)`,
      async run() {
        const enc = device.createCommandEncoder();
        enc.copyBufferToBuffer(src, 0, dst, 0, size);
        device.queue.submit([enc.finish()]);
        await device.queue.onSubmittedWorkDone();
      },
      dispose() {
        src.destroy();
        dst.destroy();
      },
    };
  }
  const native = backend as Backend & { copy?: (dst: Tensor, src: Tensor, n: number) => void };
  if (typeof native.copy !== 'function') return `${backend.kind} backend has no copy()`;
  const n = size / 4;
  const src = backend.zeros([n]); // zeros() writes, so the pages are real
  const dst = backend.zeros([n]);
  return {
    size,
    method: `${backend.kind}: NativeBackend.copy of ${size / MiB} MiB f32 (bytes = read + write)`,
    async run() {
      native.copy!(dst, src, n);
      await backend.sync();
    },
    dispose() {
      src.dispose();
      dst.dispose();
    },
  };
}

/** Copy bandwidth of a 256 MiB copy, timed with benchmark.js. */
export async function measureCopy(backend: Backend, t: TimeOptions): Promise<CopyCeiling> {
  const c = await makeCopier(backend, 256 * MiB);
  if (typeof c === 'string') return { gbps: null, bestGbps: null, bytes: 0, method: 'none', reason: c };
  try {
    const bytes = 2 * c.size;
    const timing = await time('copy', () => c.run(), t);
    return { gbps: bytes / (timing.medianMs * 1e6), bestGbps: bytes / (timing.minMs * 1e6), bytes, method: c.method, timing };
  } finally {
    c.dispose();
  }
}

/**
 * A short copy-bandwidth probe run next to every case (64 MiB, median of 5 manually timed
 * copies): on a shared machine it shows how much bandwidth there was when a row was measured.
 */
export class CopyProbe {
  private constructor(private readonly c: Copier | null) {}

  static async open(backend: Backend): Promise<CopyProbe> {
    const c = await makeCopier(backend, 64 * MiB);
    return new CopyProbe(typeof c === 'string' ? null : c);
  }

  /** Bytes one copy moves (read + write); 0 when there is no copier. */
  get bytes(): number {
    return this.c ? 2 * this.c.size : 0;
  }

  /** One copy, waited for (a row of an interleaved measurement); undefined when there is no copier. */
  get once(): (() => Promise<void>) | undefined {
    const c = this.c;
    return c ? () => c.run() : undefined;
  }

  async gbps(): Promise<number | undefined> {
    if (!this.c) return undefined;
    await this.c.run();
    const ms: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      await this.c.run();
      ms.push(performance.now() - t0);
    }
    return (2 * this.c.size) / (median(ms) * 1e6);
  }

  dispose(): void {
    this.c?.dispose();
  }
}

/** The matmul shape used for the FLOP ceiling on each backend. */
export function flopShape(backend: Backend): { T: number; K: number; N: number } {
  if (backend.kind === 'cuda') return { T: 4096, K: 4096, N: 4096 };
  if (backend.kind === 'webgpu') return backend.info().software ? { T: 128, K: 1024, N: 1024 } : { T: 1024, K: 4096, N: 4096 };
  return { T: 512, K: 4096, N: 4096 };
}

/** The FLOP-ceiling matmul, kept ready so that it can run as a row among others (interleaved). */
export class FlopProbe {
  private constructor(
    private readonly backend: Backend,
    private readonly ts: Tensor[],
    readonly flops: number,
  ) {}

  static open(backend: Backend): FlopProbe {
    const shape = flopShape(backend);
    const x = backend.tensor(randomFloats(shape.T * shape.K, 1, 11), [shape.T, shape.K]);
    const w = backend.tensor(randomFloats(shape.N * shape.K, 0.05, 12), [shape.N, shape.K]);
    const y = backend.empty([shape.T, shape.N]);
    return new FlopProbe(backend, [x, w, y], 2 * shape.T * shape.K * shape.N);
  }

  /** One matmul of the ceiling's shape, synced. */
  readonly once = async (): Promise<void> => {
    const [x, w, y] = this.ts as [Tensor, Tensor, Tensor];
    matmul(x, w, { out: y });
    await this.backend.sync();
  };

  dispose(): void {
    for (const t of this.ts) t.dispose();
  }
}

/** FLOP rate of our own f32 matmul, y = x·Wᵀ. */
export async function measureFlops(backend: Backend, t: TimeOptions): Promise<FlopCeiling> {
  const shape = flopShape(backend);
  const x = backend.tensor(randomFloats(shape.T * shape.K, 1, 11), [shape.T, shape.K]);
  const w = backend.tensor(randomFloats(shape.N * shape.K, 0.05, 12), [shape.N, shape.K]);
  const y = backend.empty([shape.T, shape.N]);
  try {
    const flops = 2 * shape.T * shape.K * shape.N;
    const timing = await time(
      'matmul',
      async () => {
        matmul(x, w, { out: y });
        await backend.sync();
      },
      t,
    );
    return {
      gflops: flops / (timing.medianMs * 1e6),
      bestGflops: flops / (timing.minMs * 1e6),
      shape,
      method: `matmul f32 x[${shape.T},${shape.K}]·W[${shape.N},${shape.K}]ᵀ (2·T·K·N flops)`,
      timing,
    };
  } finally {
    x.dispose();
    w.dispose();
    y.dispose();
  }
}

/** matmul with T = 1 over W [N, 4096] of 256 MiB. */
export async function measureRead(backend: Backend, t: TimeOptions): Promise<ReadRate> {
  const K = 4096;
  const N = (256 * MiB) / 4 / K;
  const w = backend.tensor(new Float32Array(N * K).fill(0.5), [N, K]);
  const x = backend.tensor(randomFloats(K, 1, 13), [1, K]);
  const y = backend.empty([1, N]);
  try {
    const bytes = N * K * 4 + K * 4 + N * 4;
    const timing = await time(
      'gemv',
      async () => {
        matmul(x, w, { out: y });
        await backend.sync();
      },
      t,
    );
    return { gbps: bytes / (timing.medianMs * 1e6), bytes, method: `matmul f32 x[1,${K}]·W[${N},${K}]ᵀ (W read once)`, timing };
  } finally {
    x.dispose();
    w.dispose();
    y.dispose();
  }
}

/** The per-call floor of the LoRA ops: loraApply where the work is negligible. undefined when the op fails. */
async function measureCall(backend: Backend, t: TimeOptions): Promise<number | undefined> {
  const R = 16,
    H = 64;
  const A = backend.tensor(randomFloats(R * H, 0.05, 14), [1, R, H]);
  const B = backend.tensor(randomFloats(H * R, 0.05, 15), [1, H, R]);
  const s = loraStack(A, B);
  const rt = loraRouting(backend, [0], { K: 1, L: 1 });
  const x = backend.tensor(randomFloats(H, 1, 16), [1, H]);
  const y = backend.zeros([1, H]);
  const v = backend.empty([1, 1, R]);
  try {
    const timing = await time(
      'call',
      async () => {
        loraApply(y, x, s, rt, { v });
        await backend.sync();
      },
      t,
    );
    return timing.medianMs;
  } catch {
    return undefined;
  } finally {
    for (const z of [A, B, s.rank, s.scale, x, y, v]) z.dispose();
    rt.dispose();
  }
}

export async function measureCeilings(backend: Backend, t: TimeOptions): Promise<Ceilings> {
  const copy = await measureCopy(backend, t);
  const flops = await measureFlops(backend, { ...t, warmup: 1 });
  // WebGPU's matmul is tiled for throughput, not a streaming GEMV (0.1 GB/s on lavapipe): no read figure there.
  const read = backend.kind === 'webgpu' ? undefined : await measureRead(backend, t);
  const short = { ...t, maxTime: Math.min(t.maxTime, 0.5) };
  const sync = await time('sync', () => backend.sync(), short);
  return { copy, flops, read, syncMs: sync.medianMs, callMs: await measureCall(backend, short) };
}

/**
 * Ceilings are the best the machine showed: of several measurements (start and end of a
 * run, each a median over its samples), keep the highest copy and FLOP rates.
 */
export function bestCeilings(all: readonly Ceilings[]): Ceilings {
  const copy = all.map((c) => c.copy).reduce((a, b) => ((b.gbps ?? -1) > (a.gbps ?? -1) ? b : a));
  const flops = all.map((c) => c.flops).reduce((a, b) => (b.gflops > a.gflops ? b : a));
  const reads = all.map((c) => c.read).filter((x): x is ReadRate => x !== undefined);
  const read = reads.length ? reads.reduce((a, b) => (b.gbps > a.gbps ? b : a)) : undefined;
  const least = (xs: (number | undefined)[]): number | undefined => {
    const ys = xs.filter((x): x is number => x !== undefined);
    return ys.length ? Math.min(...ys) : undefined;
  };
  return { copy, flops, read, syncMs: least(all.map((c) => c.syncMs)), callMs: least(all.map((c) => c.callMs)) };
}

/**
 * Bytes of last-level cache the weight working set should exceed so that weights are read
 * from memory, as in a real model whose layers each have their own adapters.
 */
export function lastLevelCacheBytes(backend: Backend): number {
  if (backend.kind === 'cuda') return 64 * MiB; // H100/H200 L2 is 50 MiB; A100 40 MiB
  if (backend.kind === 'webgpu' && !backend.info().software) return 64 * MiB;
  // cpu, and software WebGPU (runs on the CPU): the host's largest cache.
  let best = 0;
  for (let i = 0; i < 8; i++) {
    try {
      const s = readFileSync(`/sys/devices/system/cpu/cpu0/cache/index${i}/size`, 'utf8').trim();
      const m = /^(\d+)([KMG]?)$/.exec(s);
      if (m) best = Math.max(best, Number(m[1]) * ({ '': 1, K: 1024, M: MiB, G: 1024 * MiB } as Record<string, number>)[m[2]!]!);
    } catch {
      break;
    }
  }
  return best || 32 * MiB;
}
