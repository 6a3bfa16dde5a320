// Chat templates come from downloaded model folders, so rendering one is running a program
// somebody else wrote. @huggingface/jinja has no limits of its own: `range(1000000000)`
// builds a billion-element array and kills the process, nested loops run for ever. This
// module renders a template through a subclass of the library's Interpreter that keeps a
// budget, in-process and without Node-only APIs (the package is meant to run in browsers):
//
// - steps: every evaluate() call (each expression and statement) counts one; loops and
//   recursion cannot run past the step budget, and every 1024 steps the wall clock is checked;
// - depth: nested evaluate() calls (macro recursion) are capped well below the JS stack;
// - size: every value an expression produces is measured (strings by length, lists and dicts
//   by the text they would print as, shared references counted each time they would print) and
//   refused past the size budget, so growth by loops that append is stopped;
// - amplifiers: the few operations that make a large value out of small ones in one call
//   (range, str.replace / |replace, str.split, |indent, |join, |tojson(indent), `*`) are
//   checked against the budget before they run, so no single call allocates past it.
//
// A template that hits a limit fails with a FormatError naming the file it came from.

import { Template, Environment, Interpreter } from '@huggingface/jinja';
import { ArgumentError, FormatError, MoteError } from '../errors.js';

/** Budgets for one render; the defaults scale with the size of the input. */
export interface TemplateLimits {
  /** evaluate() calls. */
  maxSteps: number;
  /** Nested evaluate() calls. */
  maxDepth: number;
  /** Characters in any one value, the output included. */
  maxChars: number;
  /** Elements of any one list (range() included). */
  maxItems: number;
  /** Wall-clock milliseconds. */
  maxMillis: number;
}

/** Templates longer than this are refused before parsing (real ones are a few kB). */
export const MAX_TEMPLATE_CHARS = 1 << 20;

/** Default budgets for rendering over inputs of `inputChars` characters and `items` messages. */
export function defaultTemplateLimits(inputChars: number, items: number): TemplateLimits {
  return {
    maxSteps: 2_000_000 + 2_000 * items,
    maxDepth: 400,
    maxChars: Math.max(4 << 20, 2 * inputChars + (1 << 16)),
    // the library spends ~10 µs and ~1 kB on each loop iteration before running its body: a loop over
    // this many items stays well inside the time budget
    maxItems: Math.max(1 << 14, 2 * items, inputChars),
    maxMillis: 1000,
  };
}

/** What the template's raise_exception() throws: it refuses the conversation it was given. */
class TemplateRaised extends Error {}

/** Raised inside the interpreter when a budget runs out; turned into a FormatError outside. */
class TemplateLimitError extends Error {}

// The library's runtime values, as far as this module looks at them (its classes are not exported).
interface RV {
  type: string;
  value: unknown;
}
type Node = { type: string; [k: string]: unknown };

const CONTAINERS = new Set(['ArrayValue', 'TupleValue', 'ObjectValue', 'KeywordArgumentsValue', 'NamespaceValue']);

function str(v: RV | undefined): string | null {
  return v?.type === 'StringValue' ? (v.value as string) : null;
}

function int(v: RV | undefined): number | null {
  return v?.type === 'IntegerValue' ? (v.value as number) : null;
}

/** Occurrences of `needle` in `s` (`needle` = '' matches between every character), stopping past `limit`. */
function occurrences(s: string, needle: string, limit: number): number {
  if (needle.length === 0) return s.length + 1;
  let n = 0;
  for (let i = s.indexOf(needle); i !== -1 && n <= limit; i = s.indexOf(needle, i + needle.length)) n++;
  return n;
}

class BoundedInterpreter extends Interpreter {
  private steps = 0;
  private depth = 0;
  private readonly deadline: number;
  // sizes of lists and dicts already measured; namespaces are mutable and never cached
  private readonly sizes = new WeakMap<object, number>();

