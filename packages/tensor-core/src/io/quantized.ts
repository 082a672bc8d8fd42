// MLX-quantized weights (docs/architecture.md, "Model files"): a packed uint32 matrix plus a scale and a bias per group of input columns.
//
// Packing: each row's quantized values form one little-endian bit stream; value j occupies stream bits
// [j*bits, (j+1)*bits), and stream bit k is bit (k % 32) of word k / 32. For bits 2, 4 and 8 a value never
// straddles a word (value j of a word sits in bits [j*b, (j+1)*b), lowest first); MLX packs 3, 5 and 6 bits
// into 3- or 5-byte groups in the same little-endian bit order, so the same formula covers them.
// Dequantized value = q * scale + bias, with the scale and bias of the value's group.
import { unsupported } from '../backend/backend.ts';
import { cpu } from '../backend/cpu.ts';
import { storageView } from '../dtype.ts';
import { astype } from '../ops/elementwise.ts';
import { backendOf, empty } from '../ops/util.ts';
import { formatShape, sizeOf } from '../shape.ts';
import { dequantizeInto } from './quantized-layout.ts';
import { Tensor } from '../tensor.ts';

export const QUANTIZED_BITS: readonly number[] = [2, 3, 4, 5, 6, 8];
export const QUANTIZED_GROUP_SIZES: readonly number[] = [32, 64, 128];

/** A quantized linear (or embedding) weight of logical shape [...batch, out, in]. */
export class QuantizedWeight {
  /** uint32 [...batch, out, in * bits / 32] */
  readonly weight: Tensor;
  /** float [...batch, out, in / groupSize] (f16, bf16 or f32) */
  readonly scales: Tensor;
  /** float [...batch, out, in / groupSize], same dtype as scales */
  readonly biases: Tensor;
  readonly groupSize: number;
  readonly bits: number;
  /** The logical (dequantized) shape: [...batch, out, in]. */
  readonly shape: readonly number[];

  /** `name` (the layer's prefix) only makes error messages say which layer is wrong. */
  constructor(weight: Tensor, scales: Tensor, biases: Tensor, groupSize: number, bits: number, name = 'QuantizedWeight') {
    checkParams(groupSize, bits, name);
    this.shape = checkShapes(weight, scales, biases, groupSize, bits, name);
    this.weight = weight;
    this.scales = scales;
    this.biases = biases;
    this.groupSize = groupSize;
    this.bits = bits;
  }

  get inFeatures(): number {
    return this.shape[this.shape.length - 1];
  }
  get outFeatures(): number {
    return this.shape[this.shape.length - 2];
  }

  dispose(): void {
    this.weight.dispose();
    this.scales.dispose();
    this.biases.dispose();
  }

  toString(): string {
    return `QuantizedWeight(${formatShape(this.shape)}, ${this.bits}-bit, group ${this.groupSize})`;
  }
}

function checkParams(groupSize: number, bits: number, name: string): void {
  if (!QUANTIZED_BITS.includes(bits)) {
    throw new Error(`${name}: unsupported quantization bits ${bits} (supported: ${QUANTIZED_BITS.join(', ')})`);
  }
  if (!QUANTIZED_GROUP_SIZES.includes(groupSize)) {
    throw new Error(`${name}: unsupported quantization group size ${groupSize} (supported: ${QUANTIZED_GROUP_SIZES.join(', ')})`);
  }
}

/** Checks that the three tensors fit together and returns the logical shape. */
function checkShapes(weight: Tensor, scales: Tensor, biases: Tensor, groupSize: number, bits: number, name: string): number[] {
  const shapes = `weight ${weight.describe()}, scales ${scales.describe()}, biases ${biases.describe()}`;
  const fail = (why: string) => new Error(`${name}: ${why} (${shapes}; ${bits}-bit, group size ${groupSize})`);
  if (weight.dtype !== 'uint32') throw fail('the packed weight must be uint32');
  if (!['float32', 'float16', 'bfloat16'].includes(scales.dtype)) throw fail('scales must be float');
  if (biases.dtype !== scales.dtype) throw fail('scales and biases must have the same dtype');
  if (weight.ndim < 2) throw fail('the packed weight must have at least 2 dimensions');

  const lead = weight.shape.slice(0, -1);
  const inFeatures = (weight.shape[weight.ndim - 1] * 32) / bits;
  const groups = inFeatures / groupSize;
  if (!Number.isInteger(groups)) throw fail(`${inFeatures} input columns do not split into groups of ${groupSize}`);
  const expected = [...lead, groups];
  for (const [label, t] of [
    ['scales', scales],
    ['biases', biases],
  ] as const) {
    if (t.ndim !== expected.length || !t.shape.every((d, i) => d === expected[i])) {
      throw fail(`${label} should be ${formatShape(expected)}`);
    }
  }
  return [...lead, inFeatures];
}

/**
 * The float32 weight a QuantizedWeight stands for, on the backend of its tensors: a plain reference
 * implementation on the CPU (week 1 dequantizes at load time; the tests compare the kernels with it), computed
 * in double precision and rounded once to float32; the backend's own kernel elsewhere (the same values).
 */
export function dequantize(qw: QuantizedWeight): Tensor {
  const backend = backendOf('dequantize', qw.weight, qw.scales, qw.biases);
  if (backend !== cpu) {
    if (!backend.dequantize) throw unsupported(backend.name, 'dequantize');
    const out = empty(qw.shape, 'float32', backend);
    backend.dequantize(qw, out);
    return out;
  }
  const rows = sizeOf(qw.shape) / Math.max(qw.inFeatures, 1);
  const storage = cpu.allocate('float32', rows * qw.inFeatures);
  const out = storageView('float32', storage.buffer, storage.byteOffset, rows * qw.inFeatures) as Float32Array;
  dequantizeInto(qw.weight.toArray(), qw.scales.toArray(), qw.biases.toArray(), qw.bits, qw.groupSize, qw.inFeatures, out);
  return new Tensor(storage, 'float32', [...qw.shape]);
}

