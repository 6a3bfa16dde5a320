// One batch of the argument-checking fuzz (test/fuzz_ops.test.ts runs it in a child process,
// so a crash or a hang is counted by the parent instead of ending the test run).
//
//   node dist/test/fuzz/child.js <backend> <seed> <runs>
//
// Every call is drawn by fast-check (seeded): an op, fresh valid arguments for it (tiny
// shapes), and either no change (a valid call) or one argument replaced by a bad value
// (missing, null, wrong type, NaN, 1.5, -2, 2^32, wrong dtype, wrong shape, disposed, from
// another backend, arrays of the wrong element type or length). A valid call must not throw
// and must give finite output (and, for a sample, match the float64 reference); an invalid
// call must throw a MoteError whose message names the argument. Prints one JSON line.
import fc from 'fast-check';
import * as m from '../../src/index.js';
import type { Backend, BackendKind, Tensor } from '../../src/index.js';
import { mulberry32 } from '../../src/rng.js';

const [kindArg, seedArg, runsArg] = process.argv.slice(2);
const kind = kindArg as BackendKind;
const seed = Number(seedArg);
const runs = Number(runsArg);

let be: Backend;
try {
  be = await m.openBackend(kind);
} catch (e) {
  if (!(e instanceof m.BackendUnavailableError)) throw e;
  process.stdout.write(JSON.stringify({ unavailable: e.reason }) + '\n');
  process.exit(0);
}
// another instance of the same kind: its tensors must be refused next to this one's
const other: Backend = await m.openBackend(kind);

type Kind =
  | 'tensor'
  | 'opts'
  | 'int'
  | 'posInt'
  | 'intArray'
  | 'floatArray'
  | 'backend'
  | 'bool'
  | 'posFloat'
  | 'finite'
  | 'shape'
  | 'dtype'
  | 'data'
  | 'strategy'
  | 'object';
interface Param {
  /** name the error message must contain (path inside opts, e.g. 'out') */
  name: string;
  kind: Kind;
  /** names also accepted (a foreign tensor may be reported on a later argument) */
  alt?: string[];
  /** tensor: the dtypes it accepts (a mutation picks another) */
  dtypes?: readonly string[];
  /** tensor: any rank is valid (no rank mutation) */
  anyRank?: boolean;
  /** undefined is a valid value (an optional argument) */
  optional?: boolean;
  /** ints: 2^32 is valid (no i32 limit) */
  hugeOk?: boolean;
  /** arrays: any length is valid */
  anyLength?: boolean;
  /** a foreign-backend tensor is not an error (the only tensor of its call) */
  alone?: boolean;
}
interface Call {
  params: Param[];
  /** the valid values, by param name */
  args: Record<string, unknown>;
  run(a: Record<string, unknown>): unknown | Promise<unknown>;
  /** checks a valid call's result: returns a reason it is wrong, or null */
  check?(result: unknown, a: Record<string, unknown>): Promise<string | null>;
}

const live: Tensor[] = [];
const keep = <T extends Tensor>(t: T): T => {
  live.push(t);
  return t;
};

function rnd(r: () => number, n: number, lo = -1, hi = 1): Float32Array {
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * r());
}
const f32 = (r: () => number, shape: number[], lo = -1, hi = 1) =>
  keep(
    be.tensor(
      rnd(
        r,
        shape.reduce((a, b) => a * b, 1),
        lo,
        hi,
      ),
      shape,
    ),
  );
const int = (r: () => number, n: number) => 1 + Math.floor(r() * n);

async function host(t: unknown): Promise<Float32Array> {
  return (await (t as Tensor).read()) as Float32Array;
}
async function finite(...ts: unknown[]): Promise<string | null> {
  for (const t of ts) {
    const a = await host(t);
    for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) return `non-finite output ${a[i]} at ${i}`;
  }
  return null;
}
/** relative error of a device result against a float64 reference */
async function near(t: unknown, ref: ArrayLike<number>, tol = 1e-4): Promise<string | null> {
  const a = await host(t);
  let num = 0,
    den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (a[i]! - ref[i]!) ** 2;
    den += ref[i]! ** 2;
  }
  const rel = Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
  return a.length === ref.length && rel <= tol ? null : `relative error ${rel} (length ${a.length} vs ${ref.length})`;
}
let sampleRef = false;

// ---- the ops, each a builder of one valid call from a seed -------------------------------

const T_ = (name: string, dtypes: readonly string[] = ['f32'], extra: Partial<Param> = {}): Param => ({
  name,
  kind: 'tensor',
  dtypes,
  ...extra,
});
const OPTS: Param = { name: 'opts', kind: 'opts', optional: true };
const W = ['f32', 'f16', 'bf16'];

