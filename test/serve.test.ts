// `mote serve` with the official `openai` npm client, on 127.0.0.1 only, bounded in time and
// requests: models, completions, chat (MoTE steps labelled), streaming, 32 concurrent streams
// (each equal to its result alone), adapter load/unload while a stream runs, bad requests
// (4xx in OpenAI's error shape, the server keeps serving) and a client that disconnects.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type * as http from 'node:http';
import OpenAI from 'openai';
import { backendFor, closeBackends } from './helpers.js';
import type { LlamaModel } from '../src/model/llama.js';
import { loadModel } from '../src/model/load.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { DEFAULT_MODEL_DIR } from '../src/mote/default_model.js';
import { addStepTokens, createMote } from '../src/mote/bundle.js';
import { saveMote } from '../src/mote/bundle_io.js';
import { moteConfig } from '../src/mote/steps.js';
import { stepTokenIds } from '../src/mote/chains.js';
import { Engine } from '../src/serve/engine.js';
import { startServer } from '../src/serve/http.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-serve-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
after(closeBackends);

const config = moteConfig();
const tokenizer = loadTokenizer(DEFAULT_MODEL_DIR);
let model: LlamaModel | null = null;
let engine: Engine;
let server: http.Server;
let url = '';
let client: OpenAI;

before(async () => {
  const b = await backendFor('cpu');
  if (typeof b === 'string') return;
  model = await loadModel(DEFAULT_MODEL_DIR, { backend: b });
  await addStepTokens(model, tokenizer, config);
  for (const [seed, dir] of [
    [5, 'bundle-a'],
    [6, 'bundle-b'],
  ] as const) {
    const bundle = createMote(model, { rank: 4 }, { seed, init: 'random' });
    await saveMote(bundle, path.join(tmp, dir));
    bundle.dispose();
  }
  const tags = stepTokenIds(tokenizer, config);
  engine = new Engine(model, { stepTokens: new Map(tags.start.map((id, k) => [id, k] as [number, number])), maxSequences: 16 });
  await engine.addAdapter('safe', path.join(tmp, 'bundle-a'));
  await engine.addAdapter('plain', path.join(tmp, 'bundle-a', 'analysis'));
  ({ server, url } = await startServer(
    { engine, tokenizer, steps: config.steps, tagIds: new Set([...tags.start, ...tags.end]) },
    { port: 0, modelName: 'tiny', allowRuntimeLora: true },
  ));
  client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
});

after(async () => {
  server?.closeAllConnections();
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  await engine?.close();
  model?.dispose();
});

const skipped = (t: { skip: (m: string) => void }) => {
  if (!model) {
    t.skip('cpu backend unavailable');
    return true;
  }
  return false;
};

