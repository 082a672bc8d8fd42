// The two float64 computations the integer-activation kernels are held to (quantized_matmul_int16.cc,
// quantized_gemm_int16.cc, quantized_panels.cc), from a problem's packed words, scales and biases and from x:
// - the same arithmetic: x rounded to int16 per block of 32 values (dx = max |x| / 32767, round to nearest even),
//   the weight part as sum_g scale * sum_blocks dx * sum q * xq, the bias part from the float sums of x. A kernel
//   may differ only by float32 rounding;
// - x @ dequantize(w).T, the exact product: a kernel may differ by the activations' rounding, at most
//   sum_k |scale * q_k| * dx / 2 per output.
import { expect } from 'vitest';
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import type { Problem } from './quantized-matmul-cases.ts';

const BLOCK = 32;

/** Round half to even, as the kernels' nearbyint and vcvtps2dq. */
function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v - Math.trunc(v)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export interface Expected {
  /** The int16 arithmetic in float64, [M, N]. */
  int16: Float64Array;
  /** x @ dequantize(w).T in float64, [M, N]. */
  exact: Float64Array;
  /** Per output: the most the activations' rounding may move it. */
  bound: Float64Array;
  /** Per output: sum of the magnitudes of the terms, the scale of float32 rounding. */
  magnitude: Float64Array;
}

export function int16Expected(p: Problem): Expected {
  const { m: M, n: N, k: K } = p;
  const { bits, groupSize: G } = p.w;
  const x = Float64Array.from(tc.astype(p.x, 'float32').toArray() as Float32Array);
  const words = p.w.weight.toArray() as Uint32Array;
  const scales = tc.astype(p.w.scales, 'float32').toArray() as Float32Array;
  const biases = tc.astype(p.w.biases, 'float32').toArray() as Float32Array;
  const groups = K / G;
  const wordsPerRow = (K * bits) / 32;
  const q = (n: number, k: number) => (words[n * wordsPerRow + Math.floor((k * bits) / 32)] >>> ((k * bits) % 32)) & ((1 << bits) - 1);
  // x to int16 blocks, in float32 steps as the kernels take them.
  const xq = new Float64Array(M * K);
  const dx = new Float64Array((M * K) / BLOCK);
  for (let b = 0; b < (M * K) / BLOCK; b++) {
    let amax = 0;
    for (let j = 0; j < BLOCK; j++) amax = Math.max(amax, Math.abs(x[b * BLOCK + j]));
    const d = Math.fround(amax / 32767);
    const inv = d !== 0 ? Math.fround(1 / d) : 0;
    dx[b] = d;
    for (let j = 0; j < BLOCK; j++) xq[b * BLOCK + j] = roundHalfEven(Math.fround(x[b * BLOCK + j] * inv));
  }
  const out = {
    int16: new Float64Array(M * N),
    exact: new Float64Array(M * N),
    bound: new Float64Array(M * N),
    magnitude: new Float64Array(M * N),
  };
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let int16 = 0,
        exact = 0,
        bound = 0,
        magnitude = 0;
      for (let g = 0; g < groups; g++) {
        const s = scales[n * groups + g],
          bias = biases[n * groups + g];
        let xsum = 0;
        for (let b = (g * G) / BLOCK; b < ((g + 1) * G) / BLOCK; b++) {
          const d = dx[m * (K / BLOCK) + b];
          let dot = 0;
          for (let j = 0; j < BLOCK; j++) {
            const k = b * BLOCK + j;
            const qk = q(n, k),
              xk = x[m * K + k];
            dot += qk * xq[m * K + k];
            exact += (s * qk + bias) * xk;
            xsum += xk;
            bound += (Math.abs(s) * qk * d) / 2;
            magnitude += Math.abs(s * qk * xk) + Math.abs(bias * xk);
          }
          int16 += s * d * dot;
        }
        int16 += bias * xsum;
      }
      const i = m * N + n;
      out.int16[i] = int16;
      out.exact[i] = exact;
      out.bound[i] = bound;
      out.magnitude[i] = magnitude;
    }
  }
  return out;
}

