// The quantized matmul with integer activations: the engine's default for 4- and 8-bit weights, as llama.cpp
// multiplies its quantized weights. native/quantized_matmul.cc keeps x in float32 (the engine's --exact).
//
// MLX's affine quantization is w[n][k] = s[n][g] * q[n][k] + b[n][g] for k in group g (G columns), so
//   out[m][n] = sum_g s[n][g] * sum_{k in g} q[n][k] x[m][k]  +  sum_g b[n][g] * xsum[m][g]
// with xsum the float sums of x over each group. Here x is also rounded to int8 in blocks of 32 values, one float
// scale per block (llama.cpp's Q8_0): x[k] ~ dx * xq[k], dx = max |x| / 127 over the block, xq = round(x / dx).
// Then
//   sum_{k in g} q[k] x[k] ~ sum_{blocks of g} dx * sum_{k in block} q[k] * xq[k]
// where the inner sum is an integer dot product of 32 terms, exact in int32 (|q * xq| <= 255 * 127). The bias
// term keeps the float sums of x, so the one approximation is the rounding of x, |x - dx * xq| <= dx / 2 per
// value: an output moves by at most sum_k |s q[k]| dx / 2 (test/quantized-matmul-int8.test.ts holds every
// kernel to that, and to a float64 evaluation of the formula above).
//
// Why: the float kernels turn each weight into a float32 and multiply-add it (an AND, a convert and an FMA per 8
// weights), and with both cores streaming they were bound by the floating-point pipes as much as by memory (see the
// end of the notes in quantized_matmul.cc). One integer instruction multiplies and pairwise adds 32 bytes (vpmaddubsw,
// AVX2) or 64 (vpdpbusd, AVX-512 VNNI), and a 4-bit weight needs only an AND, and for half of them a shift, to become
// a byte.
//
// How it is built up (llm.c style: the plain loop first, then each change, why, and what it measured: one call,
// best of 30-40, on a shared 2-core Zen 5 whose figures move by up to 2x between runs, so ranges over rounds):
//   0. quantize_rows: each x row to int8 blocks and their scales, once per call (M * K values: nothing next to
//      the N * K weights).
//   1. rows_scalar: the definition, block by block, with an int32 dot product per block. The fallback at the
//      scalar level, and the reference the SIMD kernels were checked against. 4864 x 896, M = 1: 14-16 ms
//      (the float path's scalar loop: 18 ms).
//   2. AVX2 (tile_avx2), one block of 32 values per step. vpmaddubsw multiplies unsigned bytes by signed bytes
//      and adds pairs into int16, vpmaddwd with ones adds pairs into the 8 int32 lanes; the lanes are converted
//      and multiplied by the block's scale into a float accumulator, and the group's scale is applied once per
//      group. 4 bits: the block's 16 packed bytes and the same bytes shifted right by 4, masked, give its 32
//      values as bytes, even values first (MLX puts value 2i in the low nibble of byte i): x's blocks are stored
//      in that order (quantize_block's nibble_order), so no shuffle is needed per weight. 8 bits: the pairs of
//      vpmaddubsw would overflow int16 (2 * 255 * 127 > 32767), so the weight is read as q - 128 and multiplied
//      by sign: |q - 128| <= 128 and |xq| <= 127 keep every pair within int16, and the 128 * sum(xq) it leaves
//      out comes back once per group through xq_offset. 4864 x 896, M = 1: 0.09-0.13 ms, 1.3-1.5x faster than the float
//      AVX2 kernels on the same cores.
//   3. AVX-512 VNNI (tile_vnni), two blocks per step: vpdpbusd is vpmaddubsw, vpmaddwd and the add in one
//      instruction, on 64 bytes, with int32 sums (no overflow, so 8 bits need no offset). 4 bits: the 32 packed
//      bytes of two blocks are spread to [bytes 0-15, bytes 0-15, bytes 16-31, bytes 16-31] (vshufi64x2), the
//      second and fourth quarter shifted right by 4 (one vpsrlvq), and masked. 0.07-0.11 ms, 1.1-1.25x step 2;
//      1.2-1.65x (4 bits) and 1.7-2.15x (8 bits) faster than the float kernels.
//   4. Tiles of R weight rows x MT x rows (rows_simd): a weight's bytes unpacked once serve the MT x rows, an x
//      block loaded once serves the R weight rows; the x tiles run inside the weight tiles, so each weight row is
//      read from memory once. M = 1 in tiles of 4 weight rows against 1: 1.4-1.5x (AVX2), 1.1-1.6x (VNNI).
//      Decode only (M <= 16, as the float kernels): for a prefill, M = 256 x rows through these tiles took
//      1.2-2x the time of quantized_matmul.cc's dequantize + GEMM (4 and 8 bits, 896 x 4864 and 4864 x 896,
//      VNNI), whose register blocking reuses each x value far more; prefill stays on the float path.
//   5. Software prefetch of the weight rows, kPrefetchBytes ahead, as the float kernels (their step 8). With the
//      weights in DRAM (24 matrices of Qwen2-0.5B's MLP shapes, 88 MB at 4 bits, 167 MB at 8, called in turn):
//      4 bits 7.1-17.8 -> 10.0-23.1 GB/s, 8 bits 8.8-14.1 -> 13.3-26.0 GB/s, in pairs of runs.
// From DRAM, the two paths end up close to the memory: integer activations 1.14-1.29x faster at 4 bits and
// 0.93-1.11x at 8 bits over those 24 matrices, both reading 7-13 GB/s of the machine's 18-30.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "quantized.h"

