// openChat / MoteChat: text in, text out on the bundled model with a MoTE bundle (random B, so
// every expert changes the output). ask() must equal the low-level path (promptIds → generate
// with the bundle's router → decode per step), stream() must give the same text piece by piece,
// and the step options, the abort signal, the errors and dispose must do what they say.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { backendFor, closeBackends, forEachBackend } from './helpers.js';
import { openChat, type AnswerChunk } from '../src/generate/chat.js';
import { ArgumentError } from '../src/errors.js';
import { loadModel } from '../src/model/load.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { DEFAULT_MODEL_DIR } from '../src/mote/default_model_dir.js';
import { addStepTokens, createMote } from '../src/mote/bundle.js';
import { saveMote } from '../src/mote/bundle_io.js';
import { moteConfig } from '../src/mote/steps.js';
import { promptIds, stepTokenIds } from '../src/mote/chains.js';
import { generate } from '../src/generate/generate.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-chat-'));
after(async () => {
  fs.rmSync(tmp, { recursive: true, force: true });
  await closeBackends();
});

const QUESTION = 'How do I make a simple soup?';

async function writeBundle(kind: 'cpu' | 'webgpu'): Promise<string> {
  const b = await backendFor(kind);
  if (typeof b === 'string') throw new Error(b);
  const dir = path.join(tmp, `bundle-${kind}`);
  if (fs.existsSync(dir)) return dir;
  const model = await loadModel(DEFAULT_MODEL_DIR, { backend: b });
  await addStepTokens(model, loadTokenizer(DEFAULT_MODEL_DIR), moteConfig());
  const bundle = createMote(model, { rank: 4 }, { seed: 5, init: 'random' });
  await saveMote(bundle, dir);
  bundle.dispose();
  model.dispose();
  return dir;
}

forEachBackend(
  'ask() equals the low-level generate path; stream() gives the same text piece by piece',
  async (backend) => {
    const mote = await writeBundle(backend.kind as 'cpu' | 'webgpu');
    const chat = await openChat({ mote, backend });
    try {
      const maxNewTokens = backend.kind === 'webgpu' ? 24 : 48;
      const a = await chat.ask(QUESTION, { maxNewTokens, firstStep: 'analysis' });
      assert.ok(a.tokens >= 1 && a.tokens <= maxNewTokens);
      assert.equal(a.steps[0]!.step, 'analysis');
      assert.equal(a.steps[0]!.expert, 'analysis + shared');

      // The same request by hand.
      const tok = chat.tokenizer;
      const tags = stepTokenIds(tok, chat.config);
      const [r] = await generate(
        chat.model,
        [
          {
            prompt: promptIds(tok, { prompt: QUESTION }),
            maxNewTokens,
            stop: tok.eosTokenId !== undefined ? [tok.eosTokenId] : [],
            stopAfterStep: 2,
            force: [{ step: 0, at: 0 }],
          },
        ],
        { router: chat.bundle!.tokenRouter(), stepTokens: new Map(tags.start.map((t, i) => [t, i])), stepTokenRouting: 'own' },
      );
      assert.equal(a.tokens, r!.tokens.length);
      assert.equal(a.stopReason, r!.stopReason);
      const byStep = new Map<number, number[]>();
      r!.tokens.forEach((t, j) => {
        if (tags.start.includes(t) || tags.end.includes(t) || t === tok.eosTokenId) return;
        byStep.set(r!.steps[j]!, [...(byStep.get(r!.steps[j]!) ?? []), t]);
      });
      for (const s of a.steps) {
        const k = s.step === null ? -1 : chat.config.steps.indexOf(s.step);
        assert.equal(s.text, tok.decode(byStep.get(k) ?? [], { skipSpecialTokens: true }).trim(), `step ${s.step}`);
      }

      const chunks: AnswerChunk[] = [];
      const it = chat.stream(QUESTION, { maxNewTokens, firstStep: 'analysis' });
      let res = await it.next();
      while (!res.done) {
        chunks.push(res.value);
        res = await it.next();
      }
      assert.deepEqual(res.value, a, 'stream returns the same answer as ask');
      const joined = new Map<string, string>();
      for (const c of chunks) {
        const key = String(c.step);
        assert.equal(c.start, !joined.has(key), 'start marks the first piece of a step');
        joined.set(key, (joined.get(key) ?? '') + c.text);
      }
      for (const s of a.steps) assert.equal((joined.get(String(s.step)) ?? '').trim(), s.text);
    } finally {
      chat.dispose();
    }
  },
  { kinds: ['cpu', 'webgpu'] },
);

