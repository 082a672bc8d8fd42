// Chapter 3.4: speculative decoding. A decode step of a big model reads all of its weights to produce one
// token; a forward pass over k + 1 tokens reads them once too, and costs little more. So a small draft model
// guesses k tokens ahead, one at a time (cheap), and the big target model checks all of them in one pass:
// every guess it agrees with is a token it did not have to decode alone.
//
// A round, with the sequence x_1 .. x_n so far (the target's cache holds all but x_n):
//   1. the draft proposes d_1 .. d_k, each drawn from its distribution q_i given what comes before;
//   2. the target runs x_n, d_1 .. d_k in one forward pass: its distributions p_1 .. p_{k+1} at each of them;
//   3. the acceptance rule keeps d_1 .. d_m and adds one token of the target's own, so every round yields
//      m + 1 >= 1 tokens;
//   4. both caches drop what they hold past the kept tokens (KvCache.rewind): the rejected guesses.
//
// The rule (Leviathan et al., Chen et al., 2023) keeps d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the
// first rejection it draws the target's token from the residual max(0, p_i - q_i), renormalised; when all k
// are kept it draws the bonus token from p_{k+1}. Every token then comes out distributed exactly as the target
// alone would sample it, whatever the draft: a bad draft only costs speed. At temperature 0 p and q are one-hot
// (the argmax), and the rule keeps a guess exactly when it is the target's argmax: the output is the target's
// own greedy output.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { filteredProbabilities, type SamplerOptions } from '../week1/index.ts';

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
 */
