// The week 2 addon's bindings: JavaScript calls these with tensor views (tensor.native()), they check every
// argument and call the kernels of kernels.h. Given, not part of a chapter: the kernels are the chapters' work.
#include "kernels.h"

#include <string>

namespace {

using tl::DType;

bool is_float(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }

// Throws `why` as a TypeError naming the op; returns undefined for the binding to return.
Napi::Value fail(Napi::Env env, const char* op, const std::string& why) {
  Napi::TypeError::New(env, std::string(op) + ": " + why).ThrowAsJavaScriptException();
  return env.Undefined();
}

// quantizedMatmul(x [M, K], w [N, K*bits/32], scales [N, K/G], biases [N, K/G], out [M, N], groupSize, bits)
Napi::Value QuantizedMatmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "quantizedMatmul";
  tl::TensorRef t[5];
  for (int i = 0; i < 5; ++i) {
    t[i] = tl::tensor_arg(info, i, op);
    if (env.IsExceptionPending()) return env.Undefined();
  }
  const tl::TensorRef &x = t[0], &w = t[1], &scales = t[2], &biases = t[3], &out = t[4];
  const int G = info[5].ToNumber().Int32Value(), bits = info[6].ToNumber().Int32Value();
  const std::string shapes = " (x " + x.describe() + ", w " + w.describe() + ", scales " + scales.describe() + ", out " +
                             out.describe() + "; " + std::to_string(bits) + "-bit, group size " + std::to_string(G) + ")";
  if (!(bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8) || !(G == 32 || G == 64 || G == 128))
    return fail(env, op, "unsupported bits or group size" + shapes);
  if (x.ndim() != 2 || w.ndim() != 2 || scales.ndim() != 2 || biases.ndim() != 2 || out.ndim() != 2)
    return fail(env, op, "x, w, scales, biases and out must be 2-D" + shapes);
  if (!is_float(x.dtype) || w.dtype != DType::U32 || !is_float(scales.dtype) || biases.dtype != scales.dtype || out.dtype != DType::F32)
    return fail(env, op, "expected float x, uint32 w, float scales and biases of one dtype, float32 out" + shapes);
  const int64_t M = x.shape[0], K = x.shape[1], N = w.shape[0];
  if (w.shape[1] * 32 != K * bits || K % G != 0 || scales.shape[0] != N || scales.shape[1] != K / G ||
      biases.shape != scales.shape || out.shape[0] != M || out.shape[1] != N)
    return fail(env, op, "shapes do not fit x [M, K], w [N, K*bits/32], scales [N, K/G], out [M, N]" + shapes);
  if (!x.contiguous() || !w.contiguous() || !scales.contiguous() || !biases.contiguous() || !out.contiguous())
    return fail(env, op, "every operand must be contiguous" + shapes);
  const week2::QuantizedMatmulArgs args{x.data, x.dtype, w.ptr<uint32_t>(), scales.data, biases.data, scales.dtype, M, N, K, G, bits,
                                        out.ptr<float>()};
  return tl::run_kernel(env, op, [&] { week2::quantized_matmul(args); });
}

// flashAttention(q [B, Hq, L, D], k [B, Hkv, S, D], v, mask [B|1, Hq|1, L, S] or null, out [B, Hq, L, D], scale, causal)
Napi::Value FlashAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "flashAttention";
  tl::TensorRef q = tl::tensor_arg(info, 0, op);
  if (env.IsExceptionPending()) return env.Undefined();
  tl::TensorRef k = tl::tensor_arg(info, 1, op);
  if (env.IsExceptionPending()) return env.Undefined();
  tl::TensorRef v = tl::tensor_arg(info, 2, op);
  if (env.IsExceptionPending()) return env.Undefined();
  tl::TensorRef mask;
  const bool has_mask = !info[3].IsNull() && !info[3].IsUndefined();
  if (has_mask) {
    mask = tl::tensor_arg(info, 3, op);
    if (env.IsExceptionPending()) return env.Undefined();
  }
  tl::TensorRef out = tl::tensor_arg(info, 4, op);
  if (env.IsExceptionPending()) return env.Undefined();
  const float scale = info[5].ToNumber().FloatValue();
  const bool causal = info[6].ToBoolean().Value();
  const std::string shapes = " (q " + q.describe() + ", k " + k.describe() + ", v " + v.describe() + ", out " + out.describe() + ")";
  if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4 || out.ndim() != 4) return fail(env, op, "q, k, v and out must be 4-D" + shapes);
  const int64_t B = q.shape[0], Hq = q.shape[1], L = q.shape[2], D = q.shape[3], Hkv = k.shape[1], S = k.shape[2];
  if (k.shape[0] != B || k.shape[3] != D || v.shape != k.shape || out.shape != q.shape || Hkv == 0 || Hq % Hkv != 0)
    return fail(env, op, "expected q [B, Hq, L, D], k and v [B, Hkv, S, D] with Hq a multiple of Hkv, out like q" + shapes);
  if ((q.dtype != DType::F32 && q.dtype != DType::BF16) || k.dtype != q.dtype || v.dtype != q.dtype || out.dtype != DType::F32)
    return fail(env, op, "q, k and v must share a dtype (float32 or bfloat16); out must be float32" + shapes);
  if (!q.contiguous() || !k.contiguous() || !v.contiguous() || !out.contiguous()) return fail(env, op, "q, k, v and out must be contiguous" + shapes);
  week2::FlashAttentionArgs args{q.data, k.data, v.data, q.dtype, nullptr, {0, 0, 0, 0}, causal, B, Hq, Hkv, L, S, D, scale, out.ptr<float>()};
  if (has_mask) {
    // The mask is read through strides over [B, Hq, L, S], with stride 0 on the dimensions it broadcasts.
    if (mask.dtype != DType::F32 || mask.ndim() != 4) return fail(env, op, "the mask must be float32 [B|1, Hq|1, L, S], got " + mask.describe());
    const int64_t full[4] = {B, Hq, L, S};
    for (int d = 0; d < 4; ++d) {
      if (mask.shape[d] != full[d] && mask.shape[d] != 1) return fail(env, op, "the mask " + mask.describe() + " does not broadcast to [B, Hq, L, S]" + shapes);
      args.mask_strides[d] = mask.shape[d] == 1 ? 0 : mask.strides[d];
    }
    args.mask = mask.ptr<float>();
  }
  return tl::run_kernel(env, op, [&] { week2::flash_attention(args); });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports["connect"] = Napi::Function::New(env, tl::connect_addon);
  exports["quantizedMatmul"] = Napi::Function::New(env, QuantizedMatmul);
  exports["flashAttention"] = Napi::Function::New(env, FlashAttention);
  return exports;
}

}  // namespace

NODE_API_MODULE(week2_kernels, Init)
