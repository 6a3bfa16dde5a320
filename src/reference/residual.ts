// Float64 reference for the residual family: y = a + b. Its backward is the identity on both
// inputs (da = db = dy), so there is no separate backward function.

/** y = a + b, elementwise. a, b: [N] → y: [N] (N = T·H for a residual stream). */
export function residualAddRef(a: ArrayLike<number>, b: ArrayLike<number>, N: number): Float64Array {
  if (a.length !== N) throw new Error(`residual reference: a: expected ${N} entries, got ${a.length}`);
  if (b.length !== N) throw new Error(`residual reference: b: expected ${N} entries, got ${b.length}`);
  const y = new Float64Array(N);
  for (let i = 0; i < N; i++) y[i] = a[i]! + b[i]!;
  return y;
}
