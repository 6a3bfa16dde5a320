// Hostile values in files mote reads: NaN / ∞ in weights, adapters and checkpoints (which
// would otherwise give NaN logits and token 0 forever, or a "loss is not finite" steps later),
// JSON nested deeper than a recursive message builder can walk, malformed checkpoint state.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FormatError, describe } from '../src/errors.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import { ADAPTER_WEIGHTS_FILE } from '../src/io/peft.js';
import { loadModel } from '../src/model/load.js';
import { loadPeftAdapters } from '../src/adapters/adapter_set.js';
import { saveCheckpoint, loadCheckpoint } from '../src/train/checkpoint.js';
import { f32ToBf16Bits } from '../src/dtype.js';
import { closeBackends, forEachBackend } from './helpers.js';
import { writeTinyModel, writeTinyPeftAdapter, type TinyModelOptions } from './fixtures/tiny_model.js';
import { tinyTraining } from './fixtures/train_fixture.js';
import { TINY_VOCAB_SIZE, writeTinyTokenizer } from './fixtures/tiny_tokenizer.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { addStepTokens } from '../src/mote/bundle.js';
import { DEFAULT_STEPS, specialTokens } from '../src/mote/steps.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-hostile-load-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
after(closeBackends);

// The checks run on the host before anything is uploaded: one backend shows them.
const CPU = { kinds: ['cpu' as const] };

const TINY: TinyModelOptions = {
  family: 'llama',
  hidden: 16,
  intermediate: 32,
  layers: 1,
  heads: 2,
  kvHeads: 1,
  vocab: 32,
  tied: false,
  dtype: 'f32',
  seed: 1,
};

/** Rewrites tensor `name` of a safetensors file with `edit` applied to its data. */
function tamper(file: string, name: string, edit: (d: Float32Array | Uint16Array | Int32Array) => void): void {
  const c = readSafetensors(file);
  edit(c.tensors.get(name)!.data);
  writeSafetensors(file, c.tensors);
}

test('describe does not recurse into nested arrays nor dump long ones', () => {
  let deep: unknown = [];
  for (let i = 0; i < 100_000; i++) deep = [deep];
  assert.equal(describe(deep), '[[…]]');
  assert.equal(describe([1, 'a', null]), '[1, "a", null]');
  assert.match(describe(Array.from({ length: 1000 }, (_, i) => i)), /^\[0, 1, .*, 15, … \(1000 entries\)\]$/);
  assert.ok(describe('x'.repeat(1e6)).length < 300);
});

