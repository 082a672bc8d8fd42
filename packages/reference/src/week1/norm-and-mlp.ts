// Chapter 1.4: RMSNorm, SiLU and the Qwen2 MLP.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { linear } from './attention.ts';

/** Week 1 computes in float32: half-precision inputs are widened first, so no result is rounded to bf16. */
const float32 = (x: Tensor): Tensor => (x.dtype === 'float32' ? x : tc.astype(x, 'float32'));

/** x / sqrt(mean(x^2) + eps) * weight over the last dimension (size `dim`); the output is float32. */
export class RMSNorm {
  readonly weight: Tensor;

  constructor(
    readonly dim: number,
    weight: Tensor,
    readonly eps = 1e-5,
  ) {
    if (weight.ndim !== 1 || weight.shape[0] !== dim) {
      throw new RangeError(`RMSNorm: expected a weight of shape [${dim}], got ${weight.describe()}`);
    }
    this.weight = float32(weight);
  }

  forward(x: Tensor): Tensor {
    if (x.ndim === 0 || x.shape[x.ndim - 1] !== this.dim) {
      throw new RangeError(`RMSNorm: expected x of shape [..., ${this.dim}], got ${x.describe()}`);
    }
    // Widen before squaring: a sum of 4096 squares near 900 is far past where bf16 can still add 900.
    const x32 = float32(x);
    const meanSquare = tc.mean(tc.mul(x32, x32), -1, { keepdims: true }); // [..., 1]
    return tc.mul(tc.mul(x32, tc.rsqrt(tc.add(meanSquare, this.eps))), this.weight);
  }
}

/** x * sigmoid(x). */
export function silu(x: Tensor): Tensor {
  const x32 = float32(x);
  // tc.sigmoid takes exp(x) / (1 + exp(x)) for x < 0, where 1 / (1 + exp(-x)) would overflow: silu(-100)
  // stays a tiny negative number instead of collapsing to 0.
  return tc.mul(x32, tc.sigmoid(x32));
}

/** The gated MLP of Qwen2: down(silu(gate(x)) * up(x)), x [..., dim] -> [..., dim], no biases. */
export class Qwen2MLP {
  constructor(
    readonly dim: number,
    readonly hiddenDim: number,
    /** [hiddenDim, dim] */
    readonly wGate: Tensor,
    /** [hiddenDim, dim] */
    readonly wUp: Tensor,
    /** [dim, hiddenDim] */
    readonly wDown: Tensor,
  ) {
    const expect = (name: string, w: Tensor, rows: number, cols: number) => {
      if (w.ndim !== 2 || w.shape[0] !== rows || w.shape[1] !== cols) {
        throw new RangeError(`Qwen2MLP: expected ${name} of shape [${rows}, ${cols}], got ${w.describe()}`);
      }
    };
    expect('wGate', wGate, hiddenDim, dim);
    expect('wUp', wUp, hiddenDim, dim);
    expect('wDown', wDown, dim, hiddenDim);
  }

  forward(x: Tensor): Tensor {
    // The gate decides, per hidden unit, how much of the up projection passes.
    const hidden = tc.mul(silu(linear(x, this.wGate)), linear(x, this.wUp)); // [..., hiddenDim]
    return linear(hidden, this.wDown);
  }
}
