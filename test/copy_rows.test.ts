// copyRows / rowMap (src/ops/copy_rows.ts) on every backend against the float64 reference
// (src/reference/copy_rows.ts), plus in-place copies, reuse of a RowMap, bit patterns, and
// argument checking.
//
// A copy is exact: every output must equal the reference bit for bit (Object.is, so -0 and 0
// differ), beside the relative-error bound of DESIGN §5. Rows of dst that are not written keep
// their values; written rows are poisoned (NaN, or a sentinel for i32) before the run.
// Every case runs with every dtype on every backend: the WGSL kernel has 4 specialisations
// (copy32 / copy16, each with a _self twin), independent of the dtype, so webgpu compiles little.
// The cases cover the awkward 16-bit layouts: W = 1 (two rows share a u32 word) and odd W
// (rows start and end mid-word) with adjacent destination rows written by concurrent threads.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyRows, rowMap, RowMap } from '../src/ops/copy_rows.js';
import { copyRowsRef } from '../src/reference/copy_rows.js';
import { DTYPES, bf16BitsToF32, f16BitsToF32, type DType } from '../src/dtype.js';
import { ArgumentError, BackendMismatchError, DTypeError, DisposedTensorError, ShapeError } from '../src/errors.js';
import { openBackend } from '../src/backend/select.js';
import type { Backend } from '../src/backend/backend.js';
import type { Tensor } from '../src/tensor.js';
import { closeBackends, forEachBackend, randn, rng } from './helpers.js';
import { Pool, Report, throwsLike } from './case_helpers.js';

after(closeBackends);

// ---------------------------------------------------------------------------------------
// Data of every dtype: host values to upload, and the values a read() gives back

interface Data {
  /** what backend.tensor takes: Float32Array (f32), Int32Array (i32), Uint16Array bits (f16/bf16) */
  upload: Float32Array | Int32Array | Uint16Array;
  /** the decoded values (what Tensor.read returns) */
  values: Float64Array;
}

const decode16 = (dtype: DType, bits: number): number => (dtype === 'f16' ? f16BitsToF32(bits) : bf16BitsToF32(bits));
/** Exponent mask of a 16-bit dtype: all ones is inf/NaN. */
const EXP16: Partial<Record<DType, number>> = { f16: 0x7c00, bf16: 0x7f80 };
/** A NaN of each float dtype, for poisoning written rows; i32 gets a sentinel. */
const POISON16: Partial<Record<DType, number>> = { f16: 0x7e00, bf16: 0x7fc0 };
const I32_POISON = -123456789;

/** n random elements: finite floats (any 16-bit pattern but inf/NaN, -0 and subnormals included), any i32. */
function randomData(dtype: DType, n: number, r: () => number): Data {
  switch (dtype) {
    case 'f32': {
      const upload = randn(r, n);
      return { upload, values: Float64Array.from(upload) };
    }
    case 'i32': {
      const upload = Int32Array.from({ length: n }, () => Math.floor(r() * 2 ** 32) | 0);
      return { upload, values: Float64Array.from(upload) };
    }
    default: {
      const exp = EXP16[dtype]!;
      const upload = Uint16Array.from({ length: n }, () => {
        let b: number;
        do b = Math.floor(r() * 65536);
        while ((b & exp) === exp);
        return b;
      });
      return { upload, values: Float64Array.from(upload, (b) => decode16(dtype, b)) };
    }
  }
}

/** Sets rows of d to the poison of its dtype (the rows a copy must overwrite). */
function poisonRows(dtype: DType, d: Data, rows: ArrayLike<number>, W: number): void {
  for (let i = 0; i < rows.length; i++) {
    for (let w = 0; w < W; w++) {
      const k = rows[i]! * W + w;
      if (dtype === 'f32') d.upload[k] = NaN;
      else if (dtype === 'i32') d.upload[k] = I32_POISON;
      else d.upload[k] = POISON16[dtype]!;
      d.values[k] = dtype === 'i32' ? I32_POISON : NaN;
    }
  }
}

