// 4-bit weights in panels of 16 rows, multiplied with integer activations: how Linear keeps a 4-bit layer on a
// CPU with AVX-512 VNNI (src/model/linear.ts packs it at load). The product is quantized_matmul_int16.cc's to the
// integer: x rounded to int16 per block of 32 values (quantize_block), and
//   out[m][n] = sum_g s[n][g] * sum_{blocks b of g} dx[m][b] * sum_{k in b} q[n][k] * xq[m][k]  +  sum_g b[n][g] * xsum[m][g]
// Only the weights are laid out for the machine instead of as the checkpoint stores them.
//
//   packQuantizedPanels(w, scales, biases, panels, params)
//     w       [N, K / 8] uint32: MLX 4-bit rows (value k in bits 4k .. 4k + 3 of the row's stream)
//     scales  [N, K / G], biases the same: float16, bfloat16 or float32
//     panels  [P, K / 8, 16] uint32, P = ceil(N / 16): panel p holds rows 16p .. 16p + 15. Word (p, c, l) holds
//             values 8c .. 8c + 7 of row 16p + l: its byte j value 8c + j in the low nibble, 8c + 4 + j in the
//             high one. Rows past N are zeros.
//     params  [P, K / G, 2, 16] of the scales' dtype: per panel and group, the 16 rows' scales, then their biases.
//   quantizedPanelLinear(x, panels, out[, bias, residual, prologue, normWeight, eps], params)
//     x [..., K] (or [..., 2K] with the swiglu prologue), any float dtype; out [..., N] float32; the fusion as
//     panelLinear's (native/fusion.cc). K a multiple of 32 and of G (32, 64 or 128).
//   dequantizePanelRows(panels, params, ids, out): rows ids of the dequantized weight, into out [..., K] float32
//     (a tied 4-bit embedding's lookup, when the table is also the output head).
//   quantizedPanelsSupported(): whether this process multiplies panels with AVX-512 VNNI; elsewhere the plain loops
//     run, and Linear keeps the checkpoint's layout for quantized_matmul_int16.cc's kernels.
//
// Why, and how it is built (llm.c style: the plain loop, then each step and its reason; measured on Qwen2-0.5B's
// shapes, 4-bit, groups of 64, on a shared 2-core Zen 5 whose 512-bit vector instructions issue one per cycle):
//   The row kernels of quantized_matmul_int16.cc put K along a vector's lanes: a vpdpwssd makes 32 products of one
//   row, and every 64 weights then cost a convert and an FMA for that row alone, besides the widening of its
//   nibbles to int16: about 6 cycles of vector work per 64 weights. One core multiplied 9-12 weights per cycle,
//   from L2 as from DRAM: the 4-bit decode step was bound by instructions, not by memory.
//   0. panel_scalar: the definition in plain loops over the layout above. It is the kernel of the scalar and AVX2
//      levels (where Linear does not pack panels: only the tests call it there), and what the tests hold to the
//      formula at every level.
//   1. Lanes are weight rows (tile_vnni). One 64-byte vector of words holds 8 values of each of 16 rows; an AND
//      leaves values k .. k + 3 of every row (a byte each), a shift and an AND values k + 4 .. k + 7, and vpdpbusd
//      multiplies the 4 bytes of each lane by 4 bytes of x broadcast to every lane, adding them into that row's
//      int32: 64 products an instruction, no horizontal sums, and the float work of a block (convert, times dx)
//      and of a group (times the scales, plus the biases' part) done once for 16 rows instead of once per row.
//   2. vpdpbusd multiplies unsigned bytes by signed ones, and x is int16: each xq is split as 256 * hi + lo with
//      hi = xq >> 8 in [-128, 127] (signed) and lo = xq & 255 in [0, 255] (unsigned). lo times the weights (0 to
//      15: valid signed bytes) and the weights times hi are one vpdpbusd each, and the two sums give the block's
//      dot product exactly: sum q * xq = 256 * sum q * hi + sum q * lo (at most 32 * 15 * 32767: int32 holds it).
//      128 products (8 values of 16 rows) take 4 vpdpbusd and 3 logic instructions; the row kernels took about 12.
//   3. Tiles of up to 6 x rows (a batch's decode step, a prefill): a vector of words unpacked once serves all of
//      them. One x row keeps two accumulators of each kind, so that two vpdpbusd chains hide each other's latency;
//      more rows interleave their own. 6 rows rather than 4 (24 of the 32 registers as accumulators): 3-19% more
//      GFLOP/s at M = 256 and 16 (four shapes, in-process rounds); the block's 4 words unrolled, which spared GCC
//      a copy of every accumulator around each vpdpbusd: 4-10% more at M = 1 and 256.
//   4. Software prefetch kPrefetchBytes ahead: the panels lie one after another, and each thread first takes a
//      contiguous run of them (run_tasks_in_parts), so that its reads are one stream. Into L2 (T1) rather than L1
//      (T0): a prefetch to L1 holds one of the core's few L1 miss buffers until its line arrives, which capped the
//      lines in flight; to L2 more are. Qwen2-0.5B 4-bit decode, nine rounds alternating the hints in one process,
//      medians: 71.8 -> 77.8 and 73.3 -> 87.0 tok/s (8 and 16 KB ahead: no better than 4).
// One core, M = 1 (best of several, the row kernel in the same run): 1024 x 896 from L2 18.4 -> 39.7 GB/s of
// weights and parameters, 896 x 4864 14.7 -> 33.3; from DRAM (8 copies in turn) 16.7 -> 21.8 and 9.6 -> 14.6.
// Without VNNI a byte product takes two instructions (vpmaddubsw, vpmaddwd); an AVX2 form of the panels, 8 rows a
// vector, measured slower than the row kernels at the AVX2 level (decode 66.5 against 76.7 tok/s, prefill 156
// against 180), so there 4-bit layers keep the checkpoint's layout.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "quantized.h"

