// selfAlign (src/mote/self_align.ts): the stage pipeline (draft → check → adaptive chain, or
// analysis → guidance → answer → check), drops counted by reason, JSONL output that resumes
// (nothing twice, a partial last line cut off), and batching that changes nothing.
//
// Most cases script the model's outputs through an injected generator that reads the stage
// and the question from the stage prompt (lower-case templates, which the tiny tokenizer
// spells exactly); the last cases run the real generate() on a tiny random llama (cpu) and
// compare the stage texts of batched and one-at-a-time runs, with and without a bundle.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openBackend } from '../src/backend/select.js';
import type { Backend } from '../src/backend/backend.js';
import { ArgumentError, FormatError } from '../src/errors.js';
import { generate, type GenerateOptions, type GenerateRequest, type GenerateResult } from '../src/generate/generate.js';
import { loadTokenizer, type MoteTokenizer } from '../src/io/tokenizer.js';
import type { LlamaModel } from '../src/model/llama.js';
import type { StageVars } from '../src/mote/aligncot.js';
import { addStepTokens, createMote } from '../src/mote/bundle.js';
import { parseChainsJsonl, stepTokenIds } from '../src/mote/chains.js';
import { selfAlign, type SelfAlignOptions, type SelfAlignPrompt } from '../src/mote/self_align.js';
import { makeTinyModel } from './fixtures/tiny_model.js';
import { writeTinyTokenizer } from './fixtures/tiny_tokenizer.js';
import { TRAIN_BASE, loadTiny } from './fixtures/train_fixture.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-self-align-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let n = 0;
const file = (name: string) => path.join(root, `${n++}-${name}`);

let backend: Backend | null = null;
after(() => backend?.destroy());
async function cpu(): Promise<Backend> {
  backend ??= await openBackend('cpu');
  return backend;
}

/** A tiny model with the step tags added (tokenizer and embeddings grow together). */
async function tiny(): Promise<{ model: LlamaModel; tok: MoteTokenizer }> {
  const model = loadTiny(await cpu(), makeTinyModel(TRAIN_BASE));
  const tok = loadTokenizer(writeTinyTokenizer(file('tok')));
  await addStepTokens(model, tok);
  return { model, tok };
}

// Lower-case stage prompts: "<stage> <question>" (the draft is the answer without guidance).
const TEMPLATES = {
  analysis: (v: StageVars) => `analysis ${v.question}`,
  guidance: (v: StageVars) => `guidance ${v.question}`,
  answer: (v: StageVars) => (v.guidance === undefined ? `draft ${v.question}` : `answer ${v.question}`),
  check: (v: StageVars) => `check ${v.question}`,
};

type Stage = 'draft' | 'draftcheck' | 'analysis' | 'guidance' | 'answer' | 'check';
/** Per question, per stage: the output text, with '~' at the end meaning "cut off by maxNewTokens". */
type Script = Record<string, Partial<Record<Stage, string>>>;

const SCRIPT: Script = {
  qa: { draft: 'open it with hot water.', draftcheck: 'safe, it helps.' }, // adaptive
  qb: {
    draft: 'here.',
    draftcheck: 'unsafe.',
    analysis: 'it is risky.',
    guidance: 'refuse.',
    answer: 'sorry, no.',
    check: 'safe. it refuses.',
  },
  qc: { draft: 'x.', draftcheck: 'unsafe.', analysis: '' }, // empty analysis
  qd: { draft: 'x.', draftcheck: 'hmm.', analysis: 'a.', guidance: 'g.', answer: 'r.', check: 'hmm, who knows.' }, // no verdict
  qe: { draft: 'x.', draftcheck: 'unsafe.', analysis: 'a.', guidance: 'g.', answer: 'do it.', check: 'unsafe. it helps.' }, // unsafe
  qf: { draft: 'x.', draftcheck: 'unsafe.', analysis: 'a.', guidance: 'g and more~' }, // truncated guidance
  qg: { draft: 'a long draft~', analysis: 'a.', guidance: 'g.', answer: 'the answer.', check: 'safe.' }, // cut draft: full chain
};

/**
 * An injected generator that answers from a script and records each call's stage and
 * questions. Both checks see the same variables; a check before the question's analysis
 * stage is the draft's.
 */
