// Hostile numbers and types at every number argument of the native addon (issue 10).
// Each call runs in a child process (this file, with MOTE_SAFETY_CHILD set), so a native
// fault is counted as a signal death instead of killing the runner. Every hostile call must
// throw a JS error whose message names the argument; none may kill the process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { loadAddon, NativeBackend, type Addon } from '../src/backend/native.js';

/** One call: the binding, its argument list with one position replaced, and the name the error must carry. */
interface Case {
  fn: string;
  /** position of the replaced argument, or the field of the args object (lora*, attention*) */
  at: number | string;
  value: string; // key into HOSTILE
  expect: string; // the argument name the message must contain, followed by ':'
}

const HOSTILE: Record<string, unknown> = {
  NaN: NaN,
  Infinity: Infinity,
  '-Infinity': -Infinity,
  '1e30': 1e30,
  '2^62': 2 ** 62,
  '2^53+1': 2 ** 53 + 1,
  '-1': -1,
  '-0.5': -0.5,
  '1.5': 1.5,
  string: '3',
  undefined: undefined,
  object: {},
  bigint: 1n,
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
    slots: buf('minus1'),
    weight: buf(),
    order: buf(),
    segStart: buf(),
    segAdapter: buf(),
    A: buf(),
    B: buf(),
    rank: buf('one'),
    scale: buf(),
    T: 1,
    K: 1,
    L: 1,
    R: 1,
    Hin: 1,
    Hout: 1,
    P: 0,
    G: 0,
    aDtype: 0,
    bDtype: 0,
    strategy: 0,
  });
  const attn = () => ({
    qSeq: buf(),
    qPos: buf(),
    kSeq: buf(),
    kPos: buf(),
    qSeg: buf(),
    kSeg: buf(),
    blocked: buf(),
    ranges: buf(),
    numRuns: 0,
    Tq: 1,
    Tk: 1,
    nH: 1,
    nKv: 1,
    D: 1,
    S: 0,
    numSeqs: 0,
    scale: 1,
  });
  const b = buf;
  switch (fn) {
    case 'alloc':
      return [0, 64];
    case 'write':
    case 'read':
      return [b(), new Uint8Array(8), 0];
    case 'copy':
      return [b(), b(), 4];
    case 'sync':
      return [0];
    case 'setThreads':
      return [1];
    case 'matmul':
    case 'matmulGradInput':
      return [b(), b(), b(), 0, 1, 1, 1, false];
    case 'matmulGradWeight':
      return [b(), b(), b(), 1, 1, 1, false];
    case 'embedding':
      return [b(), b(), b(), 0, 1, 1, 1];
    case 'embeddingGrad':
      return [b(), b(), b(), b(), b(), 0, 1, 1, 1, false];
    case 'rmsnorm':
      return [b(), b(), b(), b(), 0, 1, 1, 1e-5];
    case 'rmsnormGrad':
      return [b(), b(), b(), b(), b(), 0, b(), 1, 1, false];
    case 'rope':
      return [b(), b(), b(), b(), 1, 1, 2, false];
    case 'attention':
      return [attn(), b(), b(), b(), b(), b()];
    case 'attentionGrad':
      return [attn(), b(), b(), b(), b(), b(), b(), b(), b(), b()];
    case 'swiglu':
    case 'add':
      return [b(), b(), b(), 4];
    case 'swigluGrad':
      return [b(), b(), b(), b(), b(), 4];
    case 'logSoftmax':
      return [b(), b(), 1, 1];
    case 'xent':
      return [b(), b(), b(), b(), b(), 1, 1];
    case 'xentGrad':
      return [b(), b(), b(), b(), b(), 1, 1, 1];
    case 'adamw':
      return [b(), b(), b(), b(), 4, 1e-3, 0.9, 0.999, 1e-8, 0, 0.5, 0.5, 1];
    case 'sumSquares':
      return [b(), b(), 4];
    case 'copyRows':
      return [b(), b(), b(), b(), 0, 1, 1];
    case 'loraRoutingHandle':
      return [{ slots: buf('minus1'), weight: buf(), order: buf(), segStart: buf(), segAdapter: buf(), T: 1, K: 1, L: 1, P: 0, G: 0 }];
    case 'loraStackHandle':
      return [{ A: buf(), B: buf(), rank: buf('one'), scale: buf(), L: 1, R: 1, Hin: 1, Hout: 1, aDtype: 0, bDtype: 0 }];
    case 'loraRun': {
      // shrink (op 0) of the two prepared halves: v, x
      const { routing, stack } = handles(addon);
      return [0, routing, stack, 0, false, b(), b()];
    }
    default: {
      // lora*(args, buffers..., accumulate?) : loraInputGrad and loraWeightGrad end with the flag
      const n = LORA_ARITY[fn]!;
      const flag = fn === 'loraInputGrad' || fn === 'loraWeightGrad';
      return [lora(), ...Array.from({ length: n - 1 - (flag ? 1 : 0) }, () => b()), ...(flag ? [false] : [])];
    }
  }
}

