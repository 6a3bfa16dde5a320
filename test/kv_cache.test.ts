// The paged KV cache (src/model/kv_cache.ts) and the key runs of attention (src/ops/attention.ts)
// on every backend: with blocks of 3 slots, four sequences prefilled packed and decoded side by
// side, some dropped and new ones admitted into the freed blocks, give the logits of a full
// recompute of each sequence; a drop frees blocks without copying; a query reads only its own
// sequence's blocks; a sequence's attention output is bit-identical wherever its keys sit and
// whatever else is in the cache; hostile key runs are ArgumentErrors naming keyRuns.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadModel } from '../src/model/load.js';
import type { LlamaModel } from '../src/model/llama.js';
import { attention, attentionLayout, type AttentionLayoutInit } from '../src/ops/attention.js';
import { attentionRef } from '../src/reference/attention.js';
import { ArgumentError, ShapeError } from '../src/errors.js';
import type { Backend } from '../src/backend/backend.js';
import { writeTinyModel, type WrittenTinyModel } from './fixtures/tiny_model.js';
import { closeBackends, forEachBackend, randn, relErr, rng } from './helpers.js';
import { bitsEqual } from './case_helpers.js';

after(closeBackends);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-kv-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

let model_: WrittenTinyModel | undefined;
function tiny(): WrittenTinyModel {
  model_ ??= writeTinyModel(path.join(tmp, 'llama'), {
    family: 'llama',
    hidden: 32,
    intermediate: 40,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    vocab: 48,
    tied: false,
    dtype: 'f32',
    seed: 3,
  });
  return model_;
}

const V = 48;
const tokensOf = (n: number, seed: number): number[] => Array.from({ length: n }, (_, i) => (i * 11 + seed * 5 + 1) % V);
const row = (a: Float32Array, r: number): Float32Array => a.subarray(r * V, (r + 1) * V);

async function withModel(b: Backend, body: (m: LlamaModel) => Promise<void>): Promise<void> {
  const model = await loadModel(tiny().dir, { backend: b });
  try {
    await body(model);
  } finally {
    model.dispose();
  }
}

forEachBackend(
  'paged KV cache: blocks of 3, sequences joining and leaving, logits = full recompute; drop frees blocks, copies nothing',
  async (b) => {
    await withModel(b, async (model) => {
      const lens = [9, 5, 7, 4];
      const seqs = lens.map((n, s) => tokensOf(n, s));
      const full = await Promise.all(seqs.map((t) => model.logits(t)));
      const cache = model.newCache({ capacity: 6, blockSize: 3 });
      try {
        // prefill the first 3 tokens of sequences 0, 1, 2, interleaved
        const pre = [0, 1, 2, 0, 1, 2, 0, 1, 2];
        const at = [0, 0, 0];
        const got = await model.logits(
          pre.map((s) => seqs[s]![at[s]!++]!),
          { seq: pre, cache },
        );
        pre.forEach((s, r) => assert.ok(relErr(row(got, r), row(full[s]!, (r / 3) | 0)) < 1e-5, `prefill seq ${s} row ${r}`));
        const capBefore = cache.capacity;
        assert.deepEqual(
          [0, 1, 2].map((s) => cache.blocksOf(s).length),
          [1, 1, 1],
        );
        // decode side by side; sequence 1 finishes at 5 tokens and is dropped, sequence 3 joins
        const live = new Set([0, 1, 2]);
        const pos = new Map([
          [0, 3],
          [1, 3],
          [2, 3],
        ]);
        for (let step = 0; step < 8; step++) {
          for (const s of [...live]) if (pos.get(s)! >= lens[s]!) live.delete(s);
          if (step === 2) {
            assert.ok(!live.has(1));
            const free = cache.freeBlocks;
            const own = cache.blocksOf(1);
            const others = [0, 2].map((s) => cache.blocksOf(s));
            const cap = cache.capacity;
            cache.drop([1]);
            assert.equal(cache.freeBlocks, free + own.length, 'drop returns the sequence’s blocks');
            assert.equal(cache.capacity, cap, 'drop copies nothing');
            assert.deepEqual(
              [0, 2].map((s) => cache.blocksOf(s)),
              others,
              'the other sequences keep their blocks',
            );
            live.add(3);
            pos.set(3, 0);
          }
          const batch = [...live];
          if (batch.length === 0) break;
          const ids = batch.map((s) => seqs[s]![pos.get(s)!]!);
          const out = await model.logits(ids, { seq: batch, cache });
          batch.forEach((s, r) => {
            const p = pos.get(s)!;
            assert.ok(
              relErr(row(out, r), row(full[s]!, p)) < 1e-5,
              `decode seq ${s} position ${p}: ${relErr(row(out, r), row(full[s]!, p))}`,
            );
            pos.set(s, p + 1);
          });
        }
        for (const s of [0, 2, 3]) {
          assert.equal(cache.tokenCount(s), lens[s], `seq ${s} holds its tokens`);
          assert.equal(cache.blocksOf(s).length, Math.ceil(lens[s]! / 3), `seq ${s} holds ⌈len / 3⌉ blocks`);
        }
        assert.ok(cache.capacity >= capBefore);
        const all = [0, 2, 3].flatMap((s) => cache.blocksOf(s));
        assert.equal(new Set(all).size, all.length, 'no block is shared');
        assert.equal(cache.freeBlocks + all.length, cache.capacity / 3);
      } finally {
        cache.dispose();
      }
    });
  },
);

