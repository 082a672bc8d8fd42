// SIMD helpers shared by tensor-core's kernels and the extension kernels of other packages: the target
// attributes of the levels of tl::simd_level() (extension.h), the vector types Vec8 (AVX2) and Vec16 (AVX-512)
// that width-generic kernels are written against, a vector exp, a horizontal sum and an in-register 8x8 transpose.
//
// Addons are built for the baseline ISA, so a SIMD kernel is compiled for its level with a target attribute and
// called only when tl::simd_level() is at least that level:
//   TL_AVX2    AVX2 + FMA + F16C                              call when tl::has_avx2_fma()
//   TL_AVX512  the above + AVX-512 F, BW, VL, DQ              call when tl::has_avx512()
//
// A kernel written once for both widths is a template over V (Vec8 or Vec16) that does all its vector work
// through V's static functions, plus one small entry point per level that instantiates it:
//
//   template <class V> void scale(const float* x, float s, float* y, int64_t n) {
//     for (int64_t i = 0; i + V::kLanes <= n; i += V::kLanes) V::store(y + i, V::mul(V::load(x + i), V::set1(s)));
//   }
//   TL_AVX2 TL_FLATTEN void scale_avx2(const float* x, float s, float* y, int64_t n) { scale<Vec8>(x, s, y, n); }
//   TL_AVX512 TL_FLATTEN void scale_avx512(const float* x, float s, float* y, int64_t n) { scale<Vec16>(x, s, y, n); }
//
// Why flatten: GCC never inlines a function compiled for a wider target into one compiled for a narrower one, and
// the template itself has no target. flatten inlines the template, and then V's functions, into the entry point,
// whose target allows them; the loop ends up in the entry point, compiled for its level. (The template can't
// carry the target itself: the attribute would apply to every instantiation, and AVX-512 code generation in the
// Vec8 instantiation could use instructions an AVX2-only CPU lacks.)
#pragma once

#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>

// The templates pass and return V::T by value without a target of their own, which GCC notes (-Wpsabi) as an
// ABI that depends on the target; they are always inlined into an entry point of one target, so no call crosses
// targets. GCC before 13 also reports its own AVX-512 intrinsics, which start from _mm512_undefined_*(), as
// reading an uninitialised value wherever they are used (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wpsabi"
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define TL_X86_SIMD 1
#define TL_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TL_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")))
// The avx512 level with AVX-512 BF16 (vdpbf16ps): call when tl::has_avx512() and tl::cpu_features().avx512bf16.
#define TL_AVX512_BF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
// The avx512 level with AVX-512 VNNI (vpdpbusd): call when tl::has_avx512() and tl::cpu_features().avx512vnni.
#define TL_AVX512_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define TL_FLATTEN __attribute__((flatten))

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

