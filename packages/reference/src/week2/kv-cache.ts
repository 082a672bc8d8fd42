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
// The fused decode attention (native/attention_decode.cc) writes its row itself: reserve() hands it the whole
// buffers and the position, commit() counts the row.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';

export interface KvCacheOptions {
  /** Positions the buffers grow by (default 256). */
  chunkSize?: number;
}

export class KvCache {
  /** Positions added per growth of the buffers. */
  readonly chunkSize: number;
  private keys: Tensor | null = null;
  private values: Tensor | null = null;
  private filled = 0;

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
  updateAndFetch(k: Tensor, v: Tensor): { keys: Tensor; values: Tensor } {
    this.check(k, v);
    const [b, hkv, l, d] = k.shape;
    const end = this.filled + l;
    if (!this.keys || !this.values || end > this.keys.shape[2]) this.grow(k.backend, b, hkv, d, end);
    const keys = this.keys!;
    const values = this.values!;
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
    return { keys: tc.slice(keys, filled), values: tc.slice(values, filled) };
  }

  /**
   * For a kernel that writes the new positions itself (the fused decode attention, native/attention_decode.cc):
   * makes room for `l` more positions of [B, Hkv, *, D] and returns the whole buffers [B, Hkv, capacity, D]
   * (float32, contiguous) with the position the first new row goes to. The rows count as stored once
   * commit(l) is called.
   */
  reserve(b: number, hkv: number, d: number, l: number, backend: tc.Backend): { keys: Tensor; values: Tensor; offset: number } {
    if (this.keys) {
      const [cb, ch, , cd] = this.keys.shape;
      if (b !== cb || hkv !== ch || d !== cd) {
        throw new RangeError(`KvCache.reserve: the cache holds [B=${cb}, Hkv=${ch}, S, D=${cd}], got [B=${b}, Hkv=${hkv}, D=${d}]`);
      }
    }
    const end = this.filled + l;
    if (!this.keys || !this.values || end > this.keys.shape[2]) this.grow(backend, b, hkv, d, end);
    return { keys: this.keys!, values: this.values!, offset: this.filled };
  }

  /** Counts `l` rows written after the stored ones (see reserve) as stored. */
  commit(l: number): void {
    if (!Number.isInteger(l) || l < 0 || this.filled + l > this.capacity) {
      throw new RangeError(`KvCache.commit: cannot add ${l} positions to ${this.filled} in a capacity of ${this.capacity}`);
    }
    this.filled += l;
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
    if (this.keys) {
      const [b, hkv, , d] = this.keys.shape;
      if (ks[0] !== b || ks[1] !== hkv || ks[3] !== d) {
        throw new RangeError(`KvCache.updateAndFetch: the cache holds [B=${b}, Hkv=${hkv}, S, D=${d}], got ${shapes()}`);
      }
    }
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
