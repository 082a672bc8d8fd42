// Chapter 2.2: quantized matmul on the CPU. Read docs/week2/2.2-quantized-matmul.md.
// Your kernel is native/quantized_matmul.cc; quantizedMatmul below (given) calls it. Then write QuantizedLinear.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { NotImplemented } from '@tiny-llm/week1/not-implemented';
import { week2Kernels } from './native.ts';
import { quantizedMatmulGpu } from './quantized-matmul-gpu.ts';

/**
 * x [..., K] (float32, bfloat16 or float16) @ dequantize(w).T -> float32 [..., N], for a 2-D quantized weight
 * of logical shape [N, K], through your C++ kernel; on GPU tensors through your WGSL kernel of chapter 2.3. Given.
 */
export function quantizedMatmul(x: Tensor, w: tc.QuantizedWeight): Tensor {
  if (x.backend instanceof tc.WebGPUBackend) return quantizedMatmulGpu(x, w);
  const k = x.shape[x.ndim - 1];
  if (!(w instanceof tc.QuantizedWeight) || w.shape.length !== 2 || x.ndim === 0 || k !== w.inFeatures) {
    throw new RangeError(`quantizedMatmul: expected x [..., K] and a 2-D QuantizedWeight [N, K], got x ${x.describe()} and w ${String(w)}`);
  }
  if (!tc.isFloating(x.dtype)) throw new TypeError(`quantizedMatmul: x must be float32, bfloat16 or float16, got ${x.describe()}`);
  const lead = x.shape.slice(0, -1);
  return tc.tidy(() => {
    const rows = tc.contiguous(tc.reshape(x, [lead.reduce((a, b) => a * b, 1), k]));
    const out = tc.empty([rows.shape[0], w.outFeatures], 'float32');
    week2Kernels().quantizedMatmul(
      rows.native(),
      w.weight.native(),
      w.scales.native(),
      w.biases.native(),
      out.native(),
      w.groupSize,
      w.bits,
    );
    return tc.reshape(out, [...lead, w.outFeatures]);
  });
}

/** A linear layer whose weight is quantized: x @ dequantize(weight).T + bias. */
export class QuantizedLinear {
  constructor(
    readonly weight: tc.QuantizedWeight,
    readonly bias?: Tensor,
  ) {}

  /** x [..., in] -> float32 [..., out], with quantizedMatmul (never tc.dequantize: that builds the float32 matrix). */
  forward(x: Tensor): Tensor {
    throw new NotImplemented('2.2', 'QuantizedLinear.forward');
  }
}
