// MLX's quantized layout as plain arithmetic on arrays (docs/architecture.md, "Model files"; io/quantized.ts describes the packing).
// Free of tensors, so that the CPU backend and io/quantized.ts can both use it.

/**
 * Dequantizes rows of `inFeatures` values into `out` (rows * inFeatures floats): value j of row r is
 * q * scale + bias, q the `bits`-bit value at stream bits [j * bits, (j + 1) * bits) of the row's words and
 * scale, bias those of its group of `groupSize` values. Computed in double precision, rounded once to float32.
 */
export function dequantizeInto(
  words: ArrayLike<number>,
  scales: ArrayLike<number>,
  biases: ArrayLike<number>,
  bits: number,
  groupSize: number,
  inFeatures: number,
  out: Float32Array,
): void {
  const rows = inFeatures === 0 ? 0 : out.length / inFeatures;
  const wordsPerRow = (inFeatures * bits) / 32;
  const groupsPerRow = inFeatures / groupSize;
  const mask = (1 << bits) - 1;
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
}
