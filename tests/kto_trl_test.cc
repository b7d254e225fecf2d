// KTO against TRL 1.16's KTOTrainer (tests/fixtures/gpt2/kto_*.json, written by
// tests/fixtures/generate_kto.py): the KL completions TRL pairs, the reference
// log-probs of completions and KL completions, the loss, every metric both
// log and the policy gradients on one batch of twelve unpaired examples, for
// loss types KTO (KL estimate above 0 and clamped to 0, default and
// non-default weights) and APO_ZERO_UNPAIRED, with the precomputed and the
// live reference; and three steps of trainer.train() (AdamW, clipping, a
// linear schedule), all through the Trainer that `prefopt train` runs.
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
  const char* name;  // the fixture, kto_<name>.json
  bool live_reference;
};

std::string CaseName(const Case& c) {
  return absl::StrCat(c.name, c.live_reference ? "_live" : "_cached");
}

// The config of fixture `e` (its models, loss type and weights), with `batch`
// and `rest` appended.
std::string ConfigText(const nlohmann::json& e, bool live,
                       const std::string& batch, const std::string& rest,
                       const std::string& run_dir) {
  const std::string dir = WorkspacePath("tests/fixtures/gpt2");
  const bool apo = e["loss_type"] == "apo_zero_unpaired";
  return absl::StrCat(
      "model { hf_path: '", dir, "/", e["policy_folder"].get<std::string>(),
      "' reference_hf_path: '", dir, "/",
      e["reference_folder"].get<std::string>(),
      "' live_reference: ", live ? "true" : "false", " }\n",
      "data { train_files: '", dir, "/unpaired.jsonl' max_length: 64 }\n",
      "objective { kto { loss_type: ", apo ? "APO_ZERO_UNPAIRED" : "KTO",
      " beta: ", e["beta"].get<double>(),
      " desirable_weight: ", e["desirable_weight"].get<double>(),
      " undesirable_weight: ", e["undesirable_weight"].get<double>(), " } }\n",
      batch, "\n", rest, "seed: 1\nrun_dir: '", run_dir, "'\n");
}

std::unique_ptr<loop::Trainer> MakeTrainer(const std::string& name,
                                           const std::string& text) {
  const std::string path =
      testing::WriteTempFile(absl::StrCat(name, ".textproto"), text);
  auto config = config::LoadTrainConfig(path, {});
  EXPECT_TRUE(config.ok()) << config.status();
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(*config, log);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  return *std::move(trainer);
}

void ExpectClose(double ours, double theirs, const std::string& what,
                 double rel = 1e-5, double abs = 1e-6) {
  EXPECT_NEAR(ours, theirs, std::max(abs, rel * std::abs(theirs))) << what;
}

// Every metric TRL logged (but the cumulative num_tokens, compared apart) is in
// `ours` with TRL's value, and `ours` has no other KTO metric.
int ExpectMetrics(const std::map<std::string, double>& ours,
                  const nlohmann::json& theirs, const std::string& at) {
  int compared = 0;
  for (const auto& [name, value] : theirs.items()) {
    if (testing::IsTrlOnlyDpoMetric(name)) continue;
    auto it = ours.find(name);
    if (it == ours.end()) {
      ADD_FAILURE() << "missing metric " << name << at;
      continue;
    }
    ExpectClose(it->second, value.get<double>(), name + at);
    ++compared;
  }
  for (const char* prefix : {"rewards/", "logps/", "logits/"}) {
    for (const auto& [name, value] : ours) {
      if (name.rfind(prefix, 0) == 0) {
        EXPECT_TRUE(theirs.contains(name)) << "TRL does not log " << name << at;
      }
    }
  }
  return compared;
}

class KtoTrlParity : public ::testing::TestWithParam<Case> {};

TEST_P(KtoTrlParity, DataLossMetricsAndGradientsMatchTrl) {
  const Case& c = GetParam();
  const nlohmann::json e = ReadJson(absl::StrCat("kto_", c.name, ".json"));
  const std::string run_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/run_", CaseName(c));
  // TRL: one batch of all twelve examples, the KL completions rotated within
  // it; prefopt: the same global batch in micro-batches of 4.
  auto trainer = MakeTrainer(
      CaseName(c),
      ConfigText(e, c.live_reference,
                 "batch { micro_batch_size: 4 global_batch_size: 12 }",
                 "max_steps: 1\n", run_dir));
  ASSERT_NE(trainer, nullptr);
  const std::vector<data::Example>& examples = trainer->dataset().examples;
  ASSERT_EQ(examples.size(), 12u);
  const bool kto = e["loss_type"] == "kto";
  const auto& per = e["per_example"];
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(examples[i].label, i < 6) << "label of example " << i;
    if (kto) {
      EXPECT_EQ(examples[i].rejected,
                e["kl_completion_ids"][i].get<std::vector<int32_t>>())
          << "KL completion of example " << i;
    } else {
      EXPECT_TRUE(examples[i].rejected.empty()) << "example " << i;
    }
    if (c.live_reference) continue;
    const double ref =
        i < 6 ? per["reference_chosen_logps"][i].get<double>()
              : per["reference_rejected_logps"][i - 6].get<double>();
    ExpectClose(trainer->references().SequenceLogp(i, 0), ref,
                absl::StrCat("reference logp of example ", i));
    if (kto) {
      ExpectClose(trainer->references().SequenceLogp(i, 1),
                  per["reference_kl_logps"][i].get<double>(),
                  absl::StrCat("reference KL logp of example ", i));
    }
  }

  std::vector<int> all(12);
  std::iota(all.begin(), all.end(), 0);
  std::map<std::string, double> m = trainer->ForwardBackward(all);
  ExpectClose(m["loss"], e["loss"].get<double>(), "loss");
  // kl, rewards/{chosen,rejected,margins}, logps/*, logits/*, entropy.
  EXPECT_EQ(ExpectMetrics(m, e["metrics"], ""), 9);
  // TRL's num_tokens after its one batch: every token of the completions'
  // sequences, the KL sequences not counted.
  EXPECT_EQ(m["tokens"], e["metrics"]["num_tokens"].get<double>());
  // The fixtures cover a KL estimate above 0 and one clamped to 0.
  if (kto) {
    EXPECT_EQ(e["kl"].get<double>() > 0, std::string(c.name) != "kto_clamped");
  }

  auto grads = io::SafetensorsFile::Open(WorkspacePath(
      absl::StrCat("tests/fixtures/gpt2/kto_", c.name, "_grads.safetensors")));
  ASSERT_TRUE(grads.ok()) << grads.status();
  const model::Decoder& policy = trainer->policy();
  for (const model::ParamTensor& t : policy.layout().tensors()) {
    auto ref = grads->ReadFloat("grad." + t.name);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_LT(RelativeL2(TensorInHfLayout(t, policy.grads()), *ref), 1e-5)
        << "gradient of " << t.name;
  }
}

