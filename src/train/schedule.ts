// Learning-rate schedule: linear warmup from 0, then cosine decay to minLr (or constant).
import { ArgumentError, describe } from '../errors.js';

export interface ScheduleOptions {
  /** Peak learning rate. */
  lr: number;
  /** Optimizer steps of linear warmup (default 0). */
  warmupSteps?: number;
  /** Total optimizer steps (the cosine reaches minLr at this step). */
  totalSteps: number;
  /** 'cosine' (default) or 'constant' after warmup. */
  schedule?: 'cosine' | 'constant';
  /** Final learning rate as a fraction of lr (default 0.1). */
  minLrRatio?: number;
}

export function checkSchedule(op: string, o: ScheduleOptions): Required<ScheduleOptions> {
  const num = (name: string, v: unknown, lo: number, hi = Infinity, int = false): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi || (int && !Number.isSafeInteger(v))) {
      throw new ArgumentError(`${op}: ${name}: expected ${int ? 'an integer' : 'a number'} in [${lo}, ${hi}], got ${describe(v)}`);
    }
    return v;
  };
  const schedule = o.schedule ?? 'cosine';
  if (schedule !== 'cosine' && schedule !== 'constant')
    throw new ArgumentError(`${op}: schedule: expected 'cosine' or 'constant', got ${describe(schedule)}`);
  return {
    lr: num('lr', o.lr, 0),
    totalSteps: num('steps', o.totalSteps, 1, Infinity, true),
    warmupSteps: num('warmupSteps', o.warmupSteps ?? 0, 0, Infinity, true),
    minLrRatio: num('minLrRatio', o.minLrRatio ?? 0.1, 0, 1),
    schedule,
  };
}

/** The learning rate of optimizer step `step` (1-based). */
export function learningRate(step: number, o: Required<ScheduleOptions>): number {
  if (o.warmupSteps > 0 && step <= o.warmupSteps) return (o.lr * step) / o.warmupSteps;
  if (o.schedule === 'constant') return o.lr;
  const span = Math.max(1, o.totalSteps - o.warmupSteps);
  const progress = Math.min(1, (step - o.warmupSteps) / span);
  const min = o.lr * o.minLrRatio;
  return min + 0.5 * (o.lr - min) * (1 + Math.cos(Math.PI * progress));
}
