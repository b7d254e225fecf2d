// The DPO family against TRL 1.16's DPOTrainer (tests/fixtures/dpo_family/,
// written by tests/fixtures/generate_dpo_family.py): every loss type, the MPO
// mixture, every f-divergence, LD-DPO, WPO and the label-smoothed losses.
//
// For each case, through loop::Trainer (the code `prefopt train` runs) on one
// global batch of all six pairs: the loss and every metric TRL logs, and for
// some cases the policy's parameter gradients. At the objective level, fed
// TRL's own per-token log-probs (and, for WPO, TRL's log Σ p²): the loss and
// ∂loss/∂ℓ_t of every response token; through the trainer, WPO's log Σ p²
// come from the output layer. For every loss type and MPO: three AdamW steps.
//
// Tolerances: loss and metrics 1e-5 relative (absolute floor 1e-6 for values
// near 0: TRL sums fp32 log-probs, prefopt in double); ∂loss/∂ℓ_t 1e-5 in
// relative L2 norm and 1e-4 relative per token (floor 1e-8); parameter
// gradients 1e-4 in relative L2 norm (fp32 backward passes in a different
// order); the trajectories' losses and gradient norms 1e-4 relative, the
// weight-change norms 1e-3 relative and the final tensors 1e-5 in relative L2
// norm (Adam divides small gradients by their own size, which magnifies
// rounding differences).
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "tests/fixture_util.h"
#include "trainer/config/config_loader.h"
#include "trainer/io/safetensors.h"
#include "trainer/loop/trainer.h"
#include "trainer/objectives/dpo.h"

