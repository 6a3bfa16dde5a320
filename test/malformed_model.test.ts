// Malformed-file probe for the formats mote loads: a seeded set of mutations of a tiny model
// folder (single file and sharded), the bundled default model, a PEFT adapter and a MoTE
// bundle — config.json fields, safetensors headers and bytes, the shard index,
// adapter_config.json, mote.json, and folders / FIFOs in place of files. Each variant is
// loaded in a child process (several per child); each must load or fail with a FormatError
// naming the file (and the field, for structural mutations), within 2 s and 100 MB of RSS
// growth. A crash or a hang kills only its child and is counted. One summary line is printed.
//
// The same file is the worker: run directly with MOTE_MALFORMED_WORKER=<cases.json> it loads
// the cases listed there and prints one JSON line per case.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

interface Case {
  id: string;
  /** What to load: a model folder, a PEFT adapter (on `base`), or a MoTE bundle (on `base`). */
  kind: 'model' | 'adapter' | 'mote';
  dir: string;
  base?: string;
  /** Basename the error must name. */
  file: string;
  /** For structural mutations: the message must name one of these. */
  fields?: string[];
}

interface Outcome {
  id: string;
  ok: boolean;
  name?: string;
  message?: string;
  ms: number;
  rssMB: number;
}

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');

async function worker(casesFile: string): Promise<void> {
  const { openBackend } = await import('../src/backend/select.js');
  const { loadModel } = await import('../src/model/load.js');
  const { loadPeftAdapters } = await import('../src/adapters/adapter_set.js');
  const { loadMote } = await import('../src/mote/bundle_io.js');
  const cases = JSON.parse(fs.readFileSync(casesFile, 'utf8')) as Case[];
  const backend = await openBackend('cpu');
  const bases = new Map<string, Awaited<ReturnType<typeof loadModel>>>();
  for (const c of cases) {
    process.stdout.write(JSON.stringify({ start: c.id }) + '\n');
    let base;
    if (c.base) {
      base = bases.get(c.base);
      if (!base) {
        base = await loadModel(c.base, { backend });
        bases.set(c.base, base);
      }
    }
    const rss0 = process.resourceUsage().maxRSS;
    const t0 = performance.now();
    const out: Outcome = { id: c.id, ok: true, ms: 0, rssMB: 0 };
    try {
      if (c.kind === 'model') (await loadModel(c.dir, { backend })).dispose();
      else if (c.kind === 'adapter') (await loadPeftAdapters(base!, [c.dir])).dispose();
      else (await loadMote(c.dir, base!)).dispose();
    } catch (e) {
      out.ok = false;
      out.name = (e as Error)?.constructor?.name ?? typeof e;
      out.message = String((e as Error)?.message ?? e).slice(0, 400);
    }
    out.ms = performance.now() - t0;
    out.rssMB = (process.resourceUsage().maxRSS - rss0) / 1024;
    process.stdout.write(JSON.stringify(out) + '\n');
  }
  for (const m of bases.values()) m.dispose();
  backend.destroy();
}

if (process.env.MOTE_MALFORMED_WORKER) {
  await worker(process.env.MOTE_MALFORMED_WORKER);
} else {
  await probe();
}