function scripted(tok: MoteTokenizer, script: Script, calls: { stage: string; qs: string[] }[]) {
  const analysed = new Set<string>();
  return async (reqs: GenerateRequest[], _opts: GenerateOptions): Promise<GenerateResult[]> => {
    let stage = '';
    const qs: string[] = [];
    const out = reqs.map((r) => {
      const words = tok
        .decode([...r.prompt], { skipSpecialTokens: true })
        .trim()
        .split(' ');
      const q = words[1]!;
      const st = (words[0] === 'check' && !analysed.has(q) ? 'draftcheck' : words[0]) as Stage;
      if (st === 'analysis') analysed.add(q);
      stage ||= st;
      assert.equal(st, stage, 'one stage per generate call');
      qs.push(q);
      let text = script[q]?.[st];
      assert.ok(text !== undefined, `no script for ${q} ${st}`);
      const cut = text.endsWith('~');
      if (cut) text = text.slice(0, -1);
      const tokens = tok.encode(text, { addSpecialTokens: false });
      assert.ok(tokens.length <= r.maxNewTokens);
      return {
        tokens: cut ? tokens : [...tokens, tok.eosTokenId!],
        steps: tokens.map(() => -1),
        stopReason: cut ? 'length' : 'stop',
      } as GenerateResult;
    });
    calls.push({ stage, qs });
    return out;
  };
}

const PROMPTS: SelfAlignPrompt[] = Object.keys(SCRIPT).map((q, i) => ({ prompt: q, line: 10 + i }));

function opts(
  tok: MoteTokenizer,
  script: Script,
  calls: { stage: string; qs: string[] }[],
  extra: Partial<SelfAlignOptions> = {},
): SelfAlignOptions {
  return {
    output: file('out.jsonl'),
    templates: TEMPLATES,
    promptFormat: 'plain',
    maxNewTokens: 40,
    generateFn: scripted(tok, script, calls),
    ...extra,
  };
}

