// The dense weights' layout and kernel on the CPU (native/dense_panels.cc, through Linear): against a float64
// reference, at shapes that reach every path of it: one to three rows of x (the row form, and its k loop's
// remainder), tiles of 12, 6, 4 and 1 rows, more than one block of 96 rows and of 256 values of k, and a last panel
// of fewer than 32 outputs; float32, bf16 and f16 weights; with the bias and a residual added. (The fused prologues
// are covered in fused-decode.test.ts.) This file also runs at every SIMD level below the machine's best.
import * as tc from '@tiny-llm/tensor-core';
import { describe, expect, it } from 'vitest';
import { Linear, packPanels } from '../src/model/linear.ts';
import { engineKernels } from '../src/model/native.ts';

type Tensor = tc.Tensor;

/** y[m][n] = sum_k x[m][k] w[n][k] + bias[n] + residual[m][n], in float64 over the weight's stored values. */
function reference(x: Tensor, w: Tensor, bias: Tensor | null, residual: Tensor | null): Float64Array {
  const [m, k] = x.shape;
  const n = w.shape[0];
  const xs = x.toArray() as Float32Array;
  const ws = tc.astype(w, 'float32').toArray() as Float32Array;
  const bs = bias?.toArray() as Float32Array | undefined;
  const rs = residual?.toArray() as Float32Array | undefined;
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = (bs?.[j] ?? 0) + (rs?.[i * n + j] ?? 0);
      for (let t = 0; t < k; t++) s += xs[i * k + t] * ws[j * k + t];
      y[i * n + j] = s;
    }
  return y;
}
/** The largest |got - want| over the largest |want|: float32 sums of K products stay well under 1e-5 of it. */
function relativeError(got: ArrayLike<number>, want: Float64Array): number {
  let err = 0;
  let scale = 1e-6;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  return err / scale;
}

