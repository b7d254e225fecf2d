#include "trainer/lora/peft_adapter.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "trainer/io/hf_config.h"
#include "trainer/io/json_file.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/test_util.h"

namespace prefopt::lora {
namespace {

using io::testing::ErrorContains;
using nlohmann::json;

// The adapters PEFT 0.21.2 wrote (tests/fixtures/generate_lora_peft.py).
struct Case {
  const char* name;
  const char* base;
  float scaling;
  int modules;
};
constexpr Case kCases[] = {
    {"gpt2", "tests/fixtures/gpt2/policy", 2.0f, 8},
    {"llama", "tests/fixtures/llama/llama3_untied/policy", 3.0f, 14},
    {"qwen2", "tests/fixtures/qwen2/policy", 3.0f, 4},
};

std::string StartAdapter(const Case& c) {
  return std::string("tests/fixtures/lora/") + c.name + "/adapter_start";
}

io::ModelSpec Spec(const Case& c) {
  absl::StatusOr<io::ModelSpec> spec = io::ReadHfConfig(c.base);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return *spec;
}

struct StoredTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
};

std::map<std::string, StoredTensor> ReadTensors(const std::string& path) {
  std::map<std::string, StoredTensor> tensors;
  absl::StatusOr<io::SafetensorsFile> file = io::SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return tensors;
  for (const io::TensorInfo& info : file->tensors()) {
    absl::StatusOr<std::vector<float>> values = file->ReadFloat(info.name);
    EXPECT_TRUE(values.ok()) << values.status();
    tensors[info.name] = {info.shape, *values};
  }
  return tensors;
}

void WriteTensors(const std::string& path,
                  const std::map<std::string, StoredTensor>& tensors,
                  io::DType dtype = io::DType::kF32) {
  std::vector<io::TensorToWrite> list;
  for (const auto& [name, t] : tensors) {
    list.push_back({name, t.shape, t.values.data()});
  }
  ASSERT_TRUE(io::WriteSafetensors(path, list, dtype, {{"format", "pt"}}).ok());
}

json ReadConfig(const std::string& dir) {
  absl::StatusOr<json> config = io::ReadJsonFile(dir + "/adapter_config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : json();
}

// A copy of `c`'s start adapter in a fresh folder, to break.
std::string CopyOfStart(const Case& c, const std::string& name) {
  const std::string dir = io::testing::NewTempDir(name);
  io::testing::CopyDir(StartAdapter(c), dir);
  return dir;
}

TEST(ReadPeftAdapterTest, ReadsPeftsAdapters) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    const io::ModelSpec spec = Spec(c);
    absl::StatusOr<PeftAdapter> adapter =
        ReadPeftAdapter(StartAdapter(c), spec);
    ASSERT_TRUE(adapter.ok()) << adapter.status();
    EXPECT_EQ(adapter->settings.r, 4);
    EXPECT_EQ(adapter->settings.Scaling(), c.scaling);
    EXPECT_EQ(adapter->settings.dropout, 0.0f);
    EXPECT_EQ(adapter->base_model_name_or_path, c.base);
    ASSERT_EQ(adapter->factors.size(), static_cast<size_t>(c.modules));

    // Every value, bitwise, in ResolveTargetModules order.
    const std::map<std::string, StoredTensor> stored =
        ReadTensors(StartAdapter(c) + "/adapter_model.safetensors");
    ASSERT_EQ(stored.size(), 2 * adapter->factors.size());
    absl::StatusOr<std::vector<LinearModule>> modules = ResolveTargetModules(
        spec, adapter->settings.target_modules, "target_modules");
    ASSERT_TRUE(modules.ok());
    for (size_t i = 0; i < adapter->factors.size(); ++i) {
      const AdapterFactors& f = adapter->factors[i];
      EXPECT_EQ(f.module.path, (*modules)[i].path);
      const std::string key = "base_model.model." + f.module.path;
      const StoredTensor& a = stored.at(key + ".lora_A.weight");
      const StoredTensor& b = stored.at(key + ".lora_B.weight");
      EXPECT_EQ(a.shape, (std::vector<int64_t>{4, f.module.in_features}));
      EXPECT_EQ(b.shape, (std::vector<int64_t>{f.module.out_features, 4}));
      EXPECT_EQ(f.a, a.values) << key;
      EXPECT_EQ(f.b, b.values) << key;
    }
  }
  // GPT-2's "c_proj" selects both attn.c_proj and mlp.c_proj; the Conv1D
  // factors have Linear's [r, in] / [out, r] shapes.
  absl::StatusOr<PeftAdapter> gpt2 =
      ReadPeftAdapter(StartAdapter(kCases[0]), Spec(kCases[0]));
  ASSERT_TRUE(gpt2.ok());
  EXPECT_EQ(gpt2->factors[3].module.path, "transformer.h.0.mlp.c_proj");
  EXPECT_EQ(gpt2->factors[3].a.size(), 4u * 128);
  EXPECT_TRUE(gpt2->factors[3].module.fan_in_fan_out);
  absl::StatusOr<PeftAdapter> qwen2 =
      ReadPeftAdapter(StartAdapter(kCases[2]), Spec(kCases[2]));
  ASSERT_TRUE(qwen2.ok());
  EXPECT_TRUE(qwen2->settings.use_rslora);
  EXPECT_EQ(qwen2->settings.alpha, 6.0f);
}

