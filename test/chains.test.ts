// The chain builder (src/mote/chains.ts) on the tiny HF tokenizer fixture with the step tags
// added as special tokens: token-by-token alignment of ids, stepIds and lossMask; truncation
// that drops whole trailing steps and never cuts a tag; the JSONL reader (both forms, errors
// naming file:line); packing (targets, mask, seq, pos per token).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { ArgumentError, FormatError } from '../src/errors.js';
import { loadTokenizer, type MoteTokenizer } from '../src/io/tokenizer.js';
import { formatChain, parseChain, type Chain } from '../src/mote/aligncot.js';
import {
  ChainTooLongError,
  chainExample,
  chainExamples,
  chainFromJson,
  chainToJson,
  packExamples,
  parseChainsJsonl,
  promptIds,
  readChainsJsonl,
  stepTokenIds,
  type ChainExample,
} from '../src/mote/chains.js';
import { STEPS, STEP_END_TOKENS, STEP_TOKENS, moteConfig, specialTokens, type StepName } from '../src/mote/steps.js';
import { writeTinyTokenizer } from './fixtures/tiny_tokenizer.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-chains-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let n = 0;

const ALL = moteConfig({ steps: [...STEPS] });
const THREE = moteConfig();

function tokenizer(opts: { chatTemplate?: string | null; steps?: boolean } = {}): MoteTokenizer {
  const tok = loadTokenizer(writeTinyTokenizer(path.join(root, `tok-${n++}`), { chatTemplate: opts.chatTemplate }));
  if (opts.steps !== false) tok.addSpecialTokens(specialTokens(ALL));
  return tok;
}

const CHAIN: Chain = {
  prompt: 'hello world?',
  steps: [
    { step: 'analysis', text: 'the world is here' },
    { step: 'guidance', text: 'say hello' },
    { step: 'answer', text: 'hello world, hello.' },
    { step: 'check', text: 'safe' },
  ],
};

/** Walks an example token by token against its chain: prompt, then per step start tag, text ids, end tag. */
function assertAligned(
  tok: MoteTokenizer,
  ex: ChainExample,
  chain: Chain,
  config: { steps: (typeof STEPS)[number][] },
  prompt: number[],
): void {
  assert.equal(ex.stepIds.length, ex.ids.length);
  assert.equal(ex.lossMask.length, ex.ids.length);
  assert.deepEqual([...ex.ids.subarray(0, prompt.length)], prompt);
  let t = 0;
  for (; t < prompt.length; t++) {
    assert.equal(ex.stepIds[t], -1, `prompt token ${t}`);
    assert.equal(ex.lossMask[t], 0, `prompt token ${t}`);
  }
  for (const s of chain.steps) {
    const k = config.steps.indexOf(s.step);
    const want = [
      tok.tokenToId(STEP_TOKENS[s.step])!,
      ...tok.encode(s.text, { addSpecialTokens: false }),
      tok.tokenToId(STEP_END_TOKENS[s.step])!,
    ];
    for (const id of want) {
      assert.equal(ex.ids[t], id, `token ${t} of step ${s.step}`);
      assert.equal(ex.stepIds[t], k, `stepIds[${t}] in step ${s.step}`);
      assert.equal(ex.lossMask[t], 1, `lossMask[${t}] in step ${s.step}`);
      t++;
    }
  }
  assert.equal(t, ex.ids.length, 'no token after the last step');
}

test('stepTokenIds: the step tags must be single special tokens', () => {
  const bare = tokenizer({ steps: false });
  assert.throws(
    () => stepTokenIds(bare, THREE),
    (e: Error) =>
      e instanceof ArgumentError && /step tag '<\|analysis\|>' is not a single token/.test(e.message) && /addSpecialTokens/.test(e.message),
  );
  assert.throws(() => chainExample(CHAIN, bare, ALL), /not a single token/);
  const tok = tokenizer();
  const ids = stepTokenIds(tok, ALL);
  assert.deepEqual(
    ids.start,
    STEPS.map((s) => tok.tokenToId(STEP_TOKENS[s])),
  );
  assert.deepEqual(
    ids.end,
    STEPS.map((s) => tok.tokenToId(STEP_END_TOKENS[s])),
  );
  assert.equal(new Set([...ids.start, ...ids.end]).size, 8);
});