namespace engine {
namespace {

constexpr int kBlock = 32;         // x values per int8 block (one scale each)
constexpr int kLanesPerBlock = 8;  // int32 lanes a block's dot product lands in, at either vector width

thread_local Buffer tls_xq;          // x as int8 (bytes of a float buffer), calling thread
thread_local Buffer tls_lane_scale;  // each block's scale, repeated over its 8 lanes, calling thread
thread_local Buffer tls_offset;      // the 8-bit AVX2 kernel's per-group offsets, calling thread
thread_local Buffer tls_params;      // a tile's scales and biases as float32, each pool thread its own

// Which kernel runs, and so how x must be laid out for it.
enum class Kernel { Scalar, Avx2, Vnni };

Kernel kernel_for(int64_t K) {
#ifdef TL_X86_SIMD
  // The VNNI kernel takes two blocks per step: K a multiple of 64 (every real model's is).
  if (tl::has_avx512() && tl::cpu_features().avx512vnni && K % 64 == 0) return Kernel::Vnni;
  if (tl::has_avx2_fma()) return Kernel::Avx2;
#endif
  return Kernel::Scalar;
}

// ---- Step 0: x to int8 blocks --------------------------------------------------------------------------------------

// One block of 32 x values -> 32 int8 and the block's scale dx (0 for a block of zeros): xq = round(x / dx), to
// nearest even, with dx = max |x| / 127, so that |xq| <= 127 and |x - dx * xq| <= dx / 2.
// nibble_order stores the even positions first, then the odd ones: the order in which the SIMD kernels unpack a
// block of 4-bit weights (step 2).
float quantize_block(const float* x, bool nibble_order, int8_t* xq) {
  float amax = 0.0f;
  for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float dx = amax / 127.0f;
  const float inv = dx != 0.0f ? 1.0f / dx : 0.0f;
  for (int j = 0; j < kBlock; ++j) {
    const int at = nibble_order ? (j % 2) * (kBlock / 2) + j / 2 : j;
    xq[at] = static_cast<int8_t>(std::nearbyint(x[j] * inv));
  }
  return dx;
}

// All M rows of x (float32 [M, K]) into p.xq, p.xq_lane_scale and, for the 8-bit AVX2 kernel, p.xq_offset.
void quantize_rows(Problem& p, Kernel kernel) {
  const int64_t blocks = p.K / kBlock;
  int8_t* xq = reinterpret_cast<int8_t*>(tls_xq.get((p.M * p.K + 3) / 4));
  float* lane_scale = tls_lane_scale.get(p.M * blocks * kLanesPerBlock);
  const bool nibble_order = kernel != Kernel::Scalar && p.bits == 4;
  const bool offset = kernel == Kernel::Avx2 && p.bits == 8;
  float* xq_offset = offset ? tls_offset.get(p.M * p.groups) : nullptr;
  const int64_t blocks_per_group = p.G / kBlock;
  for (int64_t m = 0; m < p.M; ++m) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k = m * p.K + b * kBlock;
      const float dx = quantize_block(p.x + k, nibble_order, xq + k);
      std::fill_n(lane_scale + (m * blocks + b) * kLanesPerBlock, kLanesPerBlock, dx);
      if (!offset) continue;
      // 128 * dx * sum(xq) of the block, summed over its group (step 2, 8 bits).
      int32_t sum = 0;
      for (int j = 0; j < kBlock; ++j) sum += xq[k + j];
      float& o = xq_offset[m * p.groups + b / blocks_per_group];
      if (b % blocks_per_group == 0) o = 0.0f;
      o += 128.0f * dx * static_cast<float>(sum);
    }
  }
  p.xq = xq;
  p.xq_lane_scale = lane_scale;
  p.xq_offset = xq_offset;
}