const LORA_ARITY: Record<string, number> = {
  loraShrink: 3,
  loraExpand: 3,
  loraApply: 4,
  loraShrinkGrad: 3,
  loraInputGrad: 4,
  loraWeightGrad: 8,
};

/** A valid routing handle and stack handle (L = 1, R = 1, H = 1, one empty slot). */
function handles(addon: Addon, L = 1): { routing: object; stack: object } {
  const [r] = goodArgs(addon, 'loraRoutingHandle') as [Record<string, unknown>];
  const [s] = goodArgs(addon, 'loraStackHandle') as [Record<string, unknown>];
  return { routing: addon.loraRoutingHandle({ ...r, L } as never), stack: addon.loraStackHandle(s as never) };
}

/** The number arguments of each binding: position (or args field) → name and kind. */
const NUMBER_ARGS: Record<string, [number | string, string, 'int' | 'float' | 'offset'][]> = {
  alloc: [
    [0, 'device', 'int'],
    [1, 'bytes', 'int'],
  ],
  write: [[2, 'byteOffset', 'offset']],
  read: [[2, 'byteOffset', 'offset']],
  copy: [[2, 'n', 'int']],
  sync: [[0, 'device', 'int']],
  setThreads: [[0, 'threads', 'int']],
  matmul: [
    [3, 'wdtype', 'int'],
    [4, 'T', 'int'],
    [5, 'K', 'int'],
    [6, 'N', 'int'],
  ],
  matmulGradInput: [
    [3, 'wdtype', 'int'],
    [4, 'T', 'int'],
    [5, 'K', 'int'],
    [6, 'N', 'int'],
  ],
  matmulGradWeight: [
    [3, 'T', 'int'],
    [4, 'K', 'int'],
    [5, 'N', 'int'],
  ],
  embedding: [
    [3, 'edtype', 'int'],
    [4, 'T', 'int'],
    [5, 'V', 'int'],
    [6, 'H', 'int'],
  ],
  embeddingGrad: [
    [5, 'G', 'int'],
    [6, 'T', 'int'],
    [7, 'V', 'int'],
    [8, 'H', 'int'],
  ],
  rmsnorm: [
    [4, 'wdtype', 'int'],
    [5, 'T', 'int'],
    [6, 'H', 'int'],
    [7, 'eps', 'float'],
  ],
  rmsnormGrad: [
    [5, 'wdtype', 'int'],
    [7, 'T', 'int'],
    [8, 'H', 'int'],
  ],
  rope: [
    [4, 'T', 'int'],
    [5, 'heads', 'int'],
    [6, 'D', 'int'],
  ],
  swiglu: [[3, 'n', 'int']],
  swigluGrad: [[5, 'n', 'int']],
  add: [[3, 'n', 'int']],
  logSoftmax: [
    [2, 'T', 'int'],
    [3, 'V', 'int'],
  ],
  xent: [
    [5, 'T', 'int'],
    [6, 'V', 'int'],
  ],
  xentGrad: [
    [5, 'scale', 'float'],
    [6, 'T', 'int'],
    [7, 'V', 'int'],
  ],
  adamw: [
    [4, 'n', 'int'],
    ...(['lr', 'beta1', 'beta2', 'eps', 'weightDecay', 'bc1', 'bc2', 'gradScale'] as const).map(
      (n, i) => [5 + i, n, 'float'] as [number, string, 'float'],
    ),
  ],
  sumSquares: [[2, 'n', 'int']],
  copyRows: [
    [4, 'dtype', 'int'],
    [5, 'N', 'int'],
    [6, 'W', 'int'],
  ],
};
for (const fn of ['attention', 'attentionGrad']) {
  NUMBER_ARGS[fn] = [
    ...['Tq', 'Tk', 'nH', 'nKv', 'D', 'S', 'numSeqs', 'numRuns'].map((f) => [f, `args.${f}`, 'int'] as [string, string, 'int']),
    ['scale', 'args.scale', 'float'],
  ];
}
for (const fn of Object.keys(LORA_ARITY)) {
  NUMBER_ARGS[fn] = ['T', 'K', 'L', 'R', 'Hin', 'Hout', 'P', 'G', 'aDtype', 'bDtype', 'strategy'].map(
    (f) => [f, `args.${f}`, 'int'] as [string, string, 'int'],
  );
}

