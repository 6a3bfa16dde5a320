// Float64 references for the multi-LoRA family (DESIGN §4): plain loops, written to be
// read, not to be fast. Semantics are those of LoraKernels in src/ops/lora.ts:
//   A: [L, R, Hin], B: [L, Hout, R], ranks: [L] (1 ≤ rank ≤ R), scales: [L]
//   slots: [T, K] (−1 = none), weights: [T, K]
// Only the first rank(e) rows of A[e] and columns of B[e] take part; everything past an
// adapter's rank is neither read nor written (outputs hold 0 there).
import type { LoraDims } from '../ops/lora.js';

export type { LoraDims };

/** The adapter stack of one layer, as host arrays. */
export interface LoraRefStack {
  /** [L, R, Hin] */
  A: ArrayLike<number>;
  /** [L, Hout, R] */
  B: ArrayLike<number>;
  /** [L], each in [1, R] */
  ranks: ArrayLike<number>;
  /** [L] (alpha / r) */
  scales: ArrayLike<number>;
}

/** The routing of one batch, as host arrays. */
export interface LoraRefRouting {
  /** [T, K] adapter index per slot, −1 = none */
  slots: ArrayLike<number>;
  /** [T, K] mixing weight per slot; default 1 */
  weights?: ArrayLike<number>;
}

function need(name: string, a: ArrayLike<number> | undefined, n: number): void {
  if (a === undefined || a.length !== n) throw new Error(`lora reference: ${name}: expected ${n} entries, got ${a?.length}`);
}

/** Checks that every array matches the dims (the reference is for tests; a mismatch is a bug in the test). */
function checkStack(d: LoraDims, s: LoraRefStack, rt: LoraRefRouting): void {
  const { T, K, L, R, Hin, Hout } = d;
  need('A', s.A, L * R * Hin);
  need('B', s.B, L * Hout * R);
  need('ranks', s.ranks, L);
  need('scales', s.scales, L);
  need('slots', rt.slots, T * K);
  if (rt.weights !== undefined) need('weights', rt.weights, T * K);
  for (let e = 0; e < L; e++) {
    const r = s.ranks[e]!;
    if (!Number.isInteger(r) || r < 1 || r > R) throw new Error(`lora reference: ranks[${e}] = ${r} not in [1, ${R}]`);
  }
  for (let i = 0; i < T * K; i++) {
    const e = rt.slots[i]!;
    if (!Number.isInteger(e) || e < -1 || e >= L) throw new Error(`lora reference: slots[${i}] = ${e} not in [-1, ${L - 1}]`);
  }
}

const weightOf = (rt: LoraRefRouting, i: number): number => (rt.weights === undefined ? 1 : rt.weights[i]!);

/** Index helpers for the PEFT layouts. */
const aIdx = (d: LoraDims, e: number, r: number, i: number): number => (e * d.R + r) * d.Hin + i;
const bIdx = (d: LoraDims, e: number, o: number, r: number): number => (e * d.Hout + o) * d.R + r;
const vIdx = (d: LoraDims, t: number, k: number, r: number): number => (t * d.K + k) * d.R + r;

/** v[t,k,r] = Σ_i A[e,r,i]·x[t,i] for r < rank(e), e = slots[t,k]; 0 past the rank and for empty slots. v: [T, K, R]. */
export function loraShrinkRef(x: ArrayLike<number>, s: LoraRefStack, rt: LoraRefRouting, d: LoraDims): Float64Array {
  checkStack(d, s, rt);
  need('x', x, d.T * d.Hin);
  const v = new Float64Array(d.T * d.K * d.R);
  for (let t = 0; t < d.T; t++)
    for (let k = 0; k < d.K; k++) {
      const e = rt.slots[t * d.K + k]!;
      if (e < 0) continue;
      for (let r = 0; r < s.ranks[e]!; r++) {
        let acc = 0;
        for (let i = 0; i < d.Hin; i++) acc += s.A[aIdx(d, e, r, i)]! * x[t * d.Hin + i]!;
        v[vIdx(d, t, k, r)] = acc;
      }
    }
  return v;
}

/**
 * term[t,o] = Σ_k weight[t,k]·scale[e]·Σ_{r<rank(e)} B[e,o,r]·v[t,k,r]. Returns the term
 * alone, or y + term when y is given (what loraExpand leaves in y). [T, Hout].
 */
