// Property-based fuzz of every public op's argument checking (test/fuzz/child.ts), on cpu and
// webgpu. Each batch runs in a child process with a timeout, so a crash (signal death) or a
// hang is counted and reported instead of ending the run. MOTE_FUZZ_RUNS scales the cpu calls
// (default 10,000; webgpu gets 15% of that, at least 1,000 when unscaled).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { REQUIRED } from './helpers.js';

const CHILD = fileURLToPath(new URL('./fuzz/child.js', import.meta.url));
const RUNS = Number(process.env.MOTE_FUZZ_RUNS ?? 10_000);
const ONLY = process.env.MOTE_TEST_BACKENDS ? new Set(process.env.MOTE_TEST_BACKENDS.split(',').map((s) => s.trim())) : null;
const PLAN = [
  { kind: 'cpu', calls: RUNS, batches: 4, timeoutMs: 90_000 },
  { kind: 'webgpu', calls: Math.max(Math.min(1000, RUNS), Math.round(RUNS * 0.15)), batches: 3, timeoutMs: 90_000 },
] as const;

interface Batch {
  calls: number;
  valid: number;
  invalid: number;
  refChecked: number;
  silentAccepts: string[];
  unclear: string[];
  validFailures: string[];
  unavailable?: string;
}
interface Ran {
  out: Batch | null;
  signal: NodeJS.Signals | null;
  code: number | null;
  hung: boolean;
  stderr: string;
}

function runBatch(kind: string, seed: number, runs: number, timeoutMs: number): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CHILD, kind, String(seed), String(runs)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '',
      stderr = '',
      hung = false;
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr = (stderr + d).slice(-4000);
    });
    const timer = setTimeout(() => {
      hung = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      let out: Batch | null = null;
      try {
        out = JSON.parse(stdout.trim().split('\n').pop() ?? '');
      } catch {
        /* a crash leaves no JSON */
      }
      resolve({ out, signal: hung ? null : signal, code, hung, stderr });
    });
  });
}

const summary: string[] = [];

for (const p of PLAN) {
  if (ONLY && !ONLY.has(p.kind)) continue;
  test(`fuzz: argument checking of every public op [${p.kind}]`, { timeout: p.batches * p.timeoutMs + 30_000 }, async (t) => {
    const tot = {
      calls: 0,
      valid: 0,
      invalid: 0,
      refChecked: 0,
      crashes: 0,
      hangs: 0,
      silent: [] as string[],
      unclear: [] as string[],
      validFail: [] as string[],
      other: [] as string[],
    };
    const per = Math.ceil(p.calls / p.batches);
    for (let b = 0; b < p.batches; b++) {
      const r = await runBatch(p.kind, 1000 + b, per, p.timeoutMs);
      if (r.out?.unavailable !== undefined) {
        if (REQUIRED.has(p.kind)) assert.fail(`required backend ${p.kind} is unavailable: ${r.out.unavailable}`);
        t.skip(`${p.kind} unavailable: ${r.out.unavailable}`);
        return;
      }
      if (r.hung) tot.hangs++;
      else if (r.signal) tot.crashes++;
      else if (r.code !== 0 || !r.out) tot.other.push(`batch ${b}: exit ${r.code}: ${r.stderr.slice(-800)}`);
      if (!r.out) continue;
      tot.calls += r.out.calls;
      tot.valid += r.out.valid;
      tot.invalid += r.out.invalid;
      tot.refChecked += r.out.refChecked;
      tot.silent.push(...r.out.silentAccepts);
      tot.unclear.push(...r.out.unclear);
      tot.validFail.push(...r.out.validFailures);
    }
    const line =
      `fuzz ${p.kind}: ${tot.calls} calls (${tot.valid} valid, ${tot.refChecked} checked vs reference or finite; ${tot.invalid} invalid), ` +
      `${tot.crashes} crashes, ${tot.hangs} hangs, ${tot.silent.length} silent accepts, ${tot.unclear.length} unclear errors, ${tot.validFail.length} valid calls failing`;
    summary.push(line);
    t.diagnostic(line);
    console.log(line);
    assert.equal(tot.crashes, 0, 'signal deaths');
    assert.equal(tot.hangs, 0, 'hangs');
    assert.deepEqual(tot.other, [], 'batches that failed otherwise');
    assert.deepEqual(tot.silent, [], 'invalid calls that did not throw');
    assert.deepEqual(tot.unclear, [], 'errors that are not a MoteError naming the argument');
    assert.deepEqual(tot.validFail, [], 'valid calls that threw or gave wrong output');
    assert.ok(tot.calls >= p.calls, `ran ${tot.calls} of ${p.calls} calls`);
  });
}
