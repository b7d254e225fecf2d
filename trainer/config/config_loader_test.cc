#include "trainer/config/config_loader.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "proto/config.pb.h"

namespace prefopt::config {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Message(const absl::Status& status) {
  return std::string(status.message());
}

std::string TestDataDir() {
  return absl::StrCat(std::getenv("TEST_SRCDIR"), "/",
                      std::getenv("TEST_WORKSPACE"),
                      "/trainer/config/testdata");
}

// Writes `contents` to `relative_path` under the test's temporary directory
// and returns the file's absolute path.
std::string WriteTempFile(const std::string& relative_path,
                          const std::string& contents) {
  const fs::path path = fs::path(std::getenv("TEST_TMPDIR")) / relative_path;
  fs::create_directories(path.parent_path());
  std::ofstream(path) << contents;
  return path.string();
}

// A valid from-scratch config that the validation cases break one field at a
// time.
constexpr char kValidScratch[] = R"pb(
  model {
    architecture: GPT2
    vocab_size: 64
    n_positions: 32
    n_embd: 16
    n_layer: 2
    n_head: 4
  }
  data { train_files: "train.jsonl" max_length: 32 }
  objective { dpo { beta: 0.1 } }
  optimizer { lr: 1e-3 }
  batch { micro_batch_size: 2 global_batch_size: 8 }
)pb";

TEST(LoadTrainConfigTest, FullConfigLoadsAndRoundTrips) {
  const std::string dir = TestDataDir();
  absl::StatusOr<TrainConfig> config =
      LoadTrainConfig(dir + "/full.textproto", {});
  ASSERT_TRUE(config.ok()) << config.status();

  EXPECT_EQ(config->model().architecture(), GPT2);
  EXPECT_EQ(config->model().vocab_size(), 50257);
  EXPECT_EQ(config->model().n_positions(), 512);
  EXPECT_EQ(config->model().n_embd(), 768);
  EXPECT_EQ(config->model().n_layer(), 12);
  EXPECT_EQ(config->model().n_head(), 12);
  EXPECT_FLOAT_EQ(config->model().init_std(), 0.01f);
  EXPECT_EQ(
      config->model().reference_hf_path(),
      (fs::path(dir) / "../models/reference").lexically_normal().string());
  EXPECT_THAT(config->data().train_files(),
              ElementsAre(dir + "/data/train.jsonl", "/abs/more_train.jsonl"));
  EXPECT_THAT(config->data().eval_files(),
              ElementsAre(dir + "/data/eval.jsonl"));
  EXPECT_EQ(config->data().max_length(), 512);
  EXPECT_EQ(config->data().max_prompt_length(), 128);
  EXPECT_EQ(config->data().truncation_mode(), KEEP_START);
  EXPECT_TRUE(config->data().shuffle());
  EXPECT_FLOAT_EQ(config->objective().dpo().beta(), 0.25f);
  EXPECT_EQ(config->objective().dpo().loss_type(0), DpoConfig::ROBUST);
  EXPECT_FLOAT_EQ(config->objective().dpo().label_smoothing(), 0.1f);
  EXPECT_FLOAT_EQ(config->optimizer().lr(), 5e-7f);
  EXPECT_FLOAT_EQ(config->optimizer().beta1(), 0.8f);
  EXPECT_FLOAT_EQ(config->optimizer().beta2(), 0.95f);
  EXPECT_FLOAT_EQ(config->optimizer().eps(), 1e-6f);
  EXPECT_FLOAT_EQ(config->optimizer().weight_decay(), 0.01f);
  EXPECT_TRUE(config->optimizer().decay_norms_and_biases());
  EXPECT_FLOAT_EQ(config->optimizer().max_grad_norm(), 1.0f);
  EXPECT_EQ(config->schedule().kind(), ScheduleConfig::COSINE);
  EXPECT_FLOAT_EQ(config->schedule().warmup_ratio(), 0.1f);
  EXPECT_EQ(config->batch().micro_batch_size(), 2);
  EXPECT_EQ(config->batch().global_batch_size(), 16);
  EXPECT_EQ(config->max_steps(), 100);
  EXPECT_EQ(config->num_epochs(), 3);
  EXPECT_EQ(config->seed(), 1234u);
  EXPECT_EQ(config->run_dir(), "/tmp/prefopt_run");
  EXPECT_EQ(config->log_every_steps(), 10);
  EXPECT_EQ(config->output_chunk_tokens(), 32);

  const std::string text = ResolvedConfigText(*config);
  const std::vector<std::string> lines = absl::StrSplit(text, '\n');
  ASSERT_GE(lines.size(), 2u);
  EXPECT_THAT(lines[0], StartsWith("# Resolved prefopt config"));
  EXPECT_THAT(lines[1], ::testing::Not(StartsWith("#")));

  // Read back from another directory: the paths are absolute already.
  const std::string resolved =
      WriteTempFile("elsewhere/resolved.textproto", text);
  absl::StatusOr<TrainConfig> reloaded = LoadTrainConfig(resolved, {});
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_TRUE(
      google::protobuf::util::MessageDifferencer::Equals(*config, *reloaded))
      << text << "\nreloaded:\n"
      << reloaded->DebugString();
}

TEST(LoadTrainConfigTest, FillsDefaults) {
  const std::string dir = TestDataDir();
  absl::StatusOr<TrainConfig> config =
      LoadTrainConfig(dir + "/minimal_hf.textproto", {});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model().hf_path(), dir + "/models/tiny");
  EXPECT_FLOAT_EQ(config->objective().dpo().beta(), 0.1f);
  EXPECT_EQ(config->objective().dpo().loss_type(0), DpoConfig::SIGMOID);
  EXPECT_FLOAT_EQ(config->optimizer().beta1(), 0.9f);
  EXPECT_FLOAT_EQ(config->optimizer().beta2(), 0.999f);
  EXPECT_FLOAT_EQ(config->optimizer().eps(), 1e-8f);
  EXPECT_EQ(config->optimizer().weight_decay(), 0.0f);
  // TRL 1.x's DPOConfig defaults.
  EXPECT_FLOAT_EQ(config->optimizer().lr(), 1e-6f);
  EXPECT_FLOAT_EQ(config->optimizer().max_grad_norm(), 1.0f);
  EXPECT_EQ(config->schedule().kind(), ScheduleConfig::LINEAR);
  EXPECT_EQ(config->schedule().warmup_steps(), 0);
  EXPECT_EQ(config->batch().micro_batch_size(), 8);
  EXPECT_EQ(config->batch().global_batch_size(), 0);  // 8 × world size
  EXPECT_EQ(config->seed(), 42u);
  EXPECT_TRUE(config->data().shuffle());
  EXPECT_EQ(config->max_steps(), 0);
  EXPECT_EQ(config->num_epochs(), 3);
  EXPECT_EQ(config->log_every_steps(), 1);
  // 0: the output layer sizes its chunk from the vocabulary
  // (objectives::OutputChunkRows).
  EXPECT_EQ(config->output_chunk_tokens(), 0);
  EXPECT_EQ(config->data().max_length(), 1024);
  EXPECT_EQ(config->data().max_prompt_length(), 0);
  EXPECT_EQ(config->save_every_steps(), 0);
  EXPECT_EQ(config->keep_last_n(), 0);
  EXPECT_TRUE(config->save_on_signal());
  EXPECT_EQ(config->resume(), "");
  // init_std belongs to from-scratch models only.
  EXPECT_EQ(config->model().init_std(), 0.0f);
}

