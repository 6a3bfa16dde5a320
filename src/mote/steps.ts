// The MoTE step schema (DESIGN §1): the steps of an AlignCoT reasoning chain, the special
// tokens that open (and close) each step, and the configuration of a MoTE bundle.
//
// A chain is: prompt → <|analysis|> … <|end_analysis|> → <|guidance|> … <|end_guidance|>
// → <|response|> … <|end_response|> (→ <|check|> … <|end_check|>). The step a token belongs
// to picks its expert: y = W0·x + α·E_step(x) + (1−α)·E_shared(x). Prompt tokens go to the
// shared expert only (inference default), or to a random step expert per sequence
// ('random-step', as the paper trains).

import { ArgumentError, describe } from '../errors.js';
import { LINEAR_MODULES, type LinearModule } from '../model/config.js';
import { checkPromptRouting, type PromptRouting } from '../adapters/stacks.js';
import { MAX_LORA_RANK } from '../ops/lora.js';

/** Every step a chain may have, in chain order. */
export const STEPS = ['analysis', 'guidance', 'answer', 'check'] as const;
export type StepName = (typeof STEPS)[number];

/** The steps a bundle has by default (checking is optional). */
export const DEFAULT_STEPS: readonly StepName[] = ['analysis', 'guidance', 'answer'];

/** The special token that opens each step. */
export const STEP_TOKENS: Readonly<Record<StepName, string>> = Object.freeze({
  analysis: '<|analysis|>',
  guidance: '<|guidance|>',
  answer: '<|response|>',
  check: '<|check|>',
});

/** The special token that closes each step. */
export const STEP_END_TOKENS: Readonly<Record<StepName, string>> = Object.freeze({
  analysis: '<|end_analysis|>',
  guidance: '<|end_guidance|>',
  answer: '<|end_response|>',
  check: '<|end_check|>',
});

// How prompt (question) tokens are routed is the adapter layer's (the trainer routes by it).
export { PROMPT_ROUTINGS, checkPromptRouting, type PromptRouting } from '../adapters/stacks.js';

/** The name of the shared expert (its folder in a saved bundle). */
export const SHARED_EXPERT = 'shared';

export interface MoteConfig {
  /** The steps with an expert, in chain order (a subset of STEPS). Default analysis, guidance, answer. */
  steps: StepName[];
  /** LoRA rank of every expert. Default 16 (the paper's). */
  rank: number;
  /** LoRA alpha (scale = loraAlpha / rank). Default 32. */
  loraAlpha: number;
  /** Weight of the step expert; the shared expert gets 1 − alpha. Default 0.5. */
  alpha: number;
  /** Routing of prompt tokens. Default 'shared' (inference); training uses 'random-step'. */
  promptRouting: PromptRouting;
  /** The linear layers that get experts. Default all seven. */
  targetModules: LinearModule[];
}

export const DEFAULT_MOTE_CONFIG: Readonly<MoteConfig> = Object.freeze({
  steps: [...DEFAULT_STEPS],
  rank: 16,
  loraAlpha: 32,
  alpha: 0.5,
  promptRouting: 'shared',
  targetModules: [...LINEAR_MODULES],
});

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * A complete, checked MoteConfig from a partial one (missing fields take the defaults).
 * Throws ArgumentError naming the field for anything out of range, unknown or repeated.
 */
