import { ArgumentError, BackendUnavailableError, describe } from '../errors.js';
import type { Backend, BackendKind, BackendRequest } from './backend.js';
import { NativeBackend } from './native.js';
import { WebGPUBackend, type WebGPUOptions } from './webgpu.js';

export interface OpenOptions extends WebGPUOptions {
  /** cpu backend: number of worker threads (default: all hardware threads). */
  threads?: number;
}

export const BACKEND_KINDS: readonly BackendKind[] = ['cpu', 'webgpu', 'cuda'];

/**
 * Opens a backend. 'auto' tries cuda, then a hardware WebGPU adapter, then cpu; a software
 * WebGPU adapter (lavapipe) is used only when 'webgpu' is asked for by name.
 */
export async function openBackend(kind: BackendRequest = 'auto', opts: OpenOptions = {}): Promise<Backend> {
  switch (kind) {
    case 'cpu':
    case 'cuda':
      return NativeBackend.open(kind, opts);
    case 'webgpu':
      return WebGPUBackend.open(opts);
    case 'auto': {
      const reasons: string[] = [];
      for (const k of ['cuda', 'webgpu', 'cpu'] as const) {
        try {
          return k === 'webgpu' ? await WebGPUBackend.open({ ...opts, requireHardware: true }) : NativeBackend.open(k, opts);
        } catch (e) {
          if (!(e instanceof BackendUnavailableError)) throw e;
          reasons.push(e.message);
        }
      }
      throw new BackendUnavailableError('auto', `no backend could start:\n  ${reasons.join('\n  ')}`);
    }
    default:
      throw new ArgumentError(`openBackend: kind: expected 'cpu', 'webgpu', 'cuda' or 'auto', got ${describe(kind)}`);
  }
}

export interface Availability {
  kind: BackendKind;
  available: boolean;
  /** Present when available. */
  info?: ReturnType<Backend['info']>;
  /** Why not, when unavailable. */
  reason?: string;
}

/** Tries every backend and reports what it found; every backend opened is destroyed again. */
export async function probeBackends(opts: OpenOptions = {}): Promise<Availability[]> {
  const out: Availability[] = [];
  for (const kind of BACKEND_KINDS) {
    try {
      const b = await openBackend(kind, opts);
      out.push({ kind, available: true, info: b.info() });
      b.destroy();
    } catch (e) {
      if (!(e instanceof BackendUnavailableError)) throw e;
      out.push({ kind, available: false, reason: e.reason });
    }
  }
  return out;
}