TEST(LoadTrainConfigTest, DefaultsFollowTheObjectiveAndTheWorldSize) {
  // SFTConfig's learning rate for demonstration objectives.
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(
      WriteTempFile("sft.textproto",
                    "model { hf_path: '/m' } data { train_files: 't.jsonl' } "
                    "objective { sft {} }"),
      {});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FLOAT_EQ(config->optimizer().lr(), 2e-5f);
  // Explicit zeros are kept: no clipping, no shuffling, seed 0, CONSTANT.
  config = LoadTrainConfig(TestDataDir() + "/minimal_hf.textproto",
                           {"optimizer.max_grad_norm=0", "data.shuffle=false",
                            "seed=0", "schedule.kind=CONSTANT"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->optimizer().max_grad_norm(), 0.0f);
  EXPECT_FALSE(config->data().shuffle());
  EXPECT_EQ(config->seed(), 0u);
  EXPECT_EQ(config->schedule().kind(), ScheduleConfig::CONSTANT);
  TrainConfig world = *config;
  ASSERT_TRUE(FillBatchForWorld(4, &world).ok());
  EXPECT_EQ(world.batch().global_batch_size(), 32);
  world.mutable_batch()->set_global_batch_size(64);
  ASSERT_TRUE(FillBatchForWorld(4, &world).ok());
  EXPECT_EQ(world.batch().global_batch_size(), 64);
  world.mutable_batch()->set_global_batch_size(0);
  world.mutable_batch()->set_micro_batch_size(1 << 30);
  EXPECT_THAT(std::string(FillBatchForWorld(4, &world).message()),
              HasSubstr("batch.global_batch_size: unset, so micro_batch_size "
                        "* world size = 1073741824 * 4 = 4294967296"));
}

TEST(LoadTrainConfigTest, NumEpochsStaysZeroWhenMaxStepsIsSet) {
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(
      TestDataDir() + "/minimal_hf.textproto", {"max_steps=10"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_steps(), 10);
  EXPECT_EQ(config->num_epochs(), 0);
}

TEST(LoadTrainConfigTest, FromScratchModelGetsDefaultInitStd) {
  const std::string path = WriteTempFile("scratch.textproto", kValidScratch);
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FLOAT_EQ(config->model().init_std(), 0.02f);
}

TEST(LoadTrainConfigTest, OverridesApplyBeforeDefaults) {
  absl::StatusOr<TrainConfig> config =
      LoadTrainConfig(TestDataDir() + "/minimal_hf.textproto",
                      {"optimizer.beta1=0.5", "data.max_length=256",
                       "optimizer.beta2=0", "objective.dpo.beta=0.3"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FLOAT_EQ(config->optimizer().beta1(), 0.5f);
  EXPECT_EQ(config->data().max_length(), 256);
  EXPECT_FLOAT_EQ(config->optimizer().beta2(), 0.999f);  // 0 = default
  EXPECT_FLOAT_EQ(config->objective().dpo().beta(), 0.3f);
}

TEST(LoadTrainConfigTest, ResolvesRelativePathsAgainstTheConfigDirectory) {
  const std::string path = WriteTempFile("configs/run/paths.textproto", R"pb(
    model { hf_path: "models/tiny" reference_hf_path: "../ref" }
    data {
      train_files: "../../data/train.jsonl"
      train_files: "/data/abs.jsonl"
      eval_files: "./eval.jsonl"
    }
    objective { dpo {} }
    optimizer { lr: 1e-6 }
    batch { micro_batch_size: 1 global_batch_size: 1 }
    export_hf_path: "out/hf"
  )pb");
  const fs::path tmp = std::getenv("TEST_TMPDIR");
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model().hf_path(),
            (tmp / "configs/run/models/tiny").string());
  EXPECT_EQ(config->model().reference_hf_path(),
            (tmp / "configs/ref").string());
  EXPECT_THAT(
      config->data().train_files(),
      ElementsAre((tmp / "data/train.jsonl").string(), "/data/abs.jsonl"));
  EXPECT_THAT(config->data().eval_files(),
              ElementsAre((tmp / "configs/run/eval.jsonl").string()));
  EXPECT_EQ(config->export_hf_path(), (tmp / "configs/run/out/hf").string());
}

TEST(LoadTrainConfigTest, ResolvesTokenizerAndCachePaths) {
  const std::string path = WriteTempFile("configs/text/run.textproto", R"pb(
    model { hf_path: "/models/tiny" }
    data {
      train_files: "chat.jsonl"
      tokenizer_path: "tok/tokenizer.json"
      chat_template: CHATML
      cache_dir: "../cache"
    }
    objective { dpo {} }
    optimizer { lr: 1e-6 }
    batch { micro_batch_size: 1 global_batch_size: 1 }
  )pb");
  const fs::path tmp = std::getenv("TEST_TMPDIR");
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->data().tokenizer_path(),
            (tmp / "configs/text/tok/tokenizer.json").string());
  EXPECT_EQ(config->data().cache_dir(), (tmp / "configs/cache").string());
  EXPECT_EQ(config->data().chat_template(), DataConfig::CHATML);
  // Unset, they stay empty: the loop fills in the defaults.
  config = LoadTrainConfig(path, {"data.tokenizer_path=", "data.cache_dir="});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->data().tokenizer_path(), "");
  EXPECT_EQ(config->data().cache_dir(), "");
}

TEST(LoadTrainConfigTest, ResolvesOverriddenPathsAgainstTheWorkingDirectory) {
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(
      TestDataDir() + "/minimal_hf.textproto",
      {"data.train_files=mine.jsonl,/abs/b.jsonl", "model.hf_path=hf/model"});
  ASSERT_TRUE(config.ok()) << config.status();
  const fs::path cwd = fs::current_path();
  EXPECT_THAT(config->data().train_files(),
              ElementsAre((cwd / "mine.jsonl").string(), "/abs/b.jsonl"));
  EXPECT_EQ(config->model().hf_path(), (cwd / "hf/model").string());
}

TEST(LoadTrainConfigTest, SaveOnSignalCanBeTurnedOff) {
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(
      TestDataDir() + "/minimal_hf.textproto", {"save_on_signal=false"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->save_on_signal());
}

TEST(LoadTrainConfigTest, ResumePathIsResolvedButLatestIsKept) {
  const std::string path =
      WriteTempFile("configs/resume/run.textproto",
                    absl::StrCat(kValidScratch, "resume: \"ck/step_4\"\n"));
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->resume(),
            (fs::path(std::getenv("TEST_TMPDIR")) / "configs/resume/ck/step_4")
                .string());
  config = LoadTrainConfig(path, {"resume=latest"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->resume(), "latest");
  config = LoadTrainConfig(path, {"resume=other/step_2"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->resume(), (fs::current_path() / "other/step_2").string());
}

TEST(LoadTrainConfigTest, MissingFileIsNamed) {
  absl::StatusOr<TrainConfig> config =
      LoadTrainConfig("/no/such/dir/run.textproto", {});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(config.status()),
              HasSubstr("\"/no/such/dir/run.textproto\""));
}

TEST(LoadTrainConfigTest, DirectoryIsRejected) {
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(TestDataDir(), {});
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(Message(config.status()), HasSubstr("is a directory"));
}

TEST(LoadTrainConfigTest, SyntaxErrorHasLineAndColumn) {
  const std::string path = WriteTempFile("syntax.textproto",
                                         "model {\n"
                                         "  hf_path: \"m\"\n"
                                         "}\n"
                                         "optimizer {\n"
                                         "  lr 0.001\n"
                                         "}\n");
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(config.status()), StartsWith(path + ":5:6: "));
  EXPECT_THAT(Message(config.status()), HasSubstr("Expected \":\""));
}

TEST(LoadTrainConfigTest, SyntaxErrorPointsAtTheTokenItQuotes) {
  // The error quotes the second "lr" (found where ':' was expected), which
  // follows another "lr".
  const std::string path =
      WriteTempFile("syntax2.textproto", "optimizer {\n  lr lr\n}\n");
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(Message(config.status()), StartsWith(path + ":2:6: "));
  EXPECT_THAT(Message(config.status()), HasSubstr("found \"lr\""));
}

TEST(LoadTrainConfigTest, UnknownFieldHasPositionAndListsFields) {
  const std::string path = WriteTempFile("unknown.textproto",
                                         "objective {\n"
                                         "  dpo {\n"
                                         "    betta: 0.2\n"
                                         "  }\n"
                                         "}\n");
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(Message(config.status()),
              StartsWith(path + ":3:5: "));  // at "betta"
  EXPECT_THAT(Message(config.status()),
              HasSubstr("\"prefopt.DpoConfig\" has no field named \"betta\""));
  EXPECT_THAT(
      Message(config.status()),
      HasSubstr("Its fields: beta, loss_type, label_smoothing, loss_weights,"));
}

TEST(LoadTrainConfigTest, UnknownEnumValueHasPosition) {
  const std::string path =
      WriteTempFile("enum.textproto", "schedule {\n  kind: cosine\n}\n");
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(Message(config.status()),
              StartsWith(path + ":2:9: "));  // at "cosine"
  EXPECT_THAT(Message(config.status()), HasSubstr("cosine"));
}

TEST(LoadTrainConfigTest, UnknownEnumNumbersNameTheFieldAndTheValues) {
  // Proto3 text format takes any number for an enum; a config must not.
  const std::string path = WriteTempFile("enum_number.textproto",
                                         "objective {\n"
                                         "  dpo { loss_type: 99 }\n"
                                         "}\n"
                                         "schedule { kind: 12 }\n");
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(config.status()),
            absl::StrCat(path,
                         ":2:9: field 'objective.dpo.loss_type[0]' is 99, "
                         "which is no value of prefopt.DpoConfig.LossType "
                         "(one of: SIGMOID, IPO, HINGE, ROBUST, EXO_PAIR, "
                         "NCA_PAIR, BCO_PAIR, SPPO_HARD, AOT, AOT_UNPAIRED, "
                         "APO_ZERO, APO_DOWN, DISCOPOP, SFT, SIGMOID_NORM)\n",
                         path,
                         ":4:12: field 'schedule.kind' is 12, which is no "
                         "value of prefopt.ScheduleConfig.Kind (one of: "
                         "CONSTANT, LINEAR, COSINE)"));
}

