// Chapter 3.5's KV cache transfer, as the tests expect it: a request's pages read straight out of the pool's
// arrays in the transfer's layout, and the wrong transfers of the known mistakes (pages in the pool's order,
// the block table ignored, keys and values swapped, the last partial page not sent, ...), to name the mistake a
// failing export matches.
import { assert, expect } from 'vitest';
import { expectValues, type Mistake } from './checks.ts';

/** A pool's contents as plain arrays: per layer, keys and values float32 [numPages, Hkv, P, D]. */
export interface PoolArrays {
  keys: Float32Array[];
  values: Float32Array[];
  numKvHeads: number;
  pageSize: number;
  headDim: number;
}

/** What the checks read of a transfer (chapter 3.5's KvTransfer). */
export interface TransferLike {
  tokens: readonly number[];
  numTokens: number;
  pageSize: number;
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  pages: readonly { index: number; data: Float32Array; checksums: readonly number[] }[];
}

/** How a payload may be laid out: the chapter's, or the known wrong ones. */
type Layout = 'layer-kv' | 'kv-layer' | 'values-first';

/** Floats of one page of one layer's keys (or values). */
const pageFloats = (pool: PoolArrays) => pool.numKvHeads * pool.pageSize * pool.headDim;

/** The payload of pool page `page`: [numLayers, 2, Hkv, P, D] in the chapter's layout, or a wrong one. */
export function pagePayload(pool: PoolArrays, page: number, layout: Layout = 'layer-kv'): Float32Array {
  const n = pageFloats(pool);
  const layers = pool.keys.length;
  const out = new Float32Array(layers * 2 * n);
  for (let layer = 0; layer < layers; layer++) {
    const [first, second] = layout === 'values-first' ? [pool.values, pool.keys] : [pool.keys, pool.values];
    // [layer, kv] in the chapter's layout; [kv, layer] when every layer's keys come before the values.
    const at = (kv: number) => (layout === 'kv-layer' ? (kv * layers + layer) * n : (layer * 2 + kv) * n);
    out.set(first[layer].subarray(page * n, (page + 1) * n), at(0));
    out.set(second[layer].subarray(page * n, (page + 1) * n), at(1));
  }
  return out;
}

