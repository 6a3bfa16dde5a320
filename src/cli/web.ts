// `mote web`: serves the browser examples (examples/browser: a multi-LoRA kernel page and the
// MoTE demo page that trains on the toy chains in the tab), the browser bundle and the bundled
// model on 127.0.0.1, and prints their URLs. Ctrl-C stops it.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { ArgumentError } from '../errors.js';
import { intFlag } from './flags.js';

export async function webCommand(o: { port?: string; host?: string; json?: boolean }): Promise<void> {
  const port = intFlag('port', o.port, 0, 65535, 8080);
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
  const script = path.join(root, 'examples', 'browser', 'serve.mjs');
  if (!fs.existsSync(script)) throw new ArgumentError(`the browser examples are missing (${script}); reinstall mote-lora`);
  if (!fs.existsSync(path.join(root, 'dist', 'web', 'mote.js')))
    throw new ArgumentError('the browser bundle is missing (dist/web/mote.js): run npm run build');
  const { startExampleServer } = (await import(pathToFileURL(script).href)) as {
    startExampleServer(port: number, host?: string): Promise<{ server: import('node:http').Server; url: string }>;
  };
  const { server, url } = await startExampleServer(port, o.host ?? '127.0.0.1');
  if (o.json) process.stdout.write(JSON.stringify({ url, demo: `${url}demo.html` }) + '\n');
  else
    process.stdout.write(
      `mote web: ${url} (kernels) and ${url}demo.html (MoTE trained in the page); Chromium on Linux needs --enable-unsafe-webgpu. Ctrl-C stops it.\n`,
    );
  await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()));
  server.closeAllConnections();
  server.close();
  process.stderr.write('mote: interrupted (Ctrl-C); the server stopped\n');
  process.exitCode = 130;
}
