// Fused kernels the engine uses on its hot path (ops/fast.ts). Each one equals its composed form.
#include <cmath>

#include "binding_util.h"
#include "strided.h"

namespace tl {
namespace {

// rmsNorm(x, weight, eps, out): out = x / sqrt(mean(x^2) + eps) * weight over the last axis.
// The mean of squares accumulates in float32 over a double, so wide bf16 rows with large values stay exact.
Napi::Value RmsNormBinding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TL_TENSOR_ARG(x, 0, "rmsNorm");
  TL_TENSOR_ARG(weight, 1, "rmsNorm");
  double eps = info[2].As<Napi::Number>().DoubleValue();
  TL_TENSOR_ARG(out, 3, "rmsNorm");
  if (x.ndim() == 0 || weight.ndim() != 1 || weight.shape[0] != x.shape.back() || !same_shape(x, out) || !out.contiguous())
    return throw_range_error(env, "rmsNorm: x " + x.describe() + ", weight " + weight.describe() + " and out " +
                                      out.describe() + " do not fit (weight must be [last dim of x])");
  const int64_t n = x.shape.back(), stride = x.strides.back();
  for_each_last_axis_row(x, rows_grain(n), [&](int64_t row, int64_t off) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) {
      double v = load_f32(x.data, x.dtype, off + i * stride);
      ss += v * v;
    }
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
    for (int64_t i = 0; i < n; ++i) {
      float v = load_f32(x.data, x.dtype, off + i * stride) * scale;
      store_f64(out.data, out.dtype, row * n + i, v * load_f32(weight.data, weight.dtype, i * weight.strides[0]));
    }
  });
  return env.Undefined();
}
TL_EXPORT("rmsNorm", RmsNormBinding);

// rope(x, cos, sin, positions, traditional, out): rotary embedding of x [B, L, H, D] at the absolute
// positions [B, L] (int32), with tables cos/sin [maxPositions, D/2] (float32, contiguous).
// Traditional rotates the pairs (2i, 2i+1); the default (Qwen2) rotates (i, i + D/2).
Napi::Value RopeBinding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TL_TENSOR_ARG(x, 0, "rope");
  TL_TENSOR_ARG(cos_t, 1, "rope");
  TL_TENSOR_ARG(sin_t, 2, "rope");
  TL_TENSOR_ARG(pos, 3, "rope");
  bool traditional = info[4].ToBoolean();
  TL_TENSOR_ARG(out, 5, "rope");
  if (x.ndim() != 4 || !same_shape(x, out) || !out.contiguous() || pos.dtype != DType::I32 || !pos.contiguous() ||
      pos.ndim() != 2 || pos.shape[0] != x.shape[0] || pos.shape[1] != x.shape[1] || cos_t.dtype != DType::F32 ||
      sin_t.dtype != DType::F32 || !cos_t.contiguous() || !sin_t.contiguous() || cos_t.ndim() != 2 ||
      cos_t.shape[1] * 2 != x.shape[3] || sin_t.shape != cos_t.shape)
    return throw_range_error(env, "rope: x " + x.describe() + ", tables " + cos_t.describe() + ", positions " +
                                      pos.describe() + " and out " + out.describe() + " do not fit");
  const int64_t B = x.shape[0], L = x.shape[1], H = x.shape[2], D = x.shape[3], half = D / 2;
  const int64_t max_pos = cos_t.shape[0];
  for (int64_t i = 0; i < B * L; ++i) {
    int32_t p = pos.ptr<int32_t>()[i];
    if (p < 0 || p >= max_pos)
      return throw_range_error(env, "rope: position " + std::to_string(p) + " is outside the table of " +
                                        std::to_string(max_pos) + " positions");
  }
  parallel_for(B * L * H, std::max<int64_t>(1, 2048 / D), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t h = r % H, l = (r / H) % L, b = r / (H * L);
      const float* c = cos_t.ptr<float>() + pos.ptr<int32_t>()[b * L + l] * half;
      const float* s = sin_t.ptr<float>() + pos.ptr<int32_t>()[b * L + l] * half;
      int64_t xo = b * x.strides[0] + l * x.strides[1] + h * x.strides[2];
      int64_t oo = r * D;
      for (int64_t i = 0; i < half; ++i) {
        int64_t i1 = traditional ? 2 * i : i, i2 = traditional ? 2 * i + 1 : i + half;
        float x1 = load_f32(x.data, x.dtype, xo + i1 * x.strides[3]);
        float x2 = load_f32(x.data, x.dtype, xo + i2 * x.strides[3]);
        store_f64(out.data, out.dtype, oo + i1, x1 * c[i] - x2 * s[i]);
        store_f64(out.data, out.dtype, oo + i2, x2 * c[i] + x1 * s[i]);
      }
    }
  });
  return env.Undefined();
}
TL_EXPORT("rope", RopeBinding);

}  // namespace
}  // namespace tl
