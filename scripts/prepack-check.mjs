// `prepack` (before `npm pack` / `npm publish`): the package should carry the prebuilt CPU addon
// (`npm run build:prebuilt`), else every install compiles from source. Missing is a warning, not an
// error: such a package still installs (it builds the addon, given cmake and a C++ compiler).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { root } from './native-common.mjs';

const prebuilt = join(root, 'prebuilds', 'linux-x64', 'mote.node');
if (!existsSync(prebuilt)) {
  console.warn(
    'mote: WARNING: prebuilds/linux-x64/mote.node is missing; run `npm run build:prebuilt` before `npm pack`,\n' +
      'mote: or every install of this package will compile the addon from source.',
  );
}
if (!existsSync(join(root, 'dist', 'src', 'index.js'))) {
  console.error('mote: dist/src is missing: `prepare` (tsc) did not run; run `npm ci` first');
  process.exit(1);
}
