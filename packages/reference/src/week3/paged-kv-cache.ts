// Chapter 3.1: the paged KV cache.
//
// Week 2's KvCache gives each request a buffer of its own per layer, grown in chunks: memory is reserved for
// the longest a request might get, and a batch's memory is its requests' capacities, whatever they hold. The
// paged cache (vLLM's PagedAttention) cuts the memory of every layer into pages of P tokens (16 by default) in
// one pool shared by all requests. A request owns a block table: the list of its pages, in order. Token t of a
// request is in page table[t / P], at slot t % P; a page is taken from the pool when the request reaches it
// and goes back when the request ends. Memory in use is then the tokens held, rounded up to a page per
// request, and a full pool is something the scheduler can see and act on (chapter 3.1's PagedScheduler).
//
// The pieces:
// - PagePool: the keys and values of every page, one [numPages, Hkv, P, D] tensor per layer and K/V, and the
//   bookkeeping: a reference count per page (0: free) and the free pages, least recently freed first.
// - BlockTable: one request's pages and the tokens they hold.
// - PagedLayerCache: one layer's view of a block table as the week 2 model's AttentionCache: it writes the new
//   keys and values into the request's pages and returns all of them gathered in order, so a prefill runs
//   through the unchanged week 2 model. A decode step reads the pages in place (paged-attention.ts).
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import type { AttentionCache, CachedKeysValues } from '../week2/index.ts';

export interface PagePoolOptions {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  /** Pages in the pool. */
  numPages: number;
  /** Tokens per page (default 16). */
  pageSize?: number;
  /** Chapter 3.2: a cache of full pages for requests with a common prefix to share (default none). */
  prefixCache?: PagePrefixCache | null;
}

/** The size of a pool for a model whose layers, kv heads and head size it takes from the model's config. */
export type PagePoolSize = Omit<PagePoolOptions, 'numLayers' | 'numKvHeads' | 'headDim'>;

/** What the pool, the block tables and the scheduler ask of chapter 3.2's prefix cache. */
export interface PagePrefixCache {
  /** Gives an empty table the cached pages of its prompt's longest cached prefix; returns the tokens they hold. */
  attach(table: BlockTable, prompt: readonly number[]): number;
  /** Registers the table's newly full pages. */
  register(table: BlockTable): void;
  /** The pool hands the page out again: forget what it held. */
  forget(page: number): void;
}

/** The pages of every layer's keys and values, shared by every request, and which of them are in use. */
export class PagePool {
  readonly numPages: number;
  readonly pageSize: number;
  /** Per layer: the keys and the values of every page, float32 [numPages, Hkv, pageSize, D]. */
  readonly keys: Tensor[];
  readonly values: Tensor[];
  /** How many block tables hold each page; 0 is a free page. */
  readonly refCounts: Int32Array;
  /**
   * The free pages, least recently freed first (a Set iterates in insertion order). With prefix caching a free
   * page may still hold a cached prefix: it is reused for it until allocate hands it out for something else.
   */
  readonly free: Set<number>;
  /** Chapter 3.2's cache of full pages by content; null without prefix caching. */
  readonly prefixCache: PagePrefixCache | null;
  /** Numbers the block tables, for messages. */
  private tablesMade = 0;

  constructor(options: PagePoolOptions) {
    const { numLayers, numKvHeads, headDim, numPages, pageSize = 16 } = options;
    for (const [name, value] of Object.entries({ numLayers, numKvHeads, headDim, numPages, pageSize })) {
      if (!Number.isInteger(value) || value < 1) throw new RangeError(`PagePool: ${name} must be an integer >= 1, got ${value}`);
    }
    this.numPages = numPages;
    this.pageSize = pageSize;
    // Kept: the pool outlives every forward pass (and its tc.tidy scope). Uninitialised: a slot is only ever read
    // after a token's key or value is written to it, and the memory of pages never used is never touched.
    const pages = () => Array.from({ length: numLayers }, () => tc.keep(tc.empty([numPages, numKvHeads, pageSize, headDim])));
    this.keys = pages();
    this.values = pages();
    this.refCounts = new Int32Array(numPages);
    this.free = new Set(Array.from({ length: numPages }, (_, i) => i));
    this.prefixCache = options.prefixCache ?? null;
  }

  /** A pool for a model with this config. Given. */
  static forModel(config: ModelConfig, size: PagePoolSize): PagePool {
    return new PagePool({ ...size, numLayers: config.numHiddenLayers, numKvHeads: config.numKeyValueHeads, headDim: config.headDim });
  }

