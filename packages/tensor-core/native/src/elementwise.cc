// Elementwise kernels: unary, binary and where, over strided (and broadcast, stride 0) views.
//
// Two paths. float32 operands take a float loop the compiler vectorises when the inner stride is 1.
// Every other dtype mix loads each element as double, computes, and stores with conversion: exact for
// int32/uint32 and correctly rounded for bf16/f16 outputs (tl::store_f64 rounds to nearest even).
#include <cmath>
#include <type_traits>

#include <tiny_llm/simd.h>

#include "binding_util.h"
#include "strided.h"

namespace tl {
namespace {

// The op codes match UNARY_OPS / BINARY_OPS in src/backend/backend.ts.
enum Unary { kCopy, kNeg, kExp, kLog, kSqrt, kRsqrt, kSigmoid, kSilu, kAbs, kTanh, kCos, kSin, kUnaryCount };
enum Binary { kAdd, kSub, kMul, kDiv, kMaximum, kMinimum, kPow, kEqual, kLess, kGreater, kBinaryCount };

// sigmoid and silu in forms that keep the far negative tail: 1 / (1 + exp(-x)) is fine for x >= 0, but
// x * sigmoid(x) for x << 0 must not become 0 * x when exp(-x) overflows, so it uses exp(x) / (1 + exp(x)).
// Below about -80, exp(x) is a float32 subnormal with few significant bits, so float32 results there are
// computed in double and rounded once.
template <typename T> inline T sigmoid(T x) {
  if (std::is_same<T, float>::value && x < T(-80)) return static_cast<T>(sigmoid<double>(x));
  if (x >= 0) return T(1) / (T(1) + std::exp(-x));
  T e = std::exp(x);
  return e / (T(1) + e);
}

template <typename T> inline T silu(T x) {
  if (std::is_same<T, float>::value && x < T(-80)) return static_cast<T>(x * sigmoid<double>(x));
  return x * sigmoid(x);
}

template <typename T> inline T apply_unary(int op, T x) {
  switch (op) {
    case kCopy: return x;
    case kNeg: return -x;
    case kExp: return std::exp(x);
    case kLog: return std::log(x);
    case kSqrt: return std::sqrt(x);
    case kRsqrt: return T(1) / std::sqrt(x);
    case kSigmoid: return sigmoid(x);
    case kSilu: return silu(x);
    case kAbs: return std::fabs(x);
    case kTanh: return std::tanh(x);
    case kCos: return std::cos(x);
    default: return std::sin(x);
  }
}

template <typename T> inline T apply_binary(int op, T a, T b) {
  switch (op) {
    case kAdd: return a + b;
    case kSub: return a - b;
    case kMul: return a * b;
    case kDiv: return a / b;
    // NaN propagates through maximum/minimum, as in numpy and MLX.
    case kMaximum: return (a != a || b != b) ? a + b : (a > b ? a : b);
    case kMinimum: return (a != a || b != b) ? a + b : (a < b ? a : b);
    case kPow: return std::pow(a, b);
    case kEqual: return a == b;
    case kLess: return a < b;
    default: return a > b;
  }
}

#ifdef TL_X86_SIMD
// exp, sigmoid and silu on contiguous float32, a vector at a time with the vector exp (tiny_llm/simd.h). Lanes where
// that exp is not valid (huge inputs, the far negative tail, NaN) are redone with the scalar formula.
template <class V, int Op> void exp_family(const float* x, float* out, int64_t n) {
  constexpr int L = V::kLanes;
  const typename V::T one = V::set1(1.f);
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const typename V::T v = V::load(x + i);
    const typename V::T arg = Op == kExp ? v : V::sub(V::zero(), v);  // exp(x), or exp(-x) for sigmoid
    const typename V::T e = simd::vexp<V>(arg);
    V::store(out + i, Op == kExp ? e : V::div(Op == kSilu ? v : one, V::add(one, e)));
    if (uint32_t bad = simd::vexp_invalid_lanes<V>(arg))
      for (int j = 0; j < L; ++j)
        if (bad & (1u << j)) out[i + j] = apply_unary<float>(Op, x[i + j]);
  }
  for (; i < n; ++i) out[i] = apply_unary<float>(Op, x[i]);
}
template <int Op> TL_AVX2 TL_FLATTEN void exp_family_avx2(const float* x, float* out, int64_t n) {
  exp_family<simd::Vec8, Op>(x, out, n);
}
template <int Op> TL_AVX512 TL_FLATTEN void exp_family_avx512(const float* x, float* out, int64_t n) {
  exp_family<simd::Vec16, Op>(x, out, n);
}
#endif

// The op is a template parameter in the float path so the switch leaves the inner loop.
template <int Op>
void unary_f32_span(const float* x, float* out, int64_t n, int64_t sx, int64_t so) {
#ifdef TL_X86_SIMD
  if constexpr (Op == kExp || Op == kSigmoid || Op == kSilu) {
    if (sx == 1 && so == 1 && has_avx512()) return exp_family_avx512<Op>(x, out, n);
    if (sx == 1 && so == 1 && has_avx2_fma()) return exp_family_avx2<Op>(x, out, n);
  }
#endif
  if (sx == 1 && so == 1) {
    for (int64_t i = 0; i < n; ++i) out[i] = apply_unary<float>(Op, x[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i * so] = apply_unary<float>(Op, x[i * sx]);
  }
}

template <int Op>
void binary_f32_span(const float* a, const float* b, float* out, int64_t n, int64_t sa, int64_t sb, int64_t so) {
  if (sa == 1 && sb == 1 && so == 1) {
    for (int64_t i = 0; i < n; ++i) out[i] = apply_binary<float>(Op, a[i], b[i]);
  } else if (sa == 1 && sb == 0 && so == 1) {  // tensor op scalar-like broadcast (bias rows, scales)
    const float bv = *b;
    for (int64_t i = 0; i < n; ++i) out[i] = apply_binary<float>(Op, a[i], bv);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i * so] = apply_binary<float>(Op, a[i * sa], b[i * sb]);
  }
}

using UnarySpan = void (*)(const float*, float*, int64_t, int64_t, int64_t);
using BinarySpan = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t);

