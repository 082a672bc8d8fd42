// Chapter 2.2, graded: the quantized matmul kernel (native/quantized_matmul.cc, through quantizedMatmul) and
// QuantizedLinear, against every case of the golden fixture (fixtures/ops/quantized_matmul: PyTorch, float64)
// and against a float64 computation from the packed words (@tiny-llm/grading) over every bits, group size and
// decode/prefill size.
import * as tc from '@tiny-llm/tensor-core';
import { goldenOp, seeded } from '@tiny-llm/tensor-core/testing';
import { expectGolden, float64 as f64, quantizedMatmulMistakes } from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import { QuantizedLinear, quantizedMatmul } from '@solution/week2';

/** The tolerance of a quantized product: float32 accumulation, relative to the output's scale. */
const atolFor = (expected: ArrayLike<number>) => 1e-4 * Math.max(1, ...Array.from(expected, Math.abs));

function checkProduct(x: tc.Tensor, w: tc.QuantizedWeight, what: string, expected?: tc.Tensor): void {
  const arrays = f64.quantizedArraysOf(w);
  const x64 = f64.toND(x);
  const golden = expected ? f64.toND(expected) : f64.quantizedMatmul(x64, arrays);
  expectGolden(quantizedMatmul(x, w), golden, {
    atol: atolFor(golden.data),
    what,
    axes: ['m', 'n'],
    mistakes: quantizedMatmulMistakes(x64, arrays),
  });
}

describe('2.2 quantized matmul: the golden fixture', () => {
  const f = goldenOp('quantized_matmul');
  for (const c of f.cases) {
    const [bits, groupSize] = [c.bits as number, c.group_size as number];
    const x = f.get(c, 'x');
    it(`${c.name}: ${bits}-bit, group ${groupSize}, x ${x.describe()}`, () => {
      const w = new tc.QuantizedWeight(f.get(c, 'w'), f.get(c, 'scales'), f.get(c, 'biases'), groupSize, bits, c.name);
      checkProduct(x, w, c.name, f.get(c, 'out'));
    });
  }
});

describe('2.2 quantized matmul: every bits and group size, decode and prefill sizes', () => {
  const problem = (m: number, n: number, k: number, bits: number, groupSize: number, seed: number) => {
    const w = tc.quantize(tc.tensor(seeded(n * k, seed, 0.5), { shape: [n, k] }), bits, groupSize);
    return { x: tc.tensor(seeded(m * k, seed + 1), { shape: [m, k] }), w };
  };
  for (const bits of [2, 3, 4, 5, 6, 8]) {
    for (const groupSize of [32, 64, 128]) {
      it(`${bits}-bit, group ${groupSize}: M = 1, 3, 17 rows of x, 45 outputs of 256 inputs`, () => {
        for (const m of [1, 3, 17]) {
          const { x, w } = problem(m, 45, 256, bits, groupSize, bits * 1000 + groupSize + m);
          checkProduct(x, w, `M = ${m}`);
        }
      });
    }
  }

  it('x in bfloat16 and float16, scales in float16 and float32', () => {
    for (const [xDtype, scaleDtype] of [
      ['bfloat16', 'bfloat16'],
      ['float16', 'float16'],
      ['float32', 'float32'],
    ] as const) {
      const w = tc.quantize(tc.tensor(seeded(24 * 128, 7, 0.5), { shape: [24, 128] }), 4, 64, { dtype: scaleDtype });
      checkProduct(tc.astype(tc.tensor(seeded(5 * 128, 8), { shape: [5, 128] }), xDtype), w, `x ${xDtype}, scales ${scaleDtype}`);
    }
  });

  it('leading dimensions of x: [2, 3, K] -> [2, 3, N]', () => {
    const w = tc.quantize(tc.tensor(seeded(16 * 64, 9, 0.5), { shape: [16, 64] }), 4, 32);
    const x = tc.tensor(seeded(6 * 64, 10), { shape: [2, 3, 64] });
    const y = quantizedMatmul(x, w);
    expect([...y.shape], 'the output keeps the leading dimensions').toEqual([2, 3, 16]);
    checkProduct(tc.reshape(x, [6, 64]), w, 'the same rows, flattened');
  });
});

describe('2.2 quantized matmul: QuantizedLinear', () => {
  it('x @ dequantize(weight).T + bias, with and without a bias', () => {
    const w = tc.quantize(tc.tensor(seeded(24 * 128, 11, 0.5), { shape: [24, 128] }), 4, 64);
    const x = tc.tensor(seeded(3 * 128, 12), { shape: [3, 128] });
    const bias = tc.tensor(seeded(24, 13), { shape: [24] });
    const product = f64.quantizedMatmul(f64.toND(x), f64.quantizedArraysOf(w));
    const withBias = { shape: product.shape, data: product.data.map((v, i) => v + bias.toArray()[i % 24]) };
    expectGolden(new QuantizedLinear(w, bias).forward(x), withBias, { atol: atolFor(withBias.data), what: 'with bias', axes: ['m', 'n'] });
    expectGolden(new QuantizedLinear(w).forward(x), product, { atol: atolFor(product.data), what: 'without bias', axes: ['m', 'n'] });
  });
});
