// Hostile values in the options objects of the high-level entries (generate and its requests,
// loadModel, openChat, MoteChat.ask): every (field, value) pair is tried, exhaustively. A value
// the field cannot take must be refused with a MoteError naming the field, quickly; a value it
// can take must run or be refused with a MoteError — never a TypeError/RangeError from deep
// inside, never a hang. Runs on cpu (the checks are backend-independent TypeScript).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { backendFor, closeBackends } from './helpers.js';
import { MoteError } from '../src/errors.js';
import type { Backend } from '../src/backend/backend.js';
import type { LlamaModel } from '../src/model/llama.js';
import { loadModel } from '../src/model/load.js';
import { DEFAULT_MODEL_DIR } from '../src/mote/default_model.js';
import { generate, type GenerateOptions, type GenerateRequest } from '../src/generate/generate.js';
import { openChat, type MoteChat } from '../src/generate/chat.js';

after(closeBackends);

/** What a field accepts; anything else must be refused naming the field. */
type Kind =
  | { t: 'int'; lo: number; hi: number }
  | { t: 'bool' }
  | { t: 'fn' }
  | { t: 'signal' }
  | { t: 'enum'; of: readonly unknown[] }
  | { t: 'ints'; lo: number; hi: number; nonEmpty?: boolean }
  | { t: 'accepts'; ok: (v: unknown) => boolean };

const HOSTILE: readonly unknown[] = [
  null,
  NaN,
  Infinity,
  -Infinity,
  -1,
  0,
  0.5,
  1,
  3,
  2 ** 31,
  2 ** 53,
  1e30,
  -0,
  '',
  'x',
  '3',
  true,
  false,
  {},
  [],
  [1],
  [NaN],
  [-1],
  [0.5],
  [2 ** 40],
  ['a'],
  () => 1,
  Symbol('s'),
  10n,
  new Map(),
  new Map([[NaN, 1]]),
  new AbortController().signal,
  { temperature: -1 },
  { temperature: 1, topK: 0.5 },
  { step: 0, at: 0 },
  [{ step: 99, at: 0 }],
];

/** Of the hostile values, only the empty plain object is a valid options object (every field defaulted). */
const EMPTY_OPTIONS: Kind = {
  t: 'accepts',
  ok: (v) =>
    typeof v === 'object' &&
    v !== null &&
    !Array.isArray(v) &&
    !(v instanceof Map) &&
    !(v instanceof AbortSignal) &&
    Object.keys(v).length === 0,
};

function valid(k: Kind, v: unknown): boolean {
  switch (k.t) {
    case 'int':
      return typeof v === 'number' && Number.isSafeInteger(v) && v >= k.lo && v <= k.hi;
    case 'bool':
      return typeof v === 'boolean';
    case 'fn':
      return typeof v === 'function';
    case 'signal':
      return v instanceof AbortSignal;
    case 'enum':
      return k.of.includes(v);
    case 'ints':
      return Array.isArray(v) && (!k.nonEmpty || v.length > 0) && v.every((x) => valid({ t: 'int', lo: k.lo, hi: k.hi }, x));
    case 'accepts':
      return k.ok(v);
  }
}

const describeValue = (v: unknown): string =>
  typeof v === 'number'
    ? Object.is(v, -0)
      ? '-0'
      : String(v)
    : Array.isArray(v)
      ? `[${v.map(describeValue).join(', ')}]`
      : typeof v === 'symbol'
        ? v.toString()
        : typeof v === 'bigint'
          ? `${v}n`
          : typeof v === 'function'
            ? 'function'
            : v instanceof Map
              ? `Map(${v.size})`
              : v instanceof AbortSignal
                ? 'AbortSignal'
                : (JSON.stringify(v) ?? String(v));

interface Tally {
  tried: number;
  refused: number;
  ran: number;
  problems: string[];
}

/**
 * Runs `call` with each hostile value at `field`; checks the outcome against `kind`. For an
 * optional field (the default) null may mean "absent" (as `??` reads it) or be refused.
 */
