// Every op against an independent computation: plain loops over row-major indices (helpers.ts).
import { describe, expect, it } from 'vitest';
import * as tc from '../src/index.ts';
import { broadcastAt, expectClose, nd, ravel, seeded, unravel, type NDArray } from '../src/testing.ts';

const t = (a: NDArray, dtype: tc.DType = 'float32') => tc.tensor(a.data, { shape: a.shape, dtype });

function broadcastReference(a: NDArray, b: NDArray, shape: number[], f: (x: number, y: number) => number): number[] {
  const n = shape.reduce((p, d) => p * d, 1);
  return Array.from({ length: n }, (_, i) => {
    const idx = unravel(i, shape);
    return f(broadcastAt(a, idx), broadcastAt(b, idx));
  });
}

describe('elementwise binary ops broadcast like numpy', () => {
  const cases: [number[], number[], number[]][] = [
    [
      [2, 3],
      [2, 3],
      [2, 3],
    ],
    [[2, 3], [3], [2, 3]],
    [
      [4, 1, 5],
      [3, 1],
      [4, 3, 5],
    ],
    [[1], [7, 2], [7, 2]],
    [[], [2, 2], [2, 2]],
    [[5, 40000], [40000], [5, 40000]], // long rows are split across threads
  ];
  const ops: [string, (a: tc.Tensor, b: tc.Tensor) => tc.Tensor, (x: number, y: number) => number][] = [
    ['add', tc.add, (x, y) => x + y],
    ['sub', tc.sub, (x, y) => x - y],
    ['mul', tc.mul, (x, y) => x * y],
    ['div', tc.div, (x, y) => x / y],
    ['maximum', tc.maximum, Math.max],
    ['minimum', tc.minimum, Math.min],
    ['pow', (a, b) => tc.pow(tc.abs(a), b), (x, y) => Math.abs(x) ** y],
  ];
  for (const [name, op, f] of ops) {
    it(name, () => {
      for (const [sa, sb, sout] of cases) {
        const a = nd(sa, (i) => seeded(1, i + 3)[0] * 4);
        const b = nd(sb, (i) => seeded(1, i + 101)[0] * 4 + 0.01);
        const out = op(t(a), t(b));
        expect(out.shape).toEqual(sout);
        expectClose(
          out.toArray(),
          broadcastReference(a, b, sout, (x, y) => Math.fround(f(Math.fround(x), Math.fround(y)))),
          1e-5,
          1e-6,
        );
      }
    });
  }

  it('comparisons give bool', () => {
    const a = tc.tensor([1, 2, 3, 4]);
    const b = tc.tensor([[2], [3]]);
    const lt = tc.less(a, b);
    expect(lt.dtype).toBe('bool');
    expect(lt.toList()).toEqual([
      [1, 0, 0, 0],
      [1, 1, 0, 0],
    ]);
    expect(tc.greater(a, 2).toList()).toEqual([0, 0, 1, 1]);
    expect(tc.equal(a, tc.tensor([1, 0, 3, 0])).toList()).toEqual([1, 0, 1, 0]);
  });

  it('numbers take the tensor dtype unless that would lose them', () => {
    const i = tc.tensor([1, 2, 3], { dtype: 'int32' });
    expect(tc.add(i, 1).dtype).toBe('int32');
    expect(tc.mul(i, 0.5).toList()).toEqual([0.5, 1, 1.5]);
    expect(tc.sub(10, i).toList()).toEqual([9, 8, 7]);
    const h = tc.tensor([1, 2], { dtype: 'bfloat16' });
    expect(tc.mul(h, 3).dtype).toBe('bfloat16');
  });

  it('promotes dtypes: bf16 + f32 -> f32, int + float -> float, f16 + bf16 -> f32, int / int -> f32', () => {
    const f = tc.tensor([1.5, 2.5]);
    const b = tc.tensor([1, 2], { dtype: 'bfloat16' });
    const h = tc.tensor([1, 2], { dtype: 'float16' });
    const i = tc.tensor([7, 9], { dtype: 'int32' });
    expect(tc.add(f, b).dtype).toBe('float32');
    expect(tc.add(i, b).dtype).toBe('bfloat16');
    expect(tc.add(h, b).dtype).toBe('float32');
    expect(tc.div(i, tc.tensor([2, 2], { dtype: 'int32' })).toList()).toEqual([3.5, 4.5]);
    expect(tc.add(i, tc.tensor([2147483000, 0], { dtype: 'int32' })).toList()).toEqual([2147483007, 9]); // exact, not via f32
  });

  it('where selects with broadcasting, between tensors or numbers', () => {
    const cond = tc.tensor([[true, false, true]]);
    const out = tc.where(cond, tc.tensor([[1], [2]]), -1);
    expect(out.toList()).toEqual([
      [1, -1, 1],
      [2, -1, 2],
    ]);
    const mask = tc.where(cond, -Infinity, 0); // two numbers: a float32 result of cond's shape
    expect(mask.dtype).toBe('float32');
    expect(mask.toList()).toEqual([[-Infinity, 0, -Infinity]]);
    expect(() => tc.where([true] as never, 1, 0)).toThrow(/where: expected a Tensor as the condition, got an array of length 1/);
  });
});