TEST(LoadTrainConfigTest, UnknownEnumNumberInARepeatedFieldIsRefused) {
  const std::string path = WriteTempFile(
      "enum_repeated.textproto",
      "objective { sparsepo { mask: MAPO mapo_groups: [MLP, 9] } }\n");
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(Message(config.status()),
              StartsWith(absl::StrCat(
                  path,
                  ":1:35: field 'objective.sparsepo.mapo_groups[1]' is 9, "
                  "which is no value of prefopt.SparsePoConfig.MapoGroup")));
}

TEST(LoadTrainConfigTest, UnknownEnumNumberInAnOverrideIsRefused) {
  const std::string path = WriteTempFile("enum_ok.textproto", kValidScratch);
  absl::StatusOr<TrainConfig> config =
      LoadTrainConfig(path, {"objective.dpo={loss_type: 99}"});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(Message(config.status()),
            "--set=objective.dpo={loss_type: 99}: objective.dpo value at 1:2: "
            "field 'objective.dpo.loss_type[0]' is 99, which is no value of "
            "prefopt.DpoConfig.LossType (one of: SIGMOID, IPO, HINGE, ROBUST, "
            "EXO_PAIR, NCA_PAIR, BCO_PAIR, SPPO_HARD, AOT, AOT_UNPAIRED, "
            "APO_ZERO, APO_DOWN, DISCOPOP, SFT, SIGMOID_NORM)");
}

TEST(LoadTrainConfigTest, NulByteInAStringIsRefused) {
  const std::string path = WriteTempFile(
      "nul.textproto",
      "data { train_files: [\"a.jsonl\", \"b.jsonl\\000.txt\"] }\n");
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(Message(config.status()),
            absl::StrCat(path,
                         ":1:8: field 'data.train_files[1]' holds a NUL "
                         "byte (\\000) at byte 7, which would cut the text "
                         "short there: \"b.jsonl\\000.txt\""));
}

TEST(ValidationTest, UnknownEnumNumberOfAConfigBuiltInCode) {
  TrainConfig config;
  config.mutable_objective()->mutable_dpo()->add_loss_type(
      static_cast<DpoConfig::LossType>(99));
  EXPECT_THAT(
      Message(ValidateTrainConfig(config)),
      HasSubstr("objective.dpo.loss_type[0]: is 99, which is no value of "
                "prefopt.DpoConfig.LossType"));
}

TEST(LoadTrainConfigTest, HugeUnknownFieldNameIsNotEchoedWhole) {
  const std::string name(5 << 20, 'x');
  const std::string path = WriteTempFile(
      "huge_name.textproto", absl::StrCat("optimizer { ", name, ": 1 }\n"));
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_FALSE(config.ok());
  EXPECT_LT(Message(config.status()).size(), 1000u);
  EXPECT_THAT(Message(config.status()),
              StartsWith(absl::StrCat(path,
                                      ":1:13: Message type "
                                      "\"prefopt.OptimizerConfig\" has "
                                      "no field named \"xxx")));
  EXPECT_THAT(Message(config.status()), HasSubstr("bytes)"));
}

TEST(ApplyOverrideTest, HugeOverrideIsNotEchoedWhole) {
  const std::string name(5 << 20, 'x');
  TrainConfig config;
  for (const std::string& override_text :
       {absl::StrCat("optimizer.", name, "=1"),
        absl::StrCat("optimizer.lr=", name),
        absl::StrCat("max_steps=", std::string(5 << 20, '9')),
        absl::StrCat("optimizer={", name, ": 1}")}) {
    const absl::Status status = ApplyOverride(override_text, &config);
    ASSERT_FALSE(status.ok());
    EXPECT_LT(Message(status).size(), 1500u) << Message(status).substr(0, 300);
    EXPECT_THAT(Message(status),
                StartsWith(absl::StrCat("--set=", override_text.substr(0, 200),
                                        "\u2026 (", override_text.size(),
                                        " bytes): ")));
  }
}

TEST(LoadTrainConfigTest, OverrideErrorIsReturned) {
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(
      TestDataDir() + "/minimal_hf.textproto", {"optimizer.lr=fast"});
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(Message(config.status()),
              StartsWith("--set=optimizer.lr=fast: "));
}

