// The compute ceiling the GEMM benchmark is compared with, measured on this machine in the same run: every
// pool thread issues independent 8-wide FMAs on registers only, so memory never limits it.
#include <chrono>

#include "binding_util.h"
#include "thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tl {
namespace {

#if defined(__x86_64__)
// Ten independent accumulators: enough to hide the FMA latency (4 cycles) behind its two ports.
__attribute__((target("avx2,fma"))) float fma_loop(int64_t iterations) {
  __m256 acc[10];
  for (int i = 0; i < 10; ++i) acc[i] = _mm256_set1_ps(0.001f * i);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iterations; ++it)
    for (int i = 0; i < 10; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  __m256 s = acc[0];
  for (int i = 1; i < 10; ++i) s = _mm256_add_ps(s, acc[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}
constexpr int64_t kFlopsPerIteration = 10 * 8 * 2;
#endif

// peakGflops(): float32 FMA throughput of all pool threads in GFLOP/s (0 where there is no SIMD kernel).
Napi::Value PeakGflops(const Napi::CallbackInfo& info) {
#if defined(__x86_64__)
  if (!has_avx2_fma()) return Napi::Number::New(info.Env(), 0);
  const int threads = core_num_threads();
  const int64_t iterations = 20'000'000;
  volatile float sink = 0;
  auto t0 = std::chrono::steady_clock::now();
  parallel_for(threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sink = sink + fma_loop(iterations);
  });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Napi::Number::New(info.Env(), threads * iterations * kFlopsPerIteration / seconds / 1e9);
#else
  return Napi::Number::New(info.Env(), 0);
#endif
}
TL_EXPORT("peakGflops", PeakGflops);

}  // namespace
}  // namespace tl
