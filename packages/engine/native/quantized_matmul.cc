// The engine's quantized matmul on the CPU (chapter 2.2's kernel, taken on for speed), with the SDK.
//
//   quantizedMatmul(x, w, scales, biases, out, groupSize, bits[, bias, residual, prologue, normWeight, eps, int16])
//     x       [..., K]       float32 / bfloat16 / float16, contiguous: M rows of K
//     w       [N, K*bits/32] uint32, MLX layout: value j of a row is stream bits [j*bits, (j+1)*bits), stream bit i
//                            is bit i%32 of word i/32 (for 2, 4 and 8 bits: value j of a word sits at j*bits)
//     scales  [N, K/G]       float16 / bfloat16 / float32, one per group of G input columns
//     biases  [N, K/G]       same dtype as scales
//     out     [..., N]       float32, contiguous, overwritten: M rows of N
//   out[m][n] = sum_k x[m][k] * (q[n][k] * scale[n][k/G] + bias[n][k/G])  =  x @ dequantize(w).T
//   The optional arguments fuse the work around a decode projection (step 9, native/fusion.cc): bias [N] and
//   residual [M, N] (float32, or null) are added to out; prologue 1 replaces x by rmsNorm(x) * normWeight, and
//   prologue 2 reads x as [..., 2K] and multiplies by silu(x[:, :K]) * x[:, K:].
//   int16 true rounds x to 16-bit integers per block of 32 for 4- and 8-bit weights: native/quantized_matmul_int16.cc
//   for decode-sized x (M <= 16), native/quantized_gemm_int16.cc for prefills and batches of 12 or more rows where
//   the CPU has AVX-512 VNNI; the engine's default. This file is the float path (the engine's --exact, and
//   prefills below VNNI).
//
//   dequantizeRows(w, scales, biases, ids, out, groupSize, bits): rows ids of the dequantized w, into out
//   [..., K] (the quantized embedding's lookup).
//
// The dequantized matrix is never materialised: a 4-bit weight is 8x smaller than its float32 form, and decode
// is bound by how many bytes of weight cross the memory bus, so those bytes are the whole point.
//
// How it is built up (llm.c style: the plain loop first, then each change and why):
//   0. The definition: for each (m, n), walk k, extract q, dequantize, multiply, add.
//   1. Factor the affine map per group:  sum_j (q_j*s + b) x_j = s * sum_j q_j x_j + b * sum_j x_j.
//      sum_j x_j over each group depends only on x, so it is computed once per call (M * K/G numbers). The inner
//      loop is then integer -> float and one multiply-add per weight value; scale and bias cost once per group.
//   2. Decode (M <= 16): split the N output columns (= weight rows) across the pool, so that each weight row is
//      read from memory exactly once per call, and every decoded vector of 8 weights serves all x rows of a
//      tile. rows_scalar() is steps 0-2 without SIMD: the fallback for every case (CPUs without AVX2/FMA,
//      TINY_LLM_NO_SIMD=1), and the reference the SIMD kernels were checked against.
//   3. AVX2, 8 weights at a time (tile_avx2): 8 consecutive b-bit values are exactly b bytes, so they are loaded
//      as one small integer, broadcast to 8 lanes, shifted right by {0, b, 2b, ...} (vpsrlvd), masked, converted
//      to float (vcvtdq2ps) and multiplied into an accumulator (vfmadd). Group sums stay in vector registers: at
//      the end of a group the accumulator is scaled into a row total with one more FMA, and only the row total is
//      reduced horizontally, once per output. Any bits (3, 5, 6 too), any K.
//   4. Several weight rows per tile for M = 1: independent accumulator chains hide the FMA latency, and the x
//      vector loaded for one row serves the others.
//   5. Scales and biases converted to float32 8 at a time per tile (bf16: a shift; f16: vcvtph2ps), and the bias
//      terms as an 8-wide dot product with the group sums of x. Done one group at a time through a dtype switch,
//      this per-row bookkeeping cost as much as the row's multiply-adds (G = 64: decode went from 6.5 to 9 GB/s
//      on one core).
//   6. 2, 4 and 8 bits (tile_chunks): 32 bytes of packed words at a time, values isolated by AND masks instead
//      of a broadcast and a variable shift per 8 weights, x permuted and pre-scaled once per call to match: one
//      FP-pipe op fewer per 8 weights (4 bits: 5.4 -> 7.1 weights per cycle on one core). See permute_x.
//   7. Prefill (M > 16) is compute-bound, and a register-blocked GEMM beats anything row-by-row: dequantize a
//      block of weight rows into a float32 scratch (a few MB, stays in L3) and hand it to tensor-core's packed
//      AVX2 GEMM through the SDK (tl::matmul). The scratch costs one write + one read per weight value, against
//      2*M FLOPs per value of the GEMM, so it is a few percent at M = 256.
//   8. Decode again: software prefetch, spread evenly over the loop, 4 KB ahead (see kPrefetchBytes). From
//      DRAM, the R interleaved row streams of a tile left the hardware prefetchers behind.
//   9. The model's decode step (Qwen2-0.5B, 4-bit): 0.35-0.38 of the read-bandwidth ceiling while the big shapes
//      alone reached 0.6. A third of the step was around the matmuls: per layer an RMSNorm, bias and residual
//      adds, silu and mul (each an op with its JavaScript, allocation and pool wake-up), and the x preparation
//      of each call (group sums, step 6's permutation) ran scalar. Now the norm or SwiGLU is a prologue and the
//      bias and residual an epilogue of this kernel (native/fusion.cc; store_out), and the x side is vectorised:
//      a layer is four calls here plus one attention kernel (native/attention_decode.cc).
//  10. Long rows (down_proj, K = 4864) in tiles of 2 rows for one x row (see rows_avx2), and one x row no longer
//      holds 4 rows' packed words in registers (tile_chunks).
//  11. Task sizes by bytes (see decode): the small projections of a decode step (0.5 MB) had 16 tasks of 64 rows,
//      each start a jump the prefetch had not covered; now a task per thread.
// Together, Qwen2-0.5B 4-bit decode went from 0.33-0.35 to 0.47-0.51 of the read-bandwidth ceiling (medians of
// 7 rounds alternating the two versions in one process, 1.3-1.4x the tokens/s). What is left is the inner loop: with
// both cores streaming it decodes 4-5 weights per cycle per core, 12-13 GB/s against 18-25 GB/s of read
// bandwidth, so the ratio falls when the machine's neighbours take FP throughput (bench/decode.ts --profile).
#include <tiny_llm/extension.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "quantized.h"

