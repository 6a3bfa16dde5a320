// MoTE bundles (src/mote/bundle.ts, src/mote/steps.ts) on every backend, on tiny random HF
// models (test/fixtures/tiny_model.ts) against the float64 reference forward:
// - the step schema and its validation (ArgumentErrors naming the field);
// - a bundle's forward (K = 2: [step, shared] with [α, 1 − α]; prompt tokens shared-only or a
//   seeded random step per sequence) equals llamaForwardRef with the same routing;
// - saveMote → loadMote gives identical logits; every expert folder is a PEFT adapter
//   (parsePeftConfig, PEFT key names, scale alpha / r), mote.json holds the schema, no
//   temporary folder is left, a non-bundle folder is not overwritten;
// - a bundle loaded onto a model of another shape fails with a FormatError naming the file
//   and the tensor, leaving nothing allocated; dispose frees everything;
// - ordinary PEFT adapters of mixed ranks load as a K = 1 multi-adapter set, and a batch
//   where tokens use different adapters equals the reference.
// Shapes are tiny (hidden 32, 2 layers, vocab 48) so that webgpu over lavapipe stays fast.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type LlamaModel } from '../src/model/llama.js';
import { loadModel } from '../src/model/load.js';
import { llamaForwardRef, type LlamaRefOptions } from '../src/reference/llama.js';
import type { LoraRefStack } from '../src/reference/lora.js';
import { LINEAR_MODULES, linearShape, type LinearModule } from '../src/model/config.js';
import { ArgumentError, FormatError, MoteError } from '../src/errors.js';
import { readSafetensors } from '../src/io/safetensors.js';
import {
  ADAPTER_CONFIG_FILE,
  ADAPTER_WEIGHTS_FILE,
  parsePeftConfig,
  parsePeftKey,
  peftExpectedWeights,
  peftScale,
} from '../src/io/peft.js';
import type { Backend } from '../src/backend/backend.js';
import {
  DEFAULT_MOTE_CONFIG,
  STEPS,
  STEP_TOKENS,
  moteConfig,
  specialTokens,
  stepIndex,
  stepOfToken,
  type MoteConfig,
} from '../src/mote/steps.js';
import { MoteBundle, createMote, moteRoutingSlots } from '../src/mote/bundle.js';
import { MOTE_FILE } from '../src/mote/format.js';
import { loadMote, saveMote } from '../src/mote/bundle_io.js';
import { AdapterStacks } from '../src/adapters/stacks.js';
import { createLora, loadPeftAdapters } from '../src/adapters/adapter_set.js';
import { loraStacks, writeTinyModel, writeTinyPeftAdapter, type TinyModelOptions, type WrittenTinyModel } from './fixtures/tiny_model.js';
import { closeBackends, forEachBackend, relErr, tracking } from './helpers.js';
import { bitsEqual } from './case_helpers.js';

after(closeBackends);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-bundle-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const TOL = 1e-4;
let dirCount = 0;
const newDir = (label: string): string => path.join(tmp, `${label}-${dirCount++}`);

const BASE: TinyModelOptions = {
  family: 'llama',
  hidden: 32,
  intermediate: 40,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  vocab: 48,
  tied: false,
  dtype: 'f32',
  seed: 1,
};
const written = new Map<string, WrittenTinyModel>();
function tiny(o: Partial<TinyModelOptions> = {}): WrittenTinyModel {
  const opts = { ...BASE, ...o };
  const key = JSON.stringify(opts);
  let m = written.get(key);
  if (!m) {
    m = writeTinyModel(newDir(opts.family), opts);
    written.set(key, m);
  }
  return m;
}

function ids(n: number, V: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7 + seed * 13 + 3) % V);
}

