// `mote serve`: an OpenAI-compatible HTTP server over the engine (node:http, no framework).
//
//   GET  /v1/models                 the base model and every loaded adapter
//   POST /v1/completions            text prompt → text (stream: server-sent events)
//   POST /v1/chat/completions       chat messages → assistant message (stream: SSE chunks)
//   POST /v1/load_lora_adapter      { lora_name, lora_path } (vLLM's API; needs allowRuntimeLora)
//   POST /v1/unload_lora_adapter    { lora_name }
//
// `model` names the base model, a PEFT adapter or a MoTE bundle. A MoTE chain comes back with
// its steps labelled: the answer step is the message content, the earlier steps are
// `reasoning_content` (as vLLM's reasoning models do), and `mote_steps` lists every step with
// its text — fields that plain clients ignore. Streamed chunks carry `mote_step` in the delta.
//
// Every bad request is a 4xx JSON error in OpenAI's shape ({ error: { message, type, param,
// code } }) and the server keeps serving; a client that disconnects mid-stream frees its slot.
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { MoteError, describe } from '../errors.js';
import { DecodeStream, type MoteTokenizer, type ChatMessage } from '../io/tokenizer.js';
import { plainPrompt } from '../io/prompts.js';
import { promptIds } from '../mote/chains.js';
import type { StopReason, TokenEvent } from '../generate/generate.js';
import { Engine, EngineError, type EngineRequest } from './engine.js';

export interface ServeOptions {
  /** The base model's name in `model` fields (default 'mote'). */
  modelName?: string;
  /** Allow /v1/load_lora_adapter and /v1/unload_lora_adapter (they read folders on this machine). */
  allowRuntimeLora?: boolean;
  /**
   * With allowRuntimeLora: the folder runtime adapters must lie in (a relative lora_path is
   * taken from it; symbolic links are resolved before the check). Default: anywhere.
   */
  loraRoot?: string;
  /** Largest request body in bytes (default 1 MiB). */
  maxBodyBytes?: number;
  /** Largest max_tokens a request may ask for (default 4096). */
  maxTokens?: number;
  /** Milliseconds a request body may take to arrive (default 30 s): a body that never ends is a 408, not a held connection. */
  bodyTimeoutMs?: number;
}

/** lora_path resolved (from `root` when relative, symbolic links followed); a 403 when that leaves `root` (a realpath). */
function insideRoot(root: string, p: string): string {
  let real: string;
  try {
    real = fs.realpathSync(path.resolve(root, p));
  } catch {
    throw new HttpError(400, `lora_path: ${JSON.stringify(p)} is not a folder under the adapter root`, undefined, 'lora_path');
  }
  const rel = path.relative(root, real);
  if (rel === '' || rel === '..' || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel))
    throw new HttpError(
      403,
      `lora_path: ${JSON.stringify(p)} is outside the adapter root (mote serve --lora-root)`,
      undefined,
      'lora_path',
    );
  return real;
}

/** An HTTP error in OpenAI's shape. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type = status === 404
      ? 'not_found_error'
      : status === 403
        ? 'permission_error'
        : status >= 500
          ? 'server_error'
          : 'invalid_request_error',
    readonly param: string | null = null,
    /** The methods a 405 names in its Allow header. */
    readonly allow?: string,
  ) {
    super(message);
  }
}

function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function sendError(res: http.ServerResponse, e: HttpError, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  sendJson(
    res,
    e.status,
    { error: { message: e.message, type: e.type, param: e.param, code: null } },
    {
      ...(e.allow ? { allow: e.allow } : {}),
      ...(e.status === 503 ? { 'retry-after': '1' } : {}), // a full queue: clients back off and retry
      ...headers,
    },
  );
}

async function readBody(req: http.IncomingMessage, res: http.ServerResponse, max: number, timeoutMs: number): Promise<unknown> {
  // requestTimeout is off (streams run long), so the body has its own deadline: a client that
  // never finishes its body gets a 408 and the connection is closed.
  const late = new HttpError(408, `request body not received within ${timeoutMs} ms`);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    sendError(res, late, { connection: 'close' });
    res.once('finish', () => req.socket.destroy());
    req.emit('error', late); // ends the read loop below
  }, timeoutMs);
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const c of req) {
      size += (c as Buffer).length;
      // Past the limit the rest is read and dropped (so the client gets the 413), up to a point.
      if (size > 64 * max) {
        req.socket.destroy();
        throw new HttpError(413, `request body larger than ${max} bytes`);
      }
      if (size <= max) chunks.push(c as Buffer);
    }
  } catch (e) {
    throw timedOut ? late : e;
  } finally {
    clearTimeout(timer);
  }
  if (size > max) throw new HttpError(413, `request body larger than ${max} bytes`);
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `request body is not JSON: ${(e as Error).message}`);
  }
}