describe('elementwise unary ops', () => {
  const xs = seeded(257, 7, 6);
  const x = tc.tensor(xs);
  const ops: [string, (a: tc.Tensor) => tc.Tensor, (v: number) => number, number[]?][] = [
    ['exp', tc.exp, Math.exp],
    ['log', (a) => tc.log(tc.abs(a)), (v) => Math.log(Math.abs(v))],
    ['sqrt', (a) => tc.sqrt(tc.abs(a)), (v) => Math.sqrt(Math.abs(v))],
    ['rsqrt', (a) => tc.rsqrt(tc.abs(a)), (v) => 1 / Math.sqrt(Math.abs(v))],
    ['sigmoid', tc.sigmoid, (v) => 1 / (1 + Math.exp(-v))],
    ['silu', tc.silu, (v) => v / (1 + Math.exp(-v))],
    ['neg', tc.neg, (v) => -v],
    ['abs', tc.abs, Math.abs],
    ['tanh', tc.tanh, Math.tanh],
    ['cos', tc.cos, Math.cos],
    ['sin', tc.sin, Math.sin],
  ];
  for (const [name, op, f] of ops) {
    it(name, () =>
      expectClose(
        op(x).toArray(),
        xs.map((v) => f(Math.fround(v))),
        1e-5,
        1e-5,
      ),
    );
  }

  it('silu keeps the far negative tail and saturates the positive one', () => {
    const v = [-200, -100, -88, -30, 30, 100];
    const out = tc.silu(tc.tensor(v)).toArray();
    const ref = v.map((a) => a / (1 + Math.exp(-a)));
    for (let i = 0; i < v.length; i++) expect(out[i]).toBeCloseTo(Math.fround(ref[i]), 40);
    expect(out[1]).not.toBe(0); // -100 * e^-100 is a float32 subnormal, not zero
  });

  it('exp, sigmoid and silu stay within a few float32 ulps over the whole range (vector and scalar lanes)', () => {
    // 8-wide vector lanes and the scalar fallback for the extremes (|x| near 88, the far negative tail).
    const xs = Array.from({ length: 2001 }, (_, i) => -100 + i * 0.1).map(Math.fround);
    const x = tc.tensor(xs);
    const check = (got: ArrayLike<number>, f: (v: number) => number) => {
      for (let i = 0; i < xs.length; i++) {
        const want = f(xs[i]);
        // A few ulps, or one step of the subnormal range (2^-149) where the result is that small.
        if (!Number.isFinite(Math.fround(want))) expect(got[i]).toBe(Math.fround(want));
        else expect(Math.abs(got[i] - want), `at x = ${xs[i]}`).toBeLessThanOrEqual(4e-7 * Math.abs(want) + 2 ** -149);
      }
    };
    check(tc.exp(x).toArray(), Math.exp);
    check(tc.sigmoid(x).toArray(), (v) => 1 / (1 + Math.exp(-v)));
    check(tc.silu(x).toArray(), (v) => v / (1 + Math.exp(-v)));
  });

  it('work on strided views and on bf16 with correct rounding', () => {
    const m = tc.reshape(tc.arange(12, undefined, 1, { dtype: 'float32' }), [3, 4]);
    expect(tc.neg(tc.transpose(m)).toList()).toEqual([
      [-0, -4, -8],
      [-1, -5, -9],
      [-2, -6, -10],
      [-3, -7, -11],
    ]);
    const b = tc.exp(tc.tensor([1], { dtype: 'bfloat16' }));
    expect(b.dtype).toBe('bfloat16');
    expect(b.toArray()[0]).toBe(2.71875); // e = 2.71828..., nearest bf16 is 2.71875
  });
});

