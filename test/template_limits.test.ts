// Chat templates come from downloaded folders: hostile ones must fail with a FormatError
// naming the template's file, quickly and without killing the process; real ones must
// render exactly as the unbounded library renders them.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Template } from '@huggingface/jinja';
import { MoteTokenizer, loadTokenizer } from '../src/io/tokenizer.js';
import { BoundedTemplate, defaultTemplateLimits } from '../src/io/template.js';
import { FormatError } from '../src/errors.js';
import { tinyTokenizerJson, tinyTokenizerConfig } from './fixtures/tiny_tokenizer.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const tokenizerModule = path.join(here, '..', 'src', 'io', 'tokenizer.js');
const fixtureModule = path.join(here, 'fixtures', 'tiny_tokenizer.js');
const repo = path.join(here, '..', '..');

/** Renders `template` in a child process; returns what it printed, its exit and the time. */
function renderInChild(template: string): { out: string; status: number | null; signal: string | null; ms: number } {
  const code = `
    import { MoteTokenizer } from ${JSON.stringify(tokenizerModule)};
    import { tinyTokenizerJson, tinyTokenizerConfig } from ${JSON.stringify(fixtureModule)};
    const tok = new MoteTokenizer(tinyTokenizerJson(), tinyTokenizerConfig({ chatTemplate: process.env.TPL }), { source: '/models/evil' });
    try { const r = tok.applyChatTemplate([{ role: 'user', content: 'hi' }]); console.log('OK ' + r.length); }
    catch (e) { console.log(e.constructor.name + ': ' + e.message); }`;
  const t0 = Date.now();
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
    env: { ...process.env, TPL: template },
    timeout: 15_000,
    encoding: 'utf8',
  });
  return { out: (r.stdout ?? '') + (r.stderr ?? ''), status: r.status, signal: r.signal, ms: Date.now() - t0 };
}

const HOSTILE: Record<string, string> = {
  'range(1e9)': '{% for i in range(1000000000) %}x{% endfor %}',
  'nested loops 1e5 x 1e5': '{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}',
  'nested loops under the range cap': '{% for i in range(16000) %}{% for j in range(16000) %}{{ j }}{% endfor %}{% endfor %}',
  'nested empty loops under the range cap': '{% for i in range(16000) %}{% for j in range(16000) %}{% endfor %}{% endfor %}',
  "'x' * 1e9": "{{ 'x' * 1000000000 }}",
  'string doubling in a loop':
    "{% set ns = namespace(s='x') %}{% for i in range(60000) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
  'appending in nested loops':
    "{% set ns = namespace(s='') %}{% for i in range(60000) %}{% for j in range(60000) %}{% set ns.s = ns.s ~ 'xxxxxxxxxxxxxxxx' %}{% endfor %}{% endfor %}{{ ns.s }}",
  'replace growth':
    "{% set ns = namespace(s='aaaaaaaaaaaaaaaaaaaa') %}{% for i in range(30) %}{% set ns.s = ns.s.replace('a', 'aa') %}{% endfor %}{{ ns.s }}",
  'indent amplification':
    "{% set ns = namespace(s='a\\n') %}{% for i in range(20) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | indent(60000) }}",
  'huge join': "{{ range(60000) | join('" + 'x'.repeat(200) + "') }}",
  'shared-list doubling then join':
    "{% set ns = namespace(l=['" +
    'x'.repeat(50) +
    "']) %}{% for i in range(30) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | join(',') }}",
  'shared-list tree then tojson':
    '{% set ns = namespace(l=[1,2,3]) %}{% for i in range(40) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l | tojson }}',
  'self-calling macro': '{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}',
  'deep macro recursion, exponential calls':
    '{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}',
};

test('hostile chat templates fail within ~2 s with a FormatError naming the file; no crash', () => {
  for (const [name, tpl] of Object.entries(HOSTILE)) {
    const r = renderInChild(tpl);
    assert.equal(r.signal, null, `${name}: killed by ${r.signal}: ${r.out}`);
    assert.equal(r.status, 0, `${name}: exit ${r.status}: ${r.out}`);
    // 'x' * n is no operator in this Jinja: the template is rejected (ArgumentError) before any allocation
    const expected = name === "'x' * 1e9" ? /^(FormatError|ArgumentError): / : /^FormatError: /;
    assert.match(r.out, expected, `${name}: ${r.out}`);
    assert.ok(r.out.includes('/models/evil/tokenizer_config.json'), `${name}: the error names the file: ${r.out}`);
    assert.ok(r.ms < 4000, `${name}: took ${r.ms} ms (child start included)`);
  }
});

