// Float64 reference for the embedding family: plain loops, written to be read, not to be fast.
//   E: [V, H] (HF model.embed_tokens.weight), ids: [T] integers in [0, V)

function need(name: string, a: ArrayLike<number>, n: number): void {
  if (a.length !== n) throw new Error(`embedding reference: ${name}: expected ${n} entries, got ${a.length}`);
}

function checkIds(ids: ArrayLike<number>, V: number): void {
  for (let t = 0; t < ids.length; t++) {
    const id = ids[t]!;
    if (!Number.isInteger(id) || id < 0 || id >= V) throw new Error(`embedding reference: ids[${t}] = ${id} not in [0, ${V - 1}]`);
  }
}

/** y[t,:] = E[ids[t],:]. ids: [T], E: [V, H] → y: [T, H]. Throws on an id outside [0, V). */
export function embeddingRef(ids: ArrayLike<number>, E: ArrayLike<number>, V: number, H: number): Float64Array {
  need('E', E, V * H);
  checkIds(ids, V);
  const T = ids.length;
  const y = new Float64Array(T * H);
  for (let t = 0; t < T; t++) {
    const row = ids[t]!;
    for (let h = 0; h < H; h++) y[t * H + h] = E[row * H + h]!;
  }
  return y;
}

/**
 * dE[v,:] = (dE0[v,:] or 0) + Σ_{t: ids[t]=v} dy[t,:] (scatter-add; repeated ids accumulate).
 * ids: [T], dy: [T, H] → dE: [V, H]. Rows of ids absent from the batch stay 0 (or dE0).
 */
export function embeddingBackwardRef(
  ids: ArrayLike<number>,
  dy: ArrayLike<number>,
  V: number,
  H: number,
  dE0?: ArrayLike<number>,
): Float64Array {
  checkIds(ids, V);
  const T = ids.length;
  need('dy', dy, T * H);
  if (dE0 !== undefined) need('dE', dE0, V * H);
  const dE = dE0 === undefined ? new Float64Array(V * H) : Float64Array.from(dE0);
  for (let t = 0; t < T; t++) {
    const row = ids[t]!;
    for (let h = 0; h < H; h++) dE[row * H + h] += dy[t * H + h]!;
  }
  return dE;
}
