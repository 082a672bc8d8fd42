// Chapter 3.5: moving a request's KV cache from one page pool to another.
//
// With prefill and decode in separate workers (disaggregated.ts), the keys and values a prefill wrote into its
// worker's pool must reach the decode worker's pool before the request can decode there. The transfer is a
// message: a header (the tokens, the page size, the shapes of the model's cache) and the request's pages in
// block order, each page one Float32Array with every layer's keys and values of that page, and a checksum per
// layer. A Float32Array's buffer can be handed to another thread without a copy (postMessage's transfer list).
//
// The receiving side trusts nothing: a page missing, pages out of order, a page of another size or corrupted on
// the way would give a request another request's context, or garbage, and it would decode on without a
// complaint. importPages checks the transfer whole before it takes a page of its pool, and names what is wrong.
import * as tc from '@tiny-llm/tensor-core';
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

/** FNV-1a (32 bits) of the bytes of `data`, as an unsigned integer: a checksum for a page in transit. */
export function pageChecksum(data: ArrayBufferView): number {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  let hash = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) hash = Math.imul(hash ^ bytes[i], 0x01000193);
  return hash >>> 0;
}

/** The shape of the pool's cache: what a transfer's header must agree with. */
function shapeOf(pool: PagePool): { numLayers: number; numKvHeads: number; headDim: number; pageSize: number } {
  const [, numKvHeads, pageSize, headDim] = pool.keys[0].shape;
  return { numLayers: pool.keys.length, numKvHeads, headDim, pageSize };
}

/** The floats of one layer's keys and values of one page: 2 * Hkv * P * D. */
const layerFloats = (t: { numKvHeads: number; pageSize: number; headDim: number }) => 2 * t.numKvHeads * t.pageSize * t.headDim;

/** One layer's part of a page payload (keys and values). */
const layerOf = (data: Float32Array, layer: number, floats: number) => data.subarray(layer * floats, (layer + 1) * floats);

/** The first `numTokens` tokens of a block table as a transfer: its pages in block order, checksummed per layer. */
export function exportPages(pool: PagePool, table: BlockTable, numTokens: number): KvTransfer {
  if (!Number.isInteger(numTokens) || numTokens < 1 || numTokens > table.length) {
    throw new RangeError(`exportPages: ${table.owner}'s block table holds ${table.length} tokens, cannot send ${numTokens}`);
  }
  const shape = shapeOf(pool);
  const perLayer = layerFloats(shape);
  const pageFloats = perLayer / 2;
  const pages = table.pages.slice(0, Math.ceil(numTokens / shape.pageSize)).map((page, index): PagePayload => {
    const data = new Float32Array(shape.numLayers * perLayer);
    for (let layer = 0; layer < shape.numLayers; layer++) {
      [pool.keys[layer], pool.values[layer]].forEach((all, kv) => {
        const view = tc.slice(all, [[page, page + 1]]);
        data.set(view.toArray() as Float32Array, layer * perLayer + kv * pageFloats);
        view.dispose();
      });
    }
    const checksums = Array.from({ length: shape.numLayers }, (_, layer) => pageChecksum(layerOf(data, layer, perLayer)));
    return { index, data, checksums };
  });
  return { tokens: table.tokens.slice(0, numTokens), numTokens, ...shape, pages };
}

/**
 * Checks a transfer against the pool and in itself, all before taking a page: the same shapes, the tokens the
 * header counts, every page there once and in block order, each of the expected size and checksums. Throws a
 * RangeError naming the page (and the layer) otherwise.
 */
function checkTransfer(pool: PagePool, transfer: KvTransfer): void {
  const shape = shapeOf(pool);
  for (const name of ['pageSize', 'numLayers', 'numKvHeads', 'headDim'] as const) {
    if (transfer[name] !== shape[name]) {
      throw new RangeError(
        `importPages: the transfer's ${name} is ${transfer[name]}, this pool's is ${shape[name]}: the two workers must run the same model and page size`,
      );
    }
  }
  const { numTokens, tokens, pages } = transfer;
  if (!Number.isInteger(numTokens) || numTokens < 1 || tokens.length !== numTokens) {
    throw new RangeError(`importPages: the header counts ${numTokens} tokens, the transfer lists ${tokens.length}`);
  }
  const expected = Math.ceil(numTokens / shape.pageSize);
  const indices = pages.map((p) => p.index);
  const listed = `(it holds pages ${indices.join(', ')})`;
  for (let block = 0; block < expected; block++) {
    if (!indices.includes(block)) {
      throw new RangeError(
        `importPages: page ${block} of ${expected} (${numTokens} tokens in pages of ${shape.pageSize}) is missing ${listed}: a page was dropped`,
      );
    }
  }
  if (pages.length !== expected) {
    throw new RangeError(
      `importPages: ${pages.length} pages for ${numTokens} tokens in pages of ${shape.pageSize}, which take ${expected} ${listed}`,
    );
  }
  const perLayer = layerFloats(shape);
  pages.forEach((page, position) => {
    if (page.index !== position) {
      throw new RangeError(
        `importPages: pages out of order: position ${position} holds page ${page.index}, expected page ${position} ${listed}`,
      );
    }
    if (page.data.length !== shape.numLayers * perLayer) {
      throw new RangeError(
        `importPages: page ${position} holds ${page.data.length} floats, expected ${shape.numLayers * perLayer} (${shape.numLayers} layers x ${perLayer})`,
      );
    }
    for (let layer = 0; layer < shape.numLayers; layer++) {
      const sum = pageChecksum(layerOf(page.data, layer, perLayer));
      if (sum !== page.checksums[layer]) {
        throw new RangeError(
          `importPages: page ${position}, layer ${layer}: checksum ${sum} differs from the sender's ${page.checksums[layer]}: the page was corrupted in transit`,
        );
      }
    }
  });
  if (expected > pool.freePages) {
    throw new RangeError(`importPages: the transfer needs ${expected} pages, the pool has ${pool.freePages} free`);
  }
}

/**
 * A transfer as a new block table of this pool (named `owner`), holding its tokens: the transfer is checked
 * whole first (checkTransfer), then each page is written into a page of the pool, layer by layer.
 */
export function importPages(pool: PagePool, transfer: KvTransfer, owner?: string): BlockTable {
  checkTransfer(pool, transfer);
  const { numKvHeads, pageSize, headDim } = transfer;
  const perLayer = layerFloats(transfer);
  const table = pool.newTable(owner);
  table.reserve(transfer.numTokens);
  transfer.pages.forEach((payload, block) => {
    const page = table.pages[block];
    for (let layer = 0; layer < transfer.numLayers; layer++) {
      [pool.keys[layer], pool.values[layer]].forEach((all, kv) => {
        const start = layer * perLayer + (kv * perLayer) / 2;
        const from = tc.tensor(payload.data.subarray(start, start + perLayer / 2), { shape: [1, numKvHeads, pageSize, headDim] });
        const to = tc.slice(all, [[page, page + 1]]);
        all.backend.unary('copy', from, to);
        from.dispose();
        to.dispose();
      });
    }
  });
  table.commit(transfer.tokens);
  return table;
}