function exactly(rep: Report, what: string, out: ArrayLike<number>, want: ArrayLike<number>): void {
  if (out.length !== want.length) {
    rep.fails.push(`${what}: length ${out.length}, expected ${want.length}`);
    return;
  }
  for (let i = 0; i < out.length; i++) {
    if (!Object.is(out[i], want[i])) {
      rep.fails.push(`${what}: entry ${i} must be exactly ${want[i]}, got ${out[i]}`);
      return;
    }
  }
}

function shuffle(a: number[], r: () => number): number[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

// ---------------------------------------------------------------------------------------
// The case matrix

interface Case {
  name: string;
  /** rows of dst and src, row width */
  Rd: number;
  Rs: number;
  W: number;
  rows: (r: () => number) => { dst: number[]; src: number[] };
  /** tensor shapes when not [R, W] */
  dstShape?: number[];
  srcShape?: number[];
}

const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);

const CASES: Case[] = [
  { name: 'N=1 W=1 Rd=1 Rs=1', Rd: 1, Rs: 1, W: 1, rows: () => ({ dst: [0], src: [0] }) },
  // 16-bit: every u32 word holds two rows, written by different threads
  {
    name: 'N=8 W=1 Rd=9 Rs=5 adjacent rows share words, repeated src rows',
    Rd: 9,
    Rs: 5,
    W: 1,
    rows: (r) => ({ dst: shuffle(range(8, 1), r), src: range(8).map((i) => i % 5) }),
  },
  {
    name: 'N=13 W=37 Rd=20 Rs=16 odd W, adjacent rows, unsorted',
    Rd: 20,
    Rs: 16,
    W: 37,
    rows: (r) => ({ dst: shuffle(range(13, 3), r), src: range(13).map(() => Math.floor(r() * 16)) }),
  },
  { name: 'N=64 W=1024 Rd=200 Rs=64 decode append', Rd: 200, Rs: 64, W: 1024, rows: () => ({ dst: range(64, 101), src: range(64) }) },
  {
    name: 'N=30 W=2053 Rd=31 Rs=40 wide odd rows',
    Rd: 31,
    Rs: 40,
    W: 2053,
    rows: (r) => ({ dst: shuffle(range(31), r).slice(0, 30), src: shuffle(range(40), r).slice(0, 30) }),
  },
  {
    name: 'N=131 W=6 Rd=131 Rs=131 all rows reversed',
    Rd: 131,
    Rs: 131,
    W: 6,
    rows: () => ({ dst: range(131), src: range(131).reverse() }),
  },
  {
    name: 'N=5 W=15 dst [7, 3, 5] from src [6, 15]',
    Rd: 7,
    Rs: 6,
    W: 15,
    dstShape: [7, 3, 5],
    srcShape: [6, 15],
    rows: () => ({ dst: [6, 0, 3, 2, 5], src: [0, 5, 5, 1, 2] }),
  },
];

async function runCase(b: Backend, c: Case, dtype: DType, seed: number): Promise<void> {
  const r = rng(seed);
  const { Rd, Rs, W } = c;
  const { dst: dRows, src: sRows } = c.rows(r);
  const D = randomData(dtype, Rd * W, r),
    S = randomData(dtype, Rs * W, r);
  poisonRows(dtype, D, dRows, W);
  const ref = copyRowsRef(D.values, S.values, dRows, sRows, W);
  const finite = dtype !== 'i32'; // rel error on float values (i32 bit patterns are compared exactly)
  const p = new Pool(b);
  const rep = new Report(`copyRows ${c.name} ${dtype} on ${b.kind}`);
  const shapeD = c.dstShape ?? [Rd, W],
    shapeS = c.srcShape ?? [Rs, W];
  try {
    const src = p.keep(b.tensor(S.upload, shapeS, dtype));

    await rep.step('host rows', async () => {
      const dst = p.keep(b.tensor(D.upload, shapeD, dtype));
      assert.equal(copyRows(dst, src, Int32Array.from(dRows), sRows), undefined);
      const out = await dst.read();
      exactly(rep, 'dst', out, ref);
      if (finite) rep.close('dst', out, ref);
    });

    await rep.step('RowMap, reused for two tensors', async () => {
      const map = p.keep(rowMap(b, dRows, Int32Array.from(sRows)));
      assert.equal(map.N, dRows.length);
      const d1 = p.keep(b.tensor(D.upload, shapeD, dtype)),
        d2 = p.keep(b.tensor(D.upload, shapeD, dtype));
      copyRows(d1, src, map);
      copyRows(d2, src, map);
      exactly(rep, 'dst 1', await d1.read(), ref);
      exactly(rep, 'dst 2', await d2.read(), ref);
    });

    await rep.step('src untouched', async () => {
      exactly(rep, 'src after the copies', await src.read(), S.values);
    });
  } finally {
    p.dispose();
  }
  rep.done();
}

