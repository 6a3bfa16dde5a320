// WebGPU on adapters with real browsers' limits (DESIGN §3):
// - tensors past the storage binding limit are split by rows (SplitStorage): a tiny model
//   whose embedding, lm_head and logits pass a lowered limit (maxBindingBytes) gives the
//   logits, loss, expert gradients and base gradients (tied embeddings) of the unsplit model;
// - the big launches are chunked under a work budget: a lowered budget gives bit-identical
//   logits in more dispatches;
// - a lost device is a DeviceLostError at the next op, read, write or sync (never a hang);
// - every entry point of kernels/wgsl binds at most 8 storage buffers (WebGPU's default
//   maxStorageBuffersPerShaderStage). Runs on lavapipe.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openBackend } from '../src/backend/select.js';
import { SplitStorage, WebGPUBackend, type WebGPUOptions } from '../src/backend/webgpu.js';
import { ArgumentError, DeviceLostError, MoteError } from '../src/errors.js';
import { matmul } from '../src/ops/matmul.js';
import { adamw, sumSquares } from '../src/ops/adamw.js';
import { llamaLossAndGrad, baseWeights } from '../src/model/llama_backward.js';
import { createMote } from '../src/mote/bundle.js';
import type { Backend } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import type { LlamaModel } from '../src/model/llama.js';
import type { LinearModule } from '../src/model/config.js';
import { specialise } from '../src/backend/wgsl.js';
import { readWgslFile } from '../src/backend/wgsl_node.js';
import { makeTinyModel, type TinyModelOptions } from './fixtures/tiny_model.js';
import { loadTiny } from './fixtures/train_fixture.js';
import { bitsEqual } from './case_helpers.js';
import { REQUIRED, closeBackends, forEachBackend, relErr } from './helpers.js';

after(closeBackends);

/** The lowered binding limit: the embedding (601 rows of 128 bytes in f32) takes 5 parts, 12 rows of logits 2. */
const LIMIT = 16384;
const TOL = 1e-5;

const MODEL: TinyModelOptions = {
  family: 'llama',
  hidden: 32,
  intermediate: 40,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  vocab: 601,
  tied: false,
  dtype: 'f32',
  seed: 3,
};

/** A second webgpu backend with options, or null (skipped) where webgpu is absent. */
async function webgpuWith(opts: WebGPUOptions): Promise<WebGPUBackend> {
  return (await openBackend('webgpu', opts)) as WebGPUBackend;
}

const partsOf = (t: { storage: unknown }): number => (t.storage instanceof SplitStorage ? t.storage.parts.length : 1);

