// Chapter 3.1, graded: paged attention. The decode kernel (native/paged_attention.cc, through pagedAttention)
// against float64 attention over the same pages; the page pool and block tables against the test's own arrays;
// every fixture model's golden logits through paged prefill and decode; the demo model's golden tokens through
// PagedScheduler, with room to spare and in a pool so small that requests wait and are preempted; the pages all
// back after finished, cancelled and preempted requests; pages in use that follow the tokens held; bad input.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { demoGolden, MODELS_DIR, seededTensor } from '@tiny-llm/tensor-core/testing';
import {
  batchOf,
  cacheMistakes,
  errorOf,
  expectGolden,
  rejectionOf,
  float64 as f64,
  goldenModel,
  LOGITS_ATOL,
  pagedAttentionMistakes,
} from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import { type BlockTable, PagedBatchModel, pagedAttention, PagedScheduler, PagePool, type StepOutput } from '@solution/week3';

describe('3.1 paged attention: the kernel against float64 attention over the same pages', () => {
  /** Rows of the given lengths in a pool of random pages, each row's pages drawn in a shuffled order. */
  function check(options: {
    lengths: number[];
    pageSize: number;
    heads: number;
    kvHeads: number;
    dim: number;
    scale?: number;
    seed: number;
  }) {
    const { lengths, pageSize: p, heads, kvHeads, dim, scale, seed } = options;
    const needed = lengths.map((n) => Math.ceil(n / p));
    const numPages = needed.reduce((a, b) => a + b, 0) + 3; // a few pages no row reads
    const order = Array.from({ length: numPages }, (_, i) => i).sort(
      (a, b) => ((a * 7919 + seed) % numPages) - ((b * 7919 + seed) % numPages),
    );
    let next = 0;
    const tables = needed.map((n) => order.slice(next, (next += n)));
    // Every slot holds a value, read or not: a kernel that reads past a row's length gets these, not zeros.
    const keys = seededTensor([numPages, kvHeads, p, dim], seed + 1);
    const values = seededTensor([numPages, kvHeads, p, dim], seed + 2);
    const q = seededTensor([lengths.length, heads, dim], seed + 3);
    const nd = [q, keys, values].map(f64.toND);
    const expected = f64.pagedAttention(nd[0], nd[1], nd[2], tables, lengths, { scale });
    expectGolden(pagedAttention(q, keys, values, tables, lengths, { scale }), expected, {
      atol: 1e-5,
      what: `rows of ${lengths.join(', ')} tokens in pages of ${p}`,
      axes: ['b', 'h', 'd'],
      mistakes: pagedAttentionMistakes(nd[0], nd[1], nd[2], tables, lengths, scale),
    });
  }

  it('rows of 1, 16, 17 and 45 tokens in shuffled pages of 16, 6 query heads on 2 kv heads of 64', () => {
    check({ lengths: [1, 16, 17, 45], pageSize: 16, heads: 6, kvHeads: 2, dim: 64, seed: 10 });
  });

  it('40 rows of 1..40 tokens in pages of 4 (every page boundary), 4 heads on 4, D = 32', () => {
    check({ lengths: Array.from({ length: 40 }, (_, i) => i + 1), pageSize: 4, heads: 4, kvHeads: 4, dim: 32, seed: 20 });
  });

  it('one row of 1000 tokens, 8 query heads on 1, a scale of its own', () => {
    check({ lengths: [1000], pageSize: 16, heads: 8, kvHeads: 1, dim: 16, scale: 0.3, seed: 30 });
  });

  it('the right block tables give float64 attention; one that points outside the pool, or holds too few pages, is an error naming the row and the page', () => {
    const [keys, values] = [seededTensor([4, 1, 4, 8], 1), seededTensor([4, 1, 4, 8], 2)];
    const q = seededTensor([2, 2, 8], 3);
    const nd = [q, keys, values].map(f64.toND);
    expectGolden(pagedAttention(q, keys, values, [[2], [0, 3]], [3, 5]), f64.pagedAttention(nd[0], nd[1], nd[2], [[2], [0, 3]], [3, 5]), {
      atol: 1e-5,
      what: 'rows of 3 and 5 tokens',
      axes: ['b', 'h', 'd'],
      mistakes: pagedAttentionMistakes(nd[0], nd[1], nd[2], [[2], [0, 3]], [3, 5]),
    });
    const outside = errorOf(() => pagedAttention(q, keys, values, [[0], [9]], [3, 2]));
    expect(outside.message).toMatch(/row 1, block 0: page 9 is outside the pool's 4 pages/);
    const short = errorOf(() => pagedAttention(q, keys, values, [[0], [1]], [3, 5]));
    expect(short.message).toMatch(/row 1 attends to 5 tokens; its block table holds 1 pages of 4/);
  });
});

describe('3.1 paged attention: the page pool and the block tables', () => {
  const poolOf = (numPages: number) => new PagePool({ numLayers: 2, numKvHeads: 2, headDim: 3, numPages, pageSize: 4 });

  it('a block table takes a page when its tokens reach one, and gives every page back', () => {
    const pool = poolOf(5);
    const table = pool.newTable('request 0');
    const pages = (end: number) => {
      table.reserve(end);
      return [table.pages.length, pool.usedPages];
    };
    expect(pages(1), 'one token: one page').toEqual([1, 1]);
    expect(pages(4), 'four tokens fill that page').toEqual([1, 1]);
    expect(pages(5), 'the fifth token needs a second page').toEqual([2, 2]);
    expect(pages(13), 'thirteen tokens: four pages').toEqual([4, 4]);
    expect(new Set(table.pages).size, 'four different pages').toBe(4);
    table.release();
    expect([table.pages.length, pool.usedPages, pool.freePages], 'released: no page left in the table or in use').toEqual([0, 0, 5]);
    expect([...pool.refCounts], 'every reference count back to 0').toEqual([0, 0, 0, 0, 0]);
  });

  it('write puts token t at slot t % P of page table[t / P]; gather returns the tokens in order', () => {
    const pool = poolOf(6);
    const [a, b] = [pool.newTable('request 0'), pool.newTable('request 1')];
    // Interleaved reservations: each table's pages are not consecutive in the pool.
    for (const end of [4, 8, 12]) [a, b].forEach((t) => t.reserve(end));
    const k = seededTensor([1, 2, 10, 3], 1);
    const v = seededTensor([1, 2, 10, 3], 2);
    pool.write(1, b, 0, tc.slice(k, [null, null, [0, 3]]), tc.slice(v, [null, null, [0, 3]]));
    pool.write(1, b, 3, tc.slice(k, [null, null, [3, 10]]), tc.slice(v, [null, null, [3, 10]]));
    // Where each token must be, read straight from the pool's array [N, Hkv, P, D].
    const stored = pool.keys[1].toArray();
    const want = k.toArray();
    for (let t = 0; t < 10; t++) {
      for (let h = 0; h < 2; h++) {
        const at = ((b.pages[Math.floor(t / 4)] * 2 + h) * 4 + (t % 4)) * 3;
        const row = Array.from(stored.slice(at, at + 3));
        expect(row, `token ${t}, head ${h}: page ${b.pages[Math.floor(t / 4)]} slot ${t % 4}`).toEqual(
          Array.from(want.slice((h * 10 + t) * 3, (h * 10 + t + 1) * 3)),
        );
      }
    }
    const gathered = pool.gather(1, b, 10);
    expectGolden(gathered.keys, f64.toND(k), { atol: 0, what: 'the gathered keys', axes: ['b', 'h', 's', 'd'] });
    expectGolden(gathered.values, f64.toND(v), { atol: 0, what: 'the gathered values', axes: ['b', 'h', 's', 'd'] });
  });
});

describe('3.1 paged attention: the fixture models through paged prefill and decode', () => {
  for (const name of ['qwen2-tiny', 'qwen2-tiny-untied', 'qwen2-tiny-bf16', 'qwen2-tiny-4bit', 'qwen3-tiny']) {
    it(`${name}: every golden prompt, up to 3 tokens prefilled, then decoded together in pages of 4: the logits of every position`, () => {
      const golden = goldenModel(name);
      const model = PagedBatchModel.load(golden.dir, { numPages: 64, pageSize: 4 });
      const prompts = golden.prompts;
      const tables = prompts.map(() => model.newRequestCache());
      const vocab = prompts[0].logits.shape[1];
      const rowOf = (logits: Tensor, i: number) => batchOf(tc.slice(logits, [[i, i + 1]])); // [1, 1, V]
      const prefill = (n: number) => Math.min(3, n);
      const expectPosition = (logits: Tensor, prompt: (typeof prompts)[number], position: number, what: string) => {
        // The known mistakes, as this prompt run in a prefill and steps of 1, at this position.
        const n = prompt.ids.length;
        const mistakes = cacheMistakes(golden.float64(), prompt.ids, [prefill(n), ...new Array<number>(n - prefill(n)).fill(1)]).map(
          (m) => ({
            ...m,
            values: () => Array.prototype.slice.call(m.values(), position * vocab, (position + 1) * vocab),
          }),
        );
        expectGolden(batchOf(logits), rowOf(prompt.logits, position), { atol: LOGITS_ATOL, what, axes: ['b', 'l', 'v'], mistakes });
      };
      prompts.forEach((prompt, i) => {
        const n = prefill(prompt.ids.length);
        expectPosition(model.prefill(prompt.ids.slice(0, n), 0, tables[i]), prompt, n - 1, `prompt ${i}: the prefill of ${n} tokens`);
      });
      for (let position = 1; prompts.some((p) => p.ids.length > position); position++) {
        const rows = prompts.flatMap((p, i) => (p.ids.length > position && position >= prefill(p.ids.length) ? [i] : []));
        if (rows.length === 0) continue;
        const logits = model.decode(
          rows.map((i) => prompts[i].ids[position]),
          rows.map(() => position),
          rows.map((i) => tables[i]),
        );
        rows.forEach((i, r) =>
          expectPosition(
            tc.slice(logits, [[r, r + 1]]),
            prompts[i],
            position,
            `prompt ${i}: the decode step at position ${position} (row ${r} of ${rows.length})`,
          ),
        );
      }
      for (const t of tables) model.release(t);
      expect(model.pool.usedPages, 'every page back in the pool').toBe(0);
    });
  }
});

/** Each request's tokens, from a scheduler run to the end; `arrivals` submit at their step, `each` runs after every step. */
async function runToEnd(
  scheduler: PagedScheduler,
  arrivals: { step: number; submit: () => void }[] = [],
  each?: (outputs: StepOutput[]) => void,
): Promise<Map<number, number[]>> {
  const tokens = new Map<number, number[]>();
  for (let step = 0; arrivals.some((a) => a.step >= step) || !scheduler.idle; step++) {
    for (const a of arrivals) if (a.step === step) a.submit();
    const outputs = await scheduler.step();
    for (const o of outputs) if (o.token !== null) tokens.set(o.id, [...(tokens.get(o.id) ?? []), o.token]);
    each?.(outputs);
    if (step > 10_000) throw new Error('the scheduler never finished');
  }
  return tokens;
}

describe('3.1 paged attention: the scheduler on the page pool', () => {
  const DEMO = 'tiny-qwen2-py';
  const golden = demoGolden(DEMO);
  const load = (numPages: number) => PagedBatchModel.load(`${MODELS_DIR}${DEMO}`, { numPages });

  /** Every golden prompt through the scheduler: each request's tokens must be exactly its greedy golden ones. */
  async function expectGoldens(scheduler: PagedScheduler): Promise<void> {
    const cases = new Map(golden.cases.map((c) => [scheduler.submit({ promptIds: c.ids, maxTokens: golden.max_new_tokens }), c]));
    const tokens = await runToEnd(scheduler);
    for (const [id, c] of cases) {
      const got = tokens.get(id) ?? [];
      const first = c.greedy.findIndex((t, k) => got[k] !== t);
      expect(
        first,
        `request ${id}, a ${c.kind} prompt of ${c.ids.length} tokens: the first token that differs from its golden (got ${got[first]}, expected ${c.greedy[first]})`,
      ).toBe(-1);
    }
    expect(scheduler.model.pool.usedPages, 'every page back in the pool at the end').toBe(0);
  }

  it(`every golden prompt of ${DEMO}, 4 at a time, with pages to spare: exactly the greedy golden tokens`, async () => {
    const scheduler = new PagedScheduler(load(256), { maxBatch: 4 });
    await expectGoldens(scheduler);
    expect(scheduler.preemptions, 'no request preempted: the pool had room').toBe(0);
  });

  it('in a pool of 40 pages (two long prompts at most), in chunks of 64: requests wait, are preempted and recomputed, and still get their golden tokens', async () => {
    const scheduler = new PagedScheduler(load(40), { maxBatch: 4, prefillChunk: 64 });
    await expectGoldens(scheduler);
    expect(scheduler.preemptions, 'the pool ran short: requests were preempted').toBeGreaterThan(0);
  });

  it('pages in use follow the tokens held (a page per 16 started), not max length x batch', async () => {
    const model = load(512);
    const scheduler = new PagedScheduler(model, { maxBatch: 8 });
    const requests = golden.cases.map((c, i) => ({
      id: scheduler.submit({ promptIds: c.ids, maxTokens: 8 + 4 * i }),
      prompt: c.ids.length,
      generated: 0,
      done: false,
    }));
    const dense = 8 * Math.ceil(model.maxPositions / 16);
    let peak = 0;
    await runToEnd(scheduler, [], (outputs) => {
      for (const o of outputs) {
        const r = requests.find((x) => x.id === o.id)!;
        if (o.token !== null) r.generated++;
        if (o.finishReason) r.done = true;
      }
      // Every request is admitted at once (8 slots for 7): a running one holds its prompt, and the tokens it
      // generated but the last (not fed yet), rounded up to pages of 16.
      const held = requests.filter((r) => !r.done).reduce((n, r) => n + Math.ceil(Math.max(r.prompt, r.prompt + r.generated - 1) / 16), 0);
      expect(model.pool.usedPages, `pages in use after a step, for ${requests.filter((r) => !r.done).length} running requests`).toBe(held);
      peak = Math.max(peak, model.pool.usedPages);
    });
    expect(
      peak,
      `the peak is a fraction of the ${dense} pages that 8 requests of ${model.maxPositions} positions would reserve`,
    ).toBeLessThan(dense / 10);
  });

  it('after a mix of finished, cancelled (waiting and running) and preempted requests, every page is back in the pool', async () => {
    const model = load(38);
    const scheduler = new PagedScheduler(model, { maxBatch: 3, prefillChunk: 32 });
    // A short prompt and two long ones run first; they grow past what 38 pages hold.
    const ids = [0, 4, 5, 1, 6, 2, 3].map((i) => scheduler.submit({ promptIds: golden.cases[i].ids, maxTokens: 60 }));
    const finished: number[] = [];
    let step = 0;
    await runToEnd(scheduler, [], (outputs) => {
      finished.push(...outputs.filter((o) => o.finishReason === 'length').map((o) => o.id));
      step++;
      if (step === 2) expect(scheduler.cancel(ids[6]), 'cancel a waiting request').toBe(true);
      if (step === 4) expect(scheduler.cancel(ids[0]), 'cancel a running request').toBe(true);
    });
    expect(scheduler.preemptions, 'requests were preempted on the way').toBeGreaterThan(0);
    expect(finished.sort(), 'the requests not cancelled finished').toEqual(ids.slice(1, 6).sort());
    expect([model.pool.usedPages, model.pool.freePages], 'pages in use and free at the end').toEqual([0, 38]);
    expect(
      model.pool.refCounts.every((n) => n === 0),
      'every reference count back to 0',
    ).toBe(true);
  });
});

describe('3.1 paged attention: bad input', () => {
  const DEMO = `${MODELS_DIR}tiny-qwen2-py`;

  it('a pool of 4 pages runs a request of up to 64 tokens, and refuses one that may reach 70 at submit, saying how many pages it needs', async () => {
    const scheduler = new PagedScheduler(PagedBatchModel.load(DEMO, { numPages: 4 }), { maxBatch: 2 });
    const error = errorOf(() => scheduler.submit({ promptIds: new Array<number>(50).fill(7), maxTokens: 20 }));
    expect(error.message).toMatch(/may reach 70 tokens .*5 pages of 16.*the pool has 4 pages/);
    scheduler.submit({ promptIds: new Array<number>(50).fill(7), maxTokens: 14 });
    const steps: StepOutput[][] = [];
    while (!scheduler.idle) steps.push(await scheduler.step());
    expect(steps.flat().filter((o) => o.token !== null).length, 'the request that fits gets its 14 tokens').toBe(14);
    expect(errorOf(() => new PagePool({ numLayers: 2, numKvHeads: 2, headDim: 8, numPages: 0 })).message).toMatch(
      /numPages must be an integer >= 1, got 0/,
    );
  });

  /** A scheduler whose model hands the test every block table it makes, with two requests running. */
  async function twoRunning(): Promise<{ scheduler: PagedScheduler; pool: PagePool; tables: BlockTable[] }> {
    const tables: BlockTable[] = [];
    const model = PagedBatchModel.load(DEMO, { numPages: 32 });
    const make = model.newRequestCache.bind(model);
    model.newRequestCache = () => {
      const table = make();
      tables.push(table);
      return table;
    };
    const scheduler = new PagedScheduler(model, { maxBatch: 2 });
    for (const c of demoGolden('tiny-qwen2-py').cases.slice(0, 2)) scheduler.submit({ promptIds: [...c.ids, ...c.ids], maxTokens: 30 });
    for (let i = 0; i < 3; i++) await scheduler.step();
    return { scheduler, pool: model.pool, tables };
  }

  it('a page released while its request still uses it: the next step names the request and the page', async () => {
    const { scheduler, pool, tables } = await twoRunning();
    const page = tables[1].pages[0];
    pool.release(page); // a release too many, as a bookkeeping bug would do
    expect((await rejectionOf(() => scheduler.step())).message).toMatch(
      new RegExp(`request 1's block table: block 0 holds page ${page}, which the pool counts as free`),
    );
  });

  it('one page in two block tables (allocated twice): the next step names both requests and the page', async () => {
    const { scheduler, tables } = await twoRunning();
    const page = tables[0].pages[0];
    tables[1].pages[0] = page;
    expect((await rejectionOf(() => scheduler.step())).message).toMatch(
      new RegExp(`page ${page} is held by request 0 \\(block 0\\) and request 1 \\(block 0\\), but its reference count is 1`),
    );
  });

  it('a block table entry outside the pool: the next step names the request, the block and the page', async () => {
    const { scheduler, tables } = await twoRunning();
    tables[0].pages[1] = 99;
    expect((await rejectionOf(() => scheduler.step())).message).toMatch(
      /request 0's block table: block 1 holds page 99, outside the pool's 32 pages/,
    );
  });
});
