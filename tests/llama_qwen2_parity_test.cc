// Llama, Mistral-style and Qwen2 decoders against transformers and TRL 1.16
// (tests/fixtures/{llama/llama3_untied,llama/tied,mistral,qwen2}/, written by
// tests/fixtures/generate_llama_qwen2.py), and the same models saved by
// transformers 5 (tests/fixtures/transformers5/): logits, per-token log-probs,
// the causal-LM loss and every parameter gradient of three sequences; TRL's DPO
// (sigmoid) loss, metrics and policy gradients on six pairs through the same
// Trainer that `prefopt train` runs; and bitwise run-to-run determinism of
// three training steps. Gradients are compared per Hugging Face tensor
// (q_proj, k_proj, v_proj, gate_proj, up_proj separately), so the row ranges
// of the fused tensors are checked too.
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/fixture_util.h"
#include "trainer/config/config_loader.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/weight_store.h"
#include "trainer/loop/trainer.h"
#include "trainer/model/decoder.h"
#include "trainer/model/param_layout.h"
#include "trainer/objectives/output_layer.h"

namespace prefopt {
namespace {

using testing::ReadJson;
using testing::RelativeL2;
using testing::WorkspacePath;

struct Variant {
  const char* dir;  // under tests/fixtures/
  io::ModelSpec::Arch arch;
  io::RopeScaling::Type rope;
  bool tied;
  int64_t head_dim;
  int hf_tensors;  // Hugging Face tensors, i.e. fixture gradients
};

std::string FixturePath(const Variant& v, const std::string& name) {
  return WorkspacePath(absl::StrCat("tests/fixtures/", v.dir, "/", name));
}

// gtest prints a parameter by its folder.
void PrintTo(const Variant& v, std::ostream* os) { *os << v.dir; }

// `dir` with '/' replaced by '_', for test and file names.
std::string FlatName(std::string dir) {
  for (char& c : dir) {
    if (c == '/') c = '_';
  }
  return dir;
}

// Every Hugging Face tensor of `decoder`'s gradients against grad.<name> of
// the fixture file, which must hold gradients of exactly these tensors.
void ExpectGradientsMatch(const model::Decoder& decoder,
                          const io::SafetensorsFile& expected, int count) {
  const std::vector<model::HfTensorRef> refs = decoder.layout().HfTensors();
  ASSERT_EQ(static_cast<int>(refs.size()), count);
  int fixture_grads = 0;
  for (const io::TensorInfo& t : expected.tensors()) {
    fixture_grads += t.name.rfind("grad.", 0) == 0 ? 1 : 0;
  }
  ASSERT_EQ(fixture_grads, count);
  std::vector<float> ours;
  for (const model::HfTensorRef& ref : refs) {
    auto theirs = expected.ReadFloat("grad." + ref.name);
    ASSERT_TRUE(theirs.ok()) << theirs.status();
    ours.resize(ref.numel);
    model::LayoutToHf(ref, decoder.grads() + ref.offset, ours.data());
    EXPECT_LT(RelativeL2(ours, *theirs), 1e-4) << "gradient of " << ref.name;
  }
}

class LlamaQwen2Parity : public ::testing::TestWithParam<Variant> {};

TEST_P(LlamaQwen2Parity, ConfigIsReadAsGenerated) {
  const Variant& v = GetParam();
  auto spec = io::ReadHfConfig(FixturePath(v, "policy"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->arch, v.arch);
  EXPECT_EQ(spec->rope_scaling.type, v.rope);
  EXPECT_EQ(spec->tie_word_embeddings, v.tied);
  EXPECT_EQ(spec->head_dim, v.head_dim);
  EXPECT_EQ(spec->n_head, 4);
  EXPECT_EQ(spec->n_kv_head, 2);
}

// Logits, per-token log-probs, the causal-LM loss and every gradient of the
// model in `dir` (under tests/fixtures/) against its forward.* fixture.
void ExpectForwardMatches(const Variant& v) {
  kernels::CpuBackend backend;
  auto fwd = io::SafetensorsFile::Open(FixturePath(v, "forward.safetensors"));
  ASSERT_TRUE(fwd.ok()) << fwd.status();
  const nlohmann::json meta = ReadJson(FixturePath(v, "forward.json"));

  model::PackedBatch batch;
  for (int i = 0; i < 3; ++i) {
    auto ids = fwd->ReadInt("ids_" + std::to_string(i));
    ASSERT_TRUE(ids.ok()) << ids.status();
    batch.AddSequence(std::vector<int32_t>(ids->begin(), ids->end()));
  }
  auto spec = io::ReadHfConfig(FixturePath(v, "policy"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto store = io::WeightStore::Open(FixturePath(v, "policy"));
  ASSERT_TRUE(store.ok()) << store.status();
  auto decoder =
      model::Decoder::Create(*spec, &backend, {batch.rows(), 20, 3}, true);
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  model::Decoder& d = **decoder;
  ASSERT_TRUE(d.LoadHf(*store).ok());
  const int N = batch.rows(), C = d.hidden_size(), V = d.vocab_size();

  const float* hidden = d.Forward(batch);
  // Full logits, only for the comparison (training never materializes them).
  std::vector<float> logits(static_cast<size_t>(N) * V);
  backend.MatmulForward(logits.data(), hidden, d.output_embedding(), nullptr, N,
                        C, V);
  std::vector<objectives::ResponseSegment> segments;
  for (const auto& span : batch.spans) {
    segments.push_back({span.start, span.len - 1});
  }
  objectives::ChunkedOutputLayer output(&backend, N, C, V, /*chunk=*/5);
  const auto scores = output.Forward(hidden, d.output_embedding(),
                                     batch.tokens.data(), segments);
  int row = 0;
  double nll = 0;
  for (int i = 0; i < 3; ++i) {
    const auto span = batch.spans[i];
    auto ref_logits = fwd->ReadFloat("logits_" + std::to_string(i));
    ASSERT_TRUE(ref_logits.ok());
    const std::vector<float> ours(logits.begin() + span.start * V,
                                  logits.begin() + (span.start + span.len) * V);
    EXPECT_LT(RelativeL2(ours, *ref_logits), 1e-5)
        << "logits of sequence " << i;
    auto ref_logp = fwd->ReadFloat("logprobs_" + std::to_string(i));
    ASSERT_TRUE(ref_logp.ok());
    for (int t = 0; t < span.len - 1; ++t, ++row) {
      EXPECT_NEAR(output.row_logp()[row], (*ref_logp)[t],
                  1e-4 * std::abs((*ref_logp)[t]))
          << "sequence " << i << " position " << t;
    }
    nll -= scores[i].logp;
  }
  const double total = meta["num_predicted_tokens"].get<double>();
  EXPECT_NEAR(nll / total, meta["loss"].get<double>(),
              1e-5 * meta["loss"].get<double>());

  // Backward of the mean NLL: G_t = 1/total for every predicted token.
  const std::vector<float> coef(row, static_cast<float>(1.0 / total));
  backend.Zero(d.dhidden(), static_cast<size_t>(N) * C);
  output.Backward(d.dhidden(), d.output_embedding_grad(), hidden,
                  d.output_embedding(), batch.tokens.data(), segments, coef);
  d.Backward(batch);
  ExpectGradientsMatch(d, *fwd, v.hf_tensors);
}

TEST_P(LlamaQwen2Parity, MatchesTransformersForwardLossAndGradients) {
  ExpectForwardMatches(GetParam());
}

// A DPO run on the variant's six pairs (micro-batches of two), live
// reference = the fixture's reference model, in TEST_TMPDIR/<run>.
std::unique_ptr<loop::Trainer> MakeTrainer(const Variant& v,
                                           const std::string& run,
                                           int max_steps) {
  const std::string text = absl::StrCat(
      "model { hf_path: '", FixturePath(v, "policy"), "' reference_hf_path: '",
      FixturePath(v, "reference"), "' }\n", "data { train_files: '",
      FixturePath(v, "pairs.jsonl"), "' max_length: 64 }\n",
      "objective { dpo { beta: 0.1 loss_type: SIGMOID } }\n",
      "optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }\n",
      "batch { micro_batch_size: 2 global_batch_size: 6 }\n",
      "max_steps: ", max_steps, "\nseed: 1\nrun_dir: '",
      std::getenv("TEST_TMPDIR"), "/", run, "'\n");
  auto config = config::LoadTrainConfig(
      testing::WriteTempFile(run + ".textproto", text), {});
  EXPECT_TRUE(config.ok()) << config.status();
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(*config, log);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  return trainer.ok() ? *std::move(trainer) : nullptr;
}

TEST_P(LlamaQwen2Parity, DpoLossMetricsAndGradientsMatchTrl) {
  const Variant& v = GetParam();
  const nlohmann::json expected = ReadJson(FixturePath(v, "dpo_sigmoid.json"));
  std::unique_ptr<loop::Trainer> created =
      MakeTrainer(v, absl::StrCat("dpo_", FlatName(v.dir)), 1);
  ASSERT_NE(created, nullptr);
  loop::Trainer& trainer = *created;
  ASSERT_EQ(trainer.dataset().examples.size(), 6u);

  auto close = [](double ours, double theirs, const std::string& what) {
    EXPECT_NEAR(ours, theirs, std::max(1e-6, 1e-4 * std::abs(theirs))) << what;
  };
  const auto& per_pair = expected["per_pair"];
  for (int i = 0; i < 6; ++i) {
    close(trainer.references().SequenceLogp(i, 0),
          per_pair["reference_chosen_logps"][i].get<double>(),
          absl::StrCat("reference chosen logp of pair ", i));
    close(trainer.references().SequenceLogp(i, 1),
          per_pair["reference_rejected_logps"][i].get<double>(),
          absl::StrCat("reference rejected logp of pair ", i));
  }
  std::vector<int> all(6);
  std::iota(all.begin(), all.end(), 0);
  std::map<std::string, double> m = trainer.ForwardBackward(all);
  close(m["loss"], expected["loss"].get<double>(), "loss");
  int compared = 0;
  for (const auto& [metric, value] : expected["metrics"].items()) {
    if (testing::IsTrlOnlyDpoMetric(metric)) continue;
    ASSERT_TRUE(m.count(metric)) << "missing metric " << metric;
    close(m[metric], value.get<double>(), metric);
    ++compared;
  }
  // rewards/{chosen,rejected,accuracies,margins}, logps/*, logits/*,
  // mean_token_accuracy, entropy.
  EXPECT_EQ(compared, 10);
  auto grads = io::SafetensorsFile::Open(
      FixturePath(v, "dpo_sigmoid_grads.safetensors"));
  ASSERT_TRUE(grads.ok()) << grads.status();
  ExpectGradientsMatch(trainer.policy(), *grads, v.hf_tensors);
}

// docs/architecture.md "Determinism" on this architecture: three AdamW steps
// twice give bitwise-equal losses and weights.
TEST_P(LlamaQwen2Parity, TwoRunsAreBitwiseEqual) {
  const Variant& v = GetParam();
  std::vector<std::vector<double>> losses(2);
  std::vector<std::vector<float>> params(2);
  for (int run = 0; run < 2; ++run) {
    std::unique_ptr<loop::Trainer> trainer =
        MakeTrainer(v, absl::StrCat("steps_", FlatName(v.dir), "_", run), 3);
    ASSERT_NE(trainer, nullptr);
    for (int step = 0; step < 3; ++step) {
      auto m = trainer->Step();
      ASSERT_TRUE(m.ok()) << m.status();
      losses[run].push_back((*m)["loss"]);
    }
    const model::Decoder& policy = trainer->policy();
    params[run].assign(policy.params(),
                       policy.params() + policy.layout().total());
  }
  EXPECT_NE(losses[0][0], losses[0][2]) << "the steps changed nothing";
  EXPECT_EQ(std::memcmp(losses[0].data(), losses[1].data(),
                        losses[0].size() * sizeof(double)),
            0);
  ASSERT_EQ(params[0].size(), params[1].size());
  EXPECT_EQ(std::memcmp(params[0].data(), params[1].data(),
                        params[0].size() * sizeof(float)),
            0);
}

using Arch = io::ModelSpec::Arch;
using Rope = io::RopeScaling::Type;

INSTANTIATE_TEST_SUITE_P(
    Variants, LlamaQwen2Parity,
    ::testing::Values(
        // llama3 rope scaling, untied lm_head, no biases.
        Variant{"llama/llama3_untied", Arch::kLlama, Rope::kLlama3, false, 8,
                21},
        // Linear rope scaling, tied, attention_bias and mlp_bias.
        Variant{"llama/tied", Arch::kLlama, Rope::kLinear, true, 8, 34},
        // head_dim 12: attention width 48 differs from hidden 32.
        Variant{"mistral", Arch::kLlama, Rope::kNone, false, 12, 21},
        // q/k/v biases only, tied.
        Variant{"qwen2", Arch::kQwen2, Rope::kNone, true, 8, 26}),
    [](const ::testing::TestParamInfo<Variant>& info) {
      return FlatName(info.param.dir);
    });

// The same models saved by transformers 5 (tests/fixtures/transformers5/,
// written by tests/fixtures/generate_transformers5.py), whose config.json has
// "rope_parameters" where transformers 4 wrote rope_theta and rope_scaling.
struct Transformers5Case {
  Variant v5;
  const char* v4_dir;
};

void PrintTo(const Transformers5Case& c, std::ostream* os) { *os << c.v5.dir; }

class Transformers5Folders
    : public ::testing::TestWithParam<Transformers5Case> {};

TEST_P(Transformers5Folders, ReadAsTheTransformers4Folder) {
  const Transformers5Case& c = GetParam();
  auto v5 = io::ReadHfConfig(FixturePath(c.v5, "policy"));
  ASSERT_TRUE(v5.ok()) << v5.status();
  auto v4 = io::ReadHfConfig(
      WorkspacePath(absl::StrCat("tests/fixtures/", c.v4_dir, "/policy")));
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v5->rope_scaling.type, c.v5.rope);
  EXPECT_EQ(v5->rope_theta, v4->rope_theta);
  EXPECT_EQ(v5->rope_scaling.type, v4->rope_scaling.type);
  EXPECT_EQ(v5->rope_scaling.factor, v4->rope_scaling.factor);
  EXPECT_EQ(v5->rope_scaling.low_freq_factor, v4->rope_scaling.low_freq_factor);
  EXPECT_EQ(v5->rope_scaling.high_freq_factor,
            v4->rope_scaling.high_freq_factor);
  EXPECT_EQ(v5->rope_scaling.original_max_position_embeddings,
            v4->rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(v5->tie_word_embeddings, v4->tie_word_embeddings);
  EXPECT_EQ(v5->head_dim, v4->head_dim);
  EXPECT_EQ(v5->attention_bias, v4->attention_bias);
  EXPECT_EQ(v5->mlp_bias, v4->mlp_bias);
}

TEST_P(Transformers5Folders, MatchesTransformers5ForwardLossAndGradients) {
  ExpectForwardMatches(GetParam().v5);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, Transformers5Folders,
    ::testing::Values(Transformers5Case{{"transformers5/llama3_untied",
                                         Arch::kLlama, Rope::kLlama3, false, 8,
                                         21},
                                        "llama/llama3_untied"},
                      Transformers5Case{{"transformers5/tied", Arch::kLlama,
                                         Rope::kLinear, true, 8, 34},
                                        "llama/tied"},
                      Transformers5Case{{"transformers5/mistral", Arch::kLlama,
                                         Rope::kNone, false, 12, 21},
                                        "mistral"},
                      Transformers5Case{{"transformers5/qwen2", Arch::kQwen2,
                                         Rope::kNone, true, 8, 26},
                                        "qwen2"}),
    [](const ::testing::TestParamInfo<Transformers5Case>& info) {
      return FlatName(info.param.v5.dir);
    });

}  // namespace
}  // namespace prefopt
