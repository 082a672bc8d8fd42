import { NotImplemented } from '@tiny-llm/week1/not-implemented';
import type { BlockTable, PagePool } from './paged-kv-cache.ts';

/** One page of a request in transit: block `index` of its table. */
export interface PagePayload {
  /** The block of the request's table this page is (0 for its first PAGE_SIZE tokens, ...). */
  index: number;
  /**
   * Every layer's keys and values of the page, float32 [numLayers, 2, numKvHeads, pageSize, headDim]: layer l's
   * keys at [l, 0], its values at [l, 1], each as the pool holds a page ([Hkv, P, D]). Every slot is sent, the
   * unused ones of a partly filled last page too.
   */
  data: Float32Array;
  /** pageChecksum of each layer's part of `data` ([l, 0] and [l, 1] together). */
  checksums: number[];
}

/** A request's KV cache in transit from one pool to another. */
export interface KvTransfer {
  /** The tokens whose keys and values the pages hold, in order. */
  tokens: number[];
  numTokens: number;
  pageSize: number;
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  /** ceil(numTokens / pageSize) pages, in block order. */
  pages: PagePayload[];
}

/**
 * FNV-1a (32 bits) of the bytes of `data` (new Uint8Array(data.buffer, data.byteOffset, data.byteLength)), as an
 * unsigned integer: start from 0x811c9dc5; for each byte, xor it in, then multiply by 0x01000193 modulo 2^32
 * (Math.imul); return hash >>> 0.
 */
export function pageChecksum(data: ArrayBufferView): number {
  throw new NotImplemented('3.5', 'pageChecksum');
}

/**
 * The first `numTokens` tokens of a block table as a transfer: the header (the tokens, numTokens, and the pool's
 * pageSize, numLayers = pool.keys.length, numKvHeads and headDim from pool.keys[0].shape [N, Hkv, P, D]) and
 * the table's first ceil(numTokens / P) pages in block order. Page j's payload reads pool page table.pages[j]
 * of every layer: tc.slice(pool.keys[layer], [[page, page + 1]]).toArray() is its keys (dispose the view), to
 * be set at [layer, 0] of the payload, the values at [layer, 1]; then one pageChecksum per layer. A RangeError
 * when the table holds fewer than numTokens tokens (or numTokens < 1).
 */
export function exportPages(pool: PagePool, table: BlockTable, numTokens: number): KvTransfer {
  throw new NotImplemented('3.5', 'exportPages');
}

/**
 * A transfer as a new block table of this pool (pool.newTable(owner)) holding its tokens. Check everything
 * before taking a page, and throw a RangeError that names what is wrong: a header that does not match the pool
 * (page size, layers, kv heads, head size); tokens.length other than numTokens; a page missing (name it: "page 3
 * ... is missing"), or too many; pages out of order (name the position and the page it holds); a payload of the
 * wrong size; a layer whose checksum differs ("page 2, layer 5: ... corrupted"); not enough free pages. Then
 * reserve the pages, copy each layer's keys and values of each page into the pool (tc.tensor over the payload's
 * subarray, shape [1, Hkv, P, D], and all.backend.unary('copy', from, tc.slice(all, [[page, page + 1]])), as
 * PagePool.write copies), and commit the tokens.
 */
export function importPages(pool: PagePool, transfer: KvTransfer, owner?: string): BlockTable {
  throw new NotImplemented('3.5', 'importPages');
}