struct InvalidCase {
  std::vector<std::string> overrides;
  std::string expected;  // follows "<config path>: " in the error
};

class ValidationTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(ValidationTest, NamesTheField) {
  const std::string path = WriteTempFile("valid.textproto", kValidScratch);
  ASSERT_TRUE(LoadTrainConfig(path, {}).ok());
  absl::StatusOr<TrainConfig> config =
      LoadTrainConfig(path, GetParam().overrides);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(config.status()),
              HasSubstr(absl::StrCat(path, ": ", GetParam().expected)));
}

INSTANTIATE_TEST_SUITE_P(
    AllChecks, ValidationTest,
    ::testing::Values(
        InvalidCase{{"optimizer.lr=0"}, "optimizer.lr: must be > 0, got 0"},
        InvalidCase{{"optimizer.lr=-1"}, "optimizer.lr: must be > 0, got -1"},
        InvalidCase{{"optimizer.beta1=1"},
                    "optimizer.beta1: must be in [0, 1), got 1"},
        InvalidCase{{"optimizer.beta2=-0.5"},
                    "optimizer.beta2: must be in [0, 1), got -0.5"},
        InvalidCase{{"optimizer.eps=-1e-8"},
                    "optimizer.eps: must be > 0, got -1e-08"},
        InvalidCase{{"optimizer.weight_decay=-0.1"},
                    "optimizer.weight_decay: must be >= 0, got -0.1"},
        InvalidCase{{"optimizer.max_grad_norm=-1"},
                    "optimizer.max_grad_norm: must be >= 0"},
        InvalidCase{{"batch.micro_batch_size=-1"},
                    "batch.micro_batch_size: must be >= 1, got -1"},
        InvalidCase{{"batch.micro_batch_size=2000000000",
                     "batch.global_batch_size=2000000000"},
                    "batch.micro_batch_size: micro_batch_size * "
                    "data.max_length must be at most 1073741824 tokens (a "
                    "micro-batch of pairs holds twice as many), got "
                    "2000000000 * 32 = 64000000000"},
        InvalidCase{{"batch.global_batch_size=-8"},
                    "batch.global_batch_size: must be >= 1 (or 0: "
                    "micro_batch_size × world size), got -8"},
        InvalidCase{{"batch.global_batch_size=7"},
                    "batch.global_batch_size: must be a multiple of "
                    "batch.micro_batch_size (2), got 7"},
        InvalidCase{{"objective.dpo.beta=-0.1"},
                    "objective.dpo.beta: must be > 0, got -0.1"},
        InvalidCase{{"objective.dpo.label_smoothing=0.5"},
                    "objective.dpo.label_smoothing: must be in [0, 0.5), got "
                    "0.5"},
        InvalidCase{{"objective.dpo.label_smoothing=-0.1"},
                    "objective.dpo.label_smoothing: must be in [0, 0.5), got "
                    "-0.1"},
        InvalidCase{{"objective.dpo.loss_type=ROBUST",
                     "objective.dpo.label_smoothing=0.5"},
                    "objective.dpo.label_smoothing: must be < 0.5 for "
                    "loss_type ROBUST, got 0.5 (the robust loss divides by 1 - "
                    "2 * label_smoothing)"},
        InvalidCase{{"objective.dpo.loss_type=SIGMOID,BCO_PAIR,SFT",
                     "objective.dpo.loss_weights=0.8,0.2"},
                    "objective.dpo.loss_weights: has 2 entries but "
                    "objective.dpo.loss_type has 3 (one weight per loss type, "
                    "or none for 1.0 each)"},
        InvalidCase{{"objective.dpo.loss_type=SIGMOID,NCA_PAIR",
                     "objective.dpo.f_divergence_type=JS_DIVERGENCE"},
                    "objective.dpo.f_divergence_type: JS_DIVERGENCE does not "
                    "apply to loss_type NCA_PAIR (only to SIGMOID, "
                    "SIGMOID_NORM, HINGE, IPO, EXO_PAIR, ROBUST, DISCOPOP and "
                    "SFT, as TRL); use REVERSE_KL with it"},
        InvalidCase{{"objective.dpo.loss_type=EXO_PAIR"},
                    "objective.dpo.label_smoothing: must be > 0 for loss_type "
                    "EXO_PAIR (its loss has log(label_smoothing); the paper "
                    "uses 1e-3), got 0"},
        InvalidCase{{"objective.dpo.ld_alpha=1.5"},
                    "objective.dpo.ld_alpha: must be in [0, 1], got 1.5"},
        InvalidCase{{"objective.dpo.ld_alpha=-0.1"},
                    "objective.dpo.ld_alpha: must be in [0, 1], got -0.1"},
        InvalidCase{{"objective.dpo.discopop_tau=0"},
                    "objective.dpo.discopop_tau: must be > 0, got 0"},
        InvalidCase{{"objective.dpo.loss_type=AOT_UNPAIRED",
                     "objective.dpo.use_weighting=true"},
                    "objective.dpo.use_weighting: not with loss_type "
                    "AOT_UNPAIRED (it sorts the pairs, which would misalign "
                    "WPO's per-pair weights; TRL refuses it too)"},
        InvalidCase{{"objective.dpo.loss_type=SIGMOID,SFT",
                     "objective.dpo.use_weighting=true"},
                    "objective.dpo.use_weighting: not with loss_type SFT"},
        InvalidCase{{"objective.dpo.loss_type=SIGMOID,SFT,SIGMOID"},
                    "objective.dpo.loss_type[2]: SIGMOID is already "
                    "objective.dpo.loss_type[0] (list each loss once; "
                    "loss_weights scale it)"},
        InvalidCase{{"schedule.warmup_steps=-1"},
                    "schedule.warmup_steps: must be >= 0, got -1"},
        InvalidCase{{"schedule.warmup_ratio=1"},
                    "schedule.warmup_ratio: must be in [0, 1), got 1"},
        InvalidCase{{"schedule.warmup_steps=10", "schedule.warmup_ratio=0.1"},
                    "schedule.warmup_ratio: set at most one of "
                    "schedule.warmup_steps (10) and schedule.warmup_ratio "
                    "(0.1)"},
        InvalidCase{{"model.hf_path=/models/gpt2"},
                    "model.architecture: must be unset when model.hf_path is "
                    "set"},
        InvalidCase{{"model.hf_path=/models/gpt2"},
                    "model.n_layer: must be unset when model.hf_path is set "
                    "(the Hugging Face folder's config.json defines the "
                    "model), got 2"},
        InvalidCase{{"model.hf_path=/models/gpt2", "model.init_std=0.02"},
                    "model.init_std: must be unset when model.hf_path is set"},
        InvalidCase{{"model.architecture=ARCHITECTURE_UNSPECIFIED"},
                    "model.architecture: must be set for a from-scratch model "
                    "(one of: GPT2, LLAMA, QWEN2)"},
        InvalidCase{{"model.vocab_size=0"},
                    "model.vocab_size: must be > 0 for a from-scratch model, "
                    "got 0"},
        InvalidCase{{"model.n_head=-4"},
                    "model.n_head: must be > 0 for a from-scratch model, got "
                    "-4"},
        InvalidCase{{"model.n_embd=18"},
                    "model.n_embd: must be a multiple of model.n_head (4), got "
                    "18"},
        InvalidCase{{"model.init_std=-0.02"},
                    "model.init_std: must be > 0, got -0.02"},
        InvalidCase{{"data.train_files="},
                    "data.train_files: must list at least one JSONL file"},
        InvalidCase{{"data.train_files=a.jsonl,,b.jsonl"},
                    "data.train_files[1]: must not be empty"},
        InvalidCase{{"data.max_length=1"}, "data.max_length: must be >= 2"},
        InvalidCase{{"data.max_length=64"},
                    "data.max_length: must be <= model.n_positions (32) for "
                    "this model, got 64"},
        InvalidCase{{"data.max_prompt_length=32"},
                    "data.max_prompt_length: must be < data.max_length (32)"},
        InvalidCase{{"data.max_prompt_length=-1"},
                    "data.max_prompt_length: must be >= 0"},
        InvalidCase{{"data.chat_template=LLAMA3"},
                    "data.chat_template: LLAMA3 renders text, which needs a "
                    "tokenizer: set data.tokenizer_path"},
        InvalidCase{{"max_steps=-5"}, "max_steps: must be >= 0"},
        InvalidCase{{"num_epochs=-1"}, "num_epochs: must be >= 0, got -1"},
        InvalidCase{{"log_every_steps=-1"},
                    "log_every_steps: must be >= 1, got -1"},
        InvalidCase{{"output_chunk_tokens=-64"},
                    "output_chunk_tokens: must be >= 0 (0 = sized from the "
                    "vocabulary), got -64"},
        InvalidCase{{"save_every_steps=-1"},
                    "save_every_steps: must be >= 0 (0 = only after the last "
                    "step), got -1"},
        InvalidCase{{"keep_last_n=-2"},
                    "keep_last_n: must be >= 0 (0 = keep all), got -2"},
        InvalidCase{{"collective_timeout_s=-1"},
                    "collective_timeout_s: must be >= 0 (0 = 1800 seconds), "
                    "got -1"},
        InvalidCase{{"objective.sparsepo.mapo_groups=MLP"},
                    "objective.sparsepo.mapo_groups: only used with mask: "
                    "MAPO"},
        InvalidCase{{"objective.sparsepo.mask=MAPO",
                     "objective.sparsepo.mapo_groups=RESID,"
                     "MAPO_GROUP_UNSPECIFIED"},
                    "objective.sparsepo.mapo_groups: MAPO_GROUP_UNSPECIFIED "
                    "is not a group"},
        InvalidCase{{"objective.sparsepo.mask_on_reward=false",
                     "objective.sparsepo.mask_on_kl=false"},
                    "objective.sparsepo: mask_on_reward and mask_on_kl are "
                    "both false"},
        InvalidCase{{"objective.sft={}", "model.live_reference=true"},
                    "model.live_reference: objective sft uses no reference "
                    "model"},
        InvalidCase{{"eval_every_steps=-1"},
                    "eval_every_steps: must be >= 0 (0 = after the last step "
                    "only), got -1"},
        InvalidCase{{"eval_every_steps=10"},
                    "eval_every_steps: is 10 but data.eval_files is empty"},
        InvalidCase{{"model.eos_token_id=-1"},
                    "model.eos_token_id: must be in [0, model.vocab_size)"},
        InvalidCase{{"model.hf_path=/models/gpt2", "model.eos_token_id=3"},
                    "model.eos_token_id: must be unset when model.hf_path is "
                    "set"}));

