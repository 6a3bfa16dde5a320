// The package as shipped: what `npm pack` puts in it, require() of the ESM entry, strict consumers
// of the .d.ts, where the native addon is looked for.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { addonCandidates } from '../src/backend/native.js';

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));

function packedFiles(): string[] {
  // --ignore-scripts: no prepare (tsc) and no prepack; the list is what `npm pack` would ship
  const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  return (JSON.parse(r.stdout) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
}

test('npm pack: LICENSE, no native tests, every source map points at a shipped file', { timeout: 90_000 }, () => {
  const files = packedFiles();
  const shipped = new Set(files);
  assert.ok(shipped.has('LICENSE'), 'LICENSE missing from the package');
  assert.deepEqual(
    files.filter((f) => f.startsWith('native/test/') || f.startsWith('test/') || f.startsWith('build')),
    [],
  );
  const maps = files.filter((f) => f.endsWith('.js.map'));
  assert.ok(maps.length > 0, 'no source maps packed (dist not built?)');
  const missing: string[] = [];
  for (const m of maps) {
    const map = JSON.parse(readFileSync(join(ROOT, m), 'utf8')) as { sources: string[] };
    for (const s of map.sources) {
      const target = join(m, '..', s).replaceAll('\\', '/');
      if (!shipped.has(target)) missing.push(`${m} -> ${target}`);
    }
  }
  assert.deepEqual(missing.slice(0, 5), []);
  for (const dep of ['benchmark', 'lodash']) assert.ok(!(dep in pkg.dependencies), `${dep} is a runtime dependency`);
});

test("require('mote-lora') loads the ESM entry (Node ≥ 20.19 / 22.12)", { timeout: 60_000 }, () => {
  // a package can require itself by name; this goes through package.json "exports" like a consumer's require
  const r = spawnSync(
    process.execPath,
    ['-e', "const m = require('mote-lora'); if (typeof m.openBackend !== 'function') process.exit(3)"],
    { cwd: ROOT, encoding: 'utf8', timeout: 60_000 },
  );
  assert.equal(r.status, 0, r.stderr);
});

test('a strict TypeScript consumer (skipLibCheck false) compiles against the shipped .d.ts', { timeout: 120_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'mote-dts-'));
  try {
    writeFileSync(
      join(dir, 'use.ts'),
      [
        `import { openBackend, matmul, type Backend } from ${JSON.stringify(join(ROOT, 'dist', 'src', 'index.js'))};`,
        'export async function f(): Promise<Backend> { const b = await openBackend("cpu"); matmul(b.tensor(new Float32Array(4), [2, 2]), b.tensor(new Float32Array(4), [2, 2])); return b; }',
      ].join('\n'),
    );
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    // only node's types in the program, as in a consumer's project: WebGPU's come from the package itself
    const r = spawnSync(
      process.execPath,
      [
        tsc,
        '--noEmit',
        '--strict',
        '--skipLibCheck',
        'false',
        '--module',
        'nodenext',
        '--moduleResolution',
        'nodenext',
        '--target',
        'es2022',
        '--types',
        'node',
        '--typeRoots',
        join(ROOT, 'node_modules', '@types'),
        join(dir, 'use.ts'),
      ],
      { encoding: 'utf8', timeout: 110_000 },
    );
    assert.equal(r.status, 0, r.stdout + r.stderr);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the addon is looked for in MOTE_ADDON_PATH, then build/Release, then prebuilds/<platform>-<arch>', () => {
  const saved = process.env.MOTE_ADDON_PATH;
  try {
    delete process.env.MOTE_ADDON_PATH;
    assert.deepEqual(addonCandidates(), [
      join(ROOT, 'build', 'Release', 'mote.node'),
      join(ROOT, 'prebuilds', `${process.platform}-${process.arch}`, 'mote.node'),
    ]);
    process.env.MOTE_ADDON_PATH = '/x/y.node';
    assert.deepEqual(addonCandidates(), ['/x/y.node']);
  } finally {
    if (saved === undefined) delete process.env.MOTE_ADDON_PATH;
    else process.env.MOTE_ADDON_PATH = saved;
  }
});

test('prebuilt addon (when built): every SIMD level this CPU runs loads and reports itself', { timeout: 60_000 }, (t) => {
  const prebuilt = join(ROOT, 'prebuilds', `${process.platform}-${process.arch}`, 'mote.node');
  if (!existsSync(prebuilt)) return t.skip('no prebuilds/ here (npm run build:prebuilt)');
  const best = spawnSync(process.execPath, ['-e', `process.stdout.write(require(${JSON.stringify(prebuilt)}).info().cpu.simd)`], {
    encoding: 'utf8',
  });
  assert.equal(best.status, 0, best.stderr);
  const levels = ['x86-64', 'x86-64-v3', 'x86-64-v4'];
  assert.ok(levels.includes(best.stdout), best.stdout);
  for (const level of levels.slice(0, levels.indexOf(best.stdout) + 1)) {
    const r = spawnSync(process.execPath, ['-e', `process.stdout.write(require(${JSON.stringify(prebuilt)}).info().cpu.simd)`], {
      encoding: 'utf8',
      env: { ...process.env, MOTE_CPU_VARIANT: level },
    });
    assert.equal(r.stdout, level);
  }
});

test('VERSION, mote --version and mote info --json agree with package.json', async () => {
  const { VERSION } = await import('../src/index.js');
  assert.equal(VERSION, pkg.version);
  const bin = join(ROOT, 'bin', 'mote.js');
  const v = spawnSync(process.execPath, [bin, '--version'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(v.status, 0, v.stderr);
  assert.equal(v.stdout.trim(), pkg.version);
  const info = spawnSync(process.execPath, [bin, 'info', '--json'], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(info.status, 0, info.stderr);
  const lines = info.stdout.trim().split('\n');
  assert.equal(lines.length, 1, `info --json printed ${lines.length} lines`);
  const doc = JSON.parse(lines[0]!) as { version: string; backends: { kind: string; available: boolean }[] };
  assert.equal(doc.version, pkg.version);
  assert.deepEqual(doc.backends.map((b) => b.kind).sort(), ['cpu', 'cuda', 'webgpu']);
});
