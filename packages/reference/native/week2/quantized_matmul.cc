// Chapter 2.2 (solution): quantized matmul on the CPU, out [M, N] = x [M, K] @ dequantize(w).T.
//
// Built up in steps, each kept below in order:
//   0. The definition: for every (m, n), walk k, extract q[n][k], dequantize it with its group's scale and
//      bias, multiply by x[m][k] and add. Correct, and the dequantized matrix is never stored.
//   1. Factor the affine map per group: sum_j (q_j * s + b) * x_j = s * sum_j q_j * x_j + b * sum_j x_j. The
//      group sums of x depend on x alone, so they are computed once per call (M * K / G numbers); the inner loop
//      is then one conversion and one multiply-add per weight, and scale and bias are read once per group.
//   2. Unpack a group's G values once into floats and run them against every row of x: each packed weight row
//      is read once per call whatever M is. Decode (M = 1) is bound by the bytes of weight read, and those are
//      the bytes quantization saved.
//   3. Threads: the N weight rows are shared out over tensor-core's pool (tl::parallel_for), each thread
//      streaming its own rows.
// The loops are plain C++ that the compiler vectorises. The engine's kernel (packages/engine/native/
// quantized_matmul.cc) takes the same algorithm further for speed: AVX2 unpacking, prefetching, and prefill
// through tensor-core's GEMM.
#include <vector>

#include "kernels.h"

namespace week2 {

namespace {

// Value j of a packed row: the `bits` bits at stream position j * bits, stream bit i being bit i % 32 of word
// i / 32. For 2, 4 and 8 bits a value sits inside one word; 3, 5 and 6 bits may continue in the next.
inline uint32_t unpack(const uint32_t* row, int64_t j, int bits) {
  const int64_t bit = j * bits;
  const int shift = static_cast<int>(bit & 31);
  uint32_t q = row[bit >> 5] >> shift;
  if (shift + bits > 32) q |= row[(bit >> 5) + 1] << (32 - shift);
  return q & ((1u << bits) - 1u);
}

}  // namespace

void quantized_matmul(const QuantizedMatmulArgs& a) {
  const int64_t M = a.M, N = a.N, K = a.K, G = a.group_size, groups = K / G;
  const int64_t words_per_row = K * a.bits / 32;

  // x as float32, and (step 1) the sum of each group of G values of each row.
  std::vector<float> x(M * K), xsum(M * groups, 0.0f);
  for (int64_t i = 0; i < M * K; ++i) x[i] = tl::load_f32(a.x, a.x_dtype, i);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) xsum[m * groups + k / G] += x[m * K + k];

  // Step 3: rows of w in chunks of 16 per task.
  tl::parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> q(G), acc(M);
    for (int64_t n = n0; n < n1; ++n) {
      const uint32_t* row = a.w + n * words_per_row;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t g = 0; g < groups; ++g) {
        // Step 2: this group's G values, unpacked once for every row of x.
        for (int64_t j = 0; j < G; ++j) q[j] = static_cast<float>(unpack(row, g * G + j, a.bits));
        const float scale = tl::load_f32(a.scales, a.scale_dtype, n * groups + g);
        const float bias = tl::load_f32(a.biases, a.scale_dtype, n * groups + g);
        for (int64_t m = 0; m < M; ++m) {
          const float* xg = &x[m * K + g * G];
          float dot = 0.0f;
          for (int64_t j = 0; j < G; ++j) dot += q[j] * xg[j];
          acc[m] += scale * dot + bias * xsum[m * groups + g];  // step 1
        }
      }
      for (int64_t m = 0; m < M; ++m) a.out[m * N + n] = acc[m];
    }
  });
}

}  // namespace week2
