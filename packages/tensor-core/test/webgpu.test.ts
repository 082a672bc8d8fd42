// The WebGPU backend against plain JavaScript references. Runs on whatever adapter initWebGPU finds: here,
// Mesa's software GLES. There is no skip: a machine without an adapter fails with initWebGPU's message.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { BinaryOp, UnaryOp } from '../src/backend/backend.ts';
import { initWebGPU, WebGPUBackend } from '../src/backend/webgpu/index.ts';
import type { DType } from '../src/dtype.ts';
import { Tensor } from '../src/tensor.ts';

process.env.EGL_PLATFORM ??= 'surfaceless';

let gpu: WebGPUBackend;
/** A second backend on the same device, capped at 64 invocations: the 8x8 matmul tiles of small GPUs. */
let small: WebGPUBackend;

let initError: unknown = null;

beforeAll(async () => {
  try {
    gpu = await initWebGPU();
    small = new WebGPUBackend(gpu.device, { maxInvocations: 64 });
  } catch (err) {
    initError = err;
  }
});

// Every test fails (rather than being skipped) with initWebGPU's message when there is no adapter.
beforeEach(() => {
  if (initError) throw initError;
});

afterAll(() => {
  small?.destroy();
  gpu?.destroy();
});

// ---- helpers

const f32 = Math.fround;

function upload(
  data: Float32Array | Int32Array | Uint32Array | Uint8Array | Uint16Array,
  dtype: DType,
  shape: number[],
  backend = gpu,
): Tensor {
  return new Tensor(backend.upload(data), dtype, shape);
}

function empty(dtype: DType, shape: number[], backend = gpu): Tensor {
  return new Tensor(
    backend.allocate(
      dtype,
      shape.reduce((n, d) => n * d, 1),
    ),
    dtype,
    shape,
  );
}

/** Deterministic values in [-scale, scale). */
function values(n: number, seed = 1, scale = 1): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return (s / 2147483648) * 2 * scale - scale;
  });
}

function contiguousStrides(shape: number[]): number[] {
  const strides = shape.map(() => 1);
  for (let i = shape.length - 2; i >= 0; i--) strides[i] = strides[i + 1] * shape[i + 1];
  return strides;
}

/** Visits every index of `shape` in row-major order. */
function forEachIndex(shape: number[], fn: (idx: number[], flat: number) => void): void {
  const n = shape.reduce((a, d) => a * d, 1);
  const idx = shape.map(() => 0);
  for (let flat = 0; flat < n; flat++) {
    fn(idx, flat);
    for (let d = shape.length - 1; d >= 0 && ++idx[d] === shape[d]; d--) idx[d] = 0;
  }
}

const at = (idx: number[], strides: number[], offset = 0) => idx.reduce((o, i, d) => o + i * strides[d], offset);

function toBf16(v: number): number {
  const u = new Uint32Array(new Float32Array([v]).buffer)[0];
  if ((u & 0x7fffffff) > 0x7f800000) return (u >>> 16) | 0x40;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
const fromBf16 = (h: number) => new Float32Array(new Uint32Array([h << 16]).buffer)[0];

/** Round-to-nearest-even float32 -> float16 bits, written independently of the shader's version. */
function toF16(v: number): number {
  const x = f32(v);
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (Number.isNaN(x)) return 0x7e00;
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) return sign | roundEven(a / 2 ** -24); // subnormal (a carry into 0x400 is the right answer)
  const e = Math.floor(Math.log2(a));
  const exp = a / 2 ** e >= 2 ? e + 1 : a / 2 ** e < 1 ? e - 1 : e;
  const q = roundEven((a / 2 ** exp - 1) * 1024);
  return sign | (((exp + 15) << 10) + q);
}
function roundEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol = 0): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const [a, e] = [actual[i], expected[i]];
    if (Number.isNaN(e)) {
      if (!Number.isNaN(a)) expect.fail(`element ${i}: ${a}, expected NaN`);
    } else if (!(Math.abs(a - e) <= atol + rtol * Math.abs(e)) && a !== e) {
      expect.fail(`element ${i}: ${a}, expected ${e} (atol ${atol}, rtol ${rtol})`);
    }
  }
}

// ---- tests

