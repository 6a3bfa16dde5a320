// saveModel / hfConfigJson (src/model/save.ts): a model saved as an HF directory loads back
// with the same weights, bit for bit in their stored dtype (f32 llama untied, bf16 qwen2 with
// q/k/v biases, f16 mistral with tied embeddings: no lm_head.weight written), and the same
// logits; the tokenizer files come along; sharding past maxShardBytes; saving over the folder
// the model came from (only with overwrite: it was not written by mote). config.json round trips through parseHFConfig for the four families
// (rope scaling, sliding windows, head_dim, eos lists). A non-model folder is refused and left
// as it was; bad arguments are ArgumentErrors naming the argument.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadModel } from '../src/model/load.js';
import { hfConfigJson, saveModel } from '../src/model/save.js';
import { parseHFConfig, type ModelConfig } from '../src/model/config.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { ArgumentError } from '../src/errors.js';
import { tinyConfigJson, writeTinyModel, type TinyModelOptions } from './fixtures/tiny_model.js';
import { writeTinyTokenizer } from './fixtures/tiny_tokenizer.js';
import { closeBackends, forEachBackend } from './helpers.js';

after(closeBackends);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-save-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
let n = 0;
const newDir = (label: string) => path.join(tmp, `${label}-${n++}`);

const BASE: TinyModelOptions = {
  family: 'llama',
  hidden: 32,
  intermediate: 40,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  vocab: 48,
  tied: false,
  dtype: 'f32',
  seed: 3,
};
const IDS = [1, 5, 9, 17, 33, 2, 40, 7, 7, 12];

