// MLX-quantized weights: the QuantizedWeight checks and the reference dequantize, against the golden fixture
// (ops/quantized_matmul: every case's `dequantized` where present, and `out` = x @ dequantized.T for all).
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { cpu } from '../src/backend/cpu.ts';
import type { DType, StorageArray } from '../src/dtype.ts';
import * as tc from '../src/index.ts';
import { dequantize, quantize, QuantizedWeight } from '../src/io/quantized.ts';
import { astype } from '../src/ops/elementwise.ts';
import { readSafetensors } from '../src/io/safetensors.ts';
import { Tensor } from '../src/tensor.ts';

const fixture = fileURLToPath(new URL('../../../fixtures/ops/quantized_matmul.safetensors', import.meta.url));

function make(dtype: DType, shape: number[], data: StorageArray): Tensor {
  return new Tensor(cpu.upload(data), dtype, shape);
}

/** x [M, K] @ w[N, K].T in double precision. */
function matmulT(x: Float32Array, w: Float32Array, m: number, k: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += x[i * k + p] * w[j * k + p];
      out[i * n + j] = s;
    }
  }
  return out;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Packs one row's values as MLX does: a little-endian bit stream, value j at bits [j*bits, (j+1)*bits). */
function packRow(values: number[], bits: number): number[] {
  const words = new Array<number>((values.length * bits) / 32).fill(0);
  values.forEach((v, j) => {
    for (let b = 0; b < bits; b++) {
      if ((v >> b) & 1) {
        const bit = j * bits + b;
        words[bit >>> 5] = (words[bit >>> 5] | (1 << (bit & 31))) >>> 0;
      }
    }
  });
  return words;
}

describe('a QuantizedWeight passed where a Tensor belongs', () => {
  it('the error names the op called, the quantized weight, and tc.dequantize', () => {
    const file = readSafetensors(fixture);
    const qw = new QuantizedWeight(file.get('f32_0.w'), file.get('f32_0.scales'), file.get('f32_0.biases'), 64, 4);
    const asTensor = qw as unknown as tc.Tensor;
    expect(() => tc.astype(asTensor, 'float32')).toThrow(
      /^astype: expected a Tensor, got QuantizedWeight\(\[16, 64\], 4-bit, group 64\), a quantized weight: tc\.dequantize\(w\) gives its float32 tensor$/,
    );
    expect(() => tc.contiguous(asTensor)).toThrow(/^contiguous: expected a Tensor, got QuantizedWeight/);
    expect(() => tc.matmul(tc.zeros([1, 64]), asTensor)).toThrow(/matmul: .*QuantizedWeight.*tc\.dequantize/);
  });
});

describe('dequantize against the quantized_matmul fixture', () => {
  const file = readSafetensors(fixture);
  const cases = JSON.parse(file.metadata.cases) as { name: string; group_size: number; bits: number; dtype?: string }[];

  it('has the cases the header lists', () => {
    expect(cases.length).toBeGreaterThanOrEqual(18);
    expect(new Set(cases.map((c) => c.bits))).toEqual(new Set([2, 4, 8]));
  });

  for (const c of cases) {
    it(`${c.name}: ${c.bits}-bit, group ${c.group_size}${c.dtype ? `, x ${c.dtype}` : ''}`, () => {
      const qw = new QuantizedWeight(
        file.get(`${c.name}.w`),
        file.get(`${c.name}.scales`),
        file.get(`${c.name}.biases`),
        c.group_size,
        c.bits,
        c.name,
      );
      const w = dequantize(qw);
      const [n, k] = qw.shape;
      expect(w.dtype).toBe('float32');
      expect(w.shape).toEqual([n, k]);
      expect(file.info(`${c.name}.w`).shape).toEqual([n, (k * c.bits) / 32]);
      const values = w.toArray() as Float32Array;

      if (file.has(`${c.name}.dequantized`)) {
        // q * scale + bias is exact in float32 for these bf16 scales and small q: compare tightly.
        expect(maxAbsDiff(values, file.get(`${c.name}.dequantized`).toArray())).toBeLessThan(1e-6);
      }
      // Every case, bf16 ones included (those have no `dequantized`): x @ w.T must give `out`.
      const x = file.get(`${c.name}.x`);
      const out = file.get(`${c.name}.out`);
      const m = x.shape[0];
      const got = matmulT(x.toArray() as Float32Array, values, m, k, n);
      const ref = out.toArray();
      const scale = Math.max(1, ...Array.from(ref, Math.abs));
      expect(maxAbsDiff(got, ref) / scale).toBeLessThan(1e-5);
    });
  }
});

