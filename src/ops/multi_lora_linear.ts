// The layer MoTE puts on every linear: y = x·Wᵀ + Σ_k weight[t,k]·scale[e]·B[e]·A[e]·x
// (K = 2: the step's expert weighted α and the shared expert weighted 1 − α), and plain
// multi-LoRA serving (K = 1). Forward is one matmul plus one fused loraApply; backward
// reuses the shrink output v saved by forward.
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

export class MultiLoraLinear {
  /**
   * W: base weight [H_out, H_in] (HF layout; f32/f16/bf16), frozen unless trainBase.
   * stack: the adapters of this layer, from loraStack().
   */
  constructor(readonly W: Tensor, readonly stack: LoraStack) {
    const c = new Checker('MultiLoraLinear');
    checkObject('MultiLoraLinear', 'stack', stack, 'a LoraStack from loraStack()');
    c.tensor('W', W, { dtypes: WEIGHT_DTYPES, shape: ['Hout', 'Hin'] });
    c.tensor('stack.A', stack.A, { dtypes: WEIGHT_DTYPES, shape: ['L', 'R', 'Hin'] });
    c.tensor('stack.B', stack.B, { dtypes: WEIGHT_DTYPES, shape: ['L', 'Hout', 'R'] });
  }

  forward(x: Tensor, routing: LoraRouting, options?: { strategy?: LoraStrategy | 'auto' }): MultiLoraForward {
    const opts = checkOpts('MultiLoraLinear.forward', 'opts', options);
    const y = matmul(x, this.W);
    try {
      const v = loraApply(y, x, this.stack, routing, opts);
      return { y, v };
    } catch (e) {
      y.dispose();
      throw e;
    }
  }

  /**
   * Gradients given dy = ∂loss/∂y. `grads` (optional) are added into when `accumulate`
   * (gradient accumulation across micro-batches); otherwise fresh tensors are returned.
   */
  backward(x: Tensor, v: Tensor, dy: Tensor, routing: LoraRouting, options?: {
    inputGrad?: boolean; trainBase?: boolean; accumulate?: boolean; grads?: Partial<MultiLoraGrads>; strategy?: LoraStrategy | 'auto';
  }): MultiLoraGrads {
    const op = 'MultiLoraLinear.backward';
    const opts = checkOpts(op, 'opts', options);
    const acc = checkBool(op, 'accumulate', opts.accumulate);
    checkBool(op, 'trainBase', opts.trainBase);
    if (opts.inputGrad !== undefined) checkBool(op, 'inputGrad', opts.inputGrad);
    if (opts.grads !== undefined) checkObject(op, 'grads', opts.grads);
    if (acc && (!opts.grads?.dA || !opts.grads?.dB || (opts.trainBase && !opts.grads?.dW))) {
      throw new ArgumentError('MultiLoraLinear.backward: accumulate: needs grads.dA, grads.dB (and grads.dW when trainBase) to add into');
    }
    const dv = loraShrinkGrad(dy, this.stack, routing, { strategy: opts.strategy });
    try {
      const out: MultiLoraGrads = {
        ...loraWeightGrad(x, dy, v, dv, this.stack, routing, { dA: opts.grads?.dA, dB: opts.grads?.dB, accumulate: acc }),
      };
      if (opts.inputGrad ?? true) {
        const dx = matmulGradInput(dy, this.W, { out: opts.grads?.dx });
        loraInputGrad(dv, this.stack, routing, { out: dx, accumulate: true, strategy: opts.strategy });
        out.dx = dx;
      }
      if (opts.trainBase) out.dW = matmulGradWeight(dy, x, { out: opts.grads?.dW, accumulate: acc });
      return out;
    } finally {
      dv.dispose();
    }
  }
}
