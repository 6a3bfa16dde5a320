// Serves the example on http://127.0.0.1:8080/examples/browser/ (PORT to change it): the page
// and the bundle from dist/web (run `npm run build` first). 127.0.0.1 is a secure context,
// which WebGPU needs. Chromium on Linux: start it with --enable-unsafe-webgpu.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(fileURLToPath(import.meta.url), '..', '..', '..');
const SERVED = ['examples/browser/', 'dist/web/'];
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8' };
const port = Number(process.env.PORT ?? 8080);

createServer(async (req, res) => {
  let path = normalize(decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)).replace(/^\/+/, '');
  if (path.endsWith('/')) path += 'index.html';
  if (!SERVED.some((d) => path.startsWith(d)) || !TYPES[extname(path)]) { res.writeHead(404).end(); return; }
  try {
    res.writeHead(200, { 'content-type': TYPES[extname(path)] }).end(await readFile(join(root, path)));
  } catch {
    res.writeHead(404).end();
  }
}).listen(port, '127.0.0.1', () => console.log(`http://127.0.0.1:${port}/examples/browser/`));