NUMBER_ARGS.loraRoutingHandle = ['T', 'K', 'L', 'P', 'G'].map((f) => [f, `args.${f}`, 'int'] as [string, string, 'int']);
NUMBER_ARGS.loraStackHandle = ['L', 'R', 'Hin', 'Hout', 'aDtype', 'bDtype'].map((f) => [f, `args.${f}`, 'int'] as [string, string, 'int']);
NUMBER_ARGS.loraRun = [
  [0, 'op', 'int'],
  [3, 'strategy', 'int'],
];

function hostileCases(): Case[] {
  const cases: Case[] = [];
  for (const [fn, args] of Object.entries(NUMBER_ARGS)) {
    for (const [at, name, kind] of args) {
      const values = kind === 'int' ? INTEGER_VALUES : kind === 'offset' ? OFFSET_VALUES : FLOAT_VALUES;
      for (const value of values) cases.push({ fn, at, value, expect: name });
    }
  }
  for (const [name, s] of Object.entries(SPECIAL)) cases.push({ fn: 'special', at: name, value: '', expect: s.expect });
  return cases;
}

/**
 * Calls beyond single hostile numbers, also run in the child (before the fix some of them
 * faulted): dims whose byte size wraps size_t, wrong types, too-small buffers, and the TS layer.
 */
