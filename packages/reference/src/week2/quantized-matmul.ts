// Chapter 2.2: quantized matmul on the CPU. The week 2 model keeps its weights in the MLX quantized layout and
// multiplies with them directly: the C++ kernel (native/week2/quantized_matmul.cc) decodes the packed weight
// as it streams it, so the float32 weight is never built and decode reads 4-8x fewer bytes.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { week2Kernels } from './native.ts';
import { quantizedMatmulGpu } from './quantized-matmul-gpu.ts';

/**
 * x [..., K] (float32, bfloat16 or float16) @ dequantize(w).T -> float32 [..., N], for a 2-D quantized weight
 * of logical shape [N, K], through the C++ kernel; on GPU tensors through the WGSL kernel of chapter 2.3.
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
  ) {
    if (bias && (bias.ndim !== 1 || bias.shape[0] !== weight.outFeatures)) {
      throw new RangeError(`QuantizedLinear: expected a bias of shape [${weight.outFeatures}], got ${bias.describe()}`);
    }
  }

  /** x [..., in] -> float32 [..., out]. */
  forward(x: Tensor): Tensor {
    const y = quantizedMatmul(x, this.weight);
    return this.bias ? tc.add(y, this.bias) : y;
  }
}
