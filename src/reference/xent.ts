// Float64 reference for the xent family: log-softmax over the vocabulary and masked mean
// cross-entropy. Plain loops, written to be read, not to be fast.
//
//   logits: [T, V], targets: [T] (in [0, V) where mask = 1; anything, e.g. −100, where mask = 0),
//   mask: [T] of 0/1
//   logp[t,:]  = logits[t,:] − logsumexp(logits[t,:])
//   loss       = (1/n) Σ_{t: mask[t]=1} −logp[t, targets[t]],   n = Σ mask
// When no token is masked in (n = 0) the loss is 0 and the gradient is 0 (not NaN).

function fail(msg: string): never {
  throw new Error(`xent reference: ${msg}`);
}

function need(name: string, a: ArrayLike<number>, n: number): void {
  if (a.length !== n) fail(`${name}: expected ${n} entries, got ${a.length}`);
}

/** Checks targets and mask; returns n = Σ mask. */
function checkTargets(targets: ArrayLike<number>, mask: ArrayLike<number>, T: number, V: number): number {
  need('targets', targets, T);
  need('mask', mask, T);
  let n = 0;
  for (let t = 0; t < T; t++) {
    const m = mask[t]!;
    if (m !== 0 && m !== 1) fail(`mask[${t}] = ${m}: expected 0 or 1`);
    if (m === 0) continue;
    const y = targets[t]!;
    if (!Number.isInteger(y) || y < 0 || y >= V) fail(`targets[${t}] = ${y} not in [0, ${V - 1}] (mask is 1 there)`);
    n++;
  }
  return n;
}

/** logp[t,v] = logits[t,v] − log Σ_u exp(logits[t,u]) (max-subtracted). logits: [T, V] → logp: [T, V]. */
export function logSoftmaxRef(logits: ArrayLike<number>, T: number, V: number): Float64Array {
  need('logits', logits, T * V);
  const out = new Float64Array(T * V);
  for (let t = 0; t < T; t++) {
    let max = -Infinity;
    for (let v = 0; v < V; v++) max = Math.max(max, logits[t * V + v]!);
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp(logits[t * V + v]! - max);
    const lse = max + Math.log(sum);
    for (let v = 0; v < V; v++) out[t * V + v] = logits[t * V + v]! - lse;
  }
  return out;
}

/**
 * Masked mean cross-entropy. logits: [T, V], targets: [T], mask: [T] →
 * loss (scalar), losses: [T] (−logp of the target where mask = 1, else 0), count n = Σ mask.
 */
export function xentRef(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  mask: ArrayLike<number>,
  T: number,
  V: number,
): { loss: number; losses: Float64Array; count: number } {
  const n = checkTargets(targets, mask, T, V);
  const logp = logSoftmaxRef(logits, T, V);
  const losses = new Float64Array(T);
  let sum = 0;
  for (let t = 0; t < T; t++) {
    if (mask[t] === 0) continue;
    losses[t] = -logp[t * V + targets[t]!]!;
    sum += losses[t]!;
  }
  return { loss: n === 0 ? 0 : sum / n, losses, count: n };
}

/**
 * dlogits[t,v] = dLoss · mask[t] / n · (softmax(logits[t])[v] − [v = targets[t]]); rows with
 * mask = 0 are exactly 0. logits: [T, V], targets, mask: [T] → dlogits: [T, V].
 */
export function xentBackwardRef(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  mask: ArrayLike<number>,
  T: number,
  V: number,
  dLoss = 1,
): Float64Array {
  const n = checkTargets(targets, mask, T, V);
  const logp = logSoftmaxRef(logits, T, V);
  const d = new Float64Array(T * V);
  if (n === 0) return d;
  for (let t = 0; t < T; t++) {
    if (mask[t] === 0) continue;
    const c = dLoss / n;
    for (let v = 0; v < V; v++) d[t * V + v] = c * (Math.exp(logp[t * V + v]!) - (v === targets[t] ? 1 : 0));
  }
  return d;
}