function bytesOf(data: ArrayBufferView): Buffer {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

const CASES: { name: string; o: Partial<TinyModelOptions> }[] = [
  { name: 'llama f32 untied', o: {} },
  { name: 'qwen2 bf16 with q/k/v biases', o: { family: 'qwen2', dtype: 'bf16', seed: 4 } },
  { name: 'mistral f16 tied', o: { family: 'mistral', dtype: 'f16', tied: true, seed: 5 } },
  { name: 'qwen3 bf16 with q/k norms, head_dim 16 (q width 64 ≠ hidden 32)', o: { family: 'qwen3', dtype: 'bf16', headDim: 16, seed: 6 } },
];

for (const c of CASES) {
  forEachBackend(`saveModel round trip: ${c.name}`, async (be) => {
    const src = writeTinyModel(newDir('src'), { ...BASE, ...c.o });
    writeTinyTokenizer(src.dir);
    const model = await loadModel(src.dir, { backend: be });
    const out = newDir('out');
    try {
      await saveModel(model, out, { tokenizer: loadTokenizer(src.dir) });
      const files = fs.readdirSync(out).sort();
      assert.deepEqual(files, [
        'config.json',
        'generation_config.json',
        'model.safetensors',
        'mote-written.json',
        'tokenizer.json',
        'tokenizer_config.json',
      ]);
      // The weights, bit for bit, in their stored dtype; a tied lm_head is not written.
      const saved = readSafetensors(path.join(out, 'model.safetensors')).tensors;
      assert.deepEqual([...saved.keys()].sort(), [...src.tensors.keys()].sort());
      if (c.o.tied) assert.ok(!saved.has('lm_head.weight'));
      for (const [name, t] of src.tensors) {
        const s = saved.get(name)!;
        assert.equal(s.dtype, t.dtype, name);
        assert.deepEqual(s.shape, [...t.shape], name);
        assert.ok(bytesOf(s.data).equals(bytesOf(t.data as ArrayBufferView)), `${name}: bytes differ`);
      }
      // The config: equal after parsing, with torch_dtype from the weights.
      const cfg = parseHFConfig(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
      assert.deepEqual(cfg, src.cfg);
      // Loads back with the same logits (same weights, same backend: identical).
      const back = await loadModel(out, { backend: be });
      try {
        const a = await model.logits(IDS),
          b = await back.logits(IDS);
        assert.deepEqual(b, a);
      } finally {
        back.dispose();
      }
      const tok = loadTokenizer(out);
      assert.deepEqual(tok.encode('hello world'), loadTokenizer(src.dir).encode('hello world'));
      assert.equal(tok.chatTemplate, loadTokenizer(src.dir).chatTemplate);
    } finally {
      model.dispose();
    }
  });
}

forEachBackend('saveModel: shards, saving over its own folder, a non-model folder refused', async (be) => {
  const src = writeTinyModel(newDir('src'), BASE);
  const model = await loadModel(src.dir, { backend: be });
  try {
    const want = await model.logits(IDS);
    // Shards past maxShardBytes, with the index; loads back.
    const sharded = newDir('sharded');
    await saveModel(model, sharded, { maxShardBytes: 20_000 });
    const files = fs.readdirSync(sharded);
    assert.ok(files.includes('model.safetensors.index.json'), files.join(', '));
    assert.ok(files.filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)).length > 1, files.join(', '));
    assert.ok(!files.includes('model.safetensors'));
    const m2 = await loadModel(sharded, { backend: be });
    try {
      assert.deepEqual(await m2.logits(IDS), want);
    } finally {
      m2.dispose();
    }
    // Saving over the folder the model was read from replaces it as a whole.
    await saveModel(model, sharded);
    assert.ok(fs.existsSync(path.join(sharded, 'model.safetensors')));
    assert.ok(!fs.existsSync(path.join(sharded, 'model.safetensors.index.json')));
    const m3 = await loadModel(sharded, { backend: be });
    try {
      assert.deepEqual(await m3.logits(IDS), want);
    } finally {
      m3.dispose();
    }
    // The folder the model came from was not written by mote: refused, then with overwrite
    // mote's files go in and the ones they replace are kept as <name>.before-mote.
    await assert.rejects(
      saveModel(model, src.dir),
      (e: unknown) =>
        e instanceof ArgumentError && /was not written by mote/.test((e as Error).message) && /overwrite/.test((e as Error).message),
    );
    await saveModel(model, src.dir, { overwrite: true });
    assert.ok(
      fs.existsSync(path.join(src.dir, 'config.json.before-mote')) && fs.existsSync(path.join(src.dir, 'model.safetensors.before-mote')),
    );
    const m4 = await loadModel(src.dir, { backend: be });
    try {
      assert.deepEqual(await m4.logits(IDS), want);
    } finally {
      m4.dispose();
    }

    // A non-empty folder mote did not write: refused, left as it was.
    const other = newDir('other');
    fs.mkdirSync(other);
    fs.writeFileSync(path.join(other, 'notes.txt'), 'keep me');
    await assert.rejects(
      saveModel(model, other),
      (e: unknown) =>
        e instanceof ArgumentError && /was not written by mote/.test((e as Error).message) && (e as Error).message.includes(other),
    );
    assert.deepEqual(fs.readdirSync(other), ['notes.txt']);
    assert.ok(!fs.readdirSync(path.dirname(other)).some((f) => f.startsWith(`${path.basename(other)}.tmp`)));
    // A file where the folder should be.
    const file = path.join(other, 'notes.txt');
    await assert.rejects(
      saveModel(model, file),
      (e: unknown) => e instanceof ArgumentError && /not a directory/.test((e as Error).message),
    );
    // An empty folder is fine.
    const empty = newDir('empty');
    fs.mkdirSync(empty);
    await saveModel(model, empty);
    assert.ok(fs.existsSync(path.join(empty, 'config.json')));
    await assert.rejects(
      saveModel(model, newDir('x'), { overwrite: 'yes' as never }),
      (e: unknown) => e instanceof ArgumentError && /overwrite: expected true or false/.test((e as Error).message),
    );

    // Bad arguments.
    await assert.rejects(
      saveModel({} as never, newDir('x')),
      (e: unknown) => e instanceof ArgumentError && /model: expected a LlamaModel/.test((e as Error).message),
    );
    await assert.rejects(saveModel(model, ''), (e: unknown) => e instanceof ArgumentError && /dir: expected/.test((e as Error).message));
    await assert.rejects(
      saveModel(model, newDir('x'), { tokenizer: 'tok' as never }),
      (e: unknown) => e instanceof ArgumentError && /tokenizer: expected a MoteTokenizer/.test((e as Error).message),
    );
    await assert.rejects(
      saveModel(model, newDir('x'), { maxShardBytes: 0 }),
      (e: unknown) => e instanceof ArgumentError && /maxShardBytes/.test((e as Error).message),
    );
    const big = loadTokenizer(writeTinyTokenizer(newDir('tok')));
    big.addSpecialTokens(['<|a|>', '<|b|>', '<|c|>', '<|d|>']);
    assert.ok(big.vocabSize > model.config.vocabSize);
    await assert.rejects(
      saveModel(model, newDir('x'), { tokenizer: big }),
      (e: unknown) => e instanceof ArgumentError && /resize the model's embeddings/.test((e as Error).message),
    );
  } finally {
    model.dispose();
  }
  const gone = newDir('disposed');
  await assert.rejects(saveModel(model, gone), (e: unknown) => e instanceof ArgumentError && /after dispose/.test((e as Error).message));
  assert.ok(!fs.existsSync(gone));
});

