// The multi-LoRA ops (src/ops/lora.ts) on every backend against the float64 references
// (src/reference/lora.ts), plus determinism and argument checking.
//
// The reference sees the weights rounded through their storage dtype (roundTo), so every
// backend must match it to f32 accumulation accuracy: relative error ≤ 1e-5 for all dtypes.
//
// cpu and cuda run the full case matrix (configs × strategies × weight dtypes). WebGPU in CI
// is Mesa lavapipe, a CPU emulation where compiling each shader specialisation (kernel ×
// weight dtype × strategy) takes 5–20 s with a cold shader cache, while running the cases is
// cheap. So webgpu runs a lean subset chosen so that every feature appears at least once with
// as few specialisations as possible (bgmv with f32/bf16, sgmv with f32/f16: 10 pipelines):
// each strategy and 'auto', each weight dtype and a mixed A/B dtype pair, K = 1 and 2, T = 1,
// 3, 17, 128, 131, R = 1, 8, 16, 64, L = 1, 4, 64, all-same / all-distinct / unsorted /
// sorted / −1 / duplicate / empty routings. MOTE_LORA_FULL=1 runs the full matrix on webgpu too.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
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
  type LoraDims,
  type LoraRouting,
  type LoraStack,
  type LoraStrategy,
} from '../src/ops/lora.js';
import { copyRows } from '../src/ops/copy_rows.js';
import {
  loraExpandRef,
  loraInputGradRef,
  loraShrinkGradRef,
  loraShrinkRef,
  loraWeightGradRef,
  type LoraRefRouting,
  type LoraRefStack,
} from '../src/reference/lora.js';
import { roundTo, type DType } from '../src/dtype.js';
import { ArgumentError, BackendMismatchError, DTypeError, DisposedTensorError, MoteError, ShapeError } from '../src/errors.js';
import { openBackend } from '../src/backend/select.js';
import type { Backend, BackendKind } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { closeBackends, forEachBackend, poisoned, randn, relErr, rng } from './helpers.js';

after(closeBackends);

/** Every op, every dtype: the reference uses the dtype-rounded weights, so only f32 accumulation error remains. */
const TOL = 1e-5;

type SlotPattern =
  | 'same' // every slot the same adapter (K = 2: a token routed twice to it)
  | 'distinct' // every slot a different adapter, in random order
  | 'unsorted' // random adapters, not sorted
  | 'sorted' // random adapters sorted ascending (prefill-like contiguous groups)
  | 'holes' // random with −1 slots, a token with no adapter and (K = 2) a token routed twice to one adapter
  | 'none' // −1 everywhere: no work at all
  | 'mote'; // K = 2: [step expert or −1, shared adapter 0] with weights [α, 1 − α]

interface Config {
  name: string;
  T: number;
  K: number;
  L: number;
  R: number;
  Hin: number;
  Hout: number;
  ranks: 'full' | 'mixed' | number[];
  slots: SlotPattern | number[];
  /** [A dtype, B dtype] pairs to run; default f32, f16, bf16 for both. */
  dtypes?: [DType, DType][];
  /** (strategy, A/B dtype) combinations that also run on webgpu. */
  webgpu?: [LoraStrategy | 'auto', DType, DType?][];
}

const CONFIGS: Config[] = [
  { name: 'T=1 K=1 L=1 R=1 rank 1', T: 1, K: 1, L: 1, R: 1, Hin: 37, Hout: 53, ranks: 'full', slots: 'same', webgpu: [['bgmv', 'f32']] },
  {
    name: 'T=1 K=2 L=4 R=8 [-1, e]',
    T: 1,
    K: 2,
    L: 4,
    R: 8,
    Hin: 53,
    Hout: 37,
    ranks: [3, 8, 1, 5],
    slots: [-1, 1],
    webgpu: [['auto', 'bf16']],
  },
  {
    name: 'T=3 K=1 L=4 R=16 unsorted',
    T: 3,
    K: 1,
    L: 4,
    R: 16,
    Hin: 67,
    Hout: 37,
    ranks: [16, 1, 7, 12],
    slots: [3, 0, 2],
    webgpu: [['sgmv', 'f16']],
  },
  {
    name: 'T=3 K=2 L=4 R=8 -1 + duplicate',
    T: 3,
    K: 2,
    L: 4,
    R: 8,
    Hin: 37,
    Hout: 67,
    ranks: [8, 2, 5, 1],
    slots: [2, -1, 1, 1, -1, 0],
    webgpu: [['bgmv', 'bf16']],
  },
  {
    name: 'T=3 K=2 L=4 R=8 all -1',
    T: 3,
    K: 2,
    L: 4,
    R: 8,
    Hin: 37,
    Hout: 53,
    ranks: 'mixed',
    slots: 'none',
    webgpu: [
      ['bgmv', 'f32'],
      ['sgmv', 'f32'],
    ],
  },
  { name: 'T=17 K=1 L=64 R=16 all-distinct', T: 17, K: 1, L: 64, R: 16, Hin: 37, Hout: 53, ranks: 'mixed', slots: 'distinct' },
  {
    name: 'T=17 K=2 L=64 R=64 all-distinct',
    T: 17,
    K: 2,
    L: 64,
    R: 64,
    Hin: 67,
    Hout: 53,
    ranks: 'mixed',
    slots: 'distinct',
    webgpu: [
      ['bgmv', 'bf16'],
      ['sgmv', 'f32'],
    ],
  },
  // many rank-8 slots per token (the serving engine's units): ranks all multiples of 8, H_out not
  // one (the last outputs take the slot-at-a-time path)
  {
    name: 'T=5 K=16 L=64 R=8 rank-8 units',
    T: 5,
    K: 16,
    L: 64,
    R: 8,
    Hin: 37,
    Hout: 61,
    ranks: 'full',
    slots: 'unsorted',
    // webgpu's grouped expand for K > 2: per-slot scratch rows, then one sum per output
    webgpu: [
      ['sgmv', 'f32'],
      ['bgmv', 'bf16'],
    ],
  },
  {
    name: 'T=3 K=4 L=8 R=16 ranks 8 and 16',
    T: 3,
    K: 4,
    L: 8,
    R: 16,
    Hin: 37,
    Hout: 67,
    ranks: [8, 16, 8, 16, 16, 8, 8, 16],
    slots: 'holes',
    webgpu: [['sgmv', 'f16']],
  },
  { name: 'T=17 K=1 L=1 R=64 all-same full rank', T: 17, K: 1, L: 1, R: 64, Hin: 53, Hout: 67, ranks: 'full', slots: 'same' },
  { name: 'T=17 K=2 L=4 R=8 holes', T: 17, K: 2, L: 4, R: 8, Hin: 53, Hout: 67, ranks: 'mixed', slots: 'holes', webgpu: [['auto', 'f16']] },
  {
    name: 'T=17 K=2 L=4 R=16 mixed A/B dtypes',
    T: 17,
    K: 2,
    L: 4,
    R: 16,
    Hin: 37,
    Hout: 53,
    ranks: 'mixed',
    slots: 'unsorted',
    dtypes: [
      ['bf16', 'f32'],
      ['f16', 'bf16'],
      ['f32', 'f16'],
    ],
    webgpu: [['bgmv', 'bf16', 'f32']],
  },
  {
    name: 'T=128 K=1 L=4 R=16 all-same',
    T: 128,
    K: 1,
    L: 4,
    R: 16,
    Hin: 37,
    Hout: 53,
    ranks: [4, 16, 9, 1],
    slots: 'same',
    webgpu: [['sgmv', 'f16']],
  },
  {
    name: 'T=131 K=2 L=64 R=8 MoTE',
    T: 131,
    K: 2,
    L: 64,
    R: 8,
    Hin: 37,
    Hout: 37,
    ranks: 'mixed',
    slots: 'mote',
    webgpu: [['auto', 'f32']],
  },
  {
    name: 'T=131 K=1 L=4 R=64 sorted',
    T: 131,
    K: 1,
    L: 4,
    R: 64,
    Hin: 53,
    Hout: 67,
    ranks: 'mixed',
    slots: 'sorted',
    webgpu: [['bgmv', 'f32']],
  },
  { name: 'T=131 K=2 L=1 R=1 holes', T: 131, K: 2, L: 1, R: 1, Hin: 37, Hout: 53, ranks: 'full', slots: 'holes' },
  { name: 'T=128 K=2 L=64 R=64 unsorted', T: 128, K: 2, L: 64, R: 64, Hin: 67, Hout: 37, ranks: 'mixed', slots: 'unsorted' },
];

