// The test page of browser.test.ts, bundled by it with esbuild: `mote` is the browser bundle
// itself (dist/web/mote.js, imported from the page's server at run time, not bundled in),
// the cases come from ../kernel_cases.ts. window.moteRun() runs everything and returns a
// JSON-able report; the page also shows it as a table for the screenshot. In Node (node
// --test loads every file under dist/test) the module only defines functions.
import type * as Mote from '../../src/web/index.js';
import { badInputFailures, runKernelCases, type CaseResult } from '../kernel_cases.js';
import { runModelCase, type ModelReport } from '../model_cases.js';
import { makeTinyModel } from '../fixtures/tiny_model.js';
import { relErr } from '../numeric.js';
import type { HostTensor } from '../../src/io/safetensors.js';

/** Where the server serves the browser bundle. */
const BUNDLE_URL = '/mote.js';
let mote: typeof Mote;

export interface PageReport {
  adapter: Mote.BackendInfo;
  results: CaseResult[];
  badInput: string[];
  /** openBackend('cpu') and ('cuda'): the class and message each threw */
  unavailable: string[];
  /** a GPUDevice the page owns, handed to openBackend: the matmul's error, and whether the device survived destroy() */
  ownDevice: { error: number; aliveAfterDestroy: boolean };
  /** modelFromTensors, generate and a tokenizer from JSON (model_cases.ts) */
  model: ModelReport;
  /** small adapters: split tensors and chunked dispatches vs the plain backend; a destroyed device's next op */
  limits: { error: number; parts: number; lost: string };
  /** what was still allocated after the cases */
  leaked: { buffers: number; bytes: number };
}

function show(report: PageReport): void {
  const rows = report.results.map(
    (r) =>
      `<tr class="${r.failure ? 'fail' : 'ok'}"><td>${r.failure ? '✗' : '✓'}</td><td>${r.name}</td><td>${r.error.toExponential(2)}</td><td>${r.ms.toFixed(0)} ms</td></tr>`,
  );
  document.body.innerHTML =
    `<h1>mote in the browser</h1><p>adapter: ${report.adapter.device} — features: ${report.adapter.features.join(', ')}</p>` +
    `<table><tr><th></th><th>case</th><th>rel. error</th><th>time</th></tr>${rows.join('')}</table>` +
    `<p>model: logits rel. error ${report.model.logitsError.toExponential(2)}, generated ${JSON.stringify(report.model.tokens)}, tokenizer round trip ${JSON.stringify(report.model.decoded)}` +
    `${report.model.failures.length ? ' — ' + report.model.failures.join('; ') : ''}</p>` +
    `<p>bad input: ${report.badInput.length === 0 ? 'every call threw its MoteError' : report.badInput.join('; ')}</p>` +
    `<p>${report.unavailable.join('<br>')}</p>`;
}

async function moteRun(): Promise<PageReport | { noAdapter: string }> {
  document.body.textContent = 'running…';
  mote ??= (await import(BUNDLE_URL)) as typeof Mote;
  let b: Mote.Backend;
  try {
    b = await mote.openBackend('webgpu');
  } catch (e) {
    if (!(e instanceof mote.BackendUnavailableError)) throw e;
    document.body.textContent = e.message;
    return { noAdapter: e.message };
  }
  let report: PageReport;
  try {
    const results = await runKernelCases(mote, b);
    const badInput = [...(await badInputFailures(mote, b)), ...(await badOpenFailures())];
    const model = await runModelCase(mote, b);
    const leaked = b.memoryInUse();
    const unavailable: string[] = [];
    for (const kind of ['cpu', 'cuda'] as const) {
      try {
        (await mote.openBackend(kind)).destroy();
        unavailable.push(`${kind}: opened`);
      } catch (e) {
        unavailable.push(`${kind}: ${(e as Error).constructor.name}: ${(e as Error).message}`);
      }
    }
    report = { adapter: b.info(), results, badInput, model, unavailable, ownDevice: await ownDevice(), limits: await limits(b), leaked };
  } finally {
    b.destroy();
  }
  show(report);
  return report;
}

