// Serves the examples on http://127.0.0.1:8080/examples/browser/ (PORT to change it): the pages,
// the bundle from dist/web (run `npm run build` first) and the bundled model (the demo page
// loads it over HTTP). 127.0.0.1 is a secure context, which WebGPU needs. Chromium on Linux:
// start it with --enable-unsafe-webgpu. `npx mote web` runs the same server.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(fileURLToPath(import.meta.url), '..', '..', '..');
const SERVED = ['examples/browser/', 'dist/web/', 'assets/default-model/'];
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.safetensors': 'application/octet-stream',
};

/** Starts the server on 127.0.0.1:port (0: any free port); resolves with its URL. */
export function startExampleServer(port = 8080, host = '127.0.0.1') {
  const server = createServer(async (req, res) => {
    let path;
    try {
      // decodeURIComponent('%') and new URL('//%%') throw: that was an unhandled rejection, the server gone.
      path = normalize(decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)).replace(/^\/+/, '');
    } catch {
      res.writeHead(400).end();
      return;
    }
    if (path.endsWith('/')) path += 'index.html';
    if (!SERVED.some((d) => path.startsWith(d)) || path.includes('..') || path.includes('\0') || !TYPES[extname(path)]) {
      res.writeHead(404).end();
      return;
    }
    try {
      res.writeHead(200, { 'content-type': TYPES[extname(path)] }).end(await readFile(join(root, path)));
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve({ server, url: `http://${host}:${server.address().port}/examples/browser/` }));
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { url } = await startExampleServer(Number(process.env.PORT ?? 8080));
  console.log(`${url} (the kernel example) and ${url}demo.html (MoTE trained in the page)`);
}
