import type { Tensor } from '@tiny-llm/tensor-core';
import { NotImplemented } from './not-implemented.ts';

/**
 * Rotates pairs of features by an angle that grows with the token's position, so that q·k depends only on
 * the distance between two tokens. Feature pair i (i < dims/2) of a token at position p turns by
 * p * base^(-2i/dims):
 *
 *   out1 = x1 * cos - x2 * sin
 *   out2 = x2 * cos + x1 * sin
 *
 * Traditional RoPE pairs adjacent features: x1 = x[..., 2i], x2 = x[..., 2i+1]. The default (Qwen2) pairs
 * the two halves: x1 = x[..., i], x2 = x[..., i + dims/2].
 */
export class RoPE {
  /**
   * Precompute the tables here, once: cos and sin of p * base^(-2i/dims) for every position p < seqLen and
   * every i < dims/2, two tensors of shape [seqLen, dims/2]. Compute the angles with plain JavaScript
   * numbers (float64), then `tc.tensor(values, { shape: [seqLen, dims / 2] })`: in float32, position 4095
   * times a frequency is already off by about 1e-4 radians.
   */
  constructor(
    readonly dims: number,
    readonly seqLen: number,
    readonly base = 10000,
    readonly traditional = false,
  ) {
    throw new NotImplemented('1.2', 'RoPE (precompute the cos/sin tables)');
  }

  /**
   * x [B, L, H, dims] -> the same shape, float32. Token l of batch row b sits at position offset[b] + l;
   * `offset` is one number for every row, or one number per row (rows of a batch may hold sequences of
   * different lengths).
   *
   * Hints:
   * - Gather each token's rows of the tables: build the positions as an int32 tensor [B, L], then
   *   `tc.take(cos, positions)` is [B, L, dims/2]; `tc.expandDims(..., 2)` makes it [B, L, 1, dims/2] so it
   *   broadcasts over the heads.
   * - Non-traditional: `tc.split(x, 2, -1)` gives the halves x1 and x2; join the results with
   *   `tc.concat([out1, out2], -1)`.
   * - Traditional: reshape x to [B, L, H, dims/2, 2]; `tc.slice(pairs, [null, null, null, null, 0])` takes
   *   the even features (a number index drops that axis) and `..., 1]` the odd ones;
   *   `tc.stack([out1, out2], -1)` and a reshape to [B, L, H, dims] interleave them again.
   */
  forward(x: Tensor, offset: number | readonly number[] = 0): Tensor {
    throw new NotImplemented('1.2', 'RoPE.forward');
  }
}
