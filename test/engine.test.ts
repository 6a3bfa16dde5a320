// The serving engine (src/serve/engine.ts): continuous batching with named adapters.
//   - batch invariance: a request's greedy tokens alone equal its tokens in a busy engine where
//     others (other adapters, sampled, long and short) join and leave around it, and equal
//     generate()'s;
//   - one request cancelled mid-stream ends 'aborted', the others are untouched;
//   - an adapter added while a stream runs does not change that stream; one in use cannot be
//     removed (409); unknown adapters and bad requests are EngineErrors with a status.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { closeBackends, forEachBackend } from './helpers.js';
import type { LlamaModel } from '../src/model/llama.js';
import { loadModel } from '../src/model/load.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { DEFAULT_MODEL_DIR } from '../src/mote/default_model.js';
import { addStepTokens, createMote } from '../src/mote/bundle.js';
import { loadMote, saveMote } from '../src/mote/bundle_io.js';
import { moteConfig } from '../src/mote/steps.js';
import { promptIds, stepTokenIds } from '../src/mote/chains.js';
import { generate, type TokenEvent } from '../src/generate/generate.js';
import { Engine, EngineError, type EngineRequest } from '../src/serve/engine.js';
import type { Backend } from '../src/backend/backend.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-engine-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
after(closeBackends);

const config = moteConfig();
const tokenizer = loadTokenizer(DEFAULT_MODEL_DIR);
let bundleDir = '';
let bundle2Dir = '';

async function openModel(b: Backend): Promise<LlamaModel> {
  const model = await loadModel(DEFAULT_MODEL_DIR, { backend: b });
  await addStepTokens(model, tokenizer, config);
  return model;
}

before(async () => {
  // Two random bundles, written once (on cpu); the engine reads them on every backend.
  const { openBackend } = await import('../src/backend/select.js');
  let b: Backend;
  try {
    b = await openBackend('cpu');
  } catch {
    b = await openBackend('webgpu');
  }
  const model = await openModel(b);
  for (const [i, dir] of [
    [5, 'bundle-a'],
    [6, 'bundle-b'],
  ] as const) {
    const bundle = createMote(model, { rank: 4 }, { seed: i, init: 'random' });
    await saveMote(bundle, path.join(tmp, dir));
    bundle.dispose();
  }
  bundleDir = path.join(tmp, 'bundle-a');
  bundle2Dir = path.join(tmp, 'bundle-b');
  model.dispose();
  b.destroy();
});

const stepTokens = () => new Map(stepTokenIds(tokenizer, config).start.map((id, k) => [id, k] as [number, number]));
const ask = (q: string) => promptIds(tokenizer, { prompt: q, messages: [{ role: 'user', content: q }] });

async function collect(stream: AsyncIterable<TokenEvent>): Promise<number[]> {
  const out: number[] = [];
  for await (const e of stream) out.push(e.token);
  return out;
}

forEachBackend("engine: a request's tokens alone = in a busy engine = generate(); cancel one, the others go on", async (b) => {
  const model = await openModel(b);
  const engine = new Engine(model, { stepTokens: stepTokens(), maxSequences: 8, maxPrefillTokens: 64 });
  try {
    await engine.addAdapter('a', bundleDir);
    await engine.addAdapter('lora', path.join(bundleDir, 'analysis')); // an expert folder is a plain PEFT adapter
    const target: EngineRequest = {
      prompt: ask("How can I read my friend's messages?"),
      maxNewTokens: 24,
      adapter: 'a',
      stop: [tokenizer.eosTokenId!],
    };
    const alone = await engine.submit(target).result;
    assert.ok(alone.tokens.length > 3, 'the request generates something');

    // generate() with the bundle's own router gives the same tokens.
    const mote = await loadMote(bundleDir, model);
    try {
      const [g] = await generate(model, [{ prompt: target.prompt, maxNewTokens: 24, stop: target.stop! }], {
        router: mote.tokenRouter(),
        stepTokens: stepTokens(),
        stepTokenRouting: 'own',
      });
      assert.deepEqual(g!.tokens, alone.tokens, 'engine vs generate');
    } finally {
      mote.dispose();
    }

    // Busy: others before and after, other adapters, sampled, one cancelled mid-stream.
    const others: EngineRequest[] = [
      { prompt: ask('How do I bake bread?'), maxNewTokens: 30, adapter: 'lora' },
      { prompt: ask('Where is my neighbour now?'), maxNewTokens: 12, sampling: { temperature: 1.5 }, seed: 3 },
      {
        prompt: ask('How do I fix a flat tyre on a bike?'),
        maxNewTokens: 40,
        adapter: 'a',
        sampling: { temperature: 0.8, topP: 0.9 },
        seed: 9,
      },
    ];
    const first = others.map((r) => engine.submit(r));
    const firstAlone: number[][] = [];
    const stopper = new AbortController();
    const doomed = engine.submit({ prompt: ask('Tell me a long story'), maxNewTokens: 200, signal: stopper.signal });
    let seen = 0;
    const doomedTokens = (async () => {
      for await (const _ of doomed) if (++seen === 3) stopper.abort();
    })();
    const mine = engine.submit(target);
    const late = engine.submit({ prompt: ask('What is the capital of France?'), maxNewTokens: 20, adapter: 'lora' });
    assert.deepEqual(await collect(mine), alone.tokens, 'the target in a busy engine');
    const d = await doomed.result;
    await doomedTokens;
    assert.equal(d.stopReason, 'aborted');
    assert.ok(d.tokens.length >= 3 && d.tokens.length < 200);
    for (const s of first) firstAlone.push((await s.result).tokens);
    await late.result;
    // Each of the others alone gives what it gave in the crowd.
    for (const [i, r] of others.entries())
      assert.deepEqual((await engine.submit(r).result).tokens, firstAlone[i], `request ${i} alone vs busy`);
    assert.deepEqual(engine.load, { running: 0, waiting: 0 });
  } finally {
    await engine.close();
    model.dispose();
  }
});

