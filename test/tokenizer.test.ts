import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Tokenizer } from '@huggingface/tokenizers';
import { VETTED_TOKENIZER_PATTERNS } from '../src/io/regex.js';
import { ArgumentError, FormatError } from '../src/errors.js';
import { loadTokenizer, saveTokenizer, MoteTokenizer, CHAT_TEMPLATE_FILE } from '../src/io/tokenizer.js';
import { moteConfig, specialTokens, STEPS } from '../src/mote/steps.js';
import {
  writeTinyTokenizer,
  tinyTokenizerJson,
  tinyTokenizerConfig,
  TINY_VOCAB_SIZE,
  TINY_CHAT_TEMPLATE,
} from './fixtures/tiny_tokenizer.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-tokenizer-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let n = 0;
const fresh = (opts: { chatTemplate?: string | null } = {}) => writeTinyTokenizer(path.join(root, `tok-${n++}`), opts);

const STEP_TOKENS = specialTokens(moteConfig({ steps: [...STEPS] }));

test('loads the fixture: vocab size, bos/eos, token ↔ id', () => {
  const tok = loadTokenizer(fresh());
  assert.equal(tok.vocabSize, TINY_VOCAB_SIZE);
  assert.equal(tok.bosTokenId, 1);
  assert.equal(tok.eosTokenId, 2);
  assert.equal(tok.bosToken, '<s>');
  assert.equal(tok.eosToken, '</s>');
  assert.equal(tok.tokenToId('▁hello'), tok.encode('hello', { addSpecialTokens: false })[0]);
  assert.equal(tok.idToToken(tok.tokenToId('▁world')!), '▁world');
  assert.equal(tok.tokenToId('<|analysis|>'), undefined);
});

test('encode / decode round trip', () => {
  const tok = loadTokenizer(fresh());
  const ids = tok.encode('hello world, the world!');
  assert.equal(ids[0], tok.bosTokenId);
  assert.deepEqual(
    ids.map((i) => tok.idToToken(i)),
    ['<s>', '▁hello', '▁world', ',', '▁the', '▁world', '!'],
  );
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), 'hello world, the world!');
  assert.equal(tok.decode(ids), '<s> hello world, the world!');
  const plain = tok.encode('hello world', { addSpecialTokens: false });
  assert.deepEqual(plain, ids.slice(1, 3));
  assert.equal(tok.decode(plain), 'hello world');
  assert.equal(tok.decode([]), '');
  assert.deepEqual(tok.encode('', { addSpecialTokens: false }), []);
  // Characters outside the vocabulary become <unk>.
  assert.deepEqual(
    tok.encode('Z', { addSpecialTokens: false }).map((i) => tok.idToToken(i)),
    ['▁', '<unk>'],
  );
  assert.throws(() => tok.decode([TINY_VOCAB_SIZE]), ArgumentError);
  assert.throws(() => tok.decode([-1]), ArgumentError);
  assert.throws(() => tok.decode([1.5]), ArgumentError);
});

test('the MoTE step tokens become single special tokens after the old vocabulary', () => {
  const tok = loadTokenizer(fresh());
  const old = tok.vocabSize;
  // Before: a step token is split into pieces (mostly <unk>).
  assert.ok(tok.encode(STEP_TOKENS[0]!, { addSpecialTokens: false }).length > 1);

  const ids = tok.addSpecialTokens(STEP_TOKENS);
  assert.equal(ids.length, STEP_TOKENS.length);
  assert.deepEqual(
    ids,
    STEP_TOKENS.map((_, i) => old + i),
  );
  assert.equal(tok.vocabSize, old + STEP_TOKENS.length);
  for (const [i, t] of STEP_TOKENS.entries()) {
    assert.deepEqual(tok.encode(t, { addSpecialTokens: false }), [ids[i]], t);
    assert.equal(tok.tokenToId(t), ids[i]);
    assert.equal(tok.idToToken(ids[i]!), t);
    assert.ok(ids[i]! >= old);
  }

  // Text mixing step tokens and words round-trips.
  const text = '<|analysis|>hello world<|end_analysis|><|guidance|> the world.<|end_guidance|><|response|>hello<|end_response|>';
  const enc = tok.encode(text, { addSpecialTokens: false });
  assert.equal(enc.filter((i) => i >= old).length, 6);
  assert.equal(enc[0], tok.tokenToId('<|analysis|>'));
  assert.equal(tok.decode(enc), text);
  assert.equal(tok.decode(tok.encode(text)), '<s>' + text);
  assert.equal(tok.decode(enc, { skipSpecialTokens: true }), 'hello world the world.hello');

  // Adding again changes nothing; an existing token keeps its id.
  assert.deepEqual(tok.addSpecialTokens(STEP_TOKENS), ids);
  assert.deepEqual(tok.addSpecialTokens(['</s>']), [2]);
  assert.equal(tok.vocabSize, old + STEP_TOKENS.length);
  // A token already in the model vocabulary keeps its id and stops being split.
  assert.deepEqual(tok.addSpecialTokens(['▁world']), [tok.tokenToId('▁world')]);
  assert.equal(tok.vocabSize, old + STEP_TOKENS.length);

  assert.throws(() => tok.addSpecialTokens(['']), ArgumentError);
  assert.throws(() => tok.addSpecialTokens([3 as unknown as string]), ArgumentError);
});

