// Lifetimes (issue 11): every object that owns device memory — model, KV cache, adapter sets
// and MoTE bundles, routings, layouts, tensors, the trainer — frees it through dispose() and
// through `using` ([Symbol.dispose]) alike, also when its block throws; bundles load and save
// asynchronously (loadMote and saveMote both give a Promise).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createMote } from '../src/mote/bundle.js';
import { loadMote, saveMote } from '../src/mote/bundle_io.js';
import { createLora } from '../src/adapters/adapter_set.js';
import { attentionLayout } from '../src/ops/attention.js';
import { rowMap } from '../src/ops/copy_rows.js';
import { Trainer } from '../src/train/trainer.js';
import { makeTinyModel } from './fixtures/tiny_model.js';
import { loadTiny, toyExamples } from './fixtures/train_fixture.js';
import { closeBackends, forEachBackend, tracking } from './helpers.js';

after(closeBackends);

const TINY = makeTinyModel({
  family: 'qwen2',
  hidden: 16,
  intermediate: 24,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  vocab: 40,
  tied: false,
  dtype: 'f32',
  seed: 3,
});

forEachBackend(
  '`using` frees the model, its cache, bundles, adapter sets, routings, layouts, tensors and the trainer',
  async (b) => {
    await tracking(b, async (live) => {
      let model, cache, bundle, lora, trainer, logits;
      {
        using m = loadTiny(b, TINY);
        using c = m.newCache();
        using mote = createMote(m, { rank: 2, loraAlpha: 4 }, { seed: 1, init: 'random' });
        using set = createLora(m, { rank: 2, seed: 2 });
        using routing = mote.routing([-1, 0, 1, 2], { seed: 5 });
        using layout = attentionLayout(b, { qSeq: [0, 0, 1, 1], qPos: [0, 1, 0, 1] });
        using rows = rowMap(b, [1, 0], [0, 1]);
        using t = m.forward({ ids: [1, 5, 9, 3], lora: mote.loraFor(routing), cache: c });
        using tr = new Trainer(m, mote, toyExamples(2, 40), { steps: 1, lr: 1e-3, batchTokens: 64 });
        await tr.trainStep();
        assert.ok(live.size > 0);
        assert.ok(layout && rows);
        [model, cache, bundle, lora, trainer, logits] = [m, c, mote, set, tr, t];
      }
      assert.equal(live.size, 0, 'every allocation made in the block is freed when it ends');
      assert.ok(model.disposed && cache.disposed && bundle.disposed && lora.disposed && logits.disposed);
      await assert.rejects(trainer.trainStep(), /used after dispose/);
    });
  },
  { kinds: ['cpu'] },
);

forEachBackend(
  '`using` frees on a throw inside the block, and dispose() after it is a no-op',
  async (b) => {
    await tracking(b, async (live) => {
      let model;
      await assert.rejects(async () => {
        using m = loadTiny(b, TINY);
        model = m;
        using mote = createMote(m, { rank: 2 });
        void mote;
        throw new Error('inside the block');
      }, /inside the block/);
      assert.equal(live.size, 0);
      model!.dispose(); // safe to call again
      assert.equal(live.size, 0);
    });
  },
  { kinds: ['cpu'] },
);

forEachBackend(
  'loadMote and saveMote are both async; a loaded bundle under `using` gives the saved logits',
  async (b) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-lifetimes-'));
    try {
      using model = loadTiny(b, TINY);
      const ids = [1, 5, 9, 3];
      const steps = [-1, 0, 1, 2];
      let want: Float32Array;
      {
        using mote = createMote(model, { rank: 2, loraAlpha: 4 }, { seed: 4, init: 'random' });
        const saving = saveMote(mote, path.join(dir, 'b'));
        assert.ok(saving instanceof Promise);
        await saving;
        want = await model.logits(ids, { adapters: mote, steps });
      }
      const loading = loadMote(path.join(dir, 'b'), model);
      assert.ok(loading instanceof Promise);
      using again = await loading;
      assert.deepEqual(await model.logits(ids, { adapters: again, steps }), want);
      await assert.rejects(loadMote(path.join(dir, 'missing'), model), /mote\.json: not found/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
  { kinds: ['cpu'] },
);

test('a backend under `using` is disposed when its block ends; dispose, destroy and Symbol.dispose are one', async (t) => {
  const { openBackend } = await import('../src/backend/select.js');
  let kept;
  try {
    using b = await openBackend('cpu');
    kept = b;
    b.tensor(new Float32Array(4), [4]);
    assert.equal(b.memoryInUse().buffers, 1);
  } catch (e) {
    return t.skip(`cpu backend unavailable: ${(e as Error).message}`);
  }
  assert.equal(kept.destroyed, true);
  assert.throws(() => kept.tensor(new Float32Array(1), [1]), /destroyed/);
  kept.dispose(); // a second time is a no-op
  kept.destroy();
});