function close(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = TOL): void {
  const e = relErr(got, want);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(2)} > ${tol}`);
}

/** Loss and every expert gradient of one MoTE training batch. */
async function trainStep(model: LlamaModel, seed: number): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
  const bundle = createMote(model, { rank: 4, loraAlpha: 8 }, { seed, init: 'random' });
  const stepIds = [-1, -1, -1, 0, 0, 1, 1, 2, 2, 2, -1, 0];
  const seq = stepIds.map((_, t) => (t < 10 ? 0 : 1));
  const T = stepIds.length;
  const V = model.config.vocabSize;
  const ids = Array.from({ length: T }, (_, t) => (t * 131 + 5) % V);
  const targets = Array.from({ length: T }, (_, t) => (t * 97 + 400) % V);
  const lossMask = stepIds.map((s) => (s >= 0 ? 1 : 0));
  const routing = bundle.routing(stepIds, { seq });
  try {
    const r = await llamaLossAndGrad(model, { ids, seq, targets, lossMask, lora: bundle.loraFor(routing) });
    const grads = new Map<string, Float32Array>();
    for (let l = 0; l < model.config.numLayers; l++)
      for (const [m, s] of Object.entries(bundle.stacks[l]!)) {
        if (!s) continue;
        const g = r.grads.lora.get(s)!;
        grads.set(`${l}.${m as LinearModule}.A`, await g.dA.readFloat());
        grads.set(`${l}.${m as LinearModule}.B`, await g.dB.readFloat());
        g.dA.dispose();
        g.dB.dispose();
      }
    return { loss: r.lossSum / r.count, grads };
  } finally {
    routing.dispose();
    bundle.dispose();
  }
}

forEachBackend(
  'tensors past the binding limit are split by rows: logits, loss and expert gradients equal the unsplit model',
  async (whole) => {
    const small = await webgpuWith({ maxBindingBytes: LIMIT });
    try {
      assert.equal(small.info().details.maxBindingBytes, LIMIT);
      for (const o of [MODEL, { ...MODEL, dtype: 'bf16' as const, hidden: 36, heads: 2, kvHeads: 1, seed: 4 }]) {
        const tm = makeTinyModel(o);
        const a = loadTiny(whole, tm),
          b = loadTiny(small, tm);
        try {
          assert.equal(partsOf(a.weights.embedTokens), 1);
          assert.ok(partsOf(b.weights.embedTokens) >= 3, `embedding in ${partsOf(b.weights.embedTokens)} parts`);
          assert.ok(partsOf(b.weights.lmHead) >= 3, 'lm_head split');
          const ids = Array.from({ length: 12 }, (_, t) => (t * 53 + 7) % o.vocab);
          const t = b.forward({ ids });
          assert.equal(partsOf(t), 2, 'the logits are split by rows of tokens');
          const got = await t.readFloat();
          t.dispose();
          close(`${o.dtype} logits`, got, await a.logits(ids));
          const rows = [11, 0, 5];
          close(`${o.dtype} logitRows`, await b.logits(ids, { logitRows: rows }), await a.logits(ids, { logitRows: rows }));
          if (o.dtype !== 'f32') continue;
          const ra = await trainStep(a, 2),
            rb = await trainStep(b, 2);
          assert.ok(Math.abs(ra.loss - rb.loss) <= TOL * Math.abs(ra.loss), `loss ${rb.loss} vs ${ra.loss}`);
          assert.ok(ra.grads.size > 0);
          for (const [k, g] of ra.grads) close(`expert gradient ${k}`, rb.grads.get(k)!, g);
        } finally {
          a.dispose();
          b.dispose();
        }
      }
      assert.equal(small.memoryInUse().buffers, 0, 'every part freed');
    } finally {
      small.destroy();
    }
  },
  { kinds: ['webgpu'] },
);

forEachBackend(
  'split tied embeddings: base gradients (embedding gather grad + lm_head) equal the unsplit model',
  async (whole) => {
    const small = await webgpuWith({ maxBindingBytes: LIMIT });
    try {
      const tm = makeTinyModel({ ...MODEL, tied: true, seed: 8 });
      const a = loadTiny(whole, tm),
        b = loadTiny(small, tm);
      try {
        assert.equal(b.weights.lmHead, b.weights.embedTokens);
        const T = 12;
        const ids = Array.from({ length: T }, (_, t) => (t * 211 + 3) % MODEL.vocab);
        const targets = Array.from({ length: T }, (_, t) => (t * 37 + 550) % MODEL.vocab);
        const lossMask = ids.map((_, t) => (t % 5 === 4 ? 0 : 1));
        const ra = await llamaLossAndGrad(a, { ids, targets, lossMask }, { trainBase: true });
        const rb = await llamaLossAndGrad(b, { ids, targets, lossMask }, { trainBase: true });
        assert.ok(Math.abs(ra.lossSum - rb.lossSum) <= TOL * Math.abs(ra.lossSum));
        const wa = baseWeights(a),
          wb = baseWeights(b);
        const dE = rb.grads.weights.get(wb.get('model.embed_tokens.weight')!)!;
        assert.ok(partsOf(dE) >= 3, 'the embedding gradient is split too');
        for (const [name, t] of wa)
          close(name, await rb.grads.weights.get(wb.get(name)!)!.readFloat(), await ra.grads.weights.get(t)!.readFloat());
        for (const g of [...ra.grads.weights.values(), ...rb.grads.weights.values()]) g.dispose();
      } finally {
        a.dispose();
        b.dispose();
      }
    } finally {
      small.destroy();
    }
  },
  { kinds: ['webgpu'] },
);

forEachBackend(
  'split tensors: reads, writes, adamw and sumSquares per part; a kernel that takes tensors whole refuses them by name',
  async (whole) => {
    const small = await webgpuWith({ maxBindingBytes: 1024 });
    try {
      const big = small.tensor(new Float32Array(600).fill(1), [300, 2]);
      assert.equal(partsOf(big), 3);
      assert.deepEqual(await big.readFloat(), new Float32Array(600).fill(1), 'split reads and writes');
      const { add } = await import('../src/ops/residual.js');
      assert.throws(() => add(big, big), /split in 3 parts; only embedding, matmul and the xent family/);
      assert.throws(() => small.tensor(new Float32Array(600), [1, 600]), /rows of 2400 bytes cannot be split/);
      // the optimizer of full-parameter training on a split lm_head: bit-identical steps
      const r = (k: number) => Float32Array.from({ length: 600 }, (_, i) => Math.sin(i * k + 1));
      const run = async (be: Backend) => {
        const [p, g, m, v] = [1, 2, 3, 4].map((k) => be.tensor(k === 4 ? r(k).map(Math.abs) : r(k), [300, 2]));
        adamw(p!, g!, m!, v!, { lr: 1e-2, step: 3, weightDecay: 0.1 });
        const ss = sumSquares(g!);
        const out = [await p!.readFloat(), await m!.readFloat(), await v!.readFloat(), await ss.readFloat()];
        for (const t of [p, g, m, v, ss]) t!.dispose();
        return out;
      };
      const [a, b] = [await run(whole), await run(small)];
      for (let i = 0; i < 3; i++) assert.ok(bitsEqual(b[i]!, a[i]!), `adamw output ${i} bit-identical`);
      close('sumSquares', b[3]!, a[3]!, 1e-6);
      for (const bad of [{ maxBindingBytes: 100 }, { maxBindingBytes: 1.5e4 + 0.5 }, { maxDispatchWork: 0 }])
        await assert.rejects(
          openBackend('webgpu', bad),
          (e: unknown) => e instanceof ArgumentError && /openBackend: max\w+: expected an integer/.test(String(e)),
        );
    } finally {
      small.destroy();
    }
  },
  { kinds: ['webgpu'] },
);

forEachBackend(
  'a lowered work budget chunks matmul and attention into more dispatches: bit-identical logits and gradients',
  async (whole) => {
    const chunked = await webgpuWith({ maxDispatchWork: 4096 });
    try {
      const tm = makeTinyModel(MODEL);
      const a = loadTiny(whole, tm),
        b = loadTiny(chunked, tm);
      try {
        const ids = Array.from({ length: 40 }, (_, t) => (t * 29 + 1) % MODEL.vocab);
        const count = (be: WebGPUBackend, f: () => void, family = ''): number => {
          let n = 0;
          const launch = be.launch;
          be.launch = (l) => {
            if (!family || l.family === family) n++;
            launch.call(be, l);
          };
          try {
            f();
          } finally {
            delete (be as unknown as Record<string, unknown>).launch;
          }
          return n;
        };
        let logits: Tensor | null = null;
        // attention rows of 3·40·8 multiply-adds: 4 of the 160 (query, head) rows per dispatch
        assert.equal(
          count(chunked, () => (logits = b.forward({ ids })), 'attention'),
          2 * 40,
        );
        assert.ok(bitsEqual(await logits!.readFloat(), await a.logits(ids)), 'logits bit-identical');
        logits!.dispose();
        const [ga, gb] = [await trainStep(a, 6), await trainStep(b, 6)];
        assert.equal(ga.loss, gb.loss);
        for (const [k, g] of ga.grads) assert.ok(bitsEqual(gb.grads.get(k)!, g), `expert gradient ${k} bit-identical`);
        // one lm_head-sized matmul: 40·601·32 multiply-adds; blocks of whole 32 × 32 tiles (the
        // smallest chunk): 2 × 19 dispatches
        const x = (be: Backend) =>
          be.tensor(
            Float32Array.from({ length: 40 * 32 }, (_, i) => Math.sin(i)),
            [40, 32],
          );
        const [xa, xb] = [x(whole), x(chunked)];
        let ya: ReturnType<typeof matmul> | null = null,
          yb: ReturnType<typeof matmul> | null = null;
        assert.equal(
          count(whole as WebGPUBackend, () => (ya = matmul(xa, a.weights.lmHead))),
          1,
        );
        assert.equal(
          count(chunked, () => (yb = matmul(xb, b.weights.lmHead))),
          38,
        );
        assert.ok(bitsEqual(await yb!.readFloat(), await ya!.readFloat()));
      } finally {
        a.dispose();
        b.dispose();
      }
    } finally {
      chunked.destroy();
    }
  },
  { kinds: ['webgpu'] },
);

test('a lost device: DeviceLostError at the next op, read, write and sync, naming the op; pending waits reject', async (t) => {
  const own = await openBackend('webgpu').catch((e) => e);
  if (!(own instanceof WebGPUBackend)) {
    if (REQUIRED.has('webgpu')) throw own;
    t.skip(`webgpu unavailable: ${(own as Error).message}`);
    return;
  }
  const b = (await openBackend('webgpu', { device: own.device })) as WebGPUBackend;
  try {
    const x = b.tensor(
      Float32Array.from({ length: 64 }, (_, i) => i),
      [8, 8],
    );
    const y = b.empty([8, 8]);
    assert.deepEqual(Array.from(await x.readFloat()).slice(0, 3), [0, 1, 2]);
    for (let i = 0; i < 4; i++) matmul(x, x); // work in flight
    const pending = b.sync();
    own.device.destroy();
    const timeout = <T>(p: Promise<T>): Promise<T | 'hung'> =>
      Promise.race([p, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 20_000))]);
    const settled = await timeout(
      pending.then(
        () => 'resolved',
        (e) => e,
      ),
    );
    assert.notEqual(settled, 'hung', 'a pending sync settles');
    assert.ok(settled === 'resolved' || settled instanceof DeviceLostError, `pending sync: ${String(settled)}`);
    await timeout(b.device.lost);
    assert.match(String(b.lost), /destroyed/);
    assert.ok(new DeviceLostError('webgpu', 'r', 'op') instanceof MoteError);
    assert.throws(
      () => matmul(x, x, { out: y }),
      (e: unknown) => e instanceof DeviceLostError && /before matmul\.wgsl main/.test(e.message) && /destroyed/.test(e.message),
    );
    assert.throws(
      () => matmul(x, x),
      (e: unknown) => e instanceof DeviceLostError && /allocating a tensor/.test(e.message),
    );
    await assert.rejects(timeout(x.readFloat()), (e: unknown) => e instanceof DeviceLostError && /tensor read/.test(e.message));
    await assert.rejects(
      timeout(b.sync()),
      (e: unknown) => e instanceof DeviceLostError && e.op === 'sync()' && e.reason.startsWith('destroyed'),
    );
    assert.throws(() => x.write(new Float32Array(64)), DeviceLostError);
    assert.throws(() => b.tensor([1], [1]), DeviceLostError);
    assert.match(String(b.info().details.lost), /destroyed/);
    x.dispose(); // freeing still works
  } finally {
    b.destroy();
    own.destroy();
  }
});

test('every entry point of kernels/wgsl binds at most 8 storage buffers', () => {
  const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'kernels', 'wgsl');
  const families = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.wgsl'))
    .map((f) => f.slice(0, -5));
  assert.ok(families.length >= 10);
  let entries = 0;
  for (const fam of families) {
    const src = specialise(readWgslFile, fam, {}).replace(/\/\/.*$/gm, '');
    const storage = new Map<string, number>(); // var name → binding
    for (const m of src.matchAll(/@binding\((\d+)\)\s*var<storage[^>]*>\s*(\w+)/g)) storage.set(m[2]!, Number(m[1]));
    // function bodies by brace matching
    const fns = new Map<string, string>();
    const entryNames: string[] = [];
    for (const m of src.matchAll(/(@compute[^f]*)?fn\s+(\w+)\s*\(/g)) {
      let i = src.indexOf('{', m.index! + m[0].length);
      const start = i;
      let depth = 0;
      for (; i < src.length; i++) {
        if (src[i] === '{') depth++;
        else if (src[i] === '}' && --depth === 0) break;
      }
      fns.set(m[2]!, src.slice(start, i + 1));
      if (m[1]) entryNames.push(m[2]!);
    }
    for (const e of entryNames) {
      const bindings = new Set<number>();
      const seen = new Set<string>();
      const visit = (name: string): void => {
        if (seen.has(name)) return;
        seen.add(name);
        const body = fns.get(name) ?? '';
        for (const id of body.match(/\b\w+\b/g) ?? []) {
          if (storage.has(id)) bindings.add(storage.get(id)!);
          const loaded = /^load_(\w+)$/.exec(id); // weight loaders read the binding they are named after
          if (loaded && storage.has(loaded[1]!)) bindings.add(storage.get(loaded[1]!)!);
          if (fns.has(id) && id !== name) visit(id);
        }
      };
      visit(e);
      assert.ok(bindings.size <= 8, `${fam}.wgsl ${e}: ${bindings.size} storage bindings (${[...bindings].join(', ')}) > 8`);
      entries++;
    }
  }
  assert.ok(entries >= 25, `${entries} entry points checked`);
});