TEST(ReadPeftAdapterTest, WidensHalfPrecisionFactors) {
  const Case& c = kCases[1];
  for (const io::DType dtype : {io::DType::kBF16, io::DType::kF16}) {
    SCOPED_TRACE(std::string(io::DTypeName(dtype)));
    const std::string dir = CopyOfStart(
        c, std::string("half_") + std::string(io::DTypeName(dtype)));
    const std::string weights = dir + "/adapter_model.safetensors";
    const std::map<std::string, StoredTensor> fp32 = ReadTensors(weights);
    WriteTensors(weights, fp32, dtype);
    absl::StatusOr<PeftAdapter> adapter = ReadPeftAdapter(dir, Spec(c));
    ASSERT_TRUE(adapter.ok()) << adapter.status();
    const AdapterFactors& f = adapter->factors[0];
    const std::vector<float>& want =
        fp32.at("base_model.model." + f.module.path + ".lora_A.weight").values;
    ASSERT_EQ(f.a.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      const float narrowed = dtype == io::DType::kBF16
                                 ? io::Bf16ToFloat(io::FloatToBf16(want[i]))
                                 : io::Fp16ToFloat(io::FloatToFp16(want[i]));
      ASSERT_EQ(f.a[i], narrowed) << i;
    }
  }
}

TEST(WritePeftAdapterTest, RoundTripsPeftsFiles) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    const io::ModelSpec spec = Spec(c);
    absl::StatusOr<PeftAdapter> adapter =
        ReadPeftAdapter(StartAdapter(c), spec);
    ASSERT_TRUE(adapter.ok()) << adapter.status();
    const std::string dir =
        io::testing::NewTempDir(std::string("roundtrip_") + c.name) + "/out";
    ASSERT_TRUE(WritePeftAdapter(dir, spec, *adapter).ok());

    // The tensors: same names, shapes, dtype (F32) and bytes.
    absl::StatusOr<io::SafetensorsFile> peft = io::SafetensorsFile::Open(
        StartAdapter(c) + "/adapter_model.safetensors");
    absl::StatusOr<io::SafetensorsFile> ours =
        io::SafetensorsFile::Open(dir + "/adapter_model.safetensors");
    ASSERT_TRUE(peft.ok() && ours.ok());
    ASSERT_EQ(ours->tensors().size(), peft->tensors().size());
    EXPECT_EQ(ours->metadata(), peft->metadata());
    for (const io::TensorInfo& want : peft->tensors()) {
      const io::TensorInfo* got = ours->Find(want.name);
      ASSERT_NE(got, nullptr) << want.name;
      EXPECT_EQ(got->dtype, io::DType::kF32);
      EXPECT_EQ(got->shape, want.shape);
      ASSERT_EQ(got->end - got->begin, want.end - want.begin);
      EXPECT_EQ(std::memcmp(ours->Data(*got), peft->Data(want),
                            want.end - want.begin),
                0)
          << want.name;
    }
    // The config: every key PEFT wrote, with PEFT's value.
    EXPECT_EQ(ReadConfig(dir), ReadConfig(StartAdapter(c)));
  }
}

