// Ops and fused kernels against the golden fixtures (computed in float64 by PyTorch, fixtures/ops).
import { describe, expect, it } from 'vitest';
import * as tc from '../src/index.ts';
import { expectClose, goldenOp, relativeError } from '../src/testing.ts';

describe('softmax fixture', () => {
  const f = goldenOp('softmax');
  for (const c of f.cases) {
    it(c.name, () => expectClose(tc.softmax(f.get(c, 'x'), c.axis as number).toArray(), f.get(c, 'out').toArray(), 1e-5));
  }
});

describe('linear fixture: x @ w.T + b through matmul with a transposed view', () => {
  const f = goldenOp('linear');
  for (const c of f.cases) {
    it(c.name, () => {
      let y = tc.matmul(f.get(c, 'x'), tc.transpose(f.get(c, 'w')));
      if (c.bias) y = tc.add(y, f.get(c, 'b'));
      expectClose(y.toArray(), f.get(c, 'out').toArray(), 1e-5);
    });
  }
});

describe('silu fixture (including the extremes)', () => {
  const f = goldenOp('silu');
  for (const c of f.cases) {
    it(c.name, () => expectClose(tc.silu(f.get(c, 'x')).toArray(), f.get(c, 'out').toArray(), 1e-6, 1e-6));
  }
});

describe('fast.rmsNorm matches the fixture and the composed form', () => {
  const f = goldenOp('rms_norm');
  for (const c of f.cases) {
    it(c.name, () => {
      const x = f.get(c, 'x');
      const w = f.get(c, 'weight');
      const eps = c.eps as number;
      const fused = tc.fast.rmsNorm(x, w, eps);
      const x32 = tc.astype(x, 'float32');
      const composed = tc.mul(tc.mul(x32, tc.rsqrt(tc.add(tc.mean(tc.mul(x32, x32), -1, { keepdims: true }), eps))), w);
      const expected = f.get(c, 'out').toArray();
      if (c.dtype === 'bfloat16') {
        // The output is bf16 like x: rounding it costs at most 2^-9 relative per value.
        expect(relativeError(tc.astype(fused, 'float32').toArray(), expected)).toBeLessThan(2e-3);
        // The float32 composition rounded once to bf16: the same value, or one bf16 step (2^-8) away.
        expectClose(tc.astype(fused, 'float32').toArray(), tc.astype(tc.astype(composed, x.dtype), 'float32').toArray(), 0, 2 ** -8);
      } else {
        expectClose(fused.toArray(), expected, 1e-5);
        expectClose(fused.toArray(), composed.toArray(), 1e-6, 1e-6);
      }
    });
  }
});

describe('fast.rope matches the fixture (per-row offsets included) and the composed form', () => {
  const f = goldenOp('rope');
  for (const c of f.cases) {
    it(c.name, () => {
      const x = f.get(c, 'x');
      const [, l, , d] = x.shape;
      const offset = c.offset as number | number[];
      const maxOffset = Math.max(...[offset].flat());
      const tables = tc.fast.ropeTables(d, maxOffset + l, c.base as number);
      const fused = tc.fast.rope(x, tables, offset, c.traditional as boolean);
      expectClose(fused.toArray(), f.get(c, 'out').toArray(), 1e-5);
      expectClose(composedRope(x, tables, offset, c.traditional as boolean).toArray(), fused.toArray(), 1e-5);
    });
  }
});

/** RoPE from basic ops: rotate pairs with cos/sin rows gathered at each token's position. */
function composedRope(x: tc.Tensor, tables: tc.fast.RopeTables, offset: number | number[], traditional: boolean): tc.Tensor {
  const [b, l, h, d] = x.shape;
  const offsets = typeof offset === 'number' ? new Array(b).fill(offset) : offset;
  const positions = tc.tensor(
    offsets.flatMap((o: number) => Array.from({ length: l }, (_, i) => o + i)),
    { shape: [b, l], dtype: 'int32' },
  );
  const cos = tc.expandDims(tc.take(tables.cos, positions), 2); // [b, l, 1, d/2]
  const sin = tc.expandDims(tc.take(tables.sin, positions), 2);
  let x1: tc.Tensor, x2: tc.Tensor;
  if (traditional) {
    const pairs = tc.reshape(x, [b, l, h, d / 2, 2]);
    x1 = tc.squeeze(tc.slice(pairs, [null, null, null, null, [0, 1]]), -1);
    x2 = tc.squeeze(tc.slice(pairs, [null, null, null, null, [1, 2]]), -1);
  } else {
    [x1, x2] = tc.split(x, 2, -1);
  }
  const r1 = tc.sub(tc.mul(x1, cos), tc.mul(x2, sin));
  const r2 = tc.add(tc.mul(x2, cos), tc.mul(x1, sin));
  return traditional ? tc.reshape(tc.stack([r1, r2], -1), [b, l, h, d]) : tc.concat([r1, r2], -1);
}

describe('fast.sdpa matches the grouped-query attention fixture', () => {
  const f = goldenOp('gqa');
  for (const c of f.cases) {
    it(c.name, () => {
      const mask = c.mask === 'causal' ? 'causal' : c.mask === 'tensor' ? f.get(c, 'mask') : undefined;
      const out = tc.fast.sdpa(f.get(c, 'q'), f.get(c, 'k'), f.get(c, 'v'), { scale: c.scale as number | undefined, mask });
      expectClose(out.toArray(), f.get(c, 'out').toArray(), 1e-5);
    });
  }
});
