// Stands in for a Node built-in (node:fs, node:os, ...) in the browser bundle (see
// build-web.mjs): modules that mix file I/O with in-memory code still load, and calling one
// of their file functions throws a BackendUnavailableError. CommonJS, so that every named
// import resolves, to a function that throws, when it is called.
const { BackendUnavailableError } = require('../../src/errors.ts');

module.exports = new Proxy({}, {
  get(_target, name) {
    if (name === '__esModule') return false;
    return () => {
      throw new BackendUnavailableError('node', `${String(name)}() needs Node's file system; in the browser, pass tensors and parsed JSON instead`);
    };
  },
});
