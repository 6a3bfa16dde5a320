// One I/O abstraction (src/io/source.ts): the same model, MoTE bundle, PEFT adapters and
// tokenizer loaded from a folder path, from a URL on a local node:http server (with and
// without Range support: requests and bytes counted), from Blobs and from bytes give
// bit-identical logits and token ids; a 404, a truncated body, a stalled server and a
// tokenizer that is not JSON are clear FormatErrors, never hangs; the loaders' module graph
// imports no Node built-in (so a browser bundle of them pulls none).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { builtinModules } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';
import { FormatError } from '../src/errors.js';
import type { Backend } from '../src/backend/backend.js';
import { loadModel } from '../src/model/load.js';
import type { LlamaModel } from '../src/model/llama.js';
import { createMote } from '../src/mote/bundle.js';
import { loadMote, saveMote } from '../src/mote/bundle_io.js';
import { loadPeftAdapters } from '../src/adapters/adapter_set.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { BlobSource, BytesSource, UrlSource, openSource, type FileSource } from '../src/io/source.js';
import { SafetensorsFile, SafetensorsReader } from '../src/io/safetensors.js';
import { DEFAULT_MODEL_DIR } from '../src/mote/default_model_dir.js';
import { writeTinyModel, writeTinyPeftAdapter } from './fixtures/tiny_model.js';
import { writeTinyTokenizer } from './fixtures/tiny_tokenizer.js';
import { backendFor, closeBackends } from './helpers.js';
import { bitsEqual } from './case_helpers.js';

after(closeBackends);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-io-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------
// A static file server on 127.0.0.1 with knobs for the failures under test.

interface ServeOptions {
  /** Honour Range requests (206) or answer every GET whole (200). */
  ranges: boolean;
  /** Paths whose body is cut off after half its bytes (Content-Length still says the whole). */
  truncate?: (p: string) => boolean;
  /** Paths for which the server sends headers and a few bytes, then nothing. */
  stall?: (p: string) => boolean;
}

interface Served {
  url: string;
  requests: { path: string; range: string | null; status: number; bytes: number }[];
  close(): Promise<void>;
}

async function serve(root: string, o: ServeOptions): Promise<Served> {
  const requests: Served['requests'] = [];
  const sockets = new Set<import('node:net').Socket>();
  const server = http.createServer((req, res) => {
    const rel = decodeURIComponent(new URL(req.url!, 'http://x').pathname).replace(/^\/+/, '');
    const file = path.join(root, rel);
    const range = req.headers.range ?? null;
    const log = (status: number, bytes: number) => requests.push({ path: rel, range, status, bytes });
    if (!file.startsWith(root) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404).end('not found');
      log(404, 0);
      return;
    }
    const data = fs.readFileSync(file);
    let body = data;
    let status = 200;
    const headers: Record<string, string | number> = { 'content-type': 'application/octet-stream' };
    const m = o.ranges && range ? /^bytes=(\d+)-(\d+)$/.exec(range) : null;
    if (m) {
      const s = Number(m[1]),
        e = Math.min(Number(m[2]), data.length - 1);
      if (s >= data.length) {
        res.writeHead(416, { 'content-range': `bytes */${data.length}` }).end();
        log(416, 0);
        return;
      }
      body = data.subarray(s, e + 1);
      status = 206;
      headers['content-range'] = `bytes ${s}-${e}/${data.length}`;
    }
    headers['content-length'] = body.length;
    res.writeHead(status, headers);
    if (o.stall?.(rel)) {
      res.write(body.subarray(0, Math.min(4, body.length)));
      log(status, Math.min(4, body.length));
      return; // never ends: the client must time out
    }
    if (o.truncate?.(rel)) {
      const half = body.subarray(0, Math.floor(body.length / 2));
      res.write(half, () => res.socket?.destroy());
      log(status, half.length);
      return;
    }
    res.end(body);
    log(status, body.length);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

// ---------------------------------------------------------------------------------------
// Fixtures: a tiny model folder with a tokenizer, a saved MoTE bundle and a PEFT adapter.

const MODEL = path.join(tmp, 'site', 'model');
const BUNDLE = path.join(tmp, 'site', 'bundle');
const ADAPTER = path.join(tmp, 'site', 'adapter');
let backend: Backend;
const TOKENS = [3, 17, 5, 40, 22, 9, 31, 2];
const STEP_IDS = [-1, -1, 0, 0, 1, 2, 2, -1];

before(async () => {
  const b = await backendFor('cpu');
  if (typeof b === 'string') throw new Error(b);
  backend = b;
  const m = writeTinyModel(MODEL, {
    family: 'llama',
    hidden: 32,
    intermediate: 40,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    vocab: 48,
    tied: false,
    dtype: 'bf16',
    seed: 4,
  });
  writeTinyTokenizer(MODEL);
  writeTinyPeftAdapter(ADAPTER, m.cfg, { r: 3, alpha: 6, seed: 6 });
  const model = await loadModel(MODEL, { backend });
  const bundle = createMote(model, { rank: 3, loraAlpha: 6, alpha: 0.7 }, { seed: 2, init: 'random' });
  await saveMote(bundle, BUNDLE);
  bundle.dispose();
  model.dispose();
});

/** Every file of a folder, by relative path. */
function filesOf(dir: string, prefix = ''): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const e of fs.readdirSync(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) for (const [k, v] of filesOf(dir, rel)) out.set(k, v);
    else out.set(rel, fs.readFileSync(path.join(dir, rel)));
  }
  return out;
}