forEachBackend(
  'config.json with a field nested 10^5 deep is a FormatError naming the field, not a stack overflow',
  async (b) => {
    const dir = path.join(tmp, 'deep-config');
    writeTinyModel(dir, TINY);
    const file = path.join(dir, 'config.json');
    const deep = '['.repeat(100_000) + ']'.repeat(100_000);
    const clean = fs.readFileSync(file, 'utf8');
    for (const field of ['architectures', 'hidden_size', 'rope_scaling', 'eos_token_id']) {
      const cfg = JSON.parse(clean) as Record<string, unknown>;
      delete cfg[field];
      fs.writeFileSync(file, JSON.stringify(cfg).replace(/^\{/, `{"${field}":${deep},`));
      await assert.rejects(
        loadModel(dir, { backend: b }),
        (e: Error) => e instanceof FormatError && e.message.includes(file) && e.message.includes(field),
        field,
      );
    }
  },
  CPU,
);

test('a safetensors __metadata__ nested 10^5 deep is a FormatError', () => {
  const header = Buffer.from('{"__metadata__":' + '['.repeat(100_000) + ']'.repeat(100_000) + '}');
  const bytes = Buffer.alloc(8 + header.length);
  bytes.writeBigUInt64LE(BigInt(header.length));
  header.copy(bytes, 8);
  const file = path.join(tmp, 'deep.safetensors');
  fs.writeFileSync(file, bytes);
  assert.throws(
    () => readSafetensors(file),
    (e: Error) => e instanceof FormatError && e.message.includes('__metadata__'),
  );
});

forEachBackend(
  'loadModel refuses weights holding NaN or ∞, naming file, tensor and element',
  async (b) => {
    for (const [dtype, bad, what] of [
      ['f32', NaN, 'NaN'],
      ['f32', -Infinity, '-Infinity'],
      ['bf16', f32ToBf16Bits(Infinity), 'Infinity'],
    ] as const) {
      const dir = path.join(tmp, `nan-${b.kind}-${dtype}-${what}`);
      writeTinyModel(dir, { ...TINY, dtype });
      const file = path.join(dir, 'model.safetensors');
      const name = 'model.layers.0.mlp.down_proj.weight';
      tamper(file, name, (d) => (d[5] = bad));
      await assert.rejects(
        loadModel(dir, { backend: b }),
        (e: Error) =>
          e instanceof FormatError &&
          e.message.includes(file) &&
          e.message.includes(`'${name}'`) &&
          e.message.includes(`element 5 is ${what}`),
      );
    }
    // A finite f32 that f16 cannot hold becomes ∞ on a dtype: 'f16' load.
    const dir = path.join(tmp, `f16-overflow-${b.kind}`);
    writeTinyModel(dir, TINY);
    tamper(path.join(dir, 'model.safetensors'), 'model.norm.weight', (d) => (d[0] = 1e6));
    await assert.rejects(loadModel(dir, { backend: b, dtype: 'f16' }), /'model\.norm\.weight': element 0 is 1000000, which overflows f16/);
    (await loadModel(dir, { backend: b })).dispose(); // as f32 it is fine
  },
  CPU,
);

forEachBackend(
  'loadPeftAdapters refuses adapter weights holding NaN',
  async (b) => {
    const dir = path.join(tmp, `nan-base-${b.kind}`);
    const tm = writeTinyModel(dir, TINY);
    const model = await loadModel(dir, { backend: b });
    try {
      const ad = path.join(tmp, `nan-adapter-${b.kind}`);
      const a = writeTinyPeftAdapter(ad, tm.cfg, { r: 2, alpha: 4, seed: 3 });
      const file = path.join(ad, ADAPTER_WEIGHTS_FILE);
      tamper(file, a.names[1]!, (d) => (d[0] = NaN));
      await assert.rejects(
        loadPeftAdapters(model, [ad]),
        (e: Error) =>
          e instanceof FormatError && e.message.includes(file) && e.message.includes(a.names[1]!) && /element 0 is NaN/.test(e.message),
      );
    } finally {
      model.dispose();
    }
  },
  CPU,
);

forEachBackend(
  'loadCheckpoint refuses NaN parameters, negative second moments and malformed params lists, leaving the trainer as it was',
  async (b) => {
    const run = tinyTraining(b, 4);
    const dir = path.join(tmp, `ckpt-${b.kind}`);
    try {
      await run.trainer.trainStep();
      await saveCheckpoint(run.trainer, dir);
      // Without mote's marker there are no hashes to catch the edits (an earlier layout, or a tamperer).
      fs.rmSync(path.join(dir, 'mote-written.json'));
      const files = ['params.safetensors', 'optimizer.safetensors', 'trainer_state.json'].map((f) => path.join(dir, f));
      const clean = files.map((f) => fs.readFileSync(f));
      const restore = () => files.forEach((f, i) => fs.writeFileSync(f, clean[i]!));
      const fresh = tinyTraining(b, 4);
      try {
        const before = await fresh.trainer.params[0]!.p.readFloat();
        const pname = fresh.trainer.params[0]!.name;

        tamper(files[0]!, pname, (d) => (d[1] = NaN));
        await assert.rejects(
          loadCheckpoint(fresh.trainer, dir),
          (e: Error) => e instanceof FormatError && e.message.includes(files[0]!) && e.message.includes(`'${pname}': element 1 is NaN`),
        );
        restore();

        tamper(files[1]!, `${pname}.exp_avg_sq`, (d) => (d[2] = -1));
        await assert.rejects(
          loadCheckpoint(fresh.trainer, dir),
          (e: Error) => e instanceof FormatError && e.message.includes(`'${pname}.exp_avg_sq': element 2 is -1`),
        );
        restore();

        const st = JSON.parse(clean[2]!.toString()) as Record<string, unknown>;
        fs.writeFileSync(files[2]!, JSON.stringify({ ...st, params: [null] }));
        await assert.rejects(loadCheckpoint(fresh.trainer, dir), (e: Error) => e instanceof FormatError && e.message.includes('params[0]'));
        restore();

        assert.deepEqual(await fresh.trainer.params[0]!.p.readFloat(), before);
        assert.equal(fresh.trainer.state.step, 0);
        await loadCheckpoint(fresh.trainer, dir);
        assert.equal(fresh.trainer.state.step, 1);
      } finally {
        fresh.dispose();
      }
    } finally {
      run.dispose();
    }
  },
  CPU,
);

forEachBackend(
  "addStepTokens refuses a tokenizer whose text tokens lie past the model's vocabulary (instead of inventing their embeddings)",
  async (b) => {
    const dir = path.join(tmp, `small-vocab-${b.kind}`);
    writeTinyModel(dir, { ...TINY, vocab: 32 });
    writeTinyTokenizer(dir); // 46 ids
    const model = await loadModel(dir, { backend: b });
    try {
      await assert.rejects(
        addStepTokens(model, loadTokenizer(dir)),
        (e: Error) =>
          e instanceof FormatError &&
          e.message.includes(path.join(dir, 'tokenizer.json')) &&
          e.message.includes('id 32') &&
          e.message.includes('vocab_size 32'),
      );
      assert.equal(model.config.vocabSize, 32);
    } finally {
      model.dispose();
    }
    // Step tags a tokenizer already holds past the vocabulary are fine: their rows are drawn.
    const ok = path.join(tmp, `tags-past-vocab-${b.kind}`);
    writeTinyModel(ok, { ...TINY, vocab: TINY_VOCAB_SIZE });
    writeTinyTokenizer(ok);
    const tok = loadTokenizer(ok);
    tok.addSpecialTokens(specialTokens({ steps: [...DEFAULT_STEPS] }));
    const m2 = await loadModel(ok, { backend: b });
    try {
      await addStepTokens(m2, tok);
      assert.equal(m2.config.vocabSize, tok.vocabSize);
    } finally {
      m2.dispose();
    }
  },
  CPU,
);
