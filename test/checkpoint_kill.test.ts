// Killing a training run while it writes a checkpoint (src/io/atomic_dir.ts,
// src/train/checkpoint.ts). A child process (test/fixtures/kill_child.ts) trains the tiny
// setup with a checkpoint after every step; the parent SIGKILLs it at seeded points inside
// checkpoint writes (MOTE_TEST_PAUSE_AT stops the writer exactly there: while filling the
// temporary folder, after each file, once it is complete, between the two renames of the
// swap, after the swap), plus a few kills after seeded random delays, then resumes in a new
// child. Asserted: every resume starts from the newest complete checkpoint (exactly the one
// the kill point implies; never from step 0 when one exists), the kill between the two
// renames (no `ck` at all, only ck.old-PID / ck.tmp-PID) is recovered, the final parameters
// and losses are bit-identical to an uninterrupted run, mote's stale temporaries are gone at
// the end, and no file outside mote's own (a note beside the checkpoint, folders of someone
// else named like stale temporaries) was touched. Prints a one-line summary.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { mulberry32 } from '../src/rng.js';
import { backendFor, closeBackends, hashTree } from './helpers.js';

after(closeBackends);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-kill-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const CHILD = fileURLToPath(new URL('./fixtures/kill_child.js', import.meta.url));
const STEPS = 40;

interface ChildRun {
  stdout: string;
  paused: string | null;
  code: number | null;
  signal: string | null;
}

/** Runs the child; with `pauseAt` kills it once it stops there, with `killAfterMs` once that long has passed after its first step. */
function runChild(dir: string, resume: boolean, opts: { pauseAt?: string; killAfterMs?: number } = {}): Promise<ChildRun> {
  const env = { ...process.env };
  delete env.MOTE_TEST_PAUSE_AT;
  if (opts.pauseAt) env.MOTE_TEST_PAUSE_AT = opts.pauseAt;
  const proc = spawn(process.execPath, [CHILD, dir, String(STEPS), resume ? 'resume' : 'fresh'], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '',
    stderr = '',
    paused: string | null = null;
  // A hang is a failure, not a stuck test run.
  const guard = setTimeout(() => proc.kill('SIGKILL'), 60_000);
  proc.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    if (opts.killAfterMs !== undefined && /step \d+/.test(stdout) && !proc.killed) setTimeout(() => proc.kill('SIGKILL'), opts.killAfterMs);
  });
  proc.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    const m = /mote-test-paused (\S+ \d+)/.exec(stderr);
    if (m && !paused) {
      paused = m[1]!;
      proc.kill('SIGKILL');
    }
  });
  return new Promise((resolve) =>
    proc.on('close', (code, signal) => {
      clearTimeout(guard);
      if (code !== null && code !== 0) stdout += `\n[stderr] ${stderr}`;
      resolve({ stdout, paused, code, signal });
    }),
  );
}

function startStep(r: ChildRun): number {
  const m = /^start (\d+)$/m.exec(r.stdout);
  assert.ok(m, `the child did not start: ${r.stdout}`);
  return Number(m[1]);
}

// Per checkpoint save, how often each pause point is reached, and which occurrence belongs to
// the checkpoint folder itself (the others are its nested adapters/ bundle, written first).
// The checkpoint is complete from the outer 'marked' on.
const PER_SAVE: Record<string, number> = { fill: 2, 'checkpoint-file': 3, filled: 2, marked: 2, 'between-renames': 2, swapped: 2 };
const OUTER_COMPLETE = new Set(['marked', 'between-renames', 'swapped']);

/** The step a resume must start from after a kill at the k-th `point` of a child that started at `start`. */
function expectedResume(start: number, point: string, k: number): number {
  const per = PER_SAVE[point]!;
  const save = Math.ceil(k / per),
    within = k - (save - 1) * per;
  const complete = OUTER_COMPLETE.has(point) && within === per;
  return start + save - (complete ? 0 : 1);
}

