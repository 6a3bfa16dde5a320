// safetensors reader and writer (https://github.com/huggingface/safetensors, "Format").
//
// Layout of a file:
//   u64 little-endian N | N bytes of UTF-8 JSON header | data
// The header maps tensor names to { dtype, shape, data_offsets: [begin, end] } with offsets
// relative to the start of the data, plus an optional "__metadata__": { string: string }.
//
// Reading is synchronous and works on a file descriptor: `SafetensorsReader.open` reads and
// validates only the header, `read(name)` reads one tensor, so taking a few tensors out of a
// multi-GiB shard costs only their bytes. Every defect of the file is a FormatError whose
// message starts with the file's path and names the tensor it concerns.

import { ArgumentError, FormatError, ShapeError, describe } from '../errors.js';
import { checkRegularFile, readJsonFile } from './files.js';
import { readSourceJson, type FileSource } from './source.js';
import type { DirWriter } from './sink.js';
import { bytesPerElement, checkDType, encode, type DType, type HostData } from '../dtype.js';
import { nodeBuiltin } from './node_builtins.js';
const fs = nodeBuiltin<typeof import('node:fs')>('node:fs');
const path = nodeBuiltin<typeof import('node:path')>('node:path');

/** Element size in bytes of every dtype the format defines (so offsets can be checked even for dtypes we do not read). */
const ITEM_SIZE: Readonly<Record<string, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
};

/** Stored dtypes we read, and the dtype each becomes in memory. */
const READ_AS: Readonly<Record<string, DType>> = { F32: 'f32', F16: 'f16', BF16: 'bf16', I32: 'i32', I64: 'i32', F64: 'f32' };

/** How our dtypes are stored. */
const STORED: Readonly<Record<DType, string>> = { f32: 'F32', f16: 'F16', bf16: 'BF16', i32: 'I32' };

/** The format's own limit on the header (safetensors' MAX_HEADER_SIZE); guards against absurd allocations. */
const MAX_HEADER_BYTES = 100_000_000;
/** One read/write call moves at most this many bytes (fs calls are limited to 2 GiB). */
const IO_CHUNK = 1 << 30;

/** Typed arrays are host-endian and the format is little-endian; we do not byte-swap. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A tensor in host memory. f16 and bf16 hold raw bits; f32 and i32 hold values. */
export interface HostTensor {
  dtype: DType;
  shape: number[];
  data: Float32Array | Uint16Array | Int32Array;
}

/** A tensor to write: `data` is anything `encode` (src/dtype.ts) accepts for `dtype`. */
export interface WritableTensor {
  dtype: DType;
  shape: readonly number[];
  data: HostData;
}

/** Where a tensor lies in its file, as the header says (validated). */
export interface TensorEntry {
  name: string;
  /** The stored dtype as the file names it: 'F32', 'BF16', 'I64', ... */
  storedDType: string;
  /** The dtype `read` returns, or null when we cannot read this stored dtype. */
  dtype: DType | null;
  shape: number[];
  /** Absolute byte offset in the file. */
  offset: number;
  byteLength: number;
}

export interface SafetensorsContents {
  metadata: Record<string, string>;
  /** Tensors by name, in sorted name order. */
  tensors: Map<string, HostTensor>;
}

function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Reads exactly `dst.length` bytes at `position`; a short read means the file is shorter than its header says. */
function readFully(fd: number, dst: Uint8Array, position: number, file: string, what: string): void {
  let done = 0;
  while (done < dst.length) {
    const n = fs.readSync(fd, dst, done, Math.min(dst.length - done, IO_CHUNK), position + done);
    if (n === 0) {
      throw new FormatError(
        `${file}: ${what}: file ends at byte ${position + done}, expected ${dst.length - done} more bytes (truncated?)`,
      );
    }
    done += n;
  }
}

function writeFully(fd: number, src: Uint8Array): void {
  let done = 0;
  while (done < src.length) {
    done += fs.writeSync(fd, src, done, Math.min(src.length - done, IO_CHUNK));
  }
}

/**
 * Validates a parsed header against the size of the data section and returns the
 * tensor entries. Checks every field of every tensor, then that no two tensors overlap.
 */
