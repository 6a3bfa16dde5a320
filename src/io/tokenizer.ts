// HF tokenizers: tokenizer.json + tokenizer_config.json (DESIGN §6), through
// @huggingface/tokenizers (a pure-JS implementation that loads tokenizer.json; it does not
// train) and chat templates through @huggingface/jinja.
//
// Adding the MoTE step tokens: the library has no add_tokens(), so `addSpecialTokens`
// appends entries to the JSON's `added_tokens` (id = the current vocabulary size, special,
// not normalized, no strip) and builds a fresh Tokenizer from the JSON. The library splits
// text on added tokens before pre-tokenization, so each one encodes as a single id, and
// decode maps the id back to its content. tokenizer_config.json's `added_tokens_decoder` and
// `additional_special_tokens` are kept in step, as transformers writes them.
//
// The JSON handed to the library is a copy: its constructor writes the added tokens into
// the model's vocabulary, and we keep the file's JSON as read for saving.

import { Tokenizer } from '@huggingface/tokenizers';
import { ArgumentError, FormatError, describe } from '../errors.js';
import { checkRegularFile, jsonDepth, parseJson, readTextFile } from './files.js';
import { checkTokenizerPattern } from './regex.js';
import { fileIn, openSource, type FileBytes, type FileSource, type SourceInput } from './source.js';
import { BoundedTemplate, MAX_TEMPLATE_CHARS, defaultTemplateLimits, type TemplateLimits } from './template.js';
import { atomicWrite } from './safetensors.js';
import type { DirWriter } from './sink.js';
import type { DirHandle } from './opfs.js';
import { nodeBuiltin } from './node_builtins.js';
const fs = nodeBuiltin<typeof import('node:fs')>('node:fs');
const path = nodeBuiltin<typeof import('node:path')>('node:path');

export const TOKENIZER_FILE = 'tokenizer.json';
export const TOKENIZER_CONFIG_FILE = 'tokenizer_config.json';
/** Newer transformers versions save the chat template in its own file. */
export const CHAT_TEMPLATE_FILE = 'chat_template.jinja';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface EncodeOptions {
  /** Add the post-processor's special tokens (e.g. a leading <s>). Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Leave special tokens (bos, eos, the step tokens, ...) out of the text. Default false. */
  skipSpecialTokens?: boolean;
}

export interface ChatTemplateOptions {
  /** End with the header of an assistant turn. Default false. */
  addGenerationPrompt?: boolean;
  /** More variables for the template (e.g. tools, documents). */
  variables?: Record<string, unknown>;
  /** Rendering budgets, replacing the defaults (see src/io/template.ts). */
  limits?: Partial<TemplateLimits>;
}

type Json = Record<string, unknown>;

function isPlainObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The content of a special token entry of tokenizer_config.json: a string or an AddedToken dict. */
function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (isPlainObject(v) && typeof v.content === 'string') return v.content;
  return null;
}

/** tokenizer.json of real models stays well below this (Llama-3: 9 MB, Gemma: 34 MB). */
export const MAX_TOKENIZER_BYTES = 64 * 1024 * 1024;
/** tokenizer_config.json (with added_tokens_decoder and chat templates) stays below this. */
export const MAX_TOKENIZER_CONFIG_BYTES = 16 * 1024 * 1024;
/** JSON nesting deeper than this is no tokenizer (real ones nest fewer than 10 levels). */
const MAX_JSON_DEPTH = 64;
/** Ids may leave at most this many holes below the largest id (real tokenizers leave none or a few). */
export const MAX_ID_HOLES = 1024;

/** How a file that git-LFS did not fetch starts: a three-line pointer in place of the real bytes. */
const LFS_POINTER = 'version https://git-lfs.github.com/spec/v1';

function readJson(file: string, what: string, maxBytes: number): Json {
  return parseJsonText(readTextFile(file, what, maxBytes), file, what);
}

/**
 * One more than the largest id of the tokenizer.json model's vocab and its added tokens.
 * Every id must fit the entries present: real vocabularies are dense 0..n-1 with the added
 * tokens continuing after them, so the largest id must be below (entries + added tokens +
 * MAX_ID_HOLES); a far larger id (2,000,000 in a file of a thousand tokens) would make every
 * table sized by the vocabulary huge.
 */
