// Vectorised exp for the float32 kernels (exp, sigmoid, silu, softmax), written once for both vector widths
// (V = Vec8 or Vec16, tiny_llm/simd.h).
//
// Why: libm's expf is scalar, and in attention's softmax and the MLP's SiLU it was the cost of the kernel.
// The method is Cephes' (as in avx_mathfun): exp(x) = 2^n * exp(r) with n = round(x / ln 2) and
// |r| <= ln2 / 2, exp(r) by a degree-5 polynomial; about 1 ulp, and the same bits at every width. It is only
// valid where neither the result nor 2^n overflows or goes subnormal, so callers hand lanes outside
// [kExpLow, kExpHigh] (and NaN) to std::exp instead: the far negative tail of SiLU must stay a tiny number, not 0.
#pragma once

#include <cmath>
#include <cstdint>

#include <tiny_llm/simd.h>

#include "thread_pool.h"

namespace tl {

constexpr float kExpLow = -87.0f;
constexpr float kExpHigh = 88.0f;

#ifdef TL_X86_SIMD
template <class V> inline typename V::T vexp(typename V::T x) {
  const typename V::T n = V::round(V::mul(x, V::set1(1.44269504088896341f)));  // x / ln 2
  // r = x - n ln2, in two steps so the rounding of n * ln2 does not eat r's low bits.
  typename V::T r = V::fnmadd(n, V::set1(0.693359375f), x);
  r = V::fnmadd(n, V::set1(-2.12194440e-4f), r);
  typename V::T p = V::set1(1.9875691500e-4f);
  p = V::fmadd(p, r, V::set1(1.3981999507e-3f));
  p = V::fmadd(p, r, V::set1(8.3334519073e-3f));
  p = V::fmadd(p, r, V::set1(4.1665795894e-2f));
  p = V::fmadd(p, r, V::set1(1.6666665459e-1f));
  p = V::fmadd(p, r, V::set1(5.0000001201e-1f));
  p = V::fmadd(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
  return V::mul(p, V::pow2(n));
}

// Lanes where vexp is not valid (outside [kExpLow, kExpHigh], or NaN), as a bit mask.
template <class V> inline uint32_t vexp_invalid_lanes(typename V::T x) {
  const uint32_t all = (uint32_t{1} << V::kLanes) - 1;  // kLanes <= 16
  return all & ~(V::template cmp<_CMP_GE_OQ>(x, V::set1(kExpLow)) & V::template cmp<_CMP_LE_OQ>(x, V::set1(kExpHigh)));
}
#endif

}  // namespace tl
