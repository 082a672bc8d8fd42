// Run-time CPU feature checks for the SIMD kernels.
//
// Why at run time: the addon is built for the baseline x86-64 ISA (never -march=native, a cached .node from
// another CPU would die with SIGILL), so AVX2/FMA kernels are compiled with __attribute__((target(...))) and
// only called when the CPU reports the features. TINY_LLM_NO_SIMD=1 forces the portable scalar path, so tests
// can cover it on a machine that has AVX2. The answers are computed once and cached in function-local statics.
#pragma once

#include <cstdlib>
#include <cstring>

namespace tl {

// TINY_LLM_NO_SIMD set to anything but "" or "0" disables every SIMD kernel.
inline bool simd_disabled_by_env() {
  const char* v = std::getenv("TINY_LLM_NO_SIMD");
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

// AVX2 + FMA: what the x86 kernels need (the 8-wide float FMA is the whole point of them).
inline bool has_avx2_fma() {
  static const bool ok = [] {
#if defined(__x86_64__) || defined(__i386__)
    if (simd_disabled_by_env()) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
  }();
  return ok;
}

// F16C (vcvtph2ps): float16 operands take the SIMD path only with it. Every AVX2 CPU made so far has it, but
// checking costs nothing.
inline bool has_f16c() {
  static const bool ok = [] {
#if defined(__x86_64__) || defined(__i386__)
    if (simd_disabled_by_env()) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("f16c") != 0;
#else
    return false;
#endif
  }();
  return ok;
}

}  // namespace tl
