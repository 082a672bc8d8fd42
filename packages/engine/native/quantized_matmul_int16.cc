// The quantized matmul with integer activations: the engine's default for 4- and 8-bit weights, as llama.cpp
// multiplies its quantized weights (there with int8 activations, here int16). native/quantized_matmul.cc keeps x
// in float32 (the engine's --exact).
//
// MLX's affine quantization is w[n][k] = s[n][g] * q[n][k] + b[n][g] for k in group g (G columns), so
//   out[m][n] = sum_g s[n][g] * sum_{k in g} q[n][k] x[m][k]  +  sum_g b[n][g] * xsum[m][g]
// with xsum the float sums of x over each group. Here x is also rounded to int16 in blocks of 32 values, one float
// scale per block: x[k] ~ dx * xq[k], dx = max |x| / 32767 over the block, xq = round(x / dx). Then
//   sum_{k in g} q[k] x[k] ~ sum_{blocks of g} dx * sum_{k in block} q[k] * xq[k]
// where the inner sum is an integer dot product of 32 terms, exact in int32 (32 * 255 * 32767 < 2^31). The bias
// term keeps the float sums of x, so the one approximation is the rounding of x, |x - dx * xq| <= dx / 2 per
// value: an output moves by at most sum_k |s q[k]| dx / 2 (test/quantized-matmul-int16.test.ts holds every
// kernel to that, and to a float64 evaluation of the formula above).
//
// Why int16: llama.cpp's int8 blocks (dx = max |x| / 127, which these kernels used first) moved the demo model's
// predictions too far: the same top-1 token as the exact path at 98.1-98.4% of positions, where 99% is required.
// int16 steps are 258 times finer (test/int16-activations.test.ts: 100%, mean KL 1.3e-8 nats).
// Why integers at all: the float kernels turn each weight into a float32 and multiply-add it (an AND, a convert
// and an FMA per 8 weights); here a weight becomes an int16 (a widening, and an AND or a shift at 4 bits) and one
// instruction multiplies and pairwise adds 16 (vpmaddwd, AVX2) or 32 of them into int32 (vpdpwssd, AVX-512 VNNI).
//
// How it is built up (llm.c style: the plain loop first, then each change, why, and what it measured: one call,
// 4864 x 896, M = 1, best of 30, on a shared 2-core Zen 5 whose figures move by up to 2x between runs):
//   0. quantize_rows: each x row to int16 blocks and their scales, once per call (M * K values: nothing next to
//      the N * K weights).
//   1. rows_scalar: the definition, block by block, with an int32 dot product per block. The fallback at the
//      scalar level, and the reference the SIMD kernels were checked against. 4864 x 896, M = 1:
//      31 ms (the float path's scalar loop: 33 ms in the same run).
//   2. AVX2 (tile_avx2), one block of 32 values per step, as two vectors of 16 int16. vpmaddwd multiplies int16
//      pairs and adds adjacent products into 8 int32 lanes; the lanes are converted and multiplied by the block's
//      scale into a float accumulator, and the group's scale is applied once per group. 4 bits: the block's 16
//      packed bytes widened to int16 (vpmovzxbw) give the 16 even values by an AND and the 16 odd ones by a shift
//      right by 4 (MLX puts value 2i in the low nibble of byte i): x's blocks are stored in that order
//      (quantize_block's nibble_order), so no shuffle is needed per weight. 8 bits: the 32 bytes widened, in
//      order (0..255 is a positive int16: no offset, unlike int8's vpmaddubsw).
//      0.18 ms at 4 bits, 0.17 at 8 (the float AVX2 kernels: 0.21 and 0.24; the int8 vpmaddubsw kernel this
//      replaced: 0.20 and 0.14).
//   3. AVX-512 VNNI (tile_vnni), a block per instruction: vpdpwssd is vpmaddwd and the add in one, on 32 int16.
//      4 bits: the 16 packed bytes twice (vbroadcasti128), widened, the second half shifted right by 4 (one
//      vpsrlvw), masked.
//      0.14 ms at 4 bits, 0.12 at 8 (the float kernels: 0.19 and 0.20; the int8 vpdpbusd kernel this replaced:
//      0.11 and 0.13).
//   4. Tiles of R weight rows x MT x rows (rows_simd): a weight's block unpacked once serves the MT x rows, an x
//      block loaded once serves the R weight rows; the x tiles run inside the weight tiles, so each weight row is
//      read from memory once. Decode only (M <= 16, as the float kernels): for a prefill, M = 256 x rows through
//      these tiles (measured with the int8 kernels) took 1.2-2x the time of quantized_matmul.cc's dequantize +
//      GEMM, whose register blocking reuses each x value far more. Prefill has a GEMM of its own on VNNI
//      (native/quantized_gemm_int16.cc) and keeps float activations below it.
//   5. Software prefetch of the weight rows, kPrefetchBytes ahead, as the float kernels (their step 8): with the
//      weights in DRAM it took the int8 kernels from 7.1-17.8 to 10.0-23.1 GB/s (4 bits) and 8.8-14.1 to
//      13.3-26.0 GB/s (8 bits); these read the same weight bytes in the same order.
//   6. AVX-512 VNNI, 4 bits, groups of 64 or 128: two blocks per step (pair_blocks_vnni), half the instructions
//      per weight. 4864 x 896 from L3 31 -> 36-38 GB/s, the 151936 x 896 head 40 -> 43-48 GB/s
//      (bench/quantized-matmul.ts); Qwen2-0.5B's 4-bit decode 73-82 -> 85-91 tok/s (`tiny-llm bench`, three
//      rounds alternating the two builds).
// Decode streams the weights from memory; docs/engine.md gives the tok/s of both paths on Qwen2-0.5B's shapes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "quantized.h"