const bad = (param: string, message: string) => new HttpError(400, `${param}: ${message}`, 'invalid_request_error', param);

function num(body: Record<string, unknown>, key: string, lo: number, hi: number, dflt: number, integer = false, openLow = false): number {
  const v = body[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || (openLow ? v <= lo : v < lo) || v > hi || (integer && !Number.isInteger(v))) {
    throw bad(key, `expected ${integer ? 'an integer' : 'a number'} in ${openLow ? '(' : '['}${lo}, ${hi}], got ${describe(v)}`);
  }
  return v;
}

function stopStrings(body: Record<string, unknown>): string[] {
  const v = body.stop;
  if (v === undefined || v === null) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.length > 4 || !list.every((s) => typeof s === 'string' && s.length > 0 && s.length <= 256))
    throw bad('stop', 'expected a string or up to 4 non-empty strings');
  return list as string[];
}

/**
 * Request fields this server does not implement, refused when set to anything but their
 * neutral value: ignoring them would change the output without saying so (a logit_bias that
 * bans a token, logprobs the client then reads as missing, a penalty, a tool call).
 */
function refuseUnsupported(body: Record<string, unknown>): void {
  const set = (k: string, neutral: (v: unknown) => boolean) => {
    const v = body[k];
    if (v !== undefined && v !== null && !neutral(v)) throw bad(k, `not supported by this server (got ${describe(v)})`);
  };
  const emptyObject = (v: unknown) => typeof v === 'object' && !Array.isArray(v) && Object.keys(v as object).length === 0;
  set('logit_bias', emptyObject);
  set('logprobs', (v) => v === false);
  set('top_logprobs', (v) => v === 0);
  set('echo', (v) => v === false);
  set('suffix', (v) => v === '');
  set('best_of', (v) => v === 1);
  set('presence_penalty', (v) => v === 0);
  set('frequency_penalty', (v) => v === 0);
  set('repetition_penalty', (v) => v === 1);
  set('min_p', (v) => v === 0);
  set('min_tokens', (v) => v === 0);
  set('tools', (v) => Array.isArray(v) && v.length === 0);
  set('functions', (v) => Array.isArray(v) && v.length === 0);
  set('tool_choice', (v) => v === 'none' || v === 'auto');
  set('response_format', (v) => typeof v === 'object' && (v as { type?: unknown }).type === 'text');
  set('guided_json', () => false);
  set('guided_regex', () => false);
  set('guided_choice', () => false);
  set('guided_grammar', () => false);
  const so = body.stream_options;
  if (so !== undefined && so !== null && (typeof so !== 'object' || Array.isArray(so)))
    throw bad('stream_options', `expected an object, got ${describe(so)}`);
}

/** Chat roles a template may see; anything else is a client error, not a new speaker. */
const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool']);

/** Text of a request as it is generated, by step, with stop strings applied. @internal exported for its tests */
export class TextAssembler {
  readonly parts: { step: number; text: string; stream: DecodeStream }[] = [];
  stopped = false;
  /** The last characters of all the text so far: one fewer than the longest stop string. */
  #tail = '';
  readonly #keep: number;
  constructor(
    readonly tok: MoteTokenizer,
    readonly tagIds: ReadonlySet<number>,
    readonly eos: number | undefined,
    readonly stops: readonly string[],
    readonly trimStart: boolean,
  ) {
    this.#keep = Math.max(0, ...stops.map((x) => x.length - 1));
  }

  /** Adds a token; returns the new text of its step (may be '') and whether a stop string ended the text. */
  push(e: TokenEvent): { step: number; delta: string } {
    let cur = this.parts.at(-1);
    if (!cur || cur.step !== e.step) {
      cur = { step: e.step, text: '', stream: new DecodeStream(this.tok) };
      this.parts.push(cur);
    }
    if (this.stopped || this.tagIds.has(e.token) || e.token === this.eos) return { step: e.step, delta: '' };
    let delta = cur.stream.push(e.token);
    if (delta === '') return { step: e.step, delta };
    // Chat text starts each step clean; a completion continues its prompt as it is.
    if (cur.text === '' && this.trimStart) delta = delta.trimStart();
    // A stop string ends inside the new text (one wholly before it was found when it came).
    const window = this.#tail + delta;
    for (const stop of this.stops) {
      const at = window.indexOf(stop);
      if (at < 0) continue;
      const cut = at - this.#tail.length;
      this.stopped = true;
      if (cut >= 0) delta = delta.slice(0, cut);
      else {
        // it began in text already given: take that back from this step's text (a stream has sent it)
        cur.text = cur.text.slice(0, Math.max(0, cur.text.length + cut));
        delta = '';
      }
      break;
    }
    cur.text += delta;
    this.#tail = this.#keep > 0 ? (this.#tail + delta).slice(-this.#keep) : '';
    return { step: e.step, delta };
  }
}

