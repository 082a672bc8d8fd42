// native.matmul against a float64 triple loop, on hand-made views: every path of the kernel (packed GEMM,
// skinny rows / cols paths for M <= 16, batched), every operand dtype, odd strides. vitest.config.ts runs it at
// every SIMD level the CPU has.
import { describe, expect, it } from 'vitest';
import { cpu, cpuFeatures } from '../src/index.ts';
import { native } from '../src/native.ts';

const F32 = 0;
const F16 = 1;
const BF16 = 2;
const I32 = 3;
type Dtype = typeof F32 | typeof F16 | typeof BF16;

// ---- Test data ----------------------------------------------------------------------------------------------------

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Multiples of 1/8 in [-2, 2]: exact in float32, bfloat16 and float16, so the dtype changes nothing but the bits.
function value(r: () => number): number {
  return (Math.floor(r() * 33) - 16) / 8;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

// bfloat16 of an exactly representable value: the top 16 bits of its float32 pattern.
function bf16Bits(v: number): number {
  f32[0] = v;
  return u32[0] >>> 16;
}

// float16 of an exactly representable normal value (or zero), built from its exponent and mantissa.
function f16Bits(v: number): number {
  if (v === 0) return 0;
  const sign = v < 0 ? 0x8000 : 0;
  const a = Math.abs(v);
  const e = Math.floor(Math.log2(a));
  const mant = Math.round((a / 2 ** e - 1) * 1024);
  return sign | ((e + 15) << 10) | mant;
}

interface Operand {
  view: { buffer: ArrayBuffer; byteOffset: number; dtype: number; shape: number[]; strides: number[] };
  vals: Float64Array; // the storage's values, exactly
  first: number; // element index of the view's first element in vals
}

// A view of `shape` with element strides `strides` over fresh storage. `first` elements of storage precede the
// view's first element (so byteOffset is exercised; negative strides need it). Broadcast (stride 0), transposed
// and gapped layouts all read consistent values because the reference reads back through the same strides.
function operand(shape: number[], strides: number[], dtype: Dtype, seed: number, first = 0): Operand {
  let hi = 0;
  for (let i = 0; i < shape.length; i++) if (strides[i] > 0) hi += (shape[i] - 1) * strides[i];
  const size = first + hi + 1 + 3;
  const r = rng(seed);
  const vals = new Float64Array(size);
  for (let i = 0; i < size; i++) vals[i] = value(r);
  const bytes = dtype === F32 ? 4 : 2;
  let store: Float32Array | Uint16Array;
  if (dtype === F32) store = Float32Array.from(vals);
  else store = Uint16Array.from(vals, dtype === BF16 ? bf16Bits : f16Bits);
  const view = { buffer: store.buffer as ArrayBuffer, byteOffset: first * bytes, dtype, shape, strides };
  return { view, vals, first };
}

function rowMajor(shape: number[]): number[] {
  const s = new Array(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = s[i + 1] * shape[i + 1];
  return s;
}

// Strides of a [..., R, C] view over storage laid out [..., C, R] (a transposed matrix).
function transposedLast2(shape: number[]): number[] {
  const n = shape.length;
  const stored = [...shape.slice(0, n - 2), shape[n - 1], shape[n - 2]];
  const s = rowMajor(stored);
  return [...s.slice(0, n - 2), s[n - 1], s[n - 2]];
}

// ---- Reference and comparison --------------------------------------------------------------------------------------

function outView(shape: number[]) {
  const data = new Float32Array(shape.reduce((p, q) => p * q, 1)).fill(Number.NaN); // must be overwritten
  return { data, view: { buffer: data.buffer, byteOffset: 0, dtype: F32, shape, strides: rowMajor(shape) } };
}

function batchIndices(batch: number[]): number[][] {
  let all: number[][] = [[]];
  for (const d of batch) all = all.flatMap((p) => Array.from({ length: d }, (_, i) => [...p, i]));
  return all;
}

// Element offset of a batch index in an operand's storage.
function batchOffset(op: Operand, bi: number[]): number {
  let off = op.first;
  for (let d = 0; d < bi.length; d++) off += bi[d] * op.view.strides[d];
  return off;
}

// Runs native.matmul and checks every element against a float64 loop: |out - ref| <= 1e-4 * sum |a||b|.
function checkMatmul(a: Operand, b: Operand): void {
  const as = a.view.shape;
  const nd = as.length;
  const [M, K, N] = [as[nd - 2], as[nd - 1], b.view.shape[nd - 1]];
  const [am, ak] = a.view.strides.slice(nd - 2);
  const [bk, bn] = b.view.strides.slice(nd - 2);
  const batch = as.slice(0, nd - 2);
  const out = outView([...batch, M, N]);
  native.matmul(a.view, b.view, out.view);
  let item = 0;
  for (const bi of batchIndices(batch)) {
    const a0 = batchOffset(a, bi),
      b0 = batchOffset(b, bi);
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = 0;
        let mag = 0;
        for (let k = 0; k < K; k++) {
          const p = a.vals[a0 + i * am + k * ak] * b.vals[b0 + k * bk + j * bn];
          s += p;
          mag += Math.abs(p);
        }
        const got = out.data[item * M * N + i * N + j];
        if (!(Math.abs(got - s) <= 1e-4 * mag + 1e-30)) {
          // One failure is enough to see; comparing element by element with expect() would be slow.
          expect.fail(`matmul mismatch at batch [${bi}] (${i}, ${j}) of ${M}x${K}x${N}: got ${got}, expected ${s}`);
        }
      }
    }
    item++;
  }
}