namespace prefopt {
namespace {

using testing::RelativeL2;
using testing::TensorInHfLayout;
using testing::WorkspacePath;

constexpr int kPairs = 6;

nlohmann::json ReadCase(const std::string& name) {
  return testing::ReadJson(
      WorkspacePath("tests/fixtures/dpo_family/" + name + ".json"));
}

void ExpectClose(double ours, double theirs, const std::string& what,
                 double rel = 1e-5, double abs = 1e-6) {
  EXPECT_NEAR(ours, theirs, std::max(abs, rel * std::abs(theirs))) << what;
}

// TRL's arguments (recorded in the fixture) as prefopt's objective.dpo.
std::string DpoText(const nlohmann::json& args) {
  std::vector<std::string> types;
  for (const auto& t : args["loss_type"]) {
    types.push_back(absl::AsciiStrToUpper(t.get<std::string>()));
  }
  std::string text = absl::StrCat(
      "beta: ", args["beta"].get<double>(), " loss_type: [",
      absl::StrJoin(types, ", "),
      "] label_smoothing: ", args["label_smoothing"].get<double>(),
      " f_divergence_type: ",
      absl::AsciiStrToUpper(args["f_divergence_type"].get<std::string>()),
      " f_alpha_divergence_coef: ",
      args["f_alpha_divergence_coef"].get<double>(),
      " discopop_tau: ", args["discopop_tau"].get<double>());
  if (!args["loss_weights"].is_null()) {
    std::vector<std::string> weights;
    for (const auto& w : args["loss_weights"]) {
      weights.push_back(absl::StrCat(w.get<double>()));
    }
    absl::StrAppend(&text, " loss_weights: [", absl::StrJoin(weights, ", "),
                    "]");
  }
  if (!args["ld_alpha"].is_null()) {
    absl::StrAppend(&text, " ld_alpha: ", args["ld_alpha"].get<double>());
  }
  if (args["use_weighting"].get<bool>()) {
    absl::StrAppend(&text, " use_weighting: true");
  }
  return text;
}

// AOT sorts within TRL's per-device batch of six pairs: one micro-batch of
// six here. The others (SFT's token mean too, which prefopt pools over the
// global batch) run as three micro-batches of two (gradient accumulation),
// which gives the same numbers.
int MicroBatchFor(const nlohmann::json& args) {
  for (const auto& t : args["loss_type"]) {
    const std::string type = t.get<std::string>();
    if (type == "aot" || type == "aot_unpaired") return kPairs;
  }
  return 2;
}

std::unique_ptr<loop::Trainer> MakeTrainer(const std::string& name,
                                           const nlohmann::json& fixture,
                                           int max_steps) {
  const std::string gpt2 = WorkspacePath("tests/fixtures/gpt2");
  const std::string run_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/run_", name, "_", max_steps);
  const nlohmann::json& args = fixture["trl_args"];
  const std::string text = absl::StrCat(
      "model { hf_path: '", gpt2, "/policy' reference_hf_path: '", gpt2,
      "/reference' }\n", "data { train_files: '",
      WorkspacePath("tests/fixtures/" + fixture["pairs"].get<std::string>()),
      "' max_length: 64 }\n", "objective { dpo { ", DpoText(args), " } }\n",
      "optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }\n",
      "schedule { kind: LINEAR warmup_steps: 0 }\n",
      "batch { micro_batch_size: ", MicroBatchFor(args),
      " global_batch_size: 6 }\n", "max_steps: ", max_steps,
      "\nseed: 1\nrun_dir: '", run_dir, "'\n");
  const std::string path =
      testing::WriteTempFile(absl::StrCat(name, ".textproto"), text);
  auto config = config::LoadTrainConfig(path, {});
  EXPECT_TRUE(config.ok()) << config.status() << "\n" << text;
  if (!config.ok()) return nullptr;
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(*config, log);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  if (!trainer.ok()) return nullptr;
  return *std::move(trainer);
}

const char* const kAllCases[] = {"sigmoid",
                                 "ipo",
                                 "hinge",
                                 "robust",
                                 "exo_pair",
                                 "nca_pair",
                                 "bco_pair",
                                 "sppo_hard",
                                 "aot",
                                 "aot_unpaired",
                                 "apo_zero",
                                 "apo_down",
                                 "discopop",
                                 "sft",
                                 "sigmoid_norm",
                                 "mpo",
                                 "forward_kl",
                                 "js_divergence",
                                 "alpha_divergence",
                                 "alpha_divergence_hinge",
                                 "alpha_divergence_ipo",
                                 "ld_alpha",
                                 "wpo",
                                 "exo_pair_ls",
                                 "robust_ls",
                                 "aot_ls",
                                 "aot_unpaired_ls",
                                 "aot_reordered",
                                 "aot_unpaired_reordered"};

class DpoFamilyTrl : public ::testing::TestWithParam<const char*> {};

TEST_P(DpoFamilyTrl, TrainerLossMetricsAndGradientsMatchTrl) {
  const std::string name = GetParam();
  const nlohmann::json fixture = ReadCase(name);
  auto trainer = MakeTrainer(name, fixture, 1);
  ASSERT_NE(trainer, nullptr);
  ASSERT_EQ(trainer->dataset().examples.size(), 6u);
  std::vector<int> all(kPairs);
  std::iota(all.begin(), all.end(), 0);
  std::map<std::string, double> m = trainer->ForwardBackward(all);
  ExpectClose(m["loss"], fixture["loss"].get<double>(), "loss");
  int compared = 0;
  for (const auto& [metric, value] : fixture["metrics"].items()) {
    if (testing::IsTrlOnlyDpoMetric(metric)) continue;
    ASSERT_TRUE(m.count(metric)) << "missing metric " << metric;
    ExpectClose(m[metric], value.get<double>(), metric);
    ++compared;
  }
  // rewards/{chosen,rejected,accuracies,margins}, logps/*, logits/*,
  // mean_token_accuracy, entropy.
  EXPECT_EQ(compared, 10);

  std::ifstream probe(WorkspacePath(
      absl::StrCat("tests/fixtures/dpo_family/", name, "_grads.safetensors")));
  if (!probe.good()) return;
  auto grads = io::SafetensorsFile::Open(WorkspacePath(
      absl::StrCat("tests/fixtures/dpo_family/", name, "_grads.safetensors")));
  ASSERT_TRUE(grads.ok()) << grads.status();
  const model::Decoder& policy = trainer->policy();
  for (const model::ParamTensor& t : policy.layout().tensors()) {
    auto ref = grads->ReadFloat("grad." + t.name);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_LT(RelativeL2(TensorInHfLayout(t, policy.grads()), *ref), 1e-4)
        << "gradient of " << t.name;
  }
}

// The objective alone, fed TRL's per-token log-probs of the policy and the
// reference (and WPO's log Σ p²): loss, metrics and ∂loss/∂ℓ_t of every
// response token.
TEST_P(DpoFamilyTrl, ObjectiveMatchesTrl) {
  const std::string name = GetParam();
  const nlohmann::json fixture = ReadCase(name);
  DpoConfig config;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(
      DpoText(fixture["trl_args"]), &config));
  auto dpo = objectives::DpoObjective::Create(config, 101);
  ASSERT_TRUE(dpo.ok()) << dpo.status();