template <int... Ops> constexpr std::array<UnarySpan, sizeof...(Ops)> unary_table(std::integer_sequence<int, Ops...>) {
  return {&unary_f32_span<Ops>...};
}
template <int... Ops> constexpr std::array<BinarySpan, sizeof...(Ops)> binary_table(std::integer_sequence<int, Ops...>) {
  return {&binary_f32_span<Ops>...};
}
constexpr auto kUnaryF32 = unary_table(std::make_integer_sequence<int, kUnaryCount>{});
constexpr auto kBinaryF32 = binary_table(std::make_integer_sequence<int, kBinaryCount>{});

bool shapes_match(Napi::Env env, const char* op, const TensorRef& x, const TensorRef& out) {
  if (same_shape(x, out)) return true;
  throw_range_error(env, std::string(op) + ": input " + x.describe() + " does not match output " + out.describe());
  return false;
}

// unary(op, x, out): out = op(x). With op = copy, this is also astype and the strided copy.
Napi::Value UnaryBinding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int op = info[0].As<Napi::Number>().Int32Value();
  TL_TENSOR_ARG(x, 1, "unary");
  TL_TENSOR_ARG(out, 2, "unary");
  if (op < 0 || op >= kUnaryCount) return throw_range_error(env, "unary: unknown op code " + std::to_string(op));
  if (!shapes_match(env, "unary", x, out)) return env.Undefined();
  auto layout = merge_layout<2>(x.shape, {&x.strides, &out.strides});

  if (x.dtype == DType::F32 && out.dtype == DType::F32) {
    const float* xp = x.ptr<float>();
    float* op_ = out.ptr<float>();
    UnarySpan span = kUnaryF32[op];
    for_each_span(layout, [&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
      span(xp + off[0], op_ + off[1], n, st[0], st[1]);
    });
  } else if (op == kCopy && x.dtype == out.dtype) {
    // A same-dtype copy (contiguous(), concat): move bytes, no conversion.
    const int64_t es = dtype_size(x.dtype);
    const auto* xp = static_cast<const uint8_t*>(x.data);
    auto* outp = static_cast<uint8_t*>(out.data);
    for_each_span(layout, [&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
      if (st[0] == 1 && st[1] == 1) {
        std::memcpy(outp + off[1] * es, xp + off[0] * es, n * es);
      } else {
        for (int64_t i = 0; i < n; ++i)
          std::memcpy(outp + (off[1] + i * st[1]) * es, xp + (off[0] + i * st[0]) * es, es);
      }
    });
  } else {
    for_each_span(layout, [&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
      for (int64_t i = 0; i < n; ++i)
        store_f64(out.data, out.dtype, off[1] + i * st[1], apply_unary<double>(op, load_f64(x.data, x.dtype, off[0] + i * st[0])));
    });
  }
  return env.Undefined();
}
TL_EXPORT("unary", UnaryBinding);

