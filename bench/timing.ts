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

/** One row of an interleaved measurement: its body (which must include the backend sync). */
export interface InterleavedEntry {
  name: string;
  fn: () => Promise<unknown>;
}

export interface InterleaveOptions {
  /** Seconds of timed calls per row in all (spread over the rounds). */
  maxTime: number;
  /** Rounds: every round runs every row once more, in a new random order. */
  rounds: number;
  /** Untimed calls per row before the first round (page faults, JIT), also used to size the samples. */
  warmup: number;
  /** Seed of the order of each round. */
  seed: number;
}

export interface InterleavedResult {
  /** Per entry: its timing, or the error it threw. */
  timings: (Timing | Error)[];
  /** Rounds run. */
  rounds: number;
}

/**
 * Times several rows interleaved: after a warm-up of every row, `rounds` rounds each run
 * every row for one sample (the mean of `count` back-to-back calls, `count` sized from the
 * warm-up so that a sample takes maxTime / rounds), rows in a fresh seeded random order per
 * round, so that a noisy neighbour or a slow drift hits every row alike. Timing = median of
 * the row's samples. A row slower than SLOW_S per call takes 3 samples.
 */
export async function timeInterleaved(entries: readonly InterleavedEntry[], o: InterleaveOptions): Promise<InterleavedResult> {
  const timings: (Timing | Error)[] = entries.map(() => new Error('not measured'));
  const count: number[] = entries.map(() => 1);
  const rounds: number[] = entries.map(() => o.rounds);
  const samples: number[][] = entries.map(() => []);
  const live: boolean[] = entries.map(() => true);
  const perSampleMs = (1e3 * o.maxTime) / o.rounds;
  for (let i = 0; i < entries.length; i++) {
    try {
      let last = Infinity;
      for (let w = 0; w < Math.max(1, o.warmup); w++) {
        const t0 = performance.now();
        await entries[i]!.fn();
        last = Math.min(last, performance.now() - t0);
        if (last > SLOW_S * 1e3) break;
      }
      if (last > SLOW_S * 1e3) rounds[i] = Math.min(o.rounds, 3);
      count[i] = Math.max(1, Math.min(100000, Math.round(perSampleMs / Math.max(last, 1e-4))));
    } catch (e) {
      timings[i] = e instanceof Error ? e : new Error(String(e));
      live[i] = false;
    }
  }
  let s = (o.seed * 2654435761) >>> 0 || 1;
  const rand = (): number => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
  const maxRounds = Math.max(0, ...rounds);
  for (let r = 0; r < maxRounds; r++) {
    const order = entries.map((_, i) => i).filter((i) => live[i] && r < rounds[i]!);
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    for (const i of order) {
      try {
        const fn = entries[i]!.fn;
        const n = count[i]!;
        const t0 = performance.now();
        for (let c = 0; c < n; c++) await fn();
        samples[i]!.push((performance.now() - t0) / n);
      } catch (e) {
        timings[i] = e instanceof Error ? e : new Error(String(e));
        live[i] = false;
      }
    }
  }
  entries.forEach((_, i) => {
    if (!live[i]) return;
    const xs = samples[i]!;
    if (xs.length === 0) return;
    const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
    const sd = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1)) : 0;
    timings[i] = {
      medianMs: median(xs),
      meanMs: mean,
      minMs: Math.min(...xs),
      maxMs: Math.max(...xs),
      rme: mean > 0 ? (100 * 1.96 * sd) / Math.sqrt(xs.length) / mean : 0,
      samples: xs.length,
      calls: xs.length * count[i]!,
    };
  });
  return { timings, rounds: maxRounds };
}
