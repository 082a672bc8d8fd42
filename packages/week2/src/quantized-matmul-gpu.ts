// Chapter 2.3: quantized matmul on the GPU. Read docs/week2/2.3-quantized-matmul-gpu.md.
// Your kernel is wgsl/quantized_matmul.wgsl; quantizedMatmulGpu below (given) checks the arguments and runs it.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { week2Kernel } from './wgsl.ts';

/** Invocations per workgroup (WG in the kernel): a power of two, within every device's limit of 128 or more. */
const WORKGROUP = 64;
/** Rows of x a workgroup multiplies (ROWS in the kernel): each unpacked weight value serves them all. */
const ROWS = 4;

/**
 * x [..., K] (float32, bfloat16 or float16) @ dequantize(w).T -> float32 [..., N] on the GPU, for a 2-D quantized
 * weight of logical shape [N, K]; x and the weight's tensors live on one WebGPU backend. Given.
 */
export function quantizedMatmulGpu(x: Tensor, w: tc.QuantizedWeight): Tensor {
  // The kernel first: while it is a stub, every call is the chapter's NotImplemented.
  const kernel = week2Kernel('quantized_matmul.wgsl');
  const k = x.shape[x.ndim - 1];
  if (!(w instanceof tc.QuantizedWeight) || w.shape.length !== 2 || x.ndim === 0 || k !== w.inFeatures) {
    throw new RangeError(
      `quantizedMatmulGpu: expected x [..., K] and a 2-D QuantizedWeight [N, K], got x ${x.describe()} and w ${String(w)}`,
    );
  }
  if (!tc.isFloating(x.dtype)) throw new TypeError(`quantizedMatmulGpu: x must be float32, bfloat16 or float16, got ${x.describe()}`);
  const gpu = x.backend;
  if (!(gpu instanceof tc.WebGPUBackend) || [w.weight, w.scales, w.biases].some((t) => t.backend !== gpu)) {
    const where = [x, w.weight, w.scales, w.biases].map((t) => t.backend.name).join(', ');
    throw new TypeError(
      `quantizedMatmulGpu: x and the weight's tensors must live on one WebGPU backend (x, weight, scales, biases are on ${where})`,
    );
  }
  const lead = x.shape.slice(0, -1);
  const m = lead.reduce((a, b) => a * b, 1);
  const n = w.outFeatures;
  return tc.tidy(() => {
    const out = tc.empty([m, n], 'float32', gpu);
    if (m > 0 && n > 0) {
      // Columns spread over x and y (one dimension holds at most maxComputeWorkgroupsPerDimension), row blocks on z.
      const columns = Math.min(n, gpu.limits.maxComputeWorkgroupsPerDimension);
      gpu.run(kernel, {
        tensors: { x: tc.reshape(x, [m, k]), w: w.weight, scales: w.scales, biases: w.biases, out },
        params: { m, n, k, bits: w.bits, group_size: w.groupSize },
        constants: { WG: WORKGROUP },
        workgroups: [columns, Math.ceil(n / columns), Math.ceil(m / ROWS)],
      });
    }
    return tc.reshape(out, [...lead, n]);
  });
}
