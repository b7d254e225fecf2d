#include "trainer/io/hf_config.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "trainer/io/json_file.h"
#include "trainer/io/test_util.h"

namespace prefopt::io {
namespace {

using testing::ErrorContains;
using testing::NewTempDir;
using testing::TestdataPath;

void ExpectSameSpec(const ModelSpec& a, const ModelSpec& b) {
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.hf_architecture, b.hf_architecture);
  EXPECT_EQ(a.hf_model_type, b.hf_model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.max_positions, b.max_positions);
  EXPECT_EQ(a.hidden, b.hidden);
  EXPECT_EQ(a.n_layer, b.n_layer);
  EXPECT_EQ(a.n_head, b.n_head);
  EXPECT_EQ(a.n_kv_head, b.n_kv_head);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.intermediate, b.intermediate);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.activation, b.activation);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
  EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings,
            b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.attention_out_bias, b.attention_out_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
  EXPECT_EQ(a.extra_eos_token_ids, b.extra_eos_token_ids);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
}

ModelSpec Read(const std::string& dir) {
  absl::StatusOr<ModelSpec> spec = ReadHfConfig(TestdataPath(dir));
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : ModelSpec();
}

TEST(ReadHfConfigTest, Gpt2) {
  const ModelSpec spec = Read("gpt2");
  EXPECT_EQ(spec.arch, ModelSpec::Arch::kGpt2);
  EXPECT_EQ(spec.hf_architecture, "GPT2LMHeadModel");
  EXPECT_EQ(spec.hf_model_type, "gpt2");
  EXPECT_EQ(spec.vocab_size, 16);
  EXPECT_EQ(spec.max_positions, 8);
  EXPECT_EQ(spec.hidden, 8);
  EXPECT_EQ(spec.n_layer, 1);
  EXPECT_EQ(spec.n_head, 2);
  EXPECT_EQ(spec.n_kv_head, 2);
  EXPECT_EQ(spec.head_dim, 4);
  EXPECT_EQ(spec.intermediate, 32);  // n_inner null -> 4 * n_embd
  EXPECT_EQ(spec.norm_eps, 1e-5);
  EXPECT_TRUE(spec.tie_word_embeddings);
  EXPECT_EQ(spec.activation, "gelu_new");
  EXPECT_TRUE(spec.attention_bias);
  EXPECT_TRUE(spec.attention_out_bias);
  EXPECT_TRUE(spec.mlp_bias);
  EXPECT_EQ(spec.bos_token_id, 0);
  EXPECT_EQ(spec.eos_token_id, 1);
  EXPECT_TRUE(spec.extra_eos_token_ids.empty());
  EXPECT_EQ(spec.torch_dtype, "float32");
  EXPECT_EQ(spec.rope_scaling.type, RopeScaling::Type::kNone);
}

