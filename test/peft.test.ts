import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import {
  makePeftConfig,
  parsePeftConfig,
  parsePeftKey,
  peftAlpha,
  peftConfigOptions,
  peftExpectedWeights,
  peftKey,
  peftModulePath,
  peftRank,
  peftScale,
  peftTargets,
  ADAPTER_CONFIG_FILE,
  ADAPTER_WEIGHTS_FILE,
} from '../src/io/peft.js';
import { openModelWeights, writeSafetensors, type WritableTensor } from '../src/io/safetensors.js';
import { LINEAR_MODULES, compareWeights, parseHFConfig } from '../src/model/config.js';
import { ArgumentError, FormatError } from '../src/errors.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-peft-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

/** adapter_config.json as PEFT 0.12 writes it for a LLaMA causal LM. */
const PEFT_CONFIG = {
  alpha_pattern: {},
  auto_mapping: null,
  base_model_name_or_path: 'HuggingFaceTB/SmolLM-135M',
  bias: 'none',
  fan_in_fan_out: false,
  inference_mode: true,
  init_lora_weights: true,
  layer_replication: null,
  layers_pattern: null,
  layers_to_transform: null,
  loftq_config: {},
  lora_alpha: 32,
  lora_dropout: 0.05,
  megatron_config: null,
  megatron_core: 'megatron.core',
  modules_to_save: null,
  peft_type: 'LORA',
  r: 16,
  rank_pattern: {},
  revision: null,
  target_modules: ['v_proj', 'q_proj', 'down_proj', 'o_proj', 'k_proj', 'up_proj', 'gate_proj'],
  task_type: 'CAUSAL_LM',
  use_dora: false,
  use_rslora: false,
};

const TINY_MODEL = parseHFConfig({
  model_type: 'llama',
  hidden_size: 48,
  intermediate_size: 80,
  num_hidden_layers: 3,
  num_attention_heads: 6,
  num_key_value_heads: 2,
  vocab_size: 100,
});

