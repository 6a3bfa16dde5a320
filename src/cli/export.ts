// `mote export`: every expert of a bundle as a standalone PEFT adapter folder.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArgumentError } from '../errors.js';
import { MOTE_FILE, readMoteJson } from '../mote/format.js';
import { readJsonFile, writeJsonFile } from '../io/files.js';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, parsePeftConfig } from '../io/peft.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import { mergeStepExperts } from '../mote/merged_steps.js';
import { replaceDirAtomically, tryJson } from '../io/atomic_dir.js';
import { checkApart } from './common.js';

/** An export folder written by mote before the marker existed (experts.json { from, experts }), or null. */
function legacyExportFiles(dir: string): string[] | null {
  const j = tryJson(path.join(dir, 'experts.json'));
  if (!j || typeof j.from !== 'string' || !Array.isArray(j.experts)) return null;
  const files = ['experts.json'];
  for (const name of j.experts) {
    if (typeof name === 'string' && /^[A-Za-z0-9_.-]+$/.test(name) && name !== '.' && name !== '..')
      files.push(`${name}/${ADAPTER_CONFIG_FILE}`, `${name}/${ADAPTER_WEIGHTS_FILE}`);
  }
  return files;
}

export async function exportCommand(o: {
  mote: string;
  out: string;
  json?: boolean;
  overwrite?: boolean;
  mergedSteps?: boolean;
}): Promise<void> {
  let dir = o.mote;
  if (!fs.existsSync(path.join(dir, MOTE_FILE)) && fs.existsSync(path.join(dir, 'adapters', MOTE_FILE))) dir = path.join(dir, 'adapters');
  const f = path.join(dir, MOTE_FILE);
  if (!fs.existsSync(f)) throw new ArgumentError(`--mote: ${o.mote} is neither a MoTE bundle nor a checkpoint (no ${MOTE_FILE})`);
  // An --out over the bundle replaced its files (mote.json went: the bundle was lost).
  checkApart('--out', o.out, '--mote', o.mote);
  const { experts } = readMoteJson(dir);
  // Check every expert before writing anything.
  for (const [name, sub] of Object.entries(experts)) {
    const cfgFile = path.join(dir, sub, ADAPTER_CONFIG_FILE);
    parsePeftConfig(readJsonFile(cfgFile, 'a PEFT adapter folder needs adapter_config.json'), cfgFile);
    readSafetensors(path.join(dir, sub, ADAPTER_WEIGHTS_FILE));
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new ArgumentError(`${f}: expert name '${name}' is not a plain folder name`);
  }
  const written: string[] = [];
  // --merged-steps: each step folded with the shared expert into one adapter (src/mote/merged_steps.ts).
  const merged = o.mergedSteps ? mergeStepExperts(dir) : null;
  await replaceDirAtomically(
    'mote export',
    o.out,
    { kind: 'peft-export', legacy: legacyExportFiles, overwrite: o.overwrite === true },
    (tmp) => {
      if (merged) {
        for (const [name, a] of merged) {
          fs.mkdirSync(path.join(tmp, name));
          fs.writeFileSync(path.join(tmp, name, ADAPTER_CONFIG_FILE), JSON.stringify(a.config, null, 2) + '\n');
          writeSafetensors(path.join(tmp, name, ADAPTER_WEIGHTS_FILE), a.tensors);
          written.push(path.join(path.resolve(o.out), name));
        }
        fs.writeFileSync(
          path.join(tmp, 'experts.json'),
          JSON.stringify({ from: path.resolve(dir), experts: [...merged.keys()], merged: true }, null, 2) + '\n',
        );
        return;
      }
      for (const [name, sub] of Object.entries(experts)) {
        fs.mkdirSync(path.join(tmp, name));
        for (const file of [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE])
          fs.copyFileSync(path.join(dir, sub, file), path.join(tmp, name, file));
        written.push(path.join(path.resolve(o.out), name));
      }
      writeJsonFile(path.join(tmp, 'experts.json'), { from: path.resolve(dir), experts: Object.keys(experts) });
    },
  );
  if (o.json) process.stdout.write(JSON.stringify({ out: path.resolve(o.out), adapters: written }) + '\n');
  else for (const w of written) process.stdout.write(`${w}\n`);
}
