// Install step (`npm install` / `npm ci`): puts a native addon (cpu and cuda backends) in place.
// A failed build never fails the install: the webgpu backend works without the addon, and
// `mote info` says why cpu/cuda are missing.
//
// 1. The package ships a prebuilt CPU addon for linux-x64 (prebuilds/linux-x64/mote.node; kernels for
//    x86-64, -v3 and -v4 chosen at load; OpenBLAS used when present). When it loads here, that is it:
//    nothing is compiled.
// 2. Otherwise the addon is compiled from source with cmake-js (cmake and a C++17 compiler needed):
//    when no prebuilt fits this platform or it does not load, when MOTE_BUILD_FROM_SOURCE=1, or for
//    CUDA (nvcc on PATH, or MOTE_CUDA=1), which needs the local toolkit. A source build targets this
//    machine's CPU (-march=native). A checkout of mote always builds from source. In an installed
//    package the build leftovers are removed after it
//    (only build/Release/mote.node stays); in a checkout of mote they stay for quick rebuilds.
//
//   MOTE_CUDA=0|1              CUDA kernels off / required (default: built when nvcc is found)
//   MOTE_BUILD_FROM_SOURCE=1   compile even when the prebuilt addon would do
//   MOTE_SKIP_NATIVE=1         neither (cpu and cuda backends unavailable unless MOTE_ADDON_PATH is set)
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { closeTerminal, cmakeBuild, haveNvcc, platformTag, prebuiltPath, probeAddon, root, say } from './native-common.mjs';

const buildDir = join(root, 'build');
const statusFile = join(buildDir, 'native-status.json');
const builtPath = join(buildDir, 'Release', 'mote.node');

function record(status) {
  mkdirSync(dirname(statusFile), { recursive: true });
  writeFileSync(statusFile, JSON.stringify(status, null, 2) + '\n');
}

function finish(status) {
  record(status);
  closeTerminal();
  process.exit(0);
}

// Installed as a dependency (…/node_modules/<name>), or asked: keep only the .node after a build.
function removeLeftovers() {
  const installed = root.split(sep).includes('node_modules');
  if (!installed && process.env.MOTE_CLEAN_BUILD !== '1') return;
  for (const entry of readdirSync(buildDir)) {
    if (entry === 'Release' || entry === 'native-status.json') continue;
    rmSync(join(buildDir, entry), { recursive: true, force: true });
  }
  if (!existsSync(join(buildDir, 'Release'))) return;
  for (const entry of readdirSync(join(buildDir, 'Release'))) {
    if (entry !== 'mote.node') rmSync(join(buildDir, 'Release', entry), { recursive: true, force: true });
  }
}

if (process.env.MOTE_SKIP_NATIVE === '1') {
  say('mote: MOTE_SKIP_NATIVE=1, no native addon (cpu and cuda backends unavailable)');
  finish({ built: false, reason: 'MOTE_SKIP_NATIVE=1 at install time' });
}

const cudaEnv = process.env.MOTE_CUDA;
const wantCuda = cudaEnv === '1' || (cudaEnv !== '0' && haveNvcc());
// A checkout of mote (not under node_modules) builds from source, as its tests and benchmarks
// expect this machine's -march=native kernels; MOTE_USE_PREBUILT=1 tries the prebuilt there too.
const inCheckout = !root.split(sep).includes('node_modules') && process.env.MOTE_USE_PREBUILT !== '1';
const fromSource = process.env.MOTE_BUILD_FROM_SOURCE === '1' || inCheckout;

let prebuiltWhy = '';
if (!existsSync(prebuiltPath)) {
  prebuiltWhy = `no prebuilt addon for ${platformTag} in this package`;
} else {
  const probe = probeAddon(prebuiltPath);
  if (probe.ok) {
    if (!fromSource && !wantCuda) {
      // a stale addon from an earlier source build would be loaded first (src/backend/native.ts)
      rmSync(builtPath, { force: true });
      say(`mote: using the prebuilt CPU addon (${relative(root, prebuiltPath)}, kernels: ${probe.info.cpu.simd}); ` +
        'set MOTE_BUILD_FROM_SOURCE=1 to compile it for this machine instead');
      finish({ built: true, source: 'prebuilt', path: relative(root, prebuiltPath), cuda: 'OFF' });
    }
  } else {
    prebuiltWhy = `the prebuilt addon for ${platformTag} does not load here (${probe.reason})`;
  }
}

const why = inCheckout ? 'a checkout of mote' : fromSource ? 'MOTE_BUILD_FROM_SOURCE=1' : wantCuda ? 'nvcc found: building with the CUDA kernels' : prebuiltWhy;
async function build(cuda) {
  say(`mote: compiling the native addon from source (${why}; CUDA ${cuda}). This takes 1-3 minutes…`);
  const t0 = Date.now();
  const ok = await cmakeBuild('build', { MOTE_CUDA: cuda });
  say(ok ? `mote: native addon built in ${Math.round((Date.now() - t0) / 1000)} s (build/Release/mote.node)`
    : `mote: the native build (CUDA ${cuda}) failed after ${Math.round((Date.now() - t0) / 1000)} s; its output is above / in npm's log`);
  return ok;
}

const cudaMode = cudaEnv === '0' ? 'OFF' : cudaEnv === '1' ? 'ON' : wantCuda ? 'AUTO' : 'OFF';
if (await build(cudaMode)) {
  removeLeftovers();
  finish({ built: true, source: 'source', cuda: cudaMode });
}
if (!prebuiltWhy) {
  rmSync(builtPath, { force: true });
  removeLeftovers();
  say(`mote: using the prebuilt CPU addon instead (${relative(root, prebuiltPath)}); the cuda backend is unavailable`);
  finish({ built: true, source: 'prebuilt', path: relative(root, prebuiltPath), cuda: 'OFF', reason: 'the source build failed at install time' });
}
if (cudaMode === 'AUTO' && (await build('OFF'))) {
  removeLeftovers();
  finish({ built: true, source: 'source', cuda: 'OFF', reason: 'the CUDA build failed at install time' });
}
say('mote: the native addon could not be built (see the compiler output above).\n' +
  'mote: the cpu and cuda backends are unavailable; the webgpu backend still works.');
finish({ built: false, reason: `${prebuiltWhy ? prebuiltWhy + '; ' : ''}the native build failed at install time (needs cmake and a C++17 compiler)` });