test('MoteChat: step options, chat messages, abort, errors naming the argument, dispose [cpu]', async (t) => {
  const b = await backendFor('cpu');
  if (typeof b === 'string') return t.skip(`cpu unavailable: ${b}`);
  const mote = await writeBundle('cpu');
  // The chat opens (and so owns) its backend here.
  const chat = await openChat({ mote, backend: 'cpu' });
  try {
    assert.deepEqual(chat.steps, ['analysis', 'guidance', 'answer']);
    const forced = await chat.ask(QUESTION, { maxNewTokens: 16, firstStep: 'answer' });
    assert.equal(forced.steps[0]!.step, 'answer');
    assert.equal(forced.text, forced.steps[0]!.text, 'text is the answer step');
    const skipped = await chat.ask(QUESTION, { maxNewTokens: 40, firstStep: 'analysis', skip: ['guidance'] });
    assert.ok(!skipped.steps.some((s) => s.step === 'guidance'));
    const short = await chat.ask(QUESTION, { maxNewTokens: 64, firstStep: 'analysis', stopAfter: 'analysis' });
    assert.ok(short.steps.every((s) => s.step === 'analysis'));
    assert.ok(short.stopReason === 'step' || short.stopReason === 'length' || short.stopReason === 'stop');
    const multi = await chat.ask(
      [
        { role: 'user', content: 'hello' },
        { role: 'assistant', content: 'hi' },
        { role: 'user', content: QUESTION },
      ],
      { maxNewTokens: 8 },
    );
    assert.ok(multi.tokens >= 1);

    const ac = new AbortController();
    ac.abort();
    const stopped = await chat.ask(QUESTION, { maxNewTokens: 64, signal: ac.signal });
    assert.equal(stopped.stopReason, 'aborted');
    assert.equal(stopped.tokens, 0);
    // Breaking out of a stream stops generating (the next ask still works).
    for await (const _c of chat.stream(QUESTION, { maxNewTokens: 64, firstStep: 'analysis' })) break;
    assert.ok((await chat.ask(QUESTION, { maxNewTokens: 4 })).tokens >= 1);

    const bad: [unknown, unknown, RegExp][] = [
      ['', {}, /question: empty/],
      [42, {}, /question: expected a string/],
      [[{ role: 'user' }], {}, /question\[0\]/],
      [[{ role: 'assistant', content: 'x' }], {}, /last message must be the user's/],
      [QUESTION, { maxNewTokens: 0 }, /maxNewTokens/],
      [QUESTION, { maxNewTokens: 1.5 }, /maxNewTokens/],
      [QUESTION, { firstStep: 'check' }, /firstStep: unknown step "check"/],
      [QUESTION, { skip: 'guidance' }, /skip: expected a list/],
      [QUESTION, { stopAfter: 'x' }, /stopAfter/],
      [QUESTION, { signal: {} }, /signal/],
      [QUESTION, null, /opts/],
      [QUESTION, { sampling: { temperature: -1 } }, /temperature/],
    ];
    for (const [q, o, re] of bad)
      await assert.rejects(
        chat.ask(q as string, o as never),
        (e: Error) => e instanceof ArgumentError && re.test(e.message),
        `${JSON.stringify(q)} ${JSON.stringify(o)}`,
      );
  } finally {
    chat.dispose();
  }
  assert.equal(chat.disposed, true);
  await assert.rejects(chat.ask(QUESTION), /used after dispose/);
  chat.dispose(); // twice is fine
  {
    using c2 = await openChat({ backend: 'cpu' }); // the bundled model alone, freed by `using`
    assert.equal(c2.bundle, null);
    const a = await c2.ask(QUESTION, { maxNewTokens: 4 });
    assert.ok(a.steps.every((s) => s.expert === 'base'));
  }
  await assert.rejects(openChat({ model: tmp }), /model: .* is not a model folder/);
  await assert.rejects(openChat({ mote: tmp, backend: 'cpu' }), /openChat: mote: .* is not a MoTE bundle \(no mote\.json\)/);
  await assert.rejects(openChat({ backend: 42 as never }), /backend/);
  await assert.rejects(openChat(null as never), /opts/);
});
