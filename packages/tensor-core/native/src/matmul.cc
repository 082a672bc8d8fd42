// native.matmul(a, b, out): out = a @ b for float32 / bfloat16 / float16 operands, float32 output.
//
//   a   [...batch, M, K]  any strides (transposed views, stride 0 for broadcast batch dims)
//   b   [...batch, K, N]  any strides; the layout that matters most is a linear layer's weight W stored (N, K)
//                         row-major and passed transposed (strides [..., 1, K]), then b contiguous [..., K, N]
//   out [...batch, M, N]  contiguous float32, overwritten
//
// Three ways to compute it, picked per call:
//   1. Packed GEMM (prefill, attention with long sequences): compute-bound. BLIS / llm.c structure: copy a
//      KC x NC block of B into a contiguous, aligned buffer ("packing", converting bf16/f16 to f32 on the way),
//      copy an MC x KC block of A likewise, and run a register-tile micro-kernel over them (6x16 with AVX2,
//      12x32 with AVX-512). Packing is what makes every later load sequential and cache-resident whatever the
//      original strides were.
//   2. Skinny "rows" path (decode, b in weight layout, M <= 16, and up to 64 for a weight): every output column
//      is a dot product of A's rows with one contiguous row of W, so W is streamed from memory exactly once. For
//      M <= 3 (memory-bound) W is converted to f32 in registers and each W vector serves all rows of A; for
//      M = 4..64 (compute-bound) groups of 4 W rows are converted once and multiplied in 4-row register tiles,
//      or, from 8 rows with AVX2 and 32 with AVX-512, in the outer-product form: A packed into transposed
//      panels, each W value broadcast against a panel of rows.
//   3. Skinny "cols" path (M <= 16, b contiguous rows, e.g. attention probabilities @ V): the axpy form, one
//      pass over B's rows with A's values broadcast.
// Each has SIMD forms for the avx2 and avx512 levels and a scalar one (any CPU, TINY_LLM_SIMD=scalar), picked by
// tl::simd_level() on every call.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include <tiny_llm/simd.h>

#include "registry.h"
#include "thread_pool.h"

namespace tl {
namespace {

#ifdef TL_X86_SIMD
using simd::transpose8;
using simd::Vec16;
using simd::Vec8;
#endif

// ---- Blocking parameters --------------------------------------------------------------------------------------------
constexpr int64_t kSkinnyM = 16;         // M up to this takes the streaming (GEMV-like) paths
// and a weight in its layout (b = W^T) takes the rows path up to this M: at 17-64 rows (a short prefill chunk,
// the rest of a prompt after a cached prefix) converting each group of 4 W rows once and multiplying it with
// every row of A beat packing W for the GEMM. The demo model's matrices and 4864 x 896, bf16, 2 threads (Zen 5):
// M = 32 133-170 -> 213-284 GFLOP/s, M = 48 169-239 -> 234-299, M = 64 171-222 -> 206-297.
constexpr int64_t kRowsMaxM = 64;
constexpr int64_t kParallelMinFma = 1 << 17;  // below ~130k multiply-adds, waking the pool costs more than it saves

// The packed GEMM's micro-tile (mr x nr) and blocks (see gemm_packed), per level. Every level packs and
// multiplies the same way; only the register width, and with it the tile, differ.
struct Blocking {
  int64_t mr;  // micro-tile rows
  int64_t nr;  // micro-tile columns
  int64_t kc;  // depth of a packed block: one B micro-panel (kc x nr floats) stays in L1
  int64_t mc;  // rows of a packed A block (mc x kc floats), inside L2
  int64_t nc;  // columns of a packed B block (kc x nc floats), shared by both cores in L3
};

// Scalar and AVX2 (tuned on a 2-core Zen3: 32 KiB L1d, 512 KiB L2 per core, 32 MiB L3): 6 x 2 accumulators of
// 8 floats = 12 of 16 ymm registers; a 16 KiB B micro-panel, a 144 KiB A block, a 4 MiB B block.
constexpr Blocking kBlocking8 = {6, 16, 256, 144, 4080};
// AVX-512 (tuned on the Zen 5 here: 48 KiB L1d, 1 MiB L2 per core, 32 MiB L3): 12 x 2 accumulators of 16 floats =
// 24 of 32 zmm registers. Deeper blocks than AVX2's, the B block kept at 4 MiB: fewer passes over C and over A's
// packing. Single-thread GFLOP per CPU-second against {12, 32, 256, 144, 4064}: 512x896 @ a bf16 4864x896 weight
// 158 -> 174, 1024^3 float32 173 -> 176. (8x48, 6x64 and 14x32 tiles measured within 3% of 12x32, which divides
// Qwen2's widths, 896 and 4864, without edge tiles.)
constexpr Blocking kBlocking16 = {12, 32, 512, 144, 2016};
constexpr int64_t kMaxMR = 12, kMaxNR = 32;  // the largest tile of any level (the edge-tile scratch)

// ---- Element access -----------------------------------------------------------------------------------------------

// Storage type of each floating dtype; bf16 and f16 are raw 16-bit patterns.
template <DType D> using Stor = std::conditional_t<D == DType::F32, float, uint16_t>;

template <DType D> inline float to_f32(Stor<D> x) {
  if constexpr (D == DType::F32) return x;
  else if constexpr (D == DType::BF16) return bf16_to_f32(x);
  else return f16_to_f32(x);
}

// A 2-D strided view of one batch item: element (i, j) is data[i * rs + j * cs] (element units, may be <= 0).
struct Mat {
  const void* data;
  DType dtype;
  int64_t rows, cols, rs, cs;
};

template <DType D> inline const Stor<D>* base(const Mat& m) { return static_cast<const Stor<D>*>(m.data); }

// Calls f(std::integral_constant<DType, D>) for the operand's dtype, so one template serves all three dtypes.
template <class F> void with_dtype(DType d, F&& f) {
  switch (d) {
    case DType::F32: f(std::integral_constant<DType, DType::F32>{}); break;
    case DType::BF16: f(std::integral_constant<DType, DType::BF16>{}); break;
    default: f(std::integral_constant<DType, DType::F16>{}); break;
  }
}

#ifdef TL_X86_SIMD
// Loads V::kLanes consecutive elements as floats (bf16 widens exactly, f16 through F16C).
template <class V, DType D> inline typename V::T load(const Stor<D>* p) {
  if constexpr (D == DType::F32) return V::load(p);
  else if constexpr (D == DType::BF16) return V::load_bf16(p);
  else return V::load_f16(p);
}
#endif

thread_local ScratchBuffer tls_pack_a;   // packed A block (MC x KC), or A rows converted to f32 on the skinny paths
thread_local ScratchBuffer tls_pack_b;   // packed B block (KC x NC); the calling thread's copy is shared by the pool
thread_local ScratchBuffer tls_scratch;  // chunks of W rows converted to f32 on the skinny rows path
thread_local ScratchBuffer tls_panels;   // A packed into panels for the rows path's outer form (calling thread)

// run_tasks, run_tasks_in_parts and part_begin: the SDK's (tiny_llm/extension.h), shared with the extension addons.

// =====================================================================================================================
// 1. Packed GEMM
// =====================================================================================================================

// Packed A: micro-panel p (rows MR p .. MR p + MR - 1 of the block) is kc x MR floats, k-major, so the
// micro-kernel reads the MR values it broadcasts at step k from one place. Rows past the block end are zero: no
// edge case inside.
template <DType D, int MR>
void pack_a_panel_scalar(const Mat& a, int64_t row0, int64_t mr, int64_t k0, int64_t kc, float* dst) {
  const Stor<D>* src = base<D>(a);
  for (int64_t r = 0; r < MR; ++r) {
    float* d = dst + r;
    if (r >= mr) {
      for (int64_t k = 0; k < kc; ++k) d[k * MR] = 0.0f;
      continue;
    }
    const Stor<D>* row = src + (row0 + r) * a.rs + k0 * a.cs;
    for (int64_t k = 0; k < kc; ++k) d[k * MR] = to_f32<D>(row[k * a.cs]);
  }
}

template <DType D, int MR> void pack_a_scalar(const Mat& a, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  for (int64_t p = 0; p < mc; p += MR, dst += kc * MR)
    pack_a_panel_scalar<D, MR>(a, i0 + p, std::min<int64_t>(MR, mc - p), k0, kc, dst);
}

// Packed B: panel q (columns NR q .. NR q + NR - 1) is kc x NR floats, row k holding NR consecutive columns, so
// the micro-kernel does NR / lanes aligned loads per k. Columns past N are zero.
template <DType D, int NR>
void pack_b_panel_scalar(const Mat& b, int64_t k0, int64_t kc, int64_t n0, int64_t nr, float* dst) {
  const Stor<D>* src = base<D>(b);
  for (int64_t k = 0; k < kc; ++k) {
    const Stor<D>* row = src + (k0 + k) * b.rs + n0 * b.cs;
    for (int64_t j = 0; j < NR; ++j) dst[k * NR + j] = j < nr ? to_f32<D>(row[j * b.cs]) : 0.0f;
  }
}

// Scalar 6x16 micro-kernel: C[6x16] (+)= Ap * Bp. Written so the compiler can vectorise the j loop with
// whatever the baseline ISA offers (SSE2 on x86-64, NEON on arm64).
void kernel_6x16_scalar(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, bool accumulate) {
  constexpr int64_t MR = kBlocking8.mr, NR = kBlocking8.nr;
  float acc[MR][NR] = {};
  for (int64_t k = 0; k < kc; ++k, ap += MR, bp += NR)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] += ap[i] * bp[j];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = accumulate ? c[i * ldc + j] + acc[i][j] : acc[i][j];
}

#ifdef TL_X86_SIMD
// The packing routines of both SIMD levels are AVX2 code: an AVX-512 CPU runs it too, and 8-float moves already
// keep packing a small part of the time.

// Packing A when its rows are contiguous (a.cs == 1, the usual activations): 8 rows x 8 k are loaded, and an
// 8x8 transpose turns them into 8 k-steps of 8 values. A panel of MR rows is done in groups of 8 rows, the last
// (partial, padded with zero rows) group first: its 8-float stores spill past the panel's MR floats of a k-step
// into the start of the next k-step, which the full groups stored after it (or the next block or panel, packed
// later) overwrite; the buffer has 8 floats of slack for the very last one.
template <DType D, int MR>
TL_AVX2 void pack_a_rows_avx2(const Mat& a, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  for (int64_t p = 0; p < mc; p += MR, dst += kc * MR) {
    if (mc - p < MR) {
      pack_a_panel_scalar<D, MR>(a, i0 + p, mc - p, k0, kc, dst);
      continue;
    }
    const Stor<D>* row0 = base<D>(a) + (i0 + p) * a.rs + k0;
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
      for (int g = (MR - 1) / 8 * 8; g >= 0; g -= 8) {
        __m256 v[8];
        for (int r = 0; r < 8; ++r) v[r] = g + r < MR ? load<Vec8, D>(row0 + (g + r) * a.rs + k) : Vec8::zero();
        transpose8(v);
        for (int j = 0; j < 8; ++j) Vec8::store(dst + (k + j) * MR + g, v[j]);
      }
    }
    for (; k < kc; ++k)
      for (int r = 0; r < MR; ++r) dst[k * MR + r] = to_f32<D>(row0[r * a.rs + k]);
  }
}

