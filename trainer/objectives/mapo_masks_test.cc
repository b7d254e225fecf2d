// MaPO masks: per-map mean over the width, the official z-normalization and
// min–max rescaling over the response tokens (statistics rounded to half
// precision), averaging within and then across groups.
#include "trainer/objectives/mapo_masks.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "trainer/io/safetensors.h"

namespace prefopt::objectives {
namespace {

TEST(MapoMasks, RescalesAveragesWithinAndAcrossGroups) {
  // Three rows, with statistics that half precision holds exactly (standard
  // deviations 1 and 5, z extremes ±1), so the rescaling is plain min–max.
  // mlp map: row means 1, 3, 2 → 0, 1, 0.5.
  const std::vector<float> mlp = {0, 2, 4, 2, 1, 3};
  // Two attn maps, the first read with a row stride of 3 (its first two of
  // three columns): row means 5, 0, 10 → 0.5, 0, 1; the second: 1, 2, 3 →
  // 0, 0.5, 1. Group mean: 0.25, 0.25, 1.
  const std::vector<float> attn_wide = {4, 6, 99, 0, 0, 99, 10, 10, 99};
  const std::vector<float> attn = {1, 2, 3};
  // logits (per-token sums; rescaling ignores the 1/V): 6, 7, 8 → 0, 0.5, 1.
  const std::vector<float> logits = {6, 7, 8};
  const std::vector<MapoActivation> maps = {
      {MapoGroup::kMlp, mlp.data(), 2, 2},
      {MapoGroup::kAttn, attn_wide.data(), 2, 3},
      {MapoGroup::kAttn, attn.data(), 1, 1},
      {MapoGroup::kLogits, logits.data(), 1, 1}};
  std::vector<float> mask(3);
  ASSERT_TRUE(MapoMask(maps,
                       {MapoGroup::kMlp, MapoGroup::kAttn, MapoGroup::kLogits},
                       3, mask.data())
                  .ok());
  EXPECT_FLOAT_EQ(mask[0], (0 + 0.25f + 0) / 3);
  EXPECT_FLOAT_EQ(mask[1], (1 + 0.25f + 0.5f) / 3);
  EXPECT_FLOAT_EQ(mask[2], (0.5f + 1 + 1) / 3);
  // One group alone, the others ignored.
  ASSERT_TRUE(MapoMask(maps, {MapoGroup::kAttn}, 3, mask.data()).ok());
  EXPECT_EQ(mask, (std::vector<float>{0.25f, 0.25f, 1.0f}));
}

TEST(MapoMasks, StatisticsAreRoundedToHalfPrecision) {
  // Scores 7, 7, 8: mean 22/3, standard deviation sqrt(1/3) = 0.57735…,
  // which half precision holds as 0.5771484375; the z extremes and their
  // difference round too, so the smallest score lands just above 0 and the
  // largest just above 1.
  const std::vector<float> a = {7, 7, 8};
  const std::vector<MapoActivation> maps = {
      {MapoGroup::kLogits, a.data(), 1, 1}};
  std::vector<float> mask(3);
  ASSERT_TRUE(MapoMask(maps, {MapoGroup::kLogits}, 3, mask.data()).ok());
  const double s = 0.5771484375;
  const double z_lo = (7 - 22.0 / 3) / s, z_hi = (8 - 22.0 / 3) / s;
  const double lo = RoundToHalf(static_cast<float>(z_lo));
  const double hi = RoundToHalf(static_cast<float>(z_hi));
  const double range = RoundToHalf(static_cast<float>(hi - lo));
  EXPECT_NEAR(mask[0], (z_lo - lo) / range, 1e-7);
  EXPECT_NEAR(mask[2], (z_hi - lo) / range, 1e-7);
  EXPECT_GT(mask[0], 0.0f);
  EXPECT_GT(mask[2], 1.0f);
  EXPECT_EQ(mask[0], mask[1]);
}

TEST(MapoMasks, RoundToHalf) {
  EXPECT_EQ(RoundToHalf(1.0f), 1.0);
  EXPECT_EQ(RoundToHalf(0.1f), 0.0999755859375);
  EXPECT_EQ(RoundToHalf(-3.14159f), -3.140625);
  // Ties go to the even neighbour.
  EXPECT_EQ(RoundToHalf(1.0f + 0x1p-11f), 1.0);
  EXPECT_EQ(RoundToHalf(1.0f + 3 * 0x1p-11f), 1.0 + 0x1p-9);
  // Subnormals are 2^-24 apart; past 65504 is infinity.
  EXPECT_EQ(RoundToHalf(3e-8f), 0x1p-24);
  EXPECT_EQ(RoundToHalf(1e-8f), 0.0);
  EXPECT_EQ(RoundToHalf(65504.0f), 65504.0);
  EXPECT_TRUE(std::isinf(RoundToHalf(65520.0f)));
}

// Every float's rounding against the safetensors reader's own float ↔ half
// conversion: all 2^16 halves, the values halfway between neighbours (ties to
// even), and random floats across the range.
TEST(MapoMasks, RoundToHalfMatchesTheHalfConversion) {
  auto expected = [](float x) { return io::Fp16ToFloat(io::FloatToFp16(x)); };
  std::vector<float> values;
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float v = io::Fp16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(v)) continue;
    values.push_back(v);
    values.push_back(std::nextafter(v, 0.0f));
    values.push_back(std::nextafter(v, 1e30f));
    values.push_back(std::nextafter(v, -1e30f));
  }
  for (uint32_t h = 0; h + 1 < 0x7c00; ++h) {
    const float a = io::Fp16ToFloat(static_cast<uint16_t>(h));
    const float b = io::Fp16ToFloat(static_cast<uint16_t>(h + 1));
    values.push_back(0.5f * (a + b));
    values.push_back(-0.5f * (a + b));
  }
  uint32_t state = 12345;
  for (int i = 0; i < 200000; ++i) {
    state = state * 1664525u + 1013904223u;
    float f;
    std::memcpy(&f, &state, sizeof(f));
    if (!std::isnan(f)) values.push_back(f);
  }
  for (float v : values) {
    const float want = expected(v);
    const float got = RoundToHalf(v);
    ASSERT_TRUE(got == want || (std::isinf(got) && std::isinf(want) &&
                                std::signbit(got) == std::signbit(want)))
        << v << ": " << got << " vs " << want;
    ASSERT_EQ(std::signbit(got), std::signbit(want)) << v;
  }
}

