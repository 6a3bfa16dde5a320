// generate() and sampling (src/generate/): batched, step-routed decoding on every backend, on a
// tiny random llama (vocab 48) with random LoRA stacks: K = 2 routing [step expert, shared]
// with weights [0.5, 0.5] (prompt tokens: shared only), 3 steps + shared per bundle, token ids
// 3, 4, 5 as the start tokens of steps 0, 1, 2.
//
// Cases: greedy = argmax of the float64 reference step by step; seeded sampling reproducible;
// step switching during cached decoding = one full forward with per-token routing derived
// from the generated steps (every generated row, both step-token routings); a batch of
// mixed-step, mixed-bundle, mixed-sampling sequences = each alone; force / skip / stop /
// stop tokens / maxNewTokens; bad options named in the error.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type LlamaModel } from '../src/model/llama.js';
import { loadModel } from '../src/model/load.js';
import { llamaForwardRef } from '../src/reference/llama.js';
import { loraRouting, loraStack, type LoraStack } from '../src/ops/lora.js';
import { LINEAR_MODULES, linearShape, type LinearModule } from '../src/model/config.js';
import { ArgumentError, MoteError, ShapeError } from '../src/errors.js';
import type { Backend } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { argmax, checkSampling, sampleToken, samplingDistribution, SeededRng } from '../src/generate/sampling.js';
import {
  generate,
  type GenerateRequest,
  type GenerateResult,
  type RouteSlots,
  type RouteState,
  type TokenEvent,
  type TokenRouter,
} from '../src/generate/generate.js';
import { writeTinyModel, type WrittenTinyModel } from './fixtures/tiny_model.js';
import { closeBackends, forEachBackend, randn, relErr, rng } from './helpers.js';

after(closeBackends);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-generate-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const V = 48;
const TINY: WrittenTinyModel = writeTinyModel(path.join(tmp, 'llama'), {
  family: 'llama',
  hidden: 32,
  intermediate: 40,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  vocab: V,
  tied: false,
  dtype: 'f32',
  seed: 21,
});
const STEP_TOKENS = new Map([
  [3, 0],
  [4, 1],
  [5, 2],
]);
/** Experts per bundle: steps 0..2 then shared (slot 3). */
const PER_BUNDLE = 4;
const BUNDLES = 2;

async function withModel<T>(b: Backend, body: (model: LlamaModel) => Promise<T>): Promise<T> {
  const model = await loadModel(TINY.dir, { backend: b });
  try {
    return await body(model);
  } finally {
    model.dispose();
  }
}

/** Random stacks on every linear: L = BUNDLES·PER_BUNDLE adapters of rank 2. */
function makeStacks(b: Backend, seed: number): { stacks: Partial<Record<LinearModule, LoraStack>>[]; made: Tensor[] } {
  const r = rng(seed);
  const cfg = TINY.cfg;
  const L = BUNDLES * PER_BUNDLE,
    R = 2;
  const made: Tensor[] = [];
  const stacks: Partial<Record<LinearModule, LoraStack>>[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const mods: Partial<Record<LinearModule, LoraStack>> = {};
    for (const m of LINEAR_MODULES) {
      const [Hout, Hin] = linearShape(cfg, m);
      const A = b.tensor(randn(r, L * R * Hin, 1 / Math.sqrt(Hin)), [L, R, Hin], 'f32');
      const B = b.tensor(randn(r, L * Hout * R, 1.5 / Math.sqrt(R)), [L, Hout, R], 'f32');
      const st = loraStack(A, B, { scale: new Array(L).fill(1) });
      made.push(A, B, st.rank, st.scale);
      mods[m] = st;
    }
    stacks.push(mods);
  }
  return { stacks, made };
}

/** MoTE routing of bundle `bundle`: [step expert, shared] with [0.5, 0.5]; prompt: shared only. */
function moteSlots(bundle: number, step: number): RouteSlots {
  const base = bundle * PER_BUNDLE;
  const shared = base + 3;
  return step < 0 ? { slots: [-1, shared], weights: [0, 1] } : { slots: [base + step, shared], weights: [0.5, 0.5] };
}

