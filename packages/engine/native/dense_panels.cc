// The layout the engine keeps a dense weight in on the CPU, and its product with the work of native/fusion.cc:
//
//   packPanels(w, panels)
//     w       [N, K] float32 / bfloat16 / float16, any strides: a linear layer's weight as its checkpoint holds it
//     panels  [ceil(N / 32), K, 32] of w's dtype, contiguous: panel p holds the weights of outputs 32p .. 32p + 31,
//             k-major (the 32 weights of one k side by side), zero past N
//   panelLinear(x, panels, out[, bias, residual, prologue, normWeight, eps])
//     x       [..., K] float32 / bfloat16 / float16, contiguous ([..., 2K] with the swiglu prologue)
//     out     [..., N] float32, contiguous, as many rows as x: N (at most 32 per panel) is read from out
//   out = prologue(x) @ W^T + bias + residual
//   panelRows(panels, ids, out)
//     rows ids of W, widened to float32 into out [..., K]: the lookup of a tied embedding table, kept only as the
//     output head's panels
//
// Why panels. In a checkpoint each output's K weights lie side by side, so a product takes dot products of x's rows
// with W's rows: every dot product ends in a horizontal sum, and x's rows are read again for every few rows of W
// (tensor-core's rows path). In a panel the weights of 32 outputs for one k lie side by side: one value of x,
// broadcast, multiplies two vectors of them (AVX-512), and a tile of 12 rows of x keeps its 12 x 32 sums in 24
// registers over a whole block of k. That is the GEMM's micro-kernel, with its B packed once, here, rather than at
// every call; and a decode step's single row streams the panels front to back, reading x one value per 32 weights.
// Against tensor-core's matmul on the checkpoint's layout, bf16, 2 threads (Zen 5; in-process rounds alternating
// the two; docs/engine.md has the rest): 16 rows 246-354 against 173-268 GFLOP/s over the demo model's and
// Qwen2-0.5B's shapes, 256 rows 386-411 against 145-305, one row 59-129 against 52-111 GB/s. In the engine: the
// demo model's prefill 5250 -> 6481 tok/s and batch-16 decode 2391 -> 2855; Qwen2-0.5B's shapes in bf16, prefill
// 308 -> 389 and batch-16 decode 150 -> 211, single-row decode the same within the rounds' spread.
//
// The plain loops (tiles_scalar, row_scalar) are the definition; the SIMD forms, written once for AVX2 and AVX-512,
// keep the same sums (float32, k in order), so they differ from them by the fused multiply-adds' rounding only.
#include <string>
#include <type_traits>

#include "common.h"

