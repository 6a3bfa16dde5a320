// WebGPU launches of matmul and the model kernel families (kernels/wgsl/<family>.wgsl; the
// comment at the top of each gives its entry points and launch shapes). Every output element
// has one owner: no atomics, bit-identical reruns. Each op records inside g.op(), so the
// temporary buffers it makes are released even when a launch throws.
import type { Tensor } from '../tensor.js';
import type { MatmulKernels } from '../ops/matmul.js';
import type { ModelKernels } from '../ops/model_kernels.js';
import type { AttentionDims, AttentionLayout } from '../ops/attention.js';
import type { DType } from '../dtype.js';
import type { Param, RowPart as RowPartOf, WebGPUBackend } from './webgpu.js';

/**
 * One GEMM of kernels/wgsl/matmul.wgsl: C[M,N] (+)= A(m,k)·B(k,n) with A at aoff + m·sam + k·sak,
 * B at boff + k·sbk + n·sbn and C at coff + m·ldc + n (elements).
 */
interface Gemm {
  c: GPUBuffer;
  a: GPUBuffer;
  b: GPUBuffer;
  bType: DType;
  /** [M, N, K] */
  dims: [number, number, number];
  /** [sam, sak, sbk, sbn] */
  strides: [number, number, number, number];
  acc: boolean;
  /** [aoff, boff, coff, ldc] */
  at: [number, number, number, number];
}

/** kernels/wgsl/matmul.wgsl's tile of C */
const TILE = 32;

