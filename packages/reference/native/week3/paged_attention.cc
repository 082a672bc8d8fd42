// Chapter 3.1 (solution): decode attention over a paged KV cache.
//
// A request's keys and values are not one [S, D] block per head but pages of P tokens scattered over a pool;
// its block table lists them in order. One decode step attends the newest token's query to every token so far:
//   out[b][h] = softmax(q[b][h] . K_b^T * scale) @ V_b,    K_b row t = key_pages[table[b][t / P]][g][t % P]
//
// Built up in steps:
//   0. The definition, token by token through the block table: scores of the T tokens, their softmax, the
//      weighted sum of the values. Right, but it keeps T scores per head and reads each key row once per
//      query head that shares it.
//   1. Page by page with the online softmax (chapter 2.4): a page's P keys give P scores; the running maximum
//      m, the running sum l of exp(score - m) and the unnormalised output o are rescaled when m grows. No
//      buffer grows with T, and the page's rows are read while they are in the L1 cache.
//   2. Grouped-query attention: the G = Hq / Hkv query heads of a kv head take the same page together, so each
//      key and value row is read once per step, not G times (at long contexts attention reads more cache than
//      the layer reads weights).
//   3. Threads: one task per (row, kv head), shared out over tensor-core's pool.
//   4. Vectorisation: the loops over D are contiguous with no reduction across iterations except the dot
//      product; target_clones builds AVX-512, AVX2 and baseline versions of the task.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels.h"

namespace week3 {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Steps 1, 2 and 4 for row b and kv head g: its G query heads against its pages.
__attribute__((target_clones("avx512f", "avx2", "default")))
void attend(const PagedAttentionArgs& a, int64_t b, int64_t g, std::vector<float>& scratch) {
  const int64_t D = a.D, P = a.page_size, G = a.Hq / a.Hkv, T = a.lengths[b];
  scratch.assign(G * (D + P + 2), 0.0f);
  float* o = scratch.data();      // [G, D] unnormalised outputs
  float* s = o + G * D;           // [G, P] one page's scores
  float* m = s + G * P;           // [G] running maxima
  float* l = m + G;               // [G] running sums
  std::fill(m, m + G, kNegInf);
  const float* q = a.q + (b * a.Hq + g * G) * D;  // the G query heads h = g * G .. g * G + G - 1
  const int32_t* table = a.block_tables + b * a.max_blocks;
  for (int64_t t0 = 0; t0 < T; t0 += P) {
    const int64_t n = std::min(P, T - t0);  // tokens in this page (the last page may be partly filled)
    const int64_t page = table[t0 / P];
    const float* k = a.key_pages + (page * a.Hkv + g) * P * D;
    const float* v = a.value_pages + (page * a.Hkv + g) * P * D;
    for (int64_t r = 0; r < G; ++r) {
      float* sr = s + r * P;
      float page_max = kNegInf;
      for (int64_t j = 0; j < n; ++j) {
        float dot = 0.0f;
        for (int64_t d = 0; d < D; ++d) dot += q[r * D + d] * k[j * D + d];
        sr[j] = dot * a.scale;
        page_max = std::max(page_max, sr[j]);
      }
      // The online softmax: rescale what is kept when the maximum grows.
      const float m_new = std::max(m[r], page_max);
      const float correction = std::exp(m[r] - m_new);  // exp(-inf) = 0 on the first page
      float sum = 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        sr[j] = std::exp(sr[j] - m_new);
        sum += sr[j];
      }
      l[r] = l[r] * correction + sum;
      m[r] = m_new;
      float* orow = o + r * D;
      for (int64_t d = 0; d < D; ++d) orow[d] *= correction;
      for (int64_t j = 0; j < n; ++j) {
        const float p = sr[j];
        for (int64_t d = 0; d < D; ++d) orow[d] += p * v[j * D + d];
      }
    }
  }
  float* out = a.out + (b * a.Hq + g * G) * D;
  for (int64_t r = 0; r < G; ++r)
    for (int64_t d = 0; d < D; ++d) out[r * D + d] = o[r * D + d] / l[r];  // l >= 1: the maximum's own term
}

}  // namespace

void paged_attention(const PagedAttentionArgs& a) {
  // Step 3: one task per (row, kv head).
  tl::parallel_for(a.B * a.Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;
    for (int64_t task = begin; task < end; ++task) attend(a, task / a.Hkv, task % a.Hkv, scratch);
  });
}

}  // namespace week3
