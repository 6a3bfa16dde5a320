// Hostile numbers and types at every number argument of the native addon (issue 10).
// Each call runs in a child process (this file, with MOTE_SAFETY_CHILD set), so a native
// fault is counted as a signal death instead of killing the runner. Every hostile call must
// throw a JS error whose message names the argument; none may kill the process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { loadAddon, type Addon } from '../src/backend/native.js';

/** One call: the binding, its argument list with one position replaced, and the name the error must carry. */
interface Case {
  fn: string;
  /** position of the replaced argument, or the field of the args object (lora*, attention*) */
  at: number | string;
  value: string; // key into HOSTILE
  expect: string; // the argument name the message must contain, followed by ':'
}

const HOSTILE: Record<string, unknown> = {
  NaN: NaN, Infinity: Infinity, '-Infinity': -Infinity, '1e30': 1e30, '2^62': 2 ** 62, '2^53+1': 2 ** 53 + 1,
  '-1': -1, '-0.5': -0.5, '1.5': 1.5, string: '3', undefined: undefined, object: {}, bigint: 1n,
};
const INTEGER_VALUES = Object.keys(HOSTILE);
// Scalars where any finite value is legal: only non-numbers and non-finite values are hostile.
const FLOAT_VALUES = ['NaN', 'Infinity', '-Infinity', 'string', 'undefined', 'object', 'bigint'];
// A present byte offset: undefined means "no offset", which is legal.
const OFFSET_VALUES = INTEGER_VALUES.filter((v) => v !== 'undefined');

const BUF_BYTES = 256;

/** Builds a valid argument list (small dims, buffers of valid contents) for each binding. */
function goodArgs(addon: Addon, fn: string): unknown[] {
  const buf = (fill: 'zero' | 'one' | 'minus1' = 'zero') => {
    const b = addon.alloc(0, BUF_BYTES);
    const data = new Int32Array(BUF_BYTES / 4).fill(fill === 'one' ? 1 : fill === 'minus1' ? -1 : 0);
    addon.write(b, new Uint8Array(data.buffer));
    return b;
  };
  const lora = () => ({
    slots: buf('minus1'), weight: buf(), order: buf(), segStart: buf(), segAdapter: buf(), A: buf(), B: buf(), rank: buf('one'), scale: buf(),
    T: 1, K: 1, L: 1, R: 1, Hin: 1, Hout: 1, P: 0, G: 0, aDtype: 0, bDtype: 0, strategy: 0,
  });
  const attn = () => ({ qSeq: buf(), qPos: buf(), kSeq: buf(), kPos: buf(), qSeg: buf(), kSeg: buf(), blocked: buf(), Tq: 1, Tk: 1, nH: 1, nKv: 1, D: 1, S: 0, numSeqs: 0, scale: 1 });
  const b = buf;
  switch (fn) {
    case 'alloc': return [0, 64];
    case 'write': case 'read': return [b(), new Uint8Array(8), 0];
    case 'copy': return [b(), b(), 4];
    case 'sync': return [0];
    case 'setThreads': return [1];
    case 'matmul': case 'matmulGradInput': return [b(), b(), b(), 0, 1, 1, 1, false];
    case 'matmulGradWeight': return [b(), b(), b(), 1, 1, 1, false];
    case 'embedding': return [b(), b(), b(), 0, 1, 1, 1];
    case 'embeddingGrad': return [b(), b(), b(), b(), b(), 0, 1, 1, 1, false];
    case 'rmsnorm': return [b(), b(), b(), b(), 0, 1, 1, 1e-5];
    case 'rmsnormGrad': return [b(), b(), b(), b(), b(), 0, b(), 1, 1, false];
    case 'rope': return [b(), b(), b(), b(), 1, 1, 2, false];
    case 'attention': return [attn(), b(), b(), b(), b(), b()];
    case 'attentionGrad': return [attn(), b(), b(), b(), b(), b(), b(), b(), b(), b()];
    case 'swiglu': case 'add': return [b(), b(), b(), 4];
    case 'swigluGrad': return [b(), b(), b(), b(), b(), 4];
    case 'logSoftmax': return [b(), b(), 1, 1];
    case 'xent': return [b(), b(), b(), b(), b(), 1, 1];
    case 'xentGrad': return [b(), b(), b(), b(), b(), 1, 1, 1];
    case 'adamw': return [b(), b(), b(), b(), 4, 1e-3, 0.9, 0.999, 1e-8, 0, 0.5, 0.5, 1];
    case 'sumSquares': return [b(), b(), 4];
    case 'copyRows': return [b(), b(), b(), b(), 0, 1, 1];
    default: {
      // lora*(args, buffers..., accumulate?) : loraInputGrad and loraWeightGrad end with the flag
      const n = LORA_ARITY[fn]!;
      const flag = fn === 'loraInputGrad' || fn === 'loraWeightGrad';
      return [lora(), ...Array.from({ length: n - 1 - (flag ? 1 : 0) }, () => b()), ...(flag ? [false] : [])];
    }
  }
}

