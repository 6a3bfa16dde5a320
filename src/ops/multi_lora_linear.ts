// The linear layer of the model, forward and training pass alike (src/model/llama.ts):
//   y = x·Wᵀ (+ 1·bᵀ) + Σ_k weight[t,k]·scale[e]·B[e]·A[e]·x
// MoTE puts it on every linear (K = 2: the step's expert weighted α and the shared expert
// weighted 1 − α), plain multi-LoRA serving uses K = 1, and a linear without adapters is the
// same layer without a stack. Forward is one matmul, the bias as a rank-1 update (exact, in
// the bias's own dtype, no host round trip) and one fused loraApply; backward reuses the
// shrink output v saved by forward.
import { WEIGHT_DTYPES } from '../dtype.js';
import { ArgumentError } from '../errors.js';
import type { Tensor } from '../tensor.js';
import { Checker, checkBool, checkObject, checkOpts } from './check.js';
import { matmul, matmulGradInput, matmulGradWeight } from './matmul.js';
import { loraApply, loraInputGrad, loraShrinkGrad, loraWeightGrad, type LoraRouting, type LoraStack, type LoraStrategy } from './lora.js';

export interface MultiLoraForward {
  /** f32 [T, H_out] */
  y: Tensor;
  /** f32 [T, K, R]: the shrink output, needed by backward. */
  v: Tensor;
}

export interface MultiLoraGrads {
  /** f32 [T, H_in], when asked for. */
  dx?: Tensor;
  /** f32 [L, R, H_in] */
  dA: Tensor;
  /** f32 [L, H_out, R] */
  dB: Tensor;
  /** f32 [H_out, H_in], only when the base is trained. */
  dW?: Tensor;
}

/** Where one gradient goes: `out` (fresh when missing), overwritten or added into. */
export interface GradTarget {
  out?: Tensor;
  accumulate?: boolean;
}

/** The gradients backwardTo writes; a missing entry is not computed. */
export interface LinearGradTargets {
  /** ∂loss/∂x. */
  dx?: GradTarget;
  /** ∂loss/∂W (full-parameter training). */
  dW?: GradTarget;
  /** ∂loss/∂b as [H_out, 1] (full-parameter training of a linear with a bias). */
  db?: GradTarget;
  /** The experts' gradients (dA, dB fresh when missing); absent = the experts are frozen. */
  lora?: { dA?: Tensor; dB?: Tensor; accumulate?: boolean };
}

export interface LinearPassOptions {
  strategy?: LoraStrategy | 'auto';
  /** f32 [T, 1] of ones for the bias update (the model makes it once per pass); made here when missing. */
  ones?: Tensor;
}

export class MultiLoraLinear {
  /** [1, H_out], or null. */
  readonly bias: Tensor | null;

  /**
   * W: base weight [H_out, H_in] (HF layout; f32/f16/bf16), frozen unless trainBase.
   * stack: the adapters of this layer, from loraStack(), or null for a linear without adapters.
   * bias: [1, H_out] or [H_out] (any weight dtype), added to every row of y.
   */
  constructor(
    readonly W: Tensor,
    readonly stack: LoraStack | null,
    opts: { bias?: Tensor | null } = {},
  ) {
    const c = new Checker('MultiLoraLinear');
    checkObject('MultiLoraLinear', 'opts', opts);
    c.tensor('W', W, { dtypes: WEIGHT_DTYPES, shape: ['Hout', 'Hin'] });
    if (stack !== null) {
      checkObject('MultiLoraLinear', 'stack', stack, 'a LoraStack from loraStack()');
      c.tensor('stack.A', stack.A, { dtypes: WEIGHT_DTYPES, shape: ['L', 'R', 'Hin'] });
      c.tensor('stack.B', stack.B, { dtypes: WEIGHT_DTYPES, shape: ['L', 'Hout', 'R'] });
    }
    const b = opts.bias ?? null;
    if (b !== null) {
      c.tensor('bias', b, { dtypes: WEIGHT_DTYPES, shape: b.shape.length === 1 ? ['Hout'] : [1, 'Hout'] });
      this.bias = b.shape.length === 1 ? b.reshape([1, b.shape[0]!]) : b;
    } else {
      this.bias = null;
    }
  }

  /** Forward with adapters: y and the shrink output v (backward's input). */
  forward(x: Tensor, routing: LoraRouting, options?: { strategy?: LoraStrategy | 'auto' }): MultiLoraForward {
    if (this.stack === null) throw new ArgumentError('MultiLoraLinear.forward: this layer has no adapter stack (use apply)');
    const { y, v } = this.apply(x, routing, checkOpts('MultiLoraLinear.forward', 'opts', options));
    return { y, v: v! };
  }

  /**
   * Forward of any linear: y, and v when the layer has adapters (routing is then required).
   * On failure nothing it made stays allocated.
   */
  apply(x: Tensor, routing: LoraRouting | null, options?: LinearPassOptions): { y: Tensor; v: Tensor | null } {
    const op = 'MultiLoraLinear.apply';
    const opts = checkOpts(op, 'opts', options);
    if (this.stack !== null && !routing) throw new ArgumentError(`${op}: routing: a layer with adapters needs a LoraRouting`);
    const y = matmul(x, this.W);
    let ones: Tensor | null = null;
    try {
      if (this.bias) {
        ones = opts.ones ?? null;
        if (!ones) ones = x.backend.tensor(new Float32Array(x.shape[0]!).fill(1), [x.shape[0]!, 1], 'f32');
        matmulGradInput(ones, this.bias, { out: y, accumulate: true });
      }
      const v = this.stack ? loraApply(y, x, this.stack, routing!, { strategy: opts.strategy }) : null;
      return { y, v };
    } catch (e) {
      y.dispose();
      throw e;
    } finally {
      if (ones && ones !== opts.ones) ones.dispose();
    }
  }