namespace engine {
namespace {

constexpr int kRows = 16;      // weight rows per panel: a vector's int32 lanes
constexpr int kPerWord = 8;    // 4-bit values per word
constexpr int kTileX = 6;      // x rows per tile (step 3)
constexpr int kBlock = kInt16Block;

thread_local Buffer tls_bytes;  // x's lo and hi bytes, calling thread
thread_local Buffer tls_dx;     // x's block scales
thread_local Buffer tls_xsum;   // x's group sums

// x as the kernels read it (step 2): xq = 256 * hi + lo, row-major [M, K], with each block's dx and each group's
// float sum of x.
struct Activations {
  const uint8_t* lo;   // [M, K]
  const int8_t* hi;    // [M, K]
  const float* dx;     // [M, K / 32]
  const float* xsum;   // [M, groups]
};

struct PanelWeight {
  const uint32_t* words;  // [P, K / 8, 16]
  const void* params;     // [P, groups, 2, 16]
  DType pdtype;
  int64_t N, K, G, groups;
};

// Where outputs go, and the epilogue (native/fusion.cc): each output also gets bias[n] and residual[m][n].
struct Output {
  float* out;             // [M, N]
  const float* bias;      // [N] or null
  const float* residual;  // [M, N] or null
  int64_t N;
};

// ---- x: int16 blocks, split into bytes ----------------------------------------------------------------------------

#ifdef TL_X86_SIMD
// One block of x (quantize_block_avx512) into its lo and hi bytes; returns dx.
TL_AVX512_VNNI float quantize_block_bytes(const float* x, uint8_t* lo, int8_t* hi) {
  __m512i q;
  const float dx = quantize_block_avx512(x, q);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo), _mm512_cvtepi16_epi8(q));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi), _mm512_cvtepi16_epi8(_mm512_srai_epi16(q, 8)));
  return dx;
}
#endif

void quantize_x(const float* x, int64_t M, int64_t K, int64_t G, bool vnni, Activations& a) {
  const int64_t blocks = K / kBlock, groups = K / G;
  uint8_t* lo = reinterpret_cast<uint8_t*>(tls_bytes.get((2 * M * K + 3) / 4));
  int8_t* hi = reinterpret_cast<int8_t*>(lo + M * K);
  float* dx = tls_dx.get(M * blocks);
  float* xsum = tls_xsum.get(M * groups);
  const auto row = [&](int64_t m) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t at = m * K + b * kBlock;
#ifdef TL_X86_SIMD
      if (vnni) {
        dx[m * blocks + b] = quantize_block_bytes(x + at, lo + at, hi + at);
        continue;
      }
#endif
      int16_t q[kBlock];
      dx[m * blocks + b] = quantize_block(x + at, [](int j) { return j; }, q);
      for (int j = 0; j < kBlock; ++j) {
        lo[at + j] = static_cast<uint8_t>(q[j] & 0xFF);
        hi[at + j] = static_cast<int8_t>(q[j] >> 8);
      }
    }
    for (int64_t g = 0; g < groups; ++g) {
      float s = 0.0f;
      for (int64_t k = g * G; k < (g + 1) * G; ++k) s += x[m * K + k];
      xsum[m * groups + g] = s;
    }
  };
  // A prefill's rows are worth the pool; a decode step's one or few are not.
  if (M >= 16) run_tasks(M, row);
  else
    for (int64_t m = 0; m < M; ++m) row(m);
  a = {lo, hi, dx, xsum};
}