/** The browser's openBackend rejects a bad kind, device or options object with an ArgumentError naming it. */
async function badOpenFailures(): Promise<string[]> {
  const fails: string[] = [];
  const calls: [string, () => Promise<unknown>, RegExp][] = [
    ['kind', () => mote.openBackend('tpu' as never), /^openBackend: kind: expected 'cpu', 'webgpu', 'cuda' or 'auto', got/],
    ['device', () => mote.openBackend('webgpu', { device: 42 as never }), /^openBackend: device: expected a GPUDevice, got/],
    ['options', () => mote.openBackend('webgpu', 'fast' as never), /^openBackend: opts: expected an options object/],
  ];
  for (const [what, call, re] of calls) {
    try {
      ((await call()) as Mote.Backend).destroy();
      fails.push(`openBackend ${what}: no error`);
    } catch (e) {
      if (!(e instanceof mote.ArgumentError) || !re.test(e.message))
        fails.push(`openBackend ${what}: ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    }
  }
  return fails;
}

/** openBackend('webgpu', { device }) on a device the page made: mote runs on it and leaves it alive. */
async function ownDevice(): Promise<PageReport['ownDevice']> {
  const adapter = await navigator.gpu.requestAdapter();
  const device = await adapter!.requestDevice();
  let lost = false;
  void device.lost.then(() => {
    lost = true;
  });
  const b = await mote.openBackend('webgpu', { device });
  const x = Float32Array.from({ length: 3 * 5 }, (_, i) => Math.sin(i + 1)),
    w = Float32Array.from({ length: 7 * 5 }, (_, i) => Math.cos(i));
  const y = await mote.matmul(b.tensor(x, [3, 5]), b.tensor(w, [7, 5])).readFloat();
  const ref = mote.reference.matmulRef(x, w, 3, 5, 7);
  let num = 0,
    den = 0;
  ref.forEach((v, i) => {
    num += (y[i]! - v) ** 2;
    den += v * v;
  });
  b.destroy();
  // a buffer made after destroy() works only if the device is still alive
  device.createBuffer({ size: 4, usage: GPUBufferUsage.STORAGE }).destroy();
  await device.queue.onSubmittedWorkDone();
  const alive = !lost;
  device.destroy();
  return { error: Math.sqrt(num / den), aliveAfterDestroy: alive };
}

/**
 * Small adapters (DESIGN §3): a tiny model under a 4 KiB binding limit (embedding, lm_head,
 * logits and the MLP weights split by rows) and a 4,096 multiply-add dispatch budget gives the
 * logits of the same model on the plain backend; destroying a device the page owns makes the
 * next op a DeviceLostError.
 */
async function limits(b: Mote.Backend): Promise<PageReport['limits']> {
  const tiny = makeTinyModel({
    family: 'llama',
    hidden: 32,
    intermediate: 40,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    vocab: 300,
    tied: false,
    dtype: 'f32',
    seed: 6,
  });
  const host = new Map<string, HostTensor>([...tiny.tensors].map(([n, t]) => [n, t as HostTensor]));
  const prompt = [1, 5, 17, 30, 7, 250, 299, 3, 8, 100];
  let error = Infinity,
    parts = 0;
  const small = await mote.openBackend('webgpu', { maxBindingBytes: 4096, maxDispatchWork: 4096 });
  try {
    const a = mote.modelFromTensors(tiny.cfg, host, { backend: b }),
      s = mote.modelFromTensors(tiny.cfg, host, { backend: small });
    try {
      error = relErr(await s.logits(prompt), await a.logits(prompt));
      parts = (s.weights.embedTokens.storage as { parts?: unknown[] }).parts?.length ?? 1;
    } finally {
      a.dispose();
      s.dispose();
    }
  } finally {
    small.destroy();
  }
  const device = await (await navigator.gpu.requestAdapter())!.requestDevice();
  const lb = await mote.openBackend('webgpu', { device });
  let lost = 'no error';
  try {
    const x = lb.tensor([1, 2, 3, 4], [2, 2]);
    device.destroy();
    await device.lost;
    mote.matmul(x, x, { out: lb.empty([2, 2]) });
  } catch (e) {
    lost = `${(e as Error).constructor.name}: ${(e as Error).message}`;
  } finally {
    lb.destroy();
  }
  return { error, parts, lost };
}

if (typeof document !== 'undefined') {
  (globalThis as { moteRun?: typeof moteRun }).moteRun = moteRun;
  document.body.textContent = 'ready';
}
