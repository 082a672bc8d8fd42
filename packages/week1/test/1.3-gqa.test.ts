// Chapter 1.3, graded: the bottom-right causal mask and grouped-query attention against the golden
// fixtures (computed in float64 by PyTorch, fixtures/ops/causal_mask and gqa).
import * as tc from '@tiny-llm/tensor-core';
import { goldenOp } from '@tiny-llm/tensor-core/testing';
import { causalMaskMistakes, expectGolden, float64 as f64, gqaMistakes } from '@tiny-llm/grading';
import { describe, it } from 'vitest';
import { causalMask, scaledDotProductAttentionGrouped } from '@solution/week1';

describe('1.3 gqa: causalMask (aligned to the bottom right)', () => {
  const f = goldenOp('causal_mask');
  for (const c of f.cases) {
    const [l, s] = [c.L as number, c.S as number];
    it(`${c.name}: L = ${l}, S = ${s}`, () => {
      // 0 and -Infinity exactly (atol 0): a finite stand-in like -1e9 is not what the fixture (or the engine) expects.
      expectGolden(causalMask(l, s), f.get(c, 'out'), { atol: 0, what: 'mask', axes: ['row', 'col'], mistakes: causalMaskMistakes(l, s) });
    });
  }
});

describe('1.3 gqa: scaledDotProductAttentionGrouped', () => {
  const f = goldenOp('gqa');
  type Case = (typeof f.cases)[number];
  const inputs = (c: Case) => ['q', 'k', 'v'].map((name) => f.get(c, name));
  const maskOf = (c: Case) => (c.mask === 'tensor' ? f.get(c, 'mask') : c.mask === 'causal' ? ('causal' as const) : undefined);
  const mistakesOf = (c: Case) => {
    const [q, k, v] = inputs(c).map(f64.toND);
    const mask = maskOf(c);
    return gqaMistakes(q, k, v, c.scale as number | undefined, mask instanceof tc.Tensor ? f64.toND(mask) : mask);
  };
  const AXES = ['b', 'h', 'l', 'd'];

  for (const c of f.cases) {
    const [q, k] = inputs(c);
    const heads = `${q.shape[q.ndim - 3]} query heads on ${k.shape[k.ndim - 3]} kv heads`;
    const sizes = `L = ${q.shape[q.ndim - 2]}, S = ${k.shape[k.ndim - 2]}`;
    const mask = c.mask === 'tensor' ? `a mask per head, scale ${c.scale}` : c.mask === 'causal' ? "'causal'" : 'no mask';
    it(`${c.name}: ${heads}, ${sizes}, ${mask}`, () => {
      const out = scaledDotProductAttentionGrouped(
        ...(inputs(c) as [tc.Tensor, tc.Tensor, tc.Tensor]),
        c.scale as number | undefined,
        maskOf(c),
      );
      expectGolden(out, f.get(c, 'out'), { axes: AXES, mistakes: mistakesOf(c) });
    });
  }

  it("passing causalMask(L, S) gives the golden of 'causal' too (4 queries after 6 cached keys)", () => {
    const c = f.cases.find((k) => k.name === 'causal4')!;
    const [q, k, v] = inputs(c);
    const explicit = scaledDotProductAttentionGrouped(q, k, v, undefined, causalMask(q.shape[2], k.shape[2]));
    expectGolden(explicit, f.get(c, 'out'), { axes: AXES, mistakes: mistakesOf(c) });
  });
});
