// The SIMD levels against each other, in one process (native.setSimdLevel): every kernel that has SIMD forms
// gives, at every level the CPU has, the scalar kernels' results up to float32 rounding. The other test files
// check each level against independent references; this one catches a level that drifts from the others
// within those references' tolerance. A source that compiles its SIMD forms under TL_X86_SIMD without the
// header defining it would silently keep only the scalar ones, with the same results: the last test reads the
// sources for that.
import { readdirSync, readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import * as tc from '../src/index.ts';
import { seeded } from '../src/testing.ts';

const { best, level: initial } = tc.cpuFeatures();
const levels = tc.SIMD_LEVELS.slice(0, tc.SIMD_LEVELS.indexOf(best) + 1);

/** fn's values at each level the CPU has, scalar first. */
function atEachLevel(fn: () => tc.Tensor): Float32Array[] {
  return levels.map((level) => {
    tc.native.setSimdLevel(level);
    return Float32Array.from(fn().toArray());
  });
}

/** The largest |x - scalar| / scale over all levels, scale(i) the size of element i's computation. */
function worstDrift(results: Float32Array[], scale: (i: number) => number): number {
  let worst = 0;
  for (const r of results.slice(1)) {
    for (let i = 0; i < r.length; i++) {
      if (r[i] !== results[0][i]) worst = Math.max(worst, Math.abs(r[i] - results[0][i]) / scale(i)); // NaN if one is inf
    }
  }
  return worst;
}

describe(`SIMD levels agree with the scalar kernels (${levels.join(', ')})`, () => {
  afterAll(() => tc.native.setSimdLevel(initial));

  // Operands with values bfloat16 cannot hold, and a bf16 weight in the linear layout.
  const K = 301;
  const x = (m: number) => tc.tensor(seeded(m * K, m, 2), { shape: [m, K] });
  const w = tc.astype(tc.tensor(seeded(131 * K, 7, 1), { shape: [131, K] }), 'bfloat16');
  const absSum = (a: tc.Tensor) => {
    // sum_k |a[i][k]| |w[j][k]| for each output (i, j): the scale of a float32 sum's rounding error.
    const av = a.toArray(),
      wv = w.toArray();
    return (i: number) => {
      const [r, c] = [Math.floor(i / 131), i % 131];
      let s = 0;
      for (let k = 0; k < K; k++) s += Math.abs(av[r * K + k] * wv[c * K + k]);
      return s;
    };
  };

  for (const m of [1, 3, 8, 16, 40]) {
    it(`matmul of ${m} rows by a bf16 weight (${m <= 16 ? 'decode GEMV' : 'packed GEMM'})`, () => {
      const a = x(m);
      const results = atEachLevel(() => tc.matmul(a, tc.transpose(w)));
      expect(worstDrift(results, absSum(a))).toBeLessThan(1e-6);
    });
  }

  it('exp, sigmoid and silu', () => {
    const v = tc.tensor(seeded(1000, 3, 90));
    for (const op of [tc.exp, tc.sigmoid, tc.silu]) {
      const results = atEachLevel(() => op(v));
      expect(worstDrift(results, (i) => Math.abs(results[0][i]) + 2 ** -149)).toBeLessThan(4e-7);
    }
  });

  it('softmax over rows of 1003, and argmax', () => {
    const rows = tc.tensor(seeded(4 * 1003, 9, 20), { shape: [4, 1003] });
    const results = atEachLevel(() => tc.softmax(rows, -1));
    expect(worstDrift(results, (i) => Math.abs(results[0][i]) + 1e-30)).toBeLessThan(1e-5);
    const args = atEachLevel(() => tc.argmax(rows, -1));
    for (const r of args) expect(Array.from(r)).toEqual(Array.from(args[0]));
  });
});

describe('native sources with SIMD forms include the header that enables them', () => {
  const dir = new URL('../native/src/', import.meta.url);
  const sources = new Map(readdirSync(dir).map((f) => [f, readFileSync(new URL(f, dir), 'utf8')]));
  /** Whether `file` includes tiny_llm/simd.h, directly or through the directory's own headers. */
  const includesSimd = (file: string, seen = new Set<string>()): boolean => {
    const text = sources.get(file) ?? '';
    if (text.includes('#include <tiny_llm/simd.h>')) return true;
    seen.add(file);
    return [...text.matchAll(/#include "([^"]+)"/g)].some(([, h]) => sources.has(h) && !seen.has(h) && includesSimd(h, seen));
  };

  it('every file that tests TL_X86_SIMD', () => {
    const users = [...sources.keys()].filter((f) => /#if(def)?\s+TL_X86_SIMD|defined\(TL_X86_SIMD\)/.test(sources.get(f)!));
    expect(users.length).toBeGreaterThan(3);
    expect(users.filter((f) => !includesSimd(f))).toEqual([]);
  });
});
