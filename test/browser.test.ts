// mote in a real browser: builds the browser bundle (scripts/build-web.mjs) and a test page
// (test/browser/page.ts, with the shared cases of kernel_cases.ts), serves them on
// 127.0.0.1, and drives the system Chromium headless through playwright-core. The page
// runs every kernel family against the float64 references on WebGPU (SwiftShader where
// there is no GPU), checks bad input and the absent cpu/cuda backends, and runs on a
// GPUDevice of its own. A missing Chromium (or adapter) is one skipped test, a failure when
// MOTE_REQUIRE_BACKENDS names `browser`. MOTE_CHROMIUM overrides /usr/bin/chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build, type Plugin } from 'esbuild';
import type { PageReport } from './browser/page.js';
import { KERNEL_CASE_NAMES } from './kernel_cases.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CHROMIUM = process.env.MOTE_CHROMIUM ?? '/usr/bin/chromium';
const REQUIRED = (process.env.MOTE_REQUIRE_BACKENDS ?? '')
  .split(',')
  .map((s) => s.trim())
  .includes('browser');
/** The flag that gives headless Chromium on Linux a WebGPU adapter (SwiftShader without a GPU); the origin must be secure (127.0.0.1 is). */
const CHROMIUM_ARGS = ['--enable-unsafe-webgpu'];
const PAGE_TIMEOUT_MS = 150_000;

