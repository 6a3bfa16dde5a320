// Writing through a FileSink (src/io/sink.ts): saveMote and saveCheckpoint into memory and
// into OPFS give the same files, marker included, as into a folder on disk, and load back
// (through a source) to the same logits and the same trainer state; a download as one tar
// file extracts (with the system's tar) to a folder loadMote reads; the ownership rules hold
// (a foreign folder refused, overwrite keeps its files). OPFS exists only in browsers: here
// OpfsSink runs against a small in-memory stand-in of FileSystemDirectoryHandle (with and
// without FileSystemHandle.move), written to the standard API's semantics.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { ArgumentError, FormatError } from '../src/errors.js';
import type { Backend } from '../src/backend/backend.js';
import { loadModel } from '../src/model/load.js';
import type { LlamaModel } from '../src/model/llama.js';
import { createMote, type MoteBundle } from '../src/mote/bundle.js';
import { loadMote, saveMote } from '../src/mote/bundle_io.js';
import { loadCheckpoint, saveCheckpoint } from '../src/train/checkpoint.js';
import { MemorySink, OpfsSink, OpfsSource, tarFiles, verifyListedFiles, type DirHandle, type FileHandle } from '../src/io/sink.js';
import { BytesSource, type SourceInput } from '../src/io/source.js';
import { MARKER_FILE } from '../src/io/atomic_dir.js';
import { writeTinyModel } from './fixtures/tiny_model.js';
import { tinyTraining } from './fixtures/train_fixture.js';
import { backendFor, closeBackends } from './helpers.js';
import { bitsEqual } from './case_helpers.js';

after(closeBackends);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-sink-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

let backend: Backend;
let model: LlamaModel;
let bundle: MoteBundle;
const TOKENS = [3, 17, 5, 40, 22, 9, 31, 2];
const STEP_IDS = [-1, -1, 0, 0, 1, 2, 2, -1];

before(async () => {
  const b = await backendFor('cpu');
  if (typeof b === 'string') throw new Error(b);
  backend = b;
  const m = writeTinyModel(path.join(tmp, 'model'), {
    family: 'llama',
    hidden: 32,
    intermediate: 40,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    vocab: 48,
    tied: false,
    dtype: 'f32',
    seed: 8,
  });
  model = await loadModel(m.dir, { backend });
  bundle = createMote(model, { rank: 3, loraAlpha: 6, alpha: 0.7 }, { seed: 4, init: 'random' });
});
after(() => {
  bundle?.dispose();
  model?.dispose();
});

async function moteLogits(b: MoteBundle): Promise<Float32Array> {
  const r = b.routing(STEP_IDS, { seed: 1 });
  try {
    return await model.logits(TOKENS, { lora: b.loraFor(r) });
  } finally {
    r.dispose();
  }
}

async function loadsSame(what: string, src: SourceInput, want: Float32Array): Promise<void> {
  const loaded = await loadMote(src, model);
  try {
    assert.ok(bitsEqual(await moteLogits(loaded), want), `${what}: logits differ`);
  } finally {
    loaded.dispose();
  }
}

function filesOf(dir: string, prefix = ''): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  for (const e of fs.readdirSync(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) for (const [k, v] of filesOf(dir, rel)) out.set(k, v);
    else out.set(rel, new Uint8Array(fs.readFileSync(path.join(dir, rel))));
  }
  return out;
}

function sameFiles(what: string, got: ReadonlyMap<string, Uint8Array>, want: ReadonlyMap<string, Uint8Array>): void {
  assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), `${what}: file list`);
  for (const [k, v] of want) assert.ok(Buffer.from(got.get(k)!).equals(Buffer.from(v)), `${what}: ${k} differs`);
}

// ---------------------------------------------------------------------------------------
// A stand-in of the File System Access API's directory handle (OPFS), in memory.

function domError(name: string): Error {
  return Object.assign(new Error(name), { name });
}

class FakeFile implements FileHandle {
  readonly kind = 'file' as const;
  data = new Uint8Array(0);
  constructor(public name: string) {}
  async getFile(): Promise<Blob> {
    return new Blob([this.data]);
  }
  async createWritable() {
    // Like the real API: writes go to a swap file, visible only after close().
    const chunks: Uint8Array[] = [];
    return {
      write: async (d: Uint8Array) => {
        chunks.push(new Uint8Array(d));
      },
      close: async () => {
        this.data = new Uint8Array(Buffer.concat(chunks));
      },
      abort: async () => {},
    };
  }
}

