// The formatters: prettier for the TypeScript and scripts (.prettierrc.json), clang-format for
// the C++ and CUDA (.clang-format). `npm run format` rewrites; `npm run format:check` (CI)
// lists what is not formatted and exits 1. clang-format comes from the system (Debian's
// clang-format package); without it the C++ check is skipped outside CI and fails in CI.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { root } from './native-common.mjs';

const check = process.argv.includes('--check');
const walk = (dir, exts, out = []) => {
  for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, exts, out);
    else if (exts.some((x) => e.name.endsWith(x))) out.push(p);
  }
  return out;
};
let failed = false;

const prettier = join(root, 'node_modules', 'prettier', 'bin', 'prettier.cjs');
const tsGlobs = ['src/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts', 'scripts/**/*.mjs', 'bin/*.js'];
const p = spawnSync(process.execPath, [prettier, check ? '--check' : '--write', '--log-level', 'warn', ...tsGlobs], {
  cwd: root,
  stdio: 'inherit',
});
if (p.status !== 0) failed = true;

const cxx = [...walk('native', ['.cc', '.h']), ...walk('kernels/cuda', ['.cu', '.cuh', '.h'])].filter((f) =>
  statSync(join(root, f)).isFile(),
);
const cf = spawnSync('clang-format', ['--version'], { encoding: 'utf8' });
if (cf.status !== 0) {
  const msg = 'clang-format not found (apt-get install clang-format): the C++ and CUDA were not checked';
  if (process.env.CI) {
    console.error(`format: ${msg}`);
    failed = true;
  } else console.log(`format: ${msg}`);
} else {
  const r = spawnSync('clang-format', check ? ['--dry-run', '--Werror', ...cxx] : ['-i', ...cxx], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) failed = true;
}
if (check)
  console.log(
    failed
      ? 'format: not formatted (npm run format fixes it)'
      : `format: ${tsGlobs.join(' ')} and ${cxx.length} C++/CUDA files are formatted`,
  );
process.exit(failed ? 1 : 0);
