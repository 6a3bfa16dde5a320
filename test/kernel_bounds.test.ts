// Tampered routing, rank and layout contents (issue 10): cpu rejects them in its kernels, the
// GPU kernels would trust them. The op layer checks against the host copies kept when the
// tensors were built, so every backend throws the same MoteError before dispatch; and the WGSL
// kernels themselves clamp what they read, so a raw dispatch with bad contents still terminates.
import { after } from 'node:test';
import assert from 'node:assert/strict';
import { closeBackends, forEachBackend } from './helpers.js';
import { loraRouting, loraShrink, loraStack, loraWeightGrad, type LoraStack } from '../src/ops/lora.js';
import { attention, attentionLayout } from '../src/ops/attention.js';
import { ArgumentError } from '../src/errors.js';
import type { Backend } from '../src/backend/backend.js';

after(closeBackends);

const T = 4,
  K = 2,
  L = 3,
  R = 4,
  H = 8;

function setup(be: Backend) {
  const A = be.tensor(
    new Float32Array(L * R * H).map((_, i) => ((i % 7) - 3) / 8),
    [L, R, H],
  );
  const B = be.tensor(
    new Float32Array(L * H * R).map((_, i) => ((i % 5) - 2) / 8),
    [L, H, R],
  );
  const s = loraStack(A, B, { rank: [2, 4, 3] });
  const rt = loraRouting(be, [0, 2, 1, -1, 0, 1, 2, 2], { K, L });
  const x = be.tensor(
    new Float32Array(T * H).map((_, i) => (i % 3) - 1),
    [T, H],
  );
  return { A, B, s, rt, x };
}

/** The error the op throws, as class and message (the same on every backend). */
function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return `${(e as Error).constructor.name}: ${(e as Error).message}`;
  }
  return 'no error';
}

// expected errors: one list, compared across backends by running the same tampering on each
const expected = new Map<string, string>();
function same(name: string, got: string): void {
  assert.match(got, /^ArgumentError: /, `${name}: ${got}`);
  const prev = expected.get(name);
  if (prev === undefined) expected.set(name, got);
  else assert.equal(got, prev, `${name}: another backend threw a different error`);
}

forEachBackend('lora: tampered rank and routing throw the same ArgumentError before any kernel runs', async (be) => {
  const { s, rt, x } = setup(be);
  for (const strategy of ['bgmv', 'sgmv'] as const) {
    // a rank tensor loraStack() did not build (holds 99 > R; cpu's kernel would reject it, a GPU's would loop)
    const forged: LoraStack = { ...s, rank: be.tensor(new Int32Array([2, 99, 3]), [L], 'i32') };
    same(
      'forged rank',
      errorOf(() => loraShrink(x, forged, rt, { strategy })),
    );
    const negative: LoraStack = { ...s, rank: be.tensor(new Int32Array([2, -5, 3]), [L], 'i32') };
    same(
      'negative rank',
      errorOf(() => loraShrink(x, negative, rt, { strategy })),
    );
    // the host copy edited after the stack was built
    const edited: LoraStack = { ...s, ranks: Int32Array.from([2, 4, 9]) };
    same(
      'edited ranks',
      errorOf(() => loraShrink(x, edited, rt, { strategy })),
    );
    // a stack whose A has a smaller R than the ranks it was checked against
    const narrowA = be.tensor(new Float32Array(L * 2 * H), [L, 2, H]);
    const narrowB = be.tensor(new Float32Array(L * H * 2), [L, H, 2]);
    same(
      'rank past a new R',
      errorOf(() => loraShrink(x, { ...s, A: narrowA, B: narrowB }, rt, { strategy })),
    );
    narrowA.dispose();
    narrowB.dispose();
    forged.rank.dispose();
    negative.rank.dispose();
  }
  // routing tensors replaced after the routing was built: slots out of [-1, L), segments inconsistent
  const cases: [string, 'slots' | 'order' | 'segStart' | 'segAdapter', Int32Array, number[]][] = [
    ['slots out of range', 'slots', new Int32Array([0, 7, 1, -1, 0, 1, 2, 2]), [T, K]],
    ['slots below -1', 'slots', new Int32Array([0, -9, 1, -1, 0, 1, 2, 2]), [T, K]],
    ['segStart inconsistent', 'segStart', new Int32Array([0, 1000, -3, 7]), [4]],
    ['order out of range', 'order', new Int32Array([0, 4, 99, 5, 1, 6, 7]), [7]],
    ['segAdapter out of range', 'segAdapter', new Int32Array([0, 1, 50]), [3]],
  ];
  for (const [name, field, data, shape] of cases) {
    const { rt: r2 } = { rt: loraRouting(be, [0, 2, 1, -1, 0, 1, 2, 2], { K, L }) };
    const bad = be.tensor(data, shape, 'i32');
    (r2 as unknown as Record<string, unknown>)[field] = bad;
    same(
      name,
      errorOf(() => loraShrink(x, s, r2, { strategy: 'sgmv' })),
    );
    const v = loraShrink(x, s, rt, { strategy: 'sgmv' });
    same(
      `${name} (weight grad)`,
      errorOf(() => loraWeightGrad(x, be.tensor(new Float32Array(T * H), [T, H]), v, v, s, r2)),
    );
    bad.dispose();
    v.dispose();
  }
  // the untampered call still runs
  const v = loraShrink(x, s, rt);
  assert.equal((await v.readFloat()).length, T * K * R);
});

