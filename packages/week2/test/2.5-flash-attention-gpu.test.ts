// Chapter 2.5, graded: flash attention on the GPU (wgsl/flash_attention.wgsl, through flashAttentionGpu)
// against every case of the golden fixture (fixtures/ops/flash_attention: PyTorch, float64; float32 and bfloat16
// inputs) and against float64 attention (@tiny-llm/grading) for masks, grouping, odd sizes and a long causal
// prefill. The tests run on the adapter initWebGPU finds: Mesa's software GPU here and in CI, so the sizes stay
// modest.
import * as tc from '@tiny-llm/tensor-core';
import { goldenOp, seeded, seededTensor, useGpu } from '@tiny-llm/tensor-core/testing';
import { expectGolden, expectRelativeError, float64 as f64, gqaMistakes } from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import { flashAttentionGpu } from '@solution/week2';

const gpu = useGpu();

const AXES = ['b', 'h', 'l', 'd'];
/** A GPU copy of a CPU tensor (the original stays, for the float64 references). */
const onGpu = (t: tc.Tensor) => tc.tensor(t.toArray(), { shape: t.shape, dtype: t.dtype, device: gpu() });

/** The kernel's attention, read back. */
async function attend(
  q: tc.Tensor,
  k: tc.Tensor,
  v: tc.Tensor,
  options: { scale?: number; mask?: tc.Tensor | 'causal' } = {},
): Promise<tc.Tensor> {
  const mask = options.mask instanceof tc.Tensor ? onGpu(options.mask) : options.mask;
  return tc.toCPU(flashAttentionGpu(onGpu(q), onGpu(k), onGpu(v), { scale: options.scale, mask }));
}

describe('2.5 flash attention on the GPU: the golden fixture', () => {
  const f = goldenOp('flash_attention');
  for (const c of f.cases) {
    const [q, k, v] = ['q', 'k', 'v'].map((name) => f.get(c, name));
    const mask = c.mask === 'tensor' ? f.get(c, 'mask') : ('causal' as const);
    const title = `${c.name}: q ${q.describe()}, k ${k.describe()}, ${c.mask === 'tensor' ? 'an additive mask' : "'causal'"}`;
    it(title, async () => {
      const out = await attend(q, k, v, { mask });
      const mistakes = gqaMistakes(f64.toND(q), f64.toND(k), f64.toND(v), undefined, mask === 'causal' ? 'causal' : f64.toND(mask));
      if (q.dtype === 'float32') expectGolden(out, f.get(c, 'out'), { atol: 1e-5, axes: AXES, mistakes });
      // bf16 inputs: the output is float32 from the bf16 values; the golden came from the float32 originals.
      else expectRelativeError(out, f.get(c, 'out'), { bound: 1e-2, mistakes });
    });
  }
});

describe('2.5 flash attention on the GPU: against float64 attention', () => {
  const check = async (
    q: tc.Tensor,
    k: tc.Tensor,
    v: tc.Tensor,
    options: { scale?: number; mask?: tc.Tensor | 'causal' },
    what: string,
  ) => {
    const mask = options.mask === 'causal' ? ('bottom-right' as const) : options.mask && f64.toND(options.mask);
    const expected = f64.attention(f64.toND(q), f64.toND(k), f64.toND(v), { scale: options.scale, mask, kvHeadOf: f64.groupedHead });
    const mistakes = gqaMistakes(
      f64.toND(q),
      f64.toND(k),
      f64.toND(v),
      options.scale,
      options.mask === 'causal' ? 'causal' : (mask as f64.NDArray | undefined),
    );
    expectGolden(await attend(q, k, v, options), expected, { atol: 1e-5, what, axes: AXES, mistakes });
  };

  it('sizes that are not multiples of any tile: L = 37 queries after 63 cached keys, causal, 6 heads on 2', async () => {
    await check(
      seededTensor([2, 6, 37, 24], 1),
      seededTensor([2, 2, 100, 24], 2),
      seededTensor([2, 2, 100, 24], 3),
      { mask: 'causal' },
      'causal, L = 37, S = 100',
    );
  });

  it('one query (a decode step) over 300 keys, no mask, a scale of its own', async () => {
    await check(
      seededTensor([1, 4, 1, 32], 4),
      seededTensor([1, 1, 300, 32], 5),
      seededTensor([1, 1, 300, 32], 6),
      { scale: 0.3 },
      'L = 1, S = 300',
    );
  });

  it('an additive mask per head [B, Hq, L, S], one broadcast from [L, S], and one per batch row [B, 1, L, S]', async () => {
    const [q, k, v] = [seededTensor([2, 4, 20, 16], 7), seededTensor([2, 2, 70, 16], 8), seededTensor([2, 2, 70, 16], 9)];
    const perHead = tc.tensor(seeded(2 * 4 * 20 * 70, 10, 3), { shape: [2, 4, 20, 70] });
    await check(q, k, v, { mask: perHead }, 'a mask per head');
    await check(q, k, v, { mask: tc.contiguous(tc.slice(perHead, [0, 0])) }, 'a mask [L, S] for every head');
    await check(
      q,
      k,
      v,
      { mask: tc.contiguous(tc.slice(perHead, [null, [1, 2]])) },
      'a mask [B, 1, L, S] (the batch cache of chapter 2.6)',
    );
  });

  it('a long causal prefill: L = S = 320, 2 heads of 64 (most key tiles of the early rows are skipped)', async () => {
    await check(
      seededTensor([1, 2, 320, 64], 11),
      seededTensor([1, 2, 320, 64], 12),
      seededTensor([1, 2, 320, 64], 13),
      { mask: 'causal' },
      'causal, L = S = 320',
    );
  });

  it('a query whose keys are all hidden gets 0, not NaN', async () => {
    const [q, k, v] = [seededTensor([1, 1, 3, 8], 14), seededTensor([1, 1, 5, 8], 15), seededTensor([1, 1, 5, 8], 16)];
    const rows = [[0, 0, 0, 0, 0], new Array<number>(5).fill(-Infinity), [0, -Infinity, 0, -Infinity, 0]];
    const out = await attend(q, k, v, { mask: tc.tensor(rows, { dtype: 'float32' }) });
    const row1 = Array.from(tc.slice(out, [0, 0, 1]).toArray());
    expect(row1, 'row 1 sees no key: its output is 0 (l = 0), not 0 / 0 = NaN').toEqual(new Array<number>(8).fill(0));
  });
});