namespace engine {
namespace {

using tl::DType;

constexpr int64_t kPanel = 32;    // outputs per panel
constexpr int64_t kBlockK = 256;  // k per pass of a tile: a block of the panel (16 KB in bf16) stays in L1
constexpr int64_t kBlockM = 96;   // rows of x per task: their block of k (96 KB) stays in L2 across the panel's tiles
constexpr int64_t kParallelMinFma = 1 << 17;  // below this, waking the pool costs more than it saves

// The storage of a weight of dtype D, and one value of it as float32.
template <DType D> using Stor = std::conditional_t<D == DType::F32, float, uint16_t>;
template <DType D> inline float widen(Stor<D> v) {
  if constexpr (D == DType::F32) return v;
  else if constexpr (D == DType::BF16) return tl::bf16_to_f32(v);
  else return tl::f16_to_f32(v);
}

// Calls f(std::integral_constant<DType, D>) for a float dtype, so that one template serves the three.
template <class F> void with_dtype(DType d, F&& f) {
  if (d == DType::F32) f(std::integral_constant<DType, DType::F32>{});
  else if (d == DType::BF16) f(std::integral_constant<DType, DType::BF16>{});
  else f(std::integral_constant<DType, DType::F16>{});
}

// ---- The plain loops --------------------------------------------------------------------------------------------

// c[m][j] = (accumulate ? c[m][j] : 0) + sum over k in [k0, k1) of a[m][k] * panel[k][j], for `rows` rows of x
// (row stride lda) and the panel's 32 outputs; c is [rows, 32].
template <DType D>
void tiles_scalar(const float* a, int64_t lda, int64_t rows, const void* panel_v, int64_t k0, int64_t k1, float* c,
                  bool accumulate) {
  const Stor<D>* panel = static_cast<const Stor<D>*>(panel_v);
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t j = 0; j < kPanel; ++j) {
      float s = accumulate ? c[m * kPanel + j] : 0.0f;
      for (int64_t k = k0; k < k1; ++k) s += a[m * lda + k] * widen<D>(panel[k * kPanel + j]);
      c[m * kPanel + j] = s;
    }
}

// One row of x against a whole panel (K values of k): c[j] = sum_k a[k] * panel[k][j].
template <DType D> void row_scalar(const float* a, const void* panel, int64_t K, float* c) {
  tiles_scalar<D>(a, K, 1, panel, 0, K, c, false);
}

#ifdef TL_X86_SIMD
using tl::simd::Vec16;
using tl::simd::Vec8;

template <class V, DType D> inline typename V::T load_w(const Stor<D>* p) {
  if constexpr (D == DType::F32) return V::load(p);
  else if constexpr (D == DType::BF16) return V::load_bf16(p);
  else return V::load_f16(p);
}

// Step 1, the register tile: MB rows of x by NV vectors of the panel's outputs (from output c0 on), their sums
// in registers for the whole block of k; each step of k loads NV vectors of weights and broadcasts MB values of x
// against them. With AVX-512, 12 rows by the panel's 2 vectors: 24 sums, 2 weights and a broadcast in 32
// registers; with AVX2, 6 rows by 2 of the panel's 4 vectors, the two halves of the panel in turn.
//
// The first tile over a block of the panel reads it from memory (a batch's step reads every weight once, and
// cold): it prefetches 4 KB ahead in the panel (on into the next panel, which the same thread takes next when
// the tasks are panels in order), and the tiles after it find the block in cache. The demo model's batch-16 step
// without it read its panels at 85-117 GFLOP/s, with it 131-216 (2101 -> 2502 tok/s).
template <class V, DType D, int MB, int NV, bool kPrefetch>
void tile_simd(const float* a, int64_t lda, const Stor<D>* panel, int64_t k0, int64_t k1, int64_t c0, float* c,
               bool accumulate) {
  constexpr int L = V::kLanes;
  constexpr int64_t kRowBytes = kPanel * int64_t{sizeof(Stor<D>)};
  const char* ahead = reinterpret_cast<const char*>(panel) + 4096;
  typename V::T acc[MB][NV];
#pragma GCC unroll 12
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[m][v] = accumulate ? V::load(c + m * kPanel + c0 + v * L) : V::zero();
  for (int64_t k = k0; k < k1; ++k) {
    if constexpr (kPrefetch)
      for (int64_t off = 0; off < kRowBytes; off += 64) _mm_prefetch(ahead + k * kRowBytes + off, _MM_HINT_T0);
    typename V::T w[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) w[v] = load_w<V, D>(panel + k * kPanel + c0 + v * L);
#pragma GCC unroll 12
    for (int m = 0; m < MB; ++m) {
      const typename V::T x = V::set1(a[m * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] = V::fmadd(x, w[v], acc[m][v]);
    }
  }
#pragma GCC unroll 12
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) V::store(c + m * kPanel + c0 + v * L, acc[m][v]);
}

// tiles_scalar at one width: the rows in tiles of kTileRows, then of 4, then one by one; each tile over every
// column group of the panel.
template <class V> constexpr int kTileRows = V::kRegisters == 32 ? 12 : 6;
template <class V, DType D, int MB, bool kPrefetch = false>
void tile_columns(const float* a, int64_t lda, const Stor<D>* panel, int64_t k0, int64_t k1, float* c, bool accumulate) {
  constexpr int NV = 2, group = NV * V::kLanes;
  tile_simd<V, D, MB, NV, kPrefetch>(a, lda, panel, k0, k1, 0, c, accumulate);
  for (int64_t c0 = group; c0 < kPanel; c0 += group) tile_simd<V, D, MB, NV, false>(a, lda, panel, k0, k1, c0, c, accumulate);
}
template <class V, DType D>
void tiles_simd(const float* a, int64_t lda, int64_t rows, const void* panel_v, int64_t k0, int64_t k1, float* c,
                bool accumulate) {
  const Stor<D>* panel = static_cast<const Stor<D>*>(panel_v);
  constexpr int MB = kTileRows<V>;
  // The first tile prefetches (see tile_simd).
  int64_t m = 0;
  if (rows >= MB) tile_columns<V, D, MB, true>(a, lda, panel, k0, k1, c, accumulate), m = MB;
  else if (rows >= 4) tile_columns<V, D, 4, true>(a, lda, panel, k0, k1, c, accumulate), m = 4;
  for (; m + MB <= rows; m += MB) tile_columns<V, D, MB>(a + m * lda, lda, panel, k0, k1, c + m * kPanel, accumulate);
  for (; m + 4 <= rows; m += 4) tile_columns<V, D, 4>(a + m * lda, lda, panel, k0, k1, c + m * kPanel, accumulate);
  for (; m < rows; ++m) tile_columns<V, D, 1>(a + m * lda, lda, panel, k0, k1, c + m * kPanel, accumulate);
}

// Step 2, one row of x (decode): the panel's weights come from memory, once, so the loop is about keeping loads in
// flight. The one-row tile waits on its own sums every step of k (a multiply-add's latency for 32 weights); here
// U steps of k go to U independent sets of sums, added at the end, and the stream is prefetched 4 KB ahead (the
// panels of a thread's part lie back to back, so the prefetch runs on into the next panel).
template <class V, DType D> void row_simd(const float* a, const void* panel_v, int64_t K, float* c) {
  const Stor<D>* panel = static_cast<const Stor<D>*>(panel_v);
  constexpr int L = V::kLanes, NV = kPanel / L, U = V::kRegisters == 32 ? 4 : 2;
  constexpr int64_t kStepBytes = U * kPanel * int64_t{sizeof(Stor<D>)};
  typename V::T acc[U][NV];
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[u][v] = V::zero();
  const char* ahead = reinterpret_cast<const char*>(panel) + 4096;  // a prefetch never faults
  int64_t k = 0;
  for (; k + U <= K; k += U) {
    for (int64_t off = 0; off < kStepBytes; off += 64) _mm_prefetch(ahead + k * kPanel * int64_t{sizeof(Stor<D>)} + off, _MM_HINT_T0);
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const typename V::T x = V::set1(a[k + u]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[u][v] = V::fmadd(x, load_w<V, D>(panel + (k + u) * kPanel + v * L), acc[u][v]);
    }
  }
  for (; k < K; ++k) {
    const typename V::T x = V::set1(a[k]);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[0][v] = V::fmadd(x, load_w<V, D>(panel + k * kPanel + v * L), acc[0][v]);
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    typename V::T s = acc[0][v];
#pragma GCC unroll 4
    for (int u = 1; u < U; ++u) s = V::add(s, acc[u][v]);
    V::store(c + v * L, s);
  }
}

template <DType D>
TL_AVX2 TL_FLATTEN void tiles_avx2(const float* a, int64_t lda, int64_t rows, const void* p, int64_t k0, int64_t k1, float* c,
                                   bool acc) {
  tiles_simd<Vec8, D>(a, lda, rows, p, k0, k1, c, acc);
}
template <DType D>
TL_AVX512 TL_FLATTEN void tiles_avx512(const float* a, int64_t lda, int64_t rows, const void* p, int64_t k0, int64_t k1,
                                       float* c, bool acc) {
  tiles_simd<Vec16, D>(a, lda, rows, p, k0, k1, c, acc);
}
template <DType D> TL_AVX2 TL_FLATTEN void row_avx2(const float* a, const void* p, int64_t K, float* c) {
  row_simd<Vec8, D>(a, p, K, c);
}
template <DType D> TL_AVX512 TL_FLATTEN void row_avx512(const float* a, const void* p, int64_t K, float* c) {
  row_simd<Vec16, D>(a, p, K, c);
}
#endif

struct PanelKernels {
  void (*tiles)(const float* a, int64_t lda, int64_t rows, const void* panel, int64_t k0, int64_t k1, float* c, bool accumulate);
  void (*row)(const float* a, const void* panel, int64_t K, float* c);
};

PanelKernels panel_kernels(DType d) {
  PanelKernels k{};
  with_dtype(d, [&](auto dt) {
    constexpr DType D = decltype(dt)::value;
    k = {&tiles_scalar<D>, &row_scalar<D>};
#ifdef TL_X86_SIMD
    if (tl::has_avx512()) k = {&tiles_avx512<D>, &row_avx512<D>};
    else if (has_avx2_fma() && (D != DType::F16 || has_f16c())) k = {&tiles_avx2<D>, &row_avx2<D>};
#endif
  });
  return k;
}

// Up to this many rows of x, each panel is read once per row, front to back (row form): the product streams the
// weights; more rows take the tiles.
constexpr int64_t kRowFormMaxM = 3;

// out[m][32p + j] for rows m0 .. m0 + rows - 1 and the panel's valid outputs: their sums c [rows, 32] plus the
// bias and the residual.
void store_out(const float* c, int64_t m0, int64_t rows, int64_t N, int64_t p, const Fusion& f, float* out) {
  const int64_t n0 = p * kPanel, cols = std::min(kPanel, N - n0);
  const float* bias = f.bias.data ? f.bias.ptr<float>() + n0 : nullptr;
  const float* res = f.residual.data ? f.residual.ptr<float>() + m0 * N + n0 : nullptr;
  for (int64_t m = 0; m < rows; ++m) {
    float* o = out + (m0 + m) * N + n0;
    for (int64_t j = 0; j < cols; ++j) {
      float v = c[m * kPanel + j];
      if (bias) v += bias[j];
      if (res) v += res[m * N + j];
      o[j] = v;
    }
  }
}

// out [M, N] from x (prepared, float32 [M, K]) and the panels.
void panel_product(const float* x, int64_t M, int64_t K, int64_t N, const void* panels, DType d, const Fusion& f, float* out) {
  const PanelKernels kern = panel_kernels(d);
  const int64_t P = (N + kPanel - 1) / kPanel, panel_bytes = K * kPanel * tl::dtype_size(d);
  const auto panel_at = [&](int64_t p) { return static_cast<const char*>(panels) + p * panel_bytes; };
  const bool parallel = M * N * K >= kParallelMinFma;
  if (M <= kRowFormMaxM) {
    // Each thread a contiguous run of panels first: one stream the prefetchers follow (run_tasks_in_parts).
    const auto rows_of = [&](int64_t p) {
      alignas(64) float c[kRowFormMaxM * kPanel];
      for (int64_t m = 0; m < M; ++m) kern.row(x + m * K, panel_at(p), K, c + m * kPanel);
      store_out(c, 0, M, N, p, f, out);
    };
    if (parallel) return run_tasks_in_parts(P, rows_of);
    for (int64_t p = 0; p < P; ++p) rows_of(p);
    return;
  }
  // Tasks of (panel, block of kBlockM rows), the blocks of one panel one after the other so that the panel stays
  // in cache across them; each in blocks of kBlockK values of k, the sums in a tile of the task's own. With one
  // block of rows (a batch's decode step), each thread takes a contiguous part of the panels first, as the row form.
  const int64_t m_blocks = (M + kBlockM - 1) / kBlockM;
  const auto task = [&](int64_t t) {
    const int64_t p = t / m_blocks, m0 = t % m_blocks * kBlockM, rows = std::min(kBlockM, M - m0);
    alignas(64) float c[kBlockM * kPanel];
    int64_t k0 = 0;
    do {  // at least once: with K = 0 the first pass writes the zero sums
      kern.tiles(x + m0 * K, K, rows, panel_at(p), k0, std::min(K, k0 + kBlockK), c, k0 > 0);
      k0 += kBlockK;
    } while (k0 < K);
    store_out(c, m0, rows, N, p, f, out);
  };
  if (!parallel) {
    for (int64_t t = 0; t < P * m_blocks; ++t) task(t);
  } else if (m_blocks == 1) {
    run_tasks_in_parts(P, task);
  } else {
    run_tasks(P * m_blocks, task);
  }
}

}  // namespace

