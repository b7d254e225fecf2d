#include "trainer/io/weight_store.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "trainer/io/json_file.h"
#include "trainer/io/test_util.h"

namespace prefopt::io {
namespace {

using nlohmann::json;
using testing::CopyDir;
using testing::CountEntriesContaining;
using testing::ErrorContains;
using testing::Exists;
using testing::NewTempDir;
using testing::ReadBytes;
using testing::TestdataPath;
using testing::WriteBytes;

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

json Expected() {
  absl::StatusOr<json> expected =
      ReadJsonFile(TestdataPath("gpt2_expected.json"));
  EXPECT_TRUE(expected.ok()) << expected.status();
  return expected.ok() ? *expected : json();
}

std::vector<float> ReadAll(const WeightStore& store, const std::string& name) {
  const TensorInfo* t = store.Find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  std::vector<float> values(static_cast<size_t>(t->numel()));
  const absl::Status s = store.ReadFloat(name, t->shape, values.data());
  EXPECT_TRUE(s.ok()) << s;
  return values;
}

// The GPT-2 fixture's tensors in state_dict order, with their values.
struct Gpt2Tensors {
  std::vector<std::vector<float>> values;
  std::vector<TensorToWrite> tensors;
};

Gpt2Tensors LoadGpt2() {
  absl::StatusOr<WeightStore> store = WeightStore::Open(TestdataPath("gpt2"));
  EXPECT_TRUE(store.ok()) << store.status();
  Gpt2Tensors out;
  if (!store.ok()) return out;
  const json order = Expected()["state_dict_order"];
  for (const json& name : order) out.values.push_back(ReadAll(*store, name));
  for (size_t i = 0; i < order.size(); ++i) {
    const std::string name = order[i];
    out.tensors.push_back(
        {name, store->Find(name)->shape, out.values[i].data()});
  }
  return out;
}

TEST(WeightStoreTest, SingleFileMatchesTorch) {
  absl::StatusOr<WeightStore> store = WeightStore::Open(TestdataPath("gpt2"));
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(store->model_dir(), TestdataPath("gpt2"));
  const json expected = Expected()["tensors"];
  std::vector<std::string> expected_names;
  for (const auto& [name, value] : expected.items()) {
    expected_names.push_back(name);
  }
  EXPECT_EQ(store->Names(), expected_names);
  EXPECT_FALSE(store->Has("lm_head.weight"));  // tied to the embedding
  EXPECT_TRUE(store->Has("transformer.wte.weight"));
  for (const auto& [name, want] : expected.items()) {
    const TensorInfo* t = store->Find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(json(t->shape), want["shape"]) << name;
    const std::vector<float> values = ReadAll(*store, name);
    double sum = 0;
    for (const float v : values) sum += v;
    EXPECT_NEAR(sum, want["sum"].get<double>(), 1e-9) << name;
    for (size_t i = 0; i < want["first_bits"].size(); ++i) {
      EXPECT_EQ(Bits(values[i]), want["first_bits"][i].get<uint32_t>())
          << name << "[" << i << "]";
    }
  }
  EXPECT_EQ(*store->StorageDType(), DType::kF32);
}

TEST(WeightStoreTest, ShardedEqualsSingleFile) {
  absl::StatusOr<WeightStore> single = WeightStore::Open(TestdataPath("gpt2"));
  absl::StatusOr<WeightStore> sharded =
      WeightStore::Open(TestdataPath("gpt2_sharded"));
  ASSERT_TRUE(single.ok()) << single.status();
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  ASSERT_EQ(single->Names(), sharded->Names());
  for (const std::string& name : single->Names()) {
    const std::vector<float> a = ReadAll(*single, name);
    const std::vector<float> b = ReadAll(*sharded, name);
    ASSERT_EQ(a.size(), b.size()) << name;
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0) << name;
  }
  EXPECT_NE(sharded->FileOf("transformer.wte.weight")
                ->path()
                .find("model-00001-of-00003.safetensors"),
            std::string::npos);
}

TEST(WeightStoreTest, ReadErrorsNameShardTensorAndShapes) {
  const std::string dir = TestdataPath("gpt2_sharded");
  absl::StatusOr<WeightStore> store = WeightStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  std::vector<float> out(1024);
  const int64_t wrong[] = {8, 33};
  EXPECT_TRUE(ErrorContains(
      store->ReadFloat("transformer.h.0.mlp.c_fc.weight", wrong, out.data()),
      {dir + "/model-00002-of-00003.safetensors",
       "'transformer.h.0.mlp.c_fc.weight'", "expected shape [8, 33]",
       "found [8, 32]"}));
  const absl::Status missing =
      store->ReadFloat("lm_head.weight", wrong, out.data());
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ErrorContains(missing, {"'lm_head.weight'", dir}));
}

