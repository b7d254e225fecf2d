// Every objective trains through the same loop: a short from-scratch run on a
// tiny GPT-2 lowers its loss (every DPO-family loss type, MPO, f-DPO and
// LD-DPO, and SparsePO with each kind of mask too), PRIOR with
// α = 0 retraces SFT step for step, and a live reference model gives what the
// precomputed reference cache gives; the reference-free objectives (CPO,
// SimPO, AlphaPO, ORPO) train without building a reference cache.
#include <cmath>
#include <filesystem>
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
  const char* objective;      // the text inside objective { ... }
  const char* data;           // file under tests/fixtures
  const char* set = nullptr;  // a --set override, if any
  const char* model =         // the text inside model { ... }
      "architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: 32 "
      "n_layer: 2 n_head: 4";
};

std::vector<double> Losses(const Case& c, int steps) {
  const std::string text = absl::StrCat(
      "model { ", c.model, " }\n", "data { train_files: '",
      testing::WorkspacePath("tests/fixtures/"), c.data, "' max_length: 32 }\n",
      "objective { ", c.objective, " }\n", "optimizer { lr: 3e-3 }\n",
      "batch { micro_batch_size: 4 global_batch_size: 12 }\n",
      "max_steps: ", steps, "\nseed: 3\nrun_dir: '", std::getenv("TEST_TMPDIR"),
      "/", c.name, "'\n");
  std::vector<std::string> overrides;
  if (c.set != nullptr) overrides.push_back(c.set);
  auto config = config::LoadTrainConfig(
      testing::WriteTempFile(std::string(c.name) + ".textproto", text),
      overrides);
  EXPECT_TRUE(config.ok()) << config.status();
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(*config, log);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  std::vector<double> losses;
  if (!trainer.ok()) return losses;
  for (int s = 0; s < steps; ++s) {
    auto m = (*trainer)->Step();
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) break;
    losses.push_back((*m)["loss"]);
  }
  return losses;
}

class ObjectiveTrains : public ::testing::TestWithParam<Case> {};

TEST_P(ObjectiveTrains, LossDecreases) {
  const std::vector<double> losses = Losses(GetParam(), 25);
  ASSERT_EQ(losses.size(), 25u);
  EXPECT_LT(losses.back(), losses.front() - 1e-3)
      << "first " << losses.front() << ", last " << losses.back();
}