function jsonVocabSize(json: Json, file: string): number {
  let n = 0;
  let entries = 0;
  let worst = '';
  const model = json.model as Json;
  const vocab = model.vocab;
  if (Array.isArray(vocab)) {
    // Unigram: [token, score][]
    for (const [i, e] of vocab.entries()) {
      if (!Array.isArray(e) || typeof e[0] !== 'string' || typeof e[1] !== 'number')
        throw new FormatError(`${file}: model.vocab[${i}]: expected [token, score], got ${describe(e)}`);
    }
    n = entries = vocab.length;
  } else if (isPlainObject(vocab)) {
    for (const [t, id] of Object.entries(vocab)) {
      if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0)
        throw new FormatError(`${file}: model.vocab[${JSON.stringify(t)}]: expected a non-negative integer id, got ${describe(id)}`);
      if (id + 1 > n) [n, worst] = [id + 1, `model.vocab[${JSON.stringify(t)}]`];
      entries++;
    }
  } else if (vocab !== undefined && vocab !== null)
    throw new FormatError(`${file}: model.vocab: expected an object or a list, got ${describe(vocab)}`);
  const added = json.added_tokens as Json[];
  for (const [i, t] of added.entries()) {
    if ((t.id as number) + 1 > n) [n, worst] = [(t.id as number) + 1, `added_tokens[${i}] (${JSON.stringify(t.content)})`];
  }
  const bound = entries + added.length + MAX_ID_HOLES;
  if (n > bound) {
    throw new FormatError(
      `${file}: ${worst}: id ${n - 1} does not fit the ${entries} vocabulary entries and ${added.length} added tokens present (ids must stay below ${bound})`,
    );
  }
  return n;
}

/** Checks every regex of tokenizer.json (a `pattern: { Regex }` anywhere, e.g. in a Split or Replace, nested in Sequences) before the library compiles it. */
function checkPatterns(json: Json, file: string): void {
  const stack: [unknown, string][] = [[json, '']];
  while (stack.length > 0) {
    const [v, at] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (Array.isArray(v)) {
      v.forEach((c, i) => stack.push([c, `${at}[${i}]`]));
      continue;
    }
    for (const [k, c] of Object.entries(v as Json)) {
      if (at === '' && (k === 'model' || k === 'added_tokens')) continue; // vocabularies, not patterns
      const where = at === '' ? k : `${at}.${k}`;
      if (k === 'pattern' && isPlainObject(c) && 'Regex' in c) checkTokenizerPattern(c.Regex, `${file}: ${where}.Regex`);
      else stack.push([c, where]);
    }
  }
}

function checkTokenizerJson(json: Json, file: string): void {
  if (!isPlainObject(json.model)) throw new FormatError(`${file}: model: expected an object, got ${describe(json.model)}`);
  if (typeof json.model.type !== 'string' && !('vocab' in json.model)) throw new FormatError(`${file}: model: no type or vocab`);
  for (const k of ['normalizer', 'pre_tokenizer', 'post_processor', 'decoder']) {
    if (!(k in json)) json[k] = null; // optional in the file; the library wants the keys
    const c = json[k];
    if (c !== null && !(isPlainObject(c) && typeof c.type === 'string'))
      throw new FormatError(`${file}: ${k}: expected null or an object with a type, got ${describe(c)}`);
  }
  if ('type' in json.model && typeof json.model.type !== 'string')
    throw new FormatError(`${file}: model.type: expected a string, got ${describe(json.model.type)}`);
  if (json.added_tokens === undefined) json.added_tokens = [];
  if (!Array.isArray(json.added_tokens))
    throw new FormatError(`${file}: added_tokens: expected a list, got ${describe(json.added_tokens)}`);
  for (const [i, t] of (json.added_tokens as unknown[]).entries()) {
    if (!isPlainObject(t) || typeof t.content !== 'string' || typeof t.id !== 'number' || !Number.isSafeInteger(t.id) || t.id < 0) {
      throw new FormatError(`${file}: added_tokens[${i}]: expected { id: non-negative integer, content: string, ... }`);
    }
  }
}

