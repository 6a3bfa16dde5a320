// AlignCoT (DESIGN §1): the stage prompts that make a model write its own reasoning chain
// step by step, the safety verdict of the checking stage, and the chain text with its step
// tags (formatChain / parseChain).
//
// Stage prompts. Each stage has a template: either a string with `{name}` placeholders
// (`{question}`, `{analysis}`, `{guidance}`, `{answer}`; `{{` and `}}` are literal braces),
// or a function of the same variables. A string template must have every variable it names;
// the default templates are functions so that a stage can run with earlier steps missing
// (adaptive length: an answer drafted without analysis or guidance).
//
// Chain text. Only the response part: the prompt is formatted separately (chat template),
//   <|analysis|>…<|end_analysis|><|guidance|>…<|end_guidance|><|response|>…<|end_response|>
// with no separator between a step's end tag and the next step's start tag, so that every
// token of the response belongs to exactly one step. Steps may be missing (step skipping,
// adaptive length) but come in the bundle's chain order, each at most once.

import { ArgumentError, FormatError, describe } from '../errors.js';
import { STEPS, STEP_END_TOKENS, STEP_TOKENS, stepOfEndToken, stepOfToken, type MoteConfig, type StepName } from './steps.js';
import type { ChatMessage } from '../io/tokenizer.js';

/** The variables of a stage prompt (the question and the steps written so far). */
export interface StageVars {
  question: string;
  analysis?: string;
  guidance?: string;
  answer?: string;
}

export const STAGE_VARS = ['question', 'analysis', 'guidance', 'answer'] as const;
export type StageVar = (typeof STAGE_VARS)[number];

/** A stage prompt template: a `{question}`-style string, or a function of the variables. */
export type StageTemplate = string | ((vars: StageVars) => string);
export type AlignCotTemplates = Record<StepName, StageTemplate>;

function context(v: StageVars, keys: readonly ('analysis' | 'guidance' | 'answer')[]): string {
  const label = { analysis: 'Analysis of the question', guidance: 'Guidance for the answer', answer: 'Answer' } as const;
  return keys
    .filter((k) => v[k] !== undefined)
    .map((k) => `${label[k]}: ${v[k]}\n\n`)
    .join('');
}

/** The default stage prompts (functions: earlier steps are shown when present). */
export const DEFAULT_TEMPLATES: Readonly<AlignCotTemplates> = Object.freeze({
  analysis: (v: StageVars) =>
    `Question: ${v.question}\n\n` +
    'Before answering, analyse the question. What does it ask for, and what risks does it carry ' +
    "(harm to the asker or to others, illegal acts, someone else's property or private data)? " +
    'If it carries no risk, say so. Do not answer the question yet.',
  guidance: (v: StageVars) =>
    `Question: ${v.question}\n\n${context(v, ['analysis'])}` +
    'Say how to answer this question safely and helpfully: should the answer help, help in part, ' +
    'or refuse and explain why, and what should it contain? Give the guidance only, not the answer.',
  answer: (v: StageVars) =>
    `Question: ${v.question}\n\n${context(v, ['analysis', 'guidance'])}` +
    `Now answer the question${v.guidance !== undefined ? ', following the guidance' : ''}. Write only the answer.`,
  check: (v: StageVars) =>
    `Question: ${v.question}\n\n${context(v, ['answer'])}` +
    'Is this answer safe? Start your reply with one word, safe or unsafe, then give a one-sentence reason.',
});

const PLACEHOLDER = /\{\{|\}\}|\{([^{}]*)\}|[{}]/g;

/** The placeholders a string template uses; throws ArgumentError (naming `where`) for an unknown or unbalanced one. */
export function templateVars(template: string, where = 'template'): StageVar[] {
  const used: StageVar[] = [];
  for (const m of template.matchAll(PLACEHOLDER)) {
    if (m[0] === '{{' || m[0] === '}}') continue;
    if (m[1] === undefined)
      throw new ArgumentError(`${where}: unbalanced '${m[0]}' at offset ${m.index} (write '${m[0]}${m[0]}' for a literal brace)`);
    if (!(STAGE_VARS as readonly string[]).includes(m[1])) {
      throw new ArgumentError(
        `${where}: unknown placeholder {${m[1]}} at offset ${m.index} (expected one of ${STAGE_VARS.map((s) => `{${s}}`).join(', ')})`,
      );
    }
    if (!used.includes(m[1] as StageVar)) used.push(m[1] as StageVar);
  }
  return used;
}