namespace {

using namespace engine;

thread_local Buffer tls_xsum;     // per-group sums of x, calling thread
thread_local Buffer tls_xp;       // x rearranged for the chunked kernels (step 6), calling thread
thread_local Buffer tls_scales;   // a tile's scales and biases as float32, each pool thread its own
thread_local Buffer tls_wblock;   // prefill: a block of dequantized weight rows, calling thread (shared by the pool)
thread_local Buffer tls_oblock;   // prefill: the GEMM's output for that block, calling thread

// =====================================================================================================================
// Decode, scalar: steps 0-2 without SIMD. The fallback for every bits / group size / dtype.
// =====================================================================================================================

void rows_scalar(const Problem& p, int64_t n0, int64_t n1) {
  const int G = p.G;
  float q[128];  // one group of decoded weights, reused by every x row (G <= 128)
  static thread_local std::vector<float> acc;  // one output column, M rows (out may be the residual: not written early)
  acc.resize(p.M);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.w + n * p.row_bytes;
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t g = 0; g < p.groups; ++g) {
      for (int j = 0; j < G; ++j) q[j] = static_cast<float>(extract(row, p.bits, g * G + j));
      const float s = load_param(p.scales, p.sdtype, n * p.groups + g);
      const float b = load_param(p.biases, p.sdtype, n * p.groups + g);
      for (int64_t m = 0; m < p.M; ++m) {
        const float* xg = p.x + m * p.K + g * G;
        float dot = 0.0f;
        for (int j = 0; j < G; ++j) dot += q[j] * xg[j];
        acc[m] += s * dot + b * p.xsum[m * p.groups + g];
      }
    }
    for (int64_t m = 0; m < p.M; ++m) store_out(p, m, n, acc[m]);
  }
}

// =====================================================================================================================
// Decode, AVX2: steps 3 to 6.
// =====================================================================================================================

#ifdef TL_X86_SIMD

// The 8 values that start at `src` (8 values of BITS bits are exactly BITS bytes), as 8 float lanes in order.
template <int BITS> TL_AVX2 inline __m256 unpack8(const uint8_t* src) {
  if constexpr (BITS == 8) {
    // 8 bytes, zero-extended to 8 int32 lanes.
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src))));
  } else if constexpr (BITS == 4) {
    // One 32-bit word; lane i takes nibble i.
    uint32_t word;
    std::memcpy(&word, src, 4);
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts);
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
  } else if constexpr (BITS == 2) {
    uint16_t half;
    std::memcpy(&half, src, 2);
    const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32(half), shifts);
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(3)));
  } else {
    // 3, 5, 6 bits: BITS bytes. Lanes 0-3 take the low 4*BITS bits, lanes 4-7 the next 4*BITS (<= 24 bits each,
    // so each half fits a 32-bit lane before shifting).
    uint64_t u = 0;
    std::memcpy(&u, src, BITS);
    const __m128i lo = _mm_set1_epi32(static_cast<int>(static_cast<uint32_t>(u)));
    const __m128i hi = _mm_set1_epi32(static_cast<int>(static_cast<uint32_t>(u >> (4 * BITS))));
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
    const __m256i shifts = _mm256_setr_epi32(0, BITS, 2 * BITS, 3 * BITS, 0, BITS, 2 * BITS, 3 * BITS);
    v = _mm256_srlv_epi32(v, shifts);
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32((1 << BITS) - 1)));
  }
}

