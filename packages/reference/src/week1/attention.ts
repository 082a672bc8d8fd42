// Chapter 1.1: softmax, linear layers, scaled dot-product attention and multi-head attention.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';

/** Week 1 computes in float32: half-precision inputs are widened first, so no result is rounded to bf16. */
const float32 = (x: Tensor): Tensor => (x.dtype === 'float32' ? x : tc.astype(x, 'float32'));

/** exp(x) / sum(exp(x)) along `axis`. */
export function softmax(x: Tensor, axis: number): Tensor {
  const x32 = float32(x);
  // Subtracting the largest value cancels in the ratio but keeps every exp() at most 1: exp(1000) alone
  // overflows float32 to Infinity, and Infinity / Infinity is NaN.
  const shifted = tc.sub(x32, tc.max(x32, axis, { keepdims: true }));
  const e = tc.exp(shifted);
  return tc.div(e, tc.sum(e, axis, { keepdims: true }));
}

/** x @ w.T + bias: x [..., in], w [out, in] (PyTorch's layout), bias [out]; returns [..., out]. */
export function linear(x: Tensor, w: Tensor, bias?: Tensor): Tensor {
  if (w.ndim !== 2 || x.ndim === 0 || x.shape[x.ndim - 1] !== w.shape[1]) {
    throw new RangeError(`linear: expected w of shape [out, ${x.shape[x.ndim - 1]}] for x ${x.describe()}, got w ${w.describe()}`);
  }
  if (bias && (bias.ndim !== 1 || bias.shape[0] !== w.shape[0])) {
    throw new RangeError(`linear: expected bias of shape [${w.shape[0]}], got ${bias.describe()}`);
  }
  // transpose() is a view with swapped strides: matmul reads w in place, the weights are never copied.
  const y = tc.matmul(float32(x), tc.transpose(w));
  return bias ? tc.add(y, bias) : y;
}

/**
 * softmax(q k^T * scale + mask) v for q [...batch, L, D], k and v [...batch, S, D]; returns [...batch, L, D].
 * The mask is added to the scores [...batch, L, S] (broadcast), so -Infinity hides a key.
 */
export function scaledDotProductAttentionSimple(q: Tensor, k: Tensor, v: Tensor, scale?: number, mask?: Tensor): Tensor {
  checkAttentionShapes(q, k, v);
  const d = q.shape[q.ndim - 1];
  // Dot products of D random terms grow like sqrt(D); scaling them back keeps softmax away from one-hot.
  const factor = scale ?? 1 / Math.sqrt(d);
  let scores = tc.mul(tc.matmul(float32(q), tc.swapaxes(float32(k), -1, -2)), factor); // [...batch, L, S]
  if (mask) scores = tc.add(scores, mask);
  return tc.matmul(softmax(scores, -1), float32(v));
}

function checkAttentionShapes(q: Tensor, k: Tensor, v: Tensor): void {
  const got = `(q ${q.describe()}, k ${k.describe()}, v ${v.describe()})`;
  if (q.ndim < 2 || k.ndim < 2 || v.ndim < 2) {
    throw new RangeError(`scaledDotProductAttentionSimple: expected q, k and v of shape [...batch, length, dims] ${got}`);
  }
  if (k.shape[k.ndim - 1] !== q.shape[q.ndim - 1]) {
    throw new RangeError(`scaledDotProductAttentionSimple: k must have q's last dimension ${q.shape[q.ndim - 1]} ${got}`);
  }
  if (v.shape[v.ndim - 2] !== k.shape[k.ndim - 2]) {
    throw new RangeError(`scaledDotProductAttentionSimple: v must have one row per key (${k.shape[k.ndim - 2]}) ${got}`);
  }
}

/**
 * Multi-head attention without biases: project, split E into H heads of D = E / H, attend per head, merge,
 * project back. Weights are [E, E] in PyTorch's [out, in] layout.
 */
export class SimpleMultiHeadAttention {
  readonly headDim: number;

  constructor(
    readonly hiddenSize: number,
    readonly numHeads: number,
    readonly wq: Tensor,
    readonly wk: Tensor,
    readonly wv: Tensor,
    readonly wo: Tensor,
  ) {
    if (!Number.isInteger(hiddenSize / numHeads)) {
      throw new RangeError(`SimpleMultiHeadAttention: hiddenSize ${hiddenSize} is not a multiple of numHeads ${numHeads}`);
    }
    for (const [name, w] of Object.entries({ wq, wk, wv, wo })) {
      if (w.ndim !== 2 || w.shape[0] !== hiddenSize || w.shape[1] !== hiddenSize) {
        const expected = `[${hiddenSize}, ${hiddenSize}]`;
        throw new RangeError(`SimpleMultiHeadAttention: expected ${name} of shape ${expected}, got ${w.describe()}`);
      }
    }
    this.headDim = hiddenSize / numHeads;
  }

  /** query [N, L, E], key and value [N, S, E], mask broadcastable to [N, H, L, S]; returns [N, L, E]. */
  forward(query: Tensor, key: Tensor, value: Tensor, mask?: Tensor): Tensor {
    const q = this.splitHeads(linear(query, this.wq));
    const k = this.splitHeads(linear(key, this.wk));
    const v = this.splitHeads(linear(value, this.wv));
    const heads = scaledDotProductAttentionSimple(q, k, v, undefined, mask); // [N, H, L, D]
    const [n, , l] = heads.shape;
    const merged = tc.reshape(tc.transpose(heads, [0, 2, 1, 3]), [n, l, this.hiddenSize]);
    return linear(merged, this.wo);
  }

  /** [N, L, E] -> [N, H, L, D]: each head attends over its own slice of the hidden dimension. */
  private splitHeads(x: Tensor): Tensor {
    if (x.ndim !== 3) {
      throw new RangeError(`SimpleMultiHeadAttention: expected inputs of shape [N, L, ${this.hiddenSize}], got ${x.describe()}`);
    }
    const [n, l] = x.shape;
    return tc.transpose(tc.reshape(x, [n, l, this.numHeads, this.headDim]), [0, 2, 1, 3]);
  }
}
