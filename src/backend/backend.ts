import type { DType, HostData } from '../dtype.js';
import type { Tensor } from '../tensor.js';
import type { MatmulKernels } from '../ops/matmul.js';
import type { LoraKernels } from '../ops/lora.js';
import type { ModelKernels } from '../ops/model_kernels.js';

export type BackendKind = 'cpu' | 'webgpu' | 'cuda';
export type BackendRequest = BackendKind | 'auto';

export interface BackendInfo {
  name: BackendKind;
  /** Human-readable device: CPU model, GPU name, adapter description. */
  device: string;
  /** True for software adapters such as Mesa lavapipe. */
  software: boolean;
  /** Capabilities that matter to kernels: shader-f16, subgroups, timestamp-query, avx2, ... */
  features: string[];
  /** Device memory in bytes where known (GPU memory, or host RAM for cpu). */
  memoryBytes?: number;
  /** Anything else the backend knows (threads, compute capability, limits). */
  details: Record<string, unknown>;
}

/** Every kernel family a backend implements. Arguments are already checked by src/ops. */
export interface Kernels extends MatmulKernels, LoraKernels, ModelKernels {}

/**
 * A compute backend. Tensors are created through it and live on it; the kernels take
 * tensors that src/ops has already validated.
 */
export interface Backend extends Kernels {
  readonly kind: BackendKind;
  info(): BackendInfo;
  /** Creates a tensor from host data (floats for f32/f16/bf16, integers for i32, raw bits as Uint16Array for f16/bf16). */
  tensor(data: HostData, shape: readonly number[], dtype?: DType): Tensor;
  /** Creates an uninitialised tensor. */
  empty(shape: readonly number[], dtype?: DType): Tensor;
  /** Creates a tensor of zeros. */
  zeros(shape: readonly number[], dtype?: DType): Tensor;
  /** Device buffers this backend holds now (tensors not yet disposed), for leak checks. */
  memoryInUse(): { buffers: number; bytes: number };
  /** Resolves when all work submitted so far has finished. */
  sync(): Promise<void>;
  /** Frees every tensor of this backend and releases the device (a device handed in stays its owner's). Safe to call twice. */
  dispose(): void;
  /** dispose(), for `using backend = await openBackend(…)`. */
  [Symbol.dispose](): void;
  /** The same as dispose() (the name WebGPU uses for devices). */
  destroy(): void;
  readonly destroyed: boolean;

  /** @internal storage management used by Tensor; rowBytes: the bytes of a row of the first dimension (a backend may split storage there) */
  allocStorage(byteLength: number, rowBytes?: number): unknown;
  /** @internal */
  writeStorage(storage: unknown, bytes: Uint8Array): void;
  /** @internal */
  readStorage(storage: unknown, byteLength: number): Promise<ArrayBuffer>;
  /** @internal */
  freeStorage(storage: unknown): void;
}