// Packing B when its rows are contiguous (b.cs == 1): each packed row is NR consecutive elements.
template <DType D, int NR>
TL_AVX2 void pack_b_panel_rows_avx2(const Mat& b, int64_t k0, int64_t kc, int64_t n0, int64_t nr, float* dst) {
  if (nr < NR) return pack_b_panel_scalar<D, NR>(b, k0, kc, n0, nr, dst);
  const Stor<D>* src = base<D>(b) + k0 * b.rs + n0;
  for (int64_t k = 0; k < kc; ++k, src += b.rs, dst += NR)
    for (int j = 0; j < NR; j += 8) Vec8::store(dst + j, load<Vec8, D>(src + j));
}

// Packing B in weight layout (b.rs == 1, i.e. W[n][k] row-major): a packed row needs one element from each of
// NR W rows, so read 8 W rows x 8 k at a time and transpose in registers; a scalar gather here would cost more
// than the GEMM's arithmetic for decode-sized M.
template <DType D, int NR>
TL_AVX2 void pack_b_panel_wt_avx2(const Mat& b, int64_t k0, int64_t kc, int64_t n0, int64_t nr, float* dst) {
  if (nr < NR) return pack_b_panel_scalar<D, NR>(b, k0, kc, n0, nr, dst);
  const Stor<D>* src = base<D>(b) + n0 * b.cs + k0;
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    for (int j0 = 0; j0 < NR; j0 += 8) {
      __m256 r[8];
      for (int j = 0; j < 8; ++j) r[j] = load<Vec8, D>(src + (j0 + j) * b.cs + k);
      transpose8(r);
      for (int j = 0; j < 8; ++j) Vec8::store(dst + (k + j) * NR + j0, r[j]);
    }
  }
  for (; k < kc; ++k)
    for (int64_t j = 0; j < NR; ++j) dst[k * NR + j] = to_f32<D>(src[j * b.cs + k]);
}

