// Kernels over the last axis of a view: reductions, softmax, prefix sums and sorting.
// The ops layer moves the axis it reduces to the end with a transposed view, so these kernels need only
// the last axis (with any stride) and write a contiguous output.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include <tiny_llm/simd.h>

#include "binding_util.h"
#include "strided.h"

namespace tl {
namespace {

enum Reduce { kSum, kMax, kMin, kArgmax, kLogSumExp, kReduceCount };  // REDUCE_OPS in backend.ts

// Sums accumulate in double: exact for integer tensors and free of the drift of long float32 sums.
// `at(i)` loads element i of the row as a double; the caller picks a plain load for contiguous float32
// rows (the LM head's argmax over 150k logits runs every token) and a dtype-dispatching one otherwise.
template <typename Load>
double reduce_row(int op, const Load& at, int64_t n) {
  switch (op) {
    case kSum: {
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += at(i);
      return s;
    }
    case kMax:
    case kMin: {
      double best = at(0);
      for (int64_t i = 1; i < n; ++i) {
        double v = at(i);
        if (v != v) return v;  // NaN wins, as in numpy
        if (op == kMax ? v > best : v < best) best = v;
      }
      return best;
    }
    case kArgmax: {
      int64_t arg = 0;
      double best = at(0);
      for (int64_t i = 1; i < n; ++i) {
        double v = at(i);
        if (v > best || (v != v && best == best)) {
          best = v;
          arg = i;
        }
      }
      return static_cast<double>(arg);
    }
    default: {  // logsumexp, shifted by the max so that exp never overflows
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t i = 0; i < n; ++i) m = std::max(m, at(i));
      if (std::isinf(m)) return m;
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += std::exp(at(i) - m);
      return m + std::log(s);
    }
  }
}

#ifdef TL_X86_SIMD
// argmax of a contiguous float32 row, a vector at a time: the greedy step's argmax over the LM head's 150k logits
// took 0.4-0.5 ms per token in reduce_row (a double conversion and a data-dependent branch per element); two
// vector passes take ~0.03 ms. Pass 1 finds the largest value and whether any NaN is present (numpy's argmax
// returns the first NaN); pass 2 the first index holding it, so ties go to the first, as in reduce_row.
template <class V> int64_t argmax_row_f32(const float* x, int64_t n) {
  constexpr int L = V::kLanes;
  typename V::T vmax = V::set1(-std::numeric_limits<float>::infinity());
  uint32_t nan_lanes = 0;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const typename V::T v = V::load(x + i);
    vmax = V::max(v, vmax);
    nan_lanes |= V::template cmp<_CMP_UNORD_Q>(v, v);
  }
  float best = V::hmax(vmax);
  bool any_nan = nan_lanes != 0;
  for (int64_t j = i; j < n; ++j) {
    any_nan |= x[j] != x[j];
    best = std::max(best, x[j]);
  }
  if (any_nan) {
    for (int64_t j = 0; j < n; ++j)
      if (x[j] != x[j]) return j;
  }
  const typename V::T target = V::set1(best);
  for (i = 0; i + L <= n; i += L) {
    if (const uint32_t hits = V::template cmp<_CMP_EQ_OQ>(V::load(x + i), target)) return i + __builtin_ctz(hits);
  }
  for (; i < n; ++i)
    if (x[i] == best) return i;
  return 0;  // not reached: best is one of the row's values
}
TL_AVX2 TL_FLATTEN int64_t argmax_row_f32_avx2(const float* x, int64_t n) { return argmax_row_f32<simd::Vec8>(x, n); }
TL_AVX512 TL_FLATTEN int64_t argmax_row_f32_avx512(const float* x, int64_t n) {
  return argmax_row_f32<simd::Vec16>(x, n);
}
#endif

