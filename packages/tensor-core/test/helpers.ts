// Independent reference computations for the tests: plain loops over row-major index arithmetic,
// sharing no code with the library.
import { expect } from 'vitest';

export type NDArray = { shape: number[]; data: Float64Array };

export function nd(shape: number[], fill: (i: number) => number): NDArray {
  const n = shape.reduce((p, d) => p * d, 1);
  return { shape, data: Float64Array.from({ length: n }, (_, i) => fill(i)) };
}

/** Deterministic pseudo-random values in [-scale, scale) (an LCG, unrelated to the library's generator). */
export function seeded(n: number, seed = 1, scale = 1): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return ((s / 2 ** 32) * 2 - 1) * scale;
  });
}

export function unravel(flat: number, shape: number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = flat % shape[d];
    flat = Math.floor(flat / shape[d]);
  }
  return idx;
}

export function ravel(idx: number[], shape: number[]): number {
  let flat = 0;
  for (let d = 0; d < shape.length; d++) flat = flat * shape[d] + idx[d];
  return flat;
}

/** Value of `a` at the index `idx` of a broadcast result of rank idx.length. */
export function broadcastAt(a: NDArray, idx: number[]): number {
  const lead = idx.length - a.shape.length;
  const own = a.shape.map((d, i) => (d === 1 ? 0 : idx[lead + i]));
  return a.data[ravel(own, a.shape)];
}

export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, atol = 1e-5, rtol = 0): void {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(e)) {
      expect(Number.isNaN(a), `index ${i}: expected NaN, got ${a}`).toBe(true);
      continue;
    }
    if (a === e) continue;
    const err = Math.abs(a - e) - rtol * Math.abs(e);
    if (!(err <= worst)) {
      worst = Number.isNaN(err) ? Infinity : err;
      at = i;
    }
  }
  expect(worst, `worst error at index ${at}: got ${actual[at]}, expected ${expected[at]}`).toBeLessThanOrEqual(atol);
}
