// Chapter 1.4, graded: RMSNorm, SiLU and the Qwen2 MLP against the golden fixtures (computed in float64 by
// PyTorch, fixtures/ops/rms_norm, silu and mlp).
import { goldenOp, relativeError } from '@tiny-llm/tensor-core/testing';
import { describe, expect, it } from 'vitest';
import { Qwen2MLP, RMSNorm, silu } from '@solution/week1';
import { expectGolden, expectWellFormed } from './support.ts';

describe('1.4 norm-mlp: RMSNorm', () => {
  const f = goldenOp('rms_norm');
  for (const c of f.cases) {
    const x = f.get(c, 'x');
    it(`${c.name}: x ${x.describe()}, eps ${c.eps}`, () => {
      const weight = f.get(c, 'weight');
      const out = new RMSNorm(weight.shape[0], weight, c.eps as number).forward(x);
      const expected = f.get(c, 'out');
      if (x.dtype === 'float32') {
        expectGolden(out, expected);
      } else {
        // bf16 inputs (values near 30, width 4096) are compared by the relative error norm; the output is
        // still float32, computed from the widened values.
        const error = relativeError(expectWellFormed(out, expected), expected.toArray());
        expect(error, `||out - expected|| / ||expected|| = ${error}: accumulate in float32`).toBeLessThan(1e-2);
      }
    });
  }
});

describe('1.4 norm-mlp: silu', () => {
  const f = goldenOp('silu');
  for (const c of f.cases) {
    const title = c.name === 'extremes' ? 'extremes: -100 to 100 (no overflow, no NaN)' : c.name;
    it(title, () => expectGolden(silu(f.get(c, 'x')), f.get(c, 'out')));
  }
});

describe('1.4 norm-mlp: Qwen2MLP = down(silu(gate(x)) * up(x))', () => {
  const f = goldenOp('mlp');
  for (const c of f.cases) {
    const wGate = f.get(c, 'w_gate');
    const [hiddenDim, dim] = wGate.shape;
    it(`${c.name}: dim ${dim}, hiddenDim ${hiddenDim}`, () => {
      const mlp = new Qwen2MLP(dim, hiddenDim, wGate, f.get(c, 'w_up'), f.get(c, 'w_down'));
      expectGolden(mlp.forward(f.get(c, 'x')), f.get(c, 'out'));
    });
  }
});
