// WebGPU launches of the multi-LoRA kernels (kernels/wgsl/lora_shrink.wgsl, lora_expand.wgsl,
// lora_grad.wgsl). The grids divide by LORA_TILE, the tile sizes the shaders are built with.
import type { Tensor } from '../tensor.js';
import type { LoraDims, LoraKernels, LoraRouting, LoraStack, LoraStrategy } from '../ops/lora.js';
import { LORA_TILE } from './wgsl.js';
import { wholeBuffer, type WebGPUBackend } from './webgpu.js';

const buf = (t: Tensor): GPUBuffer => wholeBuffer(t, 'multi-LoRA');

const { LORA_SLOTS, LORA_RANKS, LORA_OUTS } = LORA_TILE;
/** sgmv expand's kpass for every slot at once, into a scratch (kernels/wgsl/lora_expand.wgsl ALL_K). */
const ALL_K = 0xffffffff;

/**
 * Segment table of a routing, on the device (i32): segStart [G + 1], segAdapter [G], then
 * (g, start) for each tile of ≤ LORA_SLOTS slots of a segment, so sgmv launches exactly one
 * workgroup per tile.
 */
interface LoraSegments {
  table: Tensor;
  G: number;
  tiles: number;
}

/** How the lora_shrink / lora_expand shaders read W(e, r, h): element e·se + r·sr + h·sh. */
interface LoraWeightView {
  w: Tensor;
  /** length of the h axis (reduced by shrink, produced by expand) */
  H: number;
  sr: number;
  sh: number;
  se: number;
  /** multiply by weight[t,k]·scale[e] */
  coef: boolean;
}