TEST(MapoMasks, ConstantMapCountsAsOnes) {
  const std::vector<float> one = {3.5f};
  const std::vector<MapoActivation> maps = {
      {MapoGroup::kResid, one.data(), 1, 1}};
  float mask = -1;
  ASSERT_TRUE(MapoMask(maps, {MapoGroup::kResid}, 1, &mask).ok());
  EXPECT_EQ(mask, 1.0f);
  const std::vector<float> flat = {2, 2, 2};
  const std::vector<MapoActivation> constant = {
      {MapoGroup::kResid, flat.data(), 1, 1}};
  std::vector<float> masks(3);
  ASSERT_TRUE(MapoMask(constant, {MapoGroup::kResid}, 3, masks.data()).ok());
  EXPECT_EQ(masks, (std::vector<float>{1, 1, 1}));
}

TEST(MapoMasks, Errors) {
  const std::vector<float> a = {1, 2};
  std::vector<float> mask(2);
  const std::vector<MapoActivation> maps = {{MapoGroup::kMlp, a.data(), 1, 1}};
  EXPECT_FALSE(MapoMask(maps, {}, 2, mask.data()).ok());
  const absl::Status missing =
      MapoMask(maps, {MapoGroup::kMlp, MapoGroup::kAttn}, 2, mask.data());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find("attn"), std::string::npos);
  const std::vector<MapoActivation> bad = {{MapoGroup::kMlp, a.data(), 2, 1}};
  EXPECT_FALSE(MapoMask(bad, {MapoGroup::kMlp}, 1, mask.data()).ok());
}

}  // namespace
}  // namespace prefopt::objectives
