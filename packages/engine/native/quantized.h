// What the quantized matmul's kernels share (native/quantized_matmul.cc, float activations, and
// native/quantized_matmul_int16.cc, integer activations): the problem once parsed, the epilogue, reading packed
// values and per-row scales, the software prefetch distance and the split of weight rows over the pool.
#pragma once

#include "common.h"

namespace engine {

using tl::DType;

// ---- The problem, once parsed -------------------------------------------------------------------------------------

struct Problem {
  const float* x;      // [M, K] float32 (decode path only; prefill hands the original x to the GEMM)
  const float* xp;     // [M, K] x rearranged for the chunked kernels (step 6), or null
  const float* xsum;   // [M, groups]: sum of x over each group of G columns
  // x rounded to 16-bit integers, for the integer kernels (quantized_matmul_int16.cc), or null:
  const int16_t* xq;      // [M, K] int16, in the order the kernel reads (see there)
  const float* xq_scale;  // [M, K / 32]: each block's scale
  int64_t M, K, N, groups;
  int G, bits;
  const uint8_t* w;    // packed rows, row_bytes apart
  int64_t row_bytes;   // K * bits / 8
  const void* scales;  // [N, groups]
  const void* biases;  // [N, groups]
  DType sdtype;        // of scales and biases
  float* out;          // [M, N]
  // The fused epilogue (step 9 of quantized_matmul.cc): each output also gets bias[n] and residual[m, n] added,
  // where given.
  const float* bias;      // [N] float32, or null
  const float* residual;  // [M, N] float32, or null (may be out itself)
};

// Writes output (m, n) with the epilogue applied: every kernel's last word on an output goes through here.
inline void store_out(const Problem& p, int64_t m, int64_t n, float v) {
  const int64_t i = m * p.N + n;
  if (p.bias) v += p.bias[n];
  if (p.residual) v += p.residual[i];
  p.out[i] = v;
}

inline float load_param(const void* p, DType d, int64_t i) { return tl::load_f32(p, d, i); }

// Value j of a packed row, for any bits (the dequantize() formula: a 3-, 5- or 6-bit value may straddle words).
inline uint32_t extract(const uint8_t* row, int bits, int64_t j) {
  const int64_t bit = j * bits;
  uint64_t window = 0;  // the bytes that hold the value: at most 2 bytes past the first for bits <= 8
  const int64_t byte = bit >> 3;
  const int nbytes = static_cast<int>(((bit & 7) + bits + 7) >> 3);
  std::memcpy(&window, row + byte, nbytes);  // little endian: byte order = stream order
  return static_cast<uint32_t>(window >> (bit & 7)) & ((1u << bits) - 1);
}

// Software prefetch (step 8 of quantized_matmul.cc). From DRAM, a tile's R rows are R interleaved streams advancing a
// few bytes per step, and the hardware prefetchers ran so little ahead of them that one core read 4 GB/s of an 8-bit
// weight (its plain read bandwidth: 11.8 GB/s). Each step now prefetches as many bytes as it consumes, kPrefetchBytes
// ahead in the (contiguous) rows: one steady sequential stream. 8-bit, one core: 4 -> 11.4 GB/s; 4-bit, two cores:
// 9 -> 15 GB/s (2048 and 8192 bytes did slightly worse).
inline constexpr int64_t kPrefetchBytes = 4096;

#ifdef TL_X86_SIMD
// sum_i a[i] * b[i], 8 lanes at a time.
TL_AVX2 inline float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// n scales or biases to float32, 8 at a time: bf16 is the high half of a float32, f16 takes vcvtph2ps. Per-
// element conversion (a switch on the dtype per group) cost as much as the whole row's multiply-adds at G = 32.
template <DType D> TL_AVX2 inline void convert_avx2(const void* src, int64_t n, float* dst) {
  int64_t i = 0;
  if constexpr (D == DType::F32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  } else {
    const uint16_t* h = static_cast<const uint16_t*>(src);
    for (; i + 8 <= n; i += 8) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i));
      if constexpr (D == DType::BF16)
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16)));
      else
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(v));
    }
    for (; i < n; ++i) dst[i] = D == DType::BF16 ? tl::bf16_to_f32(h[i]) : tl::f16_to_f32(h[i]);
  }
}

inline void convert_scalar(DType d, const void* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = load_param(src, d, i);
}

// The scales and biases of weight rows n .. n + r - 1 (contiguous in both arrays) as float32.
TL_AVX2 inline void params_f32(const Problem& p, int64_t n, int r, float* sc, float* bi) {
  const int64_t off = n * p.groups, count = r * p.groups, es = tl::dtype_size(p.sdtype);
  const void* s = static_cast<const char*>(p.scales) + off * es;
  const void* b = static_cast<const char*>(p.biases) + off * es;
  if (p.sdtype == DType::BF16) {
    convert_avx2<DType::BF16>(s, count, sc);
    convert_avx2<DType::BF16>(b, count, bi);
  } else if (p.sdtype == DType::F32) {
    convert_avx2<DType::F32>(s, count, sc);
    convert_avx2<DType::F32>(b, count, bi);
  } else if (has_f16c()) {
    convert_avx2<DType::F16>(s, count, sc);
    convert_avx2<DType::F16>(b, count, bi);
  } else {
    convert_scalar(p.sdtype, s, count, sc);
    convert_scalar(p.sdtype, b, count, bi);
  }
}
#endif

