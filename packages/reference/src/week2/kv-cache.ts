// Chapter 2.1: the key/value cache.
//
// Without a cache, generating token t runs the model over all t tokens again: the keys and values of the
// earlier tokens are recomputed every step, so a step costs O(t) projections and O(t^2) attention. They never
// change (a token only attends to tokens before it), so each layer keeps them: a decode step projects only the
// new token, appends its key and value here, and attends over everything stored so far.
//
// Layout: one float32 buffer per K and V of shape [B, Hkv, capacity, D], capacity grown in chunks of
// `chunkSize` positions. New rows are written in place (a strided copy into a slice view of the buffer), and
// what updateAndFetch returns is a view of the filled part [B, Hkv, offset, D]: a decode step copies one
// position per layer, never the whole cache. Only growing past the capacity copies the filled part once.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';

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

export interface KvCacheOptions {
  /** Positions the buffers grow by (default 256). */
  chunkSize?: number;
}

export class KvCache implements AttentionCache {
  /** Positions added per growth of the buffers. */
  readonly chunkSize: number;
  private keys: Tensor | null = null;
  private values: Tensor | null = null;
  /** Positions stored (protected: a kernel that writes rows itself counts them, see the engine's cache). */
  protected filled = 0;

  constructor(options: KvCacheOptions = {}) {
    const chunk = options.chunkSize ?? 256;
    if (!Number.isInteger(chunk) || chunk <= 0) throw new RangeError(`KvCache: chunkSize must be a positive integer, got ${chunk}`);
    this.chunkSize = chunk;
  }

  /** Tokens stored so far (the position of the next token). */
  get offset(): number {
    return this.filled;
  }

  /** Positions the buffers hold before they must grow. */
  get capacity(): number {
    return this.keys ? this.keys.shape[2] : 0;
  }

  /**
   * Appends k and v [B, Hkv, L, D] (any strides and float dtype; stored as float32) after the tokens already
   * cached and returns the keys and values of all of them, [B, Hkv, offset + L, D]: views of the cache that
   * stay valid until the next update (they share its buffers; dispose them, or let a tidy scope do it).
   */
  updateAndFetch(k: Tensor, v: Tensor): CachedKeysValues {
    this.check(k, v);
    const [b, hkv, l, d] = k.shape;
    const end = this.filled + l;
    const { keys, values } = this.buffersFor(b, hkv, d, end, k.backend);
    const rows: tc.SliceSpec[] = [null, null, [this.filled, end]];
    const kDst = tc.slice(keys, rows);
    const vDst = tc.slice(values, rows);
    // The backend's strided copy writes straight into the slice of the buffer (and widens bf16 to f32).
    keys.backend.unary('copy', k, kDst);
    values.backend.unary('copy', v, vDst);
    kDst.dispose();
    vDst.dispose();
    this.filled = end;
    const filled: tc.SliceSpec[] = [null, null, [0, end]];
    return { keys: tc.slice(keys, filled), values: tc.slice(values, filled), mask: 'causal' };
  }

  /** Drops the last n positions (tokens a draft model proposed and the target rejected). */
  rewind(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > this.filled) {
      throw new RangeError(`KvCache.rewind: cannot drop ${n} positions from a cache of ${this.filled}`);
    }
    this.filled -= n;
  }

  /** Empties the cache, keeping its buffers for reuse. */
  reset(): void {
    this.filled = 0;
  }

  /** Frees the buffers; the cache starts empty again on the next update. */
  dispose(): void {
    this.keys?.dispose();
    this.values?.dispose();
    this.keys = null;
    this.values = null;
    this.filled = 0;
  }

  private check(k: Tensor, v: Tensor): void {
    // On every decode step of every layer: the messages are only built when a check fails.
    const shapes = () => `k ${k.describe()}, v ${v.describe()}`;
    const ks = k.shape;
    const vs = v.shape;
    if (ks.length !== 4 || vs.length !== 4 || ks[0] !== vs[0] || ks[1] !== vs[1] || ks[2] !== vs[2] || ks[3] !== vs[3]) {
      throw new RangeError(`KvCache.updateAndFetch: expected k and v of one shape [B, Hkv, L, D] (got ${shapes()})`);
    }
    if (!tc.isFloating(k.dtype) || !tc.isFloating(v.dtype)) {
      throw new TypeError(`KvCache.updateAndFetch: k and v must be floating point (got ${shapes()})`);
    }
  }

  /**
   * The buffers [B, Hkv, capacity, D], grown to hold `end` positions; the cache's B, Hkv and D are fixed by its
   * first update.
   */
  protected buffersFor(b: number, hkv: number, d: number, end: number, backend: tc.Backend): { keys: Tensor; values: Tensor } {
    if (this.keys) {
      const [cb, ch, , cd] = this.keys.shape;
      if (b !== cb || hkv !== ch || d !== cd) {
        throw new RangeError(`KvCache: the cache holds [B=${cb}, Hkv=${ch}, S, D=${cd}], got [B=${b}, Hkv=${hkv}, L, D=${d}]`);
      }
    }
    if (!this.keys || !this.values || end > this.keys.shape[2]) this.grow(backend, b, hkv, d, end);
    return { keys: this.keys!, values: this.values! };
  }

  /** Reallocates the buffers with room for `needed` positions (rounded up to whole chunks), keeping the contents. */
  private grow(backend: tc.Backend, b: number, hkv: number, d: number, needed: number): void {
    const capacity = Math.ceil(needed / this.chunkSize) * this.chunkSize;
    const grown = [this.keys, this.values].map((old) => {
      // Kept: the buffers belong to the cache, not to the tidy scope of the forward pass that grows them.
      const buffer = tc.keep(tc.empty([b, hkv, capacity, d], 'float32', backend));
      if (old) {
        if (this.filled > 0) {
          const spec: tc.SliceSpec[] = [null, null, [0, this.filled]];
          const src = tc.slice(old, spec);
          const dst = tc.slice(buffer, spec);
          buffer.backend.unary('copy', src, dst);
          src.dispose();
          dst.dispose();
        }
        old.dispose();
      }
      return buffer;
    });
    [this.keys, this.values] = grown;
  }
}
