import type { Tensor } from '@tiny-llm/tensor-core';
import { NotImplemented } from './not-implemented.ts';

/**
 * The additive causal mask, float32 [L, S]: 0 where query i may see key j, -Infinity elsewhere.
 *
 * The L queries are the last L of the S tokens (earlier tokens may already be cached), so query i sits at
 * position i + S - L and sees the keys j <= i + S - L. The mask is aligned to the bottom right: with L = 1
 * the single query sees every key. (PyTorch's `is_causal` aligns it to the top left instead.)
 * Hint: `tc.arange(l)` reshaped to a column [L, 1] and `tc.arange(s)` to a row [1, S] broadcast against
 * each other to the whole grid; then `tc.greater` and `tc.where(hidden, -Infinity, tc.zeros([l, s]))`.
 */
export function causalMask(l: number, s: number): Tensor {
  throw new NotImplemented('1.3', 'causalMask');
}

/**
 * Attention where Hq query heads share Hkv key/value heads (Hq a multiple of Hkv, G = Hq / Hkv):
 * q [..., Hq, L, D], k and v [..., Hkv, S, D] -> [..., Hq, L, D]. Query head h reads kv head floor(h / G).
 * `scale` defaults to 1 / sqrt(D). `mask` is 'causal' (use causalMask(L, S)) or an additive tensor
 * broadcastable to [..., Hq, L, S].
 *
 * Don't copy K and V G times: that is the memory GQA exists to save. Instead
 * 1. reshape q to [..., Hkv, G, L, D]: consecutive query heads now line up with their kv head;
 * 2. give k and v a size-1 group axis, [..., Hkv, 1, S, D] (`tc.expandDims(k, -3)`): matmul broadcasts it;
 * 3. an explicit mask may differ per query head: `tc.broadcastTo` it to [..., Hq, L, S], then reshape it to
 *    [..., Hkv, G, L, S] like q (the causal mask [L, S] broadcasts as it is);
 * 4. attend, and reshape the result back to [..., Hq, L, D].
 */
export function scaledDotProductAttentionGrouped(q: Tensor, k: Tensor, v: Tensor, scale?: number, mask?: Tensor | 'causal'): Tensor {
  throw new NotImplemented('1.3', 'scaledDotProductAttentionGrouped');
}
