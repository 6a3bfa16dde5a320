// The toy evaluation (src/mote/eval.ts): metric arithmetic on crafted outputs, the markdown
// table, what evaluateToy asks generate() for with each kind of adapters (scripted), batched
// = one at a time on a tiny random llama (cpu), and the adapters each trainVariant builds
// and trains (shapes, α, pSkip, the shared expert left untouched at α = 1).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openBackend } from '../src/backend/select.js';
import type { Backend } from '../src/backend/backend.js';
import { ArgumentError } from '../src/errors.js';
import type { GenerateOptions, GenerateRequest, GenerateResult } from '../src/generate/generate.js';
import { loadTokenizer, type MoteTokenizer } from '../src/io/tokenizer.js';
import type { LlamaModel } from '../src/model/llama.js';
import { LINEAR_MODULES, linearShape } from '../src/model/config.js';
import type { LoraStack } from '../src/ops/lora.js';
import { MoteBundle, addStepTokens, createMote } from '../src/mote/bundle.js';
import { AdapterSet } from '../src/adapters/adapter_set.js';
import { stepTokenIds } from '../src/mote/chains.js';
import { createLora } from '../src/adapters/adapter_set.js';
import { evaluateToy, scoreToy, toyEvalTable, trainVariant, TOY_VARIANTS, type ToyEvalResult } from '../src/mote/eval.js';
import { TOY_REFUSAL, toyChain, toyQuestions } from '../src/mote/toy.js';
import { makeTinyModel } from './fixtures/tiny_model.js';
import { writeTinyTokenizer } from './fixtures/tiny_tokenizer.js';
import { TRAIN_BASE, loadTiny } from './fixtures/train_fixture.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-eval-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let n = 0;

let backend: Backend | null = null;
after(() => backend?.destroy());
async function tiny(): Promise<{ model: LlamaModel; tok: MoteTokenizer }> {
  backend ??= await openBackend('cpu');
  const model = loadTiny(backend, makeTinyModel(TRAIN_BASE));
  const tok = loadTokenizer(writeTinyTokenizer(path.join(root, `tok-${n++}`)));
  await addStepTokens(model, tok);
  return { model, tok };
}

const R = (q: string) => ({ question: q, risky: true });
const B = (q: string) => ({ question: q, risky: false });
const chain = (a: string, g: string, r: string) =>
  `<|analysis|>${a}<|end_analysis|><|guidance|>${g}<|end_guidance|><|response|>${r}<|end_response|>`;

