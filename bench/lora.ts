// Multi-LoRA suites on the shapes of Punica's / vLLM's LoRA benchmarks, and the two
// baselines users would otherwise run, built only from our public ops:
//   loop:   per adapter, gather its tokens on the host, x_e·A_eᵀ·B_eᵀ with `matmul`, scatter-add back;
//   masked: per adapter, shrink + expand over ALL tokens with `matmul`, rows of other adapters
//           masked to 0 on the host (the mixed-batch-by-masking way).
// Each figure is reported against the roofline of the same run: min(FLOP ceiling, intensity × copy bandwidth).
import { freemem } from 'node:os';
import { encode, type DType } from '../src/dtype.js';
import { matmul } from '../src/ops/matmul.js';
import {
  chooseStrategy,
  loraApply,
  loraExpand,
  loraInputGrad,
  loraRouting,
  loraShrink,
  loraShrinkGrad,
  loraStack,
  loraWeightGrad,
  type LoraRouting,
  type LoraStack,
} from '../src/ops/lora.js';
import type { Backend } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { timeInterleaved, type TimeOptions, type Timing } from './timing.js';
import { randomFloats } from './random.js';
import type { Ceilings, CopyProbe, FlopProbe } from './ceilings.js';

export const LORA_OPS = ['loraShrink', 'loraExpand', 'loraApply', 'loraShrinkGrad', 'loraInputGrad', 'loraWeightGrad'] as const;
export type LoraOpName = (typeof LORA_OPS)[number];
export const BASELINES = ['loop', 'masked'] as const;
export type BaselineName = (typeof BASELINES)[number];
export type StrategyChoice = 'auto' | 'bgmv' | 'sgmv';
export type WeightDType = Exclude<DType, 'i32'>;

/**
 * One shape: H_in, H_out, rank R, T tokens, K slots per token, `distinct` adapters (L = distinct,
 * slot k of token t = (t·K + k) % distinct; K = 1: token t → adapter t % distinct).
 */
export interface LoraCase {
  Hin: number;
  Hout: number;
  R: number;
  T: number;
  K: number;
  distinct: number;
  dtype: WeightDType;
  ops: readonly LoraOpName[];
  baselines: boolean;
}

export interface CaseListOptions {
  quick: boolean;
  Hin: number;
  Houts: readonly number[];
  R?: number;
  /** Extra weight dtypes (loraApply rows only). */
  extraDTypes?: readonly WeightDType[];
  /** Add the rank-8 "unit" rows (K = 16 slots of rank 8 per token, 64 units, T ∈ {1, 16}, H_out = H_in). Default true. */
  units?: boolean;
}

/** The serving engine's rank-8 units: an adapter of rank r is r/8 slots of rank 8; 16 per token. */
export const UNIT_K = 16;
export const UNIT_R = 8;
export const UNIT_DISTINCT = 64;

/**
 * T ∈ {1, 16, 64, 256, 1024}, distinct ∈ {1, 16, 64}, H_out ∈ Houts; quick: T ∈ {1, 64},
 * distinct ∈ {1, 64}, first H_out. Combinations with distinct > T are skipped: only T adapters
 * can be used, so they repeat the (T, distinct = T) row.
 */
export function loraCases(o: CaseListOptions): LoraCase[] {
  const R = o.R ?? 16;
  const Ts = o.quick ? [1, 64] : [1, 16, 64, 256, 1024];
  const Ds = o.quick ? [1, 64] : [1, 16, 64];
  const Houts = o.quick ? o.Houts.slice(0, 1) : o.Houts;
  const out: LoraCase[] = [];
  for (const Hout of Houts) {
    for (const T of Ts) {
      for (const distinct of Ds) {
        if (distinct > T) continue;
        out.push({ Hin: o.Hin, Hout, R, T, K: 1, distinct, dtype: 'f32', ops: LORA_OPS, baselines: true });
      }
    }
  }
  if (o.units ?? true)
    for (const T of [1, 16])
      out.push({ Hin: o.Hin, Hout: o.Hin, R: UNIT_R, T, K: UNIT_K, distinct: UNIT_DISTINCT, dtype: 'f32', ops: LORA_OPS, baselines: true });
  for (const dtype of o.extraDTypes ?? []) {
    for (const T of Ts) {
      for (const distinct of Ds) {
        if (distinct > T) continue;
        out.push({ Hin: o.Hin, Hout: Houts[0]!, R, T, K: 1, distinct, dtype, ops: ['loraApply'], baselines: false });
      }
    }
  }
  return out;
}

