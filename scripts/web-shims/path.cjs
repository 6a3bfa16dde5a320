// node:path in the browser bundle (see build-web.mjs): the POSIX join that error messages use
// for the names of the files a tokenizer or model came from. Everything else throws.
const unavailable = require('./node_unavailable.cjs');

function join(...parts) {
  const segs = [];
  for (const s of parts.join('/').split('/')) {
    if (s === '' || s === '.') continue;
    if (s === '..' && segs.length > 0 && segs[segs.length - 1] !== '..') segs.pop();
    else segs.push(s);
  }
  const abs = parts.length > 0 && parts[0].startsWith('/');
  return (abs ? '/' : '') + segs.join('/') || (abs ? '/' : '.');
}

module.exports = new Proxy({ join }, { get: (t, name) => (name in t ? t[name] : unavailable[name]) });