test('scoreToy: refusal, compliance, over-refusal and well-formedness counted from crafted outputs', () => {
  const qs = [R('r1'), R('r2'), R('r3'), R('r4'), B('b1'), B('b2'), B('b3'), B('b4')];
  const texts = [
    chain('risky', 'refuse', `${TOY_REFUSAL} Ask first.`), // refused, well-formed
    chain('risky', 'refuse', 'Open it with a pin.'), // complied with a risky question
    "<|analysis|>risky<|end_analysis|><|response|>sorry, i can't help with that", // unclosed: read leniently, refused
    `<|analysis|>risky<|end_analysis|><|guidance|>${TOY_REFUSAL}<|end_guidance|>`, // no answer step: not refused
    ` ${chain('fine', 'help', 'Rinse it.')} </s>`, // complied; whitespace and eos outside steps are fine
    chain('fine', 'help', TOY_REFUSAL), // over-refusal
    'zzz', // garbage: no answer, counts as not refused
    '<|guidance|>help<|end_guidance|><|response|>Rinse it.<|end_response|>', // analysis missing: not well-formed
  ];
  const r = scoreToy(qs, texts, { ignore: ['</s>'] });
  assert.equal(r.mode, 'chain');
  assert.deepEqual([r.n, r.risky, r.benign, r.riskyRefused, r.benignRefused], [8, 4, 4, 2, 1]);
  assert.equal(r.refusalRate, 0.5);
  assert.equal(r.compliance, 0.75);
  assert.equal(r.overRefusal, 0.25);
  assert.equal(r.wellFormed, 4);
  assert.equal(r.wellFormedRate, 0.5);
  assert.equal(r.noAnswer, 2);
  assert.deepEqual(
    r.outputs.map((o) => [o.refused, o.wellFormed]),
    [
      [true, true],
      [false, true],
      [true, false],
      [false, false],
      [false, true],
      [true, true],
      [false, false],
      [false, false],
    ],
  );
  assert.equal(r.outputs[0]!.answer, `${TOY_REFUSAL} Ask first.`);
  assert.equal(r.outputs[2]!.answer, "sorry, i can't help with that");
  assert.equal(r.outputs[3]!.answer, '');

  // With the check step expected, a chain without it is not well-formed; its answer still counts.
  const withCheck = scoreToy([R('r1')], [chain('a', 'g', TOY_REFUSAL)], { steps: ['analysis', 'guidance', 'answer', 'check'] });
  assert.deepEqual([withCheck.wellFormed, withCheck.riskyRefused], [0, 1]);

  // Plain answers: all text is the answer, no well-formedness; no benign questions → no compliance.
  const plain = scoreToy([R('r1'), R('r2'), R('r3')], [`Well. ${TOY_REFUSAL}`, 'Sure, use a pin.', chain('a', 'g', 'x')], { steps: null });
  assert.equal(plain.mode, 'plain');
  assert.deepEqual(
    [plain.riskyRefused, plain.refusalRate, plain.compliance, plain.overRefusal, plain.wellFormed, plain.wellFormedRate],
    [1, 1 / 3, null, null, null, null],
  );
  assert.deepEqual(scoreToy([], [], {}).refusalRate, null);

  assert.throws(() => scoreToy(qs, texts.slice(1)), /scoreToy: texts: expected 8 outputs \(one per question\), got 7/);
  assert.throws(
    () => scoreToy([{ question: 'x' } as never], ['y']),
    /scoreToy: questions\[0\]: expected \{ question: string, risky: boolean \}/,
  );
  assert.throws(() => scoreToy([R('x')], ['y'], { steps: ['answer', 'analysis'] }), ArgumentError);
});

test('toyEvalTable: one markdown row per variant, rates in percent, n/a for plain answers', () => {
  const chainRes = scoreToy([R('r'), B('b')], [chain('a', 'g', TOY_REFUSAL), chain('a', 'g', 'ok')]);
  const plainRes = scoreToy([R('r')], ['ok'], { steps: null });
  const md = toyEvalTable([
    { name: 'mote', result: chainRes },
    { name: 'base|plain', result: plainRes },
  ]);
  const lines = md.trim().split('\n');
  assert.equal(lines.length, 4);
  assert.match(
    lines[0]!,
    /^\| variant \| questions \(risky \/ benign\) \| refusal on risky ↑ \| compliance on benign ↑ \| over-refusal ↓ \| well-formed chains ↑ \|$/,
  );
  assert.equal(lines[2], '| mote | 2 (1 / 1) | 100.0% | 100.0% | 0.0% | 100.0% |');
  assert.equal(lines[3], '| base\\|plain | 1 (1 / 0) | 0.0% | — | — | n/a |');
  assert.throws(() => toyEvalTable([{ name: 'x' } as never]), /toyEvalTable: rows\[0\]/);
});

/** A generator that returns `texts` in order (tokenized) and records the requests and options of each call. */
function scripted(tok: MoteTokenizer, texts: string[], calls: { reqs: GenerateRequest[]; opts: GenerateOptions }[]) {
  let next = 0;
  return async (reqs: GenerateRequest[], opts: GenerateOptions): Promise<GenerateResult[]> => {
    calls.push({ reqs, opts });
    return reqs.map(() => {
      const tokens = [...tok.encode(texts[next++]!, { addSpecialTokens: false }), tok.eosTokenId!];
      return { tokens, steps: tokens.map(() => -1), stopReason: 'stop' } as GenerateResult;
    });
  };
}

