// Replacing a directory as a whole (saved bundles, checkpoints): the new contents are written
// into `<dir>.tmp-<pid>`, every file is fsynced, and only then the directory is swapped in
// (the old one renamed aside, the new one renamed into place, the old one removed). A reader
// sees either the complete old directory or the complete new one, never a mix or a half.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArgumentError } from '../errors.js';

function fsyncPath(p: string): void {
  try {
    const fd = fs.openSync(p, 'r');
    try { fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
  } catch { /* some platforms cannot fsync a directory: that only weakens durability */ }
}

function fsyncTree(dir: string): void {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) fsyncTree(p);
    else fsyncPath(p);
  }
  fsyncPath(dir);
}

/**
 * Writes a directory atomically. `marker` names the file that marks a directory as ours: an
 * existing non-empty `dir` without it is refused (we never replace someone else's folder).
 * `fill` writes the contents into the temporary directory it is given; on any error the
 * temporary directory is removed and `dir` is left as it was.
 */
export async function replaceDirAtomically(op: string, dir: string, marker: string, fill: (tmp: string) => Promise<void> | void): Promise<void> {
  dir = path.resolve(dir);
  if (fs.existsSync(dir)) {
    if (!fs.statSync(dir).isDirectory()) throw new ArgumentError(`${op}: ${dir} exists and is not a directory`);
    if (fs.readdirSync(dir).length > 0 && !fs.existsSync(path.join(dir, marker))) {
      throw new ArgumentError(`${op}: ${dir} exists, is not empty and holds no ${marker}; refusing to replace it`);
    }
  }
  const tmp = `${dir}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  try {
    await fill(tmp);
    fsyncTree(tmp);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  const old = `${dir}.old-${process.pid}`;
  let moved = false;
  if (fs.existsSync(dir)) {
    fs.rmSync(old, { recursive: true, force: true });
    fs.renameSync(dir, old);
    moved = true;
  }
  try {
    fs.renameSync(tmp, dir);
  } catch (e) {
    if (moved) fs.renameSync(old, dir);
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  if (moved) fs.rmSync(old, { recursive: true, force: true });
  fsyncPath(path.dirname(dir));
}