test('a hostile template from chat_template.jinja names that file', () => {
  const dir = fs.mkdtempSync(path.join(repo, '.tmp-tpl-'));
  try {
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tinyTokenizerJson()));
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(tinyTokenizerConfig({ chatTemplate: null })));
    fs.writeFileSync(path.join(dir, 'chat_template.jinja'), HOSTILE['self-calling macro']!);
    const tok = loadTokenizer(dir);
    assert.throws(
      () => tok.applyChatTemplate([{ role: 'user', content: 'hi' }]),
      (e: unknown) => e instanceof FormatError && e.message.includes(path.join(dir, 'chat_template.jinja')) && /recursion/.test(e.message),
    );
    // a folder in place of the template is a FormatError, not EISDIR
    fs.rmSync(path.join(dir, 'chat_template.jinja'));
    fs.mkdirSync(path.join(dir, 'chat_template.jinja'));
    assert.throws(
      () => loadTokenizer(dir),
      (e: unknown) => e instanceof FormatError && /is a folder/.test(e.message),
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// Real templates (Llama-2, Llama-3, Qwen2.5 with tools, Phi-3, the bundled model's) as their tokenizer_config.json ship them.
const LLAMA2 =
  "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
const LLAMA3 =
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
const QWEN25 =
  "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";
const PHI3 =
  "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";
const TOJSON_INDENT =
  '{% for m in messages %}{{ m | tojson(indent=2) }}{{ m.content.split(" ") | join("|") }}{{ m.content | replace("a", "A") | indent(2) }}{% endfor %}{{ range(3) | list }}';

test('real chat templates render exactly as the unbounded library renders them', () => {
  const bundled = JSON.parse(fs.readFileSync(path.join(repo, 'assets', 'default-model', 'tokenizer_config.json'), 'utf8'))
    .chat_template as string;
  const conversations = [
    [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'What is 2 + 2?' },
      { role: 'assistant', content: ' 4. ' },
      { role: 'user', content: 'And 3 + 3?' },
    ],
    [{ role: 'user', content: 'a '.repeat(20_000) }],
    Array.from({ length: 2000 }, (_, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', content: `turn ${i}: ${'word '.repeat(i % 50)}` })),
  ];
  const tools = [
    { type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } },
  ];
  for (const [name, tpl] of Object.entries({ LLAMA2, LLAMA3, QWEN25, PHI3, TOJSON_INDENT, bundled })) {
    const bounded = new BoundedTemplate(tpl, name);
    for (const messages of conversations) {
      for (const add_generation_prompt of [false, true]) {
        const vars = { bos_token: '<s>', eos_token: '</s>', messages, add_generation_prompt, tools: name === 'QWEN25' ? tools : undefined };
        let expected: string | Error;
        try {
          expected = new Template(tpl).render(vars);
        } catch (e) {
          expected = e as Error;
        }
        const chars = messages.reduce((n, m) => n + m.content.length + m.role.length, 0);
        if (expected instanceof Error) {
          assert.throws(
            () => bounded.render(vars, defaultTemplateLimits(chars, messages.length)),
            (e: unknown) => (e as Error).message.includes(expected.message),
            name,
          );
        } else {
          assert.equal(
            bounded.render(vars, defaultTemplateLimits(chars, messages.length)),
            expected,
            `${name}, ${messages.length} messages`,
          );
        }
      }
    }
  }
  // through the tokenizer too
  const tok = new MoteTokenizer(tinyTokenizerJson(), tinyTokenizerConfig({ chatTemplate: LLAMA3 }));
  const messages = [{ role: 'user', content: 'hello' }];
  assert.equal(
    tok.applyChatTemplate(messages, { addGenerationPrompt: true }),
    new Template(LLAMA3).render({
      bos_token: '<s>',
      eos_token: '</s>',
      unk_token: '<unk>',
      pad_token: '',
      messages,
      add_generation_prompt: true,
    }),
  );
});