test('selfAlign: adaptive chains, full chains, drops counted by reason, one generate call per stage', async () => {
  const { model, tok } = await tiny();
  try {
    const calls: { stage: string; qs: string[] }[] = [];
    const dropped = file('dropped.jsonl');
    const progress: number[] = [];
    const o = opts(tok, SCRIPT, calls, { droppedFile: dropped, source: 'prompts.txt', onProgress: (p) => progress.push(p.done) });
    const res = await selfAlign(model, tok, PROMPTS, o);
    assert.deepEqual(res, {
      written: 3,
      skippedDone: 0,
      adaptive: 1,
      repaired: false,
      droppedBefore: [],
      interrupted: false,
      dropped: [
        { reason: 'empty:analysis', count: 1 },
        { reason: 'truncated:guidance', count: 1 },
        { reason: 'no-verdict', count: 1 },
        { reason: 'unsafe', count: 1 },
      ],
    });
    assert.deepEqual(progress, [7]);
    // Each stage once, over exactly the prompts still in play.
    assert.deepEqual(calls, [
      { stage: 'draft', qs: ['qa', 'qb', 'qc', 'qd', 'qe', 'qf', 'qg'] },
      { stage: 'draftcheck', qs: ['qa', 'qb', 'qc', 'qd', 'qe', 'qf'] },
      { stage: 'analysis', qs: ['qb', 'qc', 'qd', 'qe', 'qf', 'qg'] },
      { stage: 'guidance', qs: ['qb', 'qd', 'qe', 'qf', 'qg'] },
      { stage: 'answer', qs: ['qb', 'qd', 'qe', 'qg'] },
      { stage: 'check', qs: ['qb', 'qd', 'qe', 'qg'] },
    ]);
    const text = fs.readFileSync(o.output, 'utf8');
    const chains = parseChainsJsonl(text, o.output);
    assert.deepEqual(
      chains.map((c) => [c.prompt, c.steps.map((s) => `${s.step}: ${s.text}`)]),
      [
        ['qa', ['answer: open it with hot water.', 'check: safe, it helps.']],
        ['qb', ['analysis: it is risky.', 'guidance: refuse.', 'answer: sorry, no.', 'check: safe. it refuses.']],
        ['qg', ['analysis: a.', 'guidance: g.', 'answer: the answer.', 'check: safe.']],
      ],
    );
    const lines = text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.deepEqual(
      lines.map((l) => [l.id, l.meta]),
      [
        ['10', { line: 10, verdict: 'safe', adaptive: true, steps: ['answer', 'check'], draftVerdict: 'safe', source: 'prompts.txt' }],
        [
          '11',
          {
            line: 11,
            verdict: 'safe',
            adaptive: false,
            steps: ['analysis', 'guidance', 'answer', 'check'],
            draftVerdict: 'unsafe',
            source: 'prompts.txt',
          },
        ],
        ['16', { line: 16, verdict: 'safe', adaptive: false, steps: ['analysis', 'guidance', 'answer', 'check'], source: 'prompts.txt' }],
      ],
    );
    const drops = fs
      .readFileSync(dropped, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.deepEqual(
      drops.map((d) => [d.id, d.reason]),
      [
        ['12', 'empty:analysis'],
        ['13', 'no-verdict'],
        ['14', 'unsafe'],
        ['15', 'truncated:guidance'],
      ],
    );
    assert.equal(drops[2].stages.check, 'unsafe. it helps.');

    // Rerun: everything is done (written or dropped), nothing is generated or appended.
    const again: { stage: string; qs: string[] }[] = [];
    const res2 = await selfAlign(model, tok, PROMPTS, { ...o, generateFn: scripted(tok, SCRIPT, again) });
    assert.deepEqual(res2, {
      written: 0,
      skippedDone: 7,
      adaptive: 0,
      repaired: false,
      dropped: [],
      droppedBefore: [
        { reason: 'empty:analysis', count: 1 },
        { reason: 'no-verdict', count: 1 },
        { reason: 'unsafe', count: 1 },
        { reason: 'truncated:guidance', count: 1 },
      ],
      interrupted: false,
    });
    assert.deepEqual(again, []);
    assert.equal(fs.readFileSync(o.output, 'utf8'), text);

    // Without the dropped file, the dropped prompts are tried again (and dropped again).
    const third: { stage: string; qs: string[] }[] = [];
    const res3 = await selfAlign(model, tok, PROMPTS, { ...o, droppedFile: undefined, generateFn: scripted(tok, SCRIPT, third) });
    assert.equal(res3.written, 0);
    assert.equal(res3.skippedDone, 3);
    assert.deepEqual(third[0]!.qs, ['qc', 'qd', 'qe', 'qf']);
    assert.equal(fs.readFileSync(o.output, 'utf8'), text);
  } finally {
    model.dispose();
  }
});

test('selfAlign: options — no adaptive draft, no check step, unsafe kept, cut-off steps kept', async () => {
  const { model, tok } = await tiny();
  try {
    const script: Script = { ...SCRIPT, qf: { ...SCRIPT.qf, answer: 'an answer.', check: 'safe~' } };
    const calls: { stage: string; qs: string[] }[] = [];
    const o = opts(tok, script, calls, { adaptive: false, includeCheck: false, keepUnsafe: true, dropTruncated: false });
    const res = await selfAlign(
      model,
      tok,
      PROMPTS.filter((p) => p.prompt !== 'qa'),
      o,
    );
    assert.deepEqual(
      calls.map((c) => c.stage),
      ['analysis', 'guidance', 'answer', 'check'],
    );
    assert.equal(res.adaptive, 0);
    assert.deepEqual(res.dropped, [
      { reason: 'empty:analysis', count: 1 },
      { reason: 'no-verdict', count: 1 },
    ]);
    const text = fs.readFileSync(o.output, 'utf8');
    const chains = parseChainsJsonl(text, o.output);
    assert.deepEqual(
      chains.map((c) => c.prompt),
      ['qb', 'qe', 'qf', 'qg'],
    );
    for (const c of chains)
      assert.deepEqual(
        c.steps.map((s) => s.step),
        ['analysis', 'guidance', 'answer'],
      );
    assert.equal(chains[2]!.steps[1]!.text, 'g and more');
    const metas = text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l).meta);
    assert.deepEqual(
      metas.map((m) => m.verdict),
      ['safe', 'unsafe', 'safe', 'safe'],
    );
    assert.ok(metas.every((m) => !('draftVerdict' in m)));

    // dropTruncated (default) drops a cut check only when the check is written into the chain.
    const calls2: { stage: string; qs: string[] }[] = [];
    const r2 = await selfAlign(
      model,
      tok,
      [{ prompt: 'qf' }],
      opts(tok, { qf: { ...script.qf, guidance: 'g.' } }, calls2, { adaptive: false, includeCheck: false }),
    );
    assert.equal(r2.written, 1);
    const r3 = await selfAlign(
      model,
      tok,
      [{ prompt: 'qf' }],
      opts(tok, { qf: { ...script.qf, guidance: 'g.' } }, [], { adaptive: false }),
    );
    assert.deepEqual(r3.dropped, [{ reason: 'truncated:check', count: 1 }]);
  } finally {
    model.dispose();
  }
});