TEST(ReadHfConfigTest, Llama) {
  const ModelSpec spec = Read("configs/llama");
  EXPECT_EQ(spec.arch, ModelSpec::Arch::kLlama);
  EXPECT_EQ(spec.hf_architecture, "LlamaForCausalLM");
  EXPECT_EQ(spec.vocab_size, 32);
  EXPECT_EQ(spec.max_positions, 64);
  EXPECT_EQ(spec.hidden, 16);
  EXPECT_EQ(spec.intermediate, 40);
  EXPECT_EQ(spec.n_layer, 2);
  EXPECT_EQ(spec.n_head, 4);
  EXPECT_EQ(spec.n_kv_head, 2);
  EXPECT_EQ(spec.head_dim, 4);
  EXPECT_EQ(spec.norm_eps, 1e-5);
  EXPECT_FALSE(spec.tie_word_embeddings);
  EXPECT_EQ(spec.activation, "silu");
  EXPECT_EQ(spec.rope_theta, 500000.0);
  EXPECT_EQ(spec.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(spec.rope_scaling.factor, 8.0);
  EXPECT_EQ(spec.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(spec.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(spec.rope_scaling.original_max_position_embeddings, 32);
  EXPECT_FALSE(spec.attention_bias);
  EXPECT_FALSE(spec.attention_out_bias);
  EXPECT_FALSE(spec.mlp_bias);
  EXPECT_EQ(spec.bos_token_id, 1);
  EXPECT_EQ(spec.eos_token_id, 2);
  EXPECT_EQ(spec.extra_eos_token_ids, std::vector<int64_t>{3});
  EXPECT_EQ(spec.torch_dtype, "bfloat16");
}

TEST(ReadHfConfigTest, Mistral) {
  const ModelSpec spec = Read("configs/mistral");
  EXPECT_EQ(spec.arch, ModelSpec::Arch::kLlama);
  EXPECT_EQ(spec.hf_architecture, "MistralForCausalLM");
  EXPECT_EQ(spec.hf_model_type, "mistral");
  EXPECT_EQ(spec.n_kv_head, 1);
  EXPECT_EQ(spec.head_dim, 8);  // given explicitly, not hidden / heads
  EXPECT_EQ(spec.norm_eps, 1e-6);
  EXPECT_EQ(spec.rope_theta, 10000.0);
  EXPECT_FALSE(spec.attention_bias);
  EXPECT_FALSE(spec.mlp_bias);
  EXPECT_EQ(spec.torch_dtype, "");
}

TEST(ReadHfConfigTest, Qwen2) {
  const ModelSpec spec = Read("configs/qwen2");
  EXPECT_EQ(spec.arch, ModelSpec::Arch::kQwen2);
  EXPECT_EQ(spec.hf_architecture, "Qwen2ForCausalLM");
  EXPECT_EQ(spec.head_dim, 4);
  EXPECT_EQ(spec.n_kv_head, 2);
  EXPECT_TRUE(spec.tie_word_embeddings);
  EXPECT_EQ(spec.rope_theta, 1000000.0);
  EXPECT_TRUE(spec.attention_bias);
  EXPECT_FALSE(spec.attention_out_bias);
  EXPECT_FALSE(spec.mlp_bias);
  EXPECT_FALSE(spec.bos_token_id.has_value());
  EXPECT_EQ(spec.eos_token_id, 5);
}

struct BadConfig {
  const char* dir;
  std::vector<std::string_view> message_parts;
};

TEST(ReadHfConfigTest, RejectsBadConfigs) {
  const std::vector<BadConfig> cases = {
      {"unknown_arch",
       {"\"BertForMaskedLM\"", "'architectures'", "GPT2LMHeadModel",
        "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}},
      {"model_type_mismatch", {"'model_type'", "\"llama\"", "GPT2LMHeadModel"}},
      {"gpt2_relu", {"'activation_function'", "\"relu\""}},
      {"gpt2_inverse_layer_idx",
       {"'scale_attn_by_inverse_layer_idx'", "not support"}},
      {"gpt2_upcast", {"'reorder_and_upcast_attn'", "not support"}},
      {"gpt2_string_size", {"'n_embd'", "an integer", "the string \"8\""}},
      {"gpt2_heads", {"'n_embd'", "9", "n_head 2"}},
      {"gpt2_missing_layers", {"missing required field 'n_layer'"}},
      {"llama_gelu", {"'hidden_act'", "\"gelu\"", "silu"}},
      {"llama_kv_heads", {"'num_attention_heads'", "num_key_value_heads 3"}},
      {"llama_yarn", {"'rope_scaling'", "\"yarn\"", "linear", "llama3"}},
      {"llama_llama3_incomplete",
       {"(rope_scaling)", "'low_freq_factor'", "a number"}},
      {"llama_partial_rotary", {"'partial_rotary_factor'", "not supported"}},
      {"mistral_sliding", {"'sliding_window'", "16", "not supported"}},
      {"qwen2_sliding", {"'use_sliding_window'", "16", "not supported"}},
      {"not_json", {":3:15: invalid JSON"}},
  };
  for (const BadConfig& c : cases) {
    const std::string dir = TestdataPath(std::string("bad_configs/") + c.dir);
    absl::StatusOr<ModelSpec> spec = ReadHfConfig(dir);
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument)
        << c.dir;
    EXPECT_TRUE(ErrorContains(spec.status(), {dir + "/config.json"})) << c.dir;
    for (const std::string_view part : c.message_parts) {
      EXPECT_TRUE(ErrorContains(spec.status(), {part})) << c.dir;
    }
  }
}

// transformers 5 folders (testdata/configs_v5, written by
// make_transformers5_configs.py): RoPE as transformers 5 itself resolves it
// (expected_rope.json), and the v4 fixtures saved by transformers 5 read as
// the v4 files do.
TEST(ReadHfConfigTest, ReadsTransformers5RopeParameters) {
  for (const char* name :
       {"gpt2", "llama", "mistral", "qwen2", "llama_both_forms",
        "llama_theta_outside", "llama3_default_original",
        "llama_linear_type_key", "qwen2_per_layer_type"}) {
    SCOPED_TRACE(name);
    const std::string dir = std::string("configs_v5/") + name;
    const ModelSpec spec = Read(dir);
    absl::StatusOr<nlohmann::json> expected =
        ReadJsonFile(TestdataPath(dir + "/expected_rope.json"));
    ASSERT_TRUE(expected.ok()) << expected.status();
    const nlohmann::json& rope = (*expected)["rope_parameters"];
    if (spec.arch == ModelSpec::Arch::kGpt2) {
      EXPECT_TRUE(rope.empty());
      continue;
    }
    EXPECT_EQ(spec.rope_theta, rope["rope_theta"].get<double>());
    const std::string type = rope["rope_type"];
    if (type == "default") {
      EXPECT_EQ(spec.rope_scaling.type, RopeScaling::Type::kNone);
      continue;
    }
    EXPECT_EQ(spec.rope_scaling.factor, rope["factor"].get<double>());
    if (type == "linear") {
      EXPECT_EQ(spec.rope_scaling.type, RopeScaling::Type::kLinear);
      continue;
    }
    ASSERT_EQ(type, "llama3");
    EXPECT_EQ(spec.rope_scaling.type, RopeScaling::Type::kLlama3);
    EXPECT_EQ(spec.rope_scaling.low_freq_factor,
              rope["low_freq_factor"].get<double>());
    EXPECT_EQ(spec.rope_scaling.high_freq_factor,
              rope["high_freq_factor"].get<double>());
    EXPECT_EQ(spec.rope_scaling.original_max_position_embeddings,
              rope["original_max_position_embeddings"].get<int64_t>());
  }
  for (const char* name : {"llama", "mistral", "qwen2"}) {
    SCOPED_TRACE(name);
    ExpectSameSpec(Read(std::string("configs_v5/") + name),
                   Read(std::string("configs/") + name));
  }
  ExpectSameSpec(Read("configs_v5/gpt2"), Read("gpt2"));
}

TEST(ReadHfConfigTest, RejectsRopeParametersPrefoptCannotCompute) {
  const std::vector<BadConfig> cases = {
      {"yarn", {"'rope_parameters'", "\"yarn\"", "linear", "llama3"}},
      {"partial_rotary", {"'partial_rotary_factor'", "not supported"}},
      {"per_layer_type_differs",
       {"'rope_parameters'", "\"sliding_attention\"", "\"full_attention\"",
        "one RoPE for every layer"}},
      {"not_an_object", {"'rope_parameters'", "must be null or an object"}},
  };
  for (const BadConfig& c : cases) {
    const std::string dir =
        TestdataPath(std::string("bad_configs_v5/") + c.dir);
    absl::StatusOr<ModelSpec> spec = ReadHfConfig(dir);
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument)
        << c.dir;
    EXPECT_TRUE(ErrorContains(spec.status(), {dir + "/config.json"})) << c.dir;
    for (const std::string_view part : c.message_parts) {
      EXPECT_TRUE(ErrorContains(spec.status(), {part}))
          << c.dir << ": " << spec.status();
    }
  }
}

// A copy of testdata `base`'s config.json with `patch` merged in (RFC 7396:
// null removes a field), and `generation_config` as generation_config.json
// unless it is empty.
std::string PatchedConfig(const std::string& name, const std::string& base,
                          const nlohmann::json& patch,
                          const std::string& generation_config = "") {
  const std::string dir = NewTempDir(name);
  nlohmann::json config = *ReadJsonFile(TestdataPath(base + "/config.json"));
  config.merge_patch(patch);
  EXPECT_TRUE(WriteJsonFile(dir + "/config.json", config).ok());
  if (!generation_config.empty()) {
    testing::WriteBytes(dir + "/generation_config.json", generation_config);
  }
  return dir;
}

struct BadValue {
  const char* name;
  const char* base;
  const char* patch;
  std::vector<std::string_view> message_parts;
};

TEST(ReadHfConfigTest, RejectsAbsurdValues) {
  const std::vector<BadValue> cases = {
      {"huge_vocab",
       "gpt2",
       R"({"vocab_size": 100000000000000})",
       {"'vocab_size' is 100000000000000, above the limit 2147483647"}},
      {"huge_layers",
       "configs/llama",
       R"({"num_hidden_layers": 4294967296})",
       {"'num_hidden_layers' is 4294967296"}},
      {"huge_default_n_inner",
       "gpt2",
       R"({"n_embd": 1073741824})",
       {"'n_embd' is 1073741824; n_inner (null) is 4 times it, 4294967296"}},
      {"huge_positions",
       "gpt2",
       R"({"n_positions": 9000000000000})",
       {"'n_positions'", "above the limit"}},
      {"huge_heads",
       "configs/llama",
       R"({"num_attention_heads": 2000000000, "num_key_value_heads": 2000000000})",
       {"'num_attention_heads' is 2000000000", "query/key/value"}},
      {"huge_intermediate",
       "configs/llama",
       R"({"intermediate_size": 2000000000})",
       {"'intermediate_size' is 2000000000", "gate/up"}},
      {"zero_eps",
       "configs/llama",
       R"({"rms_norm_eps": 0})",
       {"'rms_norm_eps' must be a finite number above 0, found 0"}},
      {"negative_eps",
       "gpt2",
       R"({"layer_norm_epsilon": -1e-5})",
       {"'layer_norm_epsilon'", "found -1e-05"}},
      {"theta_one",
       "configs/mistral",
       R"({"rope_theta": 1})",
       {"'rope_theta' must be a finite number above 1", "found 1"}},
      {"theta_beyond_fp32",
       "configs/qwen2",
       R"({"rope_theta": 1e300})",
       {"'rope_theta'", "1e+300"}},
      {"eos_beyond_vocab",
       "gpt2",
       R"({"eos_token_id": 16})",
       {"'eos_token_id' holds token id 16", "[0, 16)"}},
      {"negative_bos",
       "configs/llama",
       R"({"bos_token_id": -1})",
       {"'bos_token_id' holds token id -1"}},
      {"extra_eos_beyond_vocab",
       "configs/llama",
       R"({"eos_token_id": [2, 3, 32]})",
       {"'eos_token_id'", "id 32"}},
  };
  for (const BadValue& c : cases) {
    const std::string dir =
        PatchedConfig(c.name, c.base, nlohmann::json::parse(c.patch));
    absl::StatusOr<ModelSpec> spec = ReadHfConfig(dir);
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument)
        << c.name;
    EXPECT_TRUE(ErrorContains(spec.status(), {dir + "/config.json"}))
        << c.name << ": " << spec.status();
    for (const std::string_view part : c.message_parts) {
      EXPECT_TRUE(ErrorContains(spec.status(), {part}))
          << c.name << ": " << spec.status();
    }
  }
}

TEST(ReadHfConfigTest, RejectsBadGenerationConfigIds) {
  const std::vector<std::pair<std::string, std::vector<std::string_view>>>
      cases = {
          {R"({"eos_token_id": 16})", {"'eos_token_id'", "[0, 16)", "16"}},
          {R"({"eos_token_id": "</s>"})",
           {"'eos_token_id' must be a token id", "\"</s>\""}},
          {R"({"eos_token_id": [1, -3]})", {"'eos_token_id'", "-3"}},
          {R"({"eos_token_id": []})", {"'eos_token_id'", "non-empty list"}},
          {R"({"bos_token_id": 99})", {"'bos_token_id'", "99"}},
          {R"([1])", {"expected a JSON object"}},
      };
  int i = 0;
  for (const auto& [generation_config, parts] : cases) {
    const std::string dir =
        PatchedConfig(absl::StrCat("generation_", i++), "gpt2",
                      nlohmann::json::object(), generation_config);
    absl::StatusOr<ModelSpec> spec = ReadHfConfig(dir);
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument)
        << generation_config;
    EXPECT_TRUE(ErrorContains(spec.status(), {dir + "/generation_config.json"}))
        << generation_config << ": " << spec.status();
    for (const std::string_view part : parts) {
      EXPECT_TRUE(ErrorContains(spec.status(), {part}))
          << generation_config << ": " << spec.status();
    }
  }
  const std::string good = PatchedConfig(
      "generation_good", "gpt2", nlohmann::json::object(),
      R"({"bos_token_id": 0, "eos_token_id": [1, 15], "pad_token_id": null})");
  EXPECT_TRUE(ReadHfConfig(good).ok()) << ReadHfConfig(good).status();
}

TEST(ReadHfConfigTest, DropsDefaultIdsOutsideTheVocabulary) {
  // GPT2Config's default ids are 50256; this model has 16 tokens.
  const std::string dir =
      PatchedConfig("default_ids", "gpt2",
                    {{"bos_token_id", nullptr}, {"eos_token_id", nullptr}});
  absl::StatusOr<ModelSpec> spec = ReadHfConfig(dir);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_FALSE(spec->bos_token_id.has_value());
  EXPECT_FALSE(spec->eos_token_id.has_value());
}

TEST(ReadHfConfigTest, MissingConfigNamesPath) {
  const std::string dir = NewTempDir("no_config");
  absl::StatusOr<ModelSpec> spec = ReadHfConfig(dir);
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ErrorContains(spec.status(), {dir + "/config.json"}));
}