const LORA_ARITY: Record<string, number> = { loraShrink: 3, loraExpand: 3, loraApply: 4, loraShrinkGrad: 3, loraInputGrad: 4, loraWeightGrad: 8 };

/** The number arguments of each binding: position (or args field) → name and kind. */
const NUMBER_ARGS: Record<string, [number | string, string, 'int' | 'float' | 'offset'][]> = {
  alloc: [[0, 'device', 'int'], [1, 'bytes', 'int']],
  write: [[2, 'byteOffset', 'offset']],
  read: [[2, 'byteOffset', 'offset']],
  copy: [[2, 'n', 'int']],
  sync: [[0, 'device', 'int']],
  setThreads: [[0, 'threads', 'int']],
  matmul: [[3, 'wdtype', 'int'], [4, 'T', 'int'], [5, 'K', 'int'], [6, 'N', 'int']],
  matmulGradInput: [[3, 'wdtype', 'int'], [4, 'T', 'int'], [5, 'K', 'int'], [6, 'N', 'int']],
  matmulGradWeight: [[3, 'T', 'int'], [4, 'K', 'int'], [5, 'N', 'int']],
  embedding: [[3, 'edtype', 'int'], [4, 'T', 'int'], [5, 'V', 'int'], [6, 'H', 'int']],
  embeddingGrad: [[5, 'G', 'int'], [6, 'T', 'int'], [7, 'V', 'int'], [8, 'H', 'int']],
  rmsnorm: [[4, 'wdtype', 'int'], [5, 'T', 'int'], [6, 'H', 'int'], [7, 'eps', 'float']],
  rmsnormGrad: [[5, 'wdtype', 'int'], [7, 'T', 'int'], [8, 'H', 'int']],
  rope: [[4, 'T', 'int'], [5, 'heads', 'int'], [6, 'D', 'int']],
  swiglu: [[3, 'n', 'int']],
  swigluGrad: [[5, 'n', 'int']],
  add: [[3, 'n', 'int']],
  logSoftmax: [[2, 'T', 'int'], [3, 'V', 'int']],
  xent: [[5, 'T', 'int'], [6, 'V', 'int']],
  xentGrad: [[5, 'scale', 'float'], [6, 'T', 'int'], [7, 'V', 'int']],
  adamw: [[4, 'n', 'int'], ...(['lr', 'beta1', 'beta2', 'eps', 'weightDecay', 'bc1', 'bc2', 'gradScale'] as const).map((n, i) => [5 + i, n, 'float'] as [number, string, 'float'])],
  sumSquares: [[2, 'n', 'int']],
  copyRows: [[4, 'dtype', 'int'], [5, 'N', 'int'], [6, 'W', 'int']],
};
for (const fn of ['attention', 'attentionGrad']) {
  NUMBER_ARGS[fn] = [...['Tq', 'Tk', 'nH', 'nKv', 'D', 'S', 'numSeqs'].map((f) => [f, `args.${f}`, 'int'] as [string, string, 'int']), ['scale', 'args.scale', 'float']];
}
for (const fn of Object.keys(LORA_ARITY)) {
  NUMBER_ARGS[fn] = ['T', 'K', 'L', 'R', 'Hin', 'Hout', 'P', 'G', 'aDtype', 'bDtype', 'strategy'].map((f) => [f, `args.${f}`, 'int'] as [string, string, 'int']);
}