// ---- Step 0: the definition ----------------------------------------------------------------------------------------

// Value k of lane l of a panel (the layout at the top).
inline int value_at(const uint32_t* panel, int l, int64_t k) {
  const uint32_t word = panel[(k / kPerWord) * kRows + l];
  const int j = static_cast<int>(k % kPerWord);
  return static_cast<int>(word >> (8 * (j % 4) + 4 * (j / 4))) & 0xF;
}

void store(const Output& o, int64_t m, int64_t n, float v) {
  if (o.bias) v += o.bias[n];
  if (o.residual) v += o.residual[m * o.N + n];
  o.out[m * o.N + n] = v;
}

void panel_scalar(const PanelWeight& w, int64_t p, const Activations& a, int64_t M, const Output& o) {
  const uint32_t* panel = w.words + p * (w.K / kPerWord) * kRows;
  const int64_t blocks = w.K / kBlock;
  for (int l = 0; l < kRows && p * kRows + l < w.N; ++l) {
    for (int64_t m = 0; m < M; ++m) {
      float total = 0.0f;
      for (int64_t g = 0; g < w.groups; ++g) {
        float part = 0.0f;  // sum over the group's blocks of dx * dot
        for (int64_t b = g * w.G / kBlock; b < (g + 1) * w.G / kBlock; ++b) {
          int32_t dot_lo = 0, dot_hi = 0;
          for (int64_t k = b * kBlock; k < (b + 1) * kBlock; ++k) {
            const int q = value_at(panel, l, k);
            dot_lo += q * a.lo[m * w.K + k];
            dot_hi += q * a.hi[m * w.K + k];
          }
          part += a.dx[m * blocks + b] * static_cast<float>(256 * dot_hi + dot_lo);
        }
        const int64_t at = (p * w.groups + g) * 2 * kRows + l;  // this row's scale; its bias kRows further
        const float s = load_param(w.params, w.pdtype, at), bias = load_param(w.params, w.pdtype, at + kRows);
        total += s * part + bias * a.xsum[m * w.groups + g];
      }
      store(o, m, p * kRows + l, total);
    }
  }
}

// ---- Steps 1-4: AVX-512 VNNI ---------------------------------------------------------------------------------------

#ifdef TL_X86_SIMD

// 16 scales or biases (params at element `at`) as float32.
TL_AVX512_VNNI inline __m512 load16(const void* params, DType d, int64_t at) {
  if (d == DType::F32) return _mm512_loadu_ps(static_cast<const float*>(params) + at);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(params) + at));
  if (d == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_cvtph_ps(h);
}

// 4 bytes of x from `at`, in every int32 lane.
TL_AVX512_VNNI inline __m512i broadcast4(const void* at) {
  int32_t v;
  std::memcpy(&v, at, 4);
  return _mm512_set1_epi32(v);
}