Napi::Value PackPanels(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "packPanels";
  tl::TensorRef t[2];
  if (!tensor_args(info, op, 0, t)) return env.Undefined();
  const tl::TensorRef &w = t[0], &panels = t[1];
  const auto fail = [&](const char* why) {
    Napi::TypeError::New(env, std::string(op) + ": " + why + " (w " + w.describe() + ", panels " + panels.describe() + ")")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  };
  if (w.ndim() != 2 || !is_float_dtype(w.dtype)) return fail("w must be a 2-D float32, bfloat16 or float16 weight [N, K]");
  const int64_t N = w.shape[0], K = w.shape[1], P = (N + kPanel - 1) / kPanel;
  if (panels.dtype != w.dtype || !panels.contiguous() || panels.shape != std::vector<int64_t>{P, K, kPanel})
    return fail("panels must be contiguous [ceil(N / 32), K, 32] of w's dtype");
  with_dtype(w.dtype, [&](auto dt) {
    constexpr DType D = decltype(dt)::value;
    const Stor<D>* src = static_cast<const Stor<D>*>(w.data);
    Stor<D>* dst = static_cast<Stor<D>*>(panels.data);
    // A panel is 32 rows of w, transposed: read in blocks of 64 values of each row, so that the 32 rows' blocks
    // come from cache while the panel is written in order.
    run_tasks(P, [&](int64_t p) {
      Stor<D>* out = dst + p * K * kPanel;
      for (int64_t k0 = 0; k0 < K; k0 += 64)
        for (int64_t j = 0; j < kPanel; ++j) {
          const int64_t n = p * kPanel + j;
          for (int64_t k = k0; k < std::min(K, k0 + 64); ++k)
            out[k * kPanel + j] = n < N ? src[n * w.strides[0] + k * w.strides[1]] : Stor<D>{0};
        }
    });
  });
  return env.Undefined();
}