function build(json: Json, config: Json, file: string): Tokenizer {
  try {
    return new Tokenizer(structuredClone(json), structuredClone(config));
  } catch (e) {
    throw new FormatError(`${file}: not a tokenizer this library can load: ${(e as Error).message}`);
  }
}

/**
 * Text of a growing list of ids, piece by piece, for streaming: `push(id)` returns what the new
 * id adds to the text ('' while a multi-byte character is still completing). Each push decodes
 * only the ids since the last piece, with the ones before it for context (as vLLM's
 * detokenizer), so the work per token stays constant; the pieces add up to decode(ids).
 */
export class DecodeStream {
  readonly ids: number[] = [];
  #prefix = 0;
  #read = 0;
  constructor(
    readonly tokenizer: MoteTokenizer,
    readonly opts: DecodeOptions = { skipSpecialTokens: true },
  ) {}

  push(id: number): string {
    this.ids.push(id);
    const before = this.tokenizer.decode(this.ids.slice(this.#prefix, this.#read), this.opts);
    const now = this.tokenizer.decode(this.ids.slice(this.#prefix), this.opts);
    if (now.length <= before.length || now.endsWith('\uFFFD')) return '';
    this.#prefix = this.#read;
    this.#read = this.ids.length;
    return now.slice(before.length);
  }
}

/**
 * A tokenizer read from an HF model directory. Ids are plain numbers; `vocabSize` counts the
 * model's vocabulary and the added tokens (one more than the largest id).
 */
export class MoteTokenizer {
  private tok: Tokenizer;
  private json: Json;
  private config: Json;
  private templateFromFile: string | null;
  private compiled: { source: string; template: BoundedTemplate } | null = null;
  /** Where the tokenizer was read from (for error messages). */
  readonly source: string;
  private size: number;

  /** From the parsed tokenizer.json and tokenizer_config.json; `source` names them in errors. */
  constructor(tokenizerJson: Json, tokenizerConfig: Json, opts: { source?: string; chatTemplate?: string | null } = {}) {
    this.source = opts.source ?? '.';
    const file = fileIn(this.source, TOKENIZER_FILE);
    if (!isPlainObject(tokenizerJson)) throw new FormatError(`${file}: expected a JSON object, got ${describe(tokenizerJson)}`);
    if (!isPlainObject(tokenizerConfig))
      throw new FormatError(`${fileIn(this.source, TOKENIZER_CONFIG_FILE)}: expected a JSON object, got ${describe(tokenizerConfig)}`);
    this.json = structuredClone(tokenizerJson);
    this.config = structuredClone(tokenizerConfig);
    checkTokenizerJson(this.json, file);
    this.size = jsonVocabSize(this.json, file);
    checkPatterns(this.json, file);
    this.tok = build(this.json, this.config, file);
    // An unk_token missing from the vocabulary makes the library encode unknown text as `undefined` ids.
    const model = this.json.model as Json;
    const unk = model.unk_token;
    if (typeof unk === 'string' && this.tok.token_to_id(unk) === undefined)
      throw new FormatError(`${file}: model.unk_token ${describe(unk)} is not in the vocabulary`);
    const unkId = model.unk_id;
    if (Array.isArray(model.vocab) && unkId !== undefined && unkId !== null) {
      if (typeof unkId !== 'number' || !Number.isSafeInteger(unkId) || unkId < 0 || unkId >= model.vocab.length)
        throw new FormatError(
          `${file}: model.unk_id: expected an index into model.vocab [0, ${model.vocab.length}), got ${describe(unkId)}`,
        );
    }
    this.templateFromFile = opts.chatTemplate ?? null;
  }

  /** Number of ids: one more than the largest id of the vocabulary and the added tokens. */
  get vocabSize(): number {
    return this.size;
  }

  /** The id of the config's bos_token, or undefined when it has none. */
  get bosTokenId(): number | undefined {
    return this.specialId('bos_token');
  }

  /** The id of the config's eos_token, or undefined when it has none. */
  get eosTokenId(): number | undefined {
    return this.specialId('eos_token');
  }

  get bosToken(): string | undefined {
    return tokenContent(this.config.bos_token) ?? undefined;
  }

  get eosToken(): string | undefined {
    return tokenContent(this.config.eos_token) ?? undefined;
  }

  private specialId(key: string): number | undefined {
    const t = tokenContent(this.config[key]);
    return t === null ? undefined : this.tok.token_to_id(t);
  }

  /** The ids of `text`. */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new ArgumentError(`encode: text: expected a string, got ${describe(text)}`);
    if (text.length === 0 && opts.addSpecialTokens === false) return [];
    const ids = [...this.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids];
    // The library may yield ids outside the file's vocabulary (e.g. a Unigram unk_id past its
    // vocab): an id the model has no row for must not leave here.
    for (const [i, id] of ids.entries()) {
      if (!Number.isSafeInteger(id) || id < 0 || id >= this.size)
        throw new FormatError(
          `${fileIn(this.source, TOKENIZER_FILE)}: encoding gave ids[${i}] = ${describe(id)}, not an id of this tokenizer [0, ${this.size})`,
        );
    }
    return ids;
  }

  /** The text of `ids`. Throws ArgumentError for an id that is not an integer in [0, vocabSize). */
  decode(ids: readonly number[] | Int32Array | Uint32Array, opts: DecodeOptions = {}): string {
    const list = Array.from(ids as ArrayLike<number>);
    for (const [i, id] of list.entries()) {
      if (!Number.isSafeInteger(id) || id < 0 || id >= this.size) {
        throw new ArgumentError(`decode: ids[${i}]: expected an integer id in [0, ${this.size}), got ${describe(id)}`);
      }
    }
    if (list.length === 0) return '';
    return this.tok.decode(list, { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }

  /** The id of a token (a vocabulary entry, not text), or undefined. */
  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  /** The token of an id, or undefined. */
  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  /** The chat template: tokenizer_config.json's chat_template (the default one of a list), else chat_template.jinja. */
  get chatTemplate(): string | null {
    return this.templateFromConfig() ?? this.templateFromFile;
  }

  private templateFromConfig(): string | null {
    const t = this.config.chat_template;
    if (typeof t === 'string') return t;
    if (Array.isArray(t)) {
      const d = t.find((e) => isPlainObject(e) && e.name === 'default');
      if (isPlainObject(d) && typeof d.template === 'string') return d.template;
    }
    return null;
  }

  /**
   * Renders the chat template for `messages` with bos_token, eos_token and
   * add_generation_prompt (and `opts.variables`). Throws FormatError when the tokenizer has
   * no chat template or it does not parse, ArgumentError when the template rejects the
   * conversation (raise_exception) or a message is not { role, content }.
   */
  applyChatTemplate(messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): string {
    if (!Array.isArray(messages)) throw new ArgumentError(`applyChatTemplate: messages: expected a list, got ${describe(messages)}`);
    for (const [i, m] of messages.entries()) {
      if (!isPlainObject(m) || typeof m.role !== 'string' || typeof m.content !== 'string') {
        throw new ArgumentError(`applyChatTemplate: messages[${i}]: expected { role: string, content: string }`);
      }
    }
    const source = this.chatTemplate;
    const cfgFile = fileIn(this.source, TOKENIZER_CONFIG_FILE);
    if (source === null)
      throw new FormatError(`${cfgFile}: no chat_template (and no ${CHAT_TEMPLATE_FILE}): this tokenizer has no chat template`);
    if (this.compiled?.source !== source) {
      const origin =
        source === this.templateFromFile && this.templateFromConfig() === null
          ? fileIn(this.source, CHAT_TEMPLATE_FILE)
          : `${cfgFile}: chat_template`;
      this.compiled = { source, template: new BoundedTemplate(source, origin) };
    }
    const vars: Record<string, unknown> = {
      bos_token: this.bosToken ?? '',
      eos_token: this.eosToken ?? '',
      unk_token: tokenContent(this.config.unk_token) ?? '',
      pad_token: tokenContent(this.config.pad_token) ?? '',
      ...(opts.variables ?? {}),
      messages: messages.map((m) => ({ ...m })),
      add_generation_prompt: opts.addGenerationPrompt ?? false,
    };
    let inputChars = 0;
    for (const m of messages) inputChars += m.content.length + m.role.length;
    const limits = { ...defaultTemplateLimits(inputChars, messages.length), ...(opts.limits ?? {}) };
    return this.compiled.template.render(vars, limits);
  }

  /**
   * Makes each of `tokens` a special added token and returns their ids, in order. A token
   * that is already an added token keeps its id; one in the model's vocabulary keeps its id
   * and becomes an added token (so it is no longer split); any other gets the next id
   * (vocabSize, vocabSize + 1, ...). Afterwards each encodes as a single id and decodes back
   * to itself. The caller resizes the model's embeddings to the new `vocabSize`.
   */
  addSpecialTokens(tokens: readonly string[]): number[] {
    if (!Array.isArray(tokens)) throw new ArgumentError(`addSpecialTokens: tokens: expected a list of strings, got ${describe(tokens)}`);
    for (const [i, t] of tokens.entries()) {
      if (typeof t !== 'string' || t.length === 0)
        throw new ArgumentError(`addSpecialTokens: tokens[${i}]: expected a non-empty string, got ${describe(t)}`);
    }
    const json = structuredClone(this.json);
    const config = structuredClone(this.config);
    const added = json.added_tokens as Json[];
    let size = this.size;
    const ids: number[] = [];
    let changed = false;
    for (const t of tokens) {
      const existing = added.find((a) => a.content === t);
      if (existing) {
        ids.push(existing.id as number);
        continue;
      }
      const inVocab = this.tok.token_to_id(t);
      const id = inVocab ?? size++;
      added.push({ id, content: t, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
      ids.push(id);
      changed = true;
      if (isPlainObject(config.added_tokens_decoder)) {
        config.added_tokens_decoder[String(id)] = {
          content: t,
          lstrip: false,
          normalized: false,
          rstrip: false,
          single_word: false,
          special: true,
        };
      }
      const extra = Array.isArray(config.additional_special_tokens) ? (config.additional_special_tokens as unknown[]) : [];
      if (!extra.some((e) => tokenContent(e) === t)) config.additional_special_tokens = [...extra, t];
    }
    if (changed) {
      added.sort((a, b) => (a.id as number) - (b.id as number));
      const tok = build(json, config, fileIn(this.source, TOKENIZER_FILE));
      this.json = json;
      this.config = config;
      this.tok = tok;
      this.size = size;
    }
    return ids;
  }

  /** Copies of the tokenizer.json and tokenizer_config.json objects as they would be saved. */
  toJson(): { tokenizer: Json; config: Json } {
    return { tokenizer: structuredClone(this.json), config: structuredClone(this.config) };
  }

  /**
   * Writes tokenizer.json and tokenizer_config.json (and chat_template.jinja when the
   * template was read from one) into `dir`, creating it; each file is written to a
   * temporary file and renamed into place.
   */
  save(dir: string): void {
    fs.mkdirSync(dir, { recursive: true });
    const write = (name: string, text: string) => {
      const buf = Buffer.from(text, 'utf8');
      atomicWrite(path.join(dir, name), (fd) => {
        let off = 0;
        while (off < buf.length) off += fs.writeSync(fd, buf, off, buf.length - off);
      });
    };
    for (const [name, text] of this.files()) write(name, text);
  }

  /** Writes the files `save` writes into a folder of a sink (src/io/sink.ts: OPFS, memory). */
  async writeTo(dir: DirWriter): Promise<void> {
    for (const [name, text] of this.files()) await dir.write(name, text);
  }

  /** The files `save` writes, by name, as text. */
  private files(): [string, string][] {
    const out: [string, string][] = [
      [TOKENIZER_FILE, JSON.stringify(this.json, null, 2) + '\n'],
      [TOKENIZER_CONFIG_FILE, JSON.stringify(this.config, null, 2) + '\n'],
    ];
    if (this.templateFromFile !== null && this.config.chat_template === undefined) out.push([CHAT_TEMPLATE_FILE, this.templateFromFile]);
    return out;
  }
}

/**
 * Reads the tokenizer of an HF model directory: tokenizer.json (required), tokenizer_config.json
 * (optional; bos/eos tokens and the chat template) and chat_template.jinja (optional).
 * Throws FormatError naming the file when one is missing or malformed. A folder path reads
 * synchronously, as it always did; a source (a URL object, File/Blob objects, bytes, a
 * FileSource: src/io/source.ts) returns a Promise.
 */
export function loadTokenizer(dir: string): MoteTokenizer;
export function loadTokenizer(
  dir: FileSource | URL | DirHandle | ReadonlyMap<string, Blob | FileBytes> | Iterable<Blob>,
): Promise<MoteTokenizer>;
export function loadTokenizer(dir: SourceInput): MoteTokenizer | Promise<MoteTokenizer> {
  if (typeof dir !== 'string') return loadTokenizerFrom(openSource(dir, 'loadTokenizer', 'dir'));
  if (/^https?:\/\//i.test(dir))
    throw new ArgumentError(
      `loadTokenizer: dir: ${dir}: pass new URL(...) to load from a URL (that returns a Promise); a string is a folder path`,
    );
  const file = path.join(dir, TOKENIZER_FILE);
  if (!fs.existsSync(file)) throw noTokenizer(file);
  const json = readJson(file, 'the tokenizer', MAX_TOKENIZER_BYTES);
  const cfgFile = path.join(dir, TOKENIZER_CONFIG_FILE);
  const config = fs.existsSync(cfgFile) ? readJson(cfgFile, 'the tokenizer config', MAX_TOKENIZER_CONFIG_BYTES) : {};
  const tplFile = path.join(dir, CHAT_TEMPLATE_FILE);
  let chatTemplate: string | null = null;
  if (fs.existsSync(tplFile)) {
    // a template longer than MAX_TEMPLATE_CHARS is refused when it is compiled; reading stops at 4 bytes a character
    checkRegularFile(tplFile, 'the chat template', 4 * MAX_TEMPLATE_CHARS);
    chatTemplate = readTextFile(tplFile, 'the chat template', 4 * MAX_TEMPLATE_CHARS);
  }
  return new MoteTokenizer(json, config, { source: dir, chatTemplate });
}

function noTokenizer(file: string): FormatError {
  return new FormatError(
    `${file}: not found: model directory without a tokenizer (expected ${TOKENIZER_FILE} as the HF tokenizers library saves it)`,
  );
}

/** The JSON object checks of readJson, on text already read. */
/** The text of a tokenizer JSON file → its object: a git-LFS pointer, malformed JSON, a non-object and deep nesting are FormatErrors. */
function parseJsonText(text: string, file: string, what: string): Json {
  if (text.startsWith(LFS_POINTER)) {
    throw new FormatError(
      `${file}: is a git-LFS pointer, not ${what} (the repository was cloned without its LFS files); fetch the real file with \`git lfs pull\``,
    );
  }
  return checkJsonObject(parseJson(text, file), file, what);
}

function checkJsonObject(json: unknown, file: string, what: string): Json {
  if (!isPlainObject(json)) throw new FormatError(`${file}: expected a JSON object, got ${describe(json)}`);
  if (jsonDepth(json, MAX_JSON_DEPTH) > MAX_JSON_DEPTH)
    throw new FormatError(`${file}: nested more than ${MAX_JSON_DEPTH} levels deep (${what})`);
  return json;
}

/** loadTokenizer of a source: the same files, bounds and messages, read asynchronously. */
async function loadTokenizerFrom(src: FileSource): Promise<MoteTokenizer> {
  if (!(await src.has(TOKENIZER_FILE))) throw noTokenizer(src.where(TOKENIZER_FILE));
  const json = parseJsonText(
    await src.text(TOKENIZER_FILE, 'the tokenizer', MAX_TOKENIZER_BYTES),
    src.where(TOKENIZER_FILE),
    'the tokenizer',
  );
  const config = (await src.has(TOKENIZER_CONFIG_FILE))
    ? parseJsonText(
        await src.text(TOKENIZER_CONFIG_FILE, 'the tokenizer config', MAX_TOKENIZER_CONFIG_BYTES),
        src.where(TOKENIZER_CONFIG_FILE),
        'the tokenizer config',
      )
    : {};
  const chatTemplate = (await src.has(CHAT_TEMPLATE_FILE))
    ? await src.text(CHAT_TEMPLATE_FILE, 'the chat template', 4 * MAX_TEMPLATE_CHARS)
    : null;
  return new MoteTokenizer(json, config, { source: src.name, chatTemplate });
}

/** Writes `tokenizer` into `dir` (see MoteTokenizer.save). */
export function saveTokenizer(tokenizer: MoteTokenizer, dir: string): void {
  tokenizer.save(dir);
}
