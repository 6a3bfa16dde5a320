// Where the savers write: saveMote, saveCheckpoint (and, through them, the PEFT adapter
// folders of every expert) take a folder path, as before, or a FileSink:
//   - NodeDirSink: a folder on disk, written by replaceDirAtomically (src/io/atomic_dir.ts);
//   - OpfsSink: a folder of the browser's Origin Private File System;
//   - MemorySink: files in memory, to read back (toSource) or hand to the user as one
//     download (toTar: a POSIX ustar archive; `tar -xf` and every archive tool open it).
// All three keep mote's ownership rules: the folder gets mote-written.json (format
// 'mote-written', the kind of folder, every file with its size and SHA-256); a non-empty
// folder without it (or of another kind) is refused unless overwrite, and then none of its
// files is deleted (one mote would replace is kept as <name>.before-mote).
//
// OPFS has no atomic rename of a folder. OpfsSink writes the new folder completely into
// `<name>.tmp-<random>` (in-progress marker first, complete marker last), then, when the
// target may be replaced as a whole, removes it and moves the temporary into its place
// (FileSystemHandle.move where the browser has it, else a copy file by file, marker last).
// A tab closed in between leaves a complete `<name>.tmp-*` beside the target, as the Node
// writer leaves `<dir>.tmp-<pid>`. Node tests run OpfsSink against a small in-memory
// stand-in of FileSystemDirectoryHandle (test/io_sink.test.ts); the real API is exercised
// only in a browser.

import { ArgumentError, FormatError, describe } from '../errors.js';
import { BytesSource, OpfsSource, checkRel, type FileSource } from './source.js';
import { dirAt, opfsFolder, type DirHandle, type Folder } from './opfs.js';

export { OpfsSource };
export type { DirHandle, FileHandle } from './opfs.js';
import {
  MARKER_FILE,
  MARKER_FORMAT,
  checkReplaceable,
  replaceDirAtomically,
  type Marker,
  type MarkerFile,
  type ReplaceDirOptions,
} from './atomic_dir.js';
import { hasNodeBuiltins, nodeBuiltin } from './node_builtins.js';

const fs = nodeBuiltin<typeof import('node:fs')>('node:fs');
const nodePath = nodeBuiltin<typeof import('node:path')>('node:path');

/** What a file is written from: bytes, UTF-8 text, or parts written one after another. */
export type FileData = Uint8Array | string | readonly Uint8Array[];

/** The folder a saver fills: files by '/'-separated relative paths (parent folders are made as needed). */
export interface DirWriter {
  /** How messages name the file `rel`. */
  where(rel: string): string;
  write(rel: string, data: FileData): Promise<void>;
  /** The subfolder `rel`. */
  sub(rel: string): DirWriter;
  /** The folder on disk this writes into, for a NodeDirSink (nested saves keep their own marker there). */
  readonly path?: string;
}

export interface SinkOptions {
  /** What mote writes ('mote-checkpoint', 'mote-bundle', 'peft-export', 'hf-model'). */
  kind: string;
  overwrite?: boolean;
  /** Recognises mote's own layout from before the marker (Node folders). */
  legacy?: ReplaceDirOptions['legacy'];
  conflicts?: (relPath: string) => boolean;
}

/** A place a saver writes one folder to, as a whole. */
export interface FileSink {
  readonly name: string;
  /** Throws ArgumentError now when the folder may not be written (call before long work). */
  check(op: string, opts: SinkOptions): Promise<void>;
  /** Writes the folder with `fill` and puts it in place under the rules above. */
  replaceDir(op: string, opts: SinkOptions, fill: (w: DirWriter) => Promise<void>): Promise<void>;
}

function parts(data: FileData): Uint8Array[] {
  if (typeof data === 'string') return [new TextEncoder().encode(data)];
  if (data instanceof Uint8Array) return [data];
  return [...data];
}

