// CPO, SimPO, AlphaPO and ORPO against TRL 1.16's experimental CPOTrainer and
// ORPOTrainer (tests/fixtures/generate_cpo_orpo.py): the token ids, the loss
// and every metric TRL logs on one batch of six pairs, the policy gradients,
// and three AdamW steps, all through the Trainer that `prefopt train` runs.
// logits/* is the one deliberate difference (docs/objectives.md §8): the
// fixture holds prefopt's mean over the response tokens, computed in torch
// from the same model. The data is the pre-tokenized form of what TRL fed
// its model (tests/fixtures/gpt2/cpo_orpo_pairs.jsonl): TRL's CPO and ORPO
// tokenize text as TRL 0.x, which prefopt's text pipeline does not.
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/fixture_util.h"
#include "trainer/config/config_loader.h"
#include "trainer/io/safetensors.h"
#include "trainer/loop/evaluator.h"
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
  const char* objective;  // the text inside objective { }
  bool has_grads;
  bool trained;  // the fixture has a three-step trajectory
};

TrainConfig MakeConfig(const Case& c, const std::string& run_name) {
  const std::string dir = WorkspacePath("tests/fixtures/gpt2");
  const std::string run_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/", run_name, "_", c.name);
  const std::string text = absl::StrCat(
      "model { hf_path: '", dir, "/policy' }\n", "data { train_files: '", dir,
      "/cpo_orpo_pairs.jsonl' eval_files: '", dir,
      "/cpo_orpo_pairs.jsonl' max_length: 64 }\n", "objective { ", c.objective,
      " }\n", "optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }\n",
      "schedule { kind: LINEAR warmup_steps: 0 }\n",
      "batch { micro_batch_size: 2 global_batch_size: 6 }\n",
      "max_steps: 3\nseed: 1\nrun_dir: '", run_dir, "'\n");
  const std::string path = testing::WriteTempFile(
      absl::StrCat(run_name, "_", c.name, ".textproto"), text);
  auto config = config::LoadTrainConfig(path, {});
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : TrainConfig();
}

std::unique_ptr<loop::Trainer> MakeTrainer(const Case& c) {
  const TrainConfig config = MakeConfig(c, "run");
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(config, log);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  // Reference-free: no reference pass, no cache.
  EXPECT_EQ(log.str().find("reference"), std::string::npos) << log.str();
  return *std::move(trainer);
}

constexpr double kRel = 1e-5;

void ExpectClose(double ours, double theirs, const std::string& what,
                 double rel = kRel, double abs = 1e-6) {
  EXPECT_NEAR(ours, theirs, std::max(abs, rel * std::abs(theirs))) << what;
}

// The value of `name` prefopt must reproduce: TRL's, except logits/*, where
// the fixture records prefopt's deliberate difference.
double Expected(const nlohmann::json& fixture, const std::string& name) {
  if (name.rfind("logits/", 0) == 0) {
    return fixture["response_token_logits"][name].get<double>();
  }
  return fixture["metrics"][name].get<double>();
}

class CpoOrpoTrl : public ::testing::TestWithParam<Case> {};

TEST_P(CpoOrpoTrl, TokensLossMetricsAndGradientsMatchTrl) {
  const Case& c = GetParam();
  const nlohmann::json fixture = ReadJson(absl::StrCat(c.name, ".json"));
  auto trainer = MakeTrainer(c);
  const auto& examples = trainer->dataset().examples;
  ASSERT_EQ(examples.size(), 6u);
  // The sequences prefopt trains on are the ones TRL fed its model: rows
  // 0..5 prompt ++ chosen, rows 6..11 prompt ++ rejected (padded after).
  const auto& fed = fixture["trl_fed_input_ids"];
  for (int r = 0; r < 12; ++r) {
    const data::Example& e = examples[r % 6];
    std::vector<int32_t> ours = e.prompt;
    const auto& response = r < 6 ? e.chosen : e.rejected;
    ours.insert(ours.end(), response.begin(), response.end());
    const std::vector<int32_t> theirs = fed[r].get<std::vector<int32_t>>();
    ASSERT_LE(ours.size(), theirs.size());
    EXPECT_EQ(ours, std::vector<int32_t>(theirs.begin(),
                                         theirs.begin() + ours.size()))
        << "row " << r;
  }

  std::vector<int> all(6);
  std::iota(all.begin(), all.end(), 0);
  std::map<std::string, double> m = trainer->ForwardBackward(all);
  ExpectClose(m["loss"], fixture["loss"].get<double>(), "loss");
  int compared = 0;
  for (const auto& [name, value] : fixture["metrics"].items()) {
    ASSERT_TRUE(m.count(name)) << "missing metric " << name;
    ExpectClose(m[name], Expected(fixture, name), name);
    ++compared;
  }
  // rewards/{chosen,rejected,accuracies,margins}, logps/*, logits/*,
  // nll_loss; ORPO adds log_odds_ratio and log_odds_chosen.
  EXPECT_EQ(compared, fixture["trainer"] == "ORPOTrainer" ? 11 : 9);

  if (!c.has_grads) return;
  auto grads = io::SafetensorsFile::Open(WorkspacePath(
      absl::StrCat("tests/fixtures/gpt2/", c.name, "_grads.safetensors")));
  ASSERT_TRUE(grads.ok()) << grads.status();
  const model::Decoder& policy = trainer->policy();
  for (const model::ParamTensor& t : policy.layout().tensors()) {
    auto ref = grads->ReadFloat("grad." + t.name);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_LT(RelativeL2(TensorInHfLayout(t, policy.grads()), *ref), 1e-5)
        << "gradient of " << t.name;
  }
}

