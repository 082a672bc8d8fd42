// Every op on the WebGPU backend, through the public ops, against the golden fixtures (fixtures/ops, float64
// PyTorch) or plain loops written here. Inputs include strided and broadcast views, bf16, sizes that are
// not multiples of any workgroup or tile, and empty shapes.
import { describe, expect, it } from 'vitest';
import * as tc from '../src/index.ts';
import { expectClose, goldenOp, ravel, relativeError, seeded, unravel, useGpu } from '../src/testing.ts';

const gpu = useGpu();

const onGpu = (t: tc.Tensor) => tc.toDevice(t, gpu());
const gpuTensor = (values: ArrayLike<number>, shape: number[], dtype: tc.DType = 'float32') =>
  tc.tensor(values, { shape, dtype, device: gpu() });
const size = (shape: number[]) => shape.reduce((p, d) => p * d, 1);
const f32 = Math.fround;

/** bf16 rounding (nearest even) of a number, as the value it stands for. */
function bf16(v: number): number {
  const bits = new Uint32Array(new Float32Array([v]).buffer)[0];
  const rounded = ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) << 16;
  return new Float32Array(new Uint32Array([rounded]).buffer)[0];
}

/** The row-major values of transpose(x, perm) for x of `shape` holding `values`. */
function permuted(values: ArrayLike<number>, shape: number[], perm: number[]): number[] {
  const outShape = perm.map((p) => shape[p]);
  return Array.from({ length: values.length }, (_, i) => {
    const idx = unravel(i, outShape);
    const src = new Array<number>(shape.length);
    perm.forEach((p, d) => (src[p] = idx[d]));
    return values[ravel(src, shape)];
  });
}

/** The lines of `values` along `axis`, in the row-major order of the other dims. */
function lines(values: ArrayLike<number>, shape: number[], axis: number): number[][] {
  const other = shape.filter((_, i) => i !== axis);
  return Array.from({ length: size(other) }, (_, o) => {
    const idx = unravel(o, other);
    return Array.from({ length: shape[axis] }, (_, j) => {
      const full = [...idx];
      full.splice(axis, 0, j);
      return values[ravel(full, shape)];
    });
  });
}

/** Scatters per-line results (each of the axis' length) back to row-major order of `shape`. */
function unlines(rows: number[][], shape: number[], axis: number): number[] {
  const out = new Array<number>(size(shape));
  const other = shape.filter((_, i) => i !== axis);
  rows.forEach((row, o) => {
    const idx = unravel(o, other);
    row.forEach((v, j) => {
      const full = [...idx];
      full.splice(axis, 0, j);
      out[ravel(full, shape)] = v;
    });
  });
  return out;
}

const logsumexp = (row: number[]) => {
  const m = Math.max(...row);
  return Number.isFinite(m) ? m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0)) : m;
};
const softmaxRow = (row: number[]) => {
  const m = Math.max(...row);
  if (m === -Infinity) return row.map(() => 0);
  const e = row.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
};
const argmaxRow = (row: number[]) => {
  const nan = row.findIndex(Number.isNaN);
  return nan >= 0 ? nan : row.indexOf(Math.max(...row));
};
/** A stable argsort with NaN last, in plain JavaScript. */
const argsortRow = (row: number[], descending: boolean) =>
  row
    .map((v, i) => i)
    .sort((a, b) => {
      const [va, vb] = [row[a], row[b]];
      if (Number.isNaN(va) || Number.isNaN(vb)) return Number(Number.isNaN(va)) - Number(Number.isNaN(vb)) || a - b;
      return (descending ? vb - va : va - vb) || a - b;
    });

/** f32 results within 1e-5 of the golden; bf16 ones (from bf16 inputs) keep their dtype, within 1% overall. */
async function expectGolden(out: tc.Tensor, golden: tc.Tensor, dtype: unknown): Promise<void> {
  const expected = golden.toArray();
  if (dtype === 'bfloat16') {
    expect(out.dtype).toBe('bfloat16');
    expect(relativeError(await out.data(), expected)).toBeLessThan(1e-2);
  } else {
    expectClose(await out.data(), expected, 1e-5);
  }
}

