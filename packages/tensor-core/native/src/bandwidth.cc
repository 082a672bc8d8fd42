// native.readBandwidth(typedArray, passes): the memory read bandwidth this process can reach, in GB/s.
//
// Reads the whole buffer `passes` times with every pool thread (each thread one contiguous share per pass) and
// returns bytes * passes / seconds / 1e9, timed with steady_clock inside C++ so the JS call cost is not counted.
// It is the ceiling the GEMV benchmarks are compared against, so it reads the way those kernels do: plain
// 32-byte loads, several independent accumulators, no non-temporal tricks. No warm-up pass is done here: the
// caller touches the buffer first (fresh pages fault on first touch) and may call twice.
#include <chrono>
#include <cstdint>

#include "thread_pool.h"
#include "registry.h"
#include "thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tl {
namespace {

// Integer adds rather than float adds: any bit pattern is fine, and no denormal or NaN slows anything down.
// Four accumulators so the adds are not one serial dependency chain.
uint64_t sum_scalar(const uint8_t* p, int64_t bytes) {
  const uint64_t* q = reinterpret_cast<const uint64_t*>(p);
  int64_t n = bytes / 8;
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += q[i];
    s1 += q[i + 1];
    s2 += q[i + 2];
    s3 += q[i + 3];
  }
  for (; i < n; ++i) s0 += q[i];
  for (int64_t b = n * 8; b < bytes; ++b) s1 += p[b];
  return s0 + s1 + s2 + s3;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) uint64_t sum_avx2(const uint8_t* p, int64_t bytes) {
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 128 <= bytes; i += 128) {  // two cache lines per iteration
    s0 = _mm256_add_epi64(s0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    s1 = _mm256_add_epi64(s1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    s2 = _mm256_add_epi64(s2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    s3 = _mm256_add_epi64(s3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  __m256i s = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + sum_scalar(p + i, bytes - i);
}
#endif

uint64_t sum_bytes(const uint8_t* p, int64_t bytes) {
#if defined(__x86_64__)
  if (has_avx2_fma()) return sum_avx2(p, bytes);
#endif
  return sum_scalar(p, bytes);
}

// Where the sums go, so the compiler cannot drop the reads.
volatile uint64_t g_sink = 0;

Napi::Value ReadBandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray()) {
    Napi::TypeError::New(env, "readBandwidth: argument 0 must be a typed array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::TypedArray arr = info[0].As<Napi::TypedArray>();
  int64_t passes = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int64Value() : 1;
  if (passes < 1) passes = 1;
  const uint8_t* data = static_cast<const uint8_t*>(arr.ArrayBuffer().Data()) + arr.ByteOffset();
  const int64_t bytes = static_cast<int64_t>(arr.ByteLength());
  if (bytes == 0) return Napi::Number::New(env, 0);

  // One chunk per thread, split on 4 KiB boundaries so no two threads share a page (or a cache line).
  const int64_t threads = num_threads();
  const int64_t pages = (bytes + 4095) / 4096;
  uint64_t total = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t pass = 0; pass < passes; ++pass) {
    uint64_t partial[256] = {};
    const int64_t chunks = threads < 256 ? threads : 256;
    parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        int64_t begin = pages * c / chunks * 4096, end = pages * (c + 1) / chunks * 4096;
        if (end > bytes) end = bytes;
        if (begin < end) partial[c] = sum_bytes(data + begin, end - begin);
      }
    });
    for (int64_t c = 0; c < chunks; ++c) total += partial[c];
  }
  auto t1 = std::chrono::steady_clock::now();
  g_sink = g_sink + total;
  double seconds = std::chrono::duration<double>(t1 - t0).count();
  return Napi::Number::New(env, static_cast<double>(bytes) * static_cast<double>(passes) / seconds / 1e9);
}
TL_EXPORT("readBandwidth", ReadBandwidth);

}  // namespace
}  // namespace tl
