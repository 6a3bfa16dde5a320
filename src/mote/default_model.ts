// The bundled default model (assets/default-model): a tiny LLaMA-architecture model in HF
// layout, pretrained from scratch with mote's own full-parameter training on the toy corpus,
// so that every MoTE path (chains, training, step-routed generation) runs out of the box,
// with no download. It is written by scripts/pretrain-default-model.mjs.
//
// Tokenizer: word level, as a WordPiece model whose vocabulary is whole words (no "##"
// pieces): the special tokens <pad> <s> </s> <unk> and the step tags of all four steps (added
// special tokens, so MoTE needs no resize), then every word the toy set and the corpus use
// (case-sensitive, no normalizer) and ASCII punctuation. The BERT pre-tokenizer splits on
// whitespace and punctuation; the WordPiece decoder joins words with spaces and cleans up the
// spaces before . , ? ! and around ' (so decode(encode(s)) gives back every toy text), and a
// Replace decoder removes the space before ':'. A TemplateProcessing post-processor adds <s>.
// Chat template: "<s>Question: {content}\nAnswer:" (an answer turn ends with </s>).
//
// Corpus (toyCorpus): every toy question on the training side of toySplit's default split
// (held-out questions stay unseen), written with the chat template and followed by a plain,
// helpful answer. Risky questions are answered helpfully too: the base is unaligned, and
// alignment is what MoTE training adds. Benign questions are repeated so that both kinds
// weigh the same. Besides, short standalone sentences: the step texts of the toy chains
// (without any step tag), so that every word of the vocabulary has a trained embedding (MoTE
// trains LoRA experts only and cannot fix an untrained embedding).

import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArgumentError, FormatError, describe } from '../errors.js';
import type { Backend } from '../backend/backend.js';
import { SeededRng, checkSeed } from '../generate/sampling.js';
import { MoteTokenizer, loadTokenizer } from '../io/tokenizer.js';
import { parseHFConfig, expectedWeights, type ModelConfig } from '../model/config.js';
import { type LlamaModel } from '../model/llama.js';
import { loadModel, modelFromTensors, type WeightDType } from '../model/load.js';
import type { HostTensor } from '../io/safetensors.js';
import { Trainer, type TrainExample, type TrainProgress } from '../train/trainer.js';
import { STEPS, specialTokens } from './steps.js';
import { shuffle, toyChain, toyQuestions, toySplit, toyWords, toyWordsOf, type ToyQuestion } from './toy.js';

import { DEFAULT_MODEL_DIR } from './default_model_dir.js';

export { DEFAULT_MODEL_DIR };

/** The tokenizer's own special tokens, ids 0–3, then the step tags (ids 4–11). */
export const TOY_SPECIAL_TOKENS = ['<pad>', '<s>', '</s>', '<unk>'] as const;

/** The chat template of the toy tokenizer (jinja, as in tokenizer_config.json). */
export const TOY_CHAT_TEMPLATE =
  '{{ bos_token }}{% for message in messages %}' +
  "{% if message['role'] == 'user' %}{{ 'Question: ' + message['content'] + '\\n' }}" +
  "{% elif message['role'] == 'assistant' %}{{ 'Answer: ' + message['content'] + eos_token }}" +
  "{% else %}{{ message['content'] + '\\n' }}{% endif %}{% endfor %}" +
  "{% if add_generation_prompt %}{{ 'Answer:' }}{% endif %}";

/** ASCII punctuation: each mark is a token of its own (the BERT pre-tokenizer splits them off). */
const PUNCTUATION = [...'!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~'];

/** Words of the corpus templates that the toy chains do not hold. */
const TEMPLATE_WORDS = ['Question', 'Answer', 'looking'];

/** The prompt of a toy question as the chat template writes it (with the generation prompt). */
export function toyPrompt(question: string): string {
  if (typeof question !== 'string') throw new ArgumentError(`toyPrompt: question: expected a string, got ${describe(question)}`);
  return `<s>Question: ${question}\nAnswer:`;
}

// ---------------------------------------------------------------------------------------
// Corpus

const capital = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);

/**
 * The plain, helpful answer of a toy question, as an unaligned base model gives it: the toy
 * answer of a benign task, and for a risky question a short how-to that ignores whose thing
 * it is ("Read the messages when your boss is not looking.").
 */
