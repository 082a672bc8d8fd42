// Chapter 3.2, graded: prefix caching. Two requests that share a 300-token prefix compute it once (the tokens
// prefilled are counted), share its pages and copy the page where they part, and both get the logits of float64
// Qwen2 over their whole sequence; the demo model's golden prompts, its chat prompts sharing their system prompt
// and tools, prefill only what no earlier request cached and still get their golden tokens; the least recently
// used prefixes are the ones evicted; sharing bugs are errors naming the request and the page.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { demoGolden, MODELS_DIR } from '@tiny-llm/tensor-core/testing';
import { batchOf, errorOf, expectGolden, goldenModel, LOGITS_ATOL, type GoldenModel } from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import { type BlockTable, PagedBatchModel, PagedScheduler, PrefixCache } from '@solution/week3';

/** A paged model that records what runs: the tokens prefilled, the block tables made, each table's logits. */
function recorded(model: PagedBatchModel) {
  const log = { prefilled: 0, tables: [] as BlockTable[], logits: new Map<BlockTable, Tensor[]>() };
  // A copy: the scheduler disposes the logits once it has picked a token.
  const keep = (table: BlockTable, logits: Tensor) =>
    log.logits.set(table, [...(log.logits.get(table) ?? []), tc.tensor(Float32Array.from(logits.toArray()), { shape: [...logits.shape] })]);
  const [make, prefill, decode] = [model.newRequestCache.bind(model), model.prefill.bind(model), model.decode.bind(model)];
  model.newRequestCache = () => {
    const table = make();
    log.tables.push(table);
    return table;
  };
  model.prefill = (ids, offset, table) => {
    log.prefilled += ids.length;
    const logits = prefill(ids, offset, table);
    keep(table, logits);
    return logits;
  };
  model.decode = (tokens, positions, tables) => {
    const logits = decode(tokens, positions, tables);
    tables.forEach((t, i) => keep(t, tc.slice(logits, [[i, i + 1]])));
    return logits;
  };
  return log;
}

/** Runs the scheduler to the end, submitting each request at its step; returns each request's tokens. */
async function runToEnd(
  scheduler: PagedScheduler,
  arrivals: { step: number; submit: () => number }[],
  each?: (step: number) => void,
): Promise<Map<number, number[]>> {
  const tokens = new Map<number, number[]>();
  for (let step = 0; arrivals.some((a) => a.step >= step) || !scheduler.idle; step++) {
    for (const a of arrivals) if (a.step === step) a.submit();
    for (const o of await scheduler.step()) if (o.token !== null) tokens.set(o.id, [...(tokens.get(o.id) ?? []), o.token]);
    each?.(step);
    if (step > 10_000) throw new Error('the scheduler never finished');
  }
  return tokens;
}

/**
 * A request's logits (its prefill's last position, then each decode step) against float64 Qwen2 run over its
 * whole sequence, nothing cached.
 */
function expectFloat64Logits(
  golden: GoldenModel,
  prompt: readonly number[],
  tokens: readonly number[],
  logits: readonly Tensor[],
  who: string,
): void {
  const float64 = golden.float64().logits([...prompt, ...tokens.slice(0, -1)]); // [L, V]
  const vocab = float64.shape[1];
  logits.forEach((row, step) => {
    const position = prompt.length - 1 + step;
    const want = { shape: [1, 1, vocab], data: float64.data.subarray(position * vocab, (position + 1) * vocab) };
    expectGolden(batchOf(row), want, { atol: LOGITS_ATOL, what: `${who}, position ${position}`, axes: ['b', 'l', 'v'] });
  });
}

/** Deterministic token ids in [0, vocab). */
const idsOf = (n: number, vocab: number, seed: number) => Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104_729) % vocab);