const STRATEGIES: (LoraStrategy | 'auto')[] = ['bgmv', 'sgmv', 'auto'];
const FULL = process.env.MOTE_LORA_FULL === '1';
const DTYPES: [DType, DType][] = [
  ['f32', 'f32'],
  ['f16', 'f16'],
  ['bf16', 'bf16'],
];

// ---------------------------------------------------------------------------------------
// Host data for one case

function makeRanks(c: Config, r: () => number): number[] {
  if (Array.isArray(c.ranks)) return c.ranks;
  if (c.ranks === 'full') return Array(c.L).fill(c.R);
  // mixed: random in [1, R], with rank 1 and rank R both present when L ≥ 2
  const ranks = Array.from({ length: c.L }, () => 1 + Math.floor(r() * c.R));
  if (c.L >= 2) {
    ranks[0] = c.R;
    ranks[c.L - 1] = 1;
  }
  return ranks;
}

function makeSlots(c: Config, r: () => number): number[] {
  const { T, K, L } = c;
  const n = T * K;
  const pick = () => Math.floor(r() * L);
  if (Array.isArray(c.slots)) return c.slots;
  switch (c.slots) {
    case 'same':
      return Array(n).fill(L - 1);
    case 'none':
      return Array(n).fill(-1);
    case 'distinct': {
      assert.ok(n <= L, 'distinct needs T·K ≤ L');
      const perm = Array.from({ length: L }, (_, i) => i);
      for (let i = L - 1; i > 0; i--) {
        const j = Math.floor(r() * (i + 1));
        [perm[i], perm[j]] = [perm[j]!, perm[i]!];
      }
      return perm.slice(0, n);
    }
    case 'unsorted': {
      const s = Array.from({ length: n }, pick);
      if (s.every((v, i) => i === 0 || s[i - 1]! <= v)) s.reverse();
      return s;
    }
    case 'sorted':
      return Array.from({ length: n }, pick).sort((a, b) => a - b);
    case 'holes': {
      const s = Array.from({ length: n }, () => (r() < 0.3 ? -1 : pick()));
      for (let k = 0; k < K; k++) s[1 * K + k] = -1; // token 1: no adapter
      s[0] = pick(); // token 0 has one
      if (K === 2) s[2 * K] = s[2 * K + 1] = pick(); // token 2: the same adapter twice
      return s;
    }
    case 'mote': {
      assert.equal(K, 2);
      const s: number[] = [];
      for (let t = 0; t < T; t++) s.push(r() < 0.15 ? -1 : 1 + Math.floor(r() * (L - 1)), 0);
      return s;
    }
  }
}

function makeWeights(c: Config, slots: number[], r: () => number): Float32Array {
  if (c.slots === 'mote') {
    const w = new Float32Array(c.T * 2);
    for (let t = 0; t < c.T; t++) {
      const a = 0.1 + 0.8 * r();
      w[2 * t] = a;
      w[2 * t + 1] = 1 - a;
    }
    return w;
  }
  void slots;
  return randn(r, c.T * c.K);
}