namespace engine {
namespace {

constexpr int kBlock = kInt16Block;

thread_local Buffer tls_xq;        // x as int16 (in a float buffer), calling thread
thread_local Buffer tls_xq_scale;  // each block's scale dx, calling thread
thread_local Buffer tls_params;    // a tile's scales and biases as float32, each pool thread its own

// Which kernel runs, and so how x must be laid out for it.
enum class Kernel { Scalar, Avx2, Vnni };

// The order of x's int16 values (and what xq_scale holds), as the kernel unpacks 4-bit weights:
// Plain: in order, a scale per block of 32 (the scalar kernel; every kernel at 8 bits).
// Nibbles: per block, its 16 even positions then its 16 odd ones (steps 2 and 3), a scale per block.
// PairNibbles: per pair of blocks b, b + 1, the 16 even positions of b, of b + 1, then the odd ones of b, of
//   b + 1 (step 6); xq_scale holds 16 floats per pair, dx_b 8 times then dx_b+1 8 times.
enum class Layout { Plain, Nibbles, PairNibbles };

// The pairs of step 6 need both blocks in one weight group (one weight scale): groups of 64 or 128, not 32.
Layout layout_for(Kernel kernel, int bits, int group) {
  if (kernel == Kernel::Scalar || bits != 4) return Layout::Plain;
  return kernel == Kernel::Vnni && group % (2 * kBlock) == 0 ? Layout::PairNibbles : Layout::Nibbles;
}

Kernel kernel_for() {
#ifdef TL_X86_SIMD
  if (tl::has_avx512() && tl::cpu_features().avx512vnni) return Kernel::Vnni;
  if (tl::has_avx2_fma()) return Kernel::Avx2;
#endif
  return Kernel::Scalar;
}

// ---- Step 0: x to int16 blocks -------------------------------------------------------------------------------------

// All M rows of x (float32 [M, K]) into p.xq and p.xq_scale, in `layout`.
void quantize_rows(Problem& p, Layout layout) {
  const int64_t blocks = p.K / kBlock;
  int16_t* xq = reinterpret_cast<int16_t*>(tls_xq.get((p.M * p.K + 1) / 2));
  float* xq_scale = tls_xq_scale.get(p.M * blocks * (layout == Layout::PairNibbles ? 8 : 1));
  for (int64_t b = 0; b < p.M * blocks; ++b) {
    const float* x = p.x + b * kBlock;
    int16_t* q = xq + b * kBlock;
    if (layout == Layout::Plain) {
      xq_scale[b] = quantize_block(x, [](int j) { return j; }, q);
    } else if (layout == Layout::Nibbles) {
      xq_scale[b] = quantize_block(x, [](int j) { return (j % 2) * (kBlock / 2) + j / 2; }, q);
    } else {
      // Block b is the first or the second of its pair (K is a multiple of 64 here: groups of 64 or 128).
      const int half = static_cast<int>(b % 2);
      int16_t* pair = q - half * kBlock;
      const float dx = quantize_block(x, [half](int j) { return (j % 2) * kBlock + half * (kBlock / 2) + j / 2; }, pair);
      std::fill_n(xq_scale + (b - half) * 8 + half * 8, 8, dx);
    }
  }
  p.xq = xq;
  p.xq_scale = xq_scale;
}

// ---- Step 1: the definition ----------------------------------------------------------------------------------------

void rows_scalar(const Problem& p, int64_t n0, int64_t n1) {
  const int64_t blocks = p.K / kBlock;
  const int64_t blocks_per_group = p.G / kBlock;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.w + n * p.row_bytes;
    for (int64_t m = 0; m < p.M; ++m) {
      const int16_t* xq = p.xq + m * p.K;
      float total = 0.0f;
      for (int64_t g = 0; g < p.groups; ++g) {
        float acc = 0.0f;  // sum over the group's blocks of dx * (integer dot product)
        for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
          int32_t dot = 0;
          for (int j = 0; j < kBlock; ++j) {
            const int64_t k = b * kBlock + j;
            dot += static_cast<int32_t>(extract(row, p.bits, k)) * xq[k];
          }
          acc += p.xq_scale[m * blocks + b] * static_cast<float>(dot);
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

// The output of a tile's (weight row, x row): the weight part summed over lanes, plus the bias part.
TL_AVX2 inline float finish(const Problem& p, int64_t m, const float* bi, float weight_part) {
  return weight_part + dot_avx2(bi, p.xsum + m * p.groups, p.groups);
}

// ---- Step 2: AVX2, one block per step ------------------------------------------------------------------------------

// A block of 32 weights as int16, in two vectors of 16: 4 bits, the even positions, then the odd ones; 8 bits, in
// order.
struct Block16 {
  __m256i lo, hi;
};

template <int BITS> TL_AVX2 inline Block16 load_block_avx2(const uint8_t* src) {
  if constexpr (BITS == 4) {
    // The 16 packed bytes widened to int16: the low nibble is value 2i, the high nibble (the int16 >> 4) 2i + 1.
    const __m256i bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    return {_mm256_and_si256(bytes, _mm256_set1_epi16(0x0F)), _mm256_srli_epi16(bytes, 4)};
  } else {
    return {_mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))),
            _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16)))};
  }
}

