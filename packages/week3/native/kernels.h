// The week 3 kernels as the bindings (addon.cc) call them. The bindings check every argument, so a kernel gets
// pointers that are valid for the sizes it is given; the kernels themselves are the chapters' work:
// paged_attention.cc (3.1). Read its page in docs/week3/.
#pragma once

#include <tiny_llm/chapter.h>

#include <cstdint>

namespace week3 {

// What a kernel throws until it is written (tiny_llm/chapter.h): the binding turns it into the JavaScript error
// the tests, the grader and the engine recognise as "not started".
using NotImplemented = tl::NotImplemented;

// Chapter 3.1: one decode step of attention over keys and values stored in pages. For each row b and query
// head h (reading kv head h / (Hq / Hkv)):
//   out[b][h] = softmax(q[b][h] . K_b^T * scale) @ V_b
// where K_b and V_b are row b's first lengths[b] tokens: token t lives in page block_tables[b][t / P], at
// slot t % P of it. Every array is float32 or int32, contiguous and row-major.
struct PagedAttentionArgs {
  const float* q;             // [B, Hq, D]: one query per row (its newest token's)
  const float* key_pages;     // [num_pages, Hkv, P, D]: the pool's keys of one layer
  const float* value_pages;   // [num_pages, Hkv, P, D]
  const int32_t* block_tables;  // [B, max_blocks]: row b's pages in order (entries past its length unused)
  const int32_t* lengths;     // [B]: the tokens row b attends to, its newest included (1 <= length <= max_blocks * P)
  int64_t B, Hq, Hkv, D;
  int64_t page_size;          // P, tokens per page
  int64_t num_pages, max_blocks;
  float scale;
  float* out;                 // [B, Hq, D], to overwrite
};
void paged_attention(const PagedAttentionArgs& a);

}  // namespace week3
