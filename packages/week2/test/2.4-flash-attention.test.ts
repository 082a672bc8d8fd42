// Chapter 2.4, graded: flash attention (native/flash_attention.cc, through flashAttention) against every case
// of the golden fixture (fixtures/ops/flash_attention: PyTorch, float64; float32 and bfloat16 inputs), against
// float64 references for masks, grouping and odd sizes, and in memory: a long attention must never hold an
// L x S score matrix.
import * as tc from '@tiny-llm/tensor-core';
import { goldenOp, seeded, seededTensor } from '@tiny-llm/tensor-core/testing';
import { expectGolden, expectRelativeError, float64 as f64, gqaMistakes } from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import { flashAttention } from '@solution/week2';

const AXES = ['b', 'h', 'l', 'd'];
describe('2.4 flash attention: the golden fixture', () => {
  const f = goldenOp('flash_attention');
  for (const c of f.cases) {
    const [q, k, v] = ['q', 'k', 'v'].map((name) => f.get(c, name));
    const mask = c.mask === 'tensor' ? f.get(c, 'mask') : ('causal' as const);
    const title = `${c.name}: q ${q.describe()}, k ${k.describe()}, ${c.mask === 'tensor' ? 'an additive mask' : "'causal'"}`;
    it(title, () => {
      const out = flashAttention(q, k, v, { mask });
      const mistakes = gqaMistakes(f64.toND(q), f64.toND(k), f64.toND(v), undefined, mask === 'causal' ? 'causal' : f64.toND(mask));
      if (q.dtype === 'float32') expectGolden(out, f.get(c, 'out'), { atol: 1e-5, axes: AXES, mistakes });
      // bf16 inputs: the output is float32 from the bf16 values; the golden came from the float32 originals.
      else expectRelativeError(out, f.get(c, 'out'), { bound: 1e-2, mistakes });
    });
  }
});

describe('2.4 flash attention: against float64 attention', () => {
  const check = (q: tc.Tensor, k: tc.Tensor, v: tc.Tensor, options: { scale?: number; mask?: tc.Tensor | 'causal' }, what: string) => {
    const mask = options.mask === 'causal' ? ('bottom-right' as const) : options.mask && f64.toND(options.mask);
    const expected = f64.attention(f64.toND(q), f64.toND(k), f64.toND(v), { scale: options.scale, mask, kvHeadOf: f64.groupedHead });
    const mistakes = gqaMistakes(
      f64.toND(q),
      f64.toND(k),
      f64.toND(v),
      options.scale,
      options.mask === 'causal' ? 'causal' : (mask as f64.NDArray | undefined),
    );
    expectGolden(flashAttention(q, k, v, options), expected, { atol: 1e-5, what, axes: AXES, mistakes });
  };

  it('sizes that are not multiples of any tile: L = 37 queries after 63 cached keys, causal, 6 heads on 2', () => {
    check(
      seededTensor([2, 6, 37, 24], 1),
      seededTensor([2, 2, 100, 24], 2),
      seededTensor([2, 2, 100, 24], 3),
      { mask: 'causal' },
      'causal, L = 37, S = 100',
    );
  });

  it('one query (a decode step) over 300 keys, no mask, a scale of its own', () => {
    check(
      seededTensor([1, 4, 1, 32], 4),
      seededTensor([1, 1, 300, 32], 5),
      seededTensor([1, 1, 300, 32], 6),
      { scale: 0.3 },
      'L = 1, S = 300',
    );
  });

  it('an additive mask per head [B, Hq, L, S], and one broadcast from [L, S]', () => {
    const [q, k, v] = [seededTensor([1, 4, 20, 16], 7), seededTensor([1, 2, 70, 16], 8), seededTensor([1, 2, 70, 16], 9)];
    const perHead = tc.tensor(seeded(4 * 20 * 70, 10, 3), { shape: [1, 4, 20, 70] });
    check(q, k, v, { mask: perHead }, 'a mask per head');
    check(q, k, v, { mask: tc.slice(perHead, [0, 0]) }, 'a mask [L, S] for every head');
  });

  it('a query whose keys are all hidden gets 0, not NaN', () => {
    const [q, k, v] = [seededTensor([1, 1, 3, 8], 11), seededTensor([1, 1, 5, 8], 12), seededTensor([1, 1, 5, 8], 13)];
    const rows = [[0, 0, 0, 0, 0], new Array<number>(5).fill(-Infinity), [0, -Infinity, 0, -Infinity, 0]];
    const out = flashAttention(q, k, v, { mask: tc.tensor(rows, { dtype: 'float32' }) });
    const row1 = Array.from(tc.slice(out, [0, 0, 1]).toArray());
    expect(row1, 'row 1 sees no key: its output is 0 (l = 0), not 0 / 0 = NaN').toEqual(new Array<number>(8).fill(0));
  });
});

describe('2.4 flash attention: memory', () => {
  it('L = S = 4096, 8 heads of 64, causal: the peak of the call stays below one L x S score matrix', () => {
    const [l, h, d] = [4096, 8, 64];
    const [q, k, v] = [seededTensor([1, h, l, d], 14), seededTensor([1, h, l, d], 15), seededTensor([1, h, l, d], 16)];
    const scores = l * l * 4; // one head's float32 score matrix: 64 MB
    tc.cpu.resetPeak();
    const before = tc.cpu.memory().liveBytes;
    // The kernel's own C++ allocations are not tensors: the process's peak resident memory catches those.
    const rssBefore = process.resourceUsage().maxRSS * 1024;
    const out = flashAttention(q, k, v, { mask: 'causal' });
    const peak = tc.cpu.memory().peakBytes - before;
    const rssGrowth = process.resourceUsage().maxRSS * 1024 - rssBefore;
    expect(
      peak,
      `the call allocated ${(peak / 1e6).toFixed(1)} MB of tensors at its peak; a score matrix is ${scores / 1e6} MB`,
    ).toBeLessThan(scores);
    expect(
      rssGrowth,
      `the process's peak memory grew by ${(rssGrowth / 1e6).toFixed(1)} MB during the call; a score matrix is ${scores / 1e6} MB`,
    ).toBeLessThan(scores);
    // The last query sees every key: spot-check its row against float64 attention on that head.
    const last = (t: tc.Tensor) => f64.toND(tc.slice(t, [null, [0, 1], [l - 1, l]]));
    const expected = f64.attention(last(q), f64.toND(tc.slice(k, [null, [0, 1]])), f64.toND(tc.slice(v, [null, [0, 1]])));
    expectGolden(tc.slice(out, [null, [0, 1], [l - 1, l]]), expected, { atol: 1e-5, what: 'the last query of head 0', axes: AXES });
  });
});
