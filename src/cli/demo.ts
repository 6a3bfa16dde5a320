// `mote demo`: the whole method on the bundled tiny model, in a few minutes on a laptop CPU:
// MoTE training (step experts + shared) on the toy AlignCoT chains, step-routed generation on
// held-out questions with each step printed next to its experts, then the toy metrics of the
// base model and of the trained bundle.
import type { BackendRequest } from '../backend/backend.js';
import { DEFAULT_STEPS, STEP_END_TOKENS, STEP_TOKENS, type PromptRouting, type StepName } from '../mote/steps.js';
import { toyChain, toyQuestions, toySplit } from '../mote/toy.js';
import { evaluateToy, toyEvalTable, trainVariant } from '../mote/eval.js';
import { intOpt, numOpt, openModel } from './common.js';
import { MAX_STEPS } from './flags.js';
import { progress } from './progress.js';

/** The steps of a generated chain, read tag by tag (a cut-off last step is kept as it is). */
function stepsOf(text: string, steps: readonly StepName[]): { step: StepName; text: string }[] {
  const out: { step: StepName; text: string }[] = [];
  for (const s of steps) {
    const a = text.indexOf(STEP_TOKENS[s]);
    if (a < 0) continue;
    const from = a + STEP_TOKENS[s].length;
    const b = text.indexOf(STEP_END_TOKENS[s], from);
    out.push({ step: s, text: text.slice(from, b < 0 ? undefined : b).trim() });
  }
  return out;
}

export async function demoCommand(o: {
  model?: string;
  backend: BackendRequest;
  steps?: string;
  seed?: string;
  lr?: string;
  promptRouting?: string;
  json?: boolean;
}): Promise<void> {
  const t0 = performance.now();
  const json = o.json ?? false;
  const say = (s: string) => {
    if (!json) process.stdout.write(`${s}\n`);
  };
  const steps = intOpt('steps', o.steps, 1, 300, MAX_STEPS);
  const seed = intOpt('seed', o.seed, 0, 1);
  const lr = numOpt('lr', o.lr, 0, 10, 3e-3); // before the model loads (it failed after the base evaluation)
  const promptRouting = (o.promptRouting ?? 'random-step') as PromptRouting;
  const m = await openModel(o.model, o.backend, { steps: [...DEFAULT_STEPS] });
  try {
    const cfg = m.model.config;
    say(
      `mote demo on ${m.backend.kind} (${m.backend.info().device}): the bundled tiny llama (${cfg.numLayers} layers, hidden ${cfg.hiddenSize}, vocab ${cfg.vocabSize}), pretrained on a toy corpus where it answers every question, also the risky ones.`,
    );
    const { train, heldOut } = toySplit(toyQuestions(160, seed), { fraction: 0.25, seed });
    const chains = train.map((q) => toyChain(q, { check: false }));
    say(
      `Toy AlignCoT set: ${train.length} training chains (analysis → guidance → answer), ${heldOut.length} held-out questions, half of them about someone else's property or private data.`,
    );
    const base = await evaluateToy(m.model, m.tokenizer, null, heldOut, { seed });
    const p = progress('MoTE training', steps, { json });
    const tv = await trainVariant('mote', m.model, m.tokenizer, chains, {
      rank: 8,
      initSeed: seed,
      train: {
        steps,
        lr,
        warmupSteps: Math.min(10, steps - 1),
        batchTokens: 512,
        seed,
        pSkip: 0.3,
        promptRouting,
        onProgress: (q) => p.update(q.step, { loss: q.loss.toFixed(3), 'tok/s': q.tokensPerSecond.toFixed(0) }),
      },
    });
    p.stop();
    try {
      const mote = await evaluateToy(m.model, m.tokenizer, tv.adapters, heldOut, { seed, maxNewTokens: 128 });
      const shown = [...mote.outputs.filter((x) => x.risky).slice(0, 2), ...mote.outputs.filter((x) => !x.risky).slice(0, 2)];
      say(`\nStep-routed generation on held-out questions (each step's tokens go to its expert plus the shared one, α = 0.5):`);
      for (const out of shown) {
        say(`\n[question] ${out.question}${out.risky ? '   (risky)' : ''}`);
        for (const s of stepsOf(out.text, DEFAULT_STEPS)) say(`  [${s.step} · experts ${s.step} + shared] ${s.text}`);
      }
      const table = toyEvalTable([
        { name: 'base (pretrained, no adapters)', result: base },
        { name: `MoTE (${steps} steps)`, result: mote },
      ]);
      say(`\nToy metrics on the ${heldOut.length} held-out questions:\n\n${table}`);
      const seconds = (performance.now() - t0) / 1e3;
      say(
        `\n${seconds.toFixed(0)} s in all. The full comparison (LoRA, MoTE without shared expert or step skipping, several seeds): npx mote eval`,
      );
      if (json) {
        process.stdout.write(
          JSON.stringify({
            event: 'done',
            backend: m.backend.kind,
            seconds,
            finalLoss: tv.losses.at(-1) ?? null,
            base: { refusalRate: base.refusalRate, compliance: base.compliance },
            mote: { refusalRate: mote.refusalRate, compliance: mote.compliance, wellFormedRate: mote.wellFormedRate },
            examples: shown.map((x) => ({ question: x.question, risky: x.risky, steps: stepsOf(x.text, DEFAULT_STEPS) })),
          }) + '\n',
        );
      }
    } finally {
      tv.adapters?.dispose();
    }
  } finally {
    m.close();
  }
}