function loraSetup(r: () => number) {
  const Tn = int(r, 4),
    K = int(r, 2),
    L = int(r, 3),
    R = int(r, 3),
    Hin = int(r, 4),
    Hout = int(r, 4);
  const slots = Array.from({ length: Tn * K }, () => Math.floor(r() * (L + 1)) - 1);
  const weight = Array.from({ length: Tn * K }, () => r());
  const ranks = Array.from({ length: L }, () => int(r, R));
  const scales = Array.from({ length: L }, () => r() + 0.5);
  const A = f32(r, [L, R, Hin]),
    B = f32(r, [L, Hout, R]);
  const stack = m.loraStack(A, B, { rank: ranks, scale: scales });
  live.push(stack.rank, stack.scale);
  const rt = m.loraRouting(be, slots, { K, L, weight });
  live.push(rt.slots, rt.weight, rt.order, rt.segStart, rt.segAdapter);
  const d = { T: Tn, K, L, R, Hin, Hout };
  return { d, stack, rt, slots, weight, A, B, ranks, scales };
}
async function refStackOf(s: ReturnType<typeof loraSetup>) {
  return { stack: { A: await host(s.A), B: await host(s.B), ranks: s.ranks, scales: s.scales }, rt: { slots: s.slots, weights: s.weight } };
}
const STACK: Param = { name: 'stack', kind: 'object' };
const ROUTING: Param = { name: 'routing', kind: 'object' };
const LORA_OPTS: Param = { name: 'strategy', kind: 'strategy', optional: true };