// ---- Step 1: the definition ----------------------------------------------------------------------------------------

void rows_scalar(const Problem& p, int64_t n0, int64_t n1) {
  const int64_t blocks = p.K / kBlock;
  const int64_t blocks_per_group = p.G / kBlock;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.w + n * p.row_bytes;
    for (int64_t m = 0; m < p.M; ++m) {
      const int8_t* xq = p.xq + m * p.K;
      float total = 0.0f;
      for (int64_t g = 0; g < p.groups; ++g) {
        float acc = 0.0f;  // sum over the group's blocks of dx * (integer dot product)
        for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
          int32_t dot = 0;
          for (int j = 0; j < kBlock; ++j) {
            const int64_t k = b * kBlock + j;
            dot += static_cast<int32_t>(extract(row, p.bits, k)) * xq[k];
          }
          acc += p.xq_lane_scale[(m * blocks + b) * kLanesPerBlock] * static_cast<float>(dot);
        }
        const float s = load_param(p.scales, p.sdtype, n * p.groups + g);
        const float bias = load_param(p.biases, p.sdtype, n * p.groups + g);
        total += s * acc + bias * p.xsum[m * p.groups + g];
      }
      store_out(p, m, n, total);
    }
  }
}

#ifdef TL_X86_SIMD

// Prefetches the `bytes` of weight that a step consumes, kPrefetchBytes ahead of `at` (step 5).
TL_AVX2 inline void prefetch_ahead(const uint8_t* at, int64_t bytes, const uint8_t* end) {
  for (int64_t off = 0; off < bytes; off += 64) {
    const uint8_t* a = at + kPrefetchBytes + off;
    if (a < end) _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T0);
  }
}

// The output of a tile's (weight row, x row): the weight part summed over lanes, and the bias part (plus, for
// the 8-bit AVX2 kernel, the offset of step 2).
TL_AVX2 inline float finish(const Problem& p, int64_t m, const float* sc, const float* bi, float weight_part) {
  float v = weight_part + dot_avx2(bi, p.xsum + m * p.groups, p.groups);
  if (p.xq_offset) v += dot_avx2(sc, p.xq_offset + m * p.groups, p.groups);
  return v;
}

// ---- Step 2: AVX2, one block per step ------------------------------------------------------------------------------

// A block of 32 weights as bytes: 4 bits, the values 0..15, even positions first; 8 bits, q - 128 as int8.
template <int BITS> TL_AVX2 inline __m256i load_block_avx2(const uint8_t* src) {
  if constexpr (BITS == 4) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
  } else {
    return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)), _mm256_set1_epi8(-128));
  }
}

// sum q * xq of a block in 8 int32 lanes (their total is the block's dot product; 8 bits: without 128 * sum xq).
template <int BITS> TL_AVX2 inline __m256i dot_block_avx2(__m256i q, __m256i xq) {
  __m256i pairs;
  if constexpr (BITS == 4) {
    pairs = _mm256_maddubs_epi16(q, xq);  // q in 0..15: unsigned, as vpmaddubsw's first operand must be
  } else {
    // q - 128 is signed: its magnitude (0..128, unsigned) times xq with q - 128's sign.
    pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(xq, q));
  }
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