async function probe(): Promise<void> {
  const { writeTinyModel, writeTinyPeftAdapter } = await import('./fixtures/tiny_model.js');
  const { seededRng } = await import('./fixtures/tiny_model.js');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-malformed-'));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const rand = seededRng(20240611);

  // Clean sources.
  const tinyOpts = {
    family: 'llama',
    hidden: 32,
    intermediate: 40,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    vocab: 64,
    tied: false,
    dtype: 'f32',
    seed: 5,
  } as const;
  const single = writeTinyModel(path.join(tmp, 'src-single'), tinyOpts);
  const sharded = writeTinyModel(path.join(tmp, 'src-sharded'), { ...tinyOpts, shards: 3 });
  const defaultModel = path.join(root, 'assets', 'default-model');
  const adapterSrc = path.join(tmp, 'src-adapter');
  writeTinyPeftAdapter(adapterSrc, single.cfg, { r: 4, alpha: 8, seed: 7 });
  const moteSrc = path.join(tmp, 'src-mote');
  const steps = ['analysis', 'guidance', 'answer'];
  for (const [i, e] of [...steps, 'shared'].entries())
    writeTinyPeftAdapter(path.join(moteSrc, e), single.cfg, { r: 4, alpha: 8, seed: 11 + i });
  const moteJson = {
    format: 'mote',
    version: 1,
    steps,
    alpha: 0.5,
    r: 4,
    lora_alpha: 8,
    prompt_routing: 'random-step',
    target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
    experts: Object.fromEntries([...steps, 'shared'].map((e) => [e, e])),
  };
  fs.writeFileSync(path.join(moteSrc, 'mote.json'), JSON.stringify(moteJson));

  const cases: Case[] = [];
  let n = 0;
  /** A fresh copy of `src` (files copied, so mutations never touch the source) for one variant. */
  const variant = (src: string): string => {
    const d = path.join(tmp, `v${n++}`);
    fs.cpSync(src, d, { recursive: true });
    return d;
  };
  const fifo = (p: string) => {
    fs.rmSync(p, { recursive: true, force: true });
    const r = spawnSync('mkfifo', [p]);
    assert.equal(r.status, 0, `mkfifo ${p}`);
  };
  const asFolder = (p: string) => {
    fs.rmSync(p, { force: true });
    fs.mkdirSync(p);
  };
  const add = (c: Omit<Case, 'id'>) => cases.push({ id: `${cases.length}:${c.kind}:${c.file}${c.fields ? ':' + c.fields[0] : ''}`, ...c });

  // ---- config.json fields (tiny model and bundled default model)
  const sizeFields = [
    'num_hidden_layers',
    'hidden_size',
    'intermediate_size',
    'num_attention_heads',
    'num_key_value_heads',
    'head_dim',
    'vocab_size',
    'max_position_embeddings',
  ];
  const related: Record<string, string[]> = {
    hidden_size: ['num_attention_heads', 'head_dim'],
    num_attention_heads: ['num_key_value_heads', 'head_dim', 'hidden_size'],
    head_dim: ['num_attention_heads', 'num_key_value_heads'],
    num_key_value_heads: ['num_attention_heads'],
    vocab_size: ['bos_token_id', 'eos_token_id'],
  };
  const badValues: unknown[] = [1e9, -1, 0, '64', 1.5, true, [], {}, 2 ** 53, 1e300, 3, 2 ** 31];
  for (const [src, label] of [
    [single.dir, 'tiny'],
    [defaultModel, 'default'],
  ] as const) {
    for (const field of sizeFields) {
      for (const v of badValues) {
        if (label === 'default' && rand() < 0.5) continue; // the default model gets a seeded half of them
        const d = variant(src);
        const cfg = JSON.parse(fs.readFileSync(path.join(d, 'config.json'), 'utf8'));
        cfg[field] = v;
        fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(cfg));
        add({ kind: 'model', dir: d, file: 'config.json', fields: [field, ...(related[field] ?? [])] });
      }
    }
    const rope: unknown[] = [
      { rope_type: 'llama3', factor: 1e9, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
      { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 1e15 },
      { rope_type: 'llama3', factor: 8, low_freq_factor: 4, high_freq_factor: 1, original_max_position_embeddings: 8192 },
      { rope_type: 'linear', factor: -2 },
      { rope_type: 'yarn', factor: 2 },
      { type: 'linear', factor: 'x' },
      'linear',
      [1, 2],
    ];
    for (const r of rope) {
      const d = variant(src);
      const cfg = JSON.parse(fs.readFileSync(path.join(d, 'config.json'), 'utf8'));
      cfg.rope_scaling = r;
      fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(cfg));
      add({
        kind: 'model',
        dir: d,
        file: 'config.json',
        fields: ['rope_scaling', 'rope_type', 'factor', 'original_max_position_embeddings', 'high_freq_factor'],
      });
    }
    for (const [field, v] of [
      ['rope_theta', -1],
      ['rope_theta', 'x'],
      ['rms_norm_eps', 0],
      ['model_type', 'gpt2'],
      ['torch_dtype', 'int8'],
      ['eos_token_id', [2, 1e9]],
      ['tie_word_embeddings', 'yes'],
    ] as const) {
      const d = variant(src);
      const cfg = JSON.parse(fs.readFileSync(path.join(d, 'config.json'), 'utf8'));
      cfg[field] = v;
      fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(cfg));
      add({ kind: 'model', dir: d, file: 'config.json', fields: [field] });
    }
  }
  // config.json as text: NaN, truncated, not UTF-8, empty, deep nesting; a folder; a FIFO.
  for (const text of [
    '{"hidden_size": NaN}',
    '{"hidden_size": 32',
    '',
    Buffer.from([0x7b, 0xff, 0xfe, 0x7d]),
    '['.repeat(200000),
    'null',
    '[]',
  ]) {
    const d = variant(single.dir);
    fs.writeFileSync(path.join(d, 'config.json'), text);
    add({ kind: 'model', dir: d, file: 'config.json' });
  }
  {
    const d = variant(single.dir);
    asFolder(path.join(d, 'config.json'));
    add({ kind: 'model', dir: d, file: 'config.json' });
  }
  {
    const d = variant(single.dir);
    fifo(path.join(d, 'config.json'));
    add({ kind: 'model', dir: d, file: 'config.json' });
  }
  {
    const d = variant(single.dir);
    fs.rmSync(path.join(d, 'config.json'));
    add({ kind: 'model', dir: d, file: 'config.json' });
  }

  // ---- safetensors: header length, truncation, byte flips, header entries
  const readST = (f: string) => {
    const b = fs.readFileSync(f);
    const len = Number(b.readBigUInt64LE(0));
    return { header: JSON.parse(b.subarray(8, 8 + len).toString('utf8')) as Record<string, any>, data: b.subarray(8 + len) };
  };
  const writeST = (f: string, header: unknown, data: Buffer) => {
    const h = Buffer.from(JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(h.length));
    fs.writeFileSync(f, Buffer.concat([len, h, data]));
  };
  type Target = { src: string; kind: Case['kind']; rel: string; base?: string };
  const stTargets: Target[] = [
    { src: single.dir, kind: 'model', rel: 'model.safetensors' },
    { src: sharded.dir, kind: 'model', rel: sharded.files.find((f) => f.endsWith('.safetensors'))! },
    { src: defaultModel, kind: 'model', rel: 'model.safetensors' },
    { src: adapterSrc, kind: 'adapter', rel: 'adapter_model.safetensors', base: single.dir },
    { src: moteSrc, kind: 'mote', rel: 'guidance/adapter_model.safetensors', base: single.dir },
  ];
  const headerMutations: [string, (h: Record<string, any>, size: number) => void, string[]][] = [
    [
      'offsets past end',
      (h, size) => {
        const k = firstTensor(h);
        h[k].data_offsets = [0, size + 64];
      },
      ['data_offsets'],
    ],
    [
      'end before begin',
      (h) => {
        const k = firstTensor(h);
        h[k].data_offsets = [8, 4];
      },
      ['data_offsets'],
    ],
    [
      'overlap',
      (h) => {
        const [a, b] = tensors(h);
        h[b!].data_offsets = h[a!].data_offsets;
        h[b!].shape = h[a!].shape;
        h[b!].dtype = h[a!].dtype;
      },
      ['overlaps', 'data_offsets', 'shape'],
    ],
    [
      'shape mismatch',
      (h) => {
        const k = firstTensor(h);
        h[k].shape = [...h[k].shape, 2];
      },
      ['shape', 'data_offsets'],
    ],
    [
      'huge shape',
      (h) => {
        const k = firstTensor(h);
        h[k].shape = [2 ** 40, 2 ** 40, 2 ** 40];
      },
      ['shape', 'data_offsets'],
    ],
    [
      'negative shape',
      (h) => {
        const k = firstTensor(h);
        h[k].shape = [-1, 4];
      },
      ['shape'],
    ],
    [
      'dtype F16',
      (h) => {
        const k = firstTensor(h);
        h[k].dtype = 'F16';
      },
      ['F16', 'data_offsets', 'shape'],
    ],
    [
      'dtype unknown',
      (h) => {
        const k = firstTensor(h);
        h[k].dtype = 'Q4_K';
      },
      ['dtype'],
    ],
    [
      'dtype I32',
      (h) => {
        const k = firstTensor(h);
        h[k].dtype = 'I32';
      },
      ['dtype', 'I32'],
    ],
    [
      'no offsets',
      (h) => {
        const k = firstTensor(h);
        delete h[k].data_offsets;
      },
      ['data_offsets'],
    ],
    [
      'offsets strings',
      (h) => {
        const k = firstTensor(h);
        h[k].data_offsets = ['0', '4'];
      },
      ['data_offsets'],
    ],
    [
      'metadata number',
      (h) => {
        h.__metadata__ = { format: 7 };
      },
      ['__metadata__'],
    ],
    [
      'entry not object',
      (h) => {
        const k = firstTensor(h);
        h[k] = 5;
      },
      ['header entry'],
    ],
    [
      'tensor removed',
      (h) => {
        delete h[firstTensor(h)];
      },
      ['missing', 'tensor'],
    ],
    [
      'tensor renamed',
      (h) => {
        const k = firstTensor(h);
        h[k + '.x'] = h[k];
        delete h[k];
      },
      ['unexpected', 'tensor', 'missing'],
    ],
  ];
  for (const t of stTargets) {
    for (const [, mut, fields] of headerMutations) {
      const d = variant(t.src);
      const f = path.join(d, t.rel);
      const { header, data } = readST(f);
      mut(header, data.length);
      writeST(f, header, data);
      add({ kind: t.kind, dir: d, base: t.base, file: path.basename(t.rel), fields });
    }
    const size = fs.statSync(path.join(t.src, t.rel)).size;
    // header length field
    for (const len of [BigInt(size), 2n ** 64n - 1n, 0n, 2n, 200_000_000n]) {
      const d = variant(t.src);
      const f = path.join(d, t.rel);
      const b = fs.readFileSync(f);
      b.writeBigUInt64LE(len);
      fs.writeFileSync(f, b);
      add({ kind: t.kind, dir: d, base: t.base, file: path.basename(t.rel), fields: ['header'] });
    }
    // truncation
    for (const cut of [0, 5, 8, 30, Math.floor(size / 2), size - 1]) {
      const d = variant(t.src);
      fs.truncateSync(path.join(d, t.rel), cut);
      add({ kind: t.kind, dir: d, base: t.base, file: path.basename(t.rel) });
    }
    // seeded byte flips, anywhere in the file (header or data)
    for (let k = 0; k < 6; k++) {
      const d = variant(t.src);
      const f = path.join(d, t.rel);
      const b = fs.readFileSync(f);
      const hlen = Number(b.readBigUInt64LE(0));
      const at = k < 4 ? 8 + Math.floor(rand() * hlen) : Math.floor(rand() * b.length);
      b[at] = b[at]! ^ (1 << Math.floor(rand() * 8));
      fs.writeFileSync(f, b);
      add({ kind: t.kind, dir: d, base: t.base, file: path.basename(t.rel) });
    }
    {
      const d = variant(t.src);
      asFolder(path.join(d, t.rel));
      add({ kind: t.kind, dir: d, base: t.base, file: path.basename(t.rel) });
    }
    {
      const d = variant(t.src);
      fifo(path.join(d, t.rel));
      add({ kind: t.kind, dir: d, base: t.base, file: path.basename(t.rel) });
    }
  }

  // ---- the shard index
  const indexName = 'model.safetensors.index.json';
  const shardNames = sharded.files.filter((f) => f.endsWith('.safetensors'));
  const indexMutations: [(ix: Record<string, any>, d: string) => void, string[]][] = [
    [
      (ix) => {
        ix.weight_map[firstKey(ix.weight_map)] = '../src-single/model.safetensors';
      },
      ['weight_map'],
    ],
    [
      (ix) => {
        ix.weight_map[firstKey(ix.weight_map)] = '/etc/passwd';
      },
      ['weight_map'],
    ],
    [
      (ix) => {
        ix.weight_map[firstKey(ix.weight_map)] = 'sub/x.safetensors';
      },
      ['weight_map'],
    ],
    [
      (ix) => {
        ix.weight_map[firstKey(ix.weight_map)] = '..';
      },
      ['weight_map'],
    ],
    [
      (ix) => {
        ix.weight_map[firstKey(ix.weight_map)] = '';
      },
      ['weight_map'],
    ],
    [
      (ix) => {
        ix.weight_map[firstKey(ix.weight_map)] = 42;
      },
      ['weight_map'],
    ],
    [
      (ix) => {
        ix.weight_map[firstKey(ix.weight_map)] = 'nope.safetensors';
      },
      ['nope.safetensors', 'shard'],
    ],
    [
      (ix) => {
        ix.weight_map = [1, 2];
      },
      ['weight_map'],
    ],
    [
      (ix) => {
        ix.metadata = 'x';
      },
      ['metadata'],
    ],
    [
      (ix) => {
        const k = firstKey(ix.weight_map);
        ix.weight_map[k] = shardNames.find((s) => s !== ix.weight_map[k]);
      },
      ['weight_map', 'no such tensor'],
    ],
    [
      (ix) => {
        delete ix.weight_map[firstKey(ix.weight_map)];
      },
      ['missing'],
    ],
    [
      (_ix, d) => {
        fifo(path.join(d, shardNames[1]!));
      },
      [shardNames[1]!],
    ],
    [
      (_ix, d) => {
        asFolder(path.join(d, shardNames[1]!));
      },
      [shardNames[1]!],
    ],
    [
      (_ix, d) => {
        fs.rmSync(path.join(d, shardNames[2]!));
      },
      [shardNames[2]!],
    ],
  ];
  for (const [mut, fields] of indexMutations) {
    const d = variant(sharded.dir);
    const f = path.join(d, indexName);
    const ix = JSON.parse(fs.readFileSync(f, 'utf8'));
    mut(ix, d);
    fs.writeFileSync(f, JSON.stringify(ix));
    const names = fields[0]!.endsWith('.safetensors') && fields[0] !== 'nope.safetensors' ? fields[0]! : indexName;
    add({ kind: 'model', dir: d, file: names, fields });
  }
  for (const text of ['{', '[]', '']) {
    const d = variant(sharded.dir);
    fs.writeFileSync(path.join(d, indexName), text);
    add({ kind: 'model', dir: d, file: indexName });
  }
  {
    const d = variant(sharded.dir);
    fifo(path.join(d, indexName));
    add({ kind: 'model', dir: d, file: indexName });
  }

  // ---- adapter_config.json
  const peftMutations: [string, unknown][] = [
    ['r', 0],
    ['r', -1],
    ['r', 1e9],
    ['r', '8'],
    ['r', 1.5],
    ['r', null],
    ['lora_alpha', 0],
    ['lora_alpha', -1],
    ['lora_alpha', 'x'],
    ['target_modules', []],
    ['target_modules', ['lm_head']],
    ['target_modules', Array(5000).fill('q_proj')],
    ['target_modules', 7],
    ['target_modules', '(unclosed'],
    ['layers_to_transform', [1e9]],
    ['layers_to_transform', -1],
    ['layers_to_transform', Array(10000).fill(0)],
    ['rank_pattern', { q_proj: 1e9 }],
    ['rank_pattern', { q_proj: 0 }],
    ['alpha_pattern', 5],
    ['use_dora', true],
    ['peft_type', 'IA3'],
    ['fan_in_fan_out', 'no'],
    ['lora_dropout', 2],
  ];
  for (const [field, v] of peftMutations) {
    const d = variant(adapterSrc);
    const f = path.join(d, 'adapter_config.json');
    const j = JSON.parse(fs.readFileSync(f, 'utf8'));
    j[field] = v;
    fs.writeFileSync(f, JSON.stringify(j));
    add({ kind: 'adapter', dir: d, base: single.dir, file: 'adapter_config.json', fields: [field] });
  }
  for (const text of ['{', '', '{"r": 1e400, "target_modules": ["q_proj"]}']) {
    const d = variant(adapterSrc);
    fs.writeFileSync(path.join(d, 'adapter_config.json'), text);
    add({ kind: 'adapter', dir: d, base: single.dir, file: 'adapter_config.json' });
  }
  {
    const d = variant(adapterSrc);
    fifo(path.join(d, 'adapter_config.json'));
    add({ kind: 'adapter', dir: d, base: single.dir, file: 'adapter_config.json' });
  }

  // ---- mote.json and the expert folders
  const moteMutations: [string, unknown][] = [
    ['steps', []],
    ['steps', ['x']],
    ['steps', 'analysis'],
    ['steps', ['analysis', 'analysis']],
    ['alpha', 2],
    ['alpha', -1],
    ['alpha', 'a'],
    ['r', 0],
    ['r', '4'],
    ['lora_alpha', -8],
    ['target_modules', ['lm_head']],
    ['target_modules', []],
    ['format', 'x'],
    ['version', 2],
    ['experts', { analysis: '../src-adapter' }],
    ['experts', { analysis: '/etc' }],
    ['experts', { analysis: 'missing' }],
    ['experts', 'x'],
    ['prompt_routing', 'bogus'],
    ['tokens', { analysis: '<x>' }],
  ];
  for (const [field, v] of moteMutations) {
    const d = variant(moteSrc);
    const j = { ...moteJson, [field]: v };
    fs.writeFileSync(path.join(d, 'mote.json'), JSON.stringify(j));
    const missing = field === 'experts' && (v as any)?.analysis === 'missing';
    add({
      kind: 'mote',
      dir: d,
      base: single.dir,
      file: missing ? 'adapter_config.json' : 'mote.json',
      fields: missing ? ['not found'] : [field.replace('prompt_routing', 'promptRouting'), field, 'prompt_routing'],
    });
  }
  {
    const d = variant(moteSrc);
    fs.rmSync(path.join(d, 'answer'), { recursive: true });
    fs.writeFileSync(path.join(d, 'answer'), 'x');
    add({ kind: 'mote', dir: d, base: single.dir, file: 'adapter_config.json' });
  }
  {
    const d = variant(moteSrc);
    fifo(path.join(d, 'mote.json'));
    add({ kind: 'mote', dir: d, base: single.dir, file: 'mote.json' });
  }
  {
    const d = variant(moteSrc);
    fs.writeFileSync(path.join(d, 'mote.json'), '{"steps": [');
    add({ kind: 'mote', dir: d, base: single.dir, file: 'mote.json' });
  }
  // Controls: the clean sources load.
  for (const c of [
    { kind: 'model', dir: single.dir },
    { kind: 'model', dir: sharded.dir },
    { kind: 'model', dir: defaultModel },
    { kind: 'adapter', dir: adapterSrc, base: single.dir },
    { kind: 'mote', dir: moteSrc, base: single.dir },
  ] as const) {
    add({ ...c, file: 'clean' });
  }

  test(
    `malformed model files: ${cases.length} variants each load or give a FormatError naming the file, < 2 s, < 100 MB`,
    { timeout: 240_000 },
    async () => {
      assert.ok(cases.length >= 150, `${cases.length} variants`);
      const results = new Map<string, Outcome | 'crash' | 'hang'>();
      let pending = [...cases];
      const BATCH = 60;
      while (pending.length) {
        const batch = pending.slice(0, BATCH);
        const file = path.join(tmp, `cases-${pending.length}.json`);
        fs.writeFileSync(file, JSON.stringify(batch));
        const { lines, code, timedOut } = await runWorker(file, 10_000 + batch.length * 2_500);
        let started: string | null = null;
        for (const l of lines) {
          const o = JSON.parse(l) as { start?: string } & Outcome;
          if (o.start !== undefined) started = o.start;
          else {
            results.set(o.id, o);
            started = null;
          }
        }
        if (started !== null) results.set(started, timedOut ? 'hang' : 'crash');
        else if (code !== 0) assert.fail(`worker exited with ${code} between cases`);
        pending = pending.filter((c) => !results.has(c.id));
      }
      let errors = 0,
        crashes = 0,
        hangs = 0,
        maxMs = 0,
        maxMB = 0;
      const problems: string[] = [];
      for (const c of cases) {
        const r = results.get(c.id)!;
        if (r === 'crash') {
          crashes++;
          problems.push(`${c.id}: crashed the process`);
          continue;
        }
        if (r === 'hang') {
          hangs++;
          problems.push(`${c.id}: hung`);
          continue;
        }
        maxMs = Math.max(maxMs, r.ms);
        maxMB = Math.max(maxMB, r.rssMB);
        if (r.ms > 2000) problems.push(`${c.id}: took ${r.ms.toFixed(0)} ms`);
        if (r.rssMB > 100) problems.push(`${c.id}: RSS grew ${r.rssMB.toFixed(0)} MB`);
        if (c.file === 'clean') {
          if (!r.ok) problems.push(`${c.id}: the clean source failed: ${r.name}: ${r.message}`);
          continue;
        }
        if (r.ok) continue;
        errors++;
        if (r.name !== 'FormatError') {
          problems.push(`${c.id}: ${r.name}: ${r.message}`);
          continue;
        }
        if (!r.message!.includes(c.file)) problems.push(`${c.id}: message does not name ${c.file}: ${r.message}`);
        else if (c.fields && !c.fields.some((f) => r.message!.includes(f)))
          problems.push(`${c.id}: message names none of ${c.fields.join(', ')}: ${r.message}`);
      }
      console.log(
        `malformed-file probe: ${cases.length} variants, ${errors} FormatErrors, ${cases.length - errors - crashes - hangs} loaded, ` +
          `${crashes} crashes, ${hangs} hangs, max ${maxMs.toFixed(0)} ms, max RSS growth ${maxMB.toFixed(1)} MB`,
      );
      assert.deepEqual(problems, []);
    },
  );
}

function tensors(h: Record<string, unknown>): string[] {
  return Object.keys(h)
    .filter((k) => k !== '__metadata__')
    .sort();
}
function firstTensor(h: Record<string, unknown>): string {
  return tensors(h)[0]!;
}
function firstKey(o: Record<string, unknown>): string {
  return Object.keys(o).sort()[0]!;
}

function runWorker(casesFile: string, timeoutMs: number): Promise<{ lines: string[]; code: number | null; timedOut: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [fileURLToPath(import.meta.url)], {
      env: { ...process.env, MOTE_MALFORMED_WORKER: casesFile },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let timedOut = false;
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.stderr.on('data', () => {});
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    // Per-case watchdog: a case that runs past 10 s is a hang (the time limit asserted is 2 s).
    let last = 0,
      lastLen = -1;
    const watch = setInterval(() => {
      if (out.length !== lastLen) {
        lastLen = out.length;
        last = Date.now();
      } else if (Date.now() - last > 10_000) {
        timedOut = true;
        child.kill('SIGKILL');
      }
    }, 500);
    child.on('close', (code) => {
      clearTimeout(timer);
      clearInterval(watch);
      resolve({ lines: out.split('\n').filter((l) => l.trim().startsWith('{')), code, timedOut });
    });
  });
}
