// Node built-ins reached at first use instead of by `import ... from 'node:...'`: the modules
// that read and write files (files.ts, safetensors.ts, atomic_dir.ts, the loaders and savers)
// then have no node:* import in their module graph, so a browser bundle of the loaders pulls
// none, while in Node every path-taking function works exactly as before. In a browser a
// function that needs a path fails at its first file-system call with a clear ArgumentError.

import { ArgumentError } from '../errors.js';

interface BuiltinHost {
  getBuiltinModule?: (id: string) => object | undefined;
}

/** True when Node's built-ins can be reached (Node ≥ 20.16 / 22.3). */
export function hasNodeBuiltins(): boolean {
  const p = (globalThis as { process?: BuiltinHost }).process;
  return typeof p?.getBuiltinModule === 'function';
}

/**
 * The Node built-in `id` ('node:fs', 'node:path', 'node:crypto'), resolved on the first
 * property access. Use it only for modules whose every function needs Node anyway.
 */
export function nodeBuiltin<T extends object>(id: string): T {
  let real: T | undefined;
  const load = (): T => {
    if (real) return real;
    const p = (globalThis as { process?: BuiltinHost }).process;
    const m = typeof p?.getBuiltinModule === 'function' ? p.getBuiltinModule(id) : undefined;
    if (!m) {
      throw new ArgumentError(
        `${id} is not available here: file paths work only in Node; ` +
          'pass a URL, File/Blob map, bytes or an OPFS folder instead (see openSource / openSink)',
      );
    }
    return (real = m as T);
  };
  return new Proxy({} as T, {
    get: (_t, k) => (load() as Record<string | symbol, unknown>)[k],
    has: (_t, k) => k in load(),
  });
}
