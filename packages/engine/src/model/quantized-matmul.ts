// Chapter 2.2: quantized matmul on the CPU. The week 2 model keeps its weights in the MLX quantized layout
// (docs/architecture.md, "Model files") and multiplies with them directly: the C++ kernel (native/quantized_matmul.cc) decodes the packed
// weights as it streams them, so the float32 weight is never materialised and decode reads 4-8x fewer bytes.
// 4- and 8-bit weights take integer activations by default (x rounded to int16 per block of 32 values, integer
// dot products, as llama.cpp with int8): native/quantized_matmul_int16.cc for decode-sized calls,
// native/quantized_gemm_int16.cc for prefills and batched decode steps on CPUs with AVX-512 VNNI. `exact: true`
// keeps x in float32.
import * as tc from '@tiny-llm/tensor-core';
import type { QuantizedWeight, Tensor } from '@tiny-llm/tensor-core';
import { engineKernels } from './native.ts';

const INPUT_DTYPES = ['float32', 'bfloat16', 'float16'];

function shapeError(x: Tensor, w: QuantizedWeight, why: string): TypeError {
  return new TypeError(`quantizedMatmul: ${why} (x ${x.describe()}, w ${w.toString()})`);
}

/**
 * Work fused into one quantizedMatmul call (the engine's decode path, see Linear): the vectors around a decode
 * matmul are a few KB, and each separate op costs more in dispatch than in arithmetic.
 */
export interface QuantizedMatmulFusion {
  /** Added to every output row: float32 [N] (a layer's bias). */
  bias?: Tensor | null;
  /** Added to the output: float32, contiguous, of the output's shape (the residual stream). */
  residual?: Tensor | null;
  /** x is normalised first: rmsNorm(x, weight, eps), as tc.fast.rmsNorm (weight [K]). */
  norm?: { weight: Tensor; eps: number } | null;
  /** x is [..., 2K], a gate half then an up half: the matmul reads silu(gate) * up (the gated MLP's down_proj). */
  swiglu?: boolean;
}

export interface QuantizedMatmulOptions extends QuantizedMatmulFusion {
  /**
   * Keep x in float32 (native/quantized_matmul.cc). Default false: for 4- and 8-bit weights, x is rounded to
   * int16 in blocks of 32 values, one scale each, and multiplied with integer dot products
   * (native/quantized_matmul_int16.cc; from 12 rows native/quantized_gemm_int16.cc, on AVX-512 VNNI);
   * an output then moves by at most sum_k |scale * q_k| * dx / 2, dx the scale of x's block. Other widths, and
   * prefills on CPUs without VNNI (the float GEMM is faster there), are always exact.
   */
  exact?: boolean;
}

const PROLOGUE_NONE = 0;
const PROLOGUE_RMS_NORM = 1;
const PROLOGUE_SWIGLU = 2;

/**
 * x [..., K] (float32 or bfloat16) @ dequantize(w).T -> float32 [..., N], for a 2-D quantized weight w of
 * logical shape [N, K]. Decode-sized inputs (up to 16 rows) stream the packed weight once, with integer
 * activations unless options.exact; longer inputs run a GEMM, tensor-core's float GEMM on dequantized blocks of
 * weight rows. Where the CPU has AVX-512 VNNI, integer activations take a GEMM of their own from 12 rows. The fusion options add a prologue on x (rmsNorm, or swiglu of a [..., 2K] x) and an epilogue on the
 * output (bias, residual), in the same native call.
 */
export function quantizedMatmul(x: Tensor, w: QuantizedWeight, options?: QuantizedMatmulOptions): Tensor {
  if (w.shape.length !== 2) throw shapeError(x, w, 'the weight must be 2-D');
  if (x.ndim === 0) throw shapeError(x, w, 'x must have at least one dimension');
  if (!INPUT_DTYPES.includes(x.dtype)) throw shapeError(x, w, 'x must be float32, bfloat16 or float16');
  const swiglu = options?.swiglu === true;
  const xk = x.shape[x.ndim - 1];
  const k = swiglu ? xk / 2 : xk;
  const n = w.outFeatures;
  if (k !== w.inFeatures) {
    throw shapeError(
      x,
      w,
      swiglu
        ? `x's last dimension ${xk} is not twice the weight's ${w.inFeatures} input features (swiglu)`
        : `x's last dimension ${xk} is not the weight's ${w.inFeatures} input features`,
    );
  }
  const outShape = [...x.shape.slice(0, -1), n];
  const bias = options?.bias ?? null;
  const residual = options?.residual ?? null;
  const norm = options?.norm ?? null;
  if (bias && (bias.dtype !== 'float32' || bias.size !== n || !bias.isContiguous)) {
    throw shapeError(x, w, `the fused bias must be float32 [${n}], contiguous, got ${bias.describe()}`);
  }
  if (residual && (residual.dtype !== 'float32' || !residual.isContiguous || residual.size !== outShape.reduce((a, b) => a * b, 1))) {
    throw shapeError(
      x,
      w,
      `the fused residual must be float32 of the output's shape [${outShape.join(', ')}], contiguous, got ${residual.describe()}`,
    );
  }
  if (norm && (norm.weight.ndim !== 1 || norm.weight.shape[0] !== k)) {
    throw shapeError(x, w, `the fused rmsNorm weight must be [${k}], got ${norm.weight.describe()}`);
  }
  // The kernel takes x and out as contiguous rows of any rank (a copy of x only when it is strided).
  const xc = tc.contiguous(x);
  const out = tc.empty(outShape, 'float32');
  const prologue = swiglu ? PROLOGUE_SWIGLU : norm ? PROLOGUE_RMS_NORM : PROLOGUE_NONE;
  try {
    engineKernels().quantizedMatmul(
      xc.native(),
      w.weight.native(),
      w.scales.native(),
      w.biases.native(),
      out.native(),
      w.groupSize,
      w.bits,
      bias?.native(),
      residual?.native(),
      prologue,
      norm?.weight.native(),
      norm?.eps,
      options?.exact !== true,
    );
  } catch (err) {
    out.dispose();
    throw err;
  } finally {
    if (xc !== x) xc.dispose();
  }
  return out;
}
