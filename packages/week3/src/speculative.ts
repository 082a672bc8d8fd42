// Chapter 3.4: speculative decoding. Read docs/week3/3.4-speculative-decoding.md, then replace each `throw`
// with your code.
//
// A decode step of a big model reads all of its weights to produce one token; a forward pass over k + 1
// tokens reads them once too, and costs little more. So a small draft model guesses k tokens ahead, one at a
// time (cheap), and the big target model checks all of them in one pass: every guess it agrees with is a
// token it did not have to decode alone.
//
// A round, with the sequence x_1 .. x_n so far (the target's cache holds all but x_n):
//   1. the draft proposes d_1 .. d_k, each drawn from its distribution q_i given what comes before;
//   2. the target runs x_n, d_1 .. d_k in one forward pass: its distributions p_1 .. p_{k+1} at each of them;
//   3. the acceptance rule keeps d_1 .. d_m and adds one token of the target's own, so every round yields
//      m + 1 >= 1 tokens;
//   4. both caches drop what they hold past the kept tokens (KvCache.rewind): the rejected guesses.
import type { Tensor } from '@tiny-llm/tensor-core';
import type { SamplerOptions } from '@tiny-llm/week1';
import { NotImplemented } from '@tiny-llm/week1/not-implemented';

/** A layer's cache as speculative decoding uses it: chapter 2.1's KvCache. */
export interface RewindableCache {
  /** The tokens it holds. */
  readonly offset: number;
  /** Drops the last n tokens. */
  rewind(n: number): void;
  dispose(): void;
}

/** What speculative decoding needs of a model: the week 2 and week 3 models as they are. */
export interface DecodingModel<Cache extends RewindableCache = RewindableCache> {
  readonly config: { vocabSize: number; maxPositionEmbeddings: number };
  /** An empty cache per layer. */
  newCache(): Cache[];
  /**
   * ids int32 [1, L] after the `offset` tokens the caches hold -> logits [1, L, vocab]; appends the L tokens.
   * (NoInfer: TypeScript reads the cache type from newCache, as the week 2 model's forward takes any cache.)
   */
  forward(ids: Tensor, offset: number, cache: readonly NoInfer<Cache>[]): Tensor;
}

/** What a round of verification decided. */
export interface Verdict {
  /** How many of the drafted tokens are kept (0..k). */
  accepted: number;
  /** The target's token after them: drawn from the residual at the first rejection, else the bonus token. */
  next: number;
}

/**
 * Draws a token from a distribution with one uniform number u in [0, 1): the first token whose cumulative
 * probability passes u * (the total). The total need not be 1 (a residual is drawn from as it is).
 */
export function sampleFrom(probs: ArrayLike<number>, u: number): number {
  let total = 0;
  for (let i = 0; i < probs.length; i++) total += probs[i];
  const target = u * total;
  let cumulative = 0;
  let last = -1;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] <= 0) continue;
    cumulative += probs[i];
    last = i;
    if (target < cumulative) return i;
  }
  // u * total can round to the total itself: the last token with any mass.
  if (last < 0) throw new RangeError('sampleFrom: the distribution has no mass (every probability is 0)');
  return last;
}

/**
 * The acceptance rule over one round. p: the target's distributions at the k + 1 positions (p[i] the one that
 * judges drafted[i], p[k] the bonus token's); q: the draft's k distributions, drafted[i] drawn from q[i];
 * random: uniform numbers in [0, 1).
 *
 * For i = 0, 1, ...: keep drafted[i] when random() < p[i][d] / q[i][d] (so with probability min(1, p/q)). At
 * the first rejection, the round ends: next = sampleFrom(max(0, p[i] - q[i]), random()), the residual (what the
 * target likes more than the draft did). When all k are kept, next = sampleFrom(p[k], random()), the bonus.
 * RangeError when the lengths do not fit (k drafted, k q rows, k + 1 p rows), or when a drafted token has
 * probability 0 under q (the draft could not have drawn it).
 */
export function acceptDrafts(
  p: readonly ArrayLike<number>[],
  q: readonly ArrayLike<number>[],
  drafted: readonly number[],
  random: () => number,
): Verdict {
  throw new NotImplemented('3.4', 'acceptDrafts');
}

export interface SpeculativeOptions extends SamplerOptions {
  /** k: tokens the draft proposes per round (an integer >= 1). */
  numDraft: number;
}

/** One round's outcome: the tokens it adds (accepted drafts, then the target's own), and how many were drafted. */
export interface SpeculativeRound {
  tokens: number[];
  drafted: number;
  accepted: number;
}

/**
 * Generates after promptIds with `target`, `draft` guessing ahead: one SpeculativeRound per yield, the first
 * the target's token after the prompt (nothing drafted), each next one 1 to k + 1 tokens. Runs until the
 * target's context is full or the caller stops pulling (it never stops at an end-of-sequence token: that is
 * the caller's). Sampling follows the options of chapter 1.7 (temperature 0: greedy) for both models; a seed
 * makes it reproducible (new tc.random.Generator(seed), its next() as `random`).
 *
 * Check the arguments before returning the generator (write the rounds in a generator function of your own
 * and return its call), each with a RangeError that says what is wrong: numDraft not an integer >= 1, a draft
 * whose vocabSize is not the target's, an empty prompt, a prompt id outside the vocabulary, a prompt longer
 * than the context (the smaller maxPositionEmbeddings of the two).
 *
 * The rounds: feed both models the prompt but its last token (the draft's prompt pass is prefill work: left to
 * its first catch-up, it would delay the second token). Then, while the sequence (n tokens) fits the
 * context (n <= context):
 *   1. k = min(numDraft, context - n) (0 in the first round: it only samples the target's first token). The
 *      draft feeds the tokens it has not seen (from its cache's offset), then drafts k tokens one at a time:
 *      each drawn with sampleFrom from the distribution of its last position, then fed.
 *   2. The target feeds [x_n, d_1 .. d_k] in one forward call: k + 1 distributions.
 *   3. acceptDrafts decides.
 *   4. Rewind the target's caches by k - accepted, the draft's by max(0, k - 1 - accepted) (it never fed d_k).
 * The distributions are filteredProbabilities(logits [L, V], options) of chapter 1.7 (one-hot at temperature
 * 0), read back with toArray(). Dispose of both models' caches when the generator ends (try/finally).
 */
export function speculativeDecode<T extends RewindableCache, D extends RewindableCache>(
  target: DecodingModel<T>,
  draft: DecodingModel<D>,
  promptIds: readonly number[],
  options: SpeculativeOptions,
): Generator<SpeculativeRound, void> {
  throw new NotImplemented('3.4', 'speculativeDecode');
}