// A tile of R weight rows (n0 ..) by MT x rows (m0 ..): R * MT group accumulators and R * MT row totals stay in
// registers (at most 8 + 8 of the 16 ymm). `sc` and `bi` hold the R rows' scales and biases as float32, `groups`
// apart.
template <int BITS, int R, int MT>
TL_AVX2 void tile_avx2(const Problem& p, int64_t n0, int64_t m0, const float* sc, const float* bi) {
  const int G = p.G;
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = p.w + (n0 + r) * p.row_bytes;
  const float* xs[MT];
  for (int t = 0; t < MT; ++t) xs[t] = p.x + (m0 + t) * p.K;

  __m256 total[R][MT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < MT; ++t) total[r][t] = _mm256_setzero_ps();

  // Step 8: each group step prefetches the R * G * BITS / 8 bytes it consumes, kPrefetchBytes further on.
  const char* pf = reinterpret_cast<const char*>(rows[0]) + kPrefetchBytes;
  const char* pf_end = reinterpret_cast<const char*>(p.w + p.N * p.row_bytes);
  const int64_t group_bytes = int64_t{R} * G * BITS / 8;
  for (int64_t g = 0; g < p.groups; ++g) {
    for (int64_t off = 0; off < group_bytes; off += 64) {
      const char* a = pf + g * group_bytes + off;
      if (a < pf_end) _mm_prefetch(a, _MM_HINT_T0);
    }
    __m256 acc[R][MT];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < MT; ++t) acc[r][t] = _mm256_setzero_ps();
    const int64_t k0 = g * G;
    for (int j = 0; j < G; j += 8) {
      const int64_t k = k0 + j;
      __m256 xv[MT];
      for (int t = 0; t < MT; ++t) xv[t] = _mm256_loadu_ps(xs[t] + k);
      for (int r = 0; r < R; ++r) {
        const __m256 q = unpack8<BITS>(rows[r] + k * BITS / 8);
        for (int t = 0; t < MT; ++t) acc[r][t] = _mm256_fmadd_ps(q, xv[t], acc[r][t]);
      }
    }
    // s * sum_j q_j x_j, still 8 lanes wide: the horizontal sum waits until the row is done.
    for (int r = 0; r < R; ++r) {
      const __m256 s = _mm256_set1_ps(sc[r * p.groups + g]);
      for (int t = 0; t < MT; ++t) total[r][t] = _mm256_fmadd_ps(s, acc[r][t], total[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const int64_t n = n0 + r;
    for (int t = 0; t < MT; ++t) {
      const float* xsum = p.xsum + (m0 + t) * p.groups;  // the bias terms: sum_g b_g * sum_j x_j
      store_out(p, m0 + t, n, hsum(total[r][t]) + dot_avx2(bi + r * p.groups, xsum, p.groups));
    }
  }
}

// Step 6 (2, 4 and 8 bits): whole 32-byte chunks of 8 packed words, and masks instead of shifts.
// Step 3 spends a broadcast, a variable shift, an AND, a convert and an FMA per 8 weights (4 bits: about 5.4
// weights per cycle on one Zen3 core). Here one plain 32-byte load brings 8 words;
// lane w of every vector made from it comes from word w, and value (byte i, field h) of each word is isolated by
// an AND with (2^bits - 1) << (8i + h*bits) after one shift by h*bits per field. The masked integer is
// q * 256^i: cvtdq2ps converts it exactly (at most 8 significant bits, below 2^31), and the matching x value
// is pre-multiplied by 256^-i (exact: a power of two), so the FMA adds q * x as before. That leaves an AND, a
// convert and an FMA per 8 weights: 7.1 weights per (2.45 GHz) cycle at 4 bits, 6.9 at 2 bits (3.7 with step 3). (8-bit
// byte 3 would overflow int32 as q * 2^24: it is shifted down instead.)
// x must then be in the same order: xp, rearranged once per call by permute_x below. (The chunk's lanes need not
// share a group: lane_scales gives each lane its group's scale.)
template <int BITS> constexpr int kChunk = 256 / BITS;  // values per 32-byte chunk

// xp[c*CH + v*8 + w] = x[c*CH + w*(32/bits) + i*(8/bits) + h] * 256^-i, for vector v = h*4 + i of chunk c.
void permute_x(const float* x, int64_t M, int64_t K, int bits, float* xp) {
  const int64_t ch = 256 / bits, per_word = 32 / bits, per_byte = 8 / bits;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < K / ch; ++c) {
      const float* src = x + m * K + c * ch;
      float* dst = xp + m * K + c * ch;
      for (int h = 0; h < per_byte; ++h)
        for (int i = 0; i < 4; ++i) {
          static constexpr float kScale[4] = {1.0f, 1.0f / 256, 1.0f / 65536, 1.0f / 16777216};
          const float scale = (bits == 8 && i == 3) ? 1.0f : kScale[i];
          for (int w = 0; w < 8; ++w) dst[(h * 4 + i) * 8 + w] = src[w * per_word + i * per_byte + h] * scale;
        }
    }
}

// The scales of chunk c's lanes: one group for the whole chunk, or 2 or 4 groups when the chunk is longer than a
// group (4-bit with G = 32: 64 values, lanes 0-3 and 4-7; 2-bit: 128 values).
// `chunks_per_group_log2` = log2(G / ch) when ch <= G (all powers of two: no division in the loop), else -1.
// Several groups: one load of their scales and one lane permutation (vpermps), not 8 scalar inserts.
TL_AVX2 inline __m256 lane_scales(const float* s, int64_t c, int ch, int G, int chunks_per_group_log2) {
  if (chunks_per_group_log2 >= 0) return _mm256_set1_ps(s[c >> chunks_per_group_log2]);
  const float* g = s + c * (ch / G);
  if (ch == 2 * G) {
    const __m128 two = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(g)));
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
  }
  const __m128 four = _mm_loadu_ps(g);
  return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(four), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
}