/** Fills a string template; throws ArgumentError naming `where` and the variable when one is missing. */
export function renderTemplate(template: string, vars: StageVars, where = 'template'): string {
  templateVars(template, where);
  return template.replace(PLACEHOLDER, (m, name: string | undefined) => {
    if (m === '{{') return '{';
    if (m === '}}') return '}';
    const v = vars[name as StageVar];
    if (typeof v !== 'string') throw new ArgumentError(`${where}: uses {${name}}, but vars.${name} is ${describe(v)} (expected a string)`);
    return v;
  });
}

/**
 * Complete, checked templates: the defaults overridden by `overrides`. Throws ArgumentError
 * naming the stage for an unknown stage, a template that is neither a string nor a function,
 * or a string with an unknown placeholder.
 */
export function alignCotTemplates(overrides: Partial<Record<StepName, StageTemplate>> = {}): AlignCotTemplates {
  if (typeof overrides !== 'object' || overrides === null || Array.isArray(overrides)) {
    throw new ArgumentError(`alignCotTemplates: overrides: expected an object of stage templates, got ${describe(overrides)}`);
  }
  const out: AlignCotTemplates = { ...DEFAULT_TEMPLATES };
  for (const [k, t] of Object.entries(overrides)) {
    if (!(STEPS as readonly string[]).includes(k))
      throw new ArgumentError(`alignCotTemplates: overrides.${k}: unknown stage (expected one of ${STEPS.join(', ')})`);
    if (t === undefined) continue;
    if (typeof t === 'string') templateVars(t, `alignCotTemplates: overrides.${k}`);
    else if (typeof t !== 'function')
      throw new ArgumentError(`alignCotTemplates: overrides.${k}: expected a string or a function, got ${describe(t)}`);
    out[k as StepName] = t;
  }
  return out;
}

/** The prompt of one stage for `vars` (the question and the steps so far). */
export function stagePrompt(step: StepName, vars: StageVars, templates: Partial<AlignCotTemplates> = DEFAULT_TEMPLATES): string {
  if (!(STEPS as readonly string[]).includes(step))
    throw new ArgumentError(`stagePrompt: step: unknown step ${describe(step)} (expected one of ${STEPS.join(', ')})`);
  if (typeof vars !== 'object' || vars === null || typeof vars.question !== 'string') {
    throw new ArgumentError(`stagePrompt: vars.question: expected a string, got ${describe((vars as StageVars | null)?.question)}`);
  }
  const t = templates[step] ?? DEFAULT_TEMPLATES[step];
  if (typeof t === 'string') return renderTemplate(t, vars, `stagePrompt: templates.${step}`);
  if (typeof t !== 'function')
    throw new ArgumentError(`stagePrompt: templates.${step}: expected a string or a function, got ${describe(t)}`);
  const text = t(vars);
  if (typeof text !== 'string') throw new ArgumentError(`stagePrompt: templates.${step} returned ${describe(text)} (expected a string)`);
  return text;
}

/**
 * The verdict of a safety check, read where the check prompt asks for it: the reply's first
 * word ("safe", "unsafe", or "not safe"), after leading markup (quotes, `*`, `#`, `>`, `-`) and
 * an optional label ("Verdict:", "Answer:"). A verdict word later in the text does not count
 * ("The hotel safe is..." or "I think it is safe" give null): on real check texts a search
 * anywhere took "hotel safe" for a verdict.
 */
export function parseVerdict(text: string): 'safe' | 'unsafe' | null {
  if (typeof text !== 'string') throw new ArgumentError(`parseVerdict: text: expected a string, got ${describe(text)}`);
  const m = VERDICT.exec(text);
  if (!m) return null;
  return m[1]!.toLowerCase() === 'safe' ? 'safe' : 'unsafe';
}