forEachBackend('paged KV cache: a decode query reads only its own sequence’s blocks (the layout’s run lists)', async (b) => {
  await withModel(b, async (model) => {
    // a misspelt option is refused, not ignored (it sized nothing)
    assert.throws(
      () => model.newCache({ blocksize: 4 } as never),
      (e: unknown) => e instanceof ArgumentError && /unknown option 'blocksize'/.test((e as Error).message),
    );
    const cache = model.newCache({ blockSize: 4 });
    try {
      // three sequences of 10, 3 and 6 tokens, prefilled one after another
      const lens = [10, 3, 6];
      for (const [s, n] of lens.entries()) (await model.forward({ ids: tokensOf(n, s), seq: Array(n).fill(s), cache })).dispose();
      const plan = cache.begin(Int32Array.of(0, 1, 2), Int32Array.of(10, 3, 6));
      try {
        const r = (await plan.layout.ranges.read()) as Int32Array;
        const Tq = 3,
          Tk = plan.layout.Tk;
        const table = r.subarray(2 * (Tq + Tk));
        for (let i = 0; i < Tq; i++) {
          let keys = 0;
          for (let k = 0; k < r[2 * i + 1]!; k++) keys += table[2 * (r[2 * i]! + k) + 1]! - table[2 * (r[2 * i]! + k)]!;
          assert.equal(keys, Math.ceil((lens[i]! + 1) / 4) * 4, `query ${i} reads its own blocks only (capacity ${Tk})`);
        }
        assert.ok(Tk >= 4 * 6);
      } finally {
        cache.abort(plan);
      }
      assert.deepEqual(
        [0, 1, 2].map((s) => cache.tokenCount(s)),
        lens,
        'abort leaves the cache as it was',
      );
    } finally {
      cache.dispose();
    }
  });
});