async function withRouter<T>(b: Backend, bundleOf: (seq: number) => number, body: (router: TokenRouter) => Promise<T>): Promise<T> {
  const { stacks, made } = makeStacks(b, 77);
  const router: TokenRouter = { K: 2, stacks, slotsFor: (i: number, s: RouteState) => moteSlots(bundleOf(i), s.step) };
  try {
    return await body(router);
  } finally {
    for (const t of made) t.dispose();
  }
}

function refLogitsLast(tokens: number[]): Float64Array {
  const all = llamaForwardRef(TINY.cfg, TINY.weights, tokens).logits;
  return all.subarray((tokens.length - 1) * V, tokens.length * V);
}

// ---------------------------------------------------------------------------------------
// Sampling on the host (no backend)

test('sampling: argmax, temperature, topK, topP, seeded determinism', () => {
  const logits = [0.1, 2, -1, 2, 0.5, 1.5];
  assert.equal(argmax(logits), 1, 'ties go to the lower id');
  assert.equal(sampleToken(logits, {}, new SeededRng(1)), 1, 'default is greedy');
  assert.equal(sampleToken(logits, { temperature: 0, topP: 0.1 }, new SeededRng(1)), 1);
  const k2 = samplingDistribution(logits, { temperature: 1, topK: 2 });
  assert.deepEqual(k2.ids, [1, 3]);
  assert.ok(Math.abs(k2.probs[0]! - 0.5) < 1e-12);
  const all = samplingDistribution(logits, { temperature: 1 });
  assert.deepEqual(all.ids, [1, 3, 5, 4, 0, 2]);
  assert.ok(Math.abs(all.probs.reduce((a, b) => a + b, 0) - 1) < 1e-12);
  // topP: the smallest prefix whose mass reaches topP.
  const mass2 = all.probs[0]! + all.probs[1]!;
  assert.deepEqual(samplingDistribution(logits, { temperature: 1, topP: mass2 - 1e-9 }).ids, [1, 3]);
  assert.deepEqual(samplingDistribution(logits, { temperature: 1, topP: mass2 + 1e-9 }).ids, [1, 3, 5]);
  // A low temperature concentrates, a high one flattens.
  const cold = samplingDistribution(logits, { temperature: 0.05 });
  assert.ok(cold.probs[0]! > 0.49 && cold.probs[2]! < 1e-3);
  const hot = samplingDistribution(logits, { temperature: 100 });
  assert.ok(Math.max(...hot.probs) - Math.min(...hot.probs) < 0.02);
  // The same seed gives the same draws; draws follow the distribution.
  const draw = (seed: number) => {
    const r = new SeededRng(seed);
    return Array.from({ length: 50 }, () => sampleToken(logits, { temperature: 1, topK: 4 }, r));
  };
  assert.deepEqual(draw(5), draw(5));
  assert.notDeepEqual(draw(5), draw(6));
  const r = new SeededRng(9);
  const counts = new Map<number, number>();
  for (let i = 0; i < 4000; i++) {
    const t = sampleToken(logits, { temperature: 1, topK: 4 }, r);
    counts.set(t, (counts.get(t) ?? 0) + 1);
  }
  assert.deepEqual([...counts.keys()].sort(), [1, 3, 4, 5]);
  const p4 = samplingDistribution(logits, { temperature: 1, topK: 4 });
  p4.ids.forEach((id, k) => assert.ok(Math.abs(counts.get(id)! / 4000 - p4.probs[k]!) < 0.03, `frequency of ${id}`));
});

test('sampling: a tiny temperature or an infinite logit still draws the most likely tokens (no NaN probabilities)', () => {
  const logits = [0.1, 2, -1, 1.5];
  // logit / 5e-324 overflows to Infinity: the distribution used to be NaN and the draw the least likely token
  for (const temperature of [5e-324, 1e-310]) {
    const d = samplingDistribution(logits, { temperature });
    assert.deepEqual(d.ids.slice(0, 1), [1]);
    assert.equal(d.probs[0], 1, `temperature ${temperature}`);
    assert.ok(d.probs.every((p) => Number.isFinite(p)));
    for (let s = 0; s < 20; s++) assert.equal(sampleToken(logits, { temperature }, new SeededRng(s)), 1);
  }
  const inf = samplingDistribution([0, Infinity, 3, Infinity], { temperature: 1 });
  assert.deepEqual(inf.ids.slice(0, 2), [1, 3]);
  assert.deepEqual(inf.probs, [0.5, 0.5, 0, 0]);
  const allNegInf = samplingDistribution([-Infinity, -Infinity], { temperature: 1 });
  assert.deepEqual(allNegInf.probs, [0.5, 0.5]);
});

