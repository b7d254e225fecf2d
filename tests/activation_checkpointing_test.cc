// activation_checkpointing: true trains bitwise as the stored path through
// loop::Trainer (the code `prefopt train` runs): 3 AdamW steps of GPT-2,
// Llama and Qwen2 models (random init) give the same metrics (loss,
// grad_norm, rewards, ...) and final weights, bit for bit (memcmp), for DPO,
// SparsePO (whose mask networks read the reference's activations) and KTO
// (whose reference pre-pass doubles the sequences). The decoder-level test
// (trainer/model/decoder_checkpointing_test.cc) compares every gradient.
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/fixture_util.h"
#include "trainer/config/config_loader.h"
#include "trainer/loop/trainer.h"

namespace prefopt {
namespace {

struct Case {
  const char* name;
  const char* model;  // the text inside model { ... }
  const char* objective;
  const char* data = "gpt2/pairs.jsonl";
};

struct TrainResult {
  std::vector<std::map<std::string, double>> metrics;
  std::vector<float> weights;
};

TrainResult Train(const Case& c, bool checkpointing) {
  const std::string name =
      absl::StrCat(c.name, checkpointing ? "_recomputed" : "_stored");
  const std::string text = absl::StrCat(
      "model { ", c.model, " }\n", "data { train_files: '",
      testing::WorkspacePath("tests/fixtures/"), c.data, "' max_length: 32 }\n",
      "objective { ", c.objective, " }\n",
      "optimizer { lr: 3e-3 weight_decay: 0.01 max_grad_norm: 1.0 }\n",
      "batch { micro_batch_size: 2 global_batch_size: 4 }\n",
      "max_steps: 3\nseed: 9\nrun_dir: '", std::getenv("TEST_TMPDIR"), "/",
      name, "'\nactivation_checkpointing: ", checkpointing ? "true" : "false",
      "\n");
  auto config = config::LoadTrainConfig(
      testing::WriteTempFile(name + ".textproto", text), {});
  EXPECT_TRUE(config.ok()) << config.status();
  TrainResult run;
  if (!config.ok()) return run;
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(*config, log);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  if (!trainer.ok()) return run;
  while ((*trainer)->steps_done() < (*trainer)->total_steps()) {
    auto m = (*trainer)->Step();
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return run;
    m->erase("tokens_per_second");
    run.metrics.push_back(*m);
  }
  const model::Decoder& p = (*trainer)->policy();
  run.weights.assign(p.params(), p.params() + p.layout().total());
  return run;
}

class RecomputedTraining : public ::testing::TestWithParam<Case> {};

TEST_P(RecomputedTraining, IsBitwiseTheStoredPath) {
  const TrainResult stored = Train(GetParam(), false);
  const TrainResult recomputed = Train(GetParam(), true);
  ASSERT_EQ(stored.metrics.size(), 3u);
  ASSERT_EQ(stored.metrics.size(), recomputed.metrics.size());
  for (size_t i = 0; i < stored.metrics.size(); ++i) {
    ASSERT_EQ(stored.metrics[i].size(), recomputed.metrics[i].size());
    for (const auto& [name, value] : stored.metrics[i]) {
      const double other = recomputed.metrics[i].at(name);
      EXPECT_EQ(std::memcmp(&value, &other, sizeof(double)), 0)
          << "step " << i + 1 << " " << name << ": " << value << " vs "
          << other;
    }
  }
  ASSERT_FALSE(stored.weights.empty());
  ASSERT_EQ(stored.weights.size(), recomputed.weights.size());
  EXPECT_EQ(std::memcmp(stored.weights.data(), recomputed.weights.data(),
                        stored.weights.size() * sizeof(float)),
            0)
      << "final weights differ";
}

constexpr char kGpt2[] =
    "architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: 32 "
    "n_layer: 3 n_head: 4";
constexpr char kLlama[] =
    "architecture: LLAMA vocab_size: 101 n_positions: 32 n_embd: 32 "
    "n_layer: 3 n_head: 4 n_kv_head: 2 intermediate_size: 64";
constexpr char kQwen2[] =
    "architecture: QWEN2 vocab_size: 101 n_positions: 32 n_embd: 32 "
    "n_layer: 3 n_head: 4 n_kv_head: 2 intermediate_size: 64";

INSTANTIATE_TEST_SUITE_P(
    ModelsAndObjectives, RecomputedTraining,
    ::testing::Values(
        Case{"gpt2_dpo", kGpt2, "dpo { beta: 0.1 }"},
        Case{"llama_dpo", kLlama, "dpo { beta: 0.1 }"},
        Case{"qwen2_dpo", kQwen2, "dpo { beta: 0.1 }"},
        Case{"gpt2_sparsepo", kGpt2,
             "sparsepo { independent_masks: true mask_init_std: 0.3 }"},
        Case{"llama_kto", kLlama, "kto { beta: 0.1 }", "gpt2/unpaired.jsonl"}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return std::string(info.param.name);
    });

}  // namespace
}  // namespace prefopt
