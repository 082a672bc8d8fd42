// The quantized matmul with integer activations (native/quantized_matmul_int16.cc), against two computations of
// its own in float64 (test/support/int16-reference.ts): the same integer arithmetic, to float32 rounding, and the
// exact product, to the activations' rounding.
// vitest.config.ts runs this file once more at each SIMD level below the CPU's best (TINY_LLM_SIMD), so the
// scalar, AVX2 and, where the CPU has it, AVX-512 VNNI kernels are each held to both.
import { describe, expect, it } from 'vitest';
import * as tc from '@tiny-llm/tensor-core';
import { quantizedMatmul } from '../src/model/quantized-matmul.ts';
import { engineKernels } from '../src/model/native.ts';
import { checkFusion, checkInt16 } from './support/int16-reference.ts';
import { edgeCaseProblems, makeProblem, type Problem } from './support/quantized-matmul-cases.ts';

/** The int16 kernel this process runs (native cpuFeatures), checked against the level asked for. */
function expectedInt16Kernel(): string {
  const features = tc.cpuFeatures();
  if (features.level === 'avx512' && features.avx512vnni) return 'vnni';
  return features.level === 'scalar' ? 'scalar' : 'avx2';
}

function check(p: Problem, what: string): number {
  return checkInt16(quantizedMatmul(p.x, p.w).toArray() as Float32Array, p, what);
}

describe(`quantizedMatmul with integer activations (${expectedInt16Kernel()} kernel)`, () => {
  it('this process runs the int16 kernel of the SIMD level asked for', () => {
    expect(engineKernels().cpuFeatures().int16Kernel).toBe(expectedInt16Kernel());
  });

  // M = 1 (weight tiles of 4 rows), 2, 3, 5 (x tiles of 4 and a tail), 11; 12 and 16 (a batch of decode steps:
  // the integer GEMM's panels of 16 x rows, on VNNI); N = 45 leaves a tail of weight rows (the GEMM's tiles of 12,
  // then 6, 4, 2, 1); K = 96 is an odd number of 32-value blocks.
  for (const bits of [4, 8]) {
    for (const group of [32, 64, 128]) {
      for (const k of [96, 384].filter((k) => k % group === 0)) {
        it(`${bits}-bit, group ${group}, K = ${k}: M = 1, 2, 3, 5, 11, 12, 16`, () => {
          for (const m of [1, 2, 3, 5, 11, 12, 16]) {
            const p = makeProblem(m, 45, k, bits, group);
            check(p, `M = ${m}`);
            tc.tidy(() => [p.x.dispose(), p.w.dispose()]);
          }
        });
      }
    }
  }

  it('float16 and float32 scales, bfloat16 x, blocks of zeros and of one large value', () => {
    for (const { problem, what } of edgeCaseProblems(8)) check(problem, what);
  });

  it('sizes that split across the pool (N = 1100, K = 2048; M = 1, 7, 16)', () => {
    for (const [m, bits] of [
      [1, 4],
      [7, 8],
      [16, 4],
    ])
      check(makeProblem(m, 1100, 2048, bits, 64), `M = ${m}, ${bits}-bit`);
  });

  // Prefill-sized calls (M > 16) take the integer GEMM (native/quantized_gemm_int16.cc) where the CPU has AVX-512
  // VNNI, held to the same two computations; below it they keep float activations (the float GEMM on dequantized
  // blocks is faster there than the integer decode tiles).
  const gemm = expectedInt16Kernel() === 'vnni';
  it(gemm ? 'a prefill (M > 16): the integer GEMM' : 'a prefill (M > 16) keeps float activations', () => {
    // M = 17: one x panel of 32 rows, mostly padding; M = 100: four; N = 45 and 100: several pool tasks, the last
    // a short one, tiles of 6 weight rows and the narrower ones after them; M = 600: K = 512 in two slices, the
    // partial sums carried from one to the next.
    const shapes = [
      [17, 30, 256, 64],
      [40, 45, 96, 32],
      [100, 100, 384, 128],
      [600, 20, 512, 64],
    ];
    for (const bits of [4, 8]) {
      for (const [m, n, k, group] of shapes) {
        const p = makeProblem(m, n, k, bits, group);
        const what = `${bits}-bit, M = ${m}, N = ${n}, K = ${k}, group ${group}`;
        if (gemm) check(p, what);
        else {
          const exact = quantizedMatmul(p.x, p.w, { exact: true }).toArray();
          const firstDifferent = quantizedMatmul(p.x, p.w)
            .toArray()
            .findIndex((v, i) => v !== exact[i]);
          expect(firstDifferent, `${what}: the first output that differs from --exact`).toBe(-1);
        }
        tc.tidy(() => [p.x.dispose(), p.w.dispose()]);
      }
    }
  });

  // M = 3 through the decode tiles, M = 20 through the prefill path.
  it.each([3, 20])(
    'the fused prologue (rmsNorm, swiglu) rounds the prepared x; the epilogue (bias, residual) adds in float: M = %i',
    (m) => {
      const p = makeProblem(m, 40, 256, 4, 64);
      checkFusion(p, (x, fusion) => quantizedMatmul(x, p.w, fusion).toArray() as Float32Array);
    },
  );

  it('other widths keep float activations; K must be a whole number of groups (so of 32-value blocks)', () => {
    const p = makeProblem(2, 16, 128, 3, 32);
    const exact = quantizedMatmul(p.x, p.w, { exact: true }).toArray();
    expect(quantizedMatmul(p.x, p.w).toArray()).toEqual(exact);
    // K = 80, packed as 10 words a row: no whole number of groups of 32, refused with or without integer activations.
    const [w, scales] = [tc.zeros([16, 10], { dtype: 'uint32' }), tc.zeros([16, 2], { dtype: 'bfloat16' })];
    for (const int16 of [true, false]) {
      expect(() =>
        engineKernels().quantizedMatmul(
          tc.zeros([1, 80]).native(),
          w.native(),
          scales.native(),
          scales.native(),
          tc.zeros([1, 16]).native(),
          32,
          4,
          null,
          null,
          0,
          undefined,
          undefined,
          int16,
        ),
      ).toThrow(/K is not a multiple of the group size/);
    }
  });
});