test('added step tokens survive save → load', () => {
  const tok = loadTokenizer(fresh());
  const ids = tok.addSpecialTokens(STEP_TOKENS);
  const out = path.join(root, 'saved', 'nested');
  saveTokenizer(tok, out);
  assert.deepEqual(fs.readdirSync(out).sort(), ['tokenizer.json', 'tokenizer_config.json']);
  const back = loadTokenizer(out);
  assert.equal(back.vocabSize, tok.vocabSize);
  for (const [i, t] of STEP_TOKENS.entries()) assert.deepEqual(back.encode(t, { addSpecialTokens: false }), [ids[i]]);
  const text = '<|check|>the hello<|end_check|>';
  assert.deepEqual(back.encode(text), tok.encode(text));
  assert.equal(back.decode(back.encode(text, { addSpecialTokens: false })), text);
  // transformers' view of the added tokens is kept in step.
  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'tokenizer_config.json'), 'utf8'));
  assert.deepEqual(cfg.additional_special_tokens, STEP_TOKENS);
  assert.equal(cfg.added_tokens_decoder[String(ids[0])].content, STEP_TOKENS[0]);
  assert.equal(cfg.added_tokens_decoder[String(ids[0])].special, true);
  const json = JSON.parse(fs.readFileSync(path.join(out, 'tokenizer.json'), 'utf8'));
  assert.equal(json.added_tokens.length, 3 + STEP_TOKENS.length);
  // The model's vocab is untouched (added tokens live in added_tokens only), as HF writes it.
  assert.equal(Object.keys(json.model.vocab).length, TINY_VOCAB_SIZE);
  // Saving over an existing tokenizer replaces it and leaves no temporary files.
  saveTokenizer(back, out);
  assert.deepEqual(fs.readdirSync(out).sort(), ['tokenizer.json', 'tokenizer_config.json']);
});

test('chat template: two turns, and with the generation prompt', () => {
  const tok = loadTokenizer(fresh());
  const messages = [
    { role: 'user', content: 'hello world?' },
    { role: 'assistant', content: 'the world.' },
  ];
  assert.equal(tok.applyChatTemplate(messages), '<s><|user|>\nhello world?</s>\n<|assistant|>\nthe world.</s>\n');
  assert.equal(
    tok.applyChatTemplate(messages.slice(0, 1), { addGenerationPrompt: true }),
    '<s><|user|>\nhello world?</s>\n<|assistant|>\n',
  );
  assert.equal(tok.chatTemplate, TINY_CHAT_TEMPLATE);
  // Template variables beyond the defaults.
  const custom = new MoteTokenizer(tinyTokenizerJson(), tinyTokenizerConfig({ chatTemplate: '{{ greeting }}{{ messages | length }}' }));
  assert.equal(custom.applyChatTemplate(messages, { variables: { greeting: 'hi ' } }), 'hi 2');
  // raise_exception in a template is an ArgumentError.
  const strict = new MoteTokenizer(
    tinyTokenizerJson(),
    tinyTokenizerConfig({ chatTemplate: "{{ raise_exception('roles must alternate') }}" }),
  );
  assert.throws(
    () => strict.applyChatTemplate(messages),
    (e: unknown) => e instanceof ArgumentError && /roles must alternate/.test(e.message),
  );
  assert.throws(() => tok.applyChatTemplate([{ role: 'user' }] as never), ArgumentError);
  // Any other failure is the template's own (a method the engine lacks): a FormatError naming it.
  const broken = new MoteTokenizer(tinyTokenizerJson(), tinyTokenizerConfig({ chatTemplate: "{{ 'a'.center(5) }}" }), {
    source: '/models/odd',
  });
  assert.throws(
    () => broken.applyChatTemplate(messages),
    (e: unknown) => e instanceof FormatError && /the chat template failed/.test(e.message) && /\/models\/odd/.test(e.message),
  );
});

