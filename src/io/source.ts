// Where the loaders read from: one read-only folder interface, FileSource, over a Node
// folder, a URL (fetch; HTTP Range requests when the server honours them), a set of
// File/Blob objects (a folder dropped onto a page), bytes in memory, or an OPFS folder.
// loadModel, loadPeftAdapters, loadMote, loadTokenizer and loadCheckpoint take a path (as
// before) or any of these; the safetensors reader works on a source, header first, then
// each tensor's byte range.
//
// Every defect is a FormatError whose message starts with where the file is (a path or a
// URL): missing, too big for what it is, not UTF-8, shorter than it claims, a server that
// answers 404, cuts the body short or stalls. Nothing here imports a Node built-in: a path
// (NodeDirSource) reaches node:fs at its first call (src/io/node_builtins.ts).

import { ArgumentError, FormatError, describe } from '../errors.js';
import { checkRegularFile, parseJson, readTextFile } from './files.js';
import { hasNodeBuiltins, nodeBuiltin } from './node_builtins.js';
import { dirAt, isNotFound, opfsFolder, type DirHandle, type Folder } from './opfs.js';

const fs = nodeBuiltin<typeof import('node:fs')>('node:fs');
const path = nodeBuiltin<typeof import('node:path')>('node:path');

/** A read-only folder of files, named by '/'-separated paths relative to it. */
export interface FileSource {
  /** The folder as messages name it: a path, a URL, '<blobs>', '<bytes>', 'opfs:<name>'. */
  readonly name: string;
  /** How messages name the file `rel` of this folder. */
  where(rel: string): string;
  /** Every file's relative path (sorted). A URL source cannot list: it throws FormatError. */
  list(): Promise<string[]>;
  /** Whether `rel` exists and is a file. */
  has(rel: string): Promise<boolean>;
  /** The size of `rel`; FormatError when it is missing, not a file, or larger than `maxBytes`. `what` says what it is for. */
  size(rel: string, what?: string, maxBytes?: number): Promise<number>;
  /** `length` bytes of `rel` from `offset` (default: the whole file); a file shorter than that is a FormatError. */
  read(rel: string, offset?: number, length?: number, what?: string): Promise<Uint8Array>;
  /** The whole of `rel` as UTF-8 text of at most `maxBytes` (default MAX_TEXT_BYTES). */
  text(rel: string, what?: string, maxBytes?: number): Promise<string>;
  /** The subfolder `rel` as a source of its own. */
  sub(rel: string): FileSource;
}

/** Text files mote reads (configs, tokenizer.json, mote.json, checkpoint state) stay below this. */
export const MAX_TEXT_BYTES = 256 * 1024 * 1024;

