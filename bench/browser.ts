// Browser vs Node (`npm run bench -- --suite browser`): bench/web.ts's kernel, training and
// decode figures in headless Chromium (the browser bundle on the page's WebGPU adapter —
// SwiftShader without a GPU) and in Node (webgpu on Dawn, and cpu), on the same machine, plus
// the browser bundle's size. The page and the bundled model are served on 127.0.0.1.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Backend } from '../src/backend/backend.js';
import { openBackend } from '../src/backend/select.js';
import { DEFAULT_MODEL_DIR } from '../src/mote/default_model_dir.js';
import * as api from '../src/index.js';
import { runWebBench, type WebBenchOptions, type WebBenchResult } from './web.js';

export interface BrowserBenchResult {
  options: WebBenchOptions;
  bundle: { bytes: number; gzip: number };
  runs: { where: string; result?: WebBenchResult; error?: string }[];
}

function serve(files: Record<string, [type: string, body: string | Buffer]>): Promise<Server> {
  const server = createServer((req, res) => {
    const f = files[new URL(req.url ?? '/', 'http://x').pathname];
    if (!f) {
      res.writeHead(req.url === '/favicon.ico' ? 204 : 404).end();
      return;
    }
    res.writeHead(200, { 'content-type': f[0], 'cache-control': 'no-store' }).end(f[1]);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function inChromium(
  root: string,
  o: WebBenchOptions,
  log: (l: string) => void,
): Promise<{ result: WebBenchResult; bundle: { bytes: number; gzip: number } }> {
  const chromium = process.env.MOTE_CHROMIUM ?? '/usr/bin/chromium';
  if (!existsSync(chromium)) throw new Error(`no Chromium at ${chromium} (apt install chromium, or set MOTE_CHROMIUM)`);
  const { buildWeb } = (await import(pathToFileURL(join(root, 'scripts', 'build-web.mjs')).href)) as {
    buildWeb(o: { quiet?: boolean }): Promise<{ outfile: string; bytes: number; gzip: number }>;
  };
  const { build } = await import('esbuild');
  const web = await buildWeb({ quiet: true });
  const page = await build({
    entryPoints: [join(root, 'bench', 'web.ts')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    write: false,
    logLevel: 'error',
  });
  const files: Record<string, [string, string | Buffer]> = {
    '/': [
      'text/html; charset=utf-8',
      '<!doctype html><meta charset="utf-8"><script type="module">import * as m from "/mote.js"; import { runWebBench } from "/web.js"; globalThis.bench = async (o) => runWebBench(m, await m.openBackend("webgpu"), new URL("/model/", location.href), o);</script>',
    ],
    '/mote.js': ['text/javascript; charset=utf-8', readFileSync(web.outfile, 'utf8')],
    '/web.js': ['text/javascript; charset=utf-8', page.outputFiles[0]!.text],
  };
  for (const f of readdirSync(DEFAULT_MODEL_DIR))
    files[`/model/${f}`] = [
      f.endsWith('.json') ? 'application/json' : 'application/octet-stream',
      readFileSync(join(DEFAULT_MODEL_DIR, f)),
    ];
  const server = await serve(files);
  const { chromium: pw } = await import('playwright-core');
  const browser = await pw.launch({ executablePath: chromium, headless: true, args: ['--enable-unsafe-webgpu'] });
  try {
    const p = await browser.newPage();
    const errors: string[] = [];
    p.on('pageerror', (e) => errors.push(e.message));
    await p.goto(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
    await p.waitForFunction(() => 'bench' in globalThis, undefined, { timeout: 30_000 });
    log('browser: running in Chromium…');
    const result = (await p.evaluate(
      (o) => (globalThis as unknown as { bench(o: unknown): Promise<unknown> }).bench(o),
      o as unknown as Record<string, number>,
    )) as WebBenchResult;
    if (errors.length) throw new Error(errors.join('; '));
    return { result, bundle: { bytes: web.bytes, gzip: web.gzip } };
  } finally {
    await browser.close();
    server.close();
  }
}

export async function runBrowserBench(root: string, o: WebBenchOptions, log: (l: string) => void): Promise<BrowserBenchResult> {
  const runs: BrowserBenchResult['runs'] = [];
  let bundle = { bytes: NaN, gzip: NaN };
  try {
    const c = await inChromium(root, o, log);
    bundle = c.bundle;
    runs.push({ where: 'Chromium (browser bundle)', result: c.result });
  } catch (e) {
    runs.push({ where: 'Chromium (browser bundle)', error: (e as Error).message });
  }
  for (const kind of ['webgpu', 'cpu'] as const) {
    let b: Backend | undefined;
    try {
      log(`browser: running in Node on ${kind}…`);
      b = await openBackend(kind);
      runs.push({ where: `Node (${kind})`, result: await runWebBench(api, b, DEFAULT_MODEL_DIR, o) });
    } catch (e) {
      runs.push({ where: `Node (${kind})`, error: (e as Error).message });
    } finally {
      b?.destroy();
    }
  }
  return { options: o, bundle, runs };
}

export function browserMarkdown(r: BrowserBenchResult): string {
  const ok = r.runs.filter((x) => x.result);
  const md = [
    `## Browser vs Node: the same code (bench/web.ts) in Chromium and in Node`,
    '',
    `| | ${r.runs.map((x) => `${x.where}${x.result ? ` — ${x.result.device.slice(0, 48)}` : ''}`).join(' | ')} |`,
    `| --- | ${r.runs.map(() => '---').join(' | ')} |`,
  ];
  const names = ok[0]?.result!.kernels.map((k) => k.name) ?? [];
  for (const n of names)
    md.push(
      `| ${n}, ms | ${r.runs.map((x) => (x.result ? (x.result.kernels.find((k) => k.name === n)?.ms.toFixed(3) ?? 'n/a') : `error: ${x.error}`)).join(' | ')} |`,
    );
  md.push(`| MoTE training, tokens/s | ${r.runs.map((x) => (x.result ? x.result.train.tokensPerS.toFixed(0) : '')).join(' | ')} |`);
  md.push(`| MoTE training, ms/step | ${r.runs.map((x) => (x.result ? x.result.train.msPerStep.toFixed(0) : '')).join(' | ')} |`);
  md.push(
    `| decode (${r.options.decodeRequests} × ${r.options.decodeTokens} new tokens), tokens/s | ${r.runs.map((x) => (x.result ? x.result.decode.tokensPerS.toFixed(0) : '')).join(' | ')} |`,
  );
  md.push('');
  md.push(`Browser bundle: ${(r.bundle.bytes / 1024).toFixed(0)} KiB minified, ${(r.bundle.gzip / 1024).toFixed(0)} KiB gzipped.`);
  return md.join('\n');
}
