// Chapter 1.7: sampling. Greedy decoding always picks the most likely token, so it repeats itself; sampling
// draws the next token from the model's distribution instead, reshaped by a temperature and trimmed by
// top-k, top-p and min-p so that the long tail of unlikely tokens is never drawn.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';

export interface SamplerOptions {
  /** Divides the logits: < 1 sharpens the distribution, > 1 flattens it. 0 (the default) is greedy. */
  temperature?: number;
  /** Keep only the k most likely tokens (ties with the k-th are kept too). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability adds up to at least p, in (0, 1]. */
  topP?: number;
  /** Keep the tokens at least minP times as likely as the most likely one, in [0, 1]. */
  minP?: number;
  /** Makes the draws reproducible: the same seed gives the same tokens. */
  seed?: number;
}

/** logits [B, V] (any float dtype) -> the chosen token of each row, int32 [B]. */
export type Sampler = (logits: Tensor) => Tensor;

/**
 * The distribution a sampler draws from, float32 [B, V]: softmax(logits / temperature), then top-k, then top-p
 * (on what top-k left, renormalised), then min-p (against the most likely token), zero outside the kept set,
 * renormalised to sum to 1. Each filter always keeps the most likely token, so the set is never empty.
 * Temperature 0 gives the limit of that: all the mass on the argmax.
 */
export function filteredProbabilities(logits: Tensor, options: SamplerOptions): Tensor {
  checkOptions(options);
  checkLogits(logits);
  const { temperature = 0, topK, topP, minP } = options;
  return tc.tidy(() => {
    const x = tc.astype(logits, 'float32');
    if (temperature === 0) return oneHotArgmax(x);
    const probs = tc.softmax(tc.div(x, temperature), -1);
    let kept = probs;
    if (topK !== undefined && topK < x.shape[1]) kept = applyTopK(kept, topK);
    if (topP !== undefined && topP < 1) kept = applyTopP(kept, topP);
    if (minP !== undefined && minP > 0) kept = applyMinP(kept, probs, minP);
    return tc.div(kept, tc.sum(kept, -1, { keepdims: true }));
  });
}

/** Zeroes every probability below the k-th largest of its row. */
function applyTopK(probs: Tensor, k: number): Tensor {
  const kth = tc.slice(tc.topk(probs, k).values, [null, [k - 1, k]]); // [B, 1]
  return tc.where(tc.less(probs, kth), 0, probs);
}

/**
 * Sorts each row in descending order and keeps a token while the mass of the tokens before it is still
 * below p. The first token has nothing before it, so it is always kept.
 */
function applyTopP(probs: Tensor, p: number): Tensor {
  const normalised = tc.div(probs, tc.sum(probs, -1, { keepdims: true })); // top-k may have removed mass
  const order = tc.argsort(normalised, -1, { descending: true });
  const sorted = tc.takeAlongAxis(normalised, order, -1);
  const massBefore = tc.sub(tc.cumsum(sorted, -1), sorted);
  // argsort of a permutation is its inverse: it puts each sorted value back at its token's position.
  const massBeforeByToken = tc.takeAlongAxis(massBefore, tc.argsort(order, -1), -1);
  return tc.where(tc.less(massBeforeByToken, p), probs, 0);
}

/** Zeroes tokens less likely than minP times the most likely one (of the unfiltered distribution). */
function applyMinP(kept: Tensor, probs: Tensor, minP: number): Tensor {
  const threshold = tc.mul(tc.max(probs, -1, { keepdims: true }), minP);
  return tc.where(tc.less(probs, threshold), 0, kept);
}

function oneHotArgmax(x: Tensor): Tensor {
  const best = tc.expandDims(tc.argmax(x, -1), -1); // [B, 1]
  const vocab = tc.reshape(tc.arange(x.shape[1]), [1, x.shape[1]]); // int32 token ids 0..V-1
  return tc.astype(tc.equal(vocab, best), 'float32');
}

/**
 * A sampler for these options. Temperature 0 (the default) picks the argmax; otherwise it draws from
 * filteredProbabilities. With a seed the sampler owns its random stream: each call advances it, so
 * successive calls differ but a new sampler with the same seed repeats the whole sequence.
 */
export function makeSampler(options: SamplerOptions = {}): Sampler {
  checkOptions(options);
  const temperature = options.temperature ?? 0;
  const stream = options.seed === undefined ? undefined : new tc.random.Generator(options.seed);
  return (logits) => {
    checkLogits(logits);
    if (temperature === 0) return tc.argmax(logits, -1);
    return tc.tidy(() => {
      const logProbs = tc.log(filteredProbabilities(logits, options)); // log(0) = -inf: never drawn
      // One fresh seed per call from the sampler's own stream; undefined uses the global generator.
      return tc.random.categorical(logProbs, { seed: stream?.nextUint32() });
    });
  };
}

function checkOptions(options: SamplerOptions): void {
  const { temperature, topK, topP, minP, seed } = options;
  if (temperature !== undefined && !(Number.isFinite(temperature) && temperature >= 0)) {
    throw new RangeError(`sampler: temperature must be a number >= 0 (0 is greedy), got ${temperature}`);
  }
  if (topK !== undefined && !(Number.isInteger(topK) && topK >= 1)) {
    throw new RangeError(`sampler: topK must be an integer >= 1, got ${topK}`);
  }
  if (topP !== undefined && !(topP > 0 && topP <= 1)) {
    throw new RangeError(`sampler: topP must be in (0, 1], got ${topP}`);
  }
  if (minP !== undefined && !(minP >= 0 && minP <= 1)) {
    throw new RangeError(`sampler: minP must be in [0, 1], got ${minP}`);
  }
  if (seed !== undefined && !Number.isInteger(seed)) {
    throw new RangeError(`sampler: seed must be an integer, got ${seed}`);
  }
}

function checkLogits(logits: Tensor): void {
  if (logits.ndim !== 2 || logits.shape[1] === 0) {
    throw new RangeError(`sampler: logits must have shape [batch, vocab], got ${logits.describe()}`);
  }
}
