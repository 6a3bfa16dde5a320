// A seeded malformed-file probe: mutations of the bundled model's tokenizer.json,
// tokenizer_config.json and chat template (truncation, wrong types, huge ids, deep nesting,
// bad UTF-8, byte flips, hostile regexes and templates). Each variant is loaded (and used:
// encode, decode, applyChatTemplate) in a child process that runs them in turn; every one
// must end in a successful load or a MoteError naming the file, in < 2 s and < 100 MB RSS
// growth. A crash or hang of the child is counted against the variant it was running.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { MoteError } from '../src/errors.js';
import { mulberry32 as rng } from '../src/rng.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const MODEL = path.join(here, '..', '..', 'assets', 'default-model');
const VARIANTS = 120;
const SEED = 20240610;

type Files = Record<string, Buffer>;

/** Sets a field at a dotted path of a JSON object (creating nothing). */
function setAt(obj: Record<string, unknown>, keys: string[], v: unknown): void {
  let o = obj as Record<string, unknown>;
  for (const k of keys.slice(0, -1)) o = o[k] as Record<string, unknown>;
  o[keys.at(-1)!] = v;
}

/** The `i`-th variant: the files to write and the file (and field) the mutation touches. */
export function variant(i: number): { files: Files; file: string; field: string | null; what: string } {
  const r = rng(SEED + i * 7919);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const tokText = fs.readFileSync(path.join(MODEL, 'tokenizer.json'), 'utf8');
  const cfgText = fs.readFileSync(path.join(MODEL, 'tokenizer_config.json'), 'utf8');
  const tok = JSON.parse(tokText) as Record<string, unknown>;
  const cfg = JSON.parse(cfgText) as Record<string, unknown>;
  const files: Files = {};
  const json = (name: string, v: unknown) => (files[name] = Buffer.from(JSON.stringify(v)));
  const vocabKeys = Object.keys((tok.model as { vocab: object }).vocab);
  const kinds = ['truncate', 'flip', 'badutf8', 'wrongtype', 'hugeid', 'deep', 'regex', 'template', 'cfgtype', 'folder'] as const;
  const kind = kinds[i % kinds.length]!;
  let file = 'tokenizer.json';
  let field: string | null = null;
  const target = r() < 0.7 ? 'tokenizer.json' : 'tokenizer_config.json';
  const text = target === 'tokenizer.json' ? tokText : cfgText;
  files['tokenizer.json'] = Buffer.from(tokText);
  files['tokenizer_config.json'] = Buffer.from(cfgText);
  switch (kind) {
    case 'truncate':
      file = target;
      files[target] = Buffer.from(text).subarray(0, Math.floor(r() * text.length));
      break;
    case 'flip': {
      file = target;
      const b = Buffer.from(text);
      for (let k = 0; k < 1 + Math.floor(r() * 8); k++) b[Math.floor(r() * b.length)] = Math.floor(r() * 256);
      files[target] = b;
      break;
    }
    case 'badutf8': {
      file = target;
      const b = Buffer.from(text);
      const at = Math.floor(r() * b.length);
      files[target] = Buffer.concat([b.subarray(0, at), Buffer.from([0xc3, 0x28, 0xff]), b.subarray(at)]);
      break;
    }
    case 'wrongtype': {
      const bad = pick([null, 7, 'x', [], {}, true, -1, 1e300, [[[]]]]);
      const keys = pick([
        ['model'],
        ['model', 'vocab'],
        ['model', 'merges'],
        ['model', 'type'],
        ['added_tokens'],
        ['pre_tokenizer'],
        ['normalizer'],
        ['decoder'],
        ['post_processor'],
        ['model', 'unk_token'],
      ]);
      setAt(tok, keys, bad);
      json('tokenizer.json', tok);
      field = keys[0]!;
      break;
    }
    case 'hugeid': {
      const id = pick([2_000_000, 2 ** 31, 2 ** 53, -5, 1.5, 1e9]);
      if (r() < 0.5) {
        const k = pick(vocabKeys);
        (tok.model as { vocab: Record<string, unknown> }).vocab[k] = id;
        field = 'model.vocab';
      } else {
        (tok.added_tokens as unknown[]).push({
          id,
          content: '<huge>',
          special: true,
          single_word: false,
          lstrip: false,
          rstrip: false,
          normalized: false,
        });
        field = 'added_tokens';
      }
      json('tokenizer.json', tok);
      break;
    }
    case 'deep': {
      let v: unknown = 1;
      const depth = pick([100, 1000, 100_000]);
      if (depth > 1000) {
        files[target] = Buffer.from(`{"model": ${'['.repeat(depth)}${']'.repeat(depth)}}`);
        file = target;
        break;
      }
      for (let k = 0; k < depth; k++) v = [v];
      tok.normalizer = v;
      json('tokenizer.json', tok);
      break;
    }
    case 'regex': {
      const p = pick(['(a+)+$', '(a|a)*b', '(\\w+\\s?)*$', '((.)*)*x', '(?<=a)b', '\\1(a)', '[', '\\p{L}+|\\s+']);
      const where = pick(['pre', 'norm']);
      if (where === 'pre')
        tok.pre_tokenizer = {
          type: 'Sequence',
          pretokenizers: [
            { type: 'Split', pattern: { Regex: p }, behavior: 'Isolated', invert: false },
            tok.pre_tokenizer ?? { type: 'Whitespace' },
          ],
        };
      else tok.normalizer = { type: 'Replace', pattern: { Regex: p }, content: ' ' };
      json('tokenizer.json', tok);
      field = where === 'pre' ? 'pre_tokenizer' : 'normalizer';
      break;
    }
    case 'template': {
      const t = pick([
        '{% for i in range(1000000000) %}x{% endfor %}',
        '{% for i in range(60000) %}{% for j in range(60000) %}{{ j }}{% endfor %}{% endfor %}',
        '{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}',
        "{% set ns = namespace(s='x') %}{% for i in range(60000) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        '{% for %}',
        '{{ ' + '('.repeat(5000),
        '{{ messages[0].content.split("") }}',
      ]);
      if (r() < 0.5) {
        cfg.chat_template = t;
        json('tokenizer_config.json', cfg);
        file = 'tokenizer_config.json';
      } else {
        delete cfg.chat_template;
        json('tokenizer_config.json', cfg);
        files['chat_template.jinja'] = Buffer.from(t);
        file = 'chat_template.jinja';
      }
      break;
    }
    case 'cfgtype': {
      file = 'tokenizer_config.json';
      const k = pick(['bos_token', 'eos_token', 'chat_template', 'added_tokens_decoder', 'unk_token']);
      cfg[k] = pick([7, null, [], { content: 5 }, [{ name: 'default' }], 'x'.repeat(100)]);
      json('tokenizer_config.json', cfg);
      break;
    }
    case 'folder':
      file = pick(['tokenizer.json', 'tokenizer_config.json', 'chat_template.jinja']);
      files[file] = Buffer.alloc(0); // replaced by a folder when written
      break;
  }
  return { files, file, field, what: `${kind}${field ? ' ' + field : ''}` };
}