describe('dequantize bit layouts', () => {
  it('4-bit: value j of a word sits in bits [4j, 4j+4), lowest first', () => {
    // One row of 32 values (group 32): words 0x76543210, 0xfedcba98, then two words of 0x11111111.
    const words = new Uint32Array([0x76543210, 0xfedcba98, 0x11111111, 0x11111111]);
    const qw = new QuantizedWeight(
      make('uint32', [1, 4], words),
      make('float32', [1, 1], new Float32Array([2])),
      make('float32', [1, 1], new Float32Array([-1])),
      32,
      4,
    );
    const expected = [...Array.from({ length: 16 }, (_, q) => q), ...new Array(16).fill(1)].map((q) => q * 2 - 1);
    expect(Array.from(dequantize(qw).toArray())).toEqual(expected);
  });

  for (const bits of [2, 3, 4, 5, 6, 8]) {
    it(`${bits}-bit: recovers q * scale + bias of each group (two groups of 32, three rows)`, () => {
      const rows = 3;
      const cols = 64;
      const group = 32;
      const q = Array.from({ length: rows * cols }, (_, i) => (i * 7 + 3) % (1 << bits));
      const words = Array.from({ length: rows }, (_, r) => packRow(q.slice(r * cols, (r + 1) * cols), bits)).flat();
      const scales = [0.5, -0.25, 1, 2, 0.125, 3];
      const biases = [1, 0, -2, 0.5, 4, -1];
      const qw = new QuantizedWeight(
        make('uint32', [rows, (cols * bits) / 32], new Uint32Array(words)),
        make('float32', [rows, 2], new Float32Array(scales)),
        make('float32', [rows, 2], new Float32Array(biases)),
        group,
        bits,
      );
      expect(qw.shape).toEqual([rows, cols]);
      const expected = q.map((v, i) => {
        const g = Math.floor(i / cols) * 2 + Math.floor((i % cols) / group);
        return v * scales[g] + biases[g];
      });
      expect(Array.from(dequantize(qw).toArray())).toEqual(expected);
    });
  }

  it('bf16 scales and leading batch dimensions (stacked experts)', () => {
    const words = new Uint32Array(2 * 1 * 4).fill(0x33333333); // every 4-bit value is 3
    // These values are exact in bf16: the high half of their float32 bits.
    const bf16 = (v: number) => new Uint16Array(new Float32Array([v]).buffer)[1];
    const qw = new QuantizedWeight(
      make('uint32', [2, 1, 4], words),
      make('bfloat16', [2, 1, 1], new Uint16Array([bf16(1.5), bf16(-2)])),
      make('bfloat16', [2, 1, 1], new Uint16Array([bf16(0.5), bf16(1)])),
      32,
      4,
    );
    expect(qw.shape).toEqual([2, 1, 32]);
    const values = Array.from(dequantize(qw).toArray());
    expect(values.slice(0, 32)).toEqual(new Array(32).fill(5));
    expect(values.slice(32)).toEqual(new Array(32).fill(-5));
  });
});