  const std::vector<int> lengths = fixture["response_tokens"];
  const std::vector<float> row = fixture["policy_token_logps"];
  const std::vector<float> ref_tokens = fixture["reference_token_logps"];
  std::vector<float> log_sum_sq;
  if (fixture.contains("log_sum_sq_probs")) {
    log_sum_sq = fixture["log_sum_sq_probs"].get<std::vector<float>>();
  }
  std::vector<int> examples(kPairs);
  std::iota(examples.begin(), examples.end(), 0);
  std::vector<objectives::SequenceScores> scores;
  objectives::ReferenceValues ref;
  ref.token_logp = ref_tokens;
  int64_t at = 0;
  for (int s = 0; s < 2 * kPairs; ++s) {
    if (s % 2 == 0) ref.first_response.push_back(s);
    ref.token_offset.push_back(at);
    objectives::SequenceScores sc;
    sc.tokens = lengths[s];
    double ref_sum = 0;
    for (int t = 0; t < lengths[s]; ++t, ++at) {
      sc.logp += row[at];
      ref_sum += ref_tokens[at];
    }
    ref.sequence_logp.push_back(ref_sum);
    scores.push_back(sc);
  }
  ASSERT_EQ(at, static_cast<int64_t>(row.size()));
  objectives::MetricSums sums;
  std::vector<double> grad;
  const objectives::MicroBatchView view{
      &examples, &scores, &row, &ref,
      log_sum_sq.empty() ? nullptr : &log_sum_sq};
  const double loss = (*dpo)->Loss(view, &grad, &sums) / kPairs;
  ExpectClose(loss, fixture["loss"].get<double>(), "loss");
  auto m = sums.Means();
  for (const char* metric :
       {"rewards/chosen", "rewards/rejected", "rewards/margins",
        "rewards/accuracies", "logps/chosen", "logps/rejected"}) {
    ExpectClose(m[metric], fixture["metrics"][metric].get<double>(), metric);
  }
  const std::vector<double> want = fixture["dloss_dlogp"];
  ASSERT_EQ(grad.size(), want.size());
  std::vector<float> ours(grad.size()), theirs(want.begin(), want.end());
  for (size_t t = 0; t < grad.size(); ++t) ours[t] = grad[t] / kPairs;
  EXPECT_LT(RelativeL2(ours, theirs), 1e-5);
  for (size_t t = 0; t < grad.size(); ++t) {
    ExpectClose(ours[t], theirs[t], absl::StrCat("dloss/dlogp of token ", t),
                1e-4, 1e-8);
  }
}

INSTANTIATE_TEST_SUITE_P(AllCases, DpoFamilyTrl, ::testing::ValuesIn(kAllCases),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param);
                         });

// Three AdamW steps (clipping, linear decay, weight decay) of every loss type
// and MPO against torch on TRL's losses.
class DpoFamilyTraining : public ::testing::TestWithParam<const char*> {};

TEST_P(DpoFamilyTraining, ThreeStepsMatchTrl) {
  const std::string name = GetParam();
  const nlohmann::json fixture = ReadCase(name);
  const nlohmann::json& expected = fixture["train"];
  auto trainer = MakeTrainer(name, fixture, 3);
  ASSERT_NE(trainer, nullptr);
  const model::Decoder& policy = trainer->policy();
  std::map<std::string, std::vector<float>> initial;
  for (const model::ParamTensor& t : policy.layout().tensors()) {
    initial[t.name] = TensorInHfLayout(t, policy.params());
  }
  for (int step = 0; step < 3; ++step) {
    auto m = trainer->Step();
    ASSERT_TRUE(m.ok()) << m.status();
    const auto& e = expected["steps"][step];
    const std::string at = absl::StrCat(" at step ", step);
    ExpectClose((*m)["loss"], e["loss"].get<double>(), "loss" + at, 1e-4);
    ExpectClose((*m)["grad_norm"], e["grad_norm"].get<double>(),
                "grad_norm" + at, 1e-4);
    ExpectClose((*m)["lr"], e["lr"].get<double>(), "lr" + at, 1e-6, 1e-12);
  }
  for (const model::ParamTensor& t : policy.layout().tensors()) {
    // The key bias has an exactly zero gradient, so both sides move it by
    // Adam-normalized rounding noise (tests/dpo_trl_parity_test.cc).
    if (t.name.find("attn.c_attn.bias") != std::string::npos) continue;
    const std::vector<float> now = TensorInHfLayout(t, policy.params());
    double norm = 0;
    for (size_t i = 0; i < now.size(); ++i) {
      const double d = now[i] - initial[t.name][i];
      norm += d * d;
    }
    ExpectClose(std::sqrt(norm), expected["update_norms"][t.name].get<double>(),
                "update norm of " + t.name, 1e-3, 1e-7);
    if (expected["final"].contains(t.name)) {
      const std::vector<float> want = expected["final"][t.name];
      EXPECT_LT(RelativeL2(now, want), 1e-5) << "weights of " << t.name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(LossTypes, DpoFamilyTraining,
                         ::testing::Values("sigmoid", "ipo", "hinge", "robust",
                                           "exo_pair", "nca_pair", "bco_pair",
                                           "sppo_hard", "aot", "aot_unpaired",
                                           "apo_zero", "apo_down", "discopop",
                                           "sft", "sigmoid_norm", "mpo"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param);
                         });

}  // namespace
}  // namespace prefopt
