// AVX2 + FMA float math for the CPU backend's hot loops: an 8-lane exp and
// masked access to the tail of an array whose length is not a multiple of 8.
#ifndef PREFOPT_KERNELS_CPU_VEC_MATH_H_
#define PREFOPT_KERNELS_CPU_VEC_MATH_H_

#include <immintrin.h>

#if !defined(__AVX2__) || !defined(__FMA__)
#error "kernels/cpu needs AVX2 and FMA (-march=x86-64-v3, set in .bazelrc)."
#endif

namespace prefopt::kernels::cpu {

// exp(x) on 8 lanes, within 1.5e-7 relative of the exact value for x in
// [-87.33, 88.37]. Below that range it returns 0 (the exact value is below
// FLT_MIN, i.e. subnormal or zero), above it +inf; NaN stays NaN.
inline __m256 Exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);
  const __m256 hi = _mm256_set1_ps(88.376f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  const __m256 overflow = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
  // Operand order keeps NaN: max/min return their second operand on NaN.
  const __m256 xc = _mm256_min_ps(hi, _mm256_max_ps(lo, x));

  // exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln(2) / 2. ln 2 is split
  // in a part with few mantissa bits (n * kLn2Hi is exact) and the remainder.
  const __m256 n =
      _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);

  // exp(r) = 1 + r + r^2 * P(r), P the degree-5 minimax fit (Cephes expf).
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  const __m256 er =
      _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0f));

  // n is in [-126, 127] after clamping, so 2^n is a normal float built
  // directly from its exponent field.
  const __m256i biased =
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  const __m256 pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
  __m256 y = _mm256_mul_ps(er, pow2n);
  y = _mm256_andnot_ps(underflow, y);
  return _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), overflow);
}

// Lane mask selecting the first `count` lanes (0 <= count <= 8), for
// _mm256_maskload_ps / _mm256_maskstore_ps on an array's last partial vector.
inline __m256i FirstLanes(int count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Horizontal sum of 8 lanes, in a fixed order.
inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Horizontal max of 8 lanes.
inline float HorizontalMax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

}  // namespace prefopt::kernels::cpu

#endif  // PREFOPT_KERNELS_CPU_VEC_MATH_H_
