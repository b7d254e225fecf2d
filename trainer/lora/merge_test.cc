#include "trainer/lora/merge.h"

#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/test_util.h"
#include "trainer/io/weight_store.h"
#include "trainer/lora/merge_export.h"
#include "trainer/lora/peft_adapter.h"

namespace prefopt::lora {
namespace {

using io::testing::ErrorContains;

struct Case {
  const char* name;
  const char* base;
};
constexpr Case kCases[] = {
    {"gpt2", "tests/fixtures/gpt2/policy"},
    {"llama", "tests/fixtures/llama/llama3_untied/policy"},
    {"qwen2", "tests/fixtures/qwen2/policy"},
};

std::string Fixture(const Case& c, const std::string& file) {
  return std::string("tests/fixtures/lora/") + c.name + "/" + file;
}

std::vector<float> Read(const io::WeightStore& store, const std::string& name) {
  const io::TensorInfo* info = store.Find(name);
  EXPECT_NE(info, nullptr) << name;
  if (info == nullptr) return {};
  std::vector<float> values(info->numel());
  EXPECT_TRUE(store.ReadFloat(name, info->shape, values.data()).ok());
  return values;
}

// `prefopt export --merge_lora` of each PEFT start adapter against PEFT's
// merge_and_unload (tests/fixtures/lora/*/merged_weights.safetensors).
TEST(ExportMergedModelTest, MatchesPeftsMergeAndUnload) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    const std::string out =
        io::testing::NewTempDir(std::string("merged_") + c.name) + "/hf";
    absl::StatusOr<MergedExport> merged =
        ExportMergedModel(c.base, Fixture(c, "adapter_start"), out,
                          io::DType::kF32, size_t{1} << 30);
    ASSERT_TRUE(merged.ok()) << merged.status();
    EXPECT_EQ(merged->adapter_base_model, c.base);
    EXPECT_TRUE(io::testing::Exists(out + "/config.json"));
    EXPECT_TRUE(io::testing::Exists(out + "/generation_config.json"));

    absl::StatusOr<io::WeightStore> base = io::WeightStore::Open(c.base);
    absl::StatusOr<io::WeightStore> ours = io::WeightStore::Open(out);
    absl::StatusOr<io::SafetensorsFile> peft =
        io::SafetensorsFile::Open(Fixture(c, "merged_weights.safetensors"));
    ASSERT_TRUE(base.ok() && ours.ok() && peft.ok());
    EXPECT_EQ(ours->Names(), base->Names());
    EXPECT_EQ(static_cast<size_t>(merged->modules), peft->tensors().size());
    double worst = 0;
    for (const std::string& name : base->Names()) {
      const std::vector<float> got = Read(*ours, name);
      if (peft->Find(name) == nullptr) {
        // Not adapted: bitwise the base's.
        EXPECT_EQ(got, Read(*base, name)) << name;
        continue;
      }
      absl::StatusOr<std::vector<float>> want = peft->ReadFloat(name);
      ASSERT_TRUE(want.ok());
      ASSERT_EQ(got.size(), want->size());
      const std::vector<float> before = Read(*base, name);
      double max_delta = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        // PEFT's B @ A sums over the rank in its own order, so an element
        // may differ by a rounding: at most one fp32 ulp of 1 (1.2e-7), or
        // of the value when it is larger.
        const double diff = std::abs(double(got[i]) - (*want)[i]);
        EXPECT_LE(diff, 1.2e-7 * std::max(1.0, std::abs(double((*want)[i]))))
            << name << " [" << i << "]";
        worst = std::max(worst, diff);
        max_delta = std::max(max_delta, std::abs(double(got[i]) - before[i]));
      }
      EXPECT_GT(max_delta, 1e-3) << name << ": the adapter must matter";
    }
    std::cout << c.name << ": max |prefopt - PEFT| over merged weights "
              << worst << "\n";
  }
}

TEST(ExportMergedModelTest, WritesHalfPrecision) {
  const Case& c = kCases[2];
  const std::string out = io::testing::NewTempDir("merged_bf16") + "/hf";
  ASSERT_TRUE(ExportMergedModel(c.base, Fixture(c, "adapter_start"), out,
                                io::DType::kBF16, size_t{1} << 30)
                  .ok());
  absl::StatusOr<io::WeightStore> ours = io::WeightStore::Open(out);
  ASSERT_TRUE(ours.ok());
  EXPECT_EQ(*ours->StorageDType(), io::DType::kBF16);
  absl::StatusOr<io::SafetensorsFile> peft =
      io::SafetensorsFile::Open(Fixture(c, "merged_weights.safetensors"));
  ASSERT_TRUE(peft.ok());
  const std::string name = "model.layers.1.self_attn.v_proj.weight";
  absl::StatusOr<std::vector<float>> want = peft->ReadFloat(name);
  ASSERT_TRUE(want.ok());
  const std::vector<float> got = Read(*ours, name);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i], io::Bf16ToFloat(io::FloatToBf16((*want)[i]))) << i;
  }
}

TEST(ExportMergedModelTest, Errors) {
  const Case& qwen2 = kCases[2];
  // An adapter made for another architecture.
  EXPECT_TRUE(ErrorContains(
      ExportMergedModel(qwen2.base, Fixture(kCases[0], "adapter_start"),
                        io::testing::NewTempDir("wrong_base") + "/hf",
                        io::DType::kF32, size_t{1} << 30)
          .status(),
      {"adapter_config.json", "target_modules", "\"c_attn\""}));
  EXPECT_TRUE(ErrorContains(
      ExportMergedModel(qwen2.base, "no/such/adapter",
                        io::testing::NewTempDir("no_adapter") + "/hf",
                        io::DType::kF32, size_t{1} << 30)
          .status(),
      {"no/such/adapter", "adapter_config.json"}));
  const std::string full = io::testing::NewTempDir("merged_full");
  io::testing::WriteBytes(full + "/keep.txt", "mine");
  EXPECT_FALSE(ExportMergedModel(qwen2.base, Fixture(qwen2, "adapter_start"),
                                 full, io::DType::kF32, size_t{1} << 30)
                   .ok());
  EXPECT_EQ(io::testing::ReadBytes(full + "/keep.txt"), "mine");
}

// A 2x3 weight, rank 1: the delta's orientation does not depend on
// fan_in_fan_out in prefopt's [out, in] layout.
TEST(MergeFactorsTest, AddsScaledProductInOutInLayout) {
  AdapterFactors f;
  f.module.in_features = 3;
  f.module.out_features = 2;
  f.module.fan_in_fan_out = true;
  f.a = {1, 2, 3};  // [1, 3]
  f.b = {10, 20};   // [2, 1]
  std::vector<float> w = {0, 0, 0, 1, 1, 1};
  MergeFactors(f, 1, 0.5f, w.data());
  EXPECT_EQ(w, (std::vector<float>{5, 10, 15, 11, 21, 31}));
}

}  // namespace
}  // namespace prefopt::lora