const BIG = 2 ** 31 - 1;
const SPECIAL: Record<string, { call: (a: Addon) => unknown; expect: string }> = {
  // T·N·4 wraps to a small number in a 64-bit size_t: must be refused, not passed to the kernel
  'matmul T·N overflow': { call: (a) => a.matmul(a.alloc(0, 64), a.alloc(0, 64), a.alloc(0, 64), 0, BIG, BIG, BIG, false), expect: 'y' },
  'rope T·heads·D overflow': {
    call: (a) => a.rope(a.alloc(0, 64), a.alloc(0, 64), a.alloc(0, 64), a.alloc(0, 64), BIG, BIG, 2 ** 30, false),
    expect: 'y',
  },
  'lora L·R·Hin overflow': {
    call: (a) =>
      a.loraShrink(
        { ...(goodArgs(a, 'loraShrink')[0] as object), L: 2 ** 21, R: 2 ** 21, Hin: 2 ** 23 } as never,
        a.alloc(0, 64),
        a.alloc(0, 64),
      ),
    expect: 'args.L·R·Hin (dA)',
  },
  'attention Tq·nH·D overflow': {
    call: (a) =>
      a.attention(
        { ...(goodArgs(a, 'attention')[0] as object), Tq: BIG, nH: BIG, nKv: 1, D: BIG } as never,
        a.alloc(0, 64),
        a.alloc(0, 64),
        a.alloc(0, 64),
        a.alloc(0, 64),
        a.alloc(0, 64),
      ),
    expect: 'args.Tq·nH·D (q, out, dq, dOut)',
  },
  'copy too small': { call: (a) => a.copy(a.alloc(0, 64), a.alloc(0, 64), 17), expect: 'dst' },
  'write past the end': { call: (a) => a.write(a.alloc(0, 64), new Uint8Array(8), 60), expect: 'buffer' },
  'read past the end': { call: (a) => a.read(a.alloc(0, 64), new Uint8Array(65)), expect: 'buffer' },
  'copy dst a string': { call: (a) => a.copy('x' as never, a.alloc(0, 64), 1), expect: 'dst' },
  'write data not a typed array': { call: (a) => a.write(a.alloc(0, 64), [1, 2] as never), expect: 'data' },
  'read buffer undefined': { call: (a) => a.read(undefined as never, new Uint8Array(4)), expect: 'buffer' },
  'matmul accumulate missing': {
    call: (a) => (a.matmul as (...x: unknown[]) => void)(a.alloc(0, 64), a.alloc(0, 64), a.alloc(0, 64), 0, 1, 1, 1),
    expect: 'accumulate',
  },
  'alloc 2^53 bytes': { call: (a) => a.alloc(0, 2 ** 53), expect: 'bytes' },
  // the prepared lora halves: only handles of the right kind, of agreeing L, with live buffers
  'loraRun stack handle a buffer': {
    call: (a) => a.loraRun(0, handles(a).routing, a.alloc(0, 64), 0, false, a.alloc(0, 64), a.alloc(0, 64)),
    expect: 'loraStack',
  },
  'loraRun routing handle a plain object': {
    call: (a) => a.loraRun(0, {}, handles(a).stack, 0, false, a.alloc(0, 64), a.alloc(0, 64)),
    expect: 'loraRouting',
  },
  'loraRun halves swapped': {
    call: (a) => {
      const h = handles(a);
      return a.loraRun(0, h.stack, h.routing, 0, false, a.alloc(0, 64), a.alloc(0, 64));
    },
    expect: 'loraRouting',
  },
  'loraRun L differs': {
    call: (a) => {
      const h = handles(a, 2);
      return a.loraRun(0, h.routing, handles(a).stack, 0, false, a.alloc(0, 64), a.alloc(0, 64));
    },
    expect: 'routing',
  },
  'loraRun stack buffer freed': {
    call: (a) => {
      const [s] = goodArgs(a, 'loraStackHandle') as [Record<string, object>];
      const stack = a.loraStackHandle(s as never);
      a.free(s.A!);
      return a.loraRun(0, handles(a).routing, stack, 0, false, a.alloc(0, 64), a.alloc(0, 64));
    },
    expect: 'stack.A',
  },
  'loraRun x too small': {
    call: (a) => {
      const [s] = goodArgs(a, 'loraStackHandle') as [Record<string, unknown>];
      const stack = a.loraStackHandle({ ...s, Hin: 64 } as never); // A holds 64 floats: x needs 64 too
      return a.loraRun(0, handles(a).routing, stack, 0, false, a.alloc(0, 64), a.alloc(0, 64));
    },
    expect: 'x',
  },
  'free twice, then use': {
    call: (a) => {
      const b = a.alloc(0, 64);
      a.free(b);
      a.free(b);
      return a.copy(b, b, 1);
    },
    expect: 'dst',
  },
};
// the TS layer: NativeBackend.copy turns the addon's error into a NativeError that still names n
for (const n of [NaN, 1e30, -1, 2 ** 62, 1.5]) {
  SPECIAL[`backend copy n = ${n}`] = {
    call: () => {
      const be = NativeBackend.open('cpu');
      const t = be.tensor(new Float32Array(4), [4]);
      be.copy(t, t, n);
    },
    expect: 'NativeError: copy: n',
  };
}