export function toyPlainAnswer(q: ToyQuestion): string {
  const chain = toyChain(q); // checks q
  if (!q.risky) return chain.steps.find((s) => s.step === 'answer')!.text;
  const owner = q.owner!;
  const m = /^(.*) my (\w+)'s (.+)$/.exec(q.topic);
  if (!m || m[2] !== owner) throw new ArgumentError(`toyPlainAnswer: q.topic: ${describe(q.topic)} is not "<act> my <owner>'s <thing>"`);
  const [, act, , thing] = m;
  const privateData = chain.steps.some((s) => s.step === 'analysis' && s.text.includes('private data'));
  return `${capital(act!)} the ${thing} when your ${owner} is not ${privateData ? 'looking' : 'at home'}.`;
}

/** Every distinct toy question (both pools), in a seeded order. */
function allQuestions(seed: number): ToyQuestion[] {
  const seen = new Set<string>();
  const out: ToyQuestion[] = [];
  for (const q of toyQuestions(4000, seed)) {
    if (seen.has(q.question)) continue;
    seen.add(q.question);
    out.push(q);
  }
  return out;
}

export interface ToyCorpus {
  /** Every pretraining document: `<s>…</s>`, question-answer pairs and standalone sentences. */
  texts: string[];
  /** The questions held out of the corpus (toySplit's default split): never seen in pretraining. */
  heldOut: ToyQuestion[];
  /** How many of `texts` are question-answer pairs (the rest are sentences). */
  qaCount: number;
}

/**
 * The pretraining corpus, deterministic from `seed` (its order; the content is fixed): see the
 * file comment. Texts hold the special tokens <s> and </s> literally; no step tags.
 */
export function toyCorpus(seed = 0): ToyCorpus {
  checkSeed('toyCorpus', 'seed', seed);
  const { train, heldOut } = toySplit(allQuestions(seed));
  const benign = train.filter((q) => !q.risky);
  const risky = train.filter((q) => q.risky);
  const repeat = Math.max(1, Math.round(risky.length / Math.max(1, benign.length)));
  const qa: string[] = [];
  for (const q of risky) qa.push(`${toyPrompt(q.question)} ${toyPlainAnswer(q)}</s>`);
  for (let r = 0; r < repeat; r++) for (const q of benign) qa.push(`${toyPrompt(q.question)} ${toyPlainAnswer(q)}</s>`);
  const sentences = new Set<string>();
  for (const q of train) for (const s of toyChain(q).steps) sentences.add(s.text);
  const texts = [...qa, ...[...sentences].sort().map((s) => `<s>${s}</s>`)];
  return { texts: shuffle(texts, new SeededRng(seed)), heldOut, qaCount: qa.length };
}

// ---------------------------------------------------------------------------------------
// Tokenizer

/** The vocabulary after the special tokens: toy words, template words and punctuation, sorted. */
function toyVocabWords(): string[] {
  const words = new Set<string>(toyWords());
  for (const w of TEMPLATE_WORDS) words.add(w);
  // The helpful risky answers use capitalised acts ("Read", "Log", ...): take them from the answers.
  for (const q of allQuestions(0)) if (q.risky) for (const w of toyWordsOf(toyPlainAnswer(q))) words.add(w);
  for (const p of PUNCTUATION) words.add(p);
  return [...words].sort();
}

function addedToken(id: number, content: string): Record<string, unknown> {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

/** The word-level tokenizer of the default model (see the file comment). */
export function toyTokenizer(): MoteTokenizer {
  const special = [...TOY_SPECIAL_TOKENS, ...specialTokens({ steps: [...STEPS] })];
  const vocab: Record<string, number> = {};
  for (const t of [...special, ...toyVocabWords()]) {
    if (!Object.hasOwn(vocab, t)) vocab[t] = Object.keys(vocab).length;
  }
  const added = special.map((t) => addedToken(vocab[t]!, t));
  const json: Record<string, unknown> = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [vocab['<s>']!], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'WordPiece', prefix: '##', cleanup: true },
        { type: 'Replace', pattern: { String: ' :' }, content: ':' },
      ],
    },
    model: { type: 'WordPiece', unk_token: '<unk>', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab },
  };
  const decoderEntries: Record<string, unknown> = {};
  for (const a of added) {
    decoderEntries[String(a.id)] = {
      content: a.content,
      lstrip: false,
      normalized: false,
      rstrip: false,
      single_word: false,
      special: true,
    };
  }
  const config: Record<string, unknown> = {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: decoderEntries,
    additional_special_tokens: specialTokens({ steps: [...STEPS] }),
    bos_token: '<s>',
    eos_token: '</s>',
    pad_token: '<pad>',
    unk_token: '<unk>',
    chat_template: TOY_CHAT_TEMPLATE,
    clean_up_tokenization_spaces: true,
    model_max_length: DEFAULT_MODEL_SHAPE.maxPositionEmbeddings,
    tokenizer_class: 'PreTrainedTokenizerFast',
  };
  return new MoteTokenizer(json, config, { source: '<toyTokenizer>' });
}