  /** Pages no request holds (with prefix caching, some still hold a cached prefix until they are reused). */
  get freePages(): number {
    return this.free.size;
  }

  get usedPages(): number {
    return this.numPages - this.free.size;
  }

  /** A new block table in this pool, empty; `owner` names it in messages. */
  newTable(owner = `block table ${this.tablesMade}`): BlockTable {
    this.tablesMade++;
    return new BlockTable(this, owner);
  }

  /**
   * Takes the least recently freed page for a block table: its reference count becomes 1. What it held is
   * gone, so the prefix cache (chapter 3.2) forgets it. Throws when every page is in use.
   */
  allocate(): number {
    const page = this.free.values().next().value;
    if (page === undefined) {
      throw new RangeError(
        `PagePool.allocate: all ${this.numPages} pages (${this.pageSize} tokens each) are in use: release some, or make the pool larger`,
      );
    }
    this.free.delete(page);
    this.prefixCache?.forget(page);
    this.refCounts[page] = 1;
    return page;
  }

  /** Another block table shares the page (chapter 3.2): one more reference; a free page leaves the free set. */
  retain(page: number): void {
    this.refCounts[page]++;
    this.free.delete(page);
  }

  /** A block table lets go of the page: one reference less; at none, the page is free (the most recent). */
  release(page: number): void {
    if (this.refCounts[page] <= 0) throw new RangeError(`PagePool.release: page ${page} is already free (released twice?)`);
    if (--this.refCounts[page] === 0) this.free.add(page);
  }

  /**
   * Writes k and v [1, Hkv, L, D] (any strides) of one layer as the table's tokens start .. start + L - 1: token
   * t goes to slot t % P of page table.pages[t / P] (the table holds those pages: reserve them first).
   */
  write(layer: number, table: BlockTable, start: number, k: Tensor, v: Tensor): void {
    const l = k.shape[2];
    const p = this.pageSize;
    for (let t = start; t < start + l; ) {
      const page = table.pages[Math.floor(t / p)];
      const slot = t % p;
      const n = Math.min(p - slot, start + l - t); // the tokens that go to this page
      for (const [src, pages] of [
        [k, this.keys[layer]],
        [v, this.values[layer]],
      ]) {
        const from = tc.slice(src, [null, null, [t - start, t - start + n]]);
        const to = tc.slice(pages, [[page, page + 1], null, [slot, slot + n]]);
        pages.backend.unary('copy', from, to);
        from.dispose();
        to.dispose();
      }
      t += n;
    }
  }

  /** The keys and values of one layer for the table's first `length` tokens, in order: [1, Hkv, length, D] each. */
  gather(layer: number, table: BlockTable, length: number): { keys: Tensor; values: Tensor } {
    const pages = table.pages.slice(0, Math.ceil(length / this.pageSize));
    const inOrder = (all: Tensor) => {
      const joined = tc.concat(
        pages.map((page) => tc.slice(all, [[page, page + 1]])),
        2,
      ); // [1, Hkv, pages * P, D]
      return tc.slice(joined, [null, null, [0, length]]);
    };
    return { keys: inOrder(this.keys[layer]), values: inOrder(this.values[layer]) };
  }

  /**
   * Makes room in each table for `tokens` more tokens and checks them all (checkTables): what a model does before a
   * pass writes through the tables. Given.
   */
  prepare(tables: readonly BlockTable[], tokens: number): void {
    for (const table of tables) table.reserve(table.length + tokens);
    this.checkTables(tables);
  }