test('SIGKILL during checkpoint writes: resume from the newest complete checkpoint, bit-identical result, no foreign file touched [cpu]', async (t) => {
  const b = await backendFor('cpu');
  if (typeof b === 'string') return t.skip(b);
  const reference = await runChild(path.join(tmp, 'reference'), false);
  assert.equal(reference.code, 0, reference.stdout);
  const want = /^done (.*) ([0-9a-f]{64})$/m.exec(reference.stdout);
  assert.ok(want, reference.stdout);

  const work = path.join(tmp, 'run');
  fs.mkdirSync(work);
  const ck = path.join(work, 'ck');
  // Someone else's files beside the checkpoint, two of them named like stale temporaries of
  // processes that are gone (pids past any pid_max), one with a marker that is not mote's.
  fs.writeFileSync(path.join(work, 'notes.txt'), 'my notes');
  fs.mkdirSync(`${ck}.tmp-99999999`);
  fs.writeFileSync(`${ck}.tmp-99999999/data.bin`, crypto.randomBytes(64));
  fs.mkdirSync(`${ck}.old-99999998`);
  fs.writeFileSync(`${ck}.old-99999998/mote-written.json`, '{"format": "someone-else"}');
  fs.writeFileSync(`${ck}.old-99999998/keep.txt`, 'keep');
  const foreign = (): Map<string, string> =>
    new Map(
      [...hashTree(work)].filter(
        ([k]) => (!k.startsWith('ck/') && !/^ck\.(tmp|old)-\d+\//.test(k)) || /^ck\.(tmp-99999999|old-99999998)\//.test(k),
      ),
    );
  const foreignBefore = foreign();

  const rng = mulberry32(20240517);
  const points = Object.keys(PER_SAVE);
  let kills = 0,
    resumes = 0,
    silentRestarts = 0,
    betweenRenames = 0,
    recovered = 0,
    foreignTouched = 0;
  let start = 0,
    resume = false;
  const log: string[] = [];
  for (let i = 0; i < 24; i++) {
    // Kills 3, 9 and 15: deterministically between the two renames of the checkpoint folder
    // on the child's second save (the checkpoint exists, so it sits renamed aside as ck.old-PID).
    // Kills 5, 11, 17, 23: after a seeded random delay, wherever that lands.
    let pauseAt: string | undefined,
      killAfterMs: number | undefined,
      expect: number | null = null;
    if (i % 6 === 3) {
      pauseAt = 'between-renames:4';
      expect = start + 2;
    } else if (i % 6 === 5) {
      killAfterMs = Math.floor(rng() * 15);
    } else {
      const point = points[Math.floor(rng() * points.length)]!;
      const k = 1 + Math.floor(rng() * 2 * PER_SAVE[point]!);
      pauseAt = `${point}:${k}`;
      expect = expectedResume(start, point, k);
    }
    const r = await runChild(ck, resume, { pauseAt, killAfterMs });
    if (resume) {
      resumes++;
      const s = startStep(r);
      if (s === 0 && start > 0) silentRestarts++;
      assert.equal(s, start, `resume ${resumes}: started at ${s}, the newest complete checkpoint is at ${start}\n${log.join('\n')}`);
      if (/^recovered /m.test(r.stdout)) recovered++;
    }
    assert.equal(r.signal, 'SIGKILL', `kill ${i} (${pauseAt ?? `after ${killAfterMs} ms`}) did not land: ${r.stdout}`);
    kills++;
    const lastStep = Math.max(start, ...[...r.stdout.matchAll(/^step (\d+)$/gm)].map((m) => Number(m[1])));
    if (pauseAt === 'between-renames:4') {
      // The window: no checkpoint folder at all, the old one and the new one beside it.
      betweenRenames++;
      const names = fs.readdirSync(work);
      assert.ok(!names.includes('ck'), `between the renames ck should be absent: ${names.join(', ')}`);
      assert.ok(
        names.some((n) => /^ck\.old-\d+$/.test(n) && n !== 'ck.old-99999998') &&
          names.some((n) => /^ck\.tmp-\d+$/.test(n) && n !== 'ck.tmp-99999999'),
        names.join(', '),
      );
    }
    if (expect === null) {
      // A kill at a random moment: the next resume is somewhere from the last resume point to the last step done.
      const next = await runChild(ck, true, { pauseAt: 'fill:1' });
      resumes++;
      kills++;
      const s = startStep(next);
      if (s === 0 && start > 0) silentRestarts++;
      assert.ok(s >= start && s <= lastStep, `after a random kill: resumed at ${s}, expected within [${start}, ${lastStep}]`);
      if (/^recovered /m.test(next.stdout)) recovered++;
      expect = s;
    }
    log.push(`kill ${i}: ${pauseAt ?? `after ${killAfterMs} ms`} → resume at ${expect}`);
    start = expect;
    resume = true;
    if (!sameMap(foreign(), foreignBefore)) foreignTouched++;
  }
  // Resume and finish: the same losses and parameters as the uninterrupted run, bit for bit.
  const last = await runChild(ck, true);
  resumes++;
  assert.equal(last.code, 0, last.stdout);
  assert.equal(startStep(last), start, log.join('\n'));
  const got = /^done (.*) ([0-9a-f]{64})$/m.exec(last.stdout);
  assert.ok(got, last.stdout);
  assert.deepEqual(JSON.parse(got[1]!), JSON.parse(want[1]!), 'losses differ from the uninterrupted run');
  assert.equal(got[2], want[2], 'parameters differ from the uninterrupted run');
  // mote's temporaries are cleaned up; the foreign ones are not touched.
  assert.deepEqual(fs.readdirSync(work).sort(), ['ck', 'ck.old-99999998', 'ck.tmp-99999999', 'notes.txt']);
  if (!sameMap(foreign(), foreignBefore)) foreignTouched++;
  assert.equal(silentRestarts, 0);
  assert.equal(foreignTouched, 0);
  assert.ok(kills >= 20 && betweenRenames >= 3, `kills ${kills}, between renames ${betweenRenames}`);
  process.stdout.write(
    `checkpoint kill test: ${kills} kills (${betweenRenames} between the two renames), ${resumes} resumes (${recovered} from a killed save's temporary), ${silentRestarts} silent restarts, ${foreignTouched} foreign files touched; final params bit-identical to an uninterrupted run\n`,
  );
});

function sameMap(a: Map<string, string>, b: Map<string, string>): boolean {
  return a.size === b.size && [...a].every(([k, v]) => b.get(k) === v);
}
