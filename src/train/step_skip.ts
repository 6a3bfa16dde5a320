// MoTE's step skipping (DESIGN §1, training only): for each (sequence, later step, earlier
// step) pair, with probability pSkip the later step's tokens do not attend to the earlier
// step's tokens, so the model learns to answer with steps missing. Prompt tokens stay
// visible to every step. Segment ids: 0 = prompt, 1 + step index for chain tokens.
import { ArgumentError, describe } from '../errors.js';
import type { LlamaSegments } from '../model/llama.js';

/**
 * The segment mask of a packed batch. stepIds[t] = −1 for a prompt token, else its step in
 * [0, numSteps); seq[t] its sequence (0 … numSeqs−1). rng draws uniform numbers in [0, 1).
 * Returns undefined when pSkip is 0 (no mask at all: plain causal attention).
 */
export function stepSkipSegments(
  stepIds: ArrayLike<number>,
  seq: ArrayLike<number>,
  numSteps: number,
  pSkip: number,
  rng: () => number,
): LlamaSegments | undefined {
  const op = 'stepSkipSegments';
  if (typeof pSkip !== 'number' || !(pSkip >= 0 && pSkip <= 1))
    throw new ArgumentError(`${op}: pSkip: expected a probability in [0, 1], got ${describe(pSkip)}`);
  if (pSkip === 0) return undefined;
  const T = stepIds.length;
  if (seq.length !== T) throw new ArgumentError(`${op}: seq: expected ${T} entries (one per token), got ${seq.length}`);
  const S = numSteps + 1;
  const segment = new Int32Array(T);
  let numSeqs = 0;
  for (let t = 0; t < T; t++) {
    const st = stepIds[t]!;
    if (!Number.isInteger(st) || st < -1 || st >= numSteps)
      throw new ArgumentError(`${op}: stepIds[${t}]: expected −1 or a step index in [0, ${numSteps - 1}], got ${st}`);
    segment[t] = st + 1;
    numSeqs = Math.max(numSeqs, seq[t]! + 1);
  }
  const blocked = new Uint8Array(numSeqs * S * S);
  // Draw every pair in a fixed order, whether or not the sequence has both steps: the draws
  // of one sequence do not depend on the others' contents.
  for (let s = 0; s < numSeqs; s++)
    for (let later = 2; later < S; later++)
      for (let earlier = 1; earlier < later; earlier++) if (rng() < pSkip) blocked[(s * S + later) * S + earlier] = 1;
  return { numSegments: S, segment, blocked };
}
