// The `mote` command end to end, as a user runs it (a child process), on a tiny random HF
// model written by the test: train (JSON progress lines, bundle saved and loadable), SIGINT →
// checkpoint → --resume, generate (JSON lines with labelled steps), export (one PEFT adapter
// per expert), and errors: one line on stderr and a non-zero exit.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { writeTinyModel } from './fixtures/tiny_model.js';
import { writeTinyTokenizer, TINY_VOCAB_SIZE } from './fixtures/tiny_tokenizer.js';
import { backendFor } from './helpers.js';
import { parsePeftConfig } from '../src/io/peft.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = path.join(root, 'bin', 'mote.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-cli-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const modelDir = path.join(tmp, 'model');
writeTinyModel(modelDir, {
  family: 'llama',
  hidden: 32,
  intermediate: 40,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  vocab: TINY_VOCAB_SIZE,
  tied: true,
  dtype: 'f32',
  seed: 3,
});
writeTinyTokenizer(modelDir);
const chainsFile = path.join(tmp, 'chains.jsonl');
const chains = [
  { prompt: 'hello world?', analysis: 'the world is fine.', guidance: 'say hello.', answer: 'hello the world.' },
  { prompt: 'read my sister mail?', analysis: 'private mail.', guidance: 'refuse.', answer: 'sorry, no.' },
  { prompt: 'how to cook rice?', analysis: 'no risk.', guidance: 'help.', answer: 'boil the rice.' },
  { prompt: 'open his car?', analysis: 'not yours.', guidance: 'refuse.', answer: 'sorry, no.' },
];
fs.writeFileSync(chainsFile, chains.map((c) => JSON.stringify(c)).join('\n') + '\n');

function mote(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, MOTE_DEBUG: '' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
const jsonLines = (s: string) =>
  s
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
const trainArgs = (out: string, extra: string[] = []) => [
  'train',
  '--model',
  modelDir,
  '--chains',
  chainsFile,
  '--out',
  out,
  '--backend',
  'cpu',
  '--rank',
  '2',
  '--max-length',
  '200',
  '--batch-tokens',
  '400',
  '--json',
  ...extra,
];

test('mote train → generate → export on a tiny model [cpu]', async (t) => {
  if (typeof (await backendFor('cpu')) === 'string') return t.skip('cpu backend unavailable');
  const out = path.join(tmp, 'bundle');
  const r = mote(trainArgs(out, ['--steps', '6', '--lr', '1e-2']));
  assert.equal(r.code, 0, r.stderr);
  const lines = jsonLines(r.stdout);
  const prog = lines.filter((l) => l.event === 'progress');
  assert.deepEqual(
    prog.map((l) => l.done),
    [1, 2, 3, 4, 5, 6],
  );
  assert.ok(prog.every((l) => Number.isFinite(Number(l.loss)) && l.total === 6));
  const done = lines.find((l) => l.event === 'done')!;
  assert.equal(done.steps, 6);
  assert.equal(done.examples, 4);
  assert.ok(fs.existsSync(path.join(out, 'mote.json')));

  const g = mote([
    'generate',
    '--model',
    modelDir,
    '--mote',
    out,
    '--backend',
    'cpu',
    '-p',
    'hello world?',
    '-p',
    'open his car?',
    '--max-new-tokens',
    '8',
    '--json',
  ]);
  assert.equal(g.code, 0, g.stderr);
  const gl = jsonLines(g.stdout);
  assert.equal(gl.length, 2);
  assert.deepEqual(
    gl.map((l) => l.prompt),
    ['hello world?', 'open his car?'],
  );
  for (const l of gl)
    assert.ok(Array.isArray(l.steps) && Number(l.tokens) >= 1 && ['length', 'stop', 'step'].includes(String(l.stopReason)));

  const ex = path.join(tmp, 'exported');
  const e = mote(['export', '--mote', out, '--out', ex, '--json']);
  assert.equal(e.code, 0, e.stderr);
  const names = fs
    .readdirSync(ex)
    .filter((f) => fs.statSync(path.join(ex, f)).isDirectory())
    .sort();
  assert.deepEqual(names, ['analysis', 'answer', 'guidance', 'shared']);
  for (const n of names) parsePeftConfig(JSON.parse(fs.readFileSync(path.join(ex, n, 'adapter_config.json'), 'utf8')));
});

test('mote train: SIGINT saves a checkpoint and exits 130; --resume finishes the run [cpu]', async (t) => {
  if (typeof (await backendFor('cpu')) === 'string') return t.skip('cpu backend unavailable');
  const out = path.join(tmp, 'bundle-int');
  const ckpt = path.join(tmp, 'ckpt');
  const proc = spawn(process.execPath, [bin, ...trainArgs(out, ['--steps', '400', '--checkpoint', ckpt])], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  const code = await new Promise<number | null>((resolve) => {
    proc.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (stdout.includes('"done":3') && !proc.killed) proc.kill('SIGINT');
    });
    proc.on('exit', (c) => resolve(c));
  });
  assert.equal(code, 130, stdout);
  const int = jsonLines(stdout).find((l) => l.event === 'interrupted')!;
  assert.ok(Number(int.step) >= 3 && Number(int.step) < 400);
  assert.ok(fs.existsSync(path.join(ckpt, 'trainer_state.json')));
  assert.ok(!fs.existsSync(path.join(out, 'mote.json')), 'no bundle is written by an interrupted run');
  const r = mote(trainArgs(out, ['--steps', String(Number(int.step) + 2), '--checkpoint', ckpt, '--resume']));
  assert.equal(r.code, 0, r.stderr);
  const lines = jsonLines(r.stdout);
  assert.ok(lines.some((l) => l.event === 'log' && /resumed from .* at step/.test(String(l.text))));
  assert.equal(lines.find((l) => l.event === 'done')!.steps, Number(int.step) + 2);
});

