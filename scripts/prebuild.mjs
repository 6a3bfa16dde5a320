// Maintainers (and CI), before `npm pack`: builds the portable CPU addon that the package ships,
// prebuilds/<platform>-<arch>/mote.node (today: linux-x64), and checks it.
//   - kernels compiled for x86-64, x86-64-v3 and x86-64-v4, one picked at load (MOTE_CPU_DISPATCH);
//   - no CUDA (that needs the user's toolkit: installs with nvcc build from source);
//   - OpenBLAS looked up at load, not linked (ldd must not list it).
// libstdc++ stays dynamic: built on Debian 12 (GCC 12) the addon then needs glibc ≥ 2.34 and
// GLIBCXX_3.4.30, while a static libstdc++ would need glibc ≥ 2.36 (arc4random, _dl_find_object).
// Where the prebuilt does not load, the install builds from source.
// The checks: it loads, `ldd` lists no OpenBLAS, and every SIMD level it can run here
// agrees with the others on a small matmul (mote's own kernel; OpenBLAS takes only ≥ 16 rows).
import { copyFileSync, mkdirSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { dirname, join, relative } from 'node:path';
import { cmakeBuild, platformTag, prebuiltPath, probeAddon, root, say } from './native-common.mjs';

const outDir = 'build-prebuild';
say(`mote: building the prebuilt CPU addon for ${platformTag} in ${outDir}/ …`);
const ok = await cmakeBuild(outDir, {
  MOTE_CUDA: 'OFF',
  MOTE_CPU_DISPATCH: 'ON',
  MOTE_NATIVE_ARCH: 'OFF',
  MOTE_STATIC_RUNTIME: 'OFF',
  MOTE_BLAS: 'AUTO',
});
if (!ok) {
  console.error('mote: the prebuilt addon failed to build (output above)');
  process.exit(1);
}
mkdirSync(dirname(prebuiltPath), { recursive: true });
copyFileSync(join(root, outDir, 'Release', 'mote.node'), prebuiltPath);
if (process.platform === 'linux') spawnSync('strip', ['--strip-unneeded', prebuiltPath], { stdio: 'inherit' });

const fail = (msg) => {
  console.error(`mote: prebuild check failed: ${msg}`);
  process.exit(1);
};
if (process.platform === 'linux') {
  const ldd = spawnSync('ldd', [prebuiltPath], { encoding: 'utf8' });
  if (ldd.status === 0) {
    const libs = ldd.stdout
      .split('\n')
      .map((l) => l.trim().split(' ')[0])
      .filter(Boolean);
    const extra = libs.filter(
      (l) =>
        !/^(linux-vdso|\/lib64\/ld-linux|ld-linux|libc\.so|libm\.so|libpthread\.so|libdl\.so|librt\.so|libstdc\+\+\.so|libgcc_s\.so)/.test(
          l,
        ),
    );
    if (extra.length) fail(`it links ${extra.join(', ')} (expected only libc, libm, libstdc++, libgcc_s)`);
    console.log(`mote: ldd: ${libs.join(' ')}`);
  }
  const syms = spawnSync('objdump', ['-T', prebuiltPath], { encoding: 'utf8' });
  if (syms.status === 0) {
    const newest = (prefix) =>
      [...new Set(syms.stdout.match(new RegExp(`${prefix}_[0-9.]+`, 'g')) ?? [])]
        .map((v) => v.slice(prefix.length + 1))
        .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))
        .at(-1) ?? '-';
    console.log(`mote: needs glibc ≥ ${newest('GLIBC')}, libstdc++ GLIBCXX ≥ ${newest('GLIBCXX')}`);
  }
}

// Every level this CPU can run must load and compute the same thing (within rounding).
const levels = ['x86-64', 'x86-64-v3', 'x86-64-v4'];
const check = `
const a = require(${JSON.stringify(prebuiltPath)});
const T = 5, K = 96, N = 40;
const x = Float32Array.from({ length: T * K }, (_, i) => Math.sin(i * 0.37));
const w = Float32Array.from({ length: N * K }, (_, i) => Math.cos(i * 0.11));
const buf = (arr) => { const b = a.alloc(0, arr.byteLength); a.write(b, new Uint8Array(arr.buffer)); return b; };
const y = a.alloc(0, T * N * 4);
a.matmul(y, buf(x), buf(w), 0, T, K, N, false);
const out = new Float32Array(T * N);
a.read(y, new Uint8Array(out.buffer));
process.stdout.write(JSON.stringify({ simd: a.info().cpu.simd, y: Array.from(out) }));
`;
let ref = null;
for (const level of levels) {
  const r = spawnSync(process.execPath, ['-e', check], { encoding: 'utf8', env: { ...process.env, MOTE_CPU_VARIANT: level } });
  if (r.status !== 0) fail(`loading with MOTE_CPU_VARIANT=${level}: ${r.stderr || r.signal}`);
  const got = JSON.parse(r.stdout);
  if (got.simd !== level) {
    console.log(`mote: ${level}: not supported by this CPU, skipped`);
    continue;
  }
  if (ref) {
    const worst = got.y.reduce((m, v, i) => Math.max(m, Math.abs(v - ref[i]) / (1 + Math.abs(ref[i]))), 0);
    if (!(worst < 1e-4)) fail(`${level} differs from x86-64 by ${worst}`);
  } else ref = got.y;
  console.log(`mote: ${level}: loads, matmul agrees`);
}
const probe = probeAddon(prebuiltPath);
if (!probe.ok) fail(probe.reason);
console.log(
  `mote: ${relative(root, prebuiltPath)} (${(statSync(prebuiltPath).size / 1e6).toFixed(1)} MB) ready; kernels here: ${probe.info.cpu.simd}, features: ${probe.info.cpu.features.join(' ')}`,
);
