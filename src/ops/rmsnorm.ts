// RMSNorm (HF LlamaRMSNorm): y = x / sqrt(mean(x²) + eps) · w. Reference: src/reference/rmsnorm.ts.
import { WEIGHT_DTYPES } from '../dtype.js';
import { ArgumentError } from '../errors.js';
import type { Tensor } from '../tensor.js';
import { Checker, checkBool, checkOpts } from './check.js';

export interface RmsnormDims {
  T: number;
  H: number;
  eps: number;
}

export interface RmsnormKernels {
  /** y[T,H] = x·rstd·w; rstd[T] = 1/sqrt(mean(x²)+eps) (saved for backward). */
  rmsnorm(y: Tensor, rstd: Tensor, x: Tensor, w: Tensor, d: RmsnormDims): void;
  /** dx[T,H] (overwritten) and dw[H] (+)= Σ_t dy·x·rstd (f32; one owner per h, t ascending). */
  rmsnormGrad(dx: Tensor, dw: Tensor, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor, d: RmsnormDims, accumulateDw: boolean): void;
}

function checkEps(op: string, eps: unknown): number {
  if (typeof eps !== 'number' || !(eps > 0) || !Number.isFinite(eps))
    throw new ArgumentError(`${op}: eps: expected a positive finite number, got ${String(eps)}`);
  return eps;
}

/** Returns y f32 [T, H] and rstd f32 [T]. x f32 [T, H]; w [H] f32/f16/bf16. */
export function rmsnorm(x: Tensor, w: Tensor, eps: number, options?: { out?: Tensor }): { y: Tensor; rstd: Tensor } {
  const c = new Checker('rmsnorm');
  const opts = checkOpts('rmsnorm', 'opts', options);
  c.tensor('x', x, { dtypes: ['f32'], shape: ['T', 'H'] });
  c.tensor('w', w, { dtypes: WEIGHT_DTYPES, shape: ['H'] });
  const d = { T: c.dim('T'), H: c.dim('H'), eps: checkEps('rmsnorm', eps) };
  const y = c.output('out', opts.out, ['T', 'H']);
  const rstd = c.output('rstd', undefined, ['T']);
  y.backend.rmsnorm(y, rstd, x, w, d);
  return { y, rstd };
}

/** Gradients of rmsnorm: dx f32 [T, H], dw f32 [H] (added into opts.dw when accumulateDw). */
export function rmsnormGrad(
  dy: Tensor,
  x: Tensor,
  w: Tensor,
  rstd: Tensor,
  eps: number,
  options?: { dw?: Tensor; accumulateDw?: boolean },
): { dx: Tensor; dw: Tensor } {
  const c = new Checker('rmsnormGrad');
  const opts = checkOpts('rmsnormGrad', 'opts', options);
  c.tensor('dy', dy, { dtypes: ['f32'], shape: ['T', 'H'] });
  c.tensor('x', x, { dtypes: ['f32'], shape: ['T', 'H'] });
  c.tensor('w', w, { dtypes: WEIGHT_DTYPES, shape: ['H'] });
  c.tensor('rstd', rstd, { dtypes: ['f32'], shape: ['T'] });
  const acc = checkBool('rmsnormGrad', 'accumulateDw', opts.accumulateDw);
  if (acc && !opts.dw) throw new ArgumentError('rmsnormGrad: accumulateDw: needs a dw tensor to add into');
  const d = { T: c.dim('T'), H: c.dim('H'), eps: checkEps('rmsnormGrad', eps) };
  const dx = c.output('dx', undefined, ['T', 'H']);
  const dw = c.output('dw', opts.dw, ['H']);
  dx.backend.rmsnormGrad(dx, dw, dy, x, w, rstd, d, acc);
  return { dx, dw };
}