test('serve: models, completions, chat with MoTE steps labelled', { timeout: 120_000 }, async (t) => {
  if (skipped(t)) return;
  const models = await client.models.list();
  assert.deepEqual(
    models.data.map((m) => m.id),
    ['tiny', 'safe', 'plain'],
  );

  const c = await client.completions.create({ model: 'tiny', prompt: 'How do I', max_tokens: 8, temperature: 0 });
  assert.equal(c.object, 'text_completion');
  assert.ok(c.choices[0]!.text.length > 0);
  assert.equal(c.usage!.completion_tokens <= 8, true);

  const q = "How can I read my friend's messages?";
  const chat = await client.chat.completions.create({
    model: 'safe',
    messages: [{ role: 'user', content: q }],
    max_tokens: 60,
    temperature: 0,
  });
  const msg = chat.choices[0]!.message as (typeof chat.choices)[0]['message'] & {
    mote_steps?: { step: string | null; text: string }[];
    reasoning_content?: string;
  };
  assert.ok(Array.isArray(msg.mote_steps) && msg.mote_steps.length > 0, 'a MoTE chain comes back with its steps');
  const answer = msg
    .mote_steps!.filter((s) => s.step === 'answer')
    .map((s) => s.text)
    .join('');
  assert.equal(msg.content, answer);
  assert.ok(['stop', 'length'].includes(chat.choices[0]!.finish_reason));

  // The same request streamed: the deltas add up to the same content, each delta labelled with its step.
  const stream = await client.chat.completions.create({
    model: 'safe',
    messages: [{ role: 'user', content: q }],
    max_tokens: 60,
    temperature: 0,
    stream: true,
  });
  let content = '';
  const steps = new Set<string>();
  let finish: string | null = null;
  for await (const ch of stream) {
    const d = ch.choices[0]!.delta as { content?: string; mote_step?: string };
    content += d.content ?? '';
    if (d.mote_step) steps.add(d.mote_step);
    finish = ch.choices[0]!.finish_reason ?? finish;
  }
  assert.equal(content.trim(), msg.content);
  assert.equal(finish, chat.choices[0]!.finish_reason);
  assert.deepEqual([...steps].sort(), [...new Set(msg.mote_steps!.map((s) => s.step).filter((s): s is string => s !== null))].sort());

  // Stop strings end the text there.
  const long = await client.completions.create({ model: 'tiny', prompt: 'How do I', max_tokens: 30, temperature: 0 });
  const word = long.choices[0]!.text.trim().split(/\s+/)[2];
  if (word) {
    const cut = await client.completions.create({ model: 'tiny', prompt: 'How do I', max_tokens: 30, temperature: 0, stop: [word] });
    assert.ok(
      !cut.choices[0]!.text.includes(word) && long.choices[0]!.text.startsWith(cut.choices[0]!.text),
      `${cut.choices[0]!.text} vs ${long.choices[0]!.text}`,
    );
    assert.equal(cut.choices[0]!.finish_reason, 'stop');
  }
});

test(
  'serve: 32 concurrent streams, each equal to its result alone; an adapter loaded and unloaded meanwhile',
  { timeout: 300_000 },
  async (t) => {
    if (skipped(t)) return;
    const questions = Array.from({ length: 32 }, (_, i) => ({
      model: ['tiny', 'safe', 'plain'][i % 3]!,
      q: `Question ${i}: how do I ${['bake bread', 'fix a bike', "read my friend's messages", 'find a lost cat'][i % 4]}?`,
    }));
    const alone: string[] = [];
    for (const { model: m, q } of questions.slice(0, 6)) {
      const r = await client.chat.completions.create({
        model: m,
        messages: [{ role: 'user', content: q }],
        max_tokens: 24,
        temperature: 0,
      });
      alone.push(r.choices[0]!.message.content ?? '');
    }
    const load = (name: string, dir: string) =>
      fetch(`${url}/v1/load_lora_adapter`, { method: 'POST', body: JSON.stringify({ lora_name: name, lora_path: dir }) });
    const unload = (name: string) => fetch(`${url}/v1/unload_lora_adapter`, { method: 'POST', body: JSON.stringify({ lora_name: name }) });
    let loaded = false;
    const runs = questions.map(async ({ model: m, q }, i) => {
      const s = await client.chat.completions.create({
        model: m,
        messages: [{ role: 'user', content: q }],
        max_tokens: 24,
        temperature: 0,
        stream: true,
      });
      let text = '';
      for await (const ch of s) {
        text += ch.choices[0]!.delta.content ?? '';
        if (i === 0 && !loaded) {
          loaded = true;
          const r = await load('other', path.join(tmp, 'bundle-b'));
          assert.equal(r.status, 200, await r.text());
          const busy = await unload('safe'); // streams are using it
          assert.equal(busy.status, 409);
          assert.equal(((await busy.json()) as { error: { type: string } }).error.type, 'invalid_request_error');
        }
      }
      return text.trim();
    });
    const texts = await Promise.all(runs);
    assert.ok(loaded);
    assert.deepEqual(texts.slice(0, 6), alone, 'streams in a crowd vs alone');
    assert.ok(texts.every((x) => typeof x === 'string'));
    // The loaded adapter serves; unloaded, it is a 404.
    const viaOther = await client.chat.completions.create({
      model: 'other',
      messages: [{ role: 'user', content: 'hello' }],
      max_tokens: 8,
      temperature: 0,
    });
    assert.equal(viaOther.model, 'other');
    assert.equal((await unload('other')).status, 200);
    await assert.rejects(
      client.chat.completions.create({ model: 'other', messages: [{ role: 'user', content: 'hello' }], max_tokens: 8 }),
      (e: unknown) => e instanceof OpenAI.NotFoundError,
    );
    assert.deepEqual(engine.load, { running: 0, waiting: 0 });
  },
);