test('chainExample: ids, stepIds and lossMask line up token by token (chat template and plain prompts)', () => {
  for (const chatTemplate of [undefined, null] as const) {
    const tok = tokenizer({ chatTemplate });
    const { example, dropped } = chainExample(CHAIN, tok, ALL);
    assert.deepEqual(dropped, []);
    const prompt = promptIds(tok, CHAIN);
    if (chatTemplate === null) {
      // Plain: the tokenizer's own special tokens (<s>) then the prompt text.
      assert.deepEqual(prompt, tok.encode(CHAIN.prompt));
      assert.equal(prompt[0], tok.bosTokenId);
    } else {
      assert.deepEqual(
        prompt,
        tok.encode(tok.applyChatTemplate([{ role: 'user', content: CHAIN.prompt }], { addGenerationPrompt: true }), {
          addSpecialTokens: false,
        }),
      );
      assert.equal(prompt.filter((i) => i === tok.bosTokenId).length, 1, 'one bos, from the template');
    }
    assertAligned(tok, example, CHAIN, ALL, prompt);
    // The chain part decodes to the formatted chain (up to the tokenizer's spaces).
    const text = tok.decode(example.ids.subarray(prompt.length));
    assert.deepEqual(parseChain(text, ALL, { trim: true }), CHAIN.steps);
    assert.equal(text.replace(/> /g, '>'), formatChain(CHAIN, ALL));
  }
  // promptFormat forces either way.
  const tok = tokenizer();
  assert.deepEqual(promptIds(tok, CHAIN, 'plain'), tok.encode(CHAIN.prompt));
  assert.throws(() => promptIds(tokenizer({ chatTemplate: null }), CHAIN, 'chat'), FormatError);
  // Multi-turn prompts go through the template as messages.
  const multi: Chain = {
    prompt: 'unused',
    messages: [
      { role: 'user', content: 'hello' },
      { role: 'assistant', content: 'world' },
      { role: 'user', content: 'the world?' },
    ],
    steps: [{ step: 'answer', text: 'hello' }],
  };
  const { example } = chainExample(multi, tok, THREE);
  const p = promptIds(tok, multi);
  assert.deepEqual(p, tok.encode(tok.applyChatTemplate(multi.messages!, { addGenerationPrompt: true }), { addSpecialTokens: false }));
  assertAligned(tok, example, multi, THREE, p);
});

