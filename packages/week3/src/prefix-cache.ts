import * as tc from '@tiny-llm/tensor-core';
import type { BlockTable, PagePool, PagePrefixCache } from './paged-kv-cache.ts';
import { NotImplemented } from '@tiny-llm/week1/not-implemented';

/** The hash before a prompt's first page. */
export const ROOT_HASH = '';

/**
 * The content hash of a full page: its tokens after the pages whose hash is `parent`, as a string: sha256
 * (createHash from node:crypto) of the parent's hash and the tokens, written out unambiguously.
 */
export function pageHash(parent: string, tokens: readonly number[]): string {
  throw new NotImplemented('3.2', 'pageHash');
}

/** What a cached page holds. */
interface Entry {
  /** Its content hash; null for a page still being filled (a page to copy from, never to share). */
  hash: string | null;
  /** The hash of the page before it (ROOT_HASH for a first page). */
  parent: string;
  tokens: readonly number[];
}

/** The number of leading tokens a and b share. */
function commonLength(a: readonly number[], b: readonly number[]): number {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  return n;
}

/** The full pages of one pool, by content, for requests to share: give it to the pool (PagePoolOptions.prefixCache). */
export class PrefixCache implements PagePrefixCache {
  /** The page holding each hash. */
  private readonly pageOf = new Map<string, number>();
  /** What each cached page holds. */
  private readonly entryOf = new Map<number, Entry>();
  /** The cached pages that follow each hash: where to look for a page that is only partly the same. */
  private readonly children = new Map<string, Set<number>>();

  /** Pages whose content is cached (in use or free). */
  get size(): number {
    return this.entryOf.size;
  }

  /**
   * Gives an empty table the cached pages of the longest cached prefix of `prompt` and returns the tokens they
   * hold. The prompt's last token is never taken from the cache (its logits give the request's first token):
   * consider only its first prompt.length - 1 tokens.
   * 1. Full pages: while the next P tokens make a full page, hash them after the hash so far; a page of the
   *    cache with that hash is shared: table.pool.retain(page), then push it, its tokens and its hash to the table.
   * 2. The first page that differs: of the cached pages after the last hash (this.children, full ones and ones
   *    being filled), the one that shares the most leading tokens with the rest of the prompt. Copy those tokens into a page of the table's
   *    own (copy-on-write): retain the source while you allocate the copy (allocate could hand out the source
   *    itself, a free page), copyTokens, release the source. Skip it if the pool has no free page.
   * Throws a RangeError if the table already holds tokens.
   */
  attach(table: BlockTable, prompt: readonly number[]): number {
    throw new NotImplemented('3.2', 'PrefixCache.attach');
  }

  /**
   * Registers the table's pages (BlockTable.commit calls it after every pass):
   * - each full page from table.hashes.length on: hash it after the page before it (ROOT_HASH before the first),
   *   push the hash to table.hashes, and cache the page under it (this.add), unless the page is a full page of
   *   this cache already (shared from it) or another page holds that hash (two requests computed the same tokens
   *   at once). A page registered while it was being filled is forgotten first: it is full now.
   * - the page it is still filling, if any: cached with hash null and its tokens so far, as a page to copy from
   *   (attach's copy-on-write), replacing what was registered of it before.
   */
  register(table: BlockTable): void {
    throw new NotImplemented('3.2', 'PrefixCache.register');
  }

  /** The pool reuses the page for something else: forget what it held (its hash, its entry, its place as a child). */
  forget(page: number): void {
    throw new NotImplemented('3.2', 'PrefixCache.forget');
  }

  /** Caches the page: by its hash when it is full, and after its parent. Given. */
  private add(page: number, entry: Entry): void {
    this.entryOf.set(page, entry);
    if (entry.hash) this.pageOf.set(entry.hash, page);
    const after = this.children.get(entry.parent) ?? new Set<number>();
    this.children.set(entry.parent, after.add(page));
  }
}

/** Copies the keys and values of the first `tokens` slots of page `from` into page `to`, in every layer. */
function copyTokens(pool: PagePool, from: number, to: number, tokens: number): void {
  for (const pages of [...pool.keys, ...pool.values]) {
    const src = tc.slice(pages, [[from, from + 1], null, [0, tokens]]);
    const dst = tc.slice(pages, [[to, to + 1], null, [0, tokens]]);
    pages.backend.unary('copy', src, dst);
    src.dispose();
    dst.dispose();
  }
}
