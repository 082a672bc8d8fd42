// Chapter 2.1's decode step of attention as one kernel: RoPE on the new tokens' query and key heads, their keys
// and values appended to the KV cache, and attention of each new token over every cached position up to its own.
// A step has one new token per row; a speculative verification (chapter 3.4) has a few (L), and token l of a row
// sees the cache and new tokens 0 .. l, the causal mask of a prefill. Two caches:
//
//   attentionDecode(qkv, cos, sin, position, keys, values, out, numHeads, numKvHeads, scale
//                   [, qNorm, kNorm, eps])
//     keys    [B, Hkv, S, D] float32, contiguous: the cache's whole key buffer (capacity S >= position + L); rows
//             position .. position + L - 1 of each head are written, and new token l attends over rows
//             0 .. position + l (every row's new tokens start at `position`)
//     values  the same for values
//
//   pagedAttentionDecode(qkv, cos, sin, positions, keyPages, valuePages, blockTables, out, numHeads, numKvHeads,
//                        scale [, qNorm, kNorm, eps])
//     positions    int32 [B]: row b's new tokens are its tokens positions[b] .. positions[b] + L - 1 (one request
//                  per row, chapter 2.6)
//     keyPages     [N, Hkv, P, D] float32, contiguous: one layer of the page pool (chapter 3.1); token t of row b
//                  is in page blockTables[b][t / P], at slot t % P
//     valuePages   the same for values
//     blockTables  int32 [B, M]: each row's pages in order
//
//   and for both:
//     qkv     [B, L, (Hq + 2 Hkv) * D] float32, contiguous: the fused q/k/v projection of the new tokens (biases
//             added): Hq query heads, then Hkv key heads, then Hkv value heads, D values each
//     cos/sin [P, D/2] float32, contiguous: the RoPE tables (tc.fast.ropeTables), every position < P
//     out     [B, L, Hq * D] float32, contiguous: the attention output, heads side by side (what o_proj reads)
//     qNorm, kNorm: Qwen3's per-head RMSNorm weights [D] (applied before RoPE), or null; eps their epsilon
//
// The composed form it replaces, per layer and token: slices and reshapes of qkv, fast.rope, two strided copies
// into the cache, then fast.sdpa's matmul, scale, softmax and matmul over views: eight ops and a dozen views,
// each a trip through JavaScript, an allocation and a wake-up of the pool, for a few hundred KFLOPs. Here every
// new key and value is written first (a few rows: on the calling thread), so that the new tokens of a row see
// each other; then the work is one task per (batch row, new token, kv head): its G = Hq / Hkv query heads are
// rotated and attend over the cache together, each cached row read once for all of them (with fewer tasks than
// threads, each task's rows in parts, merged after: see kSplitRows; with many tokens, a token's kv heads in one
// thread: see kTokensPerThread). The cached rows are read as runs of
// consecutive rows: a contiguous cache's cut every kRunRows, a paged one's one per page.
// The plain loops (attend's scalar form) are the definition; the SIMD form, written once for AVX2 and AVX-512
// (attend_simd), changes three things, each commented where it is: scores reduce a block of keys' sums together
// instead of one horizontal sum per key, the weighted sum reads each value row once for a block of query heads
// instead of once per head, and the softmax leaves its division to the weighted sum's outputs (exp_rows_simd). At Qwen2-0.5B's attention shape and 1024 cached positions (bench/
// paged-attention.ts, Zen 5, best of 9), one row: contiguous 50-56 -> 24-30 us, paged 59-65 -> 35 us; 16 rows:
// contiguous about 1000 -> 640-730 us, paged 890-1040 -> 680-710 us. Then with tensors that start on a cache line
// (tensor-core's allocator) and the runs below: one row, contiguous 24-27 us, paged 26-28 us; 16 rows, 410-450
// and 430-465 us.
// RoPE is the default (Qwen2) form, rotating (i, i + D/2); the rotation and the softmax follow tensor-core's
// fast.rope and softmax.
#include <string>
#include <vector>

#include "common.h"

