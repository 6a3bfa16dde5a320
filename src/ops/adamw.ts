// AdamW optimizer step (decoupled weight decay, exactly as torch.optim.AdamW) and the
// sum-of-squares reduction used for global-norm gradient clipping.
// Reference: src/reference/adamw.ts.
//
// For every element, in f32, in place (g is read only):
//   g' = g·gradScale
//   p  = p·(1 − lr·wd)
//   m  = β1·m + (1 − β1)·g'
//   v  = β2·v + (1 − β2)·g'²
//   p  = p − lr·(m / bc1) / (sqrt(v / bc2) + eps),   bc1 = 1 − β1^t, bc2 = 1 − β2^t
// bc1 and bc2 are computed here in double and handed to the kernels as f32 scalars.
import { ArgumentError, describe } from '../errors.js';
import type { Tensor } from '../tensor.js';
import { Checker, checkOpts } from './check.js';

/** The f32 scalars of one AdamW step as the kernels receive them. */
export interface AdamwScalars {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1 − β1^t and 1 − β2^t, computed in double */
  bc1: number;
  bc2: number;
  gradScale: number;
}

export interface AdamwKernels {
  /** One AdamW step over n elements, p, m, v updated in place, g read (see the top of src/ops/adamw.ts). */
  adamw(p: Tensor, g: Tensor, m: Tensor, v: Tensor, n: number, s: AdamwScalars): void;
  /** out[0] = Σ g[i]² over n elements; a fixed-order reduction (bit-identical reruns, no atomics). */
  sumSquares(out: Tensor, g: Tensor, n: number): void;
}

export interface AdamwOptions {
  /** learning rate, finite, ≥ 0 */
  lr: number;
  /** default 0.9; in [0, 1) */
  beta1?: number;
  /** default 0.999; in [0, 1) */
  beta2?: number;
  /** default 1e-8; > 0 */
  eps?: number;
  /** decoupled weight decay, default 0.01 (torch's default); finite, ≥ 0 */
  weightDecay?: number;
  /** the step number t (1 for the first step): an integer ≥ 1 */
  step: number;
  /** multiplies g before use (clipping, accumulation averaging); default 1; finite */
  gradScale?: number;
}

function finite(op: string, name: string, v: unknown, lo?: { min: number; open?: boolean; max?: number }): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ArgumentError(`${op}: ${name}: expected a finite number, got ${describe(v)}`);
  if (lo) {
    const below = lo.open ? !(v > lo.min) : !(v >= lo.min);
    const above = lo.max !== undefined && !(v < lo.max);
    if (below || above) {
      const range = lo.max !== undefined ? `in [${lo.min}, ${lo.max})` : lo.open ? `> ${lo.min}` : `≥ ${lo.min}`;
      throw new ArgumentError(`${op}: ${name}: expected a number ${range}, got ${v}`);
    }
  }
  return v;
}

const F32_MAX = 3.4028234663852886e38;

/** Checks the hyper-parameters and forms the kernel scalars (bias corrections in double). */
export function adamwScalars(opts: AdamwOptions, op = 'adamw'): AdamwScalars {
  if (typeof opts !== 'object' || opts === null || Array.isArray(opts))
    throw new ArgumentError(`${op}: opts: expected an object with lr and step, got ${describe(opts)}`);
  const lr = finite(op, 'lr', opts.lr, { min: 0 });
  const beta1 = finite(op, 'beta1', opts.beta1 ?? 0.9, { min: 0, max: 1 });
  const beta2 = finite(op, 'beta2', opts.beta2 ?? 0.999, { min: 0, max: 1 });
  const eps = finite(op, 'eps', opts.eps ?? 1e-8, { min: 0, open: true });
  const weightDecay = finite(op, 'weightDecay', opts.weightDecay ?? 0.01, { min: 0 });
  const gradScale = finite(op, 'gradScale', opts.gradScale ?? 1);
  const t = opts.step;
  if (typeof t !== 'number' || !Number.isSafeInteger(t) || t < 1)
    throw new ArgumentError(`${op}: step: expected an integer ≥ 1, got ${describe(t)}`);
  const bc1 = 1 - Math.pow(beta1, t);
  const bc2 = 1 - Math.pow(beta2, t);
  // f32 scalars must stay finite and non-zero where they divide
  for (const [name, v] of [
    ['lr', lr],
    ['eps', eps],
    ['weightDecay', weightDecay],
    ['gradScale', gradScale],
  ] as const) {
    if (Math.abs(v) > F32_MAX) throw new ArgumentError(`${op}: ${name}: expected a value representable in f32, got ${v}`);
  }
  if (Math.abs(1 - lr * weightDecay) > F32_MAX)
    throw new ArgumentError(
      `${op}: weightDecay: 1 − lr·weightDecay = ${1 - lr * weightDecay} overflows f32 (lr = ${lr}, weightDecay = ${weightDecay})`,
    );
  if (Math.fround(eps) === 0) throw new ArgumentError(`${op}: eps: expected a value that stays > 0 in f32, got ${eps}`);
  if (!(Math.fround(bc1) > 0))
    throw new ArgumentError(`${op}: beta1: 1 − beta1^step = ${bc1} underflows f32 (beta1 = ${beta1}, step = ${t})`);
  if (!(Math.fround(bc2) > 0))
    throw new ArgumentError(`${op}: beta2: 1 − beta2^step = ${bc2} underflows f32 (beta2 = ${beta2}, step = ${t})`);
  return { lr, beta1, beta2, eps, weightDecay, bc1, bc2, gradScale };
}

/**
 * One AdamW step in place: p (master weights), m and v (moments) are updated, g is read.
 * All four are f32 of one shape on one backend; p, m, v, g must be four distinct tensors.
 */
export function adamw(p: Tensor, g: Tensor, m: Tensor, v: Tensor, opts: AdamwOptions): void {
  const c = new Checker('adamw');
  const shape = (p as Partial<Tensor>)?.shape?.map((_, i) => `d${i}`) ?? [];
  c.tensor('p', p, { dtypes: ['f32'], shape });
  c.tensor('g', g, { dtypes: ['f32'], shape });
  c.tensor('m', m, { dtypes: ['f32'], shape });
  c.tensor('v', v, { dtypes: ['f32'], shape });
  c.distinct('p', p, { g, m, v });
  c.distinct('m', m, { g, v });
  c.distinct('v', v, { g });
  const s = adamwScalars(opts);
  p.backend.adamw(p, g, m, v, p.size, s);
}

/** Σ g² (f32, any shape) as a 1-element f32 tensor, by a fixed-order reduction: reruns are bit-identical. */
export function sumSquares(g: Tensor, options?: { out?: Tensor }): Tensor {
  const c = new Checker('sumSquares');
  const opts = checkOpts('sumSquares', 'opts', options);
  const shape = (g as Partial<Tensor>)?.shape?.map((_, i) => `d${i}`) ?? [];
  c.tensor('g', g, { dtypes: ['f32'], shape });
  const out = opts.out === undefined ? g.backend.empty([1], 'f32') : c.tensor('out', opts.out, { dtypes: ['f32'], shape: [1] });
  if (out === g) throw new ArgumentError('sumSquares: out: must not be the same tensor as g');
  g.backend.sumSquares(out, g, g.size);
  return out;
}