/** Child mode: runs cases[from..] and prints one line per case; a fault ends the process mid-case. */
function runChild(cases: Case[], from: number): void {
  const { addon } = loadAddon();
  if (!addon) throw new Error('no addon');
  for (let i = from; i < cases.length; i++) {
    const c = cases[i]!;
    writeLine(`start ${i}\n`); // synchronous: a fault right after still leaves the line
    let outcome: string;
    try {
      if (c.fn === 'special') {
        SPECIAL[c.at]!.call(addon);
      } else {
        const args = goodArgs(addon, c.fn);
        if (typeof c.at === 'number') args[c.at] = HOSTILE[c.value];
        else (args[0] as Record<string, unknown>)[c.at] = HOSTILE[c.value];
        (addon[c.fn] as (...a: unknown[]) => unknown)(...args);
      }
      outcome = 'returned';
    } catch (e) {
      outcome =
        `threw ${(e as Error).name === 'Error' ? (e as Error).constructor.name : (e as Error).name}: ` +
        String((e as Error).message).replace(/\n/g, ' ');
    }
    writeLine(`done ${i} ${outcome}\n`);
  }
}

interface Outcome {
  c: Case;
  result: string;
}

/** Runs the cases in child processes, restarting after each signal death. */
function runAll(cases: Case[], extraEnv: Record<string, string> = {}): { outcomes: Outcome[]; deaths: Outcome[] } {
  const outcomes: Outcome[] = [];
  const deaths: Outcome[] = [];
  let from = 0;
  while (from < cases.length) {
    const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url)], {
      env: { ...process.env, ...extraEnv, MOTE_SAFETY_CHILD: JSON.stringify({ cases, from }) },
      encoding: 'utf8',
      timeout: 60_000,
      maxBuffer: 64 << 20,
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

/** writeSync to stdout, retried while a full non-blocking pipe says EAGAIN (Node 22+ makes the pipe non-blocking). */
function writeLine(line: string): void {
  const buf = Buffer.from(line);
  let off = 0;
  while (off < buf.length) {
    try {
      off += writeSync(1, buf, off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1); // the parent drains the pipe
    }
  }
}

const childSpec = process.env.MOTE_SAFETY_CHILD;
if (childSpec) {
  const { cases, from } = JSON.parse(childSpec) as { cases: Case[]; from: number };
  runChild(cases, from);
  process.exit(0);
}

const { addon, reason } = loadAddon();

test(
  'native addon: hostile numbers and types at every argument throw an error naming it, none kills the process',
  { skip: addon ? false : reason },
  () => {
    const cases = hostileCases();
    const { outcomes, deaths } = runAll(cases);
    const describe = (o: Outcome) =>
      o.c.fn === 'special'
        ? `${o.c.at}: ${o.result}`
        : `${o.c.fn}(${typeof o.c.at === 'number' ? `#${o.c.at}` : `args.${o.c.at}`} = ${o.c.value}): ${o.result}`;
    assert.equal(deaths.length, 0, `${deaths.length} calls killed the process:\n${deaths.slice(0, 20).map(describe).join('\n')}`);
    const wrong = outcomes.filter((o) => !o.result.startsWith('threw ') || !o.result.includes(`${o.c.expect}:`));
    assert.equal(
      wrong.length,
      0,
      `${wrong.length} of ${outcomes.length} calls did not throw an error naming the argument:\n${wrong.slice(0, 30).map(describe).join('\n')}`,
    );
    assert.equal(outcomes.length, cases.length);
  },
);

test(
  'native addon: valid calls with the same builders succeed (the hostile cases differ only in the one argument)',
  { skip: addon ? false : reason },
  () => {
    for (const fn of Object.keys(NUMBER_ARGS)) {
      if (fn === 'setThreads') continue; // would change the thread count of this process
      const args = goodArgs(addon!, fn);
      assert.doesNotThrow(() => (addon![fn] as (...a: unknown[]) => unknown)(...args), fn);
    }
  },
);