describe('QuantizedWeight checks', () => {
  const w = () => make('uint32', [4, 8], new Uint32Array(32));
  const s = (shape: number[]) => make('float32', shape, new Float32Array(shape.reduce((a, b) => a * b, 1)));

  it('accepts a consistent triple and reports its logical shape', () => {
    const qw = new QuantizedWeight(w(), s([4, 1]), s([4, 1]), 64, 4);
    expect(qw.shape).toEqual([4, 64]);
    expect(qw.inFeatures).toBe(64);
    expect(qw.outFeatures).toBe(4);
  });

  it('names the layer and the shapes when they do not fit', () => {
    expect(() => new QuantizedWeight(w(), s([4, 2]), s([4, 2]), 64, 4, 'layer.q_proj')).toThrow(
      /layer.q_proj: scales should be \[4, 1\] \(weight uint32\[4, 8\], scales float32\[4, 2\]/,
    );
    expect(() => new QuantizedWeight(s([4, 8]), s([4, 1]), s([4, 1]), 64, 4)).toThrow(/packed weight must be uint32/);
    expect(() => new QuantizedWeight(w(), s([4, 1]), make('bfloat16', [4, 1], new Uint16Array(4)), 64, 4)).toThrow(/same dtype/);
    expect(() => new QuantizedWeight(w(), s([4, 1]), s([4, 1]), 64, 7)).toThrow(/unsupported quantization bits 7/);
    expect(() => new QuantizedWeight(w(), s([4, 1]), s([4, 1]), 48, 4)).toThrow(/unsupported quantization group size 48/);
    // 8 words of 8 bits are 32 columns: not a whole number of groups of 64.
    expect(() => new QuantizedWeight(w(), s([4, 1]), s([4, 1]), 64, 8)).toThrow(/32 input columns do not split into groups of 64/);
  });
});

describe('quantize (MLX affine quantization, the inverse of dequantize)', () => {
  /** Deterministic values in [-1, 1) scaled per row, so that groups have different ranges. */
  function randomWeight(rows: number, cols: number, seed: number): Float32Array {
    const v = new Float32Array(rows * cols);
    let s = seed >>> 0;
    for (let i = 0; i < v.length; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      v[i] = ((s / 2 ** 32) * 2 - 1) * (0.05 + (Math.floor(i / cols) % 7) * 0.3);
    }
    return v;
  }

  for (const dtype of ['bfloat16', 'float16', 'float32'] as const) {
    for (const bits of [2, 3, 4, 5, 6, 8]) {
      for (const group of [32, 64, 128]) {
        it(`${bits}-bit, group ${group}, ${dtype} scales: round trip within |scale| / 2 (|scale| where clipped at the far edge)`, () => {
          const rows = 9;
          const cols = 256;
          const values = randomWeight(rows, cols, bits * 1000 + group);
          values.fill(0, 2 * cols, 2 * cols + group); // an all-zero group stays zero
          const qw = quantize(make('float32', [rows, cols], values), bits, group, { dtype });
          expect(qw.shape).toEqual([rows, cols]);
          expect(qw.weight.shape).toEqual([rows, (cols * bits) / 32]);
          expect(qw.scales.dtype).toBe(dtype);
          expect(qw.scales.shape).toEqual([rows, cols / group]);
          const back = dequantize(qw).toArray() as Float32Array;
          const s = qw.scales.toArray() as Float32Array;
          const b = qw.biases.toArray() as Float32Array;
          const top = 2 ** bits - 1;
          // Unit roundoff of the stored scales and biases.
          const u = dtype === 'bfloat16' ? 2 ** -9 : dtype === 'float16' ? 2 ** -11 : 2 ** -24;
          for (let i = 0; i < values.length; i++) {
            const g = Math.floor(i / group); // cols is a multiple of group: groups are consecutive
            const err = Math.abs(back[i] - values[i]);
            const lo = Math.min(b[g], b[g] + top * s[g]);
            const hi = Math.max(b[g], b[g] + top * s[g]);
            const step = Math.abs(s[g]);
            if (values[i] >= lo && values[i] <= hi) {
              expect(err, `element ${i}`).toBeLessThanOrEqual(step / 2 + 1e-6 * Math.abs(values[i]) + 1e-12);
            } else {
              // Outside the levels: MLX's zero-snapped step can fall short of the far edge by up to one step
              // (a quarter of 2-bit values land there), plus the rounding of the stored scale, multiplied by
              // up to 2^bits - 1 levels, and of the stored bias.
              expect(err, `element ${i} (clipped)`).toBeLessThanOrEqual(step * (1 + top * u) + u * Math.abs(b[g]) + 1e-6);
            }
          }
          expect(Array.from(back.subarray(2 * cols, 2 * cols + group))).toEqual(new Array(group).fill(0));
        });
      }
    }
  }

  it('follows MLX: the edge of larger magnitude is the bias, a negative scale when it is the maximum', () => {
    // Values on the grid -2 + 0.5 q (q = 0..15): |max| = 5.5 > |min| = 2, so bias 5.5 and scale -0.5; exact.
    const grid = Float32Array.from({ length: 32 }, (_, i) => -2 + 0.5 * (i % 16));
    const qw = quantize(make('float32', [1, 32], grid), 4, 32);
    expect(Array.from(qw.scales.toArray())).toEqual([-0.5]);
    expect(Array.from(qw.biases.toArray())).toEqual([5.5]);
    expect(Array.from(dequantize(qw).toArray())).toEqual(Array.from(grid));
    // Mirrored: |min| is larger, so bias = min and the scale is positive.
    const mirrored = grid.map((v) => 0 - v); // 0 - v: no -0, which toEqual tells from 0
    const qm = quantize(make('float32', [1, 32], mirrored), 4, 32);
    expect(Array.from(qm.scales.toArray())).toEqual([0.5]);
    expect(Array.from(qm.biases.toArray())).toEqual([-5.5]);
    expect(Array.from(dequantize(qm).toArray())).toEqual(Array.from(mirrored));
  });

  it('keeps leading batch dimensions and accepts bfloat16 weights', () => {
    const values = randomWeight(6, 64, 7);
    const w = make('float32', [2, 3, 64], values);
    const qw = quantize(astype(w, 'bfloat16'), 8, 64);
    expect(qw.shape).toEqual([2, 3, 64]);
    expect(qw.weight.shape).toEqual([2, 3, 16]);
    expect(qw.scales.shape).toEqual([2, 3, 1]);
    const back = dequantize(qw).toArray() as Float32Array;
    expect(maxAbsDiff(back, values)).toBeLessThan(0.02);
  });

  it('rejects what it cannot quantize', () => {
    expect(() => quantize(make('float32', [2, 48], new Float32Array(96)), 4, 32)).toThrow(/do not split into groups of 32/);
    expect(() => quantize(make('float32', [64], new Float32Array(64)), 4, 32)).toThrow(/at least 2 dimensions/);
    expect(() => quantize(make('float32', [1, 64], new Float32Array(64)), 7, 32)).toThrow(/unsupported quantization bits 7/);
  });
});