describe('webgpu backend', () => {
  it('initialises once and names itself', async () => {
    expect(gpu.name).toBe('webgpu');
    expect(await initWebGPU()).toBe(gpu);
    expect(gpu.adapterName.length).toBeGreaterThan(0);
  });

  describe('upload and read', () => {
    it('round-trips float32, int32, uint8 and bool', async () => {
      const f = new Float32Array([1.5, -2, 3.25, 1e-30, -0, Infinity]);
      expect(await gpu.read(upload(f, 'float32', [2, 3]))).toEqual(f);
      const i = new Int32Array([-2147483648, -1, 0, 7, 2147483647]);
      const ti = upload(i, 'int32', [5]);
      expect(await gpu.read(ti)).toEqual(i);
      expect(await ti.data()).toEqual(i);
      // 7 bytes: not a whole number of words, so the tail is padded on upload.
      const u = new Uint8Array([0, 1, 2, 127, 128, 254, 255]);
      expect(await gpu.read(upload(u, 'uint8', [7]))).toEqual(u);
      const b = new Uint8Array([1, 0, 0, 1, 1]);
      const tb = upload(b, 'bool', [5]);
      expect(await tb.data()).toEqual(b);
      // Byte views at every offset within a word.
      for (let offset = 0; offset < 4; offset++) {
        expect(await gpu.read(upload(u, 'uint8', [7]).view([3], [1], offset))).toEqual(u.subarray(offset, offset + 3));
      }
    });

    it('round-trips bfloat16 and float16 words, including views at odd element offsets', async () => {
      const words = new Uint16Array([0x3f80, 0x4000, 0xc040, 0x4080, 0x7f80, 0x0001, 0x8000]);
      const bf = upload(words, 'bfloat16', [7]);
      const raw = await gpu.read(bf);
      expect(raw).toBeInstanceOf(Uint16Array);
      expect(raw).toEqual(words);
      expect(await gpu.read(bf.view([3], [1], 1))).toEqual(words.subarray(1, 4));
      expect(await gpu.read(bf.view([2], [1], 5))).toEqual(words.subarray(5, 7));
      expect(await bf.view([3], [1], 3).data()).toEqual(new Float32Array([4, Infinity, fromBf16(1)]));
      // A strided half-precision view goes through the copy kernel (16-bit stores into shared words).
      expect(await gpu.read(bf.view([3], [2], 1))).toEqual(new Uint16Array([0x4000, 0x4080, 0x0001]));
      const h = upload(new Uint16Array([0x3c00, 0xc000, 0x3800, 0x0001, 0x7bff]), 'float16', [5]);
      expect(await h.view([3], [1], 1).data()).toEqual(new Float32Array([-2, 0.5, 2 ** -24]));
    });

    it('reads an empty tensor', async () => {
      const t = empty('float32', [0, 3]);
      expect(await t.data()).toEqual(new Float32Array(0));
    });
  });

  describe('copy', () => {
    it('makes a transposed view contiguous (float32, bfloat16, uint8)', async () => {
      const shape = [3, 5, 4];
      const n = 60;
      const data = values(n, 3);
      // Permute (0, 1, 2) -> (2, 0, 1): a view of shape [4, 3, 5].
      const perm = [2, 0, 1];
      const vShape = perm.map((p) => shape[p]);
      const vStrides = perm.map((p) => contiguousStrides(shape)[p]);
      const expected = new Float32Array(n);
      forEachIndex(vShape, (idx, flat) => (expected[flat] = data[at(idx, vStrides)]));

      const x = upload(data, 'float32', shape).view(vShape, vStrides);
      const out = empty('float32', vShape);
      gpu.unary('copy', x, out);
      expect(await out.data()).toEqual(expected);
      expect(await x.data()).toEqual(expected); // read() of a strided view

      const words = Uint16Array.from(data, toBf16);
      const hx = upload(words, 'bfloat16', shape).view(vShape, vStrides);
      const hout = empty('bfloat16', vShape);
      gpu.unary('copy', hx, hout);
      expect(await gpu.read(hout)).toEqual(Uint16Array.from(expected, toBf16));

      const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 37) % 256);
      const bx = upload(bytes, 'uint8', shape).view(vShape, vStrides);
      const expectedBytes = new Uint8Array(n);
      forEachIndex(vShape, (idx, flat) => (expectedBytes[flat] = bytes[at(idx, vStrides)]));
      expect(await gpu.read(bx)).toEqual(expectedBytes);
    });

    it('writes into a strided output view', async () => {
      // out is a [4, 6] buffer; write a [4, 3] input into its odd columns.
      const dst = empty('float32', [4, 6]);
      gpu.unary('copy', upload(new Float32Array(24), 'float32', [24]), dst.view([24], [1]));
      gpu.unary('copy', upload(values(12, 5), 'float32', [4, 3]), dst.view([4, 3], [6, 2], 1));
      const got = await dst.data();
      const src = values(12, 5);
      forEachIndex([4, 6], (idx, flat) => expect(got[flat]).toBe(idx[1] % 2 ? src[idx[0] * 3 + (idx[1] - 1) / 2] : 0));
    });

    it('converts dtypes like the CPU backend (round to nearest even, saturating integers)', async () => {
      const data = new Float32Array([
        1,
        -2.5,
        3.25,
        65519,
        65520,
        1e-7,
        2 ** -25,
        1 + 2 ** -8,
        1 + 3 * 2 ** -8,
        NaN,
        -3e9,
        3e9,
        200.7,
        -0.9,
      ]);
      const x = upload(data, 'float32', [data.length]);
      const convert = async (dtype: DType) => {
        const out = empty(dtype, [data.length]);
        gpu.unary('copy', x, out);
        return gpu.read(out);
      };
      expect(await convert('bfloat16')).toEqual(Uint16Array.from(data, toBf16));
      expect(await convert('float16')).toEqual(Uint16Array.from(data, toF16));
      expect(Array.from(await convert('int32'))).toEqual([1, -2, 3, 65519, 65520, 0, 0, 1, 1, 0, -2147483648, 2147483647, 200, 0]);
      expect(Array.from(await convert('uint8'))).toEqual([1, 0, 3, 255, 255, 0, 0, 1, 1, 0, 0, 255, 200, 0]);
      expect(Array.from(await convert('bool'))).toEqual([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
      const ints = upload(new Int32Array([-7, 0, 16777217]), 'int32', [3]);
      const back = empty('float32', [3]);
      gpu.unary('copy', ints, back);
      expect(await back.data()).toEqual(new Float32Array([-7, 0, 16777216]));
    });
  });

  describe('elementwise', () => {
    it('adds and multiplies with broadcasting', async () => {
      const shape = [2, 3, 4];
      const a = values(24, 7);
      const b = values(3, 8); // shape [3, 1], broadcast over dims 0 and 2
      const ta = upload(a, 'float32', shape);
      const tb = upload(b, 'float32', [3, 1]).view(shape, [0, 1, 0]);
      for (const [op, fn] of [
        ['add', (x: number, y: number) => x + y],
        ['mul', (x: number, y: number) => x * y],
      ] as const) {
        const out = empty('float32', shape);
        gpu.binary(op, ta, tb, out);
        const expected = new Float32Array(24);
        forEachIndex(shape, (idx, flat) => (expected[flat] = fn(a[flat], b[idx[1]])));
        expect(await out.data()).toEqual(expected);
      }
      // Both operands strided: a transposed view times a row broadcast over rows.
      const at2 = ta.view([4, 3, 2], [1, 4, 12]);
      const row = upload(values(2, 9), 'float32', [2]).view([4, 3, 2], [0, 0, 1]);
      const out = empty('float32', [4, 3, 2]);
      gpu.binary('mul', at2, row, out);
      const r = values(2, 9);
      const expected = new Float32Array(24);
      forEachIndex([4, 3, 2], (idx, flat) => (expected[flat] = f32(a[at(idx, [1, 4, 12])] * r[idx[2]])));
      expect(await out.data()).toEqual(expected);
    });

    it('computes the rest of the binary ops, comparisons into bool', async () => {
      const a = new Float32Array([1, -2, 3, 0.5, -8, 2, 0, 4]);
      const b = new Float32Array([2, -2, 1, 4, 3, -1, 5, 0.5]);
      const ta = upload(a, 'float32', [8]);
      const tb = upload(b, 'float32', [8]);
      const cases: [BinaryOp, (x: number, y: number) => number][] = [
        ['sub', (x, y) => x - y],
        ['div', (x, y) => x / y],
        ['maximum', Math.max],
        ['minimum', Math.min],
        ['pow', (x, y) => x ** y],
      ];
      for (const [op, fn] of cases) {
        const out = empty('float32', [8]);
        gpu.binary(op, ta, tb, out);
        expectClose(
          await out.data(),
          Array.from(a, (x, i) => f32(fn(x, b[i]))),
          0,
          1e-6,
        );
      }
      const comparisons: [BinaryOp, (x: number, y: number) => boolean][] = [
        ['equal', (x, y) => x === y],
        ['less', (x, y) => x < y],
        ['greater', (x, y) => x > y],
      ];
      for (const [op, fn] of comparisons) {
        const out = empty('bool', [8]);
        gpu.binary(op, ta, tb, out);
        expect(Array.from(await out.data())).toEqual(Array.from(a, (x, i) => Number(fn(x, b[i]))));
      }
    });

    it('adds bfloat16 operands into bfloat16', async () => {
      const a = Uint16Array.from(values(9, 11, 4), toBf16);
      const b = Uint16Array.from(values(9, 12, 4), toBf16);
      const out = empty('bfloat16', [9]);
      gpu.binary('add', upload(a, 'bfloat16', [9]), upload(b, 'bfloat16', [9]), out);
      expect(await gpu.read(out)).toEqual(Uint16Array.from(a, (h, i) => toBf16(fromBf16(h) + fromBf16(b[i]))));
    });

    it('computes the unary ops', async () => {
      const data = new Float32Array([-100, -20, -3, -1, -0.25, 0, 0.3, 1, 2.5, 10, 30]);
      const pos = new Float32Array([1e-3, 0.25, 1, 2, 10, 1000]);
      const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
      const cases: [UnaryOp, (x: number) => number, Float32Array][] = [
        ['neg', (x) => -x, data],
        ['abs', Math.abs, data],
        ['exp', Math.exp, new Float32Array([-20, -1, 0, 1, 10, 80])],
        ['log', Math.log, pos],
        ['sqrt', Math.sqrt, pos],
        ['rsqrt', (x) => 1 / Math.sqrt(x), pos],
        ['sigmoid', sigmoid, data],
        ['silu', (x) => x * sigmoid(x), data],
        ['tanh', Math.tanh, data],
        ['cos', Math.cos, new Float32Array([-3, -1, 0, 0.5, 3, 100, 1000])],
        ['sin', Math.sin, new Float32Array([-3, -1, 0, 0.5, 3, 100, 1000])],
      ];
      for (const [op, fn, input] of cases) {
        const out = empty('float32', [input.length]);
        gpu.unary(op, upload(input, 'float32', [input.length]), out);
        expectClose(await out.data(), Array.from(input, fn), 1e-5, 1e-5);
      }
    });

    it('selects with where', async () => {
      const cond = upload(new Uint8Array([1, 0, 1, 0]), 'bool', [4]);
      const a = upload(new Float32Array([1, 2, 3, 4]), 'float32', [4]);
      const b = upload(new Float32Array([-5]), 'float32', [1]).view([4], [0]);
      const out = empty('float32', [4]);
      gpu.where(cond, a, b, out);
      expect(await out.data()).toEqual(new Float32Array([1, -5, 3, -5]));
    });
  });

  describe.each([
    ['the default tile', () => gpu],
    ['8x8 threads (small GPUs)', () => small],
  ])('matmul with %s', (_name, backendOf) => {
    /** a [...batch, M, K] @ b [...batch, K, N] in float64, reading both through their strides. */
    function reference(a: Float32Array, aStrides: number[], b: Float32Array, bStrides: number[], shape: number[], K: number): Float64Array {
      const out = new Float64Array(shape.reduce((x, d) => x * d, 1));
      const nd = shape.length;
      forEachIndex(shape, (idx, flat) => {
        let sum = 0;
        for (let k = 0; k < K; k++) {
          const ia = [...idx.slice(0, nd - 1), k];
          const ib = [...idx.slice(0, nd - 2), k, idx[nd - 1]];
          sum += a[at(ia, aStrides)] * b[at(ib, bStrides)];
        }
        out[flat] = sum;
      });
      return out;
    }

    it.each([
      [1, 1, 1],
      [5, 7, 3],
      [33, 17, 65], // none a multiple of any tile
      [64, 64, 64],
      [70, 130, 40],
    ])('M=%i K=%i N=%i', async (M, K, N) => {
      const backend = backendOf();
      const a = values(M * K, M + 1);
      const b = values(K * N, N + 2);
      const out = empty('float32', [M, N], backend);
      backend.matmul(upload(a, 'float32', [M, K], backend), upload(b, 'float32', [K, N], backend), out);
      expectClose(await out.data(), reference(a, [K, 1], b, [N, 1], [M, N], K), 1e-5, 1e-5);
    });

    it('broadcasts a batch dim (stride 0) and reads a transposed b', async () => {
      const backend = backendOf();
      const [B, H, M, K, N] = [2, 3, 9, 20, 11];
      const a = values(B * H * M * K, 21);
      // b is stored as [B, N, K] and used as [B, 1 -> H, K, N]: transposed, and broadcast over H.
      const b = values(B * N * K, 22);
      const bStrides = [N * K, 0, 1, K];
      const tb = upload(b, 'float32', [B, N, K], backend).view([B, H, K, N], bStrides);
      const ta = upload(a, 'float32', [B, H, M, K], backend);
      const out = empty('float32', [B, H, M, N], backend);
      backend.matmul(ta, tb, out);
      const expected = reference(a, contiguousStrides([B, H, M, K]), b, bStrides, [B, H, M, N], K);
      expectClose(await out.data(), expected, 1e-5, 1e-5);
    });

    it('reads a transposed a and bfloat16 b words', async () => {
      const backend = backendOf();
      const [M, K, N] = [13, 35, 6];
      const a = values(K * M, 31); // stored [K, M]
      const bf = Uint16Array.from(values(K * N, 32), toBf16);
      const out = empty('float32', [M, N], backend);
      backend.matmul(upload(a, 'float32', [K, M], backend).view([M, K], [1, M]), upload(bf, 'bfloat16', [K, N], backend), out);
      const expected = reference(a, [1, M], Float32Array.from(bf, fromBf16), [N, 1], [M, N], K);
      expectClose(await out.data(), expected, 1e-5, 1e-5);
    });
  });

  describe('errors and lifetime', () => {
    it('names the op and the backend for kernels it does not have', () => {
      // Comparisons in f32 would round int32 values above 2^24, so max and argmax refuse them.
      const i = upload(new Int32Array([1, 2]), 'int32', [2]);
      expect(() => gpu.reduce('max', i, empty('int32', []))).toThrow(/max on int32: not implemented on the webgpu backend/);
      expect(() => gpu.reduce('argmax', i, empty('int32', []))).toThrow(/argmax on int32: not implemented on the webgpu backend/);
      // uint32 values above 2^24 would change in f32 arithmetic, and above 2^31 in i32.
      const u = upload(new Uint32Array([1, 2]), 'uint32', [2]);
      expect(() => gpu.binary('add', u, u, empty('uint32', [2]))).toThrow(
        /add on uint32 and uint32 into uint32: not implemented on the webgpu backend/,
      );
      // A typed error, so that a program can tell the user which op and what to run instead.
      expect(() => gpu.reduce('max', i, empty('int32', []))).toThrow(
        expect.objectContaining({ name: 'UnsupportedOpError', op: 'max on int32', backend: 'webgpu' }),
      );
    });

    it('refuses CPU-side storage and aliased outputs', () => {
      const x = upload(new Float32Array([1, 2]), 'float32', [2]);
      const fake = { backend: { name: 'cpu' }, byteLength: 8, refs: 0, released: false } as never;
      expect(() => gpu.binary('add', x, new Tensor(fake, 'float32', [2]), empty('float32', [2]))).toThrow(/lives on the cpu backend/);
      expect(() => gpu.binary('add', x, x, x)).toThrow(/shares storage/);
    });

    it('releases storage on dispose and refuses disposed tensors', async () => {
      const t = upload(new Float32Array([1, 2, 3]), 'float32', [3]);
      const v = t.view([2], [1], 1);
      t.dispose();
      expect(t.storage.released).toBe(false); // the view still holds it
      expect(await v.data()).toEqual(new Float32Array([2, 3]));
      v.dispose();
      expect(t.storage.released).toBe(true);
      await expect(v.data()).rejects.toThrow(/disposed/);
      expect(() => gpu.unary('exp', v, empty('float32', [2]))).toThrow(/disposed/);
    });

    it('is unusable after destroy, and initWebGPU then makes a new backend', async () => {
      const own = new WebGPUBackend(gpu.device, { maxInvocations: 64 });
      own.destroy();
      expect(() => own.allocate('float32', 4)).toThrow(/webgpu backend has been destroyed/);
      // Destroying the shared backend last: afterAll does it again, which is a no-op.
      gpu.destroy();
      expect(() => gpu.upload(new Float32Array(1))).toThrow(/destroyed/);
      const fresh = await initWebGPU();
      expect(fresh).not.toBe(gpu);
      const t = new Tensor(fresh.upload(new Float32Array([4, 5])), 'float32', [2]);
      expect(await t.data()).toEqual(new Float32Array([4, 5]));
      fresh.destroy();
    });
  });
});