namespace engine {
namespace {

using tl::DType;

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxGroup = 64;
// A contiguous cache is read in runs of kRunRows rows (a paged one in its pages), and the keys and values of the
// run kPrefetchRuns ahead are prefetched while one is read: a decode step reads each layer's cache once, from
// memory, and the hardware prefetchers restart at every scattered page (and at every 4 KB page of a contiguous
// cache). A contiguous cache cut into runs of 16 with this prefetch, against one run without it, at Qwen2-0.5B's
// attention shape and 1024 cached positions, 24 layers' caches in turn (bench/paged-attention.ts): one row 50-60
// -> 30-33 us; the demo model's decode after a 1024-token prompt 538-584 -> 629-968 tokens/s (bench/decode.ts).
// Then both keys and values fetched from memory during the key pass, into L2 (prefetcht1: L2 holds more misses in
// flight than L1), where the values had been fetched only during the weighted sum, leaving memory idle while the
// keys were scored; the weighted sum still brings its lines on from L2 into L1. Medians of 11 rounds alternating
// the builds in one process, 2 threads, every layer's cache read cold (a read probe of 28-32 GB/s): 16 rows of the
// demo model's shape (6 query heads on 2 kv heads) at 304 positions, 8 layers, 326 -> 203 us (15 -> 25 GB/s); one
// row at 1024 positions, contiguous, 40 layers, 67 -> 47 us; Qwen2-0.5B's shape (14 on 2) at 304 positions, 16
// rows, 24 layers, 528 -> 369 us; one row of the demo's shape at 304 positions, its caches in L2 and L3, 8.2 us
// both. Not better: fetching 1, 3, 4 or 8 runs ahead, the next task's first runs, or a hint not to keep the lines
// in L3 (prefetchnta).
constexpr int64_t kRunRows = 16;
constexpr int64_t kPrefetchRuns = 2;

thread_local Buffer tls_scores;  // one task's scores [G, T], each pool thread its own
thread_local Buffer tls_q;       // one task's rotated query heads [G, D]
thread_local Buffer tls_parts;   // the calling thread's: each part's outputs [G, D], then each part's stats [G, 2]

struct Shape {
  int64_t Hq, Hkv, D;
  float scale;
  const float* cos;
  const float* sin;
  const float* q_norm;  // [D] as float32, or null
  const float* k_norm;
  double eps;
};

// A run of consecutive cached rows of one kv head: n keys and n values of D floats each.
struct Run {
  float* k;
  float* v;
  int64_t n;
};

thread_local std::vector<Run> tls_runs;  // one task's runs

// dst = rope(rmsNorm?(src)) at `position` (dst may not alias src).
void rotate(const Shape& s, int64_t position, const float* src, const float* norm, float* dst) {
  const int64_t D = s.D, half = D / 2;
  float tmp[kMaxHeadDim];
  if (norm) {
    double ss = 0;
    for (int64_t i = 0; i < D; ++i) ss += static_cast<double>(src[i]) * src[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / D + s.eps));
    for (int64_t i = 0; i < D; ++i) tmp[i] = src[i] * scale * norm[i];
    src = tmp;
  }
  const float* c = s.cos + position * half;
  const float* sn = s.sin + position * half;
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = src[i], x2 = src[i + half];
    dst[i] = x1 * c[i] - x2 * sn[i];
    dst[i + half] = x2 * c[i] + x1 * sn[i];
  }
}

// Softmax of each of the G rows of scores [G, T] in place; with `stats`, each row's max and sum of exps
// (stats[2g], stats[2g + 1]) for merging with other parts of the row (see merge_parts).
void softmax_rows(float* scores, int64_t G, int64_t T, float* stats) {
  for (int64_t g = 0; g < G; ++g) {
    float* r = scores + g * T;
    float mx = r[0];
    for (int64_t t = 1; t < T; ++t) mx = std::max(mx, r[t]);
    double sum = 0;
    for (int64_t t = 0; t < T; ++t) {
      r[t] = std::exp(r[t] - mx);
      sum += r[t];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t t = 0; t < T; ++t) r[t] *= inv;
    if (stats) stats[2 * g] = mx, stats[2 * g + 1] = static_cast<float>(sum);
  }
}

#ifdef TL_X86_SIMD
using tl::simd::Vec16;
using tl::simd::Vec8;

// The largest of r[0..T), T >= 1: four running maxima of a vector each, independent of one another. A single
// running std::max waits on the one before it, a few cycles a score: at 1024 cached positions that loop was 13%
// of the decode attention kernel's time (perf, one thread). Qwen2-0.5B's shape, one row, 1024 positions
// (bench/paged-attention.ts, three rounds alternating the builds): contiguous 25.3-26.3 -> 21.6-22.0 us, paged
// 26.6-27.8 -> 22.9-23.5 us.
template <class V> float row_max_simd(const float* r, int64_t T) {
  constexpr int L = V::kLanes;
  typename V::T m[4];
  for (auto& v : m) v = V::set1(r[0]);
  int64_t t = 0;
  for (; t + 4 * L <= T; t += 4 * L)
    for (int i = 0; i < 4; ++i) m[i] = V::max(m[i], V::load(r + t + L * i));
  for (; t + L <= T; t += L) m[0] = V::max(m[0], V::load(r + t));
  float mx = V::hmax(V::max(V::max(m[0], m[1]), V::max(m[2], m[3])));
  for (; t < T; ++t) mx = std::max(mx, r[t]);
  return mx;
}