/**
 * A kernel's output `got` [M, N] against both computations (failing with the output, both values and the bound);
 * returns the largest error against the int16 arithmetic, relative to the terms' magnitude.
 */
export function checkInt16(got: Float32Array, p: Problem, what: string): number {
  const want = int16Expected(p);
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    const rounding = Math.abs(got[i] - want.int16[i]) / want.magnitude[i];
    worst = Math.max(worst, rounding);
    // float32 accumulation over K terms: far below 1e-5 of the terms' magnitudes at these sizes.
    if (!(rounding <= 1e-5))
      expect.fail(
        `${what}: output ${i} is ${got[i]}, the int16 arithmetic gives ${want.int16[i]} (terms of magnitude ${want.magnitude[i]})`,
      );
    const slack = 1e-5 * want.magnitude[i];
    if (!(Math.abs(got[i] - want.exact[i]) <= want.bound[i] + slack)) {
      expect.fail(
        `${what}: output ${i} is ${got[i]}, exact ${want.exact[i]}: off by more than the activations' rounding allows (${want.bound[i]})`,
      );
    }
  }
  return worst;
}

/** The fusion a kernel under test takes (quantizedMatmul's and Linear's). */
export interface Fusion {
  bias?: Tensor;
  residual?: Tensor;
  norm?: { weight: Tensor; eps: number };
  swiglu?: boolean;
}

/**
 * A kernel's fused prologue (rmsNorm; swiglu of a [M, 2K] x) and epilogue (bias, residual) against the same
 * kernel on the x that tensor-core's ops prepare, plus the epilogue added after; and that product against the
 * int16 references. p is [M, 40] x [40, 256] (K = 256); `multiply(x, fusion)` returns the kernel's output.
 */
export function checkFusion(p: Problem, multiply: (x: Tensor, fusion: Fusion) => Float32Array): void {
  const m = p.m;
  const bias = tc.tensor(Float32Array.from({ length: 40 }, (_, i) => i / 10));
  const residual = tc.tensor(
    Float32Array.from({ length: m * 40 }, (_, i) => Math.sin(i)),
    { shape: [m, 40] },
  );
  const norm = { weight: tc.tensor(Float32Array.from({ length: 256 }, (_, i) => 0.5 + (i % 7) / 7)), eps: 1e-6 };
  const gateUp = tc.tensor(
    Float32Array.from({ length: m * 512 }, (_, i) => Math.cos(i * 0.37) * 2),
    { shape: [m, 512] },
  );
  const cases: { fusion: Fusion; prepared: Tensor }[] = [
    { fusion: { bias, norm }, prepared: tc.fast.rmsNorm(p.x, norm.weight, norm.eps) },
    {
      fusion: { residual, swiglu: true },
      prepared: tc.mul(tc.silu(tc.slice(gateUp, [null, [0, 256]])), tc.slice(gateUp, [null, [256, 512]])),
    },
  ];
  for (const { fusion, prepared } of cases) {
    const what = Object.keys(fusion).join(' + ');
    const fused = multiply(fusion.swiglu ? gateUp : p.x, fusion);
    const unfused = multiply(prepared, {});
    checkInt16(unfused, { ...p, x: prepared }, `${what}: the prepared x`);
    // The kernel computes the prologue itself and tensor-core computed `prepared`: the two may differ in a last
    // bit, which can move a value's int16 rounding by one step. Each side is within the activations' rounding
    // bound of the exact product, so they agree to twice that (a missing prologue or epilogue would miss by far
    // more).
    const { bound } = int16Expected({ ...p, x: prepared });
    for (let i = 0; i < fused.length; i++) {
      const epilogue = (fusion.bias ? bias.toArray()[i % 40] : 0) + (fusion.residual ? residual.toArray()[i] : 0);
      expect(Math.abs(fused[i] - (unfused[i] + epilogue)), `${what}, output ${i}`).toBeLessThan(
        2 * bound[i] + 1e-5 * (1 + Math.abs(fused[i])),
      );
    }
  }
}
