// Builds the native addon (CPU kernels, plus CUDA kernels when nvcc is found) with cmake-js.
// Runs on `npm install`/`npm ci`. A failed build never fails the install: the webgpu
// backend works without the addon, and `mote info` says why cpu/cuda are missing.
//   MOTE_CUDA=0|1     force the CUDA kernels off / on (default: on when nvcc is found)
//   MOTE_SKIP_NATIVE=1 do not build the addon
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const statusFile = join(root, 'build', 'native-status.json');

function record(status) {
  mkdirSync(dirname(statusFile), { recursive: true });
  writeFileSync(statusFile, JSON.stringify(status, null, 2) + '\n');
}

if (process.env.MOTE_SKIP_NATIVE === '1') {
  console.log('mote: MOTE_SKIP_NATIVE=1, not building the native addon (cpu and cuda backends unavailable)');
  record({ built: false, reason: 'MOTE_SKIP_NATIVE=1 at install time' });
  process.exit(0);
}

const require = createRequire(import.meta.url);
let cmakeJs;
try {
  cmakeJs = require.resolve('cmake-js/bin/cmake-js');
} catch {
  console.warn('mote: cmake-js is not installed; the native addon was not built (cpu and cuda backends unavailable)');
  record({ built: false, reason: 'cmake-js not installed' });
  process.exit(0);
}

const cudaEnv = process.env.MOTE_CUDA;
const cudaMode = cudaEnv === '0' ? 'OFF' : cudaEnv === '1' ? 'ON' : 'AUTO';
const jobs = String(Math.max(1, (await import('node:os')).availableParallelism?.() ?? 2));

function build(mode) {
  console.log(`mote: building the native addon (MOTE_CUDA=${mode})`);
  // configure every time: `compile` would keep a cached MOTE_CUDA from an earlier build
  const run = (cmd) => spawnSync(process.execPath, [cmakeJs, cmd, '--out', 'build', `--CDMOTE_CUDA=${mode}`, '--parallel', jobs], {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: jobs },
  }).status === 0;
  return run('configure') && run('build') && existsSync(join(root, 'build', 'Release', 'mote.node'));
}

if (build(cudaMode)) {
  record({ built: true, cuda: cudaMode });
  process.exit(0);
}
if (cudaMode === 'AUTO') {
  console.warn('mote: the build with CUDA failed; retrying without CUDA');
  if (build('OFF')) {
    record({ built: true, cuda: 'OFF', reason: 'the CUDA build failed at install time' });
    process.exit(0);
  }
}
console.warn('mote: the native addon could not be built (see the compiler output above).\n' +
  'mote: the cpu and cuda backends are unavailable; the webgpu backend still works.');
record({ built: false, reason: 'the native build failed at install time (needs cmake and a C++17 compiler)' });
process.exit(0);