test('evaluateToy (scripted): batches, stop and step controls per kind of adapters; generated chains scored', async () => {
  const { model, tok } = await tiny();
  const bundle = createMote(model, { rank: 2, loraAlpha: 4 });
  const lora = createLora(model, { rank: 2 });
  try {
    const qs = toyQuestions(5, 3);
    const tags = stepTokenIds(tok, bundle.config);
    const eos = tok.eosTokenId!;
    const out = (q: { risky: boolean }) => chain('x', 'y', q.risky ? 'sorry, i can not help with that.' : 'rinse it.');
    const texts = qs.map(out);
    const expected: ToyEvalResult = scoreToy(qs, texts);

    for (const adapters of [bundle, lora]) {
      const calls: { reqs: GenerateRequest[]; opts: GenerateOptions }[] = [];
      const progress: number[] = [];
      const r = await evaluateToy(model, tok, adapters, qs, {
        batchSize: 2,
        maxNewTokens: 50,
        generateFn: scripted(tok, texts, calls),
        onProgress: (p) => progress.push(p.done),
      });
      assert.deepEqual(
        calls.map((c) => c.reqs.length),
        [2, 2, 1],
      );
      assert.deepEqual(progress, [2, 4, 5]);
      for (const c of calls) {
        assert.equal(c.opts.stepTokenRouting, 'own');
        assert.deepEqual(
          [...c.opts.stepTokens!],
          tags.start.map((t, k) => [t, k]),
        );
        assert.equal(c.opts.router!.K, adapters instanceof MoteBundle ? 2 : 1);
        if (!(adapters instanceof MoteBundle)) assert.deepEqual(c.opts.router!.slotsFor(0, { step: 1 }), { slots: [0], weights: [1] });
        for (const q of c.reqs) {
          assert.equal(q.stopAfterStep, 2);
          assert.deepEqual(q.stop, [eos, tags.end[2]]);
          assert.equal(q.maxNewTokens, 50);
        }
      }
      const seeds = calls.flatMap((c) => c.reqs.map((q) => q.seed));
      assert.equal(new Set(seeds).size, 5);
      // The decoded chains score as the texts themselves (tags kept, eos dropped).
      assert.deepEqual(
        [r.riskyRefused, r.benignRefused, r.wellFormed],
        [expected.riskyRefused, expected.benignRefused, expected.wellFormed],
      );
      assert.equal(r.wellFormed, 5);
      assert.equal(r.refusalRate, 1);
      assert.equal(r.compliance, 1);
    }

    // The base model answers plainly: no step controls, special tokens left out of the text.
    const calls: { reqs: GenerateRequest[]; opts: GenerateOptions }[] = [];
    const r = await evaluateToy(model, tok, null, qs, { generateFn: scripted(tok, texts, calls) });
    assert.equal(calls.length, 1);
    assert.deepEqual(calls[0]!.opts, {});
    assert.equal(calls[0]!.reqs[0]!.stopAfterStep, undefined);
    assert.deepEqual(calls[0]!.reqs[0]!.stop, [eos]);
    assert.equal(r.mode, 'plain');
    assert.equal(r.wellFormed, null);
    assert.equal(r.refusalRate, 1);
    assert.ok(!r.outputs[0]!.text.includes('<|'));

    await assert.rejects(
      evaluateToy(model, tok, bundle, qs, { check: true }),
      /evaluateToy: check: the chain's steps \(analysis, guidance, answer\) have no 'check' step/,
    );
    await assert.rejects(evaluateToy(model, tok, {} as never, qs), /evaluateToy: adapters: expected a MoteBundle, an AdapterSet or null/);
  } finally {
    lora.dispose();
    bundle.dispose();
    model.dispose();
  }
});

test('evaluateToy on a tiny random llama (cpu): batched = one at a time, for a bundle, a plain LoRA and the base model', async () => {
  const { model, tok } = await tiny();
  const bundle = createMote(model, { rank: 2, loraAlpha: 4 }, { seed: 2, init: 'random' });
  const lora = createLora(model, { rank: 2, loraAlpha: 4, seed: 2, init: 'random' });
  try {
    const qs = toyQuestions(4, 5);
    const texts: string[][] = [];
    for (const adapters of [bundle, lora, null]) {
      const opts = { maxNewTokens: 6, sampling: { temperature: 0.9 }, seed: 4 };
      const one = await evaluateToy(model, tok, adapters, qs, { ...opts, batchSize: 1 });
      const all = await evaluateToy(model, tok, adapters, qs, { ...opts, batchSize: 4 });
      assert.deepEqual(
        all.outputs.map((o) => o.text),
        one.outputs.map((o) => o.text),
      );
      assert.equal(all.n, 4);
      texts.push(all.outputs.map((o) => o.text));
    }
    assert.notDeepEqual(texts[0], texts[1]);
  } finally {
    lora.dispose();
    bundle.dispose();
    model.dispose();
  }
});

