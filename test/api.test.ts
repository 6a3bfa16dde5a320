// The README's API walk-through, run on a tiny model: the public entry points work together.
import { after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadModel, createMote, saveMote, loadMote, generate } from '../src/index.js';
import { writeTinyModel } from './fixtures/tiny_model.js';
import { closeBackends, forEachBackend, relErr } from './helpers.js';

after(closeBackends);

forEachBackend('README walk-through: load, MoTE forward, save/load bundle, step-routed generation', async (backend) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-api-'));
  try {
    writeTinyModel(path.join(tmp, 'model'), {
      family: 'llama',
      hidden: 32,
      intermediate: 48,
      layers: 2,
      heads: 4,
      kvHeads: 2,
      vocab: 48,
      tied: true,
      dtype: 'bf16',
      seed: 3,
    });
    const model = await loadModel(path.join(tmp, 'model'), { backend });
    const mote = createMote(model, { rank: 4 }, { seed: 1, init: 'random' });

    // prompt tokens (−1) go to the shared expert; chain tokens to [step expert, shared]
    const ids = [1, 7, 9, 3, 11, 12, 4, 13];
    const steps = [-1, -1, -1, 0, 0, 0, 1, 1];
    const routing = mote.routing(steps);
    const logits = await model.logits(ids, { lora: mote.loraFor(routing) });
    assert.equal(logits.length, ids.length * 48);

    await saveMote(mote, path.join(tmp, 'bundle'));
    const again = await loadMote(path.join(tmp, 'bundle'), model);
    const routing2 = again.routing(steps);
    assert.ok(relErr(await model.logits(ids, { lora: again.loraFor(routing2) }), logits) <= 1e-6);

    // tokens 3, 4, 5 start the analysis, guidance and answer steps
    const stepTokens = new Map([
      [3, 0],
      [4, 1],
      [5, 2],
    ]);
    const events: { seq: number; token: number; step: number }[] = [];
    const [out] = await generate(model, [{ prompt: [1, 7, 9], maxNewTokens: 5, force: [{ step: 0 }] }], {
      router: again.tokenRouter(),
      stepTokens,
      onToken: (e) => events.push(e),
    });
    assert.equal(out!.tokens.length, 5);
    assert.equal(out!.tokens[0], 3); // the forced analysis start token
    assert.deepEqual(
      events.map((e) => e.token),
      out!.tokens,
    );
    for (const r of [routing, routing2]) r.dispose();
    mote.dispose();
    again.dispose();
    model.dispose();
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
