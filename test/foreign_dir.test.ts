// Folders mote did not write (src/io/atomic_dir.ts): a transformers checkpoint-500 folder
// (trainer_state.json, model.safetensors, optimizer.pt, ...) and an HF model folder (README.md,
// .git/, tokenizer.json, config.json, model.safetensors) given to saveCheckpoint, saveModel,
// saveMote and `mote export` are refused with an ArgumentError naming the folder and the
// overwrite option, and left byte-identical; with overwrite, every byte of every file that
// was there survives (in place, or as <name>.before-mote when mote writes that name), and a
// second save into the now mote-written folder keeps them too. mote's own folders from before
// the marker (a checkpoint without mote-written.json) are still replaced without overwrite,
// and a foreign folder named like a stale temporary is never touched.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Backend } from '../src/backend/backend.js';
import { ArgumentError } from '../src/errors.js';
import { loadModel } from '../src/model/load.js';
import { saveModel } from '../src/model/save.js';
import { loadMote, saveMote } from '../src/mote/bundle_io.js';
import { exportCommand } from '../src/cli/export.js';
import { MARKER_FILE, cleanStaleTemporaries } from '../src/io/atomic_dir.js';
import { loadCheckpoint, saveCheckpoint } from '../src/train/checkpoint.js';
import { tinyTraining, type TinyTraining } from './fixtures/train_fixture.js';
import { backendFor, closeBackends, hashTree } from './helpers.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-foreign-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
after(closeBackends);
let n = 0;
const newDir = (label: string) => path.join(tmp, `${label}-${n++}`);

function write(dir: string, files: Record<string, string | Buffer>): string {
  for (const [rel, data] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), data);
  }
  return dir;
}

const junk = (seed: number, n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed * 7) & 255));

/** transformers' Trainer checkpoint folder. */
function hfCheckpoint(dir: string): string {
  return write(dir, {
    'trainer_state.json': JSON.stringify({ global_step: 500, epoch: 1.5, log_history: [{ loss: 1.23, step: 500 }] }),
    'model.safetensors': junk(1, 4096),
    'optimizer.pt': junk(2, 8192),
    'scheduler.pt': junk(3, 300),
    'rng_state.pth': junk(4, 200),
    'training_args.bin': junk(5, 100),
    'config.json': JSON.stringify({ model_type: 'llama', hidden_size: 32 }),
  });
}

/** An HF model folder as `git clone` of a hub repository leaves it. */
function hfModel(dir: string): string {
  return write(dir, {
    'README.md': '# my model\n',
    '.git/HEAD': 'ref: refs/heads/main\n',
    '.git/config': '[core]\n',
    '.git/objects/ab/cdef01': junk(6, 500),
    '.gitattributes': '*.safetensors filter=lfs\n',
    'tokenizer.json': JSON.stringify({ version: '1.0', model: { type: 'BPE' } }),
    'tokenizer_config.json': '{}',
    'config.json': JSON.stringify({ model_type: 'llama' }),
    'model.safetensors': junk(7, 4096),
    'generation_config.json': '{"bos_token_id": 1}',
  });
}

/** Every byte that was in `was` is still under `dir`: the same path, or <path>.before-mote[-k]. */
function assertKept(dir: string, was: Map<string, string>, what: string): { moved: number } {
  const now = hashTree(dir);
  let moved = 0;
  for (const [rel, h] of was) {
    if (now.get(rel) === h) continue;
    const aside = [...now.keys()].find((k) => k.startsWith(`${rel}.before-mote`) && now.get(k) === h);
    assert.ok(aside, `${what}: ${rel} was lost (neither in place nor kept as ${rel}.before-mote)`);
    moved++;
  }
  return { moved };
}

let b: Backend | string;
let t: TinyTraining;
before(async () => {
  b = await backendFor('cpu');
  if (typeof b !== 'string') {
    t = tinyTraining(b, 4);
    await t.trainer.trainStep();
  }
});
after(() => t?.dispose());

interface Writer {
  name: string;
  save: (dir: string, overwrite: boolean) => Promise<void>;
  check: (dir: string) => Promise<void>;
}