test('chat template from chat_template.jinja', () => {
  const dir = fresh({ chatTemplate: null });
  fs.writeFileSync(path.join(dir, CHAT_TEMPLATE_FILE), '{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}');
  const tok = loadTokenizer(dir);
  assert.equal(tok.applyChatTemplate([{ role: 'user', content: 'hi' }]), '[user]hi');
  const out = path.join(root, 'saved-jinja');
  tok.save(out);
  assert.equal(loadTokenizer(out).applyChatTemplate([{ role: 'user', content: 'hi' }]), '[user]hi');
});

test('errors name the file: missing tokenizer.json, malformed JSON, no chat template', () => {
  const empty = path.join(root, 'empty');
  fs.mkdirSync(empty);
  assert.throws(
    () => loadTokenizer(empty),
    (e: unknown) =>
      e instanceof FormatError && e.message.includes(path.join(empty, 'tokenizer.json')) && /without a tokenizer/.test(e.message),
  );

  const bad = fresh();
  fs.writeFileSync(path.join(bad, 'tokenizer.json'), '{ "model": ');
  assert.throws(
    () => loadTokenizer(bad),
    (e: unknown) => e instanceof FormatError && e.message.includes(path.join(bad, 'tokenizer.json')) && /malformed JSON/.test(e.message),
  );

  const badCfg = fresh();
  fs.writeFileSync(path.join(badCfg, 'tokenizer_config.json'), 'not json');
  assert.throws(
    () => loadTokenizer(badCfg),
    (e: unknown) => e instanceof FormatError && e.message.includes(path.join(badCfg, 'tokenizer_config.json')),
  );

  const noModel = fresh();
  fs.writeFileSync(path.join(noModel, 'tokenizer.json'), JSON.stringify({ added_tokens: [] }));
  assert.throws(
    () => loadTokenizer(noModel),
    (e: unknown) => e instanceof FormatError && /model/.test(e.message),
  );

  const unknownModel = fresh();
  fs.writeFileSync(path.join(unknownModel, 'tokenizer.json'), JSON.stringify({ ...tinyTokenizerJson(), model: { type: 'Nonsense' } }));
  assert.throws(
    () => loadTokenizer(unknownModel),
    (e: unknown) => e instanceof FormatError && e.message.includes('tokenizer.json'),
  );

  const noTemplate = loadTokenizer(fresh({ chatTemplate: null }));
  assert.equal(noTemplate.chatTemplate, null);
  assert.throws(
    () => noTemplate.applyChatTemplate([{ role: 'user', content: 'hi' }]),
    (e: unknown) => e instanceof FormatError && /no chat_template/.test(e.message) && e.message.includes('tokenizer_config.json'),
  );

  const badTemplate = new MoteTokenizer(tinyTokenizerJson(), tinyTokenizerConfig({ chatTemplate: '{% for %}' }));
  assert.throws(() => badTemplate.applyChatTemplate([]), FormatError);

  // tokenizer_config.json is optional: no bos/eos then.
  const noCfg = fresh();
  fs.rmSync(path.join(noCfg, 'tokenizer_config.json'));
  const t = loadTokenizer(noCfg);
  assert.equal(t.bosTokenId, undefined);
  assert.equal(t.decode(t.encode('hello', { addSpecialTokens: false })), 'hello');
});

test('ids must fit the entries present: a vocab or added-token id of 2,000,000 is a FormatError naming the token', () => {
  const json = tinyTokenizerJson();
  (json.model as { vocab: Record<string, number> }).vocab['▁hello'] = 2_000_000;
  assert.throws(
    () => new MoteTokenizer(json, tinyTokenizerConfig(), { source: 'm' }),
    (e: unknown) =>
      e instanceof FormatError &&
      e.message.includes(path.join('m', 'tokenizer.json')) &&
      e.message.includes('model.vocab["▁hello"]') &&
      /2000000/.test(e.message),
  );
  const added = tinyTokenizerJson();
  (added.added_tokens as { id: number }[]).push({ id: 2_000_000, content: '<big>', special: true } as never);
  assert.throws(
    () => new MoteTokenizer(added, tinyTokenizerConfig()),
    (e: unknown) => e instanceof FormatError && /added_tokens\[3\]/.test(e.message) && /<big>/.test(e.message),
  );
  // a few holes are allowed
  const holes = tinyTokenizerJson();
  (holes.added_tokens as unknown[]).push({
    id: TINY_VOCAB_SIZE + 100,
    content: '<later>',
    special: true,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
  });
  assert.equal(new MoteTokenizer(holes, tinyTokenizerConfig()).vocabSize, TINY_VOCAB_SIZE + 101);
});