describe('reductions', () => {
  const shape = [3, 4, 5];
  const a = nd(shape, (i) => seeded(1, i * 7 + 1)[0] * 10);
  const x = t(a);
  function reference(axis: number, f: (vals: number[]) => number): number[] {
    const outShape = shape.filter((_, d) => d !== axis);
    const n = outShape.reduce((p, d) => p * d, 1);
    return Array.from({ length: n }, (_, i) => {
      const idx = unravel(i, outShape);
      const vals = Array.from({ length: shape[axis] }, (_, j) => {
        const full = [...idx];
        full.splice(axis, 0, j);
        return Math.fround(a.data[ravel(full, shape)]);
      });
      return f(vals);
    });
  }
  const sum = (v: number[]) => v.reduce((p, c) => p + c, 0);
  for (const axis of [0, 1, 2]) {
    it(`sum/mean/max/min/argmax/logsumexp along axis ${axis}`, () => {
      expectClose(tc.sum(x, axis).toArray(), reference(axis, sum), 1e-4);
      expectClose(
        tc.mean(x, axis).toArray(),
        reference(axis, (v) => sum(v) / v.length),
        1e-5,
      );
      expectClose(
        tc.max(x, axis).toArray(),
        reference(axis, (v) => Math.max(...v)),
      );
      expectClose(
        tc.min(x, axis).toArray(),
        reference(axis, (v) => Math.min(...v)),
      );
      expectClose(
        tc.argmax(x, axis).toArray(),
        reference(axis, (v) => v.indexOf(Math.max(...v))),
      );
      expectClose(
        tc.logsumexp(x, axis).toArray(),
        reference(axis, (v) => Math.log(sum(v.map(Math.exp)))),
        1e-4,
      );
    });
  }

  it('argmax over long rows (the LM head): the first of equal maxima, the first NaN, rows of -inf', () => {
    const n = 1003; // vectors of 8 or 16 and a tail
    const rows = [
      Array.from({ length: n }, (_, i) => Math.sin(i * 0.37) * 5), // one maximum
      Array.from({ length: n }, (_, i) => (i === 17 || i === 900 ? 9 : -i)), // a tie: the first wins
      Array.from({ length: n }, (_, i) => (i === 1002 ? 50 : 0)), // the maximum in the tail
      Array.from({ length: n }, (_, i) => (i === 600 || i === 1001 ? NaN : i)), // NaN wins, the first one
      Array.from({ length: n }, () => -Infinity),
    ];
    const expected = rows.map((r) => {
      const firstNaN = r.findIndex((v) => Number.isNaN(v));
      return firstNaN >= 0 ? firstNaN : r.indexOf(Math.max(...r));
    });
    expect(expected).toEqual([expected[0], 17, 1002, 600, 0]);
    expect(Array.from(tc.argmax(tc.tensor(rows), -1).toArray())).toEqual(expected);
    // The same rows through a strided view (the generic path) agree.
    const strided = tc.transpose(tc.contiguous(tc.transpose(tc.tensor(rows))));
    expect(Array.from(tc.argmax(strided, -1).toArray())).toEqual(expected);
  });

  it('keepdims keeps a size-1 axis; negative axes count from the end', () => {
    expect(tc.sum(x, 1, { keepdims: true }).shape).toEqual([3, 1, 5]);
    expect(tc.max(x, -1).shape).toEqual([3, 4]);
    expect(() => tc.sum(x, 3)).toThrow(/sum: axis 3 is out of range/);
  });

  it('logsumexp does not overflow near 1000', () => {
    expectClose(tc.logsumexp(tc.tensor([1000, 1000])).toArray(), [1000 + Math.log(2)], 1e-4);
  });

  it('integer sums are exact', () => {
    // 2^31 - 1 is not a float32, so a float accumulator would be off by one.
    expect(tc.sum(tc.tensor([2 ** 30, 2 ** 30 - 2, 1], { dtype: 'int32' })).item()).toBe(2 ** 31 - 1);
  });
});