// The operations width-generic kernels use, as static functions of Vec8 (8 float lanes) and Vec16 (16 lanes).
// Loads and stores are unaligned. Lane masks (cmp) are plain integers, bit i for lane i, the same at both widths.
// Those whose intrinsics differ between the widths only in the width in their name (_mm256_add_ps, _mm512_add_ps)
// are written once, here, for W = 256 or 512.
#define TL_VEC_OPS(TARGET, W)                                                                        \
  TARGET static T zero() { return _mm##W##_setzero_ps(); }                                           \
  TARGET static T set1(float x) { return _mm##W##_set1_ps(x); }                                      \
  TARGET static T load(const float* p) { return _mm##W##_loadu_ps(p); }                             \
  TARGET static void store(float* p, T v) { _mm##W##_storeu_ps(p, v); }                             \
  TARGET static T add(T a, T b) { return _mm##W##_add_ps(a, b); }                                   \
  TARGET static T sub(T a, T b) { return _mm##W##_sub_ps(a, b); }                                   \
  TARGET static T mul(T a, T b) { return _mm##W##_mul_ps(a, b); }                                   \
  TARGET static T div(T a, T b) { return _mm##W##_div_ps(a, b); }                                   \
  /* b where a or b is NaN */                                                                        \
  TARGET static T max(T a, T b) { return _mm##W##_max_ps(a, b); }                                   \
  TARGET static T min(T a, T b) { return _mm##W##_min_ps(a, b); }                                   \
  /* a * b + c */                                                                                    \
  TARGET static T fmadd(T a, T b, T c) { return _mm##W##_fmadd_ps(a, b, c); }                       \
  /* c - a * b */                                                                                    \
  TARGET static T fnmadd(T a, T b, T c) { return _mm##W##_fnmadd_ps(a, b, c); }                     \
  /* 2^n for integral n in [-126, 127]: n + 127 placed in the exponent field */                     \
  TARGET static T pow2(T n) {                                                                        \
    const auto biased = _mm##W##_add_epi32(_mm##W##_cvtps_epi32(n), _mm##W##_set1_epi32(127));       \
    return _mm##W##_castsi##W##_ps(_mm##W##_slli_epi32(biased, 23));                                \
  }                                                                                                  \
  /* bfloat16 is the top half of a float32: widen to 32 bits and shift left 16, which is exact */    \
  TARGET static T widen_bf16(Half h) {                                                               \
    return _mm##W##_castsi##W##_ps(_mm##W##_slli_epi32(_mm##W##_cvtepu16_epi32(h), 16));             \
  }                                                                                                  \
  TARGET static T load_bf16(const uint16_t* p) { return widen_bf16(load_half(p)); }                 \
  TARGET static T load_f16(const uint16_t* p) { return _mm##W##_cvtph_ps(load_half(p)); }

struct Vec8 {
  using T = __m256;
  using Half = __m128i;  // kLanes 16-bit values
  static constexpr int kLanes = 8;
  static constexpr int kRegisters = 16;  // for sizing register tiles

  TL_AVX2 static Half load_half(const uint16_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
  TL_VEC_OPS(TL_AVX2, 256)
  TL_AVX2 static T round(T x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // Bit i set where a[i] CMP b[i], CMP one of the _CMP_* predicates.
  template <int CMP> TL_AVX2 static uint32_t cmp(T a, T b) {
    return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, CMP)));
  }
  TL_AVX2 static float hsum(T v) { return simd::hsum(v); }
  // Lane j = the sum of acc[j]'s lanes, for kLanes accumulators at once: a tree of shuffles and adds, about 3
  // instructions an accumulator where hsum takes 8 (what ends a block of dot products of 64 values or so).
  TL_AVX2 static T hsum_each(const T acc[8]) {
    T pairs[4], quads[2];
    for (int i = 0; i < 4; ++i)  // per 128-bit half: (a0+a2, b0+b2, a1+a3, b1+b3) of acc[2i], acc[2i+1]
      pairs[i] = _mm256_add_ps(_mm256_unpacklo_ps(acc[2 * i], acc[2 * i + 1]), _mm256_unpackhi_ps(acc[2 * i], acc[2 * i + 1]));
    for (int i = 0; i < 2; ++i)  // per half, lane j: that half's sum of acc[4i + j]
      quads[i] = _mm256_add_ps(_mm256_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], 0x44),
                               _mm256_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], 0xEE));
    return _mm256_add_ps(_mm256_permute2f128_ps(quads[0], quads[1], 0x20), _mm256_permute2f128_ps(quads[0], quads[1], 0x31));
  }
  TL_AVX2 static float hmax(T v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
  }
};

struct Vec16 {
  using T = __m512;
  using Half = __m256i;
  static constexpr int kLanes = 16;
  static constexpr int kRegisters = 32;

  TL_AVX512 static Half load_half(const uint16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  TL_VEC_OPS(TL_AVX512, 512)
  TL_AVX512 static T round(T x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  template <int CMP> TL_AVX512 static uint32_t cmp(T a, T b) { return _mm512_cmp_ps_mask(a, b, CMP); }
  TL_AVX512 static float hsum(T v) {
    return simd::hsum(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
  }
  // Lane j = the sum of acc[j]'s lanes (Vec8::hsum_each, with two more levels across the 128-bit blocks).
  TL_AVX512 static T hsum_each(const T acc[16]) {
    T pairs[8], quads[4], halves[2];
    for (int i = 0; i < 8; ++i)
      pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(acc[2 * i], acc[2 * i + 1]), _mm512_unpackhi_ps(acc[2 * i], acc[2 * i + 1]));
    for (int i = 0; i < 4; ++i)  // per block, lane j: that block's sum of acc[4i + j]
      quads[i] = _mm512_add_ps(_mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], 0x44),
                               _mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], 0xEE));
    for (int i = 0; i < 2; ++i)  // blocks (quads[2i] over blocks 0+1, 2+3; quads[2i+1] the same)
      halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(halves[0], halves[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(halves[0], halves[1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  TL_AVX512 static float hmax(T v) { return _mm512_reduce_max_ps(v); }
};

#undef TL_VEC_OPS

// Vectorised exp, written once for both widths. Why: libm's expf is scalar, and in attention's softmax and the
// MLP's SiLU it was the cost of the kernel. The method is Cephes' (as in avx_mathfun): exp(x) = 2^n * exp(r) with
// n = round(x / ln 2) and |r| <= ln2 / 2, exp(r) by a degree-5 polynomial; about 1 ulp, and the same bits at every
// width. It is only valid where neither the result nor 2^n overflows or goes subnormal: callers clamp x, or hand
// lanes outside [kExpLow, kExpHigh] (and NaN) to std::exp (the far negative tail of SiLU must stay a tiny number,
// not 0).
constexpr float kExpLow = -87.0f;
constexpr float kExpHigh = 88.0f;

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

// acc + a[2i] * b[2i] + a[2i+1] * b[2i+1] in each float lane i, where a and b hold 32 bfloat16 values each (as
// the bits of 16 floats): vdpbf16ps, two products per lane and instruction, at about the rate of vfmadd231ps.
TL_AVX512_BF16 inline __m512 dot_bf16_pairs(__m512 acc, __m512 a, __m512 b) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(a), reinterpret_cast<__m512bh>(b));
}

}  // namespace tl::simd
#endif
