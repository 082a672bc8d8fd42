// Chapter 2.2: quantized matmul on the CPU. Read docs/week2/2.2-quantized-matmul.md, then write the kernel.
// `pnpm build` (or the week's `pnpm test`) compiles it; the binding in addon.cc checks the arguments for you.
#include "kernels.h"

namespace week2 {

// out[m][n] = sum over k of x[m][k] * (q[n][k] * scale[n][k / G] + bias[n][k / G]), for every m < M, n < N.
//
// - q[n][k] is the `bits`-bit unsigned value number k of row n: bits [k * bits, (k + 1) * bits) of the row's
//   bit stream, where stream bit i is bit i % 32 of word i / 32 (a.w + n * K * bits / 32 is the row's first
//   word). For 2, 4 and 8 bits a value never crosses a word: value j of a word is (word >> (j * bits)) & mask.
// - x, scales and biases come in their own dtypes: tl::load_f32(a.x, a.x_dtype, m * K + k) reads one as float.
// - Never build the float32 weight matrix: that is 8x the bytes of a 4-bit one, and the bytes are the point.
// Then make it fast: factor the affine map per group (sum of (q*s + b) * x = s * sum(q * x) + b * sum(x)),
// and share the rows out over tensor-core's threads with tl::parallel_for(N, grain, [&](int64_t n0, int64_t n1)
// { ... }), so that each weight row is read once for all M rows of x.
void quantized_matmul(const QuantizedMatmulArgs& a) {
  (void)a;
  throw NotImplemented("2.2", "quantized_matmul");
}

}  // namespace week2
