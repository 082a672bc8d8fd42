// Chapter 2.7, graded: chunked prefill. A prompt prefilled in chunks gives the golden logits of the whole
// prompt (every fixture model, through the scheduler's model); the scheduler with a chunk budget still gives
// every request its greedy golden tokens; while a 2000-token prompt prefills in chunks of 256, every running
// request gets a token at every step; and the prefilling requests share each step's budget, oldest first.
import * as tc from '@tiny-llm/tensor-core';
import { demoGolden, MODELS_DIR } from '@tiny-llm/tensor-core/testing';
import { batchOf, cacheMistakes, expectGolden, goldenModel, LOGITS_ATOL } from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import { Qwen2ModelWeek2, Scheduler, Week2BatchModel, type StepOutput } from '@solution/week2';

const DEMO = 'tiny-qwen2-py';

describe('2.7 chunked prefill: chunks give the logits of the whole prompt', () => {
  for (const name of ['qwen2-tiny', 'qwen2-tiny-untied', 'qwen3-tiny']) {
    it(`${name}: the longest prompt in chunks of 2 (each chunk's last position against the golden)`, () => {
      const golden = goldenModel(name);
      const prompt = golden.prompts.reduce((a, b) => (b.ids.length > a.ids.length ? b : a));
      const model = new Week2BatchModel(Qwen2ModelWeek2.load(golden.dir));
      const cache = model.newRequestCache();
      const lengths = Array.from({ length: Math.ceil(prompt.ids.length / 2) }, (_, i) => Math.min(2, prompt.ids.length - 2 * i));
      const wrong = cacheMistakes(golden.float64(), prompt.ids, lengths);
      const vocab = prompt.logits.shape[1];
      let start = 0;
      for (const length of lengths) {
        const last = start + length - 1;
        const logits = model.prefill(prompt.ids.slice(start, start + length), start, cache); // [1, V]
        const mistakes = wrong.map((m) => ({
          ...m,
          values: () => Array.prototype.slice.call(m.values(), last * vocab, (last + 1) * vocab),
        }));
        expectGolden(batchOf(logits), batchOf(tc.slice(prompt.logits, [[last, last + 1]])), {
          atol: LOGITS_ATOL,
          what: `the chunk of positions ${start}..${last}: its last position`,
          axes: ['b', 'l', 'v'],
          mistakes,
        });
        start += length;
      }
    });
  }
});

describe('2.7 chunked prefill: the scheduler', () => {
  const golden = demoGolden(DEMO);
  let loaded: Week2BatchModel | undefined;
  const model = () => (loaded ??= new Week2BatchModel(Qwen2ModelWeek2.load(`${MODELS_DIR}${DEMO}`)));

  it('every golden prompt with chunks of 16 tokens, 3 at a time: exactly the greedy golden tokens', async () => {
    const scheduler = new Scheduler(model(), { maxBatch: 3, prefillChunk: 16 });
    const cases = new Map(golden.cases.map((c) => [scheduler.submit({ promptIds: c.ids, maxTokens: 24 }), c]));
    const tokens = new Map<number, number[]>();
    while (!scheduler.idle) {
      for (const o of await scheduler.step()) if (o.token !== null) tokens.set(o.id, [...(tokens.get(o.id) ?? []), o.token]);
    }
    for (const [id, c] of cases) {
      const got = tokens.get(id) ?? [];
      const first = c.greedy.slice(0, 24).findIndex((t, k) => got[k] !== t);
      expect(first, `prompt of ${c.ids.length} tokens: the first token that differs (got ${got[first]}, expected ${c.greedy[first]})`).toBe(
        -1,
      );
    }
  });

  it("the budget is the step's: three short prompts and a long one share 16 tokens per step, oldest first", async () => {
    const cases = [0, 1, 2, 4].map((i) => golden.cases[i]);
    const lengths = cases.map((c) => c.ids.length);
    // The step at which each prompt is all in its cache (its first token), for a rule that hands out `chunk`
    // tokens per step: `shared` takes them from one budget, oldest first; otherwise each prefilling request gets
    // `chunk` of its own (perRequest), or only the oldest one prefills (onePerStep).
    const firstTokenSteps = (chunk: number, rule: 'shared' | 'perRequest' | 'onePerStep') => {
      const left = [...lengths];
      const steps = lengths.map(() => -1);
      for (let step = 0; steps.includes(-1); step++) {
        let budget = chunk;
        for (const [i, n] of left.entries()) {
          if (n === 0) continue;
          const take = Math.min(n, rule === 'perRequest' ? chunk : budget);
          left[i] -= take;
          budget -= take;
          if (left[i] === 0) steps[i] = step;
          if (rule === 'onePerStep' || budget === 0) break;
        }
      }
      return steps;
    };
    const scheduler = new Scheduler(model(), { maxBatch: 4, prefillChunk: 16 });
    const ids = cases.map((c) => scheduler.submit({ promptIds: c.ids, maxTokens: 2 }));
    const first = new Map<number, { step: number; token: number | null }>();
    for (let step = 0; !scheduler.idle; step++) {
      for (const o of await scheduler.step()) if (!first.has(o.id)) first.set(o.id, { step, token: o.token });
    }
    const got = ids.map((id) => first.get(id)?.step ?? -1);
    const expected = firstTokenSteps(16, 'shared');
    const mistake = (['onePerStep', 'perRequest'] as const).find((rule) => firstTokenSteps(16, rule).join() === got.join());
    const why = {
      onePerStep:
        ': one prompt per step, as if the budget belonged to a request; a prompt that ends leaves the rest of the budget to the next one',
      perRequest: ": every prefilling request got a chunk of its own each step; the chunk is the whole step's budget",
    };
    expect(
      got,
      `the steps at which prompts of ${lengths.join(', ')} tokens got their first token (budget 16)${mistake ? why[mistake] : ''}`,
    ).toEqual(expected);
    cases.forEach((c, i) => expect(first.get(ids[i])?.token, `prompt ${i}'s first token`).toBe(c.greedy[0]));
  });

  it('while a 2000-token prompt prefills in chunks of 256, every running request gets a token at every step', async () => {
    const scheduler = new Scheduler(model(), { maxBatch: 4, prefillChunk: 256 });
    const running = golden.cases.slice(0, 3).map((c) => scheduler.submit({ promptIds: c.ids, maxTokens: 40 }));
    // Let them start: three prefills, one per step.
    for (let i = 0; i < 3; i++) await scheduler.step();
    const long = Array.from({ length: 2000 }, (_, i) => golden.cases[i % golden.cases.length].ids[i % 20]);
    const longId = scheduler.submit({ promptIds: long, maxTokens: 4 });
    const steps: StepOutput[][] = [];
    while (!steps.flat().some((o) => o.id === longId)) steps.push(await scheduler.step());
    expect(steps.length, 'the long prompt takes ceil(2000 / 256) = 8 steps of prefill').toBe(8);
    for (const [i, outs] of steps.entries()) {
      for (const id of running) {
        expect(
          outs.some((o) => o.id === id && o.token !== null),
          `step ${i} of the long prefill: request ${id} gets its token`,
        ).toBe(true);
      }
    }
  });
});
