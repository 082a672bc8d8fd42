// Chapter 3.4, graded: speculative decoding. The acceptance rule on distributions worked out by hand, and
// seeded chi-square tests that its first token follows the target's distribution; the whole loop on two small
// bigram models whose cache checks every offset it is given (a round that forgets to rewind fails there), its
// output's joint distribution against the target's own (chi-square again), greedy against the target's argmax
// chain; then the demo pair: tiny-qwen2-py-draft drafting for tiny-qwen2-py must give the target's golden
// greedy tokens exactly, for every golden prompt and several k; and the bad input.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { demoGolden, MODELS_DIR } from '@tiny-llm/tensor-core/testing';
import { errorOf } from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import {
  acceptDrafts,
  Qwen2ModelWeek3,
  sampleFrom,
  speculativeDecode,
  type DecodingModel,
  type RewindableCache,
  type SpeculativeRound,
} from '@solution/week3';

const oneHot = (v: number, at: number) => Array.from({ length: v }, (_, i) => (i === at ? 1 : 0));

/** Pearson's chi-square statistic of observed counts against expected probabilities. */
function chiSquare(counts: readonly number[], probs: readonly number[]): number {
  const n = counts.reduce((a, b) => a + b, 0);
  return counts.reduce((sum, c, i) => sum + (c - n * probs[i]) ** 2 / (n * probs[i]), 0);
}

/** The chi-square quantile of probability 0.999 for these degrees of freedom (Wilson-Hilferty). */
function chiSquareCritical(df: number): number {
  const z = 3.0902; // the standard normal's 0.999 quantile
  return df * (1 - 2 / (9 * df) + z * Math.sqrt(2 / (9 * df))) ** 3;
}

/** Takes the first n tokens of a speculative run, and its rounds. */
function take(gen: Generator<SpeculativeRound, void>, n: number): { tokens: number[]; rounds: SpeculativeRound[] } {
  const tokens: number[] = [];
  const rounds: SpeculativeRound[] = [];
  for (const round of gen) {
    rounds.push(round);
    tokens.push(...round.tokens);
    if (tokens.length >= n) break;
  }
  return { tokens: tokens.slice(0, n), rounds };
}

describe('3.4 acceptDrafts: the acceptance rule', () => {
  const V = 10;
  const always = () => 0.999999;
  const never = () => 0;

  it("greedy (one-hot distributions): the guesses up to the first that is not the target's argmax, then the target's token", () => {
    const p = [5, 7, 2, 9].map((t) => oneHot(V, t));
    const q = [5, 7, 3].map((t) => oneHot(V, t));
    for (const random of [always, never]) {
      expect(acceptDrafts(p, q, [5, 7, 3], random), 'guesses 5, 7, 3 where the target says 5, 7, 2').toEqual({ accepted: 2, next: 2 });
    }
    expect(
      acceptDrafts(
        p,
        [5, 7, 2].map((t) => oneHot(V, t)),
        [5, 7, 2],
        always,
      ),
      'all three kept: the bonus token of the last position',
    ).toEqual({ accepted: 3, next: 9 });
    expect(acceptDrafts([oneHot(V, 4)], [], [], always), 'nothing drafted: the target samples alone').toEqual({ accepted: 0, next: 4 });
  });

  it('a guess as likely under the target as under the draft is always kept', () => {
    const dist = [0.1, 0.2, 0.3, 0.4];
    expect(acceptDrafts([dist, dist, dist], [dist, dist], [0, 3], always)).toMatchObject({ accepted: 2 });
  });

  it('a rejected guess: the token comes from the residual max(0, p - q), where the target has more mass than the draft', () => {
    // p and q differ only in tokens 0 and 1: the residual is all on token 1, whatever the draw.
    const p = [
      [0.1, 0.5, 0.4],
      [1, 0, 0],
    ];
    const q = [[0.5, 0.1, 0.4]];
    for (const u of [0.0, 0.5, 0.99]) {
      expect(
        acceptDrafts(p, q, [0], () => 0.5 + u / 2),
        `token 0 guessed (p/q = 0.2), draw ${0.5 + u / 2}: rejected`,
      ).toEqual({ accepted: 0, next: 1 });
    }
  });

  it('rejects lengths that do not fit and a guess the draft could not have drawn', () => {
    expect(errorOf(() => acceptDrafts([oneHot(4, 0)], [oneHot(4, 0)], [0], always)).message, 'one guess needs two target rows').toMatch(
      /2/,
    );
    expect(
      errorOf(() => acceptDrafts([oneHot(4, 0), oneHot(4, 0)], [oneHot(4, 1)], [0], always)).message,
      'token 0 has probability 0 under q',
    ).toMatch(/0/);
  });

  // The first token a round emits must follow the target's p, whatever the draft's q: k guesses drawn from q,
  // then the rule. Seeded, so the statistic is the same on every run; a wrong rule lands far above the bound.
  const p0 = [0.05, 0.15, 0.3, 0.1, 0.4];
  const drafts: [string, number[]][] = [
    ['a draft close to the target', [0.1, 0.1, 0.3, 0.15, 0.35]],
    ['a draft far from it', [0.4, 0.3, 0.1, 0.15, 0.05]],
  ];
  for (const [what, q0] of drafts) {
    for (const k of [1, 3]) {
      it(`${what}, k = ${k}: the first token of 40000 rounds follows the target's distribution (chi-square, 4 degrees of freedom)`, () => {
        const rng = new tc.random.Generator(1234 + k);
        const random = () => rng.next();
        const counts = new Array<number>(p0.length).fill(0);
        const rows = Array.from({ length: k + 1 }, () => p0);
        for (let n = 0; n < 40000; n++) {
          const drafted = Array.from({ length: k }, () => sampleFrom(q0, random()));
          const { accepted, next } = acceptDrafts(
            rows,
            rows.slice(0, k).map(() => q0),
            drafted,
            random,
          );
          counts[accepted > 0 ? drafted[0] : next]++;
        }
        const statistic = chiSquare(counts, p0);
        expect(statistic, `counts [${counts.join(', ')}] for the target's [${p0.join(', ')}] x 40000`).toBeLessThan(
          chiSquareCritical(p0.length - 1),
        );
      });
    }
  }
});