test('sampling: bad options name the option', () => {
  const bad: [object, RegExp][] = [
    [{ temperature: -0.5 }, /temperature/],
    [{ temperature: NaN }, /temperature/],
    [{ temperature: '1' }, /temperature/],
    [{ topK: 0 }, /topK/],
    [{ topK: 2.5 }, /topK/],
    [{ topP: 0 }, /topP/],
    [{ topP: 1.01 }, /topP/],
    [{ topP: -1 }, /topP/],
  ];
  for (const [o, re] of bad) {
    assert.throws(
      () => checkSampling('t', o),
      (e: Error) => e instanceof ArgumentError && re.test(e.message),
      JSON.stringify(o),
    );
    assert.throws(
      () => sampleToken([1, 2], o, new SeededRng(0)),
      (e: Error) => e instanceof ArgumentError && re.test(e.message),
    );
  }
  assert.throws(
    () => new SeededRng(-1),
    (e: Error) => e instanceof ArgumentError && /seed/.test(e.message),
  );
  assert.throws(() => new SeededRng(1.5), ArgumentError);
});

// ---------------------------------------------------------------------------------------
// generate

forEachBackend('greedy generation = argmax of the reference logits, step by step', async (b) => {
  await withModel(b, async (model) => {
    const prompt = [1, 17, 9, 30, 11];
    const [res] = await generate(model, [{ prompt, maxNewTokens: 6 }], { returnLogits: true });
    const want: number[] = [];
    const seqTokens = [...prompt];
    for (let j = 0; j < 6; j++) {
      const row = refLogitsLast(seqTokens);
      assert.ok(relErr(res!.logits![j]!, row) < 1e-4, `logits of generated token ${j}: ${relErr(res!.logits![j]!, row)}`);
      const t = argmax(row);
      want.push(t);
      seqTokens.push(t);
    }
    assert.deepEqual(res!.tokens, want);
    assert.equal(res!.stopReason, 'length');
    const again = await generate(model, [{ prompt, maxNewTokens: 6 }]);
    assert.deepEqual(again[0]!.tokens, want, 'greedy is deterministic');
  });
});

forEachBackend('seeded sampling gives identical outputs across runs', async (b) => {
  await withModel(b, async (model) => {
    const req = (seed: number): GenerateRequest => ({
      prompt: [1, 8, 13],
      maxNewTokens: 8,
      sampling: { temperature: 1.5, topK: 30, topP: 0.95 },
      seed,
    });
    const a = await generate(model, [req(3), req(4)]);
    const c = await generate(model, [req(3), req(4)]);
    assert.deepEqual(
      a.map((r) => r.tokens),
      c.map((r) => r.tokens),
    );
    const others = await generate(model, [req(5), req(6), req(7)]);
    assert.ok(
      others.some((r) => JSON.stringify(r.tokens) !== JSON.stringify(a[0]!.tokens)),
      'other seeds draw other tokens',
    );
  });
});

/** Full forward (no cache) over prompt + fed generated tokens with routing derived from the generated steps. */
async function fullForwardRows(
  model: LlamaModel,
  router: TokenRouter,
  bundle: number,
  prompt: number[],
  res: GenerateResult,
  own: boolean,
): Promise<Float32Array> {
  const n = res.tokens.length;
  const ids = [...prompt, ...res.tokens.slice(0, n - 1)];
  const slots: number[] = [],
    weights: number[] = [];
  ids.forEach((_, p) => {
    const j = p - prompt.length; // generated index of the token at p (negative: prompt)
    const step = j < 0 ? -1 : own ? res.steps[j]! : j === 0 ? -1 : res.steps[j - 1]!;
    const rs = moteSlots(bundle, step);
    slots.push(...rs.slots);
    weights.push(...rs.weights);
  });
  const routing = loraRouting(model.backend, slots, { K: 2, L: BUNDLES * PER_BUNDLE, weight: weights });
  try {
    const rows = Array.from({ length: n }, (_, j) => prompt.length - 1 + j);
    return await model.logits(ids, { lora: { stacks: router.stacks, routing }, logitRows: rows });
  } finally {
    routing.dispose();
  }
}

