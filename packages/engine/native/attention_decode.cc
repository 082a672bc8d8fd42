// Chapter 2.1's decode step of attention as one kernel: RoPE on the new token's query and key heads, the key and
// value appended to the KV cache, and attention of the new token over every cached position. Two caches:
//
//   attentionDecode(qkv, cos, sin, position, keys, values, out, numHeads, numKvHeads, scale
//                   [, qNorm, kNorm, eps])
//     keys    [B, Hkv, S, D] float32, contiguous: the cache's whole key buffer (capacity S > position); row
//             `position` of each head is written, rows 0 .. position are attended over (every row at `position`)
//     values  the same for values
//
//   pagedAttentionDecode(qkv, cos, sin, positions, keyPages, valuePages, blockTables, out, numHeads, numKvHeads,
//                        scale [, qNorm, kNorm, eps])
//     positions    int32 [B]: row b's new token is its token positions[b] (one request per row, chapter 2.6)
//     keyPages     [N, Hkv, P, D] float32, contiguous: one layer of the page pool (chapter 3.1); token t of row b
//                  is in page blockTables[b][t / P], at slot t % P
//     valuePages   the same for values
//     blockTables  int32 [B, M]: each row's pages in order
//
//   and for both:
//     qkv     [B, 1, (Hq + 2 Hkv) * D] float32, contiguous: the fused q/k/v projection of the new token (biases
//             added): Hq query heads, then Hkv key heads, then Hkv value heads, D values each
//     cos/sin [P, D/2] float32, contiguous: the RoPE tables (tc.fast.ropeTables), every position < P
//     out     [B, 1, Hq * D] float32, contiguous: the attention output, heads side by side (what o_proj reads)
//     qNorm, kNorm: Qwen3's per-head RMSNorm weights [D] (applied before RoPE), or null; eps their epsilon
//
// The composed form it replaces, per layer and token: slices and reshapes of qkv, fast.rope, two strided copies
// into the cache, then fast.sdpa's matmul, scale, softmax and matmul over views: eight ops and a dozen views,
// each a trip through JavaScript, an allocation and a wake-up of the pool, for a few hundred KFLOPs. Here the
// work is one task per (batch row, kv head): the kv head's key and value are written, then its G = Hq / Hkv
// query heads are rotated and attend over the cache together, each cached row read once for all of them. The
// cached rows are read as runs of consecutive rows: one run of a contiguous cache, one per page of a paged one.
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

thread_local Buffer tls_scores;  // one task's scores [G, T], each pool thread its own
thread_local Buffer tls_q;       // one task's rotated query heads [G, D]

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

// Softmax of each of the G rows of scores [G, T] in place.
void softmax_rows(float* scores, int64_t G, int64_t T) {
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
  }
}

#ifdef TL_X86_SIMD
TL_AVX2 void softmax_rows_avx2(float* scores, int64_t G, int64_t T) {
  for (int64_t g = 0; g < G; ++g) {
    float* r = scores + g * T;
    float mx = r[0];
    for (int64_t t = 1; t < T; ++t) mx = std::max(mx, r[t]);
    const __m256 m = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 8 <= T; t += 8) {
      const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(r + t), m));
      _mm256_storeu_ps(r + t, e);
      acc = _mm256_add_ps(acc, e);
    }
    double sum = hsum(acc);
    for (; t < T; ++t) {
      r[t] = std::exp(r[t] - mx);
      sum += r[t];
    }
    const __m256 inv = _mm256_set1_ps(static_cast<float>(1.0 / sum));
    t = 0;
    for (; t + 8 <= T; t += 8) _mm256_storeu_ps(r + t, _mm256_mul_ps(_mm256_loadu_ps(r + t), inv));
    for (; t < T; ++t) r[t] *= static_cast<float>(1.0 / sum);
  }
}

// scores[g * stride + t] = scale * q[g] . K[t] for the G query rows and the n rows of K (D a multiple of 8),
// each key row read once.
TL_AVX2 void scores_avx2(const float* q, int64_t G, const float* K, int64_t n, int64_t D, float scale, float* scores,
                         int64_t stride) {
  for (int64_t t = 0; t < n; ++t) {
    const float* k = K + t * D;
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = q + g * D;
      __m256 a0 = _mm256_mul_ps(_mm256_loadu_ps(qg), _mm256_loadu_ps(k));
      __m256 a1 = _mm256_setzero_ps();
      int64_t i = 8;
      for (; i + 16 <= D; i += 16) {
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qg + i), _mm256_loadu_ps(k + i), a1);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qg + i + 8), _mm256_loadu_ps(k + i + 8), a0);
      }
      for (; i < D; i += 8) a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qg + i), _mm256_loadu_ps(k + i), a1);
      scores[g * stride + t] = hsum(_mm256_add_ps(a0, a1)) * scale;
    }
  }
}

