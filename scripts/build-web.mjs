// Bundles mote for the browser (`mote-lora/web`): src/web/index.ts → dist/web/mote.js, one
// minified ES module with the WGSL of kernels/wgsl embedded (generated here from the files,
// as the virtual module `mote:wgsl-sources`). Node built-ins reached by modules the entry
// re-exports only in part (file I/O next to in-memory code) become shims in scripts/web-shims:
// node:path a POSIX join for messages, the others throw when called.
// Run by `npm run build`, `npm test` and `prepare`; `node scripts/build-web.mjs` alone prints
// the bundle's size.
import { build } from 'esbuild';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(fileURLToPath(import.meta.url), '..', '..');
const kernelDir = join(root, 'kernels', 'wgsl');
export const WEB_BUNDLE = join(root, 'dist', 'web', 'mote.js');

/** Every kernels/wgsl/**\/*.wgsl, by path relative to kernels/wgsl with '/' separators. */
function wgslFiles(dir = kernelDir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...wgslFiles(p));
    else if (e.name.endsWith('.wgsl')) out.push(p);
  }
  return out.sort();
}

const wgslPlugin = {
  name: 'mote-wgsl',
  setup(b) {
    b.onResolve({ filter: /^mote:wgsl-sources$/ }, (a) => ({ path: a.path, namespace: 'mote-wgsl' }));
    b.onLoad({ filter: /.*/, namespace: 'mote-wgsl' }, () => {
      const files = wgslFiles();
      const sources = Object.fromEntries(files.map((f) => [relative(kernelDir, f).split(sep).join('/'), readFileSync(f, 'utf8')]));
      return { contents: `export default ${JSON.stringify(sources)};`, loader: 'js', watchFiles: files };
    });
  },
};

const shimDir = join(root, 'scripts', 'web-shims');
/** Also used by test/browser.test.ts for its test page, whose fixtures import node:fs for writing files. */
export const nodeShimPlugin = {
  name: 'mote-node-shims',
  setup(b) {
    b.onResolve({ filter: /^node:/ }, (a) => ({
      path: join(shimDir, a.path === 'node:path' ? 'path.cjs' : 'node_unavailable.cjs'),
    }));
  },
};

/** Builds the bundle; returns its path and sizes in bytes. */
export async function buildWeb({ outfile = WEB_BUNDLE, quiet = false } = {}) {
  const r = await build({
    entryPoints: [join(root, 'src', 'web', 'index.ts')],
    outfile,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    minify: true,
    keepNames: true, // error classes keep their names (MoteError sets name from new.target.name)
    sourcemap: false, // a map would name node_modules sources the package does not ship
    legalComments: 'none',
    metafile: true,
    logLevel: quiet ? 'error' : 'warning',
    plugins: [wgslPlugin, nodeShimPlugin],
  });
  const bytes = statSync(outfile).size;
  const gzip = gzipSync(readFileSync(outfile), { level: 9 }).length;
  // which Node built-ins the bundle reaches (all shimmed), for the report
  const builtins = new Set();
  for (const i of Object.values(r.metafile.inputs)) for (const im of i.imports) if (im.original?.startsWith('node:')) builtins.add(im.original);
  return { outfile, bytes, gzip, builtins: [...builtins].sort() };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { outfile, bytes, gzip, builtins } = await buildWeb();
  console.log(`mote: ${relative(root, outfile)}: ${(bytes / 1024).toFixed(0)} KiB minified, ${(gzip / 1024).toFixed(0)} KiB gzipped; shimmed: ${builtins.join(' ') || 'none'}`);
}
