// `mote generate`: step-routed generation from prompts, with a MoTE bundle (each step's text
// labelled with its experts, streamed for a single prompt) or the base model. Runs through
// MoteChat, the API's text-in/text-out entry: prompts go in as chat messages (multi-turn
// prompt files included), text before the first step tag is "outside any step".
import { ArgumentError } from '../errors.js';
import type { BackendRequest } from '../backend/backend.js';
import { loadMote } from '../mote/bundle_io.js';
import type { StepName } from '../mote/steps.js';
import type { ChatMessage } from '../io/tokenizer.js';
import { MoteChat, bundleConfigAt, openModelFolder, type AskOptions, type ChatAnswer } from '../generate/chat.js';
import { MAX_NEW_TOKENS, intFlag, numFlag, readPromptFile } from './flags.js';

export interface GenerateCliOptions {
  model?: string;
  mote?: string;
  backend: BackendRequest;
  prompt?: string[];
  prompts?: string;
  maxNewTokens?: string;
  temperature?: string;
  topK?: string;
  topP?: string;
  seed?: string;
  skip?: string;
  stopAfter?: string;
  firstStep?: string;
  json?: boolean;
}

const OUTSIDE = 'outside any step';

export async function generateCommand(o: GenerateCliOptions): Promise<void> {
  // Every numeric flag is checked up front, whether or not this run would use it.
  const maxNewTokens = intFlag('max-new-tokens', o.maxNewTokens, 1, MAX_NEW_TOKENS, 128);
  const temperature = numFlag('temperature', o.temperature, 0, 100, 0);
  const topK = intFlag('top-k', o.topK, 0, MAX_NEW_TOKENS, 0);
  const topP = numFlag('top-p', o.topP, 0, 1, 1, { openLow: true });
  const seed = intFlag('seed', o.seed, 0, 2 ** 31 - 1, 0);
  const config = bundleConfigAt(o.mote, '--mote');
  const stepName = (s: string, flag: string): StepName => {
    const name = s.trim();
    if (!config.steps.includes(name as StepName))
      throw new ArgumentError(`--${flag}: unknown step '${name}' (the ${o.mote ? 'bundle' : 'model'} has ${config.steps.join(', ')})`);
    return name as StepName;
  };
  const skip = o.skip ? o.skip.split(',').map((s) => stepName(s, 'skip')) : [];
  const stopAfter = o.stopAfter === undefined ? undefined : stepName(o.stopAfter, 'stop-after');
  const firstStep = o.firstStep === undefined ? undefined : stepName(o.firstStep, 'first-step');
  const questions: { label: string; messages: ChatMessage[] }[] = (o.prompt ?? []).map((p) => ({
    label: p,
    messages: [{ role: 'user', content: p }],
  }));
  if (o.prompts) {
    const r = readPromptFile(o.prompts);
    for (const s of r.skipped) process.stderr.write(`warning: ${o.prompts}:${s.line}: skipped: ${s.reason}\n`);
    for (const p of r.prompts) questions.push({ label: p.prompt, messages: p.messages });
  }
  if (questions.length === 0) throw new ArgumentError('give --prompt TEXT or --prompts FILE');

  const m = await openModelFolder(o.model, o.backend, config, { what: '--model' });
  let chat: MoteChat;
  try {
    chat = new MoteChat(m.model, m.tokenizer, config, o.mote ? await loadMote(o.mote, m.model) : null, m.close);
  } catch (e) {
    m.close();
    throw e;
  }
  const context = m.model.config.maxPositionEmbeddings;
  for (const [i, q] of questions.entries()) {
    const n = chat.promptTokens(q.messages);
    if (n >= context) {
      chat.dispose();
      const head = q.label.length > 40 ? `${q.label.slice(0, 40)}…` : q.label;
      throw new ArgumentError(
        `prompt ${i + 1} (${JSON.stringify(head)}): ${n} tokens, but the model's context (max_position_embeddings) is ${context}: shorten it to under ${context} tokens`,
      );
    }
  }
  // Ctrl-C ends generation at the next token: what was generated is printed, then one line, exit 130.
  const abort = new AbortController();
  const onSigint = () => abort.abort();
  process.once('SIGINT', onSigint);
  try {
    const ask: AskOptions = {
      maxNewTokens,
      seed,
      signal: abort.signal,
      ...(temperature === 0 ? {} : { sampling: { temperature, ...(topK > 0 ? { topK } : {}), topP } }),
      ...(skip.length ? { skip } : {}),
      ...(stopAfter !== undefined ? { stopAfter } : {}),
      ...(firstStep !== undefined ? { firstStep } : {}),
    };
    const label = (s: StepName | null) => s ?? OUTSIDE;
    let answers: ChatAnswer[];
    if (!o.json && questions.length === 1) {
      // One prompt: streamed, a label each time the step changes.
      process.stdout.write(`[question] ${questions[0]!.label}`);
      const it = chat.stream(questions[0]!.messages, ask);
      let r = await it.next();
      while (!r.done) {
        const c = r.value;
        process.stdout.write(c.start ? `\n[${label(c.step)}] ${c.text}` : c.text);
        r = await it.next();
      }
      answers = [r.value];
      process.stdout.write(`\n(${answers[0]!.stopReason}, ${answers[0]!.tokens} tokens)\n`);
    } else {
      answers = await chat.askAll(
        questions.map((q) => q.messages),
        ask,
      );
      for (const [i, a] of answers.entries()) {
        if (o.json) {
          process.stdout.write(
            JSON.stringify({ prompt: questions[i]!.label, steps: a.steps, stopReason: a.stopReason, tokens: a.tokens }) + '\n',
          );
        } else {
          process.stdout.write(`[question] ${questions[i]!.label}\n`);
          for (const s of a.steps) process.stdout.write(`  [${label(s.step)}] ${s.text}\n`);
        }
      }
    }
    if (abort.signal.aborted) {
      process.stderr.write('mote: interrupted (Ctrl-C); the output above is what was generated so far\n');
      process.exitCode = 130;
    }
  } finally {
    process.removeListener('SIGINT', onSigint);
    chat.dispose();
  }
}
