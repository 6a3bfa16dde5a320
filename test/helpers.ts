// Shared test plumbing: which backends to run on, random data, relative error.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mulberry32 } from '../src/rng.js';
import { test } from 'node:test';
import { openBackend } from '../src/backend/select.js';
import { BackendUnavailableError, MoteError } from '../src/errors.js';
import type { Backend, BackendKind } from '../src/backend/backend.js';

const ALL: BackendKind[] = ['cpu', 'webgpu', 'cuda'];
/** Backends that must be present (CI sets MOTE_REQUIRE_BACKENDS=cpu,webgpu): absence fails. */
export const REQUIRED = new Set(
  (process.env.MOTE_REQUIRE_BACKENDS ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean),
);
/** MOTE_TEST_BACKENDS=cpu,webgpu limits the run to these. */
const ONLY = process.env.MOTE_TEST_BACKENDS ? new Set(process.env.MOTE_TEST_BACKENDS.split(',').map((s) => s.trim())) : null;

const opened = new Map<BackendKind, Promise<Backend | string>>();

/** Opens each backend once per test file; a string is the reason it is unavailable. */
export function backendFor(kind: BackendKind): Promise<Backend | string> {
  let p = opened.get(kind);
  if (!p) {
    p = openBackend(kind).catch((e) => {
      if (e instanceof BackendUnavailableError) return e.reason;
      throw e;
    });
    opened.set(kind, p);
  }
  return p;
}

// Every test file opens the backends it may use once, up front, so that tests can be
// registered per available backend and an absent one is reported by a single line.
const KINDS = ALL.filter((k) => !ONLY || ONLY.has(k));
const status = new Map<BackendKind, Backend | string>(await Promise.all(KINDS.map(async (k) => [k, await backendFor(k)] as const)));
const reportedMissing = new Set<BackendKind>();

/**
 * Runs `body` once per backend as a test named after it. An absent backend is skipped
 * with one line per file saying why, unless it is required, in which case its tests fail.
 */
export function forEachBackend(name: string, body: (b: Backend) => Promise<void>, opts: { kinds?: BackendKind[] } = {}): void {
  for (const kind of opts.kinds ?? KINDS) {
    const b = status.get(kind);
    if (b === undefined) continue;
    if (typeof b === 'string') {
      if (REQUIRED.has(kind)) {
        test(`${name} [${kind}]`, () => {
          throw new Error(`required backend ${kind} is unavailable: ${b}`);
        });
      } else if (!reportedMissing.has(kind)) {
        reportedMissing.add(kind);
        test(`${kind} tests`, (t) => {
          t.skip(`${kind} unavailable: ${b}`);
        });
      }
      continue;
    }
    test(`${name} [${kind}]`, () => body(b));
  }
}

/** Destroys every backend opened by this file (call from after()). */
export async function closeBackends(): Promise<void> {
  for (const p of opened.values()) {
    const b = await p;
    if (typeof b !== 'string') b.destroy();
  }
  opened.clear();
}

/** Deterministic uniform random numbers in [0, 1) (mulberry32). */
export const rng = mulberry32;

export { randn, relErr } from './numeric.js';

/** Relative-error bound per weight dtype (DESIGN §5). */
export function tolerance(dtype: string): number {
  return dtype === 'f32' ? 1e-5 : 1e-2;
}

/** A value written into outputs before a kernel runs, so unwritten entries show. */
export const POISON = NaN;
export function poisoned(n: number): Float32Array {
  return new Float32Array(n).fill(POISON);
}

/** Counts the backend's live storage allocations made while it runs; optionally fails the n-th allocation. */
export async function tracking<T>(b: Backend, body: (live: Set<unknown>) => Promise<T>, failAt?: number): Promise<T> {
  const live = new Set<unknown>();
  const alloc = b.allocStorage;
  const free = b.freeStorage;
  let n = 0;
  b.allocStorage = function (bytes: number, rowBytes?: number): unknown {
    if (++n === failAt) throw new MoteError(`test: allocation ${n} fails on purpose`);
    const s = alloc.call(b, bytes, rowBytes);
    live.add(s);
    return s;
  };
  b.freeStorage = function (s: unknown): void {
    live.delete(s);
    free.call(b, s);
  };
  try {
    return await body(live);
  } finally {
    delete (b as unknown as Record<string, unknown>).allocStorage;
    delete (b as unknown as Record<string, unknown>).freeStorage;
    if (b.allocStorage !== alloc) {
      b.allocStorage = alloc;
      b.freeStorage = free;
    }
  }
}

/** Every file under `dir` (hidden ones included) → SHA-256 of its bytes: to show a folder was left as it was. */
export function hashTree(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string) => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(r);
      else
        out.set(
          r,
          crypto
            .createHash('sha256')
            .update(fs.readFileSync(path.join(dir, r)))
            .digest('hex'),
        );
    }
  };
  walk('');
  return out;
}
