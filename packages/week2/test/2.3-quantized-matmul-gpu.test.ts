// Chapter 2.3, graded: the quantized matmul kernel on the GPU (wgsl/quantized_matmul.wgsl, through
// quantizedMatmulGpu), against every case of the golden fixture (fixtures/ops/quantized_matmul: PyTorch,
// float64) and against a float64 product computed from the packed words (@tiny-llm/grading) for every bits and
// group size, at decode and prefill sizes, and past 65535 columns. The tests run on the adapter initWebGPU
// finds: Mesa's software GPU here and in CI, so the sizes stay modest.
import * as tc from '@tiny-llm/tensor-core';
import { goldenOp, seeded, useGpu } from '@tiny-llm/tensor-core/testing';
import { expectGolden, float64 as f64, quantizedMatmulGpuMistakes } from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import { quantizedMatmulGpu } from '@solution/week2';

const gpu = useGpu();

/** A GPU copy of a CPU tensor (the original stays, for the float64 references). */
const onGpu = (t: tc.Tensor) => tc.tensor(t.toArray(), { shape: t.shape, dtype: t.dtype, device: gpu() });
const gpuWeight = (w: tc.QuantizedWeight) => new tc.QuantizedWeight(onGpu(w.weight), onGpu(w.scales), onGpu(w.biases), w.groupSize, w.bits);

/** The tolerance of a quantized product: float32 accumulation, relative to the output's scale. */
const atolFor = (expected: ArrayLike<number>) => 1e-4 * Math.max(1, ...Array.from(expected, Math.abs));

/** The kernel's product of x and w, read back, against the golden (or the float64 product). */
async function checkProduct(x: tc.Tensor, w: tc.QuantizedWeight, what: string, expected?: tc.Tensor): Promise<void> {
  const arrays = f64.quantizedArraysOf(w);
  const x64 = f64.toND(x);
  const golden = expected ? f64.toND(expected) : f64.quantizedMatmul(x64, arrays);
  const out = await tc.toCPU(quantizedMatmulGpu(onGpu(x), gpuWeight(w)));
  expectGolden(out, golden, { atol: atolFor(golden.data), what, axes: ['m', 'n'], mistakes: quantizedMatmulGpuMistakes(x64, arrays) });
}

const problem = (m: number, n: number, k: number, bits: number, groupSize: number, seed: number) => ({
  x: tc.tensor(seeded(m * k, seed + 1), { shape: [m, k] }),
  w: tc.quantize(tc.tensor(seeded(n * k, seed, 0.5), { shape: [n, k] }), bits, groupSize),
});

describe('2.3 quantized matmul on the GPU: the golden fixture', () => {
  const f = goldenOp('quantized_matmul');
  for (const c of f.cases) {
    const [bits, groupSize] = [c.bits as number, c.group_size as number];
    const x = f.get(c, 'x');
    it(`${c.name}: ${bits}-bit, group ${groupSize}, x ${x.describe()}`, async () => {
      const w = new tc.QuantizedWeight(f.get(c, 'w'), f.get(c, 'scales'), f.get(c, 'biases'), groupSize, bits, c.name);
      await checkProduct(x, w, c.name, f.get(c, 'out'));
    });
  }
});

describe('2.3 quantized matmul on the GPU: every bits and group size', () => {
  for (const bits of [2, 3, 4, 5, 6, 8]) {
    it(`${bits}-bit, groups of 32, 64 and 128: M = 1 (a decode step) and M = 6 (rows in two blocks), 70 outputs of 384 inputs`, async () => {
      for (const groupSize of [32, 64, 128]) {
        for (const m of [1, 6]) {
          const { x, w } = problem(m, 70, 384, bits, groupSize, bits * 1000 + groupSize + m);
          await checkProduct(x, w, `${bits}-bit, group ${groupSize}, M = ${m}`);
        }
      }
    });
  }

  it('a prefill: M = 33 rows, K = 2560 (more chunks of 32 values than invocations)', async () => {
    const { x, w } = problem(33, 24, 2560, 4, 64, 5);
    await checkProduct(x, w, 'M = 33, K = 2560');
  });
});

describe('2.3 quantized matmul on the GPU: dtypes, shapes and the grid', () => {
  it('x in bfloat16 and float16, scales in float16 and float32', async () => {
    for (const [xDtype, scaleDtype] of [
      ['bfloat16', 'bfloat16'],
      ['float16', 'float16'],
      ['float32', 'float32'],
    ] as const) {
      const w = tc.quantize(tc.tensor(seeded(24 * 128, 7, 0.5), { shape: [24, 128] }), 4, 64, { dtype: scaleDtype });
      await checkProduct(tc.astype(tc.tensor(seeded(5 * 128, 8), { shape: [5, 128] }), xDtype), w, `x ${xDtype}, scales ${scaleDtype}`);
    }
  });

  it('leading dimensions of x: [2, 3, K] -> [2, 3, N]', async () => {
    const { x, w } = problem(6, 16, 64, 4, 32, 9);
    const y = quantizedMatmulGpu(onGpu(tc.reshape(x, [2, 3, 64])), gpuWeight(w));
    expect([...y.shape], 'the output keeps the leading dimensions').toEqual([2, 3, 16]);
    const flat = tc.reshape(await tc.toCPU(y), [6, 16]);
    expectGolden(flat, f64.quantizedMatmul(f64.toND(x), f64.quantizedArraysOf(w)), {
      atol: 1e-4,
      what: 'the same rows, flattened',
      axes: ['m', 'n'],
    });
  });

  it('N = 70000 outputs, more than the 65535 workgroups of one grid dimension', async () => {
    const { x, w } = problem(1, 70000, 32, 4, 32, 11);
    await checkProduct(x, w, 'N = 70000');
  });
});
