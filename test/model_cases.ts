// The model code that works without files, shared by Node (kernel_cases.test.ts) and the
// browser page (browser.test.ts): a tiny random Llama made in memory (fixtures/tiny_model's
// makeTinyModel, no files) loaded with modelFromTensors, its logits against the float64
// reference, greedy generate, and a tokenizer built from its parsed JSON.
import type * as Web from '../src/web/index.js';
import type { Backend } from '../src/backend/backend.js';
import type { HostTensor } from '../src/io/safetensors.js';
import { makeTinyModel } from './fixtures/tiny_model.js';
import { tinyTokenizerConfig, tinyTokenizerJson } from './fixtures/tiny_tokenizer.js';
import { relErr } from './numeric.js';

export type ModelApi = Pick<typeof Web, 'modelFromTensors' | 'generate' | 'MoteTokenizer' | 'reference'>;

/** As test/llama.test.ts: a whole forward in f32 against float64. */
export const MODEL_TOL = 1e-4;

export interface ModelReport {
  failures: string[];
  logitsError: number;
  tokens: number[];
  decoded: string;
}

export async function runModelCase(m: ModelApi, b: Backend): Promise<ModelReport> {
  const failures: string[] = [];
  const tiny = makeTinyModel({
    family: 'llama',
    hidden: 32,
    intermediate: 40,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    vocab: 48,
    tied: false,
    dtype: 'f32',
    seed: 5,
  });
  const host = new Map<string, HostTensor>([...tiny.tensors].map(([n, t]) => [n, t as HostTensor]));
  const model = m.modelFromTensors(tiny.cfg, host, { backend: b });
  const prompt = [1, 5, 17, 30, 7];
  let logitsError = Infinity,
    tokens: number[] = [];
  try {
    const logits = await model.logits(prompt);
    const ref = m.reference.llamaForwardRef(tiny.cfg, tiny.weights, prompt).logits;
    logitsError = relErr(logits, ref);
    if (!(logitsError <= MODEL_TOL)) failures.push(`logits: relative error ${logitsError.toExponential(2)} > ${MODEL_TOL}`);
    const [res] = await m.generate(model, [{ prompt, maxNewTokens: 3 }]);
    tokens = res!.tokens;
    // greedy: the first token is the argmax of the prompt's last row
    const V = tiny.cfg.vocabSize,
      last = ref.subarray((prompt.length - 1) * V);
    const want = last.indexOf(Math.max(...last));
    if (tokens.length !== 3 || tokens[0] !== want)
      failures.push(`generate: tokens ${JSON.stringify(tokens)}, expected 3 starting with ${want}`);
  } finally {
    model.dispose();
  }
  let decoded = '';
  try {
    const tok = new m.MoteTokenizer(tinyTokenizerJson(), tinyTokenizerConfig());
    const ids = tok.encode('hello world');
    decoded = tok.decode(ids, { skipSpecialTokens: true });
    if (ids[0] !== 1 || decoded !== 'hello world')
      failures.push(`tokenizer: 'hello world' → ${JSON.stringify(ids)} → ${JSON.stringify(decoded)}`);
  } catch (e) {
    failures.push(`tokenizer: threw ${(e as Error)?.stack ?? e}`);
  }
  return { failures, logitsError, tokens, decoded };
}