/** Bytes that must move (each tensor read or written once) and flops, per op. */
export interface Work {
  bytes: number;
  flops: number;
}

/** Adapters that have tokens: min(T·K, distinct) with the round-robin slots. */
export function usedAdapters(c: LoraCase): number {
  return Math.min(c.T * c.K, c.distinct);
}

export function workOf(op: LoraOpName | BaselineName, c: LoraCase): Work {
  const K = c.K;
  const used = usedAdapters(c);
  const wb = c.dtype === 'f32' ? 4 : 2;
  const A = used * c.R * c.Hin * wb; // rows r < rank of the adapters used
  const B = used * c.Hout * c.R * wb;
  const x = c.T * c.Hin * 4;
  const y = c.T * c.Hout * 4;
  const v = c.T * K * c.R * 4;
  const fIn = 2 * c.T * K * c.R * c.Hin;
  const fOut = 2 * c.T * K * c.R * c.Hout;
  switch (op) {
    case 'loraShrink':
      return { bytes: A + x + v, flops: fIn };
    case 'loraExpand':
      return { bytes: B + v + 2 * y, flops: fOut }; // y read and written
    case 'loop':
    case 'masked':
    case 'loraApply':
      return { bytes: A + B + x + 2 * y + v, flops: fIn + fOut };
    case 'loraShrinkGrad':
      return { bytes: B + y + v, flops: fOut }; // dy read, dv written
    case 'loraInputGrad':
      return { bytes: A + v + x, flops: fIn }; // dv read, dx written
    case 'loraWeightGrad': // x, dy, v, dv read; dA, dB (f32) written for every adapter of the stack (0 for absent ones)
      return { bytes: x + y + 2 * v + c.distinct * c.R * (c.Hin + c.Hout) * 4, flops: fIn + fOut };
  }
}

export interface Bound {
  ms: number;
  /** 'memory' when intensity × bandwidth is the lower limit, else 'compute'. */
  limit: 'memory' | 'compute';
}

/** Roofline time: max(bytes / copy bandwidth, flops / FLOP ceiling). */
export function roofline(w: Work, ceil: Ceilings): Bound {
  const flopMs = w.flops / (ceil.flops.gflops * 1e6);
  if (ceil.copy.gbps === null) return { ms: flopMs, limit: 'compute' };
  const memMs = w.bytes / (ceil.copy.gbps * 1e6);
  return memMs >= flopMs ? { ms: memMs, limit: 'memory' } : { ms: flopMs, limit: 'compute' };
}

export interface Row {
  name: string;
  kind: 'op' | 'baseline';
  op: LoraOpName | BaselineName;
  dtype: WeightDType;
  Hin: number;
  Hout: number;
  R: number;
  T: number;
  K: number;
  distinct: number;
  /** Adapters that actually have tokens: min(T·K, distinct). */
  used: number;
  /** Requested strategy and what it resolved to ('-' for ops without one). */
  strategy: string;
  /** Copies of the weights cycled through so that they are read from memory, not cache. */
  replicas: number;
  bytes: number;
  flops: number;
  timing?: Timing;
  medianMs?: number;
  gbps?: number;
  gflops?: number;
  bound: Bound;
  /** bound.ms / medianMs, percent. */
  pctOfBound?: number;
  /** Copy bandwidth and matmul FLOP rate measured as rows of this row's case (interleaved with it, medians): what the machine had then. */
  copyNowGbps?: number;
  flopsNowGflops?: number;
  /** The roofline bound with those same-time ceilings, and % of it: the figure the targets use. */
  boundNow?: Bound;
  pctOfBoundNow?: number;
  error?: string;
}

