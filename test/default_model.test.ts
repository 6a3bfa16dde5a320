// The bundled default model (src/mote/default_model.ts, assets/default-model written by
// scripts/pretrain-default-model.mjs): it is where DEFAULT_MODEL_DIR says, ≤ 8 MB, its
// config is the default shape over the tokenizer's vocabulary, its tokenizer is exactly what
// toyTokenizer() builds (step tags single special tokens, chat template = toyPrompt), the
// tokenizer round-trips the toy texts and the corpus, and greedy decoding of held-out benign
// questions (never in the corpus) writes in-vocabulary words ending with </s>. Also: the
// corpus (deterministic, balanced, no step tags, risky questions answered helpfully, held-out
// questions left out), a few steps of pretraining (deterministic, loss going down), and the
// errors of the helpers.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DEFAULT_MODEL_DIR,
  DEFAULT_MODEL_SHAPE,
  TOY_CHAT_TEMPLATE,
  corpusExamples,
  defaultModelConfig,
  loadDefaultModel,
  pretrainDefaultModel,
  toyAnswerLoss,
  toyCorpus,
  toyPlainAnswer,
  toyPrompt,
  toyTokenizer,
} from '../src/mote/default_model.js';
import { parseHFConfig } from '../src/model/config.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { stepTokenIds } from '../src/mote/chains.js';
import { STEPS, STEP_END_TOKENS, STEP_TOKENS, specialTokens } from '../src/mote/steps.js';
import { isRefusal, toyChain, toyQuestions, toyWords, toyWordsOf } from '../src/mote/toy.js';
import { generate } from '../src/generate/generate.js';
import { ArgumentError, FormatError } from '../src/errors.js';
import { backendFor, closeBackends, forEachBackend } from './helpers.js';

after(closeBackends);

// This file is dist/test/default_model.test.js: the package root is two levels up.
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const MAX_BYTES = 8 * 1024 * 1024;

test('default model: the bundled folder is where DEFAULT_MODEL_DIR says, complete and ≤ 8 MB', () => {
  assert.equal(DEFAULT_MODEL_DIR, path.join(ROOT, 'assets', 'default-model'));
  assert.ok(
    fs.existsSync(path.join(DEFAULT_MODEL_DIR, 'config.json')),
    `${DEFAULT_MODEL_DIR}: missing; run node scripts/pretrain-default-model.mjs`,
  );
  const files = fs.readdirSync(DEFAULT_MODEL_DIR);
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) assert.ok(files.includes(f), `no ${f}`);
  let bytes = 0;
  for (const f of files) bytes += fs.statSync(path.join(DEFAULT_MODEL_DIR, f)).size;
  assert.ok(bytes <= MAX_BYTES, `${bytes} bytes > 8 MB`);
  // The package ships it.
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { files: string[] };
  assert.ok(pkg.files.includes('assets'), 'package.json files does not list assets');
});

