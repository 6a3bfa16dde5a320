// Every kernel family on small, awkward shapes against the float64 references, written
// against the public API object and nothing from Node, so that one set of cases runs in
// Node on every backend (kernel_cases.test.ts) and in Chromium through the browser bundle
// (browser.test.ts, which bundles this file into its test page). Shapes: T = 1, primes,
// sizes that are no multiple of any tile, rank 1, −1 slots, repeated ids, masked targets,
// grouped-query attention over two sequences. Weights in f16/bf16 are compared with a
// reference that sees them rounded through their dtype, so every case is held to 1e-5.
import type * as Web from '../src/web/index.js';
import type { Backend } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { randn, relErr } from './numeric.js';

/** The parts of `mote-lora` (or `mote-lora/web`) the cases use: the Node and browser entries both fit. */
export type MoteApi = Pick<
  typeof Web,
  | 'matmul'
  | 'matmulGradInput'
  | 'matmulGradWeight'
  | 'loraRouting'
  | 'loraStack'
  | 'loraApply'
  | 'loraShrinkGrad'
  | 'loraInputGrad'
  | 'loraWeightGrad'
  | 'embedding'
  | 'embeddingGrad'
  | 'rmsnorm'
  | 'rmsnormGrad'
  | 'rope'
  | 'ropeGrad'
  | 'attention'
  | 'attentionGrad'
  | 'attentionLayout'
  | 'swiglu'
  | 'swigluGrad'
  | 'add'
  | 'scale'
  | 'logSoftmax'
  | 'xent'
  | 'xentGrad'
  | 'adamw'
  | 'sumSquares'
  | 'copyRows'
  | 'reference'
  | 'mulberry32'
  | 'f32ToF16Bits'
  | 'f16BitsToF32'
  | 'f32ToBf16Bits'
  | 'bf16BitsToF32'
  | 'MoteError'
  | 'ShapeError'
  | 'ArgumentError'
>;

export const CASE_TOL = 1e-5;

export interface CaseResult {
  name: string;
  /** '' when every output was within CASE_TOL of the reference */
  failure: string;
  /** largest relative error over the case's outputs */
  error: number;
  ms: number;
}

/** What a case hands back: named outputs with their references, compared by relative error. */
type Outputs = [what: string, out: ArrayLike<number>, ref: ArrayLike<number>][];

interface KernelCase {
  name: string;
  run(m: MoteApi, b: Backend, r: () => number, keep: <T extends { dispose(): void }>(t: T) => T): Promise<Outputs>;
}

/** The values a weight tensor of `dtype` holds after the upload rounds them. */
function rounded(m: MoteApi, a: Float32Array, dtype: 'f32' | 'f16' | 'bf16'): Float32Array {
  if (dtype === 'f16') return a.map((x) => m.f16BitsToF32(m.f32ToF16Bits(x)));
  if (dtype === 'bf16') return a.map((x) => m.bf16BitsToF32(m.f32ToBf16Bits(x)));
  return a;
}

const read = (t: Tensor): Promise<Float32Array> => t.readFloat();

function matmulCase(T: number, K: number, N: number, dtype: 'f32' | 'f16' | 'bf16'): KernelCase {
  return {
    name: `matmul T=${T} K=${K} N=${N} w ${dtype}`,
    async run(m, b, r, keep) {
      const xs = randn(r, T * K),
        ws = randn(r, N * K),
        dys = randn(r, T * N);
      const wr = rounded(m, ws, dtype);
      const x = keep(b.tensor(xs, [T, K])),
        w = keep(b.tensor(ws, [N, K], dtype)),
        dy = keep(b.tensor(dys, [T, N]));
      const out: Outputs = [
        ['y', await read(keep(m.matmul(x, w))), m.reference.matmulRef(xs, wr, T, K, N)],
        ['dx', await read(keep(m.matmulGradInput(dy, w))), m.reference.matmulGradInputRef(dys, wr, T, K, N)],
      ];
      if (dtype === 'f32') out.push(['dW', await read(keep(m.matmulGradWeight(dy, x))), m.reference.matmulGradWeightRef(dys, xs, T, K, N)]);
      return out;
    },
  };
}

