// Packing whole examples into one batch of sequences: the layout of a training batch, shared
// by the Trainer's micro-batches and chains.ts's packExamples.

/** One packed batch. */
export interface PackedSequences {
  ids: Int32Array;
  /** Index of the token's sequence within the batch. */
  seq: Int32Array;
  /** Position of the token within its sequence. */
  pos: Int32Array;
  /** −1 on prompt tokens, else the step index (routing). */
  stepIds: Int32Array;
  /** targets[t] = ids[t + 1] within a sequence; −1 at a sequence's last token. */
  targets: Int32Array;
  /** 1 where the prediction of targets[t] counts (token t + 1 is learned); 0 at a sequence's last token. */
  lossMask: Uint8Array;
}

/** Packs examples[i] for i in `picked`, in that order, each a sequence of its own. Arrays are trusted (checked by the caller). */
export function packSequences(
  examples: readonly { ids: ArrayLike<number>; lossMask: ArrayLike<number>; stepIds?: ArrayLike<number> | null }[],
  picked: readonly number[],
): PackedSequences {
  let T = 0;
  for (const i of picked) T += examples[i]!.ids.length;
  const b: PackedSequences = {
    ids: new Int32Array(T),
    seq: new Int32Array(T),
    pos: new Int32Array(T),
    stepIds: new Int32Array(T).fill(-1),
    targets: new Int32Array(T).fill(-1),
    lossMask: new Uint8Array(T),
  };
  let o = 0;
  picked.forEach((i, s) => {
    const e = examples[i]!;
    const n = e.ids.length;
    for (let t = 0; t < n; t++) {
      b.ids[o + t] = e.ids[t]!;
      b.seq[o + t] = s;
      b.pos[o + t] = t;
      if (e.stepIds) b.stepIds[o + t] = e.stepIds[t]!;
      if (t + 1 < n) {
        b.targets[o + t] = e.ids[t + 1]!;
        b.lossMask[o + t] = e.lossMask[t + 1] ? 1 : 0;
      }
    }
    o += n;
  });
  return b;
}
