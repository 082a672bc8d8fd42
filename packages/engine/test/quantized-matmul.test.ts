// Chapter 2.2: the CPU quantized matmul with float activations (native/quantized_matmul.cc, `exact: true`)
// against the golden fixture, against a float64 reference computed from tensor-core's dequantize, on the scalar
// fallback, and on bad arguments. Integer activations: test/quantized-matmul-int16.test.ts.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import * as tc from '@tiny-llm/tensor-core';
import { goldenOp, relativeError } from '@tiny-llm/tensor-core/testing';
import { quantizedMatmul } from '../src/model/quantized-matmul.ts';
import { EXACT, makeProblem, reference, scaledError } from './support/quantized-matmul-cases.ts';

describe('quantizedMatmul: golden fixture ops/quantized_matmul', () => {
  const golden = goldenOp('quantized_matmul');
  for (const c of golden.cases) {
    const groupSize = c.group_size as number;
    const bits = c.bits as number;
    it(`${c.name}: ${bits}-bit, group ${groupSize}, x ${(c.dtype as string) ?? 'float32'}`, () => {
      const w = new tc.QuantizedWeight(golden.get(c, 'w'), golden.get(c, 'scales'), golden.get(c, 'biases'), groupSize, bits, c.name);
      const x = golden.get(c, 'x');
      const expected = golden.get(c, 'out').toArray();
      const y = quantizedMatmul(x, w, EXACT);
      expect(y.dtype).toBe('float32');
      expect(y.shape).toEqual([x.shape[0], w.outFeatures]);
      const got = y.toArray();
      // The fixture's out is x @ dequantized.T in float64 from the same (bf16-valued) x: float32 accumulation
      // is the only difference, so both dtypes are held to 1e-4 of the output's scale; bf16 cases also to the
      // course's rule for low-precision inputs (relative error norm < 1e-2).
      expect(scaledError(got, expected)).toBeLessThan(1e-4);
      if (x.dtype === 'bfloat16') expect(relativeError(got, expected)).toBeLessThan(1e-2);
    });
  }
});

describe('quantizedMatmul against dequantize in float64', () => {
  // Decode (M <= 16: the streaming kernel, x rows in tiles of 4, 3, 2, 1 and weight rows in tiles of 4 with a
  // tail: N = 45) and prefill (M > 16: dequantized blocks through tensor-core's GEMM).
  for (const bits of [2, 3, 4, 5, 6, 8]) {
    for (const group of [32, 64, 128]) {
      it(`${bits}-bit, group ${group}: M = 1, 2, 3, 5, 16, 17, 37, 64`, () => {
        for (const m of [1, 2, 3, 5, 16, 17, 37, 64]) {
          const p = makeProblem(m, 45, 384, bits, group);
          const y = quantizedMatmul(p.x, p.w, EXACT);
          expect(scaledError(y.toArray(), reference(p)), `M = ${m}`).toBeLessThan(1e-4);
          tc.tidy(() => [p.x.dispose(), p.w.dispose(), y.dispose()]);
        }
      });
    }
  }

  // The AVX2 kernels take whole 32-byte chunks of packed words (64 values at 4 bits, 128 at 2 bits) when K is a
  // multiple of that, and a kernel of 8 values at a time otherwise: K = 96 and 160 at 4 bits, 192 at 2 bits.
  for (const [bits, group, k] of [
    [4, 32, 96],
    [4, 32, 160],
    [2, 64, 192],
    [2, 32, 160],
  ]) {
    it(`${bits}-bit, group ${group}, K = ${k} (not whole chunks): M = 1, 3, 5, 37`, () => {
      for (const m of [1, 3, 5, 37]) {
        const p = makeProblem(m, 29, k, bits, group);
        expect(scaledError(quantizedMatmul(p.x, p.w, EXACT).toArray(), reference(p)), `M = ${m}`).toBeLessThan(1e-4);
      }
    });
  }

  it('sizes that split across the pool and, for prefill, over several weight blocks (N = 1100, K = 2048)', () => {
    for (const [m, bits] of [
      [1, 4],
      [7, 8],
      [37, 4],
      [64, 2],
    ]) {
      const p = makeProblem(m, 1100, 2048, bits, 64);
      const y = quantizedMatmul(p.x, p.w, EXACT);
      expect(scaledError(y.toArray(), reference(p)), `M = ${m}, ${bits}-bit`).toBeLessThan(1e-4);
    }
  });

  it('bfloat16 x, float16 and float32 scales', () => {
    for (const m of [1, 4, 9, 37]) {
      for (const scaleDtype of ['float16', 'float32'] as const) {
        const p = makeProblem(m, 64, 256, 4, 64, { xDtype: 'bfloat16', scaleDtype });
        const got = quantizedMatmul(p.x, p.w, EXACT).toArray();
        const want = reference(p);
        expect(scaledError(got, want), `M = ${m}, ${scaleDtype}`).toBeLessThan(1e-4);
        expect(relativeError(got, want)).toBeLessThan(1e-2);
      }
    }
  });

  it('leading dimensions of x and a strided x', () => {
    const p = makeProblem(6, 40, 128, 4, 32, { lead: [2, 3] });
    const y = quantizedMatmul(p.x, p.w, EXACT);
    expect(y.shape).toEqual([2, 3, 40]);
    expect(scaledError(y.toArray(), reference(p))).toBeLessThan(1e-4);
    // x^T of a [K, M] tensor: a transposed view, which quantizedMatmul copies to contiguous rows first.
    const xt = tc.transpose(tc.contiguous(tc.transpose(tc.reshape(p.x, [6, 128]))));
    expect(xt.isContiguous).toBe(false);
    expect(scaledError(quantizedMatmul(xt, p.w, EXACT).toArray(), reference(p))).toBeLessThan(1e-4);
  });
});