export function loraKernels(g: WebGPUBackend): LoraKernels {
  const segments = new WeakMap<LoraRouting, LoraSegments>();

  const loraSegments = (rt: LoraRouting): LoraSegments => {
    let sg = segments.get(rt);
    if (sg && !sg.table.disposed) return sg;
    const { segStart, segAdapter } = rt.host;
    const G = segAdapter.length;
    const tiles: number[] = [];
    for (let s = 0; s < G; s++) {
      for (let i = segStart[s]!; i < segStart[s + 1]!; i += LORA_SLOTS) tiles.push(s, i);
    }
    const data = new Int32Array(2 * G + 1 + tiles.length);
    data.set(segStart.subarray(0, G + 1), 0);
    data.set(segAdapter, G + 1);
    data.set(tiles, 2 * G + 1);
    sg = { table: rt.attach(g.tensor(data, [data.length], 'i32')), G, tiles: tiles.length / 2 };
    segments.set(rt, sg);
    return sg;
  };

  /** out[t,k,r] = c·Σ_h W(e,r,h)·u[t,h] (lora_shrink.wgsl). */
  const shrinkLike = (
    out: Tensor,
    u: Tensor,
    wv: LoraWeightView,
    s: LoraStack,
    rt: LoraRouting,
    d: LoraDims,
    strategy: LoraStrategy,
  ): void => {
    const head = [d.T, d.K, d.R, wv.H, wv.sr, wv.sh, wv.se, wv.coef ? 1 : 0];
    const weights = { w: wv.w.dtype };
    if (strategy === 'bgmv') {
      g.launch({
        family: 'lora_shrink',
        entry: 'bgmv',
        weights,
        buffers: [buf(out), buf(u), buf(wv.w), buf(rt.weight), buf(s.rank), buf(s.scale), buf(rt.slots)],
        params: [...head, 0, 0, 0, 0],
        groups: g.grid(1, d.T * d.K),
      });
      return;
    }
    const sg = loraSegments(rt);
    // sgmv visits only the non-empty slots; the others must read 0
    if (rt.pairs < d.T * d.K) g.clear(out);
    if (sg.tiles === 0) return;
    g.launch({
      family: 'lora_shrink',
      entry: 'sgmv',
      weights,
      buffers: [buf(out), buf(u), buf(wv.w), buf(rt.weight), buf(s.rank), buf(s.scale), buf(rt.order), buf(sg.table)],
      params: [...head, sg.G, sg.tiles, 0, 0],
      groups: g.grid(Math.ceil(d.R / LORA_RANKS), sg.tiles),
    });
  };

  /** out[t,h] (+)= Σ_k c·Σ_r W(e,h,r)·vin[t,k,r] (lora_expand.wgsl). */
  const expandLike = (
    out: Tensor,
    vin: Tensor,
    wv: LoraWeightView,
    s: LoraStack,
    rt: LoraRouting,
    d: LoraDims,
    strategy: LoraStrategy,
    accumulate: boolean,
  ): void => {
    const head = [d.T, d.K, d.R, wv.H, wv.sr, wv.sh, wv.se, wv.coef ? 1 : 0];
    const weights = { w: wv.w.dtype };
    const nx = Math.ceil(wv.H / LORA_OUTS);
    if (strategy === 'bgmv') {
      g.launch({
        family: 'lora_expand',
        entry: 'bgmv',
        weights,
        buffers: [buf(out), buf(vin), buf(wv.w), buf(rt.weight), buf(s.rank), buf(s.scale), buf(rt.slots)],
        params: [...head, 0, 0, 0, accumulate ? 1 : 0],
        groups: g.grid(nx, d.T),
      });
      return;
    }
    const sg = loraSegments(rt);
    if (d.K > 2) {
      // every slot's term into its own row of a scratch [T·K, H], then one sum per output: two
      // dispatches for any K, and each tile's GEMM runs once (the passes below run it once per
      // k: with the adapter pool's rank-8 units K reaches 16 — T = 64, K = 16 on lavapipe:
      // 616 → 117 ms). K ≤ 2 (MoTE) keeps the passes: no scratch.
      g.op(() => {
        const scratch = g.temp(Math.max(4, d.T * d.K * wv.H * 4));
        if (sg.tiles > 0)
          g.launch({
            family: 'lora_expand',
            entry: 'sgmv',
            weights,
            buffers: [scratch, buf(vin), buf(wv.w), buf(rt.weight), buf(s.rank), buf(s.scale), buf(rt.order), buf(sg.table)],
            params: [...head, sg.G, sg.tiles, ALL_K, 0],
            groups: g.grid(nx, sg.tiles),
          });
        g.launch({
          family: 'lora_expand',
          entry: 'ksum',
          weights, // the module names W's element type (ksum does not read W)
          buffers: [buf(out), scratch, buf(rt.slots)],
          params: [...head, 0, 0, 0, accumulate ? 1 : 0],
          groups: g.flat(d.T * wv.H, 64),
        });
      });
      return;
    }
    let acc = accumulate;
    // One pass per k writes each output at most once; overwriting in place is only right
    // when that single pass covers every token.
    if (!acc && !(d.K === 1 && rt.pairs === d.T)) {
      g.clear(out);
      acc = true;
    }
    if (sg.tiles === 0) return;
    const buffers = [buf(out), buf(vin), buf(wv.w), buf(rt.weight), buf(s.rank), buf(s.scale), buf(rt.order), buf(sg.table)];
    for (let k = 0; k < d.K; k++) {
      g.launch({
        family: 'lora_expand',
        entry: 'sgmv',
        weights,
        buffers,
        params: [...head, sg.G, sg.tiles, k, acc || k > 0 ? 1 : 0],
        groups: g.grid(nx, sg.tiles),
      });
    }
  };

  const kernels: LoraKernels = {
    loraShrink(v, x, s, rt, d, strategy) {
      shrinkLike(v, x, { w: s.A, H: d.Hin, sr: d.Hin, sh: 1, se: d.R * d.Hin, coef: false }, s, rt, d, strategy);
    },
    loraExpand(y, v, s, rt, d, strategy) {
      expandLike(y, v, { w: s.B, H: d.Hout, sr: 1, sh: d.R, se: d.Hout * d.R, coef: true }, s, rt, d, strategy, true);
    },
    loraApply(y, v, x, s, rt, d, strategy) {
      kernels.loraShrink(v, x, s, rt, d, strategy);
      kernels.loraExpand(y, v, s, rt, d, strategy);
    },
    loraShrinkGrad(dv, dy, s, rt, d, strategy) {
      shrinkLike(dv, dy, { w: s.B, H: d.Hout, sr: 1, sh: d.R, se: d.Hout * d.R, coef: true }, s, rt, d, strategy);
    },
    loraInputGrad(dx, dv, s, rt, d, strategy, accumulate) {
      expandLike(dx, dv, { w: s.A, H: d.Hin, sr: d.Hin, sh: 1, se: d.R * d.Hin, coef: false }, s, rt, d, strategy, accumulate);
    },
    loraWeightGrad(dA, dB, x, dy, v, dv, s, rt, d, accumulate) {
      const sg = loraSegments(rt);
      if (!accumulate) {
        // adapters absent from the batch get zeros (each adapter's block is contiguous)
        const aBytes = d.R * d.Hin * 4,
          bBytes = d.Hout * d.R * 4;
        const counts = rt.host.counts;
        for (let e = 0; e < d.L;) {
          if (counts[e]! > 0) {
            e++;
            continue;
          }
          let f = e;
          while (f < d.L && counts[f]! === 0) f++;
          g.clear(dA, e * aBytes, (f - e) * aBytes);
          g.clear(dB, e * bBytes, (f - e) * bBytes);
          e = f;
        }
      }
      if (sg.G === 0) return;
      const params = [d.T, d.K, d.R, d.Hin, d.Hout, sg.G, accumulate ? 1 : 0, 0];
      const n = Math.ceil(d.R / LORA_RANKS) * sg.G;
      g.launch({
        family: 'lora_grad',
        entry: 'dA',
        buffers: [buf(dA), buf(x), buf(dv), buf(rt.order), buf(sg.table), buf(s.rank)],
        params,
        groups: g.grid(Math.ceil(d.Hin / LORA_OUTS), n),
      });
      g.launch({
        family: 'lora_grad',
        entry: 'dB',
        buffers: [buf(dB), buf(dy), buf(v), buf(rt.order), buf(sg.table), buf(s.rank), buf(s.scale), buf(rt.weight)],
        params,
        groups: g.grid(Math.ceil(d.Hout / LORA_OUTS), n),
      });
    },
  };
  return kernels;
}