interface Host {
  d: LoraDims;
  ranks: number[];
  slots: number[];
  weights: Float32Array;
  scales: Float32Array;
  A: Float32Array;
  B: Float32Array;
  /** reference view: dtype-rounded A and B */
  s: LoraRefStack;
  rt: LoraRefRouting;
  x: Float32Array;
  dy: Float32Array;
  /** random everywhere, including past each rank and in empty slots (the ops must not read those) */
  vIn: Float32Array;
  dvIn: Float32Array;
  /** which entries of [T,K,R], [L,R,Hin], [L,Hout,R], [T,·] take part */
  liveV: (i: number) => boolean;
  liveA: (i: number) => boolean;
  liveB: (i: number) => boolean;
  liveTok: (t: number) => boolean;
}

function makeHost(c: Config, aDtype: DType, bDtype: DType, seed: number): Host {
  const r = rng(seed);
  const d: LoraDims = { T: c.T, K: c.K, L: c.L, R: c.R, Hin: c.Hin, Hout: c.Hout };
  const ranks = makeRanks(c, r);
  const slots = makeSlots(c, r);
  assert.equal(ranks.length, d.L);
  assert.equal(slots.length, d.T * d.K);
  const weights = makeWeights(c, slots, r);
  const scales = Float32Array.from({ length: d.L }, (_, e) => (2 + 2 * r()) / ranks[e]!);
  const A = randn(r, d.L * d.R * d.Hin, 1 / Math.sqrt(d.Hin));
  const B = randn(r, d.L * d.Hout * d.R, 1 / Math.sqrt(d.R));
  const used = new Set(slots.filter((e) => e >= 0));
  return {
    d,
    ranks,
    slots,
    weights,
    scales,
    A,
    B,
    s: { A: roundTo(aDtype, A), B: roundTo(bDtype, B), ranks, scales },
    rt: { slots, weights },
    x: randn(r, d.T * d.Hin),
    dy: randn(r, d.T * d.Hout),
    vIn: randn(r, d.T * d.K * d.R),
    dvIn: randn(r, d.T * d.K * d.R),
    liveV: (i) => {
      const e = slots[Math.floor(i / d.R)]!;
      return e >= 0 && i % d.R < ranks[e]!;
    },
    liveA: (i) => {
      const e = Math.floor(i / (d.R * d.Hin)),
        rr = Math.floor(i / d.Hin) % d.R;
      return used.has(e) && rr < ranks[e]!;
    },
    liveB: (i) => {
      const e = Math.floor(i / (d.Hout * d.R));
      return used.has(e) && i % d.R < ranks[e]!;
    },
    liveTok: (t) => slots.slice(t * d.K, t * d.K + d.K).some((e) => e >= 0),
  };
}

// ---------------------------------------------------------------------------------------
// Comparison helpers: every failure of a case is collected, so one run names them all.

class Report {
  readonly fails: string[] = [];
  constructor(public label: string) {}

  close(what: string, out: ArrayLike<number>, ref: ArrayLike<number>, live?: (i: number) => boolean): void {
    let num = 0,
      den = 0,
      bad = -1;
    for (let i = 0; i < ref.length; i++) {
      if (live && !live(i)) continue;
      if (!Number.isFinite(out[i]!) && bad < 0) bad = i;
      num += (out[i]! - ref[i]!) ** 2;
      den += ref[i]! ** 2;
    }
    if (bad >= 0) this.fails.push(`${what}: non-finite output at ${bad} (${out[bad]}), reference ${ref[bad]}`);
    else {
      const e = den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
      if (!(e <= TOL)) this.fails.push(`${what}: relative error ${e.toExponential(2)} > ${TOL}`);
    }
  }

  /** Entries outside `live` must equal `want` exactly (0 for fresh outputs, the old value when accumulating). */
  exact(what: string, out: ArrayLike<number>, want: ArrayLike<number> | number, live: (i: number) => boolean): void {
    for (let i = 0; i < out.length; i++) {
      if (live(i)) continue;
      const w = typeof want === 'number' ? want : want[i]!;
      if (!Object.is(out[i], w) && !(out[i] === 0 && w === 0)) {
        this.fails.push(`${what}: entry ${i} must stay ${w} (past rank / empty slot / absent adapter), got ${out[i]}`);
        return;
      }
    }
  }

  async step(what: string, f: () => Promise<void>): Promise<void> {
    try {
      await f();
    } catch (e) {
      this.fails.push(`${what}: threw ${(e as Error)?.stack ?? e}`);
    }
  }

  done(): void {
    assert.deepEqual(this.fails, [], `${this.label}:\n  ${this.fails.join('\n  ')}`);
  }
}

/** Random values of about the size of `ref` (so an accumulate check cannot hide a wrong term). */
function initLike(r: () => number, ref: ArrayLike<number>): Float32Array {
  let ss = 0;
  for (let i = 0; i < ref.length; i++) ss += ref[i]! ** 2;
  const rms = Math.sqrt(ss / Math.max(1, ref.length));
  return randn(r, ref.length, rms > 0 ? rms : 1);
}

/** Tensors made during a case, disposed at its end. */
class Pool {
  readonly ts: { dispose(): void }[] = [];
  constructor(readonly b: Backend) {}
  t(data: Float32Array, shape: number[], dtype: DType = 'f32'): Tensor {
    const t = this.b.tensor(data, shape, dtype);
    this.ts.push(t);
    return t;
  }
  poison(shape: number[]): Tensor {
    return this.t(poisoned(shape.reduce((a, b) => a * b, 1)), shape);
  }
  keep<T extends { dispose(): void }>(t: T): T {
    this.ts.push(t);
    return t;
  }
  dispose(): void {
    for (const t of this.ts) t.dispose();
  }
}

function build(p: Pool, h: Host, aDtype: DType, bDtype: DType): { s: LoraStack; rt: LoraRouting } {
  const { d } = h;
  const A = p.t(h.A, [d.L, d.R, d.Hin], aDtype);
  const B = p.t(h.B, [d.L, d.Hout, d.R], bDtype);
  const s = loraStack(A, B, { rank: h.ranks, scale: h.scales });
  p.keep(s.rank);
  p.keep(s.scale);
  const rt = p.keep(loraRouting(p.b, h.slots, { K: d.K, L: d.L, weight: h.weights }));
  return { s, rt };
}

