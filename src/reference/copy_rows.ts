// Float64 reference for the copy_rows family: plain loops, written to be read, not to be fast.
//   dst: [Rd, W], src: [Rs, W] (row-major, any element values), dstRows / srcRows: [N]
//   integers, dstRows distinct, in [0, Rd) and [0, Rs).

/**
 * out = dst with out[dstRows[i], :] = src[srcRows[i], :] for i < N; rows not named in dstRows
 * keep their values. Reads happen before writes, so src may be dst itself (then rows are read
 * as they were before the copy). Throws on an index out of range or a repeated dstRows entry.
 */
export function copyRowsRef(
  dst: ArrayLike<number>,
  src: ArrayLike<number>,
  dstRows: ArrayLike<number>,
  srcRows: ArrayLike<number>,
  W: number,
): Float64Array {
  if (!Number.isInteger(W) || W <= 0) throw new Error(`copy_rows reference: W = ${W} is not a positive integer`);
  if (dst.length % W !== 0 || src.length % W !== 0)
    throw new Error(`copy_rows reference: dst (${dst.length}) and src (${src.length}) must hold whole rows of ${W}`);
  if (dstRows.length !== srcRows.length) throw new Error(`copy_rows reference: ${dstRows.length} dstRows but ${srcRows.length} srcRows`);
  const Rd = dst.length / W,
    Rs = src.length / W;
  const seen = new Set<number>();
  for (let i = 0; i < dstRows.length; i++) {
    const d = dstRows[i]!,
      s = srcRows[i]!;
    if (!Number.isInteger(d) || d < 0 || d >= Rd) throw new Error(`copy_rows reference: dstRows[${i}] = ${d} not in [0, ${Rd - 1}]`);
    if (!Number.isInteger(s) || s < 0 || s >= Rs) throw new Error(`copy_rows reference: srcRows[${i}] = ${s} not in [0, ${Rs - 1}]`);
    if (seen.has(d)) throw new Error(`copy_rows reference: dstRows[${i}] = ${d} repeats an earlier entry`);
    seen.add(d);
  }
  const before = Float64Array.from(src);
  const out = Float64Array.from(dst);
  for (let i = 0; i < dstRows.length; i++) {
    const d = dstRows[i]!,
      s = srcRows[i]!;
    for (let w = 0; w < W; w++) out[d * W + w] = before[s * W + w]!;
  }
  return out;
}
