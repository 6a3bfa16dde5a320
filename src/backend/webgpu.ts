/// <reference types="@webgpu/types" preserve="true" />
// WebGPU backend, core: device, buffers, queue, staging, pipelines and the one way kernels
// are launched (launch() inside op()). The kernels' launches live beside it, one file per
// group: webgpu_model.ts (matmul and the model families), webgpu_lora.ts (multi-LoRA). This
// file uses no Node built-ins: where the GPU comes from and how kernels/wgsl is read are a
// WebGPUHost, Dawn and the package's files in Node (webgpu_node.ts), navigator.gpu and
// sources embedded at build time in the browser (src/web).
import { BackendUnavailableError, DeviceLostError, NativeError } from '../errors.js';
import type { DType, HostData } from '../dtype.js';
import { makeHostTensor, makeTensor, type Tensor } from '../tensor.js';
import type { Backend, BackendInfo, Kernels } from './backend.js';
import { specialise, type WgslReader } from './wgsl.js';
import { modelKernels } from './webgpu_model.js';
import { loraKernels } from './webgpu_lora.js';

export interface WebGPUOptions {
  /** Use this device (another runtime's) instead of creating one. mote never destroys it. */
  device?: GPUDevice;
  /** Substring of the adapter's description/device name to pick (Dawn option `adapter=`). */
  adapter?: string;
  /** Refuse software adapters such as lavapipe (what 'auto' does). */
  requireHardware?: boolean;
  /** Extra Dawn options, e.g. ['backend=vulkan']. */
  dawnOptions?: string[];
  /**
   * Treat storage bindings past this many bytes as too large, below the device's own
   * maxStorageBufferBindingSize (a device cannot be asked for less than WebGPU's defaults):
   * to see a small browser adapter's splitting on any device, or to leave headroom.
   */
  maxBindingBytes?: number;
  /** Multiply-adds one dispatch may do at most (default DISPATCH_WORK); the big launches are chunked under it. */
  maxDispatchWork?: number;
}

/**
 * The most multiply-adds one dispatch of the big launches (matmul, attention) does: larger
 * ones are recorded as several dispatches over independent outputs, bit-identical to one, so
 * no single dispatch runs long enough to trip an OS's GPU watchdog (Windows TDR: 2 s).
 */
export const DISPATCH_WORK = 2 ** 28;

/**
 * The storage of a tensor past the device's binding limit: its rows in `parts`, one buffer
 * each, every part but the last `partBytes` bytes (whole rows, a multiple of 4). The kernels
 * that run per part take one (embedding, matmul, xent: what a vocabulary-sized tensor meets);
 * the others refuse it by name (whole()). Tensors that fit keep a plain GPUBuffer.
 */
export class SplitStorage {
  constructor(
    readonly parts: readonly GPUBuffer[],
    readonly partBytes: number,
    readonly byteLength: number,
  ) {}
}

/** A tensor's one buffer: a split tensor is refused with a message naming `op` (only embedding, matmul and xent run per part). */
export function wholeBuffer(t: Tensor, op: string): GPUBuffer {
  const s = t.storage;
  if (s instanceof SplitStorage)
    throw new NativeError(
      `webgpu: ${op}: tensor [${t.shape.join(', ')}] ${t.dtype} (${t.byteLength} bytes) is past this device's storage binding limit and split in ${s.parts.length} parts; only embedding, matmul and the xent family take split tensors`,
    );
  return s as GPUBuffer;
}

/** One part of a tensor's storage: rows [row0, row0 + rows) of its first dimension. */
export interface RowPart {
  buf: GPUBuffer;
  row0: number;
  rows: number;
}

/** What the backend needs from its platform. */
export interface WebGPUHost {
  /** The GPU object adapters are requested from (throws BackendUnavailableError when there is none). */
  gpu(opts: WebGPUOptions): Promise<GPU>;
  /** Reads a file of kernels/wgsl. */
  readWgsl: WgslReader;
  /** Runs `body` with the platform's own chatter (Dawn's stderr warnings) kept out of the user's terminal, where the host can. */
  quietly?<T>(body: () => Promise<T>): Promise<T>;
}

const SOFTWARE = /llvmpipe|lavapipe|swiftshader|software|warp|basic render/i;
const WANTED_FEATURES: GPUFeatureName[] = ['shader-f16', 'subgroups' as GPUFeatureName, 'timestamp-query'];

