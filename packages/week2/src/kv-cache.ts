// Chapter 2.1: the key/value cache.
// Read docs/week2/2.1-kv-cache.md, then replace each `throw` with your code.
import type { Tensor } from '@tiny-llm/tensor-core';
import { NotImplemented } from '@tiny-llm/week1/not-implemented';

/** What a layer's attention reads from its cache: every key and value so far, and the mask to attend with. */
export interface CachedKeysValues {
  /** [B, Hkv, S, D]: the cached positions and the new ones. */
  keys: Tensor;
  values: Tensor;
  /**
   * 'causal' when every row holds one sequence whose L new tokens are its last L (query i sees the keys up to
   * i + S - L); an additive mask [B, 1, L, S] when rows differ (the batch cache of chapter 2.6).
   */
  mask: Tensor | 'causal';
}

/** A layer's cache as the week 2 model uses it: this chapter's KvCache, or chapter 2.6's BatchingKvCache. */
export interface AttentionCache {
  /** Appends k and v [B, Hkv, L, D] and returns everything cached, with the mask to attend with. */
  updateAndFetch(k: Tensor, v: Tensor): CachedKeysValues;
}

/**
 * The keys and values of one layer, for every token the model has read. One per layer (the model's
 * newCache()), created empty; each forward pass appends the new tokens' keys and values.
 *
 * Store them as float32 [B, Hkv, S, D]. The simplest cache concatenates the new rows to the old ones
 * (tc.concat along axis 2): correct, but each step copies the whole cache, O(S) per token. Better: keep
 * buffers with room to spare, write the new rows into them, and return views (tc.slice) of the filled part;
 * grow the buffers (a copy) only when they are full. Buffers that outlive a forward pass must be kept out of
 * its tc.tidy scope with tc.keep(buffer).
 */
export class KvCache implements AttentionCache {
  /** Tokens stored so far: the position of the next token. */
  get offset(): number {
    throw new NotImplemented('2.1', 'KvCache.offset');
  }

  /**
   * Appends k and v [B, Hkv, L, D] (any float dtype, any strides) after the stored tokens and returns the keys
   * and values of all offset + L of them, [B, Hkv, offset + L, D] float32, with mask 'causal'.
   */
  updateAndFetch(k: Tensor, v: Tensor): CachedKeysValues {
    throw new NotImplemented('2.1', 'KvCache.updateAndFetch');
  }

  /** Forgets the last n tokens (a chat that goes back, a draft model's rejected guesses in chapter 3.4). */
  rewind(n: number): void {
    throw new NotImplemented('2.1', 'KvCache.rewind');
  }

  /** Frees the stored tensors. */
  dispose(): void {
    throw new NotImplemented('2.1', 'KvCache.dispose');
  }
}
