// The compute ceiling the GEMM benchmark is compared with, measured on this machine in the same run: every
// pool thread issues independent FMAs of the level in use on registers only, so memory never limits it.
#include <chrono>

#include <tiny_llm/simd.h>

#include "binding_util.h"
#include "thread_pool.h"

namespace tl {
namespace {

#ifdef TL_X86_SIMD
// Ten independent accumulators: enough to hide the FMA latency (4 cycles) behind two ports.
template <class V> float fma_loop(int64_t iterations) {
  typename V::T acc[10];
  for (int i = 0; i < 10; ++i) acc[i] = V::set1(0.001f * i);
  const typename V::T a = V::set1(0.999999f), b = V::set1(1e-7f);
  for (int64_t it = 0; it < iterations; ++it)
#pragma GCC unroll 10
    for (int i = 0; i < 10; ++i) acc[i] = V::fmadd(acc[i], a, b);
  typename V::T s = acc[0];
  for (int i = 1; i < 10; ++i) s = V::add(s, acc[i]);
  return V::hsum(s);
}
TL_AVX2 TL_FLATTEN float fma_loop_avx2(int64_t iterations) { return fma_loop<simd::Vec8>(iterations); }
TL_AVX512 TL_FLATTEN float fma_loop_avx512(int64_t iterations) { return fma_loop<simd::Vec16>(iterations); }
#endif

// peakGflops(): float32 FMA throughput of all pool threads in GFLOP/s at the SIMD level in use (0 at scalar).
Napi::Value PeakGflops(const Napi::CallbackInfo& info) {
#ifdef TL_X86_SIMD
  if (!has_avx2_fma()) return Napi::Number::New(info.Env(), 0);
  const bool wide = has_avx512();
  const int threads = core_num_threads();
  const int64_t iterations = wide ? 10'000'000 : 20'000'000;
  const double flops_per_iteration = 10 * 2 * (wide ? 16 : 8);
  volatile float sink = 0;
  auto t0 = std::chrono::steady_clock::now();
  parallel_for(threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sink = sink + (wide ? fma_loop_avx512(iterations) : fma_loop_avx2(iterations));
  });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Napi::Number::New(info.Env(), threads * iterations * flops_per_iteration / seconds / 1e9);
#else
  return Napi::Number::New(info.Env(), 0);
#endif
}
TL_EXPORT("peakGflops", PeakGflops);

}  // namespace
}  // namespace tl