function describeAdapter(info: GPUAdapterInfo | undefined): string {
  if (!info) return 'unknown adapter';
  const parts = [info.vendor, info.architecture, info.device, info.description].filter((s) => s && s.length > 0);
  return parts.length ? [...new Set(parts)].join(' / ') : 'unknown adapter';
}

/** A uniform's fields: a number is a u32; { f } an f32. */
export type Param = number | { f: number };

function packParams(vals: readonly Param[]): Uint8Array {
  const buf = new ArrayBuffer(Math.max(16, Math.ceil(vals.length / 4) * 16));
  const dv = new DataView(buf);
  vals.forEach((v, i) => {
    if (typeof v === 'number') dv.setUint32(i * 4, v >>> 0, true);
    else dv.setFloat32(i * 4, v.f, true);
  });
  return new Uint8Array(buf);
}

/** One dispatch of an entry point of kernels/wgsl/<family>.wgsl. */
export interface Launch {
  family: string;
  entry: string;
  /** dtypes of the weight bindings (see weightLoader in wgsl.ts) */
  weights?: Record<string, DType>;
  /** constants the shader is specialised on */
  consts?: Record<string, number>;
  /** bindings 1.. in order; binding 0 is a uniform made from `params` */
  buffers: GPUBuffer[];
  params: readonly Param[];
  groups: [number, number, number];
}

/** Recorded uploads submit once their staging buffers hold this many bytes. */
const STAGING_FLUSH_BYTES = 4 << 20;
/** Recorded dispatches and copies submit in batches of this many. */
const FLUSH_EVERY = 64;

// The kernels are assigned in the constructor from the factories of webgpu_model.ts and
// webgpu_lora.ts, each of which returns a complete, type-checked set.
export interface WebGPUBackend extends Kernels {}

export class WebGPUBackend implements Backend {
  readonly kind = 'webgpu' as const;
  #destroyed = false;
  #ownsDevice: boolean;
  #readWgsl: WgslReader;
  #pipelines = new Map<string, GPUComputePipeline>();
  #encoder: GPUCommandEncoder | null = null;
  /** The open compute pass: consecutive launches share one (a pass per dispatch costs its begin/end). */
  #pass: GPUComputePassEncoder | null = null;
  #pendingDispatches = 0;
  #deferredDestroy: GPUBuffer[] = [];
  #live = new Set<GPUBuffer>();
  #error: string | null = null;
  #adapterInfo: GPUAdapterInfo | undefined;
  #software: boolean;
  // Dawn's instance: it keeps the event loop alive (and mapAsync resolving) only while
  // referenced, so the backend holds it until destroy().
  #gpu: GPU | null;
  /** Temporary buffers of the op being recorded, and how deeply op() calls are nested. */
  #temps: GPUBuffer[] = [];
  #opDepth = 0;
  /** Upload staging buffers recorded since the last submit (see writeStorage). */
  #staging: GPUBuffer[] = [];
  #stagingBytes = 0;
  /** The uniforms of the launches recorded since the last submit, one buffer at aligned offsets (see launch()). */
  #uniforms: { buf: GPUBuffer; bytes: Uint8Array; used: number } | null = null;
  /** Why the device was lost ('reason: message'), once device.lost resolved while the backend was open. */
  #lost: string | null = null;
  /** Resolves when device.lost does: waits on the GPU race it, so a lost device never hangs them. */
  #whenLost: Promise<void>;
  /** @internal Storage bindings past this many bytes are split (SplitStorage). */
  readonly maxBindingBytes: number;
  /** @internal Multiply-adds per dispatch (see DISPATCH_WORK). */
  readonly workBudget: number;