// reduce(op, x, out): out[row] = op over x's last axis. Empty rows: sum 0, others are errors upstream.
Napi::Value ReduceBinding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int op = info[0].As<Napi::Number>().Int32Value();
  TL_TENSOR_ARG(x, 1, "reduce");
  TL_TENSOR_ARG(out, 2, "reduce");
  if (op < 0 || op >= kReduceCount) return throw_range_error(env, "reduce: unknown op code " + std::to_string(op));
  if (x.ndim() == 0 || !out.contiguous() || out.numel() * x.shape.back() != x.numel())
    return throw_range_error(env, "reduce: output " + out.describe() + " does not fit input " + x.describe());
  const int64_t n = x.shape.back(), stride = x.strides.back();
  const bool f32_rows = x.dtype == DType::F32 && stride == 1;
  for_each_last_axis_row(x, rows_grain(n), [&](int64_t row, int64_t off) {
    double r = 0;
    if (n > 0 && f32_rows) {
      const float* src = x.ptr<float>() + off;
#ifdef TL_X86_SIMD
      if (op == kArgmax && has_avx2_fma()) {
        const int64_t arg = has_avx512() ? argmax_row_f32_avx512(src, n) : argmax_row_f32_avx2(src, n);
        store_f64(out.data, out.dtype, row, static_cast<double>(arg));
        return;
      }
#endif
      r = reduce_row(op, [src](int64_t i) { return static_cast<double>(src[i]); }, n);
    } else if (n > 0) {
      r = reduce_row(op, [&](int64_t i) { return load_f64(x.data, x.dtype, off + i * stride); }, n);
    }
    store_f64(out.data, out.dtype, row, r);
  });
  return env.Undefined();
}
TL_EXPORT("reduce", ReduceBinding);

// One softmax row, written into out_row (contiguous). The exponentials are stored in out_row first and
// scaled in place, so no scratch memory is needed. A row that is all -inf (fully masked) has no defined
// softmax; it becomes zeros rather than NaN.
template <typename Load>
void softmax_row(const Load& load, int64_t n, float* out_row) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, load(i));
  if (std::isinf(m) && m < 0) {
    std::fill(out_row, out_row + n, 0.f);
    return;
  }
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    out_row[i] = std::exp(load(i) - m);
    s += out_row[i];
  }
  const float inv = static_cast<float>(1.0 / s);
  for (int64_t i = 0; i < n; ++i) out_row[i] *= inv;
}

#ifdef TL_X86_SIMD
// softmax_row for a contiguous float32 row, a vector at a time, with the vector exp: the exponentials dominate
// softmax. The running max is V::max(x, max), which keeps the max when x is NaN, as std::max(m, x) does above.
template <class V> void softmax_row_f32(const float* x, int64_t n, float* out_row) {
  constexpr int L = V::kLanes;
  typename V::T vmax = V::set1(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + L <= n; i += L) vmax = V::max(V::load(x + i), vmax);
  float m = V::hmax(vmax);
  for (; i < n; ++i) m = std::max(m, x[i]);
  if (std::isinf(m) && m < 0) {
    std::fill(out_row, out_row + n, 0.f);
    return;
  }
  const typename V::T vm = V::set1(m);
  typename V::T vsum = V::zero();
  for (i = 0; i + L <= n; i += L) {
    const typename V::T arg = V::sub(V::load(x + i), vm);
    V::store(out_row + i, simd::vexp<V>(arg));
    if (simd::vexp_invalid_lanes<V>(arg)) {
      for (int j = 0; j < L; ++j) out_row[i + j] = std::exp(x[i + j] - m);  // the tail below e^-87, or -inf
    }
    vsum = V::add(vsum, V::load(out_row + i));
  }
  double s = V::hsum(vsum);
  for (; i < n; ++i) {
    out_row[i] = std::exp(x[i] - m);
    s += out_row[i];
  }
  const float inv = static_cast<float>(1.0 / s);
  for (i = 0; i + L <= n; i += L) V::store(out_row + i, V::mul(V::load(out_row + i), V::set1(inv)));
  for (; i < n; ++i) out_row[i] *= inv;
}
TL_AVX2 TL_FLATTEN void softmax_row_f32_avx2(const float* x, int64_t n, float* out) { softmax_row_f32<simd::Vec8>(x, n, out); }
TL_AVX512 TL_FLATTEN void softmax_row_f32_avx512(const float* x, int64_t n, float* out) {
  softmax_row_f32<simd::Vec16>(x, n, out);
}
#endif