export interface Comparison {
  dtype: WeightDType;
  Hin: number;
  Hout: number;
  R: number;
  T: number;
  K: number;
  distinct: number;
  applyMs?: number;
  loopMs?: number;
  maskedMs?: number;
  speedupVsLoop?: number;
  speedupVsMasked?: number;
  /** ‖y_baseline − y_apply‖ / ‖y_apply‖ on one call from y = 0. */
  relErrLoop?: number;
  relErrMasked?: number;
}

export interface SuiteOptions {
  timing: TimeOptions;
  /** Ceilings for the progress log; run.ts recomputes the bounds with the final ceilings. */
  ceilings: Ceilings;
  /** Weights are replicated until a replica set exceeds this many bytes. */
  coldBytes: number;
  strategies: readonly StrategyChoice[];
  /** Ceiling probes timed as rows of every case, interleaved with its rows. */
  probe?: CopyProbe;
  flopProbe?: FlopProbe;
  /** Rounds of the interleaved measurement (every row once per round, random order). */
  rounds: number;
  /** Multiplies the rounds and the time per row (for shared, noisy machines). Default 1. */
  repeat?: number;
  /** Row names must match (ops and baselines). */
  filter?: RegExp;
  log: (line: string) => void;
}

/** Recomputes bound and % of bound of every row against (final) ceilings. */
export function applyRoofline(rows: Row[], ceil: Ceilings): void {
  for (const r of rows) {
    r.bound = roofline(r, ceil);
    if (r.medianMs === undefined) continue;
    r.pctOfBound = (100 * r.bound.ms) / r.medianMs;
    if (r.copyNowGbps !== undefined || r.flopsNowGflops !== undefined) {
      r.boundNow = roofline(r, {
        ...ceil,
        copy: { ...ceil.copy, gbps: r.copyNowGbps ?? ceil.copy.gbps },
        flops: { ...ceil.flops, gflops: r.flopsNowGflops ?? ceil.flops.gflops },
      });
      r.pctOfBoundNow = (100 * r.boundNow.ms) / r.medianMs;
    }
  }
}

/** One copy of a layer's adapters: the stack, and the per-adapter tensors the baselines use. */
interface Replica {
  stack: LoraStack;
  /** Per adapter: A_e [R, H_in], B_e [H_out, R] (baselines only). */
  perA?: Tensor[];
  perB?: Tensor[];
  /** Weight gradients (loraWeightGrad only). */
  dA?: Tensor;
  dB?: Tensor;
}

const SCALE = 2; // alpha / r = 32 / 16

export function rowName(op: string, c: LoraCase, strategy?: string): string {
  return `${op} ${c.dtype} Hin=${c.Hin} Hout=${c.Hout} r=${c.R}${c.K !== 1 ? ` K=${c.K}` : ''} T=${c.T} d=${c.distinct}${strategy ? ` ${strategy}` : ''}`;
}

function relErr(a: Float32Array, ref: Float32Array): number {
  let num = 0,
    den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (a[i]! - ref[i]!) ** 2;
    den += ref[i]! ** 2;
  }
  return Math.sqrt(num / (den || 1));
}

