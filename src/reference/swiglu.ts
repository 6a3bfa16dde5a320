// Float64 reference for the swiglu family (LLaMA MLP activation): plain loops, written to be
// read, not to be fast.
//   gate, up: [T, I]   y = silu(gate) ⊙ up,   silu(g) = g·σ(g),   σ(g) = 1 / (1 + e^(−g))

function need(name: string, a: ArrayLike<number>, n: number): void {
  if (a.length !== n) throw new Error(`swiglu reference: ${name}: expected ${n} entries, got ${a.length}`);
}

const sigmoid = (g: number): number => 1 / (1 + Math.exp(-g));

/** y[t,i] = silu(gate[t,i])·up[t,i]. gate, up: [T, I] → y: [T, I]. */
export function swigluRef(gate: ArrayLike<number>, up: ArrayLike<number>, T: number, I: number): Float64Array {
  need('gate', gate, T * I);
  need('up', up, T * I);
  const y = new Float64Array(T * I);
  for (let j = 0; j < T * I; j++) {
    const g = gate[j]!;
    y[j] = g * sigmoid(g) * up[j]!;
  }
  return y;
}

/**
 * Gradients given dy = ∂ℓ/∂y:
 *   dgate = dy·up·σ(g)·(1 + g·(1 − σ(g)))   (silu′(g))
 *   dup   = dy·silu(g)
 * dy, gate, up: [T, I] → dgate, dup: [T, I].
 */
export function swigluBackwardRef(
  dy: ArrayLike<number>,
  gate: ArrayLike<number>,
  up: ArrayLike<number>,
  T: number,
  I: number,
): { dgate: Float64Array; dup: Float64Array } {
  need('dy', dy, T * I);
  need('gate', gate, T * I);
  need('up', up, T * I);
  const dgate = new Float64Array(T * I);
  const dup = new Float64Array(T * I);
  for (let j = 0; j < T * I; j++) {
    const g = gate[j]!;
    const s = sigmoid(g);
    dgate[j] = dy[j]! * up[j]! * s * (1 + g * (1 - s));
    dup[j] = dy[j]! * g * s;
  }
  return { dgate, dup };
}
