// Scale: y = alpha · x (elementwise, f32; y may be x). Gradient scaling, folding adapter
// scales into weights. Reference: src/reference/scale.ts.
import { ArgumentError, describe } from '../errors.js';
import { Tensor } from '../tensor.js';
import { Checker, checkOpts } from './check.js';

export interface ScaleKernels {
  /** y[i] = alpha · x[i]; y may be x (in place). */
  scale(y: Tensor, x: Tensor, alpha: number, n: number): void;
}

/** alpha · x into a new tensor, or into opts.out (which may be x itself). */
export function scale(x: Tensor, alpha: number, options?: { out?: Tensor }): Tensor {
  const c = new Checker('scale');
  const opts = checkOpts('scale', 'opts', options);
  const shape = x instanceof Tensor ? x.shape.map((_, i) => `d${i}`) : [];
  c.tensor('x', x, { dtypes: ['f32'], shape });
  if (typeof alpha !== 'number' || !Number.isFinite(alpha))
    throw new ArgumentError(`scale: alpha: expected a finite number, got ${describe(alpha)}`);
  const y = c.output('out', opts.out, shape);
  y.backend.scale(y, x, alpha, x.size);
  return y;
}