describe('golden fixtures on the GPU', () => {
  it('softmax, along the last axis and others (strided rows)', async () => {
    const f = goldenOp('softmax');
    for (const c of f.cases) {
      expectClose(await tc.softmax(onGpu(f.get(c, 'x')), c.axis as number).data(), f.get(c, 'out').toArray(), 1e-5);
    }
  });

  it('linear: x @ w.T + b, w read as a transposed view', async () => {
    const f = goldenOp('linear');
    for (const c of f.cases) {
      let y = tc.matmul(onGpu(f.get(c, 'x')), tc.transpose(onGpu(f.get(c, 'w'))));
      if (c.bias) y = tc.add(y, onGpu(f.get(c, 'b')));
      expectClose(await y.data(), f.get(c, 'out').toArray(), 1e-5);
    }
  });

  it('silu, including the extremes', async () => {
    const f = goldenOp('silu');
    for (const c of f.cases) expectClose(await tc.silu(onGpu(f.get(c, 'x'))).data(), f.get(c, 'out').toArray(), 1e-6, 1e-6);
  });

  it('the gated MLP composed from matmul, silu and mul', async () => {
    const f = goldenOp('mlp');
    for (const c of f.cases) {
      const x = onGpu(f.get(c, 'x'));
      const linear = (name: string, input: tc.Tensor) => tc.matmul(input, tc.transpose(onGpu(f.get(c, name))));
      const out = linear('w_down', tc.mul(tc.silu(linear('w_gate', x)), linear('w_up', x)));
      expectClose(await out.data(), f.get(c, 'out').toArray(), 1e-5);
    }
  });

  it('fast.rmsNorm (bf16 x and weight give bf16)', async () => {
    const f = goldenOp('rms_norm');
    for (const c of f.cases) {
      const out = tc.fast.rmsNorm(onGpu(f.get(c, 'x')), onGpu(f.get(c, 'weight')), c.eps as number);
      await expectGolden(out, f.get(c, 'out'), c.dtype);
    }
  });

  it('fast.rope, traditional or not, at offsets per row', async () => {
    const f = goldenOp('rope');
    for (const c of f.cases) {
      const x = f.get(c, 'x');
      const [, l, , d] = x.shape;
      const offset = c.offset as number | number[];
      const tables = tc.fast.ropeTables(d, Math.max(...[offset].flat()) + l, c.base as number);
      const gpuTables = { dims: d, cos: onGpu(tables.cos), sin: onGpu(tables.sin) };
      const out = tc.fast.rope(onGpu(x), gpuTables, offset, c.traditional as boolean);
      expectClose(await out.data(), f.get(c, 'out').toArray(), 1e-5);
    }
  });

  it('fast.causalMask', async () => {
    const f = goldenOp('causal_mask');
    for (const c of f.cases) {
      expect(await tc.fast.causalMask(c.L as number, c.S as number, gpu()).data()).toEqual(f.get(c, 'out').toArray());
    }
  });

  for (const fixture of ['gqa', 'attention', 'flash_attention']) {
    describe(`fast.sdpa on the ${fixture} fixture`, () => {
      const f = goldenOp(fixture);
      for (const c of f.cases) {
        it(`${c.name} (mask: ${c.mask}${c.dtype ? `, ${c.dtype}` : ''})`, async () => {
          const mask = c.mask === 'causal' ? 'causal' : c.mask === 'tensor' ? onGpu(f.get(c, 'mask')) : undefined;
          const [q, k, v] = ['q', 'k', 'v'].map((name) => onGpu(f.get(c, name)));
          const out = tc.fast.sdpa(q, k, v, { scale: c.scale as number | undefined, mask });
          await expectGolden(out, f.get(c, 'out'), c.dtype);
        });
      }
    });
  }

  describe('fast.quantizedMatmul on the quantized_matmul fixture', () => {
    const f = goldenOp('quantized_matmul');
    for (const c of f.cases) {
      it(`${c.name} (${c.bits} bits, group ${c.group_size})`, async () => {
        const w = new tc.QuantizedWeight(
          onGpu(f.get(c, 'w')),
          onGpu(f.get(c, 'scales')),
          onGpu(f.get(c, 'biases')),
          c.group_size as number,
          c.bits as number,
        );
        const out = tc.fast.quantizedMatmul(onGpu(f.get(c, 'x')), w);
        expect(out.dtype).toBe('float32');
        expectClose(await out.data(), f.get(c, 'out').toArray(), 1e-4, 1e-5);
      });
    }
  });
});

describe('reductions on the GPU', () => {
  // x is a transposed view [37, 3, 5] of a [3, 5, 37] tensor: every axis is strided.
  const shape = [3, 5, 37];
  const base = seeded(size(shape), 7, 4);
  const perm = [2, 0, 1];
  const vShape = perm.map((p) => shape[p]);
  const logical = permuted(base, shape, perm);
  const refs: Record<string, (row: number[]) => number> = {
    sum: (r) => r.reduce((a, b) => a + b, 0),
    mean: (r) => r.reduce((a, b) => a + b, 0) / r.length,
    max: (r) => Math.max(...r),
    min: (r) => Math.min(...r),
    argmax: argmaxRow,
    logsumexp,
  };
  const ops: Record<string, (x: tc.Tensor, axis: number) => tc.Tensor> = {
    sum: tc.sum,
    mean: tc.mean,
    max: tc.max,
    min: tc.min,
    argmax: tc.argmax,
    logsumexp: tc.logsumexp,
  };

  for (const name of Object.keys(refs)) {
    it(`${name} along each axis of a transposed view`, async () => {
      const x = tc.transpose(gpuTensor(base, shape), perm);
      for (const axis of [0, 1, 2]) {
        const out = ops[name](x, axis);
        expect(out.shape).toEqual(vShape.filter((_, i) => i !== axis));
        expectClose(await out.data(), lines(logical, vShape, axis).map(refs[name]), 1e-5, 1e-6);
      }
    });
  }

  it('rows longer than a workgroup, and a row broadcast over rows (stride 0)', async () => {
    const row = seeded(1000, 3, 10);
    const x = tc.broadcastTo(gpuTensor(row, [1, 1000]), [3, 1000]);
    expectClose(await tc.sum(x, -1).data(), new Array(3).fill(refs.sum(row)), 1e-3, 1e-6);
    expect(Array.from(await tc.argmax(x, -1).data())).toEqual(new Array(3).fill(argmaxRow(row)));
    expectClose(await tc.logsumexp(x, -1).data(), new Array(3).fill(logsumexp(row)), 1e-5, 1e-6);
    expectClose(
      await tc.softmax(x, -1).data(),
      [0, 1, 2].flatMap(() => softmaxRow(row)),
      1e-6,
      1e-5,
    );
  });

  it('NaN wins max and argmax (the first NaN); ties go to the first index; all -inf rows', async () => {
    const x = gpuTensor([1, NaN, 3, NaN, 5, 5, 2, 5, -Infinity, -Infinity, -Infinity, -Infinity], [3, 4]);
    expect(Array.from(await tc.argmax(x, -1).data())).toEqual([1, 0, 0]);
    const max = await tc.max(x, -1).data();
    expect(Number.isNaN(max[0])).toBe(true);
    expect(Array.from(max.subarray(1))).toEqual([5, -Infinity]);
    expect(Array.from(await tc.logsumexp(tc.slice(x, [[2, 3]]), -1).data())).toEqual([-Infinity]);
    // A fully masked row has no softmax: zeros, as on the CPU.
    expect(Array.from(await tc.softmax(tc.slice(x, [[2, 3]]), -1).data())).toEqual([0, 0, 0, 0]);
  });

  it('softmax is stable for large values and keeps bf16', async () => {
    expectClose(await tc.softmax(gpuTensor([1000, 1001, 1002], [3])).data(), softmaxRow([0, 1, 2]), 1e-6);
    const values = seeded(66, 5, 3);
    const out = tc.softmax(gpuTensor(values, [2, 33], 'bfloat16'), -1);
    expect(out.dtype).toBe('bfloat16');
    const expected = lines(values.map(bf16), [2, 33], 1).flatMap(softmaxRow).map(bf16);
    expectClose(await out.data(), expected, 2e-3, 1e-2);
  });

  it('sums integers exactly: bool and uint8 into int32, int32 past 2^24', async () => {
    const bools = Array.from({ length: 300 }, (_, i) => Number(i % 3 === 0));
    const counts = tc.sum(gpuTensor(bools, [3, 100], 'bool'), -1);
    expect(counts.dtype).toBe('int32');
    expect(Array.from(await counts.data())).toEqual(lines(bools, [3, 100], 1).map((r) => r.reduce((a, b) => a + b, 0)));
    const bytes = Array.from({ length: 40 }, (_, i) => (i * 37) % 256);
    expect(Array.from(await tc.sum(gpuTensor(bytes, [40], 'uint8')).data())).toEqual([bytes.reduce((a, b) => a + b, 0)]);
    const big = [2 ** 30, 2 ** 29 + 3, -5, 7];
    expect(Array.from(await tc.sum(gpuTensor(big, [4], 'int32')).data())).toEqual([2 ** 30 + 2 ** 29 + 5]);
  });

  it('bf16 input gives a bf16 max and sum', async () => {
    const values = seeded(4 * 33, 9, 8).map(bf16);
    const x = gpuTensor(values, [4, 33], 'bfloat16');
    const max = tc.max(x, -1);
    expect(max.dtype).toBe('bfloat16');
    expect(Array.from(await max.data())).toEqual(lines(values, [4, 33], 1).map((r) => Math.max(...r)));
    expectClose(
      await tc.sum(x, -1).data(),
      lines(values, [4, 33], 1).map((r) => bf16(refs.sum(r))),
      0.2,
      1e-2,
    );
  });

  it('empty shapes: an empty axis sums to 0, no rows give an empty result', async () => {
    expect(Array.from(await tc.sum(gpuTensor([], [3, 0]), -1).data())).toEqual([0, 0, 0]);
    const none = tc.max(gpuTensor([], [0, 4]), -1);
    expect(none.shape).toEqual([0]);
    expect(await none.data()).toEqual(new Float32Array(0));
    expect((await tc.softmax(gpuTensor([], [0, 5]), -1).data()).length).toBe(0);
  });
});