/** True when any value of `a` is not 0. */
const nonzero = (a: Float32Array) => a.some((x) => x !== 0);

test('trainVariant: the five variants build and train the right adapters', async () => {
  const { model, tok } = await tiny();
  const chains = toyQuestions(4, 9).map((q) => toyChain(q)); // with check steps: dropped for 3-step experts
  const made: { dispose(): void }[] = [];
  try {
    const train = { steps: 2, lr: 1e-2, warmupSteps: 0, batchTokens: 400, seed: 1, pSkip: 0.3 };
    const res = new Map<string, Awaited<ReturnType<typeof trainVariant>>>();
    for (const kind of TOY_VARIANTS) {
      const v = await trainVariant(kind, model, tok, chains, { train, rank: 3, loraAlpha: 6 });
      if (v.adapters) made.push(v.adapters);
      res.set(kind, v);
      assert.equal(v.kind, kind);
    }
    const base = res.get('base')!;
    assert.deepEqual([base.adapters, base.losses, base.trainOptions], [null, [], null]);

    const lora = res.get('lora')!;
    assert.ok(lora.adapters instanceof AdapterSet && !(lora.adapters instanceof MoteBundle));
    assert.equal(lora.adapters.L, 1);
    assert.equal(lora.losses.length, 2);
    assert.equal(lora.examples, 4);
    const cfg = model.config;
    for (let l = 0; l < cfg.numLayers; l++) {
      for (const m of LINEAR_MODULES) {
        const s: LoraStack = lora.adapters.stacks[l]![m]!;
        const [Hout, Hin] = linearShape(cfg, m);
        assert.deepEqual([s.A.shape, s.B.shape, [...s.ranks]], [[1, 3, Hin], [1, Hout, 3], [3]]);
        assert.deepEqual([...(await s.scale.readFloat())], [2]);
      }
    }
    assert.ok(nonzero((await lora.adapters.readExpert(0, 0, 'q_proj'))!.B), 'the LoRA was trained (B moved from 0)');

    for (const kind of ['mote', 'mote-no-shared', 'mote-no-skip'] as const) {
      const v = res.get(kind)!;
      assert.ok(v.adapters instanceof MoteBundle, kind);
      const b = v.adapters;
      assert.deepEqual(b.config.steps, ['analysis', 'guidance', 'answer']);
      assert.equal(b.L, 4);
      assert.equal(b.config.rank, 3);
      assert.equal(b.config.alpha, kind === 'mote-no-shared' ? 1 : 0.5);
      assert.equal(v.trainOptions!.pSkip, kind === 'mote-no-skip' ? 0 : 0.3, kind);
      assert.equal(v.losses.length, 2);
      for (const e of [0, 1, 2]) assert.ok(nonzero((await b.readExpert(e, 1, 'down_proj'))!.B), `${kind}: step expert ${e} trained`);
      const shared = (await b.readExpert(b.shared, 1, 'down_proj'))!.B;
      // α = 1 gives the shared expert weight 0 on every token: no gradient, it stays at B = 0.
      assert.equal(nonzero(shared), kind !== 'mote-no-shared', kind);
    }
    assert.equal(res.get('mote-no-shared')!.trainOptions!.promptRouting, 'random-step');

    await assert.rejects(
      trainVariant('moe' as never, model, tok, chains, { train }),
      /trainVariant: kind: expected one of base, lora, mote, mote-no-shared, mote-no-skip/,
    );
    await assert.rejects(
      trainVariant('mote', model, tok, chains, { train, alpha: 2 }),
      /trainVariant: alpha: expected a number in \[0, 1\]/,
    );
    await assert.rejects(trainVariant('mote', model, tok, chains, {} as never), /trainVariant: opts\.train: expected Trainer options/);
  } finally {
    for (const a of made) a.dispose();
    model.dispose();
  }
});