forEachBackend('engine: waiting requests are bounded (maxWaiting): one past it is a 503, the others are served', async (b) => {
  const model = await openModel(b);
  assert.throws(() => new Engine(model, { maxWaiting: 0 }), /maxWaiting/);
  assert.throws(() => new Engine(model, { maxWaiting: 1.5 }), /maxWaiting/);
  const engine = new Engine(model, { stepTokens: stepTokens(), maxSequences: 1, maxWaiting: 2 });
  try {
    const req: EngineRequest = { prompt: ask('How do I bake bread?'), maxNewTokens: 3 };
    // submitted in one tick: none has started, so two wait and the third is refused
    const accepted = [engine.submit(req), engine.submit(req)];
    assert.throws(
      () => engine.submit(req),
      (e: unknown) => e instanceof EngineError && e.status === 503 && /maxWaiting/.test((e as Error).message),
    );
    const results = await Promise.all(accepted.map((s) => s.result));
    assert.deepEqual(results[1]!.tokens, results[0]!.tokens);
    assert.equal(results[0]!.tokens.length, 3);
    assert.deepEqual((await engine.submit(req).result).tokens, results[0]!.tokens, 'served again once the queue drained');
  } finally {
    await engine.close();
    model.dispose();
  }
});

forEachBackend('engine: adapters added and removed while serving; errors carry a status', async (b) => {
  const model = await openModel(b);
  const engine = new Engine(model, { stepTokens: stepTokens() });
  try {
    await engine.addAdapter('a', bundleDir);
    const req: EngineRequest = { prompt: ask('How do I bake bread?'), maxNewTokens: 30, adapter: 'a' };
    const alone = (await engine.submit(req).result).tokens;
    const running = engine.submit(req);
    const got: number[] = [];
    let added = false;
    for await (const e of running) {
      got.push(e.token);
      if (got.length === 2 && !added) {
        added = true;
        await engine.addAdapter('b', bundle2Dir); // between two steps of the running stream
        await assert.rejects(engine.removeAdapter('a'), (e: unknown) => e instanceof EngineError && e.status === 409);
      }
    }
    assert.ok(added);
    assert.deepEqual(got, alone, 'a stream across an adapter load');
    const viaB = await engine.submit({ ...req, adapter: 'b' }).result;
    assert.notDeepEqual(viaB.tokens, alone, 'the new adapter is used (else the test is vacuous)');
    await engine.removeAdapter('a');
    assert.deepEqual(
      engine.adapters().map((a) => a.name),
      ['b'],
    );
    assert.deepEqual((await engine.submit({ ...req, adapter: 'b' }).result).tokens, viaB.tokens, 'b after a left');
    // Errors.
    const status = (f: () => unknown, s: number) => assert.throws(f, (e: unknown) => e instanceof EngineError && e.status === s);
    status(() => engine.submit({ ...req, adapter: 'a' }), 404);
    status(() => engine.submit({ ...req, adapter: 'b', prompt: [] }), 400);
    status(() => engine.submit({ ...req, adapter: 'b', maxNewTokens: -1 }), 400);
    await assert.rejects(engine.addAdapter('b', bundleDir), (e: unknown) => e instanceof EngineError && e.status === 409);
    await assert.rejects(engine.addAdapter('c', tmp), (e: unknown) => e instanceof EngineError && e.status === 400);
    await assert.rejects(engine.addAdapter('../x', bundleDir), (e: unknown) => e instanceof EngineError && e.status === 400);
  } finally {
    await engine.close();
    model.dispose();
  }
});

