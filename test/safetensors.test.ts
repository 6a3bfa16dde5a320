import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import {
  SafetensorsReader,
  openModelWeights,
  readSafetensors,
  readSafetensorsIndex,
  writeSafetensors,
  writeShardedSafetensors,
  type HostTensor,
  type WritableTensor,
} from '../src/io/safetensors.js';
import { ArgumentError, DTypeError, FormatError, ShapeError } from '../src/errors.js';
import { f16BitsToF32, f32ToF16Bits } from '../src/dtype.js';

// Local seeded randoms (mulberry32): these tests need no backend, so they do not import helpers.ts.
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
function randn(r: () => number, n: number): Float32Array {
  return Float32Array.from({ length: n }, () => (r() < 0.5 ? -1 : 1) * (0.05 + 0.95 * r()));
}

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-safetensors-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let counter = 0;
/** A fresh folder for one test. */
function tmpDir(): string {
  const d = path.join(root, `t${counter++}`);
  fs.mkdirSync(d);
  return d;
}

function bytesOf(a: ArrayBufferView): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/** Bitwise equality of two tensors (NaN payloads included). */
function assertSameTensor(got: HostTensor | undefined, want: HostTensor, what: string): void {
  assert.ok(got, `${what}: missing`);
  assert.equal(got.dtype, want.dtype, `${what}: dtype`);
  assert.deepEqual(got.shape, want.shape, `${what}: shape`);
  assert.equal(got.data.constructor, want.data.constructor, `${what}: array type`);
  assert.ok(bytesOf(got.data).equals(bytesOf(want.data)), `${what}: bits differ`);
}

/** A hand-made file: 8-byte length (or `len`), header text, data. */
function rawFile(file: string, header: unknown, data: Uint8Array = new Uint8Array(0), len?: bigint): string {
  const h = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(len ?? BigInt(h.length));
  fs.writeFileSync(file, Buffer.concat([n, h, data]));
  return file;
}

function sampleTensors(): Map<string, HostTensor> {
  const r = rng(11);
  const f32 = Float32Array.from(randn(r, 7));
  // NaN with a payload, -0, inf, the smallest subnormal: the bits must survive.
  new Uint32Array(f32.buffer).set([0x7fc00123, 0x80000000, 0x7f800000, 0x00000001], 0);
  const f16 = Uint16Array.from([0x3c00, 0x7c00, 0xfc00, 0x7e01, 0x0001, 0x8000, 0x7bff, 0x1234, 0xabcd]);
  const bf16 = Uint16Array.from([0x3f80, 0x7f80, 0xff80, 0x7fc1, 0x0001, 0x8000]);
  const i32 = Int32Array.from([-2147483648, 2147483647, 0, -1, 12345]);
  return new Map<string, HostTensor>([
    ['model.layers.0.self_attn.q_proj.weight', { dtype: 'f32', shape: [7], data: f32 }],
    ['a.f16', { dtype: 'f16', shape: [3, 3], data: f16 }],
    ['b.bf16', { dtype: 'bf16', shape: [2, 1, 3], data: bf16 }],
    ['c.i32', { dtype: 'i32', shape: [5], data: i32 }],
    ['d.scalar', { dtype: 'f32', shape: [], data: Float32Array.from([3.5]) }],
    ['e.empty', { dtype: 'bf16', shape: [0, 4], data: new Uint16Array(0) }],
    ['f.odd', { dtype: 'f16', shape: [1], data: Uint16Array.from([0x3555]) }],
  ]);
}

test('write -> read keeps every dtype bit for bit, and the metadata', () => {
  const file = path.join(tmpDir(), 'all.safetensors');
  const tensors = sampleTensors();
  writeSafetensors(file, tensors, { producer: 'mote test' });
  const got = readSafetensors(file);
  assert.deepEqual(got.metadata, { format: 'pt', producer: 'mote test' });
  assert.deepEqual([...got.tensors.keys()], [...tensors.keys()].sort());
  for (const [name, t] of tensors) assertSameTensor(got.tensors.get(name), t, name);
  // A Record works as well as a Map, and what we read can be written again unchanged.
  const again = path.join(path.dirname(file), 'again.safetensors');
  writeSafetensors(again, Object.fromEntries(got.tensors), got.metadata);
  assert.ok(fs.readFileSync(again).equals(fs.readFileSync(file)));
});

