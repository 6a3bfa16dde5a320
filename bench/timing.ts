// Timing through benchmark.js. Every measured function is async and ends with
// `await backend.sync()`, so GPU work is inside the timed region; benchmark.js runs it in
// deferred mode (`defer: true`), timing `count` back-to-back calls per sample.
import Benchmark from 'benchmark';

export interface TimeOptions {
  /** Seconds benchmark.js may spend on one measurement (after it has minSamples). */
  maxTime: number;
  /** Samples to collect at least. */
  minSamples: number;
  /** Untimed calls before benchmark.js starts (page faults, pipeline compilation, JIT). */
  warmup?: number;
}

export interface Timing {
  /** Median over benchmark.js samples (each sample is the mean of `count` calls), ms. */
  medianMs: number;
  meanMs: number;
  /** Fastest and slowest sample, ms. */
  minMs: number;
  maxMs: number;
  /** Relative margin of error of the mean, percent (benchmark.js). */
  rme: number;
  samples: number;
  /** Calls timed in all. */
  calls: number;
}

/** Seconds per call above which a measurement takes fewer samples. */
const SLOW_S = 1;

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Times `fn` (which must include the backend sync) with benchmark.js. */
export async function time(name: string, fn: () => Promise<unknown>, opts: TimeOptions): Promise<Timing> {
  // Errors surface here, before timing. A call slower than SLOW_S (the masked baseline at
  // large T) is warmed up once and sampled 3 times: its noise is small next to its length.
  let minSamples = opts.minSamples;
  for (let i = 0; i < (opts.warmup ?? 2); i++) {
    const t0 = performance.now();
    await fn();
    if ((performance.now() - t0) / 1e3 > SLOW_S) {
      minSamples = Math.min(minSamples, 3);
      break;
    }
  }
  return new Promise<Timing>((resolve, reject) => {
    let failure: unknown = null;
    let settled = false;
    const bench: Benchmark = new Benchmark(name, {
      defer: true,
      maxTime: opts.maxTime,
      minSamples,
      // A function (not a string) with no setup/teardown is called by reference, so closures work.
      fn(deferred: { resolve(): void }) {
        fn().then(
          () => deferred.resolve(),
          (e: unknown) => {
            failure ??= e;
            bench.abort();
            deferred.resolve();
          },
        );
      },
    });
    const finish = (): void => {
      if (settled) return;
      settled = true;
      if (failure !== null) return reject(failure);
      if (bench.error) return reject(bench.error);
      const sample = bench.stats.sample.map((s) => s * 1e3);
      if (sample.length === 0) return reject(new Error(`${name}: benchmark.js collected no samples`));
      resolve({
        medianMs: median(sample),
        meanMs: bench.stats.mean * 1e3,
        minMs: Math.min(...sample),
        maxMs: Math.max(...sample),
        rme: bench.stats.rme,
        samples: sample.length,
        calls: sample.length * bench.count,
      });
    };
    bench.on('complete', finish);
    bench.on('abort', finish);
    bench.on('error', finish);
    bench.run({ async: true });
  });
}