/** Base logits, MoTE logits, PEFT-adapter logits and tokenizer ids of one set of sources. */
async function outputs(model: FileSource | string, bundle: FileSource | string, adapter: FileSource | string): Promise<Float32Array[]> {
  const m: LlamaModel = await loadModel(model, { backend });
  try {
    const base = await m.logits(TOKENS);
    const mote = await loadMote(bundle, m);
    const r = mote.routing(STEP_IDS, { seed: 1 });
    const withMote = await m.logits(TOKENS, { lora: mote.loraFor(r) });
    r.dispose();
    mote.dispose();
    const set = await loadPeftAdapters(m, [adapter]);
    const pr = set.routing(new Array(TOKENS.length).fill(0));
    const withPeft = await m.logits(TOKENS, { lora: set.loraFor(pr) });
    pr.dispose();
    set.dispose();
    const tok = typeof model === 'string' ? loadTokenizer(model) : await loadTokenizer(model);
    const ids = Float32Array.from(tok.encode('hello <|analysis|> world'));
    return [base, withMote, withPeft, ids];
  } finally {
    m.dispose();
  }
}

function assertSame(what: string, got: Float32Array[], want: Float32Array[]): void {
  const names = ['base logits', 'MoTE logits', 'PEFT logits', 'token ids'];
  got.forEach((g, i) => assert.ok(bitsEqual(g, want[i]!), `${what}: ${names[i]} differ from the path's`));
}