describe('cumsum, argsort, sort and topk on the GPU', () => {
  it('cumsum along both axes of a transposed view, rows longer than a workgroup', async () => {
    const shape = [600, 3];
    const values = seeded(1800, 11);
    const x = tc.transpose(gpuTensor(values, shape)); // [3, 600]
    const logical = permuted(values, shape, [1, 0]);
    const prefix = (r: number[]) => r.map((_, i) => r.slice(0, i + 1).reduce((a, b) => a + b, 0));
    expectClose(await tc.cumsum(x, -1).data(), lines(logical, [3, 600], 1).flatMap(prefix), 1e-4, 1e-5);
    expectClose(await tc.cumsum(x, 0).data(), unlines(lines(logical, [3, 600], 0).map(prefix), [3, 600], 0), 1e-5);
  });

  it('cumsum of integers is exact: int32 past 2^24, bool into int32', async () => {
    const big = [2 ** 30, 3, 2 ** 28 + 1, -9];
    expect(Array.from(await tc.cumsum(gpuTensor(big, [4], 'int32')).data())).toEqual([
      2 ** 30,
      2 ** 30 + 3,
      2 ** 30 + 2 ** 28 + 4,
      2 ** 30 + 2 ** 28 - 5,
    ]);
    const flags = tc.cumsum(gpuTensor([1, 0, 1, 1], [4], 'bool'));
    expect(flags.dtype).toBe('int32');
    expect(Array.from(await flags.data())).toEqual([1, 1, 2, 3]);
  });

  it('argsort is stable, NaN last, ascending and descending, at sizes that are not powers of two', async () => {
    for (const n of [1, 2, 37, 300]) {
      // Few distinct values, so that ties are everywhere.
      const values = Array.from({ length: 2 * n }, (_, i) => (i % 11 === 5 ? NaN : Math.floor(seeded(1, i + n)[0] * 4)));
      const x = gpuTensor(values, [2, n]);
      for (const descending of [false, true]) {
        const order = await tc.argsort(x, -1, { descending }).data();
        expect(Array.from(order)).toEqual(lines(values, [2, n], 1).flatMap((r) => argsortRow(r, descending)));
      }
    }
  });

  it('argsort of int32 values past 2^24 is exact: the inverse of a permutation (top-p sampling)', async () => {
    const big = [2 ** 30 + 1, -5, 2 ** 30, 7, -(2 ** 31), 2 ** 30 + 1];
    expect(Array.from(await tc.argsort(gpuTensor(big, [6], 'int32')).data())).toEqual(argsortRow(big, false));
    expect(Array.from(await tc.argsort(gpuTensor(big, [6], 'int32'), -1, { descending: true }).data())).toEqual(argsortRow(big, true));
    const order = tc.argsort(gpuTensor(seeded(40, 83), [2, 20]), -1);
    const inverse = await tc.argsort(order, -1).data();
    const o = await order.data();
    for (let r = 0; r < 2; r++) for (let i = 0; i < 20; i++) expect(o[r * 20 + inverse[r * 20 + i]]).toBe(i);
  });

  it('argsort along axis 0, sort and topk', async () => {
    const values = seeded(5 * 6, 13).map(f32);
    const x = gpuTensor(values, [5, 6]);
    const cols = lines(values, [5, 6], 0);
    expect(Array.from(await tc.argsort(x, 0).data())).toEqual(
      unlines(
        cols.map((c) => argsortRow(c, false)),
        [5, 6],
        0,
      ),
    );
    expectClose(
      await tc.sort(x, 0).data(),
      unlines(
        cols.map((c) => [...c].sort((a, b) => a - b)),
        [5, 6],
        0,
      ),
      0,
    );
    const { values: top, indices } = tc.topk(x, 2);
    const rows = lines(values, [5, 6], 1);
    expect(Array.from(await indices.data())).toEqual(rows.flatMap((r) => argsortRow(r, true).slice(0, 2)));
    expectClose(
      await top.data(),
      rows.flatMap((r) =>
        argsortRow(r, true)
          .slice(0, 2)
          .map((i) => r[i]),
      ),
      0,
    );
  });
});

