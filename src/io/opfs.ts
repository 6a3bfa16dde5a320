// The parts of the File System Access API (FileSystemDirectoryHandle, FileSystemFileHandle)
// that mote's OPFS source and sink use, and a folder of relative paths over them. Typed here
// (not from lib.dom) so that Node builds and tests can run the same code against a stand-in.

/** A folder that can be listed, read, written and emptied (by relative paths): what OpfsSink and OpfsSource need. */
export interface Folder {
  list(): Promise<string[]>;
  read(rel: string): Promise<Uint8Array | null>;
  write(rel: string, data: readonly Uint8Array[]): Promise<void>;
  remove(rel: string): Promise<void>;
}

/** The parts of the File System Access API OpfsSink uses (FileSystemDirectoryHandle). */
export interface DirHandle {
  readonly kind: 'directory';
  readonly name: string;
  getDirectoryHandle(name: string, opts?: { create?: boolean }): Promise<DirHandle>;
  getFileHandle(name: string, opts?: { create?: boolean }): Promise<FileHandle>;
  removeEntry(name: string, opts?: { recursive?: boolean }): Promise<void>;
  entries(): AsyncIterable<[string, DirHandle | FileHandle]>;
  /** Chromium: moves this folder (into `parent` as `name`). */
  move?(parent: DirHandle, name: string): Promise<void>;
}
export interface FileHandle {
  readonly kind: 'file';
  readonly name: string;
  getFile(): Promise<Blob>;
  createWritable(): Promise<{ write(data: Uint8Array): Promise<void>; close(): Promise<void>; abort?(reason?: unknown): Promise<void> }>;
}

export function isNotFound(e: unknown): boolean {
  return (e as { name?: string })?.name === 'NotFoundError' || (e as { name?: string })?.name === 'TypeMismatchError';
}

export async function dirAt(root: DirHandle, parts: readonly string[], create: boolean): Promise<DirHandle | null> {
  let d = root;
  for (const p of parts) {
    try {
      d = await d.getDirectoryHandle(p, { create });
    } catch (e) {
      if (!create && isNotFound(e)) return null;
      throw e;
    }
  }
  return d;
}

/** An OPFS folder as a Folder (list/read/write/remove by relative path). */
export function opfsFolder(root: DirHandle): Folder {
  const split = (rel: string) => {
    const ps = rel.split('/');
    return { dirs: ps.slice(0, -1), file: ps[ps.length - 1]! };
  };
  return {
    async list() {
      const out: string[] = [];
      const walk = async (d: DirHandle, prefix: string) => {
        for await (const [n, h] of d.entries()) {
          if (h.kind === 'directory') await walk(h, `${prefix}${n}/`);
          else out.push(prefix + n);
        }
      };
      await walk(root, '');
      return out.sort();
    },
    async read(rel) {
      const { dirs, file } = split(rel);
      const d = await dirAt(root, dirs, false);
      if (!d) return null;
      try {
        return new Uint8Array(await (await (await d.getFileHandle(file)).getFile()).arrayBuffer());
      } catch (e) {
        if (isNotFound(e)) return null;
        throw e;
      }
    },
    async write(rel, data) {
      const { dirs, file } = split(rel);
      const d = (await dirAt(root, dirs, true))!;
      const w = await (await d.getFileHandle(file, { create: true })).createWritable();
      try {
        for (const p of data) await w.write(p);
        await w.close();
      } catch (e) {
        await w.abort?.(e).catch(() => {});
        throw e;
      }
    },
    async remove(rel) {
      const { dirs, file } = split(rel);
      const d = await dirAt(root, dirs, false);
      if (!d) return;
      try {
        await d.removeEntry(file);
      } catch (e) {
        if (!isNotFound(e)) throw e;
      }
    },
  };
}
