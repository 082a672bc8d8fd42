// 4-bit weights packed into panels of 16 rows (native/quantized_panels.cc; packQuantizedPanels and
// quantizedPanelLinear in src/model/linear.ts), held to the two float64 computations of the integer activations
// (test/support/int16-reference.ts): the same integer arithmetic as quantizedMatmul's, to float32 rounding, and
// the exact product, to the activations' rounding. vitest.config.ts runs this file at each SIMD level: the plain
// loops below AVX-512 VNNI, the VNNI kernel where the CPU has it.
import { describe, expect, it } from 'vitest';
import * as tc from '@tiny-llm/tensor-core';
import { Linear, packQuantizedPanels, quantizedPanelLinear, quantizedPanelsSupported } from '../src/model/linear.ts';
import { engineKernels } from '../src/model/native.ts';
import { checkFusion, checkInt16 } from './support/int16-reference.ts';
import { edgeCaseProblems, makeProblem, type Problem } from './support/quantized-matmul-cases.ts';

const vnni = (() => {
  const f = tc.cpuFeatures();
  return f.level === 'avx512' && f.avx512vnni === true;
})();

function check(p: Problem, what: string): void {
  const packed = packQuantizedPanels(p.w);
  checkInt16(quantizedPanelLinear(p.x, packed, 'test').toArray() as Float32Array, p, what);
  tc.tidy(() => [packed.panels.dispose(), packed.params.dispose()]);
}

/** Value k of row n of an MLX 4-bit weight, from its words. */
function mlxValue(words: Uint32Array, wordsPerRow: number, n: number, k: number): number {
  return (words[n * wordsPerRow + Math.floor(k / 8)] >>> (4 * (k % 8))) & 0xf;
}