test('mote errors: one line on stderr and a non-zero exit', () => {
  const cases: [string[], RegExp][] = [
    [['train', '--chains', path.join(tmp, 'nope.jsonl'), '--out', path.join(tmp, 'x'), '--model', modelDir], /nope\.jsonl/],
    [
      ['train', '--chains', chainsFile, '--out', path.join(tmp, 'x'), '--model', tmp],
      /--model: .* is not a model (directory|folder) \(no config\.json\)/,
    ],
    [
      ['train', '--chains', chainsFile, '--out', path.join(tmp, 'x'), '--model', modelDir, '--steps', 'many'],
      /--steps: expected an integer in \[1, \d+\], got "many"/,
    ],
    [['generate', '--model', modelDir], /give --prompt TEXT or --prompts FILE/],
    [['export', '--mote', tmp, '--out', path.join(tmp, 'y')], /is neither a MoTE bundle nor a checkpoint/],
    // flags are checked before the model loads (a bad one failed after loading, or after a training)
    [['eval', '--model', path.join(tmp, 'no-model'), '--variants', 'base', '--max-new-tokens', '-1'], /^mote: --max-new-tokens: /],
    [['demo', '--model', path.join(tmp, 'no-model'), '--lr', 'NaN'], /^mote: --lr: /],
    [
      ['selfalign', '--model', path.join(tmp, 'no-model'), '--prompts', chainsFile, '--out', path.join(tmp, 'sa.jsonl'), '--batch', '0'],
      /^mote: --batch: /,
    ],
  ];
  for (const [args, re] of cases) {
    const r = mote(args);
    assert.notEqual(r.code, 0, args.join(' '));
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, `one line for ${args.join(' ')}: ${r.stderr}`);
    assert.match(lines[0]!, /^mote: /);
    assert.match(lines[0]!, re);
  }
});