function parseHeader(
  file: string,
  header: Record<string, unknown>,
  dataStart: number,
  dataSize: number,
): {
  metadata: Record<string, string>;
  entries: Map<string, TensorEntry>;
} {
  const metadata: Record<string, string> = {};
  const entries = new Map<string, TensorEntry>();
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isPlainObject(raw)) throw new FormatError(`${file}: __metadata__ must be an object of strings, got ${describe(raw)}`);
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== 'string') throw new FormatError(`${file}: __metadata__.${k} must be a string, got ${describe(v)}`);
        metadata[k] = v;
      }
      continue;
    }
    const where = `${file}: tensor '${name}'`;
    if (!isPlainObject(raw)) throw new FormatError(`${where}: header entry must be an object, got ${describe(raw)}`);
    const { dtype, shape, data_offsets: offsets } = raw;
    if (typeof dtype !== 'string' || !Object.hasOwn(ITEM_SIZE, dtype)) {
      throw new FormatError(`${where}: unknown dtype ${describe(dtype)} (safetensors dtypes: ${Object.keys(ITEM_SIZE).join(', ')})`);
    }
    if (!Array.isArray(shape) || !shape.every(isCount)) {
      throw new FormatError(`${where}: shape must be a list of non-negative integers, got ${describe(shape)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
      throw new FormatError(`${where}: data_offsets must be [begin, end] with non-negative integers, got ${describe(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) throw new FormatError(`${where}: data_offsets [${begin}, ${end}] end before they begin`);
    if (end > dataSize) {
      throw new FormatError(`${where}: data_offsets [${begin}, ${end}] run past the end of the data (${dataSize} bytes; file truncated?)`);
    }
    const n = numel(shape as number[]);
    const expected = n * ITEM_SIZE[dtype]!;
    if (!Number.isSafeInteger(expected) || expected !== end - begin) {
      throw new FormatError(
        `${where}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes but shape [${shape.join(', ')}] of ${dtype} needs ${expected}`,
      );
    }
    entries.set(name, {
      name,
      storedDType: dtype,
      dtype: Object.hasOwn(READ_AS, dtype) ? READ_AS[dtype]! : null,
      shape: shape as number[],
      offset: dataStart + begin,
      byteLength: end - begin,
    });
  }
  // Overlap: sort by start; each non-empty tensor must begin at or after the previous one's end.
  // (Gaps are tolerated on read; our writer never leaves any, as safetensors itself requires.)
  const sorted = [...entries.values()].filter((e) => e.byteLength > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.offset < prev.offset + prev.byteLength) {
      throw new FormatError(
        `${file}: tensor '${cur.name}': data overlaps tensor '${prev.name}' ` +
          `(bytes [${cur.offset - dataStart}, ${cur.offset - dataStart + cur.byteLength}) and [${prev.offset - dataStart}, ${prev.offset - dataStart + prev.byteLength}))`,
      );
    }
  }
  return { metadata, entries };
}

/** Converts stored bytes (a fresh, aligned buffer) into the in-memory form. */
function convert(file: string, e: TensorEntry, buf: ArrayBuffer): HostTensor {
  const shape = [...e.shape];
  switch (e.storedDType) {
    case 'F32':
      return { dtype: 'f32', shape, data: new Float32Array(buf) };
    case 'F16':
      return { dtype: 'f16', shape, data: new Uint16Array(buf) };
    case 'BF16':
      return { dtype: 'bf16', shape, data: new Uint16Array(buf) };
    case 'I32':
      return { dtype: 'i32', shape, data: new Int32Array(buf) };
    case 'F64':
      return { dtype: 'f32', shape, data: Float32Array.from(new Float64Array(buf)) };
    case 'I64': {
      const src = new BigInt64Array(buf);
      const out = new Int32Array(src.length);
      for (let i = 0; i < src.length; i++) {
        const v = src[i]!;
        if (v < -2147483648n || v > 2147483647n) {
          throw new FormatError(`${file}: tensor '${e.name}': I64 element ${i} = ${v} does not fit in i32`);
        }
        out[i] = Number(v);
      }
      return { dtype: 'i32', shape, data: out };
    }
    default:
      throw new Error(`unreachable: ${e.storedDType}`);
  }
}

/** The header length from the first 8 bytes of a file of `size` bytes (checked against the size and the format's limit). */
function headerLength(file: string, lenBytes: Uint8Array, size: number): number {
  const n = new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(size - 8)) {
    throw new FormatError(`${file}: header length ${n} runs past the end of the file (${size} bytes; truncated or not safetensors?)`);
  }
  if (n > BigInt(MAX_HEADER_BYTES)) throw new FormatError(`${file}: header length ${n} exceeds the format's limit of ${MAX_HEADER_BYTES}`);
  return Number(n);
}

