// The quantized matmul with integer activations for many rows of x: a GEMM on AVX-512 VNNI. The formula and the rounding of x are
// native/quantized_matmul_int16.cc's (x to int16 per block of 32 values, one float scale dx each; integer dot
// products exact in int32; the biases' part from the float sums of x), so a prompt's prefill and its decode steps
// compute the same function. What differs is the shape of the work: M = hundreds of x rows against each weight row
// (a prefill), or a dozen or more (a batch of decode steps).
//
// Why not the decode kernels: they put K along a vector's lanes, so a block of 32 weights times a block of x is one
// vpdpwssd, after which the block's int32 lanes must be converted and scaled by dx (two more instructions): the
// conversions cost twice the multiplies. For prefill the float path (dequantize a block of weight rows, then
// tensor-core's float32 GEMM) was faster. Here the lanes run along x's rows instead, as in a GEMM's outer product:
//   acc[n][m0 .. m0 + 15] += (w[n][k], w[n][k + 1]) . (x[m][k], x[m][k + 1])  for the 16 rows m, one vpdpwssd,
// 16 of them (32 values of k, one x block) before a block's int32 sums are converted and scaled. A vpdpwssd is 32
// multiply-adds where a float32 FMA is 16.
//
// How it is built (measured with bench/quantized-matmul.ts's prefill, M = 256, 4-bit, group 64, on a shared 2-core
// Zen 5; the float path, dequantized blocks through the float32 GEMM, did 240-254 GFLOP/s on 4864 x 896 in the
// same runs as steps 1-4, the float32 GEMM itself 289-306):
//   1. x's panels (pack_panel): x rows in panels of 32, each rounded to int16 blocks (the shared quantize_block
//      arithmetic, in vectors), stored as pairs of k (one int32 per row and pair) so that one vector load gives 16
//      rows' pairs; the panel's dx per block and x's group sums beside, also one float per row.
//   2. Weight rows unpacked to int16 in order (unpack_rows), one slice of K at a time: 4 bits, a byte holds values
//      2i (low nibble) and 2i + 1 (high): one int32 pair. Done once per weight per call, against M multiplies
//      (for two or more panels; step 7 has one panel's tiles unpack as they go).
//   3. The micro-tile (tile): 6 weight rows x 32 x rows, 12 int32 and 12 float accumulators in registers. Per pair
//      of k: two x loads and six broadcasts of a weight pair serve 12 vpdpwssd. Per block: convert, multiply by
//      dx (per x row) times the weight scale (per weight row), add; per group: add bias * sum of x.
//   4. Blocking (gemm_int16): pool tasks of up to 48 weight rows; K in slices whose x panels (all M rows) stay in
//      the core's L2 while the task's weight rows pass over them, the float partial sums carried between slices.
//      Steps 1-4: 4864 x 896 at 430-439 GFLOP/s.
//   5. The micro-tile's pairs loop unrolled: rolled, GCC copied each int32 accumulator to another register and back
//      around every vpdpwssd (24 moves per 12 multiplies). And the last slice writes its outputs straight into out
//      (a masked scatter per 16 x rows, with the epilogue), where a loop over the task's [rows, M] sums had
//      transposed them one float at a time. 4864 x 896: 514-597 GFLOP/s (the float32 GEMM: 338-345, the machine
//      faster than in the runs above), 896 x 4864: 491-566.
//   6. A batch of decode steps (M = 12-16; the binding's kInt16GemmMinM): panels of 16 x rows, one vector, and
//      tiles of 12 weight rows, the same 24 accumulators. 4864 x 896 at M = 16, weights from DRAM (24 copies in
//      turn): 493-495 us, where the decode tiles of quantized_matmul_int16.cc take 772-784 us. (Requesting each
//      task's weight rows ahead, towards L2, moved this by less than the run-to-run spread: not kept.)
//   7. With one panel (M <= 16) each weight meets the x rows once, so unpacking a task's rows into a buffer first
//      (step 2) wrote and read back four bytes per 4-bit weight for nothing: the tiles unpack each block of their
//      rows into a few hundred bytes on the stack as they reach it (unpack_block). 4864 x 896 at M = 16 (three
//      rounds alternating the builds): weights from DRAM 484-499 -> 414-441 us, in cache 378-391 -> 316-321 us;
//      896 x 4864 from DRAM 434 -> 348 us. Qwen2-0.5B 4-bit at batch 16 (`tiny-llm bench --batch 16`, two rounds):
//      189-206 -> 206-235 tok/s.
// What is left is the per-block work of step 3 (3 instructions per accumulator per 16 vpdpwssd, about 19%), which
// the blocks of 32 values, each with its own dx, make necessary.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "quantized.h"