template <int BITS, int R, int MT>
TL_AVX2 void tile_avx2(const Problem& p, int64_t n0, int64_t m0, const float* sc, const float* bi) {
  constexpr int kBlockBytes = kBlock * BITS / 8;
  const int64_t blocks = p.K / kBlock;
  const int64_t blocks_per_group = p.G / kBlock;
  const uint8_t* end = p.w + p.N * p.row_bytes;
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = p.w + (n0 + r) * p.row_bytes;
  const int8_t* xq[MT];
  const float* lane_scale[MT];
  for (int t = 0; t < MT; ++t) {
    xq[t] = p.xq + (m0 + t) * p.K;
    lane_scale[t] = p.xq_lane_scale + (m0 + t) * blocks * kLanesPerBlock;
  }
  __m256 total[R][MT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < MT; ++t) total[r][t] = _mm256_setzero_ps();
  for (int64_t g = 0; g < p.groups; ++g) {
    __m256 acc[R][MT];  // sum of dx * (block dot) over the group's blocks so far
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < MT; ++t) acc[r][t] = _mm256_setzero_ps();
    for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      prefetch_ahead(rows[0] + b * R * kBlockBytes, R * kBlockBytes, end);
      for (int r = 0; r < R; ++r) {
        const __m256i q = load_block_avx2<BITS>(rows[r] + b * kBlockBytes);
        for (int t = 0; t < MT; ++t) {
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + b * kBlock));
          const __m256 dot = _mm256_cvtepi32_ps(dot_block_avx2<BITS>(q, x));
          acc[r][t] = _mm256_fmadd_ps(dot, _mm256_loadu_ps(lane_scale[t] + b * kLanesPerBlock), acc[r][t]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m256 s = _mm256_set1_ps(sc[r * p.groups + g]);
      for (int t = 0; t < MT; ++t) total[r][t] = _mm256_fmadd_ps(s, acc[r][t], total[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < MT; ++t)
      store_out(p, m0 + t, n0 + r, finish(p, m0 + t, sc + r * p.groups, bi + r * p.groups, hsum(total[r][t])));
}

struct Avx2Tiles {
  static constexpr int kRowsMulti = 1;  // weight rows per tile when x has several rows (16 ymm: 4 + 4 accumulators)
  template <int BITS, int R, int MT>
  static void run(const Problem& p, int64_t n0, int64_t m0, const float* sc, const float* bi) {
    tile_avx2<BITS, R, MT>(p, n0, m0, sc, bi);
  }
};

// ---- Step 3: AVX-512 VNNI, two blocks per step ---------------------------------------------------------------------

// Two blocks of weights (64 values) as bytes, each block as load_block_avx2 lays it out; 8 bits as they are.
template <int BITS> TL_AVX512_VNNI inline __m512i load_two_blocks_vnni(const uint8_t* src) {
  if constexpr (BITS == 4) {
    const __m512i packed = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
    const __m512i spread = _mm512_shuffle_i64x2(packed, packed, _MM_SHUFFLE(1, 1, 0, 0));
    const __m512i shifted = _mm512_srlv_epi64(spread, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
    return _mm512_and_si512(shifted, _mm512_set1_epi8(0x0F));
  } else {
    return _mm512_loadu_si512(src);
  }
}

// The scales of the group(s) of a step's 64 values, one per lane: the two groups' for G = 32, else one.
TL_AVX512_VNNI inline __m512 step_scales(const float* sc, int64_t step, int G) {
  if (G == 32) return _mm512_insertf32x8(_mm512_set1_ps(sc[2 * step]), _mm256_set1_ps(sc[2 * step + 1]), 1);
  return _mm512_set1_ps(sc[step * 64 / G]);
}

template <int BITS, int R, int MT>
TL_AVX512_VNNI void tile_vnni(const Problem& p, int64_t n0, int64_t m0, const float* sc, const float* bi) {
  constexpr int kStepBytes = 64 * BITS / 8;
  const int64_t steps = p.K / 64;
  const int64_t steps_per_scale = std::max(1, p.G / 64);  // G = 32: each step's two groups are scaled at once
  const uint8_t* end = p.w + p.N * p.row_bytes;
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = p.w + (n0 + r) * p.row_bytes;
  const int8_t* xq[MT];
  const float* lane_scale[MT];
  for (int t = 0; t < MT; ++t) {
    xq[t] = p.xq + (m0 + t) * p.K;
    lane_scale[t] = p.xq_lane_scale + (m0 + t) * (p.K / kBlock) * kLanesPerBlock;
  }
  __m512 total[R][MT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < MT; ++t) total[r][t] = _mm512_setzero_ps();
  for (int64_t s0 = 0; s0 < steps; s0 += steps_per_scale) {
    __m512 acc[R][MT];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < MT; ++t) acc[r][t] = _mm512_setzero_ps();
    for (int64_t s = s0; s < s0 + steps_per_scale; ++s) {
      prefetch_ahead(rows[0] + s * R * kStepBytes, R * kStepBytes, end);
      for (int r = 0; r < R; ++r) {
        const __m512i q = load_two_blocks_vnni<BITS>(rows[r] + s * kStepBytes);
        for (int t = 0; t < MT; ++t) {
          const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(xq[t] + s * 64));
          acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_loadu_ps(lane_scale[t] + s * 16), acc[r][t]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512 scale = step_scales(sc + r * p.groups, s0, p.G);
      for (int t = 0; t < MT; ++t) total[r][t] = _mm512_fmadd_ps(scale, acc[r][t], total[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < MT; ++t) {
      const float weight_part = _mm512_reduce_add_ps(total[r][t]);
      store_out(p, m0 + t, n0 + r, finish(p, m0 + t, sc + r * p.groups, bi + r * p.groups, weight_part));
    }
}

struct VnniTiles {
  static constexpr int kRowsMulti = 2;  // 32 zmm: 8 + 8 accumulators for 2 weight rows x 4 x rows
  template <int BITS, int R, int MT>
  static void run(const Problem& p, int64_t n0, int64_t m0, const float* sc, const float* bi) {
    tile_vnni<BITS, R, MT>(p, n0, m0, sc, bi);
  }
};

// ---- Step 4: tiles -------------------------------------------------------------------------------------------------

// Weight rows [n0, n1) against all M x rows: weight tiles of R rows (4 for one x row, as the float kernels' step
// 4: independent chains, and each x block serves 4 rows; 2 for long rows), x tiles of up to 4 rows inside each.
template <class Tiles, int BITS> void rows_simd(const Problem& p, int64_t n0, int64_t n1) {
  float* sc = tls_params.get(8 * p.groups);
  float* bi = sc + 4 * p.groups;
  auto weight_tile = [&](auto r_c, int64_t n) {
    constexpr int R = decltype(r_c)::value;
    params_f32(p, n, R, sc, bi);
    int64_t m0 = 0;
    for (; m0 + 4 <= p.M; m0 += 4) Tiles::template run<BITS, R, 4>(p, n, m0, sc, bi);
    switch (p.M - m0) {
      case 3: Tiles::template run<BITS, R, 3>(p, n, m0, sc, bi); break;
      case 2: Tiles::template run<BITS, R, 2>(p, n, m0, sc, bi); break;
      case 1: Tiles::template run<BITS, R, 1>(p, n, m0, sc, bi); break;
      default: break;
    }
  };
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  using Multi = std::integral_constant<int, Tiles::kRowsMulti>;
  using Four = std::integral_constant<int, 4>;
  int64_t n = n0;
  if (p.M == 1 && p.row_bytes >= 1024) {
    // Long rows (down_proj), 2 to a tile, as the float kernels' step 10: the row streams of a 4-row tile start
    // further apart than the prefetch reaches. 24 down_proj matrices from DRAM, against the float path in the
    // same runs: 0.83-0.92x with 4 rows, 0.85-1.0x with 2.
    for (; n + 2 <= n1; n += 2) weight_tile(Two{}, n);
  } else if (p.M == 1) {
    for (; n + 4 <= n1; n += 4) weight_tile(Four{}, n);
  } else {
    for (; n + Tiles::kRowsMulti <= n1; n += Tiles::kRowsMulti) weight_tile(Multi{}, n);
  }
  for (; n < n1; ++n) weight_tile(One{}, n);
}

#endif  // TL_X86_SIMD

RowsFn rows_kernel(Kernel kernel, int bits) {
#ifdef TL_X86_SIMD
  if (kernel == Kernel::Vnni) return bits == 4 ? &rows_simd<VnniTiles, 4> : &rows_simd<VnniTiles, 8>;
  if (kernel == Kernel::Avx2) return bits == 4 ? &rows_simd<Avx2Tiles, 4> : &rows_simd<Avx2Tiles, 8>;
#endif
  (void)kernel;
  (void)bits;
  return &rows_scalar;
}

}  // namespace

bool int8_activations_supported(int bits) { return bits == 4 || bits == 8; }

const char* int8_kernel_name() {
  switch (kernel_for(64)) {
    case Kernel::Vnni: return "vnni";
    case Kernel::Avx2: return "avx2";
    default: return "scalar";
  }
}

void matmul_int8(Problem& p) {
  const Kernel kernel = kernel_for(p.K);
  quantize_rows(p, kernel);
  decode(p, rows_kernel(kernel, p.bits));
}

}  // namespace engine
