// Chapter 2.2: quantized matmul on the CPU. The week 2 model keeps its weights in the MLX quantized layout
// (DESIGN 4) and multiplies with them directly: the C++ kernel (native/quantized_matmul.cc) decodes the packed
// weights as it streams them, so the float32 weight is never materialised and decode reads 4-8x fewer bytes.
import * as tc from '@tiny-llm/tensor-core';
import type { QuantizedWeight, Tensor } from '@tiny-llm/tensor-core';
import { referenceKernels } from '../native.ts';

const INPUT_DTYPES = ['float32', 'bfloat16', 'float16'];

function shapeError(x: Tensor, w: QuantizedWeight, why: string): TypeError {
  return new TypeError(`quantizedMatmul: ${why} (x ${x.describe()}, w ${w.toString()})`);
}

/**
 * x [..., K] (float32 or bfloat16) @ dequantize(w).T -> float32 [..., N], for a 2-D quantized weight w of
 * logical shape [N, K]. Decode-sized inputs (up to 16 rows) stream the packed weight once; longer inputs
 * dequantize blocks of weight rows and run tensor-core's GEMM on them.
 */
export function quantizedMatmul(x: Tensor, w: QuantizedWeight): Tensor {
  if (w.shape.length !== 2) throw shapeError(x, w, 'the weight must be 2-D');
  if (x.ndim === 0) throw shapeError(x, w, 'x must have at least one dimension');
  if (!INPUT_DTYPES.includes(x.dtype)) throw shapeError(x, w, 'x must be float32, bfloat16 or float16');
  const k = x.shape[x.ndim - 1];
  const n = w.outFeatures;
  if (k !== w.inFeatures) throw shapeError(x, w, `x's last dimension ${k} is not the weight's ${w.inFeatures} input features`);
  const lead = x.shape.slice(0, -1);
  const m = lead.reduce((p, d) => p * d, 1);
  // The kernel takes x as contiguous [M, K] and out as [M, N]: views (a copy of x only when it is strided).
  // Views hold a reference on their storage, so they are disposed here, whatever tidy scope we are in.
  const xc = tc.contiguous(x);
  const x2 = xc.view([m, k], [k, 1]);
  const out = tc.empty([...lead, n], 'float32');
  const out2 = out.view([m, n], [n, 1]);
  try {
    referenceKernels().quantizedMatmul(
      x2.native(),
      w.weight.native(),
      w.scales.native(),
      w.biases.native(),
      out2.native(),
      w.groupSize,
      w.bits,
    );
  } catch (err) {
    out.dispose();
    throw err;
  } finally {
    x2.dispose();
    out2.dispose();
    if (xc !== x) xc.dispose();
  }
  return out;
}

/** A linear layer with a quantized weight [out, in] and an optional float bias [out]: x @ W.T + bias. */
export class QuantizedLinear {
  readonly weight: QuantizedWeight;
  readonly bias?: Tensor;

  constructor(weight: QuantizedWeight, bias?: Tensor) {
    if (weight.shape.length !== 2) throw new TypeError(`QuantizedLinear: the weight must be 2-D, got ${weight.toString()}`);
    if (bias && (bias.ndim !== 1 || bias.shape[0] !== weight.outFeatures)) {
      throw new TypeError(`QuantizedLinear: expected a bias of shape [${weight.outFeatures}], got ${bias.describe()}`);
    }
    this.weight = weight;
    this.bias = bias;
  }

  get inFeatures(): number {
    return this.weight.inFeatures;
  }
  get outFeatures(): number {
    return this.weight.outFeatures;
  }

  forward(x: Tensor): Tensor {
    const y = quantizedMatmul(x, this.weight);
    if (!this.bias) return y;
    const withBias = tc.add(y, this.bias);
    y.dispose();
    return withBias;
  }
}