// out[g] = sum_t p[g][t] V[t] for the G rows, t over the runs in order (T rows in all), D values in blocks of 32
// (4 accumulators per row).
TL_AVX2 void weighted_sum_avx2(const float* p, int64_t G, const Run* runs, int64_t num_runs, int64_t T, int64_t D,
                               float* out, int64_t out_stride) {
  for (int64_t d0 = 0; d0 < D; d0 += 32) {
    const int64_t nv = std::min<int64_t>(4, (D - d0) / 8);
    for (int64_t g = 0; g < G; ++g) {
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      const float* pg = p + g * T;
      for (int64_t r = 0; r < num_runs; ++r) {
        for (int64_t t = 0; t < runs[r].n; ++t) {
          const __m256 w = _mm256_set1_ps(pg[t]);
          const float* v = runs[r].v + t * D + d0;
          for (int64_t j = 0; j < nv; ++j) acc[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + j * 8), acc[j]);
        }
        pg += runs[r].n;
      }
      for (int64_t j = 0; j < nv; ++j) _mm256_storeu_ps(out + g * out_stride + d0 + j * 8, acc[j]);
    }
  }
}
#endif

// One (batch row, kv head): write its key and value into krow and vrow (the cache's rows at `position`), then
// attend for its G query heads over the T = position + 1 rows of `runs` (which end with that row).
void task(const Shape& s, const float* qkv_b, int64_t position, float* krow, float* vrow, const Run* runs,
          int64_t num_runs, float* out_b, int64_t h) {
  const int64_t D = s.D, G = s.Hq / s.Hkv, T = position + 1;
  rotate(s, position, qkv_b + (s.Hq + h) * D, s.k_norm, krow);
  std::memcpy(vrow, qkv_b + (s.Hq + s.Hkv + h) * D, D * sizeof(float));
  float* q = tls_q.get(G * D);
  for (int64_t g = 0; g < G; ++g) rotate(s, position, qkv_b + (h * G + g) * D, s.q_norm, q + g * D);
  float* scores = tls_scores.get(G * T);
  float* out = out_b + h * G * D;  // heads h*G .. h*G + G - 1, side by side
#ifdef TL_X86_SIMD
  if (has_avx2_fma() && D % 8 == 0) {
    for (int64_t r = 0, t0 = 0; r < num_runs; t0 += runs[r].n, ++r) {
      // The pages of a paged cache are scattered: fetch the next run's keys while this one's are scored.
      if (r + 1 < num_runs)
        for (int64_t i = 0; i < runs[r + 1].n * D; i += 16) __builtin_prefetch(runs[r + 1].k + i);
      scores_avx2(q, G, runs[r].k, runs[r].n, D, s.scale, scores + t0, T);
    }
    softmax_rows_avx2(scores, G, T);
    weighted_sum_avx2(scores, G, runs, num_runs, T, D, out, D);
    return;
  }
#endif
  for (int64_t g = 0; g < G; ++g)
    for (int64_t r = 0, t0 = 0; r < num_runs; t0 += runs[r].n, ++r)
      for (int64_t t = 0; t < runs[r].n; ++t) {
        float dot = 0;
        for (int64_t i = 0; i < D; ++i) dot += q[g * D + i] * runs[r].k[t * D + i];
        scores[g * T + t0 + t] = dot * s.scale;
      }
  softmax_rows(scores, G, T);
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

  // What is wrong with these arguments for a cache of `cache_heads` kv heads of D values and B rows, or nullptr.
  const char* check(int64_t B, int64_t cache_heads, int64_t D) const {
    if (qkv.dtype != DType::F32 || cos_t.dtype != DType::F32 || sin_t.dtype != DType::F32 || out.dtype != DType::F32)
      return "qkv, the RoPE tables and out must be float32";
    if (!qkv.contiguous() || !cos_t.contiguous() || !sin_t.contiguous() || !out.contiguous()) return "every tensor must be contiguous";
    if (Hq <= 0 || Hkv <= 0 || Hq % Hkv != 0 || cache_heads != Hkv) return "the kv heads must divide the query heads";
    if (D % 2 != 0 || D > kMaxHeadDim || Hq / Hkv > kMaxGroup) return "unsupported head size or group";
    if (qkv.numel() != B * (Hq + 2 * Hkv) * D || qkv.shape.back() != (Hq + 2 * Hkv) * D) return "qkv must be [B, 1, (Hq + 2 Hkv) * D]";
    if (out.numel() != B * Hq * D || out.shape.back() != Hq * D) return "out must be [B, 1, Hq * D]";
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

// Runs the (row, kv head) tasks; `cache(b, h, runs)` fills the task's runs and returns its row at the position.
template <class Cache>
Napi::Value run_decode(Napi::Env env, const char* op, const Shape& s, int64_t B, const tl::TensorRef& qkv, const tl::TensorRef& out,
                       const int64_t* positions, const Cache& cache) {
  const float* qkv_p = qkv.ptr<float>();
  float* out_p = out.ptr<float>();
  try {
    run_tasks(B * s.Hkv, [&](int64_t i) {
      const int64_t b = i / s.Hkv, h = i % s.Hkv;
      std::vector<Run>& runs = tls_runs;
      runs.clear();
      const Run row = cache(b, h, runs);
      task(s, qkv_p + b * (s.Hq + 2 * s.Hkv) * s.D, positions[b], row.k, row.v, runs.data(), static_cast<int64_t>(runs.size()),
           out_p + b * s.Hq * s.D, h);
    });
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
  tl::TensorRef keys = tl::tensor_arg(info, 4, op);
  if (env.IsExceptionPending()) return env.Undefined();
  tl::TensorRef values = tl::tensor_arg(info, 5, op);
  if (env.IsExceptionPending()) return env.Undefined();
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
  if (position < 0 || position >= S || position >= a.cos_t.shape[0]) return fail("the position is outside the cache or the RoPE tables");
  const Shape s = a.shape(D);
  const std::vector<int64_t> positions(B, position);
  float* keys_p = keys.ptr<float>();
  float* values_p = values.ptr<float>();
  // One run per (row, kv head): its S rows, of which 0 .. position are attended over.
  return run_decode(env, op, s, B, a.qkv, a.out, positions.data(), [&](int64_t b, int64_t h, std::vector<Run>& runs) {
    float* k = keys_p + (b * s.Hkv + h) * S * D;
    float* v = values_p + (b * s.Hkv + h) * S * D;
    runs.push_back({k, v, position + 1});
    return Run{k + position * D, v + position * D, 1};
  });
}

Napi::Value PagedAttentionDecode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "pagedAttentionDecode";
  DecodeArgs a;
  if (!a.parse(info, op, 7)) return env.Undefined();
  tl::TensorRef t[4];
  for (int i = 0; i < 4; ++i) {
    t[i] = tl::tensor_arg(info, 3 + i, op);
    if (env.IsExceptionPending()) return env.Undefined();
  }
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
  // Every page a row writes or reads must be in the pool: a bookkeeping bug is an error, not a stray write.
  const int32_t* table = tables.ptr<int32_t>();
  std::vector<int64_t> positions(B);
  for (int64_t b = 0; b < B; ++b) {
    positions[b] = positions_t.ptr<int32_t>()[b];
    if (positions[b] < 0 || positions[b] >= M * P || positions[b] >= a.cos_t.shape[0])
      return fail("row " + std::to_string(b) + ": position " + std::to_string(positions[b]) + " is outside its block table or the RoPE tables");
    for (int64_t j = 0; j <= positions[b] / P; ++j)
      if (table[b * M + j] < 0 || table[b * M + j] >= N)
        return fail("row " + std::to_string(b) + ", block " + std::to_string(j) + ": page " + std::to_string(table[b * M + j]) +
                    " is outside the pool's " + std::to_string(N) + " pages");
  }
  const Shape s = a.shape(D);
  float* keys_p = keys.ptr<float>();
  float* values_p = values.ptr<float>();
  // One run per page of the row: P rows, the last page cut at the position.
  return run_decode(env, op, s, B, a.qkv, a.out, positions.data(), [&](int64_t b, int64_t h, std::vector<Run>& runs) {
    const int64_t position = positions[b];
    for (int64_t j = 0; j <= position / P; ++j) {
      const int64_t page = table[b * M + j];
      runs.push_back({keys_p + (page * s.Hkv + h) * P * D, values_p + (page * s.Hkv + h) * P * D, std::min(P, position + 1 - j * P)});
    }
    const Run& last = runs.back();
    return Run{last.k + (last.n - 1) * D, last.v + (last.n - 1) * D, 1};
  });
}

}  // namespace engine