test('hfConfigJson: config.json round trips through parseHFConfig (llama, mistral, qwen2, qwen3)', () => {
  const variants: TinyModelOptions[] = [
    BASE,
    {
      ...BASE,
      tied: true,
      dtype: 'bf16',
      ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
    },
    {
      ...BASE,
      attentionBias: true,
      mlpBias: true,
      headDim: 16,
      ropeScaling: { type: 'linear', factor: 2 },
      rmsNormEps: 1e-6,
      ropeTheta: 10000,
    },
    { ...BASE, family: 'mistral', slidingWindow: 4096, dtype: 'f16' },
    { ...BASE, family: 'mistral', tied: true },
    { ...BASE, family: 'qwen2', dtype: 'bf16' },
    { ...BASE, family: 'qwen2', tied: true, headDim: 16 },
    { ...BASE, family: 'qwen3', tied: true, headDim: 16, dtype: 'bf16' },
    { ...BASE, family: 'qwen3', attentionBias: true },
  ];
  for (const o of variants) {
    const cfg = parseHFConfig(tinyConfigJson(o));
    const json = hfConfigJson(cfg);
    assert.deepEqual(parseHFConfig(json), cfg, JSON.stringify(o));
    assert.deepEqual(parseHFConfig(JSON.parse(JSON.stringify(json))), cfg);
    assert.equal(json.model_type, o.family);
    assert.deepEqual(json.architectures, [
      { llama: 'LlamaForCausalLM', mistral: 'MistralForCausalLM', qwen2: 'Qwen2ForCausalLM', qwen3: 'Qwen3ForCausalLM' }[o.family],
    ]);
  }
  // Fields transformers' own configs carry.
  const llama = parseHFConfig(tinyConfigJson(BASE));
  const j = hfConfigJson(llama);
  assert.equal(j.hidden_act, 'silu');
  assert.equal(j.torch_dtype, 'float32');
  assert.equal(j.bos_token_id, 1);
  assert.equal(j.eos_token_id, 2);
  // qwen2 sliding window, an eos list, no torch_dtype, no bos.
  const q: ModelConfig = {
    ...parseHFConfig(tinyConfigJson({ ...BASE, family: 'qwen2' })),
    slidingWindow: 64,
    eosTokenIds: [2, 3],
    bosTokenId: null,
    torchDtype: null,
  };
  const qj = hfConfigJson(q);
  assert.equal(qj.use_sliding_window, true);
  assert.deepEqual(qj.eos_token_id, [2, 3]);
  assert.equal(qj.torch_dtype, undefined);
  assert.deepEqual(parseHFConfig(qj), q);
  const none: ModelConfig = { ...q, eosTokenIds: [], slidingWindow: null };
  assert.deepEqual(parseHFConfig(hfConfigJson(none)), none);

  // Configs a family cannot express.
  const bad = (cfg: ModelConfig, re: RegExp) =>
    assert.throws(
      () => hfConfigJson(cfg),
      (e: unknown) => e instanceof ArgumentError && re.test((e as Error).message),
    );
  const mistral = parseHFConfig(tinyConfigJson({ ...BASE, family: 'mistral' }));
  bad({ ...mistral, attentionBias: true }, /cfg\.attentionBias: mistral has no biases/);
  bad({ ...llama, outputBias: true }, /cfg\.outputBias/);
  bad({ ...llama, slidingWindow: 16 }, /cfg\.slidingWindow/);
  bad({ ...q, attentionBias: false }, /cfg\.attentionBias: qwen2/);
  const q3 = parseHFConfig(tinyConfigJson({ ...BASE, family: 'qwen3' }));
  bad({ ...q3, outputBias: true }, /cfg\.outputBias: a qwen3 config/);
  bad({ ...q3, mlpBias: true }, /cfg\.mlpBias: qwen3/);
  bad({ ...llama, family: 'gpt2' as never }, /cfg\.family/);
  bad({ ...llama, hiddenSize: 0 }, /cfg\.hiddenSize/);
  bad({ ...llama, headDim: 7 }, /cfg\.headDim/);
  bad({ ...llama, eosTokenIds: [48] }, /cfg\.eosTokenIds\[0\]/);
  bad({ ...llama, ropeScaling: { type: 'yarn' } as never }, /cfg\.ropeScaling\.type/);
  assert.throws(
    () => hfConfigJson(null as never),
    (e: unknown) => e instanceof ArgumentError && /cfg: expected a ModelConfig/.test((e as Error).message),
  );
});
