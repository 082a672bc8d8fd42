// The engine on the page pool of chapter 3.1 (what `tiny-llm batch` and `serve` run): EngineBatchModel's logits
// against every fixture model's goldens, pages crossed at every 4 tokens; and the demo model's golden tokens through
// PagedScheduler with prefix caching, in a pool small enough to preempt. (The decode kernel over pages is tested
// against float64 in attention-decode.test.ts.)
import * as tc from '@tiny-llm/tensor-core';
import { demoGolden, MODELS_DIR } from '@tiny-llm/tensor-core/testing';
import { expectGolden, goldenModel } from '@tiny-llm/grading';
import { PagedScheduler } from '@tiny-llm/reference/week3';
import { describe, expect, it } from 'vitest';
import { EngineBatchModel } from '../src/batch-model.ts';
import { Qwen2Model } from '../src/model/qwen2.ts';

const ATOL = 1e-4;
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