class FakeDir implements DirHandle {
  readonly kind = 'directory' as const;
  readonly children = new Map<string, FakeDir | FakeFile>();
  move?: (parent: DirHandle, name: string) => Promise<void>;
  constructor(
    public name: string,
    private parentDir: FakeDir | null,
    private readonly withMove: boolean,
  ) {
    if (withMove) {
      this.move = async (parent, name) => {
        this.parentDir!.children.delete(this.name);
        const p = parent as FakeDir;
        if (p.children.has(name)) throw domError('InvalidModificationError');
        this.name = name;
        this.parentDir = p;
        p.children.set(name, this);
      };
    }
  }
  async getDirectoryHandle(name: string, opts: { create?: boolean } = {}): Promise<DirHandle> {
    const c = this.children.get(name);
    if (c) {
      if (c.kind !== 'directory') throw domError('TypeMismatchError');
      return c;
    }
    if (!opts.create) throw domError('NotFoundError');
    const d = new FakeDir(name, this, this.withMove);
    this.children.set(name, d);
    return d;
  }
  async getFileHandle(name: string, opts: { create?: boolean } = {}): Promise<FileHandle> {
    const c = this.children.get(name);
    if (c) {
      if (c.kind !== 'file') throw domError('TypeMismatchError');
      return c;
    }
    if (!opts.create) throw domError('NotFoundError');
    const f = new FakeFile(name);
    this.children.set(name, f);
    return f;
  }
  async removeEntry(name: string, opts: { recursive?: boolean } = {}): Promise<void> {
    const c = this.children.get(name);
    if (!c) throw domError('NotFoundError');
    if (c.kind === 'directory' && c.children.size > 0 && !opts.recursive) throw domError('InvalidModificationError');
    this.children.delete(name);
  }
  async *entries(): AsyncIterable<[string, DirHandle | FileHandle]> {
    for (const e of [...this.children]) yield e;
  }
}

async function opfsFiles(d: DirHandle): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  const src = new OpfsSource(d);
  for (const rel of await src.list()) out.set(rel, await src.read(rel));
  return out;
}

// ---------------------------------------------------------------------------------------

test('saveMote to memory: the same files (marker included) as to a folder; loads back; a tar download extracts to a loadable folder', async () => {
  const want = await moteLogits(bundle);
  const disk = path.join(tmp, 'bundle-disk');
  await saveMote(bundle, disk);
  const mem = new MemorySink();
  await saveMote(bundle, mem);
  sameFiles('memory vs disk', mem.files, filesOf(disk));
  const marker = JSON.parse(new TextDecoder().decode(mem.files.get(MARKER_FILE)));
  assert.equal(marker.kind, 'mote-bundle');
  assert.equal(marker.complete, true);
  assert.equal(await verifyListedFiles(mem.toSource(), marker.files), null);
  await loadsSame('memory', mem.toSource(), want);
  // Saving again replaces the bundle as a whole.
  await saveMote(bundle, mem);
  sameFiles('memory, saved twice', mem.files, filesOf(disk));
  // A download: one tar file; the system's tar extracts it to the same files.
  const tarFile = path.join(tmp, 'bundle.tar');
  fs.writeFileSync(tarFile, mem.toTar());
  const out = path.join(tmp, 'bundle-untarred');
  fs.mkdirSync(out);
  execFileSync('tar', ['-xf', tarFile, '-C', out]);
  sameFiles('tar', filesOf(out), mem.files);
  await loadsSame('extracted tar', out, want);
  // Long names take ustar's prefix field.
  const long = `${'d'.repeat(120)}/${'f'.repeat(90)}.json`;
  const t2 = path.join(tmp, 'long.tar');
  fs.writeFileSync(t2, tarFiles(new Map([[long, new TextEncoder().encode('{}')]])));
  assert.equal(execFileSync('tar', ['-tf', t2], { encoding: 'utf8' }).trim(), long);
});

test('a memory sink holding foreign files is refused; overwrite keeps them', async () => {
  const mem = new MemorySink();
  mem.files.set('notes.txt', new TextEncoder().encode('mine'));
  mem.files.set('mote.json', new TextEncoder().encode('{"not": "mote"}'));
  await assert.rejects(
    saveMote(bundle, mem),
    (e: Error) => e instanceof ArgumentError && /not empty and was not written by mote/.test(e.message),
  );
  assert.equal(mem.files.size, 2);
  await saveMote(bundle, mem, { overwrite: true });
  assert.equal(new TextDecoder().decode(mem.files.get('notes.txt')), 'mine');
  assert.equal(new TextDecoder().decode(mem.files.get('mote.json.before-mote')), '{"not": "mote"}');
  await loadsSame('memory with foreign files', mem.toSource(), await moteLogits(bundle));
});