// a [M, K] and b [K, N] in the given layouts: 'row' (row-major), 'trans' (stored transposed; for b that is the
// linear-layer weight layout W[N][K]).
function pair(
  M: number,
  K: number,
  N: number,
  opts: { aLayout?: 'row' | 'trans'; bLayout?: 'row' | 'trans'; aDtype?: Dtype; bDtype?: Dtype; seed?: number } = {},
): [Operand, Operand] {
  const { aLayout = 'row', bLayout = 'row', aDtype = F32, bDtype = F32, seed = M * 1000003 + K * 1009 + N } = opts;
  const as = aLayout === 'row' ? rowMajor([M, K]) : transposedLast2([M, K]);
  const bs = bLayout === 'row' ? rowMajor([K, N]) : transposedLast2([K, N]);
  return [operand([M, K], as, aDtype, seed), operand([K, N], bs, bDtype, seed + 1)];
}

// ---- Tests ---------------------------------------------------------------------------------------------------------

describe('native.matmul: packed GEMM', () => {
  const shapes: [number, number, number][] = [
    [1, 1, 1],
    [7, 13, 5],
    [6, 16, 16],
    [12, 32, 32],
    [17, 9, 33],
    [37, 300, 129],
    [64, 64, 64],
    [150, 260, 70],
    // The AVX-512 tile (12 x 32): exact multiples, one row and one half-panel over, K a multiple of 8 across blocks.
    [24, 512, 64],
    [13, 64, 48],
  ];
  for (const [M, K, N] of shapes) {
    it(`${M}x${K}x${N}, b contiguous and in weight layout`, () => {
      checkMatmul(...pair(M, K, N));
      checkMatmul(...pair(M, K, N, { bLayout: 'trans' }));
    });
  }

  it('transposed a, both layouts of b', () => {
    checkMatmul(...pair(37, 300, 129, { aLayout: 'trans' }));
    checkMatmul(...pair(37, 300, 129, { aLayout: 'trans', bLayout: 'trans' }));
  });

  it('crosses the K, M and N blocking boundaries of both SIMD levels (K > 256, 512; M > 144; N > 2016, 4080)', () => {
    checkMatmul(...pair(150, 600, 20, { bLayout: 'trans' }));
    checkMatmul(...pair(20, 40, 4100));
    checkMatmul(...pair(18, 30, 4100, { bLayout: 'trans', bDtype: BF16 }));
  });

  it('bfloat16 and float16 operands, converted while packing', () => {
    for (const bDtype of [BF16, F16] as Dtype[]) {
      checkMatmul(...pair(37, 300, 129, { bDtype }));
      checkMatmul(...pair(37, 300, 129, { bDtype, bLayout: 'trans' }));
      checkMatmul(...pair(23, 70, 45, { aDtype: bDtype, bDtype: F32 }));
    }
    checkMatmul(...pair(23, 70, 45, { aDtype: F16, bDtype: BF16, aLayout: 'trans' }));
  });

  it('general strides: gaps, negative strides, a view that starts inside its buffer', () => {
    // a: every other column of a wider matrix; b: rows walked backwards.
    const M = 29,
      K = 41,
      N = 35;
    const a = operand([M, K], [2 * K + 3, 2], F32, 1);
    const b = operand([K, N], [-N, 1], F32, 2, (K - 1) * N);
    checkMatmul(a, b);
    const bw = operand([K, N], [1, -K], BF16, 3, (N - 1) * K); // weight layout, W rows reversed
    checkMatmul(a, bw);
    const odd = operand([K, N], [3, 5 * K], F32, 4); // neither dimension contiguous
    checkMatmul(a, odd);
  });

  it('K = 0 writes zeros; M = 0 and N = 0 are no-ops', () => {
    const out = outView([3, 4]);
    native.matmul(operand([3, 0], [0, 1], F32, 1).view, operand([0, 4], [4, 1], F32, 2).view, out.view);
    expect(Array.from(out.data)).toEqual(new Array(12).fill(0));
    native.matmul(operand([0, 5], [5, 1], F32, 1).view, operand([5, 4], [4, 1], F32, 2).view, outView([0, 4]).view);
    native.matmul(operand([3, 5], [5, 1], F32, 1).view, operand([5, 0], [0, 1], F32, 2).view, outView([3, 0]).view);
  });
});