test('the written layout follows the format: padded header, sorted names, contiguous aligned data', () => {
  const file = path.join(tmpDir(), 'layout.safetensors');
  writeSafetensors(file, sampleTensors());
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  assert.equal((8 + n) % 8, 0, 'data starts at a multiple of 8');
  const text = buf.subarray(8, 8 + n).toString('utf-8');
  assert.match(text, /^\{.*\} *$/s, 'header is JSON padded with spaces');
  const header = JSON.parse(text) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  assert.deepEqual(names, [...names].sort(), 'header in sorted name order');
  assert.deepEqual(header.__metadata__, { format: 'pt' });
  const size = { F32: 4, I32: 4, F16: 2, BF16: 2 } as Record<string, number>;
  const spans = names.map((k) => header[k]!).sort((a, b) => a.data_offsets[0] - b.data_offsets[0]);
  let at = 0;
  for (const s of spans) {
    assert.equal(s.data_offsets[0], at, 'no gaps (the reference implementation rejects them)');
    assert.equal(s.data_offsets[0] % size[s.dtype]!, 0, 'aligned to the element size');
    at = s.data_offsets[1];
  }
  assert.equal(8 + n + at, buf.length, 'the data ends the file');
});

test('the writer converts floats for f16/bf16 and checks its input before writing', () => {
  const dir = tmpDir();
  const file = path.join(dir, 'conv.safetensors');
  writeSafetensors(file, { h: { dtype: 'f16', shape: [2, 2], data: [1, -2, 0.5, 65504] }, i: { dtype: 'i32', shape: [2], data: [7, -7] } });
  const got = readSafetensors(file).tensors;
  assert.deepEqual([...(got.get('h')!.data as Uint16Array)].map(f16BitsToF32), [1, -2, 0.5, 65504]);
  assert.deepEqual([...got.get('i')!.data], [7, -7]);
  const bad = path.join(dir, 'bad.safetensors');
  assert.throws(() => writeSafetensors(bad, { x: { dtype: 'f32', shape: [2, 3], data: new Float32Array(5) } }), ShapeError);
  assert.throws(() => writeSafetensors(bad, { x: { dtype: 'f64' as never, shape: [1], data: [1] } }), DTypeError);
  assert.throws(() => writeSafetensors(bad, { x: { dtype: 'f32', shape: [-1], data: [] } }), ShapeError);
  assert.throws(() => writeSafetensors(bad, { __metadata__: { dtype: 'f32', shape: [1], data: [1] } }), ArgumentError);
  assert.throws(() => writeSafetensors(bad, {}, { n: 1 as unknown as string }), ArgumentError);
  assert.deepEqual(fs.readdirSync(dir), ['conv.safetensors']);
});

test('a writer that fails midway leaves no partial file and keeps the old one', () => {
  const dir = tmpDir();
  const file = path.join(dir, 'model.safetensors');
  fs.writeFileSync(file, 'old contents');
  // Shapes and lengths are right, so this passes the up-front checks; the i32 value 1.5 only
  // fails when the second tensor is encoded, after the header and the first tensor are written.
  const tensors = new Map<string, WritableTensor>([
    ['a', { dtype: 'f32', shape: [1024], data: new Float32Array(1024).fill(1) }],
    ['b', { dtype: 'i32', shape: [2], data: [1, 1.5] }],
  ]);
  assert.throws(
    () => writeSafetensors(file, tensors),
    (e: unknown) => e instanceof ArgumentError && /'b'/.test(e.message),
  );
  assert.equal(fs.readFileSync(file, 'utf-8'), 'old contents');
  assert.deepEqual(fs.readdirSync(dir), ['model.safetensors'], 'temporary file removed');
  const fresh = path.join(dir, 'new.safetensors');
  assert.throws(() => writeSafetensors(fresh, tensors), ArgumentError);
  assert.equal(fs.existsSync(fresh), false);
  assert.deepEqual(fs.readdirSync(dir), ['model.safetensors']);
});