for (const withMove of [true, false]) {
  test(`saveMote to OPFS (stand-in${withMove ? ' with' : ' without'} FileSystemHandle.move): the same files as on disk, loads back, replaces as a whole, keeps foreign files`, async () => {
    const want = await moteLogits(bundle);
    const root = new FakeDir('', null, withMove);
    const sink = new OpfsSink(root, 'bundle');
    await saveMote(bundle, sink);
    const disk = path.join(tmp, 'bundle-disk');
    if (!fs.existsSync(disk)) await saveMote(bundle, disk);
    const dir = await root.getDirectoryHandle('bundle');
    sameFiles('OPFS vs disk', await opfsFiles(dir), filesOf(disk));
    assert.deepEqual([...root.children.keys()], ['bundle'], 'no temporary folder left');
    await loadsSame('OPFS', new OpfsSource(dir), want);
    await loadsSame('OPFS handle', dir, want); // openSource takes a FileSystemDirectoryHandle as it is
    await saveMote(bundle, sink);
    assert.deepEqual([...root.children.keys()], ['bundle']);
    sameFiles('OPFS, saved twice', await opfsFiles(await root.getDirectoryHandle('bundle')), filesOf(disk));
    // A foreign folder: refused, then written into with overwrite, its files kept.
    const other = await root.getDirectoryHandle('other', { create: true });
    const w = await (await other.getFileHandle('mote.json', { create: true })).createWritable();
    await w.write(new TextEncoder().encode('foreign'));
    await w.close();
    await assert.rejects(
      saveMote(bundle, new OpfsSink(root, 'other')),
      (e: Error) => e instanceof ArgumentError && /opfs:\/other is not empty and was not written by mote/.test(e.message),
    );
    assert.deepEqual([...(root.children.get('other') as FakeDir).children.keys()], ['mote.json']);
    await saveMote(bundle, new OpfsSink(root, 'other'), { overwrite: true });
    const got = await opfsFiles(await root.getDirectoryHandle('other'));
    assert.equal(new TextDecoder().decode(got.get('mote.json.before-mote')), 'foreign');
    await loadsSame('OPFS over a foreign folder', new OpfsSource(await root.getDirectoryHandle('other')), want);
    assert.deepEqual([...root.children.keys()].sort(), ['bundle', 'other']);
  });
}

test('saveCheckpoint to memory and OPFS → loadCheckpoint from them restores the same parameters and counters; a changed byte is refused', async () => {
  const a = tinyTraining(backend, 6);
  try {
    for (let i = 0; i < 3; i++) await a.trainer.trainStep();
    const disk = path.join(tmp, 'ck-disk');
    await saveCheckpoint(a.trainer, disk);
    const mem = new MemorySink();
    await saveCheckpoint(a.trainer, mem);
    const root = new FakeDir('', null, true);
    await saveCheckpoint(a.trainer, new OpfsSink(root, 'ck'));
    const onDisk = filesOf(disk);
    for (const f of [
      'params.safetensors',
      'optimizer.safetensors',
      'trainer_state.json',
      'adapters/mote.json',
      'adapters/shared/adapter_model.safetensors',
    ]) {
      assert.ok(Buffer.from(mem.files.get(f)!).equals(Buffer.from(onDisk.get(f)!)), `memory checkpoint: ${f} differs from the disk one`);
    }
    const want = await Promise.all(a.trainer.params.map((p) => p.p.readFloat()));
    for (const [what, src] of [
      ['memory', mem.toSource()],
      ['OPFS', new OpfsSource(await root.getDirectoryHandle('ck'))],
    ] as const) {
      const b = tinyTraining(backend, 6);
      try {
        const point = await loadCheckpoint(b.trainer, src);
        assert.equal(point.step, 3);
        assert.equal(b.trainer.state.step, 3);
        assert.deepEqual(b.trainer.state.losses, a.trainer.state.losses);
        const got = await Promise.all(b.trainer.params.map((p) => p.p.readFloat()));
        got.forEach((g, i) => assert.ok(bitsEqual(g, want[i]!), `${what}: parameter ${i} differs`));
      } finally {
        b.dispose();
      }
    }
    // The bundle inside a memory checkpoint loads as a bundle.
    await loadMote(mem.toSource().sub('adapters'), a.model).then((m) => m.dispose());
    // One changed byte: the marker's SHA-256 no longer matches.
    const bad = new Map(mem.files);
    const p = new Uint8Array(bad.get('params.safetensors')!);
    p[p.length - 1]! ^= 1;
    bad.set('params.safetensors', p);
    const c = tinyTraining(backend, 6);
    try {
      await assert.rejects(
        loadCheckpoint(c.trainer, new BytesSource(bad, '<ck>')),
        (e: Error) =>
          e instanceof FormatError && /<ck>\/params.safetensors: its contents differ from what was written \(SHA-256\)/.test(e.message),
      );
      assert.equal(c.trainer.state.step, 0);
    } finally {
      c.dispose();
    }
  } finally {
    a.dispose();
  }
});

