// WebGPU backend: Dawn (the `webgpu` package) in Node, navigator.gpu elsewhere, or a
// GPUDevice handed in by the caller. Kernels come from kernels/wgsl.
import { tmpdir } from 'node:os';
import { BackendUnavailableError, NativeError } from '../errors.js';
import type { DType, HostData } from '../dtype.js';
import { makeTensor, type Tensor } from '../tensor.js';
import type { MatmulDims } from '../ops/matmul.js';
import type { Backend, BackendInfo } from './backend.js';
import { specialise } from './wgsl.js';

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
    return makeTensor(this, data, shape, dtype);
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

  writeStorage(storage: unknown, bytes: Uint8Array): void {
    this.flush(); // queue writes run before unsubmitted work: submit what was recorded first
    const n = bytes.byteLength;
    if (n % 4 === 0) this.device.queue.writeBuffer(storage as GPUBuffer, 0, bytes.buffer, bytes.byteOffset, n);
    else {
      const padded = new Uint8Array(Math.ceil(n / 4) * 4);
      padded.set(bytes);
      this.device.queue.writeBuffer(storage as GPUBuffer, 0, padded.buffer, 0, padded.byteLength);
    }
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
  }

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#encoder = null;
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
      const module = this.device.createShaderModule({ code: specialise(family, weights, consts), label: key });
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
}
