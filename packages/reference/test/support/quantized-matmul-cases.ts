// Shared by test/quantized-matmul.test.ts and the scalar-fallback child process it starts: random quantized
// problems (built with tensor-core's quantize) and their float64 reference from the reference dequantize.
import * as tc from '@tiny-llm/tensor-core';
import type { QuantizedWeight, Tensor } from '@tiny-llm/tensor-core';

export interface Problem {
  x: Tensor;
  w: QuantizedWeight;
  m: number;
  n: number;
  k: number;
}

/** Deterministic values in [-scale, scale) (an LCG). */
export function randomValues(count: number, seed: number, scale = 1): Float32Array {
  const v = new Float32Array(count);
  let s = seed >>> 0;
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    v[i] = ((s / 2 ** 32) * 2 - 1) * scale;
  }
  return v;
}

export function makeProblem(
  m: number,
  n: number,
  k: number,
  bits: number,
  groupSize: number,
  opts: { xDtype?: 'float32' | 'bfloat16'; scaleDtype?: 'bfloat16' | 'float16' | 'float32'; lead?: number[]; seed?: number } = {},
): Problem {
  const seed = opts.seed ?? m * 7919 + n * 31 + k + bits * 101 + groupSize;
  const w32 = tc.tensor(randomValues(n * k, seed, 0.5), { shape: [n, k] });
  const w = tc.quantize(w32, bits, groupSize, { dtype: opts.scaleDtype ?? 'bfloat16' });
  w32.dispose();
  const lead = opts.lead ?? [m];
  let x = tc.tensor(randomValues(m * k, seed + 1), { shape: [...lead, k] });
  if (opts.xDtype === 'bfloat16') x = tc.astype(x, 'bfloat16');
  return { x, w, m, n, k };
}

/** x @ dequantize(w).T in float64, [M, N] flattened. */
export function reference(p: Problem): Float64Array {
  const wd = tc.dequantize(p.w).toArray() as Float32Array;
  const xv = p.x.toArray() as Float32Array;
  const out = new Float64Array(p.m * p.n);
  for (let i = 0; i < p.m; i++) {
    for (let j = 0; j < p.n; j++) {
      let s = 0;
      for (let q = 0; q < p.k; q++) s += xv[i * p.k + q] * wd[j * p.k + q];
      out[i * p.n + j] = s;
    }
  }
  return out;
}

/** max |a - e| / max(1, max |e|): the error relative to the output's scale. */
export function scaledError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let worst = 0;
  let scale = 1;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  return Number.isNaN(worst) ? Infinity : worst / scale;
}
