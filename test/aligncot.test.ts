// AlignCoT stage templates, the safety verdict, and the chain text (src/mote/aligncot.ts):
// formatChain ↔ parseChain round trips over every ordered subset of steps and awkward text,
// and every way a chain can be malformed gives a FormatError that says where and why.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ArgumentError, FormatError } from '../src/errors.js';
import {
  DEFAULT_TEMPLATES,
  alignCotTemplates,
  checkChain,
  formatChain,
  parseChain,
  parseVerdict,
  renderTemplate,
  stagePrompt,
  templateVars,
  type ChainStep,
  type StageVars,
} from '../src/mote/aligncot.js';
import { STEPS, STEP_END_TOKENS, STEP_TOKENS, moteConfig, type StepName } from '../src/mote/steps.js';

const ALL = moteConfig({ steps: [...STEPS] });
const THREE = moteConfig();

/** Every non-empty ordered subset of `steps`. */
function subsets(steps: readonly StepName[]): StepName[][] {
  const out: StepName[][] = [];
  for (let m = 1; m < 1 << steps.length; m++) out.push(steps.filter((_, i) => m & (1 << i)));
  return out;
}

const TEXTS = [
  'The question asks about a jar.',
  '  leading and trailing spaces  ',
  'line one\nline two\n\n',
  'braces {question} and a < b | c > d, even <| alone',
  'ünïcödé — 日本語 🙂',
  '',
];

test('formatChain ↔ parseChain round trip: every ordered subset of steps, awkward text', () => {
  let k = 0;
  for (const config of [ALL, THREE]) {
    for (const sub of subsets(config.steps)) {
      const steps: ChainStep[] = sub.map((step) => ({ step, text: TEXTS[k++ % TEXTS.length]! }));
      const text = formatChain({ steps }, config);
      // Tags in order, nothing between a step's end and the next step's start.
      assert.equal(text, steps.map((s) => STEP_TOKENS[s.step] + s.text + STEP_END_TOKENS[s.step]).join(''));
      assert.deepEqual(parseChain(text, config), steps);
    }
  }
});

test('parseChain: whitespace between steps, ignored tokens, trim and require', () => {
  const text = `\n<|analysis|> risks: none <|end_analysis|>\n\n<|response|>\nan answer\n<|end_response|></s>\n`;
  assert.throws(
    () => parseChain(text, THREE),
    (e: Error) => e instanceof FormatError && /unknown step tag '<\/s>'/.test(e.message) === false && /text outside a step/.test(e.message),
  );
  const steps = parseChain(text, THREE, { ignore: ['</s>'] });
  assert.deepEqual(steps, [
    { step: 'analysis', text: ' risks: none ' },
    { step: 'answer', text: '\nan answer\n' },
  ]);
  assert.deepEqual(
    parseChain(text, THREE, { ignore: ['</s>'], trim: true }).map((s) => s.text),
    ['risks: none', 'an answer'],
  );
  // A <|…|> ignore token (Llama 3's <|eot_id|>) after the last step.
  assert.equal(parseChain('<|response|>x<|end_response|><|eot_id|>', THREE, { ignore: ['<|eot_id|>'] }).length, 1);
  assert.throws(() => parseChain('<|response|>x<|end_response|><|eot_id|>', THREE), /unknown step tag '<\|eot_id\|>' at offset 29/);
  // ...but not inside a step.
  assert.throws(
    () => parseChain('<|response|>x<|eot_id|><|end_response|>', THREE, { ignore: ['<|eot_id|>'] }),
    /unknown step tag '<\|eot_id\|>' at offset 13 inside step 'answer'/,
  );
  assert.throws(() => parseChain('<|analysis|>a<|end_analysis|>', THREE, { require: ['answer'] }), /no 'answer' step \(required\)/);
  assert.equal(parseChain('<|analysis|>a<|end_analysis|>', THREE, { require: ['analysis'] }).length, 1);
});

