#include "trainer/loop/checkpointing.h"

#include <signal.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "proto/checkpoint.pb.h"
#include "proto/config.pb.h"
#include "trainer/config/config_loader.h"

namespace prefopt::loop {
namespace {

using ::testing::HasSubstr;

TrainConfig BaseConfig() {
  TrainConfig c;
  c.mutable_model()->set_hf_path("/models/gpt2");
  c.mutable_data()->add_train_files("/data/a.jsonl");
  c.mutable_objective()->mutable_dpo()->set_beta(0.1f);
  c.mutable_optimizer()->set_lr(1e-3f);
  c.mutable_batch()->set_micro_batch_size(2);
  c.mutable_batch()->set_global_batch_size(4);
  c.set_max_steps(6);
  c.set_run_dir("/runs/a");
  return c;
}

TEST(StopSignalDeathTest, BeforeTheLoopASignalEndsTheProcessWithAMessage) {
  // A fresh process, whatever the other tests deferred.
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  for (const int signal : {SIGTERM, SIGUSR1, SIGINT}) {
    EXPECT_EXIT(
        {
          InstallStopSignalHandlers();
          raise(signal);
          std::exit(0);
        },
        ::testing::KilledBySignal(signal),
        absl::StrCat("stopped by ", SignalName(signal),
                     " while preparing the run \\(nothing to save yet\\)"));
  }
}

TEST(StopSignalTest, DeferredHandlersRecordTheSignalInsteadOfEndingTheProcess) {
  EXPECT_EQ(ReceivedStopSignal(), 0);
  InstallStopSignalHandlers();
  DeferStopSignals();
  ASSERT_EQ(raise(SIGUSR1), 0);
  EXPECT_EQ(ReceivedStopSignal(), SIGUSR1);
  ASSERT_EQ(raise(SIGTERM), 0);
  EXPECT_EQ(ReceivedStopSignal(), SIGTERM);
  EXPECT_EQ(SignalName(SIGUSR1), "SIGUSR1");
  EXPECT_EQ(SignalName(SIGTERM), "SIGTERM");
}

TEST(SameTrainingTest, RunAndCheckpointSettingsMayChange) {
  const TrainConfig saved = BaseConfig();
  TrainConfig now = saved;
  now.set_run_dir("/runs/b");
  now.set_resume("latest");
  now.set_save_every_steps(10);
  now.set_keep_last_n(2);
  now.set_save_on_signal(false);
  now.set_log_every_steps(5);
  now.mutable_data()->set_train_files(0, "/moved/a.jsonl");
  now.mutable_data()->add_eval_files("/data/eval.jsonl");
  now.mutable_data()->set_cache_dir("/cache");
  now.set_activation_checkpointing(true);
  EXPECT_TRUE(CheckSameTraining(config::ResolvedConfigText(saved), now).ok());
  EXPECT_TRUE(CheckSameTraining(config::ResolvedConfigText(now), saved).ok());
  EXPECT_EQ(ConfigFingerprint(saved), ConfigFingerprint(now));
}

TEST(SameTrainingTest, EveryTrainingFieldThatDiffersIsNamed) {
  const TrainConfig saved = BaseConfig();
  TrainConfig now = saved;
  now.mutable_optimizer()->set_lr(5e-4f);
  now.mutable_schedule()->set_warmup_steps(3);
  const absl::Status s =
      CheckSameTraining(config::ResolvedConfigText(saved), now);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("optimizer.lr: 0.001 -> 0.0005"));
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("added: schedule: { warmup_steps: 3 }"));
  EXPECT_NE(ConfigFingerprint(saved), ConfigFingerprint(now));
}

TEST(SameTrainingTest, UnreadableSavedConfigIsAnError) {
  const absl::Status s = CheckSameTraining("no_such_field: 1", BaseConfig());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("not a TrainConfig"));
}

// A checkpoint folder holding only a manifest with `config` and
// `data_fingerprint`.
std::string ManifestDir(const std::string& name, const TrainConfig& config,
                        uint64_t data_fingerprint) {
  const std::string dir = absl::StrCat(std::getenv("TEST_TMPDIR"), "/", name);
  std::filesystem::create_directories(dir);
  CheckpointManifest manifest;
  manifest.set_config_text(config::ResolvedConfigText(config));
  manifest.set_data_fingerprint(data_fingerprint);
  std::string text;
  google::protobuf::TextFormat::PrintToString(manifest, &text);
  std::ofstream(dir + "/manifest.textproto") << text;
  return dir;
}

