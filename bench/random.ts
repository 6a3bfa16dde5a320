// Deterministic bench inputs: the same seed gives the same floats in every run and engine.

/** Deterministic uniform(-amp, amp) floats (xorshift32). */
export function randomFloats(n: number, amp: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = ((s / 4294967296) * 2 - 1) * amp;
  }
  return out;
}