namespace engine {

#ifdef TL_X86_SIMD
namespace {

constexpr int kLanes = 16;                    // int32 or float lanes of a vector
constexpr int kPairs = kInt16Block / 2;       // pairs of k per block
constexpr int64_t kTaskRows = 48;             // weight rows per pool task (at most), a multiple of 12
constexpr int64_t kSliceBytes = int64_t{256} << 10;  // x panels of one K slice (all M rows): half of a Zen 4/5 L2

thread_local Buffer tls_panels;  // x panels, calling thread (read by the pool)
thread_local Buffer tls_wq;      // a task's weight rows as int16, each pool thread its own
thread_local Buffer tls_params;  // a task's scales and biases as float32
thread_local Buffer tls_tile;    // a task's float partial sums [rows, M padded]

// x prepared for the tiles, panel after panel: pairs [K / 2][width] int32, dx [K / 32][width], xsum
// [groups][width]. A panel is 32 x rows (two vectors), or 16 (one) when M is at most 16 (a batch of decode steps).
struct Panels {
  int32_t* pairs;
  float* dx;
  float* xsum;
  int width;
  int64_t count, pairs_size, dx_size, xsum_size;  // panels, and each panel's length in each array
};

// ---- Step 1: x's panels --------------------------------------------------------------------------------------------

// Panel `panel` of x: rows past M are zeros (their outputs are never written).
TL_AVX512_VNNI void pack_panel(const Problem& p, const Panels& x, int64_t panel) {
  int32_t* pairs = x.pairs + panel * x.pairs_size;
  float* dx = x.dx + panel * x.dx_size;
  float* xsum = x.xsum + panel * x.xsum_size;
  const int64_t blocks = p.K / kInt16Block;
  const int width = x.width;
  // Pair j of a block goes `width` int32 further than pair j - 1: one scatter per block and row.
  const __m512i stride = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(width));
  for (int i = 0; i < width; ++i) {
    const int64_t m = panel * width + i;
    if (m >= p.M) {
      for (int64_t j = 0; j < p.K / 2; ++j) pairs[j * width + i] = 0;
      for (int64_t b = 0; b < blocks; ++b) dx[b * width + i] = 0.0f;
      for (int64_t g = 0; g < p.groups; ++g) xsum[g * width + i] = 0.0f;
      continue;
    }
    for (int64_t b = 0; b < blocks; ++b) {
      __m512i q;
      dx[b * width + i] = quantize_block_avx512(p.x + m * p.K + b * kInt16Block, q);
      _mm512_i32scatter_epi32(pairs + b * kPairs * width + i, stride, q, 4);
    }
    for (int64_t g = 0; g < p.groups; ++g) xsum[g * width + i] = p.xsum[m * p.groups + g];
  }
}

// ---- Step 2: weight rows to int16 ----------------------------------------------------------------------------------

// One block of 32 packed weights (16 bytes at 4 bits, 32 at 8) -> 32 int16, in order.
TL_AVX512_VNNI inline void unpack_block(const uint8_t* src, int bits, int16_t* dst) {
  if (bits == 4) {
    // Each byte to an int32 lane: its low nibble the pair's first int16, its high nibble the second.
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    _mm512_storeu_si512(dst, _mm512_or_si512(_mm512_and_si512(v, _mm512_set1_epi32(0x0F)),
                                             _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0xF0)), 12)));
  } else {
    _mm512_storeu_si512(dst, _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src))));
  }
}

// Rows [n0, n0 + rows), columns [k0, k0 + kn) (kn a multiple of 32) -> dst [rows][kn] int16, in order.
TL_AVX512_VNNI void unpack_rows(const Problem& p, int64_t n0, int64_t rows, int64_t k0, int64_t kn, int16_t* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* src = p.w + (n0 + r) * p.row_bytes + k0 * p.bits / 8;
    for (int64_t k = 0; k < kn; k += kInt16Block) unpack_block(src + k * p.bits / 8, p.bits, dst + r * kn + k);
  }
}

// ---- Step 3: the micro-tile ----------------------------------------------------------------------------------------

// Where a micro-tile reads and writes: x at a panel and slice, R weight rows at the slice, their params, its outputs.
struct TileArgs {
  const Problem* p;
  int64_t m0, n0;        // the tile's first x row and weight row
  const int32_t* pairs;  // the panel's pairs from the slice's first
  const float* dx;       // the panel's block scales from the slice's first block
  const float* xsum;     // the panel's group sums from the slice's first group
  const int16_t* w;      // weight row 0 of the tile at the slice's first column; row r at w + r * ldw
  int64_t ldw;
  const uint8_t* packed;  // or, for tiles that unpack their own blocks, the packed row 0 there; row r at
  int64_t row_bytes;      // packed + r * row_bytes
  int bits;
  const float* scales;   // row r's scale of the slice's group g at scales[r * ldp + g] (biases likewise)
  const float* biases;
  int64_t ldp;
  int blocks, blocks_per_group;
  float* sums;           // row r's partial sums (a panel's width) at sums + r * lds, carried from slice to slice
  int64_t lds;
  bool first, last;      // the first slice (sums start at zero), the last (the outputs go to out)
};