// binary(op, a, b, out): out = a op b; a and b are already broadcast to out's shape.
Napi::Value BinaryBinding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int op = info[0].As<Napi::Number>().Int32Value();
  TL_TENSOR_ARG(a, 1, "binary");
  TL_TENSOR_ARG(b, 2, "binary");
  TL_TENSOR_ARG(out, 3, "binary");
  if (op < 0 || op >= kBinaryCount) return throw_range_error(env, "binary: unknown op code " + std::to_string(op));
  if (!shapes_match(env, "binary", a, out) || !shapes_match(env, "binary", b, out)) return env.Undefined();
  auto layout = merge_layout<3>(out.shape, {&a.strides, &b.strides, &out.strides});

  if (a.dtype == DType::F32 && b.dtype == DType::F32 && out.dtype == DType::F32) {
    const float* ap = a.ptr<float>();
    const float* bp = b.ptr<float>();
    float* outp = out.ptr<float>();
    BinarySpan span = kBinaryF32[op];
    for_each_span(layout, [&](const std::array<int64_t, 3>& off, int64_t n, const std::array<int64_t, 3>& st) {
      span(ap + off[0], bp + off[1], outp + off[2], n, st[0], st[1], st[2]);
    });
  } else {
    for_each_span(layout, [&](const std::array<int64_t, 3>& off, int64_t n, const std::array<int64_t, 3>& st) {
      for (int64_t i = 0; i < n; ++i) {
        double av = load_f64(a.data, a.dtype, off[0] + i * st[0]);
        double bv = load_f64(b.data, b.dtype, off[1] + i * st[1]);
        store_f64(out.data, out.dtype, off[2] + i * st[2], apply_binary<double>(op, av, bv));
      }
    });
  }
  return env.Undefined();
}
TL_EXPORT("binary", BinaryBinding);

// where(cond, a, b, out): out = cond != 0 ? a : b.
Napi::Value WhereBinding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TL_TENSOR_ARG(cond, 0, "where");
  TL_TENSOR_ARG(a, 1, "where");
  TL_TENSOR_ARG(b, 2, "where");
  TL_TENSOR_ARG(out, 3, "where");
  if (!shapes_match(env, "where", cond, out) || !shapes_match(env, "where", a, out) || !shapes_match(env, "where", b, out))
    return env.Undefined();
  auto layout = merge_layout<4>(out.shape, {&cond.strides, &a.strides, &b.strides, &out.strides});
  for_each_span(layout, [&](const std::array<int64_t, 4>& off, int64_t n, const std::array<int64_t, 4>& st) {
    for (int64_t i = 0; i < n; ++i) {
      bool c = load_f64(cond.data, cond.dtype, off[0] + i * st[0]) != 0;
      double v = c ? load_f64(a.data, a.dtype, off[1] + i * st[1]) : load_f64(b.data, b.dtype, off[2] + i * st[2]);
      store_f64(out.data, out.dtype, off[3] + i * st[3], v);
    }
  });
  return env.Undefined();
}
TL_EXPORT("where", WhereBinding);

}  // namespace
}  // namespace tl
