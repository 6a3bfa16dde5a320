// Writing the folders mote creates (checkpoints, saved models, MoTE bundles, exported
// adapters) without ever losing a file that mote did not write.
//
// Ownership. Every folder mote writes holds `mote-written.json` (MARKER_FILE): a format id
// ('mote-written'), the kind of folder, and every file mote wrote there with its size and
// SHA-256. A folder is mote's only when it holds that marker (or, for folders written before
// the marker existed, when it holds mote's own earlier layout, recognised by the writer's own
// format fields: a checkpoint's trainer_state.json with format 'mote-checkpoint', a bundle's
// mote.json with format 'mote', an export's experts.json; an HF model folder saved by an
// earlier mote cannot be told from anyone else's and counts as foreign). A common file name
// (config.json, trainer_state.json) is never taken as proof.
//
// Replacing. The new contents are always written beside the target, into `<dir>.tmp-<pid>`
// (created with an in-progress marker, every file fsynced, the complete marker written last).
//   - absent or empty `dir`, or a folder of mote's own kind holding only files mote wrote:
//     swapped in as a whole (dir → `<dir>.old-<pid>`, tmp → dir, then the old files mote
//     listed are removed). A reader sees the complete old folder or the complete new one.
//   - a folder of mote's kind that also holds files someone added: mote's files are replaced
//     one by one, the files it listed before and no longer writes are removed, the others
//     stay. Each file is replaced atomically; the folder as a whole is not.
//   - any other non-empty folder is refused (ArgumentError naming it) unless the caller
//     passes overwrite: then mote's files are moved in as above, and a file of that folder
//     that mote did not write but would replace (same name, or one the writer names as
//     conflicting, e.g. a stale model.safetensors.index.json) is renamed to
//     `<name>.before-mote` first. Nothing mote did not write is deleted, with or without
//     overwrite.
//
// Stale temporaries (`<dir>.tmp-<pid>`, `<dir>.old-<pid>` of a process that is gone) are
// removed before each write, and only by their marker: the files a complete marker lists, or
// the whole of a folder whose in-progress marker says mote created it empty. A folder with no
// marker under such a name is left alone.
import { ArgumentError, FormatError } from '../errors.js';
import { parseJson } from './files.js';
import type { Stats } from 'node:fs';
import { nodeBuiltin } from './node_builtins.js';
const crypto = nodeBuiltin<typeof import('node:crypto')>('node:crypto');
const fs = nodeBuiltin<typeof import('node:fs')>('node:fs');
const path = nodeBuiltin<typeof import('node:path')>('node:path');

export const MARKER_FILE = 'mote-written.json';
export const MARKER_FORMAT = 'mote-written';
const MARKER_VERSION = 1;
const MARKER_MAX_BYTES = 16 * 1024 * 1024;

export interface MarkerFile {
  bytes: number;
  sha256: string;
}
export interface Marker {
  format: typeof MARKER_FORMAT;
  version: number;
  kind: string;
  complete: boolean;
  pid?: number;
  files: Record<string, MarkerFile>;
}

export interface ReplaceDirOptions {
  /** What mote writes here ('mote-checkpoint', 'hf-model', 'mote-bundle', 'peft-export'). */
  kind: string;
  /** Write into a non-empty folder mote did not write (its files are kept; see the header). */
  overwrite?: boolean;
  /** Recognises mote's own layout from before the marker: the files mote wrote, or null. */
  legacy?: (dir: string) => string[] | null;
  /** Foreign files that would contradict the new contents (moved aside with overwrite). */
  conflicts?: (relPath: string) => boolean;
}

// ---------------------------------------------------------------------------------------
// Test hook: MOTE_TEST_PAUSE_AT=<point>[:<n>] stops this process (forever, until killed) the
// n-th time it reaches <point>, after writing "mote-test-paused <point> <n>" to stderr. Used
// by test/checkpoint_kill.test.ts to kill a writer at exact points; unset, it costs a lookup.
const pauseCounts = new Map<string, number>();
export function testPoint(name: string): void {
  const at = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.MOTE_TEST_PAUSE_AT;
  if (!at) return;
  const [point, nth] = at.split(':');
  if (point !== name) return;
  const c = (pauseCounts.get(name) ?? 0) + 1;
  pauseCounts.set(name, c);
  if (c !== Number(nth ?? 1)) return;
  fs.writeSync(2, `mote-test-paused ${name} ${c}\n`);
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
}