// The last slice's outputs: out[m][n0 + r] for the 16 x rows from m (lanes past M masked off), with the epilogue of
// store_out (the row's bias, the residual, which may be out itself: each output is read before it is written).
TL_AVX512_VNNI inline void store_column(const Problem& p, int64_t m, int64_t n, __m512 v) {
  const __mmask16 rows = p.M - m >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (p.M - m)) - 1);
  const __m512i offsets = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32(static_cast<int32_t>(p.N)));
  if (p.bias) v = _mm512_add_ps(v, _mm512_set1_ps(p.bias[n]));
  if (p.residual) v = _mm512_add_ps(v, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), rows, offsets, p.residual + m * p.N + n, 4));
  _mm512_mask_i32scatter_ps(p.out + m * p.N + n, rows, offsets, v, 4);
}

// R weight rows x H vectors of 16 x rows (the panel's width): 2R H accumulators, at most 24 of the 32 registers.
template <int R, int H, bool kUnpacks> TL_AVX512_VNNI void tile(const TileArgs& a) {
  constexpr int kWidth = H * kLanes;
  __m512 f[R][H];
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < H; ++h) f[r][h] = a.first ? _mm512_setzero_ps() : _mm512_loadu_ps(a.sums + r * a.lds + kLanes * h);
  alignas(64) int16_t unpacked[R][kInt16Block];
  for (int b = 0, g = 0, in_group = 0; b < a.blocks; ++b) {
    const int16_t* w[R];  // the block's weights of row r from w[r]
    for (int r = 0; r < R; ++r) {
      if constexpr (kUnpacks) {
        unpack_block(a.packed + r * a.row_bytes + b * kInt16Block * a.bits / 8, a.bits, unpacked[r]);
        w[r] = unpacked[r];
      } else {
        w[r] = a.w + r * a.ldw + b * kInt16Block;
      }
    }
    __m512i acc[R][H];
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < H; ++h) acc[r][h] = _mm512_setzero_si512();
    const int32_t* xb = a.pairs + b * kPairs * kWidth;
    // Unrolled: GCC then keeps the accumulators in place (rolled, it copied each one twice per vpdpwssd).
#pragma GCC unroll 16
    for (int j = 0; j < kPairs; ++j) {
      __m512i x[H];
      for (int h = 0; h < H; ++h) x[h] = _mm512_loadu_si512(xb + j * kWidth + kLanes * h);
      for (int r = 0; r < R; ++r) {
        int32_t pair;
        std::memcpy(&pair, w[r] + 2 * j, sizeof pair);
        const __m512i wv = _mm512_set1_epi32(pair);
        for (int h = 0; h < H; ++h) acc[r][h] = _mm512_dpwssd_epi32(acc[r][h], x[h], wv);
      }
    }
    __m512 dx[H];
    for (int h = 0; h < H; ++h) dx[h] = _mm512_loadu_ps(a.dx + b * kWidth + kLanes * h);
    for (int r = 0; r < R; ++r) {
      const __m512 s = _mm512_set1_ps(a.scales[r * a.ldp + g]);
      for (int h = 0; h < H; ++h) f[r][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][h]), _mm512_mul_ps(dx[h], s), f[r][h]);
    }
    if (++in_group == a.blocks_per_group) {
      __m512 xs[H];
      for (int h = 0; h < H; ++h) xs[h] = _mm512_loadu_ps(a.xsum + g * kWidth + kLanes * h);
      for (int r = 0; r < R; ++r) {
        const __m512 bias = _mm512_set1_ps(a.biases[r * a.ldp + g]);
        for (int h = 0; h < H; ++h) f[r][h] = _mm512_fmadd_ps(bias, xs[h], f[r][h]);
      }
      ++g;
      in_group = 0;
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int h = 0; h < H; ++h) {
      if (!a.last)
        _mm512_storeu_ps(a.sums + r * a.lds + kLanes * h, f[r][h]);
      else if (a.m0 + kLanes * h < a.p->M)
        store_column(*a.p, a.m0 + kLanes * h, a.n0 + r, f[r][h]);
    }
  }
}

// The tiles for rows weight rows from a.n0 (any count): the widest first (12 rows on one vector of x rows, 6 on
// two), then narrower ones for what is left. Returns the rows done.
template <int H> TL_AVX512_VNNI int run_tile(int rows, const TileArgs& a) {
  constexpr bool kUnpacks = H == 1;
  if (H == 1 && rows >= 12) return tile<12, 1, kUnpacks>(a), 12;
  if (rows >= 6) return tile<6, H, kUnpacks>(a), 6;
  if (rows >= 4) return tile<4, H, kUnpacks>(a), 4;
  if (rows >= 2) return tile<2, H, kUnpacks>(a), 2;
  return tile<1, H, kUnpacks>(a), 1;
}