Napi::Value PanelRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "panelRows";
  tl::TensorRef t[3];
  if (!tensor_args(info, op, 0, t)) return env.Undefined();
  const tl::TensorRef &panels = t[0], &ids = t[1], &out = t[2];
  const auto fail = [&](const std::string& why) {
    Napi::TypeError::New(env, std::string(op) + ": " + why + " (panels " + panels.describe() + ", ids " + ids.describe() +
                                  ", out " + out.describe() + ")")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  };
  if (panels.ndim() != 3 || panels.shape[2] != kPanel || !panels.contiguous() || !is_float_dtype(panels.dtype))
    return fail("panels must be contiguous [P, K, 32] of a float dtype (packPanels)");
  const int64_t K = panels.shape[1];
  if (const std::string why = check_lookup(ids, out, K, panels.shape[0] * kPanel); !why.empty()) return fail(why);
  const int32_t* id = static_cast<const int32_t*>(ids.data);
  float* dst = out.ptr<float>();
  with_dtype(panels.dtype, [&](auto dt) {
    constexpr DType D = decltype(dt)::value;
    const Stor<D>* src = static_cast<const Stor<D>*>(panels.data);
    for (int64_t i = 0; i < ids.numel(); ++i) {
      // Row n is lane n % 32 of panel n / 32: one value every 32.
      const Stor<D>* lane = src + (id[i] / kPanel) * K * kPanel + id[i] % kPanel;
      for (int64_t k = 0; k < K; ++k) dst[i * K + k] = widen<D>(lane[k * kPanel]);
    }
  });
  return env.Undefined();
}