TEST(WeightStoreTest, MissingShardIsAnError) {
  const std::string dir = NewTempDir("missing_shard");
  CopyDir(TestdataPath("gpt2_sharded"), dir);
  ASSERT_EQ(unlink((dir + "/model-00002-of-00003.safetensors").c_str()), 0);
  absl::StatusOr<WeightStore> store = WeightStore::Open(dir);
  EXPECT_TRUE(ErrorContains(store.status(),
                            {dir + "/model.safetensors.index.json",
                             "model-00002-of-00003.safetensors",
                             "'transformer.h.0.ln_2.bias'", "No such file"}));
}

TEST(WeightStoreTest, ShardWithoutMappedTensorIsAnError) {
  const std::string dir = NewTempDir("shard_lacks_tensor");
  CopyDir(TestdataPath("gpt2_sharded"), dir);
  const std::string index_path = dir + "/model.safetensors.index.json";
  json index = *ReadJsonFile(index_path);
  index["weight_map"]["transformer.wte.weight"] =
      "model-00003-of-00003.safetensors";
  WriteBytes(index_path, index.dump());
  EXPECT_TRUE(ErrorContains(
      WeightStore::Open(dir).status(),
      {index_path, "'transformer.wte.weight'",
       dir + "/model-00003-of-00003.safetensors", "no tensor of that name"}));
}

TEST(WeightStoreTest, BadIndexIsAnError) {
  const std::string dir = NewTempDir("bad_index");
  const std::string index_path = dir + "/model.safetensors.index.json";
  WriteBytes(index_path, R"({"weight_map": {"w": "../outside.safetensors"}})");
  EXPECT_TRUE(ErrorContains(WeightStore::Open(dir).status(),
                            {index_path, "'w'", "inside the model folder"}));
  WriteBytes(index_path, R"({"metadata": {}})");
  EXPECT_TRUE(ErrorContains(WeightStore::Open(dir).status(),
                            {index_path, "weight_map"}));
  WriteBytes(index_path, "{\"weight_map\": \n}");
  EXPECT_TRUE(ErrorContains(WeightStore::Open(dir).status(),
                            {index_path + ":2:1: invalid JSON"}));
}

TEST(WeightStoreTest, EmptyFolderListsWhatWasLookedFor) {
  const std::string dir = NewTempDir("no_weights");
  absl::StatusOr<WeightStore> store = WeightStore::Open(dir);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ErrorContains(
      store.status(),
      {dir + "/model.safetensors", dir + "/model.safetensors.index.json"}));
  WriteBytes(dir + "/pytorch_model.bin", "x");
  EXPECT_TRUE(ErrorContains(WeightStore::Open(dir).status(),
                            {"pytorch_model.bin", "safe_serialization"}));
}