function hostileCases(): Case[] {
  const cases: Case[] = [];
  for (const [fn, args] of Object.entries(NUMBER_ARGS)) {
    for (const [at, name, kind] of args) {
      const values = kind === 'int' ? INTEGER_VALUES : kind === 'offset' ? OFFSET_VALUES : FLOAT_VALUES;
      for (const value of values) cases.push({ fn, at, value, expect: name });
    }
  }
  return cases;
}

/** Child mode: runs cases[from..] and prints one line per case; a fault ends the process mid-case. */
function runChild(cases: Case[], from: number): void {
  const { addon } = loadAddon();
  if (!addon) throw new Error('no addon');
  for (let i = from; i < cases.length; i++) {
    const c = cases[i]!;
    writeSync(1, `start ${i}\n`); // synchronous: a fault right after still leaves the line
    const args = goodArgs(addon, c.fn);
    if (typeof c.at === 'number') args[c.at] = HOSTILE[c.value];
    else (args[0] as Record<string, unknown>)[c.at] = HOSTILE[c.value];
    let outcome: string;
    try {
      (addon[c.fn] as (...a: unknown[]) => unknown)(...args);
      outcome = 'returned';
    } catch (e) {
      outcome = 'threw ' + String((e as Error).message).replace(/\n/g, ' ');
    }
    writeSync(1, `done ${i} ${outcome}\n`);
  }
}

interface Outcome { c: Case; result: string }

/** Runs the cases in child processes, restarting after each signal death. */
function runAll(cases: Case[], extraEnv: Record<string, string> = {}): { outcomes: Outcome[]; deaths: Outcome[] } {
  const outcomes: Outcome[] = [];
  const deaths: Outcome[] = [];
  let from = 0;
  while (from < cases.length) {
    const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url)], {
      env: { ...process.env, ...extraEnv, MOTE_SAFETY_CHILD: JSON.stringify({ cases, from }) },
      encoding: 'utf8', timeout: 60_000, maxBuffer: 64 << 20,
    });
    let last = from - 1;
    for (const line of r.stdout.split('\n')) {
      const m = /^done (\d+) (.*)$/.exec(line);
      if (m) {
        last = Number(m[1]);
        outcomes.push({ c: cases[last]!, result: m[2]! });
      }
    }
    if (last === cases.length - 1 && r.status === 0) break;
    // the case after the last finished one killed (or hung) the child
    const bad = cases[last + 1]!;
    deaths.push({ c: bad, result: `signal ${r.signal} status ${r.status} ${r.error?.message ?? ''} ${r.stderr.slice(-300)}` });
    from = last + 2;
  }
  return { outcomes, deaths };
}

const childSpec = process.env.MOTE_SAFETY_CHILD;
if (childSpec) {
  const { cases, from } = JSON.parse(childSpec) as { cases: Case[]; from: number };
  runChild(cases, from);
  process.exit(0);
}

const { addon, reason } = loadAddon();