describe('Linear on the CPU: weights in panels of 32 outputs', () => {
  const shapes: [string, number, number][] = [
    ['one output, K = 7', 1, 7],
    ['31 outputs (one short panel)', 31, 130],
    ['33 outputs (a panel of 1 past a full one)', 33, 64],
    ['100 outputs, K = 300 (two blocks of k, the second short)', 100, 300],
    ['64 outputs, K = 513', 64, 513],
  ];
  const rowCounts = [1, 2, 3, 4, 5, 12, 13, 18, 97, 200];
  for (const dtype of ['float32', 'bfloat16', 'float16'] as const) {
    for (const [what, n, k] of shapes) {
      it(`${dtype}, ${what}: ${rowCounts.join(', ')} rows, with bias and residual`, () => {
        const w = tc.astype(tc.random.normal([n, k], { seed: n + k }), dtype);
        const bias = tc.random.normal([n], { seed: 3 });
        const linear = new Linear(w, bias, 'test');
        for (const m of rowCounts) {
          const x = tc.random.normal([m, k], { seed: m });
          const residual = tc.random.normal([m, n], { seed: m + 1 });
          const y = linear.forward(x, { residual });
          expect(y.shape).toEqual([m, n]);
          expect(relativeError(y.toArray() as Float32Array, reference(x, w, bias, residual)), `${m} rows`).toBeLessThan(1e-5);
          // No residual, no bias: the sums alone.
          const plain = new Linear(w, null, 'test').forward(x);
          expect(relativeError(plain.toArray() as Float32Array, reference(x, w, null, null)), `${m} rows, no bias`).toBeLessThan(1e-5);
        }
      });
    }
  }

  it('packPanels lays out 32 outputs a panel, k-major, zero past the last output; any strides of the weight', () => {
    const w = tc.reshape(tc.astype(tc.arange(35 * 3), 'float32'), [35, 3]); // w[n][k] = 3n + k
    const panels = packPanels(w).toArray() as Float32Array;
    expect(panels.length).toBe(2 * 3 * 32);
    for (let p = 0; p < 2; p++)
      for (let k = 0; k < 3; k++)
        for (let j = 0; j < 32; j++) {
          const n = 32 * p + j;
          expect(panels[(p * 3 + k) * 32 + j], `panel ${p}, k ${k}, output ${j}`).toBe(n < 35 ? 3 * n + k : 0);
        }
    // A transposed view packs as the matrix it shows.
    const wt = tc.transpose(tc.reshape(tc.astype(tc.arange(3 * 35), 'float32'), [3, 35])); // wt[n][k] = 35k + n
    const fromView = packPanels(wt).toArray() as Float32Array;
    expect(fromView[(0 * 3 + 2) * 32 + 5]).toBe(35 * 2 + 5);
    expect(fromView[(1 * 3 + 1) * 32 + 2]).toBe(35 + 34);
  });

  it('packPanels packs a large weight a slice of rows at a time, every slice in its place', () => {
    // 4200 x 1000 float32 is 16.8 MB: two slices of 16 MB or less, the second of 8 rows (a part of one panel).
    const [n, k] = [4200, 1000];
    const w = tc.random.normal([n, k], { seed: 5 });
    const panels = packPanels(w).toArray() as Float32Array;
    const values = w.toArray() as Float32Array;
    for (let probe = 0; probe < 4000; probe++) {
      const row = probe < 40 ? n - 1 - probe : (probe * 7919) % n;
      const col = (probe * 104729) % k;
      const at = (Math.floor(row / 32) * k + col) * 32 + (row % 32);
      expect(panels[at], `row ${row}, column ${col}`).toBe(values[row * k + col]);
    }
  });

  it('panelRows: rows of the weight from its panels, widened to float32; an id outside the panels is refused', () => {
    for (const dtype of ['float32', 'bfloat16', 'float16'] as const) {
      const w = tc.astype(tc.random.normal([45, 24], { seed: 3 }), dtype);
      const panels = packPanels(w);
      const ids = [0, 31, 32, 44, 7, 7];
      const out = tc.empty([2, 3, 24]);
      engineKernels().panelRows(panels.native(), tc.tensor(ids, { dtype: 'int32' }).native(), out.native());
      const table = tc.astype(w, 'float32').toArray() as Float32Array;
      const got = out.toArray() as Float32Array;
      ids.forEach((id, i) => {
        for (let k = 0; k < 24; k++) expect(got[i * 24 + k], `${dtype}, id ${id}, column ${k}`).toBe(table[id * 24 + k]);
      });
      expect(() =>
        engineKernels().panelRows(panels.native(), tc.tensor([64], { dtype: 'int32' }).native(), tc.empty([1, 24]).native()),
      ).toThrow(/panelRows: id 64 is outside the 64 rows/);
    }
  });

  it('bad arguments name what is wrong', () => {
    const w = tc.random.normal([40, 16], { seed: 1 });
    const panels = packPanels(w);
    const kernels = engineKernels();
    const call = (x: Tensor, out: Tensor, p = panels) => kernels.panelLinear(x.native(), p.native(), out.native());
    expect(() => call(tc.zeros([2, 15]), tc.empty([2, 40]))).toThrow(/panelLinear: the panels' K does not match x's last dimension/);
    expect(() => call(tc.zeros([2, 16]), tc.empty([2, 70]))).toThrow(/panelLinear: out's last dimension does not fit the panels/);
    expect(() => call(tc.zeros([2, 16]), tc.empty([3, 40]))).toThrow(/panelLinear: out must be \[\.\.\., N\] with x's rows/);
    expect(() => call(tc.zeros([2, 16]), tc.empty([2, 40]), tc.zeros([2, 16, 31]))).toThrow(
      /panelLinear: panels must be contiguous \[P, K, 32\]/,
    );
    expect(() => kernels.packPanels(w.native(), tc.empty([2, 16, 32], 'bfloat16').native())).toThrow(
      /packPanels: panels must be contiguous \[ceil\(N \/ 32\), K, 32\] of w's dtype/,
    );
  });
});
