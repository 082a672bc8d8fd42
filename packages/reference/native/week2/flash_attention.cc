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

// One tile's worth of state and scratch, reused by a thread across its tasks.
struct Scratch {
  std::vector<float> q, kT, v, o, m, l, s;
  explicit Scratch(int64_t d) : q(kBr * d), kT(d * kBc), v(kBc * d), o(kBr * d), m(kBr), l(kBr), s(kBc) {}
};

// Steps 1-3 and 6 for query rows [i0, i0 + rows) of one (batch, head): q, k, v point at that head's [L, D] and
// [S, D] blocks, mask (or null) at its [L, S] block with row stride ms_row and column stride ms_col.
__attribute__((target_clones("avx512f", "avx2", "default")))
void attend_tile(const FlashAttentionArgs& a, const void* q, const void* k, const void* v, const float* mask, int64_t ms_row,
                 int64_t ms_col, float* out, int64_t i0, int64_t rows, Scratch& t) {
  const int64_t D = a.D, S = a.S, L = a.L;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < D; ++d) t.q[r * D + d] = tl::load_f32(q, a.dtype, (i0 + r) * D + d) * a.scale;
  std::fill(t.o.begin(), t.o.begin() + rows * D, 0.0f);
  std::fill(t.m.begin(), t.m.begin() + rows, kNegInf);
  std::fill(t.l.begin(), t.l.begin() + rows, 0.0f);

  // Step 3: the last key any row of this tile may see (query i sees keys j <= i + S - L).
  const int64_t key_end = a.causal ? std::min(S, i0 + rows + S - L) : S;
  for (int64_t j0 = 0; j0 < key_end; j0 += kBc) {
    const int64_t cols = std::min(kBc, key_end - j0);
    for (int64_t c = 0; c < cols; ++c)
      for (int64_t d = 0; d < D; ++d) {
        t.kT[d * kBc + c] = tl::load_f32(k, a.dtype, (j0 + c) * D + d);
        t.v[c * D + d] = tl::load_f32(v, a.dtype, (j0 + c) * D + d);
      }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      float* s = t.s.data();
      // Scores of row r against the tile's keys: s[c] = sum_d q[r][d] * kT[d][c].
      for (int64_t c = 0; c < cols; ++c) s[c] = 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        const float qd = t.q[r * D + d];
        const float* kd = &t.kT[d * kBc];
        for (int64_t c = 0; c < cols; ++c) s[c] += qd * kd[c];
      }
      if (mask)
        for (int64_t c = 0; c < cols; ++c) s[c] += mask[i * ms_row + (j0 + c) * ms_col];
      if (a.causal)
        for (int64_t c = 0; c < cols; ++c) s[c] = j0 + c <= i + S - L ? s[c] : kNegInf;

      // Step 2, the online softmax.
      float tile_max = kNegInf;
      for (int64_t c = 0; c < cols; ++c) tile_max = std::max(tile_max, s[c]);
      const float m_new = std::max(t.m[r], tile_max);
      if (m_new == kNegInf) continue;  // every key so far is hidden from this row
      const float correction = exp_nonpositive(t.m[r] - m_new);
      float sum = 0.0f;
      for (int64_t c = 0; c < cols; ++c) {
        s[c] = exp_nonpositive(s[c] - m_new);
        sum += s[c];
      }
      t.l[r] = t.l[r] * correction + sum;
      t.m[r] = m_new;
      float* o = &t.o[r * D];
      for (int64_t d = 0; d < D; ++d) o[d] *= correction;
      for (int64_t c = 0; c < cols; ++c) {
        const float p = s[c];
        const float* vc = &t.v[c * D];
        for (int64_t d = 0; d < D; ++d) o[d] += p * vc[d];
      }
    }
  }
  // out = o / l; a row that saw no key at all (l = 0) is 0, not NaN.
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = t.l[r] > 0.0f ? 1.0f / t.l[r] : 0.0f;
    for (int64_t d = 0; d < D; ++d) out[(i0 + r) * D + d] = t.o[r * D + d] * inv;
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