// The SIMD micro-kernel: C[MR x NR] (+)= Ap[MR x kc] * Bp[kc x NR], NR = NV vectors of V.
// Per k: NV loads of B, MR broadcasts of A, MR x NV FMAs into MR x NV accumulators that stay in registers. The
// tile is the largest the register file holds (accumulators + NV B vectors + one broadcast), which gives the
// most FMAs per load, so the FMA pipes, not the load ports, set the pace: AVX2 6x16 (15 of 16 ymm), AVX-512
// 12x32 (27 of 32 zmm).
// With kPairs (the bfloat16 products, see pack_b_pairs), each step is a pair of k: the packed values are pairs
// of bfloat16, and vdpbf16ps does both products of a pair, so `steps` is kc / 2 (rounded up).
template <class V, int MR, int NV, bool kPairs = false>
void kernel_tile(int64_t steps, const float* ap, const float* bp, float* c, int64_t ldc, bool accumulate) {
  constexpr int L = V::kLanes, NR = NV * L;
  typename V::T acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
  // C is touched only after the k loop; asking for its lines now hides that miss behind the arithmetic.
  for (int i = 0; i < MR; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + NR - 1), _MM_HINT_T0);
  }
  for (int64_t k = 0; k < steps; ++k, ap += MR, bp += NR) {
    typename V::T b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = V::load(bp + v * L);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const typename V::T a = V::set1(ap[i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        if constexpr (kPairs) acc[i][v] = simd::dot_bf16_pairs(acc[i][v], a, b[v]);
        else acc[i][v] = V::fmadd(a, b[v], acc[i][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* cv = c + i * ldc + v * L;
      V::store(cv, accumulate ? V::add(acc[i][v], V::load(cv)) : acc[i][v]);
    }
}

TL_AVX2 TL_FLATTEN void kernel_6x16_avx2(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, bool acc) {
  kernel_tile<Vec8, kBlocking8.mr, kBlocking8.nr / 8>(kc, ap, bp, c, ldc, acc);
}
TL_AVX512 TL_FLATTEN void kernel_12x32_avx512(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc,
                                              bool acc) {
  kernel_tile<Vec16, kBlocking16.mr, kBlocking16.nr / 16>(kc, ap, bp, c, ldc, acc);
}
TL_AVX512_BF16 TL_FLATTEN void kernel_bf16_12x32_avx512(int64_t steps, const float* ap, const float* bp, float* c,
                                                        int64_t ldc, bool acc) {
  kernel_tile<Vec16, kBlocking16.mr, kBlocking16.nr / 16, true>(steps, ap, bp, c, ldc, acc);
}

// ---- The bfloat16 products (matmul precision "bfloat16", opt-in) ----------------------------------------------
//
// vdpbf16ps multiplies pairs of bfloat16 and adds both products to a float32 lane: twice the products of an FMA
// per instruction, so a GEMM whose weights are bfloat16 anyway can run on it if the activations are rounded to
// bfloat16 too. That rounding (a relative error of up to 2^-9 per activation) is why it is opt-in: the sums
// stay float32, but results no longer match float32 products to 1e-4.
//
// The packed panels hold, per step, one 32-bit word per row (A) or column (B): the bfloat16 of k (low half) and
// of k + 1 (high half), zero past the end of the block when kc is odd.

// Packed A as bfloat16 pairs, rounded to nearest even (scalar: A is small next to the weights it multiplies).
template <DType D, int MR>
void pack_a_pairs(const Mat& a, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  const int64_t steps = (kc + 1) / 2;
  const Stor<D>* src = base<D>(a);
  for (int64_t p = 0; p < mc; p += MR, dst += steps * MR) {
    for (int64_t r = 0; r < MR; ++r) {
      if (p + r >= mc) {
        for (int64_t s = 0; s < steps; ++s) dst[s * MR + r] = 0.0f;
        continue;
      }
      const Stor<D>* row = src + (i0 + p + r) * a.rs + k0 * a.cs;
      for (int64_t s = 0; s < steps; ++s) {
        const uint32_t lo = f32_to_bf16(to_f32<D>(row[2 * s * a.cs]));
        const uint32_t hi = 2 * s + 1 < kc ? f32_to_bf16(to_f32<D>(row[(2 * s + 1) * a.cs])) : 0;
        dst[s * MR + r] = bits_to_f32(lo | hi << 16);
      }
    }
  }
}

// Packed B from a bfloat16 weight in weight layout (b.rs == 1): W row n holds the pairs of column n already, as
// 32-bit words, so packing is a transpose of words (8 rows x 8 words at a time) and no value changes.
template <int NR>
TL_AVX2 void pack_b_pairs_wt(const Mat& b, int64_t k0, int64_t kc, int64_t n0, int64_t nr, float* dst) {
  const uint16_t* src = base<DType::BF16>(b) + n0 * b.cs + k0;
  const int64_t steps = (kc + 1) / 2, full = nr == NR ? kc / 16 * 8 : 0;  // steps done 8 at a time
  for (int64_t s = 0; s < full; s += 8) {
    for (int j0 = 0; j0 < NR; j0 += 8) {
      __m256 r[8];
      for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(reinterpret_cast<const float*>(src + (j0 + j) * b.cs + 2 * s));
      transpose8(r);
      for (int j = 0; j < 8; ++j) Vec8::store(dst + (s + j) * NR + j0, r[j]);
    }
  }
  for (int64_t s = full; s < steps; ++s)
    for (int64_t j = 0; j < NR; ++j) {
      uint32_t lo = 0, hi = 0;  // columns past N are zero
      if (j < nr) {
        const uint16_t* w = src + j * b.cs + 2 * s;
        lo = w[0];
        if (2 * s + 1 < kc) hi = w[1];
      }
      dst[s * NR + j] = bits_to_f32(lo | hi << 16);
    }
}
#endif  // TL_X86_SIMD

using PackAFn = void (*)(const Mat&, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst);
using PackBFn = void (*)(const Mat&, int64_t k0, int64_t kc, int64_t n0, int64_t nr, float* dst);
using KernelFn = void (*)(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, bool accumulate);

struct GemmKernels {
  Blocking shape;
  int64_t k_per_step;  // 1, or 2 for the bfloat16 pairs
  PackAFn pack_a;
  PackBFn pack_b;
  KernelFn kernel;
};

// Matmul precision: false, float32 products (the default, exact); true, bfloat16 products where the CPU has them
// and the weight is bfloat16 (native.setMatmulPrecision).
std::atomic<bool> g_bf16_products{false};

// The packing routines for a tile of MR x NR, given the operands' layouts.
template <int MR, int NR> void pick_packing(const Mat& a, const Mat& b, bool simd, GemmKernels& g) {
  with_dtype(a.dtype, [&](auto d) {
    constexpr DType D = decltype(d)::value;
    g.pack_a = &pack_a_scalar<D, MR>;
#ifdef TL_X86_SIMD
    if (simd && a.cs == 1) g.pack_a = &pack_a_rows_avx2<D, MR>;
#endif
  });
  with_dtype(b.dtype, [&](auto d) {
    constexpr DType D = decltype(d)::value;
    g.pack_b = &pack_b_panel_scalar<D, NR>;
#ifdef TL_X86_SIMD
    if (simd && b.cs == 1) g.pack_b = &pack_b_panel_rows_avx2<D, NR>;
    else if (simd && b.rs == 1) g.pack_b = &pack_b_panel_wt_avx2<D, NR>;
#endif
  });
}

GemmKernels gemm_kernels(const Mat& a, const Mat& b, SimdLevel level) {
  GemmKernels g{};
  g.k_per_step = 1;
#ifdef TL_X86_SIMD
  if (level == SimdLevel::Avx512 && g_bf16_products.load(std::memory_order_relaxed) && cpu_features().avx512bf16 &&
      b.dtype == DType::BF16 && b.rs == 1) {
    g.shape = kBlocking16;
    g.k_per_step = 2;
    g.kernel = &kernel_bf16_12x32_avx512;
    g.pack_b = &pack_b_pairs_wt<kBlocking16.nr>;
    with_dtype(a.dtype, [&](auto d) { g.pack_a = &pack_a_pairs<decltype(d)::value, kBlocking16.mr>; });
    return g;
  }
  if (level == SimdLevel::Avx512) {
    g.shape = kBlocking16;
    g.kernel = &kernel_12x32_avx512;
    pick_packing<kBlocking16.mr, kBlocking16.nr>(a, b, true, g);
    return g;
  }
#endif
  g.shape = kBlocking8;
  g.kernel = &kernel_6x16_scalar;
#ifdef TL_X86_SIMD
  if (level == SimdLevel::Avx2) g.kernel = &kernel_6x16_avx2;
#endif
  pick_packing<kBlocking8.mr, kBlocking8.nr>(a, b, level != SimdLevel::Scalar, g);
  return g;
}

// Runs the micro-kernel over an mc x (panels q0..q1) part of C. Loop order (BLIS): columns outer, so one B
// micro-panel stays in L1 while the A micro-panels stream from L2.
void macro_kernel(const GemmKernels& g, int64_t steps, int64_t mc, int64_t q0, int64_t q1, int64_t nc, const float* ap,
                  const float* bp, float* c, int64_t ldc, bool accumulate) {
  const int64_t MR = g.shape.mr, NR = g.shape.nr;
  alignas(64) float edge[kMaxMR * kMaxNR];
  for (int64_t q = q0; q < q1; ++q) {
    int64_t j = q * NR, nr = std::min(NR, nc - j);
    const float* bq = bp + j * steps;
    for (int64_t i = 0; i < mc; i += MR) {
      int64_t mr = std::min(MR, mc - i);
      float* cij = c + i * ldc + j;
      if (mr == MR && nr == NR) {
        g.kernel(steps, ap + i * steps, bq, cij, ldc, accumulate);
        continue;
      }
      // Edge tile: compute the full tile (packing zero-padded it) into a scratch tile, then copy.
      g.kernel(steps, ap + i * steps, bq, edge, NR, false);
      for (int64_t r = 0; r < mr; ++r)
        for (int64_t s = 0; s < nr; ++s)
          cij[r * ldc + s] = accumulate ? cij[r * ldc + s] + edge[r * NR + s] : edge[r * NR + s];
    }
  }
}

// C[M x N] (ldc) = A[M x K] * B[K x N] with the packed GEMM on `threads` threads.
//
// The work is a sequence of (jc, pc) blocks: B[pc : pc+KC, jc : jc+NC] is packed once into a buffer that every
// thread reads, then tasks compute C[:, jc : jc+NC] += A[:, pc : pc+KC] * that block. Packing block i+1 is
// done in the same parallel region as computing block i (into the other of two buffers): it halves the number
// of regions, and the small packing tasks fill the gap a thread would otherwise spend waiting at the end.
void gemm_packed(const Mat& a, const Mat& b, float* c, int64_t ldc, int threads, const GemmKernels& g) {
  const int64_t M = a.rows, K = a.cols, N = b.cols;
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i) std::fill(c + i * ldc, c + i * ldc + N, 0.0f);
    return;
  }
  if (M * N * K < kParallelMinFma) threads = 1;
  const int64_t MR = g.shape.mr, NR = g.shape.nr, KC = g.shape.kc, MC = g.shape.mc, NC = g.shape.nc;
  const int64_t m_panels = (M + MR - 1) / MR;
  const int64_t k_blocks = (K + KC - 1) / KC, blocks = (N + NC - 1) / NC * k_blocks;
  const int64_t buf_floats = KC * ((std::min(N, NC) + NR - 1) / NR) * NR;
  float* bufs[2];
  bufs[0] = tls_pack_b.get(2 * buf_floats);
  bufs[1] = bufs[0] + buf_floats;

  struct Block {
    int64_t jc, nc, n_panels, pc, kc, steps;  // steps: packed rows per panel, kc / k_per_step rounded up
  };
  auto block = [&](int64_t i) {
    Block blk;
    blk.jc = i / k_blocks * NC;
    blk.nc = std::min(NC, N - blk.jc);
    blk.n_panels = (blk.nc + NR - 1) / NR;
    blk.pc = i % k_blocks * KC;
    blk.kc = std::min(KC, K - blk.pc);
    blk.steps = (blk.kc + g.k_per_step - 1) / g.k_per_step;
    return blk;
  };
  // Packing tasks: 4 panels each.
  auto pack_tasks = [](const Block& blk) { return (blk.n_panels + 3) / 4; };
  auto pack = [&](const Block& blk, float* bp, int64_t t) {
    for (int64_t q = 4 * t; q < std::min(blk.n_panels, 4 * t + 4); ++q)
      g.pack_b(b, blk.pc, blk.kc, blk.jc + q * NR, std::min(NR, blk.nc - q * NR), bp + q * NR * blk.steps);
  };
  // Compute tasks cut along M when there are enough rows (each task then packs only its own rows of A), along
  // N otherwise (short prompts: few rows, many columns; each task packs all of A, which is small then). About
  // 4 tasks per thread, so dynamic hand-out evens out a delayed thread; sizes differ by at most one panel.
  auto split_m = [&](const Block& blk) { return m_panels >= 4 * threads || m_panels >= blk.n_panels; };
  auto compute_tasks = [&](const Block& blk) -> int64_t {
    const int64_t min_tasks = (m_panels * MR + MC - 1) / MC;  // a task's rows must fit one A block
    if (threads == 1) return split_m(blk) ? min_tasks : 1;
    if (split_m(blk)) return std::max(std::min<int64_t>(m_panels, 4 * threads), min_tasks);
    return std::min<int64_t>(blk.n_panels, 4 * threads);
  };
  auto compute = [&](const Block& blk, const float* bp, int64_t tasks, int64_t t) {
    int64_t m0 = 0, m1 = M, q0 = 0, q1 = blk.n_panels;
    if (split_m(blk)) {
      m0 = part_begin(m_panels, tasks, t) * MR;
      m1 = std::min(M, part_begin(m_panels, tasks, t + 1) * MR);
    } else {
      q0 = part_begin(blk.n_panels, tasks, t);
      q1 = part_begin(blk.n_panels, tasks, t + 1);
    }
    if (m0 >= m1 || q0 >= q1) return;
    float* ap = tls_pack_a.get(((std::min(MC, m1 - m0) + MR - 1) / MR) * MR * blk.steps + 8);
    for (int64_t ic = m0; ic < m1; ic += MC) {
      const int64_t mc = std::min(MC, m1 - ic);
      g.pack_a(a, ic, mc, blk.pc, blk.kc, ap);
      macro_kernel(g, blk.steps, mc, q0, q1, blk.nc, ap, bp, c + ic * ldc + blk.jc, ldc, blk.pc > 0);
    }
  };

  const Block first = block(0);
  run_tasks(pack_tasks(first), threads, [&](int64_t t) { pack(first, bufs[0], t); });
  for (int64_t i = 0; i < blocks; ++i) {
    const Block cur = block(i);
    const bool has_next = i + 1 < blocks;
    const Block next = has_next ? block(i + 1) : cur;
    const int64_t nc_tasks = compute_tasks(cur), np_tasks = has_next ? pack_tasks(next) : 0;
    run_tasks(nc_tasks + np_tasks, threads, [&](int64_t t) {
      if (t < nc_tasks) compute(cur, bufs[i & 1], nc_tasks, t);
      else pack(next, bufs[(i + 1) & 1], t - nc_tasks);
    });
  }
}

// =====================================================================================================================
// 2./3. Skinny paths (M <= 16): stream B once
// =====================================================================================================================

// A's rows as contiguous f32 (row stride *lda). Used as is when already so; converted otherwise (M x K is tiny
// next to the weight matrix).
const float* a_rows_f32(const Mat& a, ScratchBuffer& buf, int64_t* lda) {
  if (a.dtype == DType::F32 && (a.cs == 1 || a.cols == 1)) {
    *lda = a.rs;
    return static_cast<const float*>(a.data);
  }
  float* dst = buf.get(a.rows * a.cols);
  with_dtype(a.dtype, [&](auto d) {
    constexpr DType D = decltype(d)::value;
    const Stor<D>* src = base<D>(a);
    for (int64_t i = 0; i < a.rows; ++i)
      for (int64_t k = 0; k < a.cols; ++k) dst[i * a.cols + k] = to_f32<D>(src[i * a.rs + k * a.cs]);
  });
  *lda = a.cols;
  return dst;
}

// Rows path: out[m][j] = dot(A row m, W row j) for all M rows of A and r rows of W (row stride ldw, k contiguous).
using DotFn = void (*)(const float* a, int64_t lda, int64_t M, const void* w, int64_t ldw, int64_t K, float* out,
                       int64_t ldo, int r);
// Rows path, outer-product form: the same for r rows of W, with A packed into panels (see pack_panels).
using OuterFn = void (*)(const float* panels, int64_t M, const void* w, int64_t ldw, int64_t K, float* out,
                         int64_t ldo, int r, float* scratch);
// Cols path: C[m][0..nc) = sum_k A[m][k] * B[k][0..nc), B rows contiguous with stride ldb.
using AxpyFn = void (*)(const float* a, int64_t lda, const void* b, int64_t ldb, int64_t K, float* c, int64_t ldc,
                        int mb, int64_t nc);

constexpr int kRowsR = 4;        // W rows per unit of work (and per f32 conversion of W)
constexpr int64_t kRowsFewM = 3;  // up to this many A rows, W is converted in registers (memory-bound regime)
constexpr int64_t kDotKC = 1024;  // k-chunk of the many-rows tiles (a multiple of 8; bounds the f32 W scratch)
constexpr int kColsMB = 6;       // cols path tile: 6 rows x 16 columns = 12 accumulators, like the GEMM kernel

template <DType D>
void dot_scalar(const float* a, int64_t lda, int64_t M, const void* wv, int64_t ldw, int64_t K, float* out,
                int64_t ldo, int r) {
  const Stor<D>* w = static_cast<const Stor<D>*>(wv);
  for (int64_t m = 0; m < M; ++m)
    for (int j = 0; j < r; ++j) {
      const float* x = a + m * lda;
      const Stor<D>* y = w + j * ldw;
      // Four partial sums: independent chains the CPU can overlap (and the compiler may vectorise).
      float s[4] = {0, 0, 0, 0};
      int64_t k = 0;
      for (; k + 4 <= K; k += 4)
        for (int u = 0; u < 4; ++u) s[u] += x[k + u] * to_f32<D>(y[k + u]);
      for (; k < K; ++k) s[0] += x[k] * to_f32<D>(y[k]);
      out[m * ldo + j] = (s[0] + s[1]) + (s[2] + s[3]);
    }
}

template <DType D>
void axpy_scalar(const float* a, int64_t lda, const void* bv, int64_t ldb, int64_t K, float* c, int64_t ldc, int mb,
                 int64_t nc) {
  const Stor<D>* b = static_cast<const Stor<D>*>(bv);
  for (int m = 0; m < mb; ++m) {
    float* cm = c + m * ldc;
    std::fill(cm, cm + nc, 0.0f);
    for (int64_t k = 0; k < K; ++k) {
      const float x = a[m * lda + k];
      const Stor<D>* bk = b + k * ldb;
      for (int64_t j = 0; j < nc; ++j) cm[j] += x * to_f32<D>(bk[j]);
    }
  }
}

#ifdef TL_X86_SIMD
// The SIMD forms of dot_scalar and axpy_scalar, written once for both widths (V = Vec8 or Vec16, see simd.h).
// Both keep float32 activations and float32 accumulation: bf16 weights widen to float32 exactly, so they differ
// from the scalar loops by the order of the additions only.

// MB dot products of one W row with MB rows of A: each W vector is loaded (and converted) once and used for all
// MB rows of A, whose vectors come from L1 (here A has at most 3 rows). Four accumulators per A row (k unrolled
// by 4 vectors) hide the FMA latency. One W row at a time keeps the whole thread's read of W a single sequential
// stream, which the hardware prefetcher follows best (reading 4 rows side by side measured slower from DRAM).
// On top of it, a software prefetch kRowPrefetchBytes ahead in the (contiguous) rows: a decode step is mostly
// matrices of 0.3-2 MB in tasks of 64 rows, short streams the hardware prefetcher is slow to pick up. With AVX2,
// tuned on a Zen 3: the demo model's decode step took 5-7% less time with it (medians of 80 rounds alternating
// with and without, in one process); at Qwen2-0.5B shapes it was neutral at 1 KB ahead and 8% slower at 2-4 KB.
// With AVX-512, on the Zen 5 here, 4 KB ahead beat 1 KB: the demo model's step 1025 -> 890 us, a Qwen2-0.5B
// step 0.77 -> 0.83 of the read bandwidth (interleaved rounds in one process).
template <class V> constexpr int64_t kRowPrefetchBytes = V::kLanes == 16 ? 4096 : 1024;

template <class V, int MB, DType D>
void dot_row(const float* a, int64_t lda, const Stor<D>* w, int64_t K, float* out, int64_t ldo) {
  constexpr int L = V::kLanes;
  typename V::T acc[MB][4];
#pragma GCC unroll 4
  for (int m = 0; m < MB; ++m) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = V::zero();
  const char* ahead = reinterpret_cast<const char*>(w) + kRowPrefetchBytes<V>;  // a prefetch never faults
  int64_t k = 0;
  for (; k + 4 * L <= K; k += 4 * L) {
    for (int64_t off = 0; off < 4 * L * int64_t{sizeof(Stor<D>)}; off += 64)
      _mm_prefetch(ahead + k * int64_t{sizeof(Stor<D>)} + off, _MM_HINT_T0);
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      const typename V::T wv = load<V, D>(w + k + L * u);
#pragma GCC unroll 4
      for (int m = 0; m < MB; ++m) acc[m][u] = V::fmadd(V::load(a + m * lda + k + L * u), wv, acc[m][u]);
    }
  }
  for (; k + L <= K; k += L) {
    const typename V::T wv = load<V, D>(w + k);
#pragma GCC unroll 4
    for (int m = 0; m < MB; ++m) acc[m][0] = V::fmadd(V::load(a + m * lda + k), wv, acc[m][0]);
  }
#pragma GCC unroll 4
  for (int m = 0; m < MB; ++m) {
    float s = V::hsum(V::add(V::add(acc[m][0], acc[m][1]), V::add(acc[m][2], acc[m][3])));
    for (int64_t t = k; t < K; ++t) s += a[m * lda + t] * to_f32<D>(w[t]);
    out[m * ldo] = s;
  }
}