export interface QuantizeOptions {
  /** The dtype scales and biases are stored in (default bfloat16, as in most mlx-community checkpoints). */
  dtype?: 'bfloat16' | 'float16' | 'float32';
}

/**
 * The inverse of dequantize: MLX's affine quantization (`mx.quantize`) of a float weight [...batch, out, in]
 * with `bits` bits per value and one scale and bias per group of `groupSize` input columns, so that
 * w ≈ q * scale + bias with q in [0, 2^bits - 1]. The engine's benchmarks use it to build quantized weights of
 * real model shapes from random ones; tests use it to make quantized fixtures of any shape.
 *
 * Per group, as MLX computes it: the step is (max - min) / (2^bits - 1); the edge of larger magnitude (min, or
 * max with a negative scale) becomes the bias, and the step is adjusted to edge / round(edge / step) so that
 * 0.0 falls on a level (up to rounding). The scale is then negative when |max| > |min|. Each
 * element is within |scale| / 2 of its value, except at the far edge, which the adjusted step may no longer
 * reach: those are clipped to the last level, within |scale|. Unlike MLX, q is computed with the scale and
 * bias already rounded to the storage dtype, so that rounding adds no error of its own.
 */
export function quantize(w: Tensor, bits: number, groupSize: number, options: QuantizeOptions = {}): QuantizedWeight {
  checkParams(groupSize, bits, 'quantize');
  const dtype = options.dtype ?? 'bfloat16';
  if (!['float32', 'float16', 'bfloat16'].includes(w.dtype) || w.ndim < 2) {
    throw new Error(`quantize: expected a float weight of at least 2 dimensions, got ${w.describe()}`);
  }
  const inFeatures = w.shape[w.ndim - 1];
  if (inFeatures % groupSize !== 0 || (inFeatures * bits) % 32 !== 0) {
    throw new Error(`quantize: ${inFeatures} input columns do not split into groups of ${groupSize} (${w.describe()})`);
  }
  const rows = sizeOf(w.shape) / Math.max(inFeatures, 1);
  const groupsPerRow = inFeatures / groupSize;
  const nGroups = rows * groupsPerRow;
  const values = w.toArray() as Float32Array;
  const nBins = 2 ** bits - 1;

  // Pass 1: each group's scale and bias, as MLX computes them in float32.
  const scales32 = new Float32Array(nGroups);
  const biases32 = new Float32Array(nGroups);
  for (let g = 0; g < nGroups; g++) {
    let lo = Infinity;
    let hi = -Infinity;
    for (let j = g * groupSize; j < (g + 1) * groupSize; j++) {
      const v = values[j];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    const minIsEdge = Math.abs(lo) > Math.abs(hi);
    let scale = Math.max(Math.fround((hi - lo) / nBins), 1e-7);
    if (!minIsEdge) scale = -scale;
    const edge = minIsEdge ? lo : hi;
    const q0 = Math.round(Math.fround(edge / scale));
    let bias = 0;
    if (q0 !== 0) {
      scale = Math.fround(edge / q0);
      bias = edge;
    }
    scales32[g] = scale;
    biases32[g] = bias;
  }
  const groupShape = [...w.shape.slice(0, -1), groupsPerRow];
  const scales = storeAs(scales32, groupShape, dtype);
  const biases = storeAs(biases32, groupShape, dtype);

  // Pass 2: q = clip(round((w - bias) / scale)) with the stored (rounded) scale and bias, packed as a
  // little-endian bit stream per row (docs/architecture.md, "Model files"): value j at stream bits [j*bits, (j+1)*bits).
  const s = scales.toArray() as Float32Array;
  const b = biases.toArray() as Float32Array;
  const wordsPerRow = (inFeatures * bits) / 32;
  const storage = cpu.allocate('uint32', rows * wordsPerRow);
  const words = storageView('uint32', storage.buffer, storage.byteOffset, rows * wordsPerRow) as Uint32Array;
  words.fill(0); // pooled storage is not zeroed
  for (let r = 0; r < rows; r++) {
    const w0 = r * wordsPerRow;
    for (let j = 0; j < inFeatures; j++) {
      const g = r * groupsPerRow + Math.floor(j / groupSize);
      const q = Math.min(Math.max(Math.round((values[r * inFeatures + j] - b[g]) / s[g]), 0), nBins);
      const bit = j * bits;
      const word = w0 + (bit >>> 5);
      const shift = bit & 31;
      words[word] |= q << shift;
      if (shift + bits > 32) words[word + 1] |= q >>> (32 - shift);
    }
  }
  const packed = new Tensor(storage, 'uint32', [...w.shape.slice(0, -1), wordsPerRow]);
  return new QuantizedWeight(packed, scales, biases, groupSize, bits, 'quantize');
}

/** float32 values as a tensor of `dtype` (rounded to nearest even, as every conversion in the library). */
function storeAs(values: Float32Array, shape: number[], dtype: 'bfloat16' | 'float16' | 'float32'): Tensor {
  const storage = cpu.allocate('float32', values.length);
  (storageView('float32', storage.buffer, storage.byteOffset, values.length) as Float32Array).set(values);
  const t = new Tensor(storage, 'float32', shape);
  if (dtype === 'float32') return t;
  const converted = astype(t, dtype);
  t.dispose();
  return converted;
}
