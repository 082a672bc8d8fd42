// What the engine's kernels (native/*.cc) share: the run-time SIMD choice, scratch buffers, the pool's task
// hand-out, and a few AVX2 helpers (hsum and transpose8 come from the SDK, tiny_llm/simd.h).
#pragma once

#include <tiny_llm/extension.h>
#include <tiny_llm/simd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

namespace engine {

// The run-time SIMD choice and scratch buffers come from the SDK (tiny_llm/extension.h).
using tl::has_avx2_fma;
using tl::has_f16c;
using Buffer = tl::ScratchBuffer;

// The SDK's task hand-out (tiny_llm/extension.h) on every thread of the pool: run_tasks deals tasks out one at a
// time, run_tasks_in_parts gives each thread a contiguous part first (for tasks that stream memory in order).
template <class Task> void run_tasks(int64_t n, const Task& task) { tl::run_tasks(n, tl::num_threads(), task); }
template <class Task> void run_tasks_in_parts(int64_t n, const Task& task) { tl::run_tasks_in_parts(n, tl::num_threads(), task); }

// Arguments first .. first + N - 1 of a binding, read as tensors into t; false, with a JavaScript exception
// pending that names op and the argument, when one is not a tensor.
template <int N> bool tensor_args(const Napi::CallbackInfo& info, const char* op, int first, tl::TensorRef (&t)[N]) {
  for (int i = 0; i < N; ++i) {
    t[i] = tl::tensor_arg(info, first + i, op);
    if (info.Env().IsExceptionPending()) return false;
  }
  return true;
}

#ifdef TL_X86_SIMD
using tl::simd::hsum;
using tl::simd::transpose8;

// exp(x) for the lanes of a Vec8 or Vec16: the SDK's vexp, with x clamped to the float range instead of its
// invalid lanes handed to std::exp. Call it from a TL_FLATTEN function of the width's target, which inlines it.
template <class V> inline typename V::T exp_simd(typename V::T x) {
  return tl::simd::vexp<V>(V::min(V::max(x, V::set1(-87.3f)), V::set1(88.0f)));
}

// 8 lanes of exp_simd: silu needs it for a few thousand values per call.
TL_AVX2 TL_FLATTEN inline __m256 exp_avx2(__m256 x) { return exp_simd<tl::simd::Vec8>(x); }

#endif

// ---- The work fused around a projection (native/fusion.cc) -----------------------------------------------------

enum Prologue { kNoPrologue = 0, kRmsNorm = 1, kSwiglu = 2 };

struct Fusion {
  int prologue = kNoPrologue;  // on x: none, rmsNorm(x) * norm_weight, or silu(x[:, :K]) * x[:, K:]
  tl::TensorRef norm_weight;   // kRmsNorm: [K], any float dtype
  double eps = 1e-6;
  tl::TensorRef bias;          // epilogue: float32 [N], or no data
  tl::TensorRef residual;      // epilogue: float32 [M, N], or no data
};

bool is_float_dtype(tl::DType d);

// Reads the optional trailing arguments (bias, residual, prologue, normWeight, eps) from info[first] on; returns
// nullptr, or what is wrong ("" when a JavaScript exception is already pending).
const char* parse_fusion(const Napi::CallbackInfo& info, size_t first, Fusion& f);

// Checks the fusion's tensors against the problem [M, K] x [K, N]; returns nullptr or what is wrong.
const char* check_fusion(const Fusion& f, int64_t M, int64_t K, int64_t N);

// The tensors and the fusion of a dense linear binding: x (argument 0), its weight (1, checked by the binding), out
// (2) and the fusion (from 3), with the checks both bindings make of x, out and the fusion.
struct LinearArgs {
  tl::TensorRef x, weight, out;
  Fusion fusion;
  const char* fusion_error = nullptr;
  int64_t M = 0;  // x's rows
  int64_t K = 0;  // the weight's input features: x's last dimension, or half of it with the swiglu prologue
  int64_t N = 0;  // the outputs: out's last dimension

  // Reads the arguments; false with a JavaScript exception pending.
  bool read(const Napi::CallbackInfo& info, const char* op);
  // What is wrong with x, out and the fusion, or nullptr.
  const char* check() const;
  // "(x ..., <weight_name> ..., out ...)", for messages.
  std::string describe(const char* weight_name) const;
};

// The x a kernel reads, as float32 [M, K]: x itself when it is float32 and there is no prologue, else a scratch
// of the calling thread (valid until its next call) holding x widened and transformed. With kSwiglu, x is [M, 2K].
const float* prepare_x(const tl::TensorRef& x, int64_t M, int64_t K, const Fusion& f);

// What is wrong with a row lookup (an embedding's: dequantizeRows, dequantizePanelRows, panelRows), or "": ids
// int32 (or uint32), contiguous, each in [0, rows); out float32, contiguous, K values per id. (A panel layout's rows
// past N are zeros: an id there is as wrong as one past the table, and `rows` counts the panels' rows.)
inline std::string check_lookup(const tl::TensorRef& ids, const tl::TensorRef& out, int64_t K, int64_t rows) {
  if ((ids.dtype != tl::DType::I32 && ids.dtype != tl::DType::U32) || !ids.contiguous()) return "ids must be contiguous int32";
  if (out.dtype != tl::DType::F32 || !out.contiguous() || out.numel() != ids.numel() * K)
    return "out must be contiguous float32 [..., K] with a row per id";
  const int32_t* id = static_cast<const int32_t*>(ids.data);
  for (int64_t i = 0; i < ids.numel(); ++i) {
    if (id[i] < 0 || id[i] >= rows) return "id " + std::to_string(id[i]) + " is outside the " + std::to_string(rows) + " rows";
  }
  return "";
}

// ---- The other bindings, registered by the module's Init (native/quantized_matmul.cc) ----------------------------

Napi::Value AttentionDecode(const Napi::CallbackInfo& info);       // native/attention_decode.cc
Napi::Value PagedAttentionDecode(const Napi::CallbackInfo& info);  // native/attention_decode.cc
Napi::Value PackPanels(const Napi::CallbackInfo& info);       // native/dense_panels.cc
Napi::Value PanelLinear(const Napi::CallbackInfo& info);      // native/dense_panels.cc
Napi::Value PanelRows(const Napi::CallbackInfo& info);        // native/dense_panels.cc
Napi::Value PackQuantizedPanels(const Napi::CallbackInfo& info);       // native/quantized_panels.cc
Napi::Value QuantizedPanelLinear(const Napi::CallbackInfo& info);      // native/quantized_panels.cc
Napi::Value DequantizePanelRows(const Napi::CallbackInfo& info);       // native/quantized_panels.cc
Napi::Value QuantizedPanelsSupported(const Napi::CallbackInfo& info);  // native/quantized_panels.cc

}  // namespace engine