/** Baseline (a): per-adapter loop with host gather/scatter (all host time is counted). */
async function perAdapterLoop(backend: Backend, rep: Replica, x: Tensor, y: Tensor, rt: LoraRouting, c: LoraCase): Promise<void> {
  const { T, Hin, Hout } = c;
  const K = rt.K;
  const slots = rt.host.slots,
    weight = rt.host.weight;
  const lists = new Map<number, number[]>();
  for (let i = 0; i < T * K; i++) {
    const e = slots[i]!;
    if (e >= 0) (lists.get(e) ?? lists.set(e, []).get(e)!).push(i);
  }
  const xh = await x.readFloat();
  const yh = await y.readFloat();
  const pending: Promise<void>[] = [];
  for (const [e, list] of lists) {
    const n = list.length;
    const xe = new Float32Array(n * Hin);
    for (let j = 0; j < n; j++) {
      const t = Math.floor(list[j]! / K);
      xe.set(xh.subarray(t * Hin, (t + 1) * Hin), j * Hin);
    }
    const xt = backend.tensor(xe, [n, Hin]);
    const ve = matmul(xt, rep.perA![e]!); // [n, R]
    const ye = matmul(ve, rep.perB![e]!); // [n, H_out]
    pending.push(
      ye
        .readFloat()
        .then((r) => {
          for (let j = 0; j < n; j++) {
            const i = list[j]!;
            const t = Math.floor(i / K);
            const g = weight[i]! * SCALE;
            const yo = t * Hout,
              ro = j * Hout;
            for (let o = 0; o < Hout; o++) yh[yo + o]! += g * r[ro + o]!;
          }
        })
        .finally(() => {
          xt.dispose();
          ve.dispose();
          ye.dispose();
        }),
    );
  }
  await Promise.all(pending);
  y.write(yh);
}

/** Baseline (b): every adapter over the whole batch, rows of other adapters masked to 0, added into y. */
async function maskedFullBatch(backend: Backend, rep: Replica, x: Tensor, y: Tensor, rt: LoraRouting, c: LoraCase): Promise<void> {
  const { T, R } = c;
  const K = rt.K;
  const slots = rt.host.slots,
    weight = rt.host.weight;
  const adapters = Array.from(rt.host.segAdapter);
  const vs = adapters.map((e) => matmul(x, rep.perA![e]!)); // [T, R] each, over all T tokens
  const vh = await Promise.all(vs.map((v) => v.readFloat()));
  vs.forEach((v) => v.dispose());
  adapters.forEach((e, a) => {
    const m = vh[a]!;
    for (let t = 0; t < T; t++) {
      let g = 0;
      for (let k = 0; k < K; k++) if (slots[t * K + k] === e) g += weight[t * K + k]! * SCALE;
      for (let r = 0; r < R; r++) m[t * R + r]! *= g;
    }
    const vm = backend.tensor(m, [T, R]);
    matmul(vm, rep.perB![e]!, { out: y, accumulate: true }); // full [T, H_out] per adapter
    vm.dispose();
  });
}

/**
 * Weight bytes the lightest op touches in one call: shrink and inputGrad read only A,
 * expand and shrinkGrad only B. Replicas are counted from this, so that cycling through
 * them evicts the cache for every op.
 */
function weightBytesPerCall(c: LoraCase): number {
  return usedAdapters(c) * c.R * Math.min(c.Hin, c.Hout) * (c.dtype === 'f32' ? 4 : 2);
}

/** Runs every case; rows come back in order, errors are recorded as rows (a backend may lack a kernel). */
export async function runLoraSuite(
  backend: Backend,
  cases: readonly LoraCase[],
  o: SuiteOptions,
): Promise<{ rows: Row[]; comparisons: Comparison[] }> {
  const rows: Row[] = [];
  const comparisons: Comparison[] = [];
  const want = (name: string): boolean => !o.filter || o.filter.test(name);
  for (const c of cases) {
    // Row names carry the resolved strategy ('auto→sgmv'): try every name a row could get.
    const names = (op: LoraOpName): string[] =>
      op === 'loraWeightGrad'
        ? [rowName(op, c)]
        : o.strategies.flatMap((s) => (s === 'auto' ? ['auto→bgmv', 'auto→sgmv'] : [s]).map((r) => rowName(op, c, r)));
    const ops = c.ops.filter((op) => names(op).some(want));
    const baselines = c.baselines ? BASELINES.filter((b) => want(rowName(`baseline:${b}`, c))) : [];
    if (ops.length === 0 && baselines.length === 0) continue;
    const caseRows = await runCase(backend, c, ops, baselines, o);
    rows.push(...caseRows.rows);
    if (caseRows.comparison) comparisons.push(caseRows.comparison);
  }
  return { rows, comparisons };
}