TEST(ValidationTest, ObjectiveMustBeSet) {
  const std::string path = WriteTempFile("no_objective.textproto", R"pb(
    model { hf_path: "m" }
    data { train_files: "t.jsonl" }
    optimizer { lr: 1e-6 }
    batch { micro_batch_size: 1 global_batch_size: 1 }
  )pb");
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(Message(config.status()),
              HasSubstr(path + ": objective: must set one of the oneof "
                               "objective.kind (dpo, sft, prior, "
                               "implicit_sft, sparsepo, kto, cpo, orpo)"));
}

TEST(ValidationTest, KtoSamplesInOrderWithBatchesOfAtLeastTwo) {
  const std::string ok = WriteTempFile("kto.textproto", R"pb(
    model { hf_path: "m" }
    data { train_files: "t.jsonl" }
    objective { kto {} }
  )pb");
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(ok, {});
  ASSERT_TRUE(config.ok()) << config.status();
  // TRL's KTOConfig: sequential sampling, its loss defaults.
  EXPECT_FALSE(config->data().shuffle());
  EXPECT_EQ(config->objective().kto().loss_type(), KtoConfig::KTO);
  EXPECT_FLOAT_EQ(config->objective().kto().beta(), 0.1f);
  EXPECT_FLOAT_EQ(config->objective().kto().desirable_weight(), 1.0f);
  EXPECT_FLOAT_EQ(config->objective().kto().undesirable_weight(), 1.0f);
  EXPECT_FLOAT_EQ(config->optimizer().lr(), 1e-6f);

  absl::StatusOr<TrainConfig> shuffled =
      LoadTrainConfig(ok, {"data.shuffle=true", "batch.global_batch_size=1",
                           "batch.micro_batch_size=1"});
  ASSERT_FALSE(shuffled.ok());
  EXPECT_THAT(Message(shuffled.status()),
              HasSubstr("data.shuffle: must be false for objective.kto with "
                        "loss_type KTO"));
  EXPECT_THAT(Message(shuffled.status()),
              HasSubstr("batch.global_batch_size: must be >= 2 for "
                        "objective.kto with loss_type KTO, got 1"));
  absl::StatusOr<TrainConfig> negative =
      LoadTrainConfig(ok, {"objective.kto.desirable_weight=-1",
                           "objective.kto.undesirable_weight=-0.5"});
  ASSERT_FALSE(negative.ok());
  EXPECT_THAT(
      Message(negative.status()),
      HasSubstr("objective.kto.desirable_weight: must be >= 0, got -1"));
  EXPECT_THAT(
      Message(negative.status()),
      HasSubstr("objective.kto.undesirable_weight: must be >= 0, got -0.5"));
  // APO-zero estimates no KL term: any order and batch size.
  EXPECT_TRUE(
      LoadTrainConfig(
          ok, {"objective.kto.loss_type=APO_ZERO_UNPAIRED", "data.shuffle=true",
               "batch.global_batch_size=1", "batch.micro_batch_size=1"})
          .ok());
}

TEST(ValidationTest, ModelMustBeDescribed) {
  const std::string path = WriteTempFile("no_model.textproto", R"pb(
    data { train_files: "t.jsonl" }
    objective { dpo {} }
    optimizer { lr: 1e-6 }
    batch { micro_batch_size: 1 global_batch_size: 1 }
  )pb");
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(
      Message(config.status()),
      path +
          ": model: set model.hf_path to a Hugging Face model folder, "
          "or model.architecture (one of: GPT2, LLAMA, QWEN2) and the sizes "
          "vocab_size, n_positions, n_embd, n_layer, n_head for a "
          "from-scratch model");
}

