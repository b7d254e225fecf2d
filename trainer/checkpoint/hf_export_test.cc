#include "trainer/checkpoint/hf_export.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "nlohmann/json.hpp"
#include "trainer/io/hf_config.h"
#include "trainer/io/json_file.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/weight_store.h"
#include "trainer/model/decoder.h"

namespace prefopt::checkpoint {
namespace {

namespace fs = std::filesystem;

// tests/fixtures/gpt2/policy, through a symlink in tests/export.
constexpr char kFixture[] = "tests/export/gpt2_policy";

std::string TempPath(const std::string& name) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
  fs::remove_all(path);
  return path;
}

std::set<std::string> Entries(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) {
    names.insert(e.path().filename().string());
  }
  return names;
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The fixture GPT-2 loaded into a Decoder on the CPU backend.
class ExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<io::ModelSpec> spec = io::ReadHfConfig(kFixture);
    ASSERT_TRUE(spec.ok()) << spec.status();
    spec_ = *spec;
    decoder_ = Load(kFixture);
    ASSERT_NE(decoder_, nullptr);
    params_.resize(decoder_->layout().total());
    backend_.CopyToHost(params_.data(), decoder_->params(), params_.size());
  }

  std::unique_ptr<model::Decoder> Load(const std::string& dir) {
    absl::StatusOr<io::ModelSpec> spec = io::ReadHfConfig(dir);
    EXPECT_TRUE(spec.ok()) << spec.status();
    absl::StatusOr<io::WeightStore> store = io::WeightStore::Open(dir);
    EXPECT_TRUE(store.ok()) << store.status();
    if (!spec.ok() || !store.ok()) return nullptr;
    absl::StatusOr<std::unique_ptr<model::Decoder>> decoder =
        model::Decoder::Create(*spec, &backend_, {1, 1, 1}, false);
    EXPECT_TRUE(decoder.ok()) << decoder.status();
    if (!decoder.ok()) return nullptr;
    absl::Status loaded = (*decoder)->LoadHf(*store);
    EXPECT_TRUE(loaded.ok()) << loaded;
    return loaded.ok() ? *std::move(decoder) : nullptr;
  }

  absl::Status Export(const std::string& out, io::DType dtype,
                      size_t max_shard_bytes,
                      const std::string& tokenizer_dir = "") {
    return ExportHfModel(out, spec_, decoder_->layout(), params_.data(), dtype,
                         max_shard_bytes, tokenizer_dir);
  }

  kernels::CpuBackend backend_;
  io::ModelSpec spec_;
  std::unique_ptr<model::Decoder> decoder_;
  std::vector<float> params_;
};

TEST_F(ExportTest, Fp32ExportMatchesTheFixtureBitForBit) {
  const std::string out = TempPath("fp32");
  ASSERT_TRUE(Export(out, io::DType::kF32, size_t{1} << 30).ok());
  EXPECT_EQ(Entries(out), Entries(kFixture));
  EXPECT_FALSE(fs::exists(out + ".tmp." + std::to_string(getpid())));

  absl::StatusOr<io::WeightStore> original = io::WeightStore::Open(kFixture);
  absl::StatusOr<io::WeightStore> exported = io::WeightStore::Open(out);
  ASSERT_TRUE(original.ok() && exported.ok());
  ASSERT_EQ(exported->Names(), original->Names());  // no lm_head (tied)
  for (const std::string& name : original->Names()) {
    SCOPED_TRACE(name);
    const io::TensorInfo* a = original->Find(name);
    const io::TensorInfo* b = exported->Find(name);
    EXPECT_EQ(b->shape, a->shape);
    EXPECT_EQ(b->dtype, io::DType::kF32);
    EXPECT_EQ(std::memcmp(original->FileOf(name)->Data(*a),
                          exported->FileOf(name)->Data(*b), a->end - a->begin),
              0);
  }

  // Loading the export gives the same parameter buffer.
  std::unique_ptr<model::Decoder> reloaded = Load(out);
  ASSERT_NE(reloaded, nullptr);
  std::vector<float> params(reloaded->layout().total());
  backend_.CopyToHost(params.data(), reloaded->params(), params.size());
  EXPECT_EQ(
      std::memcmp(params.data(), params_.data(), params.size() * sizeof(float)),
      0);

  absl::StatusOr<nlohmann::json> config =
      io::ReadJsonFile(out + "/config.json");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ((*config)["architectures"][0], "GPT2LMHeadModel");
  EXPECT_EQ((*config)["n_embd"], 32);
  // The fixture has a generation config of its own; without a source folder
  // one is written from the spec's ids.
  absl::StatusOr<nlohmann::json> generation =
      io::ReadJsonFile(out + "/generation_config.json");
  ASSERT_TRUE(generation.ok());
  EXPECT_EQ((*generation)["bos_token_id"], 100);
  EXPECT_EQ((*generation)["eos_token_id"], 100);
}