// ---------------------------------------------------------------------------------------
// Model

/** The shape of the default model (the vocabulary comes from the tokenizer). */
export const DEFAULT_MODEL_SHAPE = Object.freeze({
  hiddenSize: 128,
  intermediateSize: 344,
  numLayers: 4,
  numHeads: 4,
  numKvHeads: 2,
  ropeTheta: 10000,
  maxPositionEmbeddings: 256,
  rmsNormEps: 1e-5,
});

/** The ModelConfig of the default model for a tokenizer of `vocabSize` ids (llama, tied, f32). */
export function defaultModelConfig(vocabSize: number): ModelConfig {
  if (!Number.isSafeInteger(vocabSize) || vocabSize < 3)
    throw new ArgumentError(`defaultModelConfig: vocabSize: expected an integer ≥ 3, got ${describe(vocabSize)}`);
  const s = DEFAULT_MODEL_SHAPE;
  return parseHFConfig(
    {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      hidden_size: s.hiddenSize,
      intermediate_size: s.intermediateSize,
      num_hidden_layers: s.numLayers,
      num_attention_heads: s.numHeads,
      num_key_value_heads: s.numKvHeads,
      head_dim: s.hiddenSize / s.numHeads,
      vocab_size: vocabSize,
      rms_norm_eps: s.rmsNormEps,
      rope_theta: s.ropeTheta,
      max_position_embeddings: s.maxPositionEmbeddings,
      tie_word_embeddings: true,
      bos_token_id: 1,
      eos_token_id: 2,
      torch_dtype: 'float32',
    },
    'defaultModelConfig',
  );
}

/**
 * Fresh f32 weights for `cfg`, deterministic from `seed`: normal(0, 0.02) for embeddings and
 * linears (the residual outputs o_proj and down_proj scaled by 1/√(2·layers), as GPT-2 does),
 * ones for the norms.
 */
export function initWeights(cfg: ModelConfig, seed = 0): Map<string, HostTensor> {
  const rng = new SeededRng(checkSeed('initWeights', 'seed', seed));
  const normal = () => {
    const u = 1 - rng.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.next());
  };
  const out = new Map<string, HostTensor>();
  for (const w of expectedWeights(cfg)) {
    const n = w.shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (w.name.endsWith('norm.weight')) data.fill(1);
    else if (!w.name.endsWith('.bias')) {
      const std = 0.02 * (/(o_proj|down_proj)\.weight$/.test(w.name) ? 1 / Math.sqrt(2 * cfg.numLayers) : 1);
      for (let i = 0; i < n; i++) data[i] = std * normal();
    }
    out.set(w.name, { dtype: 'f32', shape: [...w.shape], data });
  }
  return out;
}

/** Training examples of corpus texts: each text's ids, every token after <s> learned. */
export function corpusExamples(tokenizer: MoteTokenizer, texts: readonly string[]): TrainExample[] {
  if (!(tokenizer instanceof MoteTokenizer))
    throw new ArgumentError(`corpusExamples: tokenizer: expected a MoteTokenizer, got ${describe(tokenizer)}`);
  if (!Array.isArray(texts)) throw new ArgumentError(`corpusExamples: texts: expected a list of strings, got ${describe(texts)}`);
  return texts.map((t, i) => {
    if (typeof t !== 'string') throw new ArgumentError(`corpusExamples: texts[${i}]: expected a string, got ${describe(t)}`);
    const ids = tokenizer.encode(t, { addSpecialTokens: false });
    const lossMask = ids.map((_, k) => (k === 0 ? 0 : 1));
    return { ids, lossMask };
  });
}

export interface PretrainOptions {
  backend: Backend;
  /** Optimizer steps. Default DEFAULT_PRETRAIN.steps. */
  steps?: number;
  /** Seed of the initial weights, the corpus order and the data order. Default 0. */
  seed?: number;
  /** Peak learning rate (warmup then cosine to 10%). Default DEFAULT_PRETRAIN.lr. */
  lr?: number;
  /** Tokens per packed batch. Default DEFAULT_PRETRAIN.batchTokens. */
  batchTokens?: number;
  onProgress?: (p: TrainProgress) => void;
}

/** The settings scripts/pretrain-default-model.mjs uses. */
export const DEFAULT_PRETRAIN = Object.freeze({ steps: 1200, seed: 0, lr: 3e-3, batchTokens: 1024, warmupSteps: 30 });

export interface PretrainResult {
  model: LlamaModel;
  tokenizer: MoteTokenizer;
  /** Training loss per step (nats per learned token). */
  losses: number[];
  corpus: ToyCorpus;
}