test('PEFT keys: base_model.model + the module path + lora_A/B.weight, no adapter name', () => {
  assert.equal(peftKey(0, 'q_proj', 'A'), 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight');
  assert.equal(peftKey(0, 'q_proj', 'B'), 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight');
  assert.equal(peftKey(31, 'down_proj', 'A'), 'base_model.model.model.layers.31.mlp.down_proj.lora_A.weight');
  assert.equal(peftKey(2, 'o_proj', 'B'), 'base_model.model.model.layers.2.self_attn.o_proj.lora_B.weight');
  assert.equal(peftModulePath(5, 'gate_proj'), 'model.layers.5.mlp.gate_proj');
  for (const m of LINEAR_MODULES) {
    for (const w of ['A', 'B'] as const) assert.deepEqual(parsePeftKey(peftKey(7, m, w)), { layer: 7, module: m, which: w });
  }
  assert.equal(parsePeftKey('base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight'), null);
  assert.equal(parsePeftKey('base_model.model.model.layers.0.mlp.q_proj.lora_A.weight'), null, 'wrong parent');
  assert.equal(parsePeftKey('base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector'), null);
  assert.equal(parsePeftKey('base_model.model.lm_head.lora_A.weight'), null);
  assert.throws(() => peftKey(-1, 'q_proj', 'A'), ArgumentError);
  assert.throws(() => peftKey(0, 'qkv_proj' as never, 'A'), ArgumentError);
  assert.throws(() => peftKey(0, 'q_proj', 'C' as never), ArgumentError);
});

test('a realistic adapter_config.json parses; scale is alpha/r, or alpha/sqrt(r) with rsLoRA', () => {
  const c = parsePeftConfig(JSON.stringify(PEFT_CONFIG));
  assert.equal(c.r, 16);
  assert.equal(c.loraAlpha, 32);
  assert.equal(c.loraDropout, 0.05);
  assert.equal(c.taskType, 'CAUSAL_LM');
  assert.equal(c.baseModelNameOrPath, 'HuggingFaceTB/SmolLM-135M');
  for (const m of LINEAR_MODULES) {
    assert.ok(peftTargets(c, 1, m), m);
    assert.equal(peftScale(c, 1, m), 2);
  }
  const rs = parsePeftConfig({ ...PEFT_CONFIG, use_rslora: true });
  assert.equal(peftScale(rs, 0, 'q_proj'), 32 / 4);
  // Minimal config: lora_alpha defaults to PEFT's 8.
  const min = parsePeftConfig({ r: 4, target_modules: ['q_proj', 'v_proj'], peft_type: 'LORA' });
  assert.equal(min.loraAlpha, 8);
  assert.equal(peftScale(min, 0, 'v_proj'), 2);
  assert.ok(!peftTargets(min, 0, 'k_proj'));
});

test('target_modules as names, dotted suffixes, a regex, all-linear; layers_to_transform; exclude_modules', () => {
  const names = parsePeftConfig({ ...PEFT_CONFIG, target_modules: ['self_attn.q_proj', 'up_proj'] });
  assert.deepEqual(
    LINEAR_MODULES.filter((m) => peftTargets(names, 0, m)),
    ['q_proj', 'up_proj'],
  );

  const re = parsePeftConfig({ ...PEFT_CONFIG, target_modules: String.raw`.*\.layers\.[02]\.self_attn\.(q|v)_proj` });
  assert.ok(peftTargets(re, 0, 'q_proj') && peftTargets(re, 2, 'v_proj'));
  assert.ok(!peftTargets(re, 1, 'q_proj') && !peftTargets(re, 0, 'k_proj'));
  // PEFT's re.fullmatch: a regex that matches only part of the path does not count.
  const partial = parsePeftConfig({ ...PEFT_CONFIG, target_modules: 'q_proj' });
  assert.ok(!peftTargets(partial, 0, 'q_proj'));

  const all = parsePeftConfig({ ...PEFT_CONFIG, target_modules: 'all-linear' });
  assert.ok(LINEAR_MODULES.every((m) => peftTargets(all, 2, m)));

  const layers = parsePeftConfig({ ...PEFT_CONFIG, layers_to_transform: [0, 2], layers_pattern: 'layers' });
  assert.deepEqual(
    [0, 1, 2].map((l) => peftTargets(layers, l, 'o_proj')),
    [true, false, true],
  );
  const one = parsePeftConfig({ ...PEFT_CONFIG, layers_to_transform: 1 });
  assert.deepEqual(one.layersToTransform, [1]);

  const ex = parsePeftConfig({ ...PEFT_CONFIG, exclude_modules: ['down_proj'] });
  assert.ok(!peftTargets(ex, 0, 'down_proj') && peftTargets(ex, 0, 'up_proj'));
});

test('rank_pattern and alpha_pattern override per module, as PEFT matches them', () => {
  const c = parsePeftConfig({
    ...PEFT_CONFIG,
    rank_pattern: { 'model.layers.1.self_attn.q_proj': 4, down_proj: 8 },
    alpha_pattern: { 'layers\\.[01]\\.mlp\\.up_proj': 64 },
  });
  assert.equal(peftRank(c, 1, 'q_proj'), 4);
  assert.equal(peftRank(c, 0, 'q_proj'), 16);
  assert.equal(peftRank(c, 11, 'q_proj'), 16, 'layers.11 does not end with layers.1.self_attn.q_proj');
  assert.equal(peftRank(c, 2, 'down_proj'), 8);
  assert.equal(peftAlpha(c, 0, 'up_proj'), 64);
  assert.equal(peftAlpha(c, 2, 'up_proj'), 32);
  assert.equal(peftScale(c, 1, 'q_proj'), 32 / 4);
  assert.equal(peftScale(c, 1, 'up_proj'), 64 / 16);
  const rs = parsePeftConfig({ ...PEFT_CONFIG, use_rslora: true, rank_pattern: { down_proj: 4 } });
  assert.equal(peftScale(rs, 0, 'down_proj'), 32 / 2);
});

test('peftExpectedWeights gives PEFT layouts: A [r, in], B [out, r], with GQA and rank overrides', () => {
  const c = parsePeftConfig({ ...PEFT_CONFIG, target_modules: ['q_proj', 'k_proj', 'down_proj'], rank_pattern: { k_proj: 2 } });
  const w = peftExpectedWeights(TINY_MODEL, c);
  assert.equal(w.length, 3 * 3 * 2);
  const byName = new Map(w.map((x) => [x.name, x.shape]));
  assert.deepEqual(byName.get(peftKey(0, 'q_proj', 'A')), [16, 48]);
  assert.deepEqual(byName.get(peftKey(0, 'q_proj', 'B')), [48, 16]);
  assert.deepEqual(byName.get(peftKey(1, 'k_proj', 'A')), [2, 48]);
  assert.deepEqual(byName.get(peftKey(1, 'k_proj', 'B')), [16, 2], 'k_proj out = 2 kv heads x 8');
  assert.deepEqual(byName.get(peftKey(2, 'down_proj', 'A')), [16, 80]);
  assert.deepEqual(byName.get(peftKey(2, 'down_proj', 'B')), [48, 16]);
});

test('an adapter folder round-trips: makePeftConfig + PEFT keys in safetensors -> parse + compare', () => {
  const dir = fs.mkdtempSync(path.join(root, 'adapter-'));
  const opts = { r: 4, loraAlpha: 8, useRslora: true, rankPattern: { 'layers.2.mlp.up_proj': 2 }, baseModelNameOrPath: 'tiny' };
  const json = makePeftConfig(opts);
  fs.writeFileSync(path.join(dir, ADAPTER_CONFIG_FILE), JSON.stringify(json, null, 2));
  assert.equal(json.peft_type, 'LORA');
  assert.deepEqual(json.target_modules, [...LINEAR_MODULES]);
  assert.equal(json.task_type, 'CAUSAL_LM');

  const cfg = parsePeftConfig(fs.readFileSync(path.join(dir, ADAPTER_CONFIG_FILE), 'utf-8'));
  assert.deepEqual(cfg, {
    r: 4,
    loraAlpha: 8,
    targetModules: [...LINEAR_MODULES],
    excludeModules: null,
    layersToTransform: null,
    useRslora: true,
    rankPattern: { 'layers.2.mlp.up_proj': 2 },
    alphaPattern: {},
    loraDropout: 0,
    bias: 'none',
    taskType: 'CAUSAL_LM',
    baseModelNameOrPath: 'tiny',
  });
  assert.deepEqual(parsePeftConfig(makePeftConfig(peftConfigOptions(cfg))), cfg, 'parse(make(options(cfg))) = cfg');

  const specs = peftExpectedWeights(TINY_MODEL, cfg);
  const tensors = new Map<string, WritableTensor>(
    specs.map((s, k) => [
      s.name,
      {
        dtype: 'f32',
        shape: s.shape,
        data: Float32Array.from({ length: s.shape[0] * s.shape[1] }, (_, i) => k + i / 1000),
      },
    ]),
  );
  writeSafetensors(path.join(dir, ADAPTER_WEIGHTS_FILE), tensors);
  const w = openModelWeights(dir, { single: ADAPTER_WEIGHTS_FILE });
  try {
    const shapes = new Map(w.names().map((n) => [n, w.entry(n).shape]));
    assert.deepEqual(compareWeights(specs, shapes), { missing: [], extra: [], wrongShape: [] });
    assert.deepEqual(w.entry(peftKey(2, 'up_proj', 'A')).shape, [2, 48]);
    assert.ok(w.names().every((n) => parsePeftKey(n) !== null));
    const b = w.get(peftKey(1, 'v_proj', 'B'));
    assert.deepEqual(b.shape, [16, 4]);
  } finally {
    w.close();
  }
});

/** Asserts a FormatError naming the file and the field. */
function rejects(json: unknown, field: string, re: RegExp): void {
  const file = 'adapters/x/adapter_config.json';
  assert.throws(
    () => parsePeftConfig(json, file),
    (e: unknown) => {
      assert.ok(e instanceof FormatError, `expected FormatError, got ${String(e)}`);
      assert.ok(e.message.startsWith(`${file}: `), e.message);
      assert.ok(e.message.includes(field), `names ${field}: ${e.message}`);
      assert.match(e.message, re);
      return true;
    },
  );
}

test('unsupported or malformed adapter configs are FormatErrors naming the field', () => {
  const { r: _r, ...noR } = PEFT_CONFIG;
  rejects(noR, 'r', /is missing/);
  rejects({ ...PEFT_CONFIG, r: 0 }, 'r', /positive integer/);
  rejects({ ...PEFT_CONFIG, r: 2.5 }, 'r', /positive integer/);
  rejects({ ...PEFT_CONFIG, lora_alpha: 'big' }, 'lora_alpha', /positive number/);
  rejects({ ...PEFT_CONFIG, peft_type: 'IA3' }, 'peft_type', /only LORA/);
  rejects({ ...PEFT_CONFIG, bias: 'lora_only' }, 'bias', /only 'none'/);
  rejects({ ...PEFT_CONFIG, fan_in_fan_out: true }, 'fan_in_fan_out', /must be false/);
  rejects({ ...PEFT_CONFIG, use_dora: true }, 'use_dora', /DoRA/);
  rejects({ ...PEFT_CONFIG, use_rslora: 'yes' }, 'use_rslora', /true or false/);
  rejects({ ...PEFT_CONFIG, modules_to_save: ['lm_head'] }, 'modules_to_save', /null or empty/);
  rejects({ ...PEFT_CONFIG, target_modules: undefined }, 'target_modules', /is missing/);
  rejects({ ...PEFT_CONFIG, target_modules: [] }, 'target_modules', /is empty/);
  rejects({ ...PEFT_CONFIG, target_modules: ['q_proj', 'lm_head'] }, 'target_modules[1]', /'lm_head' is not a linear layer/);
  rejects({ ...PEFT_CONFIG, target_modules: 7 }, 'target_modules', /list of module names or a regex/);
  rejects({ ...PEFT_CONFIG, target_modules: '(unclosed' }, 'target_modules', /regular expression/);
  rejects({ ...PEFT_CONFIG, rank_pattern: { q_proj: 0 } }, "rank_pattern['q_proj']", /positive integer/);
  rejects({ ...PEFT_CONFIG, alpha_pattern: [] }, 'alpha_pattern', /object/);
  rejects({ ...PEFT_CONFIG, layers_to_transform: [0, -1] }, 'layers_to_transform', /layer index/);
  rejects({ ...PEFT_CONFIG, task_type: 'SEQ_CLS' }, 'task_type', /not supported/);
  rejects({ ...PEFT_CONFIG, lora_dropout: 1.5 }, 'lora_dropout', /\[0, 1\)/);
  rejects('{"r": 8', 'not valid JSON', /JSON/);
  assert.throws(
    () => makePeftConfig({ r: 0, loraAlpha: 8 }),
    (e: unknown) => e instanceof ArgumentError && /\br\b/.test(e.message),
  );
});

test('regexes from adapter_config.json run in linear time (RE2); ones RE2 cannot run are FormatErrors', () => {
  // Exponential under a backtracking engine on a ~30-character module path; run in a child so a regression is a failure, not a hang.
  const evil = {
    target_modules: '(.|.)*x',
    rank_pattern: { '((.)*)*y': 2, '(a|a)*b': 3, '(\\w+\\s?)*$z': 4 },
    alpha_pattern: { '(.*.*)*q': 5 },
  };
  const mod = path.join(path.dirname(new URL(import.meta.url).pathname), '..', 'src', 'io', 'peft.js');
  const code = `
    import { parsePeftConfig, peftTargets, peftRank, peftAlpha } from ${JSON.stringify(mod)};
    const cfg = parsePeftConfig({ r: 8, lora_alpha: 16, peft_type: 'LORA', ...JSON.parse(process.env.EVIL) });
    let n = 0;
    for (let l = 0; l < 4; l++) for (const m of ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']) {
      n += Number(peftTargets(cfg, l, m)) + peftRank(cfg, l, m) + peftAlpha(cfg, l, m);
    }
    console.log('OK ' + n);`;
  const t0 = Date.now();
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
    env: { ...process.env, EVIL: JSON.stringify(evil) },
    timeout: 10_000,
    encoding: 'utf8',
  });
  assert.equal(r.signal, null, `killed (hang?): ${r.stderr}`);
  assert.equal(r.stdout.trim(), `OK ${4 * 7 * (8 + 16)}`, r.stderr);
  assert.ok(Date.now() - t0 < 4000, `took ${Date.now() - t0} ms`);
  // RE2 matches as PEFT's re.fullmatch does on ordinary patterns
  const cfg = parsePeftConfig({ ...PEFT_CONFIG, target_modules: '.*\\.(q_proj|v_proj)', rank_pattern: { 'layers\\.1\\..*': 2 } });
  assert.equal(peftTargets(cfg, 0, 'q_proj'), true);
  assert.equal(peftTargets(cfg, 0, 'k_proj'), false);
  assert.equal(peftRank(cfg, 1, 'q_proj'), 2);
  // lookaround and backreferences have no linear-time matcher: refused, naming the field
  rejects({ ...PEFT_CONFIG, target_modules: '(?=.*q).*' }, 'target_modules', /linear time/);
  rejects({ ...PEFT_CONFIG, rank_pattern: { '(a)\\1': 2 } }, 'rank_pattern', /linear time/);
});
