// Shared by the install script (build-native.mjs) and the maintainers' prebuild script (prebuild.mjs):
// where things are, a cmake-js run with progress, a load check in a child process.
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { closeSync, existsSync, openSync, writeSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const platformTag = `${process.platform}-${process.arch}`;
/** The prebuilt CPU addon for this platform, as shipped in the package (src/backend/native.ts looks here). */
export const prebuiltPath = join(root, 'prebuilds', platformTag, 'mote.node');

// npm (7+) hides an install script's output unless it fails or --foreground-scripts is set; a
// build of over a minute that prints nothing looks hung, so status lines also go to the terminal.
let tty = -1;
function terminal() {
  if (tty !== -1) return tty;
  tty = null;
  const hidden = process.env.npm_lifecycle_event && process.env.npm_config_foreground_scripts !== 'true' && !process.env.CI;
  if (hidden && process.platform !== 'win32') {
    try {
      tty = openSync('/dev/tty', 'w');
    } catch {
      tty = null;
    }
  }
  return tty;
}

/** A status line: to stderr (kept in npm's log) and, when npm hides it, to the terminal. */
export function say(line, { progress = false } = {}) {
  if (!progress) console.error(line);
  const fd = terminal();
  if (fd !== null) {
    try {
      writeSync(fd, progress ? `\r${line}` : `${line}\n`);
    } catch {
      /* terminal went away */
    }
  }
}

export function closeTerminal() {
  if (tty !== null && tty !== -1) {
    try {
      closeSync(tty);
    } catch {
      /* already closed */
    }
  }
}

/** Runs cmake-js (configure, then build) with the given -D options into outDir; resolves to true on success. */
export async function cmakeBuild(outDir, defines) {
  const require = createRequire(import.meta.url);
  let cmakeJs;
  try {
    cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  } catch {
    say('mote: cmake-js is not installed, so the native addon cannot be built from source');
    return false;
  }
  const jobs = String(Math.max(1, availableParallelism()));
  const flags = Object.entries(defines).map(([k, v]) => `--CD${k}=${v}`);
  const run = (cmd) =>
    new Promise((resolve) => {
      // configure every time: `compile` would keep cached options from an earlier build
      const child = spawn(process.execPath, [cmakeJs, cmd, '--out', outDir, ...flags, '--parallel', jobs], {
        cwd: root,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: jobs },
      });
      let last = -1;
      const relay = (stream, out) => {
        let pending = '';
        stream.on('data', (chunk) => {
          out.write(chunk);
          pending += chunk.toString();
          const lines = pending.split('\n');
          pending = lines.pop();
          for (const line of lines) {
            // make prints "[ 42%] Building CXX object ...", ninja "[12/40] Building CXX object ..."
            const m = /^\[\s*(\d+)%\]/.exec(line) ?? /^\[(\d+)\/(\d+)\]/.exec(line);
            if (!m) continue;
            const pct = m[2] ? Math.floor((100 * Number(m[1])) / Number(m[2])) : Number(m[1]);
            if (pct >= last + 5 || pct === 100) {
              last = pct;
              say(`mote: compiling the native addon… ${pct}%`, { progress: true });
            }
          }
        });
      };
      relay(child.stdout, process.stdout);
      relay(child.stderr, process.stderr);
      child.on('error', () => resolve(false));
      child.on('close', (code) => {
        if (last >= 0) say('', { progress: true });
        resolve(code === 0);
      });
    });
  return (await run('configure')) && (await run('build')) && existsSync(join(root, outDir, 'Release', 'mote.node'));
}

/** Loads an addon in a child process (a bad binary may crash rather than throw); returns its info() or an error. */
export function probeAddon(path, env = {}) {
  const code = `const a = require(${JSON.stringify(path)}); process.stdout.write(JSON.stringify(a.info()))`;
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
  if (r.status === 0) {
    try {
      return { ok: true, info: JSON.parse(r.stdout) };
    } catch {
      /* fall through */
    }
  }
  const why = (r.stderr || '').split('\n').find((l) => /Error|error/.test(l)) ?? (r.signal ? `killed by ${r.signal}` : `exit ${r.status}`);
  return { ok: false, reason: why.trim() };
}

/** True when nvcc is on PATH (the CUDA kernels need the local toolkit, so no prebuilt has them). */
export function haveNvcc() {
  const r = spawnSync(process.platform === 'win32' ? 'where' : 'sh', process.platform === 'win32' ? ['nvcc'] : ['-c', 'command -v nvcc'], {
    stdio: 'ignore',
  });
  return r.status === 0;
}