describe('softmax', () => {
  it('along any axis, stable for inputs near 1000', () => {
    const a = nd([3, 5], (i) => 1000 + seeded(1, i + 11)[0] * 5);
    for (const axis of [0, 1]) {
      const out = tc.softmax(t(a), axis).toArray();
      const ref = new Array(15);
      for (let i = 0; i < 3; i++) {
        for (let j = 0; j < 5; j++) {
          const line = axis === 1 ? [0, 1, 2, 3, 4].map((k) => a.data[i * 5 + k]) : [0, 1, 2].map((k) => a.data[k * 5 + j]);
          const m = Math.max(...line);
          const z = line.reduce((p, v) => p + Math.exp(v - m), 0);
          ref[i * 5 + j] = Math.exp(Math.fround(a.data[i * 5 + j]) - m) / z;
        }
      }
      expectClose(out, ref, 1e-5);
    }
  });

  it('a fully masked row becomes zeros, not NaN', () => {
    expect(Array.from(tc.softmax(tc.tensor([-Infinity, -Infinity])).toArray())).toEqual([0, 0]);
  });

  it('long rows (vector lanes and a tail): masked positions, values far below the max, NaN', () => {
    const n = 1003; // vectors of 8 or 16 and a tail
    const noise = seeded(n, 5, 30);
    const rows = [
      noise, // spread over e^-60 .. 1 of the max
      noise.map((v, i) => (i % 3 === 0 || i > 990 ? -Infinity : v)), // a causal / padding mask
      noise.map((v, i) => (i === 500 ? 100 : v)), // everything else below e^-87 of the max: exp's scalar lanes
      noise.map((v, i) => (i === 7 ? NaN : v)),
      new Array(n).fill(-Infinity),
    ];
    const ref = rows.flatMap((row) => {
      const xs = row.map(Math.fround);
      if (xs.some(Number.isNaN)) return xs.map(() => NaN);
      const m = Math.max(...xs);
      if (m === -Infinity) return xs.map(() => 0);
      const z = xs.reduce((p, v) => p + Math.exp(v - m), 0);
      return xs.map((v) => Math.exp(v - m) / z);
    });
    expectClose(tc.softmax(tc.tensor(rows), -1).toArray(), ref, 1e-9, 1e-5);
  });
});

