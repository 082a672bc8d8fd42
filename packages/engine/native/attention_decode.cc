// Chapter 2.1's decode step of attention as one kernel: RoPE on the new token's query and key heads, the key and
// value appended to the KV cache, and attention of the new token over every cached position.
//
//   attentionDecode(qkv, cos, sin, position, keys, values, out, numHeads, numKvHeads, scale
//                   [, qNorm, kNorm, eps])
//     qkv     [B, 1, (Hq + 2 Hkv) * D] float32, contiguous: the fused q/k/v projection of the new token (biases
//             added): Hq query heads, then Hkv key heads, then Hkv value heads, D values each
//     cos/sin [P, D/2] float32, contiguous: the RoPE tables (tc.fast.ropeTables), position < P
//     keys    [B, Hkv, S, D] float32, contiguous: the cache's whole key buffer (capacity S > position); row
//             `position` of each head is written, rows 0 .. position are attended over
//     values  the same for values
//     out     [B, 1, Hq * D] float32, contiguous: the attention output, heads side by side (what o_proj reads)
//     qNorm, kNorm: Qwen3's per-head RMSNorm weights [D] (applied before RoPE), or null; eps their epsilon
//
// The composed form it replaces, per layer and token: slices and reshapes of qkv, fast.rope, two strided copies
// into the cache, then fast.sdpa's matmul, scale, softmax and matmul over views: eight ops and a dozen views,
// each a trip through JavaScript, an allocation and a wake-up of the pool, for a few hundred KFLOPs. Here the
// work is one task per (batch row, kv head): the kv head's key and value are written, then its G = Hq / Hkv
// query heads are rotated and attend over the cache together, each cached row read once for all of them.
// RoPE is the default (Qwen2) form, rotating (i, i + D/2); the rotation and the softmax follow tensor-core's
// fast.rope and softmax.
#include <string>

#include "common.h"

namespace engine {
namespace {

using tl::DType;

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxGroup = 64;

thread_local Buffer tls_scores;  // one task's scores [G, T], each pool thread its own
thread_local Buffer tls_q;       // one task's rotated query heads [G, D]

struct Shape {
  int64_t B, Hq, Hkv, D, S, position;
  float scale;
  const float* cos;
  const float* sin;
  const float* q_norm;  // [D] as float32, or null
  const float* k_norm;
  double eps;
};

// dst = rope(rmsNorm?(src)) at the row's position (dst may not alias src).
void rotate(const Shape& s, const float* src, const float* norm, float* dst) {
  const int64_t D = s.D, half = D / 2;
  float tmp[kMaxHeadDim];
  if (norm) {
    double ss = 0;
    for (int64_t i = 0; i < D; ++i) ss += static_cast<double>(src[i]) * src[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / D + s.eps));
    for (int64_t i = 0; i < D; ++i) tmp[i] = src[i] * scale * norm[i];
    src = tmp;
  }
  const float* c = s.cos + s.position * half;
  const float* sn = s.sin + s.position * half;
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

// scores[g][t] = scale * q[g] . K[t] for the G query rows (D a multiple of 8), each key row read once.
TL_AVX2 void scores_avx2(const float* q, int64_t G, const float* K, int64_t T, int64_t D, float scale, float* scores) {
  for (int64_t t = 0; t < T; ++t) {
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
      scores[g * T + t] = hsum(_mm256_add_ps(a0, a1)) * scale;
    }
  }
}

// out[g] = sum_t p[g][t] V[t] for the G rows, D values in blocks of 32 (4 accumulators per row).
TL_AVX2 void weighted_sum_avx2(const float* p, int64_t G, const float* V, int64_t T, int64_t D, float* out,
                               int64_t out_stride) {
  for (int64_t d0 = 0; d0 < D; d0 += 32) {
    const int64_t nv = std::min<int64_t>(4, (D - d0) / 8);
    for (int64_t g = 0; g < G; ++g) {
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      const float* pg = p + g * T;
      for (int64_t t = 0; t < T; ++t) {
        const __m256 w = _mm256_set1_ps(pg[t]);
        const float* v = V + t * D + d0;
        for (int64_t j = 0; j < nv; ++j) acc[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + j * 8), acc[j]);
      }
      for (int64_t j = 0; j < nv; ++j) _mm256_storeu_ps(out + g * out_stride + d0 + j * 8, acc[j]);
    }
  }
}
#endif

