/// <reference types="@webgpu/types" preserve="true" />
// WebGPU backend: Dawn (the `webgpu` package) in Node, navigator.gpu elsewhere, or a
// GPUDevice handed in by the caller. Kernels come from kernels/wgsl.
import { tmpdir } from 'node:os';
import { BackendUnavailableError, NativeError } from '../errors.js';
import type { DType, HostData } from '../dtype.js';
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
import { LORA_TILE, specialise } from './wgsl.js';
import { readWgslFile } from './wgsl_node.js';

export interface WebGPUOptions {
  /** Use this device (another runtime's) instead of creating one. mote never destroys it. */
  device?: GPUDevice;
  /** Substring of the adapter's description/device name to pick (Dawn option `adapter=`). */
  adapter?: string;
  /** Refuse software adapters such as lavapipe (what 'auto' does). */
  requireHardware?: boolean;
  /** Extra Dawn options, e.g. ['backend=vulkan']. */
  dawnOptions?: string[];
}

const SOFTWARE = /llvmpipe|lavapipe|swiftshader|software|warp|basic render/i;
const WANTED_FEATURES: GPUFeatureName[] = ['shader-f16', 'subgroups' as GPUFeatureName, 'timestamp-query'];

// One Dawn instance per set of options for the whole process: a second instance created
// after the first one's device was destroyed stops keeping the event loop alive (the
// process then exits while mapAsync is pending). A referenced instance with nothing
// pending does not keep the process alive.
const dawnInstances = new Map<string, GPU>();

async function getGPU(opts: WebGPUOptions): Promise<GPU> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu && typeof process === 'undefined') return nav.gpu;
  const options = [...(opts.dawnOptions ?? [])];
  if (opts.adapter) options.push(`adapter=${opts.adapter}`);
  const key = options.join('\n');
  const cachedGpu = dawnInstances.get(key);
  if (cachedGpu) return cachedGpu;
  let mod: { create: (o: string[]) => GPU; globals: Record<string, unknown> };
  try {
    mod = (await import('webgpu')) as unknown as typeof mod;
  } catch (e) {
    throw new BackendUnavailableError('webgpu', `the 'webgpu' package (Dawn) could not be loaded: ${(e as Error).message}`);
  }
  // Mesa warns on every start when XDG_RUNTIME_DIR is unset.
  if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = tmpdir();
  for (const [k, v] of Object.entries(mod.globals)) {
    if (!(k in globalThis)) (globalThis as Record<string, unknown>)[k] = v;
  }
  const gpu = mod.create(options);
  dawnInstances.set(key, gpu);
  return gpu;
}

function describeAdapter(info: GPUAdapterInfo | undefined): string {
  if (!info) return 'unknown adapter';
  const parts = [info.vendor, info.architecture, info.device, info.description].filter((s) => s && s.length > 0);
  return parts.length ? [...new Set(parts)].join(' / ') : 'unknown adapter';
}

/** Slots per tile of the sgmv kernels. */
const SGMV_TILE = LORA_TILE.LORA_SLOTS;

/**
 * Segment table of a routing, on the device (i32): segStart [G + 1], segAdapter [G], then
 * (g, start) for each tile of ≤ SGMV_TILE slots of a segment, so sgmv launches exactly one
 * workgroup per tile.
 */
interface LoraSegments {
  table: Tensor;
  G: number;
  tiles: number;
}

/** How the lora_shrink / lora_expand shaders read W(e, r, h): element e·se + r·sr + h·sh. */
interface LoraWeightView {
  w: Tensor;
  /** length of the h axis (reduced by shrink, produced by expand) */
  H: number;
  sr: number;
  sh: number;
  se: number;
  /** multiply by weight[t,k]·scale[e] */
  coef: boolean;
}

/** A uniform's fields: a number is a u32; { f } an f32. */
type Param = number | { f: number };

function packParams(vals: readonly Param[]): ArrayBuffer {
  const buf = new ArrayBuffer(Math.max(16, Math.ceil(vals.length / 4) * 16));
  const dv = new DataView(buf);
  vals.forEach((v, i) => {
    if (typeof v === 'number') dv.setUint32(i * 4, v >>> 0, true);
    else dv.setFloat32(i * 4, v.f, true);
  });
  return buf;
}

/** Recorded uploads submit once their staging buffers hold this many bytes. */
const STAGING_FLUSH_BYTES = 4 << 20;

