// Log-softmax and masked cross-entropy over the vocabulary. Reference: src/reference/xent.ts.
import { ArgumentError } from '../errors.js';
import type { Tensor } from '../tensor.js';
import { Checker, checkFinite, checkHostArray, checkOpts } from './check.js';

export interface XentDims {
  T: number;
  V: number;
}

export interface XentKernels {
  /** out[t,:] = logits[t,:] − logsumexp(logits[t,:]). */
  logSoftmax(out: Tensor, logits: Tensor, d: XentDims): void;
  /** losses[t] = mask[t]·(lse[t] − logits[t, targets[t]]); lse[t] saved. Targets with mask 0 are not read. */
  xent(losses: Tensor, lse: Tensor, logits: Tensor, targets: Tensor, mask: Tensor, d: XentDims): void;
  /** dlogits[t,v] = scale·mask[t]·(exp(logits[t,v] − lse[t]) − [v = targets[t]]). */
  xentGrad(dlogits: Tensor, logits: Tensor, lse: Tensor, targets: Tensor, mask: Tensor, scale: number, d: XentDims): void;
}

export function logSoftmax(logits: Tensor, options?: { out?: Tensor }): Tensor {
  const c = new Checker('logSoftmax');
  const opts = checkOpts('logSoftmax', 'opts', options);
  c.tensor('logits', logits, { dtypes: ['f32'], shape: ['T', 'V'] });
  const out = c.output('out', opts.out, ['T', 'V']);
  out.backend.logSoftmax(out, logits, { T: c.dim('T'), V: c.dim('V') });
  return out;
}

function checkTargets(op: string, targets: ArrayLike<number>, mask: ArrayLike<number>, T: number, V: number): void {
  if (checkHostArray(op, 'targets', targets).length !== T)
    throw new ArgumentError(`${op}: targets: expected ${T} entries, got ${targets.length}`);
  if (checkHostArray(op, 'mask', mask).length !== T) throw new ArgumentError(`${op}: mask: expected ${T} entries, got ${mask.length}`);
  for (let t = 0; t < T; t++) {
    const m = mask[t]!;
    if (m !== 0 && m !== 1) throw new ArgumentError(`${op}: mask[${t}]: expected 0 or 1, got ${m}`);
    const y = targets[t]!;
    if (m === 1 && (!Number.isInteger(y) || y < 0 || y >= V))
      throw new ArgumentError(`${op}: targets[${t}]: expected a token id in [0, ${V - 1}], got ${y}`);
  }
}

/**
 * Masked cross-entropy: per-token losses f32 [T] (0 where mask is 0), their masked mean,
 * and lse f32 [T] for the backward. targets/mask are host arrays (mask of 0/1).
 */
export async function xent(
  logits: Tensor,
  targets: ArrayLike<number>,
  mask: ArrayLike<number>,
): Promise<{ loss: number; count: number; losses: Tensor; lse: Tensor }> {
  const c = new Checker('xent');
  c.tensor('logits', logits, { dtypes: ['f32'], shape: ['T', 'V'] });
  const T = c.dim('T'),
    V = c.dim('V');
  checkTargets('xent', targets, mask, T, V);
  const be = logits.backend;
  const tt = be.tensor(
    Int32Array.from(targets, (v, t) => (mask[t] ? v : 0)),
    [T],
    'i32',
  );
  const mt = be.tensor(Float32Array.from(mask), [T]);
  try {
    const losses = be.empty([T]),
      lse = be.empty([T]);
    be.xent(losses, lse, logits, tt, mt, { T, V });
    const l = await losses.readFloat();
    let sum = 0,
      count = 0;
    for (let t = 0; t < T; t++)
      if (mask[t]) {
        sum += l[t]!;
        count++;
      }
    return { loss: count ? sum / count : 0, count, losses, lse };
  } finally {
    tt.dispose();
    mt.dispose();
  }
}

/** dlogits f32 [T, V] of `scale`·Σ losses (scale = 1/count for the mean). */
export function xentGrad(
  logits: Tensor,
  lse: Tensor,
  targets: ArrayLike<number>,
  mask: ArrayLike<number>,
  scale: number,
  options?: { out?: Tensor },
): Tensor {
  const c = new Checker('xentGrad');
  const opts = checkOpts('xentGrad', 'opts', options);
  c.tensor('logits', logits, { dtypes: ['f32'], shape: ['T', 'V'] });
  c.tensor('lse', lse, { dtypes: ['f32'], shape: ['T'] });
  const T = c.dim('T'),
    V = c.dim('V');
  checkTargets('xentGrad', targets, mask, T, V);
  checkFinite('xentGrad', 'scale', scale);
  const be = logits.backend;
  const out = c.output('out', opts.out, ['T', 'V']);
  c.distinct('out', out, { logits });
  const tt = be.tensor(
    Int32Array.from(targets, (v, t) => (mask[t] ? v : 0)),
    [T],
    'i32',
  );
  const mt = be.tensor(Float32Array.from(mask), [T]);
  try {
    be.xentGrad(out, logits, lse, tt, mt, scale, { T, V });
  } finally {
    tt.dispose();
    mt.dispose();
  }
  return out;
}