template <int BITS, int R, int MT>
TL_AVX2 void tile_avx2(const Problem& p, int64_t n0, int64_t m0, const float* sc, const float* bi) {
  constexpr int kBlockBytes = kBlock * BITS / 8;
  const int64_t blocks = p.K / kBlock;
  const int64_t blocks_per_group = p.G / kBlock;
  const uint8_t* end = p.w + p.N * p.row_bytes;
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = p.w + (n0 + r) * p.row_bytes;
  const int16_t* xq[MT];
  const float* xq_scale[MT];
  for (int t = 0; t < MT; ++t) {
    xq[t] = p.xq + (m0 + t) * p.K;
    xq_scale[t] = p.xq_scale + (m0 + t) * blocks;
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
        const Block16 q = load_block_avx2<BITS>(rows[r] + b * kBlockBytes);
        for (int t = 0; t < MT; ++t) {
          const __m256i* x = reinterpret_cast<const __m256i*>(xq[t] + b * kBlock);
          // vpmaddwd: 16 products of int16 pairs, adjacent pairs added into 8 int32 lanes, exactly.
          const __m256i dot = _mm256_add_epi32(_mm256_madd_epi16(q.lo, _mm256_loadu_si256(x)),
                                               _mm256_madd_epi16(q.hi, _mm256_loadu_si256(x + 1)));
          acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_broadcast_ss(xq_scale[t] + b), acc[r][t]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m256 s = _mm256_set1_ps(sc[r * p.groups + g]);
      for (int t = 0; t < MT; ++t) total[r][t] = _mm256_fmadd_ps(s, acc[r][t], total[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < MT; ++t) store_out(p, m0 + t, n0 + r, finish(p, m0 + t, bi + r * p.groups, hsum(total[r][t])));
}

struct Avx2Tiles {
  static constexpr int kRowsMulti = 1;  // weight rows per tile when x has several rows (16 ymm)
  template <int BITS, int R, int MT>
  static void run(const Problem& p, int64_t n0, int64_t m0, const float* sc, const float* bi) {
    tile_avx2<BITS, R, MT>(p, n0, m0, sc, bi);
  }
};

// ---- Step 3: AVX-512 VNNI, one block per instruction ---------------------------------------------------------------

// A block of 32 weights as int16 in one vector, laid out as load_block_avx2's two halves.
template <int BITS> TL_AVX512_VNNI inline __m512i load_block_vnni(const uint8_t* src) {
  if constexpr (BITS == 4) {
    // The 16 packed bytes twice, widened to int16; the second copy shifted right by 4 (the high nibbles).
    const __m256i twice = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    const __m512i shifts = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    return _mm512_and_si512(_mm512_srlv_epi16(_mm512_cvtepu8_epi16(twice), shifts), _mm512_set1_epi16(0x0F));
  } else {
    return _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  }
}

// Blocks b0..b1 of a tile's weight rows against its x rows, into acc[r * MT + t]: sum of dx * (block dot product).
template <int BITS, int R, int MT>
TL_AVX512_VNNI void blocks_vnni(const uint8_t* const* rows, const int16_t* const* xq, const float* const* xq_scale,
                                int64_t b0, int64_t b1, __m512* acc, const uint8_t* end) {
  constexpr int kBlockBytes = kBlock * BITS / 8;
  for (int64_t b = b0; b < b1; ++b) {
    prefetch_ahead(rows[0] + b * R * kBlockBytes, R * kBlockBytes, end);
    for (int r = 0; r < R; ++r) {
      const __m512i q = load_block_vnni<BITS>(rows[r] + b * kBlockBytes);
      for (int t = 0; t < MT; ++t) {
        // vpdpwssd: vpmaddwd and the add in one instruction, the block's dot product in 16 int32 lanes.
        const __m512i dot = _mm512_dpwssd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(xq[t] + b * kBlock));
        acc[r * MT + t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(xq_scale[t][b]), acc[r * MT + t]);
      }
    }
  }
}

// ---- Step 6: 4-bit blocks in pairs ---------------------------------------------------------------------------------

// Step 3 spends five instructions on each block of 4-bit weights before its vpdpwssd (a broadcast load, a
// widening, a shift, a mask; then a convert and an FMA after it): at M = 1 the kernel was bound by instructions,
// not memory (4864 x 896 in L3: 31 GB/s, the 8-bit kernel 75). Two neighbouring blocks are 32 bytes: widened in
// one instruction to 32 int16, their low nibbles (an AND) are the even values of both blocks, their high nibbles
// (a shift) the odd values, and x is stored in that order (Layout::PairNibbles). Two vpdpwssd then leave block
// b's dot product in int32 lanes 0-7 and block b + 1's in lanes 8-15, which one convert and one FMA with the
// two blocks' scales (dx_b in 8 lanes, dx_b+1 in 8) add to the accumulator: 9 instructions for 64 weights
// instead of 18.
template <int R, int MT>
TL_AVX512_VNNI void pair_blocks_vnni(const uint8_t* const* rows, const int16_t* const* xq, const float* const* xq_scale,
                                     int64_t b0, int64_t b1, __m512* acc, const uint8_t* end) {
  constexpr int kPairBytes = kBlock;  // two blocks of 16 bytes
  for (int64_t b = b0; b < b1; b += 2) {
    prefetch_ahead(rows[0] + b / 2 * R * kPairBytes, R * kPairBytes, end);
    for (int r = 0; r < R; ++r) {
      const __m512i bytes = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r] + b / 2 * kPairBytes)));
      const __m512i even = _mm512_and_si512(bytes, _mm512_set1_epi16(0x0F));
      const __m512i odd = _mm512_srli_epi16(bytes, 4);
      for (int t = 0; t < MT; ++t) {
        const int16_t* x = xq[t] + b * kBlock;
        __m512i dot = _mm512_dpwssd_epi32(_mm512_setzero_si512(), even, _mm512_loadu_si512(x));
        dot = _mm512_dpwssd_epi32(dot, odd, _mm512_loadu_si512(x + kBlock));
        acc[r * MT + t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_loadu_ps(xq_scale[t] + b * 8), acc[r * MT + t]);
      }
    }
  }
}

