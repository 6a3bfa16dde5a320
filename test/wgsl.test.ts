// specialise() (src/backend/wgsl.ts): includes resolved once, the LoRA tile constants
// prepended from LORA_TILE, weight loaders per dtype; and every kernel family of
// kernels/wgsl builds its text without an unresolved include.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LORA_TILE, specialise, type WgslReader } from '../src/backend/wgsl.js';
import { readWgslFile } from '../src/backend/wgsl_node.js';

const count = (s: string, needle: string) => s.split(needle).length - 1;
/** #include lines left (mentions in comments do not count). */
const includes = (s: string) => (s.match(/^#include /gm) ?? []).length;

test('the LoRA families get the shared tile code once and the tile sizes from LORA_TILE', () => {
  for (const family of ['lora_shrink', 'lora_expand', 'lora_grad']) {
    const code = specialise(readWgslFile, family, family === 'lora_grad' ? {} : { w: 'bf16' });
    assert.equal(includes(code), 0, `${family}: an include is left`);
    assert.equal(count(code, 'fn tile_fma('), 1, `${family}: tile_fma`);
    assert.equal(count(code, 'fn w_tile_elem('), family === 'lora_grad' ? 0 : 1, `${family}: w_tile_elem`);
    for (const [k, v] of Object.entries(LORA_TILE)) assert.equal(count(code, `const ${k}: u32 = ${v}u;`), 1, `${family}: ${k}`);
    assert.doesNotMatch(code, /const (TM|TR|TN|TH|KT|PC): u32 = \d+u;/, `${family}: a tile size written as a literal`);
  }
});

test('every kernel family of kernels/wgsl specialises without a leftover include', () => {
  const dir = join(fileURLToPath(import.meta.url), '..', '..', '..', 'kernels', 'wgsl');
  const families = readdirSync(dir)
    .filter((f) => f.endsWith('.wgsl'))
    .map((f) => f.slice(0, -5));
  assert.ok(families.length >= 13, `found ${families.length} families`);
  for (const f of families) assert.equal(includes(specialise(readWgslFile, f, {})), 0, f);
});

test('includes: a repeat is dropped, a cycle ends, a missing file throws, constants given by the caller win', () => {
  const files: Record<string, string> = {
    'k.wgsl': '#include "include/lora_tile.wgsl"\n#include "a.wgsl"\nfn main() {}\n',
    'a.wgsl': '#include "include/lora_tile.wgsl"\n#include "a.wgsl"\nfn a() {}\n',
    'include/lora_tile.wgsl': 'fn tile() {}\n',
    'bad.wgsl': '#include "missing.wgsl"\n',
  };
  const read: WgslReader = (p) => {
    const s = files[p];
    if (s === undefined) throw new Error(`no file ${p}`);
    return s;
  };
  const code = specialise(read, 'k', { w: 'f16' }, { LORA_SLOTS: 32 });
  assert.equal(count(code, 'fn tile()'), 1);
  assert.equal(count(code, 'fn a()'), 1);
  assert.equal(count(code, 'const LORA_SLOTS: u32 = 32u;'), 1);
  assert.match(code, /fn load_w\(i: u32\) -> f32 \{ let p = unpack2x16float/);
  assert.throws(() => specialise(read, 'bad', {}), /no file missing\.wgsl/);
});
