// The training pass (src/model/llama_backward.ts) and loop (src/train/*) on every backend:
// - gradients of the whole model, tensor by tensor, against the float64 reference
//   (src/reference/llama_grad.ts, itself checked against finite differences): MoTE experts
//   with [step, shared] routing, random-step prompt routing, a step-skipping mask and two
//   packed sequences; full-parameter gradients with tied embeddings and biases;
// - a few hundred steps on a tiny model and a fixed toy set bring the loss under a bound;
// - frozen base weights are bit-identical after training; two runs with one seed give
//   identical bits; a run saved and resumed equals an uninterrupted one, also when the save
//   comes from SIGINT in a child process;
// - step-skipping masks, the schedule, and bad input (clear errors, nothing applied).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { baseWeights, llamaLossAndGrad } from '../src/model/llama_backward.js';
import { llamaGradRef } from '../src/reference/llama_grad.js';
import { LINEAR_MODULES, type LinearModule } from '../src/model/config.js';
import { createMote, moteRoutingSlots, type MoteBundle } from '../src/mote/bundle.js';
import type { LoraRefStack } from '../src/reference/lora.js';
import { Trainer, type TrainExample } from '../src/train/trainer.js';
import { CHECKPOINT_STATE_FILE, loadCheckpoint, saveCheckpoint } from '../src/train/checkpoint.js';
import { stepSkipSegments } from '../src/train/step_skip.js';
import { checkSchedule, learningRate } from '../src/train/schedule.js';
import { ArgumentError, MoteError } from '../src/errors.js';
import type { Backend } from '../src/backend/backend.js';
import { makeTinyModel } from './fixtures/tiny_model.js';
import { modelFromTensors } from '../src/model/load.js';
import { TRAIN_BASE as BASE, hostTensors, loadTiny as load, tinyTraining, toyExamples } from './fixtures/train_fixture.js';
import { bitsEqual } from './case_helpers.js';
import { closeBackends, forEachBackend, relErr } from './helpers.js';

after(closeBackends);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-train-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
let dirs = 0;
const newDir = (label: string) => path.join(tmp, `${label}-${dirs++}`);

async function refStacks(bundle: MoteBundle): Promise<Map<string, LoraRefStack>> {
  const map = new Map<string, LoraRefStack>();
  for (let l = 0; l < bundle.stacks.length; l++) {
    for (const m of LINEAR_MODULES) {
      const s = bundle.stacks[l]![m];
      if (s)
        map.set(`${l}.${m}`, {
          A: await s.A.readFloat(),
          B: await s.B.readFloat(),
          ranks: Array.from(s.ranks),
          scales: await s.scale.readFloat(),
        });
    }
  }
  return map;
}

