// MaPO masks: per-map mean over the width, min–max rescaling over the
// response tokens, averaging within and then across groups.
#include "trainer/objectives/mapo_masks.h"

#include <vector>

#include "gtest/gtest.h"

namespace prefopt::objectives {
namespace {

TEST(MapoMasks, RescalesAveragesWithinAndAcrossGroups) {
  // Three rows. mlp map: row means 1, 3, 2 → 0, 1, 0.5.
  const std::vector<float> mlp = {0, 2, 4, 2, 1, 3};
  // Two attn maps, the first read with a row stride of 3 (its first two of
  // three columns): row means 5, 0, 10 → 0.5, 0, 1; the second: 1, 2, 3 →
  // 0, 0.5, 1. Group mean: 0.25, 0.25, 1.
  const std::vector<float> attn_wide = {4, 6, 99, 0, 0, 99, 10, 10, 99};
  const std::vector<float> attn = {1, 2, 3};
  // logits (per-token sums; rescaling ignores the 1/V): 7, 7, 8 → 0, 0, 1.
  const std::vector<float> logits = {7, 7, 8};
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
  EXPECT_FLOAT_EQ(mask[1], (1 + 0.25f + 0) / 3);
  EXPECT_FLOAT_EQ(mask[2], (0.5f + 1 + 1) / 3);
  // One group alone, the others ignored.
  ASSERT_TRUE(MapoMask(maps, {MapoGroup::kAttn}, 3, mask.data()).ok());
  EXPECT_EQ(mask, (std::vector<float>{0.25f, 0.25f, 1.0f}));
}

TEST(MapoMasks, ConstantMapCountsAsOnes) {
  const std::vector<float> one = {3.5f};
  const std::vector<MapoActivation> maps = {
      {MapoGroup::kResid, one.data(), 1, 1}};
  float mask = -1;
  ASSERT_TRUE(MapoMask(maps, {MapoGroup::kResid}, 1, &mask).ok());
  EXPECT_EQ(mask, 1.0f);
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
