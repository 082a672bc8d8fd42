// An example extension kernel, built as its own addon with only the SDK header: y = alpha * x + beta.
// It is what a week package's kernel looks like, and test/sdk.test.ts checks it against a plain loop.
#include <tiny_llm/extension.h>

namespace {

Napi::Value Connect(const Napi::CallbackInfo& info) {
  tl::sdk::connect(info.Env(), info[0]);
  return info.Env().Undefined();
}

// scaleShiftInto(x, out, alpha, beta): x and out are contiguous float32 views of the same size.
Napi::Value ScaleShiftInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  tl::TensorRef x = tl::tensor_arg(info, 0, "scaleShiftInto");
  if (env.IsExceptionPending()) return env.Undefined();
  tl::TensorRef out = tl::tensor_arg(info, 1, "scaleShiftInto");
  if (env.IsExceptionPending()) return env.Undefined();
  if (x.dtype != tl::DType::F32 || out.dtype != tl::DType::F32 || x.numel() != out.numel()) {
    Napi::TypeError::New(env, "scaleShiftInto: expected float32 x and out of one size, got x " + x.describe() +
                                  " and out " + out.describe())
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!tl::require_contiguous(env, x, "scaleShiftInto", "x") ||
      !tl::require_contiguous(env, out, "scaleShiftInto", "out"))
    return env.Undefined();
  float alpha = info[2].As<Napi::Number>().FloatValue();
  float beta = info[3].As<Napi::Number>().FloatValue();
  const float* src = x.ptr<float>();
  float* dst = out.ptr<float>();
  tl::parallel_for(x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) dst[i] = alpha * src[i] + beta;
  });
  return env.Undefined();
}

Napi::Value NumThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), tl::num_threads()); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports["connect"] = Napi::Function::New(env, Connect);
  exports["scaleShiftInto"] = Napi::Function::New(env, ScaleShiftInto);
  exports["numThreads"] = Napi::Function::New(env, NumThreads);
  return exports;
}

}  // namespace

NODE_API_MODULE(sdk_example, Init)