test('I64 reads as i32 with a range check, F64 as f32; other dtypes only fail when read', () => {
  const dir = tmpDir();
  const i64 = BigInt64Array.from([0n, -5n, 2147483647n, -2147483648n]);
  const f64 = Float64Array.from([1.5, -1e-3, 1e300]);
  const data = Buffer.concat([bytesOf(i64), bytesOf(f64), Buffer.from([1, 2, 3])]);
  const file = rawFile(
    path.join(dir, 'wide.safetensors'),
    {
      ids: { dtype: 'I64', shape: [2, 2], data_offsets: [0, 32] },
      x: { dtype: 'F64', shape: [3], data_offsets: [32, 56] },
      mask: { dtype: 'U8', shape: [3], data_offsets: [56, 59] },
    },
    data,
  );
  const r = SafetensorsReader.open(file);
  try {
    assert.deepEqual(r.read('ids'), { dtype: 'i32', shape: [2, 2], data: Int32Array.from([0, -5, 2147483647, -2147483648]) });
    assert.deepEqual(r.read('x'), { dtype: 'f32', shape: [3], data: Float32Array.from([1.5, -1e-3, Infinity]) });
    assert.equal(r.entry('mask')!.storedDType, 'U8');
    assert.equal(r.entry('mask')!.dtype, null);
    assert.deepEqual([...r.readBytes('mask')], [1, 2, 3]);
    assert.throws(
      () => r.read('mask'),
      (e: unknown) => e instanceof FormatError && e.message.includes(file) && e.message.includes("'mask'") && /U8/.test(e.message),
    );
  } finally {
    r.close();
  }
  const big = rawFile(
    path.join(dir, 'big.safetensors'),
    { ids: { dtype: 'I64', shape: [2], data_offsets: [0, 16] } },
    bytesOf(BigInt64Array.from([1n, 2147483648n])),
  );
  assert.throws(
    () => readSafetensors(big),
    (e: unknown) => e instanceof FormatError && e.message.includes(big) && /'ids'.*element 1 = 2147483648/.test(e.message),
  );
});

test('the lazy reader reads the header, then single tensors by name', () => {
  const file = path.join(tmpDir(), 'lazy.safetensors');
  const tensors = sampleTensors();
  writeSafetensors(file, tensors);
  const r = SafetensorsReader.open(file);
  assert.deepEqual(r.names(), [...tensors.keys()].sort());
  assert.ok(r.has('c.i32') && !r.has('nope'));
  const e = r.entry('a.f16')!;
  assert.equal(e.storedDType, 'F16');
  assert.deepEqual(e.shape, [3, 3]);
  assert.equal(e.byteLength, 18);
  assertSameTensor(r.read('c.i32'), tensors.get('c.i32')!, 'c.i32');
  assertSameTensor(r.read('a.f16'), tensors.get('a.f16')!, 'a.f16');
  assert.ok(Buffer.from(r.readBytes('a.f16')).equals(bytesOf(tensors.get('a.f16')!.data)));
  assert.throws(
    () => r.read('nope'),
    (err: unknown) => err instanceof FormatError && err.message.includes(file) && err.message.includes("'nope'"),
  );
  r.close();
  assert.throws(() => r.read('a.f16'), ArgumentError);
  r.close(); // twice is fine
});

/** Asserts a FormatError whose message names the file and every `names` fragment. */
function throwsFormat(fn: () => unknown, file: string, ...names: (string | RegExp)[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof FormatError, `expected FormatError, got ${String(e)}`);
    assert.ok(e.message.includes(file), `message names the file: ${e.message}`);
    for (const n of names) assert.ok(typeof n === 'string' ? e.message.includes(n) : n.test(e.message), `message has ${n}: ${e.message}`);
    return true;
  });
}