const joined = (parts: readonly Float32Array[]) => {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

/** The known wrong payloads of an export of `pages` (the table's first pages, in block order). */
export function exportMistakes(pool: PoolArrays, pages: readonly number[]): Mistake[] {
  const payloads =
    (order: readonly number[], layout: Layout = 'layer-kv') =>
    () =>
      joined(order.map((p) => pagePayload(pool, p, layout)));
  const sorted = [...pages].sort((a, b) => a - b);
  const mistakes: Mistake[] = [];
  if (sorted.some((p, j) => p !== pages[j])) {
    mistakes.push({
      explanation: `pages sent in the pool's order (${sorted.join(', ')}), not the block table's (${pages.join(', ')}): the table is the only place the order of a request's tokens is kept.`,
      values: payloads(sorted),
    });
  }
  const identity = pages.map((_, j) => j);
  if (identity.some((p, j) => p !== pages[j])) {
    mistakes.push({
      explanation: 'block j read as pool page j, the block table ignored: block j of the request is page table.pages[j].',
      values: payloads(identity),
    });
  }
  mistakes.push(
    {
      explanation: "keys and values swapped: a layer's keys are at [layer, 0] of the payload, its values at [layer, 1].",
      values: payloads(pages, 'values-first'),
    },
    {
      explanation:
        "every layer's keys, then every layer's values: the payload is [numLayers, 2, Hkv, P, D], a layer's keys and values side by side.",
      values: payloads(pages, 'kv-layer'),
    },
  );
  return mistakes;
}

/**
 * A transfer against the pool it was exported from: the header, ceil(numTokens / P) pages indexed 0, 1, ... in
 * block order, each page's payload read by the test out of the pool's arrays, and a checksum per layer of it.
 */
export function expectExport(
  transfer: TransferLike,
  pool: PoolArrays,
  table: { pages: readonly number[]; tokens: readonly number[] },
  numTokens: number,
  checksum: (data: Float32Array) => number,
): void {
  const p = pool.pageSize;
  const header = {
    numTokens: transfer.numTokens,
    pageSize: transfer.pageSize,
    numLayers: transfer.numLayers,
    numKvHeads: transfer.numKvHeads,
    headDim: transfer.headDim,
  };
  expect(header, 'the header: the tokens sent and the shape of the pool').toEqual({
    numTokens,
    pageSize: p,
    numLayers: pool.keys.length,
    numKvHeads: pool.numKvHeads,
    headDim: pool.headDim,
  });
  expect([...transfer.tokens], `the tokens: the table's first ${numTokens}`).toEqual(table.tokens.slice(0, numTokens));
  const count = Math.ceil(numTokens / p);
  const sent = transfer.pages.length;
  if (sent !== count) {
    const lines = [`${sent} pages sent for ${numTokens} tokens in pages of ${p}: expected ${count} (ceil(${numTokens} / ${p})).`];
    if (sent === Math.floor(numTokens / p))
      lines.push(
        `It matches a known mistake: the last partial page not sent: its first ${numTokens % p} slots hold tokens too (round up).`,
      );
    if (sent === table.pages.length)
      lines.push(
        `It matches a known mistake: every page of the table sent (${table.pages.length}); only the pages of the first numTokens tokens go.`,
      );
    assert.fail(lines.join('\n'));
  }
  const pages = table.pages.slice(0, count);
  transfer.pages.forEach((page, j) => {
    const poolIndex =
      page.index === pages[j] && pages[j] !== j
        ? ` It matches a known mistake: the pool's page number sent as the index; the index is the block (position in the table).`
        : '';
    expect(page.index, `page ${j}'s index: the block it is in the request's table.${poolIndex}`).toBe(j);
  });
  const perLayer = pageFloats(pool) * 2;
  expectValues(
    joined(transfer.pages.map((page) => page.data)),
    joined(pages.map((page) => pagePayload(pool, page))),
    [count, pool.keys.length, 2, pool.numKvHeads, p, pool.headDim],
    {
      atol: 0,
      what: `the pages' payloads (block table ${pages.join(', ')})`,
      axes: ['block', 'layer', 'kv', 'h', 'slot', 'd'],
      mistakes: exportMistakes(pool, pages),
    },
  );
  transfer.pages.forEach((page, j) => {
    const expected = Array.from({ length: pool.keys.length }, (_, layer) =>
      checksum(page.data.subarray(layer * perLayer, (layer + 1) * perLayer)),
    );
    const whole = checksum(page.data);
    const hint = page.checksums.every((c) => c === whole)
      ? " It matches a known mistake: the whole page's checksum for every layer; each layer's part ([layer, 0] and [layer, 1]) has its own."
      : '';
    expect([...page.checksums], `page ${j}: one checksum per layer, of that layer's keys and values.${hint}`).toEqual(expected);
  });
}

/** The payloads of a transfer with each page's keys and values swapped. */
function swappedKeysValues(transfer: TransferLike): Float32Array {
  const n = transfer.numKvHeads * transfer.pageSize * transfer.headDim;
  const out = joined(transfer.pages.map((page) => page.data));
  for (let at = 0; at < out.length; at += 2 * n) {
    const keys = out.slice(at, at + n);
    out.copyWithin(at, at + n, at + 2 * n);
    out.set(keys, at + n);
  }
  return out;
}

/**
 * A transfer imported into a pool: the pages of the new table, read by the test out of the pool's arrays, hold
 * the payloads in block order.
 */
export function expectImported(
  pool: PoolArrays,
  table: { pages: readonly number[]; tokens: readonly number[]; length: number },
  transfer: TransferLike,
): void {
  const count = transfer.pages.length;
  expect([table.length, [...table.tokens]], "the table holds the transfer's tokens").toEqual([transfer.numTokens, [...transfer.tokens]]);
  expect(table.pages.length, `the table holds ceil(${transfer.numTokens} / ${transfer.pageSize}) pages`).toBe(count);
  const mistakes: Mistake[] = [
    {
      explanation: "keys and values swapped: a layer's keys are at [layer, 0] of the payload, its values at [layer, 1].",
      values: () => swappedKeysValues(transfer),
    },
  ];
  if (count > 1) {
    mistakes.push({
      explanation: 'the pages written in reverse: block j of the transfer is page table.pages[j].',
      values: () => joined([...transfer.pages].reverse().map((page) => page.data)),
    });
  }
  expectValues(
    joined(table.pages.map((page) => pagePayload(pool, page))),
    joined(transfer.pages.map((page) => page.data)),
    [count, transfer.numLayers, 2, transfer.numKvHeads, transfer.pageSize, transfer.headDim],
    {
      atol: 0,
      what: `the pool's pages ${table.pages.join(', ')} after the import`,
      axes: ['block', 'layer', 'kv', 'h', 'slot', 'd'],
      mistakes,
    },
  );
}
