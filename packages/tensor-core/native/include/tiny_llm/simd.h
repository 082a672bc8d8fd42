// AVX2 helpers shared by tensor-core's kernels and extension kernels (packages/reference/native): the target
// attribute the kernels are compiled with, a horizontal sum and an in-register 8x8 transpose.
//
// Kernels marked TL_AVX2 are compiled for AVX2/FMA whatever the build flags, and must only be called when
// tl::has_avx2_fma() (extension.h) says the CPU has them. f16c is part of the target only so that float16 loads
// compile; they are reached only when tl::has_f16c().
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>
#define TL_X86_SIMD 1
#define TL_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace tl::simd {

// The sum of the 8 lanes.
TL_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// In-register 8x8 transpose: r[i] holds row i on entry and column i on exit.
TL_AVX2 inline void transpose8(__m256 r[8]) {
  __m256 t[8], s[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    s[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x31);
  }
}

}  // namespace tl::simd
#endif