// `prefopt eval` of the starting model on the same six pairs (one global
// batch) gives what TRL's compute_loss logged for them.
TEST_P(CpoOrpoTrl, EvaluationMatchesTrl) {
  const Case& c = GetParam();
  const nlohmann::json fixture = ReadJson(absl::StrCat(c.name, ".json"));
  std::ostringstream log;
  auto eval = loop::EvaluateModel(MakeConfig(c, "eval"), "", log, nullptr);
  ASSERT_TRUE(eval.ok()) << eval.status();
  EXPECT_EQ(eval->examples, 6);
  ExpectClose(eval->metrics["loss"], fixture["loss"].get<double>(), "loss");
  for (const auto& [name, value] : fixture["metrics"].items()) {
    ASSERT_TRUE(eval->metrics.count(name)) << "missing metric " << name;
    ExpectClose(eval->metrics[name], Expected(fixture, name), name);
  }
}

TEST_P(CpoOrpoTrl, ThreeAdamWStepsMatchTrl) {
  const Case& c = GetParam();
  if (!c.trained) GTEST_SKIP() << "no trajectory in this fixture";
  const nlohmann::json fixture = ReadJson(absl::StrCat(c.name, ".json"));
  const nlohmann::json& train = fixture["train"];
  auto trainer = MakeTrainer(c);
  ASSERT_EQ(trainer->total_steps(), 3);
  for (int step = 0; step < 3; ++step) {
    auto m = trainer->Step();
    ASSERT_TRUE(m.ok()) << m.status();
    const auto& e = train["steps"][step];
    const std::string at = absl::StrCat(" at step ", step);
    ExpectClose((*m)["loss"], e["loss"].get<double>(), "loss" + at);
    ExpectClose((*m)["grad_norm"], e["grad_norm"].get<double>(),
                "grad_norm" + at);
    ExpectClose((*m)["lr"], e["lr"].get<double>(), "lr" + at, 1e-6, 1e-12);
    for (const auto& [name, value] : e["metrics"].items()) {
      // TRL's logits/* include prompt and padding positions (§8).
      if (name.rfind("logits/", 0) == 0) continue;
      // The weights have moved by lr-sized steps: their rounding differs.
      ExpectClose((*m)[name], value.get<double>(), name + at, 1e-4);
    }
  }
  const std::string final_path = WorkspacePath(
      absl::StrCat("tests/fixtures/gpt2/", c.name, "_train_final.safetensors"));
  if (!std::ifstream(final_path)) return;
  auto final_weights = io::SafetensorsFile::Open(final_path);
  ASSERT_TRUE(final_weights.ok()) << final_weights.status();
  testing::ExpectGpt2WeightsMatch(trainer->policy(), *final_weights,
                                  /*steps=*/3, /*lr=*/1e-3);
}

INSTANTIATE_TEST_SUITE_P(
    AllCases, CpoOrpoTrl,
    ::testing::Values(
        Case{"cpo_sigmoid", "cpo { loss_type: SIGMOID beta: 0.1 }", true, true},
        Case{"cpo_smoothed",
             "cpo { loss_type: SIGMOID beta: 0.5 label_smoothing: 0.1 }", false,
             false},
        Case{"cpo_hinge", "cpo { loss_type: HINGE beta: 0.1 }", false, false},
        Case{"cpo_ipo", "cpo { loss_type: IPO beta: 0.1 }", false, false},
        Case{"simpo",
             "cpo { loss_type: SIMPO beta: 2 simpo_gamma: 0.5 cpo_alpha: 0 }",
             true, true},
        Case{"simpo_nll",
             "cpo { loss_type: SIMPO beta: 2 simpo_gamma: 0.5 cpo_alpha: 1 }",
             false, false},
        Case{"alphapo",
             "cpo { loss_type: ALPHAPO beta: 2 simpo_gamma: 0.5 alpha: 0.25 }",
             true, false},
        Case{"orpo", "orpo { beta: 0.1 }", true, true}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return std::string(info.param.name);
    });

}  // namespace
}  // namespace prefopt
