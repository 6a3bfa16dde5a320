// The rank-unit adapter pool (src/adapters/pool.ts, DESIGN §8) and the engine on it:
//   - logits through the pool (ranks 5, 8, 16, 24, 64 in entries of u = 8, one slot per entry)
//     = logits through a stack padded to the largest rank, plain and mixed (two adapters per
//     token with weights), within the f32 LoRA tolerance;
//   - the pool's bytes for ranks 8/16/32/64 are the sum of the adapters' bytes (not 4 × rank 64);
//   - adding a rank-64 adapter and removing another while a stream decodes copies that
//     adapter's bytes only, leaves every other adapter's entries where they were and the
//     stream's tokens unchanged;
//   - a budget of a quarter of the adapters' bytes pages them in and out and gives the tokens of
//     all resident; a request alone and in a busy engine of mixed ranks gives the same tokens;
//   - an adapter needing more slots per token than MAX_LORA_SLOTS is refused, naming poolUnit.
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { closeBackends, forEachBackend, randn, relErr, tolerance } from './helpers.js';
import type { Backend } from '../src/backend/backend.js';
import type { LlamaModel } from '../src/model/llama.js';
import { loadModel } from '../src/model/load.js';
import { LINEAR_MODULES, linearShape } from '../src/model/config.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { DEFAULT_MODEL_DIR } from '../src/mote/default_model.js';
import { addStepTokens, createMote } from '../src/mote/bundle.js';
import { saveMote } from '../src/mote/bundle_io.js';
import { moteConfig } from '../src/mote/steps.js';
import { stepTokenIds } from '../src/mote/chains.js';
import { mulberry32 } from '../src/rng.js';
import { loraRouting } from '../src/ops/lora.js';
import { stackAdapters, type ReadAdapter } from '../src/adapters/peft_io.js';
import { freeStacks, uploadStacks } from '../src/adapters/stacks.js';
import { AdapterPool } from '../src/adapters/pool.js';
import { Engine, EngineError, type EngineRequest } from '../src/serve/engine.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-pool-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
after(closeBackends);

const config = moteConfig();
const tokenizer = loadTokenizer(DEFAULT_MODEL_DIR);
const stepTokens = () => new Map(stepTokenIds(tokenizer, config).start.map((id, k) => [id, k] as [number, number]));
/** Bundles of rank 8, 16, 32, 64 (their experts are plain PEFT adapters of that rank). */
const bundles: string[] = [];

async function openModel(b: Backend): Promise<LlamaModel> {
  const model = await loadModel(DEFAULT_MODEL_DIR, { backend: b });
  await addStepTokens(model, tokenizer, config);
  return model;
}

before(async () => {
  const { openBackend } = await import('../src/backend/select.js');
  let b: Backend;
  try {
    b = await openBackend('cpu');
  } catch {
    b = await openBackend('webgpu');
  }
  const model = await openModel(b);
  for (const rank of [8, 16, 32, 64]) {
    const bundle = createMote(model, { rank, loraAlpha: 2 * rank }, { seed: rank, init: 'random' });
    const dir = path.join(tmp, `bundle-${rank}`);
    await saveMote(bundle, dir);
    bundle.dispose();
    bundles.push(dir);
  }
  model.dispose();
  b.destroy();
});

/** A random in-memory adapter of `rank` on every linear (B scaled down so that outputs stay moderate). */
function randomAdapter(model: LlamaModel, rank: number, seed: number): ReadAdapter {
  const cfg = model.config;
  const r = mulberry32(seed);
  const modules: ReadAdapter['modules'] = new Map();
  for (let l = 0; l < cfg.numLayers; l++) {
    for (const m of LINEAR_MODULES) {
      const [Hout, Hin] = linearShape(cfg, m);
      modules.set(`${l}.${m}`, {
        A: randn(r, rank * Hin, 1 / Math.sqrt(Hin)),
        B: randn(r, Hout * rank, 1 / Math.sqrt(rank)),
        rank,
        scale: 2 / rank + 0.1 * seed,
      });
    }
  }
  return { dir: `<rank ${rank}>`, config: null as never, modules };
}