// Many A rows (4..16, batched decode): compute-bound, so the tile is chosen for FMAs per load: 4 A rows x R W rows,
// R = 2 with AVX2 (8 accumulators: 6 vector loads per 8 FMAs, in 13 of 16 registers), R = 4 with AVX-512 (16
// accumulators: 8 loads per 16 FMAs, in 21 of 32; single-thread GFLOP per CPU-second at 4864x896, bf16: M = 4
// 43 -> 72, M = 16 51 -> 106 over R = 2). Independent chains cover the FMA latency on two pipes.
// It covers one k-chunk and keeps its running sums in `acc` (MB x R vectors, row stride acc_ld) between chunks;
// the first chunk starts from zero instead: zeroing acc for it was a 4 KB memset per 4 W rows at M = 16, 7% of
// these tiles' time in a batch-16 decode step of the demo model (perf). M = 16, bf16, hot weights, 2 threads,
// three rounds alternating the builds: 2048 x 384 130-157 -> 99-112 us, 384 x 1024 62-66 -> 57-60 us, 4864 x 896
// 577-593 -> 516-555 us.
template <class V> constexpr int kDotTileR = V::kRegisters / 8;

template <class V, int MB, int R>
void dot_tile(const float* a, int64_t lda, const float* w, int64_t ldw, int64_t len, typename V::T* acc,
              int64_t acc_ld, bool first_chunk) {
  typename V::T c[MB][R];
#pragma GCC unroll 4
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) c[m][r] = first_chunk ? V::zero() : acc[m * acc_ld + r];
  for (int64_t k = 0; k < len; k += V::kLanes) {
    typename V::T av[MB];
#pragma GCC unroll 4
    for (int m = 0; m < MB; ++m) av[m] = V::load(a + m * lda + k);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const typename V::T wv = V::load(w + r * ldw + k);
#pragma GCC unroll 4
      for (int m = 0; m < MB; ++m) c[m][r] = V::fmadd(av[m], wv, c[m][r]);
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[m * acc_ld + r] = c[m][r];
}

