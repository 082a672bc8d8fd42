// Chapter 2.4 (solution): flash attention on the CPU.
//
// out = softmax(q @ k^T * scale + mask) @ v for each batch and query head, without the L x S score matrix:
// attention of a long prompt then needs memory for a few tiles, not for L * S scores per head.
//
// Built up in steps, each kept below in order:
//   0. The definition, one query row at a time: scores against every key, the softmax, the weighted sum of v.
//      It holds S scores per row instead of L * S, but reads all of K and V once per query row.
//   1. Tiles: Br query rows against Bc keys at a time. A tile of K and V, read once, serves Br query rows, so
//      K and V are read L / Br times instead of L times; the tiles stay in L1/L2.
//   2. The online softmax: each row keeps its running maximum m, its running sum l of exp(score - m) and its
//      unnormalised output o. A key tile with a larger maximum m' rescales l and o by exp(m - m'), so the
//      softmax never needs all of a row's scores at once; out = o / l at the end.
//   3. Causal tile skipping: query i sees key j iff j <= i + S - L. A key tile past the last key the tile's last
//      query sees is skipped whole, so causal attention does about half the work of an unmasked one.
//   4. Grouped-query attention without copies: query head h reads kv head h / (Hq / Hkv) in place.
//   5. Threads: the (batch, head, query tile) tasks are shared out over tensor-core's pool.
//   6. Vectorisation: the loops run over contiguous memory with no reductions in their inner loop (scores as
//      q[r][d] * kT[d][c] with K transposed in the tile, the output as p[c] * v[c][d]), and exp is a polynomial
//      of plain arithmetic, so the compiler vectorises them; target_clones builds an AVX-512, an AVX2 and a
//      baseline version of the tile function and the CPU picks one at load time.
//   7. Register blocks: kRowBlock query rows at a time, their scores and outputs summed in vectors of kLanes
//      floats that stay in registers (block_scores, block_outputs), and the softmax's maximum and sum taken lane
//      by lane. Step 6's loops kept a row's sums in memory, loaded and stored at every step of d (or of c), and
//      the running sum of the exps kept that loop from vectorising. At L = S = 512, 14 query heads on 2 kv heads
//      of 64, causal (cd packages/engine && npx tsx bench/flash-attention.ts, Zen 5, 2 threads): 13.3-14.3 ms
//      -> 5.3-8.0 ms, where fast.sdpa (the whole score matrix through the GEMM) takes 7.2-11.8 ms.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels.h"

