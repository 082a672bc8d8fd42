// Chapter 2.1, graded: the KV cache, and the week 2 model that runs only the new tokens. Against the golden
// logits of every fixture model (fixtures/models/*/golden.safetensors, float64 PyTorch + transformers): a
// prefill followed by one-token decode steps, and a prefill in two chunks, must reproduce the logits of every
// position; greedy decoding with the cache the golden continuations; and the demo model its 48-token goldens.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { demoGolden, MODELS_DIR } from '@tiny-llm/tensor-core/testing';
import {
  batchOf,
  cacheMistakes,
  expectGolden,
  expectGreedyTokens,
  expectValues,
  goldenModel,
  LOGITS_ATOL,
  type GoldenModel,
  type GoldenPrompt,
} from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import { KvCache, Qwen2ModelWeek2, type Qwen2Week2Options } from '@solution/week2';

const ids2d = (ids: readonly number[][]) =>
  tc.tensor(
    ids.map((r) => [...r]),
    { dtype: 'int32' },
  );

/** Rows [from, to) of a [L, V] tensor, as a [1, to - from, V] golden. */
const goldenRows = (logits: Tensor, from: number, to: number) => batchOf(tc.slice(logits, [[from, to]]));

/**
 * Runs a prompt through the model in calls of `lengths` tokens, each after the ones before, and checks each
 * call's logits against the golden rows of its positions, diagnosed against the cache's known mistakes.
 */
function expectCalls(model: Qwen2ModelWeek2, golden: GoldenModel, prompt: GoldenPrompt, lengths: number[]): void {
  const cache = model.newCache();
  const mistakes = cacheMistakes(golden.float64(), prompt.ids, lengths);
  let start = 0;
  for (const length of lengths) {
    const logits = model.forward(ids2d([prompt.ids.slice(start, start + length)]), start, cache);
    const what = length > 1 ? `the call of positions ${start}..${start + length - 1}` : `the decode step at position ${start}`;
    // The diagnoses hold the whole sequence's wrong logits: compare this call's rows of them.
    const rows = mistakes.map((m) => ({
      ...m,
      values: () => Array.prototype.slice.call(m.values(), start * logits.shape[2], (start + length) * logits.shape[2]),
    }));
    expectGolden(logits, goldenRows(prompt.logits, start, start + length), {
      atol: LOGITS_ATOL,
      what,
      axes: ['b', 'l', 'v'],
      mistakes: rows,
    });
    expect(
      cache.every((c) => c.offset === start + length),
      `every layer's cache holds ${start + length} tokens after ${what}`,
    ).toBe(true);
    start += length;
  }
}

function describeCachedModel(name: string, options: Qwen2Week2Options = {}): void {
  const golden = goldenModel(name);
  let loaded: Qwen2ModelWeek2 | undefined;
  const model = () => (loaded ??= Qwen2ModelWeek2.load(golden.dir, options));
  const flash = options.enableFlashAttention ? ' (flash attention, chapter 2.4)' : '';

  describe(`2.1 kv cache: ${name}${flash}`, () => {
    for (const prompt of golden.prompts) {
      const n = prompt.ids.length;
      const prefix = Math.ceil(n / 2);
      it(`prompt ${prompt.index}: a prefill of ${prefix} tokens, then one token at a time: the logits of every position`, () => {
        expectCalls(model(), golden, prompt, [prefix, ...new Array<number>(n - prefix).fill(1)]);
      });
    }

    const long = golden.prompts.reduce((a, b) => (b.ids.length > a.ids.length ? b : a));
    it(`prompt ${long.index}: a prefill in two chunks (3 + ${long.ids.length - 3} tokens) gives the logits of the whole prompt`, () => {
      expectCalls(model(), golden, long, [3, long.ids.length - 3]);
    });

    for (const prompt of golden.prompts) {
      it(`prompt ${prompt.index}: ${prompt.greedy.length} greedy tokens, one token per step through the cache`, () => {
        const m = model();
        const cache = m.newCache();
        const generated: number[] = [];
        let logits = m.forward(ids2d([prompt.ids]), 0, cache);
        for (let step = 0; step < prompt.greedy.length; step++) {
          const next = tc.tidy(() => tc.argmax(tc.slice(logits, [0, -1]), -1).item());
          generated.push(next);
          logits = m.forward(ids2d([[next]]), prompt.ids.length + step, cache);
        }
        expectGreedyTokens(generated, golden, prompt);
      });
    }
  });
}

// Dense float32 (tied and untied), bf16 weights read as stored, MLX 4-bit (through chapter 2.2's
// QuantizedLinear), Qwen3; then flash attention (chapter 2.4) in place of week 1's attention.
for (const name of ['qwen2-tiny', 'qwen2-tiny-untied', 'qwen2-tiny-bf16', 'qwen2-tiny-4bit', 'qwen3-tiny']) describeCachedModel(name);
describeCachedModel('qwen2-tiny-untied', { enableFlashAttention: true });

