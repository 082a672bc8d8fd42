// The week 2 kernels as the bindings (addon.cc) call them. The bindings check every argument, so a kernel gets
// pointers that are valid for the sizes it is given; the kernels themselves are the chapters' work:
// quantized_matmul.cc (2.2) and flash_attention.cc (2.4). Read their pages in docs/week2/.
#pragma once

#include <tiny_llm/chapter.h>

#include <cstdint>

namespace week2 {

// What a kernel throws until it is written (tiny_llm/chapter.h): the binding turns it into the JavaScript error
// the tests, the grader and the engine recognise as "not started".
using NotImplemented = tl::NotImplemented;

// Chapter 2.2: out [M, N] = x [M, K] @ dequantize(w).T, every array contiguous and row-major.
struct QuantizedMatmulArgs {
  const void* x;             // [M, K], of dtype x_dtype (float32, bfloat16 or float16): read it with tl::load_f32
  tl::DType x_dtype;
  const uint32_t* w;         // [N, K * bits / 32]: row n's values j = 0..K-1 packed `bits` at a time, lowest first
  const void* scales;        // [N, K / group_size], of dtype scale_dtype
  const void* biases;        // [N, K / group_size], of dtype scale_dtype
  tl::DType scale_dtype;
  int64_t M, N, K;
  int group_size;            // 32, 64 or 128
  int bits;                  // 2, 3, 4, 5, 6 or 8
  float* out;                // [M, N], to overwrite
};
void quantized_matmul(const QuantizedMatmulArgs& a);

// Chapter 2.4: out = softmax(q @ k^T * scale + mask) @ v per (batch, query head), query head h reading kv head
// h / (Hq / Hkv), without ever holding a whole L x S row block of scores.
struct FlashAttentionArgs {
  const void* q;             // [B, Hq, L, D] contiguous, of dtype dtype
  const void* k;             // [B, Hkv, S, D] contiguous
  const void* v;             // [B, Hkv, S, D] contiguous
  tl::DType dtype;           // float32 or bfloat16 (q, k and v share it): read with tl::load_f32
  const float* mask;         // additive float32 mask, or null: element (b, h, i, j) at
  int64_t mask_strides[4];   //   mask[b * s[0] + h * s[1] + i * s[2] + j * s[3]] (a stride is 0 where it broadcasts)
  bool causal;               // the bottom-right causal mask: query i sees key j iff j <= i + S - L
  int64_t B, Hq, Hkv, L, S, D;
  float scale;
  float* out;                // [B, Hq, L, D] float32, to overwrite
};
void flash_attention(const FlashAttentionArgs& a);

}  // namespace week2