Napi::Value PanelLinear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "panelLinear";
  LinearArgs args;
  if (!args.read(info, op)) return env.Undefined();
  const auto fail = [&](const std::string& why) {
    Napi::TypeError::New(env, std::string(op) + ": " + why + " " + args.describe("panels")).ThrowAsJavaScriptException();
    return env.Undefined();
  };
  const tl::TensorRef &x = args.x, &panels = args.weight, &out = args.out;
  const Fusion& fusion = args.fusion;
  const int64_t M = args.M, K = args.K, N = args.N;
  if (panels.ndim() != 3 || panels.shape[2] != kPanel || !panels.contiguous() || !is_float_dtype(panels.dtype))
    return fail("panels must be contiguous [P, K, 32] of a float dtype (packPanels)");
  if (const char* err = args.check()) return fail(err);
  if (panels.shape[1] != K) return fail("the panels' K does not match x's last dimension");
  if (N > panels.shape[0] * kPanel || N <= (panels.shape[0] - 1) * kPanel) return fail("out's last dimension does not fit the panels");
  if (M == 0) return env.Undefined();
  try {
    const float* xf = prepare_x(x, M, K, fusion);
    panel_product(xf, M, K, N, panels.data, panels.dtype, fusion, out.ptr<float>());
  } catch (const std::bad_alloc&) {
    Napi::Error::New(env, std::string(op) + ": out of memory for scratch buffers").ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

}  // namespace engine
