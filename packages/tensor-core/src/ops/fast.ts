// Fused kernels for the engine's hot path. Each equals a composition of the basic ops (the tests check
// that); they exist because the composed forms make several passes over memory and allocate temporaries.
import type { Backend } from '../backend/backend.ts';
import { floatResultType, isFloating, promoteTypes } from '../dtype.ts';
import type { QuantizedWeight } from '../io/quantized.ts';
import { tidy } from '../scope.ts';
import { broadcastShapes, formatShape, sameShape } from '../shape.ts';
import type { Tensor } from '../tensor.ts';
import { tensor } from './creation.ts';
import { add, astype, mul } from './elementwise.ts';
import { matmul } from './linalg.ts';
import { softmax } from './reduce.ts';
import { broadcastTo, expandDims, reshape, swapaxes } from './shape.ts';
import { backendOf, empty, shapeError } from './util.ts';

/** x / sqrt(mean(x^2, -1) + eps) * weight, with float32 accumulation. Output has x's dtype. */
export function rmsNorm(x: Tensor, weight: Tensor, eps = 1e-5): Tensor {
  const backend = backendOf('fast.rmsNorm', x, weight);
  if (x.ndim === 0 || weight.ndim !== 1 || weight.shape[0] !== x.shape[x.ndim - 1]) {
    throw shapeError('fast.rmsNorm', 'weight must have the size of the last dimension of x', x, weight);
  }
  const out = empty(x.shape, floatResultType(x.dtype), backend);
  backend.rmsNorm(x, weight, eps, out);
  return out;
}

/** The cos and sin tables of rotary embeddings for positions [0, maxPositions): [maxPositions, dims / 2]. */
export interface RopeTables {
  dims: number;
  cos: Tensor;
  sin: Tensor;
}

