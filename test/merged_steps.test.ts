// `mote export --merged-steps`: each step expert folded with the shared expert into one PEFT
// adapter of rank r_step + r_shared. Served with one adapter per token (K = 1: a step's tokens
// under its merged adapter, prompt tokens under the shared one), the model gives the same
// logits as the bundle with its two experts per token (K = 2), on every backend.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadModel } from '../src/model/load.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { readJsonFile } from '../src/io/files.js';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, parsePeftConfig, peftRank, peftScale } from '../src/io/peft.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { DEFAULT_MODEL_DIR } from '../src/mote/default_model.js';
import { addStepTokens, createMote } from '../src/mote/bundle.js';
import { saveMote } from '../src/mote/bundle_io.js';
import { loadPeftAdapters } from '../src/adapters/adapter_set.js';
import { moteConfig, SHARED_EXPERT } from '../src/mote/steps.js';
import { mergeStepExperts } from '../src/mote/merged_steps.js';
import { exportCommand } from '../src/cli/export.js';
import { closeBackends, forEachBackend, relErr } from './helpers.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-merged-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
after(closeBackends);

forEachBackend("merged step adapters (K = 1) give the bundle's logits (K = 2); rank r_step + r_shared, scale 1", async (b) => {
  const model = await loadModel(DEFAULT_MODEL_DIR, { backend: b });
  try {
    const config = moteConfig({ alpha: 0.3 });
    await addStepTokens(model, loadTokenizer(DEFAULT_MODEL_DIR), config);
    const bundle = createMote(model, { ...config, rank: 4, loraAlpha: 6 }, { seed: 9, init: 'random' });
    const dir = path.join(tmp, `bundle-${b.kind}`);
    const out = path.join(tmp, `merged-${b.kind}`);
    try {
      await saveMote(bundle, dir);
      const silence = process.stdout.write;
      process.stdout.write = (() => true) as typeof process.stdout.write;
      try {
        await exportCommand({ mote: dir, out, mergedSteps: true });
      } finally {
        process.stdout.write = silence;
      }
      // The files: one PEFT adapter per step plus the shared one; rank 8 = 4 + 4, scale 1.
      const names = [...config.steps, SHARED_EXPERT];
      assert.deepEqual(
        fs
          .readdirSync(out)
          .filter((f) => !f.endsWith('.json'))
          .sort(),
        [...names].sort(),
      );
      for (const n of names) {
        const cfgFile = path.join(out, n, ADAPTER_CONFIG_FILE);
        const cfg = parsePeftConfig(readJsonFile(cfgFile, 'merged adapter'), cfgFile);
        const r = n === SHARED_EXPERT ? 4 : 8;
        assert.equal(peftRank(cfg, 0, 'q_proj'), r, n);
        assert.equal(peftScale(cfg, 0, 'q_proj'), 1, n);
        const A = readSafetensors(path.join(out, n, ADAPTER_WEIGHTS_FILE)).tensors.get(
          'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight',
        )!;
        assert.equal(A.shape[0], r);
      }
      assert.equal(mergeStepExperts(dir).size, names.length);

      // Logits: two sequences, prompt tokens then tokens of each step (step ids −1: prompt).
      const merged = await loadPeftAdapters(
        model,
        names.map((n) => path.join(out, n)),
      );
      try {
        const stepIds = [-1, -1, -1, 0, 0, 1, 2, 2, -1, -1, 2, 1, 0, 0];
        const seq = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1];
        const ids = stepIds.map((_, t) => ((t * 37 + 11) % 120) + 5);
        const rtBundle = bundle.routing(stepIds, { seq });
        const rtMerged = merged.routing(stepIds.map((s) => (s < 0 ? names.length - 1 : s)));
        try {
          const want = await model.logits(ids, { seq, lora: bundle.loraFor(rtBundle) });
          const got = await model.logits(ids, { seq, lora: merged.loraFor(rtMerged) });
          const plain = await model.logits(ids, { seq });
          assert.ok(relErr(plain, want) > 1e-2, 'the experts must change the logits (else the test is vacuous)');
          const e = relErr(got, want);
          assert.ok(e < 2e-5, `merged vs bundle logits: relative error ${e}`);
        } finally {
          rtBundle.dispose();
          rtMerged.dispose();
        }
      } finally {
        merged.dispose();
      }
    } finally {
      bundle.dispose();
    }
  } finally {
    model.dispose();
  }
});
