import { ArgumentError, BackendUnavailableError, describe } from '../errors.js';
import type { Backend, BackendRequest } from './backend.js';
import { checkBackendKind, checkDeviceOption, checkLimitOptions, probeWith, type Availability } from './kinds.js';
import { NativeBackend } from './native.js';
import { WebGPUBackend, type WebGPUOptions } from './webgpu.js';
import { nodeWebGPUHost } from './webgpu_node.js';
import { checkBool, checkInt, checkKnownKeys, checkOpts } from '../ops/check.js';

export interface OpenOptions extends WebGPUOptions {
  /** cpu backend: number of worker threads (default: all hardware threads). */
  threads?: number;
}

export { BACKEND_KINDS, type Availability } from './kinds.js';

/**
 * Opens a backend. 'auto' tries cuda, then a hardware WebGPU adapter, then cpu, and only then
 * a software WebGPU adapter (lavapipe), with a one-line notice on stderr.
 */
export async function openBackend(kind: BackendRequest = 'auto', options?: OpenOptions): Promise<Backend> {
  checkBackendKind('openBackend', kind);
  const opts = checkOpenOptions(options);
  switch (kind) {
    case 'cpu':
    case 'cuda':
      return NativeBackend.open(kind, opts);
    case 'webgpu':
      return WebGPUBackend.open(opts, nodeWebGPUHost);
    case 'auto': {
      const reasons: string[] = [];
      for (const k of ['cuda', 'webgpu', 'cpu'] as const) {
        try {
          return k === 'webgpu'
            ? await WebGPUBackend.open({ ...opts, requireHardware: true }, nodeWebGPUHost)
            : NativeBackend.open(k, opts);
        } catch (e) {
          if (!(e instanceof BackendUnavailableError)) throw e;
          reasons.push(e.message);
        }
      }
      // Last: a software WebGPU adapter (lavapipe, SwiftShader). Slow, but it runs every kernel,
      // so a machine without the addon and without a GPU still works — with a notice saying so.
      try {
        const b = await WebGPUBackend.open(opts, nodeWebGPUHost);
        console.warn(
          `mote: no GPU and no cpu addon here; using the software WebGPU adapter (${b.info().device}), which is slow. ` +
            `Build the addon (npm rebuild mote-lora) for the cpu backend.`,
        );
        return b;
      } catch (e) {
        if (!(e instanceof BackendUnavailableError)) throw e;
        reasons.push(e.message);
      }
      throw new BackendUnavailableError('auto', `no backend could start:\n  ${reasons.join('\n  ')}`);
    }
    default:
      throw new ArgumentError(`openBackend: kind: expected 'cpu', 'webgpu', 'cuda' or 'auto', got ${describe(kind)}`);
  }
}

const OPEN_OPTION_KEYS = ['threads', 'device', 'adapter', 'requireHardware', 'dawnOptions', 'maxBindingBytes', 'maxDispatchWork'];

/** Checks openBackend's options before any device is touched. */
function checkOpenOptions(options: OpenOptions | undefined): OpenOptions {
  const op = 'openBackend';
  const opts = checkOpts(op, 'opts', options);
  checkKnownKeys(op, opts, OPEN_OPTION_KEYS);
  if (opts.threads !== undefined) checkInt(op, 'threads', opts.threads, 1, 4096);
  if (opts.adapter !== undefined && typeof opts.adapter !== 'string')
    throw new ArgumentError(`${op}: adapter: expected a string, got ${describe(opts.adapter)}`);
  checkBool(op, 'requireHardware', opts.requireHardware);
  if (opts.dawnOptions !== undefined && (!Array.isArray(opts.dawnOptions) || opts.dawnOptions.some((o) => typeof o !== 'string'))) {
    throw new ArgumentError(`${op}: dawnOptions: expected an array of strings, got ${describe(opts.dawnOptions)}`);
  }
  checkDeviceOption(op, opts.device);
  checkLimitOptions(op, opts);
  return opts;
}

/** Tries every backend and reports what it found; every backend opened is destroyed again. */
export async function probeBackends(options?: OpenOptions): Promise<Availability[]> {
  const opts = checkOpenOptions(options);
  return probeWith((kind) => openBackend(kind, opts));
}