describe('scans and sorting', () => {
  it('cumsum, argsort (stable), sort, topk', () => {
    const v = [3, 1, 4, 1, 5, 9, 2, 6];
    expect(Array.from(tc.cumsum(tc.tensor(v)).toArray())).toEqual([3, 4, 8, 9, 14, 23, 25, 31]);
    expect(Array.from(tc.argsort(tc.tensor(v)).toArray())).toEqual([1, 3, 6, 0, 2, 4, 7, 5]);
    expect(Array.from(tc.argsort(tc.tensor(v), -1, { descending: true }).toArray())).toEqual([5, 7, 4, 2, 0, 6, 1, 3]);
    expect(Array.from(tc.sort(tc.tensor(v)).toArray())).toEqual([1, 1, 2, 3, 4, 5, 6, 9]);
    const { values, indices } = tc.topk(tc.tensor([v, v.map((x) => -x)]), 3);
    expect(values.toList()).toEqual([
      [9, 6, 5],
      [-1, -1, -2],
    ]);
    expect(indices.toList()).toEqual([
      [5, 7, 4],
      [1, 3, 6],
    ]);
    expect(
      tc
        .cumsum(
          tc.tensor([
            [1, 2],
            [3, 4],
          ]),
          0,
        )
        .toList(),
    ).toEqual([
      [1, 2],
      [4, 6],
    ]);
    expect(
      tc
        .sort(
          tc.tensor([
            [3, 1],
            [2, 4],
          ]),
          0,
        )
        .toList(),
    ).toEqual([
      [2, 1],
      [3, 4],
    ]);
  });
});

describe('matmul result dtype', () => {
  it('computes in float32 and returns the promoted dtype: bf16 @ bf16 is bf16 (rounded once), bf16 @ f32 is f32', () => {
    const [a, b] = [seeded(2 * 3, 4), seeded(3 * 2, 5)];
    const [ab, bb] = [tc.tensor(a, { shape: [2, 3], dtype: 'bfloat16' }), tc.tensor(b, { shape: [3, 2], dtype: 'bfloat16' })];
    // The bf16 inputs as float64, their product in float64, then rounded once through float32 to bf16.
    const [av, bv] = [ab.toArray(), bb.toArray()];
    const product = Array.from({ length: 4 }, (_, i) => {
      const [r, c] = [Math.floor(i / 2), i % 2];
      return [0, 1, 2].reduce((s, k) => s + av[r * 3 + k] * bv[k * 2 + c], 0);
    });
    const both = tc.matmul(ab, bb);
    expect(both.dtype).toBe('bfloat16');
    expect(Array.from(both.toArray())).toEqual(Array.from(tc.tensor(product, { shape: [2, 2], dtype: 'bfloat16' }).toArray()));
    const mixed = tc.matmul(ab, tc.astype(bb, 'float32'));
    expect(mixed.dtype).toBe('float32');
    expectClose(mixed.toArray(), product, 1e-6);
  });
});

