// Random test data and the relative error, with no Node imports: shared by helpers.ts (the
// Node tests) and kernel_cases.ts (also bundled into the browser test page).

export function randn(r: () => number, n: number, scale = 1): Float32Array {
  // never zeros: uniform in ±[0.05, 1]·scale
  return Float32Array.from({ length: n }, () => (r() < 0.5 ? -1 : 1) * (0.05 + 0.95 * r()) * scale);
}

/** ‖out − ref‖ / ‖ref‖; NaN anywhere in out gives Infinity. */
export function relErr(out: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (out.length !== ref.length) throw new Error(`length mismatch: ${out.length} vs ${ref.length}`);
  let num = 0,
    den = 0;
  for (let i = 0; i < ref.length; i++) {
    const o = out[i]!;
    if (!Number.isFinite(o)) return Infinity;
    num += (o - ref[i]!) ** 2;
    den += ref[i]! ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}