test('chainExample: step indices follow the bundle, missing steps, eos, extra steps', () => {
  const tok = tokenizer();
  const partial: Chain = {
    prompt: 'hello',
    steps: [
      { step: 'analysis', text: 'the' },
      { step: 'answer', text: 'world' },
    ],
  };
  const { example } = chainExample(partial, tok, THREE);
  assertAligned(tok, example, partial, THREE, promptIds(tok, partial));
  assert.deepEqual([...new Set(example.stepIds)], [-1, 0, 2]);

  // eos after the last step: learned, routed to that step.
  const withEos = chainExample(partial, tok, THREE, { appendEos: true }).example;
  assert.equal(withEos.ids.length, example.ids.length + 1);
  assert.equal(withEos.ids.at(-1), tok.eosTokenId);
  assert.equal(withEos.stepIds.at(-1), 2);
  assert.equal(withEos.lossMask.at(-1), 1);

  // A 'check' step with a three-step bundle: data, not an expert, so left out by default (selfalign
  // writes it); an error naming it on request; any extra step left out with 'drop'.
  const noCheck = chainExample(CHAIN, tok, THREE).example;
  assertAligned(tok, noCheck, { ...CHAIN, steps: CHAIN.steps.slice(0, 3) }, THREE, promptIds(tok, CHAIN));
  assert.throws(
    () => chainExample(CHAIN, tok, THREE, { extraSteps: 'error' }),
    /chainExample: chain\.steps\[3\]\.step: 'check' is not one of this bundle's steps/,
  );
  const dropped = chainExample(CHAIN, tok, THREE, { extraSteps: 'drop' }).example;
  assertAligned(tok, dropped, { ...CHAIN, steps: CHAIN.steps.slice(0, 3) }, THREE, promptIds(tok, CHAIN));
  // Other steps the bundle lacks are still errors by default (a schema without guidance).
  const noGuidance = { steps: ['analysis', 'answer'] as StepName[] };
  assert.throws(() => chainExample(CHAIN, tok, noGuidance), /'guidance' is not one of this bundle's steps/);
  assertAligned(
    tok,
    chainExample(CHAIN, tok, noGuidance, { extraSteps: 'drop' }).example,
    { ...CHAIN, steps: [CHAIN.steps[0]!, CHAIN.steps[2]!] },
    noGuidance,
    promptIds(tok, CHAIN),
  );

  assert.throws(
    () =>
      chainExample(
        {
          prompt: 'x',
          steps: [
            { step: 'answer', text: 'a' },
            { step: 'analysis', text: 'b' },
          ],
        },
        tok,
        THREE,
      ),
    /steps\[1\]\.step: 'analysis' is out of order/,
  );
  assert.throws(
    () => chainExample({ prompt: 'x', steps: [{ step: 'answr' as never, text: 'a' }] }, tok, THREE),
    /steps\[0\]\.step: unknown step "answr"/,
  );
  assert.throws(() => chainExample(CHAIN, tok, ALL, { maxLength: 1 }), /maxLength: expected an integer ≥ 2/);
  assert.throws(() => chainExample(CHAIN, tok, ALL, { promptFormat: 'jinja' as never }), /promptFormat/);
});

test('truncation to maxLength drops whole trailing steps and never cuts a tag', () => {
  const tok = tokenizer();
  const full = chainExample(CHAIN, tok, ALL).example;
  const prompt = promptIds(tok, CHAIN);
  const starts = new Set(stepTokenIds(tok, ALL).start),
    ends = new Set(stepTokenIds(tok, ALL).end);
  // Where each step ends in the full example.
  const stepEnds: number[] = [];
  full.ids.forEach((id, t) => {
    if (ends.has(id)) stepEnds.push(t + 1);
  });
  assert.equal(stepEnds.length, 4);
  let seenTooLong = 0,
    seenCut = 0;
  for (let maxLength = 2; maxLength <= full.ids.length + 2; maxLength++) {
    let r: ReturnType<typeof chainExample>;
    try {
      r = chainExample(CHAIN, tok, ALL, { maxLength });
    } catch (e) {
      assert.ok(e instanceof ChainTooLongError, String(e));
      assert.ok(maxLength < stepEnds[0]!, `maxLength ${maxLength} fits prompt + first step`);
      assert.match((e as Error).message, /too long: the prompt \(\d+ tokens\) and the first step 'analysis'/);
      seenTooLong++;
      continue;
    }
    const ex = r.example;
    const keep = stepEnds.filter((e) => e <= maxLength).length;
    assert.ok(ex.ids.length <= maxLength);
    assert.equal(ex.ids.length, stepEnds[keep - 1], `maxLength ${maxLength}: keeps ${keep} whole steps`);
    assert.deepEqual([...ex.ids], [...full.ids.subarray(0, ex.ids.length)]);
    assert.deepEqual([...ex.stepIds], [...full.stepIds.subarray(0, ex.ids.length)]);
    assert.deepEqual([...ex.lossMask], [...full.lossMask.subarray(0, ex.ids.length)]);
    assert.ok(ends.has(ex.ids.at(-1)!), 'ends on an end tag');
    const chainIds = [...ex.ids.subarray(prompt.length)];
    assert.equal(chainIds.filter((i) => starts.has(i)).length, chainIds.filter((i) => ends.has(i)).length);
    assert.deepEqual(
      r.dropped,
      CHAIN.steps.slice(keep).map((s) => s.step),
    );
    if (keep < 4) seenCut++;
  }
  assert.ok(seenTooLong > 0 && seenCut > 0);

  // chainExamples reports too-long chains and truncated ones instead of throwing.
  const short: Chain = { prompt: 'hello', steps: [{ step: 'answer', text: 'world' }] };
  const res = chainExamples([CHAIN, short, CHAIN], tok, ALL, { maxLength: stepEnds[1]! });
  assert.equal(res.examples.length, 3);
  assert.deepEqual(
    res.truncated.map((t) => [t.index, t.dropped]),
    [
      [0, ['answer', 'check']],
      [2, ['answer', 'check']],
    ],
  );
  const tight = chainExamples([CHAIN, short], tok, ALL, { maxLength: stepEnds[0]! - 1 });
  assert.equal(tight.examples.length, 1);
  assert.deepEqual(
    tight.tooLong.map((t) => t.index),
    [0],
  );
  assert.match(tight.tooLong[0]!.reason, /chainExamples: chains\[0\]: too long/);
});

test('JSONL: both forms, messages, round trip through chainToJson, errors naming file:line', () => {
  const file = path.join(root, 'chains.jsonl');
  const lines = [
    JSON.stringify({ prompt: 'hello', analysis: 'the world', guidance: 'say hello', answer: 'hello world' }),
    '',
    JSON.stringify({
      id: 7,
      meta: { src: 'toy' },
      prompt: 'world',
      steps: [
        { step: 'analysis', text: 'a' },
        { step: 'answer', text: 'b' },
        { step: 'check', text: 'safe' },
      ],
    }),
    JSON.stringify({
      messages: [
        { role: 'user', content: 'hello' },
        { role: 'assistant', content: 'hi' },
        { role: 'user', content: 'world?' },
      ],
      answer: 'the world',
    }),
  ];
  fs.writeFileSync(file, lines.join('\r\n') + '\n');
  const chains = readChainsJsonl(file);
  assert.deepEqual(
    chains.map((c) => c.line),
    [1, 3, 4],
  );
  assert.deepEqual(chains[0]!.steps, [
    { step: 'analysis', text: 'the world' },
    { step: 'guidance', text: 'say hello' },
    { step: 'answer', text: 'hello world' },
  ]);
  assert.deepEqual(
    chains[1]!.steps.map((s) => s.step),
    ['analysis', 'answer', 'check'],
  );
  assert.equal(chains[2]!.prompt, 'Human: hello\n\nAssistant: hi\n\nHuman: world?');
  assert.equal(chains[2]!.messages!.length, 3);
  for (const c of chains) {
    const { file: _f, line: _l, ...chain } = c;
    assert.deepEqual(chainFromJson(JSON.parse(JSON.stringify(chainToJson(chain))), 'x'), chain);
  }
  // gzip
  const gz = path.join(root, 'chains.jsonl.gz');
  fs.writeFileSync(gz, zlib.gzipSync(lines.join('\n')));
  assert.equal(readChainsJsonl(gz).length, 3);

  // Building from records names file:line in errors.
  const tok = tokenizer();
  assert.throws(
    () => chainExamples(chains, tok, THREE, { extraSteps: 'error' }),
    new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:3: chain\\.steps\\[2\\]\\.step: 'check' is not one of this bundle's steps`),
  );
  const built = chainExamples(chains, tok, ALL);
  assert.equal(built.examples.length, 3);

  const bad: [string, RegExp][] = [
    ['{"prompt": "q", "analysis": "a", "answr": "b"}', /f\.jsonl:2: field "answr": unknown step "answr"/],
    ['{"prompt": "q", "response": "b"}', /f\.jsonl:2: field "response": unknown step "response" .*called 'answer'/],
    [
      '{"prompt": "q", "steps": [{"step": "analysis", "text": "a"}, {"step": "verify", "text": "b"}]}',
      /f\.jsonl:2: "steps"\[1\]\.step: unknown step "verify"/,
    ],
    [
      '{"prompt": "q", "steps": [{"step": "answer", "text": "a"}, {"step": "analysis", "text": "b"}]}',
      /f\.jsonl:2: .*'analysis' is out of order/,
    ],
    ['{"prompt": "q", "analysis": "a", "steps": []}', /f\.jsonl:2: both "steps" and "analysis"/],
    ['{"prompt": "q"}', /f\.jsonl:2: no steps/],
    ['{"prompt": "q", "answer": "  "}', /f\.jsonl:2: "answer": empty text/],
    ['{"prompt": "q", "answer": 3}', /f\.jsonl:2: "answer": expected a string/],
    ['{"answer": "a"}', /f\.jsonl:2: "prompt": expected a string \(or a "messages" list\)/],
    ['{"prompt": "q <|response|>", "answer": "a"}', /f\.jsonl:2: chain\.prompt: contains the step tag/],
    ['{"prompt": "q", "answer": "a <|end_response|>"}', /f\.jsonl:2: .*contains the tag '<\|end_response\|>'/],
    ['{"prompt": "q", "answer": "a"', /f\.jsonl:2: malformed JSON/],
    ['["q", "a"]', /f\.jsonl:2: expected an object/],
  ];
  for (const [line, re] of bad) {
    assert.throws(
      () => parseChainsJsonl(`{"prompt": "ok", "answer": "fine"}\n${line}\n`, 'f.jsonl'),
      (e: Error) => e instanceof FormatError && re.test(e.message),
      `${line} → ${re}`,
    );
  }
  assert.throws(() => parseChainsJsonl('\n  \n', 'e.jsonl'), /e\.jsonl: empty: no chains/);
  assert.throws(() => readChainsJsonl(path.join(root, 'missing.jsonl')), /missing\.jsonl: not found/);
});

test('packExamples: targets, mask, seq and pos per token; greedy batches within maxTokens', () => {
  const tok = tokenizer();
  const chains: Chain[] = [
    CHAIN,
    { prompt: 'hello', steps: [{ step: 'answer', text: 'world' }] },
    {
      prompt: 'the',
      steps: [
        { step: 'analysis', text: 'hello' },
        { step: 'answer', text: 'the world' },
      ],
    },
    { prompt: 'world', steps: [{ step: 'guidance', text: 'the' }] },
  ];
  const examples = chainExamples(chains, tok, ALL).examples;
  const lens = examples.map((e) => e.ids.length);
  const maxTokens = Math.max(lens[0]!, lens[1]! + lens[2]!);
  const batches = packExamples(examples, maxTokens);
  // Greedy in order.
  const want: number[][] = [];
  let cur: number[] = [],
    tokens = 0;
  lens.forEach((l, i) => {
    if (cur.length && tokens + l > maxTokens) {
      want.push(cur);
      cur = [];
      tokens = 0;
    }
    cur.push(i);
    tokens += l;
  });
  want.push(cur);
  assert.deepEqual(
    batches.map((b) => b.examples),
    want,
  );
  let covered = 0;
  for (const b of batches) {
    const T = b.ids.length;
    assert.ok(T <= maxTokens);
    for (const k of ['seq', 'pos', 'stepIds', 'targets', 'lossMask'] as const) assert.equal(b[k].length, T, k);
    let o = 0;
    b.examples.forEach((i, s) => {
      const e = examples[i]!;
      const len = e.ids.length;
      for (let t = 0; t < len; t++) {
        const at = o + t;
        assert.equal(b.ids[at], e.ids[t]);
        assert.equal(b.seq[at], s);
        assert.equal(b.pos[at], t);
        assert.equal(b.stepIds[at], e.stepIds[t]);
        if (t + 1 < len) {
          assert.equal(b.targets[at], e.ids[t + 1], `targets[${at}]`);
          assert.equal(b.lossMask[at], e.lossMask[t + 1], `lossMask[${at}]: token ${t + 1} learned`);
        } else {
          assert.equal(b.lossMask[at], 0, 'last token of a sequence: nothing to predict');
          assert.equal(b.targets[at], -1);
        }
      }
      o += len;
    });
    assert.equal(o, T);
    covered += b.examples.length;
    // The first learned prediction of each sequence is its first step tag, from the last prompt token.
    const firstLearned = b.lossMask.indexOf(1);
    assert.ok(firstLearned >= 0 && b.stepIds[firstLearned] === -1 && b.stepIds[firstLearned + 1] !== -1);
  }
  assert.equal(covered, examples.length);
  // One example per batch when maxTokens is the longest example.
  assert.ok(packExamples(examples, Math.max(...lens)).length >= 2);
  assert.equal(
    packExamples(
      examples,
      lens.reduce((a, b) => a + b),
    ).length,
    1,
  );
  assert.throws(() => packExamples(examples, Math.max(...lens) - 1), /packExamples: examples\[\d\]: \d+ tokens > maxTokens/);
  assert.throws(() => packExamples([{ ids: [1, 2], lossMask: [0] }], 8), /examples\[0\]\.lossMask: expected 2 entries, got 1/);
  assert.throws(() => packExamples([{ ids: [1, 2], lossMask: [0, 1], stepIds: [-1] }], 8), /examples\[0\]\.stepIds: expected 2 entries/);
  assert.throws(() => packExamples(examples, 0), /maxTokens: expected a positive integer/);
  // Without stepIds (a plain adapter), every token is -1.
  const [plain] = packExamples([{ ids: [5, 6, 7], lossMask: [0, 1, 1] }], 3);
  assert.deepEqual([...plain!.stepIds], [-1, -1, -1]);
  assert.deepEqual([...plain!.targets], [6, 7, -1]);
  assert.deepEqual([...plain!.lossMask], [1, 1, 0]);
});