namespace week2 {

namespace {

constexpr int64_t kBr = 32;  // query rows per tile
constexpr int64_t kBc = 64;  // keys per tile
constexpr int64_t kRowBlock = 4;  // query rows whose scores and outputs are accumulated together (step 7)
constexpr int64_t kLanes = 16;    // columns per accumulator: one AVX-512 register, two AVX2 ones
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for x <= 0 (scores minus their running maximum), as plain arithmetic the compiler can vectorise:
// x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-5 polynomial (Cephes expf), 2^n built in the exponent
// bits. About 1 ulp; anything below -87 (including -Infinity) gives 0.
inline float exp_nonpositive(float x) {
  const bool underflow = !(x > -87.0f);
  x = underflow ? -87.0f : x;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return underflow ? 0.0f : y * scale;
}

// Rows of q, v and o in the scratch are padded to a multiple of kLanes values (zeros), for step 7's blocks.
int64_t padded(int64_t d) { return (d + kLanes - 1) / kLanes * kLanes; }

// One tile's worth of state and scratch, reused by a thread across its tasks.
struct Scratch {
  std::vector<float> q, kT, v, o, m, l, s;
  explicit Scratch(int64_t d)
      : q(kBr * padded(d)), kT(d * kBc), v(kBc * padded(d)), o(kBr * padded(d)), m(kBr), l(kBr), s(kRowBlock * kBc) {}
  static_assert(kBr % kRowBlock == 0, "a tile's rows come in whole blocks");
};

// Step 7's vectors: kLanes floats in GCC's vector extension, which each target_clones version maps onto its own
// registers (one AVX-512 register, two AVX2 ones, four SSE ones), loaded and stored with memcpy (any alignment).
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

// Step 7's inner loop, for kRowBlock rows and kLanes columns: acc[rr] += sum_{k < n} a[rr * lda + k] * b[k * ldb ..
// + kLanes). The sums stay in registers over the whole of n, and each loaded vector of b serves every row.
// (Steps 0-6 kept a row's sums in memory, loaded and stored at every k.)
__attribute__((always_inline)) inline void accumulate_block(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t n,
                                                            Lanes* acc) {
  for (int64_t k = 0; k < n; ++k) {
    Lanes bk;
    std::memcpy(&bk, &b[k * ldb], sizeof(bk));
#pragma GCC unroll 4
    for (int64_t rr = 0; rr < kRowBlock; ++rr) acc[rr] += a[rr * lda + k] * bk;
  }
}

// The scores of rows r0 .. r0 + kRowBlock - 1 against the key tile in t.kT (kBc columns, zero past the tile's
// keys): s[rr][c] = sum_d q[r0 + rr][d] * kT[d][c].
__attribute__((always_inline)) inline void block_scores(const Scratch& t, int64_t D, int64_t r0, float* s) {
  const int64_t Dp = padded(D);
  for (int64_t c0 = 0; c0 < kBc; c0 += kLanes) {
    Lanes acc[kRowBlock] = {};
    accumulate_block(&t.q[r0 * Dp], Dp, &t.kT[c0], kBc, D, acc);
    for (int64_t rr = 0; rr < kRowBlock; ++rr) std::memcpy(&s[rr * kBc + c0], &acc[rr], sizeof(Lanes));
  }
}

// Their outputs: o[r0 + rr] = o[r0 + rr] * correction[rr] + sum_c p[rr][c] v[c] over the tile's cols keys.
__attribute__((always_inline)) inline void block_outputs(Scratch& t, int64_t D, int64_t r0, int64_t cols, const float* p,
                                                         const float* correction) {
  const int64_t Dp = padded(D);
  float* o = &t.o[r0 * Dp];
  for (int64_t d0 = 0; d0 < Dp; d0 += kLanes) {
    Lanes acc[kRowBlock];
    for (int64_t rr = 0; rr < kRowBlock; ++rr) {
      std::memcpy(&acc[rr], &o[rr * Dp + d0], sizeof(Lanes));
      acc[rr] *= correction[rr];
    }
    accumulate_block(p, kBc, &t.v[d0], Dp, cols, acc);
    for (int64_t rr = 0; rr < kRowBlock; ++rr) std::memcpy(&o[rr * Dp + d0], &acc[rr], sizeof(Lanes));
  }
}

// Steps 1-3, 6 and 7 for query rows [i0, i0 + rows) of one (batch, head): q, k, v point at that head's [L, D]
// and [S, D] blocks, mask (or null) at its [L, S] block with row stride ms_row and column stride ms_col.
__attribute__((target_clones("avx512f", "avx2", "default")))
void attend_tile(const FlashAttentionArgs& a, const void* q, const void* k, const void* v, const float* mask, int64_t ms_row,
                 int64_t ms_col, float* out, int64_t i0, int64_t rows, Scratch& t) {
  const int64_t D = a.D, Dp = padded(D), S = a.S, L = a.L;
  std::fill(t.q.begin(), t.q.end(), 0.0f);
  std::fill(t.v.begin(), t.v.end(), 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < D; ++d) t.q[r * Dp + d] = tl::load_f32(q, a.dtype, (i0 + r) * D + d) * a.scale;
  std::fill(t.o.begin(), t.o.end(), 0.0f);
  std::fill(t.m.begin(), t.m.begin() + rows, kNegInf);
  std::fill(t.l.begin(), t.l.begin() + rows, 0.0f);

  // Step 3: the last key any row of this tile may see (query i sees keys j <= i + S - L).
  const int64_t key_end = a.causal ? std::min(S, i0 + rows + S - L) : S;
  for (int64_t j0 = 0; j0 < key_end; j0 += kBc) {
    const int64_t cols = std::min(kBc, key_end - j0);
    if (cols < kBc) std::fill(t.kT.begin(), t.kT.end(), 0.0f);  // the missing keys of a last, partial tile
    for (int64_t c = 0; c < cols; ++c)
      for (int64_t d = 0; d < D; ++d) {
        t.kT[d * kBc + c] = tl::load_f32(k, a.dtype, (j0 + c) * D + d);
        t.v[c * Dp + d] = tl::load_f32(v, a.dtype, (j0 + c) * D + d);
      }
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
      const int64_t nr = std::min(kRowBlock, rows - r0);
      float* s = t.s.data();  // [kRowBlock][kBc]
      block_scores(t, D, r0, s);
      // Step 2, the online softmax, row by row: p = exp(s - m) replaces s (0 for hidden and missing keys).
      float correction[kRowBlock];
      std::fill(correction, correction + kRowBlock, 1.0f);
      for (int64_t rr = 0; rr < kRowBlock; ++rr) {
        const int64_t r = r0 + rr, i = i0 + r;
        float* sr = s + rr * kBc;
        if (rr < nr && mask)
          for (int64_t c = 0; c < cols; ++c) sr[c] += mask[i * ms_row + (j0 + c) * ms_col];
        for (int64_t c = 0; c < kBc; ++c) sr[c] = rr < nr && c < cols && (!a.causal || j0 + c <= i + S - L) ? sr[c] : kNegInf;
        // The maximum and the sum lane by lane (kLanes partial results, then combined): a loop carrying one
        // running float through every column does not vectorise, and then its exp runs one value at a time.
        float lane_max[kLanes], lane_sum[kLanes];
        for (int64_t x = 0; x < kLanes; ++x) lane_max[x] = kNegInf, lane_sum[x] = 0.0f;
        for (int64_t c0 = 0; c0 < kBc; c0 += kLanes)
          for (int64_t x = 0; x < kLanes; ++x) lane_max[x] = std::max(lane_max[x], sr[c0 + x]);
        float tile_max = kNegInf;
        for (int64_t x = 0; x < kLanes; ++x) tile_max = std::max(tile_max, lane_max[x]);
        const float m_new = rr < nr ? std::max(t.m[r], tile_max) : kNegInf;
        if (m_new == kNegInf) {  // every key so far is hidden from this row (or there is no such row)
          std::fill(sr, sr + kBc, 0.0f);
          continue;
        }
        correction[rr] = exp_nonpositive(t.m[r] - m_new);
        for (int64_t c0 = 0; c0 < kBc; c0 += kLanes)
          for (int64_t x = 0; x < kLanes; ++x) {
            sr[c0 + x] = exp_nonpositive(sr[c0 + x] - m_new);
            lane_sum[x] += sr[c0 + x];
          }
        float sum = 0.0f;
        for (int64_t x = 0; x < kLanes; ++x) sum += lane_sum[x];
        t.l[r] = t.l[r] * correction[rr] + sum;
        t.m[r] = m_new;
      }
      block_outputs(t, D, r0, cols, s, correction);
    }
  }
  // out = o / l; a row that saw no key at all (l = 0) is 0, not NaN.
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = t.l[r] > 0.0f ? 1.0f / t.l[r] : 0.0f;
    for (int64_t d = 0; d < D; ++d) out[(i0 + r) * D + d] = t.o[r * Dp + d] * inv;
  }
}

}  // namespace

