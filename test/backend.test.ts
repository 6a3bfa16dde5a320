import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as os from 'node:os';
import * as path from 'node:path';
import { join, dirname } from 'node:path';
import { openBackend, probeBackends } from '../src/backend/select.js';
import { ArgumentError, BackendUnavailableError } from '../src/errors.js';
import { REQUIRED } from './helpers.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

test('probeBackends reports every backend, with a reason for each missing one', async () => {
  const found = await probeBackends();
  assert.deepEqual(
    found.map((f) => f.kind),
    ['cpu', 'webgpu', 'cuda'],
  );
  for (const f of found) {
    if (f.available) {
      assert.ok(f.info && f.info.name === f.kind && f.info.device.length > 0, `${f.kind} info`);
    } else {
      assert.ok(f.reason && f.reason.length > 10, `${f.kind} has a reason`);
      assert.ok(!REQUIRED.has(f.kind), `required backend ${f.kind} is missing: ${f.reason}`);
    }
  }
  const webgpu = found.find((f) => f.kind === 'webgpu');
  if (webgpu?.available) {
    for (const feat of ['shader-f16', 'subgroups', 'timestamp-query']) {
      if (webgpu.info!.software) assert.ok(webgpu.info!.features.includes(feat), `lavapipe exposes ${feat}`);
    }
  }
});

test("openBackend('auto') picks a software WebGPU adapter only when nothing else starts", async () => {
  const b = await openBackend('auto').catch((e) => e);
  if (b instanceof BackendUnavailableError) return; // nothing at all here
  const cpu = await openBackend('cpu').catch((e) => e);
  if (!(cpu instanceof Error)) {
    assert.ok(!(b.kind === 'webgpu' && b.info().software), 'auto picked a software adapter over cpu');
    cpu.destroy();
  }
  b.destroy();
});

test("openBackend('auto') without the addon falls back to a software WebGPU adapter with a one-line notice", async (t) => {
  const sw = await openBackend('webgpu').catch((e) => e);
  if (sw instanceof Error) return t.skip(`no WebGPU adapter here: ${sw.message}`);
  const software = sw.info().software;
  sw.destroy();
  if (!software) return t.skip('the WebGPU adapter here is hardware: auto picks it anyway');
  const script = `import('${pathToFileURL(path.join(root, 'dist', 'src', 'backend', 'select.js')).href}').then(async (m) => {
    const b = await m.openBackend('auto'); console.log(JSON.stringify({ kind: b.kind, software: b.info().software })); b.destroy(); });`;
  const r = spawnSync(process.execPath, ['-e', script], {
    encoding: 'utf8',
    env: { ...process.env, MOTE_ADDON_PATH: path.join(os.tmpdir(), 'no-such-addon.node') },
    timeout: 60_000,
  });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout.trim().split('\n').at(-1)!), { kind: 'webgpu', software: true });
  const notices = r.stderr.split('\n').filter((l) => l.startsWith('mote: '));
  assert.equal(notices.length, 1, r.stderr);
  assert.match(notices[0]!, /software WebGPU adapter .* slow/);
});

test('openBackend rejects unknown kinds and reports unavailable ones without crashing', async () => {
  await assert.rejects(
    () => openBackend('tpu' as never),
    (e: Error) => e instanceof ArgumentError && /kind: expected/.test(e.message),
  );
  // a misspelt option used to be ignored (all threads instead of 2); refused before any device is touched
  for (const kind of ['cpu', 'webgpu', 'auto'] as const) {
    await assert.rejects(
      () => openBackend(kind, { thread: 2 } as never),
      (e: Error) => e instanceof ArgumentError && /openBackend: unknown option 'thread' \(expected threads, /.test(e.message),
    );
  }
  await assert.rejects(() => probeBackends({ thread: 2 } as never), /unknown option 'thread'/);
  const cuda = await openBackend('cuda').catch((e) => e);
  if (cuda instanceof Error) {
    assert.ok(cuda instanceof BackendUnavailableError, String(cuda));
    assert.match(cuda.message, /backend 'cuda' is unavailable: .+/);
  } else cuda.destroy();
});

test('a destroyed backend refuses new work', async () => {
  const b = await openBackend('cpu').catch((e) => e);
  if (b instanceof BackendUnavailableError) return;
  const t = b.tensor([1, 2], [2]);
  b.destroy();
  assert.ok(t.disposed);
  assert.throws(() => b.tensor([1], [1]), BackendUnavailableError);
});

test('webgpu runs on a GPUDevice the caller owns, and leaves it alive', async (t) => {
  const own = await openBackend('webgpu').catch((e) => e);
  if (own instanceof BackendUnavailableError) {
    if (REQUIRED.has('webgpu')) throw own;
    t.skip(`webgpu unavailable: ${own.reason}`);
    return;
  }
  const device = (own as unknown as { device: GPUDevice }).device;
  const shared = await openBackend('webgpu', { device });
  assert.equal(shared.info().details.ownsDevice, false);
  const x = shared.tensor([1, 2, 3], [3]);
  assert.deepEqual(await x.read(), Float32Array.from([1, 2, 3]));
  shared.destroy();
  // the caller's device still works
  const y = own.tensor([4, 5], [2]);
  assert.deepEqual(await y.read(), Float32Array.from([4, 5]));
  own.destroy();
});

test('`mote info` lists every backend and exits by itself', () => {
  const out = execFileSync(process.execPath, [join(root, 'bin', 'mote.js'), 'info'], { encoding: 'utf8', timeout: 120_000 });
  for (const k of ['cpu', 'webgpu', 'cuda']) assert.match(out, new RegExp(`^${k}\\s+(available|missing)`, 'm'));
  for (const k of REQUIRED) if (k !== 'browser') assert.match(out, new RegExp(`^${k}\\s+available`, 'm'));
  const json = JSON.parse(
    execFileSync(process.execPath, [join(root, 'bin', 'mote.js'), 'info', '--json'], { encoding: 'utf8', timeout: 120_000 }),
  );
  assert.deepEqual(json.backends.map((b: { kind: string }) => b.kind).sort(), ['cpu', 'cuda', 'webgpu']);
});

test('`mote` with bad input prints one clear line and exits non-zero', () => {
  try {
    execFileSync(process.execPath, [join(root, 'bin', 'mote.js'), 'demo', '--backend', 'nope'], { encoding: 'utf8', stdio: 'pipe' });
    assert.fail('expected a non-zero exit');
  } catch (e) {
    const err = e as { status: number; stderr: string };
    assert.notEqual(err.status, 0);
    assert.match(err.stderr, /nope/);
  }
});

test("Dawn's own warnings stay out of the terminal (MOTE_DEBUG=1 shows them)", (t) => {
  const run = (env: Record<string, string>) =>
    spawnSync(process.execPath, [join(root, 'bin', 'mote.js'), 'info'], {
      encoding: 'utf8',
      timeout: 120_000,
      env: { ...process.env, ...env },
    });
  const quiet = run({ MOTE_DEBUG: '' });
  assert.equal(quiet.status, 0, quiet.stderr);
  if (!/^webgpu\s+available/m.test(quiet.stdout)) return t.skip('no webgpu adapter here');
  assert.doesNotMatch(quiet.stderr, /artificially reduced/);
  const loud = run({ MOTE_DEBUG: '1' });
  // Dawn prints these on lavapipe; on other adapters there may be nothing to show.
  if (/llvmpipe|lavapipe/.test(quiet.stdout)) assert.match(loud.stderr, /artificially reduced/);
});