forEachBackend(
  'adapter pool: logits through rank-unit entries = through a stack padded to the largest rank (ranks 5/8/16/24/64)',
  async (b) => {
    const model = await loadModel(DEFAULT_MODEL_DIR, { backend: b });
    const ranks = [5, 8, 16, 24, 64];
    const adapters = ranks.map((r, i) => randomAdapter(model, r, i + 1));
    const padded = uploadStacks(b, model.config, stackAdapters(model.config, adapters));
    const pool = new AdapterPool(b, model.config, { unit: 8, initialEntries: 4 }); // grows twice on the way
    try {
      const entries = adapters.map((a, i) => pool.add(`a${i}`, a));
      assert.deepEqual(
        entries.map((e) => e.length),
        [1, 1, 2, 3, 8],
      );
      assert.ok(pool.copied.grows >= 1, 'the pool grew (its copy keeps the entries)');
      const T = 11;
      const ids = Array.from({ length: T }, (_, t) => 3 + ((t * 37) % 200));
      // plain: token t on adapter t mod 6 (5: none); mixed: two adapters with weights 0.3 / 0.7
      const plain = ids.map((_, t) => (t % 6 === 5 ? [] : [[t % 6, 1]]));
      const mixed = ids.map((_, t) => [
        [t % 5, 0.3],
        [(t + 2) % 5, 0.7],
      ]);
      for (const [name, route] of [
        ['plain', plain],
        ['mixed', mixed],
      ] as const) {
        const K = Math.max(...route.map((x) => x.length), 1);
        const slots = new Int32Array(T * K).fill(-1);
        const w = new Float32Array(T * K);
        route.forEach((x, t) =>
          x.forEach(([a, wt], k) => {
            slots[t * K + k] = a!;
            w[t * K + k] = wt!;
          }),
        );
        const pr = route.map((x) => x.flatMap(([a, wt]) => [...entries[a!]!].map((e) => [e, wt!] as const)).sort((p, q) => p[0] - q[0]));
        const PK = Math.max(...pr.map((x) => x.length), 1);
        const ps = new Int32Array(T * PK).fill(-1);
        const pw = new Float32Array(T * PK);
        pr.forEach((x, t) =>
          x.forEach(([e, wt], k) => {
            ps[t * PK + k] = e;
            pw[t * PK + k] = wt;
          }),
        );
        const rt = loraRouting(b, slots, { K, L: adapters.length, weight: w });
        const prt = loraRouting(b, ps, { K: PK, L: pool.capacity, weight: pw });
        try {
          for (const strategy of ['bgmv', 'sgmv'] as const) {
            const want = await model.logits(ids, { lora: { stacks: padded, routing: rt, strategy } });
            const got = await model.logits(ids, { lora: { stacks: pool.stacks, routing: prt, strategy } });
            const base = await model.logits(ids);
            assert.ok(relErr(want, base) > 1e-3, 'the adapters change the logits (else the test is vacuous)');
            const err = relErr(got, want);
            assert.ok(err <= tolerance('f32'), `${name} ${strategy}: pooled vs padded relative error ${err}`);
          }
        } finally {
          rt.dispose();
          prt.dispose();
        }
      }
      // Page one out and another in: the freed entries are reused, the others stay put.
      pool.remove('a2');
      const again = pool.add('a2b', adapters[2]!);
      assert.deepEqual([...again], [...entries[2]!], 'freed entries are reused');
      assert.deepEqual([...pool.entriesOf('a4')!], [...entries[4]!]);
    } finally {
      pool.dispose();
      freeStacks(padded);
      model.dispose();
    }
  },
);

/** Device bytes of a PEFT adapter of rank r on every linear of the model (f32 A and B). */
function loraBytes(model: LlamaModel, r: number): number {
  let n = 0;
  for (let l = 0; l < model.config.numLayers; l++)
    for (const m of LINEAR_MODULES) {
      const [Hout, Hin] = linearShape(model.config, m);
      n += 4 * r * (Hin + Hout);
    }
  return n;
}