function loraCase(
  T: number,
  K: number,
  L: number,
  R: number,
  Hin: number,
  Hout: number,
  slots: number[],
  ranks: number[],
  strategy: 'bgmv' | 'sgmv',
  dtype: 'f32' | 'f16' | 'bf16',
): KernelCase {
  return {
    name: `lora T=${T} K=${K} L=${L} R=${R} Hin=${Hin} Hout=${Hout} ${strategy} ${dtype}`,
    async run(m, b, r, keep) {
      const d = { T, K, L, R, Hin, Hout };
      const As = randn(r, L * R * Hin),
        Bs = randn(r, L * Hout * R),
        xs = randn(r, T * Hin),
        dys = randn(r, T * Hout);
      const weights = Array.from({ length: T * K }, () => 0.25 + 0.5 * r());
      const scales = Array.from({ length: L }, (_, e) => 0.5 + e / 4);
      const S = { A: rounded(m, As, dtype), B: rounded(m, Bs, dtype), ranks, scales };
      const RT = { slots, weights };
      const stack = m.loraStack(keep(b.tensor(As, [L, R, Hin], dtype)), keep(b.tensor(Bs, [L, Hout, R], dtype)), {
        rank: ranks,
        scale: scales,
      });
      keep(stack.rank);
      keep(stack.scale);
      const rt = keep(m.loraRouting(b, slots, { K, L, weight: weights }));
      const x = keep(b.tensor(xs, [T, Hin])),
        dy = keep(b.tensor(dys, [T, Hout]));
      const y0 = randn(r, T * Hout);
      const y = keep(b.tensor(y0, [T, Hout]));
      const v = keep(b.zeros([T, K, R]));
      m.loraApply(y, x, stack, rt, { strategy, v });
      const ref = m.reference.loraApplyRef(xs, S, RT, d, y0);
      const dv = keep(m.loraShrinkGrad(dy, stack, rt, { strategy }));
      const dvRef = m.reference.loraShrinkGradRef(dys, S, RT, d);
      const dx = keep(m.loraInputGrad(dv, stack, rt, { strategy }));
      const { dA, dB } = m.loraWeightGrad(x, dy, v, dv, stack, rt);
      keep(dA);
      keep(dB);
      const vOut = await read(v),
        dvOut = await read(dv);
      // the backward references take the backend's v and dv, so each output checks one kernel
      const wg = m.reference.loraWeightGradRef(xs, dys, vOut, dvOut, S, RT, d);
      return [
        ['v', vOut, ref.v],
        ['y', await read(y), ref.y],
        ['dv', dvOut, dvRef],
        ['dx', await read(dx), m.reference.loraInputGradRef(dvOut, S, RT, d)],
        ['dA', await read(dA), wg.dA],
        ['dB', await read(dB), wg.dB],
      ];
    },
  };
}