test('default model: config and tokenizer', () => {
  const tok = loadTokenizer(DEFAULT_MODEL_DIR);
  // The bundled tokenizer is exactly the one the code builds.
  assert.deepEqual(tok.toJson(), toyTokenizer().toJson());
  const cfg = parseHFConfig(fs.readFileSync(path.join(DEFAULT_MODEL_DIR, 'config.json'), 'utf8'));
  assert.deepEqual(cfg, defaultModelConfig(tok.vocabSize));
  assert.equal(cfg.family, 'llama');
  assert.equal(cfg.hiddenSize, DEFAULT_MODEL_SHAPE.hiddenSize);
  assert.equal(cfg.numLayers, DEFAULT_MODEL_SHAPE.numLayers);
  assert.equal(cfg.tieWordEmbeddings, true);
  assert.equal(cfg.torchDtype, 'f32');
  assert.equal(cfg.bosTokenId, tok.bosTokenId);
  assert.deepEqual(cfg.eosTokenIds, [tok.eosTokenId]);
  assert.deepEqual(
    [0, 1, 2, 3].map((i) => tok.idToToken(i)),
    ['<pad>', '<s>', '</s>', '<unk>'],
  );
  // Every step tag of all four steps is a single special token: MoTE needs no resize.
  const ids = stepTokenIds(tok, { steps: [...STEPS] });
  assert.deepEqual(
    ids.start.map((i) => tok.idToToken(i)),
    STEPS.map((s) => STEP_TOKENS[s]),
  );
  assert.deepEqual(
    ids.end.map((i) => tok.idToToken(i)),
    STEPS.map((s) => STEP_END_TOKENS[s]),
  );
  assert.deepEqual(tok.encode(specialTokens({ steps: [...STEPS] }).join(''), { addSpecialTokens: false }), [4, 5, 6, 7, 8, 9, 10, 11]);
  // Every toy word is a word of the vocabulary.
  for (const w of toyWords()) assert.notEqual(tok.tokenToId(w), undefined, w);
  // Chat template.
  assert.equal(tok.chatTemplate, TOY_CHAT_TEMPLATE);
  assert.equal(
    tok.applyChatTemplate([{ role: 'user', content: 'How do I cook rice?' }], { addGenerationPrompt: true }),
    toyPrompt('How do I cook rice?'),
  );
  assert.equal(
    tok.applyChatTemplate(
      [
        { role: 'user', content: 'Hi?' },
        { role: 'assistant', content: 'Yes.' },
        { role: 'user', content: 'And?' },
      ],
      { addGenerationPrompt: true },
    ),
    '<s>Question: Hi?\nAnswer: Yes.</s>Question: And?\nAnswer:',
  );
  assert.deepEqual(tok.encode('How do I cook rice?').slice(0, 1), [1]); // <s> added
});

test('toy tokenizer: round trips the toy texts and the corpus', () => {
  const tok = toyTokenizer();
  const unk = tok.tokenToId('<unk>');
  for (const q of toyQuestions(60, 7)) {
    for (const s of [q.question, ...toyChain(q).steps.map((x) => x.text), toyPlainAnswer(q)]) {
      const ids = tok.encode(s, { addSpecialTokens: false });
      assert.ok(!ids.includes(unk!), s);
      assert.equal(tok.decode(ids), s);
      assert.equal(tok.decode(tok.encode(s), { skipSpecialTokens: true }), s);
    }
  }
  // Corpus texts hold <s>, </s> and a newline: equal up to the spaces around special tokens.
  const norm = (s: string) => s.replace(/\s*(<\/?s>)\s*/g, '$1').replace(/\s+/g, ' ');
  const corpus = toyCorpus(0);
  for (const [i, t] of corpus.texts.entries()) {
    const ids = tok.encode(t, { addSpecialTokens: false });
    if (i % 7 === 0) assert.equal(norm(tok.decode(ids)), norm(t));
    assert.ok(!ids.includes(unk!), t);
  }
  // Words outside the vocabulary are <unk>; punctuation splits off.
  assert.deepEqual(
    tok.encode('zebra, rice:', { addSpecialTokens: false }).map((i) => tok.idToToken(i)),
    ['<unk>', ',', 'rice', ':'],
  );
});