test('path, URL (Range and whole), Blobs and bytes give bit-identical logits and token ids', async () => {
  const want = await outputs(MODEL, BUNDLE, ADAPTER);
  for (const ranges of [true, false]) {
    const s = await serve(path.join(tmp, 'site'), { ranges });
    try {
      const srcs = ['model', 'bundle', 'adapter'].map((d) => new UrlSource(`${s.url}/${d}`)) as [UrlSource, UrlSource, UrlSource];
      assertSame(`URL (${ranges ? 'Range' : 'no Range'})`, await outputs(...srcs), want);
      process.stdout.write(
        `# URL ${ranges ? 'with' : 'without'} Range: model + bundle + adapter + tokenizer in ${s.requests.length} requests, ${s.requests.reduce((n, r) => n + r.bytes, 0)} bytes\n`,
      );
      const st = s.requests.filter((r) => r.path === 'model/model.safetensors');
      const size = fs.statSync(path.join(MODEL, 'model.safetensors')).size;
      const sent = st.reduce((n, r) => n + r.bytes, 0);
      if (ranges) {
        assert.ok(st.length >= 1 && st.every((r) => r.status === 206), `ranged reads: ${JSON.stringify(st.map((r) => r.status))}`);
        // Every byte is fetched once (a tiny file fits in the first request's 64 KiB).
        assert.ok(sent <= size, `Range: ${sent} bytes sent for a ${size}-byte file`);
      } else {
        assert.equal(st.length, 1, 'without Range support the file is fetched once, whole');
        assert.equal(st[0]!.status, 200);
        assert.equal(sent, size);
      }
      // The loaders also take the URL itself (a string or a URL object).
      const m = await loadModel(new URL(`${s.url}/model`), { backend });
      assert.ok(bitsEqual(await m.logits(TOKENS), want[0]!));
      m.dispose();
      const m2 = await loadModel(`${s.url}/model/`, { backend });
      m2.dispose();
      // A cross-origin server that does not expose Content-Range: the files are read whole.
      const hidden = new UrlSource(`${s.url}/model`, {
        fetch: async (u, init) => {
          const r = await fetch(u, init);
          const h = new Headers(r.headers);
          h.delete('content-range');
          return new Response(r.body, { status: r.status, headers: h });
        },
      });
      const m3 = await loadModel(hidden, { backend });
      assert.ok(bitsEqual(await m3.logits(TOKENS), want[0]!), 'no readable Content-Range');
      m3.dispose();
    } finally {
      await s.close();
    }
  }
  const blobs = (dir: string) => new BlobSource(new Map([...filesOf(dir)].map(([k, v]) => [k, new Blob([new Uint8Array(v)])])));
  assertSame('Blobs', await outputs(blobs(MODEL), blobs(BUNDLE), blobs(ADAPTER)), want);
  // A list of Files as <input webkitdirectory> gives them: paths prefixed by the chosen folder.
  const files = [...filesOf(MODEL)].map(([k, v]) =>
    Object.defineProperty(new File([new Uint8Array(v)], path.basename(k)), 'webkitRelativePath', { value: `picked/${k}` }),
  );
  const fromFiles = await loadModel(files, { backend });
  assert.ok(bitsEqual(await fromFiles.logits(TOKENS), want[0]!), 'a webkitdirectory File list');
  fromFiles.dispose();
  const bytes = (dir: string) => new BytesSource(new Map([...filesOf(dir)].map(([k, v]) => [k, new Uint8Array(v)])));
  assertSame('bytes', await outputs(bytes(MODEL), bytes(BUNDLE), bytes(ADAPTER)), want);
  // openSource's choices.
  assert.ok(openSource(new Map([['a', new Uint8Array(1)]])) instanceof BytesSource);
  assert.ok(openSource(new Map([['a', new Blob(['x'])]])) instanceof BlobSource);
  assert.ok(openSource('https://example.invalid/m') instanceof UrlSource);
});

test('a sharded model (index + shards) loads the same from a path, a URL and bytes; a missing shard is named', async () => {
  const { saveModel } = await import('../src/model/save.js');
  const m = await loadModel(MODEL, { backend });
  const sharded = path.join(tmp, 'site', 'sharded');
  try {
    await saveModel(m, sharded, { maxShardBytes: 8000 });
  } finally {
    m.dispose();
  }
  const shards = fs.readdirSync(sharded).filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f));
  assert.ok(shards.length >= 3 && fs.existsSync(path.join(sharded, 'model.safetensors.index.json')), fs.readdirSync(sharded).join(', '));
  const logitsOf = async (src: FileSource | string) => {
    const x = await loadModel(src, { backend });
    try {
      return await x.logits(TOKENS);
    } finally {
      x.dispose();
    }
  };
  const want = await logitsOf(sharded);
  const s = await serve(path.join(tmp, 'site'), { ranges: true });
  try {
    assert.ok(bitsEqual(await logitsOf(new UrlSource(`${s.url}/sharded`)), want), 'sharded over URL');
    for (const sh of shards)
      assert.ok(
        s.requests.some((r) => r.path === `sharded/${sh}` && r.status === 206),
        `${sh} read by Range`,
      );
    const files = filesOf(sharded);
    assert.ok(
      bitsEqual(await logitsOf(new BytesSource(new Map([...files].map(([k, v]) => [k, new Uint8Array(v)])))), want),
      'sharded from bytes',
    );
    files.delete(shards[1]!);
    await assert.rejects(
      loadModel(new BytesSource(new Map([...files].map(([k, v]) => [k, new Uint8Array(v)]))), { backend }),
      (e: Error) =>
        e instanceof FormatError && e.message.startsWith(`<bytes>/model.safetensors.index.json: shard '${shards[1]}' not found in <bytes>`),
    );
  } finally {
    await s.close();
  }
});