const CASES: KernelCase[] = [
  matmulCase(1, 37, 53, 'f32'),
  matmulCase(5, 19, 7, 'f32'),
  matmulCase(3, 33, 17, 'f16'),
  matmulCase(3, 17, 33, 'bf16'),
  loraCase(1, 1, 1, 1, 37, 53, [0], [1], 'bgmv', 'f32'),
  loraCase(5, 2, 4, 8, 37, 53, [2, -1, 1, 1, -1, -1, 3, 0, 0, 2], [8, 2, 5, 1], 'bgmv', 'bf16'),
  loraCase(5, 2, 4, 8, 37, 53, [2, -1, 1, 1, -1, -1, 3, 0, 0, 2], [8, 2, 5, 1], 'sgmv', 'f16'),
  loraCase(
    67,
    1,
    3,
    17,
    19,
    23,
    Array.from({ length: 67 }, (_, t) => (t * 7) % 3),
    [17, 3, 9],
    'sgmv',
    'f32',
  ),
  {
    name: 'embedding T=6 V=11 H=37 repeated ids, bf16 table',
    async run(m, b, r, keep) {
      const T = 6,
        V = 11,
        H = 37,
        ids = [3, 0, 10, 3, 7, 3];
      const Es = randn(r, V * H),
        dys = randn(r, T * H);
      const E = keep(b.tensor(Es, [V, H], 'bf16'));
      const dy = keep(b.tensor(dys, [T, H]));
      return [
        ['y', await read(keep(m.embedding(E, ids))), m.reference.embeddingRef(ids, rounded(m, Es, 'bf16'), V, H)],
        ['dE', await read(keep(m.embeddingGrad(ids, dy, V))), m.reference.embeddingBackwardRef(ids, dys, V, H)],
      ];
    },
  },
  {
    name: 'rmsnorm T=3 H=53',
    async run(m, b, r, keep) {
      const T = 3,
        H = 53,
        eps = 1e-5;
      const xs = randn(r, T * H),
        ws = randn(r, H),
        dys = randn(r, T * H);
      const x = keep(b.tensor(xs, [T, H])),
        w = keep(b.tensor(ws, [H])),
        dy = keep(b.tensor(dys, [T, H]));
      const { y, rstd } = m.rmsnorm(x, w, eps);
      keep(y);
      keep(rstd);
      const { dx, dw } = m.rmsnormGrad(dy, x, w, rstd, eps);
      keep(dx);
      keep(dw);
      const g = m.reference.rmsnormBackwardRef(dys, xs, ws, T, H, eps);
      return [
        ['y', await read(y), m.reference.rmsnormRef(xs, ws, T, H, eps)],
        ['dx', await read(dx), g.dx],
        ['dw', await read(dw), g.dw],
      ];
    },
  },
  {
    name: 'rope T=5 heads=3 D=10, unsorted positions',
    async run(m, b, r, keep) {
      const T = 5,
        heads = 3,
        D = 10,
        pos = [4, 0, 9, 1, 2];
      const xs = randn(r, T * heads * D),
        dys = randn(r, T * heads * D);
      const inv = Float32Array.from(m.reference.ropeInvFreqRef(D, 10000));
      const x = keep(b.tensor(xs, [T, heads, D])),
        dy = keep(b.tensor(dys, [T, heads, D]));
      const positions = keep(b.tensor(Int32Array.from(pos), [T], 'i32')),
        invFreq = keep(b.tensor(inv, [D / 2]));
      return [
        ['y', await read(keep(m.rope(x, positions, invFreq))), m.reference.ropeRef(xs, pos, inv, T, heads, D)],
        ['dx', await read(keep(m.ropeGrad(dy, positions, invFreq))), m.reference.ropeBackwardRef(dys, pos, inv, T, heads, D)],
      ];
    },
  },
  {
    name: 'attention T=7 (two sequences) heads=4 kv heads=2 D=12',
    async run(m, b, r, keep) {
      const T = 7,
        nH = 4,
        nKv = 2,
        D = 12;
      const qSeq = [0, 0, 0, 1, 1, 1, 1],
        qPos = [0, 1, 2, 0, 1, 2, 3];
      const qs = randn(r, T * nH * D),
        ks = randn(r, T * nKv * D),
        vs = randn(r, T * nKv * D),
        dOs = randn(r, T * nH * D);
      const q = keep(b.tensor(qs, [T, nH, D])),
        k = keep(b.tensor(ks, [T, nKv, D])),
        v = keep(b.tensor(vs, [T, nKv, D]));
      const dOut = keep(b.tensor(dOs, [T, nH, D]));
      const l = keep(m.attentionLayout(b, { qSeq, qPos }));
      const { out, lse } = m.attention(q, k, v, l);
      keep(out);
      keep(lse);
      const { dq, dk, dv } = m.attentionGrad(dOut, q, k, v, out, lse, l);
      keep(dq);
      keep(dk);
      keep(dv);
      const d = { Tq: T, Tk: T, numHeads: nH, numKvHeads: nKv, headDim: D };
      const ref = m.reference.attentionRef(qs, ks, vs, d, { qSeq, qPos });
      const g = m.reference.attentionBackwardRef(dOs, qs, ks, vs, d, { qSeq, qPos });
      return [
        ['out', await read(out), ref.out],
        ['lse', await read(lse), ref.lse],
        ['dq', await read(dq), g.dq],
        ['dk', await read(dk), g.dk],
        ['dv', await read(dv), g.dv],
      ];
    },
  },
  {
    name: 'swiglu T=3 I=37',
    async run(m, b, r, keep) {
      const T = 3,
        I = 37;
      const gs = randn(r, T * I, 3),
        us = randn(r, T * I),
        dys = randn(r, T * I);
      const gate = keep(b.tensor(gs, [T, I])),
        up = keep(b.tensor(us, [T, I])),
        dy = keep(b.tensor(dys, [T, I]));
      const { dgate, dup } = m.swigluGrad(dy, gate, up);
      keep(dgate);
      keep(dup);
      const g = m.reference.swigluBackwardRef(dys, gs, us, T, I);
      return [
        ['y', await read(keep(m.swiglu(gate, up))), m.reference.swigluRef(gs, us, T, I)],
        ['dgate', await read(dgate), g.dgate],
        ['dup', await read(dup), g.dup],
      ];
    },
  },
  {
    name: 'residual add n=131',
    async run(m, b, r, keep) {
      const as = randn(r, 131),
        bs = randn(r, 131);
      const a = keep(b.tensor(as, [131])),
        c = keep(b.tensor(bs, [131]));
      return [['y', await read(keep(m.add(a, c))), m.reference.residualAddRef(as, bs, 131)]];
    },
  },
  {
    name: 'scale n=4099, out of place and in place',
    async run(m, b, r, keep) {
      const xs = randn(r, 4099);
      const x = keep(b.tensor(xs, [4099]));
      const y = await read(keep(m.scale(x, -1.75)));
      m.scale(x, 0.5, { out: x });
      return [
        ['y', y, m.reference.scaleRef(xs, -1.75, 4099)],
        ['x (in place)', await read(x), m.reference.scaleRef(xs, 0.5, 4099)],
      ];
    },
  },
  {
    name: 'xent T=5 V=67, one target masked',
    async run(m, b, r, keep) {
      const T = 5,
        V = 67,
        targets = [3, 66, 0, 12, 40],
        mask = [1, 1, 0, 1, 1];
      const ls = randn(r, T * V, 4);
      const logits = keep(b.tensor(ls, [T, V]));
      const x = await m.xent(logits, targets, mask);
      keep(x.losses);
      keep(x.lse);
      const ref = m.reference.xentRef(ls, targets, mask, T, V);
      const scale = 1 / ref.count;
      return [
        ['logSoftmax', await read(keep(m.logSoftmax(logits))), m.reference.logSoftmaxRef(ls, T, V)],
        ['loss', [x.loss], [ref.loss]],
        ['losses', await read(x.losses), ref.losses],
        [
          'dlogits',
          await read(keep(m.xentGrad(logits, x.lse, targets, mask, scale))),
          m.reference.xentBackwardRef(ls, targets, mask, T, V, 1),
        ],
      ];
    },
  },
  {
    name: 'adamw n=257 step 3, sumSquares',
    async run(m, b, r, keep) {
      const n = 257;
      const ps = randn(r, n),
        gs = randn(r, n),
        ms = randn(r, n, 0.1),
        vs = randn(r, n, 0.01).map(Math.abs);
      const p = keep(b.tensor(ps, [n])),
        g = keep(b.tensor(gs, [n])),
        mt = keep(b.tensor(ms, [n])),
        vt = keep(b.tensor(vs, [n]));
      const o = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: 3 };
      m.adamw(p, g, mt, vt, o);
      const ref = m.reference.adamwRef(ps, gs, ms, vs, o);
      return [
        ['p', await read(p), ref.p],
        ['m', await read(mt), ref.m],
        ['v', await read(vt), ref.v],
        ['sumSquares', await read(keep(m.sumSquares(g))), [m.reference.sumSquaresRef(gs)]],
      ];
    },
  },
  {
    name: 'copyRows W=5 f32 and W=3 bf16 (odd half rows)',
    async run(m, b, r, keep) {
      const out: Outputs = [];
      for (const [W, dtype] of [
        [5, 'f32'],
        [3, 'bf16'],
      ] as const) {
        const ds = randn(r, 6 * W),
          ss = randn(r, 4 * W),
          dRows = [5, 0, 2],
          sRows = [1, 3, 1];
        const dst = keep(b.tensor(ds, [6, W], dtype)),
          src = keep(b.tensor(ss, [4, W], dtype));
        m.copyRows(dst, src, dRows, sRows);
        out.push([`dst ${dtype}`, await read(dst), m.reference.copyRowsRef(rounded(m, ds, dtype), rounded(m, ss, dtype), dRows, sRows, W)]);
      }
      return out;
    },
  },
];