TEST(ValidationTest, NonFiniteNumbersAreRejected) {
  const std::string path = WriteTempFile(
      "nonfinite.textproto",
      absl::StrCat(
          absl::StrReplaceAll(kValidScratch, {{"lr: 1e-3", "lr: nan"}}),
          "schedule { warmup_ratio: inf }\n"));
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(Message(config.status()),
            absl::StrCat(path,
                         ": optimizer.lr: must be a finite number, got "
                         "nan\n",
                         path,
                         ": schedule.warmup_ratio: must be a finite "
                         "number, got inf"));
}

TEST(ValidationTest, ReportsEveryProblem) {
  const std::string path = WriteTempFile("many.textproto", kValidScratch);
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(
      path, {"optimizer.lr=0", "batch.micro_batch_size=-1", "max_steps=-1"});
  ASSERT_FALSE(config.ok());
  const std::vector<std::string> lines =
      absl::StrSplit(config.status().message(), '\n');
  EXPECT_THAT(
      lines,
      ElementsAre(path + ": optimizer.lr: must be > 0, got 0",
                  path + ": batch.micro_batch_size: must be >= 1, got -1",
                  StartsWith(path + ": max_steps: must be >= 0")));
}

TEST(ApplyOverrideTest, SetsEveryScalarType) {
  TrainConfig config;
  for (const char* override_text :
       {"batch.micro_batch_size=4", "max_steps=-3", "seed=18446744073709551615",
        "optimizer.lr=3e-4", "data.shuffle=true",
        "optimizer.decay_norms_and_biases=1", "run_dir=/runs/a b",
        "schedule.kind=COSINE", "data.truncation_mode=KEEP_START"}) {
    ASSERT_TRUE(ApplyOverride(override_text, &config).ok()) << override_text;
  }
  EXPECT_EQ(config.batch().micro_batch_size(), 4);
  EXPECT_EQ(config.max_steps(), -3);
  EXPECT_EQ(config.seed(), 18446744073709551615u);
  EXPECT_FLOAT_EQ(config.optimizer().lr(), 3e-4f);
  EXPECT_TRUE(config.data().shuffle());
  EXPECT_TRUE(config.optimizer().decay_norms_and_biases());
  EXPECT_EQ(config.run_dir(), "/runs/a b");
  EXPECT_EQ(config.schedule().kind(), ScheduleConfig::COSINE);
  EXPECT_EQ(config.data().truncation_mode(), KEEP_START);

  ASSERT_TRUE(ApplyOverride("data.shuffle=0", &config).ok());
  EXPECT_FALSE(config.data().shuffle());
  ASSERT_TRUE(
      ApplyOverride("optimizer.decay_norms_and_biases=false", &config).ok());
  EXPECT_FALSE(config.optimizer().decay_norms_and_biases());
  ASSERT_TRUE(ApplyOverride("batch.micro_batch_size=8", &config).ok());
  EXPECT_EQ(config.batch().micro_batch_size(), 8);
}

TEST(ApplyOverrideTest, CreatesNestedMessages) {
  TrainConfig config;
  ASSERT_TRUE(ApplyOverride("optimizer.lr=0.5", &config).ok());
  EXPECT_TRUE(config.has_optimizer());
  EXPECT_FLOAT_EQ(config.optimizer().lr(), 0.5f);
}

TEST(ApplyOverrideTest, SelectsOneofMember) {
  TrainConfig config;
  ASSERT_TRUE(ApplyOverride("objective.dpo.beta=0.2", &config).ok());
  EXPECT_EQ(config.objective().kind_case(), ObjectiveConfig::kDpo);
  EXPECT_FLOAT_EQ(config.objective().dpo().beta(), 0.2f);
  ASSERT_TRUE(ApplyOverride("objective.dpo.loss_type=IPO", &config).ok());
  EXPECT_EQ(config.objective().dpo().loss_type(0), DpoConfig::IPO);
  EXPECT_FLOAT_EQ(config.objective().dpo().beta(), 0.2f);
}

TEST(ApplyOverrideTest, MessageValueInBracesReplacesTheMessage) {
  TrainConfig config;
  config.mutable_objective()->mutable_dpo()->set_label_smoothing(0.1f);
  ASSERT_TRUE(
      ApplyOverride("objective.dpo={beta: 0.3 loss_type: HINGE}", &config)
          .ok());
  EXPECT_FLOAT_EQ(config.objective().dpo().beta(), 0.3f);
  EXPECT_EQ(config.objective().dpo().loss_type(0), DpoConfig::HINGE);
  EXPECT_EQ(config.objective().dpo().label_smoothing(), 0.0f);

  TrainConfig empty;
  ASSERT_TRUE(ApplyOverride("objective.dpo={}", &empty).ok());
  EXPECT_TRUE(empty.objective().has_dpo());
}

TEST(ApplyOverrideTest, RepeatedFieldTakesACommaSeparatedList) {
  TrainConfig config;
  config.mutable_data()->add_train_files("old.jsonl");
  config.mutable_data()->add_eval_files("eval.jsonl");
  ASSERT_TRUE(ApplyOverride("data.train_files=a.jsonl,b.jsonl", &config).ok());
  EXPECT_THAT(config.data().train_files(), ElementsAre("a.jsonl", "b.jsonl"));
  ASSERT_TRUE(ApplyOverride("data.train_files=c.jsonl", &config).ok());
  EXPECT_THAT(config.data().train_files(), ElementsAre("c.jsonl"));
  ASSERT_TRUE(ApplyOverride("data.eval_files=", &config).ok());
  EXPECT_TRUE(config.data().eval_files().empty());
}

TEST(ApplyOverrideTest, FailedOverrideLeavesConfigUnchanged) {
  TrainConfig config;
  EXPECT_FALSE(ApplyOverride("objective.dpo.betta=0.2", &config).ok());
  EXPECT_FALSE(config.has_objective());
}

TEST(ApplyOverrideTest, UnknownFieldListsTheMessagesFields) {
  TrainConfig config;
  absl::Status status = ApplyOverride("objective.dpo.betta=0.2", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(status),
            "--set=objective.dpo.betta=0.2: no field \"betta\" in "
            "prefopt.DpoConfig (fields: beta, loss_type, label_smoothing, "
            "loss_weights, f_divergence_type, f_alpha_divergence_coef, "
            "use_weighting, ld_alpha, discopop_tau, sync_ref_model, "
            "ref_model_mixup_alpha, ref_model_sync_steps)");
}

struct BadOverride {
  std::string override_text;
  std::string expected;  // follows "--set=<override_text>: " in the error
};

class BadOverrideTest : public ::testing::TestWithParam<BadOverride> {};

TEST_P(BadOverrideTest, ExplainsTheProblem) {
  TrainConfig config;
  absl::Status status = ApplyOverride(GetParam().override_text, &config);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status),
              StartsWith(absl::StrCat("--set=", GetParam().override_text, ": ",
                                      GetParam().expected)));
}