forEachBackend('step switching while decoding = one full forward with per-token step routing', async (b) => {
  await withModel(b, async (model) => {
    await withRouter(
      b,
      () => 1,
      async (router) => {
        const prompt = [1, 12, 40, 7];
        for (const own of [false, true]) {
          const req: GenerateRequest = { prompt, maxNewTokens: 7, force: [{ step: 0 }, { step: 1, at: 3 }, { step: 2, at: 5 }] };
          const [res] = await generate(model, [req], {
            router,
            stepTokens: STEP_TOKENS,
            returnLogits: true,
            stepTokenRouting: own ? 'own' : 'previous',
          });
          assert.equal(res!.tokens.length, 7);
          assert.deepEqual([res!.tokens[0], res!.tokens[3], res!.tokens[5]], [3, 4, 5]);
          assert.deepEqual(res!.steps, [0, 0, 0, 1, 1, 2, 2]);
          const full = await fullForwardRows(model, router, 1, prompt, res!, own);
          const got = new Float32Array(7 * V);
          res!.logits!.forEach((row, j) => got.set(row, j * V));
          assert.ok(
            relErr(got, full) < 1e-4,
            `cached step-routed decode vs full forward (${own ? 'own' : 'previous'}): ${relErr(got, full)}`,
          );
          // The last row, the one the brief names, on its own too.
          assert.ok(relErr(got.subarray(6 * V), full.subarray(6 * V)) < 1e-4);
          // The routing matters: routing the other way gives other logits.
          const wrong = await fullForwardRows(model, router, 1, prompt, res!, !own);
          assert.ok(relErr(wrong, full) > 1e-3, 'step-token routing must change the logits (else the test is vacuous)');
        }
        // The adapters matter: plain generation gives other logits.
        const [plain] = await generate(model, [{ prompt, maxNewTokens: 2, force: [{ step: 0 }] }], {
          stepTokens: STEP_TOKENS,
          returnLogits: true,
        });
        const [routed] = await generate(model, [{ prompt, maxNewTokens: 2, force: [{ step: 0 }] }], {
          router,
          stepTokens: STEP_TOKENS,
          returnLogits: true,
        });
        assert.ok(relErr(plain!.logits![1]!, routed!.logits![1]!) > 1e-2);
      },
    );
  });
});

forEachBackend('a batch of mixed-step, mixed-bundle sequences = each alone; tokens stream with their step', async (b) => {
  await withModel(b, async (model) => {
    await withRouter(
      b,
      () => 0,
      async (router) => {
        const bundleRouting = (bundle: number) => (s: RouteState) => moteSlots(bundle, s.step);
        const reqs: GenerateRequest[] = [
          { prompt: [1, 20, 21, 22, 23, 24], maxNewTokens: 6, force: [{ step: 0 }, { step: 2, at: 2 }], routing: bundleRouting(0) },
          {
            prompt: [1, 9],
            maxNewTokens: 4,
            force: [{ step: 1, at: 1 }],
            routing: bundleRouting(1),
            sampling: { temperature: 1, topK: 10 },
            seed: 11,
          },
          { prompt: [1, 30, 31], maxNewTokens: 5, routing: bundleRouting(1) },
          { prompt: [1, 5, 6, 44], maxNewTokens: 3, force: [{ step: 2 }] }, // router.slotsFor: bundle 0
          { prompt: [2, 2], maxNewTokens: 0 },
        ];
        const events: TokenEvent[] = [];
        const batch = await generate(model, reqs, { router, stepTokens: STEP_TOKENS, onToken: (e) => events.push(e) });
        for (let i = 0; i < reqs.length; i++) {
          const alone =
            i === 3
              ? (await generate(model, [reqs[4]!, reqs[i]!], { router, stepTokens: STEP_TOKENS }))[1]! // keep seq index 3 → bundle 0 either way
              : (await generate(model, [reqs[i]!], { router, stepTokens: STEP_TOKENS }))[0]!;
          assert.deepEqual(batch[i]!.tokens, alone.tokens, `sequence ${i}: batch vs alone`);
          assert.deepEqual(batch[i]!.steps, alone.steps);
          assert.equal(batch[i]!.stopReason, alone.stopReason);
          const mine = events.filter((e) => e.seq === i);
          assert.deepEqual(
            mine.map((e) => e.token),
            batch[i]!.tokens,
          );
          assert.deepEqual(
            mine.map((e) => e.step),
            batch[i]!.steps,
          );
          assert.deepEqual(
            mine.map((e) => e.index),
            batch[i]!.tokens.map((_, j) => j),
          );
        }
        assert.equal(batch[0]!.tokens.length, 6);
        assert.deepEqual(batch[0]!.steps.slice(0, 3), [0, 0, 2]);
        assert.equal(batch[1]!.steps[1], 1);
        assert.deepEqual(batch[4], { tokens: [], steps: [], stopReason: 'length' });
        assert.ok(events.filter((e) => e.forced).length >= 4);
      },
    );
  });
});

