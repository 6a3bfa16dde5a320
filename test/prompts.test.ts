// Prompt sources (src/io/prompts.ts): JSONL in every accepted form, HH-RLHF transcripts
// (multi-turn: the conversation up to the last Human turn, as chat messages), plain text
// lines, gzip; malformed lines are reported with their line numbers and the read goes on;
// an empty file or one with nothing usable is a FormatError naming the file.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { FormatError } from '../src/errors.js';
import { spawnSync } from 'node:child_process';
import { readChainsJsonl } from '../src/mote/chains.js';
import { hhPrompt, parseHHTranscript, parsePrompts, plainPrompt, promptMessages, readPrompts } from '../src/io/prompts.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mote-prompts-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
const write = (name: string, text: string | Buffer) => {
  const f = path.join(root, name);
  fs.writeFileSync(f, text);
  return f;
};

const HH_MULTI =
  '\n\nHuman: What can I cook with rice?\n\nAssistant: Fried rice is quick.\n\nHuman: How long do I boil it first?\n\nAssistant: About fifteen minutes.';

test('HH-RLHF transcripts: turns, the prompt up to the last Human turn, plain rendering', () => {
  assert.deepEqual(parseHHTranscript(HH_MULTI), [
    { role: 'user', content: 'What can I cook with rice?' },
    { role: 'assistant', content: 'Fried rice is quick.' },
    { role: 'user', content: 'How long do I boil it first?' },
    { role: 'assistant', content: 'About fifteen minutes.' },
  ]);
  const p = hhPrompt(HH_MULTI);
  assert.deepEqual(p, [
    { role: 'user', content: 'What can I cook with rice?' },
    { role: 'assistant', content: 'Fried rice is quick.' },
    { role: 'user', content: 'How long do I boil it first?' },
  ]);
  assert.equal(
    plainPrompt(p),
    'Human: What can I cook with rice?\n\nAssistant: Fried rice is quick.\n\nHuman: How long do I boil it first?',
  );
  // A prompt-only transcript with an empty Assistant cue; multi-line turns keep their inner newlines.
  assert.deepEqual(hhPrompt('\n\nHuman: line one\nline two\n\nAssistant:'), [{ role: 'user', content: 'line one\nline two' }]);
  assert.deepEqual(hhPrompt('Human: hi'), [{ role: 'user', content: 'hi' }]);
  assert.equal(plainPrompt([{ role: 'user', content: 'hi' }]), 'hi');

  assert.throws(() => parseHHTranscript('\n\nAssistant: hello'), /starts with an Assistant turn/);
  assert.throws(() => parseHHTranscript('\n\nHuman: a\n\nHuman: b'), /turn 2: two Human turns in a row/);
  assert.throws(() => parseHHTranscript('\n\nHuman: a\n\nAssistant:\n\nHuman: b'), /turn 2: empty Assistant turn/);
  assert.throws(() => parseHHTranscript('hello\n\nHuman: a'), /text before the first turn/);
  assert.throws(() => parseHHTranscript('no turns at all'), /no "Human:" turn/);
  assert.throws(() => promptMessages([{ role: 'assistant', content: 'x' }]), /no user message/);
});

test('JSONL: every accepted form, malformed lines reported by line number, the read goes on', () => {
  const lines = [
    JSON.stringify({ prompt: 'How do I open a stuck jar?' }), // 1
    JSON.stringify({ question: 'How do I oil a bike chain?' }), // 2
    JSON.stringify('How do I boil an egg?'), // 3
    '{"prompt": "unterminated', // 4 bad JSON
    '', // 5 blank: ignored
    JSON.stringify({ chosen: HH_MULTI, rejected: '\n\nHuman: x\n\nAssistant: y' }), // 6 HH pair
    JSON.stringify({ text: 'no usable field' }), // 7
    JSON.stringify({ prompt: '\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and now?\n\nAssistant:' }), // 8 HH in "prompt"
    JSON.stringify({
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Why?' },
        { role: 'assistant', content: 'Because.' },
      ],
    }), // 9
    JSON.stringify(42), // 10
    JSON.stringify({ prompt: '   ' }), // 11 empty
    JSON.stringify({ chosen: '\n\nAssistant: starts wrong' }), // 12 malformed HH
    JSON.stringify({ prompt: 'sneaky <|analysis|> tag' }), // 13 step tag
    JSON.stringify({ messages: [{ role: 'user' }] }), // 14
    JSON.stringify({ prompt: 7 }), // 15
  ];
  const file = write('prompts.jsonl', lines.join('\n') + '\n');
  const r = readPrompts(file);
  assert.equal(r.format, 'jsonl');
  assert.deepEqual(
    r.prompts.map((p) => p.line),
    [1, 2, 3, 6, 8, 9],
  );
  assert.deepEqual(
    r.prompts.slice(0, 3).map((p) => p.prompt),
    ['How do I open a stuck jar?', 'How do I oil a bike chain?', 'How do I boil an egg?'],
  );
  assert.deepEqual(r.prompts[0]!.messages, [{ role: 'user', content: 'How do I open a stuck jar?' }]);
  assert.deepEqual(r.prompts[3]!.messages, hhPrompt(HH_MULTI));
  assert.equal(r.prompts[3]!.prompt, plainPrompt(hhPrompt(HH_MULTI)));
  assert.deepEqual(
    r.prompts[4]!.messages.map((m) => m.content),
    ['hi', 'hello', 'and now?'],
  );
  // A chat keeps its system message and ends at its last user message.
  assert.deepEqual(r.prompts[5]!.messages, [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Why?' },
  ]);
  assert.equal(r.prompts[5]!.prompt, 'System: Be brief.\n\nHuman: Why?');

  assert.deepEqual(
    r.skipped.map((s) => s.line),
    [4, 7, 10, 11, 12, 13, 14, 15],
  );
  const why = Object.fromEntries(r.skipped.map((s) => [s.line, s.reason]));
  assert.match(why[4]!, /malformed JSON/);
  assert.match(why[7]!, /no "prompt", "question", "messages" or "chosen" field \(fields: text\)/);
  assert.match(why[10]!, /expected a string or an object/);
  assert.match(why[11]!, /empty prompt/);
  assert.match(why[12]!, /starts with an Assistant turn/);
  assert.match(why[13]!, /step tag '<\|analysis\|>'/);
  assert.match(why[14]!, /messages\[0\]: expected \{ role: string, content: string \}/);
  assert.match(why[15]!, /"prompt": expected a string or a list of messages, got 7/);
});