describe('native.matmul: skinny paths (M <= 16, decode)', () => {
  it('M = 1..16 against a weight in (N, K) layout, f32 and bf16 (GEMV, W streamed once)', () => {
    const K = 896,
      N = 523;
    for (let M = 1; M <= 16; M++) {
      checkMatmul(...pair(M, K, N, { bLayout: 'trans', bDtype: M % 2 ? BF16 : F32 }));
    }
  });

  it('M = 17..64 against a weight in (N, K) layout (the rows path, up to 64 rows for a weight), K with a tail', () => {
    for (const M of [17, 20, 33, 47, 64]) {
      checkMatmul(...pair(M, 300, 131, { bLayout: 'trans', bDtype: M % 2 ? BF16 : F32 }));
      checkMatmul(...pair(M, 896, 64, { bLayout: 'trans', bDtype: F16 }));
    }
  });

  it('M = 1 at a real decode width (N = 4864, K = 896, bf16), M = 4 with f16', () => {
    checkMatmul(...pair(1, 896, 4864, { bLayout: 'trans', bDtype: BF16 }));
    checkMatmul(...pair(4, 896, 700, { bLayout: 'trans', bDtype: F16 }));
  });

  it('K not a multiple of 8 or 32, N not a multiple of 4, transposed and bf16 a', () => {
    for (const [M, K, N] of [
      [1, 7, 3],
      [6, 7, 5],
      [2, 33, 5],
      [3, 100, 9],
      [5, 61, 6],
      [16, 257, 11],
      [40, 130, 29],
    ]) {
      checkMatmul(...pair(M, K, N, { bLayout: 'trans' }));
      checkMatmul(...pair(M, K, N, { bLayout: 'trans', aLayout: 'trans', aDtype: BF16, bDtype: F16 }));
    }
  });

  it('b contiguous [K, N] (axpy form), all M, N with 16-, 8- and scalar-column tails', () => {
    for (const [M, K, N] of [
      [1, 300, 64],
      [1, 64, 77],
      [3, 50, 100],
      [6, 20, 31],
      [7, 33, 130],
      [16, 129, 15],
    ]) {
      checkMatmul(...pair(M, K, N));
      checkMatmul(...pair(M, K, N, { bDtype: BF16 }));
      checkMatmul(...pair(M, K, N, { bDtype: F16, aLayout: 'trans' }));
    }
  });
});

