// The KV caches of the engine's model: chapter 2.1's KvCache, plus the two calls of a kernel that writes the
// new keys and values into the cache itself (the fused decode attention, native/attention_decode.cc); or a
// layer's view of a request's block table in a page pool (chapter 3.1), which that kernel also reads and writes.
import type * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { KvCache } from '@tiny-llm/reference/week2';
import type { PagedLayerCache } from '@tiny-llm/reference/week3';

/** One layer's cache of one request: buffers of its own (a session), or its pages in a pool (batch, serve). */
export type LayerCache = DecodeKvCache | PagedLayerCache;

export class DecodeKvCache extends KvCache {
  /**
   * Makes room for `l` more positions of [B, Hkv, *, D] and returns the whole buffers [B, Hkv, capacity, D]
   * (float32, contiguous) with the position the first new row goes to. The rows count as stored once
   * commit(l) is called.
   */
  reserve(b: number, hkv: number, d: number, l: number, backend: tc.Backend): { keys: Tensor; values: Tensor; offset: number } {
    const { keys, values } = this.buffersFor(b, hkv, d, this.offset + l, backend);
    return { keys, values, offset: this.offset };
  }

  /** Counts `l` rows written after the stored ones (see reserve) as stored. */
  commit(l: number): void {
    if (!Number.isInteger(l) || l < 0 || this.offset + l > this.capacity) {
      throw new RangeError(`DecodeKvCache.commit: cannot add ${l} positions to ${this.offset} in a capacity of ${this.capacity}`);
    }
    this.filled += l;
  }
}
