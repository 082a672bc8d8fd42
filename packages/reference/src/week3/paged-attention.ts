// Chapter 3.1 (solution): decode attention over a paged KV cache, the given wrapper of the kernel.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { week3Kernels } from './native.ts';

/**
 * One decode step of attention over pages: q [B, Hq, D] (one query per row) against row b's first lengths[b]
 * tokens, whose keys and values are in keyPages and valuePages [N, Hkv, P, D] at the pages blockTables[b] lists
 * (token t in page blockTables[b][t / P], slot t % P) -> float32 [B, Hq, D]. Query head h reads kv head
 * h / (Hq / Hkv). The scale defaults to 1 / sqrt(D). Given.
 */
export function pagedAttention(
  q: Tensor,
  keyPages: Tensor,
  valuePages: Tensor,
  blockTables: readonly (readonly number[])[],
  lengths: readonly number[],
  options: { scale?: number } = {},
): Tensor {
  const b = q.shape[0];
  if (q.ndim !== 3 || blockTables.length !== b || lengths.length !== b) {
    throw new RangeError(
      `pagedAttention: expected q [B, Hq, D] with one block table and one length per row, got q ${q.describe()}, ${blockTables.length} block tables, ${lengths.length} lengths`,
    );
  }
  return tc.tidy(() => {
    const qc = tc.contiguous(q.dtype === 'float32' ? q : tc.astype(q, 'float32'));
    const out = tc.empty(q.shape, 'float32');
    const tables = blockTablesTensor(blockTables);
    const lengthsT = tc.tensor(Int32Array.from(lengths), { dtype: 'int32', shape: [b] });
    const scale = options.scale ?? 1 / Math.sqrt(q.shape[2]);
    week3Kernels().pagedAttention(
      qc.native(),
      keyPages.native(),
      valuePages.native(),
      tables.native(),
      lengthsT.native(),
      out.native(),
      scale,
    );
    return out;
  });
}

/** Block tables as one int32 [B, M] tensor, M the longest; a shorter row's unused entries are -1 (never read). Given. */
export function blockTablesTensor(blockTables: readonly (readonly number[])[]): Tensor {
  const width = Math.max(1, ...blockTables.map((t) => t.length));
  const tables = new Int32Array(blockTables.length * width).fill(-1);
  blockTables.forEach((t, i) => tables.set(t, i * width));
  return tc.tensor(tables, { dtype: 'int32', shape: [blockTables.length, width] });
}
