#!/usr/bin/env node
// Prepares what a GPU machine without Node or a registry needs to run mote's TypeScript stack
// (issue 16, scripts/gpu-run.sh): writes .device/ (git-ignored, carried to the machine):
//   node.xz          this machine's Node binary, xz-compressed
//   modules.tar.xz   the node_modules the Node tests and benchmarks need at run time (the
//                    package's runtime dependencies without build tools, webgpu for linux-x64
//                    only, and the test/bench helpers fast-check and benchmark)
//   dist.tar.xz      the compiled TypeScript (npm run build first)
//   vulkan/          this machine's Vulkan loader (libvulkan.so.1), for Dawn where the GPU machine
//                    has none (gpu-run.sh puts it on LD_LIBRARY_PATH only then)
// Usage: node scripts/gpu-pack.mjs   (then: run with carry [".device"] and `bash scripts/gpu-run.sh`)
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, realpathSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, '.device');
mkdirSync(out, { recursive: true });

// Run-time closure (checked by hand against each package.json's dependencies).
const MODULES = [
  '@huggingface/jinja',
  '@huggingface/tokenizers',
  'cli-progress',
  'string-width',
  'emoji-regex',
  'is-fullwidth-code-point',
  'strip-ansi',
  'ansi-regex',
  'commander',
  're2js',
  'debug',
  'ms',
  'node-addon-api',
  'node-api-headers',
  'fast-check',
  'pure-rand',
  'benchmark',
  'lodash',
  'platform',
];
const WEBGPU = ['webgpu/package.json', 'webgpu/index.js', 'webgpu/dist/linux-x64'];

for (const m of MODULES)
  if (!existsSync(join(root, 'node_modules', m))) throw new Error(`gpu-pack: node_modules/${m} is missing (npm ci first)`);
if (!existsSync(join(root, 'dist', 'src', 'index.js'))) throw new Error('gpu-pack: dist/ is missing (npm run build first)');

const xz = (args, file) =>
  execFileSync('bash', ['-c', `set -o pipefail; ${args} | xz -T2 -6 > ${JSON.stringify(file)}`], {
    cwd: root,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
xz(`cat ${JSON.stringify(process.execPath)}`, join(out, 'node.xz'));
xz(`tar -C node_modules -cf - ${[...MODULES, ...WEBGPU].join(' ')}`, join(out, 'modules.tar.xz'));
xz('tar -cf - dist', join(out, 'dist.tar.xz'));
const loader = ['/usr/lib/x86_64-linux-gnu/libvulkan.so.1', '/lib/x86_64-linux-gnu/libvulkan.so.1'].find((p) => existsSync(p));
const files = ['node.xz', 'modules.tar.xz', 'dist.tar.xz'];
if (loader) {
  mkdirSync(join(out, 'vulkan'), { recursive: true });
  copyFileSync(realpathSync(loader), join(out, 'vulkan', 'libvulkan.so.1'));
  files.push('vulkan/libvulkan.so.1');
} else console.log('gpu-pack: no Vulkan loader here (apt-get install libvulkan1); WebGPU on the GPU machine needs its own');
let total = 0;
for (const f of files) {
  const n = statSync(join(out, f)).size;
  total += n;
  console.log(`gpu-pack: .device/${f} ${(n / 2 ** 20).toFixed(1)} MiB`);
}
console.log(`gpu-pack: ${(total / 2 ** 20).toFixed(1)} MiB in all (the carry limit is 64 MiB)`);
if (total > 60 * 2 ** 20) process.exit(1);