let seed = 300;
for (const c of CASES) {
  for (const dtype of DTYPES) {
    const s = seed++;
    forEachBackend(`copyRows ${c.name} ${dtype}`, (b) => runCase(b, c, dtype, s));
  }
}

// ---------------------------------------------------------------------------------------
// In place: dst and src the same tensor, or views of one storage (rows read ∩ rows written = ∅)

forEachBackend('copyRows in place: one tensor, views of one storage, a row onto itself', async (b) => {
  const r = rng(11);
  const p = new Pool(b);
  const rep = new Report(`copyRows in place on ${b.kind}`);
  try {
    // W = 37 (odd: the 16-bit copy16_self path), W = 10 (copy32_self), every dtype
    for (const W of [37, 10]) {
      for (const dtype of DTYPES) {
        const R = 12;
        const D = randomData(dtype, R * W, r);
        // rows 0..4 written from rows 6..11 (row 11 twice: reads may repeat); row 5 onto itself
        const dRows = [3, 0, 4, 1, 2, 5],
          sRows = [11, 6, 9, 11, 8, 5];
        const ref = copyRowsRef(D.values, D.values, dRows, sRows, W);
        await rep.step(`W=${W} ${dtype} same tensor`, async () => {
          const t = p.keep(b.tensor(D.upload, [R, W], dtype));
          copyRows(t, t, dRows, sRows);
          exactly(rep, `W=${W} ${dtype} same tensor`, await t.read(), ref);
        });
        await rep.step(`W=${W} ${dtype} views`, async () => {
          const t = p.keep(b.tensor(D.upload, [R * W], dtype));
          const v1 = p.keep(t.reshape([R, W])),
            v2 = p.keep(t.reshape([R, 1, W]));
          copyRows(v1, v2, p.keep(rowMap(b, dRows, sRows)));
          exactly(rep, `W=${W} ${dtype} views`, await t.read(), ref);
        });
      }
    }
  } finally {
    p.dispose();
  }
  rep.done();
});

// ---------------------------------------------------------------------------------------
// Bits: NaN payloads, -0, infinities, subnormals (f32) and extreme integers (i32) survive

forEachBackend('copyRows moves bits unchanged (NaN payloads, -0, inf, subnormals, i32 extremes)', async (b) => {
  const p = new Pool(b);
  try {
    const special = new Uint32Array([0x7fa00001, 0xffc12345, 0x80000000, 0x7f800000, 0xff800000, 0x00000001, 0x807fffff, 0x3f800000]);
    const W = special.length;
    const src = p.t(new Float32Array(special.buffer), [1, W]);
    const dst = p.t(new Float32Array(3 * W).fill(1.5), [3, W]);
    copyRows(dst, src, [1], [0]);
    const out = new Uint32Array((await dst.readFloat()).buffer);
    assert.deepEqual(
      [...out.subarray(W, 2 * W)].map((x) => x.toString(16)),
      [...special].map((x) => x.toString(16)),
      'f32 bits of the copied row',
    );
    const ones = new Uint32Array(new Float32Array([1.5]).buffer)[0]!;
    assert.ok(
      [...out.subarray(0, W), ...out.subarray(2 * W)].every((x) => x === ones),
      'other rows untouched',
    );

    const ints = Int32Array.from([-2147483648, 2147483647, -1, 0, 0x7fc00000, 12345]);
    const si = p.t(ints, [2, 3], 'i32'),
      di = p.t(new Int32Array(6), [2, 3], 'i32');
    copyRows(di, si, [1, 0], [0, 1]);
    assert.deepEqual([...(await di.read())], [0, 0x7fc00000, 12345, -2147483648, 2147483647, -1], 'i32 rows swapped');
  } finally {
    p.dispose();
  }
});