// The softmax of each of the G rows of scores [G, T], less its division: exp(score - the row's max) in place, and
// 1 / the row's sum into inv[g] (and with `stats`, the max and the sum, as softmax_rows). The weighted sum divides
// its G x D outputs instead (weighted_sum_block), which saves a pass over the G x T probabilities; and the exps run
// at the vector's width (16 lanes with AVX-512; they were 8 wide at both levels). Qwen2-0.5B's shape, one row (bench/paged-attention.ts, two rounds alternating the
// builds): 1024 positions, 24 layers' caches in turn, contiguous 38.0-39.2 -> 33.8-33.9 us, paged 45.0-46.5 ->
// 38.4-39.9 us; 4096 positions, contiguous 114-119 -> 97-99 us.
template <class V> void exp_rows_simd(float* scores, int64_t G, int64_t T, float* inv, float* stats) {
  constexpr int L = V::kLanes;
  for (int64_t g = 0; g < G; ++g) {
    float* r = scores + g * T;
    const float mx = row_max_simd<V>(r, T);
    const typename V::T m = V::set1(mx);
    typename V::T acc = V::zero();
    int64_t t = 0;
    for (; t + L <= T; t += L) {
      const typename V::T e = exp_simd<V>(V::sub(V::load(r + t), m));
      V::store(r + t, e);
      acc = V::add(acc, e);
    }
    double sum = V::hsum(acc);
    for (; t < T; ++t) {
      r[t] = std::exp(r[t] - mx);
      sum += r[t];
    }
    inv[g] = static_cast<float>(1.0 / sum);
    if (stats) stats[2 * g] = mx, stats[2 * g + 1] = static_cast<float>(sum);
  }
}

// The dot products of the scores, each a sum of D products, end in a horizontal sum: adding the lanes of the
// accumulator costs as many instructions as the FMAs before it when D is 64 (4 FMAs at 16 lanes, then 8 shuffles
// and adds). So keys go in blocks of kLanes: one query row's accumulators of the block's keys are reduced
// together (V::hsum_each, a tree of shuffles and adds that leaves key j's sum in lane j), about 3 instructions a key.
//
// scores[g * stride + t] = scale * q[g] . K[t] for the G query rows and the n rows of K (D a multiple of the
// lanes, at most kMaxHeadDim). A block of kLanes keys (4 KB at 16 lanes and D = 64) stays in L1 for the G rows;
// each row's query vectors stay in registers for the block.
template <class V>
void scores_simd(const float* q, int64_t G, const float* K, int64_t n, int64_t D, float scale, float* scores, int64_t stride) {
  constexpr int L = V::kLanes;
  const typename V::T scale_v = V::set1(scale);
  int64_t t0 = 0;
  for (; t0 + L <= n; t0 += L) {
    const float* block = K + t0 * D;
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = q + g * D;
      typename V::T acc[L];
#pragma GCC unroll 16
      for (int j = 0; j < L; ++j) acc[j] = V::mul(V::load(qg), V::load(block + j * D));
      for (int64_t i = L; i < D; i += L) {
        const typename V::T qv = V::load(qg + i);
#pragma GCC unroll 16
        for (int j = 0; j < L; ++j) acc[j] = V::fmadd(qv, V::load(block + j * D + i), acc[j]);
      }
      V::store(scores + g * stride + t0, V::mul(V::hsum_each(acc), scale_v));
    }
  }
  for (int64_t t = t0; t < n; ++t)
    for (int64_t g = 0; g < G; ++g) {
      typename V::T acc = V::zero();
      for (int64_t i = 0; i < D; i += L) acc = V::fmadd(V::load(q + g * D + i), V::load(K + t * D + i), acc);
      scores[g * stride + t] = V::hsum(acc) * scale;
    }
}

// out[g] = inv[g] * sum_t p[g][t] V[t] for up to GB of the rows (g0 .. g0 + count - 1), over NV vectors of columns from d0:
// each value row is read once for all of them (GB x NV accumulators), rather than once per row, so a paged cache's
// scattered pages are walked D / (NV x lanes) times per task, not G x D / (4 x lanes) times.
template <class V, int GB, int NV>
void weighted_sum_block(const float* p, const float* inv, int64_t g0, int64_t count, const Run* runs, int64_t num_runs,
                        int64_t T, int64_t D, int64_t d0, float* out, int64_t out_stride) {
  constexpr int L = V::kLanes;
  typename V::T acc[GB][NV];
#pragma GCC unroll 8
  for (int g = 0; g < GB; ++g)
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) acc[g][j] = V::zero();
  for (int64_t r = 0, t0 = 0; r < num_runs; t0 += runs[r].n, ++r) {
    // attend_simd fetched the values into L2 while it scored the keys; a later run's lines of this block's columns
    // are brought on into L1 while this one is summed.
    if (const int64_t ahead = r + kPrefetchRuns; ahead < num_runs)
      for (int64_t t = 0; t < runs[ahead].n; ++t)
        for (int64_t i = 0; i < NV * L; i += 16) __builtin_prefetch(runs[ahead].v + t * D + d0 + i);
    for (int64_t t = 0; t < runs[r].n; ++t) {
      typename V::T v[NV];
#pragma GCC unroll 2
      for (int j = 0; j < NV; ++j) v[j] = V::load(runs[r].v + t * D + d0 + j * L);
      const float* pt = p + g0 * T + t0 + t;
#pragma GCC unroll 8
      for (int g = 0; g < GB; ++g) {
        if (g >= count) break;
        const typename V::T w = V::set1(pt[g * T]);
#pragma GCC unroll 2
        for (int j = 0; j < NV; ++j) acc[g][j] = V::fmadd(w, v[j], acc[g][j]);
      }
    }
  }
  for (int g = 0; g < count; ++g) {
    const typename V::T scale = V::set1(inv[g0 + g]);
    for (int j = 0; j < NV; ++j) V::store(out + (g0 + g) * out_stride + d0 + j * L, V::mul(acc[g][j], scale));
  }
}