test('Range requests read a safetensors file lazily: header first, then only the tensors asked for', async () => {
  const s = await serve(path.dirname(DEFAULT_MODEL_DIR), { ranges: true });
  try {
    const src = new UrlSource(`${s.url}/${path.basename(DEFAULT_MODEL_DIR)}`);
    const f = await SafetensorsFile.open(src, 'model.safetensors');
    const local = SafetensorsReader.open(path.join(DEFAULT_MODEL_DIR, 'model.safetensors'));
    try {
      assert.deepEqual(f.names(), local.names());
      const name = 'model.norm.weight';
      const t = await f.read(name);
      assert.deepEqual(Array.from(t.data), Array.from(local.read(name).data));
      const big = f
        .names()
        .map((n) => ({ n, e: f.entry(n)! }))
        .sort((a, b) => b.e.byteLength - a.e.byteLength)[0]!;
      assert.deepEqual(Array.from((await f.read(big.n)).data), Array.from(local.read(big.n).data));
    } finally {
      local.close();
    }
    const size = fs.statSync(path.join(DEFAULT_MODEL_DIR, 'model.safetensors')).size;
    const sent = s.requests.reduce((n, r) => n + r.bytes, 0);
    assert.ok(
      s.requests.every((r) => r.status === 206),
      JSON.stringify(s.requests),
    );
    assert.ok(sent < size / 2, `${sent} of ${size} bytes fetched`);
    process.stdout.write(
      `# Range: header + 2 tensors of the default model: ${s.requests.length} requests, ${sent} of ${size} bytes (${src.stats.requests} requests, ${src.stats.bytes} bytes counted by the client)\n`,
    );
  } finally {
    await s.close();
  }
  // The whole default model over HTTP, with and without Range: the same logits as from its folder.
  const local = await loadModel(DEFAULT_MODEL_DIR, { backend });
  const want = await local.logits(TOKENS);
  local.dispose();
  for (const ranges of [true, false]) {
    const s2 = await serve(path.dirname(DEFAULT_MODEL_DIR), { ranges });
    try {
      const m = await loadModel(`${s2.url}/${path.basename(DEFAULT_MODEL_DIR)}`, { backend });
      assert.ok(bitsEqual(await m.logits(TOKENS), want), `default model over URL (${ranges ? 'Range' : 'whole'})`);
      m.dispose();
      const w = s2.requests.filter((r) => r.path.endsWith('model.safetensors'));
      process.stdout.write(
        `# default model over URL ${ranges ? 'with Range' : 'without Range'}: ${s2.requests.length} requests in all, ` +
          `${w.length} for model.safetensors (${w.reduce((n, r) => n + r.bytes, 0)} bytes; statuses ${[...new Set(w.map((r) => r.status))].join(', ')})\n`,
      );
      if (!ranges) assert.equal(w.length, 1);
    } finally {
      await s2.close();
    }
  }
});