async function probe(
  tally: Tally,
  entry: string,
  field: string,
  kind: Kind,
  call: (v: unknown) => Promise<unknown>,
  required = false,
  alsoNamed: readonly string[] = [],
): Promise<void> {
  for (const v of HOSTILE) {
    tally.tried++;
    const what = `${entry}: ${field} = ${describeValue(v)}`;
    if (process.env.MOTE_FUZZ_VERBOSE) process.stderr.write(`${what}\n`);
    const t0 = performance.now();
    let err: unknown = null;
    try {
      await call(v);
    } catch (e) {
      err = e;
    }
    const ms = performance.now() - t0;
    if (ms > 10_000) tally.problems.push(`${what}: took ${ms.toFixed(0)} ms`);
    const name = field
      .split('.')
      .pop()!
      .replace(/\[\d+\]$/, '');
    if (err === null) {
      tally.ran++;
      if (!valid(kind, v) && !(v === null && !required)) tally.problems.push(`${what}: accepted`);
    } else {
      tally.refused++;
      if (!(err instanceof MoteError)) tally.problems.push(`${what}: ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`);
      else if (!valid(kind, v) && !(v === null && !required) && ![name, ...alsoNamed].some((n) => (err as Error).message.includes(n)))
        tally.problems.push(`${what}: the error does not name '${name}': ${(err as Error).message}`);
    }
  }
}

let backend: Backend;
let model: LlamaModel;
before(async () => {
  const b = await backendFor('cpu');
  if (typeof b === 'string') return;
  backend = b;
  model = await loadModel(DEFAULT_MODEL_DIR, { backend });
});
after(() => model?.dispose());