function sizeText(n: number): string {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${n} bytes`;
}

/** A relative path that stays inside its folder. */
export function checkRel(rel: string, op = 'source'): string {
  if (
    typeof rel !== 'string' ||
    rel === '' ||
    rel.startsWith('/') ||
    rel.includes('\\') ||
    rel.includes('\0') ||
    rel.split('/').some((p) => p === '' || p === '.' || p === '..')
  ) {
    throw new ArgumentError(`${op}: expected a relative file path inside the folder, got ${describe(rel)}`);
  }
  return rel;
}

export function tooBig(where: string, size: number, what: string, maxBytes: number): FormatError {
  return new FormatError(`${where}: ${sizeText(size)}, more than the ${sizeText(maxBytes)} a ${what} may have`);
}

/** Decodes UTF-8 strictly; invalid bytes are a FormatError naming `where`. */
export function utf8(bytes: Uint8Array, where: string, what: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new FormatError(`${where}: not UTF-8 text (${what})`);
  }
}

/** Shared parts: text() from size() and read(), sub() as a prefixed view. */
export abstract class BaseSource implements FileSource {
  abstract readonly name: string;
  abstract where(rel: string): string;
  abstract list(): Promise<string[]>;
  abstract has(rel: string): Promise<boolean>;
  abstract size(rel: string, what?: string, maxBytes?: number): Promise<number>;
  abstract read(rel: string, offset?: number, length?: number, what?: string): Promise<Uint8Array>;

  async text(rel: string, what = 'a text file', maxBytes = MAX_TEXT_BYTES): Promise<string> {
    await this.size(rel, what, maxBytes);
    return utf8(await this.read(rel, 0, undefined, what), this.where(rel), what);
  }

  sub(rel: string): FileSource {
    return new SubSource(this, checkRel(rel, 'sub'));
  }
}

class SubSource extends BaseSource {
  constructor(
    private readonly parent: FileSource,
    private readonly prefix: string,
  ) {
    super();
  }
  get name(): string {
    return this.parent.where(this.prefix);
  }
  where(rel: string): string {
    return this.parent.where(`${this.prefix}/${rel}`);
  }
  async list(): Promise<string[]> {
    const p = `${this.prefix}/`;
    return (await this.parent.list()).filter((f) => f.startsWith(p)).map((f) => f.slice(p.length));
  }
  has(rel: string): Promise<boolean> {
    return this.parent.has(`${this.prefix}/${checkRel(rel)}`);
  }
  size(rel: string, what?: string, maxBytes?: number): Promise<number> {
    return this.parent.size(`${this.prefix}/${checkRel(rel)}`, what, maxBytes);
  }
  read(rel: string, offset?: number, length?: number, what?: string): Promise<Uint8Array> {
    return this.parent.read(`${this.prefix}/${checkRel(rel)}`, offset, length, what);
  }
  override text(rel: string, what?: string, maxBytes?: number): Promise<string> {
    return this.parent.text(`${this.prefix}/${checkRel(rel)}`, what, maxBytes);
  }
}

/** Checks offset/length against a file of `size` bytes; returns the end. */
function range(where: string, size: number, offset: number, length: number | undefined, what: string): [number, number] {
  if (!Number.isSafeInteger(offset) || offset < 0)
    throw new ArgumentError(`read: offset: expected a non-negative integer, got ${describe(offset)}`);
  const len = length ?? Math.max(0, size - offset);
  if (!Number.isSafeInteger(len) || len < 0)
    throw new ArgumentError(`read: length: expected a non-negative integer, got ${describe(length)}`);
  if (offset + len > size) {
    throw new FormatError(`${where}: ${what}: file ends at byte ${size}, expected ${offset + len - size} more bytes (truncated?)`);
  }
  return [offset, offset + len];
}

/** Files held in a map (bytes in memory, Blobs): lookup, listing and bounds shared; the subclass reads. */
abstract class MapSource<T> extends BaseSource {
  protected readonly files = new Map<string, T>();
  protected abstract byteSize(b: T): number;
  /** Bytes [s, e) of `b` (a copy: callers may keep or reinterpret it). */
  protected abstract bytes(b: T, s: number, e: number, where: string, what: string): Promise<Uint8Array>;

  where(rel: string): string {
    return `${this.name}/${rel}`;
  }
  async list(): Promise<string[]> {
    return [...this.files.keys()].sort();
  }
  async has(rel: string): Promise<boolean> {
    return this.files.has(rel);
  }
  #get(rel: string, what: string): T {
    const b = this.files.get(rel);
    if (b === undefined) throw new FormatError(`${this.where(rel)}: not found (${what})`);
    return b;
  }
  async size(rel: string, what = 'a file', maxBytes = Number.MAX_SAFE_INTEGER): Promise<number> {
    const n = this.byteSize(this.#get(rel, what));
    if (n > maxBytes) throw tooBig(this.where(rel), n, what, maxBytes);
    return n;
  }
  async read(rel: string, offset = 0, length?: number, what = 'a file'): Promise<Uint8Array> {
    const b = this.#get(rel, what);
    const [s, e] = range(this.where(rel), this.byteSize(b), offset, length, what);
    return this.bytes(b, s, e, this.where(rel), what);
  }
}

// ---------------------------------------------------------------------------------------
// In-memory bytes

export type FileBytes = Uint8Array | ArrayBuffer | string;

/** Files held in memory: relative path → bytes (strings are UTF-8). */
export class BytesSource extends MapSource<Uint8Array> {
  constructor(
    files: ReadonlyMap<string, FileBytes> | Readonly<Record<string, FileBytes>>,
    readonly name = '<bytes>',
  ) {
    super();
    const entries = files instanceof Map ? [...files.entries()] : Object.entries(files as Record<string, FileBytes>);
    for (const [rel, b] of entries) {
      checkRel(rel, 'BytesSource');
      if (typeof b === 'string') this.files.set(rel, new TextEncoder().encode(b));
      else if (b instanceof Uint8Array) this.files.set(rel, b);
      else if (b instanceof ArrayBuffer) this.files.set(rel, new Uint8Array(b));
      else throw new ArgumentError(`BytesSource: '${rel}': expected a Uint8Array, ArrayBuffer or string, got ${describe(b)}`);
    }
  }

  protected byteSize(b: Uint8Array): number {
    return b.length;
  }
  protected async bytes(b: Uint8Array, s: number, e: number): Promise<Uint8Array> {
    return b.slice(s, e);
  }
}

// ---------------------------------------------------------------------------------------
// File / Blob

/** A File from an <input webkitdirectory> or a drop carries its path inside the folder. */
interface FileLike {
  readonly name?: string;
  readonly webkitRelativePath?: string;
}

/**
 * Files as Blobs: a map of relative path → Blob, or a list of File objects (their
 * webkitRelativePath, as an <input webkitdirectory> gives them, with the dropped folder's own
 * name taken off when all share it; else their names).
 */
export class BlobSource extends MapSource<Blob> {
  constructor(
    files: ReadonlyMap<string, Blob> | Readonly<Record<string, Blob>> | Iterable<Blob>,
    readonly name = '<blobs>',
  ) {
    super();
    let entries: [string, Blob][];
    if (files instanceof Map) entries = [...files.entries()];
    else if (typeof (files as Iterable<Blob>)[Symbol.iterator] === 'function') {
      const list = [...(files as Iterable<Blob>)];
      const paths = list.map((f, i) => {
        const fl = f as Blob & FileLike;
        const p = fl.webkitRelativePath || fl.name;
        if (typeof p !== 'string' || p === '')
          throw new ArgumentError(`BlobSource: files[${i}]: a File with a name is needed, got ${describe(f)}`);
        return p;
      });
      // <input webkitdirectory> prefixes every path with the chosen folder's name.
      const first = paths[0]?.split('/')[0];
      const strip = paths.length > 0 && paths.every((p) => p.includes('/') && p.split('/')[0] === first);
      entries = list.map((f, i) => [strip ? paths[i]!.slice(first!.length + 1) : paths[i]!, f]);
    } else entries = Object.entries(files as Record<string, Blob>);
    for (const [rel, b] of entries) {
      checkRel(rel, 'BlobSource');
      if (typeof Blob === 'undefined' || !(b instanceof Blob))
        throw new ArgumentError(`BlobSource: '${rel}': expected a Blob or File, got ${describe(b)}`);
      this.files.set(rel, b);
    }
  }

  protected byteSize(b: Blob): number {
    return b.size;
  }
  protected async bytes(b: Blob, s: number, e: number, where: string, what: string): Promise<Uint8Array> {
    try {
      return new Uint8Array(await b.slice(s, e).arrayBuffer());
    } catch (err) {
      throw new FormatError(`${where}: cannot read (${what}): ${(err as Error).message}`);
    }
  }
}

// ---------------------------------------------------------------------------------------
// URL

export interface UrlSourceOptions {
  /** The fetch to use (default: globalThis.fetch). */
  fetch?: typeof fetch;
  /** A request with no bytes arriving for this long is aborted (FormatError). Default 30 s. */
  timeoutMs?: number;
  /** Extra request headers (e.g. Authorization). */
  headers?: Record<string, string>;
  /** Ranged reads: 'auto' (use them when the server answers 206) or 'never'. */
  ranges?: 'auto' | 'never';
}

/** Bytes the first request of a file asks for: a safetensors header usually fits, so a file costs one request plus one per tensor. */
const PROBE_BYTES = 1 << 16;

interface UrlFile {
  size: number;
  /** The whole file, when the server sent it whole (no Range support, or a small file). */
  whole: Uint8Array | null;
  /** The first bytes, kept from the probe. */
  head: Uint8Array;
}

/**
 * Files under a base URL, read with fetch. A file's first request asks for its first 64 KiB
 * with a Range header: a 206 answer gives the size (Content-Range) and every later read asks
 * for just its bytes; a 200 answer (a server without Range support) is the whole file, kept
 * in memory for later reads. Cross-origin, the server must allow the Range request header
 * and expose Content-Range (Access-Control-Expose-Headers); when it does not, files are read
 * whole. 404 is a FormatError naming the URL; a body shorter than its
 * Content-Length or than the range asked for, and a request during which no byte arrives
 * for `timeoutMs`, are FormatErrors too, never a hang.
 */
export class UrlSource extends BaseSource {
  readonly name: string;
  private readonly base: URL;
  private readonly files = new Map<string, Promise<UrlFile>>();
  private readonly fetchFn: typeof fetch;
  private readonly timeoutMs: number;
  private readonly ranges: boolean;
  /** Requests made and body bytes received (for tests and progress). */
  readonly stats = { requests: 0, bytes: 0 };

  constructor(
    base: string | URL,
    private readonly opts: UrlSourceOptions = {},
  ) {
    super();
    let u: URL;
    try {
      u = new URL(String(base), (globalThis as { location?: { href: string } }).location?.href);
    } catch {
      throw new ArgumentError(`UrlSource: base: expected an absolute URL, got ${describe(base)}`);
    }
    if (!u.pathname.endsWith('/')) u.pathname += '/';
    this.base = u;
    this.name = u.href.replace(/\/$/, '');
    const f = opts.fetch ?? globalThis.fetch;
    if (typeof f !== 'function') throw new ArgumentError('UrlSource: no fetch in this runtime; pass opts.fetch');
    // Bound: browsers refuse a window.fetch called with another `this` ("Illegal invocation").
    this.fetchFn = opts.fetch ? f : f.bind(globalThis);
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    if (!(this.timeoutMs > 0)) throw new ArgumentError(`UrlSource: timeoutMs: expected a positive number, got ${describe(opts.timeoutMs)}`);
    this.ranges = (opts.ranges ?? 'auto') !== 'never';
  }

  where(rel: string): string {
    return new URL(rel.split('/').map(encodeURIComponent).join('/'), this.base).href;
  }

  async list(): Promise<string[]> {
    throw new FormatError(`${this.name}: a URL cannot be listed; name the files (e.g. model.safetensors.index.json)`);
  }

  async has(rel: string): Promise<boolean> {
    try {
      await this.file(checkRel(rel), 'a file', Number.MAX_SAFE_INTEGER);
      return true;
    } catch (e) {
      if (e instanceof FormatError && / \(HTTP 404\)/.test(e.message)) return false;
      throw e;
    }
  }

  async size(rel: string, what = 'a file', maxBytes = Number.MAX_SAFE_INTEGER): Promise<number> {
    const f = await this.file(checkRel(rel), what, maxBytes);
    if (f.size > maxBytes) throw tooBig(this.where(rel), f.size, what, maxBytes);
    return f.size;
  }

  async read(rel: string, offset = 0, length?: number, what = 'a file'): Promise<Uint8Array> {
    const f = await this.file(checkRel(rel), what, Number.MAX_SAFE_INTEGER);
    const [s, e] = range(this.where(rel), f.size, offset, length, what);
    if (f.whole) return f.whole.slice(s, e);
    if (e <= f.head.length) return f.head.slice(s, e);
    if (e === s) return new Uint8Array(0);
    const res = await this.request(rel, what, `bytes=${s}-${e - 1}`);
    if (res.status !== 206) {
      await res.body?.cancel().catch(() => {});
      throw new FormatError(
        `${this.where(rel)}: ${what}: asked for bytes ${s}-${e - 1}, the server answered HTTP ${res.status} instead of 206 (the file changed?)`,
      );
    }
    return this.body(rel, res, e - s, what, e - s);
  }

  /** The file's size and, for a server without ranges, its bytes; one request per file, shared by concurrent callers. */
  private file(rel: string, what: string, maxBytes: number): Promise<UrlFile> {
    let p = this.files.get(rel);
    if (!p) {
      p = this.probe(rel, what, maxBytes);
      this.files.set(rel, p);
      p.catch(() => this.files.delete(rel)); // a failure is not cached: a later call asks again
    }
    return p;
  }

  private async probe(rel: string, what: string, maxBytes: number): Promise<UrlFile> {
    const res = await this.request(rel, what, this.ranges ? `bytes=0-${PROBE_BYTES - 1}` : null);
    if (res.status === 206) {
      const total = /\/(\d+)\s*$/.exec(res.headers.get('content-range') ?? '')?.[1];
      if (total === undefined) {
        // No readable size (a cross-origin server that does not expose Content-Range): read whole.
        await res.body?.cancel().catch(() => {});
        return this.whole(rel, await this.request(rel, what, null), what, maxBytes);
      }
      const size = Number(total);
      const head = await this.body(rel, res, Math.min(size, PROBE_BYTES), what, PROBE_BYTES);
      return { size, whole: head.length === size ? head : null, head };
    }
    if (res.status === 416) {
      // Range not satisfiable for bytes=0-…: the file is empty.
      await res.body?.cancel().catch(() => {});
      return { size: 0, whole: new Uint8Array(0), head: new Uint8Array(0) };
    }
    return this.whole(rel, res, what, maxBytes);
  }

  /** A 200 answer: the whole file, checked against Content-Length and `maxBytes`. */
  private async whole(rel: string, res: Response, what: string, maxBytes: number): Promise<UrlFile> {
    const len = res.headers.get('content-length');
    const expected = len !== null && /^\d+$/.test(len) ? Number(len) : null;
    if (expected !== null && expected > maxBytes) {
      await res.body?.cancel().catch(() => {});
      throw tooBig(this.where(rel), expected, what, maxBytes);
    }
    const whole = await this.body(rel, res, expected, what, maxBytes);
    return { size: whole.length, whole, head: whole };
  }

  /** A GET (with `range` when given); network errors, timeouts and non-2xx answers are FormatErrors. */
  private async request(rel: string, what: string, range: string | null): Promise<Response> {
    const url = this.where(rel);
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), this.timeoutMs);
    this.stats.requests++;
    let res: Response;
    try {
      res = await this.fetchFn(url, { headers: { ...this.opts.headers, ...(range ? { Range: range } : {}) }, signal: ac.signal });
    } catch (e) {
      throw new FormatError(
        ac.signal.aborted
          ? `${url}: no answer within ${this.timeoutMs} ms (${what}; the server stalled)`
          : `${url}: cannot fetch (${what}): ${(e as Error).message}`,
      );
    } finally {
      clearTimeout(timer);
    }
    if (res.status === 404 || res.status === 410) {
      await res.body?.cancel().catch(() => {});
      throw new FormatError(`${url}: not found (HTTP ${res.status}) (${what})`);
    }
    if (!res.ok && res.status !== 416) {
      await res.body?.cancel().catch(() => {});
      throw new FormatError(`${url}: HTTP ${res.status} ${res.statusText} (${what})`);
    }
    (res as Response & { abortController?: AbortController }).abortController = ac;
    return res;
  }

  /**
   * Reads a body: exactly `expected` bytes when known (fewer is a truncated response), never
   * more than `maxBytes`; a stall of `timeoutMs` between chunks aborts it.
   */
  private async body(rel: string, res: Response, expected: number | null, what: string, maxBytes: number): Promise<Uint8Array> {
    const url = this.where(rel);
    const ac = (res as Response & { abortController?: AbortController }).abortController;
    if (!res.body) {
      if (expected === 0 || expected === null) return new Uint8Array(0);
      throw new FormatError(`${url}: ${what}: the response has no body, expected ${expected} bytes`);
    }
    const reader = res.body.getReader();
    const chunks: Uint8Array[] = [];
    let got = 0;
    let stalled = false;
    for (;;) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await Promise.race([
          reader.read(),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => {
              stalled = true;
              reject(new Error('stalled'));
            }, this.timeoutMs);
          }),
        ]);
      } catch (e) {
        ac?.abort();
        reader.cancel().catch(() => {});
        throw new FormatError(
          stalled
            ? `${url}: ${what}: no data for ${this.timeoutMs} ms after ${got} bytes (the server stalled)`
            : `${url}: ${what}: the response broke off after ${got} bytes${expected !== null ? ` of ${expected}` : ''} (truncated): ${(e as Error).message}`,
        );
      } finally {
        clearTimeout(timer);
      }
      if (r.done) break;
      got += r.value.length;
      this.stats.bytes += r.value.length;
      if (got > maxBytes || (expected !== null && got > expected)) {
        ac?.abort();
        reader.cancel().catch(() => {});
        if (expected !== null && got > expected)
          throw new FormatError(`${url}: ${what}: the server sent more than the ${expected} bytes asked for`);
        throw tooBig(url, got, what, maxBytes);
      }
      chunks.push(r.value);
    }
    if (expected !== null && got !== expected) {
      throw new FormatError(`${url}: ${what}: the response ended after ${got} of ${expected} bytes (truncated)`);
    }
    if (chunks.length === 1) return chunks[0]!;
    const out = new Uint8Array(got);
    let o = 0;
    for (const c of chunks) {
      out.set(c, o);
      o += c.length;
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------
// A folder on disk (Node)

/**
 * A folder on disk, read with the checks of src/io/files.ts: a missing file, a folder, FIFO,
 * socket or device in place of a file, or a file over its bound is a FormatError naming the
 * path (the same messages as before sources existed).
 */
export class NodeDirSource extends BaseSource {
  constructor(readonly name: string) {
    super();
  }

  where(rel: string): string {
    return path.join(this.name, rel);
  }

  async list(): Promise<string[]> {
    const walk = (prefix: string): string[] => {
      const out: string[] = [];
      for (const e of fs.readdirSync(path.join(this.name, prefix), { withFileTypes: true })) {
        const rel = prefix ? `${prefix}/${e.name}` : e.name;
        if (e.isDirectory()) out.push(...walk(rel));
        else out.push(rel);
      }
      return out;
    };
    try {
      return walk('').sort();
    } catch (e) {
      throw new FormatError(`${this.name}: cannot list the folder: ${(e as Error).message}`);
    }
  }

  /** Whether anything is at `rel` (a folder or FIFO there is then refused by size/read, naming it). */
  async has(rel: string): Promise<boolean> {
    return fs.existsSync(this.where(rel));
  }

  async size(rel: string, what = 'a file', maxBytes = Number.MAX_SAFE_INTEGER): Promise<number> {
    return checkRegularFile(this.where(rel), what, maxBytes);
  }

  async read(rel: string, offset = 0, length?: number, what = 'a file'): Promise<Uint8Array> {
    const file = this.where(rel);
    const size = checkRegularFile(file, what);
    const [s, e] = range(file, size, offset, length, what);
    const out = new Uint8Array(e - s);
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (err) {
      throw new FormatError(`${file}: cannot open (${what}): ${(err as Error).message}`);
    }
    try {
      let done = 0;
      while (done < out.length) {
        const n = fs.readSync(fd, out, done, Math.min(out.length - done, 1 << 30), s + done);
        if (n === 0)
          throw new FormatError(`${file}: ${what}: file ends at byte ${s + done}, expected ${out.length - done} more bytes (truncated?)`);
        done += n;
      }
    } finally {
      fs.closeSync(fd);
    }
    return out;
  }

  override async text(rel: string, what = 'a text file', maxBytes = MAX_TEXT_BYTES): Promise<string> {
    return readTextFile(this.where(rel), what, maxBytes);
  }
}

// ---------------------------------------------------------------------------------------
// OPFS

/** An OPFS folder as a FileSource (the loaders read saved bundles and checkpoints back from it). */
export class OpfsSource implements FileSource {
  readonly name: string;
  private readonly folder: Folder;
  constructor(
    private readonly root: DirHandle,
    label?: string,
  ) {
    this.name = label ?? (root.name ? `opfs:/${root.name}` : 'opfs:');
    this.folder = opfsFolder(root);
  }
  where(rel: string): string {
    return `${this.name}/${rel}`;
  }
  list(): Promise<string[]> {
    return this.folder.list();
  }
  private async blob(rel: string, what: string): Promise<Blob> {
    const ps = checkRel(rel).split('/');
    const d = await dirAt(this.root, ps.slice(0, -1), false);
    try {
      if (!d) throw Object.assign(new Error('not found'), { name: 'NotFoundError' });
      return await (await d.getFileHandle(ps[ps.length - 1]!)).getFile();
    } catch (e) {
      if (isNotFound(e)) throw new FormatError(`${this.where(rel)}: not found (${what})`);
      throw new FormatError(`${this.where(rel)}: cannot read (${what}): ${(e as Error).message}`);
    }
  }
  async has(rel: string): Promise<boolean> {
    try {
      await this.blob(rel, 'a file');
      return true;
    } catch {
      return false;
    }
  }
  async size(rel: string, what = 'a file', maxBytes = Number.MAX_SAFE_INTEGER): Promise<number> {
    const b = await this.blob(rel, what);
    if (b.size > maxBytes) throw new FormatError(`${this.where(rel)}: ${b.size} bytes, more than the ${maxBytes} bytes a ${what} may have`);
    return b.size;
  }
  async read(rel: string, offset = 0, length?: number, what = 'a file'): Promise<Uint8Array> {
    const b = await this.blob(rel, what);
    const end = length === undefined ? b.size : offset + length;
    if (end > b.size)
      throw new FormatError(`${this.where(rel)}: ${what}: file ends at byte ${b.size}, expected ${end - b.size} more bytes (truncated?)`);
    return new Uint8Array(await b.slice(offset, end).arrayBuffer());
  }
  async text(rel: string, what = 'a text file', maxBytes?: number): Promise<string> {
    await this.size(rel, what, maxBytes);
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(await this.read(rel, 0, undefined, what));
    } catch (e) {
      if (e instanceof FormatError) throw e;
      throw new FormatError(`${this.where(rel)}: not UTF-8 text (${what})`);
    }
  }
  sub(rel: string): FileSource {
    const root = this.root;
    const name = this.where(checkRel(rel, 'sub'));
    const parts = rel.split('/');
    // Resolved lazily: the subfolder handle is looked up at the first read.
    let sub: Promise<OpfsSource> | null = null;
    const get = () =>
      (sub ??= dirAt(root, parts, false).then((d) => {
        if (!d) throw new FormatError(`${name}: not found (a folder)`);
        return new OpfsSource(d, name);
      }));
    return {
      name,
      where: (r) => `${name}/${r}`,
      list: async () => (await get()).list(),
      has: async (r) => {
        try {
          return await (await get()).has(r);
        } catch {
          return false;
        }
      },
      size: async (r, w, m) => (await get()).size(r, w, m),
      read: async (r, o, l, w) => (await get()).read(r, o, l, w),
      text: async (r, w, m) => (await get()).text(r, w, m),
      sub: (r) => this.sub(`${rel}/${r}`),
    };
  }
}

// ---------------------------------------------------------------------------------------
// Opening whatever the caller has

/** What the loaders accept: a path (Node), a URL, a FileSource, a map of Blobs or bytes, or a list of Files. */
export type SourceInput = string | URL | FileSource | DirHandle | ReadonlyMap<string, Blob | FileBytes> | Iterable<Blob>;

function isDirHandle(x: unknown): x is DirHandle {
  return (
    typeof x === 'object' && x !== null && (x as DirHandle).kind === 'directory' && typeof (x as DirHandle).getFileHandle === 'function'
  );
}

export function isFileSource(x: unknown): x is FileSource {
  return (
    typeof x === 'object' &&
    x !== null &&
    typeof (x as FileSource).read === 'function' &&
    typeof (x as FileSource).size === 'function' &&
    typeof (x as FileSource).where === 'function' &&
    typeof (x as FileSource).sub === 'function'
  );
}

/**
 * A FileSource for `x`: a FileSource as is; a URL or an http(s):// string → UrlSource; an
 * OPFS FileSystemDirectoryHandle → OpfsSource; a Map of Blobs → BlobSource; a Map of bytes/strings → BytesSource; a list of Files →
 * BlobSource; any other string → a folder on disk (Node only). `op` and `arg` name the
 * argument in errors.
 */
export function openSource(x: unknown, op = 'openSource', arg = 'source', urlOpts?: UrlSourceOptions): FileSource {
  if (isFileSource(x)) return x;
  if (typeof URL !== 'undefined' && x instanceof URL) return new UrlSource(x, urlOpts);
  if (isDirHandle(x)) return new OpfsSource(x);
  if (typeof x === 'string') {
    if (x === '') throw new ArgumentError(`${op}: ${arg}: expected a folder path, URL or source, got ''`);
    if (/^https?:\/\//i.test(x)) return new UrlSource(x, urlOpts);
    if (!hasNodeBuiltins()) {
      throw new ArgumentError(
        `${op}: ${arg}: a file path (${x}) needs Node; in a browser pass a URL, a File/Blob list or map, bytes or an OPFS folder`,
      );
    }
    return new NodeDirSource(x);
  }
  // The constructors name the entry at fault; say which argument it was.
  const named = (make: () => FileSource): FileSource => {
    try {
      return make();
    } catch (e) {
      if (e instanceof ArgumentError) throw new ArgumentError(`${op}: ${arg}: ${e.message}`);
      throw e;
    }
  };
  if (x instanceof Map) {
    const vals = [...x.values()];
    if (typeof Blob !== 'undefined' && vals.length > 0 && vals.every((v) => v instanceof Blob))
      return named(() => new BlobSource(x as Map<string, Blob>));
    return named(() => new BytesSource(x as Map<string, FileBytes>));
  }
  if (typeof x === 'object' && x !== null && typeof (x as Iterable<unknown>)[Symbol.iterator] === 'function')
    return named(() => new BlobSource(x as Iterable<Blob>));
  throw new ArgumentError(
    `${op}: ${arg}: expected a folder path, a URL, a FileSource, a Map of files or a list of Files, got ${describe(x)}`,
  );
}

/**
 * How messages name the file `rel` of the folder a source calls `base`: a URL is resolved
 * against it, a path joined as node:path does (in Node), anything else joined with '/'.
 */
export function fileIn(base: string, rel: string): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(base)) return new URL(rel, base.endsWith('/') ? base : `${base}/`).href;
  if (hasNodeBuiltins() && !base.startsWith('<')) return path.join(base, rel);
  return `${base}/${rel}`;
}

/** Reads and parses a JSON file of a source (bounded; malformed JSON is a FormatError naming it, as for a path). */
export async function readSourceJson(src: FileSource, rel: string, what: string, maxBytes = MAX_TEXT_BYTES): Promise<unknown> {
  return parseJson(await src.text(rel, what, maxBytes), src.where(rel));
}