describe('sampling on the GPU: the sampling fixture through softmax, topk, argsort, cumsum and takeAlongAxis', () => {
  const f = goldenOp('sampling');
  for (const c of f.cases) {
    it(`${c.name} (temperature ${c.temperature}, top-k ${c.top_k}, top-p ${c.top_p}, min-p ${c.min_p})`, async () => {
      const logits = onGpu(f.get(c, 'logits'));
      const probs = tc.softmax(tc.div(logits, c.temperature as number), -1);
      let kept = probs;
      if (c.top_k !== null) {
        const kth = tc.slice(tc.topk(kept, c.top_k as number).values, [null, [(c.top_k as number) - 1, c.top_k as number]]);
        kept = tc.where(tc.less(kept, kth), 0, kept);
      }
      if (c.top_p !== null) {
        const normalised = tc.div(kept, tc.sum(kept, -1, { keepdims: true }));
        const order = tc.argsort(normalised, -1, { descending: true });
        const sorted = tc.takeAlongAxis(normalised, order, -1);
        const before = tc.takeAlongAxis(tc.sub(tc.cumsum(sorted, -1), sorted), tc.argsort(order, -1), -1);
        kept = tc.where(tc.less(before, c.top_p as number), kept, 0);
      }
      if (c.min_p !== null) kept = tc.where(tc.less(probs, tc.mul(tc.max(probs, -1, { keepdims: true }), c.min_p as number)), 0, kept);
      const out = tc.div(kept, tc.sum(kept, -1, { keepdims: true }));
      expectClose(await out.data(), f.get(c, 'probs').toArray(), 1e-5);
    });
  }

  it('random.categorical draws what a plain inverse-CDF loop draws with the same uniforms; -inf is never drawn', async () => {
    const [rows, n] = [64, 300];
    const logits = seeded(rows * n, 41, 4).map((v, i) => (i % 7 === 3 ? -Infinity : v));
    const out = tc.random.categorical(gpuTensor(logits, [2, rows / 2, n]), { seed: 5 });
    expect([out.backend.name, out.dtype, ...out.shape]).toEqual(['webgpu', 'int32', 2, rows / 2]);
    // The same uniforms: a generator of the same seed, one number per row.
    const uniforms = new tc.random.Generator(5);
    const expected = Array.from({ length: rows }, (_, r) => {
      const row = logits.slice(r * n, (r + 1) * n);
      const top = Math.max(...row);
      const weights = row.map((v) => Math.exp(v - top));
      const target = uniforms.next() * weights.reduce((a, b) => a + b, 0);
      let acc = 0;
      return weights.findIndex((w) => (acc += w) > target);
    });
    expect(Array.from(await out.data())).toEqual(expected);
    // A row with one visible logit always draws it.
    const one = tc.random.categorical(gpuTensor([-Infinity, -Infinity, 2, -Infinity], [1, 4]));
    expect(Array.from(await one.data())).toEqual([2]);
  });
});