using RowsFn = void (*)(const Problem&, int64_t n0, int64_t n1);

// Runs rows(p, n0, n1) over all N weight rows on the pool.
inline void decode(const Problem& p, RowsFn rows) {
  // Few multiply-adds in all: waking the pool costs more than it saves.
  if (p.M * p.N * p.K < (1 << 16)) return rows(p, 0, p.N);
  // Large weights: about 8 tasks per thread, so that a thread streams long contiguous runs (the hardware
  // prefetchers restart at every jump) and dynamic hand-out still balances a thread that the OS delays. Small
  // ones (a decode step is mostly matrices of 0.5-5 MB): tasks of at least 512 KB, a whole number per thread.
  // Each task start is a jump that the prefetch (kPrefetchBytes) has not covered, and 64-row tasks made the 896 x 896
  // and 1152 x 896 projections of Qwen2-0.5B 15-20% slower than two halves.
  const int64_t threads = tl::num_threads();
  const int64_t row_cost = p.row_bytes + 2 * p.groups * tl::dtype_size(p.sdtype);  // bytes streamed per row
  const int64_t by_size = std::max<int64_t>(1, p.N * row_cost / (threads * (int64_t{512} << 10)));
  const int64_t tasks_per_thread = std::min<int64_t>(8, by_size);
  const int64_t rows_per_task = std::max<int64_t>(4, (p.N / (tasks_per_thread * threads) + 3) / 4 * 4);
  const int64_t tasks = (p.N + rows_per_task - 1) / rows_per_task;
  run_tasks(tasks, [&](int64_t t) { rows(p, t * rows_per_task, std::min(p.N, (t + 1) * rows_per_task)); });
}

// ---- Integer activations (native/quantized_matmul_int16.cc, native/quantized_gemm_int16.cc) -----------------------

// x values per int16 block: one float scale each.
inline constexpr int kInt16Block = 32;

// One block of 32 x values -> 32 int16 and the block's scale dx (0 for a block of zeros): xq = round(x / dx), to
// nearest even, with dx = max |x| / 32767, so that |xq| <= 32767 and |x - dx * xq| <= dx / 2. Value j goes to
// xq[slot(j)]: the order the kernel reads. Every integer kernel rounds x through here, so that decode and prefill
// compute the same function.
template <class Slot> float quantize_block(const float* x, const Slot& slot, int16_t* xq) {
  float amax = 0.0f;
  for (int j = 0; j < kInt16Block; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float dx = amax / 32767.0f;
  const float inv = dx != 0.0f ? 1.0f / dx : 0.0f;
  for (int j = 0; j < kInt16Block; ++j) xq[slot(j)] = static_cast<int16_t>(std::nearbyint(x[j] * inv));
  return dx;
}

#ifdef TL_X86_SIMD
// quantize_block's arithmetic on 16 lanes (the same float32 operations, and vcvtps2dq rounds to nearest even as
// nearbyint does): returns dx, and the block's 32 int16 in order in `q` (as 16 int32 pairs, the integer GEMM's view).
TL_AVX512_VNNI inline float quantize_block_avx512(const float* x, __m512i& q) {
  const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
  const float dx = amax / 32767.0f;
  const __m512 inv = _mm512_set1_ps(dx != 0.0f ? 1.0f / dx : 0.0f);
  const __m256i lo = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(a, inv)));
  const __m256i hi = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(b, inv)));
  q = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  return dx;
}
#endif

// Whether the integer kernels take weights of `bits` bits (4 and 8; other widths keep float activations).
bool int16_activations_supported(int bits);

// out = x @ dequantize(w).T with x rounded to int16 per block of 32 values: p as for the float decode path (x
// float32 [M, K] after any prologue, xsum its group sums). Correct for any M; the binding uses it for decode-sized
// M (up to 16) where the GEMM below does not take the call.
void matmul_int16(Problem& p);

// The same product as a GEMM (native/quantized_gemm_int16.cc), for many rows of x: prefills, and batches of 12 or
// more decode steps (the binding's kInt16GemmMinM). p as for matmul_int16. Only where int16_gemm_supported(bits):
// AVX-512 VNNI, 4 or 8 bits; elsewhere prefill keeps float activations.
bool int16_gemm_supported(int bits);
void gemm_int16(const Problem& p);

// The kernel matmul_int16 runs at this SIMD level: "vnni", "avx2" or "scalar".
const char* int16_kernel_name();

}  // namespace engine
