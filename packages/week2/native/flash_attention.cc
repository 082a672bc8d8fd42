// Chapter 2.4: flash attention on the CPU. Read docs/week2/2.4-flash-attention.md, then write the kernel.
// `pnpm build` (or the week's `pnpm test`) compiles it; the binding in addon.cc checks the arguments for you.
#include "kernels.h"

namespace week2 {

// For each batch b and query head h (reading kv head h / (Hq / Hkv), never a copy of K and V):
//   out[b][h] = softmax(q[b][h] @ k[b][g]^T * scale + mask) @ v[b][g]      q [L, D], k and v [S, D]
// without holding the L x S scores: walk the queries in tiles of Br rows and, for each tile, the keys in tiles
// of Bc, keeping per query row only its running maximum m, its running sum l of exp(score - m) and its
// unnormalised output o [D]. A new key tile with a larger maximum m' rescales l and o by exp(m - m') first
// (the online softmax); at the end, out = o / l.
// - With a.causal, query i sees key j iff j <= i + S - L: skip key tiles that are wholly hidden from a query
//   tile (that is the speed-up causal attention gets), and mask the scores of the one tile on the diagonal.
// - With a.mask, add mask[b * s0 + h * s1 + i * s2 + j * s3] (s = a.mask_strides) to each score.
// - A row whose keys are all hidden (-Infinity everywhere) must come out as 0, not NaN.
// - q, k and v are float32 or bfloat16: tl::load_f32(a.q, a.dtype, index) reads one value as float.
// Share the (b, h, query tile) work out over tensor-core's threads with tl::parallel_for.
void flash_attention(const FlashAttentionArgs& a) {
  (void)a;
  throw NotImplemented("2.4", "flash_attention");
}

}  // namespace week2