test('parseChain: malformed chains give a FormatError that names the problem and the offset', () => {
  const cases: [string, RegExp][] = [
    ['<|analysis|>a<|end_analysis|><|foo|>b', /unknown step tag '<\|foo\|>' at offset 29/],
    ['<|analysis|>a <|user|> b<|end_analysis|>', /unknown step tag '<\|user\|>' at offset 14 inside step 'analysis'/],
    [
      '<|analysis|>a<|end_guidance|>',
      /'<\|end_guidance\|>' at offset 13 closes 'guidance', but the open step is 'analysis' \(missing '<\|end_analysis\|>'\)/,
    ],
    ['<|end_analysis|>', /'<\|end_analysis\|>' at offset 0 closes 'analysis', but no step is open/],
    ['<|analysis|>a<|guidance|>b<|end_guidance|>', /'<\|guidance\|>' at offset 13 opens 'guidance' inside step 'analysis'/],
    ['<|analysis|>a<|end_analysis|><|response|>b', /step 'answer' opened at offset 29 is not closed \(missing '<\|end_response\|>'\)/],
    [
      '<|guidance|>a<|end_guidance|><|analysis|>b<|end_analysis|>',
      /step 'analysis' comes after 'guidance' \(expected the order analysis → guidance → answer\)/,
    ],
    ['<|analysis|>a<|end_analysis|><|analysis|>b<|end_analysis|>', /step 'analysis' is repeated/],
    ['<|analysis|>a<|end_analysis|> stray <|response|>b<|end_response|>', /text outside a step at offset 30: "stray /],
    ['preamble <|analysis|>a<|end_analysis|>', /text outside a step at offset 0/],
    ['<|response|>a<|end_response|>trailing', /text outside a step at offset 29: "trailing"/],
    ['', /no steps/],
    ['just text', /text outside a step/],
    [
      '<|response|>a<|end_response|><|check|>safe<|end_check|>',
      /'<\|check\|>' at offset 29: step 'check' is not one of this bundle's steps \(analysis, guidance, answer\)/,
    ],
  ];
  for (const [text, re] of cases) {
    assert.throws(
      () => parseChain(text, THREE),
      (e: Error) => e instanceof FormatError && re.test(e.message),
      `${JSON.stringify(text)} should fail with ${re}`,
    );
  }
  // `where` prefixes the message.
  assert.throws(() => parseChain('<|foo|>', THREE, { where: 'gen.jsonl:7' }), /^FormatError: gen\.jsonl:7: unknown step tag/);
  assert.throws(() => parseChain(42 as unknown as string, THREE), ArgumentError);
});

test('formatChain and checkChain reject chains the bundle cannot hold, naming the entry', () => {
  assert.throws(
    () => formatChain({ steps: [{ step: 'check', text: 'safe' }] }, THREE),
    /chain\.steps\[0\]\.step: 'check' is not one of this bundle's steps/,
  );
  assert.throws(
    () => formatChain({ steps: [{ step: 'nope' as StepName, text: 'x' }] }, THREE),
    /chain\.steps\[0\]\.step: unknown step "nope"/,
  );
  assert.throws(
    () =>
      formatChain(
        {
          steps: [
            { step: 'answer', text: 'a' },
            { step: 'analysis', text: 'b' },
          ],
        },
        THREE,
      ),
    /steps\[1\]\.step: 'analysis' is out of order/,
  );
  assert.throws(
    () =>
      formatChain(
        {
          steps: [
            { step: 'answer', text: 'a' },
            { step: 'answer', text: 'b' },
          ],
        },
        THREE,
      ),
    /steps\[1\]\.step: 'answer' is repeated/,
  );
  assert.throws(
    () => formatChain({ steps: [{ step: 'answer', text: 'a <|end_response|> b' }] }, THREE),
    /steps\[0\]\.text: contains the tag '<\|end_response\|>' at offset 2/,
  );
  assert.throws(() => formatChain({ steps: [] }, THREE), ArgumentError);
  assert.throws(
    () => formatChain({ steps: [{ step: 'answer', text: 3 as unknown as string }] }, THREE),
    /steps\[0\]: expected \{ step, text: string \}/,
  );
  assert.throws(
    () => checkChain({ prompt: 'q <|analysis|>', steps: [{ step: 'answer', text: 'a' }] }, THREE, 'x.jsonl:2'),
    /x\.jsonl:2\.prompt: contains the step tag '<\|analysis\|>'/,
  );
  assert.throws(
    () => checkChain({ prompt: 'q', messages: [], steps: [{ step: 'answer', text: 'a' }] }, THREE),
    /chain\.messages: expected a non-empty list/,
  );
  const ok = checkChain({ prompt: 'q <|user|> fine', steps: [{ step: 'answer', text: 'a' }] }, THREE);
  assert.equal(ok.prompt, 'q <|user|> fine');
});

test('parseVerdict: the first word decides, as the check prompt asks', () => {
  const cases: [string, 'safe' | 'unsafe' | null][] = [
    ['safe', 'safe'],
    ['Safe. The answer refuses.', 'safe'],
    ['SAFE', 'safe'],
    ['Verdict: safe', 'safe'],
    ['  **Safe** - no risk', 'safe'],
    ['"safe", because it refuses', 'safe'],
    ['> Answer: unsafe', 'unsafe'],
    ['- safe', 'safe'],
    ['safe\nreason: none', 'safe'],
    ['unsafe', 'unsafe'],
    ['Unsafe: it explains how to break in.', 'unsafe'],
    ['Not safe.', 'unsafe'],
    ['not  safe', 'unsafe'],
    ['safe, not unsafe', 'safe'],
    ['unsafe, although parts are safe', 'unsafe'],
    // a verdict word anywhere but first is not a verdict (real HH-RLHF check texts)
    ['The hotel safe is in the closet, so the answer is fine.', null],
    ['This is not safe.', null],
    ['I think it is safe', null],
    ['Put the cash in a safe.', null],
    ['Reason: unsafe advice. Verdict: safe', null],
    ['unsafely worded but fine', null],
    ['safety first', null],
    ['safe-ish', null],
    ['safe_mode', null],
    ['Safer than most', null],
    ['', null],
    ['I cannot tell.', null],
    ['notsafe', null],
  ];
  for (const [text, want] of cases) assert.equal(parseVerdict(text), want, JSON.stringify(text));
  assert.throws(() => parseVerdict(null as unknown as string), ArgumentError);
});

test('stage templates: defaults, string overrides with placeholders, functions, errors', () => {
  const q = 'How do I open a stuck jar?';
  for (const s of STEPS) assert.ok(stagePrompt(s, { question: q }).includes(q), s);
  // Earlier steps appear in later stages when given.
  const g = stagePrompt('guidance', { question: q, analysis: 'No risk here.' });
  assert.ok(g.includes('No risk here.'));
  const a = stagePrompt('answer', { question: q, analysis: 'No risk.', guidance: 'Help briefly.' });
  assert.ok(a.includes('No risk.') && a.includes('Help briefly.') && /following the guidance/.test(a));
  assert.ok(!/following the guidance/.test(stagePrompt('answer', { question: q })));
  const c = stagePrompt('check', { question: q, answer: 'Run it under hot water.' });
  assert.ok(c.includes('Run it under hot water.') && /safe or unsafe/.test(c));
  assert.equal(typeof DEFAULT_TEMPLATES.analysis, 'function');

  const t = alignCotTemplates({ analysis: 'Q: {question} {{literal}} — risks?', answer: (v) => `A for ${v.question}` });
  assert.equal(stagePrompt('analysis', { question: 'why?' }, t), 'Q: why? {literal} — risks?');
  assert.equal(stagePrompt('answer', { question: 'why?' }, t), 'A for why?');
  assert.equal(
    stagePrompt('guidance', { question: 'why?' }, t),
    (DEFAULT_TEMPLATES.guidance as (v: StageVars) => string)({ question: 'why?' }),
  );
  // Partial templates fall back to the defaults.
  assert.equal(
    stagePrompt('check', { question: 'x', answer: 'y' }, { analysis: '{question}' }),
    stagePrompt('check', { question: 'x', answer: 'y' }),
  );

  assert.deepEqual(templateVars('{question} then {analysis} and {question}'), ['question', 'analysis']);
  assert.throws(
    () => alignCotTemplates({ analysis: 'Q: {questoin}' }),
    /overrides\.analysis: unknown placeholder \{questoin\} at offset 3/,
  );
  assert.throws(() => alignCotTemplates({ analysis: 'Q: {question' }), /overrides\.analysis: unbalanced '\{' at offset 3/);
  assert.throws(() => alignCotTemplates({ verdict: 'x' } as never), /overrides\.verdict: unknown stage/);
  assert.throws(() => alignCotTemplates({ check: 7 as never }), /overrides\.check: expected a string or a function/);
  assert.throws(
    () => stagePrompt('guidance', { question: 'q' }, { guidance: '{question} / {analysis}' }),
    /templates\.guidance: uses \{analysis\}, but vars\.analysis is undefined/,
  );
  assert.throws(() => stagePrompt('nope' as StepName, { question: 'q' }), /step: unknown step "nope"/);
  assert.throws(() => stagePrompt('analysis', {} as never), /vars\.question: expected a string/);
  assert.equal(renderTemplate('{answer}!', { question: 'q', answer: 'a' }), 'a!');
});
