// Float64 reference for the adamw family (optimizer step, torch.optim.AdamW semantics, and the
// sum of squares used for global-norm clipping): plain loops, written to be read.
//   g' = g·gradScale
//   p  = p·(1 − lr·wd)                       (decoupled weight decay)
//   m  = β1·m + (1 − β1)·g'
//   v  = β2·v + (1 − β2)·g'²
//   p  = p − lr·(m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + eps)

export interface AdamwRefOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** step number t ≥ 1 */
  step: number;
  gradScale?: number;
}

function need(name: string, a: ArrayLike<number>, n: number): void {
  if (a.length !== n) throw new Error(`adamw reference: ${name}: expected ${n} entries, got ${a.length}`);
}

/** One AdamW step; returns new p, m, v (the inputs are not modified). */
export function adamwRef(
  p: ArrayLike<number>,
  g: ArrayLike<number>,
  m: ArrayLike<number>,
  v: ArrayLike<number>,
  o: AdamwRefOptions,
): { p: Float64Array; m: Float64Array; v: Float64Array } {
  const n = p.length;
  need('g', g, n);
  need('m', m, n);
  need('v', v, n);
  const bc1 = 1 - Math.pow(o.beta1, o.step);
  const bc2 = 1 - Math.pow(o.beta2, o.step);
  const scale = o.gradScale ?? 1;
  const P = new Float64Array(n),
    M = new Float64Array(n),
    V = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const gi = g[i]! * scale;
    const mi = o.beta1 * m[i]! + (1 - o.beta1) * gi;
    const vi = o.beta2 * v[i]! + (1 - o.beta2) * gi * gi;
    const pi = p[i]! * (1 - o.lr * o.weightDecay);
    P[i] = pi - (o.lr * (mi / bc1)) / (Math.sqrt(vi / bc2) + o.eps);
    M[i] = mi;
    V[i] = vi;
  }
  return { p: P, m: M, v: V };
}

/** Σ g[i]². */
export function sumSquaresRef(g: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < g.length; i++) s += g[i]! * g[i]!;
  return s;
}
