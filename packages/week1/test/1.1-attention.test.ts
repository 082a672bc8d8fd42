// Chapter 1.1, graded: softmax, linear, scaled dot-product attention and multi-head attention against the
// golden fixtures (computed in float64 by PyTorch, fixtures/ops).
import * as tc from '@tiny-llm/tensor-core';
import { expectClose, goldenOp } from '@tiny-llm/tensor-core/testing';
import { describe, it } from 'vitest';
import { linear, scaledDotProductAttentionSimple, SimpleMultiHeadAttention, softmax } from '@solution/week1';
import { expectGolden } from './support.ts';

describe('1.1 attention: softmax', () => {
  const f = goldenOp('softmax');
  for (const c of f.cases) {
    const title = c.name === 'stable' ? 'stable: inputs near 1000 (exp(1000) overflows float32)' : `${c.name}, axis ${c.axis}`;
    it(title, () => expectGolden(softmax(f.get(c, 'x'), c.axis as number), f.get(c, 'out')));
  }

  it('each row sums to 1', () => {
    const c = f.cases.find((k) => k.name === 'c2')!;
    const sums = tc.sum(softmax(f.get(c, 'x'), -1), -1).toArray();
    expectClose(sums, new Float32Array(sums.length).fill(1), 1e-5);
  });
});

describe('1.1 attention: linear (x @ w.T + b)', () => {
  const f = goldenOp('linear');
  for (const c of f.cases) {
    it(`${c.name} (${c.bias ? 'with' : 'without'} bias)`, () => {
      const bias = c.bias ? f.get(c, 'b') : undefined;
      expectGolden(linear(f.get(c, 'x'), f.get(c, 'w'), bias), f.get(c, 'out'));
    });
  }
});

describe('1.1 attention: scaledDotProductAttentionSimple', () => {
  const f = goldenOp('attention');
  for (const c of f.cases) {
    const shapes = `q ${tc.formatShape(f.get(c, 'q').shape)}, k ${tc.formatShape(f.get(c, 'k').shape)}`;
    const title = c.mask === 'tensor' ? `additive mask, scale ${c.scale}` : 'no mask, scale 1/sqrt(D)';
    it(`${c.name} (${title}; ${shapes})`, () => {
      const mask = c.mask === 'tensor' ? f.get(c, 'mask') : undefined;
      const [q, k, v] = ['q', 'k', 'v'].map((name) => f.get(c, name));
      expectGolden(scaledDotProductAttentionSimple(q, k, v, c.scale as number | undefined, mask), f.get(c, 'out'));
    });
  }
});

describe('1.1 attention: SimpleMultiHeadAttention (self-attention, query = key = value)', () => {
  const f = goldenOp('mha');
  for (const c of f.cases) {
    it(`${c.name} (${c.num_heads} heads)`, () => {
      const x = f.get(c, 'x');
      const hiddenSize = x.shape[2];
      const [wq, wk, wv, wo] = ['wq', 'wk', 'wv', 'wo'].map((name) => f.get(c, name));
      const mha = new SimpleMultiHeadAttention(hiddenSize, c.num_heads as number, wq, wk, wv, wo);
      expectGolden(mha.forward(x, x, x), f.get(c, 'out'));
    });
  }
});
