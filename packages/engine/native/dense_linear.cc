// A product with a dense weight in its checkpoint's layout (float32, bf16, f16), with the same fused work as the
// quantized ones (native/fusion.cc): the output head of a model whose embedding table is tied, since the token
// lookup reads that table by rows. (The layers' weights are packed into panels at load: native/dense_panels.cc.)
// The fusion exists because a decode step of Qwen2-0.5B in bf16 ran 170 small ops around its 97 matmuls (RMSNorms,
// bias and residual adds, silu and mul), each a trip through JavaScript, an allocation and a wake-up of the pool.
//
//   denseLinear(x, wT, out[, bias, residual, prologue, normWeight, eps])
//     x    [..., K] float32 / bfloat16 / float16, contiguous ([..., 2K] with the swiglu prologue)
//     wT   [K, N]: the weight W [N, K] as its transposed view (strides {1, K}), any float dtype: what tensor-core's
//          GEMM is tuned for (a linear layer's layout); any strides it accepts
//     out  [..., N] float32, contiguous, as many rows as x; not the residual (the GEMM writes it first)
//   out = prologue(x) @ wT + bias + residual
//
// The matmul itself is tensor-core's (tl::matmul through the SDK: its streaming GEMV for decode, its packed
// GEMM for prefill); the prologue is computed into a scratch before it, the epilogue applied to out after it.
#include <string>

#include "common.h"

namespace engine {

Napi::Value DenseLinear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "denseLinear";
  LinearArgs args;
  if (!args.read(info, op)) return env.Undefined();
  const auto fail = [&](const std::string& why) {
    Napi::TypeError::New(env, std::string(op) + ": " + why + " " + args.describe("wT")).ThrowAsJavaScriptException();
    return env.Undefined();
  };
  const tl::TensorRef &x = args.x, &wT = args.weight, &out = args.out;
  const Fusion& fusion = args.fusion;
  const int64_t M = args.M, K = args.K, N = args.N;
  if (wT.ndim() != 2 || !is_float_dtype(wT.dtype)) return fail("wT must be a 2-D float32, bfloat16 or float16 weight");
  if (const char* err = args.check()) return fail(err);
  if (wT.shape[0] != K) return fail("wT's rows do not match x's last dimension");
  if (wT.shape[1] != N) return fail("out's last dimension does not match wT's columns");
  if (M == 0 || N == 0) return env.Undefined();
  tl::TensorRef x2d;
  try {
    if (fusion.prologue == kNoPrologue) {
      x2d.data = x.data;
      x2d.dtype = x.dtype;
    } else {
      x2d.data = const_cast<float*>(prepare_x(x, M, K, fusion));
      x2d.dtype = tl::DType::F32;
    }
  } catch (const std::bad_alloc&) {
    Napi::Error::New(env, std::string(op) + ": out of memory for scratch buffers").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  x2d.shape = {M, K};
  x2d.strides = {K, 1};
  tl::TensorRef o2d;
  o2d.data = out.data;
  o2d.dtype = tl::DType::F32;
  o2d.shape = {M, N};
  o2d.strides = {N, 1};
  if (const char* err = tl::matmul(x2d, wT, o2d)) return fail(err);
  // The epilogue: a pass over out (N floats per row, against K * N multiply-adds).
  float* o = out.ptr<float>();
  const float* bias = fusion.bias.data ? fusion.bias.ptr<float>() : nullptr;
  const float* res = fusion.residual.data ? fusion.residual.ptr<float>() : nullptr;
  if (bias || res) {
    for (int64_t m = 0; m < M; ++m) {
      float* row = o + m * N;
      if (bias)
        for (int64_t n = 0; n < N; ++n) row[n] += bias[n];
      if (res)
        for (int64_t n = 0; n < N; ++n) row[n] += res[m * N + n];
    }
  }
  return env.Undefined();
}

}  // namespace engine