  private constructor(
    readonly device: GPUDevice,
    adapterInfo: GPUAdapterInfo | undefined,
    owns: boolean,
    gpu: GPU | null,
    readWgsl: WgslReader,
    opts: WebGPUOptions,
  ) {
    const l = device.limits;
    const cap = Math.min(l.maxStorageBufferBindingSize, l.maxBufferSize, opts.maxBindingBytes ?? Infinity);
    this.maxBindingBytes = Math.floor(cap / 4) * 4;
    this.workBudget = opts.maxDispatchWork ?? DISPATCH_WORK;
    this.#gpu = gpu;
    this.#readWgsl = readWgsl;
    Object.assign(this, modelKernels(this), loraKernels(this));
    this.#ownsDevice = owns;
    this.#adapterInfo = adapterInfo;
    this.#software = SOFTWARE.test(describeAdapter(adapterInfo));
    device.addEventListener?.('uncapturederror', (ev: Event) => {
      const err = (ev as GPUUncapturedErrorEvent).error;
      this.#error ??= err?.message ?? 'unknown WebGPU error';
    });
    this.#whenLost = (device.lost ?? new Promise<never>(() => {})).then((info) => {
      if (!this.#destroyed) this.#lost = info.message ? `${info.reason}: ${info.message}` : `${info.reason}`;
    });
  }

  static async open(opts: WebGPUOptions, host: WebGPUHost): Promise<WebGPUBackend> {
    if (opts.device) return new WebGPUBackend(opts.device, opts.device.adapterInfo, false, null, host.readWgsl, opts);
    const gpu = await host.gpu(opts);
    let adapter: GPUAdapter | null;
    try {
      const request = () => gpu.requestAdapter({ powerPreference: 'high-performance' });
      adapter = await (host.quietly ? host.quietly(request) : request());
    } catch (e) {
      throw new BackendUnavailableError('webgpu', `requestAdapter failed: ${(e as Error).message}`);
    }
    if (!adapter)
      throw new BackendUnavailableError(
        'webgpu',
        'no WebGPU adapter found (no Vulkan/Metal/D3D12 driver; on CPU-only Linux install Mesa >= 24 lavapipe: mesa-vulkan-drivers)',
      );
    const info = adapter.info;
    const name = describeAdapter(info);
    if (opts.requireHardware && SOFTWARE.test(name)) {
      throw new BackendUnavailableError('webgpu', `only a software adapter is present (${name}); ask for 'webgpu' by name to use it`);
    }
    const features = WANTED_FEATURES.filter((f) => adapter!.features.has(f));
    const l = adapter.limits;
    const device = await adapter.requestDevice({
      requiredFeatures: features,
      requiredLimits: {
        maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
        maxBufferSize: l.maxBufferSize,
        maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
        maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
        maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      },
    });
    return new WebGPUBackend(device, info, true, gpu, host.readWgsl, opts);
  }

  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Why the device was lost ('reason: message'), or null while it works. A lost backend is unusable: every op throws DeviceLostError. */
  get lost(): string | null {
    return this.#lost;
  }

  /** Throws DeviceLostError (naming `op`) once the device is lost, BackendUnavailableError once destroyed. */
  #usable(op: string): void {
    if (this.#lost !== null) throw new DeviceLostError('webgpu', this.#lost, op);
    if (this.#destroyed) throw new BackendUnavailableError('webgpu', 'this backend was destroyed');
  }

  /** `wait` raced against the device's loss: a lost device rejects it with DeviceLostError instead of leaving it pending. */
  async #wait<T>(op: string, wait: Promise<T>): Promise<void> {
    wait.catch(() => {}); // a wait the loss won the race against may reject later: not an unhandled rejection
    try {
      await Promise.race([wait, this.#whenLost]);
    } catch (e) {
      // a wait the loss aborted may reject before device.lost resolves: give it a moment
      if (this.#lost === null) await Promise.race([this.#whenLost, new Promise((r) => setTimeout(r, 100))]);
      this.#usable(op);
      throw e;
    }
    this.#usable(op);
  }

  info(): BackendInfo {
    const l = this.device.limits;
    return {
      name: 'webgpu',
      device: describeAdapter(this.#adapterInfo),
      software: this.#software,
      features: [...this.device.features].sort(),
      details: {
        maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
        maxBufferSize: l.maxBufferSize,
        maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
        maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
        maxBindingBytes: this.maxBindingBytes,
        maxDispatchWork: this.workBudget,
        ownsDevice: this.#ownsDevice,
        ...(this.#lost !== null ? { lost: this.#lost } : {}),
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

  /**
   * A GPUBuffer, or past the binding limit a SplitStorage of whole rows of `rowBytes` bytes
   * (makeTensor passes a row of the first dimension), each part under the limit.
   */
  allocStorage(byteLength: number, rowBytes?: number): unknown {
    this.#usable('allocating a tensor');
    const max = this.maxBindingBytes;
    if (byteLength <= max) return this.#buffer(byteLength);
    let per = rowBytes !== undefined && rowBytes > 0 ? Math.floor(max / rowBytes) : 0;
    while (per > 0 && (per * rowBytes!) % 4 !== 0) per--; // parts start at whole words
    if (per === 0)
      throw new NativeError(
        `webgpu: a tensor of ${byteLength} bytes exceeds this device's storage binding limit (${max}), and its rows of ${rowBytes ?? byteLength} bytes cannot be split under it`,
      );
    const partBytes = per * rowBytes!;
    const parts: GPUBuffer[] = [];
    for (let off = 0; off < byteLength; off += partBytes) parts.push(this.#buffer(Math.min(partBytes, byteLength - off)));
    return new SplitStorage(parts, partBytes, byteLength);
  }

  #buffer(byteLength: number): GPUBuffer {
    // Sizes are padded to 4 bytes: 16-bit tensors are read as packed u32 pairs.
    const buf = this.device.createBuffer({
      size: Math.max(4, Math.ceil(byteLength / 4) * 4),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    this.#live.add(buf);
    return buf;
  }

  /** @internal A tensor's one buffer; a split tensor (past the binding limit) is refused, naming `op`. */
  whole(t: Tensor, op: string): GPUBuffer {
    return wholeBuffer(t, op);
  }

  /** @internal The parts of a tensor's storage by rows of its first dimension: one for a tensor that fits. */
  rowParts(t: Tensor): RowPart[] {
    const s = t.storage;
    const rows = t.shape[0]!;
    if (!(s instanceof SplitStorage)) return [{ buf: s as GPUBuffer, row0: 0, rows }];
    const rowBytes = t.byteLength / rows;
    if (s.partBytes % rowBytes !== 0)
      throw new NativeError(
        `webgpu: tensor [${t.shape.join(', ')}] is split in parts of ${s.partBytes} bytes, which do not hold whole rows of ${rowBytes} bytes (a view with another first dimension)`,
      );
    const per = s.partBytes / rowBytes;
    return s.parts.map((buf, i) => ({ buf, row0: i * per, rows: Math.min(per, rows - i * per) }));
  }

  /**
   * Uploads through a staging buffer of our own, copied in order with the recorded work and
   * destroyed after the submit that copies it. queue.writeBuffer's internal staging was only
   * reclaimed when something waited on the queue (a readback, sync), so a run of uploads with
   * no readback grew memory without bound (2,000 uploads of 256 KiB: +530 MB on lavapipe).
   */
  writeStorage(storage: unknown, bytes: Uint8Array): void {
    this.#usable('a tensor write');
    if (storage instanceof SplitStorage) {
      storage.parts.forEach((p, i) => this.#upload(p, bytes.subarray(i * storage.partBytes, (i + 1) * storage.partBytes)));
      return;
    }
    this.#upload(storage as GPUBuffer, bytes);
  }

  #upload(dst: GPUBuffer, bytes: Uint8Array): void {
    const n = bytes.byteLength;
    if (n === 0) return;
    const size = Math.ceil(n / 4) * 4; // copies move whole words; the mapped tail is zero
    const staging = this.device.createBuffer({ size, usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.MAP_WRITE, mappedAtCreation: true });
    new Uint8Array(staging.getMappedRange()).set(bytes);
    staging.unmap();
    this.encoder().copyBufferToBuffer(staging, 0, dst, 0, size);
    this.#staging.push(staging);
    this.#stagingBytes += size;
    if (this.#stagingBytes >= STAGING_FLUSH_BYTES || ++this.#pendingDispatches >= FLUSH_EVERY) this.flush();
  }

  /** Upload staging bytes not yet released (each flush releases them): at most about STAGING_FLUSH_BYTES plus one upload. */
  get stagingBytes(): number {
    return this.#stagingBytes;
  }

  async readStorage(storage: unknown, byteLength: number): Promise<ArrayBuffer> {
    const op = 'a tensor read';
    this.#usable(op);
    if (!(storage instanceof SplitStorage)) return this.#download(storage as GPUBuffer, byteLength, op);
    // part by part: one staging buffer of the whole could pass maxBufferSize
    const out = new Uint8Array(byteLength);
    for (const [i, p] of storage.parts.entries()) {
      const off = i * storage.partBytes;
      out.set(new Uint8Array(await this.#download(p, Math.min(storage.partBytes, byteLength - off), op)), off);
    }
    return out.buffer;
  }

  async #download(src: GPUBuffer, byteLength: number, op: string): Promise<ArrayBuffer> {
    const size = Math.max(4, Math.ceil(byteLength / 4) * 4);
    const staging = this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    this.encoder().copyBufferToBuffer(src, 0, staging, 0, size);
    this.flush();
    try {
      await this.#wait(op, staging.mapAsync(GPUMapMode.READ));
      this.#throwPending();
      return staging.getMappedRange().slice(0, byteLength);
    } finally {
      staging.destroy();
    }
  }

  freeStorage(storage: unknown): void {
    if (storage instanceof SplitStorage) for (const p of storage.parts) this.#free(p);
    else this.#free(storage as GPUBuffer);
  }

  #free(buf: GPUBuffer): void {
    if (!this.#live.delete(buf)) return;
    if (this.#encoder) this.#deferredDestroy.push(buf);
    else buf.destroy();
  }

  memoryInUse(): { buffers: number; bytes: number } {
    let bytes = 0;
    for (const b of this.#live) bytes += b.size;
    return { buffers: this.#live.size, bytes };
  }

  async sync(): Promise<void> {
    this.#usable('sync()');
    this.flush();
    await this.#wait('sync()', this.device.queue.onSubmittedWorkDone());
    this.#throwPending();
  }

  /** Submits the recorded dispatches. */
  flush(): void {
    if (this.#uniforms) {
      // written while mapped; unmapped before the submit that reads it, destroyed after it
      this.#uniforms.buf.unmap();
      this.#deferredDestroy.push(this.#uniforms.buf);
      this.#uniforms = null;
    }
    this.#endPass();
    if (this.#encoder) {
      this.device.queue.submit([this.#encoder.finish()]);
      this.#encoder = null;
      this.#pendingDispatches = 0;
    }
    for (const b of this.#deferredDestroy) b.destroy();
    this.#deferredDestroy = [];
    // submitted: the copies keep what they read alive until they ran
    for (const b of this.#staging) b.destroy();
    this.#staging = [];
    this.#stagingBytes = 0;
  }

  dispose(): void {
    this.destroy();
  }
  [Symbol.dispose](): void {
    this.destroy();
  }
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#pass = null;
    this.#encoder = null;
    for (const b of this.#staging) b.destroy();
    this.#staging = [];
    this.#stagingBytes = 0;
    this.#uniforms?.buf.destroy();
    this.#uniforms = null;
    for (const b of this.#live) b.destroy();
    this.#live.clear();
    this.#pipelines.clear();
    if (this.#ownsDevice) this.device.destroy();
    this.#gpu = null;
  }

  #throwPending(): void {
    if (this.#error) {
      const e = this.#error;
      this.#error = null;
      throw new NativeError(`webgpu: ${e}`);
    }
  }

  /** @internal The encoder of the work not yet submitted, for commands outside a compute pass (copies, clears). */
  encoder(): GPUCommandEncoder {
    this.#usable('recording work');
    this.#endPass();
    return (this.#encoder ??= this.device.createCommandEncoder());
  }

  /** Dispatches in one pass run in order, each seeing the writes of those before it (WebGPU orders them). */
  #computePass(): GPUComputePassEncoder {
    return (this.#pass ??= this.encoder().beginComputePass());
  }

  #endPass(): void {
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
  }

  /** Compiles (once) the pipeline of an entry point of a kernel family specialised by weight dtypes and constants. */
  #pipeline(family: string, entry: string, weights: Record<string, DType>, consts: Record<string, number>): GPUComputePipeline {
    const key = `${family}|${entry}|${JSON.stringify(weights)}|${JSON.stringify(consts)}`;
    let p = this.#pipelines.get(key);
    if (!p) {
      const module = this.device.createShaderModule({ code: specialise(this.#readWgsl, family, weights, consts), label: key });
      p = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: entry }, label: key });
      this.#pipelines.set(key, p);
    }
    return p;
  }

  /**
   * @internal Records the work of one op. Temporary buffers made by temp() or inputs() during
   * `body` are destroyed after the submit that runs them, also when `body` throws; not before
   * the op's last launch, since a flush between two launches of one op must not free them.
   */
  op(body: () => void): void {
    this.#opDepth++;
    try {
      body();
    } finally {
      if (--this.#opDepth === 0) {
        this.#deferredDestroy.push(...this.#temps);
        this.#temps = [];
      }
    }
  }

  /** @internal A storage buffer that lives until the end of the current op (see op()). */
  temp(size: number, usage = GPUBufferUsage.STORAGE): GPUBuffer {
    if (this.#opDepth === 0) throw new Error('internal: webgpu temp() outside op()');
    const b = this.device.createBuffer({ size, usage });
    this.#temps.push(b);
    return b;
  }

  /**
   * @internal Storage of a launch's inputs. An input that is also one of its outputs is read
   * from a temporary copy: a buffer bound writable may not be bound a second time in the same
   * dispatch.
   */
  inputs(outs: readonly Tensor[], ins: readonly Tensor[]): GPUBuffer[] {
    return ins.map((t) => {
      const src = this.whole(t, 'this op');
      if (!outs.includes(t)) return src;
      const copy = this.temp(src.size, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST);
      this.encoder().copyBufferToBuffer(src, 0, copy, 0, src.size);
      return copy;
    });
  }

  /** @internal Records one dispatch: binding 0 is a uniform made from `params`, bindings 1.. the buffers. */
  launch(l: Launch): void {
    this.#usable(`${l.family}.wgsl ${l.entry}`);
    const max = this.device.limits.maxComputeWorkgroupsPerDimension;
    if (l.groups.some((g) => g > max))
      throw new NativeError(`webgpu: dispatch of ${l.groups.join('x')} workgroups exceeds maxComputeWorkgroupsPerDimension (${max})`);
    if (l.groups.some((g) => g === 0)) return;
    const pipeline = this.#pipeline(l.family, l.entry, l.weights ?? {}, l.consts ?? {});
    const params = packParams(l.params);
    const uniform = this.#uniformSlot(params);
    const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: uniform }];
    l.buffers.forEach((b, i) => entries.push({ binding: i + 1, resource: { buffer: b } }));
    const group = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
    const pass = this.#computePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(...l.groups);
    if (++this.#pendingDispatches >= FLUSH_EVERY) this.flush();
  }

  /**
   * A launch's uniform: `params` written into the batch's uniform arena, one mapped buffer
   * per submit at offsets aligned to minUniformBufferOffsetAlignment, instead of a buffer per
   * launch. A batch holds at most FLUSH_EVERY launches; a full arena flushes early.
   */
  #uniformSlot(params: Uint8Array): GPUBufferBinding {
    const align = this.device.limits.minUniformBufferOffsetAlignment;
    const slot = Math.ceil(params.byteLength / align) * align;
    if (this.#uniforms && this.#uniforms.used + slot > this.#uniforms.bytes.byteLength) this.flush();
    if (!this.#uniforms) {
      const size = Math.max(FLUSH_EVERY * align, slot);
      const buf = this.device.createBuffer({ size, usage: GPUBufferUsage.UNIFORM, mappedAtCreation: true });
      this.#uniforms = { buf, bytes: new Uint8Array(buf.getMappedRange()), used: 0 };
    }
    const u = this.#uniforms;
    const offset = u.used;
    u.bytes.set(params, offset);
    u.used += slot;
    return { buffer: u.buf, offset, size: params.byteLength };
  }

  /** @internal Workgroup counts for nx × n workgroups, n spread over y and z (shaders read y + z·ny). */
  grid(nx: number, n: number): [number, number, number] {
    const max = this.device.limits.maxComputeWorkgroupsPerDimension;
    if (n <= max) return [nx, n, 1];
    const z = Math.ceil(n / max);
    return [nx, Math.ceil(n / z), z];
  }

  /** @internal Workgroups for n items, wg per workgroup, flattened over y·z. */
  flat(n: number, wg: number): [number, number, number] {
    return this.grid(1, Math.ceil(n / wg));
  }

  /** @internal Zeroes bytes [offset, offset + size) of a tensor's buffer in the recorded stream. */
  clear(t: Tensor, offset = 0, size = t.byteLength): void {
    if (size <= 0) return;
    if (t.storage instanceof SplitStorage && offset === 0 && size === t.byteLength) {
      for (const p of t.storage.parts) this.encoder().clearBuffer(p);
      return;
    }
    this.encoder().clearBuffer(this.whole(t, 'clear'), offset, Math.ceil(size / 4) * 4);
  }
}