describe('gathers on the GPU', () => {
  const table = seeded(50 * 12, 17).map(f32);

  it('take: rows of f32 and bf16 tables for 2-D int32 and uint32 ids', async () => {
    const ids = [3, 0, 49, 7, 7, 12, 1, 2, 48, 20, 30, 40];
    const expected = ids.flatMap((i) => table.slice(i * 12, i * 12 + 12));
    for (const idDtype of ['int32', 'uint32'] as const) {
      const out = tc.take(gpuTensor(table, [50, 12]), gpuTensor(ids, [3, 4], idDtype));
      expect(out.shape).toEqual([3, 4, 12]);
      expectClose(await out.data(), expected, 0);
    }
    // bf16 rows: neighbouring outputs share words.
    const half = tc.take(gpuTensor(table, [50, 12], 'bfloat16'), gpuTensor(ids, [12], 'int32'));
    expect(half.dtype).toBe('bfloat16');
    expectClose(await half.data(), expected.map(bf16), 0);
  });

  it('take along axis 1 of a transposed table, and a strided table row', async () => {
    const t = tc.transpose(gpuTensor(table, [50, 12])); // [12, 50]
    const out = tc.take(t, gpuTensor([4, 9], [2], 'int32'), 1); // [12, 2]
    expectClose(
      await out.data(),
      Array.from({ length: 24 }, (_, e) => table[[4, 9][e % 2] * 12 + Math.floor(e / 2)]),
      0,
    );
    const everyOther = tc.slice(gpuTensor(table, [50, 12]), [null, [0, 12, 2]]); // rows of stride 2
    expectClose(
      await tc.take(everyOther, gpuTensor([5], [1], 'int32')).data(),
      [0, 2, 4, 6, 8, 10].map((j) => table[60 + j]),
      0,
    );
  });

  it('an index out of range is an error at the next read, naming the op; the backend stays usable', async () => {
    const t = gpuTensor(table, [50, 12]);
    await expect(tc.take(t, gpuTensor([1, 50], [2], 'int32')).data()).rejects.toThrow(
      /take: index 50 at position 1 is out of range for an axis of 50/,
    );
    await expect(tc.take(t, gpuTensor([-1], [1], 'int32')).data()).rejects.toThrow(/take: index -1 /);
    const x = gpuTensor([1, 2, 3, 4], [2, 2]);
    await expect(tc.takeAlongAxis(x, gpuTensor([0, 2, 1, 0], [2, 2], 'int32'), -1).data()).rejects.toThrow(
      /takeAlongAxis: index 2 at position 1/,
    );
    expect(Array.from(await tc.take(t, gpuTensor([2], [1], 'int32')).data())).toEqual(table.slice(24, 36).map(f32));
  });

  it('takeAlongAxis along the last axis and axis 0', async () => {
    const x = gpuTensor(table.slice(0, 12), [3, 4]);
    const idx = [3, 0, 0, 1, 2, 2, 3, 3, 1];
    const last = await tc.takeAlongAxis(x, gpuTensor(idx, [3, 3], 'int32'), -1).data();
    expectClose(
      last,
      idx.map((i, p) => table[Math.floor(p / 3) * 4 + i]),
      0,
    );
    const first = await tc.takeAlongAxis(x, gpuTensor([2, 0, 1, 1], [1, 4], 'int32'), 0).data();
    expectClose(
      first,
      [2, 0, 1, 1].map((r, c) => table[r * 4 + c]),
      0,
    );
  });
});

describe('elementwise integers, casts and strided writes on the GPU', () => {
  it('int32 arithmetic is exact and saturates like the CPU backend', async () => {
    const max = 2 ** 31 - 1;
    const a = gpuTensor([max, -max - 1, 2 ** 30, 123456789, -7], [5], 'int32');
    const b = gpuTensor([1, -1, 3, 1000, 2], [5], 'int32');
    expect(Array.from(await tc.add(a, b).data())).toEqual([max, -max - 1, 2 ** 30 + 3, 123457789, -5]);
    expect(Array.from(await tc.sub(a, b).data())).toEqual([max - 1, -max, 2 ** 30 - 3, 123455789, -9]);
    expect(Array.from(await tc.mul(a, b).data())).toEqual([max, max, max, max, -14]);
    expect(Array.from(await tc.neg(a).data())).toEqual([-max, max, -(2 ** 30), -123456789, 7]);
    expect(Array.from(await tc.maximum(a, b).data())).toEqual([max, -1, 2 ** 30, 123456789, 2]);
    expect(Array.from(await tc.less(a, b).data())).toEqual([0, 1, 0, 0, 1]);
    expect(Array.from(await tc.equal(a, gpuTensor([max], [1], 'int32')).data())).toEqual([1, 0, 0, 0, 0]);
    // Conversions saturate; where picks integers without passing through f32.
    expect(Array.from(await tc.astype(a, 'uint8').data())).toEqual([255, 0, 255, 255, 0]);
    expect(Array.from(await tc.where(tc.greater(a, 0), a, b).data())).toEqual([max, -1, 2 ** 30, 123456789, 2]);
  });

  it('builds a causal mask from int32 ranges (arange, add, greater, where)', async () => {
    const [l, s] = [3, 5];
    const q = tc.reshape(tc.arange(l, undefined, 1, { device: gpu() }), [l, 1]);
    const k = tc.reshape(tc.arange(s, undefined, 1, { device: gpu() }), [1, s]);
    const mask = tc.where(tc.greater(k, tc.add(q, s - l)), -Infinity, tc.zeros([l, s], { device: gpu() }));
    const expected = Array.from({ length: l * s }, (_, e) => (e % s <= Math.floor(e / s) + s - l ? 0 : -Infinity));
    expect(Array.from(await mask.data())).toEqual(expected);
  });

  it('copies into strided views: a KV-cache append, concat, stack and split', async () => {
    // The cache [B=1, H=2, capacity 8, D=4]; the new keys come as [B, L=3, H, D] and are written, transposed,
    // into positions 2..4 (bf16 keys widen to f32 on the way).
    const cache = tc.zeros([1, 2, 8, 4], { device: gpu() });
    const keys = seeded(24, 19).map(bf16);
    const k = tc.transpose(gpuTensor(keys, [1, 3, 2, 4], 'bfloat16'), [0, 2, 1, 3]);
    const slot = tc.slice(cache, [null, null, [2, 5]]);
    gpu().unary('copy', k, slot);
    const got = await cache.data();
    for (let h = 0; h < 2; h++) {
      for (let p = 0; p < 8; p++) {
        for (let d = 0; d < 4; d++) {
          const expected = p >= 2 && p < 5 ? keys[((p - 2) * 2 + h) * 4 + d] : 0;
          expect(got[(h * 8 + p) * 4 + d]).toBe(expected);
        }
      }
    }
    const a = gpuTensor([1, 2, 3, 4], [2, 2]);
    const b = gpuTensor([5, 6], [2, 1]);
    expect(Array.from(await tc.concat([a, b], 1).data())).toEqual([1, 2, 5, 3, 4, 6]);
    expect(Array.from(await tc.stack([a, a], 0).data())).toEqual([1, 2, 3, 4, 1, 2, 3, 4]);
    const [left, right] = tc.split(tc.concat([a, b], 1), [2], 1);
    expect(Array.from(await right.data())).toEqual([5, 6]);
    expect(Array.from(await left.data())).toEqual([1, 2, 3, 4]);
  });
});