forEachBackend('force, skip, stop after a step, stop tokens, maxNewTokens', async (b) => {
  await withModel(b, async (model) => {
    const prompt = [1, 14, 27, 33];
    const [g] = await generate(model, [{ prompt, maxNewTokens: 8 }]);
    const G = g!.tokens;
    // The first generated token (past index 0) not seen before: we declare it a step-start token.
    const j = G.findIndex((t, k) => k >= 1 && !G.slice(0, k).includes(t));
    assert.ok(j >= 1, `greedy output ${G} has a fresh token`);
    const x = G[j]!;
    const free = [0, 3, 4, 5, 6, 7, 8, 10, 45, 46, 47].filter((t) => !G.includes(t));
    const [y, z] = [free[0]!, free[1]!];
    const gen = async (req: Partial<GenerateRequest>, stepTokens: Map<number, number>) =>
      (await generate(model, [{ prompt, maxNewTokens: 8, ...req }], { stepTokens }))[0]!;

    // Emitted step token: steps switch from there on.
    const sw = await gen(
      {},
      new Map([
        [x, 1],
        [y, 0],
      ]),
    );
    assert.deepEqual(sw.tokens, G);
    assert.deepEqual(
      sw.steps,
      G.map((_, k) => (k < j ? -1 : 1)),
    );
    // Stop after step 0: the start token of step 1 would be emitted → end before it.
    const st = await gen(
      { stopAfterStep: 0 },
      new Map([
        [x, 1],
        [y, 0],
      ]),
    );
    assert.deepEqual(st.tokens, G.slice(0, j));
    assert.equal(st.stopReason, 'step');
    // Skip step 0: its token is replaced by the next allowed step's (1 → y), later steps too.
    const events: TokenEvent[] = [];
    const sk = (
      await generate(model, [{ prompt, maxNewTokens: j + 1, skipSteps: [0] }], {
        stepTokens: new Map([
          [x, 0],
          [y, 1],
        ]),
        onToken: (e) => events.push(e),
      })
    )[0]!;
    assert.deepEqual(sk.tokens, [...G.slice(0, j), y]);
    assert.deepEqual(sk.steps, [...G.slice(0, j).map(() => -1), 1]);
    assert.equal(events[j]!.forced, true);
    const sk2 = (
      await generate(model, [{ prompt, maxNewTokens: j + 1, skipSteps: [0, 1] }], {
        stepTokens: new Map([
          [x, 0],
          [y, 1],
          [z, 2],
        ]),
      })
    )[0]!;
    assert.deepEqual(sk2.tokens.at(-1), z);
    // Skipping to a step past stopAfterStep ends; skipping the last step ends.
    const sk3 = await gen(
      { skipSteps: [0], stopAfterStep: 0 },
      new Map([
        [x, 0],
        [y, 1],
      ]),
    );
    assert.deepEqual(sk3.tokens, G.slice(0, j));
    assert.equal(sk3.stopReason, 'step');
    const sk4 = await gen(
      { skipSteps: [2] },
      new Map([
        [x, 2],
        [y, 1],
      ]),
    );
    assert.deepEqual([sk4.tokens, sk4.stopReason], [G.slice(0, j), 'step']);
    // Stop token: emitted, then the end.
    const stop = await gen({ stop: [x, 47 === x ? 46 : 47] }, new Map());
    assert.deepEqual(stop.tokens, G.slice(0, j + 1));
    assert.equal(stop.stopReason, 'stop');
    // Force: the step token is inserted at the index, steps switch.
    const fo = await gen(
      { maxNewTokens: 3, force: [{ step: 1, at: 1 }] },
      new Map([
        [y, 0],
        [z, 1],
      ]),
    );
    assert.equal(fo.tokens[0], G[0]);
    assert.equal(fo.tokens[1], z);
    assert.deepEqual(fo.steps.slice(0, 2), [-1, 1]);
    assert.equal(fo.stopReason, 'length');
    // maxNewTokens.
    const short = await gen({ maxNewTokens: 2 }, new Map());
    assert.deepEqual([short.tokens, short.stopReason], [G.slice(0, 2), 'length']);
  });
});