INSTANTIATE_TEST_SUITE_P(
    AllKinds, BadOverrideTest,
    ::testing::Values(
        BadOverride{"optimizer.lr",
                    "expected path.to.field=value, but there is no '='"},
        BadOverride{"=3", "empty field path before '='"},
        BadOverride{"optimizer..lr=1", "empty field name in \"optimizer..lr\""},
        BadOverride{"nope=1",
                    "no field \"nope\" in prefopt.TrainConfig (fields: model, "
                    "data, objective, optimizer, schedule, batch, max_steps"},
        BadOverride{"batch.micro_batch_size=four",
                    "batch.micro_batch_size expects int32 (an integer), got "
                    "\"four\""},
        BadOverride{"batch.micro_batch_size=2.5",
                    "batch.micro_batch_size expects int32 (an integer), got "
                    "\"2.5\""},
        BadOverride{"max_steps=3000000000",
                    "max_steps expects int32 in [-2147483648, 2147483647], "
                    "got 3000000000"},
        BadOverride{"seed=-1",
                    "seed expects uint64 in [0, 18446744073709551615], got -1"},
        BadOverride{"optimizer.lr=fast",
                    "optimizer.lr expects a finite float, got \"fast\""},
        BadOverride{"optimizer.lr=inf",
                    "optimizer.lr expects a finite float, got \"inf\""},
        BadOverride{"optimizer.lr=1e40",
                    "optimizer.lr expects a finite float, got \"1e40\""},
        BadOverride{"data.shuffle=yes",
                    "data.shuffle expects a bool (true, false, 1 or 0), got "
                    "\"yes\""},
        BadOverride{"schedule.kind=cosine",
                    "schedule.kind expects one of CONSTANT, LINEAR, COSINE "
                    "(prefopt.ScheduleConfig.Kind, exact case), got "
                    "\"cosine\""},
        BadOverride{"optimizer.lr.x=1",
                    "optimizer.lr is a float, not a message; it has no field "
                    "\"x\""},
        BadOverride{"objective.dpo=0.2",
                    "objective.dpo is a message prefopt.DpoConfig; set one of "
                    "its fields (beta, loss_type, label_smoothing, "
                    "loss_weights, f_divergence_type, f_alpha_divergence_coef, "
                    "use_weighting, ld_alpha, discopop_tau, sync_ref_model, "
                    "ref_model_mixup_alpha, ref_model_sync_steps) as "
                    "objective.dpo.FIELD=VALUE, or give the whole message in "
                    "braces, e.g. objective.dpo={}"},
        BadOverride{"objective.dpo={betta: 1}",
                    "objective.dpo value at 1:2: Message type "
                    "\"prefopt.DpoConfig\" has no field named \"betta\"."}));

TEST(BatchForWorldTest, AcceptsDivisibleWorldSizes) {
  TrainConfig config;
  config.mutable_batch()->set_micro_batch_size(2);
  config.mutable_batch()->set_global_batch_size(16);
  for (const auto& [world_size, steps] :
       std::vector<std::pair<int, int>>{{1, 8}, {2, 4}, {4, 2}, {8, 1}}) {
    EXPECT_TRUE(CheckBatchForWorld(config, world_size).ok()) << world_size;
    EXPECT_EQ(GradientAccumulationSteps(config, world_size), steps);
  }
}

TEST(BatchForWorldTest, RejectsIndivisibleWorldSize) {
  TrainConfig config;
  config.mutable_batch()->set_micro_batch_size(2);
  config.mutable_batch()->set_global_batch_size(16);
  absl::Status status = CheckBatchForWorld(config, 3);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status),
              StartsWith("batch.global_batch_size: must be a multiple of "
                         "batch.micro_batch_size * world size = 2 * 3 = 6"));
  EXPECT_THAT(Message(status), HasSubstr("got 16; use 12 or 18"));

  config.mutable_batch()->set_global_batch_size(4);
  EXPECT_THAT(Message(CheckBatchForWorld(config, 4)),
              HasSubstr("got 4; use 8,"));
}

TEST(BatchForWorldTest, RejectsBadSizes) {
  TrainConfig config;
  config.mutable_batch()->set_micro_batch_size(2);
  config.mutable_batch()->set_global_batch_size(16);
  EXPECT_THAT(Message(CheckBatchForWorld(config, 0)),
              HasSubstr("world size must be >= 1, got 0"));
  config.mutable_batch()->set_micro_batch_size(0);
  EXPECT_THAT(Message(CheckBatchForWorld(config, 1)),
              HasSubstr("batch.micro_batch_size (0)"));
}

// TR-DPO (objective.dpo.sync_ref_model): the reference sync needs the live
// reference, and its two settings are range-checked with or without it.
TEST(TrDpoValidationTest, SyncNeedsTheLiveReference) {
  const std::string path = WriteTempFile("tr_dpo.textproto", kValidScratch);
  absl::StatusOr<TrainConfig> config =
      LoadTrainConfig(path, {"objective.dpo.sync_ref_model=true"});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(Message(config.status()),
            path +
                ": objective.dpo.sync_ref_model: needs model.live_reference: "
                "true; TR-DPO moves the reference during training, so the "
                "reference log-probs precomputed before training would go "
                "stale (TRL likewise refuses sync_ref_model with "
                "precompute_ref_log_probs). Add model { live_reference: true "
                "}, or remove sync_ref_model");

  absl::StatusOr<TrainConfig> live = LoadTrainConfig(
      path, {"objective.dpo.sync_ref_model=true", "model.live_reference=true"});
  ASSERT_TRUE(live.ok()) << live.status();
  // TRL's defaults.
  EXPECT_FLOAT_EQ(live->objective().dpo().ref_model_mixup_alpha(), 0.6f);
  EXPECT_EQ(live->objective().dpo().ref_model_sync_steps(), 512);
}

TEST(TrDpoValidationTest, SettingsOutOfRangeAreRefusedWithOrWithoutSync) {
  const std::string path =
      WriteTempFile("tr_dpo_range.textproto", kValidScratch);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"objective.dpo.ref_model_mixup_alpha=1.5",
       ": objective.dpo.ref_model_mixup_alpha: must be in [0, 1], got 1.5 "
       "(the policy's share of the reference after each sync)"},
      {"objective.dpo.ref_model_mixup_alpha=-0.1",
       ": objective.dpo.ref_model_mixup_alpha: must be in [0, 1], got -0.1"},
      {"objective.dpo.ref_model_sync_steps=0",
       ": objective.dpo.ref_model_sync_steps: must be >= 1, got 0 (the "
       "reference is synced every that many optimizer steps)"},
      {"objective.dpo.ref_model_sync_steps=-3",
       ": objective.dpo.ref_model_sync_steps: must be >= 1, got -3"},
  };
  for (const auto& [set, expected] : cases) {
    for (bool sync : {false, true}) {
      SCOPED_TRACE(absl::StrCat(set, sync ? " with sync" : " without sync"));
      std::vector<std::string> overrides = {set};
      if (sync) {
        overrides.push_back("objective.dpo.sync_ref_model=true");
        overrides.push_back("model.live_reference=true");
      }
      absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, overrides);
      ASSERT_FALSE(config.ok());
      EXPECT_THAT(Message(config.status()), HasSubstr(path + expected));
    }
  }
  // The bounds themselves are allowed: alpha 0 keeps the reference, 1 copies
  // the policy into it (TR-DPO's hard update).
  for (const char* alpha : {"0", "1"}) {
    absl::StatusOr<TrainConfig> config = LoadTrainConfig(
        path,
        {absl::StrCat("objective.dpo.ref_model_mixup_alpha=", alpha),
         "objective.dpo.ref_model_sync_steps=1",
         "objective.dpo.sync_ref_model=true", "model.live_reference=true"});
    EXPECT_TRUE(config.ok()) << config.status();
  }
  // Without sync_ref_model they are ignored, as in TRL.
  absl::StatusOr<TrainConfig> ignored =
      LoadTrainConfig(path, {"objective.dpo.ref_model_mixup_alpha=0.9",
                             "objective.dpo.ref_model_sync_steps=4"});
  EXPECT_TRUE(ignored.ok()) << ignored.status();
}

