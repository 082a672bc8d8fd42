// Chapter 1.7: sampling. Graded against fixtures/ops/sampling.safetensors (the allowed set and the
// renormalised distribution for each configuration, computed in float64 by PyTorch), a chi-square test of
// many seeded draws, and reproducibility.
import { assert, describe, expect, it } from 'vitest';
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { goldenOp, seeded, type GoldenCase } from '@tiny-llm/tensor-core/testing';
import { expectValues } from '@tiny-llm/grading';
import { filteredProbabilities, makeSampler, type SamplerOptions } from '@solution/week1';

const golden = goldenOp('sampling');

/** The fixture's parameters (snake_case, null when unused) as SamplerOptions. */
function optionsOf(c: GoldenCase): SamplerOptions {
  const value = (key: string) => (c[key] === null || c[key] === undefined ? undefined : (c[key] as number));
  return { temperature: value('temperature'), topK: value('top_k'), topP: value('top_p'), minP: value('min_p') };
}

const ids = (t: Tensor) => Array.from(t.toArray() as Int32Array);

/** "T=1.3, topK=10, topP=0.7": the options of a case, for test titles. */
function describeOptions(options: SamplerOptions): string {
  const names: [keyof SamplerOptions, string][] = [
    ['temperature', 'T'],
    ['topK', 'topK'],
    ['topP', 'topP'],
    ['minP', 'minP'],
  ];
  return names
    .filter(([key]) => options[key] !== undefined)
    .map(([key, label]) => `${label}=${options[key]}`)
    .join(', ');
}

/** The kept set (probability > 0) against the golden's, reporting the first wrong (row, token). */
function expectKeptSet(probs: ArrayLike<number>, golden: Tensor, keep: ArrayLike<number>): void {
  const [, vocab] = golden.shape;
  const expected = golden.toArray();
  for (let i = 0; i < keep.length; i++) {
    if ((probs[i] > 0 ? 1 : 0) === keep[i]) continue;
    const [row, token] = [Math.floor(i / vocab), i % vocab];
    const what = keep[i] ? 'must be kept but has probability 0' : `must be filtered out but has probability ${probs[i]}`;
    assert.fail(`row ${row}, token ${token}: ${what} (golden probability ${expected[i]})`);
  }
}

describe('1.7 filteredProbabilities', () => {
  for (const c of golden.cases) {
    it(`${c.name} (${describeOptions(optionsOf(c))}): the allowed set and the distribution`, () => {
      const out = filteredProbabilities(golden.get(c, 'logits'), optionsOf(c));
      expect(out.dtype, 'float32 probabilities').toBe('float32');
      expect([...out.shape], 'one row of probabilities per row of logits').toEqual([3, 50]);
      const probs = out.toArray();
      expectKeptSet(probs, golden.get(c, 'probs'), golden.get(c, 'keep').toArray());
      expectValues(probs, golden.get(c, 'probs').toArray(), out.shape, { what: 'probabilities', axes: ['row', 'token'] });
    });
  }

  it('puts all the mass on the argmax at temperature 0, and when no temperature is given', () => {
    const c = golden.cases[0];
    const logits = golden.get(c, 'logits');
    const best = ids(tc.argmax(logits, -1));
    const oneHot = Array.from({ length: logits.size }, (_, i) => (i % 50 === best[Math.floor(i / 50)] ? 1 : 0));
    for (const options of [{ temperature: 0, topP: 0.5 }, { topK: 5 }, {}]) {
      const probs = filteredProbabilities(logits, options).toArray();
      expectValues(probs, oneHot, logits.shape, {
        what: `filteredProbabilities(logits, ${JSON.stringify(options)})`,
        axes: ['row', 'token'],
      });
    }
  });
});