interface Dispatch {
  pipeline: GPUComputePipeline;
  buffers: GPUBuffer[];
  params: ArrayBuffer;
  groups: [number, number, number];
}

export class WebGPUBackend implements Backend {
  readonly kind = 'webgpu' as const;
  #destroyed = false;
  #ownsDevice: boolean;
  #pipelines = new Map<string, GPUComputePipeline>();
  #encoder: GPUCommandEncoder | null = null;
  #pendingDispatches = 0;
  #deferredDestroy: GPUBuffer[] = [];
  #live = new Set<GPUBuffer>();
  #error: string | null = null;
  #adapterInfo: GPUAdapterInfo | undefined;
  #software: boolean;
  // Dawn's instance: it keeps the event loop alive (and mapAsync resolving) only while
  // referenced, so the backend holds it until destroy().
  #gpu: GPU | null;
  #segments = new WeakMap<LoraRouting, LoraSegments>();
  /** Temporary buffers of the op being recorded (see #endTemps). */
  #temps: GPUBuffer[] = [];
  /** Upload staging buffers recorded since the last submit (see writeStorage). */
  #staging: GPUBuffer[] = [];
  #stagingBytes = 0;

  private constructor(readonly device: GPUDevice, adapterInfo: GPUAdapterInfo | undefined, owns: boolean, gpu: GPU | null) {
    this.#gpu = gpu;
    this.#ownsDevice = owns;
    this.#adapterInfo = adapterInfo;
    this.#software = SOFTWARE.test(describeAdapter(adapterInfo));
    device.addEventListener?.('uncapturederror', (ev: Event) => {
      const err = (ev as GPUUncapturedErrorEvent).error;
      this.#error ??= err?.message ?? 'unknown WebGPU error';
    });
    device.lost?.then((info) => {
      if (!this.#destroyed) this.#error ??= `WebGPU device lost: ${info.message || info.reason}`;
    });
  }

  static async open(opts: WebGPUOptions = {}): Promise<WebGPUBackend> {
    if (opts.device) return new WebGPUBackend(opts.device, opts.device.adapterInfo, false, null);
    const gpu = await getGPU(opts);
    let adapter: GPUAdapter | null;
    try {
      adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
    } catch (e) {
      throw new BackendUnavailableError('webgpu', `requestAdapter failed: ${(e as Error).message}`);
    }
    if (!adapter) throw new BackendUnavailableError('webgpu', 'no WebGPU adapter found (no Vulkan/Metal/D3D12 driver; on CPU-only Linux install Mesa >= 24 lavapipe: mesa-vulkan-drivers)');
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
    return new WebGPUBackend(device, info, true, gpu);
  }

  get destroyed(): boolean {
    return this.#destroyed;
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
        ownsDevice: this.#ownsDevice,
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
    if (this.#destroyed) throw new BackendUnavailableError('webgpu', 'this backend was destroyed');
    const max = this.device.limits.maxStorageBufferBindingSize;
    if (byteLength > max) throw new NativeError(`webgpu: a tensor of ${byteLength} bytes exceeds this device's maxStorageBufferBindingSize (${max})`);
    // Sizes are padded to 4 bytes: 16-bit tensors are read as packed u32 pairs.
    const buf = this.device.createBuffer({
      size: Math.max(4, Math.ceil(byteLength / 4) * 4),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    this.#live.add(buf);
    return buf;
  }

  /**
   * Uploads through a staging buffer of our own, copied in order with the recorded work and
   * destroyed after the submit that copies it. queue.writeBuffer's internal staging was only
   * reclaimed when something waited on the queue (a readback, sync), so a run of uploads with
   * no readback grew memory without bound (2,000 uploads of 256 KiB: +530 MB on lavapipe).
   */
  writeStorage(storage: unknown, bytes: Uint8Array): void {
    const n = bytes.byteLength;
    if (n === 0) return;
    const size = Math.ceil(n / 4) * 4; // copies move whole words; the mapped tail is zero
    const staging = this.device.createBuffer({ size, usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.MAP_WRITE, mappedAtCreation: true });
    new Uint8Array(staging.getMappedRange()).set(bytes);
    staging.unmap();
    this.#encoderFor().copyBufferToBuffer(staging, 0, storage as GPUBuffer, 0, size);
    this.#staging.push(staging);
    this.#stagingBytes += size;
    if (this.#stagingBytes >= STAGING_FLUSH_BYTES || ++this.#pendingDispatches >= 64) this.flush();
  }

  /** Upload staging bytes not yet released (each flush releases them): at most about STAGING_FLUSH_BYTES plus one upload. */
  get stagingBytes(): number {
    return this.#stagingBytes;
  }

  async readStorage(storage: unknown, byteLength: number): Promise<ArrayBuffer> {
    const size = Math.max(4, Math.ceil(byteLength / 4) * 4);
    const staging = this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = this.#encoderFor();
    enc.copyBufferToBuffer(storage as GPUBuffer, 0, staging, 0, size);
    this.flush();
    try {
      await staging.mapAsync(GPUMapMode.READ);
      this.#throwPending();
      return staging.getMappedRange().slice(0, byteLength);
    } finally {
      staging.destroy();
    }
  }

  freeStorage(storage: unknown): void {
    const buf = storage as GPUBuffer;
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
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.#throwPending();
  }

  /** Submits the recorded dispatches. */
  flush(): void {
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

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#encoder = null;
    for (const b of this.#staging) b.destroy();
    this.#staging = [];
    this.#stagingBytes = 0;
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

  #encoderFor(): GPUCommandEncoder {
    if (this.#destroyed) throw new BackendUnavailableError('webgpu', 'this backend was destroyed');
    return (this.#encoder ??= this.device.createCommandEncoder());
  }

  /** Compiles (once) the pipeline of a kernel family specialised by weight dtypes and constants. */
  pipeline(family: string, weights: Record<string, DType> = {}, consts: Record<string, number> = {}, entry = 'main'): GPUComputePipeline {
    const key = `${family}|${entry}|${JSON.stringify(weights)}|${JSON.stringify(consts)}`;
    let p = this.#pipelines.get(key);
    if (!p) {
      const module = this.device.createShaderModule({ code: specialise(readWgslFile, family, weights, consts), label: key });
      p = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: entry }, label: key });
      this.#pipelines.set(key, p);
    }
    return p;
  }

  /** Records one dispatch: binding 0 is a uniform made from `params`, bindings 1.. the buffers. */
  dispatch(d: Dispatch): void {
    const max = this.device.limits.maxComputeWorkgroupsPerDimension;
    if (d.groups.some((g) => g > max)) throw new NativeError(`webgpu: dispatch of ${d.groups.join('x')} workgroups exceeds maxComputeWorkgroupsPerDimension (${max})`);
    if (d.groups.some((g) => g === 0)) return;
    const uniform = this.device.createBuffer({ size: Math.max(16, Math.ceil(d.params.byteLength / 16) * 16), usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST, mappedAtCreation: true });
    new Uint8Array(uniform.getMappedRange()).set(new Uint8Array(d.params));
    uniform.unmap();
    const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: uniform } }];
    d.buffers.forEach((b, i) => entries.push({ binding: i + 1, resource: { buffer: b } }));
    const group = this.device.createBindGroup({ layout: d.pipeline.getBindGroupLayout(0), entries });
    const pass = this.#encoderFor().beginComputePass();
    pass.setPipeline(d.pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(...d.groups);
    pass.end();
    this.#deferredDestroy.push(uniform);
    if (++this.#pendingDispatches >= 64) this.flush();
  }

  /** The strided GEMM of kernels/wgsl/matmul.wgsl: C[M,N] (+)= A(m,k)·B(k,n). */
  #gemm(c: Tensor, a: Tensor, b: Tensor, M: number, N: number, K: number, sam: number, sak: number, sbk: number, sbn: number, acc: boolean): void {
    const params = new Uint32Array([M, N, K, sam, sak, sbk, sbn, acc ? 1 : 0]);
    this.dispatch({
      pipeline: this.pipeline('matmul', { b: b.dtype }),
      buffers: [c.storage as GPUBuffer, a.storage as GPUBuffer, b.storage as GPUBuffer],
      params: params.buffer,
      groups: [Math.ceil(N / 32), Math.ceil(M / 32), 1],
    });
  }

  matmul(y: Tensor, x: Tensor, w: Tensor, d: MatmulDims, acc: boolean): void {
    this.#gemm(y, x, w, d.T, d.N, d.K, d.K, 1, 1, d.K, acc);
  }
  matmulGradInput(dx: Tensor, dy: Tensor, w: Tensor, d: MatmulDims, acc: boolean): void {
    this.#gemm(dx, dy, w, d.T, d.K, d.N, d.N, 1, d.K, 1, acc);
  }
  matmulGradWeight(dw: Tensor, dy: Tensor, x: Tensor, d: MatmulDims, acc: boolean): void {
    this.#gemm(dw, dy, x, d.N, d.K, d.T, 1, d.N, d.K, 1, acc);
  }

  // ---------------------------------------------------------------- multi-LoRA

  /** Workgroup counts for nx × n workgroups, n spread over y and z (shaders read y + z·ny). */
  #grid(nx: number, n: number): [number, number, number] {
    const max = this.device.limits.maxComputeWorkgroupsPerDimension;
    if (n <= max) return [nx, n, 1];
    const z = Math.ceil(n / max);
    return [nx, Math.ceil(n / z), z];
  }

  /** Zeroes bytes [offset, offset + size) of a tensor's buffer in the recorded stream. */
  #clear(t: Tensor, offset = 0, size = t.byteLength): void {
    if (size <= 0) return;
    this.#encoderFor().clearBuffer(t.storage as GPUBuffer, offset, Math.ceil(size / 4) * 4);
  }

  #loraSegments(rt: LoraRouting): LoraSegments {
    let sg = this.#segments.get(rt);
    if (sg && !sg.table.disposed) return sg;
    const { segStart, segAdapter } = rt.host;
    const G = segAdapter.length;
    const tiles: number[] = [];
    for (let g = 0; g < G; g++) {
      for (let s = segStart[g]!; s < segStart[g + 1]!; s += SGMV_TILE) tiles.push(g, s);
    }
    const data = new Int32Array(2 * G + 1 + tiles.length);
    data.set(segStart.subarray(0, G + 1), 0);
    data.set(segAdapter, G + 1);
    data.set(tiles, 2 * G + 1);
    sg = { table: rt.attach(this.tensor(data, [data.length], 'i32')), G, tiles: tiles.length / 2 };
    this.#segments.set(rt, sg);
    return sg;
  }