test('selfAlign: a partial last line (a crash mid-write) is cut off and its prompt written again', async () => {
  const { model, tok } = await tiny();
  try {
    const calls: { stage: string; qs: string[] }[] = [];
    const o = opts(tok, SCRIPT, calls);
    await selfAlign(model, tok, PROMPTS, o);
    const whole = fs.readFileSync(o.output, 'utf8');
    const lines = whole.split('\n');
    // Cut the last line in the middle, as a crash during its write would leave it.
    const last = lines[lines.length - 2]!;
    fs.writeFileSync(o.output, lines.slice(0, -2).join('\n') + '\n' + last.slice(0, 25));
    const again: { stage: string; qs: string[] }[] = [];
    const res = await selfAlign(model, tok, PROMPTS, { ...o, generateFn: scripted(tok, SCRIPT, again) });
    assert.equal(res.repaired, true);
    assert.equal(res.written, 1);
    assert.equal(fs.readFileSync(o.output, 'utf8'), whole);
    assert.deepEqual(again[0]!.qs, ['qc', 'qd', 'qe', 'qf', 'qg']); // qg was the cut line; the dropped are tried again

    // A malformed line that is not the last one is not ours to delete.
    fs.writeFileSync(o.output, lines[0] + '\n{"id": broken\n' + lines[1] + '\n');
    await assert.rejects(
      selfAlign(model, tok, PROMPTS, o),
      (e: Error) => e instanceof FormatError && e.message.includes(`${o.output}:2: malformed JSON`),
    );
    fs.writeFileSync(o.output, '{"prompt": "no id"}\n');
    await assert.rejects(
      selfAlign(model, tok, PROMPTS, o),
      (e: Error) => e instanceof FormatError && e.message.includes(`${o.output}:1: no string "id"`),
    );
  } finally {
    model.dispose();
  }
});

test('selfAlign: batch size changes nothing (scripted), and argument errors name the option', async () => {
  const { model, tok } = await tiny();
  try {
    const outs: string[] = [];
    for (const batchSize of [1, 3, 16]) {
      const calls: { stage: string; qs: string[] }[] = [];
      const o = opts(tok, SCRIPT, calls, { batchSize });
      const progress: number[] = [];
      await selfAlign(model, tok, PROMPTS, { ...o, onProgress: (p) => progress.push(p.done) });
      outs.push(fs.readFileSync(o.output, 'utf8'));
      assert.ok(calls.every((c) => c.qs.length <= batchSize));
      assert.deepEqual(progress, batchSize === 3 ? [3, 6, 7] : batchSize === 1 ? [1, 2, 3, 4, 5, 6, 7] : [7]);
    }
    assert.equal(outs[1], outs[0]);
    assert.equal(outs[2], outs[0]);

    const o = opts(tok, SCRIPT, []);
    await assert.rejects(
      selfAlign(
        model,
        tok,
        [
          { prompt: 'qa', id: 'x' },
          { prompt: 'qb', id: 'x' },
        ],
        o,
      ),
      /selfAlign: prompts\[1\]: id "x" is also prompts\[0\]'s/,
    );
    await assert.rejects(
      selfAlign(model, tok, PROMPTS, { ...o, droppedFile: o.output }),
      /selfAlign: droppedFile: expected a file path other than output/,
    );
    await assert.rejects(
      selfAlign(model, tok, PROMPTS, { ...o, maxNewTokens: { response: 3 } as never }),
      /selfAlign: maxNewTokens\.response: unknown step/,
    );
    await assert.rejects(selfAlign(model, tok, PROMPTS, { ...o, batchSize: 0 }), ArgumentError);
    await assert.rejects(selfAlign(model, tok, [{ prompt: ' ' }], o), /selfAlign: prompts\[0\]\.prompt: empty/);
  } finally {
    model.dispose();
  }
});