// ---- the loop on bigram models -----------------------------------------------------------------------------

/** A cache that holds the tokens themselves, so that a wrong offset or a missed rewind is caught at once. */
class TokenCache implements RewindableCache {
  tokens: number[] = [];
  disposed = false;
  get offset(): number {
    return this.tokens.length;
  }
  rewind(n: number): void {
    if (!(Number.isInteger(n) && n >= 0 && n <= this.tokens.length))
      throw new RangeError(`rewind(${n}) of a cache of ${this.tokens.length} tokens`);
    this.tokens.length -= n;
  }
  dispose(): void {
    this.disposed = true;
  }
}

/** A model whose next token depends on the current one only: table[t] is the distribution after token t. */
class BigramModel implements DecodingModel<TokenCache> {
  readonly config: { vocabSize: number; maxPositionEmbeddings: number };
  readonly caches: TokenCache[][] = [];
  passes = 0;

  constructor(
    readonly name: string,
    readonly table: number[][],
    maxPositionEmbeddings = 512,
  ) {
    this.config = { vocabSize: table.length, maxPositionEmbeddings };
  }

  newCache(): TokenCache[] {
    const layers = [new TokenCache(), new TokenCache()];
    this.caches.push(layers);
    return layers;
  }

  forward(ids: Tensor, offset: number, cache: TokenCache[]): Tensor {
    const tokens = Array.from(ids.toArray());
    cache.forEach((layer, i) => {
      if (layer.offset !== offset) {
        throw new Error(
          `${this.name}: called at offset ${offset}, but layer ${i}'s cache holds ${layer.offset} tokens (a missing or wrong rewind?)`,
        );
      }
      layer.tokens.push(...tokens);
    });
    if (offset + tokens.length > this.config.maxPositionEmbeddings)
      throw new Error(`${this.name}: position ${offset + tokens.length - 1} is past the context`);
    this.passes++;
    const logits = tokens.flatMap((t) => this.table[t].map(Math.log));
    return tc.tensor(logits, { shape: [1, tokens.length, this.config.vocabSize] });
  }
}

