// Chapter 1.2: rotary position embedding (RoPE).
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';

/** Week 1 computes in float32: half-precision inputs are widened first, so no result is rounded to bf16. */
const float32 = (x: Tensor): Tensor => (x.dtype === 'float32' ? x : tc.astype(x, 'float32'));

/**
 * Rotates each pair of features of a token at position p by the angle p * base^(-2i/dims), i < dims/2, so
 * that q·k depends only on the distance between the two tokens. Traditional RoPE pairs adjacent features
 * (2i, 2i+1); the default, as in Qwen2, pairs feature i with feature i + dims/2.
 */
export class RoPE {
  /** cos and sin of every angle, [seqLen, dims / 2]: computed once, then every call gathers rows of them. */
  private readonly tables: tc.fast.RopeTables;

  constructor(
    readonly dims: number,
    readonly seqLen: number,
    readonly base = 10000,
    readonly traditional = false,
  ) {
    if (!Number.isInteger(dims) || dims <= 0 || dims % 2 !== 0) {
      throw new RangeError(`RoPE: dims must be a positive even integer, got ${dims}`);
    }
    this.tables = tc.fast.ropeTables(dims, seqLen, base);
  }

  /**
   * x [B, L, H, dims] -> same shape. Token l of batch row b sits at position offset[b] + l; `offset` is one
   * number for every row, or one per row (rows of a batch hold sequences of different lengths).
   */
  forward(x: Tensor, offset: number | readonly number[] = 0): Tensor {
    if (x.ndim !== 4 || x.shape[3] !== this.dims) {
      throw new RangeError(`RoPE: expected x of shape [B, L, H, ${this.dims}], got ${x.describe()}`);
    }
    const [b, l] = x.shape;
    const offsets = typeof offset === 'number' ? new Array<number>(b).fill(offset) : offset;
    if (offsets.length !== b) {
      throw new RangeError(`RoPE: expected ${b} offsets (one per batch row of ${x.describe()}), got ${offsets.length}`);
    }
    for (const o of offsets) {
      if (!Number.isInteger(o) || o < 0 || o + l > this.seqLen) {
        const table = `0..${this.seqLen - 1} (seqLen ${this.seqLen})`;
        throw new RangeError(`RoPE: positions ${o}..${o + l - 1} are outside the table of positions ${table}`);
      }
    }
    // The fused kernel computes the composed form: x1 * cos - x2 * sin, x2 * cos + x1 * sin for each pair.
    return tc.fast.rope(float32(x), this.tables, offsets, this.traditional);
  }
}
