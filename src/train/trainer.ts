// The training loop (DESIGN §1): MoTE SFT of the experts on the chain tokens with the base
// frozen, or full-parameter training of a small model. Packed micro-batches of whole
// examples, gradient accumulation, global-norm clipping, AdamW on the device, warmup +
// cosine schedule, step skipping, progress callbacks and checkpoints.
//
// Determinism: every random draw (data order, the prompt tokens' random step expert, the
// step-skipping masks) comes from a generator seeded by (seed, what it is for, epoch or
// step, micro-batch), never from a running stream, so the state to resume from is just the
// counters (step, epoch, cursor) and a resumed run draws exactly what an uninterrupted one
// would. The kernels are deterministic (fixed-order reductions, no atomics), so two runs
// with one seed on one backend give identical bits.

import { yieldToEventLoop } from '../yield.js';
import { ArgumentError, MoteError, describe } from '../errors.js';
import type { Tensor } from '../tensor.js';
import type { LlamaModel } from '../model/llama.js';
import { AdapterStacks, checkPromptRouting, type PromptRouting } from '../adapters/stacks.js';
import type { LoraRouting, LoraStack } from '../ops/lora.js';
import { adamw, adamwScalars, sumSquares } from '../ops/adamw.js';
import { baseWeights, disposeGrads, llamaLossAndGrad, type LlamaGrads, type LlamaTrainBatch } from '../model/llama_backward.js';
import { LINEAR_MODULES } from '../model/config.js';
import { checkSchedule, learningRate, type ScheduleOptions } from './schedule.js';
import { stepSkipSegments } from './step_skip.js';
import { mixSeed, mulberry32 } from '../rng.js';
import { CHECKPOINT_DIR_OPTIONS, saveCheckpoint, type TrainerState } from './checkpoint.js';
import { checkReplaceable, overwriteOption } from '../io/atomic_dir.js';
import { checkKnownKeys } from '../ops/check.js';
import { packSequences } from './pack.js';

/** One training example: a prompt followed by its chain (or any token sequence). */
export interface TrainExample {
  /** Token ids. */
  ids: ArrayLike<number>;
  /** Per token: 1 when the token is learned (predicted from the tokens before it), else 0 (prompt). */
  lossMask: ArrayLike<number>;
  /** Per token: −1 for a prompt token, else the index of its step in the bundle's steps (MoTE routing). */
  stepIds?: ArrayLike<number>;
}

export interface TrainProgress {
  /** Optimizer steps done. */
  step: number;
  totalSteps: number;
  /** Masked mean cross-entropy of this step's micro-batches (nats per learned token). */
  loss: number;
  /** Learning rate used by this step. */
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Tokens (all, not only learned ones) in this step. */
  tokens: number;
  /** Learned tokens in this step. */
  learnedTokens: number;
  tokensPerSecond: number;
  epoch: number;
  elapsedMs: number;
}

export interface TrainerOptions extends Omit<ScheduleOptions, 'totalSteps'> {
  /** Optimizer steps to run. */
  steps: number;
  /** Tokens per packed micro-batch (examples are never split). Default 512. */
  batchTokens?: number;
  /** Micro-batches per optimizer step. Default 1. */
  gradAccum?: number;
  /** Global-norm clipping threshold; 0 turns clipping off. Default 1. */
  clipNorm?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled weight decay. Default 0 (PEFT / HF Trainer default for LoRA). */
  weightDecay?: number;
  /** Seed of every random draw. Default 0. */
  seed?: number;
  /** Step skipping probability per (sequence, later step, earlier step). Default 0. */
  pSkip?: number;
  /** Routing of prompt tokens (MoTE bundles): default 'random-step', as the paper trains. */
  promptRouting?: PromptRouting;
  /** Train every base weight too (full-parameter; f32 weights). Default false. */
  trainBase?: boolean;
  /** Called after every optimizer step. */
  onProgress?: (p: TrainProgress) => void;
}

/** What the trainer optimizes: a named f32 tensor with its AdamW moments. */
interface Param {
  name: string;
  p: Tensor;
  m: Tensor;
  v: Tensor;
  grad(g: LlamaGrads): Tensor | undefined;
}

export type { TrainerState };

const PURPOSE = { order: 1, routing: 2, skip: 3 } as const;

