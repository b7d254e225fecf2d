// Resume continues the exact run (docs/architecture.md "Determinism"): a run
// interrupted after a checkpoint and resumed from it takes the same steps,
// bit for bit, as one that never stopped: losses, every other metric and the
// final weights. Also: a checkpoint of another training is refused naming
// what differs, and what `prefopt export` writes from a trained checkpoint
// holds the trained weights bit for bit.
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/checkpoint.pb.h"
#include "tests/fixture_util.h"
#include "tests/trainer_steps.h"
#include "trainer/checkpoint/checkpoint_export.h"
#include "trainer/checkpoint/forge_manifest.h"
#include "trainer/config/config_loader.h"
#include "trainer/io/weight_store.h"
#include "trainer/loop/trainer.h"

namespace prefopt {
namespace {

namespace fs = std::filesystem;
using testing::ExpectBitwiseEqual;
using ::testing::HasSubstr;
using testing::MakeTrainer;
using testing::RunSteps;
using testing::StepMetrics;
using testing::TrainableParams;

// 6 pairs in global batches of 2: 3 steps per epoch, so the 8 steps cross
// two epoch boundaries (each with its own shuffle), and the resume at step
// 4 lands mid-epoch. The linear schedule with warm-up makes every step's
// learning rate depend on the step count that resume restores.
std::string RunConfig(const std::string& name, const std::string& extra = "",
                      const std::string& objective = "dpo { beta: 0.1 }") {
  const std::string run_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/", name);
  fs::remove_all(run_dir);
  // KTO trains on the 12 unpaired examples, in order (its KL completions are
  // paired within global batches): 6 steps per epoch.
  const bool unpaired = objective.rfind("kto", 0) == 0;
  return testing::WriteTempFile(
      name + ".textproto",
      absl::StrCat(
          "model { architecture: GPT2 vocab_size: 101 n_positions: 32 "
          "n_embd: 32 n_layer: 2 n_head: 4 }\n",
          "data { train_files: '",
          testing::WorkspacePath(unpaired ? "tests/fixtures/gpt2/unpaired.jsonl"
                                          : "tests/fixtures/gpt2/pairs.jsonl"),
          "' max_length: 32 shuffle: ", unpaired ? "false" : "true", " }\n",
          "objective { ", objective, " }\n",
          "optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }\n",
          "schedule { kind: LINEAR warmup_steps: 2 }\n",
          "batch { micro_batch_size: 1 global_batch_size: 2 }\n",
          "max_steps: 8\nseed: 11\nrun_dir: '", run_dir, "'\n", extra));
}

// SparsePO also saves and restores its mask networks and their optimizers.
class ResumeEachObjective : public ::testing::TestWithParam<const char*> {};

TEST_P(ResumeEachObjective, ResumedRunIsBitwiseTheUninterruptedRun) {
  const std::string objective = GetParam();
  const std::string tag = objective.substr(0, objective.find(' '));
  std::unique_ptr<loop::Trainer> straight =
      MakeTrainer(RunConfig("straight_" + tag, "", objective));
  ASSERT_NE(straight, nullptr);
  const std::vector<StepMetrics> all = RunSteps(*straight, 8);
  ASSERT_EQ(all.size(), 8u);

  const std::string config = RunConfig("interrupted_" + tag, "", objective);
  std::string saved;
  {
    std::unique_ptr<loop::Trainer> first = MakeTrainer(config);
    ASSERT_NE(first, nullptr);
    const std::vector<StepMetrics> head = RunSteps(*first, 4);
    ExpectBitwiseEqual(
        head, std::vector<StepMetrics>(all.begin(), all.begin() + 4), 0);
    absl::StatusOr<std::string> dir = first->SaveCheckpoint();
    ASSERT_TRUE(dir.ok()) << dir.status();
    saved = *dir;
    // Steps after the checkpoint that the resumed run takes again.
    RunSteps(*first, 6);
  }
  EXPECT_EQ(fs::path(saved).filename(), "step_4");

  std::unique_ptr<loop::Trainer> resumed =
      MakeTrainer(config, {"resume=latest"});
  ASSERT_NE(resumed, nullptr);
  EXPECT_EQ(resumed->steps_done(), 4);
  const std::vector<StepMetrics> tail = RunSteps(*resumed, 8);
  ExpectBitwiseEqual(tail, std::vector<StepMetrics>(all.begin() + 4, all.end()),
                     4);
  const std::vector<float> a = TrainableParams(*straight),
                           b = TrainableParams(*resumed);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
      << "final weights differ";
}

INSTANTIATE_TEST_SUITE_P(
    Objectives, ResumeEachObjective,
    ::testing::Values("dpo { beta: 0.1 }",
                      "sparsepo { independent_masks: true mask_init_std: 0.3 "
                      "}",
                      "kto { beta: 0.1 }"));

// activation_checkpointing is not model state: a checkpoint saved with it
// resumes without it and the other way round, and both continue the
// uninterrupted run (without it) bit for bit.
class ResumeAcrossCheckpointing : public ::testing::TestWithParam<bool> {};

TEST_P(ResumeAcrossCheckpointing, ResumedRunIsBitwiseTheUninterruptedRun) {
  const bool saved_with = GetParam();
  const std::vector<std::string> with = {"activation_checkpointing=true"};
  const std::string tag = saved_with ? "saved_with" : "resumed_with";
  std::unique_ptr<loop::Trainer> straight =
      MakeTrainer(RunConfig("straight_" + tag));
  ASSERT_NE(straight, nullptr);
  const std::vector<StepMetrics> all = RunSteps(*straight, 8);
  ASSERT_EQ(all.size(), 8u);

  const std::string config = RunConfig("interrupted_" + tag);
  {
    std::unique_ptr<loop::Trainer> first =
        MakeTrainer(config, saved_with ? with : std::vector<std::string>{});
    ASSERT_NE(first, nullptr);
    ExpectBitwiseEqual(RunSteps(*first, 4),
                       std::vector<StepMetrics>(all.begin(), all.begin() + 4),
                       0);
    ASSERT_TRUE(first->SaveCheckpoint().ok());
  }
  std::vector<std::string> resume = {"resume=latest"};
  if (!saved_with) resume.push_back(with.front());
  std::unique_ptr<loop::Trainer> resumed = MakeTrainer(config, resume);
  ASSERT_NE(resumed, nullptr);
  EXPECT_EQ(resumed->steps_done(), 4);
  ExpectBitwiseEqual(RunSteps(*resumed, 8),
                     std::vector<StepMetrics>(all.begin() + 4, all.end()), 4);
  const std::vector<float> a = TrainableParams(*straight),
                           b = TrainableParams(*resumed);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
      << "final weights differ";
}

INSTANTIATE_TEST_SUITE_P(SavedWithOrResumedWith, ResumeAcrossCheckpointing,
                         ::testing::Bool());

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// TR-DPO moves the live reference every ref_model_sync_steps steps (here 3:
// after steps 3 and 6). A checkpoint after the first sync carries the moved
// reference and the resumed run continues bit for bit, reference included;
// one before it carries none and needs none.
constexpr char kTrDpo[] =
    "dpo { beta: 0.1 sync_ref_model: true ref_model_sync_steps: 3 "
    "ref_model_mixup_alpha: 0.6 }";

std::vector<float> ReferenceParams(const loop::Trainer& trainer) {
  const model::Decoder& r = *trainer.live_reference_model();
  return std::vector<float>(r.params(), r.params() + r.layout().total());
}

TEST(CheckpointResume, TrDpoResumesBitwiseBeforeAndAfterTheFirstSync) {
  const std::vector<std::string> live = {"model.live_reference=true"};
  std::unique_ptr<loop::Trainer> straight =
      MakeTrainer(RunConfig("straight_tr_dpo", "", kTrDpo), live);
  ASSERT_NE(straight, nullptr);
  const std::vector<StepMetrics> all = RunSteps(*straight, 8);
  ASSERT_EQ(all.size(), 8u);

  const std::string config = RunConfig("interrupted_tr_dpo", "", kTrDpo);
  std::vector<std::string> saved;
  {
    std::unique_ptr<loop::Trainer> first = MakeTrainer(config, live);
    ASSERT_NE(first, nullptr);
    for (int until : {2, 4}) {
      RunSteps(*first, until);
      absl::StatusOr<std::string> dir = first->SaveCheckpoint();
      ASSERT_TRUE(dir.ok()) << dir.status();
      saved.push_back(*dir);
    }
    RunSteps(*first, 7);
  }
  for (const std::string& dir : saved) {
    SCOPED_TRACE(dir);
    const int step = fs::path(dir).filename() == "step_2" ? 2 : 4;
    // Only the checkpoint after the sync holds the reference.
    const std::string extra = ReadAll(dir + "/extra.safetensors");
    EXPECT_EQ(
        extra.find("reference.transformer.wte.weight") != std::string::npos,
        step == 4);
    std::vector<std::string> overrides = live;
    overrides.push_back("resume=" + dir);
    overrides.push_back(absl::StrCat("run_dir=", dir, "_resumed"));
    std::unique_ptr<loop::Trainer> resumed = MakeTrainer(config, overrides);
    ASSERT_NE(resumed, nullptr);
    ASSERT_EQ(resumed->steps_done(), step);
    const std::vector<StepMetrics> tail = RunSteps(*resumed, 8);
    ExpectBitwiseEqual(
        tail, std::vector<StepMetrics>(all.begin() + step, all.end()), step);
    const std::vector<float> a = TrainableParams(*straight),
                             b = TrainableParams(*resumed);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
        << "final policy weights differ";
    const std::vector<float> ra = ReferenceParams(*straight),
                             rb = ReferenceParams(*resumed);
    EXPECT_EQ(std::memcmp(ra.data(), rb.data(), ra.size() * sizeof(float)), 0)
        << "final reference weights differ";
  }
}

// Switching the sync on or off across a resume changes the training: the
// config check names the field. Checkpoints whose manifest says otherwise
// (edited and re-signed) are refused by what they hold.
TEST(CheckpointResume, TrDpoAndPlainDpoCheckpointsDoNotResumeEachOther) {
  const std::string tr_dpo = RunConfig("tr_dpo_switch", "", kTrDpo);
  const std::string plain = RunConfig("dpo_switch", "");
  const std::vector<std::string> live = {"model.live_reference=true"};
  std::string tr_dir, plain_dir;
  for (auto [config, dir] :
       {std::pair{&tr_dpo, &tr_dir}, std::pair{&plain, &plain_dir}}) {
    std::unique_ptr<loop::Trainer> first = MakeTrainer(*config, live);
    ASSERT_NE(first, nullptr);
    RunSteps(*first, 4);
    absl::StatusOr<std::string> saved = first->SaveCheckpoint();
    ASSERT_TRUE(saved.ok()) << saved.status();
    *dir = *saved;
  }
  const auto refusal = [&](const std::string& config,
                           std::vector<std::string> overrides) {
    auto loaded = config::LoadTrainConfig(config, overrides);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    if (!loaded.ok()) return std::string();
    std::ostringstream log;
    auto refused = loop::Trainer::Create(*loaded, log);
    EXPECT_FALSE(refused.ok());
    return refused.ok() ? std::string()
                        : std::string(refused.status().message());
  };
  EXPECT_THAT(refusal(tr_dpo, {"model.live_reference=true",
                               "objective.dpo.sync_ref_model=false",
                               "resume=" + tr_dir}),
              HasSubstr("deleted: objective.dpo.sync_ref_model: true"));
  EXPECT_THAT(
      refusal(plain,
              {"model.live_reference=true", "objective.dpo.sync_ref_model=true",
               "objective.dpo.ref_model_sync_steps=3", "resume=" + plain_dir}),
      HasSubstr("added: objective.dpo.sync_ref_model: true"));

  // The manifests re-signed with the other config.
  const auto config_text = [&](const std::string& config,
                               const std::vector<std::string>& overrides) {
    auto loaded = config::LoadTrainConfig(config, overrides);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return loaded.ok() ? config::ResolvedConfigText(*loaded) : std::string();
  };
  const std::string plain_text = config_text(plain, live);
  const std::string tr_text = config_text(tr_dpo, live);
  ASSERT_TRUE(checkpoint::ForgeManifest(tr_dir, [&](CheckpointManifest* m) {
                m->set_config_text(plain_text);
              }).ok());
  ASSERT_TRUE(checkpoint::ForgeManifest(plain_dir, [&](CheckpointManifest* m) {
                m->set_config_text(tr_text);
              }).ok());
  EXPECT_THAT(refusal(plain, {"model.live_reference=true", "resume=" + tr_dir}),
              HasSubstr("extra.safetensors holds a reference model that "
                        "TR-DPO has moved (saved with "
                        "objective.dpo.sync_ref_model: true), but this run "
                        "does not sync its reference"));
  EXPECT_THAT(
      refusal(tr_dpo, {"model.live_reference=true", "resume=" + plain_dir}),
      HasSubstr("objective.dpo.sync_ref_model: true with "
                "ref_model_sync_steps: 3 has moved the reference by step 4, "
                "but the checkpoint holds no reference"));
}

TEST(CheckpointResume, CheckpointOfOtherTrainingIsRefusedNamingTheField) {
  const std::string config = RunConfig("other");
  std::string dir;
  {
    std::unique_ptr<loop::Trainer> first = MakeTrainer(config);
    ASSERT_NE(first, nullptr);
    RunSteps(*first, 2);
    absl::StatusOr<std::string> saved = first->SaveCheckpoint();
    ASSERT_TRUE(saved.ok()) << saved.status();
    dir = *saved;
  }
  auto changed = config::LoadTrainConfig(
      config, {absl::StrCat("resume=", dir), "optimizer.lr=2e-3"});
  ASSERT_TRUE(changed.ok()) << changed.status();
  std::ostringstream log;
  auto refused = loop::Trainer::Create(*changed, log);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr(absl::StrCat("resume from ", dir)));
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("optimizer.lr: 0.001 -> 0.002"));