const OPS: Record<string, (r: () => number) => Call> = {
  tensor: (r) => {
    const shape = [int(r, 3), int(r, 3)];
    const n = shape[0]! * shape[1]!;
    return {
      params: [
        { name: 'data', kind: 'data' },
        { name: 'shape', kind: 'shape' },
        { name: 'dtype', kind: 'dtype', optional: true },
      ],
      args: { data: Array.from(rnd(r, n)), shape, dtype: 'f32' },
      run: (a) => keep(be.tensor(a.data as number[], a.shape as number[], a.dtype as m.DType)),
      check: async (t, a) => near(t, a.data as number[], 1e-6),
    };
  },
  'empty/zeros': (r) => {
    const shape = [int(r, 3), int(r, 3)];
    const z = r() < 0.5;
    return {
      params: [
        { name: 'shape', kind: 'shape' },
        { name: 'dtype', kind: 'dtype', optional: true },
      ],
      args: { shape, dtype: 'f32' },
      run: (a) => keep(z ? be.zeros(a.shape as number[], a.dtype as m.DType) : be.empty(a.shape as number[], a.dtype as m.DType)),
      check: async (t) => (z ? near(t, new Float64Array((t as Tensor).size), 0) : null),
    };
  },
  write: (r) => {
    const t = f32(r, [int(r, 3), int(r, 3)]);
    return {
      params: [{ name: 'data', kind: 'data' }],
      args: { data: Array.from(rnd(r, t.size)) },
      run: (a) => t.write(a.data as number[]),
      check: async (_, a) => near(t, a.data as number[], 1e-6),
    };
  },
  reshape: (r) => {
    const t = f32(r, [2, int(r, 3)]);
    return { params: [{ name: 'shape', kind: 'shape' }], args: { shape: [t.size] }, run: (a) => t.reshape(a.shape as number[]) };
  },
  matmul: (r) => {
    const Tn = int(r, 4),
      K = int(r, 4),
      N = int(r, 4);
    return {
      params: [T_('x', ['f32'], { alt: ['w'] }), T_('w', W), OPTS],
      args: { x: f32(r, [Tn, K]), w: f32(r, [N, K]), opts: undefined },
      run: (a) => keep(m.matmul(a.x as Tensor, a.w as Tensor, a.opts as undefined)),
      check: async (y, a) => near(y, m.reference.matmulRef(await host(a.x), await host(a.w), Tn, K, N)),
    };
  },
  matmulGradInput: (r) => {
    const Tn = int(r, 4),
      K = int(r, 4),
      N = int(r, 4);
    return {
      params: [T_('dy', ['f32'], { alt: ['w'] }), T_('w', W), { name: 'accumulate', kind: 'bool', optional: true }],
      args: { dy: f32(r, [Tn, N]), w: f32(r, [N, K]), accumulate: undefined },
      run: (a) => keep(m.matmulGradInput(a.dy as Tensor, a.w as Tensor, { accumulate: a.accumulate as boolean })),
      check: async (y, a) => near(y, m.reference.matmulGradInputRef(await host(a.dy), await host(a.w), Tn, K, N)),
    };
  },
  matmulGradWeight: (r) => {
    const Tn = int(r, 4),
      K = int(r, 4),
      N = int(r, 4);
    return {
      params: [T_('dy', ['f32'], { alt: ['x'] }), T_('x'), T_('out', ['f32'], { optional: true, alt: ['dy', 'x'] })],
      args: { dy: f32(r, [Tn, N]), x: f32(r, [Tn, K]), out: undefined },
      run: (a) => keep(m.matmulGradWeight(a.dy as Tensor, a.x as Tensor, { out: a.out as Tensor })),
      check: async (y, a) => near(y, m.reference.matmulGradWeightRef(await host(a.dy), await host(a.x), Tn, K, N)),
    };
  },
  rmsnorm: (r) => {
    const Tn = int(r, 4),
      H = int(r, 5);
    return {
      params: [T_('x', ['f32'], { alt: ['w'] }), T_('w', W), { name: 'eps', kind: 'posFloat' }, OPTS],
      args: { x: f32(r, [Tn, H]), w: f32(r, [H]), eps: 1e-5, opts: undefined },
      run: (a) => {
        const o = m.rmsnorm(a.x as Tensor, a.w as Tensor, a.eps as number, a.opts as undefined);
        keep(o.rstd);
        return keep(o.y);
      },
      check: async (y, a) => near(y, m.reference.rmsnormRef(await host(a.x), await host(a.w), Tn, H, 1e-5)),
    };
  },
  rmsnormGrad: (r) => {
    const Tn = int(r, 4),
      H = int(r, 5);
    const x = f32(r, [Tn, H]),
      w = f32(r, [H]);
    const { rstd, y } = m.rmsnorm(x, w, 1e-5);
    keep(y);
    return {
      params: [
        T_('dy', ['f32'], { alt: ['x', 'w', 'rstd'] }),
        T_('x', ['f32'], { alt: ['w', 'rstd'] }),
        T_('w', W, { alt: ['rstd'] }),
        T_('rstd'),
        { name: 'eps', kind: 'posFloat' },
        { name: 'accumulateDw', kind: 'bool', optional: true },
      ],
      args: { dy: f32(r, [Tn, H]), x, w, rstd: keep(rstd), eps: 1e-5, accumulateDw: undefined },
      run: (a) => {
        const o = m.rmsnormGrad(a.dy as Tensor, a.x as Tensor, a.w as Tensor, a.rstd as Tensor, a.eps as number, {
          accumulateDw: a.accumulateDw as boolean,
        });
        keep(o.dw);
        return keep(o.dx);
      },
      check: async (dx) => finite(dx),
    };
  },
  rope: (r) => {
    const Tn = int(r, 4),
      heads = int(r, 2),
      D = 2 * int(r, 2);
    const pos = keep(
      be.tensor(
        Array.from({ length: Tn }, (_, i) => i),
        [Tn],
        'i32',
      ),
    );
    const inv = m.reference.ropeInvFreqRef(D, 10000);
    return {
      params: [T_('x', ['f32'], { alt: ['positions', 'invFreq'] }), T_('positions', ['i32'], { alt: ['invFreq'] }), T_('invFreq'), OPTS],
      args: { x: f32(r, [Tn, heads, D]), positions: pos, invFreq: keep(be.tensor(inv, [D / 2])), opts: undefined },
      run: (a) => keep(m.rope(a.x as Tensor, a.positions as Tensor, a.invFreq as Tensor, a.opts as undefined)),
      check: async (y, a) =>
        near(
          y,
          m.reference.ropeRef(
            await host(a.x),
            Array.from({ length: Tn }, (_, i) => i),
            inv,
            Tn,
            heads,
            D,
          ),
        ),
    };
  },
  swiglu: (r) => {
    const Tn = int(r, 4),
      I = int(r, 5);
    return {
      params: [T_('gate', ['f32'], { alt: ['up'] }), T_('up'), OPTS],
      args: { gate: f32(r, [Tn, I]), up: f32(r, [Tn, I]), opts: undefined },
      run: (a) => keep(m.swiglu(a.gate as Tensor, a.up as Tensor, a.opts as undefined)),
      check: async (y, a) => near(y, m.reference.swigluRef(await host(a.gate), await host(a.up), Tn, I)),
    };
  },
  swigluGrad: (r) => {
    const Tn = int(r, 4),
      I = int(r, 5);
    return {
      params: [T_('dy', ['f32'], { alt: ['gate', 'up'] }), T_('gate', ['f32'], { alt: ['up'] }), T_('up')],
      args: { dy: f32(r, [Tn, I]), gate: f32(r, [Tn, I]), up: f32(r, [Tn, I]) },
      run: (a) => {
        const o = m.swigluGrad(a.dy as Tensor, a.gate as Tensor, a.up as Tensor);
        keep(o.dup);
        return keep(o.dgate);
      },
      check: async (y) => finite(y),
    };
  },
  add: (r) => {
    const shape = [int(r, 3), int(r, 4)];
    return {
      params: [T_('a', ['f32'], { alt: ['b'] }), T_('b'), OPTS],
      args: { a: f32(r, shape), b: f32(r, shape), opts: undefined },
      run: (a) => keep(m.add(a.a as Tensor, a.b as Tensor, a.opts as undefined)),
      check: async (y, a) => near(y, m.reference.residualAddRef(await host(a.a), await host(a.b), shape[0]! * shape[1]!)),
    };
  },
  logSoftmax: (r) => {
    const Tn = int(r, 4),
      V = int(r, 6);
    return {
      params: [T_('logits', ['f32'], { alone: true }), OPTS],
      args: { logits: f32(r, [Tn, V]), opts: undefined },
      run: (a) => keep(m.logSoftmax(a.logits as Tensor, a.opts as undefined)),
      check: async (y, a) => near(y, m.reference.logSoftmaxRef(await host(a.logits), Tn, V)),
    };
  },
  xent: (r) => {
    const Tn = int(r, 4),
      V = int(r, 6);
    return {
      params: [T_('logits', ['f32'], { alone: true }), { name: 'targets', kind: 'intArray' }, { name: 'mask', kind: 'intArray' }],
      args: {
        logits: f32(r, [Tn, V]),
        targets: Array.from({ length: Tn }, () => Math.floor(r() * V)),
        mask: Array.from({ length: Tn }, () => 1),
      },
      run: async (a) => {
        const o = await m.xent(a.logits as Tensor, a.targets as number[], a.mask as number[]);
        keep(o.lse);
        return keep(o.losses);
      },
      check: async (y) => finite(y),
    };
  },
  xentGrad: (r) => {
    const Tn = int(r, 4),
      V = int(r, 6);
    const logits = f32(r, [Tn, V]);
    const lse = keep(
      be.tensor(
        Array.from({ length: Tn }, () => 2),
        [Tn],
      ),
    );
    return {
      params: [
        T_('logits', ['f32'], { alt: ['lse'] }),
        T_('lse'),
        { name: 'targets', kind: 'intArray' },
        { name: 'mask', kind: 'intArray' },
        { name: 'scale', kind: 'finite' },
        OPTS,
      ],
      args: {
        logits,
        lse,
        targets: Array.from({ length: Tn }, () => Math.floor(r() * V)),
        mask: Array.from({ length: Tn }, () => 1),
        scale: 0.5,
        opts: undefined,
      },
      run: (a) =>
        keep(
          m.xentGrad(
            a.logits as Tensor,
            a.lse as Tensor,
            a.targets as number[],
            a.mask as number[],
            a.scale as number,
            a.opts as undefined,
          ),
        ),
      check: async (y) => finite(y),
    };
  },
  embedding: (r) => {
    const V = int(r, 5),
      H = int(r, 4),
      Tn = int(r, 4);
    return {
      params: [T_('E', W, { alone: true }), { name: 'ids', kind: 'intArray', anyLength: true }],
      args: { E: f32(r, [V, H]), ids: Array.from({ length: Tn }, () => Math.floor(r() * V)) },
      run: (a) => keep(m.embedding(a.E as Tensor, a.ids as number[])),
      check: async (y, a) => near(y, m.reference.embeddingRef(a.ids as number[], await host(a.E), V, H)),
    };
  },
  embeddingGrad: (r) => {
    const V = int(r, 5),
      H = int(r, 4),
      Tn = int(r, 4);
    return {
      params: [
        { name: 'ids', kind: 'intArray', alt: ['dy'] },
        T_('dy', ['f32'], { alone: true, alt: ['ids'] }),
        { name: 'V', kind: 'posInt' },
        { name: 'accumulate', kind: 'bool', optional: true },
      ],
      args: { ids: Array.from({ length: Tn }, () => Math.floor(r() * V)), dy: f32(r, [Tn, H]), V, accumulate: undefined },
      run: (a) => keep(m.embeddingGrad(a.ids as number[], a.dy as Tensor, a.V as number, { accumulate: a.accumulate as boolean })),
      check: async (y, a) => near(y, m.reference.embeddingBackwardRef(a.ids as number[], await host(a.dy), V, H)),
    };
  },
  copyRows: (r) => {
    const R = int(r, 4) + 1,
      Wd = int(r, 3);
    const n = int(r, R);
    const perm = Array.from({ length: R }, (_, i) => i)
      .sort(() => r() - 0.5)
      .slice(0, n);
    return {
      params: [
        T_('dst', ['f32'], { alt: ['src'], anyRank: true }),
        T_('src', ['f32'], { anyRank: true }),
        { name: 'dstRows', kind: 'intArray', alt: ['srcRows'] },
        { name: 'srcRows', kind: 'intArray' },
      ],
      args: { dst: f32(r, [R, Wd]), src: f32(r, [R, Wd]), dstRows: perm, srcRows: Array.from({ length: n }, () => Math.floor(r() * R)) },
      run: (a) => m.copyRows(a.dst as Tensor, a.src as Tensor, a.dstRows as number[], a.srcRows as number[]),
    };
  },
  adamw: (r) => {
    const shape = [int(r, 3), int(r, 4)];
    return {
      params: [
        T_('p', ['f32'], { alt: ['g', 'm', 'v'], anyRank: false }),
        T_('g', ['f32'], { alt: ['m', 'v'] }),
        T_('m', ['f32'], { alt: ['v'] }),
        T_('v'),
        { name: 'lr', kind: 'finite' },
        { name: 'step', kind: 'posInt', hugeOk: true },
      ],
      args: { p: f32(r, shape), g: f32(r, shape), m: f32(r, shape), v: f32(r, shape, 0, 1), lr: 1e-3, step: 1 },
      run: (a) => m.adamw(a.p as Tensor, a.g as Tensor, a.m as Tensor, a.v as Tensor, { lr: a.lr as number, step: a.step as number }),
    };
  },
  sumSquares: (r) => {
    const shape = [int(r, 3), int(r, 4)];
    return {
      params: [T_('g', ['f32'], { anyRank: true, alone: true }), OPTS],
      args: { g: f32(r, shape), opts: undefined },
      run: (a) => keep(m.sumSquares(a.g as Tensor, a.opts as undefined)),
      check: async (y, a) => near(y, [m.reference.sumSquaresRef(await host(a.g))]),
    };
  },
  loraRouting: (r) => {
    const K = int(r, 2),
      L = int(r, 3),
      Tn = int(r, 4);
    return {
      params: [
        { name: 'backend', kind: 'backend' },
        { name: 'slots', kind: 'intArray', anyLength: true, alt: ['K', 'weight'] },
        { name: 'K', kind: 'posInt', alt: ['slots'] },
        { name: 'L', kind: 'posInt' },
        { name: 'weight', kind: 'floatArray', optional: true },
      ],
      args: { backend: be, slots: Array.from({ length: Tn * K }, () => Math.floor(r() * (L + 1)) - 1), K, L, weight: undefined },
      run: (a) => {
        const rt = m.loraRouting(a.backend as Backend, a.slots as number[], {
          K: a.K as number,
          L: a.L as number,
          weight: a.weight as number[],
        });
        rt.dispose();
      },
    };
  },
  loraStack: (r) => {
    const L = int(r, 3),
      R = int(r, 3),
      H = int(r, 3);
    return {
      params: [
        T_('A', W, { alt: ['B'] }),
        T_('B', W),
        { name: 'rank', kind: 'intArray', optional: true },
        { name: 'scale', kind: 'floatArray', optional: true },
      ],
      args: { A: f32(r, [L, R, H]), B: f32(r, [L, H, R]), rank: Array.from({ length: L }, () => int(r, R)), scale: undefined },
      run: (a) => {
        const s = m.loraStack(a.A as Tensor, a.B as Tensor, { rank: a.rank as number[], scale: a.scale as number[] });
        s.rank.dispose();
        s.scale.dispose();
      },
    };
  },
  loraShrink: (r) => {
    const s = loraSetup(r);
    return {
      params: [T_('x', ['f32'], { alt: ['A', 'B', 'rank', 'scale', 'routing'] }), STACK, ROUTING, LORA_OPTS],
      args: { x: f32(r, [s.d.T, s.d.Hin]), stack: s.stack, routing: s.rt, strategy: undefined },
      run: (a) => keep(m.loraShrink(a.x as Tensor, a.stack as m.LoraStack, a.routing as m.LoraRouting, { strategy: a.strategy as 'auto' })),
      check: async (y, a) => {
        const h = await refStackOf(s);
        return near(y, m.reference.loraShrinkRef(await host(a.x), h.stack, h.rt, s.d));
      },
    };
  },
  loraExpand: (r) => {
    const s = loraSetup(r);
    return {
      params: [
        T_('y', ['f32'], { alt: ['A', 'B', 'rank', 'scale', 'routing', 'v'] }),
        T_('v', ['f32'], { alt: ['A', 'routing', 'y'] }),
        STACK,
        ROUTING,
        LORA_OPTS,
      ],
      args: { y: f32(r, [s.d.T, s.d.Hout]), v: f32(r, [s.d.T, s.d.K, s.d.R]), stack: s.stack, routing: s.rt, strategy: undefined },
      run: (a) =>
        keep(
          m.loraExpand(a.y as Tensor, a.v as Tensor, a.stack as m.LoraStack, a.routing as m.LoraRouting, {
            strategy: a.strategy as 'auto',
          }),
        ),
      check: async (y) => finite(y),
    };
  },
  loraApply: (r) => {
    const s = loraSetup(r);
    return {
      params: [
        T_('y', ['f32'], { alt: ['A', 'B', 'rank', 'scale', 'routing', 'x'] }),
        T_('x', ['f32'], { alt: ['A', 'routing', 'y'] }),
        STACK,
        ROUTING,
        LORA_OPTS,
      ],
      args: { y: f32(r, [s.d.T, s.d.Hout]), x: f32(r, [s.d.T, s.d.Hin]), stack: s.stack, routing: s.rt, strategy: undefined },
      run: (a) =>
        keep(
          m.loraApply(a.y as Tensor, a.x as Tensor, a.stack as m.LoraStack, a.routing as m.LoraRouting, { strategy: a.strategy as 'auto' }),
        ),
      check: async (v) => finite(v),
    };
  },
  loraShrinkGrad: (r) => {
    const s = loraSetup(r);
    return {
      params: [T_('dy', ['f32'], { alt: ['A', 'B', 'rank', 'scale', 'routing'] }), STACK, ROUTING, LORA_OPTS],
      args: { dy: f32(r, [s.d.T, s.d.Hout]), stack: s.stack, routing: s.rt, strategy: undefined },
      run: (a) =>
        keep(m.loraShrinkGrad(a.dy as Tensor, a.stack as m.LoraStack, a.routing as m.LoraRouting, { strategy: a.strategy as 'auto' })),
      check: async (y) => finite(y),
    };
  },
  loraInputGrad: (r) => {
    const s = loraSetup(r);
    return {
      params: [T_('dv', ['f32'], { alt: ['A', 'B', 'rank', 'scale', 'routing'] }), STACK, ROUTING, LORA_OPTS],
      args: { dv: f32(r, [s.d.T, s.d.K, s.d.R]), stack: s.stack, routing: s.rt, strategy: undefined },
      run: (a) =>
        keep(m.loraInputGrad(a.dv as Tensor, a.stack as m.LoraStack, a.routing as m.LoraRouting, { strategy: a.strategy as 'auto' })),
      check: async (y) => finite(y),
    };
  },
  loraWeightGrad: (r) => {
    const s = loraSetup(r);
    const { T: Tn, K, R, Hin, Hout } = s.d;
    const names = ['A', 'B', 'rank', 'scale', 'routing', 'x', 'dy', 'v', 'dv'];
    return {
      params: [
        T_('x', ['f32'], { alt: names }),
        T_('dy', ['f32'], { alt: names }),
        T_('v', ['f32'], { alt: names }),
        T_('dv', ['f32'], { alt: names }),
        STACK,
        ROUTING,
      ],
      args: { x: f32(r, [Tn, Hin]), dy: f32(r, [Tn, Hout]), v: f32(r, [Tn, K, R]), dv: f32(r, [Tn, K, R]), stack: s.stack, routing: s.rt },
      run: (a) => {
        const o = m.loraWeightGrad(
          a.x as Tensor,
          a.dy as Tensor,
          a.v as Tensor,
          a.dv as Tensor,
          a.stack as m.LoraStack,
          a.routing as m.LoraRouting,
        );
        keep(o.dB);
        return keep(o.dA);
      },
      check: async (y) => finite(y),
    };
  },
  attention: (r) => {
    const Tq = int(r, 4),
      nKv = int(r, 2),
      nH = nKv * int(r, 2),
      D = int(r, 4);
    const layout = m.attentionLayout(be, { qSeq: new Array(Tq).fill(0), qPos: Array.from({ length: Tq }, (_, i) => i) });
    live.push(layout.qSeq, layout.qPos, layout.qSeg, layout.kSeg, layout.blocked);
    return {
      params: [
        T_('q', ['f32'], { alt: ['k', 'v', 'layout'] }),
        T_('k', ['f32'], { alt: ['v', 'q', 'layout'] }),
        T_('v', ['f32'], { alt: ['layout', 'k'] }),
        { name: 'layout', kind: 'object' },
        { name: 'scale', kind: 'posFloat', optional: true },
      ],
      args: { q: f32(r, [Tq, nH, D]), k: f32(r, [Tq, nKv, D]), v: f32(r, [Tq, nKv, D]), layout, scale: undefined },
      run: (a) => {
        const o = m.attention(a.q as Tensor, a.k as Tensor, a.v as Tensor, a.layout as m.AttentionLayout, { scale: a.scale as number });
        keep(o.lse);
        return keep(o.out);
      },
      check: async (y) => finite(y),
    };
  },
  attentionLayout: (r) => {
    const Tq = int(r, 4);
    return {
      params: [
        { name: 'backend', kind: 'backend' },
        { name: 'qSeq', kind: 'intArray', anyLength: true, alt: ['qPos'] },
        { name: 'qPos', kind: 'intArray' },
      ],
      args: { backend: be, qSeq: new Array(Tq).fill(0), qPos: Array.from({ length: Tq }, (_, i) => i) },
      run: (a) => m.attentionLayout(a.backend as Backend, { qSeq: a.qSeq as number[], qPos: a.qPos as number[] }).dispose(),
    };
  },
  openBackend: () => ({
    params: [
      { name: 'kind', kind: 'strategy' },
      { name: 'threads', kind: 'posInt', optional: true },
    ],
    args: { kind, threads: undefined },
    // only the option checks are fuzzed here: a valid call opens (and closes) a backend
    run: async (a) => (await m.openBackend(a.kind as 'cpu', { threads: a.threads as number })).destroy(),
  }),
};
const OP_NAMES = Object.keys(OPS);