// ---------------------------------------------------------------------------------------
// Small pieces

function fsyncPath(p: string): void {
  try {
    const fd = fs.openSync(p, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    /* some platforms cannot fsync a directory: that only weakens durability */
  }
}

/** Regular files under `dir`, as '/'-separated paths relative to it (symlinks are listed, not followed). */
function listFiles(dir: string, prefix = ''): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...listFiles(dir, rel));
    else out.push(rel);
  }
  return out;
}

function sha256File(file: string): string {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

function writeFileDurably(file: string, text: string): void {
  const tmp = `${file}.part`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, text);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

function pidAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/** The marker of `dir`, or null when it has none or one that is not mote's (malformed, other format). */
export function readMarker(dir: string): Marker | null {
  const file = path.join(dir, MARKER_FILE);
  try {
    const st = fs.lstatSync(file);
    if (!st.isFile() || st.size > MARKER_MAX_BYTES) return null;
    const j = parseJson(fs.readFileSync(file, 'utf8'), file) as Record<string, unknown>;
    if (!j || typeof j !== 'object' || j.format !== MARKER_FORMAT || typeof j.kind !== 'string' || typeof j.complete !== 'boolean')
      return null;
    const files = j.files ?? {};
    if (typeof files !== 'object' || files === null || Array.isArray(files)) return null;
    for (const [rel, f] of Object.entries(files as Record<string, unknown>)) {
      const ff = f as Record<string, unknown>;
      if (!safeRel(rel) || !ff || !Number.isSafeInteger(ff.bytes) || typeof ff.sha256 !== 'string') return null;
    }
    return { ...(j as unknown as Marker), files: files as Record<string, MarkerFile> };
  } catch {
    return null;
  }
}

/** A relative path that stays inside its folder (a marker is data: never follow '..' out of it). */
function safeRel(rel: string): boolean {
  return rel !== '' && !rel.startsWith('/') && !rel.split('/').some((p) => p === '' || p === '.' || p === '..') && !rel.includes('\\');
}

/**
 * Why `dir` is not a complete folder that mote wrote (marker complete, every listed file
 * present with its size and SHA-256), or null when it is.
 */
export function checkWrittenDir(dir: string): string | null {
  const m = readMarker(dir);
  if (!m) return `${path.join(dir, MARKER_FILE)}: missing or not mote's`;
  if (!m.complete) return `${path.join(dir, MARKER_FILE)}: the write was interrupted`;
  for (const [rel, f] of Object.entries(m.files)) {
    const p = path.join(dir, rel);
    let st: Stats;
    try {
      st = fs.lstatSync(p);
    } catch {
      return `${p}: missing`;
    }
    if (!st.isFile()) return `${p}: not a regular file`;
    if (st.size !== f.bytes) return `${p}: ${st.size} bytes, ${f.bytes} were written`;
    if (sha256File(p) !== f.sha256) return `${p}: its contents differ from what was written (SHA-256)`;
  }
  return null;
}

/** The files of `dir` that mote wrote (marker list + marker, or its legacy layout), or null when the folder is not mote's. */
function ownedFiles(dir: string, opts: ReplaceDirOptions, m: Marker | null): Set<string> | null {
  if (m) return new Set([...Object.keys(m.files), MARKER_FILE]);
  const legacy = opts.legacy?.(dir);
  return legacy ? new Set(legacy) : null;
}

/**
 * The first folder on the way to `rel` inside `dir` that is a symlink (or anything but a real
 * folder), or null. A path through it would reach outside `dir`: mote never writes or removes
 * there.
 */
function linkOnTheWay(dir: string, rel: string): string | null {
  const parts = rel.split('/');
  for (let i = 1; i < parts.length; i++) {
    const p = path.join(dir, ...parts.slice(0, i));
    try {
      if (!fs.lstatSync(p).isDirectory()) return p;
    } catch {
      return null; // absent: created as a real folder
    }
  }
  return null;
}

/** Removes the listed files of `dir`, then its folders that are left empty; anything else stays. */
export function removeFiles(dir: string, files: Iterable<string>): void {
  for (const rel of files) {
    if (safeRel(rel) && linkOnTheWay(dir, rel) === null) fs.rmSync(path.join(dir, rel), { force: true });
  }
  removeEmptyDirs(dir);
}

function removeEmptyDirs(dir: string): boolean {
  let empty = true;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory() && removeEmptyDirs(path.join(dir, e.name))) continue;
    empty = false;
  }
  if (empty) fs.rmdirSync(dir);
  return empty;
}