async function writers(): Promise<Writer[]> {
  const bundleDir = newDir('bundle');
  await saveMote(t.bundle, bundleDir);
  return [
    {
      name: 'saveCheckpoint',
      save: (d, o) => saveCheckpoint(t.trainer, d, { overwrite: o }),
      check: async (d) => {
        await loadCheckpoint(t.trainer, d);
      },
    },
    {
      name: 'saveModel',
      save: (d, o) => saveModel(t.model, d, { overwrite: o }),
      check: async (d) => {
        (await loadModel(d, { backend: b as Backend })).dispose();
      },
    },
    {
      name: 'saveMote',
      save: (d, o) => saveMote(t.bundle, d, { overwrite: o }),
      check: async (d) => {
        (await loadMote(d, t.model)).dispose();
      },
    },
    {
      name: 'mote export',
      save: async (d, o) => {
        const w = process.stdout.write;
        process.stdout.write = () => true;
        try {
          await exportCommand({ mote: bundleDir, out: d, overwrite: o });
        } finally {
          process.stdout.write = w;
        }
      },
      check: async (d) => {
        assert.ok(fs.existsSync(path.join(d, 'shared', 'adapter_model.safetensors')));
      },
    },
  ];
}

test('foreign folders: refused and byte-identical; with overwrite, no file mote did not write is lost [cpu]', async (tt) => {
  if (typeof b === 'string') return tt.skip(b);
  let refused = 0,
    movedAside = 0;
  for (const w of await writers()) {
    for (const [layout, make] of [
      ['HF checkpoint-500', hfCheckpoint],
      ['HF model folder', hfModel],
    ] as const) {
      const what = `${w.name} onto an ${layout}`;
      const dir = make(newDir(layout === 'HF model folder' ? 'model' : 'checkpoint-500'));
      const was = hashTree(dir);
      const siblings = fs.readdirSync(tmp).sort();
      await assert.rejects(
        w.save(dir, false),
        (e: unknown) =>
          e instanceof ArgumentError &&
          (e as Error).message.includes(dir) &&
          /not written by mote/.test((e as Error).message) &&
          /overwrite/.test((e as Error).message),
        what,
      );
      refused++;
      assert.deepEqual(hashTree(dir), was, `${what}: the refused folder changed`);
      assert.deepEqual(fs.readdirSync(tmp).sort(), siblings, `${what}: a temporary folder was left`);
      // With overwrite: mote's files go in, nothing that was there is lost.
      await w.save(dir, true);
      const first = assertKept(dir, was, `${what} (overwrite)`);
      assert.ok(fs.existsSync(path.join(dir, MARKER_FILE)), `${what}: no marker`);
      await w.check(dir);
      // Now the folder is mote's (with files it did not write): saved again without overwrite,
      // the foreign files stay and nothing is moved aside twice.
      const before2 = hashTree(dir);
      await w.save(dir, false);
      assertKept(dir, was, `${what} (second save)`);
      for (const [rel, h] of before2) {
        if (!rel.includes('before-mote')) continue;
        assert.equal(hashTree(dir).get(rel), h, `${what}: ${rel} changed on the second save`);
      }
      assert.ok(![...hashTree(dir).keys()].some((k) => /before-mote-2$/.test(k)), `${what}: a file was moved aside twice`);
      await w.check(dir);
      movedAside += first.moved;
    }
  }
  process.stdout.write(
    `foreign folders: ${refused} refused writes left byte-identical; with overwrite ${movedAside} files kept as .before-mote, 0 lost\n`,
  );
});

test("a checkpoint from before the marker is still mote's; a foreign folder named like a stale temporary is left alone [cpu]", async (tt) => {
  if (typeof b === 'string') return tt.skip(b);
  const dir = newDir('legacy');
  await saveCheckpoint(t.trainer, dir);
  // What an earlier mote wrote: the same layout without markers.
  fs.rmSync(path.join(dir, MARKER_FILE));
  fs.rmSync(path.join(dir, 'adapters', MARKER_FILE));
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'mine');
  const p = await loadCheckpoint(t.trainer, dir);
  assert.equal(p.step, t.trainer.state.step);
  // A folder of someone else named like mote's temporary of a dead process, and one with a
  // torn mote marker: neither is removed by a save or a resume.
  const fake = `${dir}.tmp-99999999`;
  write(fake, { 'data.bin': junk(9, 64), [MARKER_FILE]: '{"format": "not-mote"}' });
  const fakeWas = hashTree(fake);
  await saveCheckpoint(t.trainer, dir);
  assert.equal(fs.readFileSync(path.join(dir, 'notes.txt'), 'utf8'), 'mine');
  assert.ok(fs.existsSync(path.join(dir, MARKER_FILE)));
  await loadCheckpoint(t.trainer, dir);
  assert.deepEqual(hashTree(fake), fakeWas);
  // Asking to resume from a folder with no checkpoint says so.
  const none = newDir('none');
  await assert.rejects(loadCheckpoint(t.trainer, none), /not a mote checkpoint directory/);
  await assert.rejects(loadCheckpoint(t.trainer, hfCheckpoint(newDir('checkpoint-500'))), /not a mote checkpoint/);
});