async function runCase(
  backend: Backend,
  c: LoraCase,
  ops: readonly LoraOpName[],
  baselines: readonly BaselineName[],
  o: SuiteOptions,
): Promise<{ rows: Row[]; comparison?: Comparison }> {
  const { Hin, Hout, R, T, K, distinct: L } = c;
  const setup0 = performance.now();
  const seed = T * 7919 + L * 104729 + Hout + (K - 1) * 31;
  const Ah = randomFloats(L * R * Hin, 0.05, seed + 1);
  const Bh = randomFloats(L * Hout * R, 0.05, seed + 2);
  const Aenc = c.dtype === 'f32' ? Ah : new Uint16Array(encode('A', Ah, c.dtype).buffer);
  const Benc = c.dtype === 'f32' ? Bh : new Uint16Array(encode('B', Bh, c.dtype).buffer);
  // Copies enough to pass the cache, but within a memory budget (a quarter of the free memory,
  // at most 4 GiB, for the stacks and the baselines' per-adapter copies): a huge last-level
  // cache must not make the run allocate more than the machine has.
  const copyBytes = L * R * (Hin + Hout) * (c.dtype === 'f32' ? 4 : 2) * (c.baselines ? 2 : 1);
  const budget = Math.min(4 * 2 ** 30, freemem() / 4);
  const replicas = Math.max(1, Math.min(1024, Math.ceil(o.coldBytes / weightBytesPerCall(c)), Math.floor(budget / copyBytes)));
  const slots = Int32Array.from({ length: T * K }, (_, i) => i % L);
  const own: Tensor[] = [];
  const keep = <X extends Tensor>(t: X): X => (own.push(t), t);
  const rt = loraRouting(backend, slots, { K, L });
  const reps: Replica[] = [];
  for (let i = 0; i < replicas; i++) {
    const A = keep(backend.tensor(Aenc, [L, R, Hin], c.dtype));
    const B = keep(backend.tensor(Benc, [L, Hout, R], c.dtype));
    const stack = loraStack(A, B, { scale: new Float32Array(L).fill(SCALE) });
    own.push(stack.rank, stack.scale);
    reps.push({ stack });
  }
  // Gradient outputs: enough copies that one cycle of them passes the cache too, allocated
  // zeroed (touched), so that a call writes memory a training step would reuse, not fresh pages.
  const gradCopies = ops.includes('loraWeightGrad')
    ? Math.max(1, Math.min(replicas, Math.ceil(o.coldBytes / (L * R * (Hin + Hout) * 4)), Math.floor(budget / (L * R * (Hin + Hout) * 4))))
    : 0;
  const grads = Array.from({ length: gradCopies }, () => ({ dA: keep(backend.zeros([L, R, Hin])), dB: keep(backend.zeros([L, Hout, R])) }));
  const x = keep(backend.tensor(randomFloats(T * Hin, 1, seed + 3), [T, Hin]));
  const y = keep(backend.zeros([T, Hout]));
  const dy = keep(backend.tensor(randomFloats(T * Hout, 1, seed + 4), [T, Hout]));
  const v = keep(backend.tensor(randomFloats(T * K * R, 1, seed + 5), [T, K, R]));
  const dv = keep(backend.tensor(randomFloats(T * K * R, 1, seed + 6), [T, K, R]));
  const dx = keep(backend.empty([T, Hin]));
  const rows: Row[] = [];
  const label = `${c.dtype} Hin=${Hin} Hout=${Hout} r=${R}${K !== 1 ? ` K=${K}` : ''} T=${T} d=${L} (${replicas} weight cop${replicas === 1 ? 'y' : 'ies'})`;
  o.log(`  ${label}, set up in ${((performance.now() - setup0) / 1e3).toFixed(1)} s`);

  const base = (op: LoraOpName | BaselineName, kind: Row['kind'], strategy: string): Row => {
    const w = workOf(op, c);
    return {
      name: rowName(kind === 'baseline' ? `baseline:${op}` : op, c, strategy === '-' ? undefined : strategy),
      kind,
      op,
      dtype: c.dtype,
      Hin,
      Hout,
      R,
      T,
      K,
      distinct: L,
      used: usedAdapters(c),
      strategy,
      replicas,
      bytes: w.bytes,
      flops: w.flops,
      bound: roofline(w, o.ceilings),
    };
  };
  // Every row of the case is registered first, then all are timed together, interleaved.
  const entries: { row: Row; body: (rep: Replica, i: number) => void | Promise<void> }[] = [];
  const add = (row: Row, body: (rep: Replica, i: number) => void | Promise<void>): Row => {
    entries.push({ row, body });
    return row;
  };

  try {
    const strategies = (op: LoraOpName): string[] => (op === 'loraWeightGrad' ? ['-'] : [...o.strategies]);
    for (const op of ops) {
      for (const s of strategies(op)) {
        const strategy = s === '-' ? undefined : (s as StrategyChoice);
        const resolved = strategy === undefined ? '-' : strategy === 'auto' ? `auto→${chooseStrategy(rt, 'auto')}` : strategy;
        const row = base(op, 'op', resolved);
        if (o.filter && !o.filter.test(row.name)) continue;
        switch (op) {
          case 'loraShrink':
            add(row, (r) => void loraShrink(x, r.stack, rt, { out: v, strategy }));
            break;
          case 'loraExpand':
            add(row, (r) => void loraExpand(y, v, r.stack, rt, { strategy }));
            break;
          case 'loraApply':
            add(row, (r) => void loraApply(y, x, r.stack, rt, { v, strategy }));
            break;
          case 'loraShrinkGrad':
            add(row, (r) => void loraShrinkGrad(dy, r.stack, rt, { out: dv, strategy }));
            break;
          case 'loraInputGrad':
            add(row, (r) => void loraInputGrad(dv, r.stack, rt, { out: dx, strategy }));
            break;
          case 'loraWeightGrad':
            add(row, (r, i) => {
              const g = grads[i % gradCopies]!;
              loraWeightGrad(x, dy, v, dv, r.stack, rt, { dA: g.dA, dB: g.dB });
            });
            break;
        }
      }
    }
    let cmp: Comparison | undefined;
    const baseRows = new Map<BaselineName, Row>();
    if (baselines.length > 0) {
      for (const r of reps) {
        r.perA = [];
        r.perB = [];
        for (let e = 0; e < L; e++) {
          r.perA.push(keep(backend.tensor(Aenc.subarray(e * R * Hin, (e + 1) * R * Hin), [R, Hin], c.dtype)));
          r.perB.push(keep(backend.tensor(Benc.subarray(e * Hout * R, (e + 1) * Hout * R), [Hout, R], c.dtype)));
        }
      }
      cmp = { dtype: c.dtype, Hin, Hout, R, T, K, distinct: L };
      // One call of each from y = 0 against the fused op: the baselines compute the same thing.
      try {
        const y0 = keep(backend.zeros([T, Hout]));
        loraApply(y0, x, reps[0]!.stack, rt, { v: keep(backend.empty([T, K, R])) });
        const ref = await y0.readFloat();
        for (const b of baselines) {
          const yb = keep(backend.zeros([T, Hout]));
          await (b === 'loop' ? perAdapterLoop : maskedFullBatch)(backend, reps[0]!, x, yb, rt, c);
          const err = relErr(await yb.readFloat(), ref);
          if (b === 'loop') cmp.relErrLoop = err;
          else cmp.relErrMasked = err;
          if (!(err <= 1e-4)) o.log(`    WARNING: baseline ${b} differs from loraApply: relative error ${err.toExponential(2)}`);
        }
      } catch (e) {
        o.log(`    (baseline check skipped: ${(e as Error).message.split('\n')[0]})`);
      }
      for (const b of baselines)
        baseRows.set(
          b,
          add(base(b, 'baseline', '-'), (r) => (b === 'loop' ? perAdapterLoop : maskedFullBatch)(backend, r, x, y, rt, c)),
        );
    }

    const t0 = performance.now();
    const repeat = o.repeat ?? 1;
    const copies = entries.map(() => 0);
    // The ceilings, measured among the rows (same rounds, same random order): on a shared
    // machine the bandwidth and FLOP rate a row had are those of its own moments.
    const copyOnce = o.probe?.once;
    const flopOnce = o.flopProbe?.once;
    const probeEntries = [
      ...(copyOnce ? [{ name: 'ceiling:copy', fn: copyOnce }] : []),
      ...(flopOnce ? [{ name: 'ceiling:matmul', fn: flopOnce }] : []),
    ];
    const res = await timeInterleaved(
      [
        ...entries.map((e, k) => ({
          name: e.row.name,
          fn: async () => {
            const i = copies[k]!++;
            await e.body(reps[i % reps.length]!, i);
            await backend.sync();
          },
        })),
        ...probeEntries,
      ],
      {
        maxTime: o.timing.maxTime * repeat,
        rounds: o.rounds * repeat,
        warmup: o.timing.warmup ?? 2,
        seed,
      },
    );
    const probeTime = (name: string): number | undefined => {
      const i = probeEntries.findIndex((p) => p.name === name);
      const t = i < 0 ? undefined : res.timings[entries.length + i];
      return t === undefined || t instanceof Error ? undefined : t.medianMs;
    };
    const copyMs = probeTime('ceiling:copy'),
      flopMs = probeTime('ceiling:matmul');
    const copyNow = copyMs === undefined ? undefined : o.probe!.bytes / (copyMs * 1e6);
    const flopsNow = flopMs === undefined ? undefined : o.flopProbe!.flops / (flopMs * 1e6);
    entries.forEach(({ row }, k) => {
      const timing = res.timings[k]!;
      if (timing instanceof Error) {
        row.error = timing.message.split('\n')[0];
        o.log(`    ${row.name.split(' ')[0]!.padEnd(16)} failed: ${row.error}`);
      } else {
        const s = timing.medianMs * 1e-3;
        Object.assign(row, {
          timing,
          medianMs: timing.medianMs,
          gbps: row.bytes / s / 1e9,
          gflops: row.flops / s / 1e9,
          pctOfBound: (100 * row.bound.ms) / timing.medianMs,
          copyNowGbps: copyNow,
          flopsNowGflops: flopsNow,
        });
        applyRoofline([row], o.ceilings);
        o.log(
          `    ${row.name.split(' ')[0]!.padEnd(16)} ${row.strategy.padEnd(11)} ${timing.medianMs.toFixed(3).padStart(9)} ms  ${row.gbps!.toFixed(2).padStart(7)} GB/s  ${row.pctOfBoundNow?.toFixed(0).padStart(4) ?? ' n/a'}% of bound now (${row.pctOfBound!.toFixed(0)}% of the run's)  (${timing.samples} samples, ${timing.calls} calls)`,
        );
      }
      rows.push(row);
    });
    o.log(
      `    (${entries.length} rows and ${probeEntries.length} ceilings interleaved over ${res.rounds} rounds in ${((performance.now() - t0) / 1e3).toFixed(1)} s; now: copy ${copyNow?.toFixed(1) ?? 'n/a'} GB/s, matmul ${flopsNow?.toFixed(1) ?? 'n/a'} GFLOP/s)`,
    );
    if (!cmp) return { rows };
    for (const [b, row] of baseRows) {
      if (b === 'loop') cmp.loopMs = row.medianMs;
      else cmp.maskedMs = row.medianMs;
    }
    const apply =
      rows.find((r) => r.op === 'loraApply' && r.medianMs !== undefined && r.strategy.startsWith('auto')) ??
      rows.find((r) => r.op === 'loraApply' && r.medianMs !== undefined);
    if (apply) {
      cmp.applyMs = apply.medianMs;
      if (cmp.loopMs !== undefined) cmp.speedupVsLoop = cmp.loopMs / apply.medianMs!;
      if (cmp.maskedMs !== undefined) cmp.speedupVsMasked = cmp.maskedMs / apply.medianMs!;
    }
    return { rows, comparison: cmp };
  } finally {
    await backend.sync().catch(() => undefined);
    rt.dispose();
    for (const t of own) t.dispose();
  }
}
