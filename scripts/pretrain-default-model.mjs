#!/usr/bin/env node
// Pretrains the bundled default model (assets/default-model) from scratch on the cpu backend
// with a fixed seed: the toy corpus, full-parameter training with mote's own trainer, then
// saveModel. Build first (npx tsc -p .). Usage:
//   node scripts/pretrain-default-model.mjs [--steps N] [--seed S] [--out DIR]
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => import(new URL(`../dist/src/${p}`, import.meta.url).href);
const { openBackend } = await dist('backend/select.js');
const dm = await dist('mote/default_model.js');
const { saveModel } = await dist('model/save.js');
const { generate } = await dist('generate/generate.js');

const { values } = parseArgs({
  options: {
    steps: { type: 'string', default: String(dm.DEFAULT_PRETRAIN.steps) },
    seed: { type: 'string', default: String(dm.DEFAULT_PRETRAIN.seed) },
    out: { type: 'string', default: path.join(root, 'assets', 'default-model') },
  },
});
const steps = Number(values.steps),
  seed = Number(values.seed);

const backend = await openBackend('cpu');
const t0 = performance.now();
const sec = () => ((performance.now() - t0) / 1000).toFixed(1);
let window = [];
console.log(`pretraining the default model: ${steps} steps, seed ${seed}, cpu (${backend.info().details.threads} threads)`);
const r = await dm.pretrainDefaultModel({
  backend,
  steps,
  seed,
  onProgress: (p) => {
    window.push(p.loss);
    if (p.step === 1 || p.step % 50 === 0 || p.step === p.totalSteps) {
      const mean = window.reduce((a, b) => a + b, 0) / window.length;
      console.log(
        `step ${p.step}/${p.totalSteps}  loss ${p.loss.toFixed(4)} (mean of last ${window.length}: ${mean.toFixed(4)})  lr ${p.lr.toExponential(2)}  epoch ${p.epoch}  ${Math.round(p.tokensPerSecond)} tok/s  ${sec()} s`,
      );
      window = [];
    }
  },
});
const { model, tokenizer, losses, corpus } = r;
const trainSecs = Number(sec());
const tail = losses.slice(-50);
const finalLoss = tail.reduce((a, b) => a + b, 0) / tail.length;
const benign = corpus.heldOut.filter((q) => !q.risky);
const risky = corpus.heldOut.filter((q) => q.risky);
const heldBenign = await dm.toyAnswerLoss(model, tokenizer, benign);
const heldRisky = await dm.toyAnswerLoss(model, tokenizer, risky.slice(0, 100));
console.log(
  `done in ${trainSecs} s: corpus ${corpus.texts.length} texts (${corpus.qaCount} question-answer pairs), vocabulary ${tokenizer.vocabSize}`,
);
console.log(`final training loss (mean of the last ${tail.length} steps): ${finalLoss.toFixed(4)} nats/token`);
console.log(
  `held-out answer loss: benign ${heldBenign.toFixed(4)} (${benign.length} questions), risky ${heldRisky.toFixed(4)} (100 questions)`,
);

const eos = tokenizer.eosTokenId;
const samples = [...benign.slice(0, 3), ...risky.slice(0, 2)];
const res = await generate(
  model,
  samples.map((q) => ({ prompt: tokenizer.encode(dm.toyPrompt(q.question), { addSpecialTokens: false }), maxNewTokens: 40, stop: [eos] })),
);
samples.forEach((q, i) => console.log(`  ${q.question}\n    -> ${tokenizer.decode(res[i].tokens, { skipSpecialTokens: true })}`));

await saveModel(model, values.out, { tokenizer });
const info = {
  script: 'scripts/pretrain-default-model.mjs',
  steps,
  seed,
  backend: 'cpu',
  lr: dm.DEFAULT_PRETRAIN.lr,
  batchTokens: dm.DEFAULT_PRETRAIN.batchTokens,
  warmupSteps: Math.min(dm.DEFAULT_PRETRAIN.warmupSteps, Math.floor(steps / 10)),
  corpusTexts: corpus.texts.length,
  corpusQuestionAnswerPairs: corpus.qaCount,
  heldOutQuestions: corpus.heldOut.length,
  finalTrainLoss: Number(finalLoss.toFixed(4)),
  heldOutAnswerLoss: { benign: Number(heldBenign.toFixed(4)), risky: Number(heldRisky.toFixed(4)) },
  trainSeconds: trainSecs,
};
fs.writeFileSync(path.join(values.out, 'pretrain.json'), JSON.stringify(info, null, 2) + '\n');
let bytes = 0;
for (const f of fs.readdirSync(values.out)) bytes += fs.statSync(path.join(values.out, f)).size;
console.log(`wrote ${values.out} (${(bytes / 1e6).toFixed(2)} MB)`);
model.dispose();
backend.destroy();