TEST(WriteWeightStoreTest, SingleFileMatchesTransformers) {
  const Gpt2Tensors gpt2 = LoadGpt2();
  // save_pretrained's single file lays tensors out sorted by name.
  std::vector<TensorToWrite> by_name = gpt2.tensors;
  std::sort(by_name.begin(), by_name.end(),
            [](const TensorToWrite& a, const TensorToWrite& b) {
              return a.name < b.name;
            });
  const std::string dir = NewTempDir("write_single");
  ASSERT_TRUE(
      WriteWeightStore(dir, by_name, DType::kF32, size_t{1} << 30).ok());
  EXPECT_EQ(ReadBytes(dir + "/model.safetensors"),
            ReadBytes(TestdataPath("gpt2/model.safetensors")));
  EXPECT_FALSE(Exists(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(CountEntriesContaining(dir, ".tmp."), 0);
}

TEST(WriteWeightStoreTest, ShardedIndexMatchesTransformers) {
  const Gpt2Tensors gpt2 = LoadGpt2();
  const std::string dir = NewTempDir("write_sharded");
  // save_pretrained(max_shard_size="2KB") shards at 2000 bytes.
  ASSERT_TRUE(WriteWeightStore(dir, gpt2.tensors, DType::kF32, 2000).ok());
  EXPECT_EQ(
      ReadBytes(dir + "/model.safetensors.index.json"),
      ReadBytes(TestdataPath("gpt2_sharded/model.safetensors.index.json")));
  EXPECT_FALSE(Exists(dir + "/model.safetensors"));
  EXPECT_EQ(CountEntriesContaining(dir, "-of-00003.safetensors"), 3);

  absl::StatusOr<WeightStore> written = WeightStore::Open(dir);
  ASSERT_TRUE(written.ok()) << written.status();
  for (size_t i = 0; i < gpt2.tensors.size(); ++i) {
    const std::vector<float> values = ReadAll(*written, gpt2.tensors[i].name);
    ASSERT_EQ(values.size(), gpt2.values[i].size());
    EXPECT_EQ(
        std::memcmp(values.data(), gpt2.values[i].data(), values.size() * 4), 0)
        << gpt2.tensors[i].name;
    EXPECT_EQ(written->FileOf(gpt2.tensors[i].name)->metadata().at("format"),
              "pt");
  }
}

TEST(WriteWeightStoreTest, OversizedTensorGetsItsOwnShard) {
  const Gpt2Tensors gpt2 = LoadGpt2();
  const std::string dir = NewTempDir("write_oversized");
  // wte (512 bytes) is larger than the limit; the rest is packed greedily.
  ASSERT_TRUE(WriteWeightStore(dir, gpt2.tensors, DType::kF32, 300).ok());
  absl::StatusOr<WeightStore> written = WeightStore::Open(dir);
  ASSERT_TRUE(written.ok()) << written.status();
  const SafetensorsFile* wte = written->FileOf("transformer.wte.weight");
  EXPECT_EQ(wte->tensors().size(), 1u);
  EXPECT_NE(wte->path().find("model-00001-of-"), std::string::npos);
  const SafetensorsFile* wpe = written->FileOf("transformer.wpe.weight");
  EXPECT_NE(wpe->path().find("model-00002-of-"), std::string::npos);
}

TEST(WriteWeightStoreTest, ShardMayFillTheLimitExactly) {
  const std::vector<float> values(25, 1.0f);  // 100 bytes as F32
  const std::string dir = NewTempDir("exact_fill");
  ASSERT_TRUE(WriteWeightStore(dir,
                               {{"a", {25}, values.data()},
                                {"b", {25}, values.data()},
                                {"c", {25}, values.data()}},
                               DType::kF32, 200)
                  .ok());
  absl::StatusOr<WeightStore> written = WeightStore::Open(dir);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->FileOf("a"), written->FileOf("b"));
  EXPECT_NE(written->FileOf("b"), written->FileOf("c"));
  EXPECT_EQ(CountEntriesContaining(dir, "-of-00002.safetensors"), 2);
}

TEST(WriteWeightStoreTest, Bf16StoreRoundsLikeFloatToBf16) {
  const Gpt2Tensors gpt2 = LoadGpt2();
  const std::string dir = NewTempDir("write_bf16");
  ASSERT_TRUE(WriteWeightStore(dir, gpt2.tensors, DType::kBF16, 1000).ok());
  absl::StatusOr<WeightStore> written = WeightStore::Open(dir);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written->StorageDType(), DType::kBF16);
  for (size_t i = 0; i < gpt2.tensors.size(); ++i) {
    const std::vector<float> values = ReadAll(*written, gpt2.tensors[i].name);
    for (size_t k = 0; k < values.size(); ++k) {
      EXPECT_EQ(values[k], Bf16ToFloat(FloatToBf16(gpt2.values[i][k])));
    }
  }
}

TEST(WriteWeightStoreTest, RemovesFilesOfTheOtherLayout) {
  const Gpt2Tensors gpt2 = LoadGpt2();
  const std::string dir = NewTempDir("relayout");
  ASSERT_TRUE(WriteWeightStore(dir, gpt2.tensors, DType::kF32, 500).ok());
  const int shards = CountEntriesContaining(dir, "model-0");
  EXPECT_GT(shards, 3);
  ASSERT_TRUE(WriteWeightStore(dir, gpt2.tensors, DType::kF32, 2000).ok());
  EXPECT_EQ(CountEntriesContaining(dir, "model-0"), 3);
  ASSERT_TRUE(WriteWeightStore(dir, gpt2.tensors, DType::kF32, 1 << 20).ok());
  EXPECT_EQ(CountEntriesContaining(dir, "model-0"), 0);
  EXPECT_FALSE(Exists(dir + "/model.safetensors.index.json"));
  ASSERT_TRUE(WriteWeightStore(dir, gpt2.tensors, DType::kF32, 2000).ok());
  EXPECT_FALSE(Exists(dir + "/model.safetensors"));
  EXPECT_TRUE(WeightStore::Open(dir).ok());
}

TEST(WriteWeightStoreTest, RejectsBadInput) {
  const std::string dir = NewTempDir("write_bad");
  const float one = 1.0f;
  EXPECT_TRUE(
      ErrorContains(WriteWeightStore(dir, {{"w", {1}, &one}, {"w", {1}, &one}},
                                     DType::kF32, 100),
                    {dir, "'w'", "twice"}));
  EXPECT_TRUE(
      ErrorContains(WriteWeightStore(dir, {{"w", {1}, &one}}, DType::kF32, 0),
                    {dir, "max_shard_bytes"}));
  EXPECT_TRUE(ErrorContains(
      WriteWeightStore(dir, {{"w", {-2}, &one}}, DType::kF32, 100),
      {dir, "'w'", "[-2]"}));
  EXPECT_EQ(CountEntriesContaining(dir, "model"), 0);
}

}  // namespace
}  // namespace prefopt::io