forEachBackend(
  'engine pool: bytes = the sum of the adapters (8/16/32/64); adding a rank-64 one and removing another while a stream decodes copies only its bytes and moves nothing else',
  async (b) => {
    const model = await openModel(b);
    const engine = new Engine(model, { stepTokens: stepTokens() });
    try {
      const ranks = [8, 16, 32, 64];
      await engine.addAdapters(ranks.map((r, i) => ({ name: `r${r}`, dir: path.join(bundles[i]!, 'analysis') })));
      const sum = ranks.reduce((a, r) => a + loraBytes(model, r), 0);
      assert.equal(engine.adapterBytes(), sum, 'pool bytes = the sum of the adapters');
      assert.equal(engine.adapterBytes(), ((8 + 16 + 32 + 64) / 64 / 4) * 4 * loraBytes(model, 64));
      const req: EngineRequest = { prompt: [1, 17, 33, 51, 7], maxNewTokens: 16, adapter: 'r16' };
      const alone = (await engine.submit(req).result).tokens;
      const before = Object.fromEntries(ranks.map((r) => [r, engine.adapterEntries(`r${r}`)!.map((e) => [...e])]));
      const copied0 = engine.poolInfo().pageInBytes;
      const stream = engine.submit(req);
      const got: number[] = [];
      for await (const e of stream) {
        got.push(e.token);
        if (got.length === 3) {
          await engine.addAdapter('big', path.join(bundles[3]!, 'guidance')); // rank 64, between two steps
          assert.equal(engine.poolInfo().pageInBytes - copied0, loraBytes(model, 64), 'a page-in copies that adapter');
          await engine.removeAdapter('r32');
          assert.equal(engine.adapterEntries('r32'), null);
        }
      }
      assert.deepEqual(got, alone, 'the stream across the add and the remove');
      for (const r of [8, 16, 64])
        assert.deepEqual(
          engine.adapterEntries(`r${r}`)!.map((e) => [...e]),
          before[r],
          `r${r}'s entries untouched`,
        );
      assert.equal(engine.adapterEntries('big')![0]!.length, 8);
      assert.equal(engine.adapterBytes(), sum - loraBytes(model, 32) + loraBytes(model, 64));
      // the freed entries of r32 (4) are reused by the next page-in
      const freed = before[32]![0]!;
      await engine.addAdapter('r32b', path.join(bundles[2]!, 'answer'));
      assert.deepEqual([...engine.adapterEntries('r32b')![0]!], freed);
      assert.equal(engine.paging.rebuilds, 0, 'no pool growth (64 initial entries)');
    } finally {
      await engine.close();
      model.dispose();
    }
  },
);

forEachBackend(
  'engine pool: a quarter budget pages mixed ranks in and out with the tokens of all resident; alone = busy; too many slots per token is refused',
  async (b) => {
    const model = await openModel(b);
    const ranks = [8, 16, 32, 64];
    const list = ranks.flatMap((r, i) => [
      { name: `p${r}`, dir: path.join(bundles[i]!, 'analysis') },
      { name: `q${r}`, dir: path.join(bundles[i]!, 'shared') },
      { name: `m${r}`, dir: bundles[i]! }, // a MoTE bundle: step units + shared units per token
    ]);
    const reqs: EngineRequest[] = list.map((a, i) => ({ prompt: [1, 5 + i, 9, 40 + 3 * i], maxNewTokens: 8, adapter: a.name }));
    const free = new Engine(model, { stepTokens: stepTokens(), maxSequences: 6 });
    try {
      await free.addAdapters(list);
      const all = free.adapterBytes();
      const alone: number[][] = [];
      for (const r of reqs) alone.push((await free.submit(r).result).tokens);
      const busy = await Promise.all(reqs.map((r) => free.submit(r).result.then((x) => x.tokens)));
      assert.deepEqual(busy, alone, 'alone = busy (mixed ranks, bundles and plain adapters)');
      // a quarter of the bytes, or the largest adapter (the rank-64 bundle: 4 experts × 8 entries) when that is more
      const m64 = free.adapterEntries('m64')!.reduce((n, e) => n + e.length, 0) * free.poolInfo().bytesPerEntry;
      const budget = Math.max(Math.ceil(all / 4), m64);
      assert.ok(budget < all / 2.5);
      const tight = new Engine(model, { stepTokens: stepTokens(), adapterBudgetBytes: budget, maxSequences: 6 });
      try {
        await tight.addAdapters(list);
        assert.ok(tight.poolInfo().allocatedBytes <= budget, 'the pool is sized by the budget');
        const got = await Promise.all(reqs.map((r) => tight.submit(r).result.then((x) => x.tokens)));
        assert.deepEqual(got, alone, 'tokens with paging = tokens with every adapter resident');
        assert.ok(tight.paging.pageIns >= 4 && tight.paging.evictions >= 4, `paged: ${JSON.stringify(tight.paging)}`);
        assert.ok(tight.adapterBytes() <= budget);
        assert.equal(tight.paging.rebuilds, 0, 'a budgeted pool never grows');
      } finally {
        await tight.close();
      }
      // rank-64 bundle at unit 1: 64 + 64 slots per token > MAX_LORA_SLOTS
      const unit1 = new Engine(model, { stepTokens: stepTokens(), poolUnit: 1 });
      await assert.rejects(
        unit1.addAdapter('m64', bundles[3]!),
        (e: unknown) => e instanceof EngineError && e.status === 400 && /128 slots.*poolUnit ≥ 2/.test((e as Error).message),
      );
      await unit1.addAdapter('p64', path.join(bundles[3]!, 'analysis')); // 64 slots fit
      await unit1.close();
    } finally {
      await free.close();
      model.dispose();
    }
  },
);
