// Chapter 3.2: prefix caching.
//
// The requests of a chat server repeat themselves: every turn of a conversation starts with the same system
// prompt and tool definitions, then the whole conversation so far. Their keys and values are the same in every
// request (a token's key depends only on the tokens before it), so once a page of them is computed, any request
// whose prompt starts with the same tokens can read that page instead of computing it again.
//
// - A full page is known by a hash of its tokens and of the hash of the page before it: equal hashes mean equal
//   tokens from the start of the prompt to the end of the page, so equal keys and values (a page's tokens alone
//   would not do: the same 16 tokens after another prefix have other keys).
// - commit (BlockTable) registers each page a request fills. A page is shared by reference counting (the
//   pool's retain/release); when its last request ends it goes back to the free pages but keeps its content
//   and its place here, until the pool hands it out again (allocate calls forget): the least recently freed
//   first, so the prefixes in use last stay longest.
// - A new request takes the cached pages of its prompt's longest cached prefix of full pages (attach). Where
//   its prompt and a cached page part ways inside a page, it cannot share that page (it would write its own
//   tokens over the other request's), so it copies the common part into a page of its own: copy-on-write, at
//   the first page that differs. It then prefills only what no cached page holds.
// - The page a request is still filling is registered too, as a page to copy from only (it is never shared:
//   its owner writes into it): its slots so far never change. The next turn of a chat copies the end of the
//   last reply from it, and computes only the new message.
import { createHash } from 'node:crypto';
import * as tc from '@tiny-llm/tensor-core';
import type { BlockTable, PagePool, PagePrefixCache } from './paged-kv-cache.ts';

/** The hash before a prompt's first page. */
export const ROOT_HASH = '';

/** The content hash of a full page: its tokens after the pages whose hash is `parent`. */
export function pageHash(parent: string, tokens: readonly number[]): string {
  return createHash('sha256')
    .update(`${parent}:${tokens.join(',')}`)
    .digest('hex');
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

  /** Pages whose content is cached (in use or free, full or being filled). */
  get size(): number {
    return this.entryOf.size;
  }

  /**
   * Gives an empty table the cached pages of the longest cached prefix of `prompt` and returns the tokens they
   * hold: the full pages are shared (retained), and the first page that differs is copied up to where it
   * differs (copy-on-write). The prompt's last token is never taken from the cache: its logits give the
   * request's first token, so at least it is prefilled.
   */
  attach(table: BlockTable, prompt: readonly number[]): number {
    if (table.length !== 0) throw new RangeError(`PrefixCache.attach: ${table.owner}'s block table already holds ${table.length} tokens`);
    const { pool } = table;
    const p = pool.pageSize;
    const limit = prompt.length - 1;
    let parent = ROOT_HASH;
    while (table.length + p <= limit) {
      const tokens = prompt.slice(table.length, table.length + p);
      const hash = pageHash(parent, tokens);
      const page = this.pageOf.get(hash);
      if (page === undefined) break;
      pool.retain(page);
      table.pages.push(page);
      table.tokens.push(...tokens);
      table.hashes.push(hash);
      parent = hash;
    }
    // The first page that differs: the cached page after `parent` that shares the most tokens with the rest.
    const rest = prompt.slice(table.length, limit);
    let source = -1;
    let common = 0;
    for (const page of this.children.get(parent) ?? []) {
      const n = commonLength(this.entryOf.get(page)!.tokens, rest);
      if (n > common) [source, common] = [page, n];
    }
    if (common > 0) {
      // Held while copying, so that allocate cannot hand out the very page being copied.
      pool.retain(source);
      if (pool.freePages > 0) {
        const copy = pool.allocate();
        copyTokens(pool, source, copy, common);
        table.pages.push(copy);
        table.tokens.push(...rest.slice(0, common));
      }
      pool.release(source);
    }
    return table.length;
  }

  /**
   * Registers the table's full pages not yet registered, and the page it is filling as a page to copy from
   * (BlockTable.commit calls it after every pass).
   */
  register(table: BlockTable): void {
    const p = table.pool.pageSize;
    const parentOf = (i: number) => (i === 0 ? ROOT_HASH : table.hashes[i - 1]);
    for (let i = table.hashes.length; (i + 1) * p <= table.length; i++) {
      const tokens = table.tokens.slice(i * p, (i + 1) * p);
      const hash = pageHash(parentOf(i), tokens);
      table.hashes.push(hash);
      const page = table.pages[i];
      const entry = this.entryOf.get(page);
      if (entry?.hash) continue; // a page shared from this cache
      // The page was registered while being filled: it is full now.
      if (entry) this.forget(page);
      // Another page may hold the same tokens already (two requests prefilled them at once): keep that one.
      if (!this.pageOf.has(hash)) this.add(page, { hash, parent: parentOf(i), tokens });
    }
    const last = table.hashes.length;
    if (last * p < table.length) {
      this.forget(table.pages[last]);
      this.add(table.pages[last], { hash: null, parent: parentOf(last), tokens: table.tokens.slice(last * p) });
    }
  }

  /** The pool reuses the page for something else: forget what it held. */
  forget(page: number): void {
    const entry = this.entryOf.get(page);
    if (!entry) return;
    this.entryOf.delete(page);
    if (entry.hash) this.pageOf.delete(entry.hash);
    const after = this.children.get(entry.parent)!;
    after.delete(page);
    if (after.size === 0) this.children.delete(entry.parent);
  }

  /** Caches the page: by its hash when it is full, and after its parent. */
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
