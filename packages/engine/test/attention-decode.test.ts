// The fused decode attention (native/attention_decode.cc) against float64: RoPE (and Qwen3's per-head norms) on the
// new tokens, their keys and values written into the cache, and attention of each new token over the cache up to
// its own position. Both caches: pages read through block tables (pagedAttentionDecode) and each row's buffer
// (attentionDecode); one new token per row (a decode step) or three (a speculative verification). Long runs of
// keys take the kernel's blocks of a vector's lanes, short ones its tail. Run at every SIMD level the CPU has
// (vitest.config.ts).
import * as tc from '@tiny-llm/tensor-core';
import { seededTensor } from '@tiny-llm/tensor-core/testing';
import { expectGolden, float64 as f64 } from '@tiny-llm/grading';
import { blockTablesTensor } from '@tiny-llm/reference/week3';
import { describe, expect, it } from 'vitest';
import { engineKernels } from '../src/model/native.ts';

const [HQ, BASE, EPS, SCALE] = [6, 10000, 1e-6, 0.25];

interface Case {
  /** Each row's first new position; its tokens are positions[b] .. positions[b] + tokens - 1. */
  positions: number[];
  tokens: number;
  /** Each row's pages; the contiguous cache is one page of S tokens per row (tables [[0], [1], ...]). */
  tables: number[][];
  numPages: number;
  pageSize: number;
  headDim: number;
  norms: boolean;
  /** kv heads (default 2): 1 is a multi-query model, whose single row is one task per new token. */
  kvHeads?: number;
}

/**
 * Runs the kernel on seeded inputs and holds the cache and the output to float64. `run` gets the tensors and the
 * arguments both kernels end with (head counts, scale, the q and k norms or nulls, epsilon).
 */
function check(c: Case, run: (t: Record<string, tc.Tensor>, tail: unknown[]) => void): void {
  const { positions, tokens: l, tables, numPages, pageSize: p, headDim: d } = c;
  const b = positions.length;
  const HKV = c.kvHeads ?? 2;
  const [keys, values] = [seededTensor([numPages, HKV, p, d], 1), seededTensor([numPages, HKV, p, d], 2)];
  const before = [keys, values].map(f64.toND); // the cache as it was: the kernel writes into it
  const qkv = seededTensor([b, l, (HQ + 2 * HKV) * d], 3);
  const [qNorm, kNorm] = [seededTensor([d], 4), seededTensor([d], 5)];
  const rope = tc.fast.ropeTables(d, Math.max(128, ...positions.map((n) => n + l)), BASE);
  const out = tc.empty([b, l, HQ * d]);
  const norms = c.norms ? [qNorm.native(), kNorm.native()] : [null, null];
  run({ qkv, cos: rope.cos, sin: rope.sin, keys, values, out }, [HQ, HKV, SCALE, ...norms, EPS]);
  // float64: each token's heads (normalised), rotated at its position; its new key and value written into its slot.
  const heads = f64.toND(tc.reshape(qkv, [b * l, HQ + 2 * HKV, d]));
  const part = (from: number, n: number, norm: tc.Tensor | null) => {
    const slice = { shape: [b, l, n, d], data: new Float64Array(b * l * n * d) };
    for (let t = 0; t < b * l; t++)
      slice.data.set(heads.data.subarray((t * (HQ + 2 * HKV) + from) * d, (t * (HQ + 2 * HKV) + from + n) * d), t * n * d);
    return norm && c.norms ? f64.rmsNorm(slice, f64.toND(norm), EPS) : slice;
  };
  const turned = (x: f64.NDArray) => f64.rope(x, { base: BASE, traditional: false, offsets: positions });
  const [q, k, v] = [turned(part(0, HQ, qNorm)), turned(part(HQ, HKV, kNorm)), part(HQ + HKV, HKV, null)];
  positions.forEach((position, row) => {
    for (let t = 0; t < l; t++) {
      const page = tables[row][Math.floor((position + t) / p)];
      for (let g = 0; g < HKV; g++) {
        const slot = ((page * HKV + g) * p + ((position + t) % p)) * d;
        const from = ((row * l + t) * HKV + g) * d;
        before[0].data.set(k.data.subarray(from, from + d), slot);
        before[1].data.set(v.data.subarray(from, from + d), slot);
      }
    }
  });
  expectGolden(keys, before[0], { atol: 1e-5, what: 'the keys after the write', axes: ['page', 'g', 'slot', 'd'] });
  expectGolden(values, before[1], { atol: 0, what: 'the values after the write', axes: ['page', 'g', 'slot', 'd'] });
  // New token t of a row sees its cache and the new tokens 0 .. t: everything up to its own position.
  const expected = { shape: [b, l, HQ * d], data: new Float64Array(b * l * HQ * d) };
  for (let t = 0; t < l; t++) {
    const qt = { shape: [b, HQ, d], data: new Float64Array(b * HQ * d) };
    for (let row = 0; row < b; row++) qt.data.set(q.data.subarray((row * l + t) * HQ * d, (row * l + t + 1) * HQ * d), row * HQ * d);
    const lengths = positions.map((n) => n + t + 1);
    const attended = f64.pagedAttention(qt, before[0], before[1], tables, lengths, { scale: SCALE });
    for (let row = 0; row < b; row++) expected.data.set(attended.data.subarray(row * HQ * d, (row + 1) * HQ * d), (row * l + t) * HQ * d);
  }
  expectGolden(out, expected, { atol: 1e-5, what: 'the attention output', axes: ['b', 'l', 'hd'] });
}