describe('2.1 kv cache: a batch of two prompts in one cache', () => {
  it('rows of different prompts (same length) each get their own golden logits, prefill and decode', () => {
    const golden = goldenModel('qwen2-tiny');
    const [a, b] = golden.prompts.filter((p) => p.ids.length >= 6);
    const n = Math.min(a.ids.length, b.ids.length);
    const m = Qwen2ModelWeek2.load(golden.dir);
    const cache = m.newCache();
    const half = Math.ceil(n / 2);
    const checkRows = (logits: Tensor, from: number, to: number) => {
      const [rowA, rowB] = tc.split(logits, 2, 0);
      expectGolden(rowA, goldenRows(a.logits, from, to), {
        atol: LOGITS_ATOL,
        what: `row 0 (prompt ${a.index}), positions ${from}..${to - 1}`,
        axes: ['b', 'l', 'v'],
      });
      expectGolden(rowB, goldenRows(b.logits, from, to), {
        atol: LOGITS_ATOL,
        what: `row 1 (prompt ${b.index}), positions ${from}..${to - 1}`,
        axes: ['b', 'l', 'v'],
      });
    };
    checkRows(m.forward(ids2d([a.ids.slice(0, half), b.ids.slice(0, half)]), 0, cache), 0, half);
    for (let p = half; p < n; p++) checkRows(m.forward(ids2d([[a.ids[p]], [b.ids[p]]]), [p, p], cache), p, p + 1);
  });
});

describe('2.1 kv cache: the demo model, 48 greedy tokens of every golden prompt', () => {
  const name = 'tiny-qwen2-py';
  const golden = demoGolden(name);
  let loaded: Qwen2ModelWeek2 | undefined;
  const model = () => (loaded ??= Qwen2ModelWeek2.load(`${MODELS_DIR}${name}`));
  for (const c of golden.cases) {
    it(`${c.kind} prompt of ${c.ids.length} tokens`, () => {
      const m = model();
      const cache = m.newCache();
      const out: number[] = [];
      let logits = m.forward(ids2d([c.ids]), 0, cache);
      while (out.length < golden.max_new_tokens) {
        out.push(tc.tidy(() => tc.argmax(tc.slice(logits, [0, -1]), -1).item()));
        logits = m.forward(ids2d([[out.at(-1)!]]), c.ids.length + out.length - 1, cache);
      }
      const first = c.greedy.findIndex((id, i) => out[i] !== id);
      expect(first, `the first generated token that differs from the golden (got ${out[first]}, expected ${c.greedy[first]})`).toBe(-1);
    });
  }
});

describe('2.1 kv cache: KvCache', () => {
  const kv = (b: number, h: number, l: number, d: number, seed: number) => tc.random.normal([b, h, l, d], { seed });
  const expectSame = (got: Tensor, want: Tensor, what: string) =>
    expectGolden(got, { shape: [...want.shape], data: Float64Array.from(want.toArray()) }, { atol: 0, what, axes: ['b', 'h', 's', 'd'] });

  it('appends along the sequence axis and returns every key and value so far, with the causal mask', () => {
    const cache = new KvCache();
    expect(cache.offset, 'an empty cache').toBe(0);
    const [k1, v1, k2, v2] = [kv(2, 3, 5, 4, 1), kv(2, 3, 5, 4, 2), kv(2, 3, 1, 4, 3), kv(2, 3, 1, 4, 4)];
    const first = cache.updateAndFetch(k1, v1);
    expect(cache.offset, 'after 5 tokens').toBe(5);
    expectSame(first.keys, k1, 'keys after the first update');
    const second = cache.updateAndFetch(k2, v2);
    expect(cache.offset, 'after 6 tokens').toBe(6);
    expectSame(second.keys, tc.concat([k1, k2], 2), 'keys after the second update');
    expectSame(second.values, tc.concat([v1, v2], 2), 'values after the second update');
    expect(second.mask, "one sequence per row: the mask is 'causal'").toBe('causal');
  });

  it('keeps float32 copies: bf16 and transposed inputs, and inputs changed after the call', () => {
    const cache = new KvCache();
    const k = tc.transpose(kv(1, 3, 2, 4, 5), [0, 2, 1, 3]); // [1, 2, 3, 4], a transposed view
    const v = tc.astype(kv(1, 2, 3, 4, 6), 'bfloat16');
    const { keys, values } = cache.updateAndFetch(k, v);
    expectSame(keys, k, 'keys of a transposed view');
    expectSame(values, tc.astype(v, 'float32'), 'values of bf16 input (float32)');
  });

  it('rewind forgets the last n tokens; the next update writes after the kept ones', () => {
    const cache = new KvCache();
    const a = kv(1, 1, 5, 2, 1);
    cache.updateAndFetch(a, a);
    cache.rewind(2);
    expect(cache.offset, 'after rewinding 2 of 5').toBe(3);
    const b = kv(1, 1, 1, 2, 2);
    const { keys } = cache.updateAndFetch(b, b);
    expectSame(keys, tc.concat([tc.slice(a, [null, null, [0, 3]]), b], 2), 'keys: the 3 kept, then the new one');
    expect(() => cache.rewind(5), 'rewinding more tokens than the cache holds').toThrow(/rewind/);
  });

  it("the model's caches are back to where they were when rewound: the rerun positions get their golden logits", () => {
    const golden = goldenModel('qwen2-tiny');
    const prompt = golden.prompts.find((p) => p.ids.length >= 6)!;
    const m = Qwen2ModelWeek2.load(golden.dir);
    const cache = m.newCache();
    const n = prompt.ids.length;
    m.forward(ids2d([prompt.ids]), 0, cache);
    for (const c of cache) c.rewind(2);
    const again = m.forward(ids2d([prompt.ids.slice(n - 2)]), n - 2, cache);
    expectValues(again.toArray(), goldenRows(prompt.logits, n - 2, n).toArray(), [1, 2, again.shape[2]], {
      atol: LOGITS_ATOL,
      what: 'the rerun positions',
    });
  });
});