describe('shape ops are views where they can be', () => {
  const base = tc.arange(24, undefined, 1, { dtype: 'float32' });
  const x = tc.reshape(base, [2, 3, 4]);
  const value = (i: number, j: number, k: number) => i * 12 + j * 4 + k;

  it('reshape with -1, transpose, swapaxes, moveaxis, squeeze, expandDims share storage', () => {
    expect(x.storage).toBe(base.storage);
    const tr = tc.transpose(x, [2, 0, 1]);
    expect(tr.storage).toBe(base.storage);
    expect(tr.shape).toEqual([4, 2, 3]);
    const flat = tr.toArray();
    for (let k = 0; k < 4; k++)
      for (let i = 0; i < 2; i++) for (let j = 0; j < 3; j++) expect(flat[k * 6 + i * 3 + j]).toBe(value(i, j, k));
    expect(tc.swapaxes(x, 0, 2).shape).toEqual([4, 3, 2]);
    expect(tc.moveaxis(x, 0, -1).shape).toEqual([3, 4, 2]);
    expect(tc.reshape(x, [-1, 4]).shape).toEqual([6, 4]);
    expect(tc.squeeze(tc.expandDims(x, 1), 1).shape).toEqual([2, 3, 4]);
    expect(tc.expandDims(x, -1).shape).toEqual([2, 3, 4, 1]);
    // Splitting a transposed tensor's dimension needs no copy; merging across the transpose does.
    expect(tc.reshape(tr, [2, 2, 2, 3]).storage).toBe(base.storage);
    const merged = tc.reshape(tr, [4, 6]);
    expect(Array.from(merged.toArray())).toEqual(Array.from(flat));
  });

  it('slice with steps, negative indices and dropped dimensions', () => {
    const s = tc.slice(x, [1, [null, null, -1], [1, 4, 2]]);
    expect(s.shape).toEqual([3, 2]);
    expect(s.toList()).toEqual([
      [value(1, 2, 1), value(1, 2, 3)],
      [value(1, 1, 1), value(1, 1, 3)],
      [value(1, 0, 1), value(1, 0, 3)],
    ]);
    expect(s.storage).toBe(base.storage);
    expect(tc.slice(x, [[-1]]).shape).toEqual([1, 3, 4]);
    expect(tc.slice(x, [[5, 9]]).shape).toEqual([0, 3, 4]);
    expect(() => tc.slice(x, [2])).toThrow(/slice: index 2 is out of range for dimension 0/);
  });

  it('broadcastTo repeats with stride 0', () => {
    const b = tc.broadcastTo(tc.tensor([1, 2, 3]), [2, 3]);
    expect(b.strides).toEqual([0, 1]);
    expect(b.toList()).toEqual([
      [1, 2, 3],
      [1, 2, 3],
    ]);
    expect(() => tc.broadcastTo(tc.tensor([1, 2]), [3])).toThrow(/broadcastTo: cannot broadcast int32\[2\] to \[3\]/);
  });

  it('concat, stack and split', () => {
    const a = tc.tensor([
      [1, 2],
      [3, 4],
    ]);
    const b = tc.tensor([[5, 6]]);
    expect(tc.concat([a, b], 0).toList()).toEqual([
      [1, 2],
      [3, 4],
      [5, 6],
    ]);
    expect(tc.concat([a, tc.transpose(a)], 1).toList()).toEqual([
      [1, 2, 1, 3],
      [3, 4, 2, 4],
    ]);
    expect(tc.stack([a, a], -1).toList()).toEqual([
      [
        [1, 1],
        [2, 2],
      ],
      [
        [3, 3],
        [4, 4],
      ],
    ]);
    const [p, q] = tc.split(tc.arange(6), [2], 0);
    expect(p.toList()).toEqual([0, 1]);
    expect(q.toList()).toEqual([2, 3, 4, 5]);
    expect(() => tc.concat([a, tc.tensor([1, 2, 3])], 0)).toThrow(/concat/);
  });

  it('take gathers rows (embeddings) and along other axes, and rejects bad indices', () => {
    const table = tc.reshape(tc.arange(12, undefined, 1, { dtype: 'float32' }), [4, 3]);
    const ids = tc.tensor(
      [
        [3, 0],
        [1, 1],
      ],
      { dtype: 'int32' },
    );
    expect(tc.take(table, ids).toList()).toEqual([
      [
        [9, 10, 11],
        [0, 1, 2],
      ],
      [
        [3, 4, 5],
        [3, 4, 5],
      ],
    ]);
    expect(tc.take(table, tc.tensor([2, 0], { dtype: 'int32' }), 1).toList()).toEqual([
      [2, 0],
      [5, 3],
      [8, 6],
      [11, 9],
    ]);
    expect(tc.take(tc.transpose(table), tc.tensor([1], { dtype: 'int32' })).toList()).toEqual([[1, 4, 7, 10]]);
    expect(() => tc.take(table, tc.tensor([4], { dtype: 'int32' }))).toThrow(/take: index 4 .* out of range for a table of 4 rows/);
    expect(() => tc.take(table, tc.tensor([-1], { dtype: 'int32' }))).toThrow(/out of range/);
    expect(() => tc.take(table, tc.tensor([1.5]))).toThrow(/take: indices must be int32/);
  });

  it('tril and triu', () => {
    const m = tc.ones([3, 4]);
    expect(tc.tril(m).toList()).toEqual([
      [1, 0, 0, 0],
      [1, 1, 0, 0],
      [1, 1, 1, 0],
    ]);
    expect(tc.triu(m, 1).toList()).toEqual([
      [0, 1, 1, 1],
      [0, 0, 1, 1],
      [0, 0, 0, 1],
    ]);
    expect(tc.tril(m, -1).toList()).toEqual([
      [0, 0, 0, 0],
      [1, 0, 0, 0],
      [1, 1, 0, 0],
    ]);
  });
});

