// `mote bench`: runs the benchmark suite of a source checkout (dist/bench/run.js).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ArgumentError } from '../errors.js';

export function benchCommand(args: string[]): void {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
  const script = path.join(root, 'dist', 'bench', 'run.js');
  if (!fs.existsSync(script))
    throw new ArgumentError(
      `the benchmarks ship with the source checkout (${script} not found): clone the repository and run npm run bench`,
    );
  const r = spawnSync(process.execPath, [script, ...args], { stdio: 'inherit' });
  process.exitCode = r.status ?? 1;
}