/** FNV-1a over the examples' ids and masks: a resumed run must see the same data. */
export function dataFingerprint(examples: readonly TrainExample[]): string {
  let h = 0x811c9dc5;
  const eat = (v: number) => {
    h ^= v & 0xffff;
    h = Math.imul(h, 0x01000193);
    h ^= v >>> 16;
    h = Math.imul(h, 0x01000193);
  };
  for (const e of examples) {
    eat(e.ids.length);
    for (let i = 0; i < e.ids.length; i++) eat(e.ids[i]!);
    for (let i = 0; i < e.lossMask.length; i++) eat(e.lossMask[i]!);
    if (e.stepIds) for (let i = 0; i < e.stepIds.length; i++) eat(e.stepIds[i]! + 1);
  }
  return `${examples.length}:${(h >>> 0).toString(16).padStart(8, '0')}`;
}

function int(op: string, name: string, v: unknown, lo: number, dflt: number, hi = Number.MAX_SAFE_INTEGER): number {
  const x = v ?? dflt;
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < lo || x > hi)
    throw new ArgumentError(
      `${op}: ${name}: expected an integer ${hi === Number.MAX_SAFE_INTEGER ? `≥ ${lo}` : `in [${lo}, ${hi}]`}, got ${describe(v)}`,
    );
  return x;
}

/** Most micro-batches per step: a step picks and packs all of them before the first forward. */
export const MAX_GRAD_ACCUM = 4096;

const TRAINER_OPTION_KEYS = [
  'steps',
  'lr',
  'warmupSteps',
  'schedule',
  'minLrRatio',
  'batchTokens',
  'gradAccum',
  'clipNorm',
  'beta1',
  'beta2',
  'eps',
  'weightDecay',
  'seed',
  'pSkip',
  'promptRouting',
  'trainBase',
  'onProgress',
];

function num(op: string, name: string, v: unknown, lo: number, hi: number, dflt: number): number {
  const x = v ?? dflt;
  if (typeof x !== 'number' || !Number.isFinite(x) || x < lo || x > hi)
    throw new ArgumentError(`${op}: ${name}: expected a number in [${lo}, ${hi}], got ${describe(v)}`);
  return x;
}

export class Trainer {
  readonly options: Required<Omit<TrainerOptions, 'onProgress' | 'promptRouting'>> & { promptRouting: PromptRouting };
  readonly params: readonly Param[];
  readonly fingerprint: string;
  readonly schedule: Required<ScheduleOptions>;
  #state: TrainerState;
  #grads: LlamaGrads = { lora: new Map(), weights: new Map() };
  #examples: { ids: Int32Array; lossMask: Uint8Array; stepIds: Int32Array | null }[];
  #onProgress: ((p: TrainProgress) => void) | undefined;
  #order: Int32Array | null = null;
  #orderEpoch = -1;
  #disposed = false;
  /** A step is in flight (between its first and last await). */
  #stepping = false;
  /** run() is in progress. */
  #running = false;

