import type { DType } from '../dtype.js';
import { ArgumentError, BackendMismatchError, DTypeError, DisposedTensorError, ShapeError, describe } from '../errors.js';
import { Tensor } from '../tensor.js';
import type { Backend } from '../backend/backend.js';

export interface TensorSpec {
  dtypes: readonly DType[];
  /** Expected shape; a string entry names a dimension bound on first use (e.g. 'T'). */
  shape: readonly (number | string)[];
}

/**
 * Argument checking shared by every op: binds named dimensions across tensors and
 * throws an error naming the argument, what was expected and what came.
 */
export class Checker {
  readonly dims = new Map<string, { value: number; from: string }>();
  backend: Backend | null = null;

  constructor(readonly op: string) {}

  tensor(name: string, t: unknown, spec: TensorSpec): Tensor {
    if (!(t instanceof Tensor)) throw new ArgumentError(`${this.op}: ${name}: expected a Tensor, got ${describe(t)}`);
    if (t.disposed) throw new DisposedTensorError(`${this.op}: ${name}: expected a live tensor, got ${t} after dispose()`);
    if (this.backend === null) this.backend = t.backend;
    else if (t.backend !== this.backend) {
      throw new BackendMismatchError(`${this.op}: ${name}: expected a tensor on the ${this.backend.kind} backend of the other arguments, got one on ${t.backend.kind}${t.backend.kind === this.backend.kind ? ' (another instance)' : ''}`);
    }
    if (!spec.dtypes.includes(t.dtype)) throw new DTypeError(`${this.op}: ${name}: expected dtype ${spec.dtypes.join(' or ')}, got ${t.dtype}`);
    const want = spec.shape.map((d) => (typeof d === 'number' ? String(d) : d)).join(', ');
    if (t.shape.length !== spec.shape.length) throw new ShapeError(`${this.op}: ${name}: expected shape [${want}], got [${t.shape.join(', ')}]`);
    spec.shape.forEach((d, i) => {
      const got = t.shape[i]!;
      if (typeof d === 'number') {
        if (got !== d) throw new ShapeError(`${this.op}: ${name}: expected shape [${want}], got [${t.shape.join(', ')}] (dim ${i} must be ${d})`);
        return;
      }
      const bound = this.dims.get(d);
      if (!bound) this.dims.set(d, { value: got, from: name });
      else if (bound.value !== got) {
        throw new ShapeError(`${this.op}: ${name}: expected shape [${want}] with ${d} = ${bound.value} (from ${bound.from}), got [${t.shape.join(', ')}]`);
      }
    });
    return t;
  }

  dim(name: string): number {
    const d = this.dims.get(name);
    if (!d) throw new Error(`internal: dimension ${name} not bound`);
    return d.value;
  }

  /** An optional output tensor: checked when given, allocated (f32) when not. */
  output(name: string, t: Tensor | undefined, shape: readonly string[], dtype: DType = 'f32'): Tensor {
    if (t !== undefined) return this.tensor(name, t, { dtypes: [dtype], shape });
    return this.backend!.empty(shape.map((d) => this.dim(d)), dtype);
  }

  /** Output must not alias an input: kernels read inputs while writing outputs. */
  distinct(outName: string, out: Tensor, inputs: Record<string, Tensor>): void {
    for (const [n, t] of Object.entries(inputs)) {
      if (t === out) throw new ArgumentError(`${this.op}: ${outName}: must not be the same tensor as ${n}`);
    }
  }
}

export function checkBool(op: string, name: string, v: unknown): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new ArgumentError(`${op}: ${name}: expected a boolean, got ${describe(v)}`);
  return v;
}