export function loraExpandRef(v: ArrayLike<number>, s: LoraRefStack, rt: LoraRefRouting, d: LoraDims, y?: ArrayLike<number>): Float64Array {
  checkStack(d, s, rt);
  need('v', v, d.T * d.K * d.R);
  if (y !== undefined) need('y', y, d.T * d.Hout);
  const out = y === undefined ? new Float64Array(d.T * d.Hout) : Float64Array.from(y);
  for (let t = 0; t < d.T; t++)
    for (let k = 0; k < d.K; k++) {
      const e = rt.slots[t * d.K + k]!;
      if (e < 0) continue;
      const ws = weightOf(rt, t * d.K + k) * s.scales[e]!;
      for (let o = 0; o < d.Hout; o++) {
        let acc = 0;
        for (let r = 0; r < s.ranks[e]!; r++) acc += s.B[bIdx(d, e, o, r)]! * v[vIdx(d, t, k, r)]!;
        out[t * d.Hout + o] += ws * acc;
      }
    }
  return out;
}

/** loraApply: v = shrink(x), y' = (y or 0) + expand(v). */
export function loraApplyRef(
  x: ArrayLike<number>,
  s: LoraRefStack,
  rt: LoraRefRouting,
  d: LoraDims,
  y?: ArrayLike<number>,
): { y: Float64Array; v: Float64Array } {
  const v = loraShrinkRef(x, s, rt, d);
  return { y: loraExpandRef(v, s, rt, d, y), v };
}

/** dv[t,k,r] = weight[t,k]·scale[e]·Σ_o B[e,o,r]·dy[t,o] for r < rank(e); 0 past the rank and for empty slots. [T, K, R]. */
export function loraShrinkGradRef(dy: ArrayLike<number>, s: LoraRefStack, rt: LoraRefRouting, d: LoraDims): Float64Array {
  checkStack(d, s, rt);
  need('dy', dy, d.T * d.Hout);
  const dv = new Float64Array(d.T * d.K * d.R);
  for (let t = 0; t < d.T; t++)
    for (let k = 0; k < d.K; k++) {
      const e = rt.slots[t * d.K + k]!;
      if (e < 0) continue;
      const ws = weightOf(rt, t * d.K + k) * s.scales[e]!;
      for (let r = 0; r < s.ranks[e]!; r++) {
        let acc = 0;
        for (let o = 0; o < d.Hout; o++) acc += s.B[bIdx(d, e, o, r)]! * dy[t * d.Hout + o]!;
        dv[vIdx(d, t, k, r)] = ws * acc;
      }
    }
  return dv;
}

/** dx[t,i] = (dx0[t,i] or 0) + Σ_k Σ_{r<rank(e)} A[e,r,i]·dv[t,k,r]. [T, Hin]. */
export function loraInputGradRef(
  dv: ArrayLike<number>,
  s: LoraRefStack,
  rt: LoraRefRouting,
  d: LoraDims,
  dx0?: ArrayLike<number>,
): Float64Array {
  checkStack(d, s, rt);
  need('dv', dv, d.T * d.K * d.R);
  if (dx0 !== undefined) need('dx', dx0, d.T * d.Hin);
  const dx = dx0 === undefined ? new Float64Array(d.T * d.Hin) : Float64Array.from(dx0);
  for (let t = 0; t < d.T; t++)
    for (let k = 0; k < d.K; k++) {
      const e = rt.slots[t * d.K + k]!;
      if (e < 0) continue;
      for (let i = 0; i < d.Hin; i++) {
        let acc = 0;
        for (let r = 0; r < s.ranks[e]!; r++) acc += s.A[aIdx(d, e, r, i)]! * dv[vIdx(d, t, k, r)]!;
        dx[t * d.Hin + i] += acc;
      }
    }
  return dx;
}

/**
 * dA[e,r,i] = (dA0 or 0) + Σ_{(t,k): slots[t,k]=e} dv[t,k,r]·x[t,i]            (r < rank(e))
 * dB[e,o,r] = (dB0 or 0) + Σ_{(t,k): slots[t,k]=e} weight·scale[e]·dy[t,o]·v[t,k,r] (r < rank(e))
 * Entries of adapters absent from the batch and past an adapter's rank stay 0 (or dA0/dB0).
 */