/** The browser bundle and the test page's script. */
async function buildPage(): Promise<{ bundle: string; page: string; sizes: { bytes: number; gzip: number } }> {
  const { buildWeb, nodeShimPlugin } = (await import(pathToFileURL(join(ROOT, 'scripts', 'build-web.mjs')).href)) as {
    buildWeb(o: { quiet?: boolean }): Promise<{ outfile: string; bytes: number; gzip: number }>;
    nodeShimPlugin: Plugin;
  };
  const web = await buildWeb({ quiet: true });
  const page = await build({
    entryPoints: [join(ROOT, 'test', 'browser', 'page.ts')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    write: false,
    logLevel: 'error',
    plugins: [nodeShimPlugin],
  });
  return { bundle: readFileSync(web.outfile, 'utf8'), page: page.outputFiles[0]!.text, sizes: { bytes: web.bytes, gzip: web.gzip } };
}

const HTML = `<!doctype html><meta charset="utf-8"><title>mote</title>
<style>body{font:14px system-ui,sans-serif;margin:16px}td,th{padding:2px 8px;text-align:left}.fail{color:#b00}.ok{color:#060}</style>
<body>loading…</body><script type="module" src="/page.js"></script>`;

const DEMO_TIMEOUT_MS = 600_000;

function serve(files: Record<string, [type: string, body: string | Buffer]>): Promise<Server> {
  const server = createServer((req, res) => {
    const f = files[new URL(req.url ?? '/', 'http://x').pathname];
    if (req.url === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    if (!f) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': f[0], 'cache-control': 'no-store' }).end(f[1]);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

let skipReason: string | undefined;
let playwright: typeof import('playwright-core') | undefined;
if (!existsSync(CHROMIUM)) skipReason = `no Chromium at ${CHROMIUM} (apt install chromium, or set MOTE_CHROMIUM)`;
else {
  try {
    playwright = await import('playwright-core');
  } catch (e) {
    skipReason = `playwright-core could not be loaded: ${(e as Error).message}`;
  }
}

if (skipReason !== undefined && !REQUIRED) {
  test('browser tests', (t) => {
    t.skip(`browser unavailable: ${skipReason}`);
  });
} else {
  test(
    'mote in headless Chromium: every kernel family against the float64 references',
    { timeout: PAGE_TIMEOUT_MS + 60_000 },
    async (t) => {
      if (skipReason !== undefined) assert.fail(`required backend browser is unavailable: ${skipReason}`);
      const { bundle, page: pageJs, sizes } = await buildPage();
      t.diagnostic(`bundle: ${(sizes.bytes / 1024).toFixed(0)} KiB minified, ${(sizes.gzip / 1024).toFixed(0)} KiB gzipped`);
      const js = 'text/javascript; charset=utf-8';
      const html = 'text/html; charset=utf-8';
      const server = await serve({
        '/': [html, HTML],
        '/mote.js': [js, bundle],
        '/page.js': [js, pageJs],
        // examples/browser as users see it, importing ../../dist/web/mote.js
        '/examples/browser/': [html, readFileSync(join(ROOT, 'examples', 'browser', 'index.html'), 'utf8')],
        '/dist/web/mote.js': [js, bundle],
      });
      const browser = await playwright!.chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
      try {
        const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
        const pageErrors: string[] = [];
        page.on('pageerror', (e) => pageErrors.push(e.stack ?? e.message));
        page.on('console', (m) => {
          if (m.type() === 'error') pageErrors.push(m.text());
        });
        await page.goto(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
        await page.waitForFunction(() => 'moteRun' in globalThis, undefined, { timeout: 30_000 });
        let timer: NodeJS.Timeout | undefined;
        const report = await Promise.race([
          page.evaluate(() => (globalThis as unknown as { moteRun(): Promise<PageReport | { noAdapter: string }> }).moteRun()),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error(`the page did not finish within ${PAGE_TIMEOUT_MS / 1000} s`)), PAGE_TIMEOUT_MS);
          }),
        ]).finally(() => clearTimeout(timer));
        mkdirSync(join(ROOT, 'test-artifacts'), { recursive: true });
        await page.screenshot({ path: join(ROOT, 'test-artifacts', 'browser.png'), fullPage: true });
        if ('noAdapter' in report) {
          if (REQUIRED) assert.fail(`required backend browser has no WebGPU adapter: ${report.noAdapter}`);
          t.skip(`no WebGPU adapter in Chromium: ${report.noAdapter}`);
          return;
        }
        t.diagnostic(`adapter: ${report.adapter.device}; features: ${report.adapter.features.join(' ')}`);
        assert.deepEqual(
          report.results.map((r) => r.name),
          KERNEL_CASE_NAMES,
          'the page ran every case',
        );
        for (const r of report.results) {
          await t.test(`[browser] ${r.name}`, () => assert.equal(r.failure, '', `${r.name}: ${r.failure}`));
        }
        await t.test('[browser] in-memory model: modelFromTensors logits, greedy generate, tokenizer from JSON', () =>
          assert.deepEqual(report.model.failures, []),
        );
        await t.test('[browser] bad input (ops, openBackend) throws the named MoteError', () => assert.deepEqual(report.badInput, []));
        await t.test('[browser] cpu and cuda are absent with BackendUnavailableError', () => {
          assert.equal(report.unavailable.length, 2);
          for (const line of report.unavailable)
            assert.match(line, /^(cpu|cuda): BackendUnavailableError: backend '(cpu|cuda)' is unavailable: .*Node addon/);
        });
        await t.test('[browser] a GPUDevice the page owns: mote runs on it and leaves it alive', () => {
          assert.ok(report.ownDevice.error <= 1e-5, `matmul relative error ${report.ownDevice.error}`);
          assert.ok(report.ownDevice.aliveAfterDestroy, 'destroy() destroyed a device mote does not own');
        });
        await t.test('[browser] no tensors left behind, no page errors', () => {
          assert.deepEqual(report.leaked, { buffers: 0, bytes: 0 });
          assert.deepEqual(pageErrors, []);
        });
        await t.test('[browser] examples/browser runs and matches the reference', async () => {
          const example = await browser.newPage();
          try {
            await example.goto(`http://127.0.0.1:${(server.address() as AddressInfo).port}/examples/browser/`);
            await example.waitForFunction(() => /relative error|Error/.test(document.getElementById('out')?.textContent ?? ''), undefined, {
              timeout: 60_000,
            });
            const text = (await example.textContent('#out')) ?? '';
            const m = /relative error against the float64 reference: (\S+)/.exec(text);
            assert.ok(m && Number(m[1]) <= 1e-5, text);
          } finally {
            await example.close();
          }
        });
      } finally {
        await browser.close();
        server.close();
      }
    },
  );

  test(
    'the example page end to end in Chromium: the bundled model over HTTP, MoTE training, labelled chains, toy metrics, kernel timings',
    { timeout: DEMO_TIMEOUT_MS + 60_000 },
    async (t) => {
      if (skipReason !== undefined) assert.fail(`required backend browser is unavailable: ${skipReason}`);
      const { bundle } = await buildPage();
      const js = 'text/javascript; charset=utf-8';
      const files: Record<string, [string, string | Buffer]> = {
        '/examples/browser/demo.html': ['text/html; charset=utf-8', readFileSync(join(ROOT, 'examples', 'browser', 'demo.html'), 'utf8')],
        '/dist/web/mote.js': [js, bundle],
      };
      for (const f of readdirSync(join(ROOT, 'assets', 'default-model'))) {
        files[`/assets/default-model/${f}`] = [
          f.endsWith('.json') ? 'application/json' : 'application/octet-stream',
          readFileSync(join(ROOT, 'assets', 'default-model', f)),
        ];
      }
      const server = await serve(files as Record<string, [string, string]>);
      const browser = await playwright!.chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
      try {
        const page = await browser.newPage({ viewport: { width: 1000, height: 1400 } });
        const pageErrors: string[] = [];
        page.on('pageerror', (e) => pageErrors.push(e.stack ?? e.message));
        const port = (server.address() as AddressInfo).port;
        // Few steps, questions and tokens: SwiftShader runs WGSL on the CPU.
        await page.goto(`http://127.0.0.1:${port}/examples/browser/demo.html?steps=6&questions=16&tokens=24&batch=96`);
        await page.waitForFunction(() => document.body.dataset.done !== undefined, undefined, { timeout: DEMO_TIMEOUT_MS });
        mkdirSync(join(ROOT, 'test-artifacts'), { recursive: true });
        await page.screenshot({ path: join(ROOT, 'test-artifacts', 'demo.png'), fullPage: true });
        const status = (await page.textContent('#status')) ?? '';
        assert.equal(await page.evaluate(() => document.body.dataset.done), '1', `${status} ${pageErrors.join('\n')}`);
        const result = (await page.evaluate(() => (globalThis as unknown as { demoResult: unknown }).demoResult)) as {
          table: string;
          bench: { name: string; ms: number }[];
          shown: number;
          seconds: number;
          base: { n: number };
          mote: { n: number };
        };
        t.diagnostic(`demo in Chromium: ${result.seconds.toFixed(0)} s; ${status}`);
        const chains = (await page.textContent('#chains')) ?? '';
        assert.ok(result.shown > 0 && /\[question\]/.test(chains), chains);
        // Six steps are too few to learn the tags: each output is labelled with its steps, or as outside any step.
        assert.match(
          chains,
          /\[((analysis|guidance|answer) · experts (analysis|guidance|answer) \+ shared|outside any step · shared expert)\] \S/,
          'labelled output',
        );
        assert.match(result.table, /MoTE \(6 steps\)/);
        assert.match((await page.textContent('#metrics')) ?? '', /refusal on risky/);
        assert.ok(result.base.n > 0 && result.mote.n === result.base.n);
        assert.ok(result.bench.length === 4 && result.bench.every((r) => r.ms > 0), JSON.stringify(result.bench));
        assert.deepEqual(pageErrors, []);
      } finally {
        await browser.close();
        server.close();
      }
    },
  );
}
