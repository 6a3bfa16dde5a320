// Float64 reference for the rmsnorm family (HF LlamaRMSNorm): plain loops, written to be
// read, not to be fast.
//   x: [T, H], w: [H]
//   r[t]   = 1 / sqrt(mean_h x[t,h]² + eps)
//   y[t,h] = x[t,h] · r[t] · w[h]

function need(name: string, a: ArrayLike<number>, n: number): void {
  if (a.length !== n) throw new Error(`rmsnorm reference: ${name}: expected ${n} entries, got ${a.length}`);
}

/** r[t] = 1 / sqrt(mean_h x[t,h]² + eps). x: [T, H] → r: [T] (what a kernel keeps for backward). */
export function rmsnormRstdRef(x: ArrayLike<number>, T: number, H: number, eps: number): Float64Array {
  need('x', x, T * H);
  const r = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let h = 0; h < H; h++) ss += x[t * H + h]! * x[t * H + h]!;
    r[t] = 1 / Math.sqrt(ss / H + eps);
  }
  return r;
}

/** y[t,h] = x[t,h] / sqrt(mean_h x[t,:]² + eps) · w[h]. x: [T, H], w: [H] → y: [T, H]. */
export function rmsnormRef(x: ArrayLike<number>, w: ArrayLike<number>, T: number, H: number, eps: number): Float64Array {
  need('w', w, H);
  const r = rmsnormRstdRef(x, T, H, eps);
  const y = new Float64Array(T * H);
  for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) y[t * H + h] = x[t * H + h]! * r[t]! * w[h]!;
  return y;
}

/**
 * Gradients of a loss given dy = ∂ℓ/∂y, with g[t,h] = dy[t,h]·w[h]:
 *   dx[t,h] = r[t]·g[t,h] − r[t]³·x[t,h]·(Σ_j g[t,j]·x[t,j]) / H
 *   dw[h]   = Σ_t dy[t,h]·x[t,h]·r[t]
 * x, dy: [T, H], w: [H] → dx: [T, H], dw: [H].
 */
export function rmsnormBackwardRef(
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  T: number,
  H: number,
  eps: number,
): { dx: Float64Array; dw: Float64Array } {
  need('dy', dy, T * H);
  need('w', w, H);
  const r = rmsnormRstdRef(x, T, H, eps);
  const dx = new Float64Array(T * H);
  const dw = new Float64Array(H);
  for (let t = 0; t < T; t++) {
    const rt = r[t]!;
    let gx = 0;
    for (let h = 0; h < H; h++) gx += dy[t * H + h]! * w[h]! * x[t * H + h]!;
    for (let h = 0; h < H; h++) {
      const i = t * H + h;
      dx[i] = rt * dy[i]! * w[h]! - (rt * rt * rt * x[i]! * gx) / H;
      dw[h] += dy[i]! * x[i]! * rt;
    }
  }
  return { dx, dw };
}