// out[g] = inv[g] * sum_t p[g][t] V[t] for the G rows, t over the runs in order (T rows in all): blocks of rows and
// columns sized to the registers (with AVX-512, 8 rows x 2 vectors: 16 accumulators; with AVX2, 6 x 2).
template <class V>
void weighted_sum_simd(const float* p, const float* inv, int64_t G, const Run* runs, int64_t num_runs, int64_t T,
                       int64_t D, float* out, int64_t out_stride) {
  constexpr int L = V::kLanes, GB = V::kRegisters == 32 ? 8 : 6;
  for (int64_t g0 = 0; g0 < G; g0 += GB) {
    const int64_t count = std::min<int64_t>(GB, G - g0);
    int64_t d0 = 0;
    for (; d0 + 2 * L <= D; d0 += 2 * L)
      weighted_sum_block<V, GB, 2>(p, inv, g0, count, runs, num_runs, T, D, d0, out, out_stride);
    if (d0 < D) weighted_sum_block<V, GB, 1>(p, inv, g0, count, runs, num_runs, T, D, d0, out, out_stride);
  }
}

// A task's scores, softmax and weighted sum at one width (see attend).
template <class V>
void attend_simd(const float* q, int64_t G, const Run* runs, int64_t num_runs, int64_t T, int64_t D, float scale,
                 float* scores, float* out, float* stats) {
  // Memory is read only while the keys are scored: a later run's keys and values are fetched into L2 then
  // (kPrefetchRuns ahead; the first runs' values now), and the weighted sum finds its values there. Each prefetch
  // is an instruction, wasted when the cache already sits in the CPU's caches.
  auto fetch = [D](const Run& run, bool keys) {
    for (int64_t i = 0; i < run.n * D; i += 16) {
      if (keys) __builtin_prefetch(run.k + i, 0, 2);
      __builtin_prefetch(run.v + i, 0, 2);
    }
  };
  for (int64_t r = 0; r < std::min(kPrefetchRuns, num_runs); ++r) fetch(runs[r], false);
  for (int64_t r = 0, t0 = 0; r < num_runs; t0 += runs[r].n, ++r) {
    if (const int64_t ahead = r + kPrefetchRuns; ahead < num_runs) fetch(runs[ahead], true);
    scores_simd<V>(q, G, runs[r].k, runs[r].n, D, scale, scores + t0, T);
  }
  float inv[kMaxGroup];
  exp_rows_simd<V>(scores, G, T, inv, stats);
  weighted_sum_simd<V>(scores, inv, G, runs, num_runs, T, D, out, D);
}

TL_AVX2 TL_FLATTEN void attend_avx2(const float* q, int64_t G, const Run* runs, int64_t num_runs, int64_t T, int64_t D,
                                    float scale, float* scores, float* out, float* stats) {
  attend_simd<Vec8>(q, G, runs, num_runs, T, D, scale, scores, out, stats);
}
TL_AVX512 TL_FLATTEN void attend_avx512(const float* q, int64_t G, const Run* runs, int64_t num_runs, int64_t T, int64_t D,
                                        float scale, float* scores, float* out, float* stats) {
  attend_simd<Vec16>(q, G, runs, num_runs, T, D, scale, scores, out, stats);
}
#endif

// Writes a new token's key (normalised and rotated) and value of kv head h into krow and vrow, its cache rows.
void write_kv(const Shape& s, const float* qkv_t, int64_t position, float* krow, float* vrow, int64_t h) {
  rotate(s, position, qkv_t + (s.Hq + h) * s.D, s.k_norm, krow);
  std::memcpy(vrow, qkv_t + (s.Hq + s.Hkv + h) * s.D, s.D * sizeof(float));
}

