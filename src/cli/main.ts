// The `mote` command.
import { Command, Option } from 'commander';
import { MoteError } from '../errors.js';
import { probeBackends, openBackend } from '../backend/select.js';
import type { BackendRequest } from '../backend/backend.js';
import { matmul } from '../ops/matmul.js';
import { matmulRef } from '../reference/matmul.js';
import { roundTo, type DType } from '../dtype.js';
import { trainCommand } from './train.js';
import { generateCommand } from './generate.js';
import { exportCommand } from './export.js';
import { benchCommand } from './bench.js';
import { evalCommand, selfAlignCommand } from './align.js';
import { demoCommand } from './demo.js';
import { serveCommand } from './serve.js';
import { webCommand } from './web.js';
import { intFlag } from './flags.js';
import { VERSION } from '../version.js';

function fmtBytes(n: number | undefined): string {
  if (!n) return '';
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${(n / 2 ** 20).toFixed(0)} MiB`;
}

async function info(opts: { json?: boolean }): Promise<void> {
  const found = await probeBackends();
  if (opts.json) {
    // One JSON document on one line, like every other command's --json output.
    console.log(JSON.stringify({ version: VERSION, node: process.versions.node, backends: found }));
    return;
  }
  for (const b of found) {
    if (b.available && b.info) {
      const i = b.info;
      console.log(`${b.kind.padEnd(7)} available  ${i.device}${i.software ? ' (software adapter)' : ''}`);
      if (i.features.length) console.log(`        features: ${i.features.join(', ')}`);
      if (i.memoryBytes) console.log(`        memory: ${fmtBytes(i.memoryBytes)}`);
      const d = Object.entries(i.details)
        .map(([k, v]) => `${k}=${v}`)
        .join(', ');
      if (d) console.log(`        ${d}`);
    } else {
      console.log(`${b.kind.padEnd(7)} missing    ${b.reason}`);
    }
  }
}

async function demoMatmul(opts: { backend: BackendRequest; dtype: DType; t: string; k: string; n: string }): Promise<void> {
  const T = intFlag('t', opts.t, 1, 4096, 17),
    K = intFlag('k', opts.k, 1, 4096, 64),
    N = intFlag('n', opts.n, 1, 4096, 48);
  const backend = await openBackend(opts.backend);
  try {
    const rand = (n: number) => Float32Array.from({ length: n }, () => Math.random() * 2 - 1);
    const xs = rand(T * K),
      ws = rand(N * K);
    const x = backend.tensor(xs, [T, K]);
    const w = backend.tensor(ws, [N, K], opts.dtype);
    const t0 = performance.now();
    const y = matmul(x, w);
    const out = await y.readFloat();
    const ms = performance.now() - t0;
    const ref = matmulRef(xs, roundTo(opts.dtype, ws), T, K, N);
    let num = 0,
      den = 0;
    for (let i = 0; i < ref.length; i++) {
      num += (out[i]! - ref[i]!) ** 2;
      den += ref[i]! ** 2;
    }
    console.log(
      `matmul on ${backend.kind} (${backend.info().device}): x[${T},${K}] · W[${N},${K}]ᵀ (${opts.dtype}) in ${ms.toFixed(1)} ms` +
        ` (first call, includes compile and transfer); relative error vs float64 reference ${Math.sqrt(num / den).toExponential(2)}`,
    );
    console.log(`y[0, 0..4] = ${Array.from(out.slice(0, Math.min(4, N)), (v) => v.toFixed(4)).join(', ')}`);
  } finally {
    backend.destroy();
  }
}

// Ctrl-C where no command handles it (loading a model, a demo, an eval): one line, exit 130.
// Commands that stop cleanly (generate, train, selfalign) add their own listener, and this one
// then stands back; a second Ctrl-C, after theirs is gone, ends the process here.
process.on('SIGINT', () => {
  if (process.listenerCount('SIGINT') > 1) return;
  process.stderr.write('mote: interrupted (Ctrl-C)\n');
  process.exit(130);
});

const program = new Command();
// commander's own errors (unknown option, missing argument, bad choice) get the same one-line
// `mote: ...` form as ours; subcommands inherit this output setting.
program.configureOutput({
  outputError: (str, write) => write(`mote: ${str.replace(/^error: /, '')}`),
});
program
  .name('mote')
  .description('multi-LoRA and step-routed MoTE kernels (cpu, webgpu, cuda)')
  .version(VERSION, '-V, --version', 'print the version of mote-lora');
program
  .command('info')
  .description('list the backends found, with their details, and why any is missing')
  .option('--json', 'machine-readable output')
  .action(info);
program
  .command('demo')
  .description('MoTE end to end on the bundled tiny model: train on toy AlignCoT chains, generate step by step, show the toy metrics')
  .option('-m, --model <dir>', 'HF model directory (default: the bundled tiny model)')
  .addOption(new Option('-b, --backend <kind>', 'backend').choices(['auto', 'cpu', 'webgpu', 'cuda']).default('auto'))
  .option('--steps <n>', 'training steps', '300')
  .option('--seed <n>', 'seed of the toy set and the training', '1')
  .option('--lr <x>', 'learning rate', '3e-3')
  .addOption(
    new Option('--prompt-routing <r>', 'prompt tokens in training: a random step expert per sequence (the paper) or shared only')
      .choices(['random-step', 'shared'])
      .default('random-step'),
  )
  .option('--json', 'one JSON line with the results')
  .option('--kernels', 'instead: one matmul on the backend, checked against the float64 reference')
  .addOption(new Option('--dtype <dtype>', 'weight dtype (--kernels)').choices(['f32', 'f16', 'bf16']).default('f32'))
  .option('-t <T>', 'rows of x (--kernels)', '17')
  .option('-k <K>', 'inputs (--kernels)', '64')
  .option('-n <N>', 'outputs (--kernels)', '48')
  .action((o) => (o.kernels ? demoMatmul(o) : demoCommand(o)));

const backendOption = () => new Option('-b, --backend <kind>', 'backend').choices(['auto', 'cpu', 'webgpu', 'cuda']).default('auto');
const collect = (v: string, prev: string[] = []) => [...prev, v];

program
  .command('train')
  .description('train a MoTE bundle (step experts + shared) on AlignCoT chains (JSONL)')
  .requiredOption('--chains <file>', 'chains, one JSON object per line ({prompt, analysis, guidance, answer} or {prompt, steps})')
  .requiredOption('-o, --out <dir>', 'where to save the bundle (one PEFT adapter per expert + mote.json)')
  .option('-m, --model <dir>', 'HF model directory (default: the bundled tiny model)')
  .addOption(backendOption())
  .option('--steps <n>', 'optimizer steps', '200')
  .option('--lr <x>', 'peak learning rate', '2e-4')
  .option('--warmup <n>', 'warmup steps')
  .option('--rank <r>', 'LoRA rank of every expert', '16')
  .option('--lora-alpha <a>', 'LoRA alpha (default 2·rank)')
  .option('--alpha <a>', 'weight of the step expert (shared: 1 − alpha)', '0.5')
  .option('--schema <steps>', 'steps with an expert, comma-separated (default analysis,guidance,answer)')
  .option('--p-skip <p>', 'step-skipping probability', '0.3')
  .option('--batch-tokens <n>', 'tokens per packed micro-batch', '512')
  .option('--grad-accum <n>', 'micro-batches per step', '1')
  .option('--max-length <n>', 'longest chain in tokens (trailing steps dropped)', '256')
  .option('--seed <n>', 'seed of every random draw', '0')
  .option('--checkpoint <dir>', 'checkpoint directory (saved on SIGINT and every --checkpoint-every steps)')
  .option('--checkpoint-every <n>', 'steps between checkpoints')
  .option('--resume', 'continue from the newest complete checkpoint of --checkpoint (a first run starts fresh, and says so)')
  .option('--json', 'JSON lines on stdout')
  .option('--overwrite', 'write into --out / --checkpoint folders mote did not write (their files are kept, never deleted)')
  .action(trainCommand);

program
  .command('generate')
  .description('step-routed generation: each step labelled with its expert')
  .option('-m, --model <dir>', 'HF model directory (default: the bundled tiny model)')
  .option('--mote <dir>', 'a MoTE bundle saved by train / saveMote')
  .addOption(backendOption())
  .option('-p, --prompt <text>', 'a prompt (repeatable)', collect)
  .option('--prompts <file>', 'prompts: JSONL, HH-RLHF transcripts or text lines')
  .option('--max-new-tokens <n>', 'tokens per sequence', '128')
  .option('--temperature <t>', '0 = greedy', '0')
  .option('--top-k <k>')
  .option('--top-p <p>')
  .option('--seed <n>', 'sampling seed', '0')
  .option('--skip <steps>', 'steps to skip, comma-separated')
  .option('--stop-after <step>', 'end after this step')
  .option('--first-step <step>', 'start every answer with this step (force its tag)')
  .option('--json', 'one JSON line per prompt ({prompt, steps: [{step, expert, text}], stopReason, tokens}; step null: outside any step)')
  .action(generateCommand);

program
  .command('selfalign')
  .description('the model writes its own AlignCoT chains, stage by stage, checking its answers (resumable JSONL)')
  .requiredOption('--prompts <file>', 'prompts: JSONL, HH-RLHF transcripts or text lines')
  .requiredOption('-o, --out <file>', 'chains JSONL (appended; prompts already in it are skipped)')
  .option('-m, --model <dir>', 'HF model directory (default: the bundled tiny model)')
  .option('--mote <dir>', 'route each stage through this bundle')
  .addOption(backendOption())
  .option('--batch <n>', 'prompts per batch', '16')
  .option('--max-new-tokens <n>', 'tokens per stage', '96')
  .option('--temperature <t>', '0 = greedy', '0')
  .option('--seed <n>', 'sampling seed', '0')
  .option('--no-adaptive', 'always write every step (no draft answer first)')
  .option('--offset <n>', 'skip the first n prompts of the file')
  .option('--limit <n>', 'handle at most n prompts (after --offset)')
  .option('--dropped <file>', 'JSONL of dropped prompts with their reason (default: OUT.dropped.jsonl); they are not retried on a rerun')
  .option('--json', 'JSON lines on stdout')
  .action(selfAlignCommand);

program
  .command('eval')
  .description('toy evaluation: refusal on risky questions, compliance on benign ones, well-formed chains; base, LoRA, MoTE and ablations')
  .option('-m, --model <dir>', 'HF model directory (default: the bundled tiny model)')
  .addOption(backendOption())
  .option('--variants <list>', `comma-separated, of ${'base,lora,mote,mote-no-shared,mote-no-skip'}`)
  .option('--seeds <list>', 'seeds (each: its own questions, split and training)', '1,2')
  .option('--questions <n>', 'toy questions per seed (a quarter held out)', '160')
  .option('--steps <n>', 'training steps per variant', '300')
  .option('--lr <x>', 'learning rate', '3e-3')
  .option('--rank <r>', 'LoRA rank', '8')
  .option('--p-skip <p>', 'step skipping of the MoTE variants', '0.3')
  .option('--max-new-tokens <n>', 'tokens per chain', '128')
  .option('--json', 'JSON lines on stdout')
  .action(evalCommand);

program
  .command('export')
  .description('write every expert of a MoTE bundle (or a training checkpoint) as its own PEFT adapter folder')
  .requiredOption('--mote <dir>', 'a MoTE bundle, or a checkpoint directory (its adapters/)')
  .requiredOption('-o, --out <dir>', 'output directory')
  .option('--overwrite', 'write into an --out folder mote did not write (its files are kept, never deleted)')
  .option(
    '--merged-steps',
    'one adapter per step with the shared expert folded in (rank r_step + r_shared): for servers that run one adapter per request',
  )
  .option('--json', 'machine-readable output')
  .action(exportCommand);

program
  .command('serve')
  .description('an OpenAI-compatible HTTP server (completions, chat, streaming) with MoTE bundles and PEFT adapters, continuous batching')
  .option('-m, --model <dir>', 'HF model directory (default: the bundled tiny model)')
  .addOption(backendOption())
  .option('--mote <spec>', 'a MoTE bundle, NAME=DIR or DIR (repeatable)', collect)
  .option('--lora <spec>', 'a PEFT LoRA adapter, NAME=DIR or DIR (repeatable)', collect)
  .option('--host <host>', 'address to listen on', '127.0.0.1')
  .option('--port <n>', 'port (0: any free one)', '8000')
  .option('--name <name>', "the base model's name in requests (default: the model folder's name)")
  .option('--allow-runtime-lora', 'enable /v1/load_lora_adapter and /v1/unload_lora_adapter (they read folders on this machine)')
  .option('--lora-root <dir>', 'with --allow-runtime-lora: runtime adapters must lie in this folder (relative lora_path from it)')
  .option('--max-sequences <n>', 'most requests decoding at once (more wait)', '64')
  .option('--max-waiting <n>', 'most requests waiting to start (more get a 503)', '1024')
  .option(
    '--adapter-budget-mb <n>',
    'device MiB the adapter pool may take; adapters past it are paged in when a request needs them (default: no limit)',
  )
  .option('--pool-unit <n>', 'ranks per adapter-pool entry (an adapter of rank r takes ceil(r / unit) entries)', '8')
  .option('--pool-entries <n>', 'adapter-pool entries allocated up front (it doubles when full, without a budget)', '64')
  .option('--json', 'one JSON line when listening ({url, model, backend, adapters})')
  .action(serveCommand);

program
  .command('web')
  .description('serve the browser examples (the kernel page and the MoTE demo that trains in the tab) on 127.0.0.1')
  .option('--port <n>', 'port (0: any free one)', '8080')
  .option('--host <host>', 'address to listen on', '127.0.0.1')
  .option('--json', 'one JSON line with the URLs')
  .action(webCommand);

program
  .command('bench')
  .description('run the benchmarks (a source checkout: npm run bench -- --help lists the options)')
  .allowUnknownOption(true)
  .helpOption(false)
  .argument('[args...]')
  .action(benchCommand);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  // One clear line; the stack only when asked for.
  const msg = e instanceof MoteError ? e.message : ((e as Error)?.message ?? String(e));
  console.error(`mote: ${msg}`);
  if (process.env.MOTE_DEBUG) console.error((e as Error)?.stack);
  process.exitCode = process.exitCode || 1;
}