describe('matmul on the GPU: the GEMV path for decode and the tiled one', () => {
  /** a [M, K] @ W.T for W [N, K], in float64. */
  const reference = (a: number[], w: number[], m: number, n: number, k: number) =>
    Array.from({ length: m * n }, (_, e) => {
      const [i, j] = [Math.floor(e / n), e % n];
      let s = 0;
      for (let t = 0; t < k; t++) s += a[i * k + t] * w[j * k + t];
      return s;
    });

  it.each([
    ['bfloat16', 1, 70, 130], // word reads: two bf16 weights per u32
    ['bfloat16', 8, 33, 64],
    ['bfloat16', 3, 20, 37], // odd K: element reads
    ['float16', 2, 17, 40],
    ['float32', 5, 9, 300],
    ['bfloat16', 9, 31, 46], // 9 rows: the tiled kernel
  ] as const)('x [M, K] @ W.T with W %s, M=%i N=%i K=%i', async (dtype, m, n, k) => {
    const a = seeded(m * k, m + 1);
    const w = seeded(n * k, n + 2).map((v) => (dtype === 'float32' ? v : dtype === 'bfloat16' ? bf16(v) : v));
    const wt = gpuTensor(w, [n, k], dtype);
    const out = tc.matmul(gpuTensor(a, [m, k]), tc.transpose(wt));
    expect(out.dtype).toBe('float32');
    const wValues = Array.from(await wt.data());
    expectClose(await out.data(), reference(a, wValues, m, n, k), 1e-4, 1e-5);
  });

  it('a weight slice at an odd bf16 offset, a broadcast batch and a transposed a', async () => {
    const [m, n, k] = [2, 5, 8];
    const w = seeded((n + 1) * k, 23).map(bf16);
    const wt = tc.slice(gpuTensor(w, [n + 1, k], 'bfloat16'), [[1, n + 1]]); // starts at element 8: even
    const odd = tc.slice(gpuTensor(w, [(n + 1) * k], 'bfloat16'), [[1, 1 + n * k]]); // starts at element 1
    const a = seeded(2 * m * k, 29);
    // a is stored [2, K, M] and used as [2, 1, M, K]; W is broadcast over the batch.
    const at = tc.expandDims(tc.swapaxes(gpuTensor(a, [2, k, m]), -1, -2), 1);
    const expected = [0, 1].flatMap((bi) =>
      reference(permuted(a.slice(bi * m * k, (bi + 1) * m * k), [k, m], [1, 0]), w.slice(k), m, n, k),
    );
    expectClose(await tc.matmul(at, tc.transpose(wt)).data(), expected, 1e-4, 1e-5);
    const oddW = tc.reshape(odd, [n, k]);
    expectClose(
      await tc.matmul(at, tc.transpose(oddW)).data(),
      [0, 1].flatMap((bi) => reference(permuted(a.slice(bi * m * k, (bi + 1) * m * k), [k, m], [1, 0]), w.slice(1, 1 + n * k), m, n, k)),
      1e-4,
      1e-5,
    );
  });

  it('empty products: K = 0 gives zeros, M = 0 an empty result', async () => {
    expect(Array.from(await tc.matmul(gpuTensor([], [3, 0]), gpuTensor([], [0, 2])).data())).toEqual([0, 0, 0, 0, 0, 0]);
    expect(tc.matmul(gpuTensor([], [0, 4]), gpuTensor(seeded(8), [4, 2])).shape).toEqual([0, 2]);
  });
});

