import { ArgumentError, DTypeError, describe } from './errors.js';

/** Storage dtypes. Floats always accumulate in f32; f16/bf16 are for weights. */
export type DType = 'f32' | 'f16' | 'bf16' | 'i32';
export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i32'];
/** Dtypes a weight may be stored in. */
export const WEIGHT_DTYPES: readonly DType[] = ['f32', 'f16', 'bf16'];

/** Numeric code shared with native code (native/common.h) and CUDA (kernels/cuda/kernels.h). */
export const DTYPE_CODE: Record<DType, number> = { f32: 0, f16: 1, bf16: 2, i32: 3 };

export function bytesPerElement(dtype: DType): number {
  return dtype === 'f16' || dtype === 'bf16' ? 2 : 4;
}

export function checkDType(name: string, dtype: unknown): DType {
  if (typeof dtype !== 'string' || !(DTYPES as readonly string[]).includes(dtype)) {
    throw new DTypeError(`${name}: expected one of ${DTYPES.join(', ')}, got ${describe(dtype)}`);
  }
  return dtype as DType;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** f32 -> bf16 bits, round to nearest even; NaN stays NaN. */
export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) | 0x40) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToF32(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0]!;
}

/** f32 -> IEEE half bits, round to nearest even, with subnormals and overflow to inf. */
export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Host data a tensor can be made from. f16/bf16 take raw bits (Uint16Array) or numbers to convert. */
export type HostData = Float32Array | Float64Array | Int32Array | Uint16Array | readonly number[];

/** Encodes host data into the exact bytes of `dtype` storage. */
export function encode(name: string, data: HostData, dtype: DType): Uint8Array {
  const n = data.length;
  switch (dtype) {
    case 'f32': {
      if (data instanceof Uint16Array || data instanceof Int32Array) {
        throw new DTypeError(`${name}: f32 tensor needs Float32Array, Float64Array or number[], got ${describe(data)}`);
      }
      const out = data instanceof Float32Array ? data : Float32Array.from(data);
      return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    }
    case 'i32': {
      if (data instanceof Int32Array) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      if (data instanceof Uint16Array || data instanceof Float32Array || data instanceof Float64Array) {
        throw new DTypeError(`${name}: i32 tensor needs Int32Array or number[], got ${describe(data)}`);
      }
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const v = data[i]!;
        if (!Number.isInteger(v) || v < -2147483648 || v > 2147483647) {
          throw new ArgumentError(`${name}[${i}]: expected a 32-bit integer, got ${v}`);
        }
        out[i] = v;
      }
      return new Uint8Array(out.buffer);
    }
    case 'f16':
    case 'bf16': {
      if (data instanceof Uint16Array) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      if (data instanceof Int32Array) throw new DTypeError(`${name}: ${dtype} tensor needs floats or Uint16Array bits, got Int32Array`);
      const conv = dtype === 'f16' ? f32ToF16Bits : f32ToBf16Bits;
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) out[i] = conv(data[i]!);
      return new Uint8Array(out.buffer);
    }
  }
}

/** Decodes storage bytes into f32 (floats) or i32 values. */
export function decode(bytes: ArrayBuffer, dtype: DType, length: number): Float32Array | Int32Array {
  switch (dtype) {
    case 'f32':
      return new Float32Array(bytes, 0, length);
    case 'i32':
      return new Int32Array(bytes, 0, length);
    case 'f16':
    case 'bf16': {
      const bits = new Uint16Array(bytes, 0, length);
      const conv = dtype === 'f16' ? f16BitsToF32 : bf16BitsToF32;
      const out = new Float32Array(length);
      for (let i = 0; i < length; i++) out[i] = conv(bits[i]!);
      return out;
    }
  }
}

/** Host floats of a stored dtype as f32: f32 data as it is, f16/bf16 bits converted. */
export function hostToF32(dtype: DType, data: Float32Array | Uint16Array | Int32Array): Float32Array {
  if (dtype === 'f32') return data as Float32Array;
  if (dtype === 'i32') throw new DTypeError(`hostToF32: dtype: expected f32, f16 or bf16, got i32`);
  const bits = data as Uint16Array;
  const conv = dtype === 'f16' ? f16BitsToF32 : bf16BitsToF32;
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = conv(bits[i]!);
  return out;
}

/** Rounds values through a storage dtype (what the device will see). */
export function roundTo(dtype: DType, data: ArrayLike<number>): Float64Array {
  const out = new Float64Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    out[i] =
      dtype === 'f16'
        ? f16BitsToF32(f32ToF16Bits(v))
        : dtype === 'bf16'
          ? bf16BitsToF32(f32ToBf16Bits(v))
          : dtype === 'f32'
            ? Math.fround(v)
            : v;
  }
  return out;
}