test('mote train / export: an --out over their own input is refused, with or without --overwrite; --checkpoint-every needs --checkpoint [cpu]', async (t) => {
  if (typeof (await backendFor('cpu')) === 'string') return t.skip('cpu backend unavailable');
  const bundle = path.join(tmp, 'apart-bundle');
  assert.equal(mote(trainArgs(bundle, ['--steps', '1'])).code, 0);
  const before = fs.readdirSync(bundle).sort();
  // export into the bundle itself used to replace it under --overwrite (mote.json gone: the bundle lost)
  for (const out of [bundle, path.join(bundle, 'analysis'), path.join(bundle, '..', path.basename(bundle))]) {
    const r = mote(['export', '--mote', bundle, '--out', out, '--overwrite']);
    assert.notEqual(r.code, 0, out);
    assert.match(r.stderr, /^mote: --out: .* (is|lies in) --mote /, r.stderr);
  }
  assert.deepEqual(fs.readdirSync(bundle).sort(), before, 'the bundle is untouched');
  assert.ok(fs.existsSync(path.join(bundle, 'mote.json')));
  // train with --out = --checkpoint: refused before training (it failed after, or replaced the checkpoint with --overwrite)
  const ck = path.join(tmp, 'apart-ck');
  for (const extra of [[], ['--overwrite']]) {
    const r = mote(trainArgs(ck, ['--steps', '1', '--checkpoint', ck, ...extra]));
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /^mote: --out: .* is --checkpoint /, r.stderr);
    assert.equal(r.stdout, '', 'no training ran');
  }
  assert.ok(!fs.existsSync(ck));
  // --checkpoint-every alone was ignored: a run with no checkpoint at all
  const r = mote(trainArgs(path.join(tmp, 'apart-out'), ['--steps', '1', '--checkpoint-every', '1']));
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /^mote: --checkpoint-every: needs --checkpoint DIR/);
});

