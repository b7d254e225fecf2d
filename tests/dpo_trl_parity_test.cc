// DPO against TRL 1.16 (tests/fixtures/gpt2/dpo_*.json, train_10_steps.json):
// the loss and the metrics both log (entropy included) for every loss type on
// one batch of six pairs, the policy gradients, and ten AdamW steps with
// clipping and a warm-up schedule (with TRL's entropy and num_tokens), all
// through the same Trainer that `prefopt train` runs. The cdpo case's loss is
// prefopt's cDPO formula evaluated in torch on TRL's per-pair log-ratios (TRL
// 1.x ignores label smoothing for sigmoid).
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
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

nlohmann::json ReadJson(const std::string& name) {
  return testing::ReadJson(WorkspacePath("tests/fixtures/gpt2/" + name));
}

struct Case {
  const char* name;
  const char* loss_type;
  double beta;
  double label_smoothing;
  bool has_grads;
};

std::string ConfigText(const Case& c, const std::string& run_dir) {
  const std::string dir = WorkspacePath("tests/fixtures/gpt2");
  return absl::StrCat(
      "model { hf_path: '", dir, "/policy' reference_hf_path: '", dir,
      "/reference' }\n", "data { train_files: '", dir,
      "/pairs.jsonl' max_length: 64 }\n", "objective { dpo { beta: ", c.beta,
      " loss_type: ", c.loss_type, " label_smoothing: ", c.label_smoothing,
      " } }\n",
      "optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }\n",
      "schedule { kind: LINEAR warmup_steps: 2 }\n",
      "batch { micro_batch_size: 2 global_batch_size: 6 }\n",
      "max_steps: 10\nseed: 1\nrun_dir: '", run_dir, "'\n");
}

std::unique_ptr<loop::Trainer> MakeTrainer(const Case& c) {
  const std::string run_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/run_", c.name);
  const std::string path = testing::WriteTempFile(
      absl::StrCat(c.name, ".textproto"), ConfigText(c, run_dir));
  auto config = config::LoadTrainConfig(path, {});
  EXPECT_TRUE(config.ok()) << config.status();
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(*config, log);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  return *std::move(trainer);
}

void ExpectClose(double ours, double theirs, const std::string& what,
                 double rel = 1e-4, double abs = 1e-6) {
  EXPECT_NEAR(ours, theirs, std::max(abs, rel * std::abs(theirs))) << what;
}

class DpoTrlParity : public ::testing::TestWithParam<Case> {};

TEST_P(DpoTrlParity, LossMetricsAndGradientsMatchTrl) {
  const Case& c = GetParam();
  const nlohmann::json expected =
      ReadJson(absl::StrCat("dpo_", c.name, ".json"));
  auto trainer = MakeTrainer(c);
  ASSERT_EQ(trainer->dataset().examples.size(), 6u);

  // Reference log-probs: TRL sums them for every loss type, IPO included.
  const auto& per_pair = expected["per_pair"];
  for (int i = 0; i < 6; ++i) {
    ExpectClose(trainer->references().SequenceLogp(i, 0),
                per_pair["reference_chosen_logps"][i].get<double>(),
                absl::StrCat("reference chosen logp of pair ", i));
    ExpectClose(trainer->references().SequenceLogp(i, 1),
                per_pair["reference_rejected_logps"][i].get<double>(),
                absl::StrCat("reference rejected logp of pair ", i));
  }

  std::vector<int> all(6);
  std::iota(all.begin(), all.end(), 0);
  std::map<std::string, double> m = trainer->ForwardBackward(all);
  ExpectClose(m["loss"], expected["loss"].get<double>(), "loss");
  int compared = 0;
  for (const auto& [name, value] : expected["metrics"].items()) {
    if (testing::IsTrlOnlyDpoMetric(name)) continue;
    ASSERT_TRUE(m.count(name)) << "missing metric " << name;
    ExpectClose(m[name], value.get<double>(), name);
    ++compared;
  }
  // rewards/{chosen,rejected,accuracies,margins}, logps/*, logits/*,
  // mean_token_accuracy, entropy.
  EXPECT_EQ(compared, 10);
  // TRL's num_tokens after its first batch: every token of every sequence.
  EXPECT_EQ(m["tokens"], expected["metrics"]["num_tokens"].get<double>());

  if (!c.has_grads) return;
  auto grads = io::SafetensorsFile::Open(WorkspacePath(
      absl::StrCat("tests/fixtures/gpt2/dpo_", c.name, "_grads.safetensors")));
  ASSERT_TRUE(grads.ok()) << grads.status();
  const model::Decoder& policy = trainer->policy();
  for (const model::ParamTensor& t : policy.layout().tensors()) {
    auto ref = grads->ReadFloat("grad." + t.name);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_LT(RelativeL2(TensorInHfLayout(t, policy.grads()), *ref), 1e-4)
        << "gradient of " << t.name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllLossTypes, DpoTrlParity,
    ::testing::Values(Case{"sigmoid", "SIGMOID", 0.1, 0.0, true},
                      Case{"cdpo", "SIGMOID", 0.1, 0.1, false},
                      Case{"ipo", "IPO", 0.1, 0.0, true},
                      Case{"hinge", "HINGE", 0.1, 0.0, false},
                      Case{"robust", "ROBUST", 0.1, 0.1, true},
                      Case{"sigmoid_beta05", "SIGMOID", 0.5, 0.0, false}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return std::string(info.param.name);
    });

TEST(DpoTraining, TenAdamWStepsMatchTorch) {
  const nlohmann::json expected = ReadJson("train_10_steps.json");
  auto trainer = MakeTrainer({"train10", "SIGMOID", 0.1, 0.0, false});
  ASSERT_EQ(trainer->total_steps(), 10);
  for (int step = 0; step < 10; ++step) {
    auto m = trainer->Step();
    ASSERT_TRUE(m.ok()) << m.status();
    const auto& e = expected["steps"][step];
    const std::string at = absl::StrCat(" at step ", step);
    ExpectClose((*m)["loss"], e["loss"].get<double>(), "loss" + at);
    ExpectClose((*m)["grad_norm"], e["grad_norm"].get<double>(),
                "grad_norm" + at);
    ExpectClose((*m)["lr"], e["lr"].get<double>(), "lr" + at, 1e-6, 1e-12);
    ExpectClose((*m)["rewards/margins"], e["rewards/margins"].get<double>(),
                "rewards/margins" + at, 1e-3);
    ExpectClose((*m)["entropy"], e["metrics"]["entropy"].get<double>(),
                "entropy" + at, 1e-3);
    EXPECT_EQ((*m)["num_tokens"], e["metrics"]["num_tokens"].get<double>())
        << "num_tokens" << at;
  }
  auto final_weights = io::SafetensorsFile::Open(
      WorkspacePath("tests/fixtures/gpt2/train_10_steps_final.safetensors"));
  ASSERT_TRUE(final_weights.ok()) << final_weights.status();
  testing::ExpectGpt2WeightsMatch(trainer->policy(), *final_weights,
                                  /*steps=*/10, /*lr=*/1e-3);
}

}  // namespace
}  // namespace prefopt