describe(`4-bit weights in panels (${vnni ? 'the VNNI kernel' : 'the plain loops'})`, () => {
  it('this process multiplies panels with VNNI exactly where the SIMD level has it', () => {
    expect(engineKernels().quantizedPanelsSupported()).toBe(vnni);
  });

  it('the layout: 8 values of one row per word (value 8c + j in byte j, low nibble; 8c + 4 + j, high), 16 rows per panel, zeros past N', () => {
    const p = makeProblem(1, 20, 64, 4, 32, { scaleDtype: 'float32' });
    const { panels, params } = packQuantizedPanels(p.w);
    expect(panels.shape).toEqual([2, 8, 16]);
    expect(params.shape).toEqual([2, 2, 2, 16]);
    const words = p.w.weight.toArray() as Uint32Array;
    const got = panels.toArray() as Uint32Array;
    for (let n = 0; n < 32; n++) {
      for (let c = 0; c < 8; c++) {
        let want = 0;
        for (let j = 0; j < 4 && n < 20; j++) {
          want |= (mlxValue(words, 8, n, 8 * c + j) | (mlxValue(words, 8, n, 8 * c + 4 + j) << 4)) << (8 * j);
        }
        const at = (Math.floor(n / 16) * 8 + c) * 16 + (n % 16);
        expect(got[at] >>> 0, `row ${n}, word ${c}`).toBe(want >>> 0);
      }
    }
    const [scales, biases, packedParams] = [p.w.scales, p.w.biases, params].map((t) => t.toArray() as Float32Array);
    for (let n = 0; n < 32; n++) {
      for (let g = 0; g < 2; g++) {
        const at = (Math.floor(n / 16) * 2 + g) * 2 * 16 + (n % 16);
        expect(packedParams[at], `scale of row ${n}, group ${g}`).toBe(n < 20 ? scales[n * 2 + g] : 0);
        expect(packedParams[at + 16], `bias of row ${n}, group ${g}`).toBe(n < 20 ? biases[n * 2 + g] : 0);
      }
    }
  });

  // M = 1 (two accumulators of each kind), 2-5 (x tiles of 4 and a tail), 16, 17 and 40 (prefill sizes: every
  // product goes through the panels); N = 45: a last panel of 13 rows; K = 96: an odd number of blocks.
  for (const group of [32, 64, 128]) {
    for (const k of [96, 384].filter((k) => k % group === 0)) {
      it(`group ${group}, K = ${k}: M = 1, 2, 3, 4, 5, 16, 17, 40`, () => {
        for (const m of [1, 2, 3, 4, 5, 16, 17, 40]) {
          const p = makeProblem(m, 45, k, 4, group);
          check(p, `M = ${m}`);
          tc.tidy(() => [p.x.dispose(), p.w.dispose()]);
        }
      });
    }
  }

  it('sizes that split across the pool (N = 1100, K = 2048; M = 1, 7, 64)', () => {
    for (const m of [1, 7, 64]) check(makeProblem(m, 1100, 2048, 4, 64), `M = ${m}`);
  });

  it('float16 and float32 scales, bfloat16 x, blocks of zeros and of one large value', () => {
    for (const { problem, what } of edgeCaseProblems(4)) check(problem, what);
  });

  it.each([1, 20])('the fused prologue (rmsNorm, swiglu) and epilogue (bias, residual): M = %i', (m) => {
    const p = makeProblem(m, 40, 256, 4, 64);
    const packed = packQuantizedPanels(p.w);
    checkFusion(p, (x, fusion) => quantizedPanelLinear(x, packed, 'test', fusion).toArray() as Float32Array);
  });

  it("dequantizePanelRows: rows of dequantize(w), from any panel; an id outside the panels' rows is refused", () => {
    const p = makeProblem(1, 45, 128, 4, 64);
    const { panels, params } = packQuantizedPanels(p.w);
    const ids = [0, 15, 16, 44, 7];
    const out = tc.empty([ids.length, 128]);
    engineKernels().dequantizePanelRows(panels.native(), params.native(), tc.tensor(ids, { dtype: 'int32' }).native(), out.native());
    const table = tc.dequantize(p.w).toArray() as Float32Array;
    const got = out.toArray() as Float32Array;
    ids.forEach((id, i) => {
      for (let k = 0; k < 128; k++) expect(got[i * 128 + k], `id ${id}, column ${k}`).toBe(table[id * 128 + k]);
    });
    expect(() =>
      engineKernels().dequantizePanelRows(
        panels.native(),
        params.native(),
        tc.tensor([48], { dtype: 'int32' }).native(),
        tc.empty([1, 128]).native(),
      ),
    ).toThrow(/id 48 is outside the 48 rows/);
  });

  it('bad arguments: a clear error naming what is wrong', () => {
    const p = makeProblem(1, 20, 64, 4, 32);
    const { panels, params } = packQuantizedPanels(p.w);
    const call = (x: tc.Tensor, out: tc.Tensor, pars: tc.Tensor = params) =>
      engineKernels().quantizedPanelLinear(
        x.native(),
        panels.native(),
        out.native(),
        undefined,
        null,
        0,
        undefined,
        undefined,
        pars.native(),
      );
    expect(() => call(tc.zeros([1, 96]), tc.zeros([1, 20]))).toThrow(/the panels' K does not match x's last dimension/);
    expect(() => call(tc.zeros([1, 64]), tc.zeros([1, 40]))).toThrow(/out's last dimension does not fit the panels/);
    expect(() => call(tc.zeros([1, 64]), tc.zeros([1, 20]), tc.zeros([2, 3, 2, 16]))).toThrow(/params do not give a group size/);
    expect(() => packQuantizedPanels(makeProblem(1, 16, 64, 8, 32).w)).toThrow(/only 4-bit weights pack into panels/);
  });

  it('Linear packs a 4-bit weight only with integer activations on VNNI, and lets go of nothing it still reads', () => {
    const p = makeProblem(2, 40, 128, 4, 64);
    const fast = new Linear(p.w, null, 'fast');
    const exact = new Linear(p.w, null, 'exact', { exact: true });
    const eightBit = new Linear(makeProblem(2, 40, 128, 8, 64).w, null, 'q8');
    expect(quantizedPanelsSupported(p.w)).toBe(vnni);
    expect(fast.readsSourceWeight).toBe(!vnni);
    expect(exact.readsSourceWeight).toBe(true);
    expect(eightBit.readsSourceWeight).toBe(true);
    checkInt16(fast.forward(p.x).toArray() as Float32Array, p, 'Linear');
  });
});