TEST(WriteHfConfigTest, RoundTripsEveryArchitecture) {
  for (const char* dir :
       {"gpt2", "configs/llama", "configs/mistral", "configs/qwen2"}) {
    const ModelSpec spec = Read(dir);
    const std::string out = NewTempDir(std::string("round_trip_") +
                                       (dir + std::string(dir).rfind('/') + 1));
    ASSERT_TRUE(WriteHfConfig(spec, out).ok()) << dir;
    absl::StatusOr<ModelSpec> again = ReadHfConfig(out);
    ASSERT_TRUE(again.ok()) << again.status();
    SCOPED_TRACE(dir);
    ExpectSameSpec(*again, spec);
  }
}

TEST(WriteHfConfigTest, WritesTransformersFields) {
  const std::string out = NewTempDir("gpt2_fields");
  ASSERT_TRUE(WriteHfConfig(Read("gpt2"), out).ok());
  const nlohmann::json config = *ReadJsonFile(out + "/config.json");
  EXPECT_EQ(config["architectures"], nlohmann::json({"GPT2LMHeadModel"}));
  EXPECT_EQ(config["model_type"], "gpt2");
  EXPECT_EQ(config["n_embd"], 8);
  EXPECT_EQ(config["n_inner"], 32);
  EXPECT_EQ(config["activation_function"], "gelu_new");
  EXPECT_EQ(config["layer_norm_epsilon"], 1e-5);
  EXPECT_EQ(config["tie_word_embeddings"], true);
  EXPECT_EQ(config["torch_dtype"], "float32");
  EXPECT_EQ(config["dtype"], "float32");
  EXPECT_FALSE(config.contains("rope_parameters"));
}