// tile_avx2's job for BITS in {2, 4, 8} when K is a whole number of chunks, with the scale applied per chunk
// (lane_scales). Each (weight row, x row) pair keeps two accumulators (even and odd vectors), so that twice as
// many FMA chains are in flight: with one chain per pair, an x tile of 4 rows waited on the FMA latency
// (M = 4: 1.9 -> 2.8 weights per cycle, each serving 4 rows). llvm-mca (znver3) puts the one-x-row loop at the
// limit of the four FP pipes: FMAs on two, the ANDs and converts on the other two.
template <int BITS, int R, int MT>
TL_AVX2 void tile_chunks(const Problem& p, int64_t n0, int64_t m0, const float* sc, const float* bi) {
  constexpr int CH = kChunk<BITS>;
  constexpr int H = 8 / BITS;   // fields per byte
  constexpr int NA = 2;
  constexpr uint32_t kMask = (1u << BITS) - 1;
  const int64_t chunks = p.K / CH;
  const int cpg_log2 = CH <= p.G ? __builtin_ctz(static_cast<unsigned>(p.G / CH)) : -1;
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = p.w + (n0 + r) * p.row_bytes;
  const float* xs[MT];
  for (int t = 0; t < MT; ++t) xs[t] = p.xp + (m0 + t) * p.K;

  __m256 total[R][MT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < MT; ++t) total[r][t] = _mm256_setzero_ps();

  // Step 8: each chunk step prefetches the R * 32 bytes it consumes, kPrefetchBytes further on.
  const char* pf = reinterpret_cast<const char*>(rows[0]) + kPrefetchBytes;
  const char* pf_end = reinterpret_cast<const char*>(p.w + p.N * p.row_bytes);
  for (int64_t c = 0; c < chunks; ++c) {
    for (int off = 0; off < R * 32; off += 64) {
      const char* a = pf + c * R * 32 + off;
      if (a < pf_end) _mm_prefetch(a, _MM_HINT_T0);
    }
    __m256 acc[NA][R][MT];
    for (int a = 0; a < NA; ++a)
      for (int r = 0; r < R; ++r)
        for (int t = 0; t < MT; ++t) acc[a][r][t] = _mm256_setzero_ps();
    // Row by row, each decoded weight vector serving the MT x rows (whose vectors are memory operands: loads are
    // cheap). With one x row this used to run the other way round, each x vector loaded once for the R rows and
    // their packed words held in registers: 21 live vectors for 16 ymm registers, and the spills cost 3-6%.
    for (int r = 0; r < R; ++r) {
      const __m256i words = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r] + c * 32));
      for (int h = 0; h < H; ++h) {
        const __m256i field = h == 0 ? words : _mm256_srli_epi32(words, h * BITS);
        for (int i = 0; i < 4; ++i) {
          __m256i qi;
          if (BITS == 8 && i == 3) qi = _mm256_srli_epi32(field, 24);
          else qi = _mm256_and_si256(field, _mm256_set1_epi32(static_cast<int>(kMask << (8 * i))));
          const __m256 q = _mm256_cvtepi32_ps(qi);
          const int v = h * 4 + i;
          for (int t = 0; t < MT; ++t)
            acc[v % NA][r][t] = _mm256_fmadd_ps(q, _mm256_loadu_ps(xs[t] + c * CH + v * 8), acc[v % NA][r][t]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m256 s = lane_scales(sc + r * p.groups, c, CH, p.G, cpg_log2);
      for (int t = 0; t < MT; ++t) {
        __m256 a = acc[0][r][t];
        if (NA == 2) a = _mm256_add_ps(a, acc[NA - 1][r][t]);
        total[r][t] = _mm256_fmadd_ps(s, a, total[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    const int64_t n = n0 + r;
    for (int t = 0; t < MT; ++t) {
      const float* xsum = p.xsum + (m0 + t) * p.groups;  // the bias terms: sum_g b_g * sum_j x_j
      store_out(p, m0 + t, n, hsum(total[r][t]) + dot_avx2(bi + r * p.groups, xsum, p.groups));
    }
  }
}

// All M x rows for the weight rows [n0, n1): x rows in tiles of up to 4, weight rows in tiles of R. The rows'
// packed bytes (K * bits / 8, a few hundred bytes) stay in L1 while the x tiles pass over them, so memory still
// sees every weight byte once. CHUNKED picks tile_chunks (step 6) over tile_avx2.
template <int BITS, bool CHUNKED> TL_AVX2 void rows_avx2(const Problem& p, int64_t n0, int64_t n1) {
  float* sc = tls_scales.get(8 * p.groups);
  float* bi = sc + 4 * p.groups;
  auto params_of = [&](int64_t n, int r) { params_f32(p, n, r, sc, bi); };
  // Tiles of R weight rows x MT x rows: R = 4 when one x row (step 4; 2 for long rows, step 10), fewer as x rows
  // take registers.
  auto run = [&](auto mt_c, auto r_c, int64_t m0) {
    constexpr int MT = decltype(mt_c)::value;
    constexpr int R = decltype(r_c)::value;
    // 8 bits and one x row: step 3's zero-extending load (vpmovzxbd) needs one FP-pipe op fewer per 8 weights
    // than step 6's AND, and measured 7.0 against 6.3 weights per cycle. With several x rows step 6 wins (its
    // two accumulators per pair).
    constexpr bool kChunks = CHUNKED && !(BITS == 8 && MT == 1);
    int64_t n = n0;
    for (; n + R <= n1; n += R) {
      params_of(n, R);
      if constexpr (kChunks) tile_chunks<BITS, R, MT>(p, n, m0, sc, bi);
      else tile_avx2<BITS, R, MT>(p, n, m0, sc, bi);
    }
    for (; n < n1; ++n) {
      params_of(n, 1);
      if constexpr (kChunks) tile_chunks<BITS, 1, MT>(p, n, m0, sc, bi);
      else tile_avx2<BITS, 1, MT>(p, n, m0, sc, bi);
    }
  };
  using I1 = std::integral_constant<int, 1>;
  using I2 = std::integral_constant<int, 2>;
  using I3 = std::integral_constant<int, 3>;
  using I4 = std::integral_constant<int, 4>;
  int64_t m0 = 0;
  for (; m0 + 4 <= p.M; m0 += 4) run(I4{}, I1{}, m0);
  switch (p.M - m0) {
    case 3: run(I3{}, I1{}, m0); break;
    case 2: run(I2{}, I2{}, m0); break;
    case 1:
      // Step 10: with one x row, long rows (down_proj's K = 4864 at 4 bits: 2.4 KB each) go 2 to a tile. The
      // 4 row streams of a 4-row tile start 2.4 KB apart, beyond what step 8's linear prefetch covers at the
      // tile's start; with 2 they stay ahead. Both cores, 896 x 4864 from DRAM: 10.0 -> 12.9 GB/s (at K = 896
      // 4 rows stay best: 13.0 against 12.0 GB/s).
      if (p.row_bytes >= 1024) run(I1{}, I2{}, m0);
      else run(I1{}, I4{}, m0);
      break;
    default: break;
  }
}

#endif  // TL_X86_SIMD

// The chunked kernels need K to be a whole number of chunks (64 values for 4 bits): true of every real model
// (K is a multiple of 128 there); other K take step 3's kernels.
bool use_chunks(int bits, int64_t K) {
#ifdef TL_X86_SIMD
  return has_avx2_fma() && (bits == 2 || bits == 4 || bits == 8) && K % (256 / bits) == 0;
#else
  return false;
#endif
}

RowsFn rows_kernel(int bits, int64_t K) {
#ifdef TL_X86_SIMD
  if (use_chunks(bits, K)) {
    switch (bits) {
      case 2: return &rows_avx2<2, true>;
      case 4: return &rows_avx2<4, true>;
      default: return &rows_avx2<8, true>;
    }
  }
  if (has_avx2_fma()) {
    switch (bits) {
      case 2: return &rows_avx2<2, false>;
      case 3: return &rows_avx2<3, false>;
      case 4: return &rows_avx2<4, false>;
      case 5: return &rows_avx2<5, false>;
      case 6: return &rows_avx2<6, false>;
      case 8: return &rows_avx2<8, false>;
      default: break;
    }
  }
#endif
  return &rows_scalar;
}

// =====================================================================================================================
// Prefill: dequantize blocks of weight rows and multiply them with tensor-core's GEMM (step 7).
// =====================================================================================================================

// Rows [n0, n1) of the weight, dequantized into dst (row n at dst + (n - n0) * K).
void dequant_rows_scalar(const Problem& p, int64_t n0, int64_t n1, float* dst) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.w + n * p.row_bytes;
    float* d = dst + (n - n0) * p.K;
    for (int64_t g = 0; g < p.groups; ++g) {
      const float s = load_param(p.scales, p.sdtype, n * p.groups + g);
      const float b = load_param(p.biases, p.sdtype, n * p.groups + g);
      for (int j = 0; j < p.G; ++j) d[g * p.G + j] = static_cast<float>(extract(row, p.bits, g * p.G + j)) * s + b;
    }
  }
}

#ifdef TL_X86_SIMD
template <int BITS> TL_AVX2 void dequant_rows_avx2(const Problem& p, int64_t n0, int64_t n1, float* dst) {
  float* sc = tls_scales.get(2 * p.groups);
  float* bi = sc + p.groups;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.w + n * p.row_bytes;
    float* d = dst + (n - n0) * p.K;
    params_f32(p, n, 1, sc, bi);
    for (int64_t g = 0; g < p.groups; ++g) {
      const __m256 s = _mm256_set1_ps(sc[g]);
      const __m256 b = _mm256_set1_ps(bi[g]);
      for (int j = 0; j < p.G; j += 8) {
        const int64_t k = g * p.G + j;
        _mm256_storeu_ps(d + k, _mm256_fmadd_ps(unpack8<BITS>(row + k * BITS / 8), s, b));
      }
    }
  }
}
#endif

using DequantFn = void (*)(const Problem&, int64_t n0, int64_t n1, float* dst);

DequantFn dequant_kernel(int bits) {
#ifdef TL_X86_SIMD
  if (has_avx2_fma()) {
    switch (bits) {
      case 2: return &dequant_rows_avx2<2>;
      case 3: return &dequant_rows_avx2<3>;
      case 4: return &dequant_rows_avx2<4>;
      case 5: return &dequant_rows_avx2<5>;
      case 6: return &dequant_rows_avx2<6>;
      case 8: return &dequant_rows_avx2<8>;
      default: break;
    }
  }
#endif
  return &dequant_rows_scalar;
}

// Returns nullptr, or the GEMM's complaint. x2d is x as [M, K] in its own dtype (the GEMM converts bf16 itself).
const char* prefill(const Problem& p, const tl::TensorRef& x2d) {
  // Block rows: about 1M floats (4 MB, in L3) per dequantized block, a multiple of 16 (the GEMM's micro-tile
  // width), at least 64 so that packing A once per block stays a small cost against M * rows * K FMAs.
  int64_t nb = std::max<int64_t>(64, ((int64_t{1} << 20) / std::max<int64_t>(p.K, 1)) / 16 * 16);
  nb = std::min(nb, p.N);
  float* wblock = tls_wblock.get(nb * p.K);
  float* oblock = tls_oblock.get(p.M * nb);
  const DequantFn dequant = dequant_kernel(p.bits);
  constexpr int64_t kDequantRows = 16;
  for (int64_t n0 = 0; n0 < p.N; n0 += nb) {
    const int64_t rows = std::min(nb, p.N - n0);
    run_tasks((rows + kDequantRows - 1) / kDequantRows, [&](int64_t t) {
      const int64_t r0 = t * kDequantRows, r1 = std::min(rows, r0 + kDequantRows);
      dequant(p, n0 + r0, n0 + r1, wblock + r0 * p.K);
    });
    // The block is W[n0 : n0 + rows] (rows x K, row-major); the GEMM gets its transpose as a strided view,
    // the linear-layer layout it is tuned for.
    tl::TensorRef b;
    b.data = wblock;
    b.dtype = DType::F32;
    b.shape = {p.K, rows};
    b.strides = {1, p.K};
    tl::TensorRef o;
    o.data = oblock;
    o.dtype = DType::F32;
    o.shape = {p.M, rows};
    o.strides = {rows, 1};
    if (const char* err = tl::matmul(x2d, b, o)) return err;
    // The GEMM wants a contiguous output; copy the block's columns into place (M * rows floats, against
    // M * rows * K FMAs), with the epilogue when there is one.
    if (p.bias || p.residual) {
      for (int64_t m = 0; m < p.M; ++m)
        for (int64_t j = 0; j < rows; ++j) store_out(p, m, n0 + j, oblock[m * rows + j]);
    } else {
      for (int64_t m = 0; m < p.M; ++m) std::memcpy(p.out + m * p.N + n0, oblock + m * rows, rows * sizeof(float));
    }
  }
  return nullptr;
}

// =====================================================================================================================
// The binding
// =====================================================================================================================

constexpr int64_t kDecodeMaxM = 16;
// The integer GEMM's panels are 16 x rows wide at M <= 16, so its time is flat up to there, where the decode tiles
// grow with M: 4864 x 896 at 4 bits, weights from DRAM, the tiles take 183, 373 and 778 us at M = 4, 8 and 16,
// the GEMM 485-495 us at each (414-441 at M = 16 since its step 7). It takes over from 12 rows (a batch of decode
// steps).
constexpr int64_t kInt16GemmMinM = 12;

bool is_float(DType d) { return is_float_dtype(d); }

#ifdef TL_X86_SIMD
// Per-group sums of one x row.
TL_AVX2 void group_sums_avx2(const float* x, int64_t groups, int G, float* xsum) {
  for (int64_t g = 0; g < groups; ++g) {
    __m256 a = _mm256_loadu_ps(x + g * G), b = _mm256_loadu_ps(x + g * G + 8);
    for (int j = 16; j < G; j += 16) {
      a = _mm256_add_ps(a, _mm256_loadu_ps(x + g * G + j));
      b = _mm256_add_ps(b, _mm256_loadu_ps(x + g * G + j + 8));
    }
    xsum[g] = hsum(_mm256_add_ps(a, b));
  }
}

// permute_x for 4 bits: each chunk of 64 values is an 8 x 8 transpose (word w's value j = 2i + h goes to lane w
// of vector v = 4h + i), then vector v scaled by 256^-i.
TL_AVX2 void permute_x4_avx2(const float* x, int64_t K, float* xp) {
  const __m256 scale[4] = {_mm256_set1_ps(1.0f), _mm256_set1_ps(1.0f / 256), _mm256_set1_ps(1.0f / 65536),
                           _mm256_set1_ps(1.0f / 16777216)};
  for (int64_t c = 0; c < K / 64; ++c) {
    const float* src = x + c * 64;
    float* dst = xp + c * 64;
    __m256 col[8];
    for (int w = 0; w < 8; ++w) col[w] = _mm256_loadu_ps(src + w * 8);
    transpose8(col);  // col[j][w] = src[w * 8 + j]
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 4; ++i) _mm256_storeu_ps(dst + (h * 4 + i) * 8, _mm256_mul_ps(col[2 * i + h], scale[i]));
  }
}
#endif

