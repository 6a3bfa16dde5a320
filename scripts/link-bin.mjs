// In a checkout of mote itself, npm does not link the package's own `bin` into
// node_modules/.bin, so `npx mote` would not find it. Link it (as npm would for a dependent).
import { existsSync, mkdirSync, symlinkSync, rmSync, lstatSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const binDir = join(root, 'node_modules', '.bin');
if (existsSync(join(root, 'node_modules')) && !root.split(/[\\/]/).includes('node_modules')) {
  mkdirSync(binDir, { recursive: true });
  const link = join(binDir, 'mote');
  try {
    lstatSync(link);
    rmSync(link);
  } catch {
    /* not there */
  }
  symlinkSync(join('..', '..', 'bin', 'mote.js'), link);
}