TEST(ContinuesTrainingTest, ComparesConfigAndData) {
  const TrainConfig config = BaseConfig();
  const std::string dir = ManifestDir("continues", config, 77);
  EXPECT_TRUE(CheckContinuesTraining(dir, config, 77).ok());

  const absl::Status data = CheckContinuesTraining(dir, config, 78);
  EXPECT_EQ(data.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(data.message()),
              HasSubstr("the training data differs from the checkpoint's"));

  TrainConfig other = config;
  other.set_seed(3);
  const absl::Status seed = CheckContinuesTraining(dir, other, 77);
  EXPECT_EQ(seed.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(seed.message()), HasSubstr("added: seed: 3"));
}

TEST(ContinuesTrainingTest, UnreadableManifestIsLeftToTheLoader) {
  const std::string dir = absl::StrCat(std::getenv("TEST_TMPDIR"), "/garbled");
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/manifest.textproto") << "step: {{{";
  EXPECT_TRUE(CheckContinuesTraining(dir, BaseConfig(), 1).ok());
  EXPECT_TRUE(CheckContinuesTraining(dir + "/none", BaseConfig(), 1).ok());
}

TEST(DataFingerprintTest, ChangesWithAnyTokenOrPreference) {
  data::Dataset a;
  a.examples.resize(2);
  a.examples[0].prompt = {1, 2};
  a.examples[0].chosen = {3};
  a.examples[0].rejected = {4};
  a.examples[1].prompt = {5};
  a.examples[1].chosen = {6, 7};
  a.examples[1].rejected = {8};
  data::Dataset b = a;
  EXPECT_EQ(DataFingerprint(a), DataFingerprint(b));
  b.examples[1].chosen[1] = 9;
  EXPECT_NE(DataFingerprint(a), DataFingerprint(b));
  b = a;
  b.examples[0].preference_fraction = 0.9f;
  EXPECT_NE(DataFingerprint(a), DataFingerprint(b));
  // The same tokens split differently between prompt and response.
  b = a;
  b.examples[0].prompt = {1};
  b.examples[0].chosen = {2, 3};
  EXPECT_NE(DataFingerprint(a), DataFingerprint(b));
}

TEST(DataPositionTest, EpochBatchAndExamplesSeen) {
  // 10 examples in batches of 4: 3 batches per epoch (the last holds 2).
  DataPosition p = DataPositionAfter(7, 3, 10, 4, true, 42);
  EXPECT_EQ(p.epoch(), 2);
  EXPECT_EQ(p.next_batch(), 1);
  EXPECT_EQ(p.examples_seen(), 2 * 10 + 4);
  EXPECT_EQ(p.shuffle_seed(), 42u);
  // A last batch too small for the ranks is skipped: 2 batches of 4.
  p = DataPositionAfter(3, 2, 10, 4, false, 0);
  EXPECT_EQ(p.epoch(), 1);
  EXPECT_EQ(p.examples_seen(), 8 + 4);
}

TEST(DataPositionTest, DifferentOrderIsNamed) {
  const DataPosition saved = DataPositionAfter(3, 3, 10, 4, true, 1);
  EXPECT_TRUE(
      CheckSameDataOrder(saved, DataPositionAfter(5, 3, 10, 4, true, 1)).ok());
  const absl::Status s =
      CheckSameDataOrder(saved, DataPositionAfter(3, 2, 10, 4, true, 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("global batches per epoch 3 -> 2"));
}

TEST(TokenizerDirTest, TokenizerPathOrModelFolder) {
  TrainConfig c = BaseConfig();
  EXPECT_EQ(TokenizerDir(c), "/models/gpt2");
  c.mutable_data()->set_tokenizer_path("/tok");
  EXPECT_EQ(TokenizerDir(c), "/tok");
  c = TrainConfig();
  EXPECT_EQ(TokenizerDir(c), "");
  absl::StatusOr<uint64_t> fp = TokenizerFingerprint(c);
  ASSERT_TRUE(fp.ok());
  EXPECT_EQ(*fp, 0u);
}

TEST(BroadcastStringTest, SingleProcessKeepsTheValue) {
  std::string value = "abc";
  EXPECT_TRUE(BroadcastString(nullptr, &value).ok());
  EXPECT_EQ(value, "abc");
}

}  // namespace
}  // namespace prefopt::loop