  // Settings of the run, not of the training, may change; a checkpoint can
  // seed a new run dir.
  std::unique_ptr<loop::Trainer> moved =
      MakeTrainer(config, {absl::StrCat("resume=", dir), "save_every_steps=5",
                           "log_every_steps=3", "run_dir=" + dir + "_fork"});
  ASSERT_NE(moved, nullptr);
  EXPECT_EQ(moved->steps_done(), 2);
}

TEST(CheckpointResume, ReSignedManifestOutOfRangeIsRefusedNamingTheField) {
  const std::string config = RunConfig("forged");
  std::string dir;
  {
    std::unique_ptr<loop::Trainer> first = MakeTrainer(config);
    ASSERT_NE(first, nullptr);
    RunSteps(*first, 2);
    absl::StatusOr<std::string> saved = first->SaveCheckpoint();
    ASSERT_TRUE(saved.ok()) << saved.status();
    dir = *saved;
  }
  const std::string manifest = ReadAll(dir + "/manifest.textproto");
  const std::string complete = ReadAll(dir + "/COMPLETE");
  // 6 pairs in global batches of 2: step 2 leaves the data at epoch 0,
  // batch 2 of 3.
  const std::vector<
      std::pair<std::function<void(CheckpointManifest*)>, std::string>>
      forgeries = {
          // Once NaN at step 4, blamed on the learning rate.
          {[](CheckpointManifest* m) { m->set_optimizer_step(-5); },
           absl::StrCat("checkpoint ", dir,
                        ": manifest.textproto: field 'optimizer_step' must "
                        "be in [0, step = 2] (AdamW updates once per step at "
                        "most), got -5")},
          {[](CheckpointManifest* m) { m->mutable_data()->set_next_batch(3); },
           absl::StrCat("checkpoint ", dir,
                        ": manifest.textproto: field 'data.next_batch' must "
                        "be in [0, data.batches_per_epoch = 3), got 3")},
          {[](CheckpointManifest* m) { m->mutable_data()->set_next_batch(0); },
           absl::StrCat("resume from ", dir,
                        ": manifest.textproto: fields 'data.epoch' and "
                        "'data.next_batch' put the data at epoch 0, batch 0, "
                        "but step 2 leaves it at epoch 0, batch 2")},
          {[](CheckpointManifest* m) { m->set_metrics_lines(5); },
           absl::StrCat("resume from ", dir,
                        ": manifest.textproto: field 'metrics_lines' must be "
                        "at most 2 * step = 4 (a training and an evaluation "
                        "line per step), got 5")},
          {[](CheckpointManifest* m) { m->set_world_size(-1); },
           absl::StrCat("checkpoint ", dir,
                        ": manifest.textproto: field 'world_size' must be >= "
                        "1, got -1")},
      };
  for (const auto& [edit, expected] : forgeries) {
    SCOPED_TRACE(expected);
    WriteAll(dir + "/manifest.textproto", manifest);
    WriteAll(dir + "/COMPLETE", complete);
    ASSERT_TRUE(checkpoint::ForgeManifest(dir, edit).ok());
    auto resumed =
        config::LoadTrainConfig(config, {absl::StrCat("resume=", dir)});
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    std::ostringstream log;
    auto refused = loop::Trainer::Create(*resumed, log);
    ASSERT_FALSE(refused.ok());
    EXPECT_THAT(std::string(refused.status().message()), HasSubstr(expected));
  }
}