// ---- bad values per kind -------------------------------------------------------------------

function badValues(p: Param, valid: unknown): Array<[string, () => unknown]> {
  const common: Array<[string, () => unknown]> = [
    ['null', () => null],
    ['string', () => 'x'],
    ['object', () => ({})],
  ];
  if (!p.optional) common.push(['undefined', () => undefined]);
  const nums: Array<[string, () => unknown]> = [
    ['NaN', () => NaN],
    ['1.5', () => 1.5],
    ['-2', () => -2],
    ['2^32', () => 2 ** 32],
    ['Infinity', () => Infinity],
    ['"3"', () => '3'],
  ];
  const arrOf = (v: unknown): Array<[string, () => unknown]> => {
    const a = valid as number[] | undefined;
    const base = a ?? [1];
    const out: Array<[string, () => unknown]> = [
      ['"abc"', () => 'abc'],
      ['array-like', () => ({ length: base.length + 1, 0: 0 })],
      ['BigInt64Array', () => new BigInt64Array(base.length)],
    ];
    for (const [n, f] of [
      ['NaN', NaN],
      ['2^32', 2 ** 32],
      ['-2', -2],
      ['1.5', 1.5],
      ['"1"', '1'],
      ['null', null],
      ['Infinity', Infinity],
    ] as const) {
      if (v === 'float' && (n === '-2' || n === '1.5' || n === '2^32')) continue; // valid floats
      out.push([
        `element ${n}`,
        () => {
          const c: unknown[] = [...base];
          c[Math.floor(c.length / 2)] = f;
          return c;
        },
      ]);
    }
    if (a && !p.anyLength) out.push(['wrong length', () => [...a, 0]]);
    return out;
  };
  switch (p.kind) {
    case 'tensor': {
      const t = valid as Tensor | undefined;
      const out: Array<[string, () => unknown]> = [...common, ['number', () => 5], ['Float32Array', () => new Float32Array(4)]];
      if (t) {
        const other = (p.dtypes ?? []).includes('i32') ? 'f32' : 'i32';
        out.push(['wrong dtype', () => keep(be.zeros([...t.shape], other as m.DType))]);
        out.push([
          'disposed',
          () => {
            const d = be.zeros([...t.shape], t.dtype);
            d.dispose();
            return d;
          },
        ]);
        if (!p.anyRank) out.push(['extra axis', () => keep(be.zeros([...t.shape, 2], t.dtype))]);
        if (!p.alone)
          out.push([
            'other backend',
            () => {
              const o = other_(t);
              return o;
            },
          ]);
      }
      return out;
    }
    case 'opts':
      return [
        ['null', () => null],
        ['number', () => 5],
        ['string', () => 'x'],
        ['array', () => []],
      ];
    case 'object':
      return [...common, ['number', () => 5], ['array', () => []]];
    case 'int':
    case 'posInt':
      return [...common.filter(([n]) => n !== 'object'), ...nums.filter(([n]) => !(p.hugeOk && n === '2^32')), ['0', () => 0]];
    case 'posFloat':
      return [
        ['null', () => null],
        ['string', () => '1'],
        ['NaN', () => NaN],
        ['Infinity', () => Infinity],
        ['-1', () => -1],
        ['0', () => 0],
      ];
    case 'finite':
      return [
        ['null', () => null],
        ['string', () => '1'],
        ['NaN', () => NaN],
        ['Infinity', () => Infinity],
        ['-Infinity', () => -Infinity],
      ];
    case 'bool':
      return [
        ['null', () => null],
        ['1', () => 1],
        ['"true"', () => 'true'],
      ];
    case 'strategy':
      return [
        ['null', () => null],
        ['"fast"', () => 'fast'],
        ['5', () => 5],
      ];
    case 'backend':
      return [...common, ['number', () => 5], ['destroyed', () => destroyed]];
    case 'intArray':
      return arrOf('int');
    case 'floatArray':
      return arrOf('float');
    case 'data':
      return [
        ...common,
        ['wrong length', () => [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]],
        ['"abc"', () => 'abc'],
        ['Uint8Array', () => new Uint8Array((valid as number[]).length)],
        [
          'element "1"',
          () => {
            const c: unknown[] = [...(valid as number[])];
            c[0] = '1';
            return c;
          },
        ],
        [
          'element null',
          () => {
            const c: unknown[] = [...(valid as number[])];
            c[0] = null;
            return c;
          },
        ],
      ];
    case 'shape':
      return [
        ...common,
        ['[]', () => []],
        ['[0]', () => [0]],
        ['[-2]', () => [-2]],
        ['[1.5]', () => [1.5]],
        ['[NaN]', () => [NaN]],
        ['[2^32, 2^32]', () => [2 ** 32, 2 ** 32]],
        ['["2"]', () => ['2']],
      ];
    case 'dtype':
      return [
        ['null', () => null],
        ['"f64"', () => 'f64'],
        ['5', () => 5],
      ];
  }
}