forEachBackend('NaN logits (a NaN weight) stop generation with an error instead of a token', async (b) => {
  await withModel(b, async (model) => {
    const w = model.weights.layers[1]!.linear.down_proj;
    const data = (await w.readFloat()).slice();
    data[0] = Number.NaN;
    w.write(data);
    // argmax and sampling skip NaN entries: greedy used to return token 0 every step
    for (const sampling of [undefined, { temperature: 1 }]) {
      await assert.rejects(
        generate(model, [{ prompt: [1, 2], maxNewTokens: 3, ...(sampling ? { sampling } : {}) }]),
        (e: Error) => e instanceof MoteError && /generate: the logits of sequence 0 for generated token 0 hold NaN/.test(e.message),
      );
    }
  });
});

forEachBackend('bad options throw naming the option', async (b) => {
  await withModel(b, async (model) => {
    await withRouter(
      b,
      () => 0,
      async (router) => {
        const ok: GenerateRequest = { prompt: [1, 2], maxNewTokens: 2 };
        const cases: [Partial<GenerateRequest>, RegExp, Function?][] = [
          [{ sampling: { temperature: -1 } }, /requests\[0\]\.sampling: temperature/],
          [{ sampling: { topP: 0 } }, /topP/],
          [{ sampling: { topP: 2 } }, /topP/],
          [{ sampling: { topK: 0 } }, /topK/],
          [{ sampling: { topK: 1.5 } }, /topK/],
          [{ maxNewTokens: -1 }, /requests\[0\]\.maxNewTokens/],
          [{ maxNewTokens: 1.5 }, /maxNewTokens/],
          [{ prompt: [] }, /requests\[0\]\.prompt/, ShapeError],
          [{ prompt: [1, V] }, /requests\[0\]\.prompt\[1\]/],
          [{ seed: -3 }, /seed/],
          [{ stop: [-1] }, /stop\[0\]/],
          [{ force: [{ step: 7 }] }, /force\[0\]\.step/],
          [{ force: [{ step: 1, at: -1 }] }, /force\[0\]\.at/],
          [{ skipSteps: [1], force: [{ step: 1 }] }, /also in skipSteps/],
          [{ skipSteps: [9] }, /skipSteps\[0\]/],
          [{ stopAfterStep: -1 }, /stopAfterStep/],
          // misspelt or misplaced fields were ignored (greedy, default length) instead of refused
          [{ temperature: 0.7 } as Partial<GenerateRequest>, /requests\[0\]: unknown field 'temperature'/],
          [{ maxTokens: 5 } as Partial<GenerateRequest>, /requests\[0\]: unknown field 'maxTokens'/],
        ];
        for (const [patch, re, cls] of cases) {
          await assert.rejects(
            generate(model, [{ ...ok, ...patch }], { stepTokens: STEP_TOKENS }),
            (e: Error) => e instanceof (cls ?? ArgumentError) && re.test(e.message),
            `${JSON.stringify(patch)} → ${re}`,
          );
        }
        await assert.rejects(
          generate(model, [ok], { stepTokens: new Map([[V + 1, 0]]) }),
          (e: Error) => e instanceof ArgumentError && /stepTokens/.test(e.message),
        );
        await assert.rejects(
          generate(model, [ok], {
            stepTokens: new Map([
              [3, 0],
              [4, 0],
            ]),
          }),
          (e: Error) => e instanceof ArgumentError && /stepTokens: step 0 has two start tokens/.test(e.message),
        );
        await assert.rejects(
          generate(model, [{ ...ok, routing: () => moteSlots(0, -1) }]),
          (e: Error) => e instanceof ArgumentError && /routing: needs opts.router/.test(e.message),
        );
        await assert.rejects(
          generate(model, [ok], { router: { ...router, K: 0 } }),
          (e: Error) => e instanceof ArgumentError && /router\.K/.test(e.message),
        );
        await assert.rejects(
          generate(model, [ok], { router: { ...router, slotsFor: () => ({ slots: [0], weights: [1] }) } }),
          (e: Error) => e instanceof ShapeError && /router\.slotsFor/.test(e.message),
        );
        await assert.rejects(
          generate(model, [ok], { stepTokenRouting: 'next' as never }),
          (e: Error) => e instanceof ArgumentError && /stepTokenRouting/.test(e.message),
        );
      },
    );
  });
});