export function modelKernels(g: WebGPUBackend): MatmulKernels & ModelKernels {
  const buf = (t: Tensor): GPUBuffer => g.whole(t, 'a model kernel');

  /**
   * The strided GEMM of kernels/wgsl/matmul.wgsl. Past the work budget (g.workBudget
   * multiply-adds) it is recorded as several dispatches over blocks of C (whole tiles; the
   * K reduction is never split): every output is summed exactly as in one dispatch.
   */
  const gemm = (m: Gemm): void => {
    const [M, N, K] = m.dims;
    const [sam, sak, sbk, sbn] = m.strides;
    const [aoff, boff, coff, ldc] = m.at;
    let mc = M,
      nc = N;
    if (M * N * K > g.workBudget) {
      const tiles = (n: number) => Math.max(TILE, Math.floor(n / TILE) * TILE);
      nc = Math.min(N, tiles(g.workBudget / (M * K)));
      if (nc * M * K > g.workBudget) mc = Math.min(M, tiles(g.workBudget / (nc * K)));
    }
    for (let m0 = 0; m0 < M; m0 += mc)
      for (let n0 = 0; n0 < N; n0 += nc) {
        const mm = Math.min(mc, M - m0),
          nn = Math.min(nc, N - n0);
        g.launch({
          family: 'matmul',
          entry: 'main',
          weights: { b: m.bType },
          buffers: [m.c, m.a, m.b],
          params: [mm, nn, K, sam, sak, sbk, sbn, m.acc ? 1 : 0, aoff + m0 * sam, boff + n0 * sbn, coff + m0 * ldc + n0, ldc],
          groups: [Math.ceil(nn / TILE), Math.ceil(mm / TILE), 1],
        });
      }
  };

  /**
   * The `aux` buffer of kernels/wgsl/attention.wgsl: the layout's eight i32 tensors copied
   * one after another, then `extra` words (lse and delta for the backward). A temporary of the op.
   */
  const attentionAux = (l: AttentionLayout, d: AttentionDims, extra: number): { buf: GPUBuffer; params: Param[]; end: number } => {
    const parts = [l.qSeq, l.qPos, l.kSeq, l.kPos, l.qSeg, l.kSeg, l.blocked, l.ranges];
    const offs: number[] = [];
    let words = 0;
    for (const t of parts) {
      offs.push(words);
      words += t.size;
    }
    const end = words;
    const aux = g.temp((words + extra) * 4, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST);
    const enc = g.encoder();
    parts.forEach((t, i) => enc.copyBufferToBuffer(buf(t), 0, aux, offs[i]! * 4, t.size * 4));
    const params: Param[] = [
      d.Tq,
      d.Tk,
      d.nH,
      d.nKv,
      d.D,
      d.S,
      { f: d.scale },
      d.nH / d.nKv,
      offs[1]!,
      offs[2]!,
      offs[3]!,
      offs[4]!,
      offs[5]!,
      offs[6]!,
      end,
      end + d.Tq * d.nH,
      offs[7]!,
      d.numRuns,
      0,
      0,
    ];
    return { buf: aux, params, end };
  };

  /**
   * Attention's dispatches over `rows` rows (one workgroup each), chunked so that each does at
   * most g.workBudget multiply-adds at `rowWork` per row (an upper bound: the longest run list
   * of the layout, every key of it); params
   * slot 18 (row0) is the chunk's first row. Rows are independent: bit-identical to one dispatch.
   */
  const attentionRows = (
    rows: number,
    rowWork: number,
    params: Param[],
    launch: (params: Param[], groups: [number, number, number]) => void,
  ) => {
    const per = Math.max(1, Math.floor(g.workBudget / Math.max(1, rowWork)));
    for (let r0 = 0; r0 < rows; r0 += per) {
      const ps = [...params];
      ps[18] = r0;
      launch(ps, g.grid(1, Math.min(per, rows - r0)));
    }
  };

  /** A launch of kernels/wgsl/xent.wgsl over rows [t0, t0 + T) (one workgroup per row). */
  const xentLaunch = (entry: string, T: number, V: number, scale: number, t0: number) => ({
    family: 'xent',
    entry,
    params: [T, V, { f: scale }, t0] as Param[],
    groups: g.grid(1, T),
  });

  /** out's row parts, which must line up with `parts` (same shapes are split alike). */
  const samePartsAs = (out: Tensor, parts: RowPartOf[]): RowPartOf[] => {
    const op = g.rowParts(out);
    if (op.length !== parts.length || op.some((p, i) => p.rows !== parts[i]!.rows))
      throw new Error(`internal: webgpu: an output split unlike its input ([${out.shape.join(', ')}])`);
    return op;
  };

  return {
    // Tensors past the binding limit come split by rows (SplitStorage): W and dW by rows of
    // the vocabulary, logits-sized activations by rows of tokens. Each (part, part) pair is
    // one GEMM on offsets into the parts; a split reduction (dx over the vocabulary, dW over
    // tokens) adds part after part. A tensor that fits is one part: one GEMM, as before.
    matmul(y, x, w, d, acc) {
      const xb = buf(x);
      for (const yp of g.rowParts(y))
        for (const wp of g.rowParts(w)) {
          const c = yp.buf;
          gemm({
            c,
            a: xb,
            b: wp.buf,
            bType: w.dtype,
            dims: [yp.rows, wp.rows, d.K],
            strides: [d.K, 1, 1, d.K],
            acc,
            at: [yp.row0 * d.K, 0, wp.row0, d.N],
          });
        }
    },
    matmulGradInput(dx, dy, w, d, acc) {
      const c = buf(dx);
      for (const dp of g.rowParts(dy))
        for (const [i, wp] of g.rowParts(w).entries()) {
          const [a, b, bType, ac] = [dp.buf, wp.buf, w.dtype, acc || i > 0];
          gemm({ c, a, b, bType, dims: [dp.rows, d.K, wp.rows], strides: [d.N, 1, d.K, 1], acc: ac, at: [wp.row0, 0, dp.row0 * d.K, d.K] });
        }
    },
    matmulGradWeight(dw, dy, x, d, acc) {
      const b = buf(x);
      for (const wp of g.rowParts(dw))
        for (const [j, dp] of g.rowParts(dy).entries()) {
          const [c, a, ac] = [wp.buf, dp.buf, acc || j > 0];
          gemm({
            c,
            a,
            b,
            bType: x.dtype,
            dims: [wp.rows, d.K, dp.rows],
            strides: [1, d.N, d.K, 1],
            acc: ac,
            at: [wp.row0, dp.row0 * d.K, 0, d.K],
          });
        }
    },

    /** Per part of E: the launch writes the tokens whose ids fall in its rows (kernels/wgsl/embedding.wgsl v0). */
    embedding(y, ids, E, d) {
      g.op(() => {
        const [yb, ib] = [buf(y), ...g.inputs([y], [ids])];
        for (const ep of g.rowParts(E))
          g.launch({
            family: 'embedding',
            entry: 'gather',
            weights: { E: E.dtype },
            buffers: [yb, ib!, ep.buf],
            params: [d.T, ep.rows, d.H, 0, 0, ep.row0],
            groups: g.grid(Math.ceil(d.H / 256), d.T),
          });
      });
    },

    embeddingGrad(dE, dy, order, segStart, segIds, G, d, accumulate) {
      // rows of ids absent from the batch are 0: clear all, then each present row is written once
      if (!accumulate) g.clear(dE);
      if (G === 0) return;
      g.op(() => {
        const ins = g.inputs([dE], [dy, order, segStart, segIds]);
        for (const ep of g.rowParts(dE))
          g.launch({
            family: 'embedding',
            entry: 'grad',
            weights: { E: 'f32' },
            buffers: [ep.buf, ...ins],
            params: [d.T, ep.rows, d.H, G, accumulate ? 1 : 0, ep.row0],
            groups: g.grid(Math.ceil(d.H / 256), G),
          });
      });
    },

    rmsnorm(y, rstd, x, w, d) {
      g.op(() =>
        g.launch({
          family: 'rmsnorm',
          entry: 'fwd',
          weights: { w: w.dtype },
          buffers: [buf(y), buf(rstd), ...g.inputs([y, rstd], [x, w])],
          params: [d.T, d.H, { f: d.eps }, 0],
          groups: g.grid(1, d.T),
        }),
      );
    },

    rmsnormGrad(dx, dw, dy, x, w, rstd, d, accumulateDw) {
      const params: Param[] = [d.T, d.H, { f: d.eps }, accumulateDw ? 1 : 0];
      g.op(() => {
        g.launch({
          family: 'rmsnorm',
          entry: 'dx',
          weights: { w: w.dtype },
          buffers: [buf(dx), ...g.inputs([dx], [dy, x, w, rstd])],
          params,
          groups: g.grid(1, d.T),
        });
        g.launch({
          family: 'rmsnorm',
          entry: 'dw',
          weights: { w: w.dtype },
          buffers: [buf(dw), ...g.inputs([dw], [dy, x, rstd])],
          params,
          groups: [Math.ceil(d.H / 256), 1, 1],
        });
      });
    },

    rope(y, x, positions, invFreq, d, inverse) {
      const params = [d.T, d.heads, d.D, inverse ? 1 : 0];
      const groups = g.flat(d.T * (d.D / 2), 256);
      g.op(() => {
        if (y === x)
          g.launch({ family: 'rope', entry: 'rope_inplace', buffers: [buf(y), ...g.inputs([y], [positions, invFreq])], params, groups });
        else g.launch({ family: 'rope', entry: 'rope', buffers: [buf(y), ...g.inputs([y], [x, positions, invFreq])], params, groups });
      });
    },

    swiglu(y, gate, up, n) {
      g.op(() =>
        g.launch({ family: 'swiglu', entry: 'fwd', buffers: [buf(y), ...g.inputs([y], [gate, up])], params: [n], groups: g.flat(n, 256) }),
      );
    },

    swigluGrad(dgate, dup, dy, gate, up, n) {
      g.op(() => {
        const [gb, ub, dyb] = g.inputs([dgate, dup], [gate, up, dy]);
        g.launch({ family: 'swiglu', entry: 'grad', buffers: [buf(dgate), gb!, ub!, buf(dup), dyb!], params: [n], groups: g.flat(n, 256) });
      });
    },

    add(y, a, b, n) {
      const groups = g.flat(n, 256);
      g.op(() => {
        if (y === a && a === b) g.launch({ family: 'residual', entry: 'add_self', buffers: [buf(y)], params: [n], groups });
        else if (y === a)
          g.launch({ family: 'residual', entry: 'add_inplace', buffers: [buf(y), ...g.inputs([y], [b])], params: [n], groups });
        else g.launch({ family: 'residual', entry: 'add', buffers: [buf(y), ...g.inputs([y], [b, a])], params: [n], groups });
      });
    },

    scale(y, x, alpha, n) {
      const groups = g.flat(n, 256);
      g.op(() => {
        if (y === x) g.launch({ family: 'scale', entry: 'scale_inplace', buffers: [buf(y)], params: [n, { f: alpha }], groups });
        else g.launch({ family: 'scale', entry: 'scale', buffers: [buf(y), ...g.inputs([y], [x])], params: [n, { f: alpha }], groups });
      });
    },

    // The xent family runs per part of split logits (rows of tokens; t0 the part's first row).
    logSoftmax(out, logits, d) {
      if (out === logits) {
        g.op(() => g.launch({ ...xentLaunch('logsoftmax', d.T, d.V, 0, 0), buffers: [buf(out), ...g.inputs([out], [logits])] }));
        return;
      }
      const lp = g.rowParts(logits);
      for (const [i, op] of samePartsAs(out, lp).entries())
        g.launch({ ...xentLaunch('logsoftmax', op.rows, d.V, 0, op.row0), buffers: [op.buf, lp[i]!.buf] });
    },

    xent(losses, lse, logits, targets, mask, d) {
      g.op(() => {
        const [tg, mk] = g.inputs([losses, lse], [targets, mask]);
        for (const lp of g.rowParts(logits))
          g.launch({ ...xentLaunch('xent', lp.rows, d.V, 0, lp.row0), buffers: [buf(losses), lp.buf, buf(lse), tg!, mk!] });
      });
    },

    xentGrad(dlogits, logits, lse, targets, mask, scale, d) {
      g.op(() => {
        const ins = g.inputs([dlogits], [lse, targets, mask]);
        const lp = g.rowParts(logits);
        for (const [i, op] of samePartsAs(dlogits, lp).entries())
          g.launch({
            ...xentLaunch('grad', op.rows, d.V, scale, op.row0),
            buffers: [op.buf, lp[i]!.buf, ...ins],
            groups: g.grid(Math.ceil(d.V / 256), op.rows),
          });
      });
    },

    adamw(p, grad, m, v, n, s) {
      // 1 − lr·wd, 1 − β1, 1 − β2 in double, as the native binding and torch form them
      const params: Param[] = [
        n,
        { f: s.lr },
        { f: s.beta1 },
        { f: s.beta2 },
        { f: s.eps },
        { f: 1 - s.lr * s.weightDecay },
        { f: 1 - s.beta1 },
        { f: 1 - s.beta2 },
        { f: s.bc1 },
        { f: s.bc2 },
        { f: s.gradScale },
        0,
      ];
      const gp = g.rowParts(grad);
      if (gp.length > 1) {
        // split past the binding limit (p, grad, m and v alike): one step per part
        const [pp, mp, vp] = [p, m, v].map((t) => samePartsAs(t, gp));
        const row = n / p.shape[0]!;
        gp.forEach((gt, i) => {
          const k = gt.rows * row;
          const buffers = [pp![i]!.buf, gt.buf, mp![i]!.buf, vp![i]!.buf];
          g.launch({ family: 'adamw', entry: 'step', buffers, params: [k, ...params.slice(1)], groups: g.flat(k, 256) });
        });
        return;
      }
      g.op(() => {
        const [gb] = g.inputs([p, m, v], [grad]);
        g.launch({ family: 'adamw', entry: 'step', buffers: [buf(p), gb!, buf(m), buf(v)], params, groups: g.flat(n, 256) });
      });
    },

    /**
     * Two fixed-order passes (kernels/wgsl/adamw.wgsl partial, finish): B partials in a
     * temporary buffer; a split gradient's parts each add their own B partials (from `off`).
     */
    sumSquares(out, grad, n) {
      const row = n / grad.shape[0]!;
      const parts = g
        .rowParts(grad)
        .map((pt) => ({ ...pt, n: pt.rows * row, B: Math.max(1, Math.min(1024, Math.ceil((pt.rows * row) / 2048))) }));
      const total = parts.reduce((s, pt) => s + pt.B, 0);
      g.op(() => {
        const part = g.temp(total * 4);
        let off = 0;
        for (const pt of parts) {
          const gb = parts.length > 1 ? pt.buf : g.inputs([out], [grad])[0]!;
          g.launch({ family: 'adamw', entry: 'partial', buffers: [part, gb], params: [pt.n, pt.B, off, 0], groups: [pt.B, 1, 1] });
          off += pt.B;
        }
        g.launch({ family: 'adamw', entry: 'finish', buffers: [buf(out), part], params: [n, total, 0, 0], groups: [1, 1, 1] });
      });
    },

    /**
     * kernels/wgsl/copy_rows.wgsl on u32 words: copy32 when a row is whole words (4-byte dtypes,
     * or 16-bit ones with even W), copy16 (atomic half-word merges at row edges) otherwise; the
     * _self entries read from dst when dst and src share storage (a buffer bound writable may
     * not be bound a second time; the op has checked that no row is both read and written).
     */
    copyRows(dst, src, dstRows, srcRows, d) {
      const half = dst.dtype === 'f16' || dst.dtype === 'bf16';
      const odd = half && d.W % 2 === 1;
      const U = !half ? d.W : odd ? (d.W + 1) / 2 : d.W / 2; // words a row spans
      const self = dst.storage === src.storage;
      const buffers = [buf(dst), buf(dstRows), buf(srcRows)];
      if (!self) buffers.push(buf(src));
      g.launch({
        family: 'copy_rows',
        entry: `${odd ? 'copy16' : 'copy32'}${self ? '_self' : ''}`,
        buffers,
        params: [d.N, d.W, U, 0],
        groups: g.grid(Math.ceil(U / 256), d.N),
      });
    },

    attention(out, lse, q, k, v, l, d) {
      const consts = { DU: Math.ceil(d.D / 64) };
      g.op(() => {
        const aux = attentionAux(l, d, 0);
        const buffers = [buf(out), buf(lse), ...g.inputs([out, lse], [q, k, v]), aux.buf];
        attentionRows(d.Tq * d.nH, 3 * l.maxKeysPerQuery * d.D, aux.params, (params, groups) =>
          g.launch({ family: 'attention', entry: 'fwd', consts, buffers, params, groups }),
        );
      });
    },

    attentionGrad(dq, dk, dv, dOut, q, k, v, out, lse, l, d) {
      const consts = { DU: Math.ceil(d.D / 64) };
      const rows = d.Tq * d.nH;
      g.op(() => {
        const aux = attentionAux(l, d, 2 * rows);
        g.encoder().copyBufferToBuffer(buf(lse), 0, aux.buf, aux.end * 4, rows * 4);
        const [qb, kb, vb, dOb, ob] = g.inputs([dq, dk, dv], [q, k, v, dOut, out]);
        const params = aux.params;
        g.launch({ family: 'attention', entry: 'delta', consts, buffers: [aux.buf, dOb!, ob!], params, groups: g.flat(rows, 64) });
        const dqBufs = [buf(dq), dOb!, qb!, kb!, vb!, aux.buf];
        attentionRows(rows, 4 * l.maxKeysPerQuery * d.D, params, (ps, groups) =>
          g.launch({ family: 'attention', entry: 'dq', consts, buffers: dqBufs, params: ps, groups }),
        );
        const dkvBufs = [buf(dk), buf(dv), qb!, kb!, vb!, aux.buf, dOb!];
        attentionRows(d.Tk * d.nKv, 5 * l.maxQueriesPerKey * (d.nH / d.nKv) * d.D, params, (ps, groups) =>
          g.launch({ family: 'attention', entry: 'dkv', consts, buffers: dkvBufs, params: ps, groups }),
        );
      });
    },
  };
}