INSTANTIATE_TEST_SUITE_P(LossTypesAndWeights, KtoTrlParity,
                         ::testing::Values(Case{"kto", false},
                                           Case{"kto", true},
                                           Case{"kto_weighted", false},
                                           Case{"kto_clamped", false},
                                           Case{"apo_zero_unpaired", false},
                                           Case{"apo_zero_unpaired", true}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return CaseName(info.param);
                         });

// Held-out evaluation estimates z₀ over the whole set, its KL completions
// paired within runs of the global batch: with the twelve examples as one
// batch that is TRL's compute_loss on it.
TEST(KtoEvaluation, HeldOutMetricsMatchTrlOnOneBatch) {
  for (const char* name : {"kto", "apo_zero_unpaired"}) {
    const nlohmann::json e = ReadJson(absl::StrCat("kto_", name, ".json"));
    const std::string run_dir =
        absl::StrCat(std::getenv("TEST_TMPDIR"), "/eval_", name);
    const std::string path = testing::WriteTempFile(
        absl::StrCat("eval_", name, ".textproto"),
        ConfigText(e, /*live=*/false,
                   "batch { micro_batch_size: 4 global_batch_size: 12 }", "",
                   run_dir));
    auto config = config::LoadTrainConfig(
        path,
        {absl::StrCat("data.eval_files=",
                      WorkspacePath("tests/fixtures/gpt2/unpaired.jsonl"))});
    ASSERT_TRUE(config.ok()) << config.status();
    std::ostringstream log;
    auto result = loop::EvaluateModel(*config, "", log, nullptr);
    ASSERT_TRUE(result.ok()) << result.status();
    const std::string at = absl::StrCat(" (", name, ")");
    ExpectClose(result->metrics["loss"], e["loss"].get<double>(), "loss" + at);
    EXPECT_EQ(ExpectMetrics(result->metrics, e["metrics"], at), 9) << name;
    EXPECT_EQ(result->examples, 12);
  }
}

TEST(KtoTraining, ThreeStepsMatchTrlTrain) {
  const nlohmann::json e = ReadJson("kto_train_3_steps.json");
  const nlohmann::json& t = e["train"];
  nlohmann::json setup = t;
  setup["policy_folder"] = e["policy_folder"];
  setup["reference_folder"] = e["reference_folder"];
  const std::string run_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/run_train3");
  // TRL's per-device batch of 4 is prefopt's global batch; two micro-batches
  // of 2 give the same steps.
  auto trainer = MakeTrainer(
      "train3",
      ConfigText(
          setup, /*live=*/false,
          "batch { micro_batch_size: 2 global_batch_size: 4 }",
          absl::StrCat("optimizer { lr: ", t["learning_rate"].get<double>(),
                       " weight_decay: ", t["weight_decay"].get<double>(),
                       " max_grad_norm: ", t["max_grad_norm"].get<double>(),
                       " }\nschedule { kind: LINEAR }\nmax_steps: ",
                       t["max_steps"].get<int>(), "\n"),
          run_dir));
  ASSERT_NE(trainer, nullptr);
  const std::vector<data::Example>& examples = trainer->dataset().examples;
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(examples[i].rejected,
              e["kl_completion_ids"][i].get<std::vector<int32_t>>())
        << "KL completion of example " << i;
  }
  for (int step = 0; step < 3; ++step) {
    auto m = trainer->Step();
    ASSERT_TRUE(m.ok()) << m.status();
    const auto& s = e["steps"][step];
    const std::string at = absl::StrCat(" at step ", step);
    ExpectClose((*m)["loss"], s["loss"].get<double>(), "loss" + at);
    ExpectClose((*m)["grad_norm"], s["grad_norm"].get<double>(),
                "grad_norm" + at);
    ExpectClose((*m)["kl"], s["kl"].get<double>(), "kl" + at);
    ExpectMetrics(*m, s["metrics"], at);
    EXPECT_EQ((*m)["num_tokens"], s["metrics"]["num_tokens"].get<double>())
        << "num_tokens" << at;
  }
  auto final_weights = io::SafetensorsFile::Open(
      WorkspacePath("tests/fixtures/gpt2/kto_train_3_steps_final.safetensors"));
  ASSERT_TRUE(final_weights.ok()) << final_weights.status();
  testing::ExpectGpt2WeightsMatch(trainer->policy(), *final_weights,
                                  /*steps=*/3, /*lr=*/1e-3);
}

}  // namespace
}  // namespace prefopt