describe('creation', () => {
  it('tensor, full, zeros, ones, arange', () => {
    expect(
      tc.tensor([
        [1, 2],
        [3, 4],
      ]).shape,
    ).toEqual([2, 2]);
    expect(tc.tensor([1, 2, 3, 4], { shape: [2, 2], dtype: 'int32' }).toList()).toEqual([
      [1, 2],
      [3, 4],
    ]);
    expect(tc.full([2], 7, { dtype: 'uint8' }).toList()).toEqual([7, 7]);
    expect(tc.zeros([2, 1]).toList()).toEqual([[0], [0]]);
    expect(tc.ones([1], { dtype: 'bfloat16' }).toList()).toEqual([1]);
    expect(tc.arange(2, 8, 3).toList()).toEqual([2, 5]);
    expect(tc.arange(1, 0, -0.25).toList()).toEqual([1, 0.75, 0.5, 0.25]);
    expect(() => tc.tensor([[1, 2], [3]])).toThrow(/ragged/);
    expect(() => tc.tensor([1, 2, 3], { shape: [2, 2] })).toThrow(/3 values do not fill the shape \[2, 2\]/);
    expect(() => tc.tensor([1], { dtype: 'float64' as tc.DType })).toThrow(/unknown dtype "float64"/);
  });

  it("tensor's dtype without options follows numpy: integers int32, other numbers float32", () => {
    const cases: [Parameters<typeof tc.tensor>[0], tc.DType][] = [
      [[0, 1, 2], 'int32'],
      [[[3, -4]], 'int32'],
      [[0.5, 1], 'float32'],
      [[1, -Infinity], 'float32'],
      [[1, 2 ** 31], 'float32'], // past int32
      [[true, false], 'bool'],
      [new Float64Array([1, 2]), 'float32'],
      [new Int32Array([1, 2]), 'int32'],
    ];
    for (const [data, dtype] of cases) expect(tc.tensor(data).dtype, JSON.stringify(Array.from(data as ArrayLike<number>))).toBe(dtype);
    expect(
      tc
        .take(
          tc.tensor([
            [1.5, 2.5],
            [3.5, 4.5],
          ]),
          tc.tensor([1, 0]),
        )
        .toList(),
    ).toEqual([
      [3.5, 4.5],
      [1.5, 2.5],
    ]);
  });
});