test('native addon: hostile numbers at every number argument throw an error naming it, none kills the process', { skip: addon ? false : reason }, () => {
  const cases = hostileCases();
  const { outcomes, deaths } = runAll(cases);
  const describe = (o: Outcome) => `${o.c.fn}(${typeof o.c.at === 'number' ? `#${o.c.at}` : `args.${o.c.at}`} = ${o.c.value}): ${o.result}`;
  assert.equal(deaths.length, 0, `${deaths.length} calls killed the process:\n${deaths.slice(0, 20).map(describe).join('\n')}`);
  const wrong = outcomes.filter((o) => !o.result.startsWith('threw ') || !o.result.includes(`${o.c.expect}:`));
  assert.equal(wrong.length, 0, `${wrong.length} of ${outcomes.length} calls did not throw an error naming the argument:\n${wrong.slice(0, 30).map(describe).join('\n')}`);
  assert.equal(outcomes.length, cases.length);
});

test('native addon: valid calls with the same builders succeed (the hostile cases differ only in the one argument)', { skip: addon ? false : reason }, () => {
  for (const fn of Object.keys(NUMBER_ARGS)) {
    if (fn === 'setThreads') continue; // would change the thread count of this process
    const args = goodArgs(addon!, fn);
    assert.doesNotThrow(() => (addon![fn] as (...a: unknown[]) => unknown)(...args), fn);
  }
});

test('native addon: dims whose byte size overflows size_t, buffers of the wrong type and too-small buffers throw naming the argument', { skip: addon ? false : reason }, () => {
  const a = addon!;
  const small = a.alloc(0, 64);
  const big = 2 ** 31 - 1;
  const cases: [string, () => unknown, string][] = [
    // T·N·4 = 2^64 − … wraps to a small number in size_t: must be refused, not passed to the kernel
    ['matmul overflow', () => a.matmul(small, small, small, 0, big, big, big, false), 'y:'],
    ['rope overflow', () => a.rope(small, small, small, small, big, big, 2 ** 30, false), 'y:'],
    ['lora L·R·Hin overflow', () => a.loraShrink({ ...goodArgs(a, 'loraShrink')[0] as object, L: 2 ** 21, R: 2 ** 21, Hin: 2 ** 23 } as never, small, small), 'args.L·R·Hin'],
    ['attention Tq·nH·D overflow', () => a.attention({ ...goodArgs(a, 'attention')[0] as object, Tq: big, nH: big, nKv: 1, D: big } as never, small, small, small, small, small), 'args.Tq·nH·D'],
    ['copy too small', () => a.copy(small, small, 17), 'dst:'],
    ['write past the end', () => a.write(small, new Uint8Array(8), 60), 'buffer:'],
    ['read past the end', () => a.read(small, new Uint8Array(65)), 'buffer:'],
    ['copy dst a string', () => a.copy('x' as never, small, 1), 'dst:'],
    ['write data not a typed array', () => a.write(small, [1, 2] as never), 'data:'],
    ['read buffer undefined', () => a.read(undefined as never, new Uint8Array(4)), 'buffer:'],
    ['matmul accumulate missing', () => (a.matmul as (...x: unknown[]) => void)(small, small, small, 0, 1, 1, 1), 'accumulate:'],
    ['alloc 2^53 bytes', () => a.alloc(0, 2 ** 53), 'bytes:'],
  ];
  for (const [what, call, name] of cases) {
    assert.throws(call, (e: Error) => e.message.includes(name), `${what}: expected an error naming ${name}`);
  }
  a.free(small);
});

test('native backend: a hostile count through the TS layer becomes a NativeError naming the argument', { skip: addon ? false : reason }, async () => {
  const { NativeBackend } = await import('../src/backend/native.js');
  const { NativeError } = await import('../src/errors.js');
  const be = NativeBackend.open('cpu');
  const t = be.tensor(new Float32Array(4), [4]);
  for (const n of [NaN, 1e30, -1, 2 ** 62, 1.5]) {
    assert.throws(() => be.copy(t, t, n), (e: Error) => e instanceof NativeError && /copy: n: expected an integer/.test(e.message), `copy n = ${n}`);
  }
  t.dispose();
});
