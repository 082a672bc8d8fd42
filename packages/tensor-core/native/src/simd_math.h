// Vectorised exp for the float32 kernels (exp, sigmoid, silu, softmax), 8 lanes with AVX2/FMA.
//
// Why: libm's expf is scalar, and in attention's softmax and the MLP's SiLU it was the cost of the kernel.
// The method is Cephes' (as in avx_mathfun): exp(x) = 2^n * exp(r) with n = round(x / ln 2) and
// |r| <= ln2 / 2, exp(r) by a degree-5 polynomial; about 1 ulp. It is only valid where neither the result
// nor 2^n overflows or goes subnormal, so callers hand lanes outside [kExpLow, kExpHigh] (and NaN) to
// std::exp instead: the far negative tail of SiLU must stay a tiny number, not 0.
#pragma once

#include <cmath>
#include <cstdint>

#include "thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tl {

constexpr float kExpLow = -87.0f;
constexpr float kExpHigh = 88.0f;

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
  const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln2, in two steps so the rounding of n * ln2 does not eat r's low bits.
  __m256 r = _mm256_fnmadd_ps(n, ln2_hi, x);
  r = _mm256_fnmadd_ps(n, ln2_lo, r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n: n + 127 placed in the exponent field.
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// Lanes where exp8 is not valid (outside [kExpLow, kExpHigh], or NaN), as a bit mask.
__attribute__((target("avx2,fma"))) inline int exp8_invalid_lanes(__m256 x) {
  __m256 ok = _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(kExpLow), _CMP_GE_OQ),
                            _mm256_cmp_ps(x, _mm256_set1_ps(kExpHigh), _CMP_LE_OQ));
  return ~_mm256_movemask_ps(ok) & 0xff;
}
#endif

}  // namespace tl