/** The names of the cases, in order. */
export const KERNEL_CASE_NAMES: readonly string[] = CASES.map((c) => c.name);

/** Runs every case (or those whose name contains `only`) on `b`; a case that throws is a failure naming the error. */
export async function runKernelCases(m: MoteApi, b: Backend, only?: string): Promise<CaseResult[]> {
  const results: CaseResult[] = [];
  for (const c of CASES) {
    if (only && !c.name.includes(only)) continue;
    const t0 = performance.now();
    const held: { dispose(): void }[] = [];
    let failure = '',
      error = 0;
    try {
      const outs = await c.run(m, b, m.mulberry32(results.length + 1), (t) => {
        held.push(t);
        return t;
      });
      for (const [what, out, ref] of outs) {
        const e = relErr(out, ref);
        error = Math.max(error, e);
        if (!(e <= CASE_TOL)) failure += `${what}: relative error ${e.toExponential(2)} > ${CASE_TOL}; `;
      }
    } catch (e) {
      failure = `threw ${(e as Error)?.stack ?? e}`;
      error = Infinity;
    } finally {
      for (const t of held) t.dispose();
    }
    results.push({ name: c.name, failure, error, ms: performance.now() - t0 });
  }
  return results;
}

/**
 * Bad input: each call must throw the named MoteError subclass with a message naming the
 * argument, before any kernel runs. Returns one line per call that did not.
 */