const TARGET = [
  [0.15, 0.4, 0.2, 0.25],
  [0.3, 0.15, 0.35, 0.2],
  [0.25, 0.25, 0.15, 0.35],
  [0.4, 0.2, 0.25, 0.15],
];
const DRAFT = [
  [0.4, 0.2, 0.2, 0.2],
  [0.2, 0.4, 0.2, 0.2],
  [0.2, 0.2, 0.4, 0.2],
  [0.25, 0.25, 0.25, 0.25],
];
const argmax = (row: number[]) => row.indexOf(Math.max(...row));

/**
 * Runs to n tokens, checking the caches after every round: the target's must hold the sequence but its last
 * token, and the draft's a prefix of it (every layer's), so rejected guesses must have been taken back out.
 */
function takeChecked(
  target: BigramModel,
  draft: BigramModel,
  prompt: number[],
  options: { numDraft: number; temperature?: number; seed?: number },
  n: number,
): number[] {
  const sequence = [...prompt];
  for (const round of speculativeDecode(target, draft, prompt, options)) {
    sequence.push(...round.tokens);
    const what = `after a round that kept ${round.accepted} of ${round.drafted} guesses (sequence ${sequence.join(' ')})`;
    for (const layer of target.caches[0]) expect(layer.tokens, `the target's cache ${what}`).toEqual(sequence.slice(0, -1));
    for (const layer of draft.caches[0] ?? [])
      expect(layer.tokens, `the draft's cache ${what}: a prefix of the sequence`).toEqual(sequence.slice(0, layer.tokens.length));
    if (sequence.length - prompt.length >= n) break;
  }
  return sequence.slice(prompt.length, prompt.length + n);
}

describe('3.4 speculativeDecode: the loop, on bigram models', () => {
  it('sampled, k = 3: after every round, the caches hold the sequence (the rejected guesses taken back out)', () => {
    for (let seed = 0; seed < 20; seed++)
      takeChecked(
        new BigramModel('the target', TARGET),
        new BigramModel('the draft', DRAFT),
        [0, 3],
        { numDraft: 3, temperature: 1, seed },
        30,
      );
  });

  it("sampled: the first 3 tokens of 4000 seeded runs follow the target's own joint distribution (chi-square, 63 degrees of freedom)", () => {
    const counts = new Array<number>(64).fill(0);
    for (let seed = 0; seed < 4000; seed++) {
      const target = new BigramModel('the target', TARGET);
      const draft = new BigramModel('the draft', DRAFT);
      const [a, b, c] = take(speculativeDecode(target, draft, [0], { numDraft: 2, temperature: 1, seed }), 3).tokens;
      counts[a * 16 + b * 4 + c]++;
    }
    const probs = counts.map((_, i) => TARGET[0][i >> 4] * TARGET[(i >> 4) & 3][(i >> 2) & 3] * TARGET[(i >> 2) & 3][i & 3]);
    expect(chiSquare(counts, probs), 'chi-square of the 64 sequences of 3 tokens').toBeLessThan(chiSquareCritical(63));
  });

  it("greedy: the target's argmax chain, for k = 1 to 5, the caches holding the sequence after every round", () => {
    const chain = [0];
    while (chain.length < 41) chain.push(argmax(TARGET[chain.at(-1)!]));
    for (let k = 1; k <= 5; k++) {
      const tokens = takeChecked(new BigramModel('the target', TARGET), new BigramModel('the draft', DRAFT), [0], { numDraft: k }, 40);
      expect(tokens, `k = ${k}`).toEqual(chain.slice(1));
    }
  });

  it('the target drafting for itself: every guess is kept, k + 1 tokens per target pass', () => {
    const target = new BigramModel('the target', TARGET);
    const { rounds } = take(
      speculativeDecode(target, new BigramModel('the same model as draft', TARGET), [0, 1, 2], { numDraft: 3, temperature: 1, seed: 7 }),
      41,
    );
    expect(rounds[0], 'the first round: the target alone, after the prompt').toMatchObject({ drafted: 0, accepted: 0 });
    expect(rounds[0].tokens.length).toBe(1);
    for (const [i, r] of rounds.slice(1).entries()) {
      expect(r, `round ${i + 1}: 3 drafted, 3 kept, 4 tokens`).toMatchObject({ drafted: 3, accepted: 3 });
      expect(r.tokens.length).toBe(4);
    }
    expect(target.passes, 'the target ran the prompt, then one pass per round').toBe(rounds.length + 1);
  });

  it("stops at the target's context; the caches are disposed when the caller stops early, or at the end", () => {
    const target = new BigramModel('the target', TARGET, 20);
    const draft = new BigramModel('the draft', DRAFT, 20);
    const { tokens } = take(speculativeDecode(target, draft, [0, 1, 2], { numDraft: 4 }), 1000);
    expect(tokens.length, 'a 3-token prompt in 20 positions: 18 tokens, the last at position 20 (not fed)').toBe(18);
    expect(
      [...target.caches.flat(), ...draft.caches.flat()].every((c) => c.disposed),
      'every cache disposed',
    ).toBe(true);
    const early = new BigramModel('the target', TARGET);
    const gen = speculativeDecode(early, new BigramModel('the draft', DRAFT), [0], { numDraft: 4 });
    gen.next();
    gen.next();
    gen.return();
    expect(
      early.caches.flat().every((c) => c.disposed),
      "the target's caches, disposed when the caller stops",
    ).toBe(true);
  });

  it('bad input: k <= 0, a draft with another vocabulary, an empty prompt, a token outside the vocabulary, a prompt past the context', () => {
    const target = new BigramModel('the target', TARGET, 8);
    const draft = new BigramModel('the draft', DRAFT);
    for (const k of [0, -1, 1.5])
      expect(errorOf(() => speculativeDecode(target, draft, [0], { numDraft: k })).message, `numDraft ${k}`).toMatch(/numDraft/);
    const wide = new BigramModel('a draft of 5 tokens', [...DRAFT.map((r) => [...r, 0]), [0.2, 0.2, 0.2, 0.2, 0.2]]);
    expect(errorOf(() => speculativeDecode(target, wide, [0], { numDraft: 2 })).message, 'vocabularies of 4 and 5').toMatch(/vocabulary/);
    expect(errorOf(() => speculativeDecode(target, draft, [], { numDraft: 2 })).message, 'an empty prompt').toMatch(/empty/);
    expect(errorOf(() => speculativeDecode(target, draft, [0, 4], { numDraft: 2 })).message, 'token 4 of a vocabulary of 4').toMatch(
      /vocabulary/,
    );
    expect(
      errorOf(() => speculativeDecode(target, draft, new Array<number>(9).fill(1), { numDraft: 2 })).message,
      '9 tokens in 8 positions',
    ).toMatch(/9/);
    expect(target.passes + draft.passes, 'nothing ran').toBe(0);
  });
});