test('a folder or FIFO in place of tokenizer files is a FormatError', () => {
  for (const name of ['tokenizer.json', 'tokenizer_config.json']) {
    const dir = fresh();
    fs.rmSync(path.join(dir, name));
    fs.mkdirSync(path.join(dir, name));
    assert.throws(
      () => loadTokenizer(dir),
      (e: unknown) => e instanceof FormatError && e.message.includes(path.join(dir, name)) && /is a folder/.test(e.message),
    );
  }
  const dir = fresh();
  fs.rmSync(path.join(dir, 'tokenizer.json'));
  const r = spawnSync('mkfifo', [path.join(dir, 'tokenizer.json')]);
  if (r.status === 0)
    assert.throws(
      () => loadTokenizer(dir),
      (e: unknown) => e instanceof FormatError && /not a regular file/.test(e.message),
    );
});

const LLAMA3_SPLIT = VETTED_TOKENIZER_PATTERNS[0]!;
const QWEN2_SPLIT = VETTED_TOKENIZER_PATTERNS[1]!;
const GPT2_SPLIT = VETTED_TOKENIZER_PATTERNS[2]!;

function withSplit(pattern: string): Record<string, unknown> {
  const json = tinyTokenizerJson();
  json.pre_tokenizer = {
    type: 'Sequence',
    pretokenizers: [{ type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false }, json.pre_tokenizer],
  };
  return json;
}

test('real GPT-2 / Llama-3 / Qwen2 split patterns load and encode as the library does', () => {
  const text = "hello world, the world's 12345 hello!\n\n  the   world\r\n";
  for (const p of [LLAMA3_SPLIT, QWEN2_SPLIT, GPT2_SPLIT]) {
    const json = withSplit(p);
    const ours = new MoteTokenizer(json, tinyTokenizerConfig());
    const lib = new Tokenizer(structuredClone(json) as never, tinyTokenizerConfig() as never);
    assert.deepEqual(ours.encode(text), [...lib.encode(text, { add_special_tokens: true }).ids], p);
  }
});

test('hostile tokenizer.json regexes are refused with a FormatError naming file and field; safe ones run fast', () => {
  for (const evil of ['(a+)+$', '(a|a)*b', '(\\w+\\s?)*$', '\\s+(?!\\S)(x+)*', '(a)\\1']) {
    assert.throws(
      () => new MoteTokenizer(withSplit(evil), tinyTokenizerConfig(), { source: 'm' }),
      (e: unknown) =>
        e instanceof FormatError &&
        e.message.includes(path.join('m', 'tokenizer.json')) &&
        e.message.includes('pre_tokenizer.pretokenizers[0].pattern.Regex') &&
        /refused/.test(e.message),
      evil,
    );
    const json = tinyTokenizerJson();
    json.normalizer = { type: 'Sequence', normalizers: [{ type: 'Replace', pattern: { Regex: evil }, content: 'x' }] };
    assert.throws(
      () => new MoteTokenizer(json, tinyTokenizerConfig()),
      (e: unknown) => e instanceof FormatError && /normalizer\.normalizers\[0\]\.pattern\.Regex/.test(e.message),
      evil,
    );
  }
  // accepted non-vetted patterns have no nested repetition: 50 kB encodes quickly
  const tok = new MoteTokenizer(withSplit('\\w+|[^\\w\\s]+|\\s+'), tinyTokenizerConfig());
  const t0 = Date.now();
  tok.encode('hello world '.repeat(4200) + 'a'.repeat(10_000));
  assert.ok(Date.now() - t0 < 2000, `${Date.now() - t0} ms`);
});

test('an unknown-token entry missing from the vocabulary is a FormatError at load, not undefined ids from encode', () => {
  const bpe = tinyTokenizerJson();
  (bpe.model as Record<string, unknown>).unk_token = '<nope>';
  assert.throws(
    () => new MoteTokenizer(bpe, tinyTokenizerConfig()),
    (e: Error) => e instanceof FormatError && /model\.unk_token "<nope>" is not in the vocabulary/.test(e.message),
  );
  const unigram = (unkId: unknown) => ({
    version: '1.0',
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: null,
    model: {
      type: 'Unigram',
      unk_id: unkId,
      vocab: [
        ['<unk>', 0],
        ['a', -1],
        ['b', -2],
      ],
      byte_fallback: false,
    },
  });
  for (const bad of [5, -1, 1.5, '0'])
    assert.throws(
      () => new MoteTokenizer(unigram(bad), {}),
      (e: Error) => e instanceof FormatError && /model\.unk_id/.test(e.message),
      String(bad),
    );
  assert.deepEqual(new MoteTokenizer(unigram(0), {}).encode('abz'), [1, 2, 0]);
});