// softmax(x, out): exp(x - max) / sum over the last axis, float32 math with a double sum; out is
// contiguous with x's shape. float32 outputs are written directly; other dtypes go through a row buffer.
Napi::Value SoftmaxBinding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TL_TENSOR_ARG(x, 0, "softmax");
  TL_TENSOR_ARG(out, 1, "softmax");
  if (x.ndim() == 0 || !same_shape(x, out) || !out.contiguous())
    return throw_range_error(env, "softmax: output " + out.describe() + " does not fit input " + x.describe());
  const int64_t n = x.shape.back(), stride = x.strides.back();
  const bool f32_rows = x.dtype == DType::F32 && stride == 1;
  for_each_last_axis_row(x, rows_grain(n), [&](int64_t row, int64_t off) {
    std::vector<float> scratch(out.dtype == DType::F32 ? 0 : n);
    float* dst = out.dtype == DType::F32 ? out.ptr<float>() + row * n : scratch.data();
    if (f32_rows) {
      const float* src = x.ptr<float>() + off;
#ifdef TL_X86_SIMD
      if (has_avx512())
        softmax_row_f32_avx512(src, n, dst);
      else if (has_avx2_fma())
        softmax_row_f32_avx2(src, n, dst);
      else
#endif
        softmax_row([src](int64_t i) { return src[i]; }, n, dst);
    } else {
      softmax_row([&](int64_t i) { return load_f32(x.data, x.dtype, off + i * stride); }, n, dst);
    }
    if (out.dtype != DType::F32)
      for (int64_t i = 0; i < n; ++i) store_f64(out.data, out.dtype, row * n + i, dst[i]);
  });
  return env.Undefined();
}
TL_EXPORT("softmax", SoftmaxBinding);

// cumsum(x, out): inclusive prefix sums over the last axis, accumulated in double.
Napi::Value CumsumBinding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TL_TENSOR_ARG(x, 0, "cumsum");
  TL_TENSOR_ARG(out, 1, "cumsum");
  if (x.ndim() == 0 || !same_shape(x, out) || !out.contiguous())
    return throw_range_error(env, "cumsum: output " + out.describe() + " does not fit input " + x.describe());
  const int64_t n = x.shape.back(), stride = x.strides.back();
  for_each_last_axis_row(x, rows_grain(n), [&](int64_t row, int64_t off) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) {
      s += load_f64(x.data, x.dtype, off + i * stride);
      store_f64(out.data, out.dtype, row * n + i, s);
    }
  });
  return env.Undefined();
}
TL_EXPORT("cumsum", CumsumBinding);

// argsort(x, out, descending): int32 indices that sort each row; stable, NaN last.
Napi::Value ArgsortBinding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TL_TENSOR_ARG(x, 0, "argsort");
  TL_TENSOR_ARG(out, 1, "argsort");
  bool descending = info[2].ToBoolean();
  if (x.ndim() == 0 || !same_shape(x, out) || !out.contiguous() || out.dtype != DType::I32)
    return throw_range_error(env, "argsort: output " + out.describe() + " does not fit input " + x.describe());
  const int64_t n = x.shape.back(), stride = x.strides.back();
  for_each_last_axis_row(x, rows_grain(n * 16), [&](int64_t row, int64_t off) {
    std::vector<double> v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = load_f64(x.data, x.dtype, off + i * stride);
    int32_t* idx = out.ptr<int32_t>() + row * n;
    std::iota(idx, idx + n, 0);
    std::stable_sort(idx, idx + n, [&](int32_t a, int32_t b) {
      double va = v[a], vb = v[b];
      if (va != va) return false;  // NaN sorts last either way
      if (vb != vb) return true;
      return descending ? va > vb : va < vb;
    });
  });
  return env.Undefined();
}
TL_EXPORT("argsort", ArgsortBinding);

}  // namespace
}  // namespace tl