// Attention of a new token at `position` for the G query heads of kv head h over the cached rows in `runs`: all
// of its rows up to its own (already written), or a part of them with `stats` (see merge_parts). out is the G
// heads' D values side by side.
void attend(const Shape& s, const float* qkv_t, int64_t position, const Run* runs, int64_t num_runs, float* out, int64_t h,
            float* stats) {
  const int64_t D = s.D, G = s.Hq / s.Hkv;
  int64_t T = 0;
  for (int64_t r = 0; r < num_runs; ++r) T += runs[r].n;
  float* q = tls_q.get(G * D);
  for (int64_t g = 0; g < G; ++g) rotate(s, position, qkv_t + (h * G + g) * D, s.q_norm, q + g * D);
  float* scores = tls_scores.get(G * T);
#ifdef TL_X86_SIMD
  if (tl::has_avx512() && D % 16 == 0) return attend_avx512(q, G, runs, num_runs, T, D, s.scale, scores, out, stats);
  if (has_avx2_fma() && D % 8 == 0) return attend_avx2(q, G, runs, num_runs, T, D, s.scale, scores, out, stats);
#endif
  for (int64_t g = 0; g < G; ++g)
    for (int64_t r = 0, t0 = 0; r < num_runs; t0 += runs[r].n, ++r)
      for (int64_t t = 0; t < runs[r].n; ++t) {
        float dot = 0;
        for (int64_t i = 0; i < D; ++i) dot += q[g * D + i] * runs[r].k[t * D + i];
        scores[g * T + t0 + t] = dot * s.scale;
      }
  softmax_rows(scores, G, T, stats);
  for (int64_t g = 0; g < G; ++g) {
    float* o = out + g * D;
    for (int64_t i = 0; i < D; ++i) o[i] = 0;
    for (int64_t r = 0, t0 = 0; r < num_runs; t0 += runs[r].n, ++r)
      for (int64_t t = 0; t < runs[r].n; ++t) {
        const float w = scores[g * T + t0 + t];
        for (int64_t i = 0; i < D; ++i) o[i] += w * runs[r].v[t * D + i];
      }
  }
}

// The arguments both bindings share: qkv, cos, sin (0..2), and out, the head counts, the scale and the optional
// norms from `tail` on. Checked against the cache's kv heads and head size; parse() returns false with a
// JavaScript exception pending.
struct DecodeArgs {
  tl::TensorRef qkv, cos_t, sin_t, out, q_norm, k_norm;
  int64_t Hq = 0, Hkv = 0;
  double scale = 0, eps = 1e-6;
  float qn[kMaxHeadDim], kn[kMaxHeadDim];  // the norms as float32 (Qwen3 only: D values each)

  bool parse(const Napi::CallbackInfo& info, const char* op, size_t tail) {
    Napi::Env env = info.Env();
    auto present = [&](size_t i) { return info.Length() > i && !info[i].IsUndefined() && !info[i].IsNull(); };
    qkv = tl::tensor_arg(info, 0, op);
    if (!env.IsExceptionPending()) cos_t = tl::tensor_arg(info, 1, op);
    if (!env.IsExceptionPending()) sin_t = tl::tensor_arg(info, 2, op);
    if (!env.IsExceptionPending()) out = tl::tensor_arg(info, tail, op);
    if (!env.IsExceptionPending() && present(tail + 4)) q_norm = tl::tensor_arg(info, tail + 4, op);
    if (!env.IsExceptionPending() && present(tail + 5)) k_norm = tl::tensor_arg(info, tail + 5, op);
    if (env.IsExceptionPending()) return false;
    Hq = info[tail + 1].ToNumber().Int64Value();
    Hkv = info[tail + 2].ToNumber().Int64Value();
    scale = info[tail + 3].ToNumber().DoubleValue();
    eps = present(tail + 6) ? info[tail + 6].ToNumber().DoubleValue() : 1e-6;
    return true;
  }

  // New tokens per row: qkv's second dimension.
  int64_t tokens() const { return qkv.ndim() == 3 ? qkv.shape[1] : 0; }

  // What is wrong with these arguments for a cache of `cache_heads` kv heads of D values and B rows, or nullptr.
  const char* check(int64_t B, int64_t cache_heads, int64_t D) const {
    if (qkv.dtype != DType::F32 || cos_t.dtype != DType::F32 || sin_t.dtype != DType::F32 || out.dtype != DType::F32)
      return "qkv, the RoPE tables and out must be float32";
    if (!qkv.contiguous() || !cos_t.contiguous() || !sin_t.contiguous() || !out.contiguous()) return "every tensor must be contiguous";
    if (Hq <= 0 || Hkv <= 0 || Hq % Hkv != 0 || cache_heads != Hkv) return "the kv heads must divide the query heads";
    if (D % 2 != 0 || D > kMaxHeadDim || Hq / Hkv > kMaxGroup) return "unsupported head size or group";
    if (qkv.ndim() != 3 || qkv.shape[0] != B || qkv.shape[1] < 1 || qkv.shape[2] != (Hq + 2 * Hkv) * D)
      return "qkv must be [B, L, (Hq + 2 Hkv) * D]";
    if (out.shape != std::vector<int64_t>{B, qkv.shape[1], Hq * D}) return "out must be [B, L, Hq * D]";
    if (cos_t.ndim() != 2 || cos_t.shape[1] * 2 != D || sin_t.shape != cos_t.shape) return "the RoPE tables must be [P, D/2]";
    for (const tl::TensorRef* n : {&q_norm, &k_norm})
      if (n->data && (n->ndim() != 1 || n->shape[0] != D || !is_float_dtype(n->dtype))) return "the q and k norms must be float [D]";
    if (!q_norm.data != !k_norm.data) return "pass both q and k norms or neither";
    return nullptr;
  }