export async function badInputFailures(m: MoteApi, b: Backend): Promise<string[]> {
  const fails: string[] = [];
  const held: { dispose(): void }[] = [];
  const t = (data: Float32Array, shape: number[]) => {
    const x = b.tensor(data, shape);
    held.push(x);
    return x;
  };
  const expect = (what: string, f: () => unknown, cls: new (...a: never[]) => Error, re: RegExp) => {
    try {
      f();
      fails.push(`${what}: no error`);
    } catch (e) {
      if (!(e instanceof cls) || !(e instanceof m.MoteError))
        fails.push(`${what}: expected ${cls.name}, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
      else if (!re.test((e as Error).message)) fails.push(`${what}: message ${JSON.stringify((e as Error).message)} does not match ${re}`);
    }
  };
  try {
    expect(
      'matmul of mismatched K',
      () => m.matmul(t(new Float32Array(6).fill(1), [2, 3]), t(new Float32Array(8).fill(1), [2, 4])),
      m.ShapeError,
      /matmul: .*w/,
    );
    expect(
      'embedding id out of range',
      () => m.embedding(t(new Float32Array(6).fill(1), [3, 2]), [0, 3]),
      m.ArgumentError,
      /embedding: ids\[1\]/,
    );
    expect('lora slot past L', () => m.loraRouting(b, [0, 4], { K: 1, L: 4 }), m.ArgumentError, /loraRouting: slots/);
  } finally {
    for (const x of held) x.dispose();
  }
  return fails;
}