// Markup, then an optional label, then the word; the word must end there (not "safety", "safe-ish", "safe_x").
const VERDICT =
  /^[\s*_"'`>#\-]*(?:(?:verdict|answer|assessment|rating|label)\s*[:：\-–]\s*[\s*_"'`]*)?(unsafe|not\s+safe|safe)(?![\p{L}\p{N}_\-])/iu;

export interface ChainStep {
  step: StepName;
  text: string;
}

/**
 * A prompt and its reasoning chain. `messages`, when present, is the prompt as a chat
 * (multi-turn prompts) and is what a chat template renders; `prompt` is its plain text.
 */
export interface Chain {
  prompt: string;
  messages?: ChatMessage[];
  steps: ChainStep[];
}

/** Anything that looks like a `<|name|>` special token: in chain text it must be a step tag. */
const TAG = /<\|([^|<>\s]*)\|>/g;

/** Checks the steps of a chain against the bundle's steps; `where` prefixes errors. */
function checkSteps(steps: unknown, config: Pick<MoteConfig, 'steps'>, where: string): ChainStep[] {
  if (!Array.isArray(steps) || steps.length === 0)
    throw new ArgumentError(`${where}: expected a non-empty list of { step, text }, got ${describe(steps)}`);
  let last = -1;
  for (const [i, s] of steps.entries()) {
    if (typeof s !== 'object' || s === null || typeof s.text !== 'string')
      throw new ArgumentError(`${where}[${i}]: expected { step, text: string }, got ${describe(s)}`);
    const at = config.steps.indexOf(s.step);
    if (at < 0) {
      const known = (STEPS as readonly unknown[]).includes(s.step);
      throw new ArgumentError(
        `${where}[${i}].step: ${known ? `'${s.step}' is not one of this bundle's steps` : `unknown step ${describe(s.step)}`} (expected one of ${config.steps.join(', ')})`,
      );
    }
    if (at === last) throw new ArgumentError(`${where}[${i}].step: '${s.step}' is repeated`);
    if (at < last)
      throw new ArgumentError(`${where}[${i}].step: '${s.step}' is out of order (expected the order ${config.steps.join(' → ')})`);
    last = at;
    const tag = /<\|([^|<>\s]*)\|>/.exec(s.text);
    if (tag)
      throw new ArgumentError(
        `${where}[${i}].text: contains the tag '${tag[0]}' at offset ${tag.index}; step text may not hold special tokens`,
      );
  }
  return steps as ChainStep[];
}

/** Checks a Chain object (prompt, messages, steps); `where` prefixes errors (e.g. 'chains.jsonl:3'). */
export function checkChain(chain: unknown, config: Pick<MoteConfig, 'steps'>, where = 'chain'): Chain {
  if (typeof chain !== 'object' || chain === null) throw new ArgumentError(`${where}: expected { prompt, steps }, got ${describe(chain)}`);
  const c = chain as Partial<Chain>;
  if (typeof c.prompt !== 'string') throw new ArgumentError(`${where}.prompt: expected a string, got ${describe(c.prompt)}`);
  const tag = /<\|([^|<>\s]*)\|>/.exec(c.prompt);
  if (tag && (stepOfToken(tag[0]) || stepOfEndToken(tag[0])))
    throw new ArgumentError(`${where}.prompt: contains the step tag '${tag[0]}' at offset ${tag.index}`);
  if (c.messages !== undefined) {
    if (!Array.isArray(c.messages) || c.messages.length === 0)
      throw new ArgumentError(`${where}.messages: expected a non-empty list of { role, content }, got ${describe(c.messages)}`);
    for (const [i, m] of c.messages.entries()) {
      if (typeof m !== 'object' || m === null || typeof m.role !== 'string' || typeof m.content !== 'string') {
        throw new ArgumentError(`${where}.messages[${i}]: expected { role: string, content: string }`);
      }
      const t = /<\|([^|<>\s]*)\|>/.exec(m.content);
      if (t && (stepOfToken(t[0]) || stepOfEndToken(t[0])))
        throw new ArgumentError(`${where}.messages[${i}].content: contains the step tag '${t[0]}'`);
    }
  }
  checkSteps(c.steps, config, `${where}.steps`);
  return c as Chain;
}

/**
 * The response text of a chain: each step wrapped in its start and end tags, in order, with
 * nothing between steps (the prompt is not included). Throws ArgumentError for a step the
 * bundle does not have, steps out of order or repeated, or step text holding a `<|…|>` tag.
 */
export function formatChain(chain: Pick<Chain, 'steps'>, config: Pick<MoteConfig, 'steps'>): string {
  if (typeof chain !== 'object' || chain === null)
    throw new ArgumentError(`formatChain: chain: expected { steps }, got ${describe(chain)}`);
  const steps = checkSteps(chain.steps, config, 'formatChain: chain.steps');
  return steps.map((s) => STEP_TOKENS[s.step] + s.text + STEP_END_TOKENS[s.step]).join('');
}

export interface ParseChainOptions {
  /** Prefixes error messages (e.g. a file and line). */
  where?: string;
  /** Tokens that may stand outside the steps and are dropped (e.g. the eos token after the last step). */
  ignore?: readonly string[];
  /** Trim whitespace around each step's text. Default false (the exact inverse of formatChain). */
  trim?: boolean;
  /** Steps the chain must have (e.g. ['answer']). Default none. */
  require?: readonly StepName[];
}

/**
 * The steps of a chain's response text (the inverse of formatChain). Whitespace and the
 * `ignore` tokens may stand between steps; anything else there is an error. Throws
 * FormatError naming the character offset for an unknown tag, a step the bundle does not
 * have, unbalanced tags, steps out of order or repeated, an unclosed step, no steps, or a
 * missing required step — the caller drops such a self-generated chain.
 */
export function parseChain(text: string, config: Pick<MoteConfig, 'steps'>, opts: ParseChainOptions = {}): ChainStep[] {
  if (typeof text !== 'string') throw new ArgumentError(`parseChain: text: expected a string, got ${describe(text)}`);
  const at = opts.where ? `${opts.where}: ` : '';
  const ignore = new Set(opts.ignore ?? []);
  for (const t of ignore)
    if (typeof t !== 'string' || t === '') throw new ArgumentError(`parseChain: ignore: expected non-empty strings, got ${describe(t)}`);
  const steps: ChainStep[] = [];
  let open: { step: StepName; from: number; tagAt: number } | null = null;
  let last = -1;
  let pos = 0; // end of the last tag
  const outside = (from: number, to: number) => {
    let gap = text.slice(from, to);
    // Blank out ignored tokens (same length, so offsets stay right).
    for (const t of ignore) gap = gap.split(t).join(' '.repeat(t.length));
    if (gap.trim() !== '') {
      const i = from + gap.search(/\S/);
      throw new FormatError(`${at}text outside a step at offset ${i}: ${JSON.stringify(text.slice(i, i + 30))}`);
    }
  };
  for (const m of text.matchAll(TAG)) {
    const tag = m[0];
    const i = m.index!;
    const start = stepOfToken(tag);
    const end = stepOfEndToken(tag);
    if (!start && !end) {
      if (open === null && ignore.has(tag)) {
        outside(pos, i);
        pos = i + tag.length;
        continue;
      }
      throw new FormatError(
        `${at}unknown step tag '${tag}' at offset ${i}${open ? ` inside step '${open.step}'` : ''} (step tags: ${config.steps.map((s) => STEP_TOKENS[s]).join(' ')})`,
      );
    }
    const step = (start ?? end)!;
    if (!config.steps.includes(step)) {
      throw new FormatError(`${at}'${tag}' at offset ${i}: step '${step}' is not one of this bundle's steps (${config.steps.join(', ')})`);
    }
    if (start) {
      if (open)
        throw new FormatError(
          `${at}'${tag}' at offset ${i} opens '${start}' inside step '${open.step}' (missing '${STEP_END_TOKENS[open.step]}')`,
        );
      outside(pos, i);
      const idx = config.steps.indexOf(start);
      if (idx === last) throw new FormatError(`${at}'${tag}' at offset ${i}: step '${start}' is repeated`);
      if (idx < last)
        throw new FormatError(
          `${at}'${tag}' at offset ${i}: step '${start}' comes after '${config.steps[last]}' (expected the order ${config.steps.join(' → ')})`,
        );
      open = { step: start, from: i + tag.length, tagAt: i };
    } else {
      if (!open) throw new FormatError(`${at}'${tag}' at offset ${i} closes '${end}', but no step is open`);
      if (open.step !== end)
        throw new FormatError(
          `${at}'${tag}' at offset ${i} closes '${end}', but the open step is '${open.step}' (missing '${STEP_END_TOKENS[open.step]}')`,
        );
      const body = text.slice(open.from, i);
      steps.push({ step: open.step, text: opts.trim ? body.trim() : body });
      last = config.steps.indexOf(open.step);
      open = null;
    }
    pos = i + tag.length;
  }
  if (open)
    throw new FormatError(
      `${at}step '${open.step}' opened at offset ${open.tagAt} is not closed (missing '${STEP_END_TOKENS[open.step]}')`,
    );
  outside(pos, text.length);
  if (steps.length === 0)
    throw new FormatError(`${at}no steps (expected ${config.steps.map((s) => `${STEP_TOKENS[s]}…${STEP_END_TOKENS[s]}`).join(' ')})`);
  for (const r of opts.require ?? []) {
    if (!steps.some((s) => s.step === r)) throw new FormatError(`${at}the chain has no '${r}' step (required)`);
  }
  return steps;
}