describe('3.4 speculativeDecode: tiny-qwen2-py-draft drafting for tiny-qwen2-py (models/), greedy', () => {
  const golden = demoGolden('tiny-qwen2-py');
  let loaded: { target: Qwen2ModelWeek3; draft: Qwen2ModelWeek3 } | undefined;
  const models = () =>
    (loaded ??= {
      target: Qwen2ModelWeek3.load(`${MODELS_DIR}tiny-qwen2-py`),
      draft: Qwen2ModelWeek3.load(`${MODELS_DIR}tiny-qwen2-py-draft`),
    });

  for (const [i, c] of golden.cases.entries()) {
    const k = [4, 1, 3, 8][i % 4];
    it(`${c.kind} prompt ${i} (${c.ids.length} tokens), k = ${k}: the target's own 48 greedy tokens, exactly`, () => {
      const { target, draft } = models();
      const { tokens } = take(speculativeDecode(target, draft, c.ids, { numDraft: k }), golden.max_new_tokens);
      const first = c.greedy.findIndex((id, j) => tokens[j] !== id);
      expect(first, `the first token that differs from the target's golden (got ${tokens[first]}, expected ${c.greedy[first]})`).toBe(-1);
    });
  }

  it('the target drafting for itself keeps every guess (and still gives its golden tokens)', () => {
    const { target } = models();
    const c = golden.cases[0];
    const { tokens, rounds } = take(speculativeDecode(target, target, c.ids, { numDraft: 4 }), golden.max_new_tokens);
    expect(tokens).toEqual(c.greedy);
    expect(
      rounds.slice(1).every((r) => r.accepted === r.drafted),
      'every round keeps its 4 guesses',
    ).toBe(true);
  });
});