test('a temporary left by a writer killed while writing its first marker (only mote-written.json.part) is cleaned; one with anything else is not', () => {
  const dir = newDir('killed-early');
  const early = `${dir}.tmp-99999997`;
  write(early, { [`${MARKER_FILE}.part`]: '{"format": "mote-wr' });
  const other = `${dir}.tmp-99999996`;
  write(other, { [`${MARKER_FILE}.part`]: '{"format": "mote-wr', 'theirs.txt': "not mote's" });
  const otherWas = hashTree(other);
  const removed = cleanStaleTemporaries(dir);
  assert.deepEqual(removed, [early]);
  assert.ok(!fs.existsSync(early));
  assert.deepEqual(hashTree(other), otherWas);
});

test('a subfolder of a mote folder replaced by a symlink to elsewhere: mote neither writes nor removes through it [cpu]', async (tt) => {
  if (typeof b === 'string') return tt.skip(b);
  const dir = newDir('linked');
  await saveCheckpoint(t.trainer, dir);
  // adapters/ (mote's, listed in the marker) now points at a folder outside the checkpoint.
  const outside = newDir('outside');
  fs.cpSync(path.join(dir, 'adapters'), outside, { recursive: true });
  fs.writeFileSync(path.join(outside, 'shared', 'adapter_config.json'), 'user data');
  fs.rmSync(path.join(dir, 'adapters'), { recursive: true });
  fs.symlinkSync(outside, path.join(dir, 'adapters'));
  const was = hashTree(outside);
  for (const overwrite of [false, true]) {
    await assert.rejects(
      saveCheckpoint(t.trainer, dir, { overwrite }),
      (e: unknown) => e instanceof ArgumentError && (e as Error).message.includes(`${path.join(dir, 'adapters')} is a symlink`),
    );
    assert.deepEqual(hashTree(outside), was);
  }
  assert.equal(fs.readFileSync(path.join(outside, 'shared', 'adapter_config.json'), 'utf8'), 'user data');
});

test('a target that is a symbolic link to a folder: mote writes into that folder and keeps the link [cpu]', async (tt) => {
  if (typeof b === 'string') return tt.skip(b);
  const parent = newDir('via-link');
  fs.mkdirSync(parent);
  // empty folder, then a second save over the first (the swap of a folder of mote's own)
  const empty = path.join(parent, 'real');
  fs.mkdirSync(empty);
  const link = path.join(parent, 'out');
  fs.symlinkSync(empty, link);
  await saveCheckpoint(t.trainer, link);
  await saveCheckpoint(t.trainer, link);
  assert.ok(fs.lstatSync(link).isSymbolicLink(), 'the link stays a link');
  assert.ok(fs.existsSync(path.join(empty, MARKER_FILE)), 'the checkpoint is in the folder it points to');
  assert.deepEqual(fs.readdirSync(parent).sort(), ['out', 'real'], 'no temporaries left beside either');
  await loadCheckpoint(t.trainer, link);
  // a folder of someone else's through a link: refused, then written beside their file with overwrite
  const theirs = write(newDir('theirs'), { 'notes.txt': 'mine' });
  const link2 = path.join(parent, 'theirs-link');
  fs.symlinkSync(theirs, link2);
  await assert.rejects(
    saveCheckpoint(t.trainer, link2),
    (e: unknown) => e instanceof ArgumentError && /not written by mote/.test((e as Error).message),
  );
  await saveCheckpoint(t.trainer, link2, { overwrite: true });
  assert.equal(fs.readFileSync(path.join(theirs, 'notes.txt'), 'utf8'), 'mine');
  assert.ok(fs.lstatSync(link2).isSymbolicLink());
  // a link to nothing names itself
  const dangling = path.join(parent, 'dangling');
  fs.symlinkSync(path.join(parent, 'gone'), dangling);
  await assert.rejects(
    saveCheckpoint(t.trainer, dangling),
    (e: unknown) => e instanceof ArgumentError && (e as Error).message.includes(`${dangling} is a symbolic link to nothing`),
  );
  assert.ok(!fs.existsSync(path.join(parent, 'gone')));
});
