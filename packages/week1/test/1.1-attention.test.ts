// Chapter 1.1, graded: softmax, linear, scaled dot-product attention and multi-head attention against the
// golden fixtures (computed in float64 by PyTorch, fixtures/ops), and multi-head attention with a mask and
// with keys of another length against float64 references computed here (@tiny-llm/grading's float64 loops).
import * as tc from '@tiny-llm/tensor-core';
import { goldenOp, seededTensor } from '@tiny-llm/tensor-core/testing';
import {
  attentionMistakes,
  expectGolden,
  float64 as f64,
  linearMistakes,
  multiHeadAttentionMistakes,
  softmaxMistakes,
} from '@tiny-llm/grading';
import { describe, it } from 'vitest';
import { linear, scaledDotProductAttentionSimple, SimpleMultiHeadAttention, softmax } from '@solution/week1';

const nd = f64.toND;

describe('1.1 attention: softmax', () => {
  const f = goldenOp('softmax');
  for (const c of f.cases) {
    const axis = c.axis as number;
    const x = f.get(c, 'x');
    const title =
      c.name === 'stable' ? 'stable: inputs near 1000 (exp(1000) overflows float32)' : `${c.name}: x ${x.describe()}, axis ${axis}`;
    it(title, () => expectGolden(softmax(x, axis), f.get(c, 'out'), { mistakes: softmaxMistakes(nd(x), axis) }));
  }

  it('each row sums to 1', () => {
    const c = f.cases.find((k) => k.name === 'c2')!;
    const sums = tc.sum(softmax(f.get(c, 'x'), -1), -1);
    expectGolden(sums, { shape: [...sums.shape], data: new Float64Array(sums.size).fill(1) }, { what: 'row sums' });
  });
});

describe('1.1 attention: linear (x @ w.T + b)', () => {
  const f = goldenOp('linear');
  for (const c of f.cases) {
    const [x, w] = [f.get(c, 'x'), f.get(c, 'w')];
    it(`${c.name}: x ${x.describe()}, w ${w.describe()}, ${c.bias ? 'with' : 'without'} bias`, () => {
      const bias = c.bias ? f.get(c, 'b') : undefined;
      expectGolden(linear(x, w, bias), f.get(c, 'out'), { mistakes: linearMistakes(nd(x), nd(w), bias && nd(bias)) });
    });
  }
});

describe('1.1 attention: scaledDotProductAttentionSimple', () => {
  const f = goldenOp('attention');
  for (const c of f.cases) {
    const [q, k, v] = ['q', 'k', 'v'].map((name) => f.get(c, name));
    const scale = c.scale as number | undefined;
    const title = c.mask === 'tensor' ? `additive mask, scale ${scale}` : 'no mask, scale 1/sqrt(D)';
    it(`${c.name} (${title}; q ${tc.formatShape(q.shape)}, k ${tc.formatShape(k.shape)})`, () => {
      const mask = c.mask === 'tensor' ? f.get(c, 'mask') : undefined;
      const mistakes = attentionMistakes(nd(q), nd(k), nd(v), { scale, mask: mask && nd(mask) });
      expectGolden(scaledDotProductAttentionSimple(q, k, v, scale, mask), f.get(c, 'out'), { axes: ['b', 'h', 'l', 'd'], mistakes });
    });
  }
});

describe('1.1 attention: SimpleMultiHeadAttention', () => {
  const f = goldenOp('mha');
  for (const c of f.cases) {
    it(`${c.name}: self-attention (query = key = value), ${c.num_heads} heads`, () => {
      const x = f.get(c, 'x');
      const [wq, wk, wv, wo] = ['wq', 'wk', 'wv', 'wo'].map((name) => f.get(c, name));
      const mha = new SimpleMultiHeadAttention(x.shape[2], c.num_heads as number, wq, wk, wv, wo);
      const mistakes = multiHeadAttentionMistakes(
        nd(x),
        nd(x),
        nd(x),
        { wq: nd(wq), wk: nd(wk), wv: nd(wv), wo: nd(wo) },
        c.num_heads as number,
      );
      expectGolden(mha.forward(x, x, x), f.get(c, 'out'), { axes: ['n', 'l', 'e'], mistakes });
    });
  }

  // Cases the fixture lacks, against the float64 reference: a mask, and keys of another length than the queries.
  const [n, l, s, e, heads] = [2, 3, 5, 16, 4];
  const random = (shape: number[], seed: number) => seededTensor(shape, seed, 0.5);
  const [wq, wk, wv, wo] = [11, 12, 13, 14].map((seed) => random([e, e], seed));
  const weights = { wq: nd(wq), wk: nd(wk), wv: nd(wv), wo: nd(wo) };
  const mha = () => new SimpleMultiHeadAttention(e, heads, wq, wk, wv, wo);

  it(`cross-attention: ${l} queries over ${s} keys and values (L != S)`, () => {
    const [query, kv] = [random([n, l, e], 21), random([n, s, e], 22)];
    const expected = f64.multiHeadAttention(nd(query), nd(kv), nd(kv), weights, heads);
    const mistakes = multiHeadAttentionMistakes(nd(query), nd(kv), nd(kv), weights, heads);
    expectGolden(mha().forward(query, kv, kv), expected, { axes: ['n', 'l', 'e'], mistakes });
  });

  it('self-attention with an additive mask [L, S] (-Infinity hides a key)', () => {
    const x = random([n, s, e], 23);
    const mask = tc.tensor(f64.causalMask(s, s).data, { shape: [s, s] });
    const expected = f64.multiHeadAttention(nd(x), nd(x), nd(x), weights, heads, nd(mask));
    const mistakes = multiHeadAttentionMistakes(nd(x), nd(x), nd(x), weights, heads, nd(mask));
    expectGolden(mha().forward(x, x, x, mask), expected, { axes: ['n', 'l', 'e'], mistakes });
  });
});