/** Removes a folder mote wrote, by its marker only (see the header); returns whether anything was removed. */
export function removeWrittenDir(dir: string): boolean {
  const m = readMarker(dir);
  if (!m) {
    // A folder left by a writer killed before its first marker was in place: empty, or holding
    // only that marker's half-written `.part` (written first, before any other file).
    try {
      const names = fs.readdirSync(dir);
      if (names.every((n) => n === `${MARKER_FILE}.part`)) {
        for (const n of names) fs.rmSync(path.join(dir, n), { force: true });
        fs.rmdirSync(dir);
        return true;
      }
    } catch {
      /* not there */
    }
    return false;
  }
  // An in-progress marker: mote created this folder empty, so everything in it is mote's.
  if (!m.complete) fs.rmSync(dir, { recursive: true, force: true });
  else removeFiles(dir, [...Object.keys(m.files), MARKER_FILE]);
  return true;
}

const STALE = /^(.*)\.(tmp|old)-(\d+)$/;

/** `<dir>.tmp-<pid>` / `<dir>.old-<pid>` siblings of `dir` left by processes that are gone. */
export function staleTemporaries(dir: string): { path: string; which: 'tmp' | 'old'; pid: number }[] {
  dir = path.resolve(dir);
  const parent = path.dirname(dir),
    base = path.basename(dir);
  let names: string[];
  try {
    names = fs.readdirSync(parent);
  } catch {
    return [];
  }
  const out: { path: string; which: 'tmp' | 'old'; pid: number }[] = [];
  for (const n of names) {
    const g = STALE.exec(n);
    if (!g || g[1] !== base) continue;
    const pid = Number(g[3]);
    if (pid === process.pid || pidAlive(pid)) continue;
    const p = path.join(parent, n);
    try {
      if (!fs.lstatSync(p).isDirectory()) continue;
    } catch {
      continue;
    }
    out.push({ path: p, which: g[2] as 'tmp' | 'old', pid });
  }
  return out;
}

/** Removes the stale temporaries of `dir` that carry mote's marker; returns the ones removed. */
export function cleanStaleTemporaries(dir: string): string[] {
  const removed: string[] = [];
  for (const s of staleTemporaries(dir)) {
    try {
      if (removeWrittenDir(s.path)) removed.push(s.path);
    } catch {
      /* best effort: a later write tries again */
    }
  }
  return removed;
}

/** A fresh `<dir>.<which>-<pid>`; a folder of that name that is not mote's is refused, never removed. */
function claimSibling(op: string, dir: string, which: 'tmp' | 'old'): string {
  const p = `${dir}.${which}-${process.pid}`;
  if (fs.existsSync(p)) {
    removeWrittenDir(p);
    if (fs.existsSync(p))
      throw new ArgumentError(
        `${op}: ${p} exists and was not written by mote; move it away (mote needs that name for its temporary copy of ${dir})`,
      );
  }
  return p;
}

function finishMarker(dir: string, kind: string): Marker {
  const files: Record<string, MarkerFile> = {};
  for (const rel of listFiles(dir).sort()) {
    if (rel === MARKER_FILE) continue;
    const p = path.join(dir, rel);
    const st = fs.lstatSync(p);
    if (!st.isFile()) continue;
    fsyncPath(p);
    files[rel] = { bytes: st.size, sha256: sha256File(p) };
  }
  const m: Marker = { format: MARKER_FORMAT, version: MARKER_VERSION, kind, complete: true, files };
  writeFileDurably(path.join(dir, MARKER_FILE), JSON.stringify(m, null, 2) + '\n');
  for (const d of new Set(Object.keys(files).map((r) => path.dirname(r)))) fsyncPath(path.join(dir, d));
  fsyncPath(dir);
  return m;
}

