import type { Tensor } from '@tiny-llm/tensor-core';
import { NotImplemented } from './not-implemented.ts';

/**
 * exp(x) / sum(exp(x)) along `axis` (negative axes count from the end). Same shape as x, float32.
 *
 * Make it numerically stable: subtract the maximum along the axis first (it cancels in the ratio). The
 * naive form overflows for inputs near 1000, since exp(1000) is Infinity in float32.
 * Hint: `tc.max(x, axis, { keepdims: true })` keeps the reduced axis as size 1, so it broadcasts against x.
 */
export function softmax(x: Tensor, axis: number): Tensor {
  throw new NotImplemented('1.1', 'softmax');
}

/**
 * A linear layer: x @ w.T + bias. x [..., in], w [out, in] (PyTorch's layout), bias [out]; returns [..., out].
 *
 * Hint: `tc.transpose(w)` is a view with swapped strides, and `tc.matmul` reads views as they are: pass the
 * transposed view, don't copy the weights.
 */
export function linear(x: Tensor, w: Tensor, bias?: Tensor): Tensor {
  throw new NotImplemented('1.1', 'linear');
}

/**
 * softmax(q @ k^T * scale + mask) @ v.
 *
 * q [...batch, L, D], k and v [...batch, S, D] -> [...batch, L, D]. The scores q @ k^T are [...batch, L, S];
 * softmax runs over the last axis (the keys). `scale` defaults to 1 / sqrt(D). `mask` is an additive float
 * tensor broadcastable to the scores: 0 keeps a key, -Infinity hides it.
 * Hint: k^T is `tc.swapaxes(k, -1, -2)`.
 */
export function scaledDotProductAttentionSimple(q: Tensor, k: Tensor, v: Tensor, scale?: number, mask?: Tensor): Tensor {
  throw new NotImplemented('1.1', 'scaledDotProductAttentionSimple');
}

/**
 * Multi-head attention without biases. E = hiddenSize, H = numHeads, D = E / H. wq, wk, wv and wo are
 * [E, E] in the [out, in] layout of `linear`.
 */
export class SimpleMultiHeadAttention {
  constructor(
    readonly hiddenSize: number,
    readonly numHeads: number,
    readonly wq: Tensor,
    readonly wk: Tensor,
    readonly wv: Tensor,
    readonly wo: Tensor,
  ) {}

  /**
   * query [N, L, E], key and value [N, S, E], mask broadcastable to [N, H, L, S] -> [N, L, E].
   *
   * 1. Project: q = linear(query, wq), and the same for k and v.
   * 2. Split the heads: reshape [N, L, E] to [N, L, H, D], then transpose to [N, H, L, D].
   * 3. Attend per head with scaledDotProductAttentionSimple (the heads are one more batch dimension).
   * 4. Merge: transpose back to [N, L, H, D], reshape to [N, L, E], and project with wo.
   */
  forward(query: Tensor, key: Tensor, value: Tensor, mask?: Tensor): Tensor {
    throw new NotImplemented('1.1', 'SimpleMultiHeadAttention.forward');
  }
}