// ---------------------------------------------------------------------------------------
// The case matrix

async function runCase(b: Backend, c: Config, strategy: LoraStrategy | 'auto', aDtype: DType, bDtype: DType, seed: number): Promise<void> {
  const h = makeHost(c, aDtype, bDtype, seed);
  const { d } = h;
  const r = rng(seed ^ 0x5eed);
  const p = new Pool(b);
  const rep = new Report(`${c.name} ${strategy} A=${aDtype} B=${bDtype} on ${b.kind}`);
  try {
    const { s, rt } = build(p, h, aDtype, bDtype);
    if (strategy === 'auto') rep.label += ` (auto chose ${chooseStrategy(rt, 'auto')})`;
    const opts = { strategy };
    const TKR = [d.T, d.K, d.R],
      THin = [d.T, d.Hin],
      THout = [d.T, d.Hout];
    const x = p.t(h.x, THin),
      dy = p.t(h.dy, THout),
      vIn = p.t(h.vIn, TKR),
      dvIn = p.t(h.dvIn, TKR);
    const liveY = (i: number) => h.liveTok(Math.floor(i / d.Hout));
    const liveX = (i: number) => h.liveTok(Math.floor(i / d.Hin));

    const vRef = loraShrinkRef(h.x, h.s, h.rt, d);
    await rep.step('loraShrink', async () => {
      const out = p.poison(TKR);
      assert.equal(loraShrink(x, s, rt, { ...opts, out }), out, 'returns opts.out');
      const v = await out.readFloat();
      rep.close('loraShrink v', v, vRef);
      rep.exact('loraShrink v', v, 0, h.liveV);
    });

    const termY = loraExpandRef(h.vIn, h.s, h.rt, d);
    await rep.step('loraExpand', async () => {
      const y0 = initLike(r, termY);
      const y = p.t(y0, THout);
      assert.equal(loraExpand(y, vIn, s, rt, opts), y, 'returns y');
      const out = await y.readFloat();
      rep.close('loraExpand y', out, loraExpandRef(h.vIn, h.s, h.rt, d, y0), liveY);
      rep.exact('loraExpand y (tokens without adapter)', out, y0, liveY);
    });

    await rep.step('loraApply', async () => {
      const term = loraExpandRef(vRef, h.s, h.rt, d);
      const y0 = initLike(r, term);
      const y = p.t(y0, THout);
      const vOut = p.poison(TKR);
      assert.equal(loraApply(y, x, s, rt, { ...opts, v: vOut }), vOut, 'returns opts.v');
      const out = await y.readFloat();
      rep.close(
        'loraApply y',
        out,
        term.map((t, i) => t + y0[i]!),
        liveY,
      );
      rep.exact('loraApply y (tokens without adapter)', out, y0, liveY);
      const v = await vOut.readFloat();
      rep.close('loraApply v', v, vRef);
      rep.exact('loraApply v', v, 0, h.liveV);
    });

    await rep.step('loraShrinkGrad', async () => {
      const out = p.poison(TKR);
      assert.equal(loraShrinkGrad(dy, s, rt, { ...opts, out }), out, 'returns opts.out');
      const dv = await out.readFloat();
      rep.close('loraShrinkGrad dv', dv, loraShrinkGradRef(h.dy, h.s, h.rt, d));
      rep.exact('loraShrinkGrad dv', dv, 0, h.liveV);
    });

    const dxRef = loraInputGradRef(h.dvIn, h.s, h.rt, d);
    await rep.step('loraInputGrad', async () => {
      const out = p.poison(THin);
      assert.equal(loraInputGrad(dvIn, s, rt, { ...opts, out }), out, 'returns opts.out');
      const dx = await out.readFloat();
      rep.close('loraInputGrad dx', dx, dxRef);
      rep.exact('loraInputGrad dx (tokens without adapter)', dx, 0, liveX);
    });
    await rep.step('loraInputGrad accumulate', async () => {
      const dx0 = initLike(r, dxRef);
      const out = p.t(dx0, THin);
      loraInputGrad(dvIn, s, rt, { ...opts, out, accumulate: true });
      const dx = await out.readFloat();
      rep.close(
        'loraInputGrad accumulate dx',
        dx,
        dxRef.map((v, i) => v + dx0[i]!),
        liveX,
      );
      rep.exact('loraInputGrad accumulate dx (tokens without adapter)', dx, dx0, liveX);
    });

    const wg = loraWeightGradRef(h.x, h.dy, h.vIn, h.dvIn, h.s, h.rt, d);
    const LRH = [d.L, d.R, d.Hin],
      LHR = [d.L, d.Hout, d.R];
    await rep.step('loraWeightGrad', async () => {
      const dA = p.poison(LRH),
        dB = p.poison(LHR);
      const res = loraWeightGrad(x, dy, vIn, dvIn, s, rt, { dA, dB });
      assert.ok(res.dA === dA && res.dB === dB, 'returns opts.dA / opts.dB');
      const gA = await dA.readFloat(),
        gB = await dB.readFloat();
      rep.close('loraWeightGrad dA', gA, wg.dA);
      rep.exact('loraWeightGrad dA', gA, 0, h.liveA);
      rep.close('loraWeightGrad dB', gB, wg.dB);
      rep.exact('loraWeightGrad dB', gB, 0, h.liveB);
    });
    await rep.step('loraWeightGrad accumulate', async () => {
      const dA0 = initLike(r, wg.dA),
        dB0 = initLike(r, wg.dB);
      const dA = p.t(dA0, LRH),
        dB = p.t(dB0, LHR);
      loraWeightGrad(x, dy, vIn, dvIn, s, rt, { dA, dB, accumulate: true });
      const gA = await dA.readFloat(),
        gB = await dB.readFloat();
      rep.close(
        'loraWeightGrad accumulate dA',
        gA,
        wg.dA.map((v, i) => v + dA0[i]!),
        h.liveA,
      );
      rep.exact('loraWeightGrad accumulate dA', gA, dA0, h.liveA);
      rep.close(
        'loraWeightGrad accumulate dB',
        gB,
        wg.dB.map((v, i) => v + dB0[i]!),
        h.liveB,
      );
      rep.exact('loraWeightGrad accumulate dB', gB, dB0, h.liveB);
    });
    // the inputs are inputs: nothing wrote into them
    await rep.step('inputs untouched', async () => {
      const same = (a: Float32Array, b: Float32Array) => a.every((v, i) => Object.is(v, b[i]));
      if (!same(await x.readFloat(), h.x)) rep.fails.push('x was modified');
      if (!same(await dy.readFloat(), h.dy)) rep.fails.push('dy was modified');
      if (!same(await vIn.readFloat(), h.vIn)) rep.fails.push('v (input of loraExpand/loraWeightGrad) was modified');
      if (!same(await dvIn.readFloat(), h.dvIn)) rep.fails.push('dv (input of loraInputGrad/loraWeightGrad) was modified');
    });
  } finally {
    p.dispose();
  }
  rep.done();
}