// CPO and ORPO (docs/objectives.md §8): their own fields' ranges, and no
// reference model.
INSTANTIATE_TEST_SUITE_P(
    ReferenceFreeObjectives, ValidationTest,
    ::testing::Values(
        InvalidCase{{"objective.cpo.label_smoothing=0.5"},
                    "objective.cpo.label_smoothing: must be in [0, 0.5), got "
                    "0.5"},
        InvalidCase{{"objective.cpo.label_smoothing=-0.1"},
                    "objective.cpo.label_smoothing: must be in [0, 0.5), got "
                    "-0.1"},
        InvalidCase{{"objective.cpo.loss_type=HINGE",
                     "objective.cpo.label_smoothing=0.1"},
                    "objective.cpo.label_smoothing: used only by loss_type "
                    "SIGMOID, SIMPO and ALPHAPO (TRL ignores it for HINGE)"},
        InvalidCase{{"objective.cpo.cpo_alpha=-1"},
                    "objective.cpo.cpo_alpha: must be >= 0 (the weight of the "
                    "chosen responses' NLL), got -1"},
        InvalidCase{
            {"objective.cpo.loss_type=ALPHAPO", "objective.cpo.cpo_alpha=1"},
            "objective.cpo.cpo_alpha: loss_type ALPHAPO is SIMPO with "
            "cpo_alpha 0"},
        InvalidCase{{"objective.cpo.simpo_gamma=1"},
                    "objective.cpo.simpo_gamma: used only by loss_type SIMPO "
                    "and ALPHAPO, got 1 with SIGMOID"},
        InvalidCase{{"objective.cpo.beta=-1"},
                    "objective.cpo.beta: must be > 0, got -1"},
        InvalidCase{{"objective.orpo.beta=-0.5"},
                    "objective.orpo.beta: must be > 0, got -0.5"},
        InvalidCase{{"objective.cpo={}", "model.live_reference=true"},
                    "model.live_reference: objective cpo uses no reference "
                    "model; remove live_reference"},
        InvalidCase{{"objective.orpo={}", "model.reference_hf_path=/m/ref"},
                    "model.reference_hf_path: objective orpo uses no "
                    "reference model; remove reference_hf_path (got /m/ref)"}));

TEST(DefaultsTest, CpoAndOrpoGetTrlsDefaults) {
  const std::string path =
      WriteTempFile("cpo_defaults.textproto", kValidScratch);
  absl::StatusOr<TrainConfig> cpo = LoadTrainConfig(path, {"objective.cpo={}"});
  ASSERT_TRUE(cpo.ok()) << cpo.status();
  EXPECT_FLOAT_EQ(cpo->objective().cpo().beta(), 0.1f);
  EXPECT_FLOAT_EQ(cpo->objective().cpo().cpo_alpha(), 1.0f);
  EXPECT_FLOAT_EQ(cpo->objective().cpo().simpo_gamma(), 0.5f);
  absl::StatusOr<TrainConfig> alphapo =
      LoadTrainConfig(path, {"objective.cpo={loss_type:ALPHAPO alpha:0.25}"});
  ASSERT_TRUE(alphapo.ok()) << alphapo.status();
  EXPECT_EQ(alphapo->objective().cpo().cpo_alpha(), 0.0f);
  absl::StatusOr<TrainConfig> orpo =
      LoadTrainConfig(path, {"objective.orpo={}"});
  ASSERT_TRUE(orpo.ok()) << orpo.status();
  EXPECT_FLOAT_EQ(orpo->objective().orpo().beta(), 0.1f);
}

TEST(LoadTrainConfigTest, LoraGetsPeftsDefaultsAndResolvesItsAdapterPath) {
  absl::StatusOr<TrainConfig> fresh = LoadTrainConfig(
      WriteTempFile("configs/lora/fresh.textproto",
                    "model { hf_path: '/m' lora {} } "
                    "data { train_files: '/t.jsonl' } objective { dpo {} }"),
      {});
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->model().lora().r(), 8);
  EXPECT_FLOAT_EQ(fresh->model().lora().alpha(), 8.0f);
  EXPECT_EQ(fresh->model().lora().dropout(), 0.0f);
  // An adapter's own r and lora_alpha apply: they stay unset.
  const std::string path =
      WriteTempFile("configs/lora/run.textproto",
                    "model { hf_path: '/m' lora { adapter_path: 'adapter' } } "
                    "data { train_files: '/t.jsonl' } objective { dpo {} }");
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(path, {});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->model().lora().has_r());
  EXPECT_FALSE(config->model().lora().has_alpha());
  EXPECT_EQ(config->model().lora().adapter_path(),
            (fs::path(path).parent_path() / "adapter").string());
}

// SparsePO trains adapters too: the policy in reference mode is its
// reference (docs/lora.md).
TEST(LoadTrainConfigTest, SparsePoTrainsWithLora) {
  for (const char* objective : {"sparsepo {}", "sparsepo { mask: MAPO }",
                                "sparsepo { independent_masks: true }"}) {
    absl::StatusOr<TrainConfig> config = LoadTrainConfig(
        WriteTempFile(
            "lora_sparsepo.textproto",
            absl::StrCat("model { hf_path: '/m' lora { r: 4 } } "
                         "objective { ",
                         objective, " } data { train_files: '/t.jsonl' }")),
        {});
    EXPECT_TRUE(config.ok()) << objective << ": " << config.status();
  }
}

TEST(LoadTrainConfigTest, LoraProblemsNameTheirFields) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"model { hf_path: '/m' lora { r: 0 } } objective { dpo {} }",
       "model.lora.r: must be > 0, got 0"},
      {"model { hf_path: '/m' lora { alpha: -1 } } objective { dpo {} }",
       "model.lora.alpha: must be > 0, got -1"},
      {"model { hf_path: '/m' lora { dropout: 1 } } objective { dpo {} }",
       "model.lora.dropout: must be in [0, 1), got 1"},
      {"model { hf_path: '/m' reference_hf_path: '/r' lora {} } "
       "objective { dpo {} }",
       "model.reference_hf_path: with model.lora the reference is the model "
       "the run starts from"},
      {"model { hf_path: '/m' live_reference: true lora {} } "
       "objective { dpo { sync_ref_model: true } }",
       "objective.dpo.sync_ref_model: TR-DPO mixes"},
      {"model { hf_path: '/m' base_dtype: WEIGHT_BF16 } objective { dpo {} }",
       "model.base_dtype: holds the frozen weights of a LoRA run and needs "
       "model.lora (got WEIGHT_BF16"},
  };
  for (const auto& [text, expected] : cases) {
    absl::StatusOr<TrainConfig> config = LoadTrainConfig(
        WriteTempFile("lora_bad.textproto",
                      text + " data { train_files: '/t.jsonl' }"),
        {});
    ASSERT_FALSE(config.ok()) << text;
    EXPECT_THAT(Message(config.status()), HasSubstr(expected)) << text;
    EXPECT_THAT(Message(config.status()), HasSubstr("lora_bad.textproto: "));
  }
}

}  // namespace
}  // namespace prefopt::config