function assertClose(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = TOL): void {
  const e = relErr(got, want);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(2)} > ${tol}`);
}

async function withModel<T>(b: Backend, m: WrittenTinyModel, body: (model: LlamaModel) => Promise<T>): Promise<T> {
  const model = await loadModel(m.dir, { backend: b });
  try {
    return await body(model);
  } finally {
    model.dispose();
  }
}

/** The reference stacks of a device adapter set (read back from the device). */
async function refStacksOf(set: AdapterStacks): Promise<(layer: number, m: LinearModule) => LoraRefStack | null> {
  const map = new Map<string, LoraRefStack>();
  for (let l = 0; l < set.stacks.length; l++) {
    for (const m of LINEAR_MODULES) {
      const s = set.stacks[l]![m];
      if (!s) continue;
      map.set(`${l}.${m}`, {
        A: await s.A.readFloat(),
        B: await s.B.readFloat(),
        ranks: Array.from(s.ranks),
        scales: await s.scale.readFloat(),
      });
    }
  }
  return (l, m) => map.get(`${l}.${m}`) ?? null;
}

/** MoTE routing computed independently of the bundle: [step, shared] / [α, 1 − α]; prompt [−1, shared] / [0, 1] or promptStep. */
function expectedRouting(
  stepIds: number[],
  S: number,
  alpha: number,
  promptStep?: (t: number) => number,
): { slots: number[]; weights: number[] } {
  const slots: number[] = [];
  const weights: number[] = [];
  stepIds.forEach((s, t) => {
    if (s >= 0) {
      slots.push(s, S);
      weights.push(alpha, 1 - alpha);
    } else if (promptStep) {
      slots.push(promptStep(t), S);
      weights.push(alpha, 1 - alpha);
    } else {
      slots.push(-1, S);
      weights.push(0, 1);
    }
  });
  return { slots, weights };
}

// ---------------------------------------------------------------------------------------
// Step schema

test('step schema: tokens, defaults and validation', () => {
  assert.deepEqual([...STEPS], ['analysis', 'guidance', 'answer', 'check']);
  assert.equal(STEP_TOKENS.answer, '<|response|>');
  assert.equal(stepOfToken('<|guidance|>'), 'guidance');
  assert.equal(stepOfToken('<|nope|>'), null);
  const c = moteConfig();
  assert.deepEqual(c, { ...DEFAULT_MOTE_CONFIG, steps: ['analysis', 'guidance', 'answer'], targetModules: [...LINEAR_MODULES] });
  assert.equal(c.rank, 16);
  assert.equal(c.loraAlpha, 32);
  assert.equal(c.alpha, 0.5);
  assert.equal(c.promptRouting, 'shared');
  assert.equal(stepIndex(c, 'answer'), 2);
  assert.equal(stepIndex(c, 'check'), -1);
  assert.deepEqual(specialTokens({ steps: ['analysis', 'answer'] }), [
    '<|analysis|>',
    '<|end_analysis|>',
    '<|response|>',
    '<|end_response|>',
  ]);
  // Target modules are put in canonical order.
  assert.deepEqual(moteConfig({ targetModules: ['v_proj', 'q_proj'] }).targetModules, ['q_proj', 'v_proj']);
  const bad: [Partial<MoteConfig> | Record<string, unknown>, RegExp][] = [
    [{ steps: [] }, /steps: expected a non-empty list/],
    [{ steps: ['analysis', 'thinking'] as never }, /steps\[1\]: unknown step "thinking"/],
    [{ steps: ['answer', 'analysis'] }, /steps\[1\]: 'analysis' is out of chain order/],
    [{ steps: ['answer', 'answer'] }, /steps\[1\]: 'answer' is listed twice/],
    [{ rank: 0 }, /rank: expected an integer in \[1, 4096\], got 0/],
    [{ rank: 2.5 }, /rank: expected an integer in \[1, 4096\]/],
    // used to be accepted: factors of 2^40 rows were then allocated from it
    [{ rank: 2 ** 40 }, /rank: expected an integer in \[1, 4096\], got 1099511627776/],
    [{ loraAlpha: -1 }, /loraAlpha: expected a positive number/],
    [{ alpha: 1.5 }, /alpha: expected a number in \[0, 1\], got 1.5/],
    [{ promptRouting: 'first' as never }, /promptRouting: expected 'shared' or 'random-step'/],
    [{ targetModules: ['lm_head'] as never }, /targetModules\[0\]: unknown module "lm_head"/],
    [{ targetModules: [] }, /targetModules: expected a non-empty list/],
    [{ experts: 3 } as never, /config.experts: unknown field/],
  ];
  for (const [cfg, re] of bad)
    assert.throws(
      () => moteConfig(cfg as Partial<MoteConfig>),
      (e: Error) => e instanceof ArgumentError && re.test(e.message),
      `${JSON.stringify(cfg)}`,
    );
});

test('random-step prompt routing is seeded: one step per sequence, same seed same routing', () => {
  const S = 3;
  const T = 64;
  const stepIds = Array.from({ length: T }, (_, t) => (t % 8 < 5 ? -1 : t % 3));
  const seq = Array.from({ length: T }, (_, t) => Math.floor(t / 8));
  const a = moteRoutingSlots(stepIds, S, 0.5, { promptRouting: 'random-step', seq, seed: 7 });
  const b = moteRoutingSlots(stepIds, S, 0.5, { promptRouting: 'random-step', seq, seed: 7 });
  assert.deepEqual(a, b);
  // One step per sequence, weighted like chain tokens; every token also routes to the shared expert.
  const perSeq = new Map<number, number>();
  for (let t = 0; t < T; t++) {
    assert.equal(a.slots[2 * t + 1], S);
    if (stepIds[t]! >= 0) {
      assert.equal(a.slots[2 * t], stepIds[t]);
      continue;
    }
    const s = a.slots[2 * t]!;
    assert.ok(s >= 0 && s < S);
    assert.deepEqual([a.weight[2 * t], a.weight[2 * t + 1]], [0.5, 0.5]);
    if (perSeq.has(seq[t]!)) assert.equal(perSeq.get(seq[t]!), s, `sequence ${seq[t]} got two steps`);
    perSeq.set(seq[t]!, s);
  }
  assert.ok(new Set(perSeq.values()).size > 1, 'eight sequences should not all draw the same step');
  // The draw depends on (seed, sequence id) only, not on the batch order.
  const alone = moteRoutingSlots([-1, -1], S, 0.5, { promptRouting: 'random-step', seq: [5, 5], seed: 7 });
  assert.equal(alone.slots[0], perSeq.get(5));
  // Other seeds give other draws.
  const draws = new Set<string>();
  for (let seed = 0; seed < 8; seed++)
    draws.add(moteRoutingSlots(stepIds, S, 0.5, { promptRouting: 'random-step', seq, seed }).slots.join(','));
  assert.ok(draws.size > 1);
  // Shared-only prompt routing.
  const sh = moteRoutingSlots([-1, 1], S, 0.25, { promptRouting: 'shared' });
  assert.deepEqual(Array.from(sh.slots), [-1, 3, 1, 3]);
  assert.deepEqual(Array.from(sh.weight), [0, 1, 0.25, 0.75]);
  // Bad step ids.
  assert.throws(
    () => moteRoutingSlots([0, 3], S, 0.5, { promptRouting: 'shared' }),
    (e: Error) => e instanceof ArgumentError && /stepIds\[1\]: expected −1 \(prompt\) or a step index in \[0, 2\], got 3/.test(e.message),
  );
  assert.throws(
    () => moteRoutingSlots([0, -1], S, 0.5, { promptRouting: 'random-step', seq: [0] }),
    (e: Error) => e instanceof ArgumentError && /seq: expected 2 sequence ids/.test(e.message),
  );
});

// ---------------------------------------------------------------------------------------
// Forward against the reference

forEachBackend('MoTE forward (K = 2, α / 1 − α, shared-only and random-step prompts) equals the reference', async (b) => {
  const m = tiny({ seed: 21 });
  await withModel(b, m, async (model) => {
    const bundle = createMote(model, { rank: 4, loraAlpha: 8, alpha: 0.3 }, { seed: 5, init: 'random' });
    try {
      assert.equal(bundle.L, 4);
      assert.equal(bundle.shared, 3);
      assert.deepEqual(bundle.experts, ['analysis', 'guidance', 'answer', 'shared']);
      for (let l = 0; l < 2; l++)
        for (const mod of LINEAR_MODULES) {
          const s = bundle.stacks[l]![mod]!;
          const [Hout, Hin] = linearShape(m.cfg, mod);
          assert.deepEqual([...s.A.shape], [4, 4, Hin]);
          assert.deepEqual([...s.B.shape], [4, Hout, 4]);
        }
      const ref = await refStacksOf(bundle);
      const T = 8;
      const tokens = ids(T, 48, 3);
      const seq = [0, 0, 0, 0, 1, 1, 1, 1];
      const stepIds = [-1, -1, 0, 1, -1, 2, 2, 1];
      const want = expectedRouting(stepIds, 3, 0.3);
      const rt = bundle.routing(stepIds, { seq });
      try {
        assert.deepEqual(Array.from(rt.host.slots), want.slots);
        assert.deepEqual(Array.from(rt.host.weight), Array.from(Float32Array.from(want.weights)));
        const got = await model.logits(tokens, { seq, lora: bundle.loraFor(rt) });
        const refOpts = (r: { slots: number[]; weights: number[] }): LlamaRefOptions => ({
          seq,
          lora: { stacks: ref, slots: r.slots, weights: r.weights, K: 2 },
        });
        const wantLogits = llamaForwardRef(m.cfg, m.weights, tokens, refOpts(want)).logits;
        assertClose('MoTE logits', got, wantLogits);
        const plain = llamaForwardRef(m.cfg, m.weights, tokens, { seq }).logits;
        assert.ok(relErr(plain, wantLogits) > 1e-2, 'the experts must change the logits (else the test is vacuous)');
      } finally {
        rt.dispose();
      }
      // random-step prompts: a seeded step per sequence, weighted like chain tokens.
      const r1 = bundle.routing(stepIds, { seq, promptRouting: 'random-step', seed: 11 });
      const r2 = bundle.routing(stepIds, { seq, promptRouting: 'random-step', seed: 11 });
      try {
        assert.deepEqual(Array.from(r1.host.slots), Array.from(r2.host.slots));
        const drawn = (t: number): number => r1.host.slots[2 * t]!;
        assert.equal(drawn(0), drawn(1));
        const want2 = expectedRouting(stepIds, 3, 0.3, drawn);
        assert.deepEqual(Array.from(r1.host.slots), want2.slots);
        const got = await model.logits(tokens, { seq, lora: bundle.loraFor(r1) });
        assertClose(
          'MoTE logits, random-step prompts',
          got,
          llamaForwardRef(m.cfg, m.weights, tokens, { seq, lora: { stacks: ref, slots: want2.slots, weights: want2.weights, K: 2 } })
            .logits,
        );
      } finally {
        r1.dispose();
        r2.dispose();
      }
    } finally {
      bundle.dispose();
    }
  });
});

forEachBackend('createLora refuses unknown options and ranks past the cap; readExpert refuses a bad layer or module', async (b) => {
  const m = tiny({ seed: 22 });
  await withModel(b, m, async (model) => {
    // used to be ignored silently (rank 16 instead of 4)
    assert.throws(
      () => createLora(model, { ranks: 4 } as never),
      (e: Error) => e instanceof ArgumentError && /createLora: opts: unknown option 'ranks'/.test(e.message),
    );
    // used to throw a RangeError from a typed array of 2^40·hidden floats
    assert.throws(
      () => createLora(model, { rank: 2 ** 40 }),
      (e: Error) => e instanceof ArgumentError && /createLora: rank: expected an integer in \[1, 4096\]/.test(e.message),
    );
    using set = createLora(model, { rank: 2, targetModules: ['q_proj'] });
    assert.ok((await set.readExpert(0, 0, 'q_proj')) !== null);
    assert.equal(await set.readExpert(0, 0, 'v_proj'), null, 'a module without the adapter');
    // used to return null as if the adapter had no factors there
    await assert.rejects(set.readExpert(0, 1.5, 'q_proj'), /readExpert: layer: expected an integer in \[0, 1\], got 1.5/);
    await assert.rejects(set.readExpert(0, 0, 'x_proj' as never), /readExpert: module: expected one of q_proj/);
  });
});

forEachBackend('PEFT init (B = 0) leaves the model unchanged; with checking L = 5; dispose frees everything', async (b) => {
  const m = tiny({ seed: 22 });
  await withModel(b, m, async (model) => {
    await tracking(b, async (live) => {
      const bundle = createMote(
        model,
        { steps: ['analysis', 'guidance', 'answer', 'check'], rank: 2, targetModules: ['q_proj', 'down_proj'] },
        { seed: 1 },
      );
      assert.equal(bundle.L, 5);
      assert.deepEqual(Object.keys(bundle.stacks[0]!).sort(), ['down_proj', 'q_proj']);
      const A = await bundle.stacks[1]!.q_proj!.A.readFloat();
      const bound = 1 / Math.sqrt(32);
      assert.ok(A.every((v) => Math.abs(v) <= bound) && A.some((v) => v !== 0), 'A ~ U(±1/√in)');
      assert.ok(
        (await bundle.stacks[1]!.q_proj!.B.readFloat()).every((v) => v === 0),
        'B = 0',
      );
      const tokens = ids(5, 48, 4);
      const rt = bundle.routing([-1, 0, 1, 2, 3]);
      const got = await model.logits(tokens, { lora: bundle.loraFor(rt) });
      rt.dispose();
      assertClose('PEFT-initialised bundle = base model', got, llamaForwardRef(m.cfg, m.weights, tokens).logits);
      bundle.dispose();
      assert.equal(live.size, 0, `${live.size} tensors left allocated after dispose()`);
      assert.throws(() => bundle.routing([0]), ArgumentError);
    });
  });
});

// ---------------------------------------------------------------------------------------
// Saving and loading

forEachBackend('saveMote → loadMote: identical logits; each expert a PEFT adapter; atomic', async (b) => {
  const m = tiny({ seed: 23 });
  await withModel(b, m, async (model) => {
    const bundle = createMote(model, { rank: 3, loraAlpha: 6, alpha: 0.6, promptRouting: 'random-step' }, { seed: 9, init: 'random' });
    const dir = newDir('bundle');
    let loaded: MoteBundle | null = null;
    try {
      await saveMote(bundle, dir);
      assert.deepEqual(
        fs.readdirSync(path.dirname(dir)).filter((f) => f.startsWith(path.basename(dir) + '.')),
        [],
        'no temporary folder left',
      );
      assert.deepEqual(fs.readdirSync(dir).sort(), ['analysis', 'answer', 'guidance', 'mote-written.json', MOTE_FILE, 'shared']);
      const mj = JSON.parse(fs.readFileSync(path.join(dir, MOTE_FILE), 'utf-8'));
      assert.deepEqual(mj.steps, ['analysis', 'guidance', 'answer']);
      assert.deepEqual(mj.tokens, { analysis: '<|analysis|>', guidance: '<|guidance|>', answer: '<|response|>' });
      assert.equal(mj.alpha, 0.6);
      assert.equal(mj.prompt_routing, 'random-step');
      assert.equal(mj.r, 3);
      assert.equal(mj.lora_alpha, 6);
      assert.equal(mj.base_model.hidden_size, 32);
      assert.equal(mj.base_model.num_hidden_layers, 2);
      for (const e of ['analysis', 'guidance', 'answer', 'shared']) {
        const ed = path.join(dir, e);
        const pc = parsePeftConfig(fs.readFileSync(path.join(ed, ADAPTER_CONFIG_FILE), 'utf-8'), path.join(ed, ADAPTER_CONFIG_FILE));
        assert.equal(pc.r, 3);
        assert.equal(pc.loraAlpha, 6);
        assert.deepEqual(pc.targetModules, [...LINEAR_MODULES]);
        assert.equal(peftScale(pc, 0, 'q_proj'), 2);
        const st = readSafetensors(path.join(ed, ADAPTER_WEIGHTS_FILE));
        const want = peftExpectedWeights(m.cfg, pc);
        assert.deepEqual([...st.tensors.keys()].sort(), want.map((w) => w.name).sort());
        for (const w of want) assert.deepEqual(st.tensors.get(w.name)!.shape, w.shape);
        for (const k of st.tensors.keys()) assert.ok(parsePeftKey(k) !== null, `PEFT key name: ${k}`);
        assert.ok([...st.tensors.keys()].includes('base_model.model.model.layers.1.mlp.down_proj.lora_B.weight'));
      }
      loaded = await loadMote(dir, model);
      assert.deepEqual(loaded.config, bundle.config);
      const tokens = ids(7, 48, 5);
      const seq = [0, 0, 0, 1, 1, 1, 1];
      const stepIds = [-1, 0, 2, -1, -1, 1, 2];
      const r1 = bundle.routing(stepIds, { seq, seed: 3 });
      const r2 = loaded.routing(stepIds, { seq, seed: 3 });
      try {
        assert.deepEqual(Array.from(r1.host.slots), Array.from(r2.host.slots));
        const before = await model.logits(tokens, { seq, lora: bundle.loraFor(r1) });
        const after_ = await model.logits(tokens, { seq, lora: loaded.loraFor(r2) });
        assertClose('logits after save → load', after_, before, 1e-6);
      } finally {
        r1.dispose();
        r2.dispose();
      }
      // Saving over an existing bundle replaces it; a folder that is not a bundle is refused.
      await saveMote(loaded, dir);
      assert.ok(fs.existsSync(path.join(dir, 'shared', ADAPTER_WEIGHTS_FILE)));
      const other = newDir('other');
      fs.mkdirSync(other);
      fs.writeFileSync(path.join(other, 'keep.txt'), 'mine');
      await assert.rejects(
        saveMote(bundle, other),
        (e: Error) => e instanceof ArgumentError && /not empty and was not written by mote/.test(e.message),
      );
      assert.equal(fs.readFileSync(path.join(other, 'keep.txt'), 'utf-8'), 'mine');
    } finally {
      bundle.dispose();
      loaded?.dispose();
    }
  });
});

forEachBackend('loadMote onto a model of another shape: FormatError naming file and tensor; nothing allocated', async (b) => {
  const m = tiny({ seed: 24 });
  const dir = newDir('bundle');
  await withModel(b, m, async (model) => {
    const bundle = createMote(model, { rank: 2, loraAlpha: 4 }, { seed: 2, init: 'random' });
    try {
      await saveMote(bundle, dir);
    } finally {
      bundle.dispose();
    }
  });
  const wider = tiny({ seed: 25, intermediate: 48 });
  await withModel(b, wider, async (model) => {
    await tracking(b, async (live) => {
      await assert.rejects(
        () => loadMote(dir, model),
        (e: Error) =>
          e instanceof FormatError &&
          e.message.includes(path.join(dir, 'analysis', ADAPTER_WEIGHTS_FILE)) &&
          /tensor 'base_model\.model\.model\.layers\.0\.mlp\.(down|gate|up)_proj\.lora_[AB]\.weight': expected shape \[\d+, \d+\] for this model, got \[\d+, \d+\]/.test(
            e.message,
          ),
        'names the file and tensor',
      );
      assert.equal(live.size, 0, `${live.size} tensors left allocated after a failed load`);
    });
  });
  const shallower = tiny({ seed: 26, layers: 1 });
  await withModel(b, shallower, async (model) => {
    await tracking(b, async (live) => {
      await assert.rejects(
        () => loadMote(dir, model),
        (e: Error) =>
          e instanceof FormatError &&
          /adapter_model\.safetensors: tensor 'base_model\.model\.model\.layers\.1\..*': unexpected \(the model has 1 layers\)/.test(
            e.message,
          ),
      );
      assert.equal(live.size, 0);
    });
  });
  // A corrupted mote.json and a missing expert are FormatErrors naming the file.
  await withModel(b, m, async (model) => {
    const broken = newDir('broken');
    fs.cpSync(dir, broken, { recursive: true });
    fs.rmSync(path.join(broken, 'guidance', ADAPTER_WEIGHTS_FILE));
    await assert.rejects(
      () => loadMote(broken, model),
      (e: Error) => e instanceof FormatError && e.message.includes(path.join(broken, 'guidance', ADAPTER_WEIGHTS_FILE)),
    );
    fs.writeFileSync(path.join(broken, MOTE_FILE), JSON.stringify({ steps: ['analysis'], alpha: 2, r: 2, lora_alpha: 4 }));
    await assert.rejects(
      () => loadMote(broken, model),
      (e: Error) => e instanceof FormatError && e.message.includes(MOTE_FILE) && /alpha: expected a number in \[0, 1\]/.test(e.message),
    );
    await assert.rejects(
      () => loadMote(newDir('none'), model),
      (e: Error) => e instanceof MoteError && /mote.json: not found/.test(e.message),
    );
  });
});

// ---------------------------------------------------------------------------------------
// Plain PEFT adapters

forEachBackend('PEFT adapters of mixed ranks load as a K = 1 multi-adapter set equal to the reference', async (b) => {
  const m = tiny({ seed: 27 });
  const cfg = m.cfg;
  const adapters = [
    writeTinyPeftAdapter(newDir('ad'), cfg, { r: 2, alpha: 4, seed: 31 }),
    writeTinyPeftAdapter(newDir('ad'), cfg, { r: 5, alpha: 8, seed: 32, dtype: 'bf16' }),
    writeTinyPeftAdapter(newDir('ad'), cfg, {
      r: 3,
      alpha: 6,
      seed: 33,
      targetModules: ['q_proj', 'v_proj', 'down_proj'],
      rankPattern: { down_proj: 1 },
    }),
  ];
  await withModel(b, m, async (model) => {
    await tracking(b, async (live) => {
      const set = await loadPeftAdapters(
        model,
        adapters.map((a) => a.dir),
      );
      try {
        assert.equal(set.L, 3);
        assert.deepEqual([...set.stacks[0]!.q_proj!.A.shape], [3, 5, 32]);
        assert.deepEqual(Array.from(set.stacks[0]!.q_proj!.ranks), [2, 5, 3]);
        assert.deepEqual(Array.from(set.stacks[1]!.down_proj!.ranks), [2, 5, 1]);
        assert.deepEqual(Array.from(set.stacks[1]!.up_proj!.ranks), [2, 5, 1]); // adapter 2 has no up_proj: rank 1, scale 0
        const tokens = ids(6, 48, 6);
        const seq = [0, 0, 0, 1, 1, 1];
        const which = [0, 1, 2, -1, 2, 1];
        const rt = set.routing(which);
        try {
          assert.equal(rt.K, 1);
          const got = await model.logits(tokens, { seq, lora: set.loraFor(rt) });
          const want = llamaForwardRef(cfg, m.weights, tokens, {
            seq,
            lora: { stacks: loraStacks(cfg, adapters), slots: which, K: 1 },
          }).logits;
          assertClose('multi-adapter logits', got, want);
          assert.ok(relErr(llamaForwardRef(cfg, m.weights, tokens, { seq }).logits, want) > 1e-2, 'adapters must change the logits');
        } finally {
          rt.dispose();
        }
        assert.throws(
          () => set.routing([0, 3]),
          (e: Error) => e instanceof ArgumentError && /adapter\[1\]/.test(e.message),
        );
      } finally {
        set.dispose();
      }
      assert.equal(live.size, 0);
      // One bad adapter among good ones: nothing allocated.
      const wrong = writeTinyPeftAdapter(newDir('ad'), tiny({ seed: 28, hidden: 16, heads: 2, kvHeads: 1, intermediate: 24 }).cfg, {
        r: 2,
        alpha: 4,
        seed: 34,
      });
      await assert.rejects(
        () => loadPeftAdapters(model, [adapters[0]!.dir, wrong.dir]),
        (e: Error) =>
          e instanceof FormatError && e.message.includes(path.join(wrong.dir, ADAPTER_WEIGHTS_FILE)) && /tensor '/.test(e.message),
      );
      assert.equal(live.size, 0);
    });
  });
});

forEachBackend(
  'addStepTokens: step tags become single tokens, embeddings grow by distinct seeded rows around the mean, old logits unchanged; logits({ adapters, steps }) equals explicit routing',
  async (b) => {
    const { writeTinyTokenizer, TINY_VOCAB_SIZE } = await import('./fixtures/tiny_tokenizer.js');
    const { loadTokenizer } = await import('../src/io/tokenizer.js');
    const { addStepTokens } = await import('../src/mote/bundle.js');
    for (const tied of [false, true]) {
      const m = tiny({ vocab: TINY_VOCAB_SIZE, tied });
      await withModel(b, m, async (model) => {
        const tok = loadTokenizer(writeTinyTokenizer(newDir('tok')));
        const probe = [1, 5, 9, 14];
        const before = await model.logits(probe);
        const oldEmbed = await model.weights.embedTokens.readFloat();
        const ids = await addStepTokens(model, tok);
        const V2 = TINY_VOCAB_SIZE + 6;
        assert.equal(model.config.vocabSize, V2);
        assert.deepEqual(
          Object.values(ids),
          [0, 1, 2, 3, 4, 5].map((i) => TINY_VOCAB_SIZE + i),
        );
        assert.deepEqual(tok.encode(`${STEP_TOKENS.analysis}`, { addSpecialTokens: false }), [TINY_VOCAB_SIZE]);
        const E = await model.weights.embedTokens.readFloat();
        const H = model.config.hiddenSize;
        assert.ok(bitsEqual(E.subarray(0, oldEmbed.length), oldEmbed), 'old embedding rows kept');
        // new rows: distinct, around the old rows' mean with their spread, the same on every run
        const rows = Array.from({ length: 6 }, (_, i) => E.subarray((TINY_VOCAB_SIZE + i) * H, (TINY_VOCAB_SIZE + i + 1) * H));
        for (let i = 1; i < 6; i++) assert.ok(!bitsEqual(rows[i]!, rows[0]!), `new row ${i} differs from new row 0`);
        let dev = 0,
          spread = 0;
        for (let h = 0; h < H; h++) {
          let mu = 0;
          for (let v = 0; v < TINY_VOCAB_SIZE; v++) mu += oldEmbed[v * H + h]! / TINY_VOCAB_SIZE;
          for (let v = 0; v < TINY_VOCAB_SIZE; v++) spread += (oldEmbed[v * H + h]! - mu) ** 2 / TINY_VOCAB_SIZE;
          for (const r of rows) dev += (r[h]! - mu) ** 2 / 6;
        }
        assert.ok(dev > 0.2 * spread && dev < 5 * spread, `new rows' spread ${dev} vs old ${spread}`);
        const after2 = await model.logits(probe);
        for (let t = 0; t < probe.length; t++) {
          assertClose(
            `logits row ${t}`,
            after2.subarray(t * V2, t * V2 + TINY_VOCAB_SIZE),
            before.subarray(t * TINY_VOCAB_SIZE, (t + 1) * TINY_VOCAB_SIZE),
            1e-6,
          );
        }
        // a step token is now a valid input
        await model.logits([1, ids[STEP_TOKENS.analysis]!, 7]);
        await assert.rejects(model.resizeTokenEmbeddings(3), /vocabSize: expected an integer ≥ the current/);
        // routing sugar
        const bundle = createMote(model, { rank: 4 }, { seed: 4, init: 'random' });
        try {
          const steps = [-1, -1, 0, 1, 2];
          const toks = [1, 2, 3, 4, 5];
          const rt = bundle.routing(steps);
          const explicit = await model.logits(toks, { lora: bundle.loraFor(rt) });
          rt.dispose();
          assert.ok(bitsEqual(await model.logits(toks, { adapters: bundle, steps }), explicit));
          await assert.rejects(model.logits(toks, { steps }), /steps: needs adapters/);
        } finally {
          bundle.dispose();
        }
      });
    }
  },
);