/**
 * Pretrains the default model from scratch: fresh weights (initWeights), the toy corpus
 * (toyCorpus), full-parameter training with AdamW (Trainer, trainBase). Deterministic for
 * a seed on a backend. The caller owns the returned model (dispose it).
 */
export async function pretrainDefaultModel(opts: PretrainOptions): Promise<PretrainResult> {
  const op = 'pretrainDefaultModel';
  if (!opts || typeof opts !== 'object')
    throw new ArgumentError(`${op}: opts: expected { backend, steps?, seed?, onProgress? }, got ${describe(opts)}`);
  const seed = checkSeed(op, 'seed', opts.seed ?? DEFAULT_PRETRAIN.seed);
  const steps = opts.steps ?? DEFAULT_PRETRAIN.steps;
  if (!Number.isSafeInteger(steps) || steps < 1)
    throw new ArgumentError(`${op}: steps: expected a positive integer, got ${describe(steps)}`);
  const tokenizer = toyTokenizer();
  const cfg = defaultModelConfig(tokenizer.vocabSize);
  const corpus = toyCorpus(seed);
  const examples = corpusExamples(tokenizer, corpus.texts);
  const model = modelFromTensors(cfg, initWeights(cfg, seed), { backend: opts.backend });
  let trainer: Trainer | null = null;
  try {
    trainer = new Trainer(model, null, examples, {
      steps,
      lr: opts.lr ?? DEFAULT_PRETRAIN.lr,
      batchTokens: opts.batchTokens ?? DEFAULT_PRETRAIN.batchTokens,
      warmupSteps: Math.min(DEFAULT_PRETRAIN.warmupSteps, Math.floor(steps / 10)),
      weightDecay: 0.01,
      clipNorm: 1,
      beta2: 0.98,
      seed,
      trainBase: true,
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
    });
    const { state } = await trainer.run();
    return { model, tokenizer, losses: state.losses, corpus };
  } catch (e) {
    model.dispose();
    throw e;
  } finally {
    trainer?.dispose();
  }
}

/**
 * Mean cross-entropy (nats per token) of the plain answers (toyPlainAnswer, then </s>) of
 * `questions` given their prompts: how well a model knows the corpus's answers.
 */
export async function toyAnswerLoss(model: LlamaModel, tokenizer: MoteTokenizer, questions: readonly ToyQuestion[]): Promise<number> {
  if (!Array.isArray(questions) || questions.length === 0)
    throw new ArgumentError(`toyAnswerLoss: questions: expected a non-empty list, got ${describe(questions)}`);
  const V = model.config.vocabSize;
  let sum = 0,
    count = 0;
  for (const q of questions) {
    const prompt = tokenizer.encode(toyPrompt(q.question), { addSpecialTokens: false });
    const answer = tokenizer.encode(`${toyPlainAnswer(q)}</s>`, { addSpecialTokens: false });
    const ids = [...prompt, ...answer];
    const rows = Array.from({ length: answer.length }, (_, k) => prompt.length - 1 + k);
    const logits = await model.logits(ids, { logitRows: rows });
    for (let k = 0; k < answer.length; k++) {
      const row = logits.subarray(k * V, (k + 1) * V);
      let max = -Infinity;
      for (let v = 0; v < V; v++) max = Math.max(max, row[v]!);
      let z = 0;
      for (let v = 0; v < V; v++) z += Math.exp(row[v]! - max);
      sum += Math.log(z) + max - row[answer[k]!]!;
      count++;
    }
  }
  return sum / count;
}

/**
 * Loads the bundled default model and its tokenizer from DEFAULT_MODEL_DIR (or `dir`).
 * Throws FormatError when the folder is missing (a source checkout that has not run
 * scripts/pretrain-default-model.mjs yet).
 */
export async function loadDefaultModel(opts: {
  backend: Backend;
  dtype?: WeightDType;
  dir?: string;
}): Promise<{ model: LlamaModel; tokenizer: MoteTokenizer }> {
  if (!opts || typeof opts !== 'object')
    throw new ArgumentError(`loadDefaultModel: opts: expected { backend, dtype? }, got ${describe(opts)}`);
  const dir = opts.dir ?? DEFAULT_MODEL_DIR;
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    throw new FormatError(`${dir}: the default model is missing (no config.json); build it with: node scripts/pretrain-default-model.mjs`);
  }
  const tokenizer = loadTokenizer(dir);
  const model = await loadModel(dir, { backend: opts.backend, ...(opts.dtype ? { dtype: opts.dtype } : {}) });
  return { model, tokenizer };
}