function other_(t: Tensor): Tensor {
  const o = other.zeros([...t.shape], t.dtype);
  live.push(o);
  return o;
}
const destroyed = await m.openBackend(kind);
destroyed.destroy();

// ---- the run -------------------------------------------------------------------------------

interface Outcome {
  calls: number;
  valid: number;
  invalid: number;
  refChecked: number;
  silentAccepts: string[];
  unclear: string[];
  validFailures: string[];
}
const res: Outcome = { calls: 0, valid: 0, invalid: 0, refChecked: 0, silentAccepts: [], unclear: [], validFailures: [] };
const note = (list: string[], s: string) => {
  if (list.length < 20) list.push(s);
};

const callArb = fc.record({
  op: fc.constantFrom(...OP_NAMES),
  seed: fc.integer({ min: 1, max: 2 ** 31 - 1 }),
  mutate: fc.boolean(),
  param: fc.nat(),
  bad: fc.nat(),
  ref: fc.integer({ min: 0, max: 9 }),
});

for (const c of fc.sample(callArb, { seed, numRuns: runs })) {
  const r = mulberry32(c.seed);
  const call = OPS[c.op]!(r);
  const args = { ...call.args };
  let label = `${c.op} valid`;
  let expect: Param | null = null;
  if (c.mutate) {
    const p = call.params[c.param % call.params.length]!;
    const bads = badValues(p, args[p.name]);
    const [bn, make] = bads[c.bad % bads.length]!;
    args[p.name] = make();
    expect = p;
    label = `${c.op} ${p.name} = ${bn}`;
  }
  res.calls++;
  sampleRef = c.ref === 0;
  try {
    const out = await call.run(args);
    if (expect) {
      res.invalid++;
      note(res.silentAccepts, label);
    } else {
      res.valid++;
      if (call.check) {
        const why = await call.check(out, args);
        res.refChecked++;
        if (why) note(res.validFailures, `${label}: ${why}`);
      }
    }
  } catch (e) {
    if (!expect) {
      res.valid++;
      note(res.validFailures, `${label}: threw ${(e as Error)?.name}: ${(e as Error)?.message}`);
    } else {
      res.invalid++;
      const msg = e instanceof Error ? e.message : String(e);
      const names = [expect.name, ...(expect.alt ?? [])];
      // a name counts when it appears as a word (so 'v' is not found inside 'invFreq')
      const named = names.some((n) => new RegExp(`(^|[^A-Za-z])${n.replace(/[.]/g, '\\.')}([^A-Za-z]|$)`).test(msg));
      if (!(e instanceof m.MoteError) || !named) note(res.unclear, `${label}: ${(e as Error)?.constructor?.name}: ${msg}`);
    }
  }
  // bounded memory: free what this call made
  for (const t of live.splice(0)) t.dispose();
}
be.destroy();
other.destroy();
process.stdout.write(JSON.stringify(res) + '\n');
