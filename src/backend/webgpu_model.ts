// WebGPU launches of matmul and the model kernel families (kernels/wgsl/<family>.wgsl; the
// comment at the top of each gives its entry points and launch shapes). Every output element
// has one owner: no atomics, bit-identical reruns. Each op records inside g.op(), so the
// temporary buffers it makes are released even when a launch throws.
import type { Tensor } from '../tensor.js';
import type { MatmulKernels } from '../ops/matmul.js';
import type { ModelKernels } from '../ops/model_kernels.js';
import type { AttentionDims, AttentionLayout } from '../ops/attention.js';
import type { Param, WebGPUBackend } from './webgpu.js';

const buf = (t: Tensor): GPUBuffer => t.storage as GPUBuffer;

export function modelKernels(g: WebGPUBackend): MatmulKernels & ModelKernels {
  /** The strided GEMM of kernels/wgsl/matmul.wgsl: C[M,N] (+)= A(m,k)·B(k,n). */
  const gemm = (
    c: Tensor,
    a: Tensor,
    b: Tensor,
    M: number,
    N: number,
    K: number,
    sam: number,
    sak: number,
    sbk: number,
    sbn: number,
    acc: boolean,
  ): void =>
    g.launch({
      family: 'matmul',
      entry: 'main',
      weights: { b: b.dtype },
      buffers: [buf(c), buf(a), buf(b)],
      params: [M, N, K, sam, sak, sbk, sbn, acc ? 1 : 0],
      groups: [Math.ceil(N / 32), Math.ceil(M / 32), 1],
    });

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

  return {
    matmul(y, x, w, d, acc) {
      gemm(y, x, w, d.T, d.N, d.K, d.K, 1, 1, d.K, acc);
    },
    matmulGradInput(dx, dy, w, d, acc) {
      gemm(dx, dy, w, d.T, d.K, d.N, d.N, 1, d.K, 1, acc);
    },
    matmulGradWeight(dw, dy, x, d, acc) {
      gemm(dw, dy, x, d.N, d.K, d.T, 1, d.N, d.K, 1, acc);
    },

    embedding(y, ids, E, d) {
      g.op(() =>
        g.launch({
          family: 'embedding',
          entry: 'gather',
          weights: { E: E.dtype },
          buffers: [buf(y), ...g.inputs([y], [ids, E])],
          params: [d.T, d.V, d.H, 0, 0],
          groups: g.grid(Math.ceil(d.H / 256), d.T),
        }),
      );
    },

    embeddingGrad(dE, dy, order, segStart, segIds, G, d, accumulate) {
      // rows of ids absent from the batch are 0: clear all, then each present row is written once
      if (!accumulate) g.clear(dE);
      if (G === 0) return;
      g.op(() =>
        g.launch({
          family: 'embedding',
          entry: 'grad',
          weights: { E: 'f32' },
          buffers: [buf(dE), ...g.inputs([dE], [dy, order, segStart, segIds])],
          params: [d.T, d.V, d.H, G, accumulate ? 1 : 0],
          groups: g.grid(Math.ceil(d.H / 256), G),
        }),
      );
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

    logSoftmax(out, logits, d) {
      g.op(() =>
        g.launch({
          family: 'xent',
          entry: 'logsoftmax',
          buffers: [buf(out), ...g.inputs([out], [logits])],
          params: [d.T, d.V, 0, 0],
          groups: g.grid(1, d.T),
        }),
      );
    },

    xent(losses, lse, logits, targets, mask, d) {
      g.op(() => {
        const [lg, tg, mk] = g.inputs([losses, lse], [logits, targets, mask]);
        g.launch({
          family: 'xent',
          entry: 'xent',
          buffers: [buf(losses), lg!, buf(lse), tg!, mk!],
          params: [d.T, d.V, 0, 0],
          groups: g.grid(1, d.T),
        });
      });
    },

    xentGrad(dlogits, logits, lse, targets, mask, scale, d) {
      g.op(() =>
        g.launch({
          family: 'xent',
          entry: 'grad',
          buffers: [buf(dlogits), ...g.inputs([dlogits], [logits, lse, targets, mask])],
          params: [d.T, d.V, { f: scale }, 0],
          groups: g.grid(Math.ceil(d.V / 256), d.T),
        }),
      );
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
      g.op(() => {
        const [gb] = g.inputs([p, m, v], [grad]);
        g.launch({ family: 'adamw', entry: 'step', buffers: [buf(p), gb!, buf(m), buf(v)], params, groups: g.flat(n, 256) });
      });
    },

    /** Two fixed-order passes (kernels/wgsl/adamw.wgsl partial, finish): B partials in a temporary buffer. */
    sumSquares(out, grad, n) {
      const B = Math.max(1, Math.min(1024, Math.ceil(n / 2048)));
      g.op(() => {
        const part = g.temp(B * 4);
        const [gb] = g.inputs([out], [grad]);
        g.launch({ family: 'adamw', entry: 'partial', buffers: [part, gb!], params: [n, B, 0, 0], groups: [B, 1, 1] });
        g.launch({ family: 'adamw', entry: 'finish', buffers: [buf(out), part], params: [n, B, 0, 0], groups: [1, 1, 1] });
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
        g.launch({
          family: 'attention',
          entry: 'fwd',
          consts,
          buffers: [buf(out), buf(lse), ...g.inputs([out, lse], [q, k, v]), aux.buf],
          params: aux.params,
          groups: g.grid(1, d.Tq * d.nH),
        });
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
        g.launch({
          family: 'attention',
          entry: 'dq',
          consts,
          buffers: [buf(dq), dOb!, qb!, kb!, vb!, aux.buf],
          params,
          groups: g.grid(1, rows),
        });
        g.launch({
          family: 'attention',
          entry: 'dkv',
          consts,
          buffers: [buf(dk), buf(dv), qb!, kb!, vb!, aux.buf, dOb!],
          params,
          groups: g.grid(1, d.Tk * d.nKv),
        });
      });
    },
  };
}
