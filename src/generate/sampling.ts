// Token sampling on the host from one row of logits: greedy (temperature 0), temperature,
// top-k and top-p (nucleus), driven by a seeded RNG so that a (seed, logits) pair always picks
// the same token. Everything is computed in float64; ties are broken towards the lower token id.
//
// Order of the filters (as transformers' logits warpers): scale by 1/temperature, keep the
// topK most likely tokens, then keep the smallest set of most likely tokens whose probability
// adds up to at least topP, renormalise and draw.

import { checkPlainOptions } from '../ops/check.js';
import { ArgumentError, ShapeError, describe } from '../errors.js';
import { mulberry32 } from '../rng.js';

export interface SamplingOptions {
  /** 0 = greedy (argmax, the default); > 0 divides the logits before the softmax. */
  temperature?: number;
  /** Keep only the topK most likely tokens (integer ≥ 1; default Infinity: all). */
  topK?: number;
  /** Nucleus: keep the most likely tokens up to cumulative probability topP (0 < topP ≤ 1; default 1). */
  topP?: number;
}

/** Checked sampling options with their defaults filled in. */
export interface ResolvedSampling {
  temperature: number;
  topK: number;
  topP: number;
}

const SAMPLING_KEYS = ['temperature', 'topK', 'topP'];

/**
 * Checks sampling options (ArgumentError naming the option: `${op}: temperature: …`) and fills
 * in the defaults (temperature 0, topK ∞, topP 1).
 */
export function checkSampling(op: string, opts: SamplingOptions | undefined): ResolvedSampling {
  if (opts === undefined) return { temperature: 0, topK: Infinity, topP: 1 };
  // A misspelt option would otherwise be ignored silently (greedy instead of sampling).
  checkPlainOptions(
    `${op}${op.endsWith('sampling') ? '' : ': sampling'}`,
    opts,
    SAMPLING_KEYS,
    'a plain object { temperature?, topK?, topP? }',
  );
  const { temperature = 0, topK, topP = 1 } = opts;
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0) {
    throw new ArgumentError(`${op}: temperature: expected a finite number ≥ 0, got ${describe(temperature)}`);
  }
  if (topK !== undefined && topK !== Infinity && (typeof topK !== 'number' || !Number.isSafeInteger(topK) || topK < 1)) {
    throw new ArgumentError(`${op}: topK: expected an integer ≥ 1, got ${describe(topK)}`);
  }
  if (typeof topP !== 'number' || !Number.isFinite(topP) || !(topP > 0) || topP > 1) {
    throw new ArgumentError(`${op}: topP: expected a number in (0, 1], got ${describe(topP)}`);
  }
  return { temperature, topK: topK ?? Infinity, topP };
}

/** Checks a seed: an integer in [0, 2³²). */
export function checkSeed(op: string, name: string, seed: unknown): number {
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed) || seed < 0 || seed >= 2 ** 32) {
    throw new ArgumentError(`${op}: ${name}: expected an integer in [0, 2^32), got ${describe(seed)}`);
  }
  return seed;
}

/** A deterministic uniform RNG on [0, 1) (mulberry32): the same seed gives the same stream. */
export class SeededRng {
  readonly #next: () => number;
  constructor(seed: number) {
    this.#next = mulberry32(checkSeed('SeededRng', 'seed', seed));
  }
  next(): number {
    return this.#next();
  }
}

function checkRow(op: string, logits: ArrayLike<number>): void {
  if (!logits || typeof logits.length !== 'number')
    throw new ArgumentError(`${op}: logits: expected a row of numbers, got ${describe(logits)}`);
  if (logits.length === 0) throw new ShapeError(`${op}: logits: expected at least one entry, got none`);
}

/** Index of the largest logit (the lowest index among equal ones; NaN never wins). */
export function argmax(logits: ArrayLike<number>): number {
  checkRow('argmax', logits);
  let best = -1;
  let bv = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    if (v > bv || (best < 0 && v === bv)) {
      bv = v;
      best = i;
    }
  }
  return best < 0 ? 0 : best;
}

/**
 * The distribution sampling draws from, after temperature, topK and topP: token ids in
 * descending probability (ties: lower id first) with their renormalised probabilities. For
 * temperature 0 it is the argmax with probability 1.
 */
export function samplingDistribution(
  logits: ArrayLike<number>,
  opts: SamplingOptions | ResolvedSampling = {},
): { ids: number[]; probs: number[] } {
  checkRow('samplingDistribution', logits);
  const o = checkSampling('samplingDistribution', opts as SamplingOptions);
  if (o.temperature === 0) return { ids: [argmax(logits)], probs: [1] };
  const V = logits.length;
  const order: number[] = [];
  for (let i = 0; i < V; i++) if (!Number.isNaN(logits[i]!)) order.push(i);
  if (order.length === 0) return { ids: [0], probs: [1] };
  order.sort((a, b) => logits[b]! - logits[a]! || a - b);
  const kept = order.slice(0, Math.min(order.length, o.topK));
  const top = logits[kept[0]!]!;
  const max = top / o.temperature;
  // A tiny temperature (or an infinite logit) makes max infinite and every term NaN: then scale
  // the differences instead (the top logits get exp(0) = 1, the rest exp(−∞) = 0).
  let p = Number.isFinite(max)
    ? kept.map((i) => Math.exp(logits[i]! / o.temperature - max))
    : kept.map((i) => (logits[i] === top ? 1 : Math.exp((logits[i]! - top) / o.temperature)));
  let sum = p.reduce((a, b) => a + b, 0);
  p = p.map((x) => x / sum);
  if (o.topP < 1) {
    let acc = 0;
    let n = 0;
    while (n < p.length) {
      acc += p[n]!;
      n++;
      if (acc >= o.topP) break;
    }
    kept.length = n;
    p.length = n;
    sum = p.reduce((a, b) => a + b, 0);
    p = p.map((x) => x / sum);
  }
  return { ids: kept, probs: p };
}

/** Picks a token from a row of logits: argmax for temperature 0, else one draw from `rng`. */
export function sampleToken(logits: ArrayLike<number>, opts: SamplingOptions | ResolvedSampling, rng: SeededRng | (() => number)): number {
  const d = samplingDistribution(logits, opts);
  if (d.ids.length === 1) return d.ids[0]!;
  const u = typeof rng === 'function' ? rng() : rng.next();
  let acc = 0;
  for (let i = 0; i < d.ids.length; i++) {
    acc += d.probs[i]!;
    if (u < acc) return d.ids[i]!;
  }
  return d.ids[d.ids.length - 1]!;
}
