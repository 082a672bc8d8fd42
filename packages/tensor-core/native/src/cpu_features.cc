// The SIMD level of tensor-core's kernels (tl::simd_level(), extension.h) and what JavaScript sees of it:
// cpuFeatures() for tests and reports, setSimdLevel() for benchmarks that run the levels side by side in one
// process, chooseSimdLevel() to check the choice from the environment against made-up CPUs.
#include <atomic>
#include <utility>

#include "binding_util.h"

namespace tl {
namespace {

std::atomic<int32_t>& level_in_use() {
  static std::atomic<int32_t> level{static_cast<int32_t>(simd_choice().level)};
  return level;
}

// The flags as JavaScript names them.
constexpr std::pair<const char*, bool CpuFeatures::*> kFlags[] = {
    {"avx2", &CpuFeatures::avx2},         {"fma", &CpuFeatures::fma},
    {"f16c", &CpuFeatures::f16c},         {"avx512f", &CpuFeatures::avx512f},
    {"avx512bw", &CpuFeatures::avx512bw}, {"avx512vl", &CpuFeatures::avx512vl},
    {"avx512dq", &CpuFeatures::avx512dq}, {"avx512vnni", &CpuFeatures::avx512vnni},
    {"avx512bf16", &CpuFeatures::avx512bf16}, {"avxvnni", &CpuFeatures::avxvnni},
};

// cpuFeatures(): the CPU's features, `best` (the best level it has) and `level` (the one in use). `simd` (some
// SIMD level in use) is what callers read before there were levels.
Napi::Value CpuFeaturesBinding(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  for (const auto& [name, member] : kFlags) o.Set(name, cpu_features().*member);
  o.Set("best", simd_level_name(best_simd_level(cpu_features())));
  o.Set("level", simd_level_name(simd_level()));
  o.Set("simd", has_avx2_fma());
  return o;
}
TL_EXPORT("cpuFeatures", CpuFeaturesBinding);

// setSimdLevel(name): tensor-core's kernels use `name` from now on (other addons keep the level they chose).
Napi::Value SetSimdLevel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  SimdLevel level;
  if (!parse_simd_level(name, &level))
    return throw_range_error(env, "setSimdLevel: \"" + name + "\" is not a level (scalar, avx2 or avx512)");
  const std::string missing = missing_for_level(level, cpu_features());
  if (!missing.empty())
    return throw_range_error(env, "setSimdLevel: this CPU cannot run the " + name + " kernels (it lacks " + missing + ")");
  level_in_use().store(static_cast<int32_t>(level));
  return env.Undefined();
}
TL_EXPORT("setSimdLevel", SetSimdLevel);

// chooseSimdLevel(TINY_LLM_SIMD, TINY_LLM_NO_SIMD, features): { level, error } as the addon decides at load time
// for those values (undefined for unset) on a CPU with `features` (an object like cpuFeatures()' flags).
Napi::Value ChooseSimdLevel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[2].IsObject())
    return throw_type_error(env, "chooseSimdLevel: argument 2 must be an object of CPU features");
  auto text = [&](int i) { return info[i].IsString() ? info[i].As<Napi::String>().Utf8Value() : std::string(); };
  const std::string request = text(0), no_simd = text(1);
  Napi::Object flags = info[2].As<Napi::Object>();
  CpuFeatures f;
  for (const auto& [name, member] : kFlags) f.*member = flags.Get(name).ToBoolean().Value();
  const SimdChoice c = choose_simd_level(info[0].IsString() ? request.c_str() : nullptr,
                                         info[1].IsString() ? no_simd.c_str() : nullptr, f);
  Napi::Object o = Napi::Object::New(env);
  o.Set("level", simd_level_name(c.level));
  o.Set("error", c.error);
  return o;
}
TL_EXPORT("chooseSimdLevel", ChooseSimdLevel);

}  // namespace

SimdLevel core_simd_level() { return static_cast<SimdLevel>(level_in_use().load(std::memory_order_relaxed)); }

}  // namespace tl