forEachBackend('attention: tampered layout ids and counts throw the same ArgumentError', async (be) => {
  const q = be.tensor(new Float32Array(4 * 2 * 4).fill(0.5), [4, 2, 4]);
  const layout = attentionLayout(be, {
    qSeq: [0, 0, 0, 0],
    qPos: [0, 1, 2, 3],
    segments: { numSegments: 2, qSegment: [0, 0, 1, 1], blocked: [0, 0, 1, 0] },
  });
  const cases: [string, string, unknown][] = [
    ['qSeg out of range', 'qSeg', be.tensor(new Int32Array([0, 0, 9, -4]), [4], 'i32')],
    ['kSeg out of range', 'kSeg', be.tensor(new Int32Array([0, 0, 9, 1]), [4], 'i32')],
    ['qSeq past blocked', 'qSeq', be.tensor(new Int32Array([0, 0, 3, 0]), [4], 'i32')],
    ['S changed', 'S', 7],
    ['numSeqs changed', 'numSeqs', 40],
  ];
  for (const [name, field, value] of cases) {
    const l2 = attentionLayout(be, {
      qSeq: [0, 0, 0, 0],
      qPos: [0, 1, 2, 3],
      segments: { numSegments: 2, qSegment: [0, 0, 1, 1], blocked: [0, 0, 1, 0] },
    });
    Object.defineProperty(l2, field, { value, writable: true });
    same(
      `attention: ${name}`,
      errorOf(() => attention(q, q, q, l2)),
    );
    l2.dispose();
  }
  const { out } = attention(q, q, q, layout);
  assert.equal((await out.readFloat()).length, 4 * 2 * 4);
  layout.dispose();
});

forEachBackend(
  'webgpu lora kernels: a raw dispatch with ranks out of [1, R] and bad segments terminates and stays in its outputs',
  async (be) => {
    const { s, rt, x } = setup(be);
    const d = { T, K, L, R, Hin: H, Hout: H };
    const sentinel = be.tensor(new Float32Array(64).fill(7), [64]);
    for (const ranks of [
      [2, -1, 3],
      [2, 2 ** 30, 3],
      [-2147483648, 4, 2147483647],
    ]) {
      // bypasses the op layer: the backend kernels get the tampered rank tensor directly
      const bad: LoraStack = { ...s, rank: be.tensor(new Int32Array(ranks), [L], 'i32') };
      for (const strategy of ['bgmv', 'sgmv'] as const) {
        const v = be.zeros([T, K, R]);
        be.loraShrink(v, x, bad, rt, d, strategy);
        const y = be.zeros([T, H]);
        be.loraExpand(y, v, bad, rt, d, strategy);
        const vv = await v.readFloat(),
          yy = await y.readFloat();
        assert.ok(vv.every(Number.isFinite) && yy.every(Number.isFinite), `ranks ${ranks} ${strategy}: non-finite output`);
        v.dispose();
        y.dispose();
      }
      const v = be.zeros([T, K, R]);
      const dA = be.zeros([L, R, H]),
        dB = be.zeros([L, H, R]);
      be.loraWeightGrad(dA, dB, x, x, v, v, bad, rt, d, false);
      assert.ok((await dA.readFloat()).every(Number.isFinite));
      v.dispose();
      dA.dispose();
      dB.dispose();
      bad.rank.dispose();
    }
    // segment offsets that point far outside order: the weight-grad loops are clamped to order
    const r2 = loraRouting(be, [0, 2, 1, -1, 0, 1, 2, 2], { K, L });
    (r2 as unknown as Record<string, unknown>).segStart = be.tensor(new Int32Array([-2147483648, 2147483647, 5, 7]), [4], 'i32');
    const v = be.zeros([T, K, R]);
    const dA = be.zeros([L, R, H]),
      dB = be.zeros([L, H, R]);
    be.loraWeightGrad(dA, dB, x, x, v, v, s, r2, d, false);
    assert.ok((await dB.readFloat()).every(Number.isFinite));
    assert.deepEqual([...(await sentinel.readFloat())], new Array(64).fill(7), 'a tensor outside the outputs was written');
  },
  { kinds: ['webgpu'] },
);