test('a 404, a truncated body, a stalled server and a tokenizer that is not JSON are clear FormatErrors, not hangs', async () => {
  const site = path.join(tmp, 'site');
  const bad = path.join(site, 'badtok');
  fs.mkdirSync(bad, { recursive: true });
  fs.writeFileSync(path.join(bad, 'tokenizer.json'), '<html>this is not JSON</html>');
  for (const ranges of [true, false]) {
    const s = await serve(site, {
      ranges,
      truncate: (p) => p === 'model/model.safetensors' || p === 'model/config.json',
      stall: (p) => p === 'bundle/mote.json',
    });
    try {
      await assert.rejects(
        loadModel(`${s.url}/nothing-here`, { backend }),
        (e: Error) => e instanceof FormatError && e.message.includes(`${s.url}/nothing-here/config.json: not found (HTTP 404)`),
        '404',
      );
      await assert.rejects(
        loadModel(new UrlSource(`${s.url}/model`), { backend }),
        (e: Error) => e instanceof FormatError && e.message.startsWith(`${s.url}/model/config.json`) && /truncated/.test(e.message),
        'truncated config',
      );
      // The config whole, the weights cut short.
      const mixed = new UrlSource(`${s.url}/model`, {
        fetch: (u, init) => fetch(String(u).endsWith('/config.json') ? String(u).replace('/model/', '/model-ok/') : u, init),
      });
      fs.cpSync(MODEL, path.join(site, 'model-ok'), { recursive: true });
      await assert.rejects(
        loadModel(mixed, { backend }),
        (e: Error) => e instanceof FormatError && e.message.startsWith(`${s.url}/model/model.safetensors`) && /truncated/.test(e.message),
        'truncated weights',
      );
      const m = await loadModel(MODEL, { backend });
      try {
        const t0 = Date.now();
        await assert.rejects(
          loadMote(new UrlSource(`${s.url}/bundle`, { timeoutMs: 300 }), m),
          (e: Error) => e instanceof FormatError && e.message.startsWith(`${s.url}/bundle/mote.json`) && /stalled/.test(e.message),
          'stall',
        );
        assert.ok(Date.now() - t0 < 5000, `the stall was detected after ${Date.now() - t0} ms`);
      } finally {
        m.dispose();
      }
      await assert.rejects(
        loadTokenizer(new URL(`${s.url}/badtok`)),
        (e: Error) => e instanceof FormatError && e.message.startsWith(`${s.url}/badtok/tokenizer.json: malformed JSON`),
        'not JSON',
      );
      await assert.rejects(
        loadTokenizer(new URL(`${s.url}/nothing-here`)),
        (e: Error) => e instanceof FormatError && e.message.startsWith(`${s.url}/nothing-here/tokenizer.json: not found`),
        'no tokenizer',
      );
    } finally {
      await s.close();
    }
  }
  // A server that accepts the connection and never answers.
  const silent = http.createServer(() => {});
  const held = new Set<import('node:net').Socket>();
  silent.on('connection', (c) => {
    held.add(c);
  });
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  try {
    const url = `http://127.0.0.1:${(silent.address() as AddressInfo).port}/m`;
    const t0 = Date.now();
    await assert.rejects(
      loadModel(new UrlSource(url, { timeoutMs: 300 }), { backend }),
      (e: Error) =>
        e instanceof FormatError &&
        e.message === `${url}/config.json: no answer within 300 ms (an HF model directory needs config.json; the server stalled)`,
    );
    assert.ok(Date.now() - t0 < 5000);
  } finally {
    for (const c of held) c.destroy();
    await new Promise<void>((r) => silent.close(() => r()));
  }
  // Bytes and Blobs: the same checks as files on disk.
  await assert.rejects(
    loadTokenizer(new BytesSource({ 'tokenizer.json': '{"model": ' })),
    (e: Error) => e instanceof FormatError && /<bytes>\/tokenizer.json: malformed JSON/.test(e.message),
  );
  const st = fs.readFileSync(path.join(MODEL, 'model.safetensors'));
  await assert.rejects(
    loadModel(
      new BytesSource({
        'config.json': fs.readFileSync(path.join(MODEL, 'config.json')),
        'model.safetensors': st.subarray(0, st.length - 10),
      }),
      { backend },
    ),
    (e: Error) => e instanceof FormatError && /^<bytes>\/model.safetensors: /.test(e.message),
  );
  await assert.rejects(
    loadModel(new BlobSource({ 'config.json': new Blob(['{}']) }), { backend }),
    (e: Error) => e instanceof FormatError && /^<blobs>\/config.json: /.test(e.message),
  );
});

