// Shared by test/quantized-matmul.test.ts and the scalar-fallback child process it starts: random quantized
// problems (built with tensor-core's quantize) and their float64 reference from the reference dequantize.
import * as tc from '@tiny-llm/tensor-core';
import type { QuantizedWeight, Tensor } from '@tiny-llm/tensor-core';

/** quantizedMatmul's float path, which the float64 references here match to 1e-4 (integer activations do not). */
export const EXACT = { exact: true } as const;

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

/**
 * Problems at the edges of the integer activations: 4-bit weights with float16 and float32 scales and bfloat16 x;
 * and a `bits`-bit one whose x has blocks of zeros (scale 0) and a block dominated by one large value.
 */
export function edgeCaseProblems(bits: number): { problem: Problem; what: string }[] {
  const cases: { problem: Problem; what: string }[] = (['float16', 'float32'] as const).map((scaleDtype) => ({
    problem: makeProblem(3, 20, 256, 4, 64, { scaleDtype, xDtype: 'bfloat16' }),
    what: scaleDtype,
  }));
  const p = makeProblem(2, 24, 128, bits, 32);
  const xv = p.x.toArray() as Float32Array;
  xv.fill(0, 0, 32); // a block of zeros: scale 0
  xv.fill(0, 128 + 32, 128 + 64);
  xv[128 + 40] = 1000; // one value dominating its block
  cases.push({ problem: { ...p, x: tc.tensor(xv, { shape: [2, 128] }) }, what: 'zeros and a spike' });
  return cases;
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

/** The work fused around a matmul (quantizedMatmul's and Linear's fusion), as float64 reference inputs. */
export interface FusedCase {
  /** x [M, K], or [M, 2K] (gate, up) with swiglu. */
  x: Tensor;
  w: QuantizedWeight;
  bias: Tensor | null;
  residual: Tensor | null;
  norm: { weight: Tensor; eps: number } | null;
  swiglu: boolean;
  /** prologue(x) @ dequantize(w).T + bias + residual in float64, [M, N] flattened. */
  expected: Float64Array;
}

/**
 * A random problem with the given fusion: `kinds` among bias, residual, norm, swiglu (norm and swiglu exclude
 * each other). The norm weight is bf16 (as in checkpoints).
 */
export function fusedCase(m: number, n: number, k: number, bits: number, groupSize: number, kinds: readonly string[], seed = 5): FusedCase {
  const swiglu = kinds.includes('swiglu');
  const wv = randomValues(n * k, seed, 0.5);
  const w32 = tc.tensor(wv, { shape: [n, k] });
  const w = tc.quantize(w32, bits, groupSize);
  w32.dispose();
  const xk = swiglu ? 2 * k : k;
  const xv = randomValues(m * xk, seed + 1, 2);
  const x = tc.tensor(xv, { shape: [m, xk] });
  const bias = kinds.includes('bias') ? tc.tensor(randomValues(n, seed + 2), { shape: [n] }) : null;
  const residual = kinds.includes('residual') ? tc.tensor(randomValues(m * n, seed + 3, 3), { shape: [m, n] }) : null;
  const norm = kinds.includes('norm')
    ? { weight: tc.astype(tc.tensor(randomValues(k, seed + 4, 1.5), { shape: [k] }), 'bfloat16'), eps: 1e-6 }
    : null;
  // The prologue in float64.
  const xin = new Float64Array(m * k);
  const nw = norm ? (norm.weight.toArray() as Float32Array) : null;
  for (let i = 0; i < m; i++) {
    if (swiglu) {
      for (let j = 0; j < k; j++) {
        const g = xv[i * xk + j];
        xin[i * k + j] = (g / (1 + Math.exp(-g))) * xv[i * xk + k + j];
      }
    } else if (nw) {
      let ss = 0;
      for (let j = 0; j < k; j++) ss += xv[i * k + j] ** 2;
      const inv = 1 / Math.sqrt(ss / k + norm!.eps);
      for (let j = 0; j < k; j++) xin[i * k + j] = xv[i * k + j] * inv * nw[j];
    } else {
      for (let j = 0; j < k; j++) xin[i * k + j] = xv[i * k + j];
    }
  }
  const wd = tc.dequantize(w).toArray() as Float32Array;
  const bv = bias ? (bias.toArray() as Float32Array) : null;
  const rv = residual ? (residual.toArray() as Float32Array) : null;
  const expected = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let q = 0; q < k; q++) s += xin[i * k + q] * wd[j * k + q];
      expected[i * n + j] = s + (bv ? bv[j] : 0) + (rv ? rv[i * n + j] : 0);
    }
  }
  return { x, w, bias, residual, norm, swiglu, expected };
}
