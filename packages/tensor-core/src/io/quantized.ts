// MLX-quantized weights (DESIGN 4): a packed uint32 matrix plus a scale and a bias per group of input columns.
//
// Packing: each row's quantized values form one little-endian bit stream; value j occupies stream bits
// [j*bits, (j+1)*bits), and stream bit k is bit (k % 32) of word k / 32. For bits 2, 4 and 8 a value never
// straddles a word (value j of a word sits in bits [j*b, (j+1)*b), lowest first); MLX packs 3, 5 and 6 bits
// into 3- or 5-byte groups in the same little-endian bit order, so the same formula covers them.
// Dequantized value = q * scale + bias, with the scale and bias of the value's group.
import { cpu } from '../backend/cpu.ts';
import { storageView } from '../dtype.ts';
import { formatShape, sizeOf } from '../shape.ts';
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
  for (const [label, t] of [['scales', scales], ['biases', biases]] as const) {
    if (t.ndim !== expected.length || !t.shape.every((d, i) => d === expected[i])) {
      throw fail(`${label} should be ${formatShape(expected)}`);
    }
  }
  return [...lead, inFeatures];
}

/**
 * The float32 weight a QuantizedWeight stands for: a plain reference implementation (week 1 dequantizes at
 * load time; the tests compare the kernels with it). Computed in double precision, rounded once to float32.
 */
export function dequantize(qw: QuantizedWeight): Tensor {
  const { bits, groupSize } = qw;
  const inFeatures = qw.inFeatures;
  const rows = sizeOf(qw.shape) / Math.max(inFeatures, 1);
  const words = qw.weight.toArray() as Uint32Array;
  const scales = qw.scales.toArray() as Float32Array;
  const biases = qw.biases.toArray() as Float32Array;
  const wordsPerRow = (inFeatures * bits) / 32;
  const groupsPerRow = inFeatures / groupSize;
  const mask = (1 << bits) - 1;

  const storage = cpu.allocate('float32', rows * inFeatures);
  const out = storageView('float32', storage.buffer, storage.byteOffset, rows * inFeatures) as Float32Array;
  for (let r = 0; r < rows; r++) {
    const w0 = r * wordsPerRow;
    for (let j = 0; j < inFeatures; j++) {
      const bit = j * bits;
      const word = w0 + (bit >>> 5);
      const shift = bit & 31;
      let q = words[word] >>> shift;
      // 3-, 5- and 6-bit values may continue in the next word.
      if (shift + bits > 32) q |= words[word + 1] << (32 - shift);
      q &= mask;
      const g = r * groupsPerRow + Math.floor(j / groupSize);
      out[r * inFeatures + j] = q * scales[g] + biases[g];
    }
  }
  return new Tensor(storage, 'float32', [...qw.shape]);
}
