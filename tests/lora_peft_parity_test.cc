// LoRA DPO against PEFT 0.21.2 + TRL 1.16 (tests/fixtures/lora/, written by
// tests/fixtures/generate_lora_peft.py): starting from PEFT's saved adapter
// (model.lora.adapter_path) on the tiny GPT-2 (c_attn, c_proj, c_fc as
// Conv1D), Llama (all seven projections, q/k/v and gate/up fused in prefopt)
// and Qwen2 (PEFT's default q/v, rsLoRA), through the Trainer that
// `prefopt train` runs: the reference log-probs (TRL's reference for a
// PeftModel that holds an adapter: a frozen copy of that starting adapter),
// the DPO loss and metrics, every adapter gradient, and ten AdamW steps with
// clipping and warm-up (losses, gradient norms and the final adapters).
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/fixture_util.h"
#include "trainer/config/config_loader.h"
#include "trainer/io/safetensors.h"
#include "trainer/loop/trainer.h"

namespace prefopt {
namespace {

using testing::RelativeL2;
using testing::WorkspacePath;

struct Family {
  const char* name;
  const char* base;  // under tests/fixtures
};

std::unique_ptr<loop::Trainer> MakeTrainer(const Family& f,
                                           const std::string& tag) {
  const std::string lora = WorkspacePath("tests/fixtures/lora/") + f.name;
  const std::string run_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/", f.name, "_", tag);
  const std::string path = testing::WriteTempFile(
      absl::StrCat(f.name, "_", tag, ".textproto"),
      absl::StrCat(
          "model { hf_path: '", WorkspacePath("tests/fixtures/") + f.base,
          "' lora { adapter_path: '", lora, "/adapter_start' } }\n",
          "data { train_files: '",
          WorkspacePath("tests/fixtures/gpt2/pairs.jsonl"),
          "' max_length: 64 shuffle: false }\n",
          "objective { dpo { beta: 0.1 loss_type: SIGMOID } }\n",
          "optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }\n",
          "schedule { kind: LINEAR warmup_steps: 2 }\n",
          "batch { micro_batch_size: 2 global_batch_size: 6 }\n",
          "max_steps: 10\nseed: 1\nrun_dir: '", run_dir, "'\n"));
  auto config = config::LoadTrainConfig(path, {});
  EXPECT_TRUE(config.ok()) << config.status();
  if (!config.ok()) return nullptr;
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(*config, log);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  return trainer.ok() ? *std::move(trainer) : nullptr;
}

void ExpectClose(double ours, double theirs, const std::string& what,
                 double rel = 1e-4, double abs = 1e-6) {
  EXPECT_NEAR(ours, theirs, std::max(abs, rel * std::abs(theirs))) << what;
}

std::vector<float> Tensor(const model::ParamTensor& t, const float* buffer) {
  return std::vector<float>(buffer + t.offset, buffer + t.offset + t.numel);
}

class LoraPeftParity : public ::testing::TestWithParam<Family> {};

TEST_P(LoraPeftParity, DpoStepMatchesPeftAndTrl) {
  const Family& f = GetParam();
  const std::string dir = WorkspacePath("tests/fixtures/lora/") + f.name;
  const nlohmann::json expected =
      testing::ReadJson(dir + "/dpo_sigmoid_ref_start.json");
  std::unique_ptr<loop::Trainer> trainer = MakeTrainer(f, "step");
  ASSERT_NE(trainer, nullptr);
  ASSERT_EQ(trainer->dataset().examples.size(), 6u);
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
  EXPECT_EQ(compared, 10);

  auto grads = io::SafetensorsFile::Open(
      dir + "/dpo_sigmoid_ref_start_grads.safetensors");
  ASSERT_TRUE(grads.ok()) << grads.status();
  const model::Decoder& policy = trainer->policy();
  ASSERT_TRUE(policy.has_lora());
  int tensors = 0;
  for (const model::ParamTensor& t : policy.layout().tensors()) {
    auto ref = grads->ReadFloat("grad." + t.name);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_LT(RelativeL2(Tensor(t, policy.grads()), *ref), 1e-4)
        << "gradient of " << t.name;
    ++tensors;
  }
  EXPECT_EQ(static_cast<size_t>(tensors), grads->tensors().size());
}

TEST_P(LoraPeftParity, TenAdamWStepsMatchTorch) {
  const Family& f = GetParam();
  const std::string dir = WorkspacePath("tests/fixtures/lora/") + f.name;
  const nlohmann::json expected =
      testing::ReadJson(dir + "/train_10_steps_ref_start.json");
  std::unique_ptr<loop::Trainer> trainer = MakeTrainer(f, "train");
  ASSERT_NE(trainer, nullptr);
  for (int step = 0; step < 10; ++step) {
    auto m = trainer->Step();
    ASSERT_TRUE(m.ok()) << m.status();
    const auto& e = expected["steps"][step];
    const std::string at = absl::StrCat(" at step ", step);
    ExpectClose((*m)["loss"], e["loss"].get<double>(), "loss" + at);
    ExpectClose((*m)["grad_norm"], e["grad_norm"].get<double>(),
                "grad_norm" + at);
    ExpectClose((*m)["lr"], e["lr"].get<double>(), "lr" + at, 1e-6, 1e-12);
    ExpectClose((*m)["rewards/margins"],
                e["metrics"]["rewards/margins"].get<double>(),
                "rewards/margins" + at, 1e-3);
  }
  auto final_adapter = io::SafetensorsFile::Open(
      dir + "/adapter_final_ref_start/adapter_model.safetensors");
  ASSERT_TRUE(final_adapter.ok()) << final_adapter.status();
  auto start_adapter = io::SafetensorsFile::Open(
      dir + "/adapter_start/adapter_model.safetensors");
  ASSERT_TRUE(start_adapter.ok()) << start_adapter.status();
  const model::Decoder& policy = trainer->policy();
  for (const model::ParamTensor& t : policy.layout().tensors()) {
    auto want = final_adapter->ReadFloat(t.name);
    auto start = start_adapter->ReadFloat(t.name);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(start.ok()) << start.status();
    // The update (final - start) within 1e-3 of its size: 10 steps of lr
    // 1e-3 move each factor by about 1e-2.
    const std::vector<float> ours = Tensor(t, policy.params());
    std::vector<float> our_delta(ours.size()), their_delta(ours.size());
    for (size_t i = 0; i < ours.size(); ++i) {
      our_delta[i] = ours[i] - (*start)[i];
      their_delta[i] = (*want)[i] - (*start)[i];
    }
    EXPECT_LT(RelativeL2(our_delta, their_delta), 1e-3)
        << "10-step update of " << t.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, LoraPeftParity,
                         ::testing::Values(Family{"gpt2", "gpt2/policy"},
                                           Family{"llama",
                                                  "llama/llama3_untied/policy"},
                                           Family{"qwen2", "qwen2/policy"}),
                         [](const ::testing::TestParamInfo<Family>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace prefopt