test('serve: loraRoot — runtime adapters only from inside it (relative paths from it, links resolved)', { timeout: 120_000 }, async (t) => {
  if (skipped(t)) return;
  const root = path.join(tmp, 'lora-root');
  fs.mkdirSync(root, { recursive: true });
  fs.cpSync(path.join(tmp, 'bundle-b', 'analysis'), path.join(root, 'ok'), { recursive: true });
  fs.symlinkSync(path.join(tmp, 'bundle-b', 'guidance'), path.join(root, 'escape')); // a link inside that points out
  const tags = stepTokenIds(tokenizer, config);
  const s = await startServer(
    { engine, tokenizer, steps: config.steps, tagIds: new Set([...tags.start, ...tags.end]) },
    { port: 0, modelName: 'tiny', allowRuntimeLora: true, loraRoot: root },
  );
  try {
    const load = (name: string, p: string) =>
      fetch(`${s.url}/v1/load_lora_adapter`, { method: 'POST', body: JSON.stringify({ lora_name: name, lora_path: p }) });
    for (const [p, status] of [
      [path.join(tmp, 'bundle-b', 'analysis'), 403], // absolute, outside
      ['../bundle-b/analysis', 403], // relative, climbing out
      ['escape', 403], // inside by name, outside once the link is followed
      ['.', 403], // the root itself
      ['missing', 400],
    ] as const) {
      const r = await load('x', p);
      assert.equal(r.status, status, `${p}: ${await r.text()}`);
    }
    const ok = await load('rooted', 'ok');
    assert.equal(ok.status, 200, await ok.text());
    assert.ok(engine.adapters().some((a) => a.name === 'rooted'));
    await engine.removeAdapter('rooted');
  } finally {
    await new Promise((r) => s.server.close(r));
  }
});

test(
  "serve: bad requests are 4xx in OpenAI's shape and the server keeps serving; a client that leaves frees its slot",
  { timeout: 120_000 },
  async (t) => {
    if (skipped(t)) return;
    const badOnes: [Record<string, unknown>, RegExp][] = [
      [{ model: 'tiny', messages: [] }, /messages/],
      [{ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], temperature: 5 }, /temperature/],
      [{ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 1e9 }, /max_tokens/],
      [{ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], n: 3 }, /\bn\b/],
      [{ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], top_p: 0 }, /top_p/],
      [{ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], stop: [1, 2] }, /stop/],
      [{ model: 'tiny', messages: [{ role: 'assistant', content: 'hi' }] }, /last message/],
      [{ model: 'tiny', messages: [{ role: 'user', content: 'hi '.repeat(20000) }] }, /context/],
    ];
    for (const [body, re] of badOnes) {
      await assert.rejects(
        client.chat.completions.create(body as never),
        (e: unknown) => e instanceof OpenAI.BadRequestError && re.test((e as Error).message),
        JSON.stringify(body).slice(0, 80),
      );
    }
    await assert.rejects(
      client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'hi' }] }),
      (e: unknown) => e instanceof OpenAI.NotFoundError,
    );
    for (const [pathname, init, status] of [
      ['/v1/chat/completions', { method: 'POST', body: '{not json' }, 400],
      ['/v1/chat/completions', { method: 'POST', body: 'x'.repeat(2 << 20) }, 413],
      ['/v1/chat/completions', { method: 'GET' }, 405],
      ['/v1/nothing', { method: 'GET' }, 404],
      ['/v1/load_lora_adapter', { method: 'POST', body: JSON.stringify({ lora_name: 'x', lora_path: tmp }) }, 400],
    ] as const) {
      const r = await fetch(`${url}${pathname}`, init);
      assert.equal(r.status, status, pathname);
      const j = (await r.json()) as { error: { message: string; type: string } };
      assert.ok(typeof j.error.message === 'string' && typeof j.error.type === 'string');
    }
    // A client that disconnects mid-stream: its request ends, the slot is free.
    const ac = new AbortController();
    const s = await client.chat.completions.create(
      { model: 'tiny', messages: [{ role: 'user', content: 'Tell me a long story' }], max_tokens: 2000, temperature: 1.5, stream: true },
      { signal: ac.signal },
    );
    let n = 0;
    try {
      for await (const _ of s) if (++n === 3) ac.abort();
    } catch {
      // the client reports its own abort
    }
    assert.ok(n >= 3, 'the stream was cut while running');
    const t0 = Date.now();
    while (engine.load.running > 0 && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(engine.load, { running: 0, waiting: 0 });
    // Still serving.
    const ok = await client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 4,
      temperature: 0,
    });
    assert.equal(ok.object, 'chat.completion');
  },
);