// One (batch row, kv head): append its key and value at the position, then attend for its G query heads.
void task(const Shape& s, const float* qkv_b, float* keys_bh, float* values_bh, float* out_b, int64_t h) {
  const int64_t D = s.D, G = s.Hq / s.Hkv, T = s.position + 1;
  float* krow = keys_bh + s.position * D;
  rotate(s, qkv_b + (s.Hq + h) * D, s.k_norm, krow);
  std::memcpy(values_bh + s.position * D, qkv_b + (s.Hq + s.Hkv + h) * D, D * sizeof(float));
  float* q = tls_q.get(G * D);
  for (int64_t g = 0; g < G; ++g) rotate(s, qkv_b + (h * G + g) * D, s.q_norm, q + g * D);
  float* scores = tls_scores.get(G * T);
  float* out = out_b + h * G * D;  // heads h*G .. h*G + G - 1, side by side
#ifdef TL_X86_SIMD
  if (has_avx2_fma() && D % 8 == 0) {
    scores_avx2(q, G, keys_bh, T, D, s.scale, scores);
    softmax_rows_avx2(scores, G, T);
    weighted_sum_avx2(scores, G, values_bh, T, D, out, D);
    return;
  }
#endif
  for (int64_t g = 0; g < G; ++g)
    for (int64_t t = 0; t < T; ++t) {
      float dot = 0;
      for (int64_t i = 0; i < D; ++i) dot += q[g * D + i] * keys_bh[t * D + i];
      scores[g * T + t] = dot * s.scale;
    }
  softmax_rows(scores, G, T);
  for (int64_t g = 0; g < G; ++g) {
    float* o = out + g * D;
    for (int64_t i = 0; i < D; ++i) o[i] = 0;
    for (int64_t t = 0; t < T; ++t) {
      const float w = scores[g * T + t];
      for (int64_t i = 0; i < D; ++i) o[i] += w * values_bh[t * D + i];
    }
  }
}

}  // namespace