// The model's context (max_position_embeddings) bounds prompt + generated tokens.
const SHORT_CTX: WrittenTinyModel = (() => {
  const m = writeTinyModel(path.join(tmp, 'short-ctx'), {
    family: 'llama',
    hidden: 32,
    intermediate: 40,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    vocab: V,
    tied: false,
    dtype: 'f32',
    seed: 21,
  });
  const cfgFile = path.join(m.dir, 'config.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), max_position_embeddings: 12 }));
  return m;
})();

forEachBackend('context limit: a prompt past max_position_embeddings is refused; generation stops at it', async (b) => {
  const model = await loadModel(SHORT_CTX.dir, { backend: b });
  try {
    const long = Array.from({ length: 12 }, (_, i) => 6 + i);
    await assert.rejects(
      generate(model, [{ prompt: long, maxNewTokens: 4 }]),
      (e: Error) =>
        e instanceof ArgumentError &&
        /requests\[0\]\.prompt/.test(e.message) &&
        /max_position_embeddings/.test(e.message) &&
        /\b12\b/.test(e.message),
    );
    const [r] = await generate(model, [{ prompt: long.slice(0, 9), maxNewTokens: 100 }]);
    assert.equal(r!.stopReason, 'context');
    assert.equal(9 + r!.tokens.length, 12, 'prompt + generated fill the context exactly');
    const [s] = await generate(model, [{ prompt: long.slice(0, 9), maxNewTokens: 2 }]);
    assert.equal(s!.stopReason, 'length');
  } finally {
    model.dispose();
  }
});

forEachBackend('an aborted signal ends every sequence at the next step, keeping what was generated', async (b) => {
  await withModel(b, async (model) => {
    const ac = new AbortController();
    const seen: number[] = [];
    const res = await generate(
      model,
      [
        { prompt: [1, 7, 9], maxNewTokens: 20 },
        { prompt: [1, 8], maxNewTokens: 20 },
      ],
      {
        signal: ac.signal,
        onToken: (e) => {
          seen.push(e.token);
          if (seen.length === 3) ac.abort();
        },
      },
    );
    for (const r of res) assert.equal(r.stopReason, 'aborted');
    assert.equal(res[0]!.tokens.length + res[1]!.tokens.length, seen.length);
    assert.ok(seen.length >= 3 && seen.length <= 4);
    const pre = new AbortController();
    pre.abort();
    const [none] = await generate(model, [{ prompt: [1, 7], maxNewTokens: 5 }], { signal: pre.signal });
    assert.deepEqual([none!.tokens, none!.stopReason], [[], 'aborted']);
    await assert.rejects(
      generate(model, [{ prompt: [1], maxNewTokens: 1 }], { signal: {} as never }),
      (e: Error) => e instanceof ArgumentError && /signal/.test(e.message),
    );
  });
});

forEachBackend('loraRouting refuses K and L past their bounds before allocating by them', async (b) => {
  const t0 = performance.now();
  assert.throws(
    () => loraRouting(b, [0, 1], { K: 1, L: 2 ** 31 }),
    (e: Error) => e instanceof ArgumentError && /\bL\b/.test(e.message) && /65536/.test(e.message),
  );
  assert.throws(
    () => loraRouting(b, [0], { K: 2 ** 40, L: 2 }),
    (e: Error) => e instanceof ArgumentError && /\bK\b/.test(e.message),
  );
  assert.throws(
    () => loraRouting(b, [0], null as never),
    (e: Error) => e instanceof ArgumentError && /opts/.test(e.message),
  );
  assert.throws(
    () => loraRouting(b, [0], { K: 1, L: 2, weight: 5 as never }),
    (e: Error) => e instanceof ArgumentError && /weight/.test(e.message),
  );
  assert.ok(performance.now() - t0 < 2000);
  const r = loraRouting(b, [0, -1, 65535], { K: 1, L: 65536 });
  assert.equal(r.pairs, 2);
  r.dispose();
});
