// Float64 reference for the rope family (rotary position embeddings, HF "rotate half"
// convention as in transformers' LlamaRotaryEmbedding / apply_rotary_pos_emb): plain loops,
// written to be read, not to be fast.
//
//   x: [T, heads, D] (D = headDim, even), positions: [T], invFreq: [D/2]
//   θ[t,i]  = positions[t]·invFreq[i]                 for i < D/2
//   cos/sin = [cos θ, cos θ] / [sin θ, sin θ]          (HF: emb = cat(freqs, freqs))
//   rotate_half(x) = [−x[D/2:], x[:D/2]]
//   y = x·cos + rotate_half(x)·sin, i.e. for i < D/2:
//     y[i]       = x[i]·cos θ_i − x[i+D/2]·sin θ_i
//     y[i+D/2]   = x[i+D/2]·cos θ_i + x[i]·sin θ_i
// The rotation is orthogonal, so its backward is the rotation by −θ (the transpose).
//
// HF computes cos/sin in float32; this reference computes them in float64.

/**
 * rope_scaling as it appears in an HF config.json. `rope_type` (or the legacy `type`) is one of
 * 'default', 'linear', 'llama3'. Other types (dynamic, yarn, longrope, ...) are rejected.
 */
export interface RopeScaling {
  rope_type?: string;
  type?: string;
  factor?: number;
  /** llama3 only */
  low_freq_factor?: number;
  /** llama3 only */
  high_freq_factor?: number;
  /** llama3 only */
  original_max_position_embeddings?: number;
}

function fail(msg: string): never {
  throw new Error(`rope reference: ${msg}`);
}

function need(name: string, a: ArrayLike<number>, n: number): void {
  if (a.length !== n) fail(`${name}: expected ${n} entries, got ${a.length}`);
}

function num(s: RopeScaling, key: keyof RopeScaling, type: string): number {
  const v = s[key];
  if (typeof v !== 'number' || !Number.isFinite(v))
    fail(`rope_scaling.${key}: expected a finite number for type '${type}', got ${String(v)}`);
  return v;
}

/**
 * The inverse frequencies [D/2], as HF's ROPE_INIT_FUNCTIONS compute them:
 *   default: invFreq[i] = 1 / theta^(2i/D)
 *   linear:  default / factor
 *   llama3:  _compute_llama3_parameters — with wavelen = 2π/invFreq,
 *            lowWl = original_max_position_embeddings / low_freq_factor,
 *            highWl = original_max_position_embeddings / high_freq_factor:
 *              wavelen < highWl            → invFreq           (high frequencies kept)
 *              wavelen > lowWl             → invFreq / factor  (low frequencies scaled)
 *              otherwise (medium)          → (1 − s)·invFreq/factor + s·invFreq,
 *                                            s = (orig/wavelen − low_freq_factor) / (high_freq_factor − low_freq_factor)
 * The attention scaling factor of all three types is 1, so it does not appear.
 */
export function ropeInvFreqRef(headDim: number, theta: number, scaling?: RopeScaling | null): Float64Array {
  if (!Number.isInteger(headDim) || headDim < 2 || headDim % 2 !== 0) fail(`headDim: expected an even integer ≥ 2, got ${headDim}`);
  if (!(theta > 0)) fail(`theta: expected > 0, got ${theta}`);
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(theta, (2 * i) / headDim);
  const type = scaling ? (scaling.rope_type ?? scaling.type ?? 'default') : 'default';
  if (type === 'default') return inv;
  const s = scaling!;
  const factor = num(s, 'factor', type);
  if (type === 'linear') {
    for (let i = 0; i < half; i++) inv[i] = inv[i]! / factor;
    return inv;
  }
  if (type === 'llama3') {
    const low = num(s, 'low_freq_factor', type);
    const high = num(s, 'high_freq_factor', type);
    const orig = num(s, 'original_max_position_embeddings', type);
    if (!(high > low)) fail(`rope_scaling: high_freq_factor (${high}) must exceed low_freq_factor (${low})`);
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
  return fail(`rope_scaling type '${type}' is not supported (expected 'default', 'linear' or 'llama3')`);
}

function rotate(
  x: ArrayLike<number>,
  positions: ArrayLike<number>,
  invFreq: ArrayLike<number>,
  T: number,
  heads: number,
  headDim: number,
  sign: 1 | -1,
): Float64Array {
  if (headDim % 2 !== 0) fail(`headDim: expected even, got ${headDim}`);
  const half = headDim / 2;
  need('x', x, T * heads * headDim);
  need('positions', positions, T);
  need('invFreq', invFreq, half);
  const y = new Float64Array(T * heads * headDim);
  for (let t = 0; t < T; t++)
    for (let i = 0; i < half; i++) {
      const angle = positions[t]! * invFreq[i]!;
      const c = Math.cos(angle);
      const s = sign * Math.sin(angle);
      for (let h = 0; h < heads; h++) {
        const base = (t * heads + h) * headDim;
        const x1 = x[base + i]!;
        const x2 = x[base + i + half]!;
        y[base + i] = x1 * c - x2 * s;
        y[base + i + half] = x2 * c + x1 * s;
      }
    }
  return y;
}

/**
 * y = x·cos + rotate_half(x)·sin with angles positions[t]·invFreq[i] (see the file header).
 * x: [T, heads, headDim], positions: [T], invFreq: [headDim/2] (from ropeInvFreqRef) → y: [T, heads, headDim].
 * Applied to q (heads = numHeads) and k (heads = numKvHeads) alike.
 */
export function ropeRef(
  x: ArrayLike<number>,
  positions: ArrayLike<number>,
  invFreq: ArrayLike<number>,
  T: number,
  heads: number,
  headDim: number,
): Float64Array {
  return rotate(x, positions, invFreq, T, heads, headDim, 1);
}

/**
 * dx = Rᵀ·dy: the rotation by the opposite angle, for i < D/2:
 *   dx[i] = dy[i]·cos θ + dy[i+D/2]·sin θ,   dx[i+D/2] = dy[i+D/2]·cos θ − dy[i]·sin θ.
 * dy: [T, heads, headDim] → dx: [T, heads, headDim].
 */
export function ropeBackwardRef(
  dy: ArrayLike<number>,
  positions: ArrayLike<number>,
  invFreq: ArrayLike<number>,
  T: number,
  heads: number,
  headDim: number,
): Float64Array {
  return rotate(dy, positions, invFreq, T, heads, headDim, -1);
}