let seed = 1000;
for (const c of CONFIGS) {
  for (const [aDtype, bDtype] of c.dtypes ?? DTYPES) {
    for (const strategy of STRATEGIES) {
      const onWebgpu = (c.webgpu ?? []).some(([st, a, bb]) => st === strategy && a === aDtype && (bb ?? a) === bDtype);
      const kinds: BackendKind[] = onWebgpu || FULL ? ['cpu', 'webgpu', 'cuda'] : ['cpu', 'cuda'];
      const caseSeed = seed++;
      const dt = aDtype === bDtype ? aDtype : `A=${aDtype} B=${bDtype}`;
      forEachBackend(
        `lora ${c.name} Hin=${c.Hin} Hout=${c.Hout} ${dt} ${strategy}`,
        (b) => runCase(b, c, strategy, aDtype, bDtype, caseSeed),
        { kinds },
      );
    }
  }
}

test('every webgpu combination named in CONFIGS exists in the matrix', () => {
  for (const c of CONFIGS)
    for (const [st, a, bb] of c.webgpu ?? []) {
      const ok = STRATEGIES.includes(st) && (c.dtypes ?? DTYPES).some(([x, y]) => x === a && y === (bb ?? a));
      assert.ok(ok, `${c.name}: webgpu combination ${st} ${a}/${bb ?? a} is not in the matrix`);
    }
});

test("'auto' picks sgmv for grouped batches and bgmv for scattered ones", async (t) => {
  const b = await openBackend('cpu').catch(() => null);
  if (!b) return t.skip('cpu backend unavailable (only the host-side routing is tested here)');
  try {
    const decode = loraRouting(b, [3, 0, 2], { K: 1, L: 4 });
    const prefill = loraRouting(b, Array(128).fill(1), { K: 1, L: 4 });
    assert.equal(chooseStrategy(decode, 'auto'), 'bgmv');
    assert.equal(chooseStrategy(prefill, 'auto'), 'sgmv');
    assert.equal(chooseStrategy(prefill, 'bgmv'), 'bgmv');
    decode.dispose();
    prefill.dispose();
  } finally {
    b.destroy();
  }
});

// ---------------------------------------------------------------------------------------
// Determinism: the same op twice gives the same bits (both strategies; weight grads have none).

const bitsEqual = (a: Float32Array, b: Float32Array) =>
  a.length === b.length &&
  new Uint32Array(a.buffer, a.byteOffset, a.length).every((v, i) => v === new Uint32Array(b.buffer, b.byteOffset, b.length)[i]);

forEachBackend('lora ops are deterministic', async (b) => {
  const c: Config = { name: 'det', T: 131, K: 2, L: 4, R: 16, Hin: 37, Hout: 53, ranks: 'mixed', slots: 'holes' };
  const h = makeHost(c, 'f32', 'f32', 77);
  const { d } = h;
  const p = new Pool(b);
  try {
    const { s, rt } = build(p, h, 'f32', 'f32');
    const x = p.t(h.x, [d.T, d.Hin]),
      dy = p.t(h.dy, [d.T, d.Hout]);
    const vIn = p.t(h.vIn, [d.T, d.K, d.R]),
      dvIn = p.t(h.dvIn, [d.T, d.K, d.R]);
    const y0 = randn(rng(5), d.T * d.Hout);
    for (const strategy of ['bgmv', 'sgmv'] as const) {
      const runs: Record<string, Float32Array>[] = [];
      for (let i = 0; i < 2; i++) {
        const y = p.t(y0, [d.T, d.Hout]);
        const v = p.keep(loraApply(y, x, s, rt, { strategy }));
        const dv = p.keep(loraShrinkGrad(dy, s, rt, { strategy }));
        const dx = p.keep(loraInputGrad(dvIn, s, rt, { strategy }));
        const w = loraWeightGrad(x, dy, vIn, dvIn, s, rt);
        p.keep(w.dA);
        p.keep(w.dB);
        const v2 = p.keep(loraShrink(x, s, rt, { strategy }));
        runs.push({
          y: await y.readFloat(),
          v: await v.readFloat(),
          v2: await v2.readFloat(),
          dv: await dv.readFloat(),
          dx: await dx.readFloat(),
          dA: await w.dA.readFloat(),
          dB: await w.dB.readFloat(),
        });
      }
      for (const k of Object.keys(runs[0]!)) {
        assert.ok(runs[0]![k]!.every(Number.isFinite), `${strategy} ${k}: non-finite output`);
        assert.ok(bitsEqual(runs[0]![k]!, runs[1]![k]!), `${strategy} ${k}: two runs differ in their bits`);
      }
      // and the default-allocated outputs are right (not only repeatable)
      const ref = loraShrinkRef(h.x, h.s, h.rt, d);
      assert.ok(relErr(runs[0]!.v2!, ref) <= TOL, `${strategy} loraShrink without out: relative error ${relErr(runs[0]!.v2!, ref)}`);
    }
  } finally {
    p.dispose();
  }
});