/** Frequencies base^(-2i/dims), i < dims/2; angle = position * frequency. Computed in float64, stored as float32. */
export function ropeTables(dims: number, maxPositions: number, base = 10000): RopeTables {
  if (!Number.isInteger(dims) || dims <= 0 || dims % 2 !== 0)
    throw new RangeError(`ropeTables: dims must be a positive even integer, got ${dims}`);
  const half = dims / 2;
  const cos = new Float64Array(maxPositions * half);
  const sin = new Float64Array(maxPositions * half);
  for (let p = 0; p < maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * base ** ((-2 * i) / dims);
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return {
    dims,
    cos: tensor(cos, { shape: [maxPositions, half] }),
    sin: tensor(sin, { shape: [maxPositions, half] }),
  };
}

/**
 * Rotary position embedding of x [B, L, H, D]. `offset` is the position of the first token: one number
 * for every row, or one per batch row. Traditional rotates adjacent pairs (2i, 2i+1); the default (Qwen2)
 * rotates (i, i + D/2).
 */
export function rope(x: Tensor, tables: RopeTables, offset: number | readonly number[] = 0, traditional = false): Tensor {
  const backend = backendOf('fast.rope', x, tables.cos, tables.sin);
  if (x.ndim !== 4 || x.shape[3] !== tables.dims) {
    throw shapeError('fast.rope', `expected x of shape [B, L, H, ${tables.dims}]`, x);
  }
  const [b, l] = x.shape;
  const offsets = typeof offset === 'number' ? new Array<number>(b).fill(offset) : offset;
  if (offsets.length !== b) throw new RangeError(`fast.rope: ${offsets.length} offsets for a batch of ${b} rows`);
  const maxPositions = tables.cos.shape[0];
  for (const o of offsets) {
    if (!Number.isInteger(o) || o < 0 || o + l > maxPositions) {
      throw new RangeError(`fast.rope: positions ${o}..${o + l - 1} are outside the tables of ${maxPositions} positions`);
    }
  }
  const positions = new Int32Array(b * l);
  for (let r = 0; r < b; r++) for (let i = 0; i < l; i++) positions[r * l + i] = offsets[r] + i;
  const pos = tensor(positions, { shape: [b, l], dtype: 'int32', device: backend });
  const out = empty(x.shape, floatResultType(x.dtype), backend);
  backend.rope(x, tables.cos, tables.sin, pos, traditional, out);
  pos.dispose();
  return out;
}

/** The additive causal mask [L, S]: query i sees key j iff j <= i + S - L (aligned to the bottom right). */
export function causalMask(l: number, s: number, device?: Backend): Tensor {
  const values = new Float32Array(l * s);
  for (let i = 0; i < l; i++) for (let j = 0; j < s; j++) values[i * s + j] = j <= i + s - l ? 0 : -Infinity;
  return tensor(values, { shape: [l, s], device });
}

export interface SdpaOptions {
  scale?: number;
  /** An additive mask broadcastable to [..., Hq, L, S], or "causal". */
  mask?: Tensor | 'causal';
}

/**
 * softmax(q k^T * scale + mask) v with grouped-query attention: q [..., Hq, L, D], k and v [..., Hkv, S, D],
 * query head h reads kv head floor(h / (Hq / Hkv)). Computed in float32; the result has the inputs' promoted
 * dtype. A backend with an attention kernel (the GPU's never builds the L x S scores) runs it; otherwise
 * matmul and softmax are composed, with K and V broadcast over the group, never copied.
 */
export function sdpa(q: Tensor, k: Tensor, v: Tensor, options: SdpaOptions = {}): Tensor {
  const backend = backendOf('fast.sdpa', q, k, v);
  if (q.ndim < 3 || k.ndim !== q.ndim || v.ndim !== q.ndim) throw shapeError('fast.sdpa', 'q, k and v must be [..., H, L, D]', q, k, v);
  const [hq, l, d] = q.shape.slice(-3);
  const [hkv, s, dk] = k.shape.slice(-3);
  if (dk !== d || v.shape[v.ndim - 3] !== hkv || v.shape[v.ndim - 2] !== s || v.shape[v.ndim - 1] !== d || hq % hkv !== 0) {
    throw shapeError('fast.sdpa', 'k/v heads must divide q heads and share S and D', q, k, v);
  }
  const lead = q.shape.slice(0, -3);
  const kvShape = [...lead, hkv, s, d];
  for (const t of [k, v]) {
    if (!sameShape(broadcastShapes('fast.sdpa', t.shape.slice(0, -3), lead), lead)) {
      throw shapeError('fast.sdpa', "k and v's leading dims must broadcast to q's", q, k, v);
    }
  }
  const scoresShape = [...lead, hq, l, s];
  const mask = options.mask;
  if (mask !== undefined && mask !== 'causal' && !sameShape(broadcastShapes('fast.sdpa', mask.shape, scoresShape), scoresShape)) {
    throw shapeError('fast.sdpa', `the mask must broadcast to the scores ${formatShape(scoresShape)}`, mask);
  }
  const scale = options.scale ?? 1 / Math.sqrt(d);
  const dtype = floatResultType(promoteTypes(q.dtype, promoteTypes(k.dtype, v.dtype)));
  if (backend.sdpa) {
    const out = empty([...lead, hq, l, d], dtype, backend);
    const maskView = mask === undefined ? null : mask === 'causal' ? mask : broadcastTo(mask, scoresShape);
    backend.sdpa(q, broadcastTo(k, kvShape), broadcastTo(v, kvShape), maskView, scale, out);
    return out;
  }
  return tidy(() => {
    const float32 = (t: Tensor) => (t.dtype === 'float32' ? t : astype(t, 'float32'));
    const groups = hq / hkv;
    const qg = reshape(float32(q), [...lead, hkv, groups, l, d]);
    const kt = swapaxes(expandDims(float32(k), -3), -1, -2);
    let scores = mul(matmul(qg, kt), scale);
    if (mask !== undefined) {
      const full = broadcastTo(mask === 'causal' ? causalMask(l, s, backend) : mask, scoresShape);
      scores = add(scores, reshape(full, [...lead, hkv, groups, l, s]));
    }
    const out = reshape(matmul(softmax(scores, -1), expandDims(float32(v), -3)), [...lead, hq, l, d]);
    return dtype === 'float32' ? out : astype(out, dtype);
  });
}

/**
 * x [..., K] @ dequantize(w).T -> float32 [..., N] for an MLX-quantized weight w of logical shape [N, K]
 * (x float32, bfloat16 or float16). The GPU dequantizes inside its matmul kernels; the CPU backend composes
 * the float32 weight and its GEMM.
 */
export function quantizedMatmul(x: Tensor, w: QuantizedWeight): Tensor {
  const backend = backendOf('fast.quantizedMatmul', x, w.weight, w.scales, w.biases);
  const [n, k] = w.shape;
  if (w.shape.length !== 2) throw new RangeError(`fast.quantizedMatmul: the weight must be 2-D, got ${w}`);
  if (!isFloating(x.dtype)) throw shapeError('fast.quantizedMatmul', 'x must be floating point', x);
  if (x.ndim === 0 || x.shape[x.ndim - 1] !== k) {
    throw shapeError('fast.quantizedMatmul', `x's last dimension must be the weight's ${k} input features (${w})`, x);
  }
  const rows = x.size / k;
  const x2 = reshape(x, [rows, k]);
  const out = empty([rows, n], 'float32', backend);
  backend.quantizedMatmul(x2, w, out);
  if (x2 !== x) x2.dispose();
  const result = reshape(out, [...x.shape.slice(0, -1), n]);
  out.dispose();
  return result;
}