function assertClose(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number): void {
  const e = relErr(got, want);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(2)} > ${tol}`);
}

// ---------------------------------------------------------------------------------------
// Gradients against the float64 reference

forEachBackend('MoTE expert gradients equal the float64 reference (routing, step skipping, packed sequences)', async (b) => {
  const tm = makeTinyModel(BASE);
  const model = load(b, tm);
  const bundle = createMote(model, { rank: 4, loraAlpha: 8 }, { seed: 2, init: 'random' });
  try {
    // two sequences: prompt (−1) then steps 0, 1, 2
    const stepIds = [-1, -1, -1, 0, 0, 1, 1, 2, 2, 2, -1, -1, 0, 1, 1, 2, 2];
    const seq = stepIds.map((_, t) => (t < 10 ? 0 : 1));
    const T = stepIds.length;
    const ids = Array.from({ length: T }, (_, t) => (t * 11 + 5) % 48);
    const targets = Array.from({ length: T }, (_, t) => (t * 7 + 1) % 48);
    const lossMask = stepIds.map((s, t) => (s >= 0 && t !== 9 && t !== T - 1 ? 1 : 0));
    const S = 4; // prompt + 3 steps
    const blocked = new Uint8Array(2 * S * S);
    blocked[(0 * S + 3) * S + 1] = 1; // seq 0: answer does not see analysis
    blocked[(1 * S + 2) * S + 1] = 1; // seq 1: guidance does not see analysis
    const segment = stepIds.map((s) => s + 1);
    const segments = { numSegments: S, segment, blocked };
    const routingOpts = { seq, promptRouting: 'random-step' as const, seed: 9 };
    const routing = bundle.routing(stepIds, routingOpts);
    try {
      const r = await llamaLossAndGrad(model, { ids, seq, targets, lossMask, segments, lora: bundle.loraFor(routing) });
      const { slots, weight } = moteRoutingSlots(stepIds, 3, 0.5, routingOpts);
      const stacks = await refStacks(bundle);
      const ref = llamaGradRef(tm.cfg, tm.weights, ids, targets, lossMask, {
        seq,
        segments: { numSegments: S, qSegment: segment, blocked },
        lora: { stacks: (l, m) => stacks.get(`${l}.${m}`), slots, weights: weight, K: 2 },
      });
      assert.equal(r.count, ref.count);
      assert.ok(Math.abs(r.lossSum / r.count - ref.loss) <= 1e-5 * Math.abs(ref.loss), `loss ${r.lossSum / r.count} vs ${ref.loss}`);
      assert.equal(r.grads.weights.size, 0, 'no base gradients when the base is frozen');
      let checked = 0;
      for (let l = 0; l < 2; l++) {
        for (const m of LINEAR_MODULES) {
          const s = bundle.stacks[l]![m as LinearModule]!;
          const g = r.grads.lora.get(s)!;
          const want = ref.lora.get(`${l}.${m}`)!;
          assertClose(`layer ${l} ${m} dA`, await g.dA.readFloat(), want.dA, 2e-4);
          assertClose(`layer ${l} ${m} dB`, await g.dB.readFloat(), want.dB, 2e-4);
          checked++;
        }
      }
      assert.equal(checked, 14);
      for (const { dA, dB } of r.grads.lora.values()) {
        dA.dispose();
        dB.dispose();
      }
    } finally {
      routing.dispose();
    }
  } finally {
    bundle.dispose();
    model.dispose();
  }
});

forEachBackend('full-parameter gradients equal the float64 reference (tied embeddings, biases, GQA)', async (b) => {
  for (const o of [
    { ...BASE, tied: true, attentionBias: true, mlpBias: true, seed: 4 },
    { ...BASE, family: 'qwen2' as const, tied: false, seed: 5 },
  ]) {
    const tm = makeTinyModel(o);
    const model = load(b, tm);
    try {
      const T = 12;
      const ids = Array.from({ length: T }, (_, t) => (t * 5 + 2) % 48);
      const targets = Array.from({ length: T }, (_, t) => (t * 13 + 4) % 48);
      const lossMask = ids.map((_, t) => (t % 4 === 3 ? 0 : 1));
      const r = await llamaLossAndGrad(model, { ids, targets, lossMask }, { trainBase: true });
      const ref = llamaGradRef(tm.cfg, tm.weights, ids, targets, lossMask);
      const names = baseWeights(model);
      assert.equal(r.grads.weights.size, names.size);
      assert.equal(names.has('lm_head.weight'), !o.tied);
      for (const [name, t] of names) {
        assertClose(
          `${o.family}${o.tied ? ' tied' : ''}: ${name}`,
          await r.grads.weights.get(t)!.readFloat(),
          ref.weights.get(name)!,
          2e-4,
        );
      }
      for (const g of r.grads.weights.values()) g.dispose();
    } finally {
      model.dispose();
    }
  }
});

forEachBackend(
  'qwen3 (per-head q/k norms, head_dim 16 ≠ hidden / heads): base and MoTE expert gradients equal the float64 reference',
  async (b) => {
    const tm = makeTinyModel({ ...BASE, family: 'qwen3', headDim: 16, kvHeads: 1, seed: 7 });
    const model = load(b, tm);
    const bundle = createMote(model, { rank: 4, loraAlpha: 8 }, { seed: 5, init: 'random' });
    try {
      const stepIds = [-1, -1, 0, 0, 1, 1, 2, 2, -1, 0, 1, 2];
      const seq = stepIds.map((_, t) => (t < 8 ? 0 : 1));
      const T = stepIds.length;
      const ids = Array.from({ length: T }, (_, t) => (t * 11 + 3) % 48);
      const targets = Array.from({ length: T }, (_, t) => (t * 7 + 2) % 48);
      const lossMask = stepIds.map((s, t) => (s >= 0 && t !== 7 ? 1 : 0));
      const routing = bundle.routing(stepIds, { seq });
      try {
        const r = await llamaLossAndGrad(model, { ids, seq, targets, lossMask, lora: bundle.loraFor(routing) }, { trainBase: true });
        const { slots, weight } = moteRoutingSlots(stepIds, 3, 0.5, { seq, promptRouting: 'shared' });
        const stacks = await refStacks(bundle);
        const ref = llamaGradRef(tm.cfg, tm.weights, ids, targets, lossMask, {
          seq,
          lora: { stacks: (l, m) => stacks.get(`${l}.${m}`), slots, weights: weight, K: 2 },
        });
        assert.ok(Math.abs(r.lossSum / r.count - ref.loss) <= 1e-5 * Math.abs(ref.loss), `loss ${r.lossSum / r.count} vs ${ref.loss}`);
        const names = baseWeights(model);
        assert.ok(names.has('model.layers.1.self_attn.q_norm.weight') && names.has('model.layers.1.self_attn.k_norm.weight'));
        assert.equal(r.grads.weights.size, names.size);
        for (const [name, t] of names)
          assertClose(`qwen3: ${name}`, await r.grads.weights.get(t)!.readFloat(), ref.weights.get(name)!, 2e-4);
        for (let l = 0; l < 2; l++) {
          for (const m of LINEAR_MODULES) {
            const g = r.grads.lora.get(bundle.stacks[l]![m as LinearModule]!)!;
            const want = ref.lora.get(`${l}.${m}`)!;
            assertClose(`qwen3 layer ${l} ${m} dA`, await g.dA.readFloat(), want.dA, 2e-4);
            assertClose(`qwen3 layer ${l} ${m} dB`, await g.dB.readFloat(), want.dB, 2e-4);
          }
        }
        for (const { dA, dB } of r.grads.lora.values()) {
          dA.dispose();
          dB.dispose();
        }
        for (const g of r.grads.weights.values()) g.dispose();
      } finally {
        routing.dispose();
      }
    } finally {
      bundle.dispose();
      model.dispose();
    }
  },
);

// ---------------------------------------------------------------------------------------
// The loop

interface RunResult {
  losses: number[];
  params: Float32Array[];
}

async function train(
  b: Backend,
  steps: number,
  opts: { seed?: number; stopAt?: number; resumeFrom?: string; saveTo?: string } = {},
): Promise<RunResult & { frozenSame: boolean }> {
  const t = tinyTraining(b, steps, opts.seed === undefined ? {} : { seed: opts.seed });
  try {
    const before = await Promise.all([...baseWeights(t.model).values()].map((w) => w.readFloat()));
    if (opts.resumeFrom) await loadCheckpoint(t.trainer, opts.resumeFrom);
    while (!t.trainer.done && t.trainer.state.step < (opts.stopAt ?? steps)) await t.trainer.trainStep();
    if (opts.saveTo) await saveCheckpoint(t.trainer, opts.saveTo);
    const after = await Promise.all([...baseWeights(t.model).values()].map((w) => w.readFloat()));
    return {
      losses: t.trainer.state.losses,
      params: await Promise.all(t.trainer.params.map((p) => p.p.readFloat())),
      frozenSame: before.every((w, i) => bitsEqual(w, after[i]!)),
    };
  } finally {
    t.dispose();
  }
}

forEachBackend('training lowers the loss under a bound; the frozen base stays bit-identical', async (b) => {
  const steps = b.kind === 'webgpu' ? 60 : 200;
  const r = await train(b, steps);
  const first = r.losses[0]!,
    last = r.losses.slice(-5).reduce((a, c) => a + c, 0) / 5;
  assert.ok(first > 3.0, `the first loss ${first} should be near ln(48) ≈ 3.87`);
  const bound = b.kind === 'webgpu' ? 1.5 : 0.6;
  assert.ok(
    last < bound,
    `mean loss of the last 5 steps ${last.toFixed(4)} should be < ${bound} after ${steps} steps (first ${first.toFixed(4)})`,
  );
  assert.ok(r.frozenSame, 'base weights changed');
});

forEachBackend('two runs with one seed give identical bits; another seed differs', async (b) => {
  const a = await train(b, 6),
    c = await train(b, 6),
    d = await train(b, 6, { seed: 12 });
  assert.deepEqual(a.losses, c.losses);
  a.params.forEach((p, i) => assert.ok(bitsEqual(p, c.params[i]!), `param ${i} differs between runs`));
  assert.notDeepEqual(a.losses, d.losses);
});

forEachBackend('save and resume equals an uninterrupted run', async (b) => {
  const full = await train(b, 8);
  const dir = newDir('resume');
  await train(b, 8, { stopAt: 3, saveTo: dir });
  assert.ok(fs.existsSync(path.join(dir, CHECKPOINT_STATE_FILE)));
  assert.ok(fs.existsSync(path.join(dir, 'adapters', 'mote.json')), 'the checkpoint holds the bundle in PEFT layout');
  assert.deepEqual(
    fs.readdirSync(tmp).filter((f) => f.includes('.tmp-') || f.includes('.old-')),
    [],
    'no temporary folder is left',
  );
  const resumed = await train(b, 8, { resumeFrom: dir });
  assert.deepEqual(resumed.losses, full.losses);
  full.params.forEach((p, i) => assert.ok(bitsEqual(p, resumed.params[i]!), `param ${i} differs after resume`));
});

test('a run stopped by SIGINT saves a checkpoint; resumed, it follows the uninterrupted trajectory [cpu]', async (t) => {
  const { backendFor } = await import('./helpers.js');
  const b = await backendFor('cpu');
  if (typeof b === 'string') return t.skip(b);
  const full = await train(b, 10);
  const dir = newDir('sigint');
  const child = fileURLToPath(new URL('./fixtures/train_child.js', import.meta.url));
  const proc = spawn(process.execPath, [child, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const code = await new Promise<number | null>((resolve) => {
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      // After the second step, interrupt as a user would.
      if (/step 2\b/.test(out) && !proc.killed) proc.kill('SIGINT');
    });
    proc.on('exit', (c) => resolve(c));
  });
  assert.equal(code, 0, `child output: ${out}`);
  assert.match(out, /interrupted at step (\d+)/);
  const stoppedAt = Number(/interrupted at step (\d+)/.exec(out)![1]);
  assert.ok(stoppedAt >= 2 && stoppedAt < 10, `stopped at ${stoppedAt}`);
  const resumed = await train(b, 10, { resumeFrom: dir });
  assert.deepEqual(resumed.losses, full.losses);
  full.params.forEach((p, i) => assert.ok(bitsEqual(p, resumed.params[i]!), `param ${i} differs after SIGINT + resume`));
});

// ---------------------------------------------------------------------------------------
// Pieces and bad input

test('step skipping: pSkip 0 gives no mask, 1 blocks every later→earlier step pair, draws are seeded', () => {
  const stepIds = [-1, 0, 1, 2, -1, 0, 2];
  const seq = [0, 0, 0, 0, 1, 1, 1];
  assert.equal(stepSkipSegments(stepIds, seq, 3, 0, Math.random), undefined);
  const all = stepSkipSegments(stepIds, seq, 3, 1, Math.random)!;
  assert.equal(all.numSegments, 4);
  assert.deepEqual(Array.from(all.segment), [0, 1, 2, 3, 0, 1, 3]);
  const S = 4;
  for (let s = 0; s < 2; s++)
    for (let a = 0; a < S; a++)
      for (let e = 0; e < S; e++) {
        assert.equal(all.blocked[(s * S + a) * S + e], a > e && e >= 1 ? 1 : 0, `seq ${s} [${a}][${e}]`);
      }
  const r = () => {
    let x = 1;
    return () => (x = (x * 48271) % 2147483647) / 2147483647;
  };
  assert.deepEqual(stepSkipSegments(stepIds, seq, 3, 0.5, r())!.blocked, stepSkipSegments(stepIds, seq, 3, 0.5, r())!.blocked);
  assert.throws(() => stepSkipSegments(stepIds, seq, 3, 1.5, Math.random), /pSkip/);
  assert.throws(() => stepSkipSegments([0, 3], [0, 0], 3, 0.5, Math.random), /stepIds\[1\]/);
});

test('schedule: linear warmup, cosine to minLr, constant', () => {
  const o = checkSchedule('t', { lr: 1, warmupSteps: 4, totalSteps: 14, minLrRatio: 0.1 });
  assert.equal(learningRate(1, o), 0.25);
  assert.equal(learningRate(4, o), 1);
  assert.ok(Math.abs(learningRate(9, o) - 0.55) < 1e-12);
  assert.ok(Math.abs(learningRate(14, o) - 0.1) < 1e-12);
  assert.equal(learningRate(10, checkSchedule('t', { lr: 2, totalSteps: 20, schedule: 'constant' })), 2);
  assert.throws(() => checkSchedule('t', { lr: -1, totalSteps: 3 }), /lr/);
  assert.throws(() => checkSchedule('t', { lr: 1, totalSteps: 0 }), /steps/);
});

forEachBackend('bad input: clear errors naming the field; a non-finite loss applies no update', async (b) => {
  const tm = makeTinyModel(BASE);
  const model = load(b, tm);
  const bundle = createMote(model, { rank: 2 }, { seed: 1 });
  try {
    const ex = toyExamples(4, 48);
    const mk = (e: TrainExample[], o: Record<string, unknown> = {}) =>
      new Trainer(model, bundle, e, { steps: 2, lr: 1e-3, batchTokens: 32, ...o });
    assert.throws(
      () => mk([]),
      (e: Error) => e instanceof ArgumentError && /examples/.test(e.message),
    );
    assert.throws(
      () => mk([{ ...ex[0]!, ids: [1, 2, 99], lossMask: [0, 1, 1], stepIds: [-1, 0, 0] }]),
      /examples\[0\]\.ids\[2\]: expected a token id in \[0, 47\], got 99/,
    );
    assert.throws(
      () => mk([{ ...ex[0]!, lossMask: Array.from(ex[0]!.lossMask, () => 2) }]),
      /examples\[0\]\.lossMask\[0\]: expected 0 or 1/,
    );
    assert.throws(
      () => mk([{ ids: ex[0]!.ids, lossMask: ex[0]!.lossMask }]),
      /examples\[0\]\.stepIds: a MoTE bundle needs one step index per token/,
    );
    assert.throws(
      () => mk([{ ...ex[0]!, stepIds: Array.from(ex[0]!.stepIds!, () => 5) }]),
      /stepIds\[0\]: expected −1 \(prompt\) or a step index in \[0, 2\], got 5/,
    );
    assert.throws(() => mk(ex, { batchTokens: 8 }), /examples\[0\]\.ids: 10 tokens do not fit in a micro-batch of batchTokens = 8/);
    assert.throws(() => mk(ex, { lr: Number.NaN }), /lr/);
    assert.throws(() => mk(ex, { pSkip: 2 }), /pSkip/);
    assert.throws(() => mk(ex, { promptRouting: 'first' }), /promptRouting/);
    assert.throws(() => new Trainer(model, null, ex, { steps: 1, lr: 1 }), /nothing to train/);
    await assert.rejects(llamaLossAndGrad(model, { ids: [1, 2], targets: [2, 3], lossMask: [1, 1] }), /nothing to train/);
    await assert.rejects(
      llamaLossAndGrad(model, { ids: [1, 2], targets: [2, 300], lossMask: [1, 1] }, { trainBase: true }),
      /batch\.targets\[1\]: expected a token id in \[0, 47\], got 300/,
    );
    await assert.rejects(
      llamaLossAndGrad(model, { ids: [1, 2], targets: [2], lossMask: [1, 1] }, { trainBase: true }),
      /batch\.targets: expected 2 entries/,
    );

    // A checkpoint of other data is refused; a folder that is not a checkpoint is not overwritten.
    const trainer = mk(ex);
    const dir = newDir('ckpt');
    await trainer.trainStep();
    await saveCheckpoint(trainer, dir);
    const other = mk(toyExamples(5, 48));
    await assert.rejects(loadCheckpoint(other, dir), /trained on other data/);
    const foreign = newDir('foreign');
    fs.mkdirSync(foreign);
    fs.writeFileSync(path.join(foreign, 'notes.txt'), 'mine');
    await assert.rejects(saveCheckpoint(trainer, foreign), /refusing to replace it/);
    assert.equal(fs.readFileSync(path.join(foreign, 'notes.txt'), 'utf8'), 'mine');
    await assert.rejects(loadCheckpoint(trainer, foreign), /not a mote checkpoint directory/);
    other.dispose();

    // A NaN weight makes the loss NaN: the step throws and nothing is updated.
    const q = bundle.stacks[0]!.q_proj!;
    const A = await q.A.readFloat();
    A[0] = Number.NaN;
    q.A.write(A);
    const B0 = await q.B.readFloat();
    const before = await Promise.all(trainer.params.map((p) => p.p.readFloat()));
    await assert.rejects(
      trainer.trainStep(),
      (e: Error) => e instanceof MoteError && /step 2: the (loss|gradient norm) is not finite/.test(e.message),
    );
    const after2 = await Promise.all(trainer.params.map((p) => p.p.readFloat()));
    before.forEach((p, i) => assert.ok(bitsEqual(p, after2[i]!), `param ${trainer.params[i]!.name} changed by a failed step`));
    assert.equal(trainer.state.step, 1);
    void B0;
    trainer.dispose();
  } finally {
    bundle.dispose();
    model.dispose();
  }
});

forEachBackend('options: misspelt keys, gradAccum past the cap and examples past the context are refused', async (b) => {
  const tm = makeTinyModel(BASE);
  // a context of 12 tokens: toyExamples are 10 to 14 long
  const model = modelFromTensors({ ...tm.cfg, maxPositionEmbeddings: 12 }, hostTensors(tm), { backend: b });
  const bundle = createMote(model, { rank: 2 }, { seed: 1 });
  try {
    const ex = toyExamples(4, 48);
    const mk = (e: TrainExample[], o: Record<string, unknown> = {}) =>
      new Trainer(model, bundle, e, { steps: 2, lr: 1e-3, batchTokens: 32, ...o });
    // used to be ignored silently (no clipping change, no warmup)
    assert.throws(
      () => mk(ex.slice(0, 1), { clip_norm: 0.5 }),
      (e: Error) => e instanceof ArgumentError && /unknown option 'clip_norm'/.test(e.message),
    );
    // used to pick and pack 10^9 micro-batches up front: the process died out of heap
    assert.throws(() => mk(ex.slice(0, 1), { gradAccum: 1e9 }), /gradAccum: expected an integer in \[1, 4096\], got 1000000000/);
    // used to train on positions past max_position_embeddings
    assert.throws(() => mk(ex), /examples\[3\]\.ids: 13 tokens, more than the model's context \(max_position_embeddings\) of 12/);
    using tr = mk(ex.slice(0, 2));
    await tr.trainStep();
  } finally {
    bundle.dispose();
    model.dispose();
  }
});

forEachBackend('concurrent steps are refused instead of sharing gradients; dispose mid-step names the trainer', async (b) => {
  const t = tinyTraining(b, 4);
  try {
    const first = t.trainer.trainStep();
    // used to run both, each as step 1, on one set of gradient buffers
    await assert.rejects(t.trainer.trainStep(), /another step of this trainer is in flight/);
    await assert.rejects(t.trainer.run(), /a trainStep\(\) is already in progress/);
    await assert.rejects(saveCheckpoint(t.trainer, newDir('mid')), /a step is in flight/);
    assert.equal((await first).step, 1);
    const running = t.trainer.run();
    await assert.rejects(t.trainer.trainStep(), /run\(\) is in progress/);
    await running;
    assert.equal(t.trainer.state.step, 4);
  } finally {
    t.dispose();
  }
  const u = tinyTraining(b, 4);
  try {
    const p = u.trainer.trainStep();
    u.trainer.dispose();
    await assert.rejects(p, /Trainer\.trainStep: used after dispose\(\)/);
  } finally {
    u.dispose();
  }
});
