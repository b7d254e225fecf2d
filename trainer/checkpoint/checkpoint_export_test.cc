#include "trainer/checkpoint/checkpoint_export.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/weight_store.h"
#include "trainer/model/decoder.h"

namespace prefopt::checkpoint {
namespace {

namespace fs = std::filesystem;

std::string TempPath(const std::string& name) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
  fs::remove_all(path);
  return path;
}

// A small random GPT-2 whose checkpoints the tests export.
class CheckpointExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    spec_.vocab_size = 37;
    spec_.max_positions = 16;
    spec_.hidden = 8;
    spec_.n_layer = 2;
    spec_.n_head = 2;
    spec_.n_kv_head = 2;
    spec_.head_dim = 4;
    spec_.intermediate = 32;
    spec_.activation = "gelu_new";
    spec_.attention_bias = spec_.attention_out_bias = spec_.mlp_bias = true;
    auto decoder = model::Decoder::Create(spec_, &backend_, {1, 1, 1}, false);
    ASSERT_TRUE(decoder.ok()) << decoder.status();
    decoder_ = *std::move(decoder);
    decoder_->InitRandom(3, 0.5f);
    params_.assign(decoder_->params(),
                   decoder_->params() + decoder_->layout().total());
  }

  // Saves the model as checkpoint `step` of `run_dir`.
  std::string Save(const std::string& run_dir, int64_t step) {
    const std::vector<float> zeros(params_.size(), 0.0f);
    CheckpointContents c;
    c.metadata.set_step(step);
    c.layout = &decoder_->layout();
    c.spec = &spec_;
    c.params = params_.data();
    c.optimizer =
        OptimizerShard{{0, params_.size()}, zeros.data(), zeros.data()};
    absl::StatusOr<SaveResult> saved = SaveCheckpoint(run_dir, c, {});
    EXPECT_TRUE(saved.ok()) << saved.status();
    return saved.ok() ? saved->dir : "";
  }

  io::ModelSpec spec_;
  kernels::CpuBackend backend_;
  std::unique_ptr<model::Decoder> decoder_;
  std::vector<float> params_;
};

TEST_F(CheckpointExportTest, Fp32ExportHoldsTheCheckpointsWeightsBitForBit) {
  const std::string run = TempPath("fp32_run");
  const std::string dir = Save(run, 7);
  const std::string out = TempPath("fp32_out");
  absl::StatusOr<CheckpointExport> exported =
      ExportCheckpoint(dir, out, io::DType::kF32, kDefaultMaxShardBytes);
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(exported->checkpoint_dir, dir);
  EXPECT_EQ(exported->step, 7);
  EXPECT_TRUE(fs::exists(out + "/config.json"));
  EXPECT_TRUE(fs::exists(out + "/generation_config.json"));
  absl::StatusOr<io::WeightStore> store = io::WeightStore::Open(out);
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<io::DType> dtype = store->StorageDType();
  ASSERT_TRUE(dtype.ok());
  EXPECT_EQ(*dtype, io::DType::kF32);
  const std::vector<model::HfTensorRef> refs = decoder_->layout().HfTensors();
  EXPECT_EQ(store->Names().size(), refs.size());
  for (const model::HfTensorRef& ref : refs) {
    std::vector<float> hf(ref.numel), expected(ref.numel);
    ASSERT_TRUE(store->ReadFloat(ref.name, ref.shape, hf.data()).ok())
        << ref.name;
    model::LayoutToHf(ref, params_.data() + ref.offset, expected.data());
    EXPECT_EQ(std::memcmp(hf.data(), expected.data(), hf.size() * 4), 0)
        << ref.name;
  }
}

TEST_F(CheckpointExportTest, Bf16ExportIsShardedAndRounded) {
  const std::string dir = Save(TempPath("bf16_run"), 1);
  const std::string out = TempPath("bf16_out");
  ASSERT_TRUE(ExportCheckpoint(dir, out, io::DType::kBF16, 1000).ok());
  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
  absl::StatusOr<io::WeightStore> store = io::WeightStore::Open(out);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(*store->StorageDType(), io::DType::kBF16);
  for (const model::HfTensorRef& ref : decoder_->layout().HfTensors()) {
    std::vector<float> hf(ref.numel), expected(ref.numel);
    ASSERT_TRUE(store->ReadFloat(ref.name, ref.shape, hf.data()).ok());
    model::LayoutToHf(ref, params_.data() + ref.offset, expected.data());
    for (size_t i = 0; i < hf.size(); ++i) {
      ASSERT_EQ(hf[i], io::Bf16ToFloat(io::FloatToBf16(expected[i])))
          << ref.name << "[" << i << "]";
    }
  }
}

