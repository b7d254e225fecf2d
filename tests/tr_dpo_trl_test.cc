// TR-DPO against TRL 1.16 (tests/fixtures/gpt2/tr_dpo_5_steps*, written by
// tests/fixtures/generate_tr_dpo.py): five steps of TRL's DPOTrainer.train()
// with sync_ref_model, ref_model_sync_steps 2 and ref_model_mixup_alpha 0.6,
// so that the reference is synced after steps 2 and 4 and steps 3 and 5 score
// against a moved reference. Through the Trainer that `prefopt train` runs:
// every step's loss, grad_norm, learning rate and the metrics both log, then
// the final policy and reference weights.
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/fixture_util.h"
#include "trainer/config/config_loader.h"
#include "trainer/io/safetensors.h"
#include "trainer/loop/trainer.h"

namespace prefopt {
namespace {

using testing::RelativeL2;
using testing::TensorInHfLayout;
using testing::WorkspacePath;

std::unique_ptr<loop::Trainer> MakeTrainer(const std::string& name,
                                           const std::string& dpo) {
  const std::string dir = WorkspacePath("tests/fixtures/gpt2");
  const std::string run_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/run_", name);
  const std::string path = testing::WriteTempFile(
      name + ".textproto",
      absl::StrCat(
          "model { hf_path: '", dir, "/policy' reference_hf_path: '", dir,
          "/reference' live_reference: true }\n", "data { train_files: '", dir,
          "/pairs.jsonl' max_length: 64 }\n", "objective { dpo { ", dpo,
          " } }\n",
          "optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }\n",
          "schedule { kind: LINEAR warmup_steps: 2 }\n",
          "batch { micro_batch_size: 2 global_batch_size: 6 }\n",
          "max_steps: 5\nseed: 1\nrun_dir: '", run_dir, "'\n"));
  auto config = config::LoadTrainConfig(path, {});
  EXPECT_TRUE(config.ok()) << config.status();
  if (!config.ok()) return nullptr;
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(*config, log);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  return trainer.ok() ? *std::move(trainer) : nullptr;
}

constexpr char kTrDpo[] =
    "beta: 0.1 sync_ref_model: true ref_model_sync_steps: 2 "
    "ref_model_mixup_alpha: 0.6";

// Relative 1e-4 (absolute 1e-6 near zero) per metric and 1e-5 relative L2
// per weight tensor: fp32 summation-order differences between torch and
// prefopt, the tolerances of tests/dpo_trl_parity_test.cc. A sync that is
// skipped, late, early or mixes with another alpha moves the step 3 to 5
// metrics by 1e-2 or more.
void ExpectClose(double ours, double theirs, const std::string& what) {
  EXPECT_NEAR(ours, theirs, std::max(1e-6, 1e-4 * std::abs(theirs))) << what;
}

TEST(TrDpoTrl, FiveStepsWithTwoSyncsMatchTrl) {
  nlohmann::json expected;
  std::ifstream(WorkspacePath("tests/fixtures/gpt2/tr_dpo_5_steps.json")) >>
      expected;
  ASSERT_EQ(expected["steps"].size(), 5u);
  auto trainer = MakeTrainer("tr_dpo", kTrDpo);
  ASSERT_NE(trainer, nullptr);
  ASSERT_NE(trainer->live_reference_model(), nullptr);
  for (int step = 0; step < 5; ++step) {
    auto m = trainer->Step();
    ASSERT_TRUE(m.ok()) << m.status();
    const nlohmann::json& e = expected["steps"][step];
    const std::string at = absl::StrCat(" at step ", step + 1);
    ExpectClose((*m)["loss"], e["loss"].get<double>(), "loss" + at);
    ExpectClose((*m)["grad_norm"], e["grad_norm"].get<double>(),
                "grad_norm" + at);
    ExpectClose((*m)["lr"], e["lr"].get<double>(), "lr" + at);
    int compared = 0;
    for (const auto& [name, value] : e["metrics"].items()) {
      if (testing::IsTrlOnlyDpoMetric(name)) continue;
      ASSERT_TRUE(m->count(name)) << "missing metric " << name;
      ExpectClose((*m)[name], value.get<double>(), name + at);
      ++compared;
    }
    // rewards/{chosen,rejected,accuracies,margins}, logps/*, logits/*,
    // mean_token_accuracy, entropy.
    EXPECT_EQ(compared, 10) << at;
  }
  auto final_weights = io::SafetensorsFile::Open(
      WorkspacePath("tests/fixtures/gpt2/tr_dpo_5_steps_final.safetensors"));
  ASSERT_TRUE(final_weights.ok()) << final_weights.status();
  testing::ExpectGpt2WeightsMatch(trainer->policy(), *final_weights,
                                  /*steps=*/5, /*lr=*/1e-3, "policy.");
  testing::ExpectGpt2WeightsMatch(*trainer->live_reference_model(),
                                  *final_weights, /*steps=*/5, /*lr=*/1e-3,
                                  "reference.");
}

// The fixture's syncs are visible: plain DPO (a reference that never moves)
// differs from TRL's third step and from its final reference by far more than
// the tolerances above, so the checks above cannot pass without the syncs.
TEST(TrDpoTrl, WithoutSyncTheReferenceStaysAndStepThreeDiffers) {
  nlohmann::json expected;
  std::ifstream(WorkspacePath("tests/fixtures/gpt2/tr_dpo_5_steps.json")) >>
      expected;
  auto trainer = MakeTrainer("dpo_no_sync", "beta: 0.1");
  ASSERT_NE(trainer, nullptr);
  std::map<std::string, double> third;
  for (int step = 0; step < 3; ++step) {
    auto m = trainer->Step();
    ASSERT_TRUE(m.ok()) << m.status();
    third = *m;
  }
  const double trl =
      expected["steps"][2]["metrics"]["rewards/margins"].get<double>();
  EXPECT_GT(std::abs(third["rewards/margins"] - trl), 1e-3 * std::abs(trl));
  auto final_weights = io::SafetensorsFile::Open(
      WorkspacePath("tests/fixtures/gpt2/tr_dpo_5_steps_final.safetensors"));
  ASSERT_TRUE(final_weights.ok()) << final_weights.status();
  const model::Decoder& reference = *trainer->live_reference_model();
  double worst = 0;
  for (const model::ParamTensor& t : reference.layout().tensors()) {
    auto ref = final_weights->ReadFloat("reference." + t.name);
    ASSERT_TRUE(ref.ok()) << ref.status();
    worst = std::max(worst,
                     RelativeL2(TensorInHfLayout(t, reference.params()), *ref));
  }
  EXPECT_GT(worst, 1e-3);
}

// The sync mixes parameter by parameter: a reference of other sizes is
// refused before training, and so is a config built in code (not validated)
// that syncs a reference whose log-probs are precomputed.
TEST(TrDpoConfig, RefusesReferencesItCannotMix) {
  const std::string dir = WorkspacePath("tests/fixtures/gpt2");
  const std::string run_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/run_mismatch");
  const std::string path = testing::WriteTempFile(
      "mismatch.textproto",
      absl::StrCat(
          "model { architecture: GPT2 vocab_size: 101 n_positions: "
          "64 n_embd: 16 n_layer: 2 n_head: 4 reference_hf_path: '",
          dir, "/reference' live_reference: true }\n", "data { train_files: '",
          dir, "/pairs.jsonl' max_length: 64 }\n", "objective { dpo { ", kTrDpo,
          " } }\n", "batch { micro_batch_size: 2 global_batch_size: 6 }\n",
          "max_steps: 1\nrun_dir: '", run_dir, "'\n"));
  auto config = config::LoadTrainConfig(path, {});
  ASSERT_TRUE(config.ok()) << config.status();
  std::ostringstream log;
  auto refused = loop::Trainer::Create(*config, log);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(std::string(refused.status().message()),
            "objective.dpo.sync_ref_model: model.reference_hf_path must have "
            "the policy's architecture and sizes to be mixed with it: "
            "parameter tensor 0 is transformer.wte.weight [101, 32] in the "
            "reference but transformer.wte.weight [101, 16] in the policy");

  config->mutable_model()->set_live_reference(false);
  config->mutable_model()->set_n_embd(32);
  auto precomputed = loop::Trainer::Create(*config, log);
  ASSERT_FALSE(precomputed.ok());
  EXPECT_EQ(std::string(precomputed.status().message()),
            "objective.dpo.sync_ref_model: needs model.live_reference: true "
            "(the precomputed reference log-probs would go stale)");
}

}  // namespace
}  // namespace prefopt