test("the loaders' and savers' module graph imports no Node built-in (a browser bundle of them pulls none)", () => {
  const dist = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
  const roots = [
    'model/load.js',
    'model/save.js',
    'mote/bundle_io.js',
    'adapters/adapter_set.js',
    'io/tokenizer.js',
    'train/checkpoint.js',
    'io/source.js',
    'io/sink.js',
  ].map((f) => path.join(dist, 'src', f));
  const builtins = new Set(builtinModules);
  const seen = new Set<string>();
  const found: string[] = [];
  const walk = (f: string) => {
    if (seen.has(f)) return;
    seen.add(f);
    const text = fs.readFileSync(f, 'utf8');
    for (const m of text.matchAll(
      /^\s*(?:import|export)\s[^;]*?from\s+['"]([^'"]+)['"]|^\s*import\s+['"]([^'"]+)['"]|\bimport\(\s*['"]([^'"]+)['"]\s*\)/gms,
    )) {
      const spec = (m[1] ?? m[2] ?? m[3])!;
      if (spec.startsWith('.')) walk(path.resolve(path.dirname(f), spec));
      else if (spec.startsWith('node:') || builtins.has(spec.split('/')[0]!)) found.push(`${path.relative(dist, f)} imports ${spec}`);
    }
  };
  for (const r of roots) walk(r);
  assert.ok(seen.size > 20, `walked ${seen.size} modules`);
  assert.deepEqual(found, []);
});

test('bad sources are ArgumentErrors naming the argument', async () => {
  const { ArgumentError } = await import('../src/errors.js');
  const arg = (re: RegExp) => (e: Error) => e instanceof ArgumentError && re.test(e.message);
  await assert.rejects(loadModel(42 as never, { backend }), arg(/^loadModel: dir: expected a folder path, a URL/));
  await assert.rejects(loadModel(['x'] as never, { backend }), arg(/^loadModel: dir: BlobSource: files\[0\]/));
  await assert.rejects(
    loadModel(new Map([['../config.json', new Uint8Array(1)]]), { backend }),
    arg(/^loadModel: dir: BytesSource: expected a relative file path inside the folder/),
  );
  const m = await loadModel(MODEL, { backend });
  try {
    await assert.rejects(loadPeftAdapters(m, [ADAPTER, {} as never]), arg(/^loadPeftAdapters: dirs\[1\]: expected a folder path, a URL/));
    await assert.rejects(loadMote(null as never, m), arg(/^loadMote: dir: expected a bundle folder/));
  } finally {
    m.dispose();
  }
  assert.throws(() => new UrlSource('not a url'), arg(/^UrlSource: base: expected an absolute URL/));
  assert.throws(() => new UrlSource('http://127.0.0.1:1/', { timeoutMs: 0 }), arg(/timeoutMs/));
  const b = new BytesSource({ 'a.bin': new Uint8Array(4) });
  await assert.rejects(b.read('a.bin', -1, 2), arg(/offset/));
  await assert.rejects(
    b.read('a.bin', 2, 4),
    (e: Error) => e instanceof FormatError && /<bytes>\/a.bin: a file: file ends at byte 4, expected 2 more bytes/.test(e.message),
  );
  await assert.rejects(b.size('b.bin'), (e: Error) => e instanceof FormatError && /<bytes>\/b.bin: not found/.test(e.message));
  await assert.rejects(
    b.text('a.bin', 'a note', 2),
    (e: Error) => e instanceof FormatError && /4 bytes, more than the 2 bytes a a note may have/.test(e.message),
  );
  assert.throws(() => b.sub('..'), arg(/sub: expected a relative file path/));
});
