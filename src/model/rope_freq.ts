// RoPE inverse frequencies of a model config, computed on the host once per model and
// uploaded as f32 [headDim / 2] (src/ops/rope.ts reads them). The float64 reference
// (src/reference/rope.ts, ropeInvFreqRef) computes its own from the config.json form, so the
// two stay independent checks of each other (test/rope.test.ts).
//
//   default: invFreq[i] = θ^(−2i/D)
//   linear:  invFreq / factor
//   llama3:  by wavelength λ = 2π / invFreq, with lowWl = orig / low_freq_factor and
//            highWl = orig / high_freq_factor: λ < highWl keeps invFreq, λ > lowWl takes
//            invFreq / factor, in between a smooth mix (Llama 3.1's rope_scaling).

import { ArgumentError, describe } from '../errors.js';
import type { RopeScaling } from './config.js';

/** Float64 inverse frequencies for head size `headDim`, base `theta` and the config's scaling. */
export function ropeInvFreq(headDim: number, theta: number, scaling: RopeScaling | null): Float64Array {
  if (!Number.isInteger(headDim) || headDim < 2 || headDim % 2 !== 0)
    throw new ArgumentError(`ropeInvFreq: headDim: expected an even integer ≥ 2, got ${describe(headDim)}`);
  if (!(theta > 0)) throw new ArgumentError(`ropeInvFreq: theta: expected a positive number, got ${describe(theta)}`);
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(theta, (2 * i) / headDim);
  if (scaling === null) return inv;
  const { factor } = scaling;
  if (scaling.type === 'linear') {
    for (let i = 0; i < half; i++) inv[i] = inv[i]! / factor;
    return inv;
  }
  const low = scaling.lowFreqFactor,
    high = scaling.highFreqFactor,
    orig = scaling.originalMaxPositionEmbeddings;
  if (!(high > low)) throw new ArgumentError(`ropeInvFreq: rope scaling: highFreqFactor (${high}) must exceed lowFreqFactor (${low})`);
  const lowWl = orig / low;
  const highWl = orig / high;
  for (let i = 0; i < half; i++) {
    const f = inv[i]!;
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highWl) inv[i] = f;
    else if (wavelen > lowWl) inv[i] = f / factor;
    else {
      const smooth = (orig / wavelen - low) / (high - low);
      inv[i] = ((1 - smooth) * f) / factor + smooth * f;
    }
  }
  return inv;
}