describe('quantizedMatmul: bad arguments', () => {
  const p = makeProblem(2, 16, 128, 4, 64);
  it('throws a TypeError naming quantizedMatmul and the shapes', () => {
    expect(() => quantizedMatmul(tc.zeros([2, 64]), p.w)).toThrow(TypeError);
    expect(() => quantizedMatmul(tc.zeros([2, 64]), p.w)).toThrow(
      /quantizedMatmul: x's last dimension 64 is not the weight's 128 input features \(x float32\[2, 64\], w QuantizedWeight\(\[16, 128\], 4-bit, group 64\)\)/,
    );
    expect(() => quantizedMatmul(tc.zeros([2, 128], { dtype: 'int32' }), p.w)).toThrow(
      /quantizedMatmul: x must be float32, bfloat16 or float16/,
    );
    expect(() => quantizedMatmul(tc.zeros([]), p.w)).toThrow(/quantizedMatmul: x must have at least one dimension/);
    const batched = tc.quantize(tc.zeros([2, 16, 128]), 4, 64);
    expect(() => quantizedMatmul(tc.zeros([2, 128]), batched)).toThrow(/quantizedMatmul: the weight must be 2-D/);
  });
});

describe('quantizedMatmul: scalar fallback (TINY_LLM_NO_SIMD=1)', () => {
  // A fresh process: the SIMD choice is made once per process, and this one has already made it.
  it('matches the float64 reference for every bits, group size and path', () => {
    const script = fileURLToPath(new URL('./support/quantized-matmul-scalar.ts', import.meta.url));
    const child = spawnSync(process.execPath, ['--import', 'tsx', script], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      env: { ...process.env, TINY_LLM_NO_SIMD: '1' },
      encoding: 'utf8',
      timeout: 60000,
    });
    expect(child.stderr).toBe('');
    const { simd, results } = JSON.parse(child.stdout.trim()) as { simd: boolean; results: { name: string; error: number }[] };
    expect(simd).toBe(false);
    expect(results.length).toBe(26);
    for (const r of results) expect(r.error, r.name).toBeLessThan(1e-4);
  });
});
