// Installs the packed tarball into fresh consumer projects (temporary folders) and uses it as a
// user would (CI runs this after `npm pack`):
//   no-compiler  g++/c++/gcc/cc/cmake/make/ninja/nvcc shadowed on PATH: the prebuilt addon must be
//                picked and load, with no build leftovers; `openBackend('cpu')` runs a matmul.
//   normal       test/consumer/*.ts (the README's examples) compiled by a strict TypeScript
//                (strict, skipLibCheck false, NodeNext) against the package's .d.ts, then run;
//                require('mote-lora') works.
//   from-source  (--from-source) MOTE_BUILD_FROM_SOURCE=1: compiles, says so, keeps only the .node.
// Usage: node scripts/check-consumer.mjs path/to/mote-lora-x.y.z.tgz [--from-source]
// Installs prefer npm's cache (filled by `npm ci`), so they work offline once it holds the packages.
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { root } from './native-common.mjs';

const args = process.argv.slice(2);
const tarball = args.find((a) => !a.startsWith('--'));
if (!tarball || !existsSync(tarball)) {
  console.error('usage: node scripts/check-consumer.mjs path/to/mote-lora-x.y.z.tgz [--from-source]');
  process.exit(2);
}
const tgz = resolve(tarball);
const version = (name) => JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')).version;
const devTools = [`typescript@${version('typescript')}`, `@types/node@${version('@types/node')}`];
const keep = process.env.MOTE_KEEP_CONSUMER === '1';

function sh(cmd, argv, opts = {}) {
  console.log(`$ ${cmd} ${argv.join(' ')}`);
  const r = spawnSync(cmd, argv, { stdio: 'inherit', ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed (exit ${r.status ?? r.signal})`);
}

function npmInstall(dir, pkgs, env) {
  const base = ['install', '--no-audit', '--no-fund', '--foreground-scripts', ...pkgs];
  const r = spawnSync('npm', ['--prefer-offline', ...base], { cwd: dir, stdio: 'inherit', env });
  if (r.status === 0) return;
  console.log('npm install --prefer-offline failed; retrying --offline (npm cache only)');
  sh('npm', ['--offline', ...base], { cwd: dir, env });
}

function project(name) {
  const dir = mkdtempSync(join(tmpdir(), `mote-consumer-${name}-`));
  for (const f of readdirSync(join(root, 'test', 'consumer'))) cpSync(join(root, 'test', 'consumer', f), join(dir, f));
  return dir;
}

function installed(dir) {
  const pkg = join(dir, 'node_modules', 'mote-lora');
  const status = JSON.parse(readFileSync(join(pkg, 'build', 'native-status.json'), 'utf8'));
  const leftovers = existsSync(join(pkg, 'build'))
    ? readdirSync(join(pkg, 'build'), { recursive: true }).filter(
        (f) => !['native-status.json', 'Release', join('Release', 'mote.node')].includes(String(f)),
      )
    : [];
  return { pkg, status, leftovers };
}

const checks = [];
function check(what, ok, detail = '') {
  checks.push({ what, ok });
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${detail ? ` (${detail})` : ''}`);
}

// (a) no compiler on PATH
{
  const dir = project('nocc');
  const shadow = join(dir, '.no-compilers');
  mkdirSync(shadow);
  for (const tool of ['g++', 'c++', 'gcc', 'cc', 'clang', 'clang++', 'cmake', 'make', 'ninja', 'nvcc']) {
    writeFileSync(join(shadow, tool), `#!/bin/sh\necho "${tool}: hidden by check-consumer (no compiler here)" >&2\nexit 127\n`);
    chmodSync(join(shadow, tool), 0o755);
  }
  const env = { ...process.env, PATH: `${shadow}${delimiter}${process.env.PATH}`, MOTE_BUILD_FROM_SOURCE: '', MOTE_CUDA: '' };
  npmInstall(dir, [tgz], env);
  const { status, leftovers } = installed(dir);
  check('no compiler: install picked the prebuilt addon', status.built && status.source === 'prebuilt', JSON.stringify(status));
  check('no compiler: no build leftovers', leftovers.length === 0, leftovers.join(' '));
  const r = spawnSync(process.execPath, ['cpu-only.mjs'], { cwd: dir, stdio: 'inherit', env });
  check("no compiler: openBackend('cpu') runs a matmul", r.status === 0);
  if (!keep) rmSync(dir, { recursive: true, force: true });
}

// (b) normal install, strict TypeScript consumer of the README's examples, require()
{
  const dir = project('ts');
  npmInstall(dir, [tgz, ...devTools], process.env);
  const tsc = spawnSync(process.execPath, [join(dir, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], {
    cwd: dir,
    stdio: 'inherit',
  });
  check('strict TypeScript consumer compiles (skipLibCheck false)', tsc.status === 0);
  if (tsc.status === 0) {
    for (const f of ['api.js', 'mote.js']) {
      const r = spawnSync(process.execPath, [join('out', f)], { cwd: dir, stdio: 'inherit' });
      check(`README example runs: ${f}`, r.status === 0);
    }
  }
  const r = spawnSync(process.execPath, ['require.cjs'], { cwd: dir, stdio: 'inherit' });
  check("require('mote-lora') works", r.status === 0);
  const bin = spawnSync(join(dir, 'node_modules', '.bin', 'mote'), ['info'], { cwd: dir, stdio: 'inherit' });
  check('`mote info` runs', bin.status === 0);
  if (!keep) rmSync(dir, { recursive: true, force: true });
}

// (c) build from source when asked
if (args.includes('--from-source')) {
  const dir = project('src');
  npmInstall(dir, [tgz], { ...process.env, MOTE_BUILD_FROM_SOURCE: '1', MOTE_CUDA: '0' });
  const { status, leftovers } = installed(dir);
  check('MOTE_BUILD_FROM_SOURCE=1: built from source', status.built && status.source === 'source', JSON.stringify(status));
  check('MOTE_BUILD_FROM_SOURCE=1: only the .node is left', leftovers.length === 0, leftovers.join(' '));
  const r = spawnSync(process.execPath, ['cpu-only.mjs'], { cwd: dir, stdio: 'inherit' });
  check('MOTE_BUILD_FROM_SOURCE=1: cpu backend runs', r.status === 0);
  if (!keep) rmSync(dir, { recursive: true, force: true });
}

const failed = checks.filter((c) => !c.ok);
console.log(`\nconsumer checks: ${checks.length - failed.length}/${checks.length} passed`);
process.exit(failed.length ? 1 : 0);
