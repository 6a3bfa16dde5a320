// Residual add: y = a + b (elementwise, f32). Its backward passes dy to both inputs.
import { ArgumentError } from '../errors.js';
import { Tensor } from '../tensor.js';
import { Checker, checkOpts } from './check.js';

export interface ResidualKernels {
  /** y[i] = a[i] + b[i]; y may be a (in place). */
  add(y: Tensor, a: Tensor, b: Tensor, n: number): void;
}

/** a + b into a new tensor, or into opts.out (which may be a itself, for an in-place residual). */
export function add(a: Tensor, b: Tensor, options?: { out?: Tensor }): Tensor {
  const c = new Checker('add');
  const opts = checkOpts('add', 'opts', options);
  const shape = a instanceof Tensor ? a.shape.map((_, i) => `d${i}`) : [];
  c.tensor('a', a, { dtypes: ['f32'], shape });
  c.tensor('b', b, { dtypes: ['f32'], shape });
  const y = c.output('out', opts.out, shape);
  if (y === b && b !== a) throw new ArgumentError('add: out: may alias a, not b');
  y.backend.add(y, a, b, a.size);
  return y;
}
