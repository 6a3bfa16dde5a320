// README "MoTE bundle" and "training" examples, as a consumer writes them, on the small model the
// package ships (DEFAULT_MODEL_DIR) instead of 'path/to/SmolLM-135M', in a temporary folder, with
// few steps (scripts/check-consumer.mjs).
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  openBackend,
  loadModel,
  loadTokenizer,
  addStepTokens,
  stepTokenIds,
  moteConfig,
  createMote,
  saveMote,
  loadMote,
  generate,
  Trainer,
  DEFAULT_MODEL_DIR,
} from 'mote-lora';

const work = mkdtempSync(join(tmpdir(), 'mote-consumer-'));
const backend = await openBackend('cpu');
const dir = DEFAULT_MODEL_DIR;
const model = await loadModel(dir, { backend });
const tokenizer = loadTokenizer(dir);
await addStepTokens(model, tokenizer);
const tags = stepTokenIds(tokenizer, moteConfig());
const mote = createMote(model, { rank: 16, alpha: 0.5 }); // analysis, guidance, answer + shared
const ids = [1, 7, 9, tags.start[0]!, 11, 12, tags.start[1]!, 13];
const steps = [-1, -1, -1, 0, 0, 0, 1, 1]; // prompt, then analysis, then guidance
const logits = await model.logits(ids, { lora: mote.loraFor(mote.routing(steps)) });
await saveMote(mote, join(work, 'my-mote')); // each expert is a PEFT adapter
const loaded = await loadMote(join(work, 'my-mote'), model);
const [out] = await generate(model, [{ prompt: [1, 7, 9], maxNewTokens: 8 }], {
  router: loaded.tokenRouter(),
  stepTokens: new Map(tags.start.map((id, k) => [id, k])), // step-start token id -> step
  stepTokenRouting: 'own',
  onToken: ({ token, step }) => process.stdout.write(`${step}:${token} `),
});
console.log(`\nlogits: ${logits.length} values; generated ${out ? 'one sequence' : 'nothing'}`);

const examples = [{ ids, lossMask: [0, 0, 0, 1, 1, 1, 1, 1], stepIds: [-1, -1, -1, 0, 0, 0, 1, 1] }];
const trainer = new Trainer(model, mote, examples, {
  steps: 2,
  lr: 2e-4,
  warmupSteps: 1,
  batchTokens: 512,
  gradAccum: 2,
  clipNorm: 1,
  pSkip: 0.3,
  seed: 1,
  onProgress: (p) => console.log(p.step, p.loss, p.tokensPerSecond),
});
await trainer.run({ checkpointDir: join(work, 'ckpt'), checkpointEvery: 1 });
await saveMote(mote, join(work, 'my-mote'));
backend.dispose();