// All M rows of A against R rows of W over one k-chunk, in tiles of 4 A rows.
template <class V, int R>
void dot_tiles(const float* a, int64_t lda, int64_t M, const float* w, int64_t ldw, int64_t len, typename V::T* acc,
               bool first_chunk) {
  constexpr int64_t ld = kRowsR;
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) dot_tile<V, 4, R>(a + m * lda, lda, w, ldw, len, acc + m * ld, ld, first_chunk);
  switch (M - m) {
    case 1: dot_tile<V, 1, R>(a + m * lda, lda, w, ldw, len, acc + m * ld, ld, first_chunk); break;
    case 2: dot_tile<V, 2, R>(a + m * lda, lda, w, ldw, len, acc + m * ld, ld, first_chunk); break;
    case 3: dot_tile<V, 3, R>(a + m * lda, lda, w, ldw, len, acc + m * ld, ld, first_chunk); break;
    default: break;
  }
}

// M = 4..64 rows of A against r <= 4 rows of W, in tiles of 4 A rows x R W rows. bf16/f16 W is converted to f32
// once, into `scratch` (in chunks of kDotKC, to bound it), rather than once per A tile; the tiles keep their
// running sums in `acc` between chunks. (Smaller chunks, to keep A in L1 across more W rows, measured slower.)
template <class V, DType D>
void dot_many(const float* a, int64_t lda, int64_t M, const Stor<D>* w, int64_t ldw, int64_t K, float* out,
              int64_t ldo, int r, float* scratch) {
  constexpr int L = V::kLanes;
  // The next r rows of W (the next call's, in a task's run of rows), fetched while these are multiplied: in a
  // batched decode step the weights come from DRAM (attention's KV reads evict them between two matmuls), and
  // without it each chunk's conversion waits on memory before its FMAs start. The demo model's matrices of one
  // layer and its head (19 MB of bf16) at M = 16, after a 48 MB sweep of the caches: 1684 -> 1258-1291 us
  // (medians of 60, Zen 5); in a batch-16 decode step of the demo model its matmuls took 5.3 -> 4.1 ms.
  const char* next = reinterpret_cast<const char*>(w + r * ldw);
  for (int j = 0; j < r; ++j)
    for (int64_t off = 0; off < K * int64_t{sizeof(Stor<D>)}; off += 64)
      _mm_prefetch(next + j * ldw * int64_t{sizeof(Stor<D>)} + off, _MM_HINT_T0);
  typename V::T acc[kRowsMaxM * kRowsR];
  const int64_t kv = K / L * L;
  if (kv == 0)  // no chunk to start the sums (K < kLanes): the scalar tail below adds to zeros
    for (int64_t i = 0; i < M * kRowsR; ++i) acc[i] = V::zero();
  for (int64_t k0 = 0; k0 < kv; k0 += kDotKC) {
    const int64_t len = std::min(kDotKC, kv - k0);
    const float* wc;
    int64_t ldc;
    if constexpr (D == DType::F32) {
      wc = w + k0;
      ldc = ldw;
    } else {
      for (int j = 0; j < r; ++j)
        for (int64_t k = 0; k < len; k += L) V::store(scratch + j * kDotKC + k, load<V, D>(w + j * ldw + k0 + k));
      wc = scratch;
      ldc = kDotKC;
    }
    constexpr int R = kDotTileR<V>;
    int j = 0;
    for (; j + R <= r; j += R) dot_tiles<V, R>(a + k0, lda, M, wc + j * ldc, ldc, len, acc + j, k0 == 0);
    for (; j < r; ++j) dot_tiles<V, 1>(a + k0, lda, M, wc + j * ldc, ldc, len, acc + j, k0 == 0);
  }
  // The M x r sums. An hsum per accumulator is 8 instructions, 512 per 4 W rows at M = 16, against 16 K / kLanes
  // FMAs: a third as many at K = 384. kLanes accumulators in a row (kLanes / kRowsR A rows by the 4 W rows) are
  // reduced at once instead (V::hsum_each, about 3 instructions each). The demo model's matrices at M = 16, bf16,
  // one matrix over and over (Zen 5, 2 threads): 2048 x 384 154 -> 112-118 us, 384 x 1024 69 -> 50-64 us,
  // 8192 x 384 543 -> 423-462 us.
  int64_t m = 0;
  if (kv == K && r == kRowsR) {
    constexpr int kRowsPerVec = L / kRowsR;
    float sums[L];
    for (; m + kRowsPerVec <= M; m += kRowsPerVec) {
      V::store(sums, V::hsum_each(acc + m * kRowsR));
      for (int i = 0; i < kRowsPerVec; ++i) std::memcpy(out + (m + i) * ldo, sums + i * kRowsR, kRowsR * sizeof(float));
    }
  }
  for (; m < M; ++m)
    for (int j = 0; j < r; ++j) {
      float s = V::hsum(acc[m * kRowsR + j]);
      for (int64_t t = kv; t < K; ++t) s += a[m * lda + t] * to_f32<D>(w[j * ldw + t]);
      out[m * ldo + j] = s;
    }
}