// The cpu kernels cut their work from the problem only (DESIGN §5): 1, 2 and 3 threads give
// the same bits, on the shapes that take each path (scattered slots with holes, one adapter
// for every token, many adapters of one token each with narrow layers, K = 16 rank-8 units).
test('lora ops give the same bits for every thread count [cpu]', async (t) => {
  let be: Backend;
  try {
    be = await openBackend('cpu');
  } catch (e) {
    t.skip(`cpu backend unavailable: ${(e as Error).message}`);
    return;
  }
  const addon = (be as unknown as { addon: { setThreads(n: number): void; info(): { cpu: { threads: number } } } }).addon;
  const threads0 = addon.info().cpu.threads;
  const configs: Config[] = [
    { name: 'holes', T: 131, K: 2, L: 4, R: 16, Hin: 37, Hout: 53, ranks: 'mixed', slots: 'holes' },
    { name: 'one adapter', T: 64, K: 1, L: 1, R: 16, Hin: 200, Hout: 136, ranks: [11], slots: 'same' },
    { name: 'many adapters of one token', T: 64, K: 1, L: 64, R: 16, Hin: 72, Hout: 200, ranks: 'mixed', slots: 'distinct' },
    { name: 'few adapters, narrow layers', T: 64, K: 1, L: 3, R: 16, Hin: 200, Hout: 136, ranks: 'mixed', slots: 'sorted' },
    { name: 'K=16 rank-8 units', T: 16, K: 16, L: 64, R: 8, Hin: 136, Hout: 136, ranks: 'full', slots: 'unsorted' },
  ];
  const p = new Pool(be);
  try {
    for (const c of configs) {
      const h = makeHost(c, 'f32', 'f32', 91);
      const { d } = h;
      const { s, rt } = build(p, h, 'f32', 'f32');
      const x = p.t(h.x, [d.T, d.Hin]),
        dy = p.t(h.dy, [d.T, d.Hout]);
      const vIn = p.t(h.vIn, [d.T, d.K, d.R]),
        dvIn = p.t(h.dvIn, [d.T, d.K, d.R]);
      const y0 = randn(rng(6), d.T * d.Hout);
      for (const strategy of ['bgmv', 'sgmv'] as const) {
        const runs: Record<string, Float32Array>[] = [];
        for (const n of [1, 2, 3]) {
          addon.setThreads(n);
          const y = p.t(y0, [d.T, d.Hout]);
          const v = p.keep(loraApply(y, x, s, rt, { strategy }));
          const dv = p.keep(loraShrinkGrad(dy, s, rt, { strategy }));
          const dx = p.keep(loraInputGrad(dvIn, s, rt, { strategy }));
          const w = loraWeightGrad(x, dy, vIn, dvIn, s, rt);
          p.keep(w.dA);
          p.keep(w.dB);
          runs.push({
            y: await y.readFloat(),
            v: await v.readFloat(),
            dv: await dv.readFloat(),
            dx: await dx.readFloat(),
            dA: await w.dA.readFloat(),
            dB: await w.dB.readFloat(),
          });
        }
        for (const k of Object.keys(runs[0]!))
          for (const i of [1, 2])
            assert.ok(bitsEqual(runs[0]![k]!, runs[i]![k]!), `${c.name} ${strategy} ${k}: ${i + 1} threads differ from 1 in their bits`);
        // and right, not only repeatable
        const ref = loraWeightGradRef(h.x, h.dy, h.vIn, h.dvIn, h.s, h.rt, d);
        assert.ok(relErr(runs[0]!.dA!, ref.dA) <= TOL, `${c.name} dA: relative error ${relErr(runs[0]!.dA!, ref.dA)}`);
        assert.ok(relErr(runs[0]!.dB!, ref.dB) <= TOL, `${c.name} dB: relative error ${relErr(runs[0]!.dB!, ref.dB)}`);
      }
    }
  } finally {
    addon.setThreads(threads0);
    p.dispose();
  }
});

// ---------------------------------------------------------------------------------------
// Bad input: the right MoteError subclass, a message naming the argument, and no kernel run.

