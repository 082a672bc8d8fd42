// Chapter 2.6, graded: continuous batching. The batch cache against independent arrays; then the scheduler
// on the demo model's golden prompts (different lengths, arriving at different steps, at most 4 at a time):
// each request's greedy tokens must be exactly its own unbatched golden ones, and a finished request's slot
// must go to a waiting one at the next step.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { demoGolden, MODELS_DIR } from '@tiny-llm/tensor-core/testing';
import { expectGolden } from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import { BatchingKvCache, KvCache, Qwen2ModelWeek2, Scheduler, Week2BatchModel, type StepOutput } from '@solution/week2';

const DEMO = 'tiny-qwen2-py';

describe('2.6 batching: BatchingKvCache', () => {
  const kv = (l: number, seed: number) => tc.random.normal([1, 2, l, 4], { seed });

  it('appends each row to its own cache and returns them right-aligned, with a mask that hides the padding', () => {
    // Request 0 holds 3 tokens, request 1 holds 1, row 2 has no request.
    const caches = [new KvCache(), new KvCache()];
    const [held0, held1] = [kv(3, 1), kv(1, 2)];
    caches[0].updateAndFetch(held0, held0);
    caches[1].updateAndFetch(held1, held1);
    const step = tc.random.normal([3, 2, 1, 4], { seed: 3 }); // one new token per row
    const batch = new BatchingKvCache([caches[0], caches[1], null]);
    const { keys, mask } = batch.updateAndFetch(step, step);
    expect([caches[0].offset, caches[1].offset], 'each request cache holds one more token').toEqual([4, 2]);
    // The expected keys, built from the arrays: row 0 = held0, new0; row 1 = 2 zero columns, held1, new1.
    const row = (i: number) => tc.slice(step, [[i, i + 1]]);
    const zeros = (n: number) => tc.zeros([1, 2, n, 4]);
    const want = tc.concat([tc.concat([held0, row(0)], 2), tc.concat([zeros(2), held1, row(1)], 2)], 0);
    expectGolden(
      tc.slice(keys, [[0, 2]]),
      { shape: [...want.shape], data: Float64Array.from(want.toArray()) },
      { atol: 0, what: 'keys of the two requests', axes: ['b', 'h', 's', 'd'] },
    );
    const wantMask = [
      [0, 0, 0, 0],
      [-Infinity, -Infinity, 0, 0],
    ];
    expectGolden(
      tc.slice(mask as Tensor, [[0, 2]]),
      { shape: [2, 1, 1, 4], data: Float64Array.from(wantMask.flat()) },
      { atol: 0, what: 'the mask of the two requests', axes: ['b', 'h', 'l', 's'] },
    );
  });
});

/** Runs the scheduler to the end, submitting each request at its step; returns every step's outputs. */
async function runSchedule(scheduler: Scheduler<unknown>, arrivals: { step: number; submit: () => number }[]): Promise<StepOutput[][]> {
  const steps: StepOutput[][] = [];
  for (let step = 0; arrivals.some((a) => a.step >= step) || !scheduler.idle; step++) {
    for (const a of arrivals) if (a.step === step) a.submit();
    steps.push(await scheduler.step());
    if (step > 10_000) throw new Error('the scheduler never finished');
  }
  return steps;
}

describe('2.6 batching: the scheduler', () => {
  const golden = demoGolden(DEMO);
  let loaded: Week2BatchModel | undefined;
  const model = () => (loaded ??= new Week2BatchModel(Qwen2ModelWeek2.load(`${MODELS_DIR}${DEMO}`)));

  it(`every golden prompt of ${DEMO}, arriving at different steps, 4 at a time: each gets exactly its own greedy golden tokens`, async () => {
    const scheduler = new Scheduler(model(), { maxBatch: 4 });
    const ids = new Map<number, number>(); // request id -> golden case
    const arrivals = golden.cases.map((c, i) => ({
      step: i < 2 ? 0 : 3 * i,
      submit: () => {
        const id = scheduler.submit({ promptIds: c.ids, maxTokens: golden.max_new_tokens });
        ids.set(id, i);
        return id;
      },
    }));
    const steps = await runSchedule(scheduler, arrivals);
    const tokens = new Map<number, number[]>();
    for (const out of steps.flat()) if (out.token !== null) tokens.set(out.id, [...(tokens.get(out.id) ?? []), out.token]);
    for (const [id, i] of ids) {
      const c = golden.cases[i];
      const got = tokens.get(id) ?? [];
      const first = c.greedy.findIndex((t, k) => got[k] !== t);
      expect(
        first,
        `${c.kind} prompt ${i} (${c.ids.length} tokens): the first token that differs from its unbatched golden (got ${got[first]}, expected ${c.greedy[first]})`,
      ).toBe(-1);
      expect(got.length, `prompt ${i}: ${golden.max_new_tokens} tokens`).toBe(golden.max_new_tokens);
    }
    expect(Math.max(...steps.map((s) => new Set(s.map((o) => o.id)).size)), 'never more than 4 requests in a step').toBeLessThanOrEqual(4);
  });

  it('a request that finishes early frees its slot: the waiting one starts at the next step', async () => {
    const scheduler = new Scheduler(model(), { maxBatch: 2 });
    const [a, b, c] = golden.cases;
    const short = scheduler.submit({ promptIds: a.ids, maxTokens: 3 });
    const long = scheduler.submit({ promptIds: b.ids, maxTokens: 12 });
    const waiting = scheduler.submit({ promptIds: c.ids, maxTokens: 4 });
    const steps = await runSchedule(scheduler, []);
    const stepOf = (id: number, pick: (outs: number[]) => number) => pick(steps.flatMap((s, i) => (s.some((o) => o.id === id) ? [i] : [])));
    const shortEnds = stepOf(short, (s) => Math.max(...s));
    expect(steps[shortEnds].find((o) => o.id === short)?.finishReason, 'the short request ends with reason "length"').toBe('length');
    expect(
      stepOf(waiting, (s) => Math.min(...s)),
      'the waiting request gets its first token the step after the short one ends',
    ).toBe(shortEnds + 1);
    expect(
      stepOf(long, (s) => s.length),
      'the long request gets a token at every step from its first to its last',
    ).toBe(12);
  });

  it('cancel ends a request at once and frees its slot', async () => {
    const scheduler = new Scheduler(model(), { maxBatch: 1 });
    const first = scheduler.submit({ promptIds: golden.cases[0].ids, maxTokens: 40 });
    const second = scheduler.submit({ promptIds: golden.cases[1].ids, maxTokens: 2 });
    await scheduler.step();
    expect(scheduler.cancel(first), 'cancel finds the running request').toBe(true);
    const next = await scheduler.step();
    expect(
      next.map((o) => o.id),
      'the next step runs the waiting request',
    ).toEqual([second]);
  });

  it('stop ids end a request without emitting them', async () => {
    const c = golden.cases[0];
    const scheduler = new Scheduler(model(), { maxBatch: 2 });
    const id = scheduler.submit({ promptIds: c.ids, maxTokens: 48, stopIds: [c.greedy[5]] });
    const outs = (await runSchedule(scheduler, [])).flat().filter((o) => o.id === id);
    expect(
      outs.map((o) => o.token),
      'the tokens before the first stop id, then null',
    ).toEqual([...c.greedy.slice(0, c.greedy.indexOf(c.greedy[5])), null]);
    expect(outs.at(-1)?.finishReason).toBe('stop');
  });
});
