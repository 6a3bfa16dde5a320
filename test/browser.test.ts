// mote in a real browser: builds the browser bundle (scripts/build-web.mjs) and a test page
// (test/browser/page.ts, with the shared cases of kernel_cases.ts), serves them on
// 127.0.0.1, and drives the system Chromium headless through playwright-core. The page
// runs every kernel family against the float64 references on WebGPU (SwiftShader where
// there is no GPU), checks bad input and the absent cpu/cuda backends, and runs on a
// GPUDevice of its own. A missing Chromium (or adapter) is one skipped test, a failure when
// MOTE_REQUIRE_BACKENDS names `browser`. MOTE_CHROMIUM overrides /usr/bin/chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
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
        await t.test(
          '[browser] small adapters: split tensors and chunked dispatches give the same logits; a lost device is a DeviceLostError',
          () => {
            assert.ok(report.limits.error <= 1e-5, `logits relative error ${report.limits.error}`);
            assert.equal(report.limits.parts, 10, 'the embedding in 10 parts');
            assert.match(report.limits.lost, /^DeviceLostError: webgpu: the device was lost \(destroyed.*\) before/);
          },
        );
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

  test(
    'the page and Node agree: MoTE logits of the bundled model, a training run, its saved bundle; bad URLs are clear errors',
    { timeout: DEMO_TIMEOUT_MS + 60_000 },
    async (t) => {
      if (skipReason !== undefined) assert.fail(`required backend browser is unavailable: ${skipReason}`);
      const { bundle } = await buildPage();
      const model = join(ROOT, 'assets', 'default-model');
      const files: Record<string, [string, string | Buffer]> = {
        '/': [
          'text/html; charset=utf-8',
          '<!doctype html><meta charset="utf-8"><script type="module">import * as m from "/dist/web/mote.js"; globalThis.mote = m;</script>',
        ],
        '/dist/web/mote.js': ['text/javascript; charset=utf-8', bundle],
      };
      const type = (f: string) => (f.endsWith('.json') ? 'application/json' : 'application/octet-stream');
      for (const f of readdirSync(model)) {
        const body = readFileSync(join(model, f));
        files[`/assets/default-model/${f}`] = [type(f), body];
        // the same folder with its weights cut in half, and one whose tokenizer is not JSON
        files[`/truncated/${f}`] = [type(f), f === 'model.safetensors' ? body.subarray(0, body.length >> 1) : body];
        files[`/badtok/${f}`] = [type(f), f === 'tokenizer.json' ? Buffer.from('this is not JSON') : body];
      }
      const server = await serve(files as Record<string, [string, string]>);
      const browser = await playwright!.chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
      const ids = [1, 17, 42, 99, 7, 300, 12, 5, 64];
      const steps = [-1, -1, -1, 0, 0, 1, 1, 2, 2];
      const trainOpts = { steps: 3, lr: 3e-3, warmupSteps: 1, batchTokens: 128, seed: 1, pSkip: 0.3 };
      try {
        const page = await browser.newPage();
        await page.goto(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
        await page.waitForFunction(() => 'mote' in globalThis, undefined, { timeout: 30_000 });
        const got = (await page.evaluate(
          async ({ ids, steps, trainOpts }) => {
            const m = (globalThis as unknown as { mote: typeof import('../src/web/index.js') }).mote;
            const backend = await m.openBackend('webgpu');
            const where = new URL('/assets/default-model/', location.href);
            const model = await m.loadModel(where, { backend });
            const tokenizer = (await m.loadTokenizer(where)) as import('../src/io/tokenizer.js').MoteTokenizer;
            await m.addStepTokens(model, tokenizer);
            const b = m.createMote(model, { rank: 4 }, { seed: 5, init: 'random' });
            const rt = b.routing(steps);
            const logits = Array.from(await model.logits(ids, { lora: b.loraFor(rt) }));
            rt.dispose();
            b.dispose();
            const chains = m.toyQuestions(12, 1).map((q) => m.toyChain(q, { check: false }));
            const tv = await m.trainVariant('mote', model, tokenizer, chains, { rank: 4, initSeed: 1, train: trainOpts });
            const sink = new m.MemorySink();
            await m.saveMote(tv.adapters as InstanceType<typeof m.MoteBundle>, sink);
            const tar = Array.from(sink.toTar());
            tv.adapters!.dispose();
            const errors: Record<string, string> = {};
            const fail = async (k: string, f: () => Promise<unknown>) => {
              try {
                await f();
                errors[k] = 'no error';
              } catch (e) {
                errors[k] = `${(e as Error).name}: ${(e as Error).message}`;
              }
            };
            await fail('notFound', () => m.loadModel(new URL('/nope/', location.href), { backend }));
            await fail('truncated', () => m.loadModel(new URL('/truncated/', location.href), { backend }));
            await fail('badTokenizer', () => m.loadTokenizer(new URL('/badtok/', location.href)) as Promise<unknown>);
            model.dispose();
            return { logits, losses: tv.losses, tar, errors };
          },
          { ids, steps, trainOpts },
        )) as { logits: number[]; losses: number[]; tar: number[]; errors: Record<string, string> };

        // The same on the Node cpu backend.
        const { openBackend } = await import('../src/backend/select.js');
        const { loadModel } = await import('../src/model/load.js');
        const { loadTokenizer } = await import('../src/io/tokenizer.js');
        const { addStepTokens, createMote } = await import('../src/mote/bundle.js');
        const { loadMote } = await import('../src/mote/bundle_io.js');
        const { toyQuestions, toyChain } = await import('../src/mote/toy.js');
        const { trainVariant } = await import('../src/mote/eval.js');
        const { relErr } = await import('./helpers.js');
        const cpu = await openBackend('cpu');
        try {
          const nodeModel = await loadModel(model, { backend: cpu });
          const tok = loadTokenizer(model);
          await addStepTokens(nodeModel, tok);
          const b = createMote(nodeModel, { rank: 4 }, { seed: 5, init: 'random' });
          const rt = b.routing(steps);
          const want = await nodeModel.logits(ids, { lora: b.loraFor(rt) });
          rt.dispose();
          b.dispose();
          const e = relErr(Float32Array.from(got.logits), want);
          t.diagnostic(`MoTE logits, page (webgpu) vs Node (cpu): relative error ${e.toExponential(2)}`);
          assert.ok(e < 1e-4, `logits differ: ${e}`);
          const chains = toyQuestions(12, 1).map((q) => toyChain(q, { check: false }));
          const tv = await trainVariant('mote', nodeModel, tok, chains, { rank: 4, initSeed: 1, train: trainOpts });
          t.diagnostic(
            `losses, page: ${got.losses.map((x) => x.toFixed(5)).join(' ')}; Node: ${tv.losses.map((x) => x.toFixed(5)).join(' ')}`,
          );
          assert.equal(got.losses.length, tv.losses.length);
          for (let i = 0; i < tv.losses.length; i++)
            assert.ok(Math.abs(got.losses[i]! - tv.losses[i]!) <= 1e-3 * Math.abs(tv.losses[i]!), `loss ${i}`);
          // The bundle the page saved (a tar from MemorySink), loaded in Node, gives Node's trained logits.
          const dir = mkdtempSync(join(tmpdir(), 'mote-page-bundle-'));
          try {
            writeFileSync(join(dir, 'bundle.tar'), Buffer.from(got.tar));
            const x = spawnSync('tar', ['-xf', 'bundle.tar'], { cwd: dir });
            assert.equal(x.status, 0, String(x.stderr));
            const fromPage = await loadMote(dir, nodeModel);
            const rt1 = fromPage.routing(steps),
              rt2 = (tv.adapters as typeof fromPage).routing(steps);
            const a = await nodeModel.logits(ids, { lora: fromPage.loraFor(rt1) });
            const c = await nodeModel.logits(ids, { lora: (tv.adapters as typeof fromPage).loraFor(rt2) });
            rt1.dispose();
            rt2.dispose();
            fromPage.dispose();
            const e2 = relErr(a, c);
            t.diagnostic(`logits of the page-trained bundle vs the Node-trained one (both on cpu): ${e2.toExponential(2)}`);
            assert.ok(e2 < 1e-3, `bundle logits differ: ${e2}`);
          } finally {
            rmSync(dir, { recursive: true, force: true });
          }
          tv.adapters?.dispose();
          nodeModel.dispose();
        } finally {
          cpu.dispose();
        }
        assert.match(got.errors.notFound!, /^FormatError: .*\/nope\/config\.json: not found \(HTTP 404\)/);
        assert.match(got.errors.truncated!, /^FormatError: .*truncated/);
        assert.match(got.errors.badTokenizer!, /^FormatError: .*tokenizer\.json.*JSON/);
      } finally {
        await browser.close();
        server.close();
      }
    },
  );
}