TEST(CheckpointResume, ExportHoldsTheTrainedWeightsBitForBit) {
  std::unique_ptr<loop::Trainer> trainer = MakeTrainer(RunConfig("export"));
  ASSERT_NE(trainer, nullptr);
  RunSteps(*trainer, 3);
  absl::StatusOr<std::string> dir = trainer->SaveCheckpoint();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string out = *dir + "_hf";
  absl::StatusOr<checkpoint::CheckpointExport> exported =
      checkpoint::ExportCheckpoint(*dir, out, io::DType::kF32,
                                   checkpoint::kDefaultMaxShardBytes);
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(exported->step, 3);
  absl::StatusOr<io::WeightStore> store = io::WeightStore::Open(out);
  ASSERT_TRUE(store.ok()) << store.status();
  const model::ParamLayout& layout = trainer->policy().layout();
  const std::vector<float> params = TrainableParams(*trainer);
  for (const model::HfTensorRef& ref : layout.HfTensors()) {
    std::vector<float> got(ref.numel), want(ref.numel);
    ASSERT_TRUE(store->ReadFloat(ref.name, ref.shape, got.data()).ok());
    model::LayoutToHf(ref, params.data() + ref.offset, want.data());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0)
        << ref.name;
  }
}

}  // namespace
}  // namespace prefopt
