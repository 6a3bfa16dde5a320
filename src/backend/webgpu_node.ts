// The WebGPU backend's host in Node: Dawn (the `webgpu` package) and the kernels/wgsl files
// shipped with the package.
import { tmpdir } from 'node:os';
import { BackendUnavailableError } from '../errors.js';
import type { WebGPUHost, WebGPUOptions } from './webgpu.js';
import { readWgslFile } from './wgsl_node.js';
import { loadAddon } from './native.js';

// One Dawn instance per set of options for the whole process: a second instance created
// after the first one's device was destroyed stops keeping the event loop alive (the
// process then exits while mapAsync is pending). A referenced instance with nothing
// pending does not keep the process alive.
const dawnInstances = new Map<string, GPU>();

async function dawnGPU(opts: WebGPUOptions): Promise<GPU> {
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

/**
 * Dawn prints warnings of its own on stderr when it creates an adapter (on lavapipe:
 * "maxDynamic… artificially reduced"): the native addon, when present, points fd 2 at
 * /dev/null around that call; MOTE_DEBUG=1 shows them.
 */
async function quietly<T>(body: () => Promise<T>): Promise<T> {
  const quiet = process.env.MOTE_DEBUG ? undefined : (loadAddon().addon as { quietStderr?: (on: boolean) => void } | null)?.quietStderr;
  if (!quiet) return body();
  quiet(true);
  try {
    return await body();
  } finally {
    quiet(false);
  }
}

export const nodeWebGPUHost: WebGPUHost = { gpu: dawnGPU, readWgsl: readWgslFile, quietly };