Napi::Value Connect(const Napi::CallbackInfo& info) {
  tl::sdk::connect(info.Env(), info[0]);
  return info.Env().Undefined();
}

// quantizedMatmul(x, w, scales, biases, out, groupSize, bits[, bias, residual, prologue, normWeight, eps, int16])
//   x         [..., K] (or [..., 2K] with the swiglu prologue), contiguous; out [..., N] float32, contiguous, as
//             many rows as x
//   bias      [N] float32 or null; residual: float32, out's shape, contiguous, or null (may be out itself)
//   prologue  0 none, 1 rmsNorm with normWeight [K] and eps, 2 swiglu (step 9)
//   int16     true: x rounded to 16-bit integers per block of 32 (native/quantized_matmul_int16.cc)
Napi::Value QuantizedMatmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "quantizedMatmul";
  tl::TensorRef t[5];
  if (!tensor_args(info, op, 0, t)) return env.Undefined();
  const tl::TensorRef &x = t[0], &w = t[1], &scales = t[2], &biases = t[3], &out = t[4];
  const int G = info[5].ToNumber().Int32Value();
  const int bits = info[6].ToNumber().Int32Value();
  Fusion fusion;
  const char* fusion_error = parse_fusion(info, 7, fusion);
  if (env.IsExceptionPending()) return env.Undefined();
  auto fail = [&](const std::string& why) {
    Napi::TypeError::New(env, std::string(op) + ": " + why + " (x " + x.describe() + ", w " + w.describe() +
                                  ", scales " + scales.describe() + ", biases " + biases.describe() + ", out " +
                                  out.describe() + "; " + std::to_string(bits) + "-bit, group size " +
                                  std::to_string(G) + ")")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  };
  if (!(bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8)) return fail("unsupported bits");
  if (!(G == 32 || G == 64 || G == 128)) return fail("unsupported group size");
  if (x.ndim() < 1 || w.ndim() != 2 || scales.ndim() != 2 || biases.ndim() != 2 || out.ndim() < 1)
    return fail("w, scales and biases must be 2-D, x and out at least 1-D");
  if (!is_float(x.dtype)) return fail("x must be float32, bfloat16 or float16");
  if (w.dtype != DType::U32) return fail("w must be uint32");
  if (!is_float(scales.dtype) || biases.dtype != scales.dtype) return fail("scales and biases must be float of one dtype");
  if (out.dtype != DType::F32) return fail("out must be float32");
  if (fusion_error) return fail(fusion_error);
  const int64_t xk = x.shape.back(), K = fusion.prologue == kSwiglu ? xk / 2 : xk, N = w.shape[0];
  if (fusion.prologue == kSwiglu && xk % 2 != 0) return fail("the swiglu prologue needs x of an even last dimension");
  const int64_t M = xk == 0 ? 0 : x.numel() / xk;
  if (w.shape[1] * 32 != K * bits) return fail("w's packed width does not match x's last dimension");
  if (K % G != 0) return fail("K is not a multiple of the group size");
  const int64_t groups = K / G;
  if (scales.shape[0] != N || scales.shape[1] != groups || biases.shape[0] != N || biases.shape[1] != groups)
    return fail("scales and biases must be [N, K / groupSize]");
  if (out.shape.back() != N || out.numel() != M * N) return fail("out must be [..., N] with x's rows");
  if (!x.contiguous() || !w.contiguous() || !scales.contiguous() || !biases.contiguous() || !out.contiguous())
    return fail("every operand must be contiguous");
  if (const char* err = check_fusion(fusion, M, K, N)) return fail(err);
  if (M == 0 || N == 0) return env.Undefined();
  // The last argument asks for integer activations (native/quantized_matmul_int16.cc), which 4- and 8-bit weights
  // have; other widths keep float activations. From kInt16GemmMinM rows they go through the integer GEMM
  // (native/quantized_gemm_int16.cc) where the CPU has AVX-512 VNNI; elsewhere the float GEMM on dequantized blocks
  // beat the integer tiles for prefill (see quantized_matmul_int16.cc, step 4), and prefill keeps float activations.
  const bool int16 = info.Length() > 12 && info[12].ToBoolean().Value() && int16_activations_supported(bits);
  const bool int16_gemm = int16 && M >= kInt16GemmMinM && int16_gemm_supported(bits);

  Problem p{};
  p.M = M;
  p.K = K;
  p.N = N;
  p.groups = groups;
  p.G = G;
  p.bits = bits;
  p.w = static_cast<const uint8_t*>(w.data);
  p.row_bytes = K * bits / 8;
  p.scales = scales.data;
  p.biases = biases.data;
  p.sdtype = scales.dtype;
  p.out = out.ptr<float>();
  p.bias = fusion.bias.data ? fusion.bias.ptr<float>() : nullptr;
  p.residual = fusion.residual.data ? fusion.residual.ptr<float>() : nullptr;
  try {
    if (M > kDecodeMaxM && !int16_gemm) {
      // The GEMM takes x in its own dtype; a prologue hands it the prepared float32 rows instead.
      tl::TensorRef x2d;
      x2d.dtype = x.dtype;
      x2d.data = x.data;
      if (fusion.prologue != kNoPrologue) {
        x2d.dtype = DType::F32;
        x2d.data = const_cast<float*>(prepare_x(x, M, K, fusion));
      }
      x2d.shape = {M, K};
      x2d.strides = {K, 1};
      const char* err = prefill(p, x2d);
      if (err == nullptr) return env.Undefined();
      // The SDK is not connected, or too old to have tl::matmul: the decode path below is correct for any M.
    }
    // Decode: x as float32 rows (bf16 / f16 converted once per call, not once per weight row; the prologue
    // applied), and the per-group sums of x (step 1).
    const float* xf = prepare_x(x, M, K, fusion);
    float* xsum = tls_xsum.get(M * groups);
    for (int64_t m = 0; m < M; ++m) {
#ifdef TL_X86_SIMD
      if (has_avx2_fma()) {
        group_sums_avx2(xf + m * K, groups, G, xsum + m * groups);
        continue;
      }
#endif
      for (int64_t g = 0; g < groups; ++g) {
        float s = 0.0f;
        for (int j = 0; j < G; ++j) s += xf[m * K + g * G + j];
        xsum[m * groups + g] = s;
      }
    }
    p.x = xf;
    p.xsum = xsum;
    p.xp = nullptr;
    if (int16_gemm) {
      gemm_int16(p);
      return env.Undefined();
    }
    if (int16) {
      matmul_int16(p);
      return env.Undefined();
    }
#ifdef TL_X86_SIMD
    if (use_chunks(bits, K)) {
      float* xp = tls_xp.get(M * K);
      if (bits == 4) {
        for (int64_t m = 0; m < M; ++m) permute_x4_avx2(xf + m * K, K, xp + m * K);
      } else {
        permute_x(xf, M, K, bits, xp);
      }
      p.xp = xp;
    }
#endif
    decode(p, rows_kernel(p.bits, p.K));
  } catch (const std::bad_alloc&) {
    Napi::Error::New(env, std::string(op) + ": out of memory for scratch buffers").ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

// dequantizeRows(w, scales, biases, ids, out, groupSize, bits): rows ids[i] of a quantized matrix [N, K],
// dequantized into out [..., K] (float32, contiguous, one row per id): the quantized embedding's lookup. Done in
// JavaScript (gather the packed words, scales and biases, then tensor-core's dequantize) it took 45-110 us per
// token; here it is the prefill path's dequantizer, a microsecond.
Napi::Value DequantizeRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "dequantizeRows";
  tl::TensorRef t[5];
  if (!tensor_args(info, op, 0, t)) return env.Undefined();
  const tl::TensorRef &w = t[0], &scales = t[1], &biases = t[2], &ids = t[3], &out = t[4];
  const int G = info[5].ToNumber().Int32Value();
  const int bits = info[6].ToNumber().Int32Value();
  auto fail = [&](const std::string& why) {
    Napi::TypeError::New(env, std::string(op) + ": " + why + " (w " + w.describe() + ", ids " + ids.describe() +
                                  ", out " + out.describe() + ")")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  };
  if (!(bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8) || !(G == 32 || G == 64 || G == 128))
    return fail("unsupported bits or group size");
  if (w.ndim() != 2 || w.dtype != DType::U32 || scales.ndim() != 2 || !is_float(scales.dtype) || biases.dtype != scales.dtype)
    return fail("w must be uint32 [N, K * bits / 32], scales and biases float [N, K / groupSize]");
  const int64_t N = w.shape[0], K = w.shape[1] * 32 / bits;
  if (K % G != 0 || scales.shape[0] != N || scales.shape[1] != K / G || biases.shape != scales.shape)
    return fail("scales and biases must be [N, K / groupSize]");
  if (!w.contiguous() || !scales.contiguous() || !biases.contiguous()) return fail("w, scales and biases must be contiguous");
  if (const std::string why = check_lookup(ids, out, K, N); !why.empty()) return fail(why);
  Problem p{};
  p.K = K;
  p.N = N;
  p.groups = K / G;
  p.G = G;
  p.bits = bits;
  p.w = static_cast<const uint8_t*>(w.data);
  p.row_bytes = K * bits / 8;
  p.scales = scales.data;
  p.biases = biases.data;
  p.sdtype = scales.dtype;
  const DequantFn dequant = dequant_kernel(bits);
  const int32_t* id = static_cast<const int32_t*>(ids.data);
  try {
    for (int64_t i = 0; i < ids.numel(); ++i) dequant(p, id[i], id[i] + 1, out.ptr<float>() + i * K);
  } catch (const std::bad_alloc&) {
    Napi::Error::New(env, std::string(op) + ": out of memory for scratch buffers").ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

// Which path this process uses, for tests and benchmark reports.
Napi::Value CpuFeatures(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("simd", has_avx2_fma());
  o.Set("int16Kernel", engine::int16_kernel_name());
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports["connect"] = Napi::Function::New(env, Connect);
  exports["quantizedMatmul"] = Napi::Function::New(env, QuantizedMatmul);
  exports["cpuFeatures"] = Napi::Function::New(env, CpuFeatures);
  exports["attentionDecode"] = Napi::Function::New(env, engine::AttentionDecode);
  exports["pagedAttentionDecode"] = Napi::Function::New(env, engine::PagedAttentionDecode);
  exports["packPanels"] = Napi::Function::New(env, engine::PackPanels);
  exports["panelLinear"] = Napi::Function::New(env, engine::PanelLinear);
  exports["panelRows"] = Napi::Function::New(env, engine::PanelRows);
  exports["packQuantizedPanels"] = Napi::Function::New(env, engine::PackQuantizedPanels);
  exports["quantizedPanelLinear"] = Napi::Function::New(env, engine::QuantizedPanelLinear);
  exports["dequantizePanelRows"] = Napi::Function::New(env, engine::DequantizePanelRows);
  exports["quantizedPanelsSupported"] = Napi::Function::New(env, engine::QuantizedPanelsSupported);
  exports["dequantizeRows"] = Napi::Function::New(env, DequantizeRows);
  return exports;
}

}  // namespace

NODE_API_MODULE(engine_kernels, Init)