describe('random', () => {
  it('is reproducible with a seed and has the right moments', () => {
    const a = Array.from(tc.random.normal([20000], { seed: 42 }).toArray());
    const b = tc.random.normal([20000], { seed: 42 }).toArray();
    expect(Array.from(a)).toEqual(Array.from(b));
    const mean = a.reduce((p, v) => p + v, 0) / a.length;
    const variance = a.reduce((p, v) => p + (v - mean) ** 2, 0) / a.length;
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(variance - 1)).toBeLessThan(0.05);
    const u = Array.from(tc.random.uniform([10000], { seed: 1, low: 2, high: 4 }).toArray());
    expect(Math.min(...u)).toBeGreaterThanOrEqual(2);
    expect(Math.max(...u)).toBeLessThan(4);
    expect(Array.from(tc.random.uniform([5], { seed: 2 }).toArray())).not.toEqual(
      Array.from(tc.random.uniform([5], { seed: 3 }).toArray()),
    );
  });

  it('categorical follows softmax(logits) and never draws a -inf logit', () => {
    const logits = [Math.log(0.2), Math.log(0.5), -Infinity, Math.log(0.3)];
    const rows = 6000;
    const batch = tc.broadcastTo(tc.tensor(logits), [rows, 4]);
    const draws = tc.random.categorical(batch, { seed: 9 }).toArray();
    const counts = [0, 0, 0, 0];
    for (const d of draws) counts[d]++;
    expect(counts[2]).toBe(0);
    const chi2 = [0, 1, 3].reduce((s, i) => s + (counts[i] - rows * [0.2, 0.5, 0, 0.3][i]) ** 2 / (rows * [0.2, 0.5, 0, 0.3][i]), 0);
    expect(chi2).toBeLessThan(13.8); // chi-square, 2 degrees of freedom, p = 0.001
    expect(Array.from(tc.random.categorical(batch, { seed: 9 }).toArray())).toEqual(Array.from(draws));
  });
});

describe('errors name the op and the shapes', () => {
  it('broadcast and matmul mismatches, disposed tensors, mixed inputs', () => {
    expect(() => tc.add(tc.ones([2, 3]), tc.ones([4]))).toThrow('add: shapes [2, 3] and [4] cannot be broadcast together');
    expect(() => tc.matmul(tc.ones([2, 3]), tc.ones([4, 2]))).toThrow(
      /matmul: inner dimensions differ \(3 vs 4\) \(got float32\[2, 3\], float32\[4, 2\]\)/,
    );
    expect(() => tc.matmul(tc.ones([2, 3], { dtype: 'int32' }), tc.ones([3, 2]))).toThrow(/matmul: operands must be floating point/);
    const d = tc.ones([2]);
    d.dispose();
    expect(() => d.toArray()).toThrow('toArray: the tensor float32[2] has been disposed');
    expect(() => tc.exp(d)).toThrow(/exp: the tensor float32\[2\] has been disposed/);
    expect(() => tc.add(tc.ones([1]), 'x' as unknown as tc.Tensor)).toThrow(/add: expected Tensors or numbers/);
    expect(() => tc.ones([2]).item()).toThrow(/item: expected a tensor with one element/);
  });
});

describe('tidy', () => {
  it('disposes what it does not return and keeps views alive through shared storage', () => {
    let inner: tc.Tensor | undefined;
    const kept = tc.tidy(() => {
      inner = tc.ones([4]);
      const doubled = tc.mul(inner, 2);
      return tc.reshape(doubled, [2, 2]);
    });
    expect(inner!.isDisposed).toBe(true);
    expect(kept.toList()).toEqual([
      [2, 2],
      [2, 2],
    ]);
    expect(() => tc.tidy(() => Promise.resolve(1))).toThrow(/tidy: the function returned a Promise/);
  });

  it('cpu.memory() counts the bytes of live tensors and their high-water mark', () => {
    const before = tc.cpu.memory().liveBytes;
    tc.cpu.resetPeak();
    tc.tidy(() => {
      const a = tc.zeros([1000]); // 4000 bytes
      const view = tc.reshape(a, [10, 100]); // a view: no new bytes
      expect(tc.cpu.memory().liveBytes - before).toBe(4000);
      tc.add(view, view).dispose(); // 4000 more for a moment
      expect(tc.cpu.memory().liveBytes - before).toBe(4000);
    });
    const after = tc.cpu.memory();
    expect(after.liveBytes).toBe(before);
    expect(after.peakBytes - before).toBe(8000);
    tc.cpu.resetPeak();
    expect(tc.cpu.memory().peakBytes).toBe(before);
  });
});
