// Step 9 of native/quantized_matmul.cc, shared with the panels' products (native/dense_panels.cc,
// native/quantized_panels.cc): the work fused around a decode projection.
//
// A decode step used to run, per layer, rmsNorm -> qkv matmul -> bias add, ... , o matmul -> residual add,
// rmsNorm -> gate/up matmul -> silu, mul -> down matmul -> residual add: fourteen ops, each a trip through
// JavaScript, an output allocation and a wake-up of the pool, around four matmuls. The vectors involved are a
// few KB, so the cheap way is to do that work where the matmul touches its input and output anyway:
//   prologue: x becomes rmsNorm(x) * normWeight, or silu(x[:, :K]) * x[:, K:] for x [M, 2K] (the MLP's gate and
//             up halves); computed into a scratch, once per call.
//   epilogue: each output gets bias[n] and residual[m, n] added as it is stored (store_out).
// The x side was scalar and cost a few microseconds per call (the per-group sums, the step 6 permutation with a
// division in its inner loop); at 97 matmuls per token it is now vectorised.

#include <string>
#include <utility>

#include "common.h"

namespace engine {
namespace {

using tl::DType;

thread_local Buffer tls_prepared;  // the prepared x, calling thread
thread_local Buffer tls_wide;      // x widened to float32 (bf16 / f16 x), calling thread
thread_local Buffer tls_norm_w;    // the norm weight as float32

#ifdef TL_X86_SIMD
// dst[i] = silu(g[i]) * u[i] = g[i] / (1 + exp(-g[i])) * u[i].
TL_AVX2 void swiglu_avx2(const float* g, const float* u, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), gv));
    const __m256 silu = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    _mm256_storeu_ps(dst + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
  }
  for (; i < n; ++i) dst[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

// sum of x[i]^2 in double (as tensor-core's rmsNorm: wide rows of large values stay exact).
TL_AVX2 double sum_squares_avx2(const float* x, int64_t n) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), hi = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
    a0 = _mm256_fmadd_pd(lo, lo, a0);
    a1 = _mm256_fmadd_pd(hi, hi, a1);
  }
  a0 = _mm256_add_pd(a0, a1);
  const __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(a0), _mm256_extractf128_pd(a0, 1));
  double s = _mm_cvtsd_f64(_mm_add_sd(s2, _mm_unpackhi_pd(s2, s2)));
  for (; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

// dst[i] = x[i] * scale * w[i] (w float32).
TL_AVX2 void scale_mul_avx2(const float* x, float scale, const float* w, int64_t n, float* dst) {
  const __m256 sv = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), sv), _mm256_loadu_ps(w + i)));
  for (; i < n; ++i) dst[i] = x[i] * scale * w[i];
}

#endif

// Scalar versions of the above (the TINY_LLM_NO_SIMD path, any CPU).
double sum_squares_scalar(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

}  // namespace

const float* prepare_x(const tl::TensorRef& x, int64_t M, int64_t K, const Fusion& f) {
  const bool simd = has_avx2_fma();
  if (f.prologue == kNoPrologue && x.dtype == DType::F32) return x.ptr<float>();
  float* buf = tls_prepared.get(M * K);
  const int64_t xk = f.prologue == kSwiglu ? 2 * K : K;  // x's row length
  const float* xf = x.ptr<float>();
  if (x.dtype != DType::F32) {
    // Rare (the engine's activations are float32): widen into the scratch first, then transform in place.
    float* wide = tls_wide.get(M * xk);
    for (int64_t i = 0; i < M * xk; ++i) wide[i] = tl::load_f32(x.data, x.dtype, i);
    if (f.prologue == kNoPrologue) {
      std::memcpy(buf, wide, M * K * sizeof(float));
      return buf;
    }
    xf = wide;
  }
  if (f.prologue == kSwiglu) {
    for (int64_t m = 0; m < M; ++m) {
      const float* g = xf + m * xk;
#ifdef TL_X86_SIMD
      if (simd) {
        swiglu_avx2(g, g + K, K, buf + m * K);
        continue;
      }
#endif
      for (int64_t k = 0; k < K; ++k) buf[m * K + k] = g[k] / (1.0f + std::exp(-g[k])) * g[K + k];
    }
    return buf;
  }
  // kRmsNorm: out = x / sqrt(mean(x^2) + eps) * weight, as tensor-core's fast.rmsNorm.
  float* wf = tls_norm_w.get(K);
  for (int64_t k = 0; k < K; ++k) wf[k] = tl::load_f32(f.norm_weight.data, f.norm_weight.dtype, k * f.norm_weight.strides[0]);
  for (int64_t m = 0; m < M; ++m) {
    const float* row = xf + m * K;
#ifdef TL_X86_SIMD
    if (simd) {
      const float scale = static_cast<float>(1.0 / std::sqrt(sum_squares_avx2(row, K) / K + f.eps));
      scale_mul_avx2(row, scale, wf, K, buf + m * K);
      continue;
    }
#endif
    const float scale = static_cast<float>(1.0 / std::sqrt(sum_squares_scalar(row, K) / K + f.eps));
    for (int64_t k = 0; k < K; ++k) buf[m * K + k] = row[k] * scale * wf[k];
  }
  return buf;
}