template <int BITS, int R, int MT, bool PAIRS>
TL_AVX512_VNNI void tile_vnni(const Problem& p, int64_t n0, int64_t m0, const float* sc, const float* bi) {
  const int64_t blocks = p.K / kBlock;
  const int64_t blocks_per_group = p.G / kBlock;
  const uint8_t* end = p.w + p.N * p.row_bytes;
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = p.w + (n0 + r) * p.row_bytes;
  const int16_t* xq[MT];
  const float* xq_scale[MT];
  for (int t = 0; t < MT; ++t) {
    xq[t] = p.xq + (m0 + t) * p.K;
    xq_scale[t] = p.xq_scale + (m0 + t) * blocks * (PAIRS ? 8 : 1);
  }
  __m512 total[R][MT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < MT; ++t) total[r][t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.groups; ++g) {
    __m512 acc[R][MT];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < MT; ++t) acc[r][t] = _mm512_setzero_ps();
    const int64_t b0 = g * blocks_per_group, b1 = b0 + blocks_per_group;
    if constexpr (PAIRS)
      pair_blocks_vnni<R, MT>(rows, xq, xq_scale, b0, b1, &acc[0][0], end);
    else
      blocks_vnni<BITS, R, MT>(rows, xq, xq_scale, b0, b1, &acc[0][0], end);
    for (int r = 0; r < R; ++r) {
      const __m512 s = _mm512_set1_ps(sc[r * p.groups + g]);
      for (int t = 0; t < MT; ++t) total[r][t] = _mm512_fmadd_ps(s, acc[r][t], total[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < MT; ++t)
      store_out(p, m0 + t, n0 + r, finish(p, m0 + t, bi + r * p.groups, _mm512_reduce_add_ps(total[r][t])));
}

struct VnniTiles {
  static constexpr int kRowsMulti = 2;  // 32 zmm: 8 + 8 accumulators for 2 weight rows x 4 x rows
  template <int BITS, int R, int MT>
  static void run(const Problem& p, int64_t n0, int64_t m0, const float* sc, const float* bi) {
    if constexpr (BITS == 4) {
      if (layout_for(Kernel::Vnni, BITS, p.G) == Layout::PairNibbles) return tile_vnni<BITS, R, MT, true>(p, n0, m0, sc, bi);
    }
    tile_vnni<BITS, R, MT, false>(p, n0, m0, sc, bi);
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
    // further apart than the prefetch reaches. 24 down_proj matrices from DRAM, the int8 kernels against the
    // float path in the same runs: 0.83-0.92x with 4 rows, 0.85-1.0x with 2.
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

bool int16_activations_supported(int bits) { return bits == 4 || bits == 8; }

const char* int16_kernel_name() {
  switch (kernel_for()) {
    case Kernel::Vnni: return "vnni";
    case Kernel::Avx2: return "avx2";
    default: return "scalar";
  }
}

void matmul_int16(Problem& p) {
  const Kernel kernel = kernel_for();
  quantize_rows(p, layout_for(kernel, p.bits, p.G));
  decode(p, rows_kernel(kernel, p.bits));
}

}  // namespace engine
