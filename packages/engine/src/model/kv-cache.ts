// The KV cache of the engine's model: chapter 2.1's KvCache, plus the two calls of a kernel that writes the
// new keys and values into the cache itself (the fused decode attention, native/attention_decode.cc).
import type * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { KvCache } from '@tiny-llm/reference/week2';

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
