// `mote generate`: step-routed generation from prompts, with a MoTE bundle (each step's text
// labelled with its expert, streamed for a single prompt), plain PEFT adapters, or none.
import { ArgumentError } from '../errors.js';
import type { BackendRequest } from '../backend/backend.js';
import { type MoteBundle } from '../mote/bundle.js';
import { loadMote } from '../mote/bundle_io.js';
import { promptIds, stepTokenIds } from '../mote/chains.js';
import { generate, type GenerateRequest, type TokenEvent } from '../generate/generate.js';
import type { MoteTokenizer } from '../io/tokenizer.js';
import { bundleConfig, openModel } from './common.js';
import { MAX_NEW_TOKENS, intFlag, numFlag, readPromptFile } from './flags.js';

export interface GenerateCliOptions {
  model?: string; mote?: string; backend: BackendRequest; prompt?: string[]; prompts?: string;
  maxNewTokens?: string; temperature?: string; topK?: string; topP?: string; seed?: string;
  skip?: string; stopAfter?: string; json?: boolean;
}

/** Prints each sequence's text step by step: a label when the step changes, then the new text. */
class StepPrinter {
  #ids: number[] = [];
  #shown = '';
  #step = -2;
  constructor(readonly tok: MoteTokenizer, readonly names: readonly string[]) {}
  push(e: TokenEvent): void {
    if (e.step !== this.#step) {
      this.#step = e.step;
      this.#ids = [];
      this.#shown = '';
      process.stdout.write(`\n[${e.step < 0 ? 'prompt' : this.names[e.step] ?? `step ${e.step}`}] `);
    }
    this.#ids.push(e.token);
    const text = this.tok.decode(this.#ids, { skipSpecialTokens: true });
    if (text.startsWith(this.#shown)) process.stdout.write(text.slice(this.#shown.length));
    this.#shown = text;
  }
}

export async function generateCommand(o: GenerateCliOptions): Promise<void> {
  // Every numeric flag is checked up front, whether or not this run would use it.
  const maxNewTokens = intFlag('max-new-tokens', o.maxNewTokens, 1, MAX_NEW_TOKENS, 128);
  const temperature = numFlag('temperature', o.temperature, 0, 100, 0);
  const topK = intFlag('top-k', o.topK, 0, MAX_NEW_TOKENS, 0);
  const topP = numFlag('top-p', o.topP, 0, 1, 1, { openLow: true });
  const seed0 = intFlag('seed', o.seed, 0, 2 ** 31 - 1, 0);
  const config = bundleConfig(o.mote);
  let texts: string[] = o.prompt ?? [];
  if (o.prompts) {
    const r = readPromptFile(o.prompts);
    for (const s of r.skipped) process.stderr.write(`warning: ${o.prompts}:${s.line}: skipped: ${s.reason}\n`);
    texts = texts.concat(r.prompts.map((p) => p.prompt));
  }
  if (texts.length === 0) throw new ArgumentError('give --prompt TEXT or --prompts FILE');
  const m = await openModel(o.model, o.backend, config);
  let bundle: MoteBundle | null = null;
  try {
    bundle = o.mote ? await loadMote(o.mote, m.model) : null;
    const tags = stepTokenIds(m.tokenizer, config);
    const stepTokens = new Map(tags.start.map((id, i) => [id, i]));
    const stop = [tags.end[tags.end.length - 1]!];
    if (m.tokenizer.eosTokenId !== undefined) stop.push(m.tokenizer.eosTokenId);
    const names = config.steps;
    const skip = o.skip ? o.skip.split(',').map((s) => {
      const i = names.indexOf(s.trim() as never);
      if (i < 0) throw new ArgumentError(`--skip: unknown step '${s}' (the bundle has ${names.join(', ')})`);
      return i;
    }) : [];
    const stopAfter = o.stopAfter === undefined ? undefined : names.indexOf(o.stopAfter as never);
    if (stopAfter !== undefined && stopAfter < 0) throw new ArgumentError(`--stop-after: unknown step '${o.stopAfter}' (the bundle has ${names.join(', ')})`);
    const context = m.model.config.maxPositionEmbeddings;
    const requests: GenerateRequest[] = texts.map((t, i) => {
      const prompt = promptIds(m.tokenizer, { prompt: t });
      if (prompt.length >= context) {
        const head = t.length > 40 ? `${t.slice(0, 40)}…` : t;
        throw new ArgumentError(`prompt ${i + 1} (${JSON.stringify(head)}): ${prompt.length} tokens, but the model's context (max_position_embeddings) is ${context}: shorten it to under ${context} tokens`);
      }
      return {
      prompt,
      maxNewTokens,
      stop,
      sampling: temperature === 0 ? {} : { temperature, ...(topK > 0 ? { topK } : {}), topP },
      seed: (seed0 + i) % 2 ** 31,
      ...(skip.length ? { skipSteps: skip } : {}),
      ...(stopAfter !== undefined ? { stopAfterStep: stopAfter } : {}),
      };
    });
    const stream = !o.json && texts.length === 1 ? new StepPrinter(m.tokenizer, names) : null;
    if (stream) process.stdout.write(`[question] ${texts[0]}`);
    // Ctrl-C ends generation at the next step: what was generated is printed, then one line, exit 130.
    const abort = new AbortController();
    const onSigint = () => abort.abort();
    process.once('SIGINT', onSigint);
    let results;
    try {
      results = await generate(m.model, requests, {
        ...(bundle ? { router: bundle.tokenRouter() } : {}),
        stepTokens, stepTokenRouting: 'own', signal: abort.signal,
        ...(stream ? { onToken: (e: TokenEvent) => stream.push(e) } : {}),
      });
    } finally {
      process.removeListener('SIGINT', onSigint);
    }
    if (stream) process.stdout.write(`\n(${results[0]!.stopReason}, ${results[0]!.tokens.length} tokens)\n`);
    for (const [i, r] of results.entries()) {
      const steps: { step: string; expert: string; text: string }[] = [];
      let cur = -2, ids: number[] = [];
      const flush = () => {
        if (cur === -2 || ids.length === 0) return;
        const name = cur < 0 ? 'prompt' : names[cur]!;
        steps.push({ step: name, expert: cur < 0 ? 'shared' : `${name} + shared`, text: m.tokenizer.decode(ids, { skipSpecialTokens: true }).trim() });
      };
      r.tokens.forEach((t, j) => {
        if (r.steps[j] !== cur) { flush(); cur = r.steps[j]!; ids = []; }
        ids.push(t);
      });
      flush();
      if (o.json) process.stdout.write(JSON.stringify({ prompt: texts[i], steps, stopReason: r.stopReason, tokens: r.tokens.length }) + '\n');
      else if (!stream) {
        process.stdout.write(`[question] ${texts[i]}\n`);
        for (const s of steps) process.stdout.write(`  [${s.step}] ${s.text}\n`);
      }
    }
    if (abort.signal.aborted) {
      process.stderr.write('mote: interrupted (Ctrl-C); the output above is what was generated so far\n');
      process.exitCode = 130;
    }
  } finally {
    bundle?.dispose();
    m.close();
  }
}