test('plain text lines, format detection, gzip, CRLF', () => {
  const txt = write('q.txt', 'How do I cook rice?\r\n\r\n  How do I fix a flat tyre?  \r\n{"prompt": "not json here"}\r\n');
  const r = readPrompts(txt);
  assert.equal(r.format, 'text');
  assert.deepEqual(
    r.prompts.map((p) => [p.line, p.prompt]),
    [
      [1, 'How do I cook rice?'],
      [3, 'How do I fix a flat tyre?'],
      [4, '{"prompt": "not json here"}'],
    ],
  );
  assert.deepEqual(r.skipped, []);

  // No telling extension: sniffed from the first line.
  assert.equal(readPrompts(write('a.data', '{"prompt": "x"}\n')).format, 'jsonl');
  assert.equal(readPrompts(write('b.data', 'a question\n')).format, 'text');
  assert.equal(readPrompts(write('c.data', '"a question"\n')).prompts[0]!.prompt, 'a question');
  // Forced format.
  assert.equal(readPrompts(write('d.jsonl', 'plain line\n'), { format: 'text' }).prompts[0]!.prompt, 'plain line');

  const gz = write('hh.jsonl.gz', zlib.gzipSync([HH_MULTI, '\n\nHuman: second'].map((t) => JSON.stringify({ chosen: t })).join('\n')));
  const g = readPrompts(gz);
  assert.equal(g.prompts.length, 2);
  assert.deepEqual(g.prompts[1]!.messages, [{ role: 'user', content: 'second' }]);
  assert.throws(() => readPrompts(write('bad.jsonl.gz', 'not gzip')), /bad\.jsonl\.gz: not a gzip file/);
});

test('empty, unusable and missing files are FormatErrors naming the file', () => {
  const empty = write('empty.jsonl', '');
  assert.throws(
    () => readPrompts(empty),
    (e: Error) => e instanceof FormatError && e.message === `${empty}: empty: no prompts`,
  );
  assert.throws(() => readPrompts(write('blank.txt', '\n  \n\n')), /blank\.txt: empty: no prompts/);
  const junk = write('junk.jsonl', '{bad\n42\n');
  assert.throws(
    () => readPrompts(junk),
    (e: Error) => e instanceof FormatError && e.message.startsWith(`${junk}: no usable prompt (2 lines skipped; line 1: malformed JSON`),
  );
  assert.throws(() => readPrompts(write('list.json', '[\n"a",\n"b"\n]\n')), /list\.json: a JSON list, not JSONL/);
  assert.throws(() => readPrompts(path.join(root, 'nope.jsonl')), /nope\.jsonl: not found/);
  assert.throws(() => parsePrompts('x', 'mem', { format: 'csv' as never }), /format: expected 'auto', 'jsonl' or 'text'/);
});

test('data files are read bounded: folders, FIFOs, binary text and gzip bombs are FormatErrors, fast and small', () => {
  const dir = path.join(root, 'a-folder.jsonl');
  fs.mkdirSync(dir);
  assert.throws(
    () => readPrompts(dir),
    (e: Error) => e instanceof FormatError && /a-folder\.jsonl: is a folder/.test(e.message),
  );
  const fifo = path.join(root, 'fifo.jsonl');
  if (spawnSync('mkfifo', [fifo]).status === 0) {
    const t0 = performance.now();
    assert.throws(
      () => readPrompts(fifo),
      (e: Error) => e instanceof FormatError && /fifo\.jsonl: not a regular file/.test(e.message),
    );
    assert.ok(performance.now() - t0 < 2000);
  }
  assert.throws(() => readPrompts(write('nul.txt', Buffer.from('a question\n\0\0\0'))), /nul\.txt: binary file \(NUL byte at offset 11\)/);
  // 300 MiB of zeros in a ~300 KB gzip: refused while unpacking, not held in memory.
  const bomb = write('bomb.jsonl.gz', zlib.gzipSync(Buffer.alloc(300 * 1024 * 1024), { level: 9 }));
  const rss0 = process.memoryUsage().rss;
  assert.throws(() => readPrompts(bomb), /bomb\.jsonl\.gz: not a gzip file of at most 268435456 bytes unpacked/);
  assert.ok(process.memoryUsage().rss - rss0 < 400 * 1024 * 1024);
  // Chains files go through the same reader.
  assert.throws(() => readChainsJsonl(write('chains.jsonl', Buffer.from([0x7b, 0xff, 0xfe, 0x7d, 0x0a]))), /chains\.jsonl: not UTF-8 text/);
});