  std::string describe() const {
    return "qkv " + qkv.describe() + ", tables " + cos_t.describe() + ", out " + out.describe() + ", " + std::to_string(Hq) +
           " query and " + std::to_string(Hkv) + " kv heads";
  }

  Shape shape(int64_t D) {
    for (int64_t i = 0; q_norm.data && i < D; ++i) {
      qn[i] = tl::load_f32(q_norm.data, q_norm.dtype, i * q_norm.strides[0]);
      kn[i] = tl::load_f32(k_norm.data, k_norm.dtype, i * k_norm.strides[0]);
    }
    return Shape{Hq, Hkv, D, static_cast<float>(scale), cos_t.ptr<float>(), sin_t.ptr<float>(), q_norm.data ? qn : nullptr,
                 k_norm.data ? kn : nullptr, eps};
  }
};

// Fewer tasks than threads (one row decoding has as many as kv heads: 2 for Qwen2, 1 for a multi-query model)
// would leave threads idle. Then a task's rows are cut into parts (flash-decoding), up to two per thread and of
// at least kSplitRows rows: each part is attended on its own, with its own max and sum of exps, and the parts are
// merged after. A multi-query shape (8 query heads on 1 kv head of 64; bench/paged-attention.ts --heads 8
// --kv-heads 1, alternating builds, 2 threads), one row: 4096 rows 71-90 -> 43-59 us, 1024 rows 18-23 -> 15-20
// us. Where the tasks already fill the threads, parts only cost (Qwen2-0.5B's single row on 2 threads, cut into
// parts of 256 rows, 4 per thread: 74-78 -> 101 us at 4096 rows), so they are left whole.
constexpr int64_t kSplitRows = 256;

// Task i's parts are first[i] .. first[i + 1] - 1, each of runs_per_part[i] runs but the last.
struct Parts {
  std::vector<int64_t> first, runs_per_part;
  int64_t count() const { return first.back(); }
  int64_t task_of(int64_t part) const { return std::upper_bound(first.begin(), first.end(), part) - first.begin() - 1; }
};

// Fewer tasks than threads: up to 2 * threads parts in all, of kSplitRows rows or more, into p (the calling
// thread's, reused from call to call: a single row's decode cuts its tasks at every layer of every token).
// position_of(i) is task i's position: it attends over rows 0 .. position, in runs of run_rows.
template <class PositionOf>
void cut_into_parts(int64_t tasks, int64_t threads, int64_t run_rows, const PositionOf& position_of, Parts& p) {
  const int64_t max_parts = (2 * threads + tasks - 1) / tasks;
  const int64_t min_runs = std::max<int64_t>(1, kSplitRows / run_rows);
  p.first.assign(tasks + 1, 0);
  p.runs_per_part.resize(tasks);
  for (int64_t i = 0; i < tasks; ++i) {
    const int64_t runs = (position_of(i) + run_rows) / run_rows;
    const int64_t parts = std::min(max_parts, std::max<int64_t>(1, runs / min_runs));
    p.runs_per_part[i] = (runs + parts - 1) / parts;
    p.first[i + 1] = p.first[i] + (runs + p.runs_per_part[i] - 1) / p.runs_per_part[i];
  }
}

thread_local Parts tls_plan;  // the calling thread's cut of its tasks into parts

// Merges the parts of one task: out[g] = sum_p w_p o_p[g] / sum_p w_p, where part p's output o_p[g] is its own
// softmax's weighted sum, and w_p = sum_p e^(max_p - max) rescales its sum of exps to the largest max of the row.
void merge_parts(const float* part_out, const float* part_stats, int64_t parts, int64_t G, int64_t D, float* out) {
  for (int64_t g = 0; g < G; ++g) {
    float mx = part_stats[2 * g];
    for (int64_t p = 1; p < parts; ++p) mx = std::max(mx, part_stats[p * 2 * G + 2 * g]);
    double total = 0;
    float* o = out + g * D;
    std::fill(o, o + D, 0.0f);
    for (int64_t p = 0; p < parts; ++p) {
      const float* st = part_stats + p * 2 * G + 2 * g;
      const float w = static_cast<float>(st[1] * std::exp(static_cast<double>(st[0]) - mx));
      total += w;
      const float* op = part_out + (p * G + g) * D;
      for (int64_t i = 0; i < D; ++i) o[i] += w * op[i];
    }
    const float inv = static_cast<float>(1.0 / total);
    for (int64_t i = 0; i < D; ++i) o[i] *= inv;
  }
}

// With many new tokens (a batch's rows), one thread attends all kv heads of a token, one after the other: a page
// holds every kv head's rows side by side, so the thread reads each page's keys (and values) as one block rather
// than every other block of them, another thread reading the blocks between. Tokens are then the tasks, at least
// kTokensPerThread a thread so that they still balance. 16 rows of 6 query heads on 2 kv heads of 64 at 304 cached
// positions, 8 layers' caches in turn, 2 threads (in-process rounds alternating the two forms, medians of 9):
// 131 -> 117 and 166 -> 150 us; 14 query heads over 24 layers' caches, 228 -> 204 us; 1024 positions, 469 -> 467
// us. The demo model's batch-16 decode step: 2879 -> 2955 tok/s (medians of 8 alternating rounds).
constexpr int64_t kTokensPerThread = 4;