  constructor(
    env: Environment,
    private readonly limits: TemplateLimits,
  ) {
    super(env);
    this.deadline = Date.now() + limits.maxMillis;
  }

  fail(what: string): never {
    throw new TemplateLimitError(what);
  }

  /**
   * An upper bound of the characters `v` prints as (str(), |string, |tojson with `indent`),
   * stopping once past maxChars. Shared sub-lists count once per reference, as they print.
   */
  textSize(v: RV, indent = 0): number {
    const cap = this.limits.maxChars;
    if (indent === 0 && this.sizes.has(v)) return this.sizes.get(v)!;
    let total = 0;
    let cacheable = true;
    const stack: [RV, number][] = [[v, 0]];
    while (stack.length > 0 && total <= cap) {
      const [x, d] = stack.pop()!;
      const pad = indent * (d + 1) + 2; // newline + indentation + separator
      if (x === null || typeof x !== 'object') total += 8;
      else if (x.type === 'StringValue') total += (x.value as string).length + 2;
      else if (!CONTAINERS.has(x.type))
        total += 32; // numbers, booleans, none, functions
      else {
        if (x.type === 'NamespaceValue') cacheable = false;
        const cached = indent === 0 && x !== v ? this.sizes.get(x) : undefined;
        if (cached !== undefined) {
          total += cached;
          continue;
        }
        total += 2 + indent * d;
        if (x.value instanceof Map) {
          for (const [k, c] of x.value as Map<string, RV>) {
            total += k.length + 4 + pad;
            stack.push([c, d + 1]);
          }
        } else {
          for (const c of x.value as RV[]) {
            total += pad;
            stack.push([c, d + 1]);
          }
        }
      }
    }
    if (indent === 0 && cacheable && total <= cap && v.type !== 'NamespaceValue') this.sizes.set(v, total);
    return total;
  }

  checkSize(chars: number, what: string): void {
    if (chars > this.limits.maxChars) this.fail(`${what} would be more than ${this.limits.maxChars} characters`);
  }

  checkItems(n: number, what: string): void {
    if (n > this.limits.maxItems) this.fail(`${what} would have more than ${this.limits.maxItems} elements`);
  }

  checkValue(r: RV): void {
    if (r.type === 'StringValue') this.checkSize((r.value as string).length, 'a string');
    else if (CONTAINERS.has(r.type)) {
      if (Array.isArray(r.value)) this.checkItems(r.value.length, 'a list');
      else if (r.value instanceof Map) this.checkItems(r.value.size, 'a dict');
      this.checkSize(this.textSize(r), 'a list or dict printed');
    }
  }

  /** Counts `n` steps of work against the budget. */
  charge(n: number): void {
    const before = this.steps;
    this.steps += n;
    if (this.steps > this.limits.maxSteps) this.fail(`more than ${this.limits.maxSteps} evaluation steps (a runaway loop?)`);
    if (before >> 10 !== this.steps >> 10 && Date.now() > this.deadline) this.fail(`rendering took more than ${this.limits.maxMillis} ms`);
  }

  evaluate(statement: unknown, environment: Environment): unknown {
    this.charge(1);
    if (++this.depth > this.limits.maxDepth) {
      this.depth--;
      this.fail(`nested more than ${this.limits.maxDepth} deep (runaway macro recursion?)`);
    }
    let r;
    try {
      if (statement !== undefined) this.precheck(statement as unknown as Node, environment);
      r = (super.evaluate as (s: unknown, e: Environment) => unknown).call(this, statement, environment);
    } finally {
      this.depth--;
    }
    this.checkValue(r as unknown as RV);
    return r;
  }

  /** Operand values of an operation about to run (evaluated once more; template expressions have no side effects). */
  private ev(node: unknown, env: Environment): RV {
    return this.evaluate(node, env) as RV;
  }