Napi::Value AttentionDecode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "attentionDecode";
  tl::TensorRef qkv = tl::tensor_arg(info, 0, op);
  if (env.IsExceptionPending()) return env.Undefined();
  tl::TensorRef cos_t = tl::tensor_arg(info, 1, op);
  if (env.IsExceptionPending()) return env.Undefined();
  tl::TensorRef sin_t = tl::tensor_arg(info, 2, op);
  if (env.IsExceptionPending()) return env.Undefined();
  const int64_t position = info[3].ToNumber().Int64Value();
  tl::TensorRef keys = tl::tensor_arg(info, 4, op);
  if (env.IsExceptionPending()) return env.Undefined();
  tl::TensorRef values = tl::tensor_arg(info, 5, op);
  if (env.IsExceptionPending()) return env.Undefined();
  tl::TensorRef out = tl::tensor_arg(info, 6, op);
  if (env.IsExceptionPending()) return env.Undefined();
  const int64_t Hq = info[7].ToNumber().Int64Value(), Hkv = info[8].ToNumber().Int64Value();
  const double scale = info[9].ToNumber().DoubleValue();
  auto present = [&](size_t i) { return info.Length() > i && !info[i].IsUndefined() && !info[i].IsNull(); };
  tl::TensorRef q_norm, k_norm;
  if (present(10)) q_norm = tl::tensor_arg(info, 10, op);
  if (!env.IsExceptionPending() && present(11)) k_norm = tl::tensor_arg(info, 11, op);
  if (env.IsExceptionPending()) return env.Undefined();
  const double eps = present(12) ? info[12].ToNumber().DoubleValue() : 1e-6;

  auto fail = [&](const std::string& why) {
    Napi::RangeError::New(env, std::string(op) + ": " + why + " (qkv " + qkv.describe() + ", tables " +
                                   cos_t.describe() + ", keys " + keys.describe() + ", values " + values.describe() + ", out " +
                                   out.describe() + ", position " + std::to_string(position) + ", " +
                                   std::to_string(Hq) + " query and " + std::to_string(Hkv) + " kv heads)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  };
  const bool f32 = qkv.dtype == DType::F32 && cos_t.dtype == DType::F32 && sin_t.dtype == DType::F32 &&
                   keys.dtype == DType::F32 && values.dtype == DType::F32 && out.dtype == DType::F32;
  if (!f32) return fail("every tensor must be float32");
  if (!qkv.contiguous() || !cos_t.contiguous() || !sin_t.contiguous() || !keys.contiguous() || !values.contiguous() ||
      !out.contiguous())
    return fail("every tensor must be contiguous");
  if (keys.ndim() != 4 || values.shape != keys.shape) return fail("keys and values must be [B, Hkv, S, D] alike");
  const int64_t B = keys.shape[0], D = keys.shape[3], S = keys.shape[2];
  if (Hq <= 0 || Hkv <= 0 || Hq % Hkv != 0 || keys.shape[1] != Hkv)
    return fail("the kv heads must divide the query heads");
  if (D % 2 != 0 || D > kMaxHeadDim || Hq / Hkv > kMaxGroup) return fail("unsupported head size or group");
  if (qkv.numel() != B * (Hq + 2 * Hkv) * D || qkv.shape.back() != (Hq + 2 * Hkv) * D)
    return fail("qkv must be [B, 1, (Hq + 2 Hkv) * D]");
  if (out.numel() != B * Hq * D || out.shape.back() != Hq * D) return fail("out must be [B, 1, Hq * D]");
  if (cos_t.ndim() != 2 || cos_t.shape[1] * 2 != D || sin_t.shape != cos_t.shape)
    return fail("the RoPE tables must be [P, D/2]");
  if (position < 0 || position >= S || position >= cos_t.shape[0])
    return fail("the position is outside the cache or the RoPE tables");
  for (const tl::TensorRef* n : {&q_norm, &k_norm})
    if (n->data && (n->ndim() != 1 || n->shape[0] != D || !is_float_dtype(n->dtype)))
      return fail("the q and k norms must be float [D]");
  if (!q_norm.data != !k_norm.data) return fail("pass both q and k norms or neither");

  // The norms as float32 (Qwen3 only: D values each).
  float qn[kMaxHeadDim], kn[kMaxHeadDim];
  for (int64_t i = 0; q_norm.data && i < D; ++i) {
    qn[i] = tl::load_f32(q_norm.data, q_norm.dtype, i * q_norm.strides[0]);
    kn[i] = tl::load_f32(k_norm.data, k_norm.dtype, i * k_norm.strides[0]);
  }
  Shape s{B, Hq, Hkv, D, S, position, static_cast<float>(scale), cos_t.ptr<float>(), sin_t.ptr<float>(),
          q_norm.data ? qn : nullptr, k_norm.data ? kn : nullptr, eps};
  const float* qkv_p = qkv.ptr<float>();
  float* keys_p = keys.ptr<float>();
  float* values_p = values.ptr<float>();
  float* out_p = out.ptr<float>();
  try {
    run_tasks(B * Hkv, [&](int64_t i) {
      const int64_t b = i / Hkv, h = i % Hkv;
      task(s, qkv_p + b * (Hq + 2 * Hkv) * D, keys_p + (b * Hkv + h) * S * D, values_p + (b * Hkv + h) * S * D,
           out_p + b * Hq * D, h);
    });
  } catch (const std::bad_alloc&) {
    Napi::Error::New(env, std::string(op) + ": out of memory for scratch buffers").ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

}  // namespace engine