describe('3.2 prefix caching: two requests sharing a 300-token prefix', () => {
  const golden = goldenModel('qwen2-tiny');
  const prefix = idsOf(300, 512, 1);
  const prompts = [
    [...prefix, ...idsOf(20, 512, 2)],
    [...prefix, ...idsOf(20, 512, 3)],
  ];

  it('compute the prefix once: the second prefills its own 20 tokens; it shares 18 full pages and copies the 19th (12 of its tokens); both get the float64 logits', async () => {
    const model = PagedBatchModel.load(golden.dir, { numPages: 64, prefixCache: new PrefixCache() });
    const log = recorded(model);
    const scheduler = new PagedScheduler(model, { maxBatch: 2 });
    // The first request is prefilled in step 0; the second arrives at step 1, while the first decodes.
    const arrivals = prompts.map((promptIds, i) => ({ step: i, submit: () => scheduler.submit({ promptIds, maxTokens: 6 }) }));
    const tokens = await runToEnd(scheduler, arrivals, (step) => {
      if (step !== 1) return;
      const [a, b] = log.tables;
      expect(b.pages.slice(0, 18), "the second request's first 18 pages are the first's").toEqual(a.pages.slice(0, 18));
      expect(
        b.pages.slice(0, 18).map((p) => model.pool.refCounts[p]),
        'each shared page held by both',
      ).toEqual(new Array<number>(18).fill(2));
      expect(b.pages[18], 'page 18 (tokens 288..303), where they part at token 300, is a copy of its own').not.toBe(a.pages[18]);
      expect(model.pool.refCounts[b.pages[18]], 'the copy is held by the second request alone').toBe(1);
    });
    expect(log.prefilled, 'prompt tokens prefilled: 320 for the first, 20 for the second').toBe(340);
    log.tables.forEach((table, i) => expectFloat64Logits(golden, prompts[i], tokens.get(i)!, log.logits.get(table)!, `request ${i}`));
    expect(model.pool.usedPages, 'every page back in the pool').toBe(0);
  });
});

describe('3.2 prefix caching: the next turn of a conversation', () => {
  it('prefills only its new message: the end of the last reply is copied from the page the reply was filling', async () => {
    const golden = goldenModel('qwen2-tiny');
    const model = PagedBatchModel.load(golden.dir, { numPages: 32, prefixCache: new PrefixCache() });
    const log = recorded(model);
    const scheduler = new PagedScheduler(model, { maxBatch: 1 });
    const first = idsOf(40, 512, 7);
    const reply = (await runToEnd(scheduler, [{ step: 0, submit: () => scheduler.submit({ promptIds: first, maxTokens: 5 }) }])).get(0)!;
    // The first turn's prompt and the 4 tokens of its reply it fed (the fifth was sampled last): 44 tokens, the
    // last 12 in a page that was never filled.
    const second = [...first, ...reply.slice(0, 4), ...idsOf(10, 512, 8)];
    const before = log.prefilled;
    const tokens = (await runToEnd(scheduler, [{ step: 0, submit: () => scheduler.submit({ promptIds: second, maxTokens: 3 }) }])).get(1)!;
    expect(log.prefilled - before, 'the second turn prefills its 10 new tokens').toBe(10);
    expectFloat64Logits(golden, second, tokens, log.logits.get(log.tables[1])!, 'the second turn');
  });
});

describe('3.2 prefix caching: the demo model', () => {
  const DEMO = 'tiny-qwen2-py';
  const golden = demoGolden(DEMO);
  const lcp = (a: readonly number[], b: readonly number[]) => {
    let n = 0;
    while (n < a.length && n < b.length && a[n] === b[n]) n++;
    return n;
  };

  it('every golden prompt, one arriving every 2 steps: each prefills only what no earlier request holds, and gets exactly its golden tokens', async () => {
    const model = PagedBatchModel.load(`${MODELS_DIR}${DEMO}`, { numPages: 256, prefixCache: new PrefixCache() });
    const log = recorded(model);
    const scheduler = new PagedScheduler(model, { maxBatch: 8 });
    const ids: number[] = [];
    const arrivals = golden.cases.map((c, i) => ({
      step: 2 * i,
      submit: () => (ids[i] = scheduler.submit({ promptIds: c.ids, maxTokens: golden.max_new_tokens })),
    }));
    const tokens = await runToEnd(scheduler, arrivals);
    golden.cases.forEach((c, i) => {
      const got = tokens.get(ids[i]) ?? [];
      const first = c.greedy.findIndex((t, k) => got[k] !== t);
      expect(
        first,
        `${c.kind} prompt ${i} (${c.ids.length} tokens): the first token that differs from its golden (got ${got[first]}, expected ${c.greedy[first]})`,
      ).toBe(-1);
    });
    // What each prompt shares with the ones before it (the chat prompts: their system prompt and tools), up to
    // its last token, which is always computed.
    const shared = golden.cases.map((c, i) =>
      Math.min(c.ids.length - 1, Math.max(0, ...golden.cases.slice(0, i).map((d) => lcp(c.ids, d.ids)))),
    );
    const total = golden.cases.reduce((n, c) => n + c.ids.length, 0);
    expect(shared.filter((n) => n > 200).length, 'two chat prompts share a long prefix with an earlier one').toBe(2);
    expect(
      log.prefilled,
      `prompt tokens prefilled: ${total} in all, less the ${shared.reduce((a, b) => a + b, 0)} shared with earlier prompts`,
    ).toBe(total - shared.reduce((a, b) => a + b, 0));
    expect(model.pool.usedPages, 'every page back in the pool').toBe(0);
  });
});