export function moteConfig(partial: Partial<MoteConfig> = {}, op = 'moteConfig'): MoteConfig {
  if (!isPlainObject(partial)) throw new ArgumentError(`${op}: config: expected an object, got ${describe(partial)}`);
  const known = new Set(Object.keys(DEFAULT_MOTE_CONFIG));
  for (const k of Object.keys(partial)) {
    if (!known.has(k)) throw new ArgumentError(`${op}: config.${k}: unknown field (expected ${[...known].join(', ')})`);
  }
  const p = partial as Partial<Record<keyof MoteConfig, unknown>>;

  const steps = p.steps === undefined ? [...DEFAULT_STEPS] : p.steps;
  if (!Array.isArray(steps) || steps.length === 0)
    throw new ArgumentError(`${op}: steps: expected a non-empty list of ${STEPS.join(', ')}, got ${describe(steps)}`);
  let last = -1;
  for (const [i, s] of steps.entries()) {
    const at = (STEPS as readonly unknown[]).indexOf(s);
    if (at < 0) throw new ArgumentError(`${op}: steps[${i}]: unknown step ${describe(s)} (expected one of ${STEPS.join(', ')})`);
    if (steps.indexOf(s) !== i) throw new ArgumentError(`${op}: steps[${i}]: '${s}' is listed twice`);
    if (at < last) throw new ArgumentError(`${op}: steps[${i}]: '${s}' is out of chain order (expected the order ${STEPS.join(' → ')})`);
    last = at;
  }

  const rank = p.rank === undefined ? DEFAULT_MOTE_CONFIG.rank : p.rank;
  if (typeof rank !== 'number' || !Number.isSafeInteger(rank) || rank < 1 || rank > MAX_LORA_RANK)
    throw new ArgumentError(`${op}: rank: expected an integer in [1, ${MAX_LORA_RANK}], got ${describe(rank)}`);
  const loraAlpha = p.loraAlpha === undefined ? DEFAULT_MOTE_CONFIG.loraAlpha : p.loraAlpha;
  if (typeof loraAlpha !== 'number' || !Number.isFinite(loraAlpha) || loraAlpha <= 0)
    throw new ArgumentError(`${op}: loraAlpha: expected a positive number, got ${describe(loraAlpha)}`);
  const alpha = p.alpha === undefined ? DEFAULT_MOTE_CONFIG.alpha : p.alpha;
  if (typeof alpha !== 'number' || !Number.isFinite(alpha) || alpha < 0 || alpha > 1)
    throw new ArgumentError(`${op}: alpha: expected a number in [0, 1], got ${describe(alpha)}`);
  const promptRouting = checkPromptRouting(op, p.promptRouting === undefined ? DEFAULT_MOTE_CONFIG.promptRouting : p.promptRouting);

  const targets = p.targetModules === undefined ? [...LINEAR_MODULES] : p.targetModules;
  if (!Array.isArray(targets) || targets.length === 0)
    throw new ArgumentError(`${op}: targetModules: expected a non-empty list of ${LINEAR_MODULES.join(', ')}, got ${describe(targets)}`);
  for (const [i, m] of targets.entries()) {
    if (!(LINEAR_MODULES as readonly unknown[]).includes(m))
      throw new ArgumentError(`${op}: targetModules[${i}]: unknown module ${describe(m)} (expected one of ${LINEAR_MODULES.join(', ')})`);
    if (targets.indexOf(m) !== i) throw new ArgumentError(`${op}: targetModules[${i}]: '${m}' is listed twice`);
  }
  // Canonical order, so that equal sets compare equal.
  const targetModules = LINEAR_MODULES.filter((m) => (targets as unknown[]).includes(m));

  return { steps: [...steps] as StepName[], rank, loraAlpha, alpha, promptRouting, targetModules };
}

/** Index of `step` in the config's steps (its expert), or −1 when the bundle has no such step. */
export function stepIndex(config: Pick<MoteConfig, 'steps'>, step: StepName | string): number {
  return (config.steps as readonly string[]).indexOf(step);
}

/** The step whose start token is `token`, or null. */
export function stepOfToken(token: string): StepName | null {
  for (const s of STEPS) if (STEP_TOKENS[s] === token) return s;
  return null;
}

/** The step whose end token is `token`, or null. */
export function stepOfEndToken(token: string): StepName | null {
  for (const s of STEPS) if (STEP_END_TOKENS[s] === token) return s;
  return null;
}

/** Every special token a bundle with these steps uses (start, end per step, in chain order). */
export function specialTokens(config: Pick<MoteConfig, 'steps'>): string[] {
  return config.steps.flatMap((s) => [STEP_TOKENS[s], STEP_END_TOKENS[s]]);
}