function concat(ps: readonly Uint8Array[]): Uint8Array {
  if (ps.length === 1) return ps[0]!;
  const out = new Uint8Array(ps.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of ps) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

async function sha256(bytes: Uint8Array): Promise<string> {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) throw new ArgumentError('writing a folder needs crypto.subtle (a secure context in a browser) for its SHA-256 marker');
  const d = new Uint8Array(await subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Checks every file a marker lists against a source: present, the size written and the
 * SHA-256 written. Returns why not, or null.
 */
export async function verifyListedFiles(src: FileSource, files: unknown): Promise<string | null> {
  if (typeof files !== 'object' || files === null || Array.isArray(files)) return `${src.where(MARKER_FILE)}: files: expected an object`;
  for (const [rel, f] of Object.entries(files as Record<string, MarkerFile>)) {
    try {
      checkRel(rel);
    } catch {
      return `${src.where(MARKER_FILE)}: lists '${rel}', not a path inside the folder`;
    }
    if (!(await src.has(rel))) return `${src.where(rel)}: missing`;
    const size = await src.size(rel);
    if (size !== f.bytes) return `${src.where(rel)}: ${size} bytes, ${f.bytes} were written`;
    if ((await sha256(await src.read(rel))) !== f.sha256) return `${src.where(rel)}: its contents differ from what was written (SHA-256)`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------
// Deciding (the rules of src/io/atomic_dir.ts, on a listing instead of a folder on disk)

type Plan = { how: 'create' } | { how: 'swap'; owned: Set<string> } | { how: 'merge'; owned: Set<string> };

function parseMarker(bytes: Uint8Array | null): Marker | null {
  if (!bytes) return null;
  try {
    const j = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes)) as Marker;
    if (!j || j.format !== MARKER_FORMAT || typeof j.kind !== 'string' || typeof j.complete !== 'boolean') return null;
    if (typeof j.files !== 'object' || j.files === null || Array.isArray(j.files)) return null;
    return j;
  } catch {
    return null;
  }
}

function decide(op: string, name: string, existing: readonly string[], marker: Marker | null, opts: SinkOptions): Plan {
  if (existing.length === 0) return { how: 'create' };
  const owned = marker ? new Set([...Object.keys(marker.files), MARKER_FILE]) : null;
  const sameKind = marker !== null && marker.kind === opts.kind;
  if (!sameKind && !opts.overwrite) {
    const what = marker
      ? `holds a mote ${marker.kind}, not a ${opts.kind}`
      : `is not empty and was not written by mote (no ${MARKER_FILE})`;
    throw new ArgumentError(
      `${op}: ${name} ${what}; refusing to replace it. Pass { overwrite: true } to write mote's files into it: files mote did not write are kept (one it would replace is renamed to <name>.before-mote), never deleted`,
    );
  }
  if (owned && existing.every((f) => owned.has(f))) return { how: 'swap', owned };
  return { how: 'merge', owned: owned ?? new Set() };
}

/**
 * Puts `incoming` (complete, marker included) into `target` file by file: foreign files it
 * would replace (or that `conflicts` names) are first copied to <name>.before-mote; mote's
 * files that are no longer written are removed; the marker goes last.
 */
async function mergeInto(target: Folder, incoming: Map<string, () => Promise<Uint8Array>>, plan: Plan, opts: SinkOptions): Promise<void> {
  const owned = plan.how === 'create' ? new Set<string>() : plan.owned;
  const existing = await target.list();
  const have = new Set(existing);
  for (const rel of existing) {
    if (owned.has(rel) || !(incoming.has(rel) || opts.conflicts?.(rel))) continue;
    let aside = `${rel}.before-mote`;
    for (let i = 2; have.has(aside); i++) aside = `${rel}.before-mote-${i}`;
    const bytes = await target.read(rel);
    if (bytes) await target.write(aside, [bytes]);
    have.add(aside);
    await target.remove(rel);
  }
  for (const [rel, get] of incoming) if (rel !== MARKER_FILE) await target.write(rel, [await get()]);
  for (const rel of owned) if (!incoming.has(rel) && rel !== MARKER_FILE) await target.remove(rel);
  const marker = incoming.get(MARKER_FILE);
  if (marker) await target.write(MARKER_FILE, [await marker()]);
}

function markerBytes(kind: string, files: Record<string, MarkerFile>, complete: boolean): Uint8Array {
  const m: Marker = { format: MARKER_FORMAT, version: 1, kind, complete, files };
  return new TextEncoder().encode(JSON.stringify(m, null, 2) + '\n');
}

function checkSinkOptions(op: string, opts: SinkOptions): void {
  if (!opts || typeof opts.kind !== 'string')
    throw new ArgumentError(`${op}: sink options: expected { kind, overwrite? }, got ${describe(opts)}`);
  if (opts.overwrite !== undefined && typeof opts.overwrite !== 'boolean')
    throw new ArgumentError(`${op}: overwrite: expected true or false, got ${typeof opts.overwrite}`);
}

// ---------------------------------------------------------------------------------------
// Node folder

class NodeDirWriter implements DirWriter {
  constructor(readonly path: string) {}
  where(rel: string): string {
    return nodePath.join(this.path, rel);
  }
  async write(rel: string, data: FileData): Promise<void> {
    const file = this.where(checkRel(rel, 'write'));
    fs.mkdirSync(nodePath.dirname(file), { recursive: true });
    const fd = fs.openSync(file, 'w');
    try {
      for (const p of parts(data)) {
        let done = 0;
        while (done < p.length) done += fs.writeSync(fd, p, done, Math.min(p.length - done, 1 << 30));
      }
    } finally {
      fs.closeSync(fd);
    }
  }
  sub(rel: string): DirWriter {
    return new NodeDirWriter(this.where(checkRel(rel, 'sub')));
  }
}

/** A folder on disk: replaceDirAtomically (the Node behaviour of every saver, unchanged). */
export class NodeDirSink implements FileSink {
  constructor(readonly name: string) {}
  async check(op: string, opts: SinkOptions): Promise<void> {
    checkReplaceable(op, this.name, opts);
  }
  async replaceDir(op: string, opts: SinkOptions, fill: (w: DirWriter) => Promise<void>): Promise<void> {
    checkSinkOptions(op, opts);
    await replaceDirAtomically(op, this.name, opts, (tmp) => fill(new NodeDirWriter(tmp)));
  }
}

// ---------------------------------------------------------------------------------------
// Memory

class MemoryWriter implements DirWriter {
  constructor(
    private readonly files: Map<string, Uint8Array>,
    private readonly prefix: string,
    private readonly label: string,
  ) {}
  where(rel: string): string {
    return `${this.label}/${this.prefix}${rel}`;
  }
  async write(rel: string, data: FileData): Promise<void> {
    this.files.set(this.prefix + checkRel(rel, 'write'), concat(parts(data)));
  }
  sub(rel: string): DirWriter {
    return new MemoryWriter(this.files, `${this.prefix}${checkRel(rel, 'sub')}/`, this.label);
  }
}

/**
 * A folder in memory. After a save, `files` holds what was written (mote-written.json
 * included); `toSource()` reads it back with the loaders, `toTar()` packs it for a download.
 */
export class MemorySink implements FileSink {
  files = new Map<string, Uint8Array>();
  constructor(readonly name = '<memory>') {}

  async check(op: string, opts: SinkOptions): Promise<void> {
    decide(op, this.name, [...this.files.keys()], parseMarker(this.files.get(MARKER_FILE) ?? null), opts);
  }

  async replaceDir(op: string, opts: SinkOptions, fill: (w: DirWriter) => Promise<void>): Promise<void> {
    checkSinkOptions(op, opts);
    await this.check(op, opts);
    const fresh = new Map<string, Uint8Array>();
    await fill(new MemoryWriter(fresh, '', this.name));
    const listed: Record<string, MarkerFile> = {};
    for (const rel of [...fresh.keys()].sort()) {
      if (rel === MARKER_FILE) continue;
      listed[rel] = { bytes: fresh.get(rel)!.length, sha256: await sha256(fresh.get(rel)!) };
    }
    fresh.set(MARKER_FILE, markerBytes(opts.kind, listed, true));
    const plan = decide(op, this.name, [...this.files.keys()], parseMarker(this.files.get(MARKER_FILE) ?? null), opts);
    if (plan.how !== 'merge') {
      this.files = fresh;
      return;
    }
    const files = this.files;
    await mergeInto(
      {
        list: async () => [...files.keys()],
        read: async (rel) => files.get(rel) ?? null,
        write: async (rel, data) => {
          files.set(rel, concat(data));
        },
        remove: async (rel) => {
          files.delete(rel);
        },
      },
      new Map([...fresh].map(([rel, b]) => [rel, async () => b])),
      plan,
      opts,
    );
  }

  /** The files as a source (for the loaders). */
  toSource(): FileSource {
    return new BytesSource(this.files, this.name);
  }

  /** The files as one POSIX ustar archive (see tarFiles). */
  toTar(): Uint8Array {
    return tarFiles(this.files);
  }
}

// ---------------------------------------------------------------------------------------
// OPFS

class OpfsWriter implements DirWriter {
  constructor(
    private readonly folder: Folder,
    private readonly prefix: string,
    private readonly label: string,
    private readonly written: Map<string, MarkerFile>,
  ) {}
  where(rel: string): string {
    return `${this.label}/${this.prefix}${rel}`;
  }
  async write(rel: string, data: FileData): Promise<void> {
    const full = this.prefix + checkRel(rel, 'write');
    const ps = parts(data);
    const bytes = concat(ps);
    await this.folder.write(full, [bytes]);
    this.written.set(full, { bytes: bytes.length, sha256: await sha256(bytes) });
  }
  sub(rel: string): DirWriter {
    return new OpfsWriter(this.folder, `${this.prefix}${checkRel(rel, 'sub')}/`, this.label, this.written);
  }
}

/**
 * The folder `name` of an OPFS directory (default: the origin's root,
 * navigator.storage.getDirectory()). See the header for how it is replaced.
 */
export class OpfsSink implements FileSink {
  readonly name: string;
  constructor(
    private readonly parent: DirHandle,
    private readonly folderName: string,
  ) {
    checkRel(folderName, 'OpfsSink');
    if (folderName.includes('/')) throw new ArgumentError(`OpfsSink: name: expected one folder name, got ${describe(folderName)}`);
    this.name = `opfs:${parent.name ? `${parent.name}/` : '/'}${folderName}`;
  }

  /** The sink `name` at the origin's OPFS root. */
  static async open(name: string): Promise<OpfsSink> {
    const storage = (globalThis as { navigator?: { storage?: { getDirectory?: () => Promise<DirHandle> } } }).navigator?.storage;
    if (typeof storage?.getDirectory !== 'function')
      throw new ArgumentError('OpfsSink: this runtime has no Origin Private File System (navigator.storage.getDirectory)');
    return new OpfsSink(await storage.getDirectory(), name);
  }

  private async target(): Promise<{ handle: DirHandle | null; files: string[]; marker: Marker | null }> {
    const handle = await dirAt(this.parent, [this.folderName], false);
    if (!handle) return { handle, files: [], marker: null };
    const f = opfsFolder(handle);
    return { handle, files: await f.list(), marker: parseMarker(await f.read(MARKER_FILE)) };
  }

  async check(op: string, opts: SinkOptions): Promise<void> {
    const t = await this.target();
    decide(op, this.name, t.files, t.marker, opts);
  }

  async replaceDir(op: string, opts: SinkOptions, fill: (w: DirWriter) => Promise<void>): Promise<void> {
    checkSinkOptions(op, opts);
    await this.check(op, opts);
    const tmpName = `${this.folderName}.tmp-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
    const tmpHandle = (await dirAt(this.parent, [tmpName], true))!;
    const tmp = opfsFolder(tmpHandle);
    const written = new Map<string, MarkerFile>();
    try {
      await tmp.write(MARKER_FILE, [markerBytes(opts.kind, {}, false)]);
      await fill(new OpfsWriter(tmp, '', `opfs:${tmpName}`, written));
      const listed = Object.fromEntries(
        [...written].filter(([rel]) => rel !== MARKER_FILE).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
      );
      await tmp.write(MARKER_FILE, [markerBytes(opts.kind, listed, true)]);
    } catch (e) {
      await this.parent.removeEntry(tmpName, { recursive: true }).catch(() => {});
      throw e;
    }
    // Decide again: the folder may have changed while fill ran.
    const t = await this.target();
    let plan: Plan;
    try {
      plan = decide(op, this.name, t.files, t.marker, opts);
    } catch (e) {
      await this.parent.removeEntry(tmpName, { recursive: true }).catch(() => {});
      throw e;
    }
    if (plan.how !== 'merge' && typeof tmpHandle.move === 'function') {
      if (t.handle) await this.parent.removeEntry(this.folderName, { recursive: true });
      await tmpHandle.move(this.parent, this.folderName);
      return;
    }
    // No folder move here (or foreign files to keep): copy file by file, the marker last.
    const incoming = new Map<string, () => Promise<Uint8Array>>();
    for (const rel of await tmp.list()) incoming.set(rel, async () => (await tmp.read(rel))!);
    const target = opfsFolder((await dirAt(this.parent, [this.folderName], true))!);
    if (plan.how === 'swap') for (const rel of plan.owned) if (rel !== MARKER_FILE) await target.remove(rel);
    await mergeInto(target, incoming, plan, opts);
    await this.parent.removeEntry(tmpName, { recursive: true });
  }
}

// ---------------------------------------------------------------------------------------
// Choosing a sink, and downloads

/** A FileSink for `x`: a FileSink as is, a string → NodeDirSink (Node only). */
export function openSink(x: unknown, op: string, arg = 'dir'): FileSink {
  if (typeof x === 'string') {
    if (x === '') throw new ArgumentError(`${op}: ${arg}: expected a directory path, got ''`);
    if (!hasNodeBuiltins())
      throw new ArgumentError(`${op}: ${arg}: a directory path (${x}) needs Node; in a browser pass an OpfsSink or a MemorySink`);
    return new NodeDirSink(x);
  }
  if (
    typeof x === 'object' &&
    x !== null &&
    typeof (x as FileSink).replaceDir === 'function' &&
    typeof (x as FileSink).check === 'function'
  )
    return x as FileSink;
  throw new ArgumentError(`${op}: ${arg}: expected a directory path or a FileSink (MemorySink, OpfsSink), got ${describe(x)}`);
}

/**
 * Packs files into one POSIX ustar archive (512-byte headers, names up to 255 bytes split
 * into prefix/name, regular files mode 0644, mtime 0 so that equal files give equal bytes).
 * Enough to hand a saved folder to the user as one download (new Blob([tar])).
 */
export function tarFiles(files: ReadonlyMap<string, Uint8Array>): Uint8Array {
  const enc = new TextEncoder();
  const blocks: Uint8Array[] = [];
  for (const rel of [...files.keys()].sort()) {
    const data = files.get(rel)!;
    const nameBytes = enc.encode(rel);
    let name = rel,
      prefix = '';
    if (nameBytes.length > 100) {
      const cut = rel.lastIndexOf('/', rel.length - 1);
      prefix = rel.slice(0, cut);
      name = rel.slice(cut + 1);
      if (cut < 0 || enc.encode(name).length > 100 || enc.encode(prefix).length > 155)
        throw new ArgumentError(`tarFiles: '${rel}': name too long for ustar`);
    }
    const h = new Uint8Array(512);
    const put = (s: string, off: number, len: number) => h.set(enc.encode(s).subarray(0, len), off);
    const oct = (n: number, off: number, len: number) => put(n.toString(8).padStart(len - 1, '0') + '\0', off, len);
    put(name, 0, 100);
    oct(0o644, 100, 8);
    oct(0, 108, 8);
    oct(0, 116, 8);
    if (data.length > 0o77777777777) throw new ArgumentError(`tarFiles: '${rel}': larger than 8 GiB`);
    oct(data.length, 124, 12);
    oct(0, 136, 12);
    h.fill(0x20, 148, 156); // checksum field counts as spaces
    h[156] = 0x30; // '0': regular file
    put('ustar\0', 257, 6);
    put('00', 263, 2);
    put(prefix, 345, 155);
    const sum = h.reduce((a, b) => a + b, 0);
    put(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8);
    blocks.push(h, data);
    const pad = (512 - (data.length % 512)) % 512;
    if (pad) blocks.push(new Uint8Array(pad));
  }
  blocks.push(new Uint8Array(1024));
  return concat(blocks);
}
