// What openBackend shares in Node (src/backend/select.ts) and in the browser
// (src/web/backend.ts): the kinds, the checks of the kind and of a handed-in GPUDevice, and
// probeBackends. No Node built-ins here.
import { ArgumentError, BackendUnavailableError, describe } from '../errors.js';
import type { Backend, BackendKind, BackendRequest } from './backend.js';

export const BACKEND_KINDS: readonly BackendKind[] = ['cpu', 'webgpu', 'cuda'];

/** openBackend's `kind`: a backend kind or 'auto'. */
export function checkBackendKind(op: string, kind: unknown): BackendRequest {
  if (typeof kind !== 'string' || !['cpu', 'webgpu', 'cuda', 'auto'].includes(kind)) {
    throw new ArgumentError(`${op}: kind: expected 'cpu', 'webgpu', 'cuda' or 'auto', got ${describe(kind)}`);
  }
  return kind as BackendRequest;
}

/** openBackend's webgpu limits: maxBindingBytes (≥ 1 KiB) and maxDispatchWork (≥ 1), integers when given. */
export function checkLimitOptions(op: string, opts: { maxBindingBytes?: unknown; maxDispatchWork?: unknown }): void {
  for (const [k, lo] of [
    ['maxBindingBytes', 1024],
    ['maxDispatchWork', 1],
  ] as const) {
    const v = opts[k];
    if (v !== undefined && (!Number.isSafeInteger(v) || (v as number) < lo))
      throw new ArgumentError(`${op}: ${k}: expected an integer ≥ ${lo}, got ${describe(v)}`);
  }
}

/** openBackend's `device` option: absent, or something with createBuffer (a GPUDevice). */
export function checkDeviceOption(op: string, device: unknown): void {
  if (
    device !== undefined &&
    (device === null || typeof device !== 'object' || typeof (device as { createBuffer?: unknown }).createBuffer !== 'function')
  ) {
    throw new ArgumentError(`${op}: device: expected a GPUDevice, got ${describe(device)}`);
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

/** Opens every kind with `open` and reports what it found; every backend opened is destroyed again. */
export async function probeWith(open: (kind: BackendKind) => Promise<Backend>): Promise<Availability[]> {
  const out: Availability[] = [];
  for (const kind of BACKEND_KINDS) {
    try {
      const b = await open(kind);
      out.push({ kind, available: true, info: b.info() });
      b.destroy();
    } catch (e) {
      if (!(e instanceof BackendUnavailableError)) throw e;
      out.push({ kind, available: false, reason: e.reason });
    }
  }
  return out;
}
