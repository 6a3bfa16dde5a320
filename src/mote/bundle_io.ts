// Saving and loading MoTE bundles: a folder of one PEFT adapter per expert plus mote.json
// (layout and index: src/mote/format.ts). Both are async, as loadModel and saveModel are.

import { ArgumentError, FormatError, describe } from '../errors.js';
import { LINEAR_MODULES } from '../model/config.js';
import type { LlamaModel } from '../model/llama.js';
import { ADAPTER_CONFIG_FILE, peftModulePath } from '../io/peft.js';
import { checkModel, uploadStacks } from '../adapters/stacks.js';
import { readAdapter, stackAdapters, writeExpert, type ReadAdapter } from '../adapters/peft_io.js';
import { openSource, type SourceInput } from '../io/source.js';
import { openSink, type FileSink } from '../io/sink.js';
import { overwriteOption } from '../io/atomic_dir.js';
import { jsonText } from '../io/files.js';
import type { StackReadCache } from '../adapters/stacks.js';
import { SHARED_EXPERT } from './steps.js';
import { MOTE_FILE, readMoteJsonFrom } from './format.js';
import { MoteBundle } from './bundle.js';

/**
 * Saves a bundle to `dir`: mote.json plus one PEFT adapter folder per expert. Written into
 * `<dir>.tmp-<pid>` and swapped into place; an existing bundle at `dir` is replaced only once
 * the new one is complete. A non-empty `dir` that mote did not write is refused unless
 * opts.overwrite (then its files are kept; see src/io/atomic_dir.ts). `dir` may also be a
 * FileSink (src/io/sink.ts): an OPFS folder (OpfsSink) or memory (MemorySink, e.g. for a
 * download as one tar file), with the same marker and the same rules.
 */
export async function saveMote(bundle: MoteBundle, dir: string | FileSink, opts: { overwrite?: boolean } = {}): Promise<void> {
  const op = 'saveMote';
  if (!(bundle instanceof MoteBundle)) throw new ArgumentError(`${op}: bundle: expected a MoteBundle, got ${describe(bundle)}`);
  if (bundle.disposed) throw new ArgumentError(`${op}: bundle: used after dispose()`);
  await bundle.save(dir, opts);
}

/**
 * Loads a bundle saved by saveMote onto `model`'s backend, from a folder path (Node) or any
 * source (a URL, File/Blob objects, bytes, an OPFS folder: src/io/source.ts). Every expert
 * folder is checked against the model (FormatError naming the file and tensor) and must adapt
 * exactly the bundle's target modules on every layer; nothing stays allocated when loading fails.
 */
export async function loadMote(dir: SourceInput, model: LlamaModel): Promise<MoteBundle> {
  const op = 'loadMote';
  checkModel(op, model);
  if (dir === '' || dir === null || dir === undefined)
    throw new ArgumentError(`${op}: dir: expected a bundle folder, got ${describe(dir)}`);
  const src = openSource(dir, op, 'dir');
  const { config, experts, baseModel } = await readMoteJsonFrom(src);
  const cfg = model.config;
  const names = [...config.steps, SHARED_EXPERT];
  const adapters: ReadAdapter[] = [];
  for (const n of names) adapters.push(await readAdapter(cfg, src.sub(experts[n]!)));
  adapters.forEach((a, e) => {
    const cfgFile = src.sub(experts[names[e]!]!).where(ADAPTER_CONFIG_FILE);
    for (let l = 0; l < cfg.numLayers; l++) {
      for (const m of LINEAR_MODULES) {
        const has = a.modules.has(`${l}.${m}`);
        const want = config.targetModules.includes(m);
        if (has && !want)
          throw new FormatError(`${cfgFile}: adapts ${peftModulePath(l, m)}, which ${MOTE_FILE}'s target_modules does not list`);
        if (!has && want)
          throw new FormatError(
            `${cfgFile}: does not adapt ${peftModulePath(l, m)}, which ${MOTE_FILE}'s target_modules lists (expert '${names[e]}')`,
          );
      }
    }
  });
  const stacks = uploadStacks(model.backend, cfg, stackAdapters(cfg, adapters));
  return new MoteBundle(config, cfg, model.backend, stacks, baseModel);
}

/**
 * Exports every expert of `bundle` as a standalone PEFT LoRA adapter folder
 * (`<dir>/<expert>/adapter_config.json`, `adapter_model.safetensors`) plus `experts.json`
 * listing them, as `mote export` does from a saved bundle: for a folder path (Node) or a
 * FileSink (an OPFS folder, or memory for a download). The same ownership rules as saveMote.
 */
export async function exportPeft(bundle: MoteBundle, dir: string | FileSink, opts: { overwrite?: boolean } = {}): Promise<void> {
  const op = 'exportPeft';
  if (!(bundle instanceof MoteBundle)) throw new ArgumentError(`${op}: bundle: expected a MoteBundle, got ${describe(bundle)}`);
  if (bundle.disposed) throw new ArgumentError(`${op}: bundle: used after dispose()`);
  if (typeof dir === 'string' && dir === '') throw new ArgumentError(`${op}: dir: expected a directory path, got ''`);
  const sink = openSink(dir, op);
  if (!opts || typeof opts !== 'object') throw new ArgumentError(`${op}: opts: expected { overwrite? }, got ${describe(opts)}`);
  const overwrite = overwriteOption(op, opts.overwrite);
  const c = bundle.config;
  await sink.replaceDir(op, { kind: 'peft-export', overwrite }, async (w) => {
    const cache: StackReadCache = new Map();
    for (const [e, name] of bundle.experts.entries())
      await writeExpert(bundle, e, w.sub(name), c.rank, c.loraAlpha, bundle.baseModel, cache);
    await w.write('experts.json', jsonText({ from: bundle.baseModel, experts: bundle.experts }));
  });
}
