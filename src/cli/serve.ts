// `mote serve`: the OpenAI-compatible server (src/serve/http.ts) on a model with MoTE bundles
// and PEFT adapters given as NAME=DIR (or DIR: named after its folder).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArgumentError, MoteError } from '../errors.js';
import type { BackendRequest } from '../backend/backend.js';
import { Engine, EngineError } from '../serve/engine.js';
import { startServer } from '../serve/http.js';
import { stepTokenIds } from '../mote/chains.js';
import { bundleConfigAt, openModelFolder } from '../generate/chat.js';
import { intFlag } from './flags.js';

export interface ServeCliOptions {
  model?: string;
  backend: BackendRequest;
  mote?: string[];
  lora?: string[];
  host?: string;
  port?: string;
  name?: string;
  allowRuntimeLora?: boolean;
  loraRoot?: string;
  maxSequences?: string;
  maxWaiting?: string;
  adapterBudgetMb?: string;
  poolUnit?: string;
  poolEntries?: string;
  json?: boolean;
}

function named(flag: string, spec: string): { name: string; dir: string } {
  const eq = spec.indexOf('=');
  const name = eq > 0 ? spec.slice(0, eq) : path.basename(path.resolve(spec));
  const dir = eq > 0 ? spec.slice(eq + 1) : spec;
  if (!dir) throw new ArgumentError(`--${flag}: expected NAME=DIR or DIR, got ${JSON.stringify(spec)}`);
  return { name, dir };
}

export async function serveCommand(o: ServeCliOptions): Promise<void> {
  const port = intFlag('port', o.port, 0, 65535, 8000);
  const maxSequences = intFlag('max-sequences', o.maxSequences, 1, 4096, 64);
  const maxWaiting = intFlag('max-waiting', o.maxWaiting, 1, 2 ** 20, 1024);
  const budgetMb = o.adapterBudgetMb === undefined ? undefined : intFlag('adapter-budget-mb', o.adapterBudgetMb, 1, 2 ** 24, 0);
  const poolUnit = intFlag('pool-unit', o.poolUnit, 1, 4096, 8);
  const poolEntries = intFlag('pool-entries', o.poolEntries, 1, 2 ** 20, 64);
  const host = o.host ?? '127.0.0.1';
  if (o.loraRoot !== undefined) {
    if (!o.allowRuntimeLora)
      throw new ArgumentError('--lora-root: only with --allow-runtime-lora (it bounds where runtime adapters come from)');
    if (!fs.existsSync(o.loraRoot) || !fs.statSync(o.loraRoot).isDirectory())
      throw new ArgumentError(`--lora-root: ${JSON.stringify(o.loraRoot)} is not a folder`);
  }
  const motes = (o.mote ?? []).map((s) => named('mote', s));
  const loras = (o.lora ?? []).map((s) => named('lora', s));
  for (const m of motes)
    if (!fs.existsSync(path.join(m.dir, 'mote.json'))) throw new ArgumentError(`--mote: ${m.dir} is not a MoTE bundle (no mote.json)`);
  // The step tags come from the first bundle (every bundle must use the same steps).
  const config = bundleConfigAt(motes[0]?.dir, '--mote');
  const m = await openModelFolder(o.model, o.backend, config, { what: '--model' });
  const modelName = o.name ?? (o.model ? path.basename(path.resolve(o.model)) : 'mote-tiny');
  // Requests name a model by a non-empty string, and an adapter of the base's name would be unreachable.
  if (modelName.trim() === '' || modelName.length > 256 || /[\0-\x1f]/.test(modelName))
    throw new ArgumentError(`--name: expected a model name of 1-256 printable characters, got ${JSON.stringify(modelName)}`);
  for (const a of [...motes, ...loras])
    if (a.name === modelName)
      throw new ArgumentError(
        `--${motes.includes(a) ? 'mote' : 'lora'}: '${a.name}' is the base model's name (give it another: NAME=DIR, or set --name)`,
      );
  const tags = stepTokenIds(m.tokenizer, config);
  const engine = new Engine(m.model, {
    stepTokens: new Map(tags.start.map((id, k) => [id, k])),
    maxSequences,
    maxWaiting,
    poolUnit,
    poolEntries,
    ...(budgetMb !== undefined ? { adapterBudgetBytes: budgetMb * 2 ** 20 } : {}),
  });
  let server: Awaited<ReturnType<typeof startServer>>['server'] | null = null;
  try {
    for (const a of [...motes, ...loras]) {
      try {
        await engine.addAdapter(a.name, a.dir);
      } catch (e) {
        const flag = `--${motes.includes(a) ? 'mote' : 'lora'}`;
        if (e instanceof EngineError && e.status !== 507)
          throw new ArgumentError(`${flag}: ${e.message.replace(/^Engine\.addAdapter: /, '')}`);
        // 507, not the adapter's fault: the pool the flags sized could not be allocated.
        if (e instanceof MoteError) {
          const budget = budgetMb !== undefined ? `, --adapter-budget-mb ${budgetMb} (the pool takes the whole budget at once)` : '';
          throw new ArgumentError(
            `${flag} ${a.name}: the adapter pool could not take it (--pool-entries ${poolEntries}${budget}): ${e.message.replace(/^Engine\.addAdapter: /, '')}`,
          );
        }
        throw e;
      }
    }
    const started = await startServer(
      { engine, tokenizer: m.tokenizer, steps: config.steps, tagIds: new Set([...tags.start, ...tags.end]) },
      {
        host,
        port,
        modelName,
        allowRuntimeLora: o.allowRuntimeLora === true,
        ...(o.loraRoot !== undefined ? { loraRoot: o.loraRoot } : {}),
      },
    ).catch((e: NodeJS.ErrnoException) => {
      // listen's errors (EADDRINUSE, ENOTFOUND, EACCES) name neither flag.
      throw new ArgumentError(`--host ${JSON.stringify(host)} --port ${port}: cannot listen: ${e.message}`);
    });
    server = started.server;
    const adapters = engine.adapters().map((a) => ({ name: a.name, kind: a.kind, dir: a.dir }));
    if (o.json) process.stdout.write(JSON.stringify({ url: started.url, model: modelName, backend: m.backend.kind, adapters }) + '\n');
    else {
      process.stdout.write(
        `mote serve: ${started.url}/v1 on ${m.backend.kind} — model '${modelName}'${adapters.length ? `, adapters: ${adapters.map((a) => `${a.name} (${a.kind})`).join(', ')}` : ''}\n`,
      );
      process.stdout.write('Ctrl-C stops it.\n');
    }
    // Runs until Ctrl-C: running requests end, the server closes, exit 130.
    await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()));
    process.stderr.write('mote: interrupted (Ctrl-C); the server stopped\n');
    process.exitCode = 130;
  } finally {
    server?.closeAllConnections();
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    await engine.close();
    m.close();
  }
}
