import { WEIGHT_DTYPES } from '../dtype.js';
import type { Tensor } from '../tensor.js';
import { ArgumentError } from '../errors.js';
import { Checker, checkBool, checkOpts } from './check.js';

/** Sizes of one matmul: T rows of activations, K inputs, N outputs (W is [N, K]). */
export interface MatmulDims {
  T: number;
  K: number;
  N: number;
}

export interface MatmulKernels {
  /** y[T,N] (+)= x[T,K] · W[N,K]ᵀ */
  matmul(y: Tensor, x: Tensor, w: Tensor, d: MatmulDims, accumulate: boolean): void;
  /** dx[T,K] (+)= dy[T,N] · W[N,K] */
  matmulGradInput(dx: Tensor, dy: Tensor, w: Tensor, d: MatmulDims, accumulate: boolean): void;
  /** dW[N,K] (+)= dy[T,N]ᵀ · x[T,K] */
  matmulGradWeight(dw: Tensor, dy: Tensor, x: Tensor, d: MatmulDims, accumulate: boolean): void;
}

export interface AccumulateOptions {
  /** Write into this tensor instead of allocating one. */
  out?: Tensor;
  /** Add into `out` instead of overwriting it (needs `out`). */
  accumulate?: boolean;
}

function accumulateFlag(op: string, opts: Partial<AccumulateOptions>): boolean {
  const acc = checkBool(op, 'accumulate', opts.accumulate);
  if (acc && !opts.out) throw new ArgumentError(`${op}: accumulate: needs an out tensor to add into`);
  return acc;
}

/** y = x · Wᵀ with W in HF's [out, in] layout. x f32 [T, in]; W f32/f16/bf16 [out, in]; y f32 [T, out]. */
export function matmul(x: Tensor, w: Tensor, options?: AccumulateOptions): Tensor {
  const c = new Checker('matmul');
  const opts = checkOpts('matmul', 'opts', options);
  c.tensor('x', x, { dtypes: ['f32'], shape: ['T', 'K'] });
  c.tensor('w', w, { dtypes: WEIGHT_DTYPES, shape: ['N', 'K'] });
  const acc = accumulateFlag('matmul', opts);
  const y = c.output('out', opts.out, ['T', 'N']);
  c.distinct('out', y, { x });
  y.backend.matmul(y, x, w, { T: c.dim('T'), K: c.dim('K'), N: c.dim('N') }, acc);
  return y;
}

/** dx = dy · W. dy f32 [T, out]; W [out, in]; dx f32 [T, in]. */
export function matmulGradInput(dy: Tensor, w: Tensor, options?: AccumulateOptions): Tensor {
  const c = new Checker('matmulGradInput');
  const opts = checkOpts('matmulGradInput', 'opts', options);
  c.tensor('dy', dy, { dtypes: ['f32'], shape: ['T', 'N'] });
  c.tensor('w', w, { dtypes: WEIGHT_DTYPES, shape: ['N', 'K'] });
  const acc = accumulateFlag('matmulGradInput', opts);
  const dx = c.output('out', opts.out, ['T', 'K']);
  c.distinct('out', dx, { dy });
  dx.backend.matmulGradInput(dx, dy, w, { T: c.dim('T'), K: c.dim('K'), N: c.dim('N') }, acc);
  return dx;
}

/** dW = dyᵀ · x. dy f32 [T, out]; x f32 [T, in]; dW f32 [out, in]. */
export function matmulGradWeight(dy: Tensor, x: Tensor, options?: AccumulateOptions): Tensor {
  const c = new Checker('matmulGradWeight');
  const opts = checkOpts('matmulGradWeight', 'opts', options);
  c.tensor('dy', dy, { dtypes: ['f32'], shape: ['T', 'N'] });
  c.tensor('x', x, { dtypes: ['f32'], shape: ['T', 'K'] });
  const acc = accumulateFlag('matmulGradWeight', opts);
  const dw = c.output('out', opts.out, ['N', 'K']);
  c.distinct('out', dw, { dy, x });
  dw.backend.matmulGradWeight(dw, dy, x, { T: c.dim('T'), K: c.dim('K'), N: c.dim('N') }, acc);
  return dw;
}