// Panel p against x rows m0 .. m0 + MT - 1.
template <int MT>
TL_AVX512_VNNI void tile_vnni(const PanelWeight& w, int64_t p, const Activations& a, int64_t m0, bool prefetch, const Output& o) {
  constexpr int NA = MT == 1 ? 2 : 1;  // accumulators of each kind per x row (step 3)
  constexpr int kWordsPerBlock = kBlock / kPerWord;
  const int64_t K = w.K, blocks = K / kBlock;
  const uint32_t* panel = w.words + p * (K / kPerWord) * kRows;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 total[MT];
  for (int t = 0; t < MT; ++t) total[t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    __m512 part[MT];  // sum over the group's blocks so far of dx * dot
    for (int t = 0; t < MT; ++t) part[t] = _mm512_setzero_ps();
    for (int64_t b = g * w.G / kBlock; b < (g + 1) * w.G / kBlock; ++b) {
      __m512i lo[NA][MT], hi[NA][MT];  // sum q * lo and sum q * hi, per row in the lanes
      for (int i = 0; i < NA; ++i)
        for (int t = 0; t < MT; ++t) lo[i][t] = hi[i][t] = _mm512_setzero_si512();
      // Unrolled: GCC then keeps the accumulators in place (rolled, it copied each one to another register and
      // back around the loop).
#pragma GCC unroll 4
      for (int i = 0; i < kWordsPerBlock; ++i) {
        const int64_t c = b * kWordsPerBlock + i;
        const uint32_t* words = panel + c * kRows;
        // Step 4. A prefetch never faults, so the last panel's run past the end is harmless.
        if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(words) + kPrefetchBytes, _MM_HINT_T1);
        const __m512i v = _mm512_loadu_si512(words);
        const __m512i q0 = _mm512_and_si512(v, low4);                         // values k .. k + 3
        const __m512i q1 = _mm512_and_si512(_mm512_srli_epi32(v, 4), low4);   // values k + 4 .. k + 7
        const int64_t k = c * kPerWord;
        for (int t = 0; t < MT; ++t) {
          const int64_t at = (m0 + t) * K + k;
          // Step 2: lo (unsigned) times q (signed), q (unsigned) times hi (signed).
          lo[0][t] = _mm512_dpbusd_epi32(lo[0][t], broadcast4(a.lo + at), q0);
          lo[NA - 1][t] = _mm512_dpbusd_epi32(lo[NA - 1][t], broadcast4(a.lo + at + 4), q1);
          hi[0][t] = _mm512_dpbusd_epi32(hi[0][t], q0, broadcast4(a.hi + at));
          hi[NA - 1][t] = _mm512_dpbusd_epi32(hi[NA - 1][t], q1, broadcast4(a.hi + at + 4));
        }
      }
      for (int t = 0; t < MT; ++t) {
        __m512i l = lo[0][t], h = hi[0][t];
        if constexpr (NA == 2) {
          l = _mm512_add_epi32(l, lo[1][t]);
          h = _mm512_add_epi32(h, hi[1][t]);
        }
        const __m512i dot = _mm512_add_epi32(_mm512_slli_epi32(h, 8), l);
        part[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(a.dx[(m0 + t) * blocks + b]), part[t]);
      }
    }
    const int64_t at = (p * w.groups + g) * 2 * kRows;
    const __m512 s = load16(w.params, w.pdtype, at), bias = load16(w.params, w.pdtype, at + kRows);
    for (int t = 0; t < MT; ++t) {
      total[t] = _mm512_fmadd_ps(part[t], s, total[t]);
      total[t] = _mm512_fmadd_ps(bias, _mm512_set1_ps(a.xsum[(m0 + t) * w.groups + g]), total[t]);
    }
  }
  // The epilogue on the 16 outputs at once, lanes past N masked off.
  const int64_t n0 = p * kRows;
  const __mmask16 lanes = w.N - n0 >= kRows ? 0xFFFF : static_cast<__mmask16>((1u << (w.N - n0)) - 1);
  for (int t = 0; t < MT; ++t) {
    __m512 v = total[t];
    if (o.bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(lanes, o.bias + n0));
    const int64_t i = (m0 + t) * o.N + n0;
    if (o.residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(lanes, o.residual + i));
    _mm512_mask_storeu_ps(o.out + i, lanes, v);
  }
}

TL_AVX512_VNNI void panel_vnni(const PanelWeight& w, int64_t p, const Activations& a, int64_t M, const Output& o) {
  int64_t m0 = 0;
  // The first tile brings the panel in (and prefetches the next); the others find it in cache.
  for (; m0 + kTileX <= M; m0 += kTileX) tile_vnni<kTileX>(w, p, a, m0, m0 == 0, o);
  switch (M - m0) {
    case 5: tile_vnni<5>(w, p, a, m0, m0 == 0, o); break;
    case 4: tile_vnni<4>(w, p, a, m0, m0 == 0, o); break;
    case 3: tile_vnni<3>(w, p, a, m0, m0 == 0, o); break;
    case 2: tile_vnni<2>(w, p, a, m0, m0 == 0, o); break;
    case 1: tile_vnni<1>(w, p, a, m0, m0 == 0, o); break;
    default: break;
  }
}

#endif  // TL_X86_SIMD

bool vnni_available() {
#ifdef TL_X86_SIMD
  return tl::has_avx512() && tl::cpu_features().avx512vnni;
#else
  return false;
#endif
}