forEachBackend(
  'addStepTokens on a padded vocabulary (vocab_size > tokenizer ids): every tag row, inside the padding or past it, is drawn seeded around the mean, distinct, equal across loads; ordinary and untouched padding rows stay',
  async (b) => {
    const { writeTinyTokenizer, TINY_VOCAB_SIZE: N } = await import('./fixtures/tiny_tokenizer.js');
    const { loadTokenizer } = await import('../src/io/tokenizer.js');
    const { addStepTokens } = await import('../src/mote/bundle.js');
    const tokDir = writeTinyTokenizer(newDir('tok'));
    const tags = 6; // the default schema: 3 steps × open/close
    // padding 10: every tag inside it; padding 3: three inside, three past it
    for (const [pad, tied] of [
      [10, false],
      [10, true],
      [3, false],
    ] as const) {
      const m = tiny({ vocab: N + pad, tied, seed: 40 + pad });
      const V = N + pad,
        V2 = Math.max(V, N + tags);
      const load = async (): Promise<{
        E: Float32Array;
        L: Float32Array;
        E0: Float32Array;
        L0: Float32Array;
        ids: Record<string, number>;
      }> =>
        withModel(b, m, async (model) => {
          const E0 = await model.weights.embedTokens.readFloat(),
            L0 = await model.weights.lmHead.readFloat();
          const ids = await addStepTokens(model, loadTokenizer(tokDir));
          assert.equal(model.config.vocabSize, V2);
          assert.equal(model.weights.lmHead === model.weights.embedTokens, tied);
          return { E: await model.weights.embedTokens.readFloat(), L: await model.weights.lmHead.readFloat(), E0, L0, ids };
        });
      const first = await load();
      assert.deepEqual(
        Object.values(first.ids),
        Array.from({ length: tags }, (_, i) => N + i),
      );
      const H = BASE.hidden;
      const row = (a: Float32Array, v: number): Float32Array => a.subarray(v * H, (v + 1) * H);
      for (const [what, now, was] of [
        ['embed_tokens', first.E, first.E0],
        ['lm_head', first.L, first.L0],
      ] as const) {
        // the tokenizer's rows and the padding no tag took are untouched, bit for bit
        assert.ok(bitsEqual(now.subarray(0, N * H), was.subarray(0, N * H)), `${what}: ordinary rows kept`);
        if (V > N + tags)
          assert.ok(
            bitsEqual(now.subarray((N + tags) * H, V * H), was.subarray((N + tags) * H, V * H)),
            `${what}: untouched padding rows kept`,
          );
        const tagRows = Array.from({ length: tags }, (_, i) => row(now, N + i));
        for (let i = 0; i < tags; i++) {
          if (N + i < V)
            assert.ok(!bitsEqual(tagRows[i]!, row(was, N + i)), `${what}: tag row ${N + i} inside the padding was drawn, not kept`);
          for (let j = 0; j < i; j++) assert.ok(!bitsEqual(tagRows[i]!, tagRows[j]!), `${what}: tag rows ${N + j} and ${N + i} differ`);
        }
        // around the mean of the tokenizer's rows, with their spread
        let dev = 0,
          spread = 0;
        for (let h = 0; h < H; h++) {
          let mu = 0;
          for (let v = 0; v < N; v++) mu += was[v * H + h]! / N;
          for (let v = 0; v < N; v++) spread += (was[v * H + h]! - mu) ** 2 / N;
          for (const r of tagRows) dev += (r[h]! - mu) ** 2 / tags;
        }
        assert.ok(dev > 0.2 * spread && dev < 5 * spread, `${what}: tag rows' spread ${dev} vs the tokenizer rows' ${spread}`);
      }
      // seeded: a second load draws the same rows
      const second = await load();
      assert.ok(bitsEqual(second.E, first.E), 'embed_tokens equal across loads');
      assert.ok(bitsEqual(second.L, first.L), 'lm_head equal across loads');
    }
    // tags the tokenizer already has keep their rows (they may be trained); a second call changes nothing
    await withModel(b, tiny({ vocab: N + 10, seed: 50 }), async (model) => {
      const tok = loadTokenizer(tokDir);
      await addStepTokens(model, tok);
      const E = await model.weights.embedTokens.readFloat();
      await addStepTokens(model, tok);
      assert.ok(bitsEqual(await model.weights.embedTokens.readFloat(), E));
      await assert.rejects(
        model.initTokenRows([N + 12]),
        (e: Error) =>
          e instanceof ArgumentError && e.message.includes(`rows: ${N + 12} would leave rows ${N + 10}..${N + 11} past the vocabulary`),
      );
      await assert.rejects(
        model.initTokenRows([1], { meanRows: 0 }),
        (e: Error) => e instanceof ArgumentError && /meanRows/.test(e.message),
      );
      await assert.rejects(model.initTokenRows([-1]), (e: Error) => e instanceof ArgumentError && /rows\[0\]/.test(e.message));
    });
  },
);

forEachBackend(
  'tokenRouter: prompt tokens go to the shared expert, or to the first step expert when α = 1 (no shared expert)',
  async (b) => {
    await withModel(b, tiny(), async (model) => {
      for (const [alpha, prompt] of [
        [0.5, { slots: [-1, 3], weights: [0, 1] }],
        [1, { slots: [0, 3], weights: [1, 0] }],
      ] as const) {
        const bundle = createMote(model, { rank: 2, alpha });
        try {
          const r = bundle.tokenRouter();
          assert.deepEqual(r.slotsFor(0, { step: -1 }), prompt);
          assert.deepEqual(r.slotsFor(0, { step: 2 }), { slots: [2, 3], weights: [alpha, 1 - alpha] });
        } finally {
          bundle.dispose();
        }
      }
    });
  },
);
