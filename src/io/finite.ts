// Weights read from files must be finite: one NaN or ∞ in a weight makes every logit NaN, and
// generation then emits token 0 forever without any error. Loaders check each tensor once, on
// the host, before it is uploaded.

import { FormatError } from '../errors.js';
import { f16BitsToF32, bf16BitsToF32, type DType } from '../dtype.js';

/** f16 rounds values of magnitude ≥ 65520 to ∞. */
const F16_OVERFLOW = 65520;

/**
 * Index of the first element of `data` (stored as `dtype`: f16/bf16 as raw bits) that is NaN
 * or ±∞, or that would become ∞ when converted to `target`; -1 when there is none.
 */
export function firstNonFinite(dtype: DType, data: Float32Array | Uint16Array | Int32Array, target: DType = dtype): number {
  if (dtype === 'i32') return -1;
  if (dtype === 'f32') {
    const f = data as Float32Array;
    if (target === 'f16') {
      for (let i = 0; i < f.length; i++) if (!(Math.abs(f[i]!) < F16_OVERFLOW)) return i;
    } else {
      for (let i = 0; i < f.length; i++) if (f[i]! - f[i]! !== 0) return i;
    }
    return -1;
  }
  const bits = data as Uint16Array;
  // Exponent all ones: ∞ or NaN.
  const exp = dtype === 'f16' ? 0x7c00 : 0x7f80;
  for (let i = 0; i < bits.length; i++) if ((bits[i]! & exp) === exp) return i;
  if (dtype === 'bf16' && target === 'f16') {
    for (let i = 0; i < bits.length; i++) if (!(Math.abs(bf16BitsToF32(bits[i]!)) < F16_OVERFLOW)) return i;
  }
  return -1;
}

/** The value at `i`, for a message. */
function valueAt(dtype: DType, data: Float32Array | Uint16Array | Int32Array, i: number): number {
  const v = data[i]!;
  return dtype === 'f16' ? f16BitsToF32(v) : dtype === 'bf16' ? bf16BitsToF32(v) : v;
}

/**
 * Throws a FormatError `${file}: tensor '${name}': element i is NaN` when the tensor holds a
 * NaN or ±∞ (or a value `target` cannot hold).
 */
export function checkFinite(
  file: string,
  name: string,
  t: { dtype: DType; data: Float32Array | Uint16Array | Int32Array },
  target: DType = t.dtype,
): void {
  const i = firstNonFinite(t.dtype, t.data, target);
  if (i < 0) return;
  const v = valueAt(t.dtype, t.data, i);
  const what = Number.isFinite(v) ? `${v}, which overflows ${target} (its largest value is 65504)` : String(v);
  throw new FormatError(`${file}: tensor '${name}': element ${i} is ${what}; weights must be finite numbers`);
}
