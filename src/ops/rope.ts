// Rotary position embedding, HF rotate-half convention. Reference: src/reference/rope.ts.
// inv_freq (with llama3/linear scaling) is computed on the host by ropeInvFreq (src/model/rope_freq.ts) and
// uploaded once per model; the kernel only rotates.
import { ArgumentError, describe } from '../errors.js';
import type { Tensor } from '../tensor.js';
import { Checker, checkOpts } from './check.js';

export interface RopeDims {
  T: number;
  heads: number;
  D: number;
}

export interface RopeKernels {
  /**
   * y[t,h,i] = x[t,h,i]·cos(p·f) − x[t,h,i+D/2]·sin(p·f) for i < D/2 and
   * y[t,h,i+D/2] = x[t,h,i+D/2]·cos(p·f) + x[t,h,i]·sin(p·f), p = positions[t], f = invFreq[i].
   * inverse: rotate by −angle (the backward). y may be x (in place).
   */
  rope(y: Tensor, x: Tensor, positions: Tensor, invFreq: Tensor, d: RopeDims, inverse: boolean): void;
}

/** x f32 [T, heads, D]; positions i32 [T]; invFreq f32 [D/2]. inverse = the gradient. */
export function rope(x: Tensor, positions: Tensor, invFreq: Tensor, options?: { out?: Tensor; inverse?: boolean }): Tensor {
  const opts = checkOpts('rope', 'opts', options);
  const op = opts.inverse ? 'ropeGrad' : 'rope';
  const xName = opts.inverse ? 'dy' : 'x';
  const c = new Checker(op);
  c.tensor(xName, x, { dtypes: ['f32'], shape: ['T', 'heads', 'D'] });
  c.tensor('positions', positions, { dtypes: ['i32'], shape: ['T'] });
  const D = c.dim('D');
  if (D % 2 !== 0) throw new ArgumentError(`${op}: ${xName}: head dim must be even, got ${D}`);
  c.tensor('invFreq', invFreq, { dtypes: ['f32'], shape: [D / 2] });
  if (opts.inverse !== undefined && typeof opts.inverse !== 'boolean')
    throw new ArgumentError(`${op}: inverse: expected a boolean, got ${describe(opts.inverse)}`);
  const y = c.output('out', opts.out, ['T', 'heads', 'D']);
  if (y !== x) c.distinct('out', y, { positions, invFreq });
  y.backend.rope(y, x, positions, invFreq, { T: c.dim('T'), heads: c.dim('heads'), D }, opts.inverse ?? false);
  return y;
}

/** The backward of rope: the inverse rotation of dy. */
export function ropeGrad(dy: Tensor, positions: Tensor, invFreq: Tensor, options?: { out?: Tensor }): Tensor {
  return rope(dy, positions, invFreq, { ...checkOpts('ropeGrad', 'opts', options), inverse: true });
}