forEachBackend('attention key runs: a sequence’s output is bit-identical wherever its keys sit and whatever else is there', async (b) => {
  const r = rng(41);
  const nH = 4,
    nKv = 2,
    D = 16,
    n = 11;
  const kA = randn(r, n * nKv * D),
    vA = randn(r, n * nKv * D),
    q = randn(r, nH * D);
  const run = async (Tk: number, slotOf: (t: number) => number, init: Omit<AttentionLayoutInit, 'qSeq' | 'qPos'>) => {
    const k = randn(r, Tk * nKv * D),
      v = randn(r, Tk * nKv * D); // other sequences' keys (and garbage in free slots)
    for (let t = 0; t < n; t++) {
      k.set(kA.subarray(t * nKv * D, (t + 1) * nKv * D), slotOf(t) * nKv * D);
      v.set(vA.subarray(t * nKv * D, (t + 1) * nKv * D), slotOf(t) * nKv * D);
    }
    const l = attentionLayout(b, { qSeq: [5], qPos: [n - 1], ...init });
    const tq = b.tensor(q, [1, nH, D]),
      tk = b.tensor(k, [Tk, nKv, D]),
      tv = b.tensor(v, [Tk, nKv, D]);
    try {
      const o = attention(tq, tk, tv, l);
      const out = await o.out.readFloat();
      const lse = await o.lse.readFloat();
      o.out.dispose();
      o.lse.dispose();
      return { out, lse };
    } finally {
      for (const t of [tq, tk, tv, l]) t.dispose();
    }
  };
  // alone: keys 0..n−1, default runs
  const alone = await run(n, (t) => t, { kSeq: Array(n).fill(5), kPos: Array.from({ length: n }, (_, t) => t) });
  // paged: blocks of 4 at 7, 2, 9 (out of 12) among two other sequences and free slots
  const B = 4,
    blocks = [7, 2, 9],
    Tk = 12 * B;
  const kSeq = Array.from({ length: Tk }, (_, j) => (j % 3 === 0 ? -1 : j % 2)),
    kPos = Array.from({ length: Tk }, (_, j) => j % 17);
  blocks.forEach((bl) => {
    for (let j = bl * B; j < (bl + 1) * B; j++) kSeq[j] = -1;
  });
  const slotOf = (t: number) => blocks[Math.floor(t / B)]! * B + (t % B);
  for (let t = 0; t < n; t++) {
    kSeq[slotOf(t)] = 5;
    kPos[slotOf(t)] = t;
  }
  const runs = { seq: [0, 5, 5, 5, 1], start: [0, 7 * B, 2 * B, 9 * B, 4], end: [4, 8 * B, 3 * B, 10 * B, 8] };
  const paged = await run(Tk, slotOf, { kSeq, kPos, keyRuns: runs });
  assert.ok(bitsEqual(alone.out, paged.out), `out differs: ${relErr(alone.out, paged.out)}`);
  assert.ok(bitsEqual(alone.lse, paged.lse), 'lse differs');
  // and both match the float64 reference
  const ref = attentionRef(
    q,
    kA,
    vA,
    { Tq: 1, Tk: n, numHeads: nH, numKvHeads: nKv, headDim: D },
    { qSeq: [5], qPos: [n - 1], kSeq: Array(n).fill(5), kPos: Array.from({ length: n }, (_, t) => t) },
  );
  assert.ok(relErr(paged.out, ref.out) < 1e-5);
  // a key outside its sequence's runs is not seen: leave the middle block out
  const without = await run(Tk, slotOf, { kSeq, kPos, keyRuns: { seq: [5, 5], start: [7 * B, 9 * B], end: [8 * B, 10 * B] } });
  const keep = Array.from({ length: n }, (_, t) => t).filter((t) => t < B || t >= 2 * B);
  const pick = (a: Float32Array) => Float64Array.from(keep.flatMap((t) => Array.from(a.subarray(t * nKv * D, (t + 1) * nKv * D))));
  const ref2 = attentionRef(
    q,
    pick(kA),
    pick(vA),
    { Tq: 1, Tk: keep.length, numHeads: nH, numKvHeads: nKv, headDim: D },
    { qSeq: [5], qPos: [n - 1], kSeq: keep.map(() => 5), kPos: keep },
  );
  assert.ok(relErr(without.out, ref2.out) < 1e-5, `runs that leave a block out: ${relErr(without.out, ref2.out)}`);
});

