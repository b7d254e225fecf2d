#include "kernels/cpu/vec_math.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "gtest/gtest.h"

namespace prefopt::kernels::cpu {
namespace {

float Exp1(float x) { return _mm256_cvtss_f32(Exp8(_mm256_set1_ps(x))); }

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Relative error against double-precision exp over every 61st float in the
// supported range (about 36 million points; 61 is odd, so the sample walks
// through all low mantissa bit patterns).
TEST(Exp8Test, RelativeErrorBelow1_5e7) {
  double max_rel = 0.0;
  float worst = 0.0f;
  for (uint32_t sign : {0u, 0x80000000u}) {
    const float limit = sign ? 87.33654f : 88.376f;
    for (uint32_t bits = 0;; bits += 8 * 61) {
      const float x = FromBits(sign | bits);
      if (std::fabs(x) > limit) break;
      float xs[8];
      for (int i = 0; i < 8; ++i) xs[i] = FromBits(sign | (bits + i * 61));
      float ys[8];
      _mm256_storeu_ps(ys, Exp8(_mm256_loadu_ps(xs)));
      for (int i = 0; i < 8; ++i) {
        if (std::fabs(xs[i]) > limit) continue;
        const double exact = std::exp(static_cast<double>(xs[i]));
        const double rel = std::fabs(ys[i] - exact) / exact;
        if (rel > max_rel) {
          max_rel = rel;
          worst = xs[i];
        }
      }
    }
  }
  EXPECT_LT(max_rel, 1.5e-7) << "worst x = " << worst;
}

TEST(Exp8Test, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(Exp1(0.0f), 1.0f);
  EXPECT_EQ(Exp1(-87.4f), 0.0f);
  EXPECT_EQ(Exp1(-1000.0f), 0.0f);
  EXPECT_EQ(Exp1(-inf), 0.0f);
  EXPECT_EQ(Exp1(88.5f), inf);
  EXPECT_EQ(Exp1(inf), inf);
  EXPECT_TRUE(std::isnan(Exp1(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_GT(Exp1(-87.33f), 0.0f);
  EXPECT_LT(Exp1(88.37f), inf);
}

TEST(VecMathTest, FirstLanesSelectsPrefix) {
  const float src[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  for (int count = 0; count <= 8; ++count) {
    float dst[8] = {0};
    _mm256_maskstore_ps(dst, FirstLanes(count),
                        _mm256_maskload_ps(src, FirstLanes(count)));
    for (int i = 0; i < 8; ++i) EXPECT_EQ(dst[i], i < count ? src[i] : 0.0f);
  }
}

TEST(VecMathTest, HorizontalReductions) {
  const __m256 v = _mm256_setr_ps(1, -2, 30, 4, 5, -6, 7, 0.5f);
  EXPECT_EQ(HorizontalSum(v), 39.5f);
  EXPECT_EQ(HorizontalMax(v), 30.0f);
}

}  // namespace
}  // namespace prefopt::kernels::cpu