void panel_product(const PanelWeight& w, const float* x, int64_t M, const Output& o) {
  const bool vnni = vnni_available();
  Activations a;
  quantize_x(x, M, w.K, w.G, vnni, a);
  const int64_t P = (w.N + kRows - 1) / kRows;
  const auto panel = [&](int64_t p) {
#ifdef TL_X86_SIMD
    if (vnni) return panel_vnni(w, p, a, M, o);
#endif
    panel_scalar(w, p, a, M, o);
  };
  // Few multiply-adds in all: waking the pool costs more than it saves.
  if (M * w.N * w.K < (1 << 16)) {
    for (int64_t p = 0; p < P; ++p) panel(p);
    return;
  }
  run_tasks_in_parts(P, panel);
}

// K in `groups` groups of 32, 64 or 128 values (so in whole blocks of x).
bool group_size_ok(int64_t K, int64_t groups) {
  if (groups <= 0 || K % groups != 0) return false;
  const int64_t G = K / groups;
  return G == 32 || G == 64 || G == 128;
}

// What is wrong with a packed weight (packQuantizedPanels' panels and params) for rows of K values, or nullptr.
const char* check_panels(const tl::TensorRef& panels, const tl::TensorRef& params, int64_t K) {
  if (panels.ndim() != 3 || panels.shape[2] != kRows || panels.dtype != DType::U32 || !panels.contiguous())
    return "panels must be contiguous uint32 [P, K / 8, 16] (packQuantizedPanels)";
  if (panels.shape[1] * kPerWord != K) return "the panels' K does not match x's last dimension";
  if (params.ndim() != 4 || params.shape[0] != panels.shape[0] || params.shape[2] != 2 || params.shape[3] != kRows ||
      !is_float_dtype(params.dtype) || !params.contiguous())
    return "params must be contiguous float [P, K / groupSize, 2, 16] (packQuantizedPanels)";
  if (!group_size_ok(K, params.shape[1])) return "params do not give a group size of 32, 64 or 128 for x's K";
  return nullptr;
}

// MLX word `src` (values 8c .. 8c + 7 in nibbles 0 .. 7) as a panel word (value 8c + j in byte j's low nibble,
// 8c + 4 + j in its high one).
uint32_t panel_word(uint32_t src) {
  uint32_t out = 0;
  for (int j = 0; j < 4; ++j) {
    const uint32_t low = (src >> (4 * j)) & 0xF, high = (src >> (4 * (j + 4))) & 0xF;
    out |= (low | high << 4) << (8 * j);
  }
  return out;
}

}  // namespace

Napi::Value PackQuantizedPanels(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "packQuantizedPanels";
  tl::TensorRef t[5];
  if (!tensor_args(info, op, 0, t)) return env.Undefined();
  const tl::TensorRef &w = t[0], &scales = t[1], &biases = t[2], &panels = t[3], &params = t[4];
  const auto fail = [&](const char* why) {
    Napi::TypeError::New(env, std::string(op) + ": " + why + " (w " + w.describe() + ", scales " + scales.describe() +
                                  ", panels " + panels.describe() + ", params " + params.describe() + ")")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  };
  if (w.ndim() != 2 || w.dtype != DType::U32 || !w.contiguous()) return fail("w must be contiguous uint32 [N, K / 8] (4 bits)");
  const int64_t N = w.shape[0], K = w.shape[1] * kPerWord, P = (N + kRows - 1) / kRows;
  if (scales.ndim() != 2 || !is_float_dtype(scales.dtype) || biases.dtype != scales.dtype || biases.shape != scales.shape ||
      scales.shape[0] != N || !scales.contiguous() || !biases.contiguous())
    return fail("scales and biases must be contiguous float [N, K / groupSize] of one dtype");
  const int64_t groups = scales.shape[1];
  if (!group_size_ok(K, groups)) return fail("the group size (K / scales' columns) must be 32, 64 or 128");
  if (panels.dtype != DType::U32 || !panels.contiguous() || panels.shape != std::vector<int64_t>{P, K / kPerWord, kRows})
    return fail("panels must be contiguous uint32 [ceil(N / 16), K / 8, 16]");
  if (params.dtype != scales.dtype || !params.contiguous() || params.shape != std::vector<int64_t>{P, groups, 2, kRows})
    return fail("params must be contiguous [ceil(N / 16), K / groupSize, 2, 16] of the scales' dtype");
  const uint32_t* src = static_cast<const uint32_t*>(w.data);
  uint32_t* dst = static_cast<uint32_t*>(panels.data);
  const int64_t es = tl::dtype_size(scales.dtype);
  const char* s = static_cast<const char*>(scales.data);
  const char* b = static_cast<const char*>(biases.data);
  char* pp = static_cast<char*>(params.data);
  run_tasks(P, [&](int64_t p) {
    for (int l = 0; l < kRows; ++l) {
      const int64_t n = p * kRows + l;
      for (int64_t c = 0; c < K / kPerWord; ++c)
        dst[(p * (K / kPerWord) + c) * kRows + l] = n < N ? panel_word(src[n * (K / kPerWord) + c]) : 0;
      for (int64_t g = 0; g < groups; ++g) {
        char* at = pp + ((p * groups + g) * 2 * kRows + l) * es;
        if (n < N) {
          std::memcpy(at, s + (n * groups + g) * es, es);
          std::memcpy(at + kRows * es, b + (n * groups + g) * es, es);
        } else {
          std::memset(at, 0, es);
          std::memset(at + kRows * es, 0, es);
        }
      }
    }
  });
  return env.Undefined();
}