TEST_F(ExportTest, Bf16ShardedExportRoundsToNearestEven) {
  const std::string out = TempPath("bf16");
  ASSERT_TRUE(Export(out, io::DType::kBF16, 20000).ok());
  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(out + "/model.safetensors"));
  absl::StatusOr<io::ModelSpec> spec = io::ReadHfConfig(out);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->torch_dtype, "bfloat16");

  absl::StatusOr<io::WeightStore> exported = io::WeightStore::Open(out);
  ASSERT_TRUE(exported.ok()) << exported.status();
  for (const model::ParamTensor& t : decoder_->layout().tensors()) {
    SCOPED_TRACE(t.name);
    const io::TensorInfo* info = exported->Find(t.name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->dtype, io::DType::kBF16);
    EXPECT_EQ(info->shape, t.HfShape());
    const uint8_t* data = exported->FileOf(t.name)->Data(*info);
    // Element (i, j) of the Hugging Face layout.
    const int64_t cols = t.HfShape().size() == 2 ? t.HfShape()[1] : 1;
    for (size_t k = 0; k < t.numel; ++k) {
      const int64_t i = static_cast<int64_t>(k) / cols, j = k % cols;
      const size_t ours =
          t.hf_transposed ? static_cast<size_t>(j * t.shape[1] + i) : k;
      uint16_t bits;
      std::memcpy(&bits, data + 2 * k, 2);
      ASSERT_EQ(bits, io::FloatToBf16(params_[t.offset + ours])) << k;
    }
  }
}

TEST_F(ExportTest, CopiesTokenizerAndGenerationConfig) {
  const std::string source = TempPath("tokenizer_source");
  fs::create_directories(source);
  WriteAll(source + "/tokenizer.json", "{\"model\": {}}");
  WriteAll(source + "/merges.txt", "#version: 0.2\na b\n");
  WriteAll(source + "/generation_config.json", "{\"temperature\": 0.7}\n");
  const std::string out = TempPath("with_tokenizer");
  ASSERT_TRUE(Export(out, io::DType::kF16, size_t{1} << 30, source).ok());
  EXPECT_EQ(Entries(out),
            (std::set<std::string>{"config.json", "generation_config.json",
                                   "model.safetensors", "tokenizer.json",
                                   "merges.txt"}));
  EXPECT_EQ(ReadAll(out + "/merges.txt"), "#version: 0.2\na b\n");
  EXPECT_EQ(ReadAll(out + "/generation_config.json"),
            "{\"temperature\": 0.7}\n");
}

TEST_F(ExportTest, RefusesANonEmptyFolderAndReplacesAnEmptyOne) {
  const std::string out = TempPath("occupied");
  fs::create_directories(out);
  WriteAll(out + "/notes.txt", "mine");
  absl::Status s = Export(out, io::DType::kF32, size_t{1} << 30);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("exists and is not empty"), std::string::npos)
      << s;
  EXPECT_EQ(Entries(out), std::set<std::string>{"notes.txt"});

  const std::string empty = TempPath("empty");
  fs::create_directories(empty);
  ASSERT_TRUE(Export(empty, io::DType::kF32, size_t{1} << 30).ok());
  EXPECT_TRUE(fs::exists(empty + "/model.safetensors"));
}

TEST_F(ExportTest, RejectsUnsupportedDtype) {
  const std::string out = TempPath("f64");
  absl::Status s = Export(out, io::DType::kF64, size_t{1} << 30);
  EXPECT_FALSE(s.ok());
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
}  // namespace prefopt::checkpoint