// Many A rows (kOuterMinM..64: a batch of decode steps, a short prefill chunk) in the outer-product form, with
// lanes along A's rows instead of k. A is packed once per call into panels of kLanes rows, transposed
// (panel[k][lane] = A[row lane][k], see pack_panels), and each W value, converted to f32 once, is broadcast
// against a whole panel. One FMA then serves one W value for kLanes rows, and every accumulator is an output
// (kLanes rows of one column): no horizontal sums (dot_many's cost a third as many instructions as its FMAs at
// K = 384) and no partial sums kept between k-chunks. A tile is R W rows x P panels of accumulators, R * P = 24
// of 32 zmm registers (12 of 16 ymm); per k it loads P panel vectors and R broadcast W values for R * P FMAs.
template <class V> constexpr int kOuterR = V::kLanes == 16 ? 12 : 6;
// Where it beats dot_many's tiles (hot weights, 4864 x 896, 896 x 4864, 2048 x 384 and 8192 x 384 in bf16, 2
// threads, Zen 5). With AVX-512, from two full panels, where a broadcast serves two FMAs: M = 32 231-307 ->
// 278-304 GFLOP/s, M = 64 212-292 -> 267-328; with one panel it measured slower (M = 16 240-266 -> 220-236), as
// each FMA then waits on its own broadcast load, and so with a second panel mostly padding (M = 24 259-268 ->
// 218-227). With AVX2 (panels of 8 rows, 6 x 2 tiles against dot_many's 4 x 2), from M = 8: M = 8 98-104 ->
// 108-111, M = 16 120-130 -> 157-176, M = 64 126-150 -> 191-196.
template <class V> constexpr int64_t kOuterMinM = V::kLanes == 16 ? 32 : 8;
// The tile's W rows are converted into blocks of kOuterKC values of each row ([K / kOuterKC][R][kOuterKC]), so
// that one pointer plus constant offsets reaches all R rows: with a pointer per row the loop ran out of
// general-purpose registers and reloaded them from the stack at every k. K is padded to a multiple of it with
// zeros (in the panels too).
constexpr int64_t kOuterKC = 64;
inline int64_t outer_padded_k(int64_t K) { return (K + kOuterKC - 1) / kOuterKC * kOuterKC; }

template <class V, int R, int P>
void outer_tile(const float* panels, int64_t panel_ld, const float* wblocks, int64_t Kp, float* sums) {
  constexpr int L = V::kLanes;
  typename V::T c[P][R];
#pragma GCC unroll 2
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) c[p][r] = V::zero();
  for (int64_t k0 = 0; k0 < Kp; k0 += kOuterKC) {
    const float* wb = wblocks + k0 * R;
    const float* pk = panels + k0 * L;
    for (int64_t k = 0; k < kOuterKC; ++k) {
      typename V::T a[P];
#pragma GCC unroll 2
      for (int p = 0; p < P; ++p) a[p] = V::load(pk + p * panel_ld + k * L);
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) {
        const typename V::T wv = V::set1(wb[r * kOuterKC + k]);
#pragma GCC unroll 2
        for (int p = 0; p < P; ++p) c[p][r] = V::fmadd(a[p], wv, c[p][r]);
      }
    }
  }
#pragma GCC unroll 2
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) V::store(sums + (p * R + r) * L, c[p][r]);
}

// r rows of W (a task's run) against all of A's panels, in tiles of R W rows converted to f32 into `scratch`
// (R x padded K floats; a tail of fewer rows is padded with zero rows, so every tile has the same shape).
template <class V, DType D>
void outer_rows(const float* panels, int64_t M, const void* wv, int64_t ldw, int64_t K, float* out, int64_t ldo, int r,
                float* scratch) {
  constexpr int L = V::kLanes, R = kOuterR<V>;
  const Stor<D>* w = static_cast<const Stor<D>*>(wv);
  const int64_t Kp = outer_padded_k(K), num_panels = (M + L - 1) / L, panel_ld = Kp * L;
  alignas(64) float sums[2 * R * L];
  for (int n0 = 0; n0 < r; n0 += R) {
    const int rows = std::min(R, r - n0);
    const Stor<D>* wt = w + n0 * ldw;
    // The next tile's rows, fetched while this one is multiplied (weights come cold from DRAM in a decode step).
    if (n0 + R < r)
      for (int64_t off = 0; off < std::min<int64_t>(R, r - n0 - R) * ldw * int64_t{sizeof(Stor<D>)}; off += 64)
        _mm_prefetch(reinterpret_cast<const char*>(wt + R * ldw) + off, _MM_HINT_T0);
    for (int j = 0; j < R; ++j)
      for (int64_t k0 = 0; k0 < Kp; k0 += kOuterKC) {
        float* dst = scratch + k0 * R + j * kOuterKC;
        const Stor<D>* src = wt + j * ldw + k0;
        int64_t k = 0;
        if (j < rows && k0 + kOuterKC <= K)
          for (; k < kOuterKC; k += L) V::store(dst + k, load<V, D>(src + k));
        for (; k < kOuterKC; ++k) dst[k] = j < rows && k0 + k < K ? to_f32<D>(src[k]) : 0.0f;
      }
    for (int64_t p0 = 0; p0 < num_panels; p0 += 2) {
      const int P = num_panels - p0 >= 2 ? 2 : 1;
      if (P == 2) outer_tile<V, R, 2>(panels + p0 * panel_ld, panel_ld, scratch, Kp, sums);
      else outer_tile<V, R, 1>(panels + p0 * panel_ld, panel_ld, scratch, Kp, sums);
      // sums[(p * R + j) * L + lane] is out[row (p0 + p) * L + lane][n0 + j]: transposed into out.
      for (int p = 0; p < P; ++p)
        for (int lane = 0; lane < L && (p0 + p) * L + lane < M; ++lane)
          for (int j = 0; j < rows; ++j) out[((p0 + p) * L + lane) * ldo + n0 + j] = sums[(p * R + j) * L + lane];
    }
  }
}

template <class V, DType D>
void dot_simd(const float* a, int64_t lda, int64_t M, const void* wv, int64_t ldw, int64_t K, float* out, int64_t ldo,
              int r) {
  const Stor<D>* w = static_cast<const Stor<D>*>(wv);
  if (M > kRowsFewM) return dot_many<V, D>(a, lda, M, w, ldw, K, out, ldo, r, tls_scratch.get(kRowsR * kDotKC));
  for (int j = 0; j < r; ++j, w += ldw, ++out) {
    switch (M) {
      case 1: dot_row<V, 1, D>(a, lda, w, K, out, ldo); break;
      case 2: dot_row<V, 2, D>(a, lda, w, K, out, ldo); break;
      default: dot_row<V, 3, D>(a, lda, w, K, out, ldo); break;
    }
  }
}