export function acceptDrafts(
  p: readonly ArrayLike<number>[],
  q: readonly ArrayLike<number>[],
  drafted: readonly number[],
  random: () => number,
): Verdict {
  const k = drafted.length;
  if (q.length !== k || p.length !== k + 1) {
    throw new RangeError(
      `acceptDrafts: ${k} drafted tokens need ${k} draft distributions and ${k + 1} target ones, got ${q.length} and ${p.length}`,
    );
  }
  for (let i = 0; i < k; i++) {
    const d = drafted[i];
    const pd = p[i][d];
    const qd = q[i][d];
    if (!(qd > 0))
      throw new RangeError(`acceptDrafts: drafted token ${d} at position ${i} has probability ${qd} under the draft, which drew it`);
    if (random() < pd / qd) continue; // kept with probability min(1, p/q)
    // Rejected: the target's token from what p has more of than q.
    const residual = new Float64Array(p[i].length);
    for (let v = 0; v < residual.length; v++) residual[v] = Math.max(0, p[i][v] - q[i][v]);
    return { accepted: i, next: sampleFrom(residual, random()) };
  }
  return { accepted: k, next: sampleFrom(p[k], random()) };
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
 * makes it reproducible. Checks its arguments before it returns.
 */
export function speculativeDecode<T extends RewindableCache, D extends RewindableCache>(
  target: DecodingModel<T>,
  draft: DecodingModel<D>,
  promptIds: readonly number[],
  options: SpeculativeOptions,
): Generator<SpeculativeRound, void> {
  const k = options.numDraft;
  if (!Number.isInteger(k) || k < 1)
    throw new RangeError(`speculativeDecode: numDraft (the tokens drafted per round) must be an integer >= 1, got ${k}`);
  const vocab = target.config.vocabSize;
  if (draft.config.vocabSize !== vocab) {
    throw new RangeError(
      `speculativeDecode: the draft model's vocabulary has ${draft.config.vocabSize} tokens, the target's ${vocab}: ` +
        'a draft must share the target tokenizer, token for token',
    );
  }
  if (promptIds.length === 0) throw new RangeError('speculativeDecode: the prompt is empty (there is no token to continue from)');
  const bad = promptIds.findIndex((id) => !(Number.isInteger(id) && id >= 0 && id < vocab));
  if (bad >= 0) throw new RangeError(`speculativeDecode: prompt token ${bad} is ${promptIds[bad]}, outside the vocabulary 0..${vocab - 1}`);
  const context = Math.min(target.config.maxPositionEmbeddings, draft.config.maxPositionEmbeddings);
  if (promptIds.length > context)
    throw new RangeError(`speculativeDecode: the prompt has ${promptIds.length} tokens, more than the ${context} positions of the models`);
  // Both sample with the same options: the closer q is to p, the more guesses are kept.
  const sampling: SamplerOptions = { temperature: options.temperature, topK: options.topK, topP: options.topP, minP: options.minP };
  const stream = new tc.random.Generator(options.seed ?? (Math.random() * 2 ** 32) >>> 0);
  return rounds(target, draft, promptIds, k, context, sampling, () => stream.next());
}

/** The distributions of each position of logits [1, L, V], as rows of a [L, V] array. */
function distributions(logits: Tensor, sampling: SamplerOptions): Float32Array[] {
  const [, l, v] = logits.shape;
  const rows = tc.reshape(logits, [l, v]);
  if (!sampling.temperature) {
    // Greedy: filteredProbabilities' one-hot rows at the argmax, built here from the L argmax ids alone (a
    // decode step of a small draft costs less than building and reading back [L, V] on the device).
    return Array.from(tc.argmax(rows, -1).toArray(), (best) => {
      const row = new Float32Array(v);
      row[best] = 1;
      return row;
    });
  }
  const all = filteredProbabilities(rows, sampling).toArray() as Float32Array;
  return Array.from({ length: l }, (_, i) => all.subarray(i * v, (i + 1) * v));
}

function* rounds<T extends RewindableCache, D extends RewindableCache>(
  target: DecodingModel<T>,
  draft: DecodingModel<D>,
  promptIds: readonly number[],
  numDraft: number,
  context: number,
  sampling: SamplerOptions,
  random: () => number,
): Generator<SpeculativeRound, void> {
  const targetCache = target.newCache();
  const draftCache = draft.newCache();
  /** Runs ids after what the caches hold: their logits [1, L, V]. */
  const forward = <C extends RewindableCache>(model: DecodingModel<C>, cache: C[], ids: readonly number[]) =>
    model.forward(tc.tensor([[...ids]], { dtype: 'int32' }), cache[0].offset, cache);
  /** The distributions of each position of ids. */
  const run = <C extends RewindableCache>(model: DecodingModel<C>, cache: C[], ids: readonly number[]) =>
    tc.tidy(() => distributions(forward(model, cache, ids), sampling));
  /** ids into the caches, nothing read back. */
  const feed = <C extends RewindableCache>(model: DecodingModel<C>, cache: C[], ids: readonly number[]) =>
    tc.tidy(() => {
      forward(model, cache, ids);
    });
  const rewind = (cache: RewindableCache[], n: number) => {
    for (const c of cache) c.rewind(n);
  };
  try {
    const tokens = [...promptIds];
    // The prompt, but its last token, through both models: each round starts by feeding the target the last
    // token it has not seen. The draft's prompt pass is prefill work too: left to its first catch-up, it would
    // sit between the first and second tokens (on the demo pair, 36 ms for a 270-token prompt, a third of the
    // time the target alone takes to decode 128 tokens).
    if (tokens.length > 1) {
      feed(target, targetCache, tokens.slice(0, -1));
      feed(draft, draftCache, tokens.slice(0, -1));
    }
    for (let first = true; tokens.length <= context; first = false) {
      // The verification pass feeds positions n - 1 .. n - 1 + k; its last token may sit at most at context - 1.
      const k = first ? 0 : Math.min(numDraft, context - tokens.length);
      // 1. The draft catches up on the tokens it has not seen (the prompt, the last round's kept tokens), then
      //    guesses k tokens, one at a time.
      const drafted: number[] = [];
      const q: Float32Array[] = [];
      if (k > 0) {
        let dist = run(draft, draftCache, tokens.slice(draftCache[0].offset)).at(-1)!;
        for (let i = 0; i < k; i++) {
          drafted.push(sampleFrom(dist, random()));
          q.push(dist);
          if (i + 1 < k) dist = run(draft, draftCache, [drafted[i]])[0];
        }
      }
      // 2. The target checks them all in one pass: x_n and the k guesses, k + 1 distributions.
      const p = run(target, targetCache, [tokens.at(-1)!, ...drafted]);
      // 3. Keep what the rule accepts, and the target's own token.
      const { accepted, next } = acceptDrafts(p, q, drafted, random);
      // 4. The target holds x_n and the k guesses: drop the rejected ones. The draft fed x_n .. d_{k-1}: it keeps
      //    up to d_accepted (when all k are kept it has not seen d_k yet, and feeds it next round).
      rewind(targetCache, k - accepted);
      if (k > 0) rewind(draftCache, Math.max(0, k - 1 - accepted));
      const added = [...drafted.slice(0, accepted), next];
      tokens.push(...added);
      yield { tokens: added, drafted: k, accepted };
    }
  } finally {
    for (const c of [...targetCache, ...draftCache]) c.dispose();
  }
}