  private args(nodes: unknown, env: Environment): [RV[], Map<string, RV>] {
    const f = (this as unknown as { evaluateArguments(a: unknown, e: Environment): [RV[], Map<string, RV>] }).evaluateArguments;
    return f.call(this, nodes, env);
  }

  /** Bounds the operations that build a large value from small operands in one call. */
  private precheck(node: Node, env: Environment): void {
    if (node.type === 'For') {
      // an iteration with an empty body evaluates nothing, so the loop is charged up front
      const it = node.iterable as Node;
      const v = this.ev(it.type === 'SelectExpression' ? it.lhs : it, env);
      this.charge(Array.isArray(v.value) ? v.value.length : v.value instanceof Map ? v.value.size : 0);
    } else if (node.type === 'BinaryExpression' && (node.operator as { value: string }).value === '*') {
      const l = this.ev(node.left, env);
      const r = this.ev(node.right, env);
      const times = int(l) ?? int(r);
      const other = int(l) === null ? l : r;
      if (times !== null && times > 0) {
        if (other.type === 'StringValue') this.checkSize((other.value as string).length * times, 'a repeated string');
        if (Array.isArray(other.value)) this.checkItems(other.value.length * times, 'a repeated list');
      }
    } else if (node.type === 'CallExpression') {
      const callee = node.callee as Node;
      if (callee.type === 'MemberExpression' && !callee.computed) {
        const name = (callee.property as { value: unknown }).value;
        if (name !== 'replace' && name !== 'split') return;
        const s = str(this.ev(callee.object, env));
        if (s === null) return;
        const [a, kw] = this.args(node.args, env);
        if (name === 'replace') this.checkReplace(s, a, kw);
        else this.checkSplit(s, a, kw);
      }
    } else if (node.type === 'FilterExpression') {
      const filter = node.filter as Node;
      if (filter.type !== 'CallExpression') return;
      const name = (filter.callee as { value: unknown }).value;
      if (name !== 'indent' && name !== 'replace' && name !== 'join' && name !== 'tojson') return;
      const operand = this.ev(node.operand, env);
      const [a, kw] = this.args(filter.args, env);
      const s = str(operand);
      if (name === 'indent' && s !== null) {
        const width = int(a[0] ?? kw.get('width')) ?? 4;
        this.checkSize(s.length + occurrences(s, '\n', this.limits.maxChars) * Math.max(width, 0) + width, 'an indented string');
      } else if (name === 'replace' && s !== null) this.checkReplace(s, a, kw);
      else if (name === 'join' && Array.isArray(operand.value)) {
        const sep = str(a[0] ?? kw.get('d')) ?? '';
        this.checkSize(this.textSize(operand) + operand.value.length * sep.length, 'a joined string');
      } else if (name === 'tojson') {
        const indent = int(a[0] ?? kw.get('indent')) ?? 0;
        this.checkSize(this.textSize(operand, Math.max(indent, 0)), 'a tojson string');
      }
    }
  }

  private checkReplace(s: string, a: RV[], kw: Map<string, RV>): void {
    const from = str(a[0]);
    const to = str(a[1]);
    if (from === null || to === null || to.length <= from.length) return;
    const count = int(a[2] ?? kw.get('count'));
    let n = occurrences(s, from, this.limits.maxChars);
    if (count !== null && count >= 0) n = Math.min(n, count);
    this.checkSize(s.length + n * (to.length - from.length), 'a replaced string');
  }

  private checkSplit(s: string, a: RV[], kw: Map<string, RV>): void {
    const sep = str(a[0] ?? kw.get('sep'));
    const n = sep === null ? (s.match(/\S+/g)?.length ?? 0) : sep.length === 0 ? 0 : occurrences(s, sep, this.limits.maxItems) + 1;
    this.checkItems(n, 'a split string');
  }
}