TEST(WritePeftAdapterTest, WritesTheModulesPeftWouldSave) {
  const Case& c = kCases[1];
  const io::ModelSpec spec = Spec(c);
  absl::StatusOr<PeftAdapter> adapter = ReadPeftAdapter(StartAdapter(c), spec);
  ASSERT_TRUE(adapter.ok());
  // "all-linear" is saved as the layers' names, which read back the same.
  adapter->settings.target_modules = {"all-linear"};
  adapter->settings.alpha = 12.5f;
  adapter->settings.dropout = 0.05f;
  const std::string dir = io::testing::NewTempDir("all_linear") + "/out";
  ASSERT_TRUE(WritePeftAdapter(dir, spec, *adapter).ok());
  const json config = ReadConfig(dir);
  EXPECT_EQ(config["target_modules"],
            json({"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                  "up_proj", "v_proj"}));
  EXPECT_EQ(config["lora_alpha"].dump(), "12.5");
  EXPECT_EQ(config["lora_dropout"].dump(), "0.05");
  EXPECT_EQ(config["fan_in_fan_out"], false);
  absl::StatusOr<PeftAdapter> back = ReadPeftAdapter(dir, spec);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->settings.alpha, 12.5f);
  EXPECT_EQ(back->settings.dropout, 0.05f);
  ASSERT_EQ(back->factors.size(), adapter->factors.size());
  EXPECT_EQ(back->factors[13].b, adapter->factors[13].b);

  // No target_modules: PEFT's default for the architecture, spelled out.
  const Case& q = kCases[2];
  absl::StatusOr<PeftAdapter> qwen2 = ReadPeftAdapter(StartAdapter(q), Spec(q));
  ASSERT_TRUE(qwen2.ok());
  qwen2->settings.target_modules.clear();
  qwen2->base_model_name_or_path.clear();
  const std::string qdir = io::testing::NewTempDir("default_targets") + "/out";
  ASSERT_TRUE(WritePeftAdapter(qdir, Spec(q), *qwen2).ok());
  const json qconfig = ReadConfig(qdir);
  EXPECT_EQ(qconfig["target_modules"], json({"q_proj", "v_proj"}));
  EXPECT_TRUE(qconfig["base_model_name_or_path"].is_null());
  EXPECT_EQ(ReadConfig(StartAdapter(kCases[0]))["fan_in_fan_out"], true);
}

TEST(WritePeftAdapterTest, RefusesBadAdaptersAndNonEmptyFolders) {
  const Case& c = kCases[2];
  const io::ModelSpec spec = Spec(c);
  absl::StatusOr<PeftAdapter> adapter = ReadPeftAdapter(StartAdapter(c), spec);
  ASSERT_TRUE(adapter.ok());

  const std::string full = io::testing::NewTempDir("full");
  io::testing::WriteBytes(full + "/keep.txt", "mine");
  EXPECT_TRUE(ErrorContains(WritePeftAdapter(full, spec, *adapter),
                            {full, "not an empty folder"}));
  EXPECT_EQ(io::testing::ReadBytes(full + "/keep.txt"), "mine");
  // An existing empty folder is fine.
  EXPECT_TRUE(
      WritePeftAdapter(io::testing::NewTempDir("empty"), spec, *adapter).ok());

  PeftAdapter nan = *adapter;
  nan.factors[1].b[5] = std::numeric_limits<float>::quiet_NaN();
  const std::string nan_dir = io::testing::NewTempDir("nan") + "/out";
  EXPECT_TRUE(ErrorContains(
      WritePeftAdapter(nan_dir, spec, nan),
      {"base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight", "NaN",
       "flat index 5"}));
  EXPECT_FALSE(io::testing::Exists(nan_dir + "/adapter_model.safetensors"));

  PeftAdapter short_a = *adapter;
  short_a.factors[2].a.pop_back();
  EXPECT_TRUE(
      ErrorContains(WritePeftAdapter(io::testing::NewTempDir("short") + "/out",
                                     spec, short_a),
                    {"model.layers.1.self_attn.q_proj", "127 + 128"}));

  PeftAdapter fewer = *adapter;
  fewer.factors.pop_back();
  EXPECT_TRUE(ErrorContains(
      WritePeftAdapter(io::testing::NewTempDir("fewer") + "/out", spec, fewer),
      {"selects 4 modules", "holds 3"}));
}

// Each case breaks a copy of an adapter PEFT wrote and expects an error that
// names the file and the field or tensor at fault.
class BrokenAdapterTest : public ::testing::Test {
 protected:
  const Case& c_ = kCases[2];  // Qwen2: q_proj and v_proj

  absl::Status ReadWithConfigChange(const std::string& name,
                                    const std::string& field,
                                    const json& value) {
    const std::string dir = CopyOfStart(c_, "config_" + name);
    json config = ReadConfig(dir);
    config[field] = value;
    EXPECT_TRUE(io::WriteJsonFile(dir + "/adapter_config.json", config).ok());
    return ReadPeftAdapter(dir, Spec(c_)).status();
  }

  absl::Status ReadWithTensors(
      const std::string& name,
      const std::function<void(std::map<std::string, StoredTensor>*)>& edit) {
    const std::string dir = CopyOfStart(c_, "tensors_" + name);
    const std::string weights = dir + "/adapter_model.safetensors";
    std::map<std::string, StoredTensor> tensors = ReadTensors(weights);
    edit(&tensors);
    WriteTensors(weights, tensors);
    return ReadPeftAdapter(dir, Spec(c_)).status();
  }
};

constexpr char kVB0[] =
    "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight";
constexpr char kQA1[] =
    "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight";

TEST_F(BrokenAdapterTest, MissingFiles) {
  const std::string no_config = CopyOfStart(c_, "no_config");
  std::remove((no_config + "/adapter_config.json").c_str());
  absl::Status s = ReadPeftAdapter(no_config, Spec(c_)).status();
  EXPECT_TRUE(absl::IsNotFound(s));
  EXPECT_TRUE(ErrorContains(s, {no_config, "no adapter_config.json"}));

  const std::string no_weights = CopyOfStart(c_, "no_weights");
  std::remove((no_weights + "/adapter_model.safetensors").c_str());
  s = ReadPeftAdapter(no_weights, Spec(c_)).status();
  EXPECT_TRUE(absl::IsNotFound(s));
  EXPECT_TRUE(ErrorContains(s, {no_weights, "no adapter_model.safetensors"}));
  io::testing::WriteBytes(no_weights + "/adapter_model.bin", "pickle");
  EXPECT_TRUE(ErrorContains(ReadPeftAdapter(no_weights, Spec(c_)).status(),
                            {"adapter_model.bin", "safe_serialization=True"}));
}

TEST_F(BrokenAdapterTest, ConfigFields) {
  const std::string file = "adapter_config.json";
  const std::string bad_json = CopyOfStart(c_, "bad_json");
  io::testing::WriteBytes(bad_json + "/adapter_config.json", "{\"r\": 4,\n");
  EXPECT_TRUE(ErrorContains(ReadPeftAdapter(bad_json, Spec(c_)).status(),
                            {bad_json + "/adapter_config.json:2:"}));
  io::testing::WriteBytes(bad_json + "/adapter_config.json", "[4]");
  EXPECT_TRUE(ErrorContains(ReadPeftAdapter(bad_json, Spec(c_)).status(),
                            {file, "expected a JSON object"}));
  EXPECT_TRUE(ErrorContains(ReadWithConfigChange("r_type", "r", "four"),
                            {file, "'r'", "\"four\""}));
  EXPECT_TRUE(
      ErrorContains(ReadWithConfigChange("r_zero", "r", 0), {file, "'r'"}));
  EXPECT_TRUE(ErrorContains(ReadWithConfigChange("alpha", "lora_alpha", -1),
                            {file, "'lora_alpha'", "positive"}));
  EXPECT_TRUE(ErrorContains(ReadWithConfigChange("dropout", "lora_dropout", 1),
                            {file, "'lora_dropout'"}));
  EXPECT_TRUE(ErrorContains(
      ReadWithConfigChange("peft_type", "peft_type", "PREFIX_TUNING"),
      {file, "'peft_type'", "PREFIX_TUNING", "only LoRA"}));
  EXPECT_TRUE(ErrorContains(ReadWithConfigChange("dora", "use_dora", true),
                            {file, "'use_dora'", "DoRA"}));
  EXPECT_TRUE(ErrorContains(ReadWithConfigChange("bias", "bias", "all"),
                            {file, "'bias'", "\"all\""}));
  EXPECT_TRUE(ErrorContains(
      ReadWithConfigChange("rank_pattern", "rank_pattern", {{"q_proj", 8}}),
      {file, "'rank_pattern'", "per-module ranks"}));
  EXPECT_TRUE(ErrorContains(
      ReadWithConfigChange("alpha_pattern", "alpha_pattern", {{"q_proj", 8}}),
      {file, "'alpha_pattern'"}));
  EXPECT_TRUE(
      ErrorContains(ReadWithConfigChange("modules_to_save", "modules_to_save",
                                         json::array({"lm_head"})),
                    {file, "'modules_to_save'"}));
  EXPECT_TRUE(ErrorContains(
      ReadWithConfigChange("layers", "layers_to_transform", json::array({0})),
      {file, "'layers_to_transform'"}));
  EXPECT_TRUE(
      ErrorContains(ReadWithConfigChange("task", "task_type", "SEQ_CLS"),
                    {file, "'task_type'", "SEQ_CLS"}));
  EXPECT_TRUE(ErrorContains(
      ReadWithConfigChange("regex", "target_modules", ".*(q|v)_proj"),
      {file, "'target_modules'", "regular expression"}));
  EXPECT_TRUE(ErrorContains(
      ReadWithConfigChange("embedding", "target_modules",
                           json::array({"q_proj", "embed_tokens"})),
      {file, "target_modules", "\"embed_tokens\"", "matches no linear layer"}));
}

TEST_F(BrokenAdapterTest, Tensors) {
  const std::string file = "adapter_model.safetensors";
  // r in the config disagrees with the tensors.
  EXPECT_TRUE(ErrorContains(
      ReadWithConfigChange("r_mismatch", "r", 8),
      {file, "lora_A.weight", "has shape [4, 32], expected [8, 32]", "r = 8"}));
  EXPECT_TRUE(
      ErrorContains(ReadWithTensors("transposed",
                                    [](std::map<std::string, StoredTensor>* t) {
                                      t->at(kQA1).shape = {32, 4};
                                    }),
                    {file, kQA1, "[4, 32]"}));
  EXPECT_TRUE(ErrorContains(
      ReadWithTensors(
          "missing",
          [](std::map<std::string, StoredTensor>* t) { t->erase(kVB0); }),
      {file, "no tensor", kVB0}));
  EXPECT_TRUE(ErrorContains(
      ReadWithTensors("nan",
                      [](std::map<std::string, StoredTensor>* t) {
                        t->at(kVB0).values[7] =
                            std::numeric_limits<float>::quiet_NaN();
                      }),
      {file, kVB0, "NaN", "flat index 7"}));
  EXPECT_TRUE(ErrorContains(
      ReadWithTensors("inf",
                      [](std::map<std::string, StoredTensor>* t) {
                        t->at(kQA1).values[0] =
                            -std::numeric_limits<float>::infinity();
                      }),
      {file, kQA1, "infinity"}));
  // A module the config does not target, one the model does not have, and a
  // tensor of another LoRA variant.
  const StoredTensor a = {{4, 32}, std::vector<float>(4 * 32, 0.5f)};
  EXPECT_TRUE(ErrorContains(
      ReadWithTensors(
          "untargeted",
          [&](std::map<std::string, StoredTensor>* t) {
            (*t)["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"] =
                a;
          }),
      {file, "mlp.up_proj.lora_A.weight", "target_modules does not select"}));
  EXPECT_TRUE(ErrorContains(
      ReadWithTensors("lm_head",
                      [&](std::map<std::string, StoredTensor>* t) {
                        (*t)["base_model.model.lm_head.lora_A.weight"] = a;
                      }),
      {file, "'lm_head'", "not a linear layer"}));
  EXPECT_TRUE(ErrorContains(
      ReadWithTensors("dora_tensor",
                      [&](std::map<std::string, StoredTensor>* t) {
                        (*t)
                            ["base_model.model.model.layers.0.self_attn.q_proj."
                             "lora_magnitude_vector"] = {
                                {32}, std::vector<float>(32, 1)};
                      }),
      {file, "lora_magnitude_vector", "not a LoRA factor"}));
}

TEST_F(BrokenAdapterTest, TruncatedWeights) {
  const std::string dir = CopyOfStart(c_, "truncated");
  const std::string weights = dir + "/adapter_model.safetensors";
  std::string bytes = io::testing::ReadBytes(weights);
  bytes.resize(bytes.size() - 100);
  io::testing::WriteBytes(weights, bytes);
  EXPECT_TRUE(ErrorContains(ReadPeftAdapter(dir, Spec(c_)).status(),
                            {"adapter_model.safetensors"}));
}

}  // namespace
}  // namespace prefopt::lora