Napi::Value QuantizedPanelLinear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "quantizedPanelLinear";
  LinearArgs args;
  if (!args.read(info, op)) return env.Undefined();
  const tl::TensorRef params = tl::tensor_arg(info, 8, op);
  if (env.IsExceptionPending()) return env.Undefined();
  const auto fail = [&](const std::string& why) {
    Napi::TypeError::New(env, std::string(op) + ": " + why + " " + args.describe("panels") + ", params " + params.describe())
        .ThrowAsJavaScriptException();
    return env.Undefined();
  };
  const tl::TensorRef& panels = args.weight;
  const int64_t M = args.M, K = args.K, N = args.N;
  if (const char* err = args.check()) return fail(err);
  if (const char* err = check_panels(panels, params, K)) return fail(err);
  const int64_t P = panels.shape[0], groups = params.shape[1];
  if (N > P * kRows || N <= (P - 1) * kRows) return fail("out's last dimension does not fit the panels");
  if (M == 0) return env.Undefined();
  const PanelWeight w{static_cast<const uint32_t*>(panels.data), params.data, params.dtype, N, K, K / groups, groups};
  const Fusion& f = args.fusion;
  const Output o{args.out.ptr<float>(), f.bias.data ? f.bias.ptr<float>() : nullptr,
                 f.residual.data ? f.residual.ptr<float>() : nullptr, N};
  try {
    panel_product(w, prepare_x(args.x, M, K, f), M, o);
  } catch (const std::bad_alloc&) {
    Napi::Error::New(env, std::string(op) + ": out of memory for scratch buffers").ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

Napi::Value DequantizePanelRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "dequantizePanelRows";
  tl::TensorRef t[4];
  if (!tensor_args(info, op, 0, t)) return env.Undefined();
  const tl::TensorRef &panels = t[0], &params = t[1], &ids = t[2], &out = t[3];
  const auto fail = [&](const std::string& why) {
    Napi::TypeError::New(env, std::string(op) + ": " + why + " (panels " + panels.describe() + ", params " +
                                  params.describe() + ", ids " + ids.describe() + ", out " + out.describe() + ")")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  };
  const int64_t K = panels.ndim() == 3 ? panels.shape[1] * kPerWord : 0;
  if (const char* err = check_panels(panels, params, K)) return fail(err);
  if (const std::string why = check_lookup(ids, out, K, panels.shape[0] * kRows); !why.empty()) return fail(why);
  const int64_t groups = params.shape[1], G = K / groups;
  const int32_t* id = static_cast<const int32_t*>(ids.data);
  const uint32_t* words = static_cast<const uint32_t*>(panels.data);
  float* dst = out.ptr<float>();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    const int64_t p = id[i] / kRows;
    const int l = static_cast<int>(id[i] % kRows);
    const uint32_t* panel = words + p * (K / kPerWord) * kRows;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t at = (p * groups + g) * 2 * kRows + l;
      const float s = load_param(params.data, params.dtype, at), b = load_param(params.data, params.dtype, at + kRows);
      for (int64_t k = g * G; k < (g + 1) * G; ++k) dst[i * K + k] = static_cast<float>(value_at(panel, l, k)) * s + b;
    }
  }
  return env.Undefined();
}

Napi::Value QuantizedPanelsSupported(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), vnni_available()); }

}  // namespace engine
