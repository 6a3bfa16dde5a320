// Float64 finite differences and a max-norm closeness check for the reference tests
// (no backend is opened here).
import assert from 'node:assert/strict';

/** Central differences of f with respect to every entry of `p` (perturbed in place, restored). */
export function fd(p: Float64Array, f: () => number, h = 1e-5): Float64Array {
  const g = new Float64Array(p.length);
  for (let i = 0; i < p.length; i++) {
    const keep = p[i]!;
    p[i] = keep + h;
    const up = f();
    p[i] = keep - h;
    const down = f();
    p[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

/** max |got − want| ≤ tol · max |want| (and want is not all zeros). */
export function assertClose(name: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number): void {
  assert.equal(got.length, want.length, `${name}: length`);
  let maxRef = 0,
    maxErr = 0,
    at = -1;
  for (let i = 0; i < want.length; i++) {
    maxRef = Math.max(maxRef, Math.abs(want[i]!));
    const e = Math.abs(got[i]! - want[i]!);
    if (!(e <= maxErr)) {
      maxErr = e;
      at = i;
    }
  }
  assert.ok(maxRef > 0, `${name}: reference is all zeros (test would be vacuous)`);
  assert.ok(maxErr <= tol * maxRef, `${name}: max |err| ${maxErr} at ${at} (got ${got[at]}, want ${want[at]}) > ${tol}·${maxRef}`);
}