export interface ServeContext {
  engine: Engine;
  tokenizer: MoteTokenizer;
  /** Step names by index (the MoTE step tags the engine routes by). */
  steps: readonly string[];
  /** Token ids of the step start and end tags (hidden from text). */
  tagIds: ReadonlySet<number>;
}

/** The request handler (exported for tests that want their own server). */
export function serveHandler(ctx: ServeContext, opts: ServeOptions = {}): http.RequestListener {
  const modelName = opts.modelName ?? 'mote';
  const maxBody = opts.maxBodyBytes ?? 1 << 20;
  const maxTokens = opts.maxTokens ?? 4096;
  const bodyTimeout = opts.bodyTimeoutMs ?? 30_000;
  const loraRoot = opts.loraRoot === undefined ? null : fs.realpathSync(opts.loraRoot);
  const created = Math.floor(Date.now() / 1000);
  const { engine, tokenizer } = ctx;
  const eos = tokenizer.eosTokenId;
  let counter = 0;

  const adapterOf = (body: Record<string, unknown>): string | undefined => {
    const m = body.model;
    if (typeof m !== 'string' || m === '')
      throw bad('model', `expected a model name (${[modelName, ...engine.adapters().map((a) => a.name)].join(', ')})`);
    if (m === modelName) return undefined;
    if (!engine.adapters().some((a) => a.name === m))
      throw new HttpError(
        404,
        `The model '${m}' does not exist (served: ${[modelName, ...engine.adapters().map((a) => a.name)].join(', ')})`,
        'not_found_error',
        'model',
      );
    return m;
  };
  const isMote = (adapter: string | undefined) =>
    adapter !== undefined && engine.adapters().find((a) => a.name === adapter)?.kind === 'mote';
  const finishReason = (r: StopReason, stopped: boolean): string => (stopped || r === 'stop' || r === 'step' ? 'stop' : 'length');
  const label = (k: number) => (k < 0 ? null : (ctx.steps[k] ?? `step ${k}`));

  async function generateFor(
    res: http.ServerResponse,
    req: http.IncomingMessage,
    kind: 'chat' | 'text',
    body: Record<string, unknown>,
  ): Promise<void> {
    const adapter = adapterOf(body);
    const mote = isMote(adapter);
    refuseUnsupported(body);
    let prompt: number[];
    if (kind === 'chat') {
      const msgs = body.messages;
      if (!Array.isArray(msgs) || msgs.length === 0) throw bad('messages', 'expected a non-empty list of { role, content }');
      const messages: ChatMessage[] = msgs.map((m, i) => {
        if (!m || typeof m !== 'object' || Array.isArray(m)) throw bad(`messages[${i}]`, `expected { role, content }, got ${describe(m)}`);
        const role = (m as { role: unknown }).role;
        if (typeof role !== 'string' || !ROLES.has(role))
          throw bad(`messages[${i}].role`, `expected one of ${[...ROLES].join(', ')}, got ${describe(role)}`);
        const c = (m as { content: unknown }).content;
        // Content parts ([{ type: 'text', text }]) are joined; other part types are refused.
        const content =
          typeof c === 'string'
            ? c
            : Array.isArray(c) && c.every((p) => p && typeof p === 'object' && p.type === 'text' && typeof p.text === 'string')
              ? c.map((p) => p.text).join('')
              : null;
        if (content === null) throw bad(`messages[${i}].content`, 'expected a string or text parts');
        return { role: (m as ChatMessage).role, content };
      });
      if (messages.at(-1)!.role !== 'user') throw bad('messages', "the last message must be the user's");
      try {
        prompt = promptIds(tokenizer, { prompt: plainPrompt(messages), messages });
      } catch (e) {
        throw bad('messages', (e as Error).message);
      }
    } else {
      const p = body.prompt;
      if (typeof p !== 'string' || p === '')
        throw bad(
          'prompt',
          Array.isArray(p) ? 'one prompt per request is supported (send several requests)' : 'expected a non-empty string',
        );
      prompt = tokenizer.encode(p, { addSpecialTokens: true });
    }
    const n = num(body, 'n', 1, 1, 1, true);
    void n;
    const maxNew = num(
      body,
      kind === 'chat' && body.max_completion_tokens !== undefined ? 'max_completion_tokens' : 'max_tokens',
      1,
      maxTokens,
      kind === 'chat' ? Math.min(maxTokens, 512) : 16,
      true,
    );
    const temperature = num(body, 'temperature', 0, 2, 1);
    const topP = num(body, 'top_p', 0, 1, 1, false, true);
    // vLLM's extension: -1 or 0 is every token.
    const topK = num(body, 'top_k', -1, 2 ** 31 - 1, -1, true);
    const seed = num(body, 'seed', 0, 2 ** 32 - 1, 0, true);
    const stops = stopStrings(body);
    const stream = body.stream === true;
    if (body.stream !== undefined && body.stream !== null && typeof body.stream !== 'boolean') throw bad('stream', 'expected a boolean');
    const context = engine.model.config.maxPositionEmbeddings;
    if (prompt.length >= context)
      throw bad(kind === 'chat' ? 'messages' : 'prompt', `${prompt.length} tokens, but the model's context is ${context}`);

    const abort = new AbortController();
    const er: EngineRequest = {
      prompt,
      maxNewTokens: maxNew,
      seed,
      signal: abort.signal,
      ...(eos !== undefined ? { stop: [eos] } : {}),
      ...(temperature > 0 ? { sampling: { temperature, topP, ...(topK > 0 ? { topK } : {}) } } : {}),
      ...(adapter !== undefined ? { adapter } : {}),
      ...(mote ? { stopAfterStep: ctx.steps.length - 1 } : {}),
    };
    let s;
    try {
      s = engine.submit(er);
    } catch (e) {
      if (e instanceof EngineError) throw new HttpError(e.status, e.message);
      throw e;
    }
    // A client that goes away frees its slot.
    res.on('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    // …including one that left while its body was parsed (its 'close' has fired already).
    if (req.socket.destroyed || res.destroyed) abort.abort();
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-mote${(++counter).toString(36)}${Date.now().toString(36)}`;
    const text = new TextAssembler(tokenizer, ctx.tagIds, eos, stops, kind === 'chat');
    const model = typeof body.model === 'string' ? body.model : modelName;
    const object = kind === 'chat' ? 'chat.completion' : 'text_completion';
    const answerStep = ctx.steps.length - 1;
    const chunk = (delta: Record<string, unknown> | string, finish: string | null) =>
      JSON.stringify(
        kind === 'chat'
          ? { id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }] }
          : { id, object, created, model, choices: [{ index: 0, text: delta, finish_reason: finish, logprobs: null }] },
      );
    if (stream) {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
      if (kind === 'chat') res.write(`data: ${chunk({ role: 'assistant', content: '' }, null)}\n\n`);
    }
    for await (const e of s) {
      const { step, delta } = text.push(e);
      if (text.stopped) s.cancel();
      if (!stream || delta === '') continue;
      if (kind === 'chat') {
        const reasoning = mote && step !== answerStep;
        res.write(
          `data: ${chunk({ [reasoning ? 'reasoning_content' : 'content']: delta, ...(mote ? { mote_step: label(step) } : {}) }, null)}\n\n`,
        );
      } else res.write(`data: ${chunk(delta, null)}\n\n`);
    }
    const result = await s.result;
    if (result.stopReason === 'aborted' && !text.stopped) {
      res.end(); // the client left
      return;
    }
    const finish = finishReason(result.stopReason, text.stopped);
    const usage = {
      prompt_tokens: prompt.length,
      completion_tokens: result.tokens.length,
      total_tokens: prompt.length + result.tokens.length,
    };
    if (stream) {
      res.write(`data: ${chunk(kind === 'chat' ? {} : '', finish)}\n\n`);
      if ((body.stream_options as { include_usage?: unknown } | null | undefined)?.include_usage === true)
        res.write(
          `data: ${JSON.stringify({ id, object: kind === 'chat' ? 'chat.completion.chunk' : object, created, model, choices: [], usage })}\n\n`,
        );
      res.end('data: [DONE]\n\n');
      return;
    }
    const steps = text.parts
      .filter((p) => p.text !== '')
      .map((p) => ({ step: label(p.step), expert: p.step < 0 ? 'shared' : `${label(p.step)} + shared`, text: p.text.trim() }));
    const all = text.parts.map((p) => p.text).join('');
    if (kind === 'chat') {
      const answer = mote
        ? text.parts
            .filter((p) => p.step === answerStep)
            .map((p) => p.text)
            .join('')
            .trim()
        : all.trim();
      const reasoning = mote
        ? text.parts
            .filter((p) => p.step !== answerStep && p.text !== '')
            .map((p) => `${label(p.step) ?? 'outside any step'}: ${p.text.trim()}`)
            .join('\n')
        : '';
      sendJson(res, 200, {
        id,
        object,
        created,
        model,
        choices: [
          {
            index: 0,
            message: { role: 'assistant', content: answer, ...(mote ? { reasoning_content: reasoning, mote_steps: steps } : {}) },
            finish_reason: finish,
            logprobs: null,
          },
        ],
        usage,
      });
    } else {
      sendJson(res, 200, {
        id,
        object,
        created,
        model,
        choices: [{ index: 0, text: all, finish_reason: finish, logprobs: null, ...(mote ? { mote_steps: steps } : {}) }],
        usage,
      });
    }
  }

  async function route(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    // The path alone: `new URL` throws on targets such as '//%%' (a 500 before).
    const p = (req.url ?? '/').split(/[?#]/, 1)[0]!.replace(/\/+$/, '');
    const post = ['/v1/completions', '/v1/chat/completions', '/v1/load_lora_adapter', '/v1/unload_lora_adapter'];
    if (p === '/v1/models' || p === '/health') {
      if (req.method !== 'GET' && req.method !== 'HEAD')
        throw new HttpError(405, `${req.method} ${p}: use GET`, undefined, null, 'GET, HEAD');
      if (p === '/health') return sendJson(res, 200, { status: 'ok', ...engine.load });
      return sendJson(res, 200, {
        object: 'list',
        data: [
          { id: modelName, object: 'model', created, owned_by: 'mote', root: modelName, parent: null },
          ...engine.adapters().map((a) => ({
            id: a.name,
            object: 'model',
            created,
            owned_by: 'mote',
            root: a.dir,
            parent: modelName,
            mote: a.kind === 'mote' ? { steps: a.steps, alpha: a.alpha } : null,
          })),
        ],
      });
    }
    if (!post.includes(p)) throw new HttpError(404, `no route ${req.method} ${p}`);
    if (req.method !== 'POST') throw new HttpError(405, `${req.method} ${p}: use POST`, undefined, null, 'POST');
    const body = await readBody(req, res, maxBody, bodyTimeout);
    if (!body || typeof body !== 'object' || Array.isArray(body)) throw new HttpError(400, 'request body: expected a JSON object');
    const b = body as Record<string, unknown>;
    if (p === '/v1/completions') return generateFor(res, req, 'text', b);
    if (p === '/v1/chat/completions') return generateFor(res, req, 'chat', b);
    if (!opts.allowRuntimeLora)
      throw new HttpError(403, 'loading and unloading adapters at run time is off (start mote serve with --allow-runtime-lora)');
    const name = b.lora_name;
    if (typeof name !== 'string' || name === '') throw bad('lora_name', 'expected a name');
    try {
      if (p === '/v1/load_lora_adapter') {
        if (typeof b.lora_path !== 'string' || b.lora_path === '') throw bad('lora_path', 'expected a folder path');
        if (name === modelName) throw new HttpError(409, `lora_name: '${name}' is the base model's name`);
        await engine.addAdapter(name, loraRoot ? insideRoot(loraRoot, b.lora_path) : b.lora_path);
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(`Success: LoRA adapter '${name}' added successfully.`);
      } else {
        await engine.removeAdapter(name);
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(`Success: LoRA adapter '${name}' removed successfully.`);
      }
    } catch (e) {
      if (e instanceof EngineError) throw new HttpError(e.status, e.message);
      if (e instanceof MoteError) throw new HttpError(400, e.message);
      throw e;
    }
  }

  return (req, res) => {
    route(req, res).catch((e: unknown) => {
      if (e instanceof HttpError) return sendError(res, e);
      if (e instanceof EngineError) return sendError(res, new HttpError(e.status, e.message));
      if (e instanceof MoteError) return sendError(res, new HttpError(400, e.message));
      if (process.env.MOTE_DEBUG) console.error(e);
      sendError(res, new HttpError(500, `internal error: ${(e as Error)?.message ?? String(e)}`));
    });
  };
}

/** Starts the server; resolves with it and its URL once listening. */
export async function startServer(
  ctx: ServeContext,
  opts: ServeOptions & { host?: string; port?: number } = {},
): Promise<{ server: http.Server; url: string }> {
  const server = http.createServer(serveHandler(ctx, opts));
  server.requestTimeout = 0; // long generations stream; disconnects are handled per request
  server.headersTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 8000, opts.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const a = server.address() as AddressInfo;
  const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  return { server, url: `http://${host}:${a.port}` };
}