bool LinearArgs::read(const Napi::CallbackInfo& info, const char* op) {
  Napi::Env env = info.Env();
  tl::TensorRef t[3];
  if (!tensor_args(info, op, 0, t)) return false;
  x = t[0], weight = t[1], out = t[2];
  fusion_error = parse_fusion(info, 3, fusion);
  if (env.IsExceptionPending()) return false;
  if (x.ndim() >= 1 && out.ndim() >= 1) {
    const int64_t xk = x.shape.back();
    K = fusion.prologue == kSwiglu ? xk / 2 : xk;
    M = xk == 0 ? 0 : x.numel() / xk;
    N = out.shape.back();
  }
  return true;
}

const char* LinearArgs::check() const {
  if (fusion_error) return fusion_error;
  if (x.ndim() < 1 || out.ndim() < 1) return "x and out must be at least 1-D";
  if (!is_float_dtype(x.dtype)) return "x must be float32, bfloat16 or float16";
  if (out.dtype != DType::F32 || !out.contiguous() || !x.contiguous()) return "x and out must be contiguous, out float32";
  if (fusion.prologue == kSwiglu && x.shape.back() % 2 != 0) return "the swiglu prologue needs x of an even last dimension";
  if (out.numel() != M * N) return "out must be [..., N] with x's rows";
  if (const char* err = check_fusion(fusion, M, K, N)) return err;
  if (fusion.residual.data && fusion.residual.data == out.data) return "the residual must not be out";
  return nullptr;
}

std::string LinearArgs::describe(const char* weight_name) const {
  return "(x " + x.describe() + ", " + weight_name + " " + weight.describe() + ", out " + out.describe() + ")";
}

bool is_float_dtype(tl::DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }

const char* parse_fusion(const Napi::CallbackInfo& info, size_t first, Fusion& f) {
  Napi::Env env = info.Env();
  auto present = [&](size_t i) { return info.Length() > i && !info[i].IsUndefined() && !info[i].IsNull(); };
  if (present(first)) f.bias = tl::tensor_arg(info, first, "fusion");
  if (env.IsExceptionPending()) return "";
  if (present(first + 1)) f.residual = tl::tensor_arg(info, first + 1, "fusion");
  if (env.IsExceptionPending()) return "";
  if (present(first + 2)) f.prologue = info[first + 2].ToNumber().Int32Value();
  if (f.prologue == kRmsNorm) {
    f.norm_weight = tl::tensor_arg(info, first + 3, "fusion");
    if (env.IsExceptionPending()) return "";
    f.eps = info[first + 4].ToNumber().DoubleValue();
  }
  if (f.prologue < kNoPrologue || f.prologue > kSwiglu) return "unknown prologue";
  return nullptr;
}

const char* check_fusion(const Fusion& f, int64_t M, int64_t K, int64_t N) {
  if (f.bias.data && (f.bias.dtype != DType::F32 || f.bias.numel() != N || !f.bias.contiguous()))
    return "bias must be float32 [N], contiguous";
  if (f.residual.data && (f.residual.dtype != DType::F32 || f.residual.numel() != M * N || !f.residual.contiguous()))
    return "residual must be float32 with out's shape, contiguous";
  if (f.prologue == kRmsNorm &&
      (f.norm_weight.ndim() != 1 || f.norm_weight.shape[0] != K || !is_float_dtype(f.norm_weight.dtype)))
    return "the rmsNorm prologue needs a float weight [K]";
  return nullptr;
}

}  // namespace engine
