// The engine on the page pool of chapter 3.1 (what `tiny-llm batch` and `serve` run): the fused decode kernel over
// pages (native/attention_decode.cc's pagedAttentionDecode) against float64 RoPE and attention; EngineBatchModel's
// logits against every fixture model's goldens, pages crossed at every 4 tokens; and the demo model's golden tokens
// through PagedScheduler with prefix caching, in a pool small enough to preempt.
import * as tc from '@tiny-llm/tensor-core';
import { demoGolden, MODELS_DIR, seededTensor } from '@tiny-llm/tensor-core/testing';
import { expectGolden, float64 as f64, goldenModel } from '@tiny-llm/grading';
import { blockTablesTensor, PagedScheduler } from '@tiny-llm/reference/week3';
import { describe, expect, it } from 'vitest';
import { EngineBatchModel } from '../src/batch-model.ts';
import { Qwen2Model } from '../src/model/qwen2.ts';
import { engineKernels } from '../src/model/native.ts';

const ATOL = 1e-4;
describe('pagedAttentionDecode: RoPE, the cache write and attention through block tables, in one call', () => {
  // One new token per row (a decode step), or three (a speculative verification: each sees the ones before it).
  for (const [tokens, norms] of [
    [1, false],
    [1, true],
    [3, false],
    [3, true],
  ] as const) {
    it(`3 rows of ${tokens} new token${tokens > 1 ? 's' : ''} from positions 0, 20 and 37 in shuffled pages of 8, 6 query heads on 2 of 16${norms ? ', with per-head q and k norms (Qwen3)' : ''}`, () => {
      const [hq, hkv, d, p, base, l] = [6, 2, 16, 8, 10000, tokens];
      const positions = [0, 20, 37];
      const tables = [[5], [2, 9, 0], [7, 1, 4, 8, 3]];
      const [keys, values] = [seededTensor([10, hkv, p, d], 1), seededTensor([10, hkv, p, d], 2)];
      const before = [keys, values].map(f64.toND); // the pages as they were: the kernel writes into them
      const qkv = seededTensor([3, l, (hq + 2 * hkv) * d], 3);
      const [qNorm, kNorm] = [seededTensor([d], 4), seededTensor([d], 5)];
      const rope = tc.fast.ropeTables(d, 64, base);
      const out = tc.empty([3, l, hq * d]);
      const eps = 1e-6;
      engineKernels().pagedAttentionDecode(
        ...[
          qkv,
          rope.cos,
          rope.sin,
          tc.tensor(Int32Array.from(positions), { dtype: 'int32' }),
          keys,
          values,
          blockTablesTensor(tables),
          out,
        ].map((t) => t.native()),
        hq,
        hkv,
        0.25,
        norms ? qNorm.native() : null,
        norms ? kNorm.native() : null,
        eps,
      );
      // float64: each token's heads (normalised), rotated at its position; its new key and value written into its slot.
      const heads = f64.toND(tc.reshape(qkv, [3 * l, hq + 2 * hkv, d]));
      const part = (from: number, n: number, norm: tc.Tensor | null) => {
        const slice = { shape: [3, l, n, d], data: new Float64Array(3 * l * n * d) };
        for (let t = 0; t < 3 * l; t++)
          slice.data.set(heads.data.subarray((t * (hq + 2 * hkv) + from) * d, (t * (hq + 2 * hkv) + from + n) * d), t * n * d);
        return norm ? f64.rmsNorm(slice, f64.toND(norm), eps) : slice;
      };
      const turned = (x: f64.NDArray) => f64.rope(x, { base, traditional: false, offsets: positions });
      const [q, k, v] = [turned(part(0, hq, norms ? qNorm : null)), turned(part(hq, hkv, norms ? kNorm : null)), part(hq + hkv, hkv, null)];
      positions.forEach((position, b) => {
        for (let t = 0; t < l; t++) {
          const page = tables[b][Math.floor((position + t) / p)];
          for (let g = 0; g < hkv; g++) {
            const slot = ((page * hkv + g) * p + ((position + t) % p)) * d;
            const from = ((b * l + t) * hkv + g) * d;
            before[0].data.set(k.data.subarray(from, from + d), slot);
            before[1].data.set(v.data.subarray(from, from + d), slot);
          }
        }
      });
      expectGolden(keys, before[0], { atol: 1e-5, what: 'the key pages after the write', axes: ['page', 'g', 'slot', 'd'] });
      expectGolden(values, before[1], { atol: 0, what: 'the value pages after the write', axes: ['page', 'g', 'slot', 'd'] });
      // New token t of a row sees its cache and the new tokens 0 .. t: the pages up to its own position.
      const expected = { shape: [3, l, hq * d], data: new Float64Array(3 * l * hq * d) };
      for (let t = 0; t < l; t++) {
        const qt = { shape: [3, hq, d], data: new Float64Array(3 * hq * d) };
        for (let b = 0; b < 3; b++) qt.data.set(q.data.subarray((b * l + t) * hq * d, (b * l + t + 1) * hq * d), b * hq * d);
        const lengths = positions.map((n) => n + t + 1);
        const attended = f64.pagedAttention(qt, before[0], before[1], tables, lengths, { scale: 0.25 });
        for (let b = 0; b < 3; b++) expected.data.set(attended.data.subarray(b * hq * d, (b + 1) * hq * d), (b * l + t) * hq * d);
      }
      expectGolden(out, expected, { atol: 1e-5, what: 'the attention output', axes: ['b', 'l', 'hd'] });
    });
  }

  it('a block table entry outside the pool is an error naming the row, the block and the page', () => {
    const rope = tc.fast.ropeTables(8, 16);
    const call = (table: number[]) => () =>
      engineKernels().pagedAttentionDecode(
        ...[
          seededTensor([1, 1, 32], 1),
          rope.cos,
          rope.sin,
          tc.tensor([5], { dtype: 'int32' }),
          tc.zeros([2, 1, 4, 8]),
          tc.zeros([2, 1, 4, 8]),
          blockTablesTensor([table]),
          tc.empty([1, 1, 16]),
        ].map((t) => t.native()),
        2,
        1,
        0.5,
      );
    expect(call([0, 7])).toThrow(/row 0, block 1: page 7 is outside the pool's 2 pages/);
    expect(call([0])).toThrow(/row 0: position 5 is outside its block table/);
  });
});

describe('EngineBatchModel: the fixture models through paged prefill and decode', () => {
  // The fused kernels (the default), and the composed ops, which read the pages through PagedLayerCache.
  const runs = [
    ...['qwen2-tiny', 'qwen2-tiny-4bit', 'qwen3-tiny', 'qwen2-moe-tiny'].map((name) => ({ name, fusedKernels: true })),
    { name: 'qwen3-tiny', fusedKernels: false },
  ];
  for (const { name, fusedKernels } of runs) {
    it(`${name}${fusedKernels ? '' : ', composed ops'}: every golden prompt prefilled to half, then decoded together in pages of 4: the logits of every position`, () => {
      const golden = goldenModel(name);
      const model = new EngineBatchModel(Qwen2Model.load(golden.dir, { fusedKernels, exact: true }), { numPages: 64, pageSize: 4 });
      const prompts = golden.prompts.filter((p) => p.ids.length >= 2);
      const tables = prompts.map(() => model.newRequestCache());
      const half = prompts.map((p) => Math.ceil(p.ids.length / 2));
      const expectRow = (logits: tc.Tensor, i: number, position: number) =>
        expectGolden(logits, tc.slice(prompts[i].logits, [[position, position + 1]]), {
          atol: ATOL,
          what: `prompt ${prompts[i].index}, position ${position}`,
          axes: ['b', 'v'],
        });
      prompts.forEach((p, i) => expectRow(model.prefill(p.ids.slice(0, half[i]), 0, tables[i]), i, half[i] - 1));
      for (let position = 1; prompts.some((p) => p.ids.length > position); position++) {
        const rows = prompts.flatMap((p, i) => (position >= half[i] && position < p.ids.length ? [i] : []));
        if (rows.length === 0) continue;
        const logits = model.decode(
          rows.map((i) => prompts[i].ids[position]),
          rows.map(() => position),
          rows.map((i) => tables[i]),
        );
        rows.forEach((i, r) => expectRow(tc.slice(logits, [[r, r + 1]]), i, position));
      }
      tables.forEach((t) => model.release(t));
      expect(model.pool.usedPages, 'every page back in the pool').toBe(0);
    });
  }
});

describe('EngineBatchModel: the demo model through PagedScheduler, with prefix caching', () => {
  it('every golden prompt, 4 at a time, in a pool of 40 pages: requests share prefixes, are preempted, and get exactly their golden tokens', async () => {
    const golden = demoGolden('tiny-qwen2-py');
    const model = new EngineBatchModel(Qwen2Model.load(`${MODELS_DIR}tiny-qwen2-py`), { numPages: 40 });
    const scheduler = new PagedScheduler(model, { maxBatch: 4, prefillChunk: 64 });
    const cases = new Map(golden.cases.map((c) => [scheduler.submit({ promptIds: c.ids, maxTokens: golden.max_new_tokens }), c]));
    const tokens = new Map<number, number[]>();
    while (!scheduler.idle)
      for (const o of await scheduler.step()) if (o.token !== null) tokens.set(o.id, [...(tokens.get(o.id) ?? []), o.token]);
    for (const [id, c] of cases) expect(tokens.get(id), `a ${c.kind} prompt of ${c.ids.length} tokens`).toEqual(c.greedy);
    expect(scheduler.preemptions, 'the pool ran short').toBeGreaterThan(0);
    expect(model.pool.usedPages, 'every page back in the pool').toBe(0);
  });
});
