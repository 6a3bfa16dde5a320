#!/usr/bin/env node
import('../dist/src/cli/main.js').catch((e) => {
  if (e && e.code === 'ERR_MODULE_NOT_FOUND') {
    console.error('mote: the TypeScript build is missing (dist/). Run `npm run build` in the package folder.');
  } else {
    console.error(`mote: ${e && e.message ? e.message : e}`);
  }
  process.exit(1);
});
