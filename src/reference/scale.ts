// Float64 reference for the scale family: y = alpha · x, elementwise. Its backward is itself
// (dx = alpha · dy), so there is no separate backward function.

/** y = alpha · x over N values. */
export function scaleRef(x: ArrayLike<number>, alpha: number, N: number): Float64Array {
  if (x.length !== N) throw new Error(`scale reference: x: expected ${N} entries, got ${x.length}`);
  const y = new Float64Array(N);
  for (let i = 0; i < N; i++) y[i] = alpha * x[i]!;
  return y;
}