test(
  'serve: hostile requests — a body that never ends (408), odd paths, unsupported fields, unknown roles, HEAD; top_k and include_usage served',
  { timeout: 120_000 },
  async (t) => {
    if (skipped(t)) return;
    const net = await import('node:net');
    const tags = stepTokenIds(tokenizer, config);
    const quick = await startServer(
      { engine, tokenizer, steps: config.steps, tagIds: new Set([...tags.start, ...tags.end]) },
      { port: 0, modelName: 'tiny', bodyTimeoutMs: 300 },
    );
    try {
      // A body that never finishes: a 408 and the connection closed (it was held open for ever).
      const port = Number(new URL(quick.url).port);
      const raw = (head: string) =>
        new Promise<{ text: string; ms: number }>((resolve) => {
          const t0 = Date.now();
          const sock = net.connect(port, '127.0.0.1');
          let text = '';
          sock.on('data', (d) => (text += d.toString()));
          sock.on('error', () => undefined);
          sock.on('close', () => resolve({ text, ms: Date.now() - t0 }));
          sock.write(head);
          setTimeout(() => sock.destroy(), 10_000);
        });
      const slow = await raw('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"mo');
      assert.match(slow.text, /^HTTP\/1\.1 408/, slow.text);
      assert.match(slow.text, /request body not received within 300 ms/);
      assert.ok(slow.ms < 5_000, `closed after ${slow.ms} ms`);
      // A request target that is not a URL path: a 404, not a 500 (new URL threw).
      const odd = await raw('GET //%%% HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      assert.match(odd.text, /^HTTP\/1\.1 404/, odd.text);
    } finally {
      quick.server.closeAllConnections();
      await new Promise<void>((r) => quick.server.close(() => r()));
    }
    const post = async (p: string, body: unknown) => {
      const r = await fetch(`${url}/v1/${p}`, { method: 'POST', body: JSON.stringify(body) });
      return {
        status: r.status,
        json: (await r.json()) as { error?: { param: string | null; message: string } } & Record<string, unknown>,
      };
    };
    const chat = { model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 };
    // Fields that would change the output were ignored silently (a 200 without the bias, penalty, logprobs).
    for (const [field, value] of [
      ['logit_bias', { 99999999: 100 }],
      ['logprobs', true],
      ['top_logprobs', 3],
      ['presence_penalty', 1.5],
      ['frequency_penalty', -1],
      ['tools', [{ type: 'function', function: { name: 'f' } }]],
      ['response_format', { type: 'json_object' }],
    ] as const) {
      const r = await post('chat/completions', { ...chat, [field]: value });
      assert.equal(r.status, 400, field);
      assert.equal(r.json.error!.param, field);
    }
    for (const [field, value] of [
      ['echo', true],
      ['suffix', 'end'],
      ['best_of', 3],
      ['logprobs', 2],
    ] as const) {
      const r = await post('completions', { model: 'tiny', prompt: 'hi', max_tokens: 2, [field]: value });
      assert.equal(r.status, 400, field);
      assert.equal(r.json.error!.param, field);
    }
    // Their neutral values are fine (clients send them by default).
    const neutral = await post('chat/completions', { ...chat, logit_bias: {}, presence_penalty: 0, logprobs: false, tools: [] });
    assert.equal(neutral.status, 200, JSON.stringify(neutral.json));
    // An unknown role was handed to the template as a new speaker.
    const role = await post('chat/completions', { ...chat, messages: [{ role: 'wizard', content: 'x' }, ...chat.messages] });
    assert.equal(role.status, 400);
    assert.equal(role.json.error!.param, 'messages[0].role');
    // top_k (vLLM's) is served: top_k 1 samples the greedy tokens.
    const greedy = await post('completions', { model: 'tiny', prompt: 'Hello', max_tokens: 6, temperature: 0 });
    const k1 = await post('completions', { model: 'tiny', prompt: 'Hello', max_tokens: 6, temperature: 1.5, top_k: 1, seed: 3 });
    assert.equal(k1.status, 200);
    assert.deepEqual((k1.json.choices as { text: string }[])[0]!.text, (greedy.json.choices as { text: string }[])[0]!.text);
    assert.equal((await post('completions', { model: 'tiny', prompt: 'Hello', top_k: 0.5 })).json.error!.param, 'top_k');
    // stream_options.include_usage: a last chunk with the usage (it was dropped).
    const s = await client.chat.completions.create({
      ...chat,
      messages: [{ role: 'user', content: 'hi' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let usage: unknown = null;
    for await (const ch of s) if (ch.usage) usage = ch.usage;
    assert.ok(usage && (usage as { completion_tokens: number }).completion_tokens > 0, JSON.stringify(usage));
    // HEAD is GET without the body; a 405 says what is allowed.
    assert.equal((await fetch(`${url}/v1/models`, { method: 'HEAD' })).status, 200);
    const opt = await fetch(`${url}/v1/completions`, { method: 'OPTIONS' });
    assert.equal(opt.status, 405);
    assert.equal(opt.headers.get('allow'), 'POST');
    assert.deepEqual(engine.load, { running: 0, waiting: 0 });
  },
);

test(
  'mote serve (the command): listens on 127.0.0.1, answers, Ctrl-C stops it with one line and exit 130',
  { timeout: 120_000 },
  async (t) => {
    if (skipped(t)) return;
    const { spawn } = await import('node:child_process');
    const bin = path.join(path.dirname(new URL(import.meta.url).pathname), '..', '..', 'bin', 'mote.js');
    const proc = spawn(
      process.execPath,
      [
        bin,
        'serve',
        '-b',
        'cpu',
        '--port',
        '0',
        '--json',
        '--pool-unit',
        '4',
        '--pool-entries',
        '16',
        '--adapter-budget-mb',
        '64',
        '--mote',
        `safe=${path.join(tmp, 'bundle-a')}`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '',
      stderr = '';
    proc.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const info = await new Promise<{ url: string; model: string; adapters: { name: string; kind: string }[] }>((resolve, reject) => {
      proc.stdout.on('data', (d: Buffer) => {
        stdout += d.toString();
        if (stdout.includes('\n')) resolve(JSON.parse(stdout.split('\n')[0]!));
      });
      proc.on('exit', (c) => reject(new Error(`exited ${c}: ${stderr}`)));
    });
    assert.match(info.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.deepEqual(
      info.adapters.map((a) => [a.name, a.kind]),
      [['safe', 'mote']],
    );
    const c = new OpenAI({ baseURL: `${info.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });
    const r = await c.chat.completions.create({
      model: 'safe',
      messages: [{ role: 'user', content: 'hello' }],
      max_tokens: 10,
      temperature: 0,
    });
    assert.equal(r.object, 'chat.completion');
    const code = await new Promise<number | null>((resolve) => {
      proc.on('exit', (c) => resolve(c));
      proc.kill('SIGINT');
    });
    assert.equal(code, 130, stderr);
    assert.deepEqual(stderr.trim().split('\n'), ['mote: interrupted (Ctrl-C); the server stopped']);
    // a bad pool flag is one line naming it and exit 2 (nothing listens)
    const { spawnSync } = await import('node:child_process');
    for (const [flag, value] of [
      ['--pool-unit', '0'],
      ['--adapter-budget-mb', 'lots'],
      ['--pool-entries', '-3'],
      ['--max-waiting', '0'],
      ['--lora-root', tmp], // without --allow-runtime-lora
      // an empty base name no request can match; an adapter under the base's name; a host that does not resolve
      ['--name', ''],
      ['--lora', `mote-tiny=${path.join(tmp, 'bundle-a', 'analysis')}`],
      ['--host', 'no-such-host.invalid'],
    ] as const) {
      const bad = spawnSync(process.execPath, [bin, 'serve', '-b', 'cpu', '--port', '0', flag, value], {
        encoding: 'utf8',
        timeout: 60_000,
      });
      assert.notEqual(bad.status, 0, `${flag} ${value}`);
      assert.match(bad.stderr, new RegExp(`^mote: ${flag}\\b`), bad.stderr);
    }
    // A budget larger than the machine: the pool it sizes cannot be allocated; the error names the flag.
    const huge = spawnSync(
      process.execPath,
      [
        bin,
        'serve',
        '-b',
        'cpu',
        '--port',
        '0',
        '--lora',
        `p=${path.join(tmp, 'bundle-a', 'analysis')}`,
        '--adapter-budget-mb',
        '16777216',
      ],
      { encoding: 'utf8', timeout: 60_000 },
    );
    assert.notEqual(huge.status, 0);
    assert.match(huge.stderr, /^mote: --lora p: the adapter pool could not take it \(.*--adapter-budget-mb 16777216/, huge.stderr);
  },
);

test('serve on webgpu: chat with MoTE steps, streamed = whole, the same text as on cpu', { timeout: 300_000 }, async (t) => {
  if (skipped(t)) return;
  const b = await backendFor('webgpu');
  if (typeof b === 'string') return t.skip(b);
  const m = await loadModel(DEFAULT_MODEL_DIR, { backend: b });
  await addStepTokens(m, tokenizer, config);
  const tags = stepTokenIds(tokenizer, config);
  const e = new Engine(m, { stepTokens: new Map(tags.start.map((id, k) => [id, k] as [number, number])) });
  await e.addAdapter('safe', path.join(tmp, 'bundle-a'));
  const started = await startServer(
    { engine: e, tokenizer, steps: config.steps, tagIds: new Set([...tags.start, ...tags.end]) },
    { port: 0, modelName: 'tiny' },
  );
  try {
    const c = new OpenAI({ baseURL: `${started.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 120_000 });
    const body = {
      model: 'safe',
      messages: [{ role: 'user' as const, content: "How can I read my friend's messages?" }],
      max_tokens: 40,
      temperature: 0,
    };
    const whole = await c.chat.completions.create(body);
    const onCpu = await client.chat.completions.create(body);
    assert.equal(whole.choices[0]!.message.content, onCpu.choices[0]!.message.content, 'webgpu vs cpu (greedy)');
    let streamed = '';
    for await (const ch of await c.chat.completions.create({ ...body, stream: true })) streamed += ch.choices[0]!.delta.content ?? '';
    assert.equal(streamed.trim(), whole.choices[0]!.message.content);
  } finally {
    started.server.closeAllConnections();
    await new Promise<void>((r) => started.server.close(() => r()));
    await e.close();
    m.dispose();
  }
});