// ---------------------------------------------------------------------------------------
// Bad input: the right MoteError subclass, a message naming the argument, and no kernel run

forEachBackend('copyRows / rowMap reject bad input', async (b) => {
  const r = rng(13);
  const Rd = 5,
    Rs = 4,
    W = 3;
  const p = new Pool(b);
  let other: Backend | null = null;
  try {
    const dst = p.t(randn(r, Rd * W), [Rd, W]);
    const src = p.t(randn(r, Rs * W), [Rs, W]);
    const before = await dst.readFloat();

    // indices: out of range (the message names the index), negative, fractional, lengths, repeats
    throwsLike(
      () => copyRows(dst, src, [0, 5, 2], [0, 1, 2]),
      ArgumentError,
      /copyRows: dstRows\[1\]: expected a row of dst in \[0, 4\], got 5/,
      'dst row = Rd',
    );
    throwsLike(
      () => copyRows(dst, src, Int32Array.from([1, 2, 3, 4, 99]), [0, 0, 0, 0, 0]),
      ArgumentError,
      /copyRows: dstRows\[4\]: .*got 99/,
      'dst row > Rd',
    );
    throwsLike(
      () => copyRows(dst, src, [0, 1], [3, 4]),
      ArgumentError,
      /copyRows: srcRows\[1\]: expected a row of src in \[0, 3\], got 4/,
      'src row = Rs',
    );
    throwsLike(
      () => copyRows(dst, src, [0, -1], [0, 1]),
      ArgumentError,
      /copyRows: dstRows\[1\]: expected a row index \(an integer ≥ 0\), got -1/,
      'negative dst row',
    );
    throwsLike(() => copyRows(dst, src, [0], [0.5]), ArgumentError, /copyRows: srcRows\[0\]: .*got 0\.5/, 'fractional src row');
    throwsLike(
      () => copyRows(dst, src, [0, 1], [0]),
      ArgumentError,
      /copyRows: srcRows: expected 2 entries \(one per dstRows entry\), got 1/,
      'lengths differ',
    );
    throwsLike(
      () => copyRows(dst, src, [2, 0, 2], [0, 1, 2]),
      ArgumentError,
      /copyRows: dstRows\[2\]: row 2 is already written by dstRows\[0\]/,
      'repeated dst row',
    );
    throwsLike(
      () => copyRows(dst, src, null as unknown as number[], [0]),
      ArgumentError,
      /copyRows: dstRows: expected an Int32Array or number\[\]/,
      'dstRows null',
    );
    throwsLike(
      () => copyRows(dst, src, [0] as number[], undefined as unknown as number[]),
      ArgumentError,
      /copyRows: srcRows: expected an Int32Array/,
      'srcRows missing',
    );

    // tensors: dtype, row width, not a tensor, disposed, another backend
    const srcH = p.t(randn(r, Rs * W), [Rs, W], 'f16');
    throwsLike(
      () => copyRows(dst, srcH, [0], [0]),
      DTypeError,
      /copyRows: src: expected dtype f32 \(the dtype of dst\), got f16/,
      'dtype mismatch',
    );
    const src4 = p.t(randn(r, Rs * 4), [Rs, 4]);
    throwsLike(
      () => copyRows(dst, src4, [0], [0]),
      ShapeError,
      /copyRows: src: expected rows of 3 elements like dst \[5, 3\], got \[4, 4\]/,
      'row width',
    );
    throwsLike(
      () => copyRows([1, 2] as unknown as Tensor, src, [0], [0]),
      ArgumentError,
      /copyRows: dst: expected a Tensor/,
      'dst not a tensor',
    );
    const gone = p.t(randn(r, Rs * W), [Rs, W]);
    gone.dispose();
    throwsLike(() => copyRows(dst, gone, [0], [0]), DisposedTensorError, /copyRows: src\b/, 'disposed src');
    other = (await openBackend('cpu').catch(() => null)) ?? (await openBackend(b.kind));
    if (other) {
      const srcO = other.tensor(randn(r, Rs * W), [Rs, W]);
      throwsLike(
        () => copyRows(dst, srcO, [0], [0]),
        BackendMismatchError,
        /copyRows: src: expected a tensor on the .* backend/,
        'src of another backend',
      );
      const mapO = rowMap(other, [0], [0]);
      throwsLike(
        () => copyRows(dst, src, mapO),
        ArgumentError,
        /copyRows: rows: a RowMap made on another backend/,
        'RowMap of another backend',
      );
      mapO.dispose();
      srcO.dispose();
    }

    // a RowMap: bounds checked per call, disposed maps, stray srcRows
    const map = p.keep(rowMap(b, [4, 0], [3, 3]));
    const small = p.t(randn(r, 2 * W), [2, W]);
    throwsLike(
      () => copyRows(small, src, map),
      ArgumentError,
      /copyRows: dstRows\[0\]: expected a row of dst in \[0, 1\], got 4/,
      'map row out of a smaller dst',
    );
    throwsLike(
      () => copyRows(dst, small, map),
      ArgumentError,
      /copyRows: srcRows\[0\]: expected a row of src in \[0, 1\], got 3/,
      'map row out of a smaller src',
    );
    throwsLike(
      () => (copyRows as (...a: unknown[]) => void)(dst, src, map, [0]),
      ArgumentError,
      /copyRows: srcRows: not expected with a RowMap/,
      'srcRows beside a map',
    );
    const dead = rowMap(b, [0], [0]);
    dead.dispose();
    throwsLike(() => copyRows(dst, src, dead), DisposedTensorError, /copyRows: rows: the RowMap was used after dispose/, 'disposed map');
    throwsLike(
      () => rowMap(b, [0, 0], [1, 2]),
      ArgumentError,
      /rowMap: dstRows\[1\]: row 0 is already written by dstRows\[0\]/,
      'rowMap repeated dst row',
    );
    throwsLike(() => rowMap(b, [0], [-3]), ArgumentError, /rowMap: srcRows\[0\]: expected a row index/, 'rowMap negative src row');
    throwsLike(() => rowMap({} as Backend, [0], [0]), ArgumentError, /rowMap: backend: expected a Backend/, 'rowMap without a backend');
    assert.ok(map instanceof RowMap);

    // one storage: a row read while another pair writes it
    throwsLike(
      () => copyRows(dst, dst, [0, 1], [1, 2]),
      ArgumentError,
      /copyRows: srcRows\[0\]: row 1 is read while dstRows\[1\] writes it; dst and src share storage/,
      'overlap, same tensor',
    );
    const view = p.keep(dst.reshape([Rd, 1, W]));
    throwsLike(
      () => copyRows(view, dst, [3, 4], [4, 0]),
      ArgumentError,
      /copyRows: srcRows\[0\]: row 4 is read while dstRows\[1\] writes it/,
      'overlap, views',
    );

    // nothing ran: dst is as it was after all those rejected calls
    assert.deepEqual(await dst.readFloat(), before, 'a rejected call must not have run a kernel');

    // N = 0 is a no-op
    copyRows(dst, src, [], []);
    assert.deepEqual(await dst.readFloat(), before, 'an empty copy changes nothing');
  } finally {
    p.dispose();
    other?.destroy();
  }
});

test('case matrix: covers W = 1, odd W, adjacent destination rows, repeated sources, other shapes', () => {
  assert.ok(CASES.some((c) => c.W === 1 && c.Rd > 2));
  assert.ok(CASES.some((c) => c.W % 2 === 1 && c.W > 1));
  assert.ok(CASES.some((c) => c.dstShape || c.srcShape));
  const r = rng(1);
  assert.ok(
    CASES.some((c) => {
      const { src } = c.rows(r);
      return new Set(src).size < src.length;
    }),
  );
});