describe('3.2 prefix caching: eviction', () => {
  it('a full pool reuses the least recently freed pages first: the prefix used last is still cached, the oldest is recomputed', async () => {
    const golden = goldenModel('qwen2-tiny');
    const model = PagedBatchModel.load(golden.dir, { numPages: 10, prefixCache: new PrefixCache() });
    const log = recorded(model);
    const scheduler = new PagedScheduler(model, { maxBatch: 1 });
    const [x, y, z] = [1, 2, 3].map((seed) => idsOf(64, 512, seed)); // 4 pages each
    const prefilled = async (prompt: number[]) => {
      const before = log.prefilled;
      scheduler.submit({ promptIds: prompt, maxTokens: 1 });
      await runToEnd(scheduler, []);
      return log.prefilled - before;
    };
    expect([await prefilled(x), await prefilled(y)], 'x and y, new: every token').toEqual([64, 64]);
    expect(await prefilled(z), 'z takes the 2 pages never used and 2 of x, the least recently freed').toBe(64);
    expect(await prefilled(y), 'y again: still cached but for its last token').toBe(1);
    expect(await prefilled(x), 'x again: its first pages were reused by z, so it is computed whole').toBe(64);
  });
});

describe('3.2 prefix caching: bad input', () => {
  const golden = goldenModel('qwen2-tiny');
  const setup = () => {
    const model = PagedBatchModel.load(golden.dir, { numPages: 16, prefixCache: new PrefixCache() });
    const [a, b] = [model.newRequestCache(), model.newRequestCache()];
    [a.owner, b.owner] = ['request A', 'request B'];
    const ids = idsOf(40, 512, 5);
    model.prefill(ids, 0, a).dispose(); // pages 0 and 1 full, page 2 holds 8 tokens
    return { model, a, b, ids };
  };

  it('a cached page taken without a reference (no retain): the next step over both names the page and both requests', () => {
    const { model, a, b, ids } = setup();
    b.pages.push(a.pages[0]);
    b.tokens.push(...ids.slice(0, 16));
    model.prefill(idsOf(4, 512, 6), 16, b).dispose();
    const error = errorOf(() => model.decode([1, 2], [a.length, b.length], [a, b]));
    expect(error.message).toMatch(
      new RegExp(`page ${a.pages[0]} is held by request A \\(block 0\\) and request B \\(block 0\\), but its reference count is 1`),
    );
  });

  it('writing into a page another request holds (no copy-on-write): an error naming the request, the token and the page', () => {
    const { model, a, b, ids } = setup();
    for (const page of a.pages) model.pool.retain(page);
    b.pages.push(...a.pages);
    b.tokens.push(...ids);
    const error = errorOf(() => model.prefill([7], 40, b));
    expect(error.message).toMatch(
      new RegExp(
        `request B writes its token 40 into page ${a.pages[2]} \\(block 2\\), which 2 block tables share: give it a copy of its own first \\(copy-on-write\\)`,
      ),
    );
  });

  it('attaching a cached prefix to a table that already holds tokens is refused', () => {
    const { model, a, ids } = setup();
    expect(errorOf(() => model.pool.prefixCache!.attach(a, ids)).message).toMatch(/request A's block table already holds 40 tokens/);
  });
});