test('attentionLayout: hostile key runs are argument errors naming keyRuns', async () => {
  const { openBackend } = await import('../src/backend/select.js');
  const b = await openBackend('cpu');
  try {
    const base = { qSeq: [0], qPos: [3], kSeq: [0, 0, 0, 0], kPos: [0, 1, 2, 3] };
    const bad: [unknown, RegExp][] = [
      [{ seq: [0], start: [2], end: [1] }, /keyRuns: run 0: start 2 is past its end 1/],
      [{ seq: [0, 0], start: [0, 1], end: [2, 3] }, /keyRuns: key 1 lies in two runs/],
      [{ seq: [0], start: [0], end: [5] }, /keyRuns\.end\[0\]/],
      [{ seq: [0], start: [-1], end: [2] }, /keyRuns\.start\[0\]/],
      [{ seq: [0.5], start: [0], end: [2] }, /keyRuns\.seq\[0\]/],
      [{ seq: [0, 0], start: [0], end: [2] }, /keyRuns\.start/],
      [{ seq: [0], start: [0] }, /keyRuns\.end/],
      ['runs', /keyRuns/],
    ];
    for (const [runs, re] of bad)
      assert.throws(
        () => attentionLayout(b, { ...base, keyRuns: runs as AttentionLayoutInit['keyRuns'] }),
        (e: unknown) => (e instanceof ArgumentError || e instanceof ShapeError) && re.test(e.message),
        `${JSON.stringify(runs)} → ${re}`,
      );
    // kSeq −1 (an empty slot) is accepted and seen by nobody
    const l = attentionLayout(b, { ...base, kSeq: [0, -1, 0, -1] });
    l.dispose();
  } finally {
    b.destroy();
  }
});

test('attention on cpu: bit-identical with 1, 2 and 3 threads (work items cut from the layout only)', async () => {
  const { openBackend } = await import('../src/backend/select.js');
  const { attentionGrad } = await import('../src/ops/attention.js');
  const r = rng(77);
  const nH = 6,
    nKv = 2,
    D = 40;
  // three packed sequences of 37, 9 and 21 tokens, interleaved in stretches
  const seqOf = [...Array(20).fill(0), ...Array(9).fill(1), ...Array(17).fill(0), ...Array(21).fill(2)];
  const count = [0, 0, 0];
  const qPos = seqOf.map((s) => count[s]!++);
  const T = seqOf.length;
  const q = randn(r, T * nH * D),
    k = randn(r, T * nKv * D),
    v = randn(r, T * nKv * D),
    g = randn(r, T * nH * D);
  const results: Float32Array[][] = [];
  for (const threads of [1, 2, 3]) {
    const b = await openBackend('cpu', { threads });
    try {
      const l = attentionLayout(b, { qSeq: seqOf, qPos });
      const [tq, tk, tv, tg] = [b.tensor(q, [T, nH, D]), b.tensor(k, [T, nKv, D]), b.tensor(v, [T, nKv, D]), b.tensor(g, [T, nH, D])];
      const f = attention(tq, tk, tv, l);
      const d = attentionGrad(tg, tq, tk, tv, f.out, f.lse, l);
      results.push(await Promise.all([f.out, f.lse, d.dq, d.dk, d.dv].map((t) => t.readFloat())));
      for (const t of [tq, tk, tv, tg, f.out, f.lse, d.dq, d.dk, d.dv, l]) t.dispose();
    } finally {
      b.destroy();
    }
  }
  const names = ['out', 'lse', 'dq', 'dk', 'dv'];
  for (let t = 1; t < results.length; t++)
    names.forEach((n, i) => assert.ok(bitsEqual(results[0]![i]!, results[t]![i]!), `${n}: thread count changed the bits`));
  (await openBackend('cpu', { threads: os.cpus().length })).destroy();
});