  /**
   * Gradients given dy = ∂loss/∂y. `grads` (optional) are added into when `accumulate`
   * (gradient accumulation across micro-batches); otherwise fresh tensors are returned.
   */
  backward(
    x: Tensor,
    v: Tensor,
    dy: Tensor,
    routing: LoraRouting,
    options?: {
      inputGrad?: boolean;
      trainBase?: boolean;
      accumulate?: boolean;
      grads?: Partial<MultiLoraGrads>;
      strategy?: LoraStrategy | 'auto';
    },
  ): MultiLoraGrads {
    const op = 'MultiLoraLinear.backward';
    const opts = checkOpts(op, 'opts', options);
    const acc = checkBool(op, 'accumulate', opts.accumulate);
    checkBool(op, 'trainBase', opts.trainBase);
    if (opts.inputGrad !== undefined) checkBool(op, 'inputGrad', opts.inputGrad);
    if (opts.grads !== undefined) checkObject(op, 'grads', opts.grads);
    if (this.stack === null) throw new ArgumentError(`${op}: this layer has no adapter stack (use backwardTo)`);
    if (acc && (!opts.grads?.dA || !opts.grads?.dB || (opts.trainBase && !opts.grads?.dW))) {
      throw new ArgumentError('MultiLoraLinear.backward: accumulate: needs grads.dA, grads.dB (and grads.dW when trainBase) to add into');
    }
    const g = opts.grads;
    const out = this.backwardTo(
      x,
      v,
      dy,
      routing,
      {
        lora: { dA: g?.dA, dB: g?.dB, accumulate: acc },
        ...((opts.inputGrad ?? true) ? { dx: { out: g?.dx } } : {}),
        ...(opts.trainBase ? { dW: { out: g?.dW, accumulate: acc } } : {}),
      },
      { strategy: opts.strategy },
    );
    return out as MultiLoraGrads;
  }

  /**
   * The backward of the training pass: writes (or adds into) each gradient `targets` names.
   * dx = dy·W + Σ_k Aᵀ·dv; dW = dyᵀ·x; db = dyᵀ·1; dA, dB from loraWeightGrad with the
   * forward's v. The tensors it allocated are freed again when it fails.
   */
  backwardTo(
    x: Tensor,
    v: Tensor | null,
    dy: Tensor,
    routing: LoraRouting | null,
    targets: LinearGradTargets,
    options?: LinearPassOptions,
  ): { dx?: Tensor; dW?: Tensor; db?: Tensor; dA?: Tensor; dB?: Tensor } {
    const op = 'MultiLoraLinear.backwardTo';
    const opts = checkOpts(op, 'opts', options);
    checkObject(op, 'targets', targets);
    if (this.stack !== null && !routing) throw new ArgumentError(`${op}: routing: a layer with adapters needs a LoraRouting`);
    if (targets.lora && (this.stack === null || !v))
      throw new ArgumentError(`${op}: targets.lora: needs a layer with adapters and the forward's v`);
    if (targets.db && !this.bias) throw new ArgumentError(`${op}: targets.db: this layer has no bias`);
    const made: Tensor[] = [];
    const fresh = (t: Tensor, given: Tensor | undefined): Tensor => {
      if (t !== given) made.push(t);
      return t;
    };
    const out: { dx?: Tensor; dW?: Tensor; db?: Tensor; dA?: Tensor; dB?: Tensor } = {};
    let dv: Tensor | null = null;
    let ones: Tensor | null = null;
    try {
      const stack = this.stack;
      if (stack) dv = loraShrinkGrad(dy, stack, routing!, { strategy: opts.strategy });
      if (stack && targets.lora) {
        const l = targets.lora;
        const g = loraWeightGrad(x, dy, v!, dv!, stack, routing!, { dA: l.dA, dB: l.dB, accumulate: l.accumulate ?? false });
        out.dA = fresh(g.dA, l.dA);
        out.dB = fresh(g.dB, l.dB);
      }
      if (targets.dx) {
        const t = targets.dx;
        const dx = fresh(matmulGradInput(dy, this.W, { out: t.out, accumulate: t.accumulate ?? false }), t.out);
        if (stack) loraInputGrad(dv!, stack, routing!, { out: dx, accumulate: true, strategy: opts.strategy });
        out.dx = dx;
      }
      if (targets.dW)
        out.dW = fresh(matmulGradWeight(dy, x, { out: targets.dW.out, accumulate: targets.dW.accumulate ?? false }), targets.dW.out);
      if (targets.db) {
        const T = dy.shape[0]!;
        ones = opts.ones ?? dy.backend.tensor(new Float32Array(T).fill(1), [T, 1], 'f32');
        out.db = fresh(matmulGradWeight(dy, ones, { out: targets.db.out, accumulate: targets.db.accumulate ?? false }), targets.db.out);
      }
      return out;
    } catch (e) {
      for (const t of made) t.dispose();
      throw e;
    } finally {
      dv?.dispose();
      if (ones && ones !== opts.ones) ones.dispose();
    }
  }
}