// ---- Step 4: blocking ----------------------------------------------------------------------------------------------

// Weight rows [n0, n0 + rows) against every x row, into out.
template <int H> TL_AVX512_VNNI void task_rows(const Problem& p, const Panels& x, int64_t kc, int64_t n0, int64_t rows) {
  const int width = x.width;
  const int64_t m_padded = x.count * width;
  // With one panel (H = 1) each weight meets 16 x rows once: the tiles unpack their own blocks (step 7).
  int16_t* wq = H == 2 ? reinterpret_cast<int16_t*>(tls_wq.get((rows * kc + 1) / 2)) : nullptr;
  float* scales = tls_params.get(2 * rows * p.groups);
  float* biases = scales + rows * p.groups;
  float* sums = tls_tile.get(rows * m_padded);  // partial sums between slices: row r, x row m at r * m_padded + m
  params_f32(p, n0, static_cast<int>(rows), scales, biases);
  for (int64_t k0 = 0; k0 < p.K; k0 += kc) {
    const int64_t kn = std::min(kc, p.K - k0);
    if (H == 2) unpack_rows(p, n0, rows, k0, kn, wq);
    TileArgs a{};
    a.p = &p;
    a.ldw = kn;
    a.row_bytes = p.row_bytes;
    a.bits = p.bits;
    a.ldp = p.groups;
    a.blocks = static_cast<int>(kn / kInt16Block);
    a.blocks_per_group = p.G / kInt16Block;
    a.lds = m_padded;
    a.first = k0 == 0;
    a.last = k0 + kn == p.K;
    for (int64_t r0 = 0; r0 < rows;) {
      int done = 0;
      for (int64_t panel = 0; panel < x.count; ++panel) {
        a.m0 = panel * width;
        a.n0 = n0 + r0;
        a.pairs = x.pairs + panel * x.pairs_size + k0 / 2 * width;
        a.dx = x.dx + panel * x.dx_size + k0 / kInt16Block * width;
        a.xsum = x.xsum + panel * x.xsum_size + k0 / p.G * width;
        if (H == 2)
          a.w = wq + r0 * kn;
        else
          a.packed = p.w + (n0 + r0) * p.row_bytes + k0 * p.bits / 8;
        a.scales = scales + r0 * p.groups + k0 / p.G;
        a.biases = biases + r0 * p.groups + k0 / p.G;
        a.sums = sums + r0 * m_padded + panel * width;
        done = run_tile<H>(static_cast<int>(rows - r0), a);
      }
      r0 += done;
    }
  }
}

}  // namespace

bool int16_gemm_supported(int bits) {
  return (bits == 4 || bits == 8) && tl::has_avx512() && tl::cpu_features().avx512vnni;
}

void gemm_int16(const Problem& p) {
  Panels x;
  x.width = p.M <= kLanes ? kLanes : 2 * kLanes;
  x.count = (p.M + x.width - 1) / x.width;
  x.pairs_size = p.K / 2 * x.width;
  x.dx_size = p.K / kInt16Block * x.width;
  x.xsum_size = p.groups * x.width;
  float* buffer = tls_panels.get(x.count * (x.pairs_size + x.dx_size + x.xsum_size));
  x.pairs = reinterpret_cast<int32_t*>(buffer);
  x.dx = buffer + x.count * x.pairs_size;
  x.xsum = x.dx + x.count * x.dx_size;
  run_tasks(x.count, [&](int64_t panel) { pack_panel(p, x, panel); });
  // K slices of whole groups whose x panels (2 bytes per value) fill about kSliceBytes.
  const int64_t by_size = kSliceBytes / (2 * x.count * x.width) / p.G * p.G;
  const int64_t kc = std::min(p.K, std::max<int64_t>(p.G, by_size));
  // Tasks of kTaskRows weight rows, fewer for small N: at least 4 per thread, so that the last ones even out.
  const int64_t spread = (p.N / (4 * tl::num_threads()) + 11) / 12 * 12;
  const int64_t task = std::clamp<int64_t>(spread, 12, kTaskRows);
  run_tasks((p.N + task - 1) / task, [&](int64_t t) {
    const int64_t n0 = t * task, rows = std::min(task, p.N - n0);
    if (x.width == kLanes)
      task_rows<1>(p, x, kc, n0, rows);
    else
      task_rows<2>(p, x, kc, n0, rows);
  });
}

#else

bool int16_gemm_supported(int) { return false; }
void gemm_int16(const Problem&) {}

#endif  // TL_X86_SIMD

}  // namespace engine