describe('1.7 makeSampler', () => {
  it('is greedy by default and at temperature 0', () => {
    const logits = tc.tensor(seeded(4 * 1000, 7, 5), { shape: [4, 1000] });
    const best = ids(tc.argmax(logits, -1));
    for (const sampler of [makeSampler(), makeSampler({ temperature: 0 }), makeSampler({ temperature: 0, topK: 3, seed: 1 })]) {
      const tokens = sampler(logits);
      expect(tokens.dtype).toBe('int32');
      expect(tokens.shape).toEqual([4]);
      expect(ids(tokens)).toEqual(best);
    }
  });

  it('with topK = 1 always picks the argmax, whatever the temperature', () => {
    const logits = tc.tensor(seeded(8 * 300, 3, 2), { shape: [8, 300] });
    const best = ids(tc.argmax(logits, -1));
    const sampler = makeSampler({ temperature: 2, topK: 1, seed: 5 });
    for (let i = 0; i < 5; i++) expect(ids(sampler(logits))).toEqual(best);
  });

  // Many draws of one fixture row (repeated as a batch, one draw per row) against the golden distribution.
  const DRAWS = 20_000;
  for (const c of golden.cases.filter((x) => ['c0', 'c4', 'c5', 'c6'].includes(x.name))) {
    it(`${c.name} (${describeOptions(optionsOf(c))}): seeded draws follow the filtered distribution (chi-square, p = 0.001)`, () => {
      const row = tc.slice(golden.get(c, 'logits'), [[0, 1]]); // [1, V]
      const expected = Array.from(golden.get(c, 'probs').toArray().slice(0, row.shape[1]));
      const batch = tc.contiguous(tc.broadcastTo(row, [DRAWS, row.shape[1]]));
      const tokens = ids(makeSampler({ ...optionsOf(c), seed: 1234 })(batch));
      const counts = new Array<number>(expected.length).fill(0);
      for (const t of tokens) counts[t]++;
      counts.forEach((n, v) => {
        if (expected[v] === 0) expect(n, `token ${v} is filtered out but was drawn ${n} times`).toBe(0);
      });
      const { statistic, critical } = chiSquare(counts, expected, DRAWS);
      expect(statistic, `chi-square ${statistic.toFixed(1)} above the p = 0.001 bound ${critical.toFixed(1)}`).toBeLessThan(critical);
    });
  }

  it('repeats the same tokens for the same seed, and advances its stream between calls', () => {
    const logits = tc.tensor(seeded(16 * 100, 11, 1), { shape: [16, 100] });
    const run = (seed: number) => {
      const sampler = makeSampler({ temperature: 1, topP: 0.95, seed });
      return [0, 1, 2, 3].map(() => ids(sampler(logits)));
    };
    const first = run(42);
    expect(run(42)).toEqual(first);
    expect(first[1], 'a second call must continue the stream, not restart it').not.toEqual(first[0]);
    expect(run(43), 'another seed, other tokens').not.toEqual(first);
  });

  it('rejects bad options with an error that names them', () => {
    makeSampler({ temperature: 0.8, topK: 40, topP: 0.9, minP: 0.05, seed: 1 }); // valid
    expect(() => makeSampler({ temperature: -0.5 })).toThrow(/temperature/);
    expect(() => makeSampler({ temperature: Number.NaN })).toThrow(/temperature/);
    expect(() => makeSampler({ temperature: 1, topP: 0 })).toThrow(/topP/);
    expect(() => makeSampler({ temperature: 1, topP: 1.5 })).toThrow(/topP/);
    expect(() => makeSampler({ temperature: 1, topK: 0 })).toThrow(/topK/);
    expect(() => makeSampler({ temperature: 1, topK: 2.5 })).toThrow(/topK/);
    expect(() => makeSampler({ temperature: 1, minP: -0.1 })).toThrow(/minP/);
    const logits = golden.get(golden.cases[0], 'logits');
    expect(() => filteredProbabilities(logits, { temperature: -1 })).toThrow(/temperature/);
    expect(() => filteredProbabilities(logits, { temperature: 1, topP: 2 })).toThrow(/topP/);
  });
});

/**
 * Pearson's chi-square statistic of observed counts against probabilities (tokens with probability 0 are
 * left out; bins expecting fewer than 5 draws are pooled, as the test requires), and the critical value at
 * p = 0.001 (Wilson-Hilferty approximation of the chi-square quantile).
 */
function chiSquare(counts: number[], probs: number[], draws: number): { statistic: number; critical: number } {
  const bins: { observed: number; expected: number }[] = [];
  const pooled = { observed: 0, expected: 0 };
  probs.forEach((p, v) => {
    if (p === 0) return;
    const bin = { observed: counts[v], expected: p * draws };
    if (bin.expected >= 5) bins.push(bin);
    else {
      pooled.observed += bin.observed;
      pooled.expected += bin.expected;
    }
  });
  if (pooled.expected > 0) bins.push(pooled);
  const statistic = bins.reduce((s, b) => s + (b.observed - b.expected) ** 2 / b.expected, 0);
  const df = Math.max(bins.length - 1, 1);
  const z = 3.0902; // the standard normal's 0.999 quantile
  const critical = df * (1 - 2 / (9 * df) + z * Math.sqrt(2 / (9 * df))) ** 3;
  return { statistic, critical };
}