function strftimeNow(format: unknown): string {
  const d = new Date();
  const pad2 = (n: number) => (n < 10 ? '0' : '') + n;
  return String(format).replace(/%[YmdbBHM%]/g, (t) => {
    switch (t) {
      case '%Y':
        return String(d.getFullYear());
      case '%m':
        return pad2(d.getMonth() + 1);
      case '%d':
        return pad2(d.getDate());
      case '%b':
        return new Intl.DateTimeFormat(undefined, { month: 'short' }).format(d);
      case '%B':
        return new Intl.DateTimeFormat(undefined, { month: 'long' }).format(d);
      case '%H':
        return pad2(d.getHours());
      case '%M':
        return pad2(d.getMinutes());
      default:
        return '%';
    }
  });
}

/** A parsed chat template that renders within limits. `origin` names its file (and field) in errors. */
export class BoundedTemplate {
  private readonly template: Template;

  /** Throws FormatError naming `origin` when the template is too long or does not parse. */
  constructor(
    readonly source: string,
    readonly origin: string,
  ) {
    if (source.length > MAX_TEMPLATE_CHARS)
      throw new FormatError(`${origin}: ${source.length} characters, more than the ${MAX_TEMPLATE_CHARS} a chat template may have`);
    try {
      this.template = new Template(source);
    } catch (e) {
      const msg = e instanceof RangeError ? 'nested too deeply' : (e as Error).message;
      throw new FormatError(`${origin}: chat template does not parse: ${msg}`);
    }
  }

  /**
   * Renders with `vars` (the globals of Template.render plus a bounded range()). A limit
   * reached is a FormatError naming the template's origin; an error the template raises
   * (raise_exception, a type error) is an ArgumentError: it rejected the input.
   */
  render(vars: Record<string, unknown>, limits: TemplateLimits): string {
    const env = new Environment();
    // the globals Template.render sets (its setupGlobals is not exported), range bounded
    env.set('false', false);
    env.set('true', true);
    env.set('none', null);
    env.set('False', false);
    env.set('True', true);
    env.set('None', null);
    env.set('raise_exception', (msg: unknown) => {
      throw new TemplateRaised(String(msg));
    });
    env.set('strftime_now', strftimeNow);
    env.set('range', (start: unknown, stop?: unknown, step: unknown = 1) => {
      if (stop === undefined) [start, stop] = [0, start];
      for (const x of [start, stop, step]) if (typeof x !== 'number' || !Number.isSafeInteger(x)) throw new Error('range() takes integers');
      const [a, b, s] = [start as number, stop as number, step as number];
      if (s === 0) throw new Error('range() step must not be zero');
      const n = Math.max(0, Math.ceil((b - a) / s));
      if (n > limits.maxItems) throw new TemplateLimitError(`range() of ${n} elements is more than the ${limits.maxItems} allowed`);
      return Array.from({ length: n }, (_, i) => a + i * s);
    });
    for (const [k, v] of Object.entries(vars)) env.set(k, v);
    const interpreter = new BoundedInterpreter(env, limits);
    let out: unknown;
    try {
      out = (interpreter as unknown as { run(p: unknown): RV }).run(this.template.parsed).value;
    } catch (e) {
      if (e instanceof MoteError) throw e;
      if (e instanceof TemplateLimitError) throw new FormatError(`${this.origin}: chat template stopped: ${e.message}`);
      if (e instanceof RangeError) throw new FormatError(`${this.origin}: chat template stopped: ${e.message}`);
      // raise_exception: the template refuses this conversation (the caller's input); any other
      // error is the template's own (a method or filter the engine lacks, a type error)
      if (e instanceof TemplateRaised)
        throw new ArgumentError(`applyChatTemplate: the chat template (${this.origin}) rejected the conversation: ${e.message}`);
      throw new FormatError(`${this.origin}: the chat template failed: ${(e as Error).message}`);
    }
    if (typeof out !== 'string') throw new FormatError(`${this.origin}: chat template rendered no text`);
    return out;
  }
}