describe('fast.quantizedMatmul on the GPU for every bit width', () => {
  /** Unpacks MLX's layout by reading the row as one bit string, LSB first (written apart from the library). */
  function dequantizePlain(
    words: Uint32Array,
    scales: ArrayLike<number>,
    biases: ArrayLike<number>,
    n: number,
    k: number,
    bits: number,
    group: number,
  ): number[] {
    const out: number[] = [];
    const perRow = (k * bits) / 32;
    for (let r = 0; r < n; r++) {
      let stream = '';
      for (let w = 0; w < perRow; w++) stream += words[r * perRow + w].toString(2).padStart(32, '0').split('').reverse().join('');
      for (let j = 0; j < k; j++) {
        const q = parseInt(
          stream
            .slice(j * bits, (j + 1) * bits)
            .split('')
            .reverse()
            .join(''),
          2,
        );
        const g = r * (k / group) + Math.floor(j / group);
        out.push(q * scales[g] + biases[g]);
      }
    }
    return out;
  }

  it.each([
    [2, 32, 1],
    [3, 32, 1],
    [3, 64, 11],
    [4, 128, 2],
    [5, 64, 1],
    [5, 32, 9],
    [6, 128, 1],
    [6, 64, 12],
    [8, 32, 3],
  ])('%i bits, group %i, %i rows', async (bits, group, m) => {
    const [n, k] = [13, 256];
    const q = tc.quantize(tc.tensor(seeded(n * k, bits * 7 + group), { shape: [n, k] }), bits, group);
    const x = seeded(m * k, bits + m);
    const w = dequantizePlain(q.weight.toArray() as Uint32Array, q.scales.toArray(), q.biases.toArray(), n, k, bits, group);
    const expected = Array.from({ length: m * n }, (_, e) => {
      let s = 0;
      for (let t = 0; t < k; t++) s += x[Math.floor(e / n) * k + t] * w[(e % n) * k + t];
      return s;
    });
    const gw = new tc.QuantizedWeight(onGpu(q.weight), onGpu(q.scales), onGpu(q.biases), group, bits);
    const out = tc.fast.quantizedMatmul(gpuTensor(x, [m, k]), gw);
    expect(out.shape).toEqual([m, n]);
    expectClose(await out.data(), expected, 1e-4, 1e-5);
    // The CPU backend's composition (dequantize, then matmul) of the same op.
    const cpuWeight = tc.quantize(tc.tensor(seeded(n * k, bits * 7 + group), { shape: [n, k] }), bits, group);
    expectClose(tc.fast.quantizedMatmul(tc.tensor(x, { shape: [m, k] }), cpuWeight).toArray(), expected, 1e-4, 1e-5);
  });

  it('dequantize on the GPU gives the plain unpacking for every bit width: bit for bit with half-precision scales', async () => {
    const [n, k] = [5, 128];
    for (const [bits, group, dtype] of [
      [2, 32, 'bfloat16'],
      [3, 64, 'float16'],
      [4, 128, 'bfloat16'],
      [5, 32, 'bfloat16'],
      [6, 64, 'float16'],
      [8, 32, 'float32'],
    ] as const) {
      const q = tc.quantize(tc.tensor(seeded(n * k, bits * 3 + group), { shape: [n, k] }), bits, group, { dtype });
      const expected = dequantizePlain(q.weight.toArray() as Uint32Array, q.scales.toArray(), q.biases.toArray(), n, k, bits, group).map(
        f32,
      );
      const out = tc.dequantize(new tc.QuantizedWeight(onGpu(q.weight), onGpu(q.scales), onGpu(q.biases), group, bits));
      expect([out.backend.name, ...out.shape], `${bits} bits, group ${group}, ${dtype} scales`).toEqual(['webgpu', n, k]);
      // q * scale is exact in f32 for bf16 and f16 scales, so both sides round once; f32 scales round twice.
      if (dtype === 'float32') expectClose(await out.data(), expected, 1e-6, 1e-6);
      else expect(Array.from(await out.data()), `${bits} bits, group ${group}, ${dtype} scales`).toEqual(expected);
    }
  });

  it('x with leading dims and bf16 values; scales read at an offset', async () => {
    const [n, k] = [6, 64];
    const full = tc.quantize(tc.tensor(seeded(2 * n * k, 31), { shape: [2 * n, k] }), 4, 32);
    const w = dequantizePlain(full.weight.toArray() as Uint32Array, full.scales.toArray(), full.biases.toArray(), 2 * n, k, 4, 32).slice(
      n * k,
    );
    const rows = (t: tc.Tensor) => tc.slice(onGpu(t), [[n, 2 * n]]); // the second half: views at an offset
    const gw = new tc.QuantizedWeight(rows(full.weight), rows(full.scales), rows(full.biases), 32, 4);
    const x = seeded(2 * 3 * k, 37).map(bf16);
    const out = tc.fast.quantizedMatmul(gpuTensor(x, [2, 3, k], 'bfloat16'), gw);
    expect(out.shape).toEqual([2, 3, n]);
    const expected = Array.from({ length: 6 * n }, (_, e) => {
      let s = 0;
      for (let t = 0; t < k; t++) s += x[Math.floor(e / n) * k + t] * w[(e % n) * k + t];
      return s;
    });
    expectClose(await out.data(), expected, 1e-4, 1e-5);
  });
});