// MB rows x NV vectors of columns of C: per k, NV vectors of B's row k (converted once) times MB broadcast A values.
template <class V, int MB, int NV, DType D>
void axpy_tile(const float* a, int64_t lda, const Stor<D>* b, int64_t ldb, int64_t K, float* c, int64_t ldc) {
  constexpr int L = V::kLanes;
  typename V::T acc[MB][NV];
  for (int m = 0; m < MB; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = V::zero();
  for (int64_t k = 0; k < K; ++k, b += ldb) {
    typename V::T bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load<V, D>(b + L * v);
    for (int m = 0; m < MB; ++m) {
      const typename V::T x = V::set1(a[m * lda + k]);
      for (int v = 0; v < NV; ++v) acc[m][v] = V::fmadd(x, bv[v], acc[m][v]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) V::store(c + m * ldc + L * v, acc[m][v]);
}

template <class V, int NV, DType D>
void axpy_tile_m(const float* a, int64_t lda, const Stor<D>* b, int64_t ldb, int64_t K, float* c, int64_t ldc, int mb) {
  switch (mb) {
    case 1: return axpy_tile<V, 1, NV, D>(a, lda, b, ldb, K, c, ldc);
    case 2: return axpy_tile<V, 2, NV, D>(a, lda, b, ldb, K, c, ldc);
    case 3: return axpy_tile<V, 3, NV, D>(a, lda, b, ldb, K, c, ldc);
    case 4: return axpy_tile<V, 4, NV, D>(a, lda, b, ldb, K, c, ldc);
    case 5: return axpy_tile<V, 5, NV, D>(a, lda, b, ldb, K, c, ldc);
    default: return axpy_tile<V, 6, NV, D>(a, lda, b, ldb, K, c, ldc);
  }
}

// Columns in blocks of 2 vectors, then one of 1 vector, then a scalar tail.
template <class V, DType D>
void axpy_simd(const float* a, int64_t lda, const void* bv, int64_t ldb, int64_t K, float* c, int64_t ldc, int mb,
               int64_t nc) {
  constexpr int L = V::kLanes;
  const Stor<D>* b = static_cast<const Stor<D>*>(bv);
  int64_t j = 0;
  for (; j + 2 * L <= nc; j += 2 * L) axpy_tile_m<V, 2, D>(a, lda, b + j, ldb, K, c + j, ldc, mb);
  if (j + L <= nc) {
    axpy_tile_m<V, 1, D>(a, lda, b + j, ldb, K, c + j, ldc, mb);
    j += L;
  }
  if (j < nc) axpy_scalar<D>(a, lda, b + j, ldb, K, c + j, ldc, mb, nc - j);
}

template <DType D>
TL_AVX2 TL_FLATTEN void dot_avx2(const float* a, int64_t lda, int64_t M, const void* w, int64_t ldw, int64_t K,
                                 float* out, int64_t ldo, int r) {
  dot_simd<Vec8, D>(a, lda, M, w, ldw, K, out, ldo, r);
}
template <DType D>
TL_AVX512 TL_FLATTEN void dot_avx512(const float* a, int64_t lda, int64_t M, const void* w, int64_t ldw, int64_t K,
                                     float* out, int64_t ldo, int r) {
  dot_simd<Vec16, D>(a, lda, M, w, ldw, K, out, ldo, r);
}
template <DType D>
TL_AVX2 TL_FLATTEN void outer_avx2(const float* panels, int64_t M, const void* w, int64_t ldw, int64_t K, float* out,
                                  int64_t ldo, int r, float* scratch) {
  outer_rows<Vec8, D>(panels, M, w, ldw, K, out, ldo, r, scratch);
}
template <DType D>
TL_AVX512 TL_FLATTEN void outer_avx512(const float* panels, int64_t M, const void* w, int64_t ldw, int64_t K,
                                      float* out, int64_t ldo, int r, float* scratch) {
  outer_rows<Vec16, D>(panels, M, w, ldw, K, out, ldo, r, scratch);
}
template <DType D>
TL_AVX2 TL_FLATTEN void axpy_avx2(const float* a, int64_t lda, const void* b, int64_t ldb, int64_t K, float* c,
                                  int64_t ldc, int mb, int64_t nc) {
  axpy_simd<Vec8, D>(a, lda, b, ldb, K, c, ldc, mb, nc);
}
template <DType D>
TL_AVX512 TL_FLATTEN void axpy_avx512(const float* a, int64_t lda, const void* b, int64_t ldb, int64_t K, float* c,
                                      int64_t ldc, int mb, int64_t nc) {
  axpy_simd<Vec16, D>(a, lda, b, ldb, K, c, ldc, mb, nc);
}
#endif  // TL_X86_SIMD

struct SkinnyKernels {
  DotFn dot;
  AxpyFn axpy;
  OuterFn outer;       // null at the scalar level
  int64_t outer_min_m;  // A rows from which the outer form replaces dot's tiles
  int outer_lanes;      // rows per panel of the outer form
  int outer_r;          // W rows per tile of the outer form (the f32 scratch holds outer_r x padded K)
};

SkinnyKernels skinny_kernels(DType bd, SimdLevel level) {
  SkinnyKernels s{};
  with_dtype(bd, [&](auto d) {
    constexpr DType D = decltype(d)::value;
    s.dot = &dot_scalar<D>;
    s.axpy = &axpy_scalar<D>;
#ifdef TL_X86_SIMD
    if (level == SimdLevel::Avx2) {
      s.dot = &dot_avx2<D>;
      s.axpy = &axpy_avx2<D>;
      s.outer = &outer_avx2<D>;
      s.outer_min_m = kOuterMinM<Vec8>;
      s.outer_lanes = Vec8::kLanes;
      s.outer_r = kOuterR<Vec8>;
    } else if (level == SimdLevel::Avx512) {
      s.dot = &dot_avx512<D>;
      s.axpy = &axpy_avx512<D>;
      s.outer = &outer_avx512<D>;
      s.outer_min_m = kOuterMinM<Vec16>;
      s.outer_lanes = Vec16::kLanes;
      s.outer_r = kOuterR<Vec16>;
    }
#endif
  });
  return s;
}

// One batch item's operands: a and b with their item offsets applied, and where its output goes.
struct Item {
  Mat a, b;
  float* c;
};

// A's rows in panels of `lanes` rows, each transposed: panels[p][k][lane] = A[p * lanes + lane][k], rows past M
// zero (their sums are computed and dropped).
void pack_panels(const Mat& a, int lanes, float* panels) {
  const int64_t M = a.rows, K = outer_padded_k(a.cols), num_panels = (M + lanes - 1) / lanes;
  std::fill(panels, panels + num_panels * K * lanes, 0.0f);
  with_dtype(a.dtype, [&](auto d) {
    constexpr DType D = decltype(d)::value;
    const Stor<D>* src = base<D>(a);
    for (int64_t m = 0; m < M; ++m) {
      float* dst = panels + (m / lanes) * K * lanes + m % lanes;
      for (int64_t k = 0; k < a.cols; ++k) dst[k * lanes] = to_f32<D>(src[m * a.rs + k * a.cs]);
    }
  });
}

// Rows path over all items. A task is a run of W rows (output columns) of one item: a decode step over one big
// weight splits along N, a batch of small attention heads splits across heads.
void skinny_rows(const std::vector<Item>& items, int64_t M, int64_t N, int64_t K, int threads,
                 const SkinnyKernels& s) {
  const int64_t es = dtype_size(items[0].b.dtype);
  if (s.outer && M >= s.outer_min_m) {
    // Every item's panels, packed once on the calling thread and read by all.
    const int64_t item_floats = (M + s.outer_lanes - 1) / s.outer_lanes * s.outer_lanes * outer_padded_k(K);
    float* panels = tls_panels.get(static_cast<int64_t>(items.size()) * item_floats);
    for (size_t i = 0; i < items.size(); ++i) pack_panels(items[i].a, s.outer_lanes, panels + i * item_floats);
    // Tasks of whole tiles (60 rows: 5 of 12, 10 of 6), so that only an item's last task has a partial tile.
    constexpr int64_t kOuterRowsPerTask = 60;
    const int64_t outer_tasks = (N + kOuterRowsPerTask - 1) / kOuterRowsPerTask;
    return run_tasks_in_parts(static_cast<int64_t>(items.size()) * outer_tasks, threads, [&](int64_t t) {
      const int64_t i = t / outer_tasks;
      const int64_t n0 = (t % outer_tasks) * kOuterRowsPerTask;
      const int r = static_cast<int>(std::min(N, n0 + kOuterRowsPerTask) - n0);
      const void* w = static_cast<const char*>(items[i].b.data) + n0 * items[i].b.cs * es;
      float* scratch = tls_scratch.get(s.outer_r * outer_padded_k(K));
      s.outer(panels + i * item_floats, M, w, items[i].b.cs, K, items[i].c + n0, N, r, scratch);
    });
  }
  // Up to 64 W rows per task (~110 KB of a bf16 weight with K = 896): long enough for the prefetcher to
  // stream, short enough for dynamic hand-out to balance the threads.
  constexpr int64_t kRowsPerTask = 16 * kRowsR;
  const int64_t tasks_per_item = (N + kRowsPerTask - 1) / kRowsPerTask;
  run_tasks_in_parts(static_cast<int64_t>(items.size()) * tasks_per_item, threads, [&](int64_t t) {
    const Item& item = items[t / tasks_per_item];
    const int64_t n_begin = (t % tasks_per_item) * kRowsPerTask, n_end = std::min(N, n_begin + kRowsPerTask);
    int64_t lda = 0;
    const float* a = a_rows_f32(item.a, tls_pack_a, &lda);
    for (int64_t n0 = n_begin; n0 < n_end; n0 += kRowsR) {
      const int r = static_cast<int>(std::min<int64_t>(kRowsR, n_end - n0));
      const void* w = static_cast<const char*>(item.b.data) + n0 * item.b.cs * es;
      s.dot(a, lda, M, w, item.b.cs, K, item.c + n0, N, r);
    }
  });
}

// Cols path over all items: a task is a 64-column slice of one item.
void skinny_cols(const std::vector<Item>& items, int64_t M, int64_t N, int64_t K, int threads,
                 const SkinnyKernels& s) {
  constexpr int64_t kSlice = 64;
  const int64_t slices = (N + kSlice - 1) / kSlice;
  const int64_t es = dtype_size(items[0].b.dtype);
  run_tasks(static_cast<int64_t>(items.size()) * slices, threads, [&](int64_t t) {
    const Item& item = items[t / slices];
    const int64_t n0 = (t % slices) * kSlice, nc = std::min(kSlice, N - n0);
    int64_t lda = 0;
    const float* a = a_rows_f32(item.a, tls_pack_a, &lda);
    const void* b = static_cast<const char*>(item.b.data) + n0 * es;
    for (int64_t m0 = 0; m0 < M; m0 += kColsMB) {
      const int mb = static_cast<int>(std::min<int64_t>(kColsMB, M - m0));
      s.axpy(a + m0 * lda, lda, b, item.b.rs, K, item.c + m0 * N + n0, N, mb, nc);
    }
  });
}

// =====================================================================================================================
// The binding
// =====================================================================================================================

bool is_float(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }

// Null when the arguments are consistent, else what is wrong (the message gets the shapes appended). Building
// strings only on failure keeps them off the per-call cost of small decode matmuls.
const char* check_args(const TensorRef& a, const TensorRef& b, const TensorRef& out) {
  if (!is_float(a.dtype) || !is_float(b.dtype)) return "a and b must be float32, bfloat16 or float16";
  if (out.dtype != DType::F32) return "out must be float32";
  const int nd = a.ndim();
  if (nd < 2 || b.ndim() != nd || out.ndim() != nd) return "a, b and out must have the same number of dimensions, at least 2";
  for (int i = 0; i < nd - 2; ++i)
    if (a.shape[i] != b.shape[i] || a.shape[i] != out.shape[i]) return "batch dimensions differ";
  if (a.shape[nd - 1] != b.shape[nd - 2]) return "inner dimensions differ";
  if (out.shape[nd - 2] != a.shape[nd - 2] || out.shape[nd - 1] != b.shape[nd - 1])
    return "out must have shape [...batch, M, N]";
  if (!out.contiguous()) return "out must be contiguous";
  return nullptr;
}

// Element offset of each batch item (row-major order over the batch dims) in a view.
std::vector<int64_t> batch_offsets(const TensorRef& t, int64_t count) {
  std::vector<int64_t> offs(count);
  const int nb = t.ndim() - 2;
  for (int64_t i = 0; i < count; ++i) {
    int64_t rem = i, off = 0;
    for (int d = nb - 1; d >= 0; --d) {
      off += (rem % t.shape[d]) * t.strides[d];
      rem /= t.shape[d];
    }
    offs[i] = off;
  }
  return offs;
}

Mat item_mat(const TensorRef& t, int64_t offset) {
  const int nd = t.ndim();
  return Mat{static_cast<const char*>(t.data) + offset * dtype_size(t.dtype), t.dtype, t.shape[nd - 2],
             t.shape[nd - 1], t.strides[nd - 2], t.strides[nd - 1]};
}

void run_matmul(const TensorRef& at, const TensorRef& bt, const TensorRef& out) {
  const int nd = at.ndim();
  const int64_t M = at.shape[nd - 2], K = at.shape[nd - 1], N = bt.shape[nd - 1];
  int64_t batch = 1;
  for (int i = 0; i < nd - 2; ++i) batch *= at.shape[i];
  if (batch == 0 || M == 0 || N == 0) return;

  const std::vector<int64_t> ao = batch_offsets(at, batch), bo = batch_offsets(bt, batch);
  std::vector<Item> items(batch);
  for (int64_t i = 0; i < batch; ++i)
    items[i] = Item{item_mat(at, ao[i]), item_mat(bt, bo[i]), out.ptr<float>() + i * M * N};

  const SimdLevel level = simd_level();
  const int pool = num_threads();
  const int threads = batch * M * N * K >= kParallelMinFma ? pool : 1;
  const int64_t rs = items[0].b.rs, cs = items[0].b.cs;

  if (M <= kSkinnyM && K > 0) {
    // Pick by B's layout: contiguous rows (axpy form) or contiguous columns (dot form, the weight layout).
    if (cs == 1 && N > 1) return skinny_cols(items, M, N, K, threads, skinny_kernels(bt.dtype, level));
    if (rs == 1 || K == 1) return skinny_rows(items, M, N, K, threads, skinny_kernels(bt.dtype, level));
  }
  // A weight's few more rows (see kRowsMaxM), unless the GEMM is to multiply it in bfloat16 pairs.
  const bool bf16_products = g_bf16_products.load(std::memory_order_relaxed) && bt.dtype == DType::BF16;
  if (M <= kRowsMaxM && K > 0 && rs == 1 && cs != 1 && !bf16_products)
    return skinny_rows(items, M, N, K, threads, skinny_kernels(bt.dtype, level));

  const GemmKernels g = gemm_kernels(items[0].a, items[0].b, level);
  // Many small items (attention heads): one item per thread at a time, each GEMM single-threaded. Few large
  // items: items in turn, each split across the pool.
  const int64_t item_fma = M * N * K;
  const bool across_items = batch > 1 && (batch % pool == 0 || batch >= 4 * pool || item_fma < (1 << 22));
  if (across_items) {
    run_tasks(batch, threads, [&](int64_t i) { gemm_packed(items[i].a, items[i].b, items[i].c, N, 1, g); });
  } else {
    for (const Item& it : items) gemm_packed(it.a, it.b, it.c, N, threads, g);
  }
}

Napi::Value Matmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TensorRef a = tensor_arg(info, 0, "matmul");
  if (env.IsExceptionPending()) return env.Undefined();
  TensorRef b = tensor_arg(info, 1, "matmul");
  if (env.IsExceptionPending()) return env.Undefined();
  TensorRef out = tensor_arg(info, 2, "matmul");
  if (env.IsExceptionPending()) return env.Undefined();
  if (const char* err = check_args(a, b, out)) {
    Napi::TypeError::New(env, std::string("matmul: ") + err + " (a " + a.describe() + ", b " + b.describe() +
                                  ", out " + out.describe() + ")")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  try {
    run_matmul(a, b, out);
  } catch (const std::bad_alloc&) {
    Napi::Error::New(env, "matmul: out of memory for packing buffers").ThrowAsJavaScriptException();
  }
  return env.Undefined();
}
TL_EXPORT("matmul", Matmul);

// setMatmulPrecision("float32" | "bfloat16"): the products of the packed GEMM (M > 16) with a bfloat16 weight in
// weight layout, on CPUs with AVX-512 BF16 at the avx512 level (elsewhere nothing changes). matmulPrecision()
// returns the setting.
Napi::Value SetMatmulPrecision(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  if (name != "float32" && name != "bfloat16") {
    Napi::RangeError::New(env, "setMatmulPrecision: \"" + name + "\" is not a precision (float32 or bfloat16)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  g_bf16_products.store(name == "bfloat16");
  return env.Undefined();
}
TL_EXPORT("setMatmulPrecision", SetMatmulPrecision);

Napi::Value MatmulPrecision(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), g_bf16_products.load() ? "bfloat16" : "float32");
}
TL_EXPORT("matmulPrecision", MatmulPrecision);

}  // namespace

// The SDK's tl::matmul (extension.h): the same checks and kernels as native.matmul, for other addons' kernels
// (the reference's quantized prefill multiplies dequantized weight tiles with it).
const char* core_matmul(const TensorRef* a, const TensorRef* b, const TensorRef* out) {
  if (const char* err = check_args(*a, *b, *out)) return err;
  try {
    run_matmul(*a, *b, *out);
  } catch (const std::bad_alloc&) {
    return "out of memory for packing buffers";
  }
  return nullptr;
}

}  // namespace tl