/** Parses and validates the header bytes of a file of `size` bytes. */
function decodeHeader(
  file: string,
  headerBytes: Uint8Array,
  size: number,
): { metadata: Record<string, string>; entries: Map<string, TensorEntry> } {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw new FormatError(`${file}: header is not valid UTF-8 JSON: ${(e as Error).message}`);
  }
  if (!isPlainObject(header)) throw new FormatError(`${file}: header must be a JSON object, got ${describe(header)}`);
  const dataStart = 8 + headerBytes.length;
  return parseHeader(file, header, dataStart, size - dataStart);
}

/** Converts `bytes` (the stored bytes of `e`) to a tensor, into a fresh aligned buffer when needed. */
function convertBytes(file: string, e: TensorEntry, bytes: Uint8Array): HostTensor {
  if (e.dtype === null) {
    throw new FormatError(
      `${file}: tensor '${e.name}': dtype ${e.storedDType} is not supported (mote reads ${Object.keys(READ_AS).join(', ')})`,
    );
  }
  const aligned = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();
  return convert(file, e, aligned.buffer as ArrayBuffer);
}

/**
 * An open safetensors file: the header is read and validated on open, tensors are read
 * one at a time on request. Call `close()` when done.
 */
export class SafetensorsReader {
  private fd: number | null;

  private constructor(
    readonly path: string,
    fd: number,
    readonly fileSize: number,
    readonly metadata: Record<string, string>,
    private readonly entries: Map<string, TensorEntry>,
  ) {
    this.fd = fd;
  }