  /** out[t,k,r] = c·Σ_h W(e,r,h)·u[t,h] (lora_shrink.wgsl). */
  #loraShrinkLike(out: Tensor, u: Tensor, wv: LoraWeightView, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy): void {
    const buf = (t: Tensor) => t.storage as GPUBuffer;
    const head = [d.T, d.K, d.R, wv.H, wv.sr, wv.sh, wv.se, wv.coef ? 1 : 0];
    if (strategy === 'bgmv') {
      this.dispatch({
        pipeline: this.pipeline('lora_shrink', { w: wv.w.dtype }, {}, 'bgmv'),
        buffers: [buf(out), buf(u), buf(wv.w), buf(rt.weight), buf(s.rank), buf(s.scale), buf(rt.slots)],
        params: new Uint32Array([...head, 0, 0, 0, 0]).buffer,
        groups: this.#grid(1, d.T * d.K),
      });
      return;
    }
    const sg = this.#loraSegments(rt);
    // sgmv visits only the non-empty slots; the others must read 0
    if (rt.pairs < d.T * d.K) this.#clear(out);
    if (sg.tiles === 0) return;
    this.dispatch({
      pipeline: this.pipeline('lora_shrink', { w: wv.w.dtype }, {}, 'sgmv'),
      buffers: [buf(out), buf(u), buf(wv.w), buf(rt.weight), buf(s.rank), buf(s.scale), buf(rt.order), buf(sg.table)],
      params: new Uint32Array([...head, sg.G, sg.tiles, 0, 0]).buffer,
      groups: this.#grid(Math.ceil(d.R / LORA_TILE.LORA_RANKS), sg.tiles),
    });
  }

  /** out[t,h] (+)= Σ_k c·Σ_r W(e,h,r)·vin[t,k,r] (lora_expand.wgsl). */
  #loraExpandLike(out: Tensor, vin: Tensor, wv: LoraWeightView, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy, accumulate: boolean): void {
    const buf = (t: Tensor) => t.storage as GPUBuffer;
    const head = [d.T, d.K, d.R, wv.H, wv.sr, wv.sh, wv.se, wv.coef ? 1 : 0];
    const nx = Math.ceil(wv.H / LORA_TILE.LORA_OUTS);
    if (strategy === 'bgmv') {
      this.dispatch({
        pipeline: this.pipeline('lora_expand', { w: wv.w.dtype }, {}, 'bgmv'),
        buffers: [buf(out), buf(vin), buf(wv.w), buf(rt.weight), buf(s.rank), buf(s.scale), buf(rt.slots)],
        params: new Uint32Array([...head, 0, 0, 0, accumulate ? 1 : 0]).buffer,
        groups: this.#grid(nx, d.T),
      });
      return;
    }
    const sg = this.#loraSegments(rt);
    let acc = accumulate;
    // One pass per k writes each output at most once; overwriting in place is only right
    // when that single pass covers every token.
    if (!acc && !(d.K === 1 && rt.pairs === d.T)) {
      this.#clear(out);
      acc = true;
    }
    if (sg.tiles === 0) return;
    const pipeline = this.pipeline('lora_expand', { w: wv.w.dtype }, {}, 'sgmv');
    const buffers = [buf(out), buf(vin), buf(wv.w), buf(rt.weight), buf(s.rank), buf(s.scale), buf(rt.order), buf(sg.table)];
    for (let k = 0; k < d.K; k++) {
      this.dispatch({
        pipeline,
        buffers,
        params: new Uint32Array([...head, sg.G, sg.tiles, k, acc || k > 0 ? 1 : 0]).buffer,
        groups: this.#grid(nx, sg.tiles),
      });
    }
  }

  loraShrink(v: Tensor, x: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy): void {
    this.#loraShrinkLike(v, x, { w: s.A, H: d.Hin, sr: d.Hin, sh: 1, se: d.R * d.Hin, coef: false }, s, rt, d, strategy);
  }

  loraExpand(y: Tensor, v: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy): void {
    this.#loraExpandLike(y, v, { w: s.B, H: d.Hout, sr: 1, sh: d.R, se: d.Hout * d.R, coef: true }, s, rt, d, strategy, true);
  }

  loraApply(y: Tensor, v: Tensor, x: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy): void {
    this.loraShrink(v, x, s, rt, d, strategy);
    this.loraExpand(y, v, s, rt, d, strategy);
  }

  loraShrinkGrad(dv: Tensor, dy: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy): void {
    this.#loraShrinkLike(dv, dy, { w: s.B, H: d.Hout, sr: 1, sh: d.R, se: d.Hout * d.R, coef: true }, s, rt, d, strategy);
  }

  loraInputGrad(dx: Tensor, dv: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, strategy: LoraStrategy, accumulate: boolean): void {
    this.#loraExpandLike(dx, dv, { w: s.A, H: d.Hin, sr: d.Hin, sh: 1, se: d.R * d.Hin, coef: false }, s, rt, d, strategy, accumulate);
  }

  loraWeightGrad(dA: Tensor, dB: Tensor, x: Tensor, dy: Tensor, v: Tensor, dv: Tensor, s: LoraStack, rt: LoraRouting, d: LoraDims, accumulate: boolean): void {
    const buf = (t: Tensor) => t.storage as GPUBuffer;
    const sg = this.#loraSegments(rt);
    if (!accumulate) {
      // adapters absent from the batch get zeros (each adapter's block is contiguous)
      const aBytes = d.R * d.Hin * 4, bBytes = d.Hout * d.R * 4;
      const counts = rt.host.counts;
      for (let e = 0; e < d.L; ) {
        if (counts[e]! > 0) { e++; continue; }
        let f = e;
        while (f < d.L && counts[f]! === 0) f++;
        this.#clear(dA, e * aBytes, (f - e) * aBytes);
        this.#clear(dB, e * bBytes, (f - e) * bBytes);
        e = f;
      }
    }
    if (sg.G === 0) return;
    const params = new Uint32Array([d.T, d.K, d.R, d.Hin, d.Hout, sg.G, accumulate ? 1 : 0, 0]).buffer;
    const n = Math.ceil(d.R / LORA_TILE.LORA_RANKS) * sg.G;
    this.dispatch({
      pipeline: this.pipeline('lora_grad', {}, {}, 'dA'),
      buffers: [buf(dA), buf(x), buf(dv), buf(rt.order), buf(sg.table), buf(s.rank)],
      params,
      groups: this.#grid(Math.ceil(d.Hin / LORA_TILE.LORA_OUTS), n),
    });
    this.dispatch({
      pipeline: this.pipeline('lora_grad', {}, {}, 'dB'),
      buffers: [buf(dB), buf(dy), buf(v), buf(rt.order), buf(sg.table), buf(s.rank), buf(s.scale), buf(rt.weight)],
      params,
      groups: this.#grid(Math.ceil(d.Hout / LORA_TILE.LORA_OUTS), n),
    });
  }

  // ---------------------------------------------------------------- model kernels
  // One file per family in kernels/wgsl; the comment at the top of each gives its entry
  // points and launch shapes. Every output element has one owner: no atomics, bit-identical
  // reruns.

  /** Records a dispatch of `entry` in kernels/wgsl/<family>.wgsl. */
  #run(family: string, entry: string, buffers: GPUBuffer[], params: readonly Param[], groups: [number, number, number], weights: Record<string, DType> = {}, consts: Record<string, number> = {}): void {
    this.dispatch({ pipeline: this.pipeline(family, weights, consts, entry), buffers, params: packParams(params), groups });
  }

  /**
   * Storage of a dispatch's inputs. An input that is also one of its outputs is read from a
   * copy: a buffer bound writable may not be bound a second time in the same dispatch.
   */
  #ins(outs: readonly Tensor[], ins: readonly Tensor[]): GPUBuffer[] {
    return ins.map((t) => {
      const src = t.storage as GPUBuffer;
      if (!outs.includes(t)) return src;
      const copy = this.device.createBuffer({ size: src.size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
      this.#encoderFor().copyBufferToBuffer(src, 0, copy, 0, src.size);
      this.#temps.push(copy);
      return copy;
    });
  }

  /**
   * Hands the temporary buffers of an op to the destroy-after-submit list. Called after the
   * op's last dispatch: a flush between two dispatches of one op must not destroy them.
   */
  #endTemps(): void {
    this.#deferredDestroy.push(...this.#temps);
    this.#temps = [];
  }

  /** Workgroups for n items, WG per workgroup, flattened over y·z. */
  #flat(n: number, wg: number): [number, number, number] {
    return this.#grid(1, Math.ceil(n / wg));
  }

  embedding(y: Tensor, ids: Tensor, E: Tensor, d: EmbeddingDims): void {
    this.#run('embedding', 'gather', [y.storage as GPUBuffer, ...this.#ins([y], [ids, E])], [d.T, d.V, d.H, 0, 0], this.#grid(Math.ceil(d.H / 256), d.T), { E: E.dtype });
    this.#endTemps();
  }

  embeddingGrad(dE: Tensor, dy: Tensor, order: Tensor, segStart: Tensor, segIds: Tensor, G: number, d: EmbeddingDims, accumulate: boolean): void {
    // rows of ids absent from the batch are 0: clear all, then each present row is written once
    if (!accumulate) this.#clear(dE);
    if (G === 0) return;
    this.#run('embedding', 'grad', [dE.storage as GPUBuffer, ...this.#ins([dE], [dy, order, segStart, segIds])], [d.T, d.V, d.H, G, accumulate ? 1 : 0],
      this.#grid(Math.ceil(d.H / 256), G), { E: 'f32' });
    this.#endTemps();
  }

  rmsnorm(y: Tensor, rstd: Tensor, x: Tensor, w: Tensor, d: RmsnormDims): void {
    this.#run('rmsnorm', 'fwd', [y.storage as GPUBuffer, rstd.storage as GPUBuffer, ...this.#ins([y, rstd], [x, w])], [d.T, d.H, { f: d.eps }, 0], this.#grid(1, d.T), { w: w.dtype });
    this.#endTemps();
  }

  rmsnormGrad(dx: Tensor, dw: Tensor, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor, d: RmsnormDims, accumulateDw: boolean): void {
    const params: Param[] = [d.T, d.H, { f: d.eps }, accumulateDw ? 1 : 0];
    this.#run('rmsnorm', 'dx', [dx.storage as GPUBuffer, ...this.#ins([dx], [dy, x, w, rstd])], params, this.#grid(1, d.T), { w: w.dtype });
    this.#run('rmsnorm', 'dw', [dw.storage as GPUBuffer, ...this.#ins([dw], [dy, x, rstd])], params, [Math.ceil(d.H / 256), 1, 1], { w: w.dtype });
    this.#endTemps();
  }

  rope(y: Tensor, x: Tensor, positions: Tensor, invFreq: Tensor, d: RopeDims, inverse: boolean): void {
    const params = [d.T, d.heads, d.D, inverse ? 1 : 0];
    const groups = this.#flat(d.T * (d.D / 2), 256);
    if (y === x) this.#run('rope', 'rope_inplace', [y.storage as GPUBuffer, ...this.#ins([y], [positions, invFreq])], params, groups);
    else this.#run('rope', 'rope', [y.storage as GPUBuffer, ...this.#ins([y], [x, positions, invFreq])], params, groups);
    this.#endTemps();
  }

  swiglu(y: Tensor, gate: Tensor, up: Tensor, n: number): void {
    this.#run('swiglu', 'fwd', [y.storage as GPUBuffer, ...this.#ins([y], [gate, up])], [n], this.#flat(n, 256));
    this.#endTemps();
  }

  swigluGrad(dgate: Tensor, dup: Tensor, dy: Tensor, gate: Tensor, up: Tensor, n: number): void {
    const outs = [dgate, dup];
    const [g, u, dyb] = this.#ins(outs, [gate, up, dy]);
    this.#run('swiglu', 'grad', [dgate.storage as GPUBuffer, g!, u!, dup.storage as GPUBuffer, dyb!], [n], this.#flat(n, 256));
    this.#endTemps();
  }

  add(y: Tensor, a: Tensor, b: Tensor, n: number): void {
    const groups = this.#flat(n, 256);
    if (y === a && a === b) this.#run('residual', 'add_self', [y.storage as GPUBuffer], [n], groups);
    else if (y === a) this.#run('residual', 'add_inplace', [y.storage as GPUBuffer, ...this.#ins([y], [b])], [n], groups);
    else this.#run('residual', 'add', [y.storage as GPUBuffer, ...this.#ins([y], [b, a])], [n], groups);
    this.#endTemps();
  }

  logSoftmax(out: Tensor, logits: Tensor, d: XentDims): void {
    this.#run('xent', 'logsoftmax', [out.storage as GPUBuffer, ...this.#ins([out], [logits])], [d.T, d.V, 0, 0], this.#grid(1, d.T));
    this.#endTemps();
  }

  xent(losses: Tensor, lse: Tensor, logits: Tensor, targets: Tensor, mask: Tensor, d: XentDims): void {
    const [lg, tg, mk] = this.#ins([losses, lse], [logits, targets, mask]);
    this.#run('xent', 'xent', [losses.storage as GPUBuffer, lg!, lse.storage as GPUBuffer, tg!, mk!], [d.T, d.V, 0, 0], this.#grid(1, d.T));
    this.#endTemps();
  }

  xentGrad(dlogits: Tensor, logits: Tensor, lse: Tensor, targets: Tensor, mask: Tensor, scale: number, d: XentDims): void {
    this.#run('xent', 'grad', [dlogits.storage as GPUBuffer, ...this.#ins([dlogits], [logits, lse, targets, mask])], [d.T, d.V, { f: scale }, 0],
      this.#grid(Math.ceil(d.V / 256), d.T));
    this.#endTemps();
  }

  adamw(p: Tensor, g: Tensor, m: Tensor, v: Tensor, n: number, s: AdamwScalars): void {
    // 1 − lr·wd, 1 − β1, 1 − β2 in double, as the native binding and torch form them
    const params: Param[] = [n, { f: s.lr }, { f: s.beta1 }, { f: s.beta2 }, { f: s.eps }, { f: 1 - s.lr * s.weightDecay }, { f: 1 - s.beta1 }, { f: 1 - s.beta2 },
      { f: s.bc1 }, { f: s.bc2 }, { f: s.gradScale }, 0];
    const [gb] = this.#ins([p, m, v], [g]);
    this.#run('adamw', 'step', [p.storage as GPUBuffer, gb!, m.storage as GPUBuffer, v.storage as GPUBuffer], params, this.#flat(n, 256));
    this.#endTemps();
  }

  /** Two fixed-order passes (kernels/wgsl/adamw.wgsl partial, finish): B partials in a temporary buffer. */
  sumSquares(out: Tensor, g: Tensor, n: number): void {
    const B = Math.max(1, Math.min(1024, Math.ceil(n / 2048)));
    const part = this.device.createBuffer({ size: B * 4, usage: GPUBufferUsage.STORAGE });
    this.#temps.push(part);
    const [gb] = this.#ins([out], [g]);
    this.#run('adamw', 'partial', [part, gb!], [n, B, 0, 0], [B, 1, 1]);
    this.#run('adamw', 'finish', [out.storage as GPUBuffer, part], [n, B, 0, 0], [1, 1, 1]);
    this.#endTemps();
  }

  /**
   * kernels/wgsl/copy_rows.wgsl on u32 words: copy32 when a row is whole words (4-byte dtypes,
   * or 16-bit ones with even W), copy16 (atomic half-word merges at row edges) otherwise; the
   * _self entries read from dst when dst and src share storage (a buffer bound writable may
   * not be bound a second time; the op has checked that no row is both read and written).
   */
  copyRows(dst: Tensor, src: Tensor, dstRows: Tensor, srcRows: Tensor, d: CopyRowsDims): void {
    const half = dst.dtype === 'f16' || dst.dtype === 'bf16';
    const odd = half && d.W % 2 === 1;
    const U = !half ? d.W : odd ? (d.W + 1) / 2 : d.W / 2; // words a row spans
    const self = dst.storage === src.storage;
    const bufs = [dst.storage as GPUBuffer, dstRows.storage as GPUBuffer, srcRows.storage as GPUBuffer];
    if (!self) bufs.push(src.storage as GPUBuffer);
    this.#run('copy_rows', `${odd ? 'copy16' : 'copy32'}${self ? '_self' : ''}`, bufs, [d.N, d.W, U, 0], this.#grid(Math.ceil(U / 256), d.N));
  }

  /**
   * The `aux` buffer of kernels/wgsl/attention.wgsl: the layout's seven i32 tensors copied
   * one after another, then `extra` words (lse and delta for the backward). Freed after submit.
   */
  #attentionAux(l: AttentionLayout, d: AttentionDims, extra: number): { buf: GPUBuffer; params: Param[]; end: number } {
    const parts = [l.qSeq, l.qPos, l.kSeq, l.kPos, l.qSeg, l.kSeg, l.blocked];
    const offs: number[] = [];
    let words = 0;
    for (const t of parts) { offs.push(words); words += t.size; }
    const end = words;
    const buf = this.device.createBuffer({ size: (words + extra) * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
    const enc = this.#encoderFor();
    parts.forEach((t, i) => enc.copyBufferToBuffer(t.storage as GPUBuffer, 0, buf, offs[i]! * 4, t.size * 4));
    this.#temps.push(buf);
    const params: Param[] = [d.Tq, d.Tk, d.nH, d.nKv, d.D, d.S, { f: d.scale }, d.nH / d.nKv, offs[1]!, offs[2]!, offs[3]!, offs[4]!, offs[5]!, offs[6]!, end, end + d.Tq * d.nH];
    return { buf, params, end };
  }

  attention(out: Tensor, lse: Tensor, q: Tensor, k: Tensor, v: Tensor, l: AttentionLayout, d: AttentionDims): void {
    const consts = { DU: Math.ceil(d.D / 64) };
    const aux = this.#attentionAux(l, d, 0);
    this.#run('attention', 'fwd', [out.storage as GPUBuffer, lse.storage as GPUBuffer, ...this.#ins([out, lse], [q, k, v]), aux.buf], aux.params, this.#grid(1, d.Tq * d.nH), {}, consts);
    this.#endTemps();
  }

  attentionGrad(dq: Tensor, dk: Tensor, dv: Tensor, dOut: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, l: AttentionLayout, d: AttentionDims): void {
    const consts = { DU: Math.ceil(d.D / 64) };
    const rows = d.Tq * d.nH;
    const aux = this.#attentionAux(l, d, 2 * rows);
    this.#encoderFor().copyBufferToBuffer(lse.storage as GPUBuffer, 0, aux.buf, aux.end * 4, rows * 4);
    const outs = [dq, dk, dv];
    const [qb, kb, vb, dOb, ob] = this.#ins(outs, [q, k, v, dOut, out]);
    this.#run('attention', 'delta', [aux.buf, dOb!, ob!], aux.params, this.#flat(rows, 64), {}, consts);
    this.#run('attention', 'dq', [dq.storage as GPUBuffer, dOb!, qb!, kb!, vb!, aux.buf], aux.params, this.#grid(1, rows), {}, consts);
    this.#run('attention', 'dkv', [dk.storage as GPUBuffer, dv.storage as GPUBuffer, qb!, kb!, vb!, aux.buf, dOb!], aux.params, this.#grid(1, d.Tk * d.nKv), {}, consts);
    this.#endTemps();
  }
}