test('toyCorpus: deterministic, balanced, no step tags, risky questions answered helpfully, held-out left out', () => {
  const a = toyCorpus(0);
  assert.deepEqual(toyCorpus(0), a);
  assert.notDeepEqual(toyCorpus(1).texts, a.texts);
  assert.deepEqual([...toyCorpus(1).texts].sort(), [...a.texts].sort()); // the seed orders, the content is fixed
  assert.ok(a.texts.every((t) => t.startsWith('<s>') && t.endsWith('</s>') && !t.includes('<|')));
  const qa = a.texts.filter((t) => t.startsWith('<s>Question: '));
  assert.equal(qa.length, a.qaCount);
  const risky = qa.filter((t) => /my \w+'s/.test(t));
  assert.ok(Math.abs(risky.length / qa.length - 0.5) < 0.1, `${risky.length} risky of ${qa.length}`);
  // The base is unaligned: no question is answered with a refusal.
  for (const t of qa) assert.ok(!isRefusal(t.slice(t.indexOf('\nAnswer:'))), t);
  // Held-out questions are not in the corpus.
  const asked = new Set(qa.map((t) => t.slice('<s>Question: '.length, t.indexOf('\nAnswer:'))));
  assert.ok(a.heldOut.length > 0 && a.heldOut.some((q) => !q.risky));
  for (const q of a.heldOut) assert.ok(!asked.has(q.question), q.question);
  const q = toyQuestions(40, 2).find((x) => x.risky && x.topic.startsWith('read my '))!;
  assert.match(toyPlainAnswer(q), new RegExp(`^Read the .+ when your ${q.owner} is not looking\\.$`));
});

forEachBackend('default model: loads and answers a held-out benign question in vocabulary', async (be) => {
  const { model, tokenizer } = await loadDefaultModel({ backend: be });
  try {
    const vocab = new Set([...toyWords(), 'Question', 'Answer', 'looking']);
    const eos = tokenizer.eosTokenId!;
    const heldOut = toyCorpus(0)
      .heldOut.filter((q) => !q.risky)
      .slice(0, 2);
    const res = await generate(
      model,
      heldOut.map((q) => ({ prompt: tokenizer.encode(toyPrompt(q.question), { addSpecialTokens: false }), maxNewTokens: 40, stop: [eos] })),
    );
    for (const [i, r] of res.entries()) {
      assert.equal(r.stopReason, 'stop', `no </s> after ${r.tokens.length} tokens`);
      assert.equal(r.tokens.at(-1), eos);
      assert.ok(
        r.tokens.slice(0, -1).every((t) => t >= 12),
        `a special token in ${r.tokens}`,
      );
      const text = tokenizer.decode(r.tokens, { skipSpecialTokens: true });
      const words = toyWordsOf(text);
      assert.ok(words.length >= 3, text);
      for (const w of words) assert.ok(vocab.has(w), `${w} in ${JSON.stringify(text)}`);
      assert.equal(text, toyPlainAnswer(heldOut[i]!), heldOut[i]!.question);
    }
    assert.ok((await toyAnswerLoss(model, tokenizer, heldOut)) < 0.5);
  } finally {
    model.dispose();
  }
});

test('pretrainDefaultModel: a few steps, deterministic, loss going down', async () => {
  const be = await backendFor('cpu');
  if (typeof be === 'string') return;
  const run = async () => {
    const r = await pretrainDefaultModel({ backend: be, steps: 4, seed: 5, lr: 3e-3 });
    try {
      assert.deepEqual(r.model.config, defaultModelConfig(r.tokenizer.vocabSize));
      return r.losses;
    } finally {
      r.model.dispose();
    }
  };
  const a = await run();
  assert.equal(a.length, 4);
  assert.ok(a[0]! > Math.log(400) && a[3]! < a[0]!, `losses ${a}`);
  assert.deepEqual(await run(), a);
});

test('default model helpers: errors name the argument', async () => {
  const arg = (re: RegExp) => (e: unknown) => e instanceof ArgumentError && re.test((e as Error).message);
  assert.throws(() => toyPrompt(5 as never), arg(/toyPrompt: question/));
  assert.throws(() => toyCorpus(-1), arg(/toyCorpus: seed/));
  assert.throws(() => defaultModelConfig(1), arg(/vocabSize/));
  assert.throws(() => corpusExamples(toyTokenizer(), [3 as never]), arg(/texts\[0\]/));
  assert.throws(() => toyPlainAnswer({ question: 'x', risky: false, domain: 'cooking', topic: 'fly', owner: null }), arg(/q\.topic/));
  await assert.rejects(pretrainDefaultModel(null as never), arg(/opts/));
  const be = await backendFor('cpu');
  if (typeof be !== 'string') {
    await assert.rejects(pretrainDefaultModel({ backend: be, steps: 0 }), arg(/steps/));
    await assert.rejects(
      loadDefaultModel({ backend: be, dir: path.join(ROOT, 'no-such-model') }),
      (e: unknown) => e instanceof FormatError && /pretrain-default-model/.test((e as Error).message),
    );
  }
});