  /** Opens `file` and validates its header. Throws FormatError for a malformed file (fs errors, e.g. ENOENT, pass through). */
  static open(file: string): SafetensorsReader {
    if (!LITTLE_ENDIAN) throw new FormatError(`${file}: reading safetensors needs a little-endian host`);
    // A FIFO would block open() forever and a folder fails with EISDIR: refuse both up front.
    checkRegularFile(file, 'a safetensors file');
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (e) {
      throw new FormatError(`${file}: cannot open (a safetensors file): ${(e as Error).message}`);
    }
    try {
      const size = fs.fstatSync(fd).size;
      if (size < 8) throw new FormatError(`${file}: file has ${size} bytes, too short for the 8-byte header length (truncated?)`);
      const lenBytes = new Uint8Array(8);
      readFully(fd, lenBytes, 0, file, 'header length');
      const headerLen = headerLength(file, lenBytes, size);
      const headerBytes = new Uint8Array(headerLen);
      readFully(fd, headerBytes, 8, file, 'header');
      const { metadata, entries } = decodeHeader(file, headerBytes, size);
      return new SafetensorsReader(file, fd, size, metadata, entries);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** Tensor names in sorted order. */
  names(): string[] {
    return [...this.entries.keys()].sort();
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** The header entry of `name`, or undefined. */
  entry(name: string): TensorEntry | undefined {
    const e = this.entries.get(name);
    return e && { ...e, shape: [...e.shape] };
  }

  private lookup(name: string): TensorEntry {
    const e = this.entries.get(name);
    if (!e) throw new FormatError(`${this.path}: no tensor '${name}' (the file has ${this.entries.size})`);
    return e;
  }

  /** The stored bytes of `name` in a fresh buffer, without conversion. */
  readBytes(name: string): Uint8Array {
    const e = this.lookup(name);
    if (this.fd === null) throw new ArgumentError(`${this.path}: reader is closed`);
    const out = new Uint8Array(e.byteLength);
    readFully(this.fd, out, e.offset, this.path, `tensor '${name}'`);
    return out;
  }

  /** Reads one tensor: F32/F16/BF16/I32 as stored, I64 to i32 (range-checked), F64 to f32. */
  read(name: string): HostTensor {
    const e = this.lookup(name);
    if (e.dtype === null) {
      throw new FormatError(
        `${this.path}: tensor '${name}': dtype ${e.storedDType} is not supported (mote reads ${Object.keys(READ_AS).join(', ')})`,
      );
    }
    return convert(this.path, e, this.readBytes(name).buffer as ArrayBuffer);
  }

  close(): void {
    if (this.fd !== null) {
      fs.closeSync(this.fd);
      this.fd = null;
    }
  }
}

/** Reads a whole safetensors file. */
export function readSafetensors(file: string): SafetensorsContents {
  const r = SafetensorsReader.open(file);
  try {
    const tensors = new Map<string, HostTensor>();
    for (const name of r.names()) tensors.set(name, r.read(name));
    return { metadata: { ...r.metadata }, tensors };
  } finally {
    r.close();
  }
}

// ---------------------------------------------------------------------------------------
// Writing

interface Planned {
  name: string;
  t: WritableTensor;
  dtype: DType;
  byteLength: number;
  begin: number;
}

/** Checks every tensor's name, dtype, shape and length before anything is written. */
function plan(tensors: Map<string, WritableTensor> | Record<string, WritableTensor>): Planned[] {
  const list = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const out: Planned[] = [];
  for (const [name, t] of list) {
    if (typeof name !== 'string' || name.length === 0 || name === '__metadata__') {
      throw new ArgumentError(`tensor name must be a non-empty string other than __metadata__, got ${describe(name)}`);
    }
    if (!isPlainObject(t)) throw new ArgumentError(`tensor '${name}': expected { dtype, shape, data }, got ${describe(t)}`);
    const dtype = checkDType(`tensor '${name}'.dtype`, t.dtype);
    if (!Array.isArray(t.shape) || !t.shape.every(isCount)) {
      throw new ShapeError(`tensor '${name}'.shape: expected a list of non-negative integers, got ${describe(t.shape)}`);
    }
    const n = numel(t.shape);
    if (!t.data || typeof (t.data as { length?: unknown }).length !== 'number' || t.data.length !== n) {
      throw new ShapeError(`tensor '${name}'.data: shape [${t.shape.join(', ')}] needs ${n} elements, got ${describe(t.data)}`);
    }
    out.push({ name, t, dtype, byteLength: n * bytesPerElement(dtype), begin: 0 });
  }
  return out;
}

/** Serializes the header, padded with spaces so that the data starts at a multiple of 8 bytes. */
function headerBytes(byName: Planned[], metadata: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  for (const p of byName) {
    header[p.name] = { dtype: STORED[p.dtype], shape: [...p.t.shape], data_offsets: [p.begin, p.begin + p.byteLength] };
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

function checkMetadata(metadata: Record<string, string> | undefined): Record<string, string> {
  if (metadata === undefined) return { format: 'pt' };
  if (!isPlainObject(metadata)) throw new ArgumentError(`metadata: expected an object of strings, got ${describe(metadata)}`);
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') throw new ArgumentError(`metadata.${k}: expected a string, got ${describe(v)}`);
  }
  // transformers refuses a safetensors file whose metadata lacks "format" (it accepts pt, tf, flax, mlx).
  return { format: 'pt', ...metadata };
}

/**
 * Writes `tensors` to `file` atomically: the bytes go to `<file>.tmp-<pid>`, are fsynced, and
 * the temporary file is renamed over `file`; on any error the temporary file is removed and
 * an existing `file` is left as it was.
 *
 * The header lists tensors in sorted name order. The data holds them without gaps (the
 * reference implementation rejects gaps), ordered by element size, largest first, then by
 * name: with the data section starting at a multiple of 8, every tensor then starts at a
 * multiple of its own element size. `__metadata__` always holds `format` ('pt' unless given).
 */
export function writeSafetensors(
  file: string,
  tensors: Map<string, WritableTensor> | Record<string, WritableTensor>,
  metadata?: Record<string, string>,
): void {
  const { head, body } = layout(tensors, metadata);
  atomicWrite(file, (fd) => {
    writeFully(fd, head);
    // encode() checks values (e.g. non-integers for i32) and may throw here, mid-file.
    for (const part of body()) writeFully(fd, part);
  });
}

/** The header and (lazily encoded) data of a safetensors file, laid out as writeSafetensors describes. */
function layout(
  tensors: Map<string, WritableTensor> | Record<string, WritableTensor>,
  metadata?: Record<string, string>,
): {
  head: Uint8Array;
  body: () => Iterable<Uint8Array>;
} {
  const planned = plan(tensors);
  const meta = checkMetadata(metadata);
  const byName = [...planned].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const byData = [...byName].sort(
    (a, b) => bytesPerElement(b.dtype) - bytesPerElement(a.dtype) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
  let offset = 0;
  for (const p of byData) {
    p.begin = offset;
    offset += p.byteLength;
  }
  return {
    head: headerBytes(byName, meta),
    body: function* () {
      for (const p of byData) yield encode(`tensor '${p.name}'.data`, p.t.data, p.dtype);
    },
  };
}

/**
 * A safetensors file as byte parts (header, then each tensor's data), the same bytes
 * writeSafetensors writes: for sinks (src/io/sink.ts) that write to OPFS or memory.
 * Every tensor is checked and encoded before this returns.
 */
export function safetensorsParts(
  tensors: Map<string, WritableTensor> | Record<string, WritableTensor>,
  metadata?: Record<string, string>,
): Uint8Array[] {
  const { head, body } = layout(tensors, metadata);
  return [head, ...body()];
}

/** Runs `body` on a temporary file next to `file` and renames it into place only when it succeeds. */
export function atomicWrite(file: string, body: (fd: number) => void): void {
  const tmp = `${file}.tmp-${process.pid}`;
  let fd: number | null = fs.openSync(tmp, 'w');
  try {
    body(fd);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(tmp, file);
  } catch (e) {
    if (fd !== null) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  // Make the rename itself durable. Some platforms cannot fsync a directory; that only weakens durability.
  try {
    const dfd = fs.openSync(path.dirname(file), 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  } catch {
    /* best effort */
  }
}

// ---------------------------------------------------------------------------------------
// Sharded models and model directories

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

/** An index lists one line per tensor; 64 MiB is far more than any real model needs. */
const MAX_INDEX_BYTES = 64 * 1024 * 1024;

export interface SafetensorsIndex {
  /** Path of the index file. */
  file: string;
  /** The index's "metadata" object (e.g. total_size), as written. */
  metadata: Record<string, unknown>;
  /** Tensor name -> shard file name (relative to the index's folder). */
  weightMap: Map<string, string>;
}

/** Reads `<dir>/model.safetensors.index.json` (or `indexName`) and checks its weight_map. */
export function readSafetensorsIndex(dir: string, indexName = INDEX_FILE): SafetensorsIndex {
  const file = path.join(dir, indexName);
  return parseSafetensorsIndex(readJsonFile(file, 'a safetensors index', MAX_INDEX_BYTES), file);
}

/** Checks a parsed index (its weight_map, its metadata); `file` names it in errors. */
export function parseSafetensorsIndex(json: unknown, file: string): SafetensorsIndex {
  if (!isPlainObject(json)) throw new FormatError(`${file}: expected a JSON object, got ${describe(json)}`);
  const { weight_map: wm, metadata } = json;
  if (!isPlainObject(wm)) throw new FormatError(`${file}: weight_map must be an object of tensor name -> shard file, got ${describe(wm)}`);
  if (metadata !== undefined && metadata !== null && !isPlainObject(metadata)) {
    throw new FormatError(`${file}: metadata must be an object, got ${describe(metadata)}`);
  }
  const weightMap = new Map<string, string>();
  for (const [name, shard] of Object.entries(wm)) {
    // A shard must be a plain file name in the same folder: no paths, so an index cannot point outside it.
    if (
      typeof shard !== 'string' ||
      shard === '' ||
      shard === '.' ||
      shard === '..' ||
      shard.includes('\\') ||
      shard.includes('/') ||
      shard.includes('\0') ||
      /^[A-Za-z]:/.test(shard)
    ) {
      throw new FormatError(`${file}: weight_map['${name}'] must be a file name in the same folder, got ${describe(shard)}`);
    }
    weightMap.set(name, shard);
  }
  return { file, metadata: (metadata as Record<string, unknown> | undefined) ?? {}, weightMap };
}

/** A model's weights served by name from one file or from the shards of an index. */
export class ModelWeights {
  private readonly readers = new Map<string, SafetensorsReader>();

  private constructor(
    /** The folder the files are in. */
    readonly dir: string,
    /** The index file, or null for a single file. */
    readonly index: string | null,
    /** Tensor name -> file name in `dir`. */
    private readonly where: Map<string, string>,
    first?: SafetensorsReader,
  ) {
    if (first) this.readers.set(path.basename(first.path), first);
  }

  /**
   * Opens `dir`: its `model.safetensors.index.json` when present (every shard it names must
   * exist), else its `model.safetensors`. `dir` may also be a .safetensors file itself.
   * Options name other files, e.g. `{ single: 'adapter_model.safetensors' }`.
   */
  static open(dir: string, opts: { index?: string; single?: string } = {}): ModelWeights {
    if (dir.endsWith('.safetensors') && fs.statSync(dir, { throwIfNoEntry: false })?.isFile()) {
      return ModelWeights.single(path.dirname(dir), path.basename(dir));
    }
    const indexName = opts.index ?? INDEX_FILE;
    const singleName = opts.single ?? SINGLE_FILE;
    if (fs.existsSync(path.join(dir, indexName))) {
      const idx = readSafetensorsIndex(dir, indexName);
      const shards = new Map<string, number>();
      for (const shard of idx.weightMap.values()) shards.set(shard, (shards.get(shard) ?? 0) + 1);
      const missing = [...shards.keys()].filter((s) => !fs.existsSync(path.join(dir, s)));
      // Every shard that is there must be a regular file (not a folder, FIFO or device) before any is opened.
      if (missing.length === 0) for (const s of shards.keys()) checkRegularFile(path.join(dir, s), `shard named by ${idx.file}`);
      if (missing.length > 0) {
        const first = [...idx.weightMap].find(([, s]) => s === missing[0])![0];
        throw new FormatError(
          `${idx.file}: shard${missing.length > 1 ? 's' : ''} ${missing.map((s) => `'${s}'`).join(', ')} ` +
            `not found in ${dir} (holding ${missing.reduce((n, s) => n + shards.get(s)!, 0)} tensors, e.g. '${first}')`,
        );
      }
      return new ModelWeights(dir, idx.file, idx.weightMap);
    }
    if (fs.existsSync(path.join(dir, singleName))) return ModelWeights.single(dir, singleName);
    throw new FormatError(`${dir}: no ${indexName} or ${singleName} found`);
  }

  private static single(dir: string, name: string): ModelWeights {
    const r = SafetensorsReader.open(path.join(dir, name));
    return new ModelWeights(dir, null, new Map(r.names().map((n) => [n, name])), r);
  }

  /** Tensor names in sorted order. */
  names(): string[] {
    return [...this.where.keys()].sort();
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  /** File names (relative to `dir`) the weights live in. */
  files(): string[] {
    return [...new Set(this.where.values())].sort();
  }

  private reader(name: string): SafetensorsReader {
    const shard = this.where.get(name);
    if (shard === undefined) {
      throw new FormatError(`${this.index ?? path.join(this.dir, this.files()[0] ?? SINGLE_FILE)}: no tensor '${name}'`);
    }
    let r = this.readers.get(shard);
    if (!r) {
      r = SafetensorsReader.open(path.join(this.dir, shard));
      this.readers.set(shard, r);
    }
    if (!r.has(name))
      throw new FormatError(`${this.index}: weight_map puts tensor '${name}' in '${shard}', but ${r.path} has no such tensor`);
    return r;
  }

  /** The header entry of `name` plus the file it is in (opens that shard's header). */
  entry(name: string): TensorEntry & { file: string } {
    const r = this.reader(name);
    return { ...r.entry(name)!, file: r.path };
  }

  get(name: string): HostTensor {
    return this.reader(name).read(name);
  }

  readBytes(name: string): Uint8Array {
    return this.reader(name).readBytes(name);
  }

  close(): void {
    for (const r of this.readers.values()) r.close();
    this.readers.clear();
  }
}

/** See `ModelWeights.open`. */
export function openModelWeights(dir: string, opts: { index?: string; single?: string } = {}): ModelWeights {
  return ModelWeights.open(dir, opts);
}

/**
 * Writes tensors as HF-style shards `<prefix>-00001-of-0000N.safetensors` of at most
 * `maxShardBytes` of data each (a larger tensor gets a shard of its own), plus
 * `<prefix>.safetensors.index.json` with `metadata.total_size` and `weight_map`.
 * With one shard it writes `<prefix>.safetensors` and no index. Returns the file names.
 */
export function writeShardedSafetensors(
  dir: string,
  tensors: Map<string, WritableTensor> | Record<string, WritableTensor>,
  opts: { maxShardBytes: number; prefix?: string; metadata?: Record<string, string> },
): string[] {
  const files = shardFiles(tensors, opts);
  for (const f of files) {
    if (f.tensors) writeSafetensors(path.join(dir, f.name), f.tensors, opts.metadata);
    else atomicWrite(path.join(dir, f.name), (fd) => writeFully(fd, f.bytes!));
  }
  return files.map((f) => f.name);
}

/** writeShardedSafetensors into a folder of a sink (src/io/sink.ts): the same files, the same bytes. */
export async function writeShardedTo(
  dir: DirWriter,
  tensors: Map<string, WritableTensor> | Record<string, WritableTensor>,
  opts: { maxShardBytes: number; prefix?: string; metadata?: Record<string, string> },
): Promise<string[]> {
  const files = shardFiles(tensors, opts);
  for (const f of files) await dir.write(f.name, f.tensors ? safetensorsParts(f.tensors, opts.metadata) : f.bytes!);
  return files.map((f) => f.name);
}

/** The files of a sharded write, in the order they are written: the shards, then the index. */
function shardFiles(
  tensors: Map<string, WritableTensor> | Record<string, WritableTensor>,
  opts: { maxShardBytes: number; prefix?: string },
): { name: string; tensors?: Map<string, WritableTensor>; bytes?: Uint8Array }[] {
  const prefix = opts.prefix ?? 'model';
  if (!(opts.maxShardBytes > 0)) throw new ArgumentError(`maxShardBytes: expected a positive number, got ${describe(opts.maxShardBytes)}`);
  const planned = plan(tensors).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const groups: Planned[][] = [];
  let size = Infinity;
  for (const p of planned) {
    if (size + p.byteLength > opts.maxShardBytes || groups.length === 0) {
      groups.push([]);
      size = 0;
    }
    groups[groups.length - 1]!.push(p);
    size += p.byteLength;
  }
  if (groups.length <= 1) return [{ name: `${prefix}.safetensors`, tensors: new Map((groups[0] ?? []).map((p) => [p.name, p.t])) }];
  const pad = (i: number) => String(i).padStart(5, '0');
  const names = groups.map((_, i) => `${prefix}-${pad(i + 1)}-of-${pad(groups.length)}.safetensors`);
  const weightMap: Record<string, string> = {};
  const out: { name: string; tensors?: Map<string, WritableTensor>; bytes?: Uint8Array }[] = groups.map((g, i) => {
    for (const p of g) weightMap[p.name] = names[i]!;
    return { name: names[i]!, tensors: new Map(g.map((p) => [p.name, p.t])) };
  });
  const total = planned.reduce((n, p) => n + p.byteLength, 0);
  // The index goes last, so a reader never sees an index whose shards are not all written.
  out.push({
    name: `${prefix}.safetensors.index.json`,
    bytes: new TextEncoder().encode(JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n'),
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// Reading from a FileSource (a folder, a URL, Blobs, bytes: src/io/source.ts)

/**
 * A safetensors file of a FileSource: `open` reads and validates only the header (for a URL:
 * one ranged request for the first 64 KiB, more only for a larger header); `read(name)`
 * reads one tensor's byte range. The same checks and messages as SafetensorsReader, with
 * the file named by the source (a path or a URL).
 */
export class SafetensorsFile {
  private constructor(
    private readonly src: FileSource,
    private readonly rel: string,
    /** The file as messages name it. */
    readonly path: string,
    readonly fileSize: number,
    readonly metadata: Record<string, string>,
    private readonly entries: Map<string, TensorEntry>,
  ) {}

  static async open(src: FileSource, rel: string, what = 'a safetensors file'): Promise<SafetensorsFile> {
    const file = src.where(rel);
    if (!LITTLE_ENDIAN) throw new FormatError(`${file}: reading safetensors needs a little-endian host`);
    const size = await src.size(rel, what);
    if (size < 8) throw new FormatError(`${file}: file has ${size} bytes, too short for the 8-byte header length (truncated?)`);
    const headerLen = headerLength(file, await src.read(rel, 0, 8, 'header length'), size);
    const { metadata, entries } = decodeHeader(file, await src.read(rel, 8, headerLen, 'header'), size);
    return new SafetensorsFile(src, rel, file, size, metadata, entries);
  }

  names(): string[] {
    return [...this.entries.keys()].sort();
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  entry(name: string): TensorEntry | undefined {
    const e = this.entries.get(name);
    return e && { ...e, shape: [...e.shape] };
  }

  private lookup(name: string): TensorEntry {
    const e = this.entries.get(name);
    if (!e) throw new FormatError(`${this.path}: no tensor '${name}' (the file has ${this.entries.size})`);
    return e;
  }

  async readBytes(name: string): Promise<Uint8Array> {
    const e = this.lookup(name);
    return this.src.read(this.rel, e.offset, e.byteLength, `tensor '${name}'`);
  }

  /** Reads one tensor: F32/F16/BF16/I32 as stored, I64 to i32 (range-checked), F64 to f32. */
  async read(name: string): Promise<HostTensor> {
    const e = this.lookup(name);
    if (e.dtype === null) return convertBytes(this.path, e, new Uint8Array(0)); // throws: unsupported dtype
    return convertBytes(this.path, e, await this.readBytes(name));
  }
}

/** Reads a whole safetensors file of a source. */
export async function readSafetensorsFrom(src: FileSource, rel: string): Promise<SafetensorsContents> {
  const r = await SafetensorsFile.open(src, rel);
  const tensors = new Map<string, HostTensor>();
  for (const name of r.names()) tensors.set(name, await r.read(name));
  return { metadata: { ...r.metadata }, tensors };
}

/**
 * A model's weights from a source: its model.safetensors.index.json when present (every
 * shard it names must exist), else its model.safetensors; shard headers are read when first
 * needed. The async counterpart of ModelWeights, with the same messages.
 */
export class SourceWeights {
  private readonly files = new Map<string, Promise<SafetensorsFile>>();

  private constructor(
    private readonly src: FileSource,
    /** The index as messages name it, or null for a single file. */
    readonly index: string | null,
    private readonly whereIs: Map<string, string>,
    first?: SafetensorsFile,
    firstRel?: string,
  ) {
    if (first) this.files.set(firstRel!, Promise.resolve(first));
  }

  static async open(src: FileSource, opts: { index?: string; single?: string } = {}): Promise<SourceWeights> {
    const indexName = opts.index ?? INDEX_FILE;
    const singleName = opts.single ?? SINGLE_FILE;
    if (await src.has(indexName)) {
      const idx = parseSafetensorsIndex(await readSourceJson(src, indexName, 'a safetensors index', MAX_INDEX_BYTES), src.where(indexName));
      const shards = new Map<string, number>();
      for (const shard of idx.weightMap.values()) shards.set(shard, (shards.get(shard) ?? 0) + 1);
      const present = await Promise.all([...shards.keys()].map((s) => src.has(s)));
      const missing = [...shards.keys()].filter((_, i) => !present[i]);
      if (missing.length > 0) {
        const first = [...idx.weightMap].find(([, s]) => s === missing[0])![0];
        throw new FormatError(
          `${idx.file}: shard${missing.length > 1 ? 's' : ''} ${missing.map((s) => `'${s}'`).join(', ')} ` +
            `not found in ${src.name} (holding ${missing.reduce((n, s) => n + shards.get(s)!, 0)} tensors, e.g. '${first}')`,
        );
      }
      for (const s of shards.keys()) await src.size(s, `shard named by ${idx.file}`);
      return new SourceWeights(src, idx.file, idx.weightMap);
    }
    if (await src.has(singleName)) {
      const f = await SafetensorsFile.open(src, singleName);
      return new SourceWeights(src, null, new Map(f.names().map((n) => [n, singleName])), f, singleName);
    }
    throw new FormatError(`${src.name}: no ${indexName} or ${singleName} found`);
  }

  names(): string[] {
    return [...this.whereIs.keys()].sort();
  }

  has(name: string): boolean {
    return this.whereIs.has(name);
  }

  /** File names (relative to the source) the weights live in. */
  fileNames(): string[] {
    return [...new Set(this.whereIs.values())].sort();
  }

  private async file(name: string): Promise<SafetensorsFile> {
    const shard = this.whereIs.get(name);
    if (shard === undefined)
      throw new FormatError(`${this.index ?? this.src.where(this.fileNames()[0] ?? SINGLE_FILE)}: no tensor '${name}'`);
    let p = this.files.get(shard);
    if (!p) {
      p = SafetensorsFile.open(this.src, shard);
      this.files.set(shard, p);
    }
    const f = await p;
    if (!f.has(name))
      throw new FormatError(`${this.index}: weight_map puts tensor '${name}' in '${shard}', but ${f.path} has no such tensor`);
    return f;
  }

  /** The header entry of `name` plus the file it is in (opens that shard's header). */
  async entry(name: string): Promise<TensorEntry & { file: string }> {
    const f = await this.file(name);
    return { ...f.entry(name)!, file: f.path };
  }

  async get(name: string): Promise<HostTensor> {
    return (await this.file(name)).read(name);
  }

  async readBytes(name: string): Promise<Uint8Array> {
    return (await this.file(name)).readBytes(name);
  }
}