const describeCase = (c: Case) =>
  `${c.tokens} new token${c.tokens > 1 ? 's' : ''} per row from ${c.positions.length > 4 ? `${Math.min(...c.positions)}..${Math.max(...c.positions)} (${c.positions.length} rows)` : c.positions.join(', ')}, head size ${c.headDim}${c.norms ? ', with per-head q and k norms (Qwen3)' : ''}${c.kvHeads === 1 ? ', one kv head' : ''}`;

/** `n` distinct pages of a pool of `pool`, in a scattered order. */
const scattered = (n: number, pool: number) => Array.from({ length: n }, (_, i) => (i * 7) % pool);

describe('pagedAttentionDecode: RoPE, the cache write and attention through block tables, in one call', () => {
  const shuffled = [[5], [2, 9, 0], [7, 1, 4, 8, 3]];
  const cases: Case[] = [
    { positions: [0, 20, 37], tokens: 1, tables: shuffled, numPages: 10, pageSize: 8, headDim: 16, norms: false },
    { positions: [0, 20, 37], tokens: 1, tables: shuffled, numPages: 10, pageSize: 8, headDim: 16, norms: true },
    { positions: [0, 20, 37], tokens: 3, tables: shuffled, numPages: 10, pageSize: 8, headDim: 16, norms: true },
    // Pages of 32: runs long enough for blocks of 16 keys, and a tail.
    { positions: [3, 45, 100], tokens: 3, tables: [[6], [2, 0], [1, 4, 7, 3]], numPages: 8, pageSize: 32, headDim: 64, norms: false },
    // One row of a multi-query model over a long cache: with 2 threads or more, fewer (row, token, kv head) tasks
    // than threads, so each one's rows are attended in parts and merged (1001 rows: 3 parts of 336 or fewer).
    { positions: [1000], tokens: 1, tables: [scattered(63, 64)], numPages: 64, pageSize: 16, headDim: 64, norms: false, kvHeads: 1 },
    { positions: [700], tokens: 1, tables: [scattered(44, 50)], numPages: 50, pageSize: 16, headDim: 64, norms: true },
    // A batch of 64 rows: at least 4 tokens a thread up to 16 threads, so each thread attends a token's two kv
    // heads in turn.
    {
      positions: Array.from({ length: 64 }, (_, b) => (b * 37) % 90),
      tokens: 1,
      tables: Array.from({ length: 64 }, (_, b) => [b, 64 + b, 128 + b, 192 + b, 256 + b, 320 + b].map((p) => (p * 7) % 384)),
      numPages: 384,
      pageSize: 16,
      headDim: 64,
      norms: false,
    },
  ];
  for (const c of cases) {
    it(`${describeCase(c)}, shuffled pages of ${c.pageSize}`, () => {
      check(c, (t, tail) =>
        engineKernels().pagedAttentionDecode(
          ...[
            t.qkv,
            t.cos,
            t.sin,
            tc.tensor(Int32Array.from(c.positions), { dtype: 'int32' }),
            t.keys,
            t.values,
            blockTablesTensor(c.tables),
            t.out,
          ].map((x) => x.native()),
          ...tail,
        ),
      );
    });
  }

  it('a block table entry outside the pool is an error naming the row, the block and the page', () => {
    const rope = tc.fast.ropeTables(8, 16);
    const call = (table: number[]) => () =>
      engineKernels().pagedAttentionDecode(
        ...[
          seededTensor([1, 1, 32], 1),
          rope.cos,
          rope.sin,
          tc.tensor([5], { dtype: 'int32' }),
          tc.zeros([2, 1, 4, 8]),
          tc.zeros([2, 1, 4, 8]),
          blockTablesTensor([table]),
          tc.empty([1, 1, 16]),
        ].map((t) => t.native()),
        2,
        1,
        0.5,
      );
    expect(call([0, 7])).toThrow(/row 0, block 1: page 7 is outside the pool's 2 pages/);
    expect(call([0])).toThrow(/row 0: position 5 is outside its block table/);
  });
});

describe("attentionDecode: the same on each row's own cache buffer", () => {
  // A row's buffer [Hkv, S, D] is the one page of S tokens that the float64 reference reads through table [row].
  for (const [rows, position, tokens, headDim, norms, kvHeads] of [
    [2, 0, 1, 16, false, 2],
    [2, 37, 1, 64, true, 2],
    [2, 40, 3, 64, false, 2],
    [2, 70, 5, 32, true, 2],
    [1, 1000, 1, 64, false, 1], // in parts, as the paged case of one kv head
  ] as const) {
    const [positions, tables] = [Array(rows).fill(position), Array.from({ length: rows }, (_, i) => [i])];
    const pageSize = Math.max(80, position + tokens);
    const c: Case = { positions, tokens, tables, numPages: rows, pageSize, headDim, norms, kvHeads };
    it(`${rows} row${rows > 1 ? 's' : ''}, ${describeCase(c)}`, () => {
      check(c, (t, tail) =>
        engineKernels().attentionDecode(
          ...[t.qkv, t.cos, t.sin].map((x) => x.native()),
          position,
          t.keys.native(),
          t.values.native(),
          t.out.native(),
          ...tail,
        ),
      );
    });
  }

  it('new tokens past the cache buffer are an error, before anything is written', () => {
    const rope = tc.fast.ropeTables(8, 16);
    const keys = tc.zeros([1, 1, 4, 8]);
    expect(() =>
      engineKernels().attentionDecode(
        ...[seededTensor([1, 2, 32], 1), rope.cos, rope.sin].map((t) => t.native()),
        3,
        keys.native(),
        tc.zeros([1, 1, 4, 8]).native(),
        tc.empty([1, 2, 16]).native(),
        2,
        1,
        0.5,
      ),
    ).toThrow(/attentionDecode: the new tokens' positions are outside the cache or the RoPE tables/);
    expect(
      Array.from(keys.toArray()).every((x) => x === 0),
      'the cache is untouched',
    ).toBe(true);
  });
});