/** Child side: runs variants from `start`, printing one JSON line each. */
async function runChild(start: number, root: string): Promise<void> {
  for (let i = start; i < VARIANTS; i++) {
    const v = variant(i);
    const dir = path.join(root, `v${i}`);
    fs.mkdirSync(dir, { recursive: true });
    for (const [name, b] of Object.entries(v.files)) {
      if (v.what.startsWith('folder') && name === v.file) fs.mkdirSync(path.join(dir, name));
      else fs.writeFileSync(path.join(dir, name), b);
    }
    console.log(JSON.stringify({ i, started: true }));
    global.gc?.();
    const rss0 = process.memoryUsage().rss;
    const t0 = performance.now();
    let outcome = 'ok';
    let message = '';
    try {
      const tok = loadTokenizer(dir);
      const ids = tok.encode('hello world, Question: 12 + 30?\n\n  x');
      tok.decode(ids);
      if (tok.chatTemplate !== null) tok.applyChatTemplate([{ role: 'user', content: 'hi there' }], { addGenerationPrompt: true });
    } catch (e) {
      outcome = e instanceof MoteError ? 'mote' : 'other';
      message = `${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`.slice(0, 300);
    }
    const ms = performance.now() - t0;
    const mb = (process.memoryUsage().rss - rss0) / 2 ** 20;
    console.log(JSON.stringify({ i, outcome, message, ms, mb, file: v.file, field: v.field, what: v.what, dir }));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (process.env.MOTE_MALFORMED_CHILD) {
  await runChild(Number(process.env.MOTE_MALFORMED_CHILD), process.env.MOTE_MALFORMED_ROOT!);
} else {
  test(`malformed tokenizer files (${VARIANTS} seeded variants): MoteError naming the file or a load; < 2 s, < 100 MB; no crash or hang`, () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-malformed-tok-'));
    const results: {
      i: number;
      outcome: string;
      message: string;
      ms: number;
      mb: number;
      file: string;
      field: string | null;
      what: string;
      dir: string;
    }[] = [];
    let crashes = 0;
    let hangs = 0;
    try {
      let start = 0;
      while (start < VARIANTS) {
        const r = spawnSync(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url)], {
          env: { ...process.env, MOTE_MALFORMED_CHILD: String(start), MOTE_MALFORMED_ROOT: root },
          timeout: 60_000,
          encoding: 'utf8',
          maxBuffer: 64 << 20,
        });
        let last = start - 1;
        let running = -1;
        for (const line of r.stdout.split('\n')) {
          if (!line.startsWith('{')) continue;
          const j = JSON.parse(line);
          if (j.started) running = j.i;
          else {
            results.push(j);
            last = j.i;
          }
        }
        if (last >= VARIANTS - 1) break;
        // the child died or hung on variant `running`: count it and go on after it
        if (r.signal === 'SIGTERM' || r.error) hangs++;
        else crashes++;
        results.push({
          i: running,
          outcome: r.signal === 'SIGTERM' ? 'hang' : 'crash',
          message: (r.stderr ?? '').slice(-300),
          ms: NaN,
          mb: NaN,
          file: '',
          field: null,
          what: variant(Math.max(running, 0)).what,
          dir: '',
        });
        start = Math.max(running, last) + 1;
      }
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
    const errors = results.filter((r) => r.outcome === 'mote').length;
    const maxMs = Math.max(...results.map((r) => r.ms).filter(Number.isFinite));
    const maxMb = Math.max(...results.map((r) => r.mb).filter(Number.isFinite));
    console.log(
      `malformed tokenizer probe: ${results.length} variants, ${errors} MoteErrors, ${results.length - errors - crashes - hangs} loads, ${crashes} crashes, ${hangs} hangs, max ${maxMs.toFixed(0)} ms, max +${maxMb.toFixed(0)} MB RSS`,
    );
    assert.equal(results.length, VARIANTS);
    for (const r of results) {
      assert.ok(r.outcome === 'ok' || r.outcome === 'mote', `variant ${r.i} (${r.what}): ${r.outcome}: ${r.message}`);
      if (r.outcome === 'mote') {
        assert.ok(r.message.includes(path.join(r.dir, r.file)), `variant ${r.i} (${r.what}): the error names ${r.file}: ${r.message}`);
        if (r.field !== null && r.file === 'tokenizer.json' && !/malformed JSON|not UTF-8/.test(r.message)) {
          assert.ok(r.message.includes(r.field), `variant ${r.i} (${r.what}): the error names ${r.field}: ${r.message}`);
        }
      }
      assert.ok(r.ms < 2000, `variant ${r.i} (${r.what}): ${r.ms.toFixed(0)} ms`);
      assert.ok(r.mb < 100, `variant ${r.i} (${r.what}): +${r.mb.toFixed(0)} MB RSS`);
    }
  });
}
