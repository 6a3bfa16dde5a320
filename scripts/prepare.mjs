// `prepare`: npm runs it after `npm install`/`npm ci` in a checkout of mote and before `npm pack` /
// `npm publish` (not when a consumer installs the published tarball). It compiles the TypeScript
// (dist/), bundles the browser entry (dist/web) and links the `mote` command, and needs the devDependencies (typescript): run `npm ci`
// first, not `npm ci --omit=dev`.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { root } from './native-common.mjs';

let tsc;
try {
  tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
} catch {
  console.error(
    'mote: `prepare` compiles the TypeScript and needs the devDependencies (typescript).\n' +
      'mote: run `npm ci` (without --omit=dev) first, then `npm pack`.',
  );
  process.exit(1);
}
const r = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.json')], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status ?? 1);
// the browser bundle (dist/web/mote.js, `mote-lora/web`), esbuild from the devDependencies
const w = spawnSync(process.execPath, [join(root, 'scripts', 'build-web.mjs')], { cwd: root, stdio: 'inherit' });
if (w.status !== 0) process.exit(w.status ?? 1);
await import('./link-bin.mjs');
