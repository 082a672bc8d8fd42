// The tensor-core addon: exports every binding that the kernel files registered (see registry.h).
#include "registry.h"
#include "thread_pool.h"

namespace {

Napi::Value SdkTableBinding(const Napi::CallbackInfo& info) {
  static tl::SdkTable table{tl::kSdkVersion, &tl::core_parallel_for, &tl::core_num_threads, &tl::core_matmul};
  return Napi::External<tl::SdkTable>::New(info.Env(), &table);
}
TL_EXPORT("sdkTable", SdkTableBinding);

Napi::Value NumThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), tl::core_num_threads());
}
TL_EXPORT("numThreads", NumThreads);

// The bytes from the start of an ArrayBuffer to its first address that is a multiple of `alignment`: where the
// CPU backend starts a tensor in the buffer it allocated (src/backend/cpu.ts).
Napi::Value BytesToAlignment(const Napi::CallbackInfo& info) {
  const auto address = reinterpret_cast<uintptr_t>(info[0].As<Napi::ArrayBuffer>().Data());
  const uintptr_t alignment = info[1].ToNumber().Uint32Value();
  return Napi::Number::New(info.Env(), static_cast<double>((alignment - address % alignment) % alignment));
}
TL_EXPORT("bytesToAlignment", BytesToAlignment);

// An empty call: what the bench uses to measure the cost of crossing from JavaScript into C++.
Napi::Value Noop(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }
TL_EXPORT("noop", Noop);

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // A TINY_LLM_SIMD the CPU can't honour stops the load here, rather than at the first illegal instruction.
  if (const std::string& error = tl::simd_choice().error; !error.empty()) {
    Napi::Error::New(env, "tensor-core: " + error).ThrowAsJavaScriptException();
    return exports;
  }
  for (auto& [name, fn] : tl::registered_bindings()) exports.Set(name, Napi::Function::New(env, fn, name));
  return exports;
}

}  // namespace

NODE_API_MODULE(tensor_core, Init)