/** Checks `opts` of a public writer: { overwrite?: boolean }. */
export function overwriteOption(op: string, v: unknown): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new ArgumentError(`${op}: overwrite: expected true or false, got ${typeof v}`);
  return v;
}

type Plan = { how: 'create' } | { how: 'swap'; owned: Set<string> } | { how: 'merge'; owned: Set<string> | null; old: Marker | null };

/**
 * Decides how `dir` may be written, throwing ArgumentError when it may not (a non-empty
 * folder mote did not write, without overwrite). Call it before long work (training) so that
 * a bad target fails at once; replaceDirAtomically calls it again.
 */
export function checkReplaceable(op: string, dir: string, opts: ReplaceDirOptions): Plan {
  dir = writeTarget(op, dir);
  let st: Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    return { how: 'create' };
  }
  if (!st.isDirectory()) throw new ArgumentError(`${op}: ${dir} exists and is not a directory`);
  const all = listFiles(dir);
  if (all.length === 0) return { how: 'create' };
  const m = readMarker(dir);
  const owned = ownedFiles(dir, opts, m);
  const sameKind = owned !== null && (m ? m.kind === opts.kind : true);
  if (!sameKind && !opts.overwrite) {
    const what = owned ? `holds a mote ${m!.kind}, not a ${opts.kind}` : `is not empty and was not written by mote (no ${MARKER_FILE})`;
    throw new ArgumentError(
      `${op}: ${dir} ${what}; refusing to replace it. Pass { overwrite: true } (CLI: --overwrite) to write mote's files into it: files mote did not write are kept (one it would replace is renamed to <name>.before-mote), never deleted`,
    );
  }
  if (owned && all.every((f) => owned.has(f))) return { how: 'swap', owned };
  return { how: 'merge', owned, old: m };
}

/**
 * The folder a write to `dir` goes to: `dir` itself, or, when `dir` is a symbolic link, the
 * folder it points to (the temporaries go beside that folder, and the link stays as it is; the
 * swap would otherwise rename the link away and put a folder in its place).
 */
function writeTarget(op: string, dir: string): string {
  dir = path.resolve(dir);
  let link = false;
  try {
    link = fs.lstatSync(dir).isSymbolicLink();
  } catch {
    return dir; // absent
  }
  if (!link) return dir;
  try {
    return fs.realpathSync(dir);
  } catch (e) {
    throw new ArgumentError(`${op}: ${dir} is a symbolic link to nothing (${(e as Error).message}); point it at a folder or remove it`);
  }
}

function asideName(file: string): string {
  for (let i = 1; ; i++) {
    const p = `${file}.before-mote${i === 1 ? '' : `-${i}`}`;
    if (!fs.existsSync(p)) return p;
  }
}

/**
 * Writes the folder `dir` with `fill` (which writes into the temporary folder it is given),
 * as the header describes. On any error before the swap the temporary folder is removed and
 * `dir` is left as it was.
 */