export function loraWeightGradRef(
  x: ArrayLike<number>,
  dy: ArrayLike<number>,
  v: ArrayLike<number>,
  dv: ArrayLike<number>,
  s: LoraRefStack,
  rt: LoraRefRouting,
  d: LoraDims,
  acc?: { dA: ArrayLike<number>; dB: ArrayLike<number> },
): { dA: Float64Array; dB: Float64Array } {
  checkStack(d, s, rt);
  need('x', x, d.T * d.Hin);
  need('dy', dy, d.T * d.Hout);
  need('v', v, d.T * d.K * d.R);
  need('dv', dv, d.T * d.K * d.R);
  if (acc) {
    need('dA', acc.dA, d.L * d.R * d.Hin);
    need('dB', acc.dB, d.L * d.Hout * d.R);
  }
  const dA = acc ? Float64Array.from(acc.dA) : new Float64Array(d.L * d.R * d.Hin);
  const dB = acc ? Float64Array.from(acc.dB) : new Float64Array(d.L * d.Hout * d.R);
  for (let t = 0; t < d.T; t++)
    for (let k = 0; k < d.K; k++) {
      const e = rt.slots[t * d.K + k]!;
      if (e < 0) continue;
      const ws = weightOf(rt, t * d.K + k) * s.scales[e]!;
      for (let r = 0; r < s.ranks[e]!; r++) {
        for (let i = 0; i < d.Hin; i++) dA[aIdx(d, e, r, i)] += dv[vIdx(d, t, k, r)]! * x[t * d.Hin + i]!;
        for (let o = 0; o < d.Hout; o++) dB[bIdx(d, e, o, r)] += ws * dy[t * d.Hout + o]! * v[vIdx(d, t, k, r)]!;
      }
    }
  return { dA, dB };
}

/** Everything a multi-LoRA linear layer needs, as host arrays. */
export interface MultiLoraLinearRef extends LoraRefStack, LoraRefRouting {
  /** Optional base weight [Hout, Hin] (HF layout); absent: the base term is 0. */
  W?: ArrayLike<number>;
}

/**
 * y[t] = W·x[t] + Σ_k weight[t,k]·scale[e]·B[e]·A[e]·x[t] (e = slots[t,k]; only the first
 * rank(e) rows of A[e] and columns of B[e]). Written directly from the formula, without
 * the shrink/expand split, so it can check them. Returns y and v = shrink(x) (kept for backward).
 */
export function multiLoraLinearForwardRef(x: ArrayLike<number>, m: MultiLoraLinearRef, d: LoraDims): { y: Float64Array; v: Float64Array } {
  checkStack(d, m, m);
  need('x', x, d.T * d.Hin);
  if (m.W !== undefined) need('W', m.W, d.Hout * d.Hin);
  const y = new Float64Array(d.T * d.Hout);
  for (let t = 0; t < d.T; t++)
    for (let o = 0; o < d.Hout; o++) {
      let acc = 0;
      if (m.W !== undefined) for (let i = 0; i < d.Hin; i++) acc += m.W[o * d.Hin + i]! * x[t * d.Hin + i]!;
      for (let k = 0; k < d.K; k++) {
        const e = m.slots[t * d.K + k]!;
        if (e < 0) continue;
        const ws = weightOf(m, t * d.K + k) * m.scales[e]!;
        // (B[e]·A[e])[o,i] = Σ_r B[e,o,r]·A[e,r,i]
        for (let i = 0; i < d.Hin; i++) {
          let ba = 0;
          for (let r = 0; r < m.ranks[e]!; r++) ba += m.B[bIdx(d, e, o, r)]! * m.A[aIdx(d, e, r, i)]!;
          acc += ws * ba * x[t * d.Hin + i]!;
        }
      }
      y[t * d.Hout + o] = acc;
    }
  return { y, v: loraShrinkRef(x, m, m, d) };
}

/**
 * Gradients of a loss ℓ(y) given dy = ∂ℓ/∂y: dx = dy·W + Σ_k A[e]ᵀ·dv[t,k] with
 * dv = loraShrinkGrad(dy); dA, dB as loraWeightGrad; dW = dyᵀ·x when W is given.
 */
export function multiLoraLinearBackwardRef(
  x: ArrayLike<number>,
  dy: ArrayLike<number>,
  m: MultiLoraLinearRef,
  d: LoraDims,
): { dx: Float64Array; dA: Float64Array; dB: Float64Array; dW?: Float64Array; v: Float64Array; dv: Float64Array } {
  need('dy', dy, d.T * d.Hout);
  const v = loraShrinkRef(x, m, m, d);
  const dv = loraShrinkGradRef(dy, m, m, d);
  const base = new Float64Array(d.T * d.Hin);
  let dW: Float64Array | undefined;
  if (m.W !== undefined) {
    need('W', m.W, d.Hout * d.Hin);
    dW = new Float64Array(d.Hout * d.Hin);
    for (let t = 0; t < d.T; t++)
      for (let o = 0; o < d.Hout; o++)
        for (let i = 0; i < d.Hin; i++) {
          base[t * d.Hin + i] += dy[t * d.Hout + o]! * m.W[o * d.Hin + i]!;
          dW[o * d.Hin + i] += dy[t * d.Hout + o]! * x[t * d.Hin + i]!;
        }
  }
  const dx = loraInputGradRef(dv, m, m, d, base);
  const { dA, dB } = loraWeightGradRef(x, dy, v, dv, m, m, d);
  return { dx, dA, dB, ...(dW ? { dW } : {}), v, dv };
}
