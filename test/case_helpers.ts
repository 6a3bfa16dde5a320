// Shared plumbing for the per-op case tests (embedding, rmsnorm, rope, attention, swiglu,
// residual, xent, adamw): every failure of a case is collected so one run names them all.
import assert from 'node:assert/strict';
import type { DType } from '../src/dtype.js';
import { BackendUnavailableError, type MoteError } from '../src/errors.js';
import type { Backend } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { poisoned } from './helpers.js';

/** Default relative-error bound of `Report.close` (the value every case file used). */
export const CASE_TOL = 1e-5;

export class Report {
  readonly fails: string[] = [];
  constructor(readonly label: string) {}
  close(what: string, out: ArrayLike<number>, ref: ArrayLike<number>, live?: (i: number) => boolean, tol = CASE_TOL): void {
    if (out.length !== ref.length) {
      this.fails.push(`${what}: length ${out.length}, expected ${ref.length}`);
      return;
    }
    let num = 0,
      den = 0;
    for (let i = 0; i < ref.length; i++) {
      if (live && !live(i)) continue;
      if (!Number.isFinite(out[i]!)) {
        this.fails.push(`${what}: non-finite output at ${i} (${out[i]}), reference ${ref[i]}`);
        return;
      }
      num += (out[i]! - ref[i]!) ** 2;
      den += ref[i]! ** 2;
    }
    const e = den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
    if (!(e <= tol)) this.fails.push(`${what}: relative error ${e.toExponential(2)} > ${tol}`);
  }
  /** out[i] === want[i] (bitwise, NaN never equal) for every i where `where(i)`. */
  exact(what: string, out: ArrayLike<number>, want: ArrayLike<number> | number, where: (i: number) => boolean = () => true): void {
    for (let i = 0; i < out.length; i++) {
      if (!where(i)) continue;
      const w = typeof want === 'number' ? want : want[i]!;
      if (!(out[i] === w)) {
        this.fails.push(`${what}: entry ${i} must be exactly ${w}, got ${out[i]}`);
        return;
      }
    }
  }
  async step(what: string, f: () => Promise<void>): Promise<void> {
    try {
      await f();
    } catch (e) {
      if (e instanceof BackendUnavailableError) throw e;
      this.fails.push(`${what}: threw ${(e as Error)?.stack ?? e}`);
    }
  }
  done(): void {
    assert.deepEqual(this.fails, [], `${this.label}:\n  ${this.fails.join('\n  ')}`);
  }
}

export class Pool {
  readonly ts: { dispose(): void }[] = [];
  constructor(readonly b: Backend) {}
  t(data: Float32Array | Int32Array, shape: number[], dtype: DType = 'f32'): Tensor {
    return this.keep(this.b.tensor(data, shape, dtype));
  }
  poison(shape: number[]): Tensor {
    return this.t(poisoned(shape.reduce((a, c) => a * c, 1)), shape);
  }
  keep<T extends { dispose(): void }>(t: T): T {
    this.ts.push(t);
    return t;
  }
  dispose(): void {
    for (const t of this.ts) t.dispose();
  }
}

export const bitsEqual = (a: Float32Array, c: Float32Array): boolean =>
  a.length === c.length &&
  new Uint32Array(a.buffer, a.byteOffset, a.length).every((v, i) => v === new Uint32Array(c.buffer, c.byteOffset, c.length)[i]);

export function throwsLike(f: () => unknown, cls: new (...a: never[]) => MoteError, re: RegExp, what: string): void {
  assert.throws(
    f,
    (e: unknown) => {
      assert.ok(e instanceof cls, `${what}: expected ${cls.name}, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
      assert.match((e as Error).message, re, `${what}: message`);
      return true;
    },
    what,
  );
}

export async function rejectsLike(
  f: () => Promise<unknown>,
  cls: new (...a: never[]) => MoteError,
  re: RegExp,
  what: string,
): Promise<void> {
  await assert.rejects(
    f,
    (e: unknown) => {
      assert.ok(e instanceof cls, `${what}: expected ${cls.name}, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
      assert.match((e as Error).message, re, `${what}: message`);
      return true;
    },
    what,
  );
}
