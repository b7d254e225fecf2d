// SparsePO with LoRA through loop::Trainer (docs/lora.md, docs/objectives.md
// §2): the policy is its own reference in reference mode (no second decoder);
// fresh adapters (B = 0) give the first step of the full-model run with the
// base as reference; the adapter and mask-network gradients match finite
// differences of the loss; only the adapters and the mask networks train (the
// base, output embedding included, stays bitwise); after training the
// reference is still the base (the run scores as the full model with the
// adapters merged in, against the base); a resumed run (dropout on)
// is bitwise the uninterrupted one; and a run starting from a PEFT-written
// adapter uses base + that adapter as its reference, scoring as the
// full-model run on the merged model.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/fixture_util.h"
#include "tests/trainer_steps.h"
#include "trainer/config/config_loader.h"
#include "trainer/loop/trainer.h"
#include "trainer/lora/merge.h"
#include "trainer/lora/merge_export.h"
#include "trainer/lora/peft_adapter.h"

namespace prefopt {
namespace {

namespace fs = std::filesystem;
using testing::BaseParams;
using testing::Bitwise;
using testing::ExpectBitwiseEqual;
using testing::MakeTrainer;
using testing::RunSteps;
using testing::StepMetrics;
using testing::TrainableParams;
constexpr char kLora[] =
    "lora { r: 4 alpha: 8 target_modules: 'c_attn' target_modules: "
    "'mlp.c_proj' }";

// The tiny GPT-2 fixture (or `hf_path`) with its 6 pairs, micro-batches of
// 2 pairs in global batches of 4.
std::string RunConfig(const std::string& name, const std::string& lora,
                      const std::string& objective,
                      const std::string& hf_path = "tests/fixtures/gpt2/policy",
                      const std::string& extra = "") {
  const std::string run_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/", name);
  fs::remove_all(run_dir);
  const std::string model =
      hf_path.rfind("/", 0) == 0 ? hf_path : testing::WorkspacePath(hf_path);
  return testing::WriteTempFile(
      name + ".textproto",
      absl::StrCat("model { hf_path: '", model, "' ", lora, " }\n",
                   "data { train_files: '",
                   testing::WorkspacePath("tests/fixtures/gpt2/pairs.jsonl"),
                   "' max_length: 64 }\n", "objective { ", objective, " }\n",
                   "optimizer { lr: 1e-2 weight_decay: 0.01 max_grad_norm: "
                   "1.0 }\n",
                   "batch { micro_batch_size: 2 global_batch_size: 4 }\n",
                   "max_steps: 8\nseed: 11\nrun_dir: '", run_dir, "'\n",
                   extra));
}

// Every mask network's parameters, or their gradients.
std::vector<float> MaskNets(loop::Trainer& trainer, bool grads) {
  std::vector<float> out;
  for (const auto& net : trainer.sparsepo()->mask_nets()) {
    const float* p = grads ? net->grads() : net->params();
    out.insert(out.end(), p, p + net->layout().total());
  }
  return out;
}

// Every metric of `want` in `got`, to `tol` relative to max(1, |want|).
void ExpectMetricsNear(const StepMetrics& got, const StepMetrics& want,
                       double tol) {
  ASSERT_FALSE(want.empty());
  for (const auto& [name, value] : want) {
    ASSERT_EQ(got.count(name), 1u) << name;
    EXPECT_NEAR(got.at(name), value, tol * std::max(1.0, std::fabs(value)))
        << name;
  }
}

struct MaskCase {
  const char* name;
  const char* objective;
};

void PrintTo(const MaskCase& c, std::ostream* os) { *os << c.name; }

const MaskCase kMaskCases[] = {
    {"learned", "sparsepo { beta: 0.8 l1_kl: 0.02 mask_init_std: 0.5 }"},
    {"learned_independent",
     "sparsepo { independent_masks: true l1_reward: 0.01 l1_kl: 0.02 "
     "mask_init_std: 0.5 }"},
    {"mapo", "sparsepo { mask: MAPO }"},
};

std::string CaseName(const ::testing::TestParamInfo<MaskCase>& info) {
  return info.param.name;
}

class SparsePoLora : public ::testing::TestWithParam<MaskCase> {};

// B = 0: the adapted policy is the base model, which is also the reference,
// so the first step is the full-model run's whose reference is the base: the
// same loss, metrics and mask-network gradients.
TEST_P(SparsePoLora, FreshAdaptersGiveTheFullModelsFirstStep) {
  const std::string tag = GetParam().name;
  auto lora =
      MakeTrainer(RunConfig("fresh_lora_" + tag, kLora, GetParam().objective));
  auto full =
      MakeTrainer(RunConfig("fresh_full_" + tag, "", GetParam().objective));
  ASSERT_NE(lora, nullptr);
  ASSERT_NE(full, nullptr);
  // No second decoder: the policy is its own reference, and the output
  // embedding, which is not a LoRA target, has no gradient.
  EXPECT_EQ(&lora->sparsepo()->reference(), &lora->policy());
  EXPECT_NE(&full->sparsepo()->reference(), &full->policy());
  EXPECT_EQ(lora->mutable_policy().output_embedding_grad(), nullptr);

  const std::vector<int> batch = {0, 1, 2, 3};
  const StepMetrics want = full->ForwardBackward(batch);
  const StepMetrics got = lora->ForwardBackward(batch);
  ExpectMetricsNear(got, want, 1e-6);
  const std::vector<float> a = MaskNets(*lora, true), b = MaskNets(*full, true);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(a[i], b[i], 1e-6 * std::max(1.0f, std::fabs(b[i]))) << i;
  }
}

// The index of the largest |g| in [begin, begin + n).
size_t LargestAt(const std::vector<float>& g, size_t begin, size_t n) {
  size_t best = begin;
  for (size_t i = begin; i < begin + n; ++i) {
    if (std::fabs(g[i]) > std::fabs(g[best])) best = i;
  }
  return best;
}

// One ForwardBackward over two micro-batches gives ∂loss/∂θ for the adapters
// and the mask networks; the loss is its "loss" metric. After two training
// steps B ≠ 0, so the policy differs from the reference and the KL term and
// its logit gradient are live.
TEST_P(SparsePoLora, GradientsMatchFiniteDifferencesOfTheLoss) {
  auto trainer = MakeTrainer(RunConfig(absl::StrCat("fd_", GetParam().name),
                                       kLora, GetParam().objective));
  ASSERT_NE(trainer, nullptr);
  RunSteps(*trainer, 2);
  model::Decoder& policy = trainer->mutable_policy();
  std::fill(policy.grads(), policy.grads() + policy.padded_param_count(), 0.0f);
  trainer->sparsepo()->ZeroGradients();
  const std::vector<int> batch = {0, 1, 2, 3};
  const double loss0 = trainer->ForwardBackward(batch)["loss"];
  const std::vector<float> grad(policy.grads(),
                                policy.grads() + policy.layout().total());
  struct Probe {
    float* param;
    double grad;
    std::string what;
  };
  std::vector<Probe> probes;
  for (const model::ParamTensor& t : policy.layout().tensors()) {
    const size_t i = LargestAt(grad, t.offset, t.numel);
    probes.push_back({policy.params() + i, grad[i],
                      absl::StrCat(t.name, "[", i - t.offset, "]")});
  }
  // Two adapted layers in two blocks, A and B each.
  EXPECT_EQ(probes.size(), 8u);
  for (const auto& net : trainer->sparsepo()->mask_nets()) {
    const std::vector<float> g(net->grads(),
                               net->grads() + net->layout().total());
    for (const model::ParamTensor& t : net->layout().tensors()) {
      const size_t i = LargestAt(g, t.offset, t.numel);
      probes.push_back({net->params() + i, g[i],
                        absl::StrCat(t.name, "[", i - t.offset, "]")});
    }
  }
  constexpr float kStep = 1e-3f;
  for (const Probe& p : probes) {
    const float saved = *p.param;
    *p.param = saved + kStep;
    const double plus = trainer->ForwardBackward(batch)["loss"];
    *p.param = saved - kStep;
    const double minus = trainer->ForwardBackward(batch)["loss"];
    *p.param = saved;
    const double fd = (plus - minus) / (2.0 * kStep);
    EXPECT_GT(std::fabs(p.grad), 1e-7) << p.what;
    EXPECT_NEAR(p.grad, fd, 0.01 * std::fabs(fd) + 5e-5)
        << p.what << " (loss " << loss0 << ")";
  }
}

TEST_P(SparsePoLora, OnlyTheAdaptersAndTheMaskNetworksTrain) {
  auto trainer = MakeTrainer(RunConfig(absl::StrCat("train_", GetParam().name),
                                       kLora, GetParam().objective));
  ASSERT_NE(trainer, nullptr);
  const std::vector<float> base = BaseParams(*trainer);
  const std::vector<float> adapters = TrainableParams(*trainer);
  const std::vector<float> masks = MaskNets(*trainer, false);
  const std::vector<StepMetrics> steps = RunSteps(*trainer, 6);
  ASSERT_EQ(steps.size(), 6u);
  EXPECT_TRUE(Bitwise(BaseParams(*trainer), base)) << "the base weights moved";
  EXPECT_FALSE(Bitwise(TrainableParams(*trainer), adapters));
  if (!masks.empty()) {
    EXPECT_FALSE(Bitwise(MaskNets(*trainer, false), masks));
  }
  EXPECT_GT(steps.back().at("grad_norm"), 0.0);
  EXPECT_LT(steps.back().at("loss"), steps.front().at("loss"));
}

// After training the reference is still the base: the LoRA run scores as the
// full-model run whose policy is the base with the trained adapters merged
// in (lora::MergeAdapter) and whose reference is the base, with the same mask
// networks. A reference that followed the adapters would give no KL and no
// rewards.
TEST_P(SparsePoLora, TrainedAdaptersScoreAgainstTheBase) {
  const std::string tag = GetParam().name;
  auto lora = MakeTrainer(
      RunConfig("trained_lora_" + tag, kLora, GetParam().objective));
  auto full =
      MakeTrainer(RunConfig("trained_full_" + tag, "", GetParam().objective));
  ASSERT_NE(lora, nullptr);
  ASSERT_NE(full, nullptr);
  RunSteps(*lora, 3);
  const model::Decoder& policy = lora->policy();
  lora::PeftAdapter adapter;
  adapter.settings.r = 4;
  adapter.settings.alpha = 8;
  for (const model::LoraAdapterRef& ref : policy.lora_adapters()) {
    const size_t a = static_cast<size_t>(4) * ref.module.in_features;
    const size_t b = static_cast<size_t>(ref.module.out_features) * 4;
    adapter.factors.push_back(
        {ref.module,
         std::vector<float>(policy.params() + ref.a,
                            policy.params() + ref.a + a),
         std::vector<float>(policy.params() + ref.b,
                            policy.params() + ref.b + b)});
  }
  model::Decoder& merged = full->mutable_policy();
  ASSERT_TRUE(
      lora::MergeAdapter(adapter, merged.layout(), merged.params()).ok());
  ASSERT_TRUE(
      full->RestoreExtraCheckpointTensors(lora->ExtraCheckpointTensors()).ok());

  const std::vector<int> batch = {0, 1, 2, 3};
  const StepMetrics want = full->ForwardBackward(batch);
  const StepMetrics got = lora->ForwardBackward(batch);
  EXPECT_GT(std::fabs(got.at("kl/unmasked_chosen")), 1e-6);
  EXPECT_GT(std::fabs(got.at("rewards/margins")), 1e-6);
  ExpectMetricsNear(got, want, 1e-4);
}

// A bf16 frozen base (model.base_dtype, docs/lora.md) under SparsePO: the
// reference forward in reference mode and the policy's both read the widened
// blocks. On the bf16 fixture, whose weights round to themselves, the run is
// bitwise the fp32-base run, MaPO's activation masks included.
TEST_P(SparsePoLora, Bf16BaseTrainsBitwiseAsTheFp32Base) {
  const std::string tag = GetParam().name;
  const std::string model = "tests/fixtures/gpt2/policy_bf16";
  auto fp32 = MakeTrainer(
      RunConfig("bf16_fp32_" + tag, kLora, GetParam().objective, model));
  auto bf16 = MakeTrainer(RunConfig(
      "bf16_bf16_" + tag, absl::StrCat(kLora, " base_dtype: WEIGHT_BF16"),
      GetParam().objective, model));
  ASSERT_NE(fp32, nullptr);
  ASSERT_NE(bf16, nullptr);
  EXPECT_EQ(bf16->policy().base_params(), nullptr);  // held in bf16
  ExpectBitwiseEqual(RunSteps(*fp32, 3), RunSteps(*bf16, 3));
  EXPECT_TRUE(Bitwise(TrainableParams(*fp32), TrainableParams(*bf16)));
  EXPECT_TRUE(Bitwise(MaskNets(*fp32, false), MaskNets(*bf16, false)));
}

INSTANTIATE_TEST_SUITE_P(Masks, SparsePoLora, ::testing::ValuesIn(kMaskCases),
                         CaseName);

// The adapters with their dropout masks, the mask networks and all their
// AdamW moments come back from the checkpoint: the resumed run continues the
// uninterrupted one bit for bit.
TEST(SparsePoLoraResume, ResumedRunIsBitwiseTheUninterruptedRun) {
  const std::string lora =
      "lora { r: 4 alpha: 16 dropout: 0.2 target_modules: 'all-linear' }";
  const std::string objective =
      "sparsepo { independent_masks: true mask_init_std: 0.3 }";
  auto straight = MakeTrainer(RunConfig("resume_straight", lora, objective));
  ASSERT_NE(straight, nullptr);
  const std::vector<StepMetrics> all = RunSteps(*straight, 8);
  ASSERT_EQ(all.size(), 8u);

  const std::string config = RunConfig("resume_interrupted", lora, objective);
  {
    auto first = MakeTrainer(config);
    ASSERT_NE(first, nullptr);
    ExpectBitwiseEqual(RunSteps(*first, 4),
                       std::vector<StepMetrics>(all.begin(), all.begin() + 4));
    ASSERT_TRUE(first->SaveCheckpoint().ok());
    RunSteps(*first, 6);
  }
  auto resumed = MakeTrainer(config, {"resume=latest"});
  ASSERT_NE(resumed, nullptr);
  EXPECT_EQ(resumed->steps_done(), 4);
  ExpectBitwiseEqual(RunSteps(*resumed, 8),
                     std::vector<StepMetrics>(all.begin() + 4, all.end()));
  EXPECT_TRUE(Bitwise(TrainableParams(*straight), TrainableParams(*resumed)));
  EXPECT_TRUE(Bitwise(MaskNets(*straight, false), MaskNets(*resumed, false)));
  EXPECT_TRUE(Bitwise(BaseParams(*straight), BaseParams(*resumed)));
}

// adapter_start (tests/fixtures/lora/gpt2, written by PEFT 0.21.2) has B ≠ 0.
// Its run's reference is base + that adapter, so the first step's policy is
// its reference (rewards and KL 0, loss ln 2 whatever the masks), and it
// scores as the full-model run on the base with the adapter merged in
// (lora::ExportMergedModel; merging rounds, hence the looser tolerance).
TEST(SparsePoLoraAdapterPath, StartsFromAPeftAdapterWhichIsItsReference) {
  const std::string adapter =
      testing::WorkspacePath("tests/fixtures/lora/gpt2/adapter_start");
  const std::string merged =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/merged_adapter_start");
  fs::remove_all(merged);
  auto exported = lora::ExportMergedModel(
      testing::WorkspacePath("tests/fixtures/gpt2/policy"), adapter, merged,
      io::DType::kF32, size_t{1} << 30);
  ASSERT_TRUE(exported.ok()) << exported.status();
  // Without L1 terms, which would add to the loss.
  const MaskCase cases[] = {
      {"learned", "sparsepo { beta: 0.8 mask_init_std: 0.5 }"},
      {"learned_independent",
       "sparsepo { independent_masks: true mask_init_std: 0.5 }"},
      {"mapo", "sparsepo { mask: MAPO }"},
  };
  for (const MaskCase& c : cases) {
    SCOPED_TRACE(c.name);
    auto lora = MakeTrainer(RunConfig(
        absl::StrCat("from_adapter_", c.name),
        absl::StrCat("lora { adapter_path: '", adapter, "' }"), c.objective));
    auto full = MakeTrainer(
        RunConfig(absl::StrCat("merged_", c.name), "", c.objective, merged));
    ASSERT_NE(lora, nullptr);
    ASSERT_NE(full, nullptr);
    ASSERT_NE(lora->mutable_policy().reference_adapters(), nullptr);
    const std::vector<int> batch = {0, 1, 2, 3};
    const StepMetrics got = lora->ForwardBackward(batch);
    EXPECT_NEAR(got.at("loss"), std::log(2.0), 1e-6);
    for (const char* zero : {"rewards/margins", "rewards/chosen",
                             "kl/unmasked_chosen", "kl/unmasked_rejected"}) {
      EXPECT_NEAR(got.at(zero), 0.0, 1e-6) << zero;
    }
    ExpectMetricsNear(got, full->ForwardBackward(batch), 1e-4);
    // And it trains from there.
    const std::vector<StepMetrics> steps = RunSteps(*lora, 3);
    ASSERT_EQ(steps.size(), 3u);
    EXPECT_GT(steps.back().at("grad_norm"), 0.0);
  }
}

}  // namespace
}  // namespace prefopt