  /**
   * Checks block tables against the pool before anything reads or writes through them, so that a bookkeeping
   * bug is an error naming the request and the page, not a silent read of another request's keys. Every table
   * must hold pages for the tokens it has; each page must be in the pool, in use, and counted once for every
   * table that holds it; and a page a table writes next (from its slot `length` on) must be its alone.
   */
  checkTables(tables: readonly BlockTable[]): void {
    const p = this.pageSize;
    const holders = new Map<number, string[]>();
    for (const table of tables) {
      const who = `${table.owner}'s block table`;
      if (table.pages.length * p < table.length) {
        throw new RangeError(
          `${who} holds ${table.length} tokens in ${table.pages.length} pages of ${p}: a page is missing (reserve before writing)`,
        );
      }
      table.pages.forEach((page, block) => {
        if (!Number.isInteger(page) || page < 0 || page >= this.numPages) {
          throw new RangeError(`${who}: block ${block} holds page ${page}, outside the pool's ${this.numPages} pages`);
        }
        if (this.refCounts[page] <= 0 || this.free.has(page)) {
          throw new RangeError(
            `${who}: block ${block} holds page ${page}, which the pool counts as free: it was released while ${table.owner} still uses it`,
          );
        }
        const held = [...(holders.get(page) ?? []), `${table.owner} (block ${block})`];
        holders.set(page, held);
        if (held.length > this.refCounts[page]) {
          throw new RangeError(
            `page ${page} is held by ${held.join(' and ')}, but its reference count is ${this.refCounts[page]}: a page handed out twice, or shared without retain`,
          );
        }
        if (block >= Math.floor(table.length / p) && this.refCounts[page] > 1) {
          throw new RangeError(
            `${table.owner} writes its token ${Math.max(table.length, block * p)} into page ${page} (block ${block}), which ${this.refCounts[page]} block tables share: ` +
              'give it a copy of its own first (copy-on-write)',
          );
        }
      });
    }
  }

  /** Frees the pages' memory; the pool is unusable afterwards. */
  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t.dispose();
  }
}

/** One request's pages in the pool, in order, and the tokens they hold. */
export class BlockTable {
  /** Token t is in page pages[t / P], at slot t % P. */
  readonly pages: number[] = [];
  /** The tokens whose keys and values the pages hold, in order (chapter 3.2 hashes them). */
  readonly tokens: number[] = [];
  /** Chapter 3.2: the content hash of each full page registered so far, in order. */
  readonly hashes: string[] = [];

  constructor(
    readonly pool: PagePool,
    /** Who the table belongs to, for messages ("request 3"). */
    public owner: string,
  ) {}

  /** Tokens held (the position of the next one). */
  get length(): number {
    return this.tokens.length;
  }

  /** The pages this table still has to take from the pool to hold `end` tokens. */
  pagesNeeded(end: number): number {
    return Math.max(0, Math.ceil(end / this.pool.pageSize) - this.pages.length);
  }

  /** Takes pages from the pool until the table can hold `end` tokens (throws when the pool runs out). */
  reserve(end: number): void {
    for (let n = this.pagesNeeded(end); n > 0; n--) this.pages.push(this.pool.allocate());
  }

  /**
   * Counts ids as held, once their keys and values are written into the table's pages; with prefix caching,
   * the pages this fills are registered for other requests to share. Given.
   */
  commit(ids: readonly number[]): void {
    if (this.length + ids.length > this.pages.length * this.pool.pageSize) {
      throw new RangeError(
        `${this.owner}'s block table: ${ids.length} more tokens after ${this.length} need more than its ${this.pages.length} pages: reserve them first`,
      );
    }
    this.tokens.push(...ids);
    this.pool.prefixCache?.register(this);
  }

  /** Gives every page back to the pool (shared ones keep their other holders); the table is empty again. */
  release(): void {
    for (const page of this.pages) this.pool.release(page);
    this.pages.length = 0;
    this.tokens.length = 0;
    this.hashes.length = 0;
  }
}

/**
 * One layer's view of a block table, as the week 2 model's attention reads its cache: the new tokens' keys and
 * values go to the table's next slots (reserved before the pass), and every key and value so far comes back in
 * order with the causal mask. The table counts the tokens once the whole pass is done (BlockTable.commit).
 */
export class PagedLayerCache implements AttentionCache {
  constructor(
    readonly table: BlockTable,
    readonly layer: number,
  ) {}

  /** Tokens the table holds (the position of the first new one). */
  get offset(): number {
    return this.table.length;
  }

  updateAndFetch(k: Tensor, v: Tensor): CachedKeysValues {
    if (k.ndim !== 4 || k.shape[0] !== 1 || v.ndim !== 4 || !k.shape.every((n, i) => n === v.shape[i])) {
      throw new RangeError(
        `PagedLayerCache.updateAndFetch: expected k and v [1, Hkv, L, D] of one request, got k ${k.describe()}, v ${v.describe()}`,
      );
    }
    const { pool } = this.table;
    const start = this.table.length;
    pool.write(this.layer, this.table, start, k, v);
    return { ...pool.gather(this.layer, this.table, start + k.shape[2]), mask: 'causal' };
  }
}
