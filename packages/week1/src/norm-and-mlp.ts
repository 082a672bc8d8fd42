import type { Tensor } from '@tiny-llm/tensor-core';
import { NotImplemented } from './not-implemented.ts';

/**
 * RMSNorm over the last dimension (size `dim`): x / sqrt(mean(x^2) + eps) * weight, weight [dim].
 * x [..., dim] -> [..., dim], float32.
 *
 * Accumulate in float32 even when x is bfloat16: convert with `tc.astype(x, 'float32')` before squaring.
 * (Summing thousands of squares in bf16, with its 8 bits of mantissa, loses the small terms.)
 * Hint: `tc.mean(sq, -1, { keepdims: true })` and `tc.rsqrt`.
 */
export class RMSNorm {
  constructor(
    readonly dim: number,
    readonly weight: Tensor,
    readonly eps = 1e-5,
  ) {}

  forward(x: Tensor): Tensor {
    throw new NotImplemented('1.4', 'RMSNorm.forward');
  }
}

/**
 * SiLU: x * sigmoid(x), elementwise, float32.
 *
 * For very negative x the result is tiny but not zero: `tc.sigmoid` is computed stably, whereas
 * 1 / (1 + exp(-x)) overflows exp(100) to Infinity and loses the tail.
 */
export function silu(x: Tensor): Tensor {
  throw new NotImplemented('1.4', 'silu');
}

/**
 * The gated MLP of Qwen2, no biases: down(silu(gate(x)) * up(x)), with gate, up and down the linear layers
 * of wGate [hiddenDim, dim], wUp [hiddenDim, dim] and wDown [dim, hiddenDim]. x [..., dim] -> [..., dim].
 * Use your `linear` and `silu`.
 */
export class Qwen2MLP {
  constructor(
    readonly dim: number,
    readonly hiddenDim: number,
    readonly wGate: Tensor,
    readonly wUp: Tensor,
    readonly wDown: Tensor,
  ) {}

  forward(x: Tensor): Tensor {
    throw new NotImplemented('1.4', 'Qwen2MLP.forward');
  }
}