describe('native.matmul: batches', () => {
  it('attention-like: 14 heads of 64x64 @ 64x64, k in weight layout and v contiguous', () => {
    const H = 14,
      T = 64,
      D = 64;
    const q = operand([H, T, D], rowMajor([H, T, D]), F32, 1);
    const kT = operand([H, D, T], [T * D, 1, D], F32, 2); // k stored [H, T, D], used as k^T
    checkMatmul(q, kT);
    const p = operand([H, T, T], rowMajor([H, T, T]), F32, 3);
    const v = operand([H, T, D], rowMajor([H, T, D]), BF16, 4);
    checkMatmul(p, v);
  });

  it('broadcast batch dims (stride 0), like grouped-query attention, on the GEMM and skinny paths', () => {
    for (const M of [1, 5, 20, 40]) {
      const [G, R, K, N] = [2, 3, 40, 37];
      // a broadcast over the first batch dim, b (one per group) over the second.
      const a = operand([G, R, M, K], [0, M * K, K, 1], F32, 10 + M);
      const bw = operand([G, R, K, N], [N * K, 0, 1, K], BF16, 20 + M);
      checkMatmul(a, bw);
      const bc = operand([G, R, K, N], [K * N, 0, N, 1], F32, 30 + M);
      checkMatmul(a, bc);
    }
  });

  it('few large items split across the pool, odd counts', () => {
    const a = operand([3, 70, 90], rowMajor([3, 70, 90]), F32, 5);
    const b = operand([3, 90, 200], transposedLast2([3, 90, 200]), F16, 6);
    checkMatmul(a, b);
  });
});

