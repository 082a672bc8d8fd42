// Chapter 1.4, graded: RMSNorm, SiLU and the Qwen2 MLP against the golden fixtures (computed in float64 by
// PyTorch, fixtures/ops/rms_norm, silu and mlp).
import { goldenOp } from '@tiny-llm/tensor-core/testing';
import { expectGolden, expectRelativeError, float64 as f64, mlpMistakes, rmsNormMistakes } from '@tiny-llm/grading';
import { describe, it } from 'vitest';
import { Qwen2MLP, RMSNorm, silu } from '@solution/week1';

const nd = f64.toND;

describe('1.4 norm-mlp: RMSNorm', () => {
  const f = goldenOp('rms_norm');
  for (const c of f.cases) {
    const x = f.get(c, 'x');
    it(`${c.name}: x ${x.describe()}, eps ${c.eps}`, () => {
      const weight = f.get(c, 'weight');
      const out = new RMSNorm(weight.shape[0], weight, c.eps as number).forward(x);
      const mistakes = rmsNormMistakes(nd(x), nd(weight), c.eps as number);
      if (x.dtype === 'float32') expectGolden(out, f.get(c, 'out'), { mistakes });
      // bf16 inputs (values near 30, width 4096): the float32 output of the widened values is within ~1e-7 of
      // the golden, relative; rounding each intermediate to bf16 instead costs ~2.5e-3.
      else expectRelativeError(out, f.get(c, 'out'), { bound: 1e-6, mistakes });
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
    const [x, wGate, wUp, wDown] = ['x', 'w_gate', 'w_up', 'w_down'].map((name) => f.get(c, name));
    const [hiddenDim, dim] = wGate.shape;
    it(`${c.name}: dim ${dim}, hiddenDim ${hiddenDim}`, () => {
      const mlp = new Qwen2MLP(dim, hiddenDim, wGate, wUp, wDown);
      expectGolden(mlp.forward(x), f.get(c, 'out'), { mistakes: mlpMistakes(nd(x), nd(wGate), nd(wUp), nd(wDown)) });
    });
  }
});
