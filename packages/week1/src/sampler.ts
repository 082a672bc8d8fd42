// Chapter 1.7: sampling. Greedy decoding always picks the most likely token, so it repeats itself; sampling
// draws the next token from the model's distribution instead, reshaped by a temperature and trimmed by
// top-k, top-p and min-p so that the long tail of unlikely tokens is never drawn.
// Read docs/week1/1.7-sampling.md, then replace each `throw` with your code.
import type { Tensor } from '@tiny-llm/tensor-core';
import { NotImplemented } from './not-implemented.ts';

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
 * The distribution a sampler draws from, float32 [B, V]. In this order:
 *   1. probs = softmax(logits / temperature) along the last axis (temperature 0, or no temperature given:
 *      put all the mass on the argmax of each row, the limit of a shrinking temperature);
 *   2. top-k: zero every probability below the k-th largest of its row (ties with it stay);
 *   3. top-p: renormalise what is left, sort each row in descending order, and keep a token while the mass
 *      of the tokens *before* it is still < p (so the first token is always kept: never an empty set);
 *   4. min-p: zero every token with probs < minP * max(probs) (the max of the step-1 distribution);
 *   5. divide by the row sums so that each row adds up to 1 again.
 * A filter (top-k, top-p, min-p) whose option is undefined is skipped; an undefined temperature is 0, as in
 * SamplerOptions. Reject bad options with a RangeError that names them: a temperature that is not >= 0 (NaN
 * included), topK not an integer >= 1, topP outside (0, 1], minP outside [0, 1].
 * Useful ops: tc.softmax, tc.topk, tc.argsort, tc.takeAlongAxis, tc.cumsum, tc.where, tc.less, tc.sum, tc.max.
 */
export function filteredProbabilities(logits: Tensor, options: SamplerOptions): Tensor {
  throw new NotImplemented('1.7', 'filteredProbabilities');
}

/**
 * A sampler for these options (validated here, as in filteredProbabilities). Temperature 0 (the default)
 * is greedy: tc.argmax(logits, -1). Otherwise draw one token per row with
 * tc.random.categorical(log(filteredProbabilities(...))): log(0) = -inf is never drawn.
 * With a seed, the sampler owns a random stream (new tc.random.Generator(seed)) and passes
 * `{ seed: stream.nextUint32() }` to each draw: successive calls differ, yet a new sampler with the same
 * seed repeats the whole sequence. Without a seed, use the global generator (no seed option).
 */
export function makeSampler(options: SamplerOptions = {}): Sampler {
  throw new NotImplemented('1.7', 'makeSampler');
}