describe('fused kernels on the GPU against plain loops', () => {
  /** softmax(q k^T * scale + mask) v per head, q [B, Hq, L, D], k and v [B, Hkv, S, D], mask [L, S] or causal. */
  function attention(
    q: number[],
    k: number[],
    v: number[],
    dims: { b: number; hq: number; hkv: number; l: number; s: number; d: number },
    scale: number,
    mask: number[] | 'causal' | null,
  ): number[] {
    const { b, hq, hkv, l, s, d } = dims;
    const out: number[] = [];
    for (let bi = 0; bi < b; bi++) {
      for (let h = 0; h < hq; h++) {
        const kh = Math.floor(h / (hq / hkv));
        for (let i = 0; i < l; i++) {
          const scores = Array.from({ length: s }, (_, j) => {
            if (mask === 'causal' && j > i + s - l) return -Infinity;
            let dot = 0;
            for (let t = 0; t < d; t++) dot += q[((bi * hq + h) * l + i) * d + t] * k[((bi * hkv + kh) * s + j) * d + t];
            return dot * scale + (Array.isArray(mask) ? mask[i * s + j] : 0);
          });
          const p = softmaxRow(scores);
          for (let t = 0; t < d; t++) out.push(p.reduce((acc, pj, j) => acc + pj * v[((bi * hkv + kh) * s + j) * d + t], 0));
        }
      }
    }
    return out;
  }

  it.each([
    ['odd head dim, more query rows than a block, causal', { b: 1, hq: 6, hkv: 2, l: 19, s: 19, d: 5 }, 'causal'],
    ['more keys than a tile, causal aligned to the bottom right', { b: 2, hq: 4, hkv: 4, l: 3, s: 45, d: 12 }, 'causal'],
    ['a decode step over a long cache', { b: 1, hq: 8, hkv: 2, l: 1, s: 300, d: 64 }, null],
    ['more queries than keys: rows that see no key are zeros', { b: 1, hq: 2, hkv: 1, l: 5, s: 3, d: 8 }, 'causal'],
    ['a mask tensor with a fully masked row', { b: 1, hq: 3, hkv: 1, l: 4, s: 7, d: 16 }, 'tensor'],
  ] as const)('sdpa: %s', async (_name, dims, maskKind) => {
    const { b, hq, hkv, l, s, d } = dims;
    const q = seeded(b * hq * l * d, 41);
    const k = seeded(b * hkv * s * d, 43);
    const v = seeded(b * hkv * s * d, 47);
    const maskValues = Array.from({ length: l * s }, (_, e) =>
      Math.floor(e / s) === 1 || (e * 7) % 5 === 0 ? -Infinity : seeded(1, e)[0],
    );
    const scale = 0.7;
    const mask = maskKind === 'tensor' ? gpuTensor(maskValues, [l, s]) : (maskKind ?? undefined);
    const out = tc.fast.sdpa(gpuTensor(q, [b, hq, l, d]), gpuTensor(k, [b, hkv, s, d]), gpuTensor(v, [b, hkv, s, d]), { scale, mask });
    const expected = attention(q, k, v, dims, scale, maskKind === 'tensor' ? maskValues : maskKind);
    expectClose(await out.data(), expected, 1e-5, 1e-5);
  });

  it('sdpa reads q, k and v as the transposed views a model makes, with k and v broadcast over the batch', async () => {
    const [b, hq, hkv, l, s, d] = [2, 4, 2, 6, 6, 8];
    const qs = seeded(b * l * hq * d, 51); // stored [B, L, H, D]
    const ks = seeded(l * hkv * d, 53); // stored [1, S, Hkv, D]
    const vs = seeded(l * hkv * d, 57);
    const q = tc.transpose(gpuTensor(qs, [b, l, hq, d]), [0, 2, 1, 3]);
    const k = tc.transpose(gpuTensor(ks, [1, s, hkv, d]), [0, 2, 1, 3]);
    const v = tc.transpose(gpuTensor(vs, [1, s, hkv, d]), [0, 2, 1, 3]);
    const out = tc.fast.sdpa(q, k, v, { mask: 'causal' });
    const qh = permuted(qs, [b, l, hq, d], [0, 2, 1, 3]);
    const kh = permuted(ks, [1, s, hkv, d], [0, 2, 1, 3]);
    const vh = permuted(vs, [1, s, hkv, d], [0, 2, 1, 3]);
    const expected = [0, 1].flatMap((bi) =>
      attention(qh.slice(bi * hq * l * d, (bi + 1) * hq * l * d), kh, vh, { b: 1, hq, hkv, l, s, d }, 1 / Math.sqrt(d), 'causal'),
    );
    expectClose(await out.data(), expected, 1e-5, 1e-5);
  });

  it('rmsNorm over an odd row length of a strided view', async () => {
    const [rows, n] = [5, 37];
    const values = seeded(rows * n, 59, 3);
    const weight = seeded(n, 61);
    const x = tc.transpose(gpuTensor(permuted(values, [rows, n], [1, 0]), [n, rows])); // [rows, n], column-major
    const out = tc.fast.rmsNorm(x, gpuTensor(weight, [n]), 1e-5);
    const expected = lines(values, [rows, n], 1).flatMap((r) => {
      const scale = 1 / Math.sqrt(r.reduce((a, v) => a + v * v, 0) / n + 1e-5);
      return r.map((v, i) => v * scale * weight[i]);
    });
    expectClose(await out.data(), expected, 1e-5, 1e-5);
  });

  it('rope on a strided view, traditional or not, at per-row offsets; positions past the tables are an error', async () => {
    const [b, l, h, d] = [2, 3, 2, 8];
    const values = seeded(b * l * h * d, 67);
    const tables = tc.fast.ropeTables(d, 16, 10000);
    const gpuTables = { dims: d, cos: onGpu(tables.cos), sin: onGpu(tables.sin) };
    const x = tc.transpose(gpuTensor(permuted(values, [b, l, h, d], [0, 2, 1, 3]), [b, h, l, d]), [0, 2, 1, 3]);
    for (const traditional of [false, true]) {
      const out = tc.fast.rope(x, gpuTables, [0, 9], traditional);
      const expected = values.map((_, e) => {
        const [bi, li, , i] = unravel(e, [b, l, h, d]);
        const pos = [0, 9][bi] + li;
        const half = d / 2;
        const pair = traditional ? Math.floor(i / 2) : i % half;
        const first = traditional ? i % 2 === 0 : i < half;
        const partner = traditional ? (first ? e + 1 : e - 1) : first ? e + half : e - half;
        const angle = pos * 10000 ** ((-2 * pair) / d);
        const [c, s] = [Math.cos(angle), Math.sin(angle)];
        return first ? values[e] * c - values[partner] * s : values[e] * c + values[partner] * s;
      });
      expectClose(await out.data(), expected, 1e-5, 1e-5);
    }
    expect(() => tc.fast.rope(x, gpuTables, [0, 14])).toThrow(/fast.rope: positions 14..16 are outside the tables of 16 positions/);
  });
});

describe('errors on the GPU', () => {
  it('a tensor past maxBufferSize, or a binding past maxStorageBufferBindingSize, names the limit', () => {
    const { maxBufferSize, maxStorageBufferBindingSize } = gpu().limits;
    expect(() => tc.empty([Math.ceil(maxBufferSize / 4) + 1], 'float32', gpu())).toThrow(/exceed this device's maxBufferSize/);
    expect(() => tc.empty([Math.ceil(maxBufferSize / 4) + 1], 'float32', gpu())).toThrow(tc.DeviceLimitError);
    if (maxStorageBufferBindingSize < maxBufferSize) {
      const big = tc.empty([maxStorageBufferBindingSize / 4 + 1], 'float32', gpu());
      expect(() => tc.exp(big)).toThrow(/exp: binding x0 of \d+ bytes exceeds this device's maxStorageBufferBindingSize/);
      big.dispose();
    }
  });

  it('mixing backends and synchronous reads name the op and what to do', () => {
    const g = gpuTensor([1, 2], [2]);
    expect(() => tc.add(g, tc.tensor([1, 2]))).toThrow(/add: inputs live on different backends \(webgpu and cpu\)/);
    expect(() => g.toArray()).toThrow(/toArray: .* is on the webgpu backend; use `await t.data\(\)`/);
    const tables = tc.fast.ropeTables(4, 4);
    expect(() => tc.fast.rope(gpuTensor(seeded(8), [1, 1, 2, 4]), tables)).toThrow(/fast.rope: inputs live on different backends/);
  });
});