export async function replaceDirAtomically(
  op: string,
  dir: string,
  opts: ReplaceDirOptions,
  fill: (tmp: string) => Promise<void> | void,
): Promise<void> {
  dir = writeTarget(op, dir);
  checkReplaceable(op, dir, opts);
  cleanStaleTemporaries(dir);
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  const tmp = claimSibling(op, dir, 'tmp');
  fs.mkdirSync(tmp);
  try {
    writeFileDurably(
      path.join(tmp, MARKER_FILE),
      JSON.stringify({ format: MARKER_FORMAT, version: MARKER_VERSION, kind: opts.kind, complete: false, pid: process.pid, files: {} }) +
        '\n',
    );
    testPoint('fill');
    await fill(tmp);
    testPoint('filled');
    finishMarker(tmp, opts.kind);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  testPoint('marked');
  // Decide again: the folder may have changed while fill ran.
  let plan: Plan;
  try {
    plan = checkReplaceable(op, dir, opts);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  if (plan.how === 'merge') {
    merge(op, dir, tmp, opts, plan);
  } else {
    let old: string | null = null;
    if (fs.existsSync(dir)) {
      try {
        old = claimSibling(op, dir, 'old');
        fs.renameSync(dir, old);
      } catch (e) {
        fs.rmSync(tmp, { recursive: true, force: true });
        throw e;
      }
    }
    testPoint('between-renames');
    try {
      fs.renameSync(tmp, dir);
    } catch (e) {
      if (old) fs.renameSync(old, dir);
      fs.rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
    fsyncPath(path.dirname(dir));
    testPoint('swapped');
    // The old folder: only the files mote listed (an empty folder was 'create': nothing to list).
    if (old) {
      if (plan.how === 'swap') removeFiles(old, plan.owned);
      else removeEmptyDirs(old);
    }
  }
  fsyncPath(path.dirname(dir));
}

/** Moves the files of the complete `tmp` into `dir` one by one (see the header); the marker goes last. */
function merge(
  op: string,
  dir: string,
  tmp: string,
  opts: ReplaceDirOptions,
  plan: { owned: Set<string> | null; old: Marker | null },
): void {
  const owned = plan.owned ?? new Set<string>();
  const incoming = listFiles(tmp);
  const incomingSet = new Set(incoming);
  const existing = listFiles(dir);
  // Check every path before moving anything: a file where a folder must go (or back) is refused.
  for (const rel of incoming) {
    const link = linkOnTheWay(dir, rel);
    if (link !== null) {
      fs.rmSync(tmp, { recursive: true, force: true });
      const what = fs.lstatSync(link).isSymbolicLink() ? 'a symlink (mote does not write through it)' : 'a file';
      throw new ArgumentError(`${op}: ${link} is ${what} where mote writes a folder; move it away`);
    }
    const p = path.join(dir, rel);
    if (fs.existsSync(p) && fs.lstatSync(p).isDirectory()) {
      fs.rmSync(tmp, { recursive: true, force: true });
      throw new ArgumentError(`${op}: ${p} is a folder where mote writes a file; move it away`);
    }
  }
  // Foreign files that would be replaced, or that contradict the new contents: renamed aside.
  for (const rel of existing) {
    if (owned.has(rel)) continue;
    if (incomingSet.has(rel) || opts.conflicts?.(rel)) {
      const p = path.join(dir, rel);
      fs.renameSync(p, asideName(p));
    }
  }
  testPoint('merging');
  for (const rel of incoming) {
    if (rel === MARKER_FILE) continue;
    const to = path.join(dir, rel);
    fs.mkdirSync(path.dirname(to), { recursive: true });
    fs.renameSync(path.join(tmp, rel), to);
  }
  // Files mote wrote before and writes no more (e.g. shards that became one file).
  for (const rel of owned) {
    if (!incomingSet.has(rel) && rel !== MARKER_FILE && linkOnTheWay(dir, rel) === null) fs.rmSync(path.join(dir, rel), { force: true });
  }
  fs.renameSync(path.join(tmp, MARKER_FILE), path.join(dir, MARKER_FILE));
  for (const rel of owned) {
    const d = path.dirname(path.join(dir, rel));
    if (d !== dir)
      try {
        if (fs.readdirSync(d).length === 0) fs.rmdirSync(d);
      } catch {
        /* not empty or gone */
      }
  }
  fs.rmSync(tmp, { recursive: true, force: true });
}

/** Reads a JSON file of a folder that may be mote's, for the legacy recognisers: null when absent or malformed. */
export function tryJson(file: string): Record<string, unknown> | null {
  try {
    const st = fs.lstatSync(file);
    if (!st.isFile() || st.size > MARKER_MAX_BYTES) return null;
    const j = parseJson(fs.readFileSync(file, 'utf8'), file);
    return j && typeof j === 'object' && !Array.isArray(j) ? (j as Record<string, unknown>) : null;
  } catch (e) {
    if (e instanceof FormatError) return null;
    return null;
  }
}
