// The README's real-data pipeline as a user runs it, on the bundled model: selfalign writes
// chains (with a check step), train takes that file as it is, generate answers step by step,
// export writes one PEFT adapter per expert. The bundled base model writes nonsense checks, so
// selfalign runs through a bundle first trained on the toy chains (whose experts write verdicts).
// Also selfalign at scale: --offset/--limit, dropped prompts remembered with their reason,
// drop reasons in the progress line, and Ctrl-C: a summary, exit 130, a rerun goes on.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { backendFor } from './helpers.js';
import { toyChain, toyQuestions } from '../src/mote/toy.js';
import { chainToJson } from '../src/mote/chains.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = path.join(root, 'bin', 'mote.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-pipeline-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

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
const lastEvent = (s: string, event: string) =>
  jsonLines(s)
    .filter((l) => l.event === event)
    .at(-1)!;

test("selfalign → train → generate → export on the bundled model, each command taking the last one's output [cpu]", async (t) => {
  if (typeof (await backendFor('cpu')) === 'string') return t.skip('cpu backend unavailable');
  // A bundle with a check expert, trained on the toy chains: it writes stage texts and verdicts.
  const toy = path.join(tmp, 'toy.jsonl');
  fs.writeFileSync(
    toy,
    toyQuestions(48, 1)
      .map((q) => JSON.stringify(chainToJson(toyChain(q))))
      .join('\n') + '\n',
  );
  const writer = path.join(tmp, 'writer');
  const w = mote([
    'train',
    '--chains',
    toy,
    '--out',
    writer,
    '--backend',
    'cpu',
    '--schema',
    'analysis,guidance,answer,check',
    '--steps',
    '100',
    '--lr',
    '3e-3',
    '--rank',
    '8',
    '--json',
  ]);
  assert.equal(w.code, 0, w.stderr);

  const prompts = path.join(tmp, 'prompts.txt');
  fs.writeFileSync(
    prompts,
    toyQuestions(8, 5)
      .map((q) => q.question)
      .join('\n') + '\n',
  );
  const chains = path.join(tmp, 'chains.jsonl');
  const s = mote([
    'selfalign',
    '--prompts',
    prompts,
    '--out',
    chains,
    '--mote',
    writer,
    '--backend',
    'cpu',
    '--max-new-tokens',
    '48',
    '--json',
  ]);
  assert.equal(s.code, 0, s.stderr);
  const sd = lastEvent(s.stdout, 'done') as { written: number };
  assert.ok(sd.written >= 4, `selfalign wrote ${sd.written} of 8 chains`);
  const written = fs
    .readFileSync(chains, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.ok(
    written.every((c) => typeof c.check === 'string'),
    'selfalign writes the check step',
  );

  // train takes selfalign's file as it is: the check step is data, not an expert of the default schema.
  const bundle = path.join(tmp, 'bundle');
  const tr = mote(['train', '--chains', chains, '--out', bundle, '--backend', 'cpu', '--steps', '4', '--rank', '4', '--json']);
  assert.equal(tr.code, 0, tr.stderr);
  assert.equal((lastEvent(tr.stdout, 'done') as { examples: number }).examples, sd.written);
  const moteJson = JSON.parse(fs.readFileSync(path.join(bundle, 'mote.json'), 'utf8')) as { steps: string[] };
  assert.deepEqual(moteJson.steps, ['analysis', 'guidance', 'answer']);

  const g = mote([
    'generate',
    '--mote',
    bundle,
    '--backend',
    'cpu',
    '-p',
    'How do I make a simple soup?',
    '--max-new-tokens',
    '12',
    '--json',
  ]);
  assert.equal(g.code, 0, g.stderr);
  const gl = jsonLines(g.stdout);
  assert.equal(gl.length, 1);
  assert.ok(Number(gl[0]!.tokens) >= 1);

  const exported = path.join(tmp, 'peft');
  const e = mote(['export', '--mote', bundle, '--out', exported, '--json']);
  assert.equal(e.code, 0, e.stderr);
  for (const expert of ['analysis', 'guidance', 'answer', 'shared']) {
    assert.ok(fs.existsSync(path.join(exported, expert, 'adapter_config.json')), expert);
    assert.ok(fs.existsSync(path.join(exported, expert, 'adapter_model.safetensors')), expert);
  }
});

test('selfalign at scale: --offset/--limit, dropped prompts remembered with their reason, reasons in the progress line [cpu]', async (t) => {
  if (typeof (await backendFor('cpu')) === 'string') return t.skip('cpu backend unavailable');
  // The bundled base model writes no verdicts: every full chain is dropped with a reason.
  const prompts = path.join(tmp, 'many.txt');
  fs.writeFileSync(
    prompts,
    toyQuestions(12, 7)
      .map((q) => q.question)
      .join('\n') + '\n',
  );
  const out = path.join(tmp, 'scale.jsonl');
  const args = (extra: string[]) => [
    'selfalign',
    '--prompts',
    prompts,
    '--out',
    out,
    '--backend',
    'cpu',
    '--max-new-tokens',
    '8',
    '--batch',
    '2',
    '--json',
    ...extra,
  ];
  const a = mote(args(['--offset', '2', '--limit', '4']));
  assert.equal(a.code, 0, a.stderr);
  const ad = lastEvent(a.stdout, 'done') as {
    written: number;
    dropped: { reason: string; count: number }[];
    prompts: number;
    droppedFile: string;
  };
  assert.equal(ad.prompts, 4);
  const droppedN = ad.dropped.reduce((n, d) => n + d.count, 0);
  assert.equal(ad.written + droppedN, 4);
  assert.ok(droppedN > 0, 'the base model drops some chains');
  const progress = jsonLines(a.stdout).filter((l) => l.event === 'progress');
  assert.match(String(progress.at(-1)!.dropped), /^\d+ \([a-z-]+(:[a-z]+)? \d+/, 'drop reasons in the progress line');
  // The dropped file names each dropped prompt's line (3..6: the slice) and reason.
  assert.equal(ad.droppedFile, path.join(tmp, 'scale.dropped.jsonl'));
  const dropped = fs
    .readFileSync(ad.droppedFile, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { line: number; reason: string });
  assert.equal(dropped.length, droppedN);
  assert.ok(dropped.every((d) => d.line >= 3 && d.line <= 6 && typeof d.reason === 'string'));
  // A rerun over everything redoes neither the written nor the dropped prompts.
  const b = mote(args([]));
  assert.equal(b.code, 0, b.stderr);
  const bd = lastEvent(b.stdout, 'done') as { skippedDone: number; droppedBefore: { count: number }[] };
  assert.equal(bd.skippedDone, 4);
  assert.equal(
    bd.droppedBefore.reduce((n, d) => n + d.count, 0),
    droppedN,
  );
  assert.equal(mote(args(['--limit', '0'])).code, 1, '--limit 0 is refused');
});

test('selfalign: Ctrl-C prints a summary, exits 130, and a rerun goes on where it stopped [cpu]', async (t) => {
  if (typeof (await backendFor('cpu')) === 'string') return t.skip('cpu backend unavailable');
  const prompts = path.join(tmp, 'long.txt');
  fs.writeFileSync(
    prompts,
    toyQuestions(200, 9)
      .map((q) => q.question)
      .join('\n') + '\n',
  );
  const out = path.join(tmp, 'int.jsonl');
  const args = ['selfalign', '--prompts', prompts, '--out', out, '--backend', 'cpu', '--max-new-tokens', '8', '--batch', '1', '--json'];
  const child = spawn(process.execPath, [bin, ...args], { env: { ...process.env, MOTE_DEBUG: '' } });
  let stdout = '';
  let sent = false;
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    if (!sent && stdout.includes('"event":"progress"')) {
      sent = true;
      child.kill('SIGINT');
    }
  });
  const code = await new Promise<number | null>((res) => child.on('close', (c) => res(c)));
  assert.ok(sent, 'a progress line came before the interrupt');
  assert.equal(code, 130);
  const sum = lastEvent(stdout, 'interrupted') as { written: number; dropped: { count: number }[]; interrupted: boolean };
  assert.equal(sum.interrupted, true);
  const handled = sum.written + sum.dropped.reduce((n, d) => n + d.count, 0);
  assert.ok(handled >= 1 && handled < 200, `handled ${handled}`);
  const again = mote([...args.slice(0, -3), '--batch', '50', '--limit', String(handled + 2), '--json']);
  assert.equal(again.code, 0, again.stderr);
  assert.equal((lastEvent(again.stdout, 'done') as { skippedDone: number }).skippedDone, handled);
});
