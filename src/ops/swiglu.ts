// SwiGLU: y = silu(gate) ⊙ up. Reference: src/reference/swiglu.ts.
import type { Tensor } from '../tensor.js';
import { Checker, checkOpts } from './check.js';

export interface SwigluKernels {
  /** y[n] = silu(gate[n])·up[n] over n = T·I elements. */
  swiglu(y: Tensor, gate: Tensor, up: Tensor, n: number): void;
  /** dgate = dy·up·silu'(gate), dup = dy·silu(gate). */
  swigluGrad(dgate: Tensor, dup: Tensor, dy: Tensor, gate: Tensor, up: Tensor, n: number): void;
}

export function swiglu(gate: Tensor, up: Tensor, options?: { out?: Tensor }): Tensor {
  const c = new Checker('swiglu');
  const opts = checkOpts('swiglu', 'opts', options);
  c.tensor('gate', gate, { dtypes: ['f32'], shape: ['T', 'I'] });
  c.tensor('up', up, { dtypes: ['f32'], shape: ['T', 'I'] });
  const y = c.output('out', opts.out, ['T', 'I']);
  y.backend.swiglu(y, gate, up, gate.size);
  return y;
}

export function swigluGrad(dy: Tensor, gate: Tensor, up: Tensor): { dgate: Tensor; dup: Tensor } {
  const c = new Checker('swigluGrad');
  c.tensor('dy', dy, { dtypes: ['f32'], shape: ['T', 'I'] });
  c.tensor('gate', gate, { dtypes: ['f32'], shape: ['T', 'I'] });
  c.tensor('up', up, { dtypes: ['f32'], shape: ['T', 'I'] });
  const dgate = c.output('dgate', undefined, ['T', 'I']);
  const dup = c.output('dup', undefined, ['T', 'I']);
  dy.backend.swigluGrad(dgate, dup, dy, gate, up, dy.size);
  return { dgate, dup };
}