test('options fuzz: generate requests and options, loadModel, openChat, MoteChat.ask [cpu]', { timeout: 600_000 }, async (t) => {
  if (!model) return t.skip('cpu backend unavailable');
  const tally: Tally = { tried: 0, refused: 0, ran: 0, problems: [] };
  const V = model.config.vocabSize;
  const req = (): GenerateRequest => ({ prompt: [1, 5, 9], maxNewTokens: 2 });
  const gen = (r: GenerateRequest, o: GenerateOptions = {}) => generate(model, [r], o);

  // GenerateRequest fields (on a copy of a valid request, one field replaced).
  const reqFields: [string, Kind][] = [
    ['prompt', { t: 'ints', lo: 0, hi: V - 1, nonEmpty: true }],
    ['maxNewTokens', { t: 'int', lo: 0, hi: 2 ** 31 }],
    ['stop', { t: 'ints', lo: 0, hi: V - 1 }],
    ['seed', { t: 'int', lo: 0, hi: 2 ** 32 - 1 }],
    ['skipSteps', { t: 'ints', lo: 0, hi: 2 ** 31 }],
    ['stopAfterStep', { t: 'int', lo: 0, hi: 2 ** 31 }],
    ['force', { t: 'accepts', ok: (v) => Array.isArray(v) && v.length === 0 }],
    ['routing', { t: 'fn' }],
    ['sampling', EMPTY_OPTIONS],
  ];
  for (const [f, k] of reqFields) {
    // maxNewTokens: large valid values would decode to the context end; keep the run short.
    await probe(
      tally,
      'generate request',
      f,
      k,
      (v) => gen({ ...req(), [f]: v, ...(f === 'maxNewTokens' || typeof v !== 'number' || v <= 3 ? {} : { maxNewTokens: 2 }) }),
      f === 'prompt' || f === 'maxNewTokens',
    );
  }
  for (const [f, k] of [
    ['temperature', { t: 'accepts', ok: (v) => typeof v === 'number' && v >= 0 && Number.isFinite(v) }],
    ['topK', { t: 'accepts', ok: (v) => v === Infinity || (typeof v === 'number' && Number.isSafeInteger(v) && v >= 1) }],
    ['topP', { t: 'accepts', ok: (v) => typeof v === 'number' && v > 0 && v <= 1 }],
  ] as [string, Kind][]) {
    await probe(tally, 'generate request', `sampling.${f}`, k, (v) => gen({ ...req(), sampling: { temperature: 1, [f]: v } }));
  }
  // GenerateOptions fields.
  const optFields: [string, Kind][] = [
    ['onToken', { t: 'fn' }],
    ['returnLogits', { t: 'bool' }],
    ['stepTokenRouting', { t: 'enum', of: ['previous', 'own'] }],
    ['cacheCapacity', { t: 'int', lo: 1, hi: 2 ** 31 }],
    ['signal', { t: 'signal' }],
    [
      'stepTokens',
      {
        t: 'accepts',
        ok: (v) =>
          v instanceof Map && [...v].every(([a, b]) => Number.isSafeInteger(a) && a >= 0 && a < V && Number.isSafeInteger(b) && b >= 0),
      },
    ],
    ['router', { t: 'accepts', ok: () => false }],
  ];
  for (const [f, k] of optFields) await probe(tally, 'generate options', f, k, (v) => gen(req(), { [f]: v } as GenerateOptions));
  // The whole options / request list.
  await probe(tally, 'generate', 'opts', EMPTY_OPTIONS, (v) => generate(model, [req()], v as GenerateOptions));
  await probe(
    tally,
    'generate',
    'requests',
    { t: 'accepts', ok: (v) => Array.isArray(v) && v.length === 0 },
    (v) => generate(model, v as GenerateRequest[]),
    true,
  );

  // loadModel options.
  await probe(tally, 'loadModel', 'dtype', { t: 'enum', of: ['f32', 'f16', 'bf16'] }, async (v) =>
    (await loadModel(DEFAULT_MODEL_DIR, { backend, dtype: v as 'f32' })).dispose(),
  );
  await probe(
    tally,
    'loadModel',
    'backend',
    { t: 'accepts', ok: () => false },
    async (v) => (await loadModel(DEFAULT_MODEL_DIR, { backend: v as Backend })).dispose(),
    true,
  );
  await probe(
    tally,
    'loadModel',
    'options',
    { t: 'accepts', ok: () => false },
    async (v) => (await loadModel(DEFAULT_MODEL_DIR, v as { backend: Backend })).dispose(),
    true,
    ['backend'],
  );

  // openChat options and MoteChat.ask options.
  for (const [f, k] of [
    ['model', { t: 'accepts', ok: () => false }],
    ['mote', { t: 'accepts', ok: () => false }],
    ['dtype', { t: 'enum', of: ['f32', 'f16', 'bf16'] }],
    ['backend', { t: 'accepts', ok: () => false }],
  ] as [string, Kind][]) {
    await probe(tally, 'openChat', f, k, async (v) => (await openChat({ backend, [f]: v })).dispose());
  }
  const chat: MoteChat = await openChat({ backend });
  try {
    const askFields: [string, Kind][] = [
      ['maxNewTokens', { t: 'int', lo: 1, hi: 2 ** 31 }],
      ['seed', { t: 'int', lo: 0, hi: 2 ** 32 - 1 }],
      ['firstStep', { t: 'enum', of: chat.steps }],
      ['stopAfter', { t: 'enum', of: chat.steps }],
      ['skip', { t: 'accepts', ok: (v) => Array.isArray(v) && v.length === 0 }],
      ['signal', { t: 'signal' }],
      ['sampling', EMPTY_OPTIONS],
    ];
    for (const [f, k] of askFields) {
      await probe(tally, 'MoteChat.ask', f, k, (v) =>
        chat.ask('hello', {
          maxNewTokens: 2,
          [f]: v,
          ...(f === 'maxNewTokens' && typeof v === 'number' && v > 3 ? { signal: AbortSignal.abort() } : {}),
        }),
      );
    }
    await probe(
      tally,
      'MoteChat.ask',
      'question',
      { t: 'accepts', ok: (v) => typeof v === 'string' && v.trim() !== '' },
      (v) => chat.ask(v as string, { maxNewTokens: 1 }),
      true,
    );
  } finally {
    chat.dispose();
  }
  t.diagnostic(`options fuzz: ${tally.tried} calls, ${tally.refused} refused, ${tally.ran} ran, ${tally.problems.length} problems`);
  assert.deepEqual(tally.problems, []);
});