  /**
   * adapters: the MoTE bundle (or plain adapter set) whose experts are trained, or null for
   * full-parameter training (trainBase). Every example is checked here, before any work.
   */
  constructor(
    readonly model: LlamaModel,
    readonly adapters: AdapterStacks | null,
    examples: readonly TrainExample[],
    opts: TrainerOptions,
  ) {
    const op = 'Trainer';
    if (!model || typeof model.checkBatch !== 'function')
      throw new ArgumentError(`${op}: model: expected a LlamaModel, got ${describe(model)}`);
    if (adapters !== null && !(adapters instanceof AdapterStacks))
      throw new ArgumentError(`${op}: adapters: expected a MoteBundle, an AdapterSet or null, got ${describe(adapters)}`);
    if (adapters && adapters.disposed) throw new ArgumentError(`${op}: adapters: used after dispose()`);
    if (adapters && adapters.backend !== model.backend)
      throw new ArgumentError(`${op}: adapters: live on another backend (${adapters.backend.kind}) than the model (${model.backend.kind})`);
    if (!opts || typeof opts !== 'object') throw new ArgumentError(`${op}: opts: expected { steps, lr, ... }, got ${describe(opts)}`);
    checkKnownKeys(`${op}: opts`, opts, TRAINER_OPTION_KEYS);
    const sched = checkSchedule(op, { ...opts, totalSteps: opts.steps });
    const trainBase = opts.trainBase ?? false;
    if (typeof trainBase !== 'boolean') throw new ArgumentError(`${op}: trainBase: expected a boolean, got ${describe(trainBase)}`);
    if (!adapters && !trainBase)
      throw new ArgumentError(`${op}: nothing to train: give adapters, or set trainBase for full-parameter training`);
    const promptRouting = opts.promptRouting === undefined ? 'random-step' : checkPromptRouting(op, opts.promptRouting);
    if (opts.onProgress !== undefined && typeof opts.onProgress !== 'function')
      throw new ArgumentError(`${op}: onProgress: expected a function, got ${describe(opts.onProgress)}`);
    this.options = {
      ...sched,
      steps: sched.totalSteps,
      batchTokens: int(op, 'batchTokens', opts.batchTokens, 2, 512),
      gradAccum: int(op, 'gradAccum', opts.gradAccum, 1, 1, MAX_GRAD_ACCUM),
      clipNorm: num(op, 'clipNorm', opts.clipNorm, 0, Infinity, 1),
      beta1: num(op, 'beta1', opts.beta1, 0, 0.999999, 0.9),
      beta2: num(op, 'beta2', opts.beta2, 0, 0.999999, 0.999),
      eps: num(op, 'eps', opts.eps, 1e-30, 1, 1e-8),
      weightDecay: num(op, 'weightDecay', opts.weightDecay, 0, Infinity, 0),
      seed: int(op, 'seed', opts.seed, 0, 0),
      pSkip: num(op, 'pSkip', opts.pSkip, 0, 1, 0),
      trainBase,
      promptRouting,
    };
    if (this.options.seed > 0xffffffff) throw new ArgumentError(`${op}: seed: expected an integer in [0, 2³²), got ${this.options.seed}`);
    adamwScalars(
      {
        lr: sched.lr,
        step: 1,
        beta1: this.options.beta1,
        beta2: this.options.beta2,
        eps: this.options.eps,
        weightDecay: this.options.weightDecay,
      },
      op,
    );
    this.#onProgress = opts.onProgress;
    this.schedule = sched;

    const numSteps = adapters?.numSteps ?? 0;
    if (!Array.isArray(examples) || examples.length === 0)
      throw new ArgumentError(`${op}: examples: expected a non-empty array of { ids, lossMask, stepIds? }, got ${describe(examples)}`);
    const V = model.config.vocabSize;
    const context = model.config.maxPositionEmbeddings;
    this.#examples = examples.map((e, i) => {
      const where = `${op}: examples[${i}]`;
      if (!e || typeof e !== 'object' || !e.ids || typeof e.ids.length !== 'number')
        throw new ArgumentError(`${where}: expected { ids, lossMask, stepIds? }, got ${describe(e)}`);
      const n = e.ids.length;
      if (n < 2) throw new ArgumentError(`${where}.ids: expected at least 2 tokens, got ${n}`);
      if (n > this.options.batchTokens)
        throw new ArgumentError(`${where}.ids: ${n} tokens do not fit in a micro-batch of batchTokens = ${this.options.batchTokens}`);
      if (n > context)
        throw new ArgumentError(`${where}.ids: ${n} tokens, more than the model's context (max_position_embeddings) of ${context}`);
      const ids = new Int32Array(n),
        lossMask = new Uint8Array(n);
      let learned = 0;
      for (let t = 0; t < n; t++) {
        const id = e.ids[t]!;
        if (!Number.isInteger(id) || id < 0 || id >= V)
          throw new ArgumentError(`${where}.ids[${t}]: expected a token id in [0, ${V - 1}], got ${describe(id)}`);
        ids[t] = id;
        const m = e.lossMask?.[t];
        if (m !== 0 && m !== 1)
          throw new ArgumentError(
            `${where}.lossMask[${t}]: expected 0 or 1, got ${describe(m)}${e.lossMask && e.lossMask.length !== n ? ` (lossMask has ${e.lossMask.length} entries, ids ${n})` : ''}`,
          );
        lossMask[t] = m;
        if (t > 0) learned += m;
      }
      if (learned === 0) throw new ArgumentError(`${where}.lossMask: no token after the first is learned (all 0)`);
      let stepIds: Int32Array | null = null;
      if (numSteps > 0) {
        if (!e.stepIds || e.stepIds.length !== n)
          throw new ArgumentError(
            `${where}.stepIds: a MoTE bundle needs one step index per token (−1 = prompt), got ${e.stepIds ? `${e.stepIds.length} entries for ${n} tokens` : describe(e.stepIds)}`,
          );
        stepIds = new Int32Array(n);
        for (let t = 0; t < n; t++) {
          const s = e.stepIds[t]!;
          if (!Number.isInteger(s) || s < -1 || s >= numSteps)
            throw new ArgumentError(
              `${where}.stepIds[${t}]: expected −1 (prompt) or a step index in [0, ${numSteps - 1}], got ${describe(s)}`,
            );
          stepIds[t] = s;
        }
      }
      return { ids, lossMask, stepIds };
    });
    this.fingerprint = dataFingerprint(examples);

    // Parameters and their moments (zeros), in a fixed order.
    const be = model.backend;
    const params: Param[] = [];
    try {
      if (adapters) {
        adapters.stacks.forEach((mods, l) => {
          for (const m of LINEAR_MODULES) {
            const s: LoraStack | undefined = mods?.[m];
            if (!s) continue;
            if (s.A.dtype !== 'f32' || s.B.dtype !== 'f32')
              throw new ArgumentError(`${op}: adapters: layer ${l} ${m}: training needs f32 factors, got ${s.A.dtype}/${s.B.dtype}`);
            params.push({
              name: `lora.${l}.${m}.A`,
              p: s.A,
              m: be.zeros([...s.A.shape]),
              v: be.zeros([...s.A.shape]),
              grad: (g) => g.lora.get(s)?.dA,
            });
            params.push({
              name: `lora.${l}.${m}.B`,
              p: s.B,
              m: be.zeros([...s.B.shape]),
              v: be.zeros([...s.B.shape]),
              grad: (g) => g.lora.get(s)?.dB,
            });
          }
        });
      }
      if (trainBase) {
        for (const [name, t] of baseWeights(model)) {
          if (t.dtype !== 'f32')
            throw new ArgumentError(
              `${op}: trainBase: weight '${name}' is ${t.dtype}; full-parameter training needs f32 weights (load the model with dtype 'f32')`,
            );
          params.push({ name, p: t, m: be.zeros([...t.shape]), v: be.zeros([...t.shape]), grad: (g) => g.weights.get(t) });
        }
      }
    } catch (e) {
      for (const q of params) {
        q.m.dispose();
        q.v.dispose();
      }
      throw e;
    }
    if (params.length === 0) throw new ArgumentError(`${op}: adapters: no adapter stack to train`);
    this.params = params;
    this.#state = { step: 0, epoch: 0, cursor: 0, seed: this.options.seed, losses: [] };
  }

  /** The counters and loss history (a copy). */
  get state(): TrainerState {
    return { ...this.#state, losses: [...this.#state.losses] };
  }

  get done(): boolean {
    return this.#state.step >= this.options.steps;
  }

  #live(op: string): void {
    if (this.#disposed) throw new ArgumentError(`Trainer.${op}: used after dispose()`);
    if (this.model.disposed) throw new ArgumentError(`Trainer.${op}: the model was disposed`);
    if (this.adapters?.disposed) throw new ArgumentError(`Trainer.${op}: the adapters were disposed`);
  }

  #orderOf(epoch: number): Int32Array {
    if (this.#orderEpoch !== epoch || !this.#order) {
      const n = this.#examples.length;
      const order = Int32Array.from({ length: n }, (_, i) => i);
      const r = mulberry32(mixSeed(this.options.seed, PURPOSE.order, epoch));
      for (let i = n - 1; i > 0; i--) {
        const j = Math.floor(r() * (i + 1));
        const t = order[i]!;
        order[i] = order[j]!;
        order[j] = t;
      }
      this.#order = order;
      this.#orderEpoch = epoch;
    }
    return this.#order;
  }

  /** The next packed micro-batch's examples, advancing the cursor (epochs wrap). */
  #nextExamples(): number[] {
    const st = this.#state;
    const picked: number[] = [];
    let tokens = 0;
    for (;;) {
      let order = this.#orderOf(st.epoch);
      if (st.cursor >= order.length) {
        st.epoch++;
        st.cursor = 0;
        if (picked.length > 0) break; // a micro-batch never spans two epochs
        order = this.#orderOf(st.epoch);
      }
      const e = order[st.cursor]!;
      const n = this.#examples[e]!.ids.length;
      if (picked.length > 0 && tokens + n > this.options.batchTokens) break;
      picked.push(e);
      tokens += n;
      st.cursor++;
    }
    return picked;
  }

  /** Packs examples: targets[t] = ids[t+1] inside a sequence; the loss of t counts when token t+1 is learned. */
  #pack(picked: number[], step: number, micro: number): { batch: LlamaTrainBatch; routing: LoraRouting | null; count: number } {
    const { ids, seq, stepIds, targets, lossMask } = packSequences(this.#examples, picked);
    let count = 0;
    for (const m of lossMask) count += m;
    const batch: LlamaTrainBatch = { ids, seq, targets, lossMask };
    let routing: LoraRouting | null = null;
    const ad = this.adapters;
    if (ad) {
      const segments =
        ad.numSteps > 0
          ? stepSkipSegments(
              stepIds,
              seq,
              ad.numSteps,
              this.options.pSkip,
              mulberry32(mixSeed(this.options.seed, PURPOSE.skip, step, micro)),
            )
          : undefined;
      if (segments) batch.segments = segments;
      // MoTE: [step, shared] per chain token; a plain set: its first adapter on every token.
      routing = ad.batchRouting({
        stepIds,
        seq,
        promptRouting: this.options.promptRouting,
        seed: mixSeed(this.options.seed, PURPOSE.routing, step, micro),
      });
      batch.lora = ad.loraFor(routing);
    }
    return { batch, routing, count };
  }

  /** @internal a step is in flight: its parameters and counters are half-updated (checkpoints refuse). */
  get busy(): boolean {
    return this.#stepping;
  }

  /** Runs one optimizer step (gradAccum micro-batches) and returns its progress record. */
  async trainStep(): Promise<TrainProgress> {
    this.#live('trainStep');
    if (this.#running) throw new ArgumentError('Trainer.trainStep: run() is in progress on this trainer');
    return this.#step();
  }

  async #step(): Promise<TrainProgress> {
    // Two steps at once would share the gradient buffers and both take step number st.step + 1.
    if (this.#stepping) throw new ArgumentError('Trainer.trainStep: another step of this trainer is in flight (await it first)');
    if (this.done) throw new ArgumentError(`Trainer.trainStep: all ${this.options.steps} steps are done`);
    this.#stepping = true;
    try {
      return await this.#stepBody();
    } finally {
      this.#stepping = false;
    }
  }

  async #stepBody(): Promise<TrainProgress> {
    const o = this.options;
    const st = this.#state;
    const step = st.step + 1;
    const t0 = performance.now();
    const saved = { epoch: st.epoch, cursor: st.cursor };
    // Pick every micro-batch first: the loss is the mean over all learned tokens of the step.
    const micros: number[][] = [];
    for (let i = 0; i < o.gradAccum; i++) micros.push(this.#nextExamples());
    try {
      const packed = micros.map((p, i) => this.#pack(p, step, i));
      const total = packed.reduce((a, b) => a + b.count, 0);
      let lossSum = 0,
        tokens = 0;
      try {
        for (const [i, pk] of packed.entries()) {
          const r = await llamaLossAndGrad(this.model, pk.batch, {
            grads: this.#grads,
            accumulate: i > 0,
            lossScale: total > 0 ? 1 / total : 0,
            trainBase: o.trainBase,
            trainLora: this.adapters !== null,
          });
          lossSum += r.lossSum;
          tokens += pk.batch.ids.length;
        }
      } finally {
        for (const pk of packed) pk.routing?.dispose();
      }
      const loss = total > 0 ? lossSum / total : 0;
      // Global norm over every gradient, one fixed-order reduction per tensor.
      const sq = this.params.map((p) => {
        const g = p.grad(this.#grads);
        if (!g) throw new MoteError(`Trainer.trainStep: no gradient for ${p.name}`);
        return sumSquares(g);
      });
      let ss = 0;
      try {
        const parts = await Promise.all(sq.map((t) => t.readFloat()));
        for (const v of parts) ss += v[0]!;
      } finally {
        for (const t of sq) t.dispose();
      }
      this.#live('trainStep'); // disposed while the step was in flight: say so, not "adamw: m: … after dispose()"
      const gradNorm = Math.sqrt(ss);
      if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
        throw new MoteError(
          `Trainer.trainStep: step ${step}: the ${Number.isFinite(loss) ? 'gradient norm' : 'loss'} is not finite (loss ${loss}, gradient norm ${gradNorm}); no update was applied (lower lr, or check the data)`,
        );
      }
      const gradScale = o.clipNorm > 0 && gradNorm > o.clipNorm ? o.clipNorm / gradNorm : 1;
      const lr = learningRate(step, this.schedule);
      for (const p of this.params) {
        adamw(p.p, p.grad(this.#grads)!, p.m, p.v, {
          lr,
          step,
          beta1: o.beta1,
          beta2: o.beta2,
          eps: o.eps,
          weightDecay: o.weightDecay,
          gradScale,
        });
      }
      await this.model.backend.sync();
      st.step = step;
      st.losses.push(loss);
      const elapsedMs = performance.now() - t0;
      const progress: TrainProgress = {
        step,
        totalSteps: o.steps,
        loss,
        lr,
        gradNorm,
        tokens,
        learnedTokens: total,
        tokensPerSecond: tokens / Math.max(1e-9, elapsedMs / 1000),
        epoch: st.epoch,
        elapsedMs,
      };
      this.#onProgress?.(progress);
      return progress;
    } catch (e) {
      // The step did not happen: the next attempt reads the same examples.
      st.epoch = saved.epoch;
      st.cursor = saved.cursor;
      throw e;
    }
  }

  /**
   * Runs the remaining steps. With checkpointDir, saves every checkpointEvery steps (default:
   * only at the end) and whenever the run stops early: on `signal` abort, or on SIGINT when
   * handleSigint is set (the handler is removed when run returns). An interrupted run returns
   * { interrupted: true } after saving; resume it with loadCheckpoint on a new trainer (it
   * takes the newest complete checkpoint, also one a killed save left beside checkpointDir).
   * A checkpointDir that mote did not write is refused before the first step, unless
   * checkpointOverwrite (then its files are kept; see src/io/atomic_dir.ts).
   */
  async run(
    opts: {
      checkpointDir?: string;
      checkpointEvery?: number;
      checkpointOverwrite?: boolean;
      signal?: AbortSignal;
      handleSigint?: boolean;
    } = {},
  ): Promise<{ interrupted: boolean; state: TrainerState }> {
    this.#live('run');
    if (this.#running || this.#stepping)
      throw new ArgumentError(`Trainer.run: ${this.#running ? 'run()' : 'a trainStep()'} is already in progress on this trainer`);
    if (!opts || typeof opts !== 'object') throw new ArgumentError(`Trainer.run: opts: expected an object, got ${describe(opts)}`);
    const dir = opts.checkpointDir;
    if (dir !== undefined && (typeof dir !== 'string' || dir === ''))
      throw new ArgumentError(`Trainer.run: checkpointDir: expected a directory path, got ${describe(dir)}`);
    const every = opts.checkpointEvery ?? 0;
    if (!Number.isSafeInteger(every) || every < 0)
      throw new ArgumentError(`Trainer.run: checkpointEvery: expected an integer ≥ 0, got ${describe(every)}`);
    if (every > 0 && dir === undefined) throw new ArgumentError('Trainer.run: checkpointEvery: needs checkpointDir');
    const overwrite = overwriteOption('Trainer.run', opts.checkpointOverwrite);
    if (dir !== undefined) checkReplaceable('Trainer.run: checkpointDir', dir, { ...CHECKPOINT_DIR_OPTIONS, overwrite });
    const save = () => saveCheckpoint(this, dir!, { overwrite });
    let stop = false;
    const onSigint = () => {
      stop = true;
    };
    this.#running = true;
    if (opts.handleSigint) process.on('SIGINT', onSigint);
    try {
      while (!this.done) {
        // A turn of the event loop between steps: signal handlers and I/O run there (on cpu
        // every await of a step resolves as a microtask and would never let them in).
        await yieldToEventLoop();
        if (stop || opts.signal?.aborted) {
          if (dir !== undefined) await save();
          return { interrupted: true, state: this.state };
        }
        this.#live('run');
        await this.#step();
        if (dir !== undefined && every > 0 && this.#state.step % every === 0 && !this.done) await save();
      }
      if (dir !== undefined) await save();
      return { interrupted: false, state: this.state };
    } finally {
      this.#running = false;
      if (opts.handleSigint) process.off('SIGINT', onSigint);
    }
  }

  /** @internal used by checkpoints: restores counters. */
  restoreState(s: TrainerState): void {
    this.#state = { ...s, losses: [...s.losses] };
  }

  /** Frees the optimizer moments and gradients (not the model or the adapters). Safe to call twice. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const p of this.params) {
      p.m.dispose();
      p.v.dispose();
    }
    disposeGrads(this.#grads);
  }

  /** dispose(), for `using`: the Trainer is freed when its block ends. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
