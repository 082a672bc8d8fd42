// Chapter 1.3: the causal mask and grouped-query attention.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { scaledDotProductAttentionSimple } from './attention.ts';

/**
 * The additive causal mask [L, S]: 0 where query i may see key j, -Infinity elsewhere. The L queries are
 * the last L of the S tokens, so query i sits at position i + S - L and sees keys j <= i + S - L (the mask is
 * aligned to the bottom right; PyTorch's is_causal aligns it to the top left, which is wrong when L < S).
 */
export function causalMask(l: number, s: number): Tensor {
  if (!Number.isInteger(l) || !Number.isInteger(s) || l < 1 || s < l) {
    throw new RangeError(`causalMask: expected 1 <= L <= S, got L = ${l}, S = ${s}`);
  }
  const query = tc.reshape(tc.arange(l), [l, 1]);
  const key = tc.reshape(tc.arange(s), [1, s]);
  const hidden = tc.greater(key, tc.add(query, s - l)); // [L, S], broadcast
  return tc.where(hidden, -Infinity, tc.zeros([l, s]));
}

/**
 * Attention where Hq query heads share Hkv key/value heads (Hq a multiple of Hkv): q [..., Hq, L, D], k and
 * v [..., Hkv, S, D]; returns [..., Hq, L, D]. Query head h reads kv head floor(h / (Hq / Hkv)). The mask is
 * an additive tensor broadcastable to [..., Hq, L, S], or 'causal'.
 */
export function scaledDotProductAttentionGrouped(q: Tensor, k: Tensor, v: Tensor, scale?: number, mask?: Tensor | 'causal'): Tensor {
  checkGroupedShapes(q, k, v);
  const lead = q.shape.slice(0, -3);
  const [hq, l, d] = q.shape.slice(-3);
  const [hkv, s] = k.shape.slice(-3);
  const groups = hq / hkv;
  // Consecutive query heads share a kv head, so splitting the head axis into [Hkv, G] lines each group up
  // with its kv head. K and V get a size-1 group axis that matmul broadcasts: they are read, never copied.
  const qGrouped = tc.reshape(q, [...lead, hkv, groups, l, d]);
  const kGrouped = tc.expandDims(k, -3); // [..., Hkv, 1, S, D]
  const vGrouped = tc.expandDims(v, -3);
  let maskGrouped: Tensor | undefined;
  if (mask === 'causal') maskGrouped = causalMask(l, s);
  else if (mask) maskGrouped = groupMask(mask, [...lead, hkv, groups, l, s]);
  const out = scaledDotProductAttentionSimple(qGrouped, kGrouped, vGrouped, scale, maskGrouped);
  return tc.reshape(out, [...lead, hq, l, d]);
}

/**
 * An explicit mask, broadcastable to the scores [..., Hq, L, S], in the grouped layout [..., Hkv, G, L, S].
 * (The causal mask [L, S] is the same for every head and broadcasts against the grouped scores as it is.)
 */
function groupMask(mask: Tensor, groupedShape: number[]): Tensor {
  const [hkv, groups, l, s] = groupedShape.slice(-4);
  const scoresShape = [...groupedShape.slice(0, -4), hkv * groups, l, s];
  const lead = scoresShape.length - mask.ndim;
  if (lead < 0 || mask.shape.some((m, i) => m !== 1 && m !== scoresShape[lead + i])) {
    const scores = `the scores ${tc.formatShape(scoresShape)} ([..., Hq, L, S])`;
    throw new RangeError(`scaledDotProductAttentionGrouped: expected a mask broadcastable to ${scores}, got ${mask.describe()}`);
  }
  // A mask may differ per query head: give it all Hq heads first (a view), then split them like q.
  return tc.reshape(tc.broadcastTo(mask, scoresShape), groupedShape);
}

function checkGroupedShapes(q: Tensor, k: Tensor, v: Tensor): void {
  const op = 'scaledDotProductAttentionGrouped';
  const got = `(q ${q.describe()}, k ${k.describe()}, v ${v.describe()})`;
  if (q.ndim < 3 || k.ndim !== q.ndim || v.ndim !== q.ndim) {
    throw new RangeError(`${op}: expected q, k and v of shape [..., heads, length, dims] with the same rank ${got}`);
  }
  const [hq, , d] = q.shape.slice(-3);
  const [hkv, s, dk] = k.shape.slice(-3);
  if (hq % hkv !== 0) {
    const shapes = `(q ${q.describe()}, k ${k.describe()})`;
    throw new RangeError(`${op}: q has ${hq} heads, not a multiple of k's ${hkv} heads ${shapes}`);
  }
  if (dk !== d) throw new RangeError(`${op}: k must have q's head dimension ${d} ${got}`);
  if (v.shape[v.ndim - 3] !== hkv || v.shape[v.ndim - 2] !== s) {
    throw new RangeError(`${op}: v must have k's ${hkv} heads and ${s} positions ${got}`);
  }
}