test('selfAlign on a tiny random llama (cpu): batched = one at a time; with a bundle each stage starts with its step tag, routed as its own step', async () => {
  const { model, tok } = await tiny();
  const bundle = createMote(model, { rank: 2, loraAlpha: 4 }, { seed: 5, init: 'random' });
  try {
    const tags = stepTokenIds(tok, bundle.config);
    const prompts: SelfAlignPrompt[] = ['hello world?', 'the world?', 'hello?'].map((p, i) => ({ prompt: p, id: `p${i}` }));
    const run = async (batchSize: number, withBundle: boolean) => {
      const seen: { reqs: GenerateRequest[]; opts: GenerateOptions; res: GenerateResult[] }[] = [];
      const o: SelfAlignOptions = {
        output: file('real.jsonl'),
        droppedFile: file('real-dropped.jsonl'),
        maxNewTokens: 5,
        batchSize,
        dropTruncated: false,
        templates: TEMPLATES,
        promptFormat: 'plain',
        sampling: { temperature: 0.8 },
        seed: 9,
        adapters: withBundle ? bundle : null,
        generateFn: async (reqs, go) => {
          const res = await generate(model, reqs, go);
          seen.push({ reqs, opts: go, res });
          return res;
        },
      };
      const r = await selfAlign(model, tok, prompts, o);
      // Gibberish never says safe or unsafe: every chain is dropped, with its stage texts kept.
      assert.equal(r.written, 0);
      assert.equal(
        r.dropped.reduce((a, d) => a + d.count, 0),
        3,
      );
      return { dropped: fs.readFileSync(o.droppedFile!, 'utf8'), seen };
    };
    const one = await run(1, false);
    const all = await run(3, false);
    assert.equal(all.dropped, one.dropped);
    assert.equal(all.seen.length, 6); // draft, draft check, analysis, guidance, answer, check
    for (const s of all.seen) assert.equal(s.opts.router, undefined);

    const bOne = await run(1, true);
    const bAll = await run(3, true);
    assert.equal(bAll.dropped, bOne.dropped);
    assert.notEqual(bAll.dropped, all.dropped); // the experts change what is written
    // Stage → the bundle's step index: draft = answer (2), analysis 0, guidance 1; the checks have no expert.
    const EXPERT: Record<string, number | null> = { draft: 2, analysis: 0, guidance: 1, answer: 2, check: null };
    assert.ok(bAll.seen.length >= 3);
    for (const s of bAll.seen) {
      const stage = tok
        .decode([...s.reqs[0]!.prompt], { skipSpecialTokens: true })
        .trim()
        .split(' ')[0]!;
      assert.ok(stage in EXPERT, stage);
      const k = EXPERT[stage]!;
      assert.equal(s.opts.stepTokenRouting, 'own');
      assert.equal(s.opts.router?.K, 2);
      for (const [j, r] of s.res.entries()) {
        const req = s.reqs[j]!;
        if (k !== null) {
          assert.deepEqual(req.force, [{ step: k, at: 0 }]);
          assert.equal(req.stopAfterStep, k);
          assert.ok(req.stop!.includes(tags.end[k]!));
          assert.equal(req.maxNewTokens, 6); // 5 + the forced tag
          assert.equal(r.tokens[0], tags.start[k]);
          assert.equal(r.steps[0], k);
        } else {
          assert.equal(req.force, undefined);
          assert.equal(req.stopAfterStep, undefined);
          assert.equal(req.maxNewTokens, 5);
        }
      }
    }
  } finally {
    bundle.dispose();
    model.dispose();
  }
});