function throwsLike(f: () => unknown, cls: new (...a: never[]) => MoteError, re: RegExp, what: string): void {
  assert.throws(
    f,
    (e: unknown) => {
      assert.ok(e instanceof cls, `${what}: expected ${cls.name}, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
      assert.match((e as Error).message, re, `${what}: message`);
      return true;
    },
    what,
  );
}

forEachBackend('lora ops reject bad input', async (b) => {
  const d = { T: 3, K: 2, L: 4, R: 8, Hin: 5, Hout: 6 };
  const r = rng(3);
  const p = new Pool(b);
  let other: Backend | null = null;
  try {
    const A = p.t(randn(r, d.L * d.R * d.Hin), [d.L, d.R, d.Hin]);
    const B = p.t(randn(r, d.L * d.Hout * d.R), [d.L, d.Hout, d.R], 'bf16');
    const s = loraStack(A, B, { rank: [8, 1, 3, 8], scale: [1, 2, 0.5, 1] });
    p.keep(s.rank);
    p.keep(s.scale);
    const slots = [0, 1, -1, 3, 2, 2];
    const rt = p.keep(loraRouting(b, slots, { K: 2, L: 4, weight: [0.5, 0.5, 1, 1, 0.25, 0.75] }));
    const x = p.t(randn(r, d.T * d.Hin), [d.T, d.Hin]);
    const dy = p.t(randn(r, d.T * d.Hout), [d.T, d.Hout]);
    const v = p.t(randn(r, d.T * d.K * d.R), [d.T, d.K, d.R]);

    // routing: slot out of range, non-finite weight (the message names the token), bad sizes
    throwsLike(
      () => loraRouting(b, [0, 1, 4, 0, 0, 0], { K: 2, L: 4 }),
      ArgumentError,
      /slots\[1, 0\].*token 1.*\[-1, 3\].*got 4/,
      'slot = L',
    );
    throwsLike(() => loraRouting(b, [0, 1, 0, 0, -2, 0], { K: 2, L: 4 }), ArgumentError, /slots\[2, 0\].*token 2.*got -2/, 'slot = -2');
    throwsLike(() => loraRouting(b, [0, 1.5], { K: 2, L: 4 }), ArgumentError, /slots\[0, 1\].*token 0/, 'fractional slot');
    throwsLike(
      () => loraRouting(b, [0, 1, 0, 0, 0, 0], { K: 2, L: 4, weight: [1, 1, 1, 1, NaN, 1] }),
      ArgumentError,
      /weight\[2, 0\].*token 2.*NaN/,
      'NaN weight',
    );
    throwsLike(
      () => loraRouting(b, [0, 1, 0, 0], { K: 2, L: 4, weight: [1, 1, 1, Infinity] }),
      ArgumentError,
      /weight\[1, 1\].*token 1.*Infinity/,
      'infinite weight',
    );
    throwsLike(() => loraRouting(b, [0, 1, 0], { K: 2, L: 4 }), ShapeError, /slots.*K = 2.*got 3/, 'slots not T·K');
    throwsLike(() => loraRouting(b, [0, 1], { K: 2, L: 4, weight: [1] }), ShapeError, /weight.*expected 2.*got 1/, 'weight length');
    throwsLike(() => loraRouting(b, [0, 1], { K: 0, L: 4 }), ArgumentError, /K: expected a positive integer/, 'K = 0');
    throwsLike(() => loraRouting(b, [0, 1], { K: 1, L: 0 }), ArgumentError, /L: expected a positive integer/, 'L = 0');

    // stack: rank outside [1, R], wrong dtypes and shapes, non-finite scale
    throwsLike(() => loraStack(A, B, { rank: [8, 9, 1, 1] }), ArgumentError, /rank\[1\].*\[1, 8\].*got 9/, 'rank > R');
    throwsLike(() => loraStack(A, B, { rank: [8, 1, 0, 1] }), ArgumentError, /rank\[2\].*\[1, 8\].*got 0/, 'rank < 1');
    throwsLike(() => loraStack(A, B, { rank: [8, 1, 2.5, 1] }), ArgumentError, /rank\[2\]/, 'fractional rank');
    throwsLike(() => loraStack(A, B, { rank: [8, 1, 1] }), ShapeError, /rank.*4.*got 3/, 'rank length');
    throwsLike(() => loraStack(A, B, { scale: [1, NaN, 1, 1] }), ArgumentError, /scale\[1\]/, 'NaN scale');
    const Ai = p.keep(b.tensor(new Int32Array(d.L * d.R * d.Hin), [d.L, d.R, d.Hin], 'i32'));
    throwsLike(() => loraStack(Ai, B), DTypeError, /loraStack: A: .*got i32/, 'A i32');
    const A2 = p.t(randn(r, d.R * d.Hin), [d.R, d.Hin]);
    throwsLike(() => loraStack(A2, B), ShapeError, /loraStack: A: expected shape \[L, R, Hin\]/, 'A 2-D');
    const Bbad = p.t(randn(r, d.L * d.Hout * 4), [d.L, d.Hout, 4]);
    throwsLike(() => loraStack(A, Bbad), ShapeError, /loraStack: B: .*R = 8/, 'B with another R');

    // ops: shapes, dtypes, options
    const y = p.t(randn(r, d.T * d.Hout), [d.T, d.Hout]);
    const yBefore = await y.readFloat();
    const xWide = p.t(randn(r, d.T * (d.Hin + 1)), [d.T, d.Hin + 1]);
    throwsLike(() => loraShrink(xWide, s, rt), ShapeError, /loraShrink: x: .*Hin = 5.*got \[3, 6\]/, 'x with another Hin');
    const xShort = p.t(randn(r, 2 * d.Hin), [2, d.Hin]);
    throwsLike(() => loraApply(y, xShort, s, rt), ShapeError, /loraApply: x: .*T = 3/, 'x with another T');
    const xh = p.t(randn(r, d.T * d.Hin), [d.T, d.Hin], 'f16');
    throwsLike(() => loraShrink(xh, s, rt), DTypeError, /loraShrink: x: expected dtype f32, got f16/, 'x f16');
    throwsLike(() => loraShrink(x, s, rt, { out: p.poison([d.T, d.K, d.R + 1]) }), ShapeError, /loraShrink: out: /, 'out shape');
    throwsLike(
      () => loraShrink(x, s, rt, { out: p.t(poisoned(d.T * d.K * d.R), [d.T, d.K, d.R], 'bf16') }),
      DTypeError,
      /loraShrink: out: .*bf16/,
      'out dtype',
    );
    const vBad = p.t(randn(r, d.T * d.K * 4), [d.T, d.K, 4]);
    throwsLike(() => loraExpand(y, vBad, s, rt), ShapeError, /loraExpand: v: .*R = 8/, 'v with another R');
    const yBad = p.t(randn(r, d.T * d.Hin), [d.T, d.Hin]);
    throwsLike(() => loraExpand(yBad, v, s, rt), ShapeError, /loraExpand: y: .*Hout = 6/, 'y with another Hout');
    throwsLike(() => loraShrinkGrad(yBad, s, rt), ShapeError, /loraShrinkGrad: dy: /, 'dy shape');
    throwsLike(() => loraInputGrad(vBad, s, rt), ShapeError, /loraInputGrad: dv: /, 'dv shape');
    throwsLike(() => loraWeightGrad(x, dy, vBad, v, s, rt), ShapeError, /loraWeightGrad: v: /, 'weightGrad v shape');
    throwsLike(
      () => loraWeightGrad(x, dy, v, v, s, rt, { dA: p.poison([d.L, d.R, d.Hin + 1]), dB: p.poison([d.L, d.Hout, d.R]) }),
      ShapeError,
      /loraWeightGrad: dA: /,
      'dA shape',
    );
    const s5 = loraStack(p.t(randn(r, 5 * d.R * d.Hin), [5, d.R, d.Hin]), p.t(randn(r, 5 * d.Hout * d.R), [5, d.Hout, d.R]));
    p.keep(s5.rank);
    p.keep(s5.scale);
    throwsLike(() => loraShrink(x, s5, rt), ShapeError, /loraShrink: routing: built for L = 4.*L = 5/, 'routing of another L');
    throwsLike(
      () => loraShrink(x, s, { slots } as unknown as LoraRouting),
      ArgumentError,
      /loraShrink: routing: expected a LoraRouting/,
      'routing not from loraRouting',
    );
    throwsLike(() => loraShrink([1, 2] as unknown as Tensor, s, rt), ArgumentError, /loraShrink: x: expected a Tensor/, 'x not a tensor');
    throwsLike(
      () => loraShrink(x, s, rt, { strategy: 'fast' as LoraStrategy }),
      ArgumentError,
      /strategy.*'bgmv', 'sgmv' or 'auto'.*"fast"/,
      'bad strategy',
    );
    throwsLike(
      () => loraInputGrad(v, s, rt, { accumulate: true }),
      ArgumentError,
      /loraInputGrad: accumulate: needs an out/,
      'accumulate without out',
    );
    throwsLike(
      () => loraInputGrad(v, s, rt, { out: x, accumulate: 1 as unknown as boolean }),
      ArgumentError,
      /loraInputGrad: accumulate: expected a boolean/,
      'accumulate not boolean',
    );
    throwsLike(
      () => loraWeightGrad(x, dy, v, v, s, rt, { accumulate: true }),
      ArgumentError,
      /loraWeightGrad: accumulate: needs dA and dB/,
      'weightGrad accumulate without dA',
    );

    // a tensor of another backend (another kind where available, else another instance)
    other = await openBackend('cpu').catch(() => null);
    if (!other) other = await openBackend(b.kind);
    const xo = other.tensor(randn(r, d.T * d.Hin), [d.T, d.Hin]);
    throwsLike(
      () => loraShrink(xo, s, rt),
      BackendMismatchError,
      /loraShrink: x: expected a tensor on the .* backend/,
      'x of another backend',
    );
    const rto = loraRouting(other, slots, { K: 2, L: 4 });
    throwsLike(() => loraShrink(x, s, rto), BackendMismatchError, /loraShrink: routing\.slots: /, 'routing of another backend');
    const outO = other.tensor(poisoned(d.T * d.K * d.R), [d.T, d.K, d.R]);
    throwsLike(() => loraShrink(x, s, rt, { out: outO }), BackendMismatchError, /loraShrink: out: /, 'out of another backend');

    // disposed tensors
    const xd = p.t(randn(r, d.T * d.Hin), [d.T, d.Hin]);
    xd.dispose();
    throwsLike(() => loraShrink(xd, s, rt), DisposedTensorError, /loraShrink: x\b/, 'disposed x');
    const vd = p.t(randn(r, d.T * d.K * d.R), [d.T, d.K, d.R]);
    vd.dispose();
    throwsLike(() => loraExpand(y, vd, s, rt), DisposedTensorError, /loraExpand: v\b/, 'disposed v');
    const rtd = loraRouting(b, slots, { K: 2, L: 4 });
    rtd.dispose();
    throwsLike(() => loraShrink(x, s, rtd), DisposedTensorError, /loraShrink: routing\.slots\b/, 'disposed routing');

    // nothing ran: y is as it was after all those failed calls
    assert.deepEqual(await y.readFloat(), yBefore, 'a rejected call must not have run a kernel');
  } finally {
    p.dispose();
    if (other && other !== b) other.destroy();
  }
});

forEachBackend('routing and rank tensors are read-only: write() and copyRows() into them are refused', async (b) => {
  const A = b.tensor(new Float32Array(2 * 2 * 3).fill(0.1), [2, 2, 3]);
  const B = b.tensor(new Float32Array(2 * 4 * 2).fill(0.1), [2, 4, 2]);
  const s = loraStack(A, B);
  const rt = loraRouting(b, [0, 1, 0], { K: 1, L: 2 });
  const x = b.tensor(new Float32Array(3 * 3).fill(1), [3, 3]);
  const evil = b.tensor([1_000_000, 1_000_000], [2], 'i32');
  try {
    const shrink = async () => {
      const v = loraShrink(x, s, rt, { strategy: 'sgmv' });
      const r = Array.from(await v.read());
      v.dispose();
      return r;
    };
    const before = await shrink();
    // A GPU kernel trusts these contents (checked on the host when built): a write of 10^6 used
    // to go through, and a CUDA kernel would then index adapter 10^6 out of bounds.
    for (const t of [rt.slots, rt.order, rt.segStart, rt.segAdapter, rt.weight, s.rank]) {
      assert.throws(
        () => t.write(new Array(t.size).fill(1_000_000)),
        (e: Error) => e instanceof ArgumentError && /write: tensor #\d+ .* is read-only/.test(e.message),
      );
      assert.ok(t.sealed);
    }
    assert.throws(() => rt.slots.reshape([3]).write([1_000_000, 0, 0]), /read-only/);
    assert.throws(() => copyRows(s.rank, evil, [0], [0]), /copyRows: dst: tensor #\d+ is read-only/);
    assert.deepEqual(await shrink(), before);
    assert.equal(x.sealed, false);
  } finally {
    for (const t of [A, B, s.rank, s.scale, x, evil]) t.dispose();
    rt.dispose();
  }
});
