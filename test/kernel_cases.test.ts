// The shared kernel and model cases (kernel_cases.ts, model_cases.ts) in Node, on every
// backend; browser.test.ts runs the same cases in Chromium through the browser bundle.
import { after } from 'node:test';
import assert from 'node:assert/strict';
import * as mote from '../src/index.js';
import { badInputFailures, KERNEL_CASE_NAMES, runKernelCases } from './kernel_cases.js';
import { closeBackends, forEachBackend } from './helpers.js';
import { runModelCase } from './model_cases.js';

after(closeBackends);

forEachBackend('shared kernel cases match the float64 references', async (b) => {
  const results = await runKernelCases(mote, b);
  assert.deepEqual(
    results.map((r) => r.name),
    KERNEL_CASE_NAMES,
  );
  const failed = results.filter((r) => r.failure).map((r) => `${r.name}: ${r.failure}`);
  assert.deepEqual(failed, []);
  assert.equal(b.memoryInUse().buffers, 0, 'the cases left tensors behind');
});

forEachBackend('shared bad-input cases throw a MoteError naming the argument', async (b) => {
  assert.deepEqual(await badInputFailures(mote, b), []);
});

forEachBackend('in-memory model: modelFromTensors logits, greedy generate, tokenizer from JSON', async (b) => {
  const r = await runModelCase(mote, b);
  assert.deepEqual(r.failures, []);
  assert.equal(b.memoryInUse().buffers, 0, 'the model left tensors behind');
});