test('malformed files are FormatErrors naming the file and the tensor', () => {
  const dir = tmpDir();
  const f = (name: string) => path.join(dir, name);
  const ok = { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  const eight = new Uint8Array(8);

  fs.writeFileSync(f('tiny'), Buffer.from([1, 2, 3]));
  throwsFormat(() => readSafetensors(f('tiny')), f('tiny'), /too short/);
  throwsFormat(() => readSafetensors(rawFile(f('len'), ok, eight, 10_000n)), f('len'), /header length 10000 runs past the end/);
  throwsFormat(() => readSafetensors(rawFile(f('hugelen'), ok, eight, 2n ** 63n)), f('hugelen'), /past the end/);
  throwsFormat(() => readSafetensors(rawFile(f('json'), '{"w": {"dtype": "F32",', eight)), f('json'), /not valid UTF-8 JSON/);
  throwsFormat(() => readSafetensors(rawFile(f('array'), '[1, 2]', eight)), f('array'), /must be a JSON object/);
  fs.writeFileSync(f('utf8'), Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.from([0x7b, 0xff, 0xfe, 0x7d])]));
  throwsFormat(() => readSafetensors(f('utf8')), f('utf8'), /UTF-8/);

  throwsFormat(
    () => readSafetensors(rawFile(f('dtype'), { w: { dtype: 'Q4_K', shape: [2], data_offsets: [0, 8] } }, eight)),
    f('dtype'),
    "'w'",
    /unknown dtype "Q4_K"/,
  );
  throwsFormat(
    () => readSafetensors(rawFile(f('proto'), { w: { dtype: 'constructor', shape: [2], data_offsets: [0, 8] } }, eight)),
    f('proto'),
    "'w'",
    /unknown dtype/,
  );
  throwsFormat(
    () => readSafetensors(rawFile(f('size'), { w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, eight)),
    f('size'),
    "'w'",
    /hold 8 bytes but shape \[3\] of F32 needs 12/,
  );
  throwsFormat(
    () => readSafetensors(rawFile(f('range'), { w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, eight)),
    f('range'),
    "'w'",
    /past the end of the data \(8 bytes/,
  );
  throwsFormat(
    () => readSafetensors(rawFile(f('backwards'), { w: { dtype: 'F32', shape: [0], data_offsets: [8, 4] } }, eight)),
    f('backwards'),
    "'w'",
    /end before/,
  );
  throwsFormat(
    () => readSafetensors(rawFile(f('offs'), { w: { dtype: 'F32', shape: [2], data_offsets: [0] } }, eight)),
    f('offs'),
    "'w'",
    /data_offsets/,
  );
  throwsFormat(
    () => readSafetensors(rawFile(f('shape'), { w: { dtype: 'F32', shape: [2.5], data_offsets: [0, 8] } }, eight)),
    f('shape'),
    "'w'",
    /shape/,
  );
  throwsFormat(() => readSafetensors(rawFile(f('entry'), { w: 5 }, eight)), f('entry'), "'w'");
  throwsFormat(
    () =>
      readSafetensors(
        rawFile(
          f('overlap'),
          {
            a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
            b: { dtype: 'F16', shape: [2], data_offsets: [6, 10] },
          },
          new Uint8Array(10),
        ),
      ),
    f('overlap'),
    "'b'",
    "'a'",
    /overlaps/,
  );
  throwsFormat(
    () => readSafetensors(rawFile(f('meta'), { __metadata__: { format: 'pt', n: 3 }, ...ok }, eight)),
    f('meta'),
    /__metadata__\.n must be a string/,
  );
  // Zero-size tensors may share an offset: not an overlap.
  const z = readSafetensors(
    rawFile(
      f('zeros'),
      {
        a: { dtype: 'F32', shape: [0], data_offsets: [4, 4] },
        b: { dtype: 'F16', shape: [2, 0], data_offsets: [4, 4] },
        ...ok,
      },
      eight,
    ),
  );
  assert.deepEqual([...z.tensors.keys()], ['a', 'b', 'w']);

  // A real file cut short: the last tensor in the data is the one named.
  const full = f('cut.safetensors');
  writeSafetensors(full, {
    first: { dtype: 'f32', shape: [4], data: [1, 2, 3, 4] },
    last: { dtype: 'f16', shape: [4], data: [1, 2, 3, 4] },
  });
  fs.truncateSync(full, fs.statSync(full).size - 3);
  throwsFormat(() => SafetensorsReader.open(full), full, "'last'", /truncated/);
  // Cut into the header itself.
  fs.truncateSync(full, 20);
  throwsFormat(() => readSafetensors(full), full, /header length \d+ runs past the end/);
});

test('sharded models: index, shards, lookups by name, and the errors', () => {
  const dir = tmpDir();
  const r = rng(5);
  const tensors = new Map<string, WritableTensor>();
  for (let i = 0; i < 6; i++) {
    tensors.set(`model.layers.${i}.mlp.up_proj.weight`, { dtype: 'bf16', shape: [4, 8], data: Float32Array.from(randn(r, 32)) });
    tensors.set(`model.layers.${i}.input_layernorm.weight`, { dtype: 'f32', shape: [8], data: Float32Array.from(randn(r, 8)) });
  }
  const files = writeShardedSafetensors(dir, tensors, { maxShardBytes: 200 });
  assert.ok(files.length > 2, `several shards: ${files.join(', ')}`);
  assert.equal(files.at(-1), 'model.safetensors.index.json');
  assert.match(files[0]!, /^model-00001-of-0000\d\.safetensors$/);
  assert.deepEqual(fs.readdirSync(dir).sort(), [...files].sort());

  const idx = readSafetensorsIndex(dir);
  assert.equal(idx.weightMap.size, tensors.size);
  assert.equal(idx.metadata.total_size, 6 * (64 + 32));

  const w = openModelWeights(dir);
  try {
    assert.deepEqual(w.names(), [...tensors.keys()].sort());
    assert.deepEqual(w.files(), files.slice(0, -1));
    for (const [name, t] of tensors) {
      const got = w.get(name);
      const want = readSafetensors(path.join(dir, idx.weightMap.get(name)!)).tensors.get(name)!;
      assertSameTensor(got, want, name);
      assert.equal(got.dtype, t.dtype);
      assert.equal(w.entry(name).file, path.join(dir, idx.weightMap.get(name)!));
    }
    throwsFormat(() => w.get('lm_head.weight'), idx.file, "'lm_head.weight'");
  } finally {
    w.close();
  }

  // The index names a tensor its shard lacks.
  const lying = JSON.parse(fs.readFileSync(idx.file, 'utf-8'));
  lying.weight_map['ghost.weight'] = files[0];
  fs.writeFileSync(idx.file, JSON.stringify(lying));
  const w2 = openModelWeights(dir);
  throwsFormat(() => w2.get('ghost.weight'), idx.file, "'ghost.weight'", files[0]!);
  w2.close();

  // A missing shard is reported on open, with the shard and a tensor it holds.
  fs.rmSync(path.join(dir, files[1]!));
  throwsFormat(() => openModelWeights(dir), idx.file, files[1]!, /not found/);

  // Shard names must stay inside the folder; the index must be JSON with a weight_map.
  fs.writeFileSync(idx.file, JSON.stringify({ weight_map: { a: '../x.safetensors' } }));
  throwsFormat(() => readSafetensorsIndex(dir), idx.file, "weight_map['a']");
  fs.writeFileSync(idx.file, '{ nope');
  throwsFormat(() => readSafetensorsIndex(dir), idx.file, /malformed JSON/);
  fs.writeFileSync(idx.file, '{}');
  throwsFormat(() => openModelWeights(dir), idx.file, /weight_map/);
});

test('single-file model folders, other file names, and an empty folder', () => {
  const dir = tmpDir();
  const tensors = sampleTensors();
  assert.deepEqual(writeShardedSafetensors(dir, tensors, { maxShardBytes: 1 << 20 }), ['model.safetensors']);
  const w = openModelWeights(dir);
  assert.equal(w.index, null);
  assert.deepEqual(w.files(), ['model.safetensors']);
  for (const [name, t] of tensors) assertSameTensor(w.get(name), t, name);
  throwsFormat(() => w.get('missing.weight'), path.join(dir, 'model.safetensors'), "'missing.weight'");
  w.close();

  const byFile = openModelWeights(path.join(dir, 'model.safetensors'));
  assert.equal(byFile.names().length, tensors.size);
  byFile.close();

  const adapter = tmpDir();
  writeSafetensors(path.join(adapter, 'adapter_model.safetensors'), { x: { dtype: 'f32', shape: [1], data: [2] } });
  const a = openModelWeights(adapter, { single: 'adapter_model.safetensors' });
  assert.deepEqual([...a.get('x').data], [2]);
  a.close();

  const empty = tmpDir();
  throwsFormat(() => openModelWeights(empty), empty, /no model\.safetensors\.index\.json or model\.safetensors/);
});

test('a bigger tensor round-trips through the lazy reader (f16 conversion spot check)', () => {
  const file = path.join(tmpDir(), 'big.safetensors');
  const n = 1 << 18;
  const x = Float32Array.from(randn(rng(9), n));
  writeSafetensors(file, { emb: { dtype: 'f16', shape: [n / 64, 64], data: x }, w: { dtype: 'f32', shape: [n], data: x } });
  const r = SafetensorsReader.open(file);
  const h = r.read('emb').data as Uint16Array;
  for (let i = 0; i < n; i += 997) assert.equal(h[i], f32ToF16Bits(x[i]!));
  assert.ok(bytesOf(r.read('w').data).equals(bytesOf(x)));
  r.close();
});

test('shards and files that are not regular files, and index names that leave the folder, are FormatErrors', () => {
  const dir = tmpDir();
  const tensors = new Map<string, WritableTensor>();
  for (let i = 0; i < 4; i++) tensors.set(`t${i}`, { dtype: 'f32', shape: [16], data: new Float32Array(16).fill(i) });
  const files = writeShardedSafetensors(dir, tensors, { maxShardBytes: 100 });
  const shard = files[1]!;
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  const index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
  for (const bad of ['/etc/passwd', '../x.safetensors', 'a/b.safetensors', '..']) {
    fs.writeFileSync(indexFile, JSON.stringify({ ...index, weight_map: { ...index.weight_map, t0: bad } }));
    assert.throws(
      () => openModelWeights(dir),
      (e: Error) => e instanceof FormatError && e.message.includes(indexFile) && /weight_map\['t0'\]/.test(e.message),
      bad,
    );
  }
  fs.writeFileSync(indexFile, JSON.stringify(index));
  // A FIFO in place of a shard would block open() forever; a folder would fail with EISDIR.
  fs.rmSync(path.join(dir, shard));
  assert.equal(spawnSync('mkfifo', [path.join(dir, shard)]).status, 0);
  assert.throws(
    () => openModelWeights(dir),
    (e: Error) => e instanceof FormatError && e.message.includes(shard) && /not a regular file/.test(e.message),
  );
  assert.throws(
    () => SafetensorsReader.open(path.join(dir, shard)),
    (e: Error) => e instanceof FormatError && /not a regular file/.test(e.message),
  );
  fs.rmSync(path.join(dir, shard));
  fs.mkdirSync(path.join(dir, shard));
  assert.throws(
    () => openModelWeights(dir),
    (e: Error) => e instanceof FormatError && e.message.includes(shard) && /folder/.test(e.message),
  );
  // The index itself as a FIFO.
  fs.rmSync(indexFile);
  assert.equal(spawnSync('mkfifo', [indexFile]).status, 0);
  assert.throws(
    () => openModelWeights(dir),
    (e: Error) => e instanceof FormatError && e.message.includes(indexFile),
  );
});
