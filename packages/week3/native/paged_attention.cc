// Chapter 3.1: decode attention over a paged KV cache. Read docs/week3/3.1-paged-attention.md, then write the
// kernel. `pnpm build` (or the week's `pnpm test`) compiles it; the binding in addon.cc checks the arguments
// (every page a row reads is inside the pool) for you.
#include "kernels.h"

namespace week3 {

// For each row b and query head h (reading kv head g = h / (Hq / Hkv)):
//   out[b][h] = softmax(q[b][h] . K^T * scale) @ V      over row b's first lengths[b] tokens
// where token t's key is the D floats at
//   key_pages + ((page * Hkv + g) * P + t % P) * D,   page = block_tables[b * max_blocks + t / P]
// (and its value at the same place in value_pages). Every array is contiguous float32 / int32.
// - Start with the plain loops: the T scores, their softmax (subtract the maximum), the weighted sum of values.
// - Then walk page by page with chapter 2.4's online softmax (running maximum m, sum l, output o, rescaled by
//   exp(m - m') when the maximum grows): no buffer that grows with T.
// - The G query heads of a kv head can take each page together: each key row is then read once, not G times.
// Share the (row, kv head) work out over tensor-core's threads with tl::parallel_for.
void paged_attention(const PagedAttentionArgs& a) {
  (void)a;
  throw NotImplemented("3.1", "paged_attention");
}

}  // namespace week3