test('exportPeft to memory and OPFS: each expert a PEFT folder, the same bytes as in the saved bundle, loadable by loadPeftAdapters', async () => {
  const { exportPeft } = await import('../src/mote/bundle_io.js');
  const { loadPeftAdapters } = await import('../src/adapters/adapter_set.js');
  const saved = new MemorySink();
  await saveMote(bundle, saved);
  const mem = new MemorySink();
  await exportPeft(bundle, mem);
  const root = new FakeDir('', null, true);
  await exportPeft(bundle, new OpfsSink(root, 'export'));
  const inOpfs = await opfsFiles(await root.getDirectoryHandle('export'));
  sameFiles('OPFS export vs memory export', inOpfs, mem.files);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(mem.files.get('experts.json'))).experts, bundle.experts);
  assert.equal(JSON.parse(new TextDecoder().decode(mem.files.get(MARKER_FILE))).kind, 'peft-export');
  for (const e of bundle.experts) {
    for (const f of ['adapter_config.json', 'adapter_model.safetensors']) {
      assert.ok(Buffer.from(mem.files.get(`${e}/${f}`)!).equals(Buffer.from(saved.files.get(`${e}/${f}`)!)), `${e}/${f}`);
    }
  }
  // Served as plain PEFT adapters (here expert 1 on every token).
  const set = await loadPeftAdapters(
    model,
    bundle.experts.map((e) => new OpfsSource(root).sub(`export/${e}`)),
  );
  try {
    assert.deepEqual(
      set.dirs,
      bundle.experts.map((e) => `opfs:/export/${e}`),
    );
    const r = set.routing(new Array(TOKENS.length).fill(1));
    const got = await model.logits(TOKENS, { lora: set.loraFor(r) });
    r.dispose();
    assert.ok(got.every(Number.isFinite));
    const base = await model.logits(TOKENS);
    assert.ok(!bitsEqual(got, base), 'the exported expert changes the logits');
  } finally {
    set.dispose();
  }
  await assert.rejects(exportPeft(bundle, ''), (e: Error) => e instanceof ArgumentError && /^exportPeft: dir/.test(e.message));
});

test('saveModel (sharded, with its tokenizer) to memory and OPFS: the same files as on disk; loads back to the same logits and ids', async () => {
  const { saveModel } = await import('../src/model/save.js');
  const { loadTokenizer } = await import('../src/io/tokenizer.js');
  const { writeTinyTokenizer } = await import('./fixtures/tiny_tokenizer.js');
  const tokDir = path.join(tmp, 'tok');
  writeTinyTokenizer(tokDir);
  const tok = loadTokenizer(tokDir);
  const disk = path.join(tmp, 'model-saved');
  await saveModel(model, disk, { tokenizer: tok, maxShardBytes: 6000 });
  const mem = new MemorySink();
  await saveModel(model, mem, { tokenizer: tok, maxShardBytes: 6000 });
  const onDisk = filesOf(disk);
  assert.ok([...onDisk.keys()].filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)).length >= 2, [...onDisk.keys()].join(', '));
  assert.ok(onDisk.has('tokenizer.json') && onDisk.has('model.safetensors.index.json'));
  sameFiles('saveModel: memory vs disk', mem.files, onDisk);
  const root = new FakeDir('', null, false);
  await saveModel(model, new OpfsSink(root, 'm'), { tokenizer: tok, maxShardBytes: 6000 });
  sameFiles('saveModel: OPFS vs disk', await opfsFiles(await root.getDirectoryHandle('m')), onDisk);
  const back = await loadModel(mem.toSource(), { backend });
  try {
    assert.ok(bitsEqual(await back.logits(TOKENS), await model.logits(TOKENS)));
  } finally {
    back.dispose();
  }
  const tok2 = await loadTokenizer(mem.toSource());
  assert.deepEqual(tok2.encode('hello world'), tok.encode('hello world'));
});