INSTANTIATE_TEST_SUITE_P(
    All, ObjectiveTrains,
    ::testing::Values(
        Case{"dpo", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
        Case{"ipo", "dpo { beta: 0.1 loss_type: IPO }", "gpt2/pairs.jsonl"},
        Case{"hinge", "dpo { beta: 0.1 loss_type: HINGE }", "gpt2/pairs.jsonl"},
        Case{"robust",
             "dpo { beta: 0.1 loss_type: ROBUST label_smoothing: 0.1 }",
             "gpt2/pairs.jsonl"},
        Case{"exo_pair",
             "dpo { beta: 0.1 loss_type: EXO_PAIR label_smoothing: 0.001 }",
             "gpt2/pairs.jsonl"},
        Case{"nca_pair", "dpo { beta: 0.1 loss_type: NCA_PAIR }",
             "gpt2/pairs.jsonl"},
        Case{"bco_pair", "dpo { beta: 0.1 loss_type: BCO_PAIR }",
             "gpt2/pairs.jsonl"},
        Case{"sppo_hard", "dpo { beta: 0.1 loss_type: SPPO_HARD }",
             "gpt2/pairs.jsonl"},
        Case{"aot", "dpo { beta: 0.1 loss_type: AOT }", "gpt2/pairs.jsonl"},
        Case{"aot_unpaired", "dpo { beta: 0.1 loss_type: AOT_UNPAIRED }",
             "gpt2/pairs.jsonl"},
        Case{"apo_zero", "dpo { beta: 0.1 loss_type: APO_ZERO }",
             "gpt2/pairs.jsonl"},
        Case{"apo_down", "dpo { beta: 0.1 loss_type: APO_DOWN }",
             "gpt2/pairs.jsonl"},
        Case{"discopop", "dpo { beta: 0.1 loss_type: DISCOPOP }",
             "gpt2/pairs.jsonl"},
        Case{"dpo_sft", "dpo { beta: 0.1 loss_type: SFT }", "gpt2/pairs.jsonl"},
        Case{"sigmoid_norm", "dpo { beta: 0.1 loss_type: SIGMOID_NORM }",
             "gpt2/pairs.jsonl"},
        Case{"mpo",
             "dpo { beta: 0.1 loss_type: [SIGMOID, BCO_PAIR, SFT] "
             "loss_weights: [0.8, 0.2, 1.0] }",
             "gpt2/pairs.jsonl"},
        Case{"f_dpo_alpha",
             "dpo { beta: 0.1 f_divergence_type: ALPHA_DIVERGENCE }",
             "gpt2/pairs.jsonl"},
        Case{"ld_dpo", "dpo { beta: 0.1 ld_alpha: 0.5 }", "gpt2/pairs.jsonl"},
        Case{"sft", "sft {}", "demos.jsonl"},
        Case{"prior", "prior { alpha: 1 }", "demos.jsonl"},
        Case{"isft_tv", "implicit_sft { divergence: TOTAL_VARIATION }",
             "demos.jsonl"},
        Case{"isft_pearson_token",
             "implicit_sft { divergence: PEARSON_CHI2 granularity: TOKEN }",
             "demos.jsonl"},
        Case{"isft_kl", "implicit_sft { divergence: KL beta: 0.5 }",
             "demos.jsonl"},
        Case{"isft_js", "implicit_sft { divergence: JENSEN_SHANNON }",
             "demos.jsonl"},
        Case{"llama_scratch_dpo", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl",
             nullptr,
             "architecture: LLAMA vocab_size: 101 n_positions: 32 n_embd: 32 "
             "n_layer: 2 n_head: 4 n_kv_head: 2 intermediate_size: 64"},
        Case{"qwen2_scratch_sft", "sft {}", "demos.jsonl", nullptr,
             "architecture: QWEN2 vocab_size: 101 n_positions: 32 n_embd: 32 "
             "n_layer: 2 n_head: 4 n_kv_head: 2 intermediate_size: 64 "
             "tie_word_embeddings: true"},
        Case{"sparsepo_learned_common", "sparsepo { beta: 0.8 }",
             "gpt2/pairs.jsonl"},
        Case{"sparsepo_learned_independent_l1",
             "sparsepo { independent_masks: true l1_reward: 0.01 l1_kl: 0.02 "
             "mask_init_std: 0.1 }",
             "gpt2/pairs.jsonl"},
        Case{"sparsepo_mapo_all_groups",
             "sparsepo { mask: MAPO mapo_groups: [ATTN, RESID, LOGITS] }",
             "gpt2/pairs.jsonl"},
        Case{"llama_scratch_sparsepo_mapo_all_groups",
             "sparsepo { mask: MAPO mapo_groups: [MLP, ATTN, RESID, LOGITS] }",
             "gpt2/pairs.jsonl", nullptr,
             "architecture: LLAMA vocab_size: 101 n_positions: 32 n_embd: 32 "
             "n_layer: 2 n_head: 4 n_kv_head: 2 intermediate_size: 64"},
        Case{"sparsepo_learned_kl_only",
             "sparsepo { mask_on_reward: false mask_init_std: 0.1 }",
             "gpt2/pairs.jsonl"},
        Case{"dpo_live_reference", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl",
             "model.live_reference=true"}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return std::string(info.param.name);
    });

TEST(Prior, AlphaZeroRetracesSftBitForBit) {
  const std::vector<double> sft = Losses({"sft0", "sft {}", "demos.jsonl"}, 5);
  const std::vector<double> prior =
      Losses({"prior0", "prior { alpha: 0 }", "demos.jsonl"}, 5);
  ASSERT_EQ(sft.size(), 5u);
  EXPECT_EQ(sft, prior);
}

// The live reference scores each micro-batch with the same model and kernels
// as the precompute pass, so the runs agree up to the GEMMs' row blocking
// (different batch compositions).
TEST(LiveReference, MatchesThePrecomputedCache) {
  const Case cases[][2] = {
      {{"dpo_cached", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
       {"dpo_live", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl",
        "model.live_reference=true"}},
      // LD-DPO reads the reference's per-token log-probs.
      {{"ld_dpo_cached", "dpo { beta: 0.1 ld_alpha: 0.5 }", "gpt2/pairs.jsonl"},
       {"ld_dpo_live", "dpo { beta: 0.1 ld_alpha: 0.5 }", "gpt2/pairs.jsonl",
        "model.live_reference=true"}},
      // Per-token reference log-probs, scored without the context.
      {{"prior_cached", "prior { alpha: 1 }", "demos.jsonl"},
       {"prior_live", "prior { alpha: 1 }", "demos.jsonl",
        "model.live_reference=true"}},
  };
  for (const auto& [cached_case, live_case] : cases) {
    const std::vector<double> cached = Losses(cached_case, 5);
    const std::vector<double> live = Losses(live_case, 5);
    ASSERT_EQ(cached.size(), 5u);
    ASSERT_EQ(live.size(), 5u);
    for (int s = 0; s < 5; ++s) {
      EXPECT_NEAR(live[s], cached[s], 1e-5 * std::abs(cached[s]))
          << live_case.name << " step " << s;
    }
  }
}

// The reference-free objectives (docs/objectives.md §8).
std::vector<Case> ReferenceFreeCases() {
  return {
      Case{"cpo", "cpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
      Case{"cpo_hinge", "cpo { loss_type: HINGE beta: 0.1 }",
           "gpt2/pairs.jsonl"},
      Case{"cpo_ipo", "cpo { loss_type: IPO beta: 0.1 }", "gpt2/pairs.jsonl"},
      Case{"simpo", "cpo { loss_type: SIMPO beta: 2 cpo_alpha: 0 }",
           "gpt2/pairs.jsonl"},
      Case{"alphapo", "cpo { loss_type: ALPHAPO beta: 2 alpha: 0.25 }",
           "gpt2/pairs.jsonl"},
      Case{"orpo", "orpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
      Case{"llama_scratch_simpo",
           "cpo { loss_type: SIMPO beta: 2 cpo_alpha: 0 }", "gpt2/pairs.jsonl",
           nullptr,
           "architecture: LLAMA vocab_size: 101 n_positions: 32 n_embd: 32 "
           "n_layer: 2 n_head: 4 n_kv_head: 2 intermediate_size: 64"},
  };
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  return info.param.name;
}

INSTANTIATE_TEST_SUITE_P(ReferenceFree, ObjectiveTrains,
                         ::testing::ValuesIn(ReferenceFreeCases()), CaseName);

TEST(ReferenceFree, BuildsNoReferenceCache) {
  const Case c{"orpo_no_cache", "orpo { beta: 0.1 }", "gpt2/pairs.jsonl"};
  ASSERT_EQ(Losses(c, 1).size(), 1u);
  EXPECT_FALSE(std::filesystem::exists(absl::StrCat(
      std::getenv("TEST_TMPDIR"), "/orpo_no_cache/reference_cache")));
}

}  // namespace
}  // namespace prefopt