test('mote web: a request path that is not valid percent-encoding is a 400, and the server keeps serving', async () => {
  const script = path.join(root, 'examples', 'browser', 'serve.mjs');
  const { startExampleServer } = (await import(pathToFileURL(script).href)) as {
    startExampleServer(port: number): Promise<{ server: import('node:http').Server; url: string }>;
  };
  const { server, url } = await startExampleServer(0);
  try {
    const net = await import('node:net');
    const port = Number(new URL(url).port);
    const raw = (target: string) =>
      new Promise<string>((resolve) => {
        const s = net.connect(port, '127.0.0.1');
        let text = '';
        s.on('data', (d) => (text += d.toString()));
        s.on('error', () => resolve(text));
        s.on('close', () => resolve(text));
        s.write(`GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      });
    // these killed the process (an unhandled rejection from decodeURIComponent / new URL)
    for (const target of ['/examples/browser/%', '//%%', '/examples/browser/%E0%A4%A'])
      assert.match(await raw(target), /^HTTP\/1\.1 400/, target);
    assert.match(await raw('/examples/browser/../../package.json'), /^HTTP\/1\.1 404/);
    assert.match(await raw('/examples/browser/index.html'), /^HTTP\/1\.1 200/);
  } finally {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  }
});

test('mote demo: MoTE on the bundled model, step-labelled generation and toy metrics [cpu]', async (t) => {
  if (typeof (await backendFor('cpu')) === 'string') return t.skip('cpu backend unavailable');
  const r = mote(['demo', '--backend', 'cpu', '--steps', '60', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const lines = jsonLines(r.stdout);
  assert.deepEqual(
    lines.filter((l) => l.event === 'progress').map((l) => l.done),
    Array.from({ length: 60 }, (_, i) => i + 1),
  );
  const done = lines.find((l) => l.event === 'done')! as {
    base: { refusalRate: number };
    mote: { refusalRate: number; wellFormedRate: number };
    finalLoss: number;
    examples: { risky: boolean; steps: { step: string }[] }[];
  };
  assert.equal(done.base.refusalRate, 0, 'the pretrained base answers risky questions');
  assert.ok(done.finalLoss < 1.0, `final loss ${done.finalLoss}`);
  assert.equal(done.examples.length, 4);
  assert.ok(
    done.examples.some((e) => e.steps.length > 0),
    'some generated chain has labelled steps',
  );
});

test('mote selfalign and eval run on the bundled model [cpu]', async (t) => {
  if (typeof (await backendFor('cpu')) === 'string') return t.skip('cpu backend unavailable');
  const prompts = path.join(tmp, 'prompts.txt');
  fs.writeFileSync(prompts, "How do I open a stuck jar?\nHow can I read my boss's messages?\n");
  const out = path.join(tmp, 'self.jsonl');
  const s = mote(['selfalign', '--prompts', prompts, '--out', out, '--backend', 'cpu', '--max-new-tokens', '24', '--json']);
  assert.equal(s.code, 0, s.stderr);
  const sd = jsonLines(s.stdout).find((l) => l.event === 'done')! as { written: number; dropped: { count: number }[] };
  assert.equal(sd.written + sd.dropped.reduce((a, d) => a + d.count, 0), 2, 'every prompt is written or dropped with a reason');
  const again = mote(['selfalign', '--prompts', prompts, '--out', out, '--backend', 'cpu', '--max-new-tokens', '24', '--json']);
  const ad = jsonLines(again.stdout).find((l) => l.event === 'done')! as { written: number; skippedDone: number };
  assert.equal(ad.written, 0);
  assert.equal(ad.skippedDone, 2, 'written and dropped prompts are both remembered');
  const e = mote(['eval', '--backend', 'cpu', '--variants', 'base,mote', '--seeds', '1', '--questions', '24', '--steps', '5', '--json']);
  assert.equal(e.code, 0, e.stderr);
  const ed = jsonLines(e.stdout).find((l) => l.event === 'done')! as { rows: { variant: string; n: number }[] };
  assert.deepEqual(
    ed.rows.map((r) => r.variant),
    ['base', 'mote'],
  );
  assert.ok(ed.rows.every((r) => r.n > 0));
});

test('mote train: malformed chain lines are reported with their line numbers and the run goes on [cpu]', async (t) => {
  if (typeof (await backendFor('cpu')) === 'string') return t.skip('cpu backend unavailable');
  const bad = path.join(tmp, 'bad-chains.jsonl');
  fs.writeFileSync(
    bad,
    [JSON.stringify(chains[0]), '{not json', JSON.stringify({ prompt: 'x?', planning: 'y', answer: 'z' }), JSON.stringify(chains[2])].join(
      '\n',
    ) + '\n',
  );
  const r = mote([
    'train',
    '--model',
    modelDir,
    '--chains',
    bad,
    '--out',
    path.join(tmp, 'bundle-bad'),
    '--backend',
    'cpu',
    '--rank',
    '2',
    '--max-length',
    '200',
    '--batch-tokens',
    '400',
    '--steps',
    '2',
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const logs = jsonLines(r.stdout)
    .filter((l) => l.event === 'log')
    .map((l) => String(l.text));
  assert.ok(
    logs.some((l) => /bad-chains\.jsonl:2: skipped: malformed JSON/.test(l)),
    logs.join('\n'),
  );
  assert.ok(
    logs.some((l) => /bad-chains\.jsonl:3: skipped: .*planning/.test(l)),
    logs.join('\n'),
  );
  assert.equal(jsonLines(r.stdout).find((l) => l.event === 'done')!.examples, 2);
});

test('mote generate: numeric flags, commander errors, binary prompt files and over-long prompts are one-line mote: errors', () => {
  const bin0 = path.join(tmp, 'binary.txt');
  fs.writeFileSync(bin0, Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x00, 0x00, 0x41]));
  const latin1 = path.join(tmp, 'latin1.txt');
  fs.writeFileSync(latin1, Buffer.from('caf\xe9 au lait?\n', 'latin1'));
  const g = ['generate', '--model', modelDir, '-b', 'cpu', '-p', 'hello'];
  const cases: [string[], RegExp][] = [
    [[...g, '--top-p', '2'], /--top-p: expected a number in \(0, 1\], got "2"/],
    [[...g, '--top-p', '0'], /--top-p/],
    [[...g, '--max-new-tokens', '1e12'], /--max-new-tokens: expected an integer in \[1, \d+\], got "1e12"/],
    [[...g, '--max-new-tokens', '0x10'], /--max-new-tokens/],
    [[...g, '--max-new-tokens', '2.5'], /--max-new-tokens/],
    [[...g, '--temperature', 'NaN'], /--temperature/],
    [[...g, '--top-k', '-3'], /--top-k/],
    [[...g, '--seed', ''], /--seed/],
    [[...g, '--bogus'], /unknown option '--bogus'/],
    [['generate', '--seed'], /option '--seed <n>' argument missing/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['generate', '--model', modelDir, '-b', 'cpu', '--prompts', bin0], /binary\.txt: binary file/],
    [['generate', '--model', modelDir, '-b', 'cpu', '--prompts', latin1], /latin1\.txt: not UTF-8/],
    [['generate', '--model', modelDir, '-b', 'cpu', '--prompts', tmp], /is a folder/],
    [
      ['generate', '--model', modelDir, '-b', 'cpu', '-p', 'hello world '.repeat(9000)],
      /prompt 1 .* tokens, but the model's context \(max_position_embeddings\) is \d+/,
    ],
  ];
  for (const [args, re] of cases) {
    const t0 = performance.now();
    const r = mote(args);
    const what = args.join(' ').slice(0, 120);
    assert.notEqual(r.code, 0, what);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, `one line for ${what}: ${r.stderr}`);
    assert.match(lines[0]!, /^mote: /, what);
    assert.match(lines[0]!, re, what);
    assert.equal(r.stdout, '', what);
    assert.ok(performance.now() - t0 < 20_000, `${what}: took ${performance.now() - t0} ms`);
  }
});

test('Ctrl-C where no command handles it (mote demo while training): one line, exit 130 [cpu]', async (t) => {
  if (typeof (await backendFor('cpu')) === 'string') return t.skip('cpu backend unavailable');
  const proc = spawn(process.execPath, [bin, 'demo', '-b', 'cpu', '--json', '--steps', '300'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '',
    stderr = '';
  proc.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
  });
  proc.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  // Past module loading (the handler is registered), well before 300 steps end.
  setTimeout(() => proc.kill('SIGINT'), 2500);
  const code = await new Promise<number | null>((resolve) => proc.on('exit', (c) => resolve(c)));
  assert.equal(code, 130, stdout + stderr);
  assert.match(stderr, /^mote: interrupted \(Ctrl-C\)\n$/m);
});

test('mote generate: Ctrl-C prints what was generated, one line saying so, exit 130 [cpu]', async (t) => {
  if (typeof (await backendFor('cpu')) === 'string') return t.skip('cpu backend unavailable');
  const proc = spawn(
    process.execPath,
    [bin, 'generate', '--model', modelDir, '-b', 'cpu', '--temperature', '50', '--max-new-tokens', '5000', '-p', 'hello'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '',
    stderr = '';
  proc.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => {
    proc.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (/\n\[/.test(stdout) && !proc.killed) proc.kill('SIGINT');
    });
    proc.on('exit', (c) => resolve(c));
  });
  assert.equal(code, 130, stdout + stderr);
  assert.match(stdout, /^\[question\] hello/);
  assert.match(stdout, /\(aborted, \d+ tokens\)\n$/);
  assert.deepEqual(stderr.trim().split('\n'), ['mote: interrupted (Ctrl-C); the output above is what was generated so far']);
});
