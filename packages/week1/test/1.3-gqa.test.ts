// Chapter 1.3, graded: the bottom-right causal mask and grouped-query attention against the golden
// fixtures (computed in float64 by PyTorch, fixtures/ops/causal_mask and gqa).
import * as tc from '@tiny-llm/tensor-core';
import { expectClose, goldenOp } from '@tiny-llm/tensor-core/testing';
import { describe, expect, it } from 'vitest';
import { causalMask, scaledDotProductAttentionGrouped } from '@solution/week1';
import { expectGolden } from './support.ts';

describe('1.3 gqa: causalMask (aligned to the bottom right)', () => {
  const f = goldenOp('causal_mask');
  for (const c of f.cases) {
    it(`${c.name}: L = ${c.L}, S = ${c.S}`, () => {
      const mask = causalMask(c.L as number, c.S as number);
      const shapes = `expected [L, S] = [${c.L}, ${c.S}], got ${tc.formatShape(mask.shape)}`;
      expect([...mask.shape], `mask shape: ${shapes}`).toEqual([c.L, c.S]);
      expect(mask.dtype, `the mask is float32, got ${mask.dtype}`).toBe('float32');
      // 0 and -Infinity exactly: a finite stand-in like -1e9 is not what the fixture (or the engine) expects.
      expectClose(mask.toArray(), f.get(c, 'out').toArray(), 0);
    });
  }
});

describe('1.3 gqa: scaledDotProductAttentionGrouped', () => {
  const f = goldenOp('gqa');
  for (const c of f.cases) {
    const q = f.get(c, 'q');
    const k = f.get(c, 'k');
    const heads = `${q.shape[q.ndim - 3]} query heads on ${k.shape[k.ndim - 3]} kv heads`;
    const sizes = `L = ${q.shape[q.ndim - 2]}, S = ${k.shape[k.ndim - 2]}`;
    const mask = c.mask === 'tensor' ? `a mask per head, scale ${c.scale}` : c.mask === 'causal' ? "'causal'" : 'no mask';
    it(`${c.name}: ${heads}, ${sizes}, ${mask}`, () => {
      const m = c.mask === 'tensor' ? f.get(c, 'mask') : c.mask === 'causal' ? 'causal' : undefined;
      const out = scaledDotProductAttentionGrouped(q, k, f.get(c, 'v'), c.scale as number | undefined, m);
      expectGolden(out, f.get(c, 'out'));
    });
  }

  it("'causal' is the same as passing causalMask(L, S)", () => {
    const c = f.cases.find((k) => k.name === 'causal4')!; // L = 4 queries after 6 cached keys
    const [q, k, v] = ['q', 'k', 'v'].map((name) => f.get(c, name));
    const named = scaledDotProductAttentionGrouped(q, k, v, undefined, 'causal');
    const explicit = scaledDotProductAttentionGrouped(q, k, v, undefined, causalMask(q.shape[2], k.shape[2]));
    expectClose(named.toArray(), explicit.toArray(), 1e-6);
  });
});