// Both RoPE forms, so that transformers 4 (rope_theta, rope_scaling) and 5
// (rope_scaling when set, else rope_parameters) read the same values back.
TEST(WriteHfConfigTest, WritesRopeForTransformers4And5) {
  const std::string out = NewTempDir("rope_forms");
  ASSERT_TRUE(WriteHfConfig(Read("configs/llama"), out).ok());
  nlohmann::json config = *ReadJsonFile(out + "/config.json");
  EXPECT_EQ(config["rope_theta"], 500000.0);
  EXPECT_EQ(config["rope_scaling"]["rope_type"], "llama3");
  nlohmann::json both = config["rope_scaling"];
  both["rope_theta"] = 500000.0;
  EXPECT_EQ(config["rope_parameters"], both);
  ASSERT_TRUE(WriteHfConfig(Read("configs/qwen2"), out).ok());
  config = *ReadJsonFile(out + "/config.json");
  EXPECT_TRUE(config["rope_scaling"].is_null());
  EXPECT_EQ(config["rope_parameters"],
            nlohmann::json({{"rope_type", "default"}, {"rope_theta", 1e6}}));
  ModelSpec v5_only = Read("configs/qwen2");
  config.erase("rope_scaling");
  config.erase("rope_theta");
  ASSERT_TRUE(WriteJsonFile(out + "/config.json", config).ok());
  absl::StatusOr<ModelSpec> again = ReadHfConfig(out);
  ASSERT_TRUE(again.ok()) << again.status();
  ExpectSameSpec(*again, v5_only);
}

TEST(WriteHfConfigTest, RejectsInexpressibleSpecs) {
  const std::string out = NewTempDir("inexpressible");
  ModelSpec qwen2 = Read("configs/qwen2");
  qwen2.attention_bias = false;
  EXPECT_TRUE(ErrorContains(WriteHfConfig(qwen2, out), {"Qwen2ForCausalLM"}));
  ModelSpec gpt2 = Read("gpt2");
  gpt2.activation = "silu";
  EXPECT_TRUE(ErrorContains(WriteHfConfig(gpt2, out), {"gelu_new", "silu"}));
  gpt2 = Read("gpt2");
  gpt2.hf_architecture = "LlamaForCausalLM";
  EXPECT_TRUE(ErrorContains(WriteHfConfig(gpt2, out), {"LlamaForCausalLM"}));
  ModelSpec llama = Read("configs/llama");
  llama.n_kv_head = 3;
  EXPECT_TRUE(ErrorContains(WriteHfConfig(llama, out), {"n_kv_head 3"}));
  EXPECT_FALSE(testing::Exists(out + "/config.json"));
}

}  // namespace
}  // namespace prefopt::io