void flash_attention(const FlashAttentionArgs& a) {
  const int64_t group = a.Hq / a.Hkv;
  const int64_t tiles = (a.L + kBr - 1) / kBr;
  const int64_t elem = tl::dtype_size(a.dtype);
  // Step 5: one task per (batch, query head, query tile).
  tl::parallel_for(a.B * a.Hq * tiles, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(a.D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (a.Hq * tiles), h = task / tiles % a.Hq, tile = task % tiles;
      const int64_t g = h / group;  // step 4: the kv head this query head reads
      const auto* q = static_cast<const char*>(a.q) + ((b * a.Hq + h) * a.L * a.D) * elem;
      const auto* k = static_cast<const char*>(a.k) + ((b * a.Hkv + g) * a.S * a.D) * elem;
      const auto* v = static_cast<const char*>(a.v) + ((b * a.Hkv + g) * a.S * a.D) * elem;
      const float* mask = a.mask ? a.mask + b * a.mask_strides[0] + h * a.mask_strides[1] : nullptr;
      float* out = a.out + (b * a.Hq + h) * a.L * a.D;
      const int64_t i0 = tile * kBr;
      attend_tile(a, q, k, v, mask, a.mask_strides[2], a.mask_strides[3], out, i0, std::min(kBr, a.L - i0), scratch);
    }
  });
}

}  // namespace week2
