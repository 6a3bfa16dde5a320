// Progress of long CLI runs: a cli-progress bar on a terminal, a plain line every ~10% when
// stderr is not a terminal (CI logs), and JSON lines on stdout with --json (for scripts).
import cliProgress from 'cli-progress';

export interface Progress {
  /** Updates the bar (done of total) with named values shown after it. */
  update(done: number, values?: Record<string, string | number>): void;
  /** A message that does not break the bar. */
  log(text: string): void;
  stop(): void;
}

export function progress(label: string, total: number, opts: { json: boolean }): Progress {
  if (opts.json) {
    return {
      update: (done, values = {}) => process.stdout.write(JSON.stringify({ event: 'progress', label, done, total, ...values }) + '\n'),
      log: (text) => process.stdout.write(JSON.stringify({ event: 'log', label, text }) + '\n'),
      stop: () => {},
    };
  }
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        format: `${label} [{bar}] {value}/{total} {info}`,
        stream: process.stderr,
        hideCursor: true,
        clearOnComplete: false,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(total, 0, { info: '' });
    return {
      update: (done, values = {}) =>
        bar.update(done, {
          info: Object.entries(values)
            .map(([k, v]) => `${k} ${v}`)
            .join('  '),
        }),
      log: (text) => {
        bar.stop();
        process.stderr.write(`${text}\n`);
        bar.start(total, 0, { info: '' });
      },
      stop: () => bar.stop(),
    };
  }
  let shown = -1;
  return {
    update: (done, values = {}) => {
      const tenth = Math.floor((10 * done) / Math.max(1, total));
      if (tenth === shown && done !== total) return;
      shown = tenth;
      process.stderr.write(
        `${label} ${done}/${total} ${Object.entries(values)
          .map(([k, v]) => `${k} ${v}`)
          .join('  ')}\n`,
      );
    },
    log: (text) => process.stderr.write(`${text}\n`),
    stop: () => {},
  };
}