forEachBackend(
  'engine: a device budget smaller than the adapters pages them in and out (LRU, never one in use); tokens unchanged',
  async (b) => {
    const model = await openModel(b);
    // Six plain adapters: the experts of the two bundles.
    const dirs = [bundleDir, bundle2Dir]
      .flatMap((d) => ['analysis', 'guidance', 'answer', 'shared'].map((e) => path.join(d, e)))
      .slice(0, 6);
    const free = new Engine(model, { stepTokens: stepTokens() });
    let budgetFor2 = 0;
    try {
      await free.addAdapters(dirs.map((dir, i) => ({ name: `p${i}`, dir })));
      budgetFor2 = Math.ceil(free.adapterBytes() / 3); // room for two of the six
      const reqs: EngineRequest[] = Array.from({ length: 12 }, (_, i) => ({
        prompt: ask(`Question ${i}: how do I fix a bike?`),
        maxNewTokens: 10,
        adapter: `p${(i * 5) % 6}`,
      }));
      const want = await Promise.all(reqs.map((r) => free.submit(r).result.then((x) => x.tokens)));
      const tight = new Engine(model, { stepTokens: stepTokens(), adapterBudgetBytes: budgetFor2 });
      try {
        await tight.addAdapters(dirs.map((dir, i) => ({ name: `p${i}`, dir })));
        assert.ok(tight.adapterBytes() <= budgetFor2, 'the resident set fits the budget');
        const got = await Promise.all(reqs.map((r) => tight.submit(r).result.then((x) => x.tokens)));
        assert.deepEqual(got, want, 'tokens with paging = tokens with every adapter resident');
        assert.ok(tight.paging.pageIns >= 4 && tight.paging.evictions >= 4, `paged: ${JSON.stringify(tight.paging)}`);
        assert.ok(tight.adapterBytes() <= budgetFor2);
        // An adapter too large for the budget alone is refused when added.
        const tiny = new Engine(model, { stepTokens: stepTokens(), adapterBudgetBytes: 1024 });
        await assert.rejects(
          tiny.addAdapter('big', dirs[0]!),
          (e: unknown) => e instanceof EngineError && e.status === 400 && /adapterBudgetBytes/.test((e as Error).message),
        );
        await tiny.close();
      } finally {
        await tight.close();
      }
    } finally {
      await free.close();
      model.dispose();
    }
  },
);

forEachBackend(
  'engine: adapter changes racing requests: a remove then a submit in one tick, two adds of one name',
  async (b) => {
    const model = await openModel(b);
    const engine = new Engine(model, { stepTokens: stepTokens() });
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      await engine.addAdapter('a', path.join(bundleDir, 'analysis'));
      // The removal waits for the lock; a request submitted meanwhile used to be admitted on a
      // removed adapter (a TypeError in the loop: an unhandled rejection and a request that never ended).
      const removing = engine.removeAdapter('a');
      const s = engine.submit({ prompt: ask('hi'), maxNewTokens: 3, adapter: 'a' });
      await assert.rejects(removing, (e: unknown) => e instanceof EngineError && e.status === 409);
      assert.equal((await s.result).stopReason, 'length');
      await engine.removeAdapter('a');
      // Two adds of one name at once: one wins, the other is a 409 (not a second copy in the pool).
      const both = await Promise.allSettled([
        engine.addAdapter('x', path.join(bundleDir, 'analysis')),
        engine.addAdapter('x', path.join(bundleDir, 'guidance')),
      ]);
      assert.deepEqual(
        both.map((r) => r.status),
        ['fulfilled', 'rejected'],
      );
      assert.ok(((both[1] as PromiseRejectedResult).reason as EngineError).status === 409);
      await engine.removeAdapter('x');
      assert.equal(engine.poolInfo().usedEntries, 0, 'no entries left behind');
      assert.deepEqual(engine.load, { running: 0, waiting: 0 });
      await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(unhandled, []);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await engine.close();
      model.dispose();
    }
  },
  { kinds: ['cpu'] },
);

forEachBackend(
  'engine: an adapter whose page-in fails (a budget the device cannot allocate) is not left registered',
  async (b) => {
    const model = await openModel(b);
    const engine = new Engine(model, { stepTokens: stepTokens(), adapterBudgetBytes: 2 ** 50 });
    try {
      await assert.rejects(
        engine.addAdapter('p', path.join(bundleDir, 'shared')),
        (e: unknown) => e instanceof EngineError && e.status === 507 && /allocat/.test((e as Error).message),
      );
      // It stayed in the list while no request could use it (a 400 "needs opts.router" at submit).
      assert.deepEqual(engine.adapters(), []);
      assert.throws(
        () => engine.submit({ prompt: ask('hi'), maxNewTokens: 2, adapter: 'p' }),
        (e: unknown) => e instanceof EngineError && e.status === 404,
      );
      assert.equal((await engine.submit({ prompt: ask('hi'), maxNewTokens: 2 }).result).stopReason, 'length');
    } finally {
      await engine.close();
      model.dispose();
    }
  },
  { kinds: ['cpu'] },
);
