// LoRA through loop::Trainer, the code `prefopt train` runs (docs/lora.md):
// only the adapters change (the base weights stay bitwise), the loss moves,
// a resumed run (dropout on) is bitwise the uninterrupted one, activation
// checkpointing trains bitwise as the stored path, the live reference (the
// policy with its adapters off) scores as the precomputed cache, KTO's
// pre-pass trains, export_hf_path writes a PEFT adapter that reads back
// bitwise (and trains on from there), a target module the model lacks is
// refused naming the field and the model's layers, and a bf16 base
// (model.base_dtype) trains as the fp32 base of the same (bf16) weights and
// resumes bitwise.
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fixture_util.h"
#include "tests/trainer_steps.h"
#include "trainer/config/config_loader.h"
#include "trainer/loop/trainer.h"
#include "trainer/lora/peft_adapter.h"

namespace prefopt {
namespace {

namespace fs = std::filesystem;
using testing::BaseParams;
using testing::Bitwise;
using testing::CreateTrainer;
using testing::ExpectBitwiseEqual;
using ::testing::HasSubstr;
using testing::MakeTrainer;
using testing::RunSteps;
using testing::StepMetrics;
using testing::TrainableParams;

constexpr char kLora[] =
    "lora { r: 4 alpha: 8 target_modules: 'c_attn' target_modules: "
    "'mlp.c_proj' }";

// The tiny GPT-2 fixture with 6 pairs in global batches of 2.
std::string RunConfig(const std::string& name, const std::string& lora,
                      const std::string& model_extra = "",
                      const std::string& objective = "dpo { beta: 0.1 }",
                      const std::string& extra = "") {
  const std::string run_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/", name);
  fs::remove_all(run_dir);
  const bool unpaired = objective.rfind("kto", 0) == 0;
  return testing::WriteTempFile(
      name + ".textproto",
      absl::StrCat(
          "model { hf_path: '",
          testing::WorkspacePath("tests/fixtures/gpt2/policy"), "' ", lora, " ",
          model_extra, " }\n", "data { train_files: '",
          testing::WorkspacePath(unpaired ? "tests/fixtures/gpt2/unpaired.jsonl"
                                          : "tests/fixtures/gpt2/pairs.jsonl"),
          "' max_length: 64 shuffle: ", unpaired ? "false" : "true", " }\n",
          "objective { ", objective, " }\n",
          "optimizer { lr: 1e-2 weight_decay: 0.01 max_grad_norm: 1.0 }\n",
          "schedule { kind: LINEAR warmup_steps: 2 }\n",
          "batch { micro_batch_size: 1 global_batch_size: 2 }\n",
          "max_steps: 8\nseed: 11\nrun_dir: '", run_dir, "'\n", extra));
}

// Runs `config` for 4 steps, checkpoints, runs 2 more, then resumes from the
// checkpoint to step 8: every step and the final weights are bitwise those
// of the uninterrupted run `straight`, whose 8 steps are `all`.
void ExpectInterruptedRunResumesBitwise(const std::string& config,
                                        const loop::Trainer& straight,
                                        const std::vector<StepMetrics>& all) {
  {
    std::unique_ptr<loop::Trainer> first = MakeTrainer(config);
    ASSERT_NE(first, nullptr);
    ExpectBitwiseEqual(RunSteps(*first, 4),
                       std::vector<StepMetrics>(all.begin(), all.begin() + 4));
    ASSERT_TRUE(first->SaveCheckpoint().ok());
    RunSteps(*first, 6);
  }
  std::unique_ptr<loop::Trainer> resumed =
      MakeTrainer(config, {"resume=latest"});
  ASSERT_NE(resumed, nullptr);
  EXPECT_EQ(resumed->steps_done(), 4);
  ExpectBitwiseEqual(RunSteps(*resumed, 8),
                     std::vector<StepMetrics>(all.begin() + 4, all.end()));
  EXPECT_TRUE(Bitwise(TrainableParams(straight), TrainableParams(*resumed)));
  EXPECT_TRUE(Bitwise(BaseParams(straight), BaseParams(*resumed)));
}

TEST(LoraTrainingTest, OnlyTheAdaptersTrain) {
  std::unique_ptr<loop::Trainer> trainer =
      MakeTrainer(RunConfig("only_adapters", kLora));
  ASSERT_NE(trainer, nullptr);
  const model::Decoder& policy = trainer->policy();
  ASSERT_TRUE(policy.has_lora());
  // c_attn [96 x 32] and mlp.c_proj [32 x 128] in 2 blocks, r = 4.
  EXPECT_EQ(policy.layout().tensors().size(), 8u);
  size_t adapters = 0;
  for (const model::ParamTensor& t : policy.layout().tensors()) {
    adapters += t.numel;
  }
  EXPECT_EQ(adapters, 2u * 4 * ((32 + 96) + (128 + 32)));
  const std::vector<float> base = BaseParams(*trainer);
  const std::vector<float> initial = TrainableParams(*trainer);
  const std::vector<StepMetrics> steps = RunSteps(*trainer, 8);
  ASSERT_EQ(steps.size(), 8u);
  EXPECT_TRUE(Bitwise(BaseParams(*trainer), base)) << "the base weights moved";
  EXPECT_FALSE(Bitwise(TrainableParams(*trainer), initial));
  // B starts at zero: the first step's policy is the reference.
  EXPECT_NEAR(steps[0].at("rewards/margins"), 0.0, 1e-6);
  EXPECT_GT(steps[7].at("rewards/accuracies") + steps[6].at("rewards/margins"),
            steps[0].at("rewards/margins"));
  EXPECT_LT(steps[7].at("loss"), steps[0].at("loss"));
}

TEST(LoraTrainingTest, ResumedRunIsBitwiseTheUninterruptedRun) {
  const std::string lora =
      "lora { r: 4 alpha: 16 dropout: 0.2 use_rslora: true target_modules: "
      "'all-linear' }";
  std::unique_ptr<loop::Trainer> straight =
      MakeTrainer(RunConfig("lora_straight", lora));
  ASSERT_NE(straight, nullptr);
  const std::vector<StepMetrics> all = RunSteps(*straight, 8);
  ASSERT_EQ(all.size(), 8u);

  ExpectInterruptedRunResumesBitwise(RunConfig("lora_interrupted", lora),
                                     *straight, all);
}

TEST(LoraTrainingTest, ActivationCheckpointingTrainsBitwiseAsTheStoredPath) {
  const std::string lora =
      "lora { r: 4 alpha: 8 dropout: 0.1 target_modules: 'all-linear' }";
  std::unique_ptr<loop::Trainer> stored =
      MakeTrainer(RunConfig("lora_stored", lora));
  std::unique_ptr<loop::Trainer> recomputed =
      MakeTrainer(RunConfig("lora_recomputed", lora, "", "dpo { beta: 0.1 }",
                            "activation_checkpointing: true"));
  ASSERT_NE(stored, nullptr);
  ASSERT_NE(recomputed, nullptr);
  ExpectBitwiseEqual(RunSteps(*stored, 5), RunSteps(*recomputed, 5));
  EXPECT_TRUE(Bitwise(TrainableParams(*stored), TrainableParams(*recomputed)));
}

TEST(LoraTrainingTest, LiveReferenceIsTheCachedReference) {
  std::unique_ptr<loop::Trainer> cached =
      MakeTrainer(RunConfig("lora_cached", kLora));
  std::unique_ptr<loop::Trainer> live =
      MakeTrainer(RunConfig("lora_live", kLora, "live_reference: true"));
  ASSERT_NE(cached, nullptr);
  ASSERT_NE(live, nullptr);
  const std::vector<StepMetrics> a = RunSteps(*cached, 4);
  const std::vector<StepMetrics> b = RunSteps(*live, 4);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    for (const char* key : {"loss", "rewards/margins", "logps/chosen"}) {
      EXPECT_NEAR(a[i].at(key), b[i].at(key),
                  1e-5 * std::max(1.0, std::abs(a[i].at(key))))
          << "step " << i + 1 << " " << key;
    }
  }
}

TEST(LoraTrainingTest, KtoTrainsItsAdapters) {
  std::unique_ptr<loop::Trainer> trainer =
      MakeTrainer(RunConfig("lora_kto", kLora, "", "kto { beta: 0.1 }"));
  ASSERT_NE(trainer, nullptr);
  const std::vector<float> base = BaseParams(*trainer);
  const std::vector<StepMetrics> steps = RunSteps(*trainer, 6);
  ASSERT_EQ(steps.size(), 6u);
  EXPECT_TRUE(Bitwise(BaseParams(*trainer), base));
  EXPECT_GT(steps.back().at("grad_norm"), 0.0);
}

TEST(LoraTrainingTest, UnknownTargetModuleNamesTheFieldAndTheLayers) {
  auto trainer = CreateTrainer(
      RunConfig("lora_bad_target", "lora { target_modules: 'q_proj' }"));
  ASSERT_FALSE(trainer.ok());
  EXPECT_THAT(std::string(trainer.status().message()),
              HasSubstr("model.lora.target_modules: \"q_proj\" matches no "
                        "linear layer of the model; its layers are "
                        "attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj"));
}

TEST(LoraTrainingTest, ExportsAPeftAdapterThatReadsBackBitwise) {
  const std::string out =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/lora_export_adapter");
  fs::remove_all(out);
  std::unique_ptr<loop::Trainer> trainer =
      MakeTrainer(RunConfig("lora_export", kLora, "", "dpo { beta: 0.1 }",
                            absl::StrCat("export_hf_path: '", out, "'")));
  ASSERT_NE(trainer, nullptr);
  ASSERT_TRUE(trainer->Run().ok());
  auto adapter = lora::ReadPeftAdapter(out, trainer->policy().spec());
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  EXPECT_EQ(adapter->settings.r, 4);
  EXPECT_EQ(adapter->settings.alpha, 8.0f);
  const model::Decoder& policy = trainer->policy();
  const std::vector<model::LoraAdapterRef> refs = policy.lora_adapters();
  ASSERT_EQ(adapter->factors.size(), refs.size());
  for (size_t i = 0; i < refs.size(); ++i) {
    EXPECT_EQ(adapter->factors[i].module.path, refs[i].module.path);
    EXPECT_TRUE(Bitwise(adapter->factors[i].a,
                        std::vector<float>(policy.params() + refs[i].a,
                                           policy.params() + refs[i].a +
                                               adapter->factors[i].a.size())));
    EXPECT_TRUE(Bitwise(adapter->factors[i].b,
                        std::vector<float>(policy.params() + refs[i].b,
                                           policy.params() + refs[i].b +
                                               adapter->factors[i].b.size())));
  }
  // Training on from the exported adapter starts where the run ended.
  std::unique_ptr<loop::Trainer> again = MakeTrainer(RunConfig(
      "lora_from_export", absl::StrCat("lora { adapter_path: '", out, "' }")));
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(Bitwise(TrainableParams(*again), TrainableParams(*trainer)));
  // The config may repeat the adapter's settings, not contradict them.
  auto contradicting = CreateTrainer(
      RunConfig("lora_contradicting",
                absl::StrCat("lora { r: 8 adapter_path: '", out, "' }")));
  ASSERT_FALSE(contradicting.ok());
  EXPECT_THAT(std::string(contradicting.status().message()),
              HasSubstr("model.lora.r: is 8 but the adapter at"));
}

// model.base_dtype: WEIGHT_BF16 holds the blocks' frozen linear weights in
// bf16: training from the bf16 checkpoint of the fixture with a bf16 base is
// bitwise the run with an fp32 base (the same model: rounding a bf16 value to
// bf16 is exact), with dropout, the live reference and activation
// checkpointing; the base stays bitwise; and a resumed bf16-base run is
// bitwise the uninterrupted one.
TEST(LoraTrainingTest, Bf16BaseTrainsAsTheFp32BaseOfTheBf16Checkpoint) {
  const std::string lora =
      "lora { r: 4 alpha: 8 dropout: 0.1 target_modules: 'all-linear' }";
  const std::string bf16_model =
      absl::StrCat("model.hf_path=",
                   testing::WorkspacePath("tests/fixtures/gpt2/policy_bf16"));
  for (const std::string extra : {"", "activation_checkpointing: true"}) {
    SCOPED_TRACE(extra);
    std::unique_ptr<loop::Trainer> fp32 =
        MakeTrainer(RunConfig("bf16ckpt_fp32", lora, "live_reference: true",
                              "dpo { beta: 0.1 }", extra),
                    {bf16_model});
    std::unique_ptr<loop::Trainer> bf16 =
        MakeTrainer(RunConfig("bf16ckpt_bf16", lora,
                              "live_reference: true base_dtype: WEIGHT_BF16",
                              "dpo { beta: 0.1 }", extra),
                    {bf16_model});
    ASSERT_NE(fp32, nullptr);
    ASSERT_NE(bf16, nullptr);
    EXPECT_NE(fp32->policy().base_params(), nullptr);
    EXPECT_EQ(bf16->policy().base_params(), nullptr);  // held in bf16
    const std::vector<float> base = BaseParams(*bf16);
    EXPECT_TRUE(Bitwise(base, BaseParams(*fp32)));
    ExpectBitwiseEqual(RunSteps(*fp32, 5), RunSteps(*bf16, 5));
    EXPECT_TRUE(Bitwise(TrainableParams(*fp32), TrainableParams(*bf16)));
    EXPECT_TRUE(Bitwise(BaseParams(*bf16), base)) << "the base weights moved";
  }
}

TEST(LoraTrainingTest, Bf16BaseResumesBitwise) {
  const std::string lora =
      "lora { r: 4 alpha: 16 dropout: 0.2 target_modules: 'all-linear' }";
  const std::string bf16 = "base_dtype: WEIGHT_BF16";
  std::unique_ptr<loop::Trainer> straight =
      MakeTrainer(RunConfig("bf16_straight", lora, bf16));
  ASSERT_NE(straight, nullptr);
  const std::vector<StepMetrics> all = RunSteps(*straight, 8);
  ASSERT_EQ(all.size(), 8u);
  // Not the fp32-base run: the weights of the fp32 fixture were rounded.
  std::unique_ptr<loop::Trainer> fp32 =
      MakeTrainer(RunConfig("bf16_fp32_base", lora));
  ASSERT_NE(fp32, nullptr);
  EXPECT_NE(RunSteps(*fp32, 1)[0].at("logps/chosen"),
            all[0].at("logps/chosen"));

  ExpectInterruptedRunResumesBitwise(RunConfig("bf16_interrupted", lora, bf16),
                                     *straight, all);
}

}  // namespace
}  // namespace prefopt
