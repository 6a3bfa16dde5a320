/// <reference types="@webgpu/types" preserve="true" />
// openBackend in the browser: webgpu only, on navigator.gpu or a GPUDevice handed in, with
// the WGSL embedded in the bundle. cpu and cuda need the Node addon.
import wgslSources from 'mote:wgsl-sources';
import { BackendUnavailableError } from '../errors.js';
import type { Backend, BackendRequest } from '../backend/backend.js';
import { checkBackendKind, checkDeviceOption, checkLimitOptions, probeWith, type Availability } from '../backend/kinds.js';
import { WebGPUBackend, type WebGPUHost, type WebGPUOptions } from '../backend/webgpu.js';
import type { WgslReader } from '../backend/wgsl.js';
import { checkBool, checkOpts } from '../ops/check.js';

export { BACKEND_KINDS, type Availability } from '../backend/kinds.js';

const readEmbedded: WgslReader = (path) => {
  const s = wgslSources[path];
  if (s === undefined) throw new Error(`internal: kernels/wgsl/${path} is not in the bundle`);
  return s;
};

const webHost: WebGPUHost = {
  async gpu() {
    const gpu = (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
    if (!gpu) {
      const secure = (globalThis as { isSecureContext?: boolean }).isSecureContext;
      throw new BackendUnavailableError(
        'webgpu',
        secure === false
          ? 'navigator.gpu is missing: WebGPU needs a secure context (https or http://localhost)'
          : 'navigator.gpu is missing: this browser has no WebGPU (Chromium on Linux: --enable-unsafe-webgpu)',
      );
    }
    return gpu;
  },
  readWgsl: readEmbedded,
};

/** The options the browser's openBackend takes: those of webgpu (Dawn's are ignored). */
export type OpenOptions = Pick<WebGPUOptions, 'device' | 'requireHardware' | 'maxBindingBytes' | 'maxDispatchWork'>;

/**
 * Opens a backend in the browser. 'webgpu' and 'auto' open navigator.gpu's adapter (or use
 * `options.device`); 'cpu' and 'cuda' throw BackendUnavailableError.
 */
export async function openBackend(kind: BackendRequest = 'auto', options?: OpenOptions): Promise<Backend> {
  const op = 'openBackend';
  checkBackendKind(op, kind);
  const opts = checkOpts(op, 'opts', options) as OpenOptions;
  checkBool(op, 'requireHardware', opts.requireHardware);
  checkDeviceOption(op, opts.device);
  checkLimitOptions(op, opts);
  if (kind === 'cpu' || kind === 'cuda') {
    throw new BackendUnavailableError(kind, `the ${kind} backend needs mote's Node addon; in the browser only 'webgpu' exists`);
  }
  const { device, requireHardware, maxBindingBytes, maxDispatchWork } = opts;
  return WebGPUBackend.open({ device, requireHardware, maxBindingBytes, maxDispatchWork }, webHost);
}

/** Tries every backend and reports what it found; every backend opened is destroyed again. */
export async function probeBackends(options?: OpenOptions): Promise<Availability[]> {
  return probeWith((kind) => openBackend(kind, options));
}