// Writes the new keys and values, then runs the (row, new token, kv head) attention tasks. Row b's L new tokens
// are at positions[b] .. positions[b] + L - 1; `cache.row(b, h, t)` is where token t's key and value go, and
// `cache.runs(b, h, T, runs)` lists the runs of its tokens 0 .. T - 1, each of cache.run_rows() rows but the last.
template <class Cache>
Napi::Value run_decode(Napi::Env env, const char* op, const Shape& s, int64_t B, int64_t L, const tl::TensorRef& qkv,
                       const tl::TensorRef& out, const int64_t* positions, const Cache& cache) {
  const int64_t qkv_row = (s.Hq + 2 * s.Hkv) * s.D, out_row = s.Hq * s.D, G = s.Hq / s.Hkv;
  const float* qkv_p = qkv.ptr<float>();
  float* out_p = out.ptr<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < s.Hkv; ++h) {
        const Run row = cache.row(b, h, positions[b] + l);
        write_kv(s, qkv_p + (b * L + l) * qkv_row, positions[b] + l, row.k, row.v, h);
      }
  // Task i is (row b, new token l, kv head h): the token's G query heads over the rows up to its position.
  const int64_t tasks = B * L * s.Hkv;
  auto position_of = [&](int64_t i) { return positions[i / (L * s.Hkv)] + i / s.Hkv % L; };
  auto qkv_of = [&](int64_t i) { return qkv_p + (i / s.Hkv) * qkv_row; };
  auto out_of = [&](int64_t i) { return out_p + (i / s.Hkv) * out_row + (i % s.Hkv) * G * s.D; };
  auto runs_of = [&](int64_t i) -> std::vector<Run>& {
    std::vector<Run>& runs = tls_runs;
    runs.clear();
    cache.runs(i / (L * s.Hkv), i % s.Hkv, position_of(i) + 1, runs);
    return runs;
  };
  auto attend_task = [&](int64_t i) {
    const std::vector<Run>& runs = runs_of(i);
    attend(s, qkv_of(i), position_of(i), runs.data(), static_cast<int64_t>(runs.size()), out_of(i), i % s.Hkv, nullptr);
  };
  try {
    const int64_t threads = tl::num_threads();
    if (B * L >= kTokensPerThread * threads) {
      run_tasks(B * L, [&](int64_t token) {
        for (int64_t i = token * s.Hkv; i < (token + 1) * s.Hkv; ++i) attend_task(i);
      });
      return env.Undefined();
    }
    Parts& parts = tls_plan;
    if (tasks < threads) cut_into_parts(tasks, threads, cache.run_rows(), position_of, parts);
    if (tasks >= threads || parts.count() == tasks) {
      run_tasks(tasks, attend_task);
      return env.Undefined();
    }
    // Each part's output [G, D], then each part's max and sum [G, 2].
    float* part_out = tls_parts.get(parts.count() * G * (s.D + 2));
    float* part_stats = part_out + parts.count() * G * s.D;
    run_tasks(parts.count(), [&](int64_t part) {
      const int64_t i = parts.task_of(part);
      const std::vector<Run>& runs = runs_of(i);
      const int64_t r0 = (part - parts.first[i]) * parts.runs_per_part[i];
      const int64_t r1 = std::min(r0 + parts.runs_per_part[i], static_cast<int64_t>(runs.size()));
      attend(s, qkv_of(i), position_of(i), runs.data() + r0, r1 - r0, part_out + part * G * s.D, i % s.Hkv,
             part_stats + part * 2 * G);
    });
    for (int64_t i = 0; i < tasks; ++i) {
      const int64_t p0 = parts.first[i];
      merge_parts(part_out + p0 * G * s.D, part_stats + p0 * 2 * G, parts.first[i + 1] - p0, G, s.D, out_of(i));
    }
  } catch (const std::bad_alloc&) {
    Napi::Error::New(env, std::string(op) + ": out of memory for scratch buffers").ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

}  // namespace