describe('native.matmul: bfloat16 products (cpu.setMatmulPrecision, opt-in)', () => {
  const features = cpuFeatures();
  const used = features.avx512bf16 && features.level === 'avx512';

  // bfloat16 of a float32, rounded to nearest even, as its value.
  function toBf16(v: number): number {
    f32[0] = v;
    const bits = u32[0];
    u32[0] = (((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) << 16) >>> 0;
    return f32[0];
  }

  // a [M, K] float32 with values that bfloat16 cannot hold; W [N, K] bfloat16 passed as its transpose.
  function problem(M: number, K: number, N: number) {
    const a = Float32Array.from({ length: M * K }, (_, i) => Math.sin(i * 0.731) * 1.7);
    const w = operand([N, K], rowMajor([N, K]), BF16, M + K + N);
    const wT = { ...w.view, shape: [K, N], strides: [1, K] };
    const out = outView([M, N]);
    const run = () => native.matmul({ buffer: a.buffer, byteOffset: 0, dtype: F32, shape: [M, K], strides: [K, 1] }, wT, out.view);
    // |out - sum x w| over sum |x w|, worst over all outputs, with x = a or a rounded to bfloat16.
    const worst = (round: boolean) => {
      let err = 0;
      for (let i = 0; i < M; i++) {
        for (let j = 0; j < N; j++) {
          let s = 0;
          let mag = 0;
          for (let k = 0; k < K; k++) {
            const p = (round ? toBf16(a[i * K + k]) : a[i * K + k]) * w.vals[j * K + k];
            s += p;
            mag += Math.abs(p);
          }
          err = Math.max(err, Math.abs(out.data[i * N + j] - s) / mag);
        }
      }
      return err;
    };
    return { run, worst };
  }

  it(`prefill with a bf16 weight: bfloat16 products where the CPU has them (here: ${used}), float32 otherwise`, () => {
    expect(cpu.matmulPrecision()).toBe('float32');
    try {
      cpu.setMatmulPrecision('bfloat16');
      expect(cpu.matmulPrecision()).toBe('bfloat16');
      // K odd, within one block and past it (512 k), M and N past whole tiles.
      for (const [M, K, N] of [
        [37, 301, 131],
        [24, 512, 64],
        [17, 16, 40],
        [30, 601, 70],
      ]) {
        const p = problem(M, K, N);
        p.run();
        // Float32 sums of the products: the rounding of the activations changes these sums by ~1e-4.
        expect(p.worst(used), `${M}x${K}x${N}`).toBeLessThan(1e-5);
      }
    } finally {
      cpu.setMatmulPrecision('float32');
    }
  });

  it('float32 by default and again after switching back; other layouts and decode stay float32 either way', () => {
    const p = problem(37, 301, 131);
    p.run();
    expect(p.worst(false)).toBeLessThan(1e-5);
    try {
      cpu.setMatmulPrecision('bfloat16');
      const decode = problem(5, 301, 131);
      decode.run();
      expect(decode.worst(false)).toBeLessThan(1e-5);
      checkMatmul(...pair(37, 300, 129, { bDtype: BF16 })); // b contiguous [K, N], not the weight layout
      checkMatmul(...pair(37, 300, 129, { bLayout: 'trans' })); // a float32 weight
    } finally {
      cpu.setMatmulPrecision('float32');
    }
    p.run();
    expect(p.worst(false)).toBeLessThan(1e-5);
  });

  it('rejects an unknown precision', () => {
    expect(() => cpu.setMatmulPrecision('float16' as never)).toThrow(
      'setMatmulPrecision: "float16" is not a precision (float32 or bfloat16)',
    );
  });
});

describe('native.matmul: argument errors throw instead of crashing', () => {
  const a = operand([4, 5], [5, 1], F32, 1);
  const b = operand([5, 6], [6, 1], F32, 2);
  it('mismatched inner dimension', () => {
    const bad = operand([7, 6], [6, 1], F32, 3);
    expect(() => native.matmul(a.view, bad.view, outView([4, 6]).view)).toThrow(/matmul/);
    expect(() => native.matmul(a.view, bad.view, outView([4, 6]).view)).toThrow(/float32\[4, 5\]/);
  });
  it('wrong out shape, dtype or layout', () => {
    expect(() => native.matmul(a.view, b.view, outView([4, 7]).view)).toThrow(/matmul/);
    expect(() => native.matmul(a.view, b.view, outView([6, 4]).view)).toThrow(/matmul/);
    const o = outView([4, 6]);
    expect(() => native.matmul(a.view, b.view, { ...o.view, dtype: I32 })).toThrow(/matmul/);
    const wide = outView([4, 12]);
    expect(() => native.matmul(a.view, b.view, { ...wide.view, shape: [4, 6], strides: [12, 1] })).toThrow(/matmul/);
  });
  it('int32 input, rank or batch mismatch, missing arguments', () => {
    const ints = new Int32Array(20);
    const iv = { buffer: ints.buffer, byteOffset: 0, dtype: I32, shape: [4, 5], strides: [5, 1] };
    expect(() => native.matmul(iv, b.view, outView([4, 6]).view)).toThrow(/matmul/);
    const a3 = operand([2, 4, 5], rowMajor([2, 4, 5]), F32, 4);
    expect(() => native.matmul(a3.view, b.view, outView([2, 4, 6]).view)).toThrow(/matmul/);
    const b3 = operand([3, 5, 6], rowMajor([3, 5, 6]), F32, 5);
    expect(() => native.matmul(a3.view, b3.view, outView([2, 4, 6]).view)).toThrow(/matmul/);
    expect(() => native.matmul(a.view)).toThrow(/matmul/);
    expect(() => native.matmul(a.view, b.view, outView([4, 6]).data)).toThrow(/matmul/);
  });
});