TEST_F(CheckpointExportTest, RunDirExportsItsLatestGoodCheckpoint) {
  const std::string run = TempPath("latest_run");
  Save(run, 2);
  const std::string newer = Save(run, 4);
  fs::remove(newer + "/COMPLETE");
  absl::StatusOr<CheckpointExport> exported = ExportCheckpoint(
      run, TempPath("latest_out"), io::DType::kF32, kDefaultMaxShardBytes);
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(exported->checkpoint_dir, run + "/checkpoints/step_2");
  ASSERT_EQ(exported->skipped.size(), 1u);
  EXPECT_NE(exported->skipped[0].find("step_4: no COMPLETE marker"),
            std::string::npos)
      << exported->skipped[0];
}

TEST_F(CheckpointExportTest, CorruptCheckpointIsRefusedNamingTheTensor) {
  const std::string dir = Save(TempPath("corrupt_run"), 3);
  {
    std::fstream f(dir + "/model.safetensors",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-5, std::ios::end);
    f.put('\x7f');
  }
  const std::string out = TempPath("corrupt_out");
  absl::StatusOr<CheckpointExport> exported =
      ExportCheckpoint(dir, out, io::DType::kF32, kDefaultMaxShardBytes);
  ASSERT_FALSE(exported.ok());
  EXPECT_NE(exported.status().message().find("in model.safetensors: CRC32C "
                                             "mismatch"),
            std::string::npos)
      << exported.status();
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(CheckpointExportTest, MissingCheckpointAndNonEmptyOutputAreErrors) {
  absl::StatusOr<CheckpointExport> missing =
      ExportCheckpoint(TempPath("nothing"), TempPath("nothing_out"),
                       io::DType::kF32, kDefaultMaxShardBytes);
  EXPECT_TRUE(absl::IsNotFound(missing.status())) << missing.status();
  EXPECT_NE(missing.status().message().find("nothing: no such folder"),
            std::string::npos);

  const std::string dir = Save(TempPath("busy_run"), 1);
  const std::string out = TempPath("busy_out");
  fs::create_directories(out);
  std::ofstream(out + "/keep.txt") << "mine";
  absl::StatusOr<CheckpointExport> busy =
      ExportCheckpoint(dir, out, io::DType::kF32, kDefaultMaxShardBytes);
  EXPECT_TRUE(absl::IsAlreadyExists(busy.status())) << busy.status();
  EXPECT_TRUE(fs::exists(out + "/keep.txt"));
}

TEST(ParseExportDTypeTest, AcceptsTheThreeFloatTypes) {
  EXPECT_EQ(*ParseExportDType("bf16"), io::DType::kBF16);
  EXPECT_EQ(*ParseExportDType("FP16"), io::DType::kF16);
  EXPECT_EQ(*ParseExportDType("float32"), io::DType::kF32);
  absl::StatusOr<io::DType> bad = ParseExportDType("int8");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "--dtype: expected bf16, fp16 or fp32, got \"int8\"");
}

TEST(ParseByteSizeTest, ReadsNumbersAndUnits) {
  EXPECT_EQ(*ParseByteSize("1000000"), 1000000u);
  EXPECT_EQ(*ParseByteSize("5GB"), 5000000000u);
  EXPECT_EQ(*ParseByteSize("2KB"), 2000u);
  EXPECT_EQ(*ParseByteSize("500MiB"), 500u << 20);
  EXPECT_EQ(*ParseByteSize("1GiB"), 1u << 30);
  for (const char* bad : {"", "0", "-1", "GB", "5 GB", "1.5GB", "12x"}) {
    absl::StatusOr<size_t> parsed = ParseByteSize(bad);
    EXPECT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.status().message().find("--max_shard_size"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace prefopt::checkpoint