Napi::Value AttentionDecode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "attentionDecode";
  DecodeArgs a;
  if (!a.parse(info, op, 6)) return env.Undefined();
  const int64_t position = info[3].ToNumber().Int64Value();
  tl::TensorRef kv[2];
  if (!tensor_args(info, op, 4, kv)) return env.Undefined();
  const tl::TensorRef &keys = kv[0], &values = kv[1];
  auto fail = [&](const std::string& why) {
    Napi::RangeError::New(env, std::string(op) + ": " + why + " (" + a.describe() + ", keys " + keys.describe() + ", values " +
                                   values.describe() + ", position " + std::to_string(position) + ")")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  };
  if (keys.ndim() != 4 || values.shape != keys.shape) return fail("keys and values must be [B, Hkv, S, D] alike");
  if (keys.dtype != DType::F32 || values.dtype != DType::F32 || !keys.contiguous() || !values.contiguous())
    return fail("keys and values must be float32 and contiguous");
  const int64_t B = keys.shape[0], D = keys.shape[3], S = keys.shape[2];
  if (const char* why = a.check(B, keys.shape[1], D)) return fail(why);
  const int64_t L = a.tokens();
  if (position < 0 || position + L > S || position + L > a.cos_t.shape[0])
    return fail("the new tokens' positions are outside the cache or the RoPE tables");
  const Shape s = a.shape(D);
  const std::vector<int64_t> positions(B, position);
  // A (row, kv head)'s S rows are one run.
  struct Contiguous {
    float *keys, *values;
    int64_t Hkv, S, D;
    int64_t run_rows() const { return kRunRows; }
    Run row(int64_t b, int64_t h, int64_t t) const {
      const int64_t at = ((b * Hkv + h) * S + t) * D;
      return Run{keys + at, values + at, 1};
    }
    void runs(int64_t b, int64_t h, int64_t T, std::vector<Run>& runs) const {
      for (int64_t t = 0; t < T; t += kRunRows) {
        runs.push_back(row(b, h, t));
        runs.back().n = std::min(kRunRows, T - t);
      }
    }
  };
  return run_decode(env, op, s, B, L, a.qkv, a.out, positions.data(), Contiguous{keys.ptr<float>(), values.ptr<float>(), s.Hkv, S, D});
}

Napi::Value PagedAttentionDecode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "pagedAttentionDecode";
  DecodeArgs a;
  if (!a.parse(info, op, 7)) return env.Undefined();
  tl::TensorRef t[4];
  if (!tensor_args(info, op, 3, t)) return env.Undefined();
  const tl::TensorRef &positions_t = t[0], &keys = t[1], &values = t[2], &tables = t[3];
  auto fail = [&](const std::string& why) {
    Napi::RangeError::New(env, std::string(op) + ": " + why + " (" + a.describe() + ", pages " + keys.describe() + ", block tables " +
                                   tables.describe() + ")")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  };
  if (keys.ndim() != 4 || values.shape != keys.shape) return fail("key and value pages must be [N, Hkv, P, D] alike");
  if (keys.dtype != DType::F32 || values.dtype != DType::F32 || !keys.contiguous() || !values.contiguous())
    return fail("the pages must be float32 and contiguous");
  if (tables.ndim() != 2 || positions_t.ndim() != 1 || tables.shape[0] != positions_t.shape[0] || tables.dtype != DType::I32 ||
      positions_t.dtype != DType::I32 || !tables.contiguous() || !positions_t.contiguous())
    return fail("expected int32 positions [B] and block tables [B, M]");
  const int64_t B = tables.shape[0], M = tables.shape[1], N = keys.shape[0], P = keys.shape[2], D = keys.shape[3];
  if (const char* why = a.check(B, keys.shape[1], D)) return fail(why);
  const int64_t L = a.tokens();
  // Every page a row writes or reads must be in the pool: a bookkeeping bug is an error, not a stray write.
  const int32_t* table = tables.ptr<int32_t>();
  std::vector<int64_t> positions(B);
  for (int64_t b = 0; b < B; ++b) {
    positions[b] = positions_t.ptr<int32_t>()[b];
    const int64_t last = positions[b] + L - 1;
    if (positions[b] < 0 || last >= M * P || last >= a.cos_t.shape[0])
      return fail("row " + std::to_string(b) + ": position " + std::to_string(last) + " is outside its block table or the RoPE tables");
    for (int64_t j = 0; j <= last / P; ++j)
      if (table[b * M + j] < 0 || table[b * M + j] >= N)
        return fail("row " + std::to_string(b) + ", block " + std::to_string(j) + ": page " + std::to_string(table[b * M + j]) +
                    " is outside the pool's " + std::to_string(N) + " pages");
  }
  const Shape s = a.shape(D);
  // A (row, kv head)'s runs are its pages, the last one cut at the token count.
  struct Paged {
    float *keys, *values;
    const int32_t* table;
    int64_t M, Hkv, P, D;
    int64_t run_rows() const { return P; }
    Run row(int64_t b, int64_t h, int64_t t) const {
      const int64_t at = ((table[b * M + t / P] * Hkv + h) * P + t % P) * D;
      return Run{keys + at, values + at, 1};
    }
    void runs(int64_t b, int64_t h, int64_t T, std::vector<Run>& runs) const {
      for (int64_t j = 0; j * P < T; ++j) {
        runs.push_back(row(b, h, j * P));
        runs.back().n = std::min(P, T - j * P);
      }
    }
  };
  return run_decode(env, op, s, B, L, a.qkv, a.out, positions.data(), Paged{keys.ptr<float>(), values.ptr<float>(), table, M, s.Hkv, P, D});
}

}  // namespace engine
