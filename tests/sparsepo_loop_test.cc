// SparsePO through loop::Trainer (docs/objectives.md §2): the gradient of a
// whole step (policy and mask networks) against finite differences of the loss;
// with masks ≡ 1 the step's loss is TDPO1's, recomputed here from fully
// materialized logits of both models; two runs are bitwise equal; the mask
// state round-trips through the checkpoint accessors.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/fixture_util.h"
#include "trainer/config/config_loader.h"
#include "trainer/data/batch.h"
#include "trainer/loop/trainer.h"
#include "trainer/model/decoder.h"

namespace prefopt {
namespace {

std::unique_ptr<loop::Trainer> MakeTrainer(const std::string& name,
                                           const std::string& objective,
                                           double lr = 1e-2) {
  const std::string text = absl::StrCat(
      "model { architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: 32 "
      "n_layer: 2 n_head: 4 }\n",
      "data { train_files: '",
      testing::WorkspacePath("tests/fixtures/gpt2/pairs.jsonl"),
      "' max_length: 32 }\n", "objective { ", objective, " }\n",
      "optimizer { lr: ", lr, " weight_decay: 0.01 max_grad_norm: 1.0 }\n",
      "batch { micro_batch_size: 2 global_batch_size: 4 }\n",
      "max_steps: 10\nseed: 11\nrun_dir: '", std::getenv("TEST_TMPDIR"), "/",
      name, "'\n");
  auto config = config::LoadTrainConfig(
      testing::WriteTempFile(name + ".textproto", text), {});
  EXPECT_TRUE(config.ok()) << config.status();
  if (!config.ok()) return nullptr;
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(*config, log);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  if (!trainer.ok()) return nullptr;
  return *std::move(trainer);
}

void TrainSteps(loop::Trainer& t, int steps) {
  for (int s = 0; s < steps; ++s) {
    auto m = t.Step();
    ASSERT_TRUE(m.ok()) << m.status();
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

struct GradCase {
  const char* name;
  const char* objective;
};

void PrintTo(const GradCase& c, std::ostream* os) { *os << c.name; }

class SparsePoGradient : public ::testing::TestWithParam<GradCase> {};

// One ForwardBackward over two micro-batches of a 4-pair batch gives ∂loss/∂θ
// for the policy and the mask networks; the loss is its "loss" metric. After
// two training steps the policy differs from the reference, so the KL term
// and its logit gradient are live.
TEST_P(SparsePoGradient, MatchesFiniteDifferencesOfTheLoss) {
  auto trainer = MakeTrainer(GetParam().name, GetParam().objective);
  ASSERT_NE(trainer, nullptr);
  TrainSteps(*trainer, 2);
  const std::vector<int> batch = {0, 1, 2, 3};
  const double loss0 = trainer->ForwardBackward(batch)["loss"];
  model::Decoder& policy = trainer->mutable_policy();
  const std::vector<float> policy_grad(
      policy.grads(), policy.grads() + policy.layout().total());

  // (parameter, analytic gradient, what it is)
  struct Probe {
    float* param;
    double grad;
    std::string what;
  };
  std::vector<Probe> probes;
  for (const char* name :
       {"transformer.wte.weight", "transformer.h.0.attn.c_attn.weight",
        "transformer.h.1.mlp.c_proj.weight", "transformer.ln_f.weight"}) {
    const model::ParamTensor* t = policy.layout().Find(name);
    ASSERT_NE(t, nullptr) << name;
    const size_t i = LargestAt(policy_grad, t->offset, t->numel);
    probes.push_back({policy.params() + i, policy_grad[i],
                      absl::StrCat(name, "[", i - t->offset, "]")});
  }
  for (const auto& net : trainer->sparsepo()->mask_nets()) {
    const std::vector<float> g(net->grads(),
                               net->grads() + net->layout().total());
    for (const model::ParamTensor& t : net->layout().tensors()) {
      const size_t i = LargestAt(g, t.offset, t.numel);
      probes.push_back({net->params() + i, g[i],
                        absl::StrCat(t.name, "[", i - t.offset, "]")});
    }
  }
  const bool learned = !trainer->sparsepo()->mask_nets().empty();
  EXPECT_EQ(probes.size(),
            learned ? 4u + 6u * trainer->sparsepo()->mask_nets().size() : 4u);

  constexpr float kStep = 1e-3f;
  for (const Probe& p : probes) {
    const float saved = *p.param;
    *p.param = saved + kStep;
    const double plus = trainer->ForwardBackward(batch)["loss"];
    *p.param = saved - kStep;
    const double minus = trainer->ForwardBackward(batch)["loss"];
    *p.param = saved;
    const double fd = (plus - minus) / (2.0 * kStep);
    EXPECT_NEAR(p.grad, fd, 0.01 * std::fabs(fd) + 5e-5)
        << p.what << " (loss " << loss0 << ")";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Masks, SparsePoGradient,
    ::testing::Values(
        GradCase{"learned_common",
                 "sparsepo { l1_kl: 0.02 mask_init_std: 0.5 }"},
        GradCase{"learned_independent",
                 "sparsepo { independent_masks: true l1_reward: 0.01 l1_kl: "
                 "0.02 mask_init_std: 0.5 }"},
        GradCase{"mapo", "sparsepo { mask: MAPO }"}),
    [](const ::testing::TestParamInfo<GradCase>& info) {
      return std::string(info.param.name);
    });

// log softmax of one row of logits, in double.
std::vector<double> LogSoftmax(const std::vector<double>& z) {
  const double m = *std::max_element(z.begin(), z.end());
  double s = 0;
  for (double x : z) s += std::exp(x - m);
  std::vector<double> out(z.size());
  for (size_t v = 0; v < z.size(); ++v) out[v] = z[v] - m - std::log(s);
  return out;
}

// With w = 0, b = 1 and c = 1/L (L = 2: exactly 0.5) the learned mask is
// ReLU(Σ_l c_l ReLU(b_l)) = 1 on every token, and SparsePO's loss must be
// TDPO1's: −log σ(β[(M_w − M_l) − (KL_l − KL_w)]) with M the summed log-ratio
// and KL = Σ_t KL(p_t‖π_t), from the two models' full logits.
TEST(SparsePoLoop, UnitMasksGiveTdpo1) {
  const double beta = 0.8;
  auto trainer = MakeTrainer("tdpo1", "sparsepo { beta: 0.8 }");
  auto initial = MakeTrainer("tdpo1_initial", "sparsepo { beta: 0.8 }");
  ASSERT_NE(trainer, nullptr);
  ASSERT_NE(initial, nullptr);
  TrainSteps(*trainer, 3);

  objectives::SparsePoMaskNet& net = *trainer->sparsepo()->mask_nets()[0];
  ASSERT_EQ(net.num_layers(), 2);
  auto fill = [&](const std::string& name, float value) {
    const model::ParamTensor* t = net.layout().Find(name);
    ASSERT_NE(t, nullptr) << name;
    std::fill(net.params() + t->offset, net.params() + t->offset + t->numel,
              value);
  };
  fill("sparsepo_mask.w.0", 0.0f);
  fill("sparsepo_mask.w.1", 0.0f);
  fill("sparsepo_mask.b", 1.0f);
  fill("sparsepo_mask.c", 0.5f);
  const std::vector<int> all = {0, 1, 2, 3, 4, 5};
  std::map<std::string, double> m = trainer->ForwardBackward(all);
  EXPECT_EQ(m["mask/mean"], 1.0);
  EXPECT_EQ(m["mask/sparsity"], 0.0);

  // Both models, frozen copies, over one example at a time.
  kernels::CpuBackend backend;
  const model::Decoder& policy = trainer->policy();
  const model::Capacity cap{64, 32, 2};
  auto pi = model::Decoder::Create(policy.spec(), &backend, cap, false);
  auto ref = model::Decoder::Create(policy.spec(), &backend, cap, false);
  ASSERT_TRUE(pi.ok() && ref.ok());
  const size_t total = policy.layout().total();
  std::memcpy((*pi)->params(), policy.params(), total * sizeof(float));
  std::memcpy((*ref)->params(), initial->policy().params(),
              total * sizeof(float));
  const int C = policy.hidden_size(), V = policy.vocab_size();
  auto logits = [&](const model::Decoder& d, const float* hidden, int row) {
    std::vector<double> z(V);
    for (int v = 0; v < V; ++v) {
      double s = 0;
      for (int c = 0; c < C; ++c) {
        s += static_cast<double>(hidden[row * C + c]) *
             d.output_embedding()[v * C + c];
      }
      z[v] = s;
    }
    return z;
  };
  double tdpo1 = 0;
  data::Batch batch;
  for (int ex : all) {
    data::BuildBatch(trainer->dataset().examples, &ex, 1, true, &batch);
    const float* h = (*pi)->Forward(batch.packed);
    const float* hr = (*ref)->Forward(batch.packed);
    double margin[2] = {0, 0}, kl[2] = {0, 0};
    for (int s = 0; s < 2; ++s) {
      const objectives::ResponseSegment& seg = batch.segments[s];
      for (int t = 0; t < seg.count; ++t) {
        const int row = seg.row + t;
        const int label = batch.packed.tokens[row + 1];
        const std::vector<double> lp = LogSoftmax(logits(**pi, h, row));
        const std::vector<double> lr = LogSoftmax(logits(**ref, hr, row));
        margin[s] += lp[label] - lr[label];
        for (int v = 0; v < V; ++v) kl[s] += std::exp(lr[v]) * (lr[v] - lp[v]);
      }
    }
    const double x = beta * ((margin[0] - margin[1]) - (kl[1] - kl[0]));
    tdpo1 += std::log1p(std::exp(-x));
  }
  tdpo1 /= all.size();
  EXPECT_NEAR(m["loss"], tdpo1, 2e-6) << "TDPO1 " << tdpo1;
}

struct RunResult {
  std::vector<double> losses;
  std::vector<float> params;
  std::vector<float> mask_state;
};

RunResult Train(const std::string& name, const std::string& objective) {
  RunResult r;
  auto trainer = MakeTrainer(name, objective);
  if (trainer == nullptr) return r;
  for (int s = 0; s < 4; ++s) {
    auto m = trainer->Step();
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return r;
    r.losses.push_back((*m)["loss"]);
  }
  const model::Decoder& p = trainer->policy();
  r.params.assign(p.params(), p.params() + p.layout().total());
  for (const io::TensorToWrite& t : trainer->ExtraCheckpointTensors()) {
    size_t n = 1;
    for (int64_t d : t.shape) n *= d;
    r.mask_state.insert(r.mask_state.end(), t.data, t.data + n);
  }
  return r;
}

TEST(SparsePoLoop, TwoRunsAreBitwiseEqual) {
  const char* objectives[] = {
      "sparsepo { independent_masks: true l1_reward: 0.01 }",
      "sparsepo { mask: MAPO }"};
  for (int i = 0; i < 2; ++i) {
    const char* objective = objectives[i];
    const RunResult a = Train(absl::StrCat("det_a", i), objective);
    const RunResult b = Train(absl::StrCat("det_b", i), objective);
    ASSERT_EQ(a.losses.size(), 4u) << objective;
    ASSERT_EQ(b.losses.size(), 4u) << objective;
    EXPECT_EQ(std::memcmp(a.losses.data(), b.losses.data(),
                          a.losses.size() * sizeof(double)),
              0)
        << objective;
    ASSERT_EQ(a.params.size(), b.params.size());
    EXPECT_EQ(std::memcmp(a.params.data(), b.params.data(),
                          a.params.size() * sizeof(float)),
              0)
        << objective;
    ASSERT_EQ(a.mask_state.size(), b.mask_state.size());
    EXPECT_EQ(std::memcmp(a.mask_state.data(), b.mask_state.data(),
                          a.mask_state.size() * sizeof(float)),
              0)
        << objective;
  }
}

// A deep copy of ExtraCheckpointTensors' values.
struct Saved {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::vector<float>> values;

  std::vector<io::TensorToWrite> View() const {
    std::vector<io::TensorToWrite> out;
    for (size_t i = 0; i < names.size(); ++i) {
      out.push_back({names[i], shapes[i], values[i].data()});
    }
    return out;
  }
};

Saved Save(loop::Trainer& t) {
  Saved s;
  for (const io::TensorToWrite& x : t.ExtraCheckpointTensors()) {
    size_t n = 1;
    for (int64_t d : x.shape) n *= d;
    s.names.push_back(x.name);
    s.shapes.push_back(x.shape);
    s.values.emplace_back(x.data, x.data + n);
  }
  return s;
}

TEST(SparsePoLoop, MaskStateRoundTripsThroughTheCheckpointAccessors) {
  auto trainer = MakeTrainer(
      "ckpt", "sparsepo { independent_masks: true mask_init_std: 0.1 }");
  ASSERT_NE(trainer, nullptr);
  TrainSteps(*trainer, 2);
  const Saved saved = Save(*trainer);
  // Two networks × 6 tensors (ln.weight, ln.bias, w.0, w.1, b, c) × (value,
  // exp_avg, exp_avg_sq); the Hugging Face export never sees them.
  ASSERT_EQ(saved.names.size(), 36u);
  EXPECT_EQ(saved.names[0], "sparsepo_mask_reward.ln.weight");
  EXPECT_EQ(saved.names[1], "sparsepo_mask_reward.ln.weight.exp_avg");
  EXPECT_EQ(saved.names[2], "sparsepo_mask_reward.ln.weight.exp_avg_sq");
  EXPECT_EQ(saved.names[18], "sparsepo_mask_kl.ln.weight");
  EXPECT_EQ(saved.shapes[0], std::vector<int64_t>{32});
  for (const std::string& name : saved.names) {
    EXPECT_EQ(trainer->policy().layout().Find(name), nullptr) << name;
  }

  TrainSteps(*trainer, 2);
  EXPECT_NE(Save(*trainer).values, saved.values);

  // Bad inputs fail and change nothing.
  const Saved before = Save(*trainer);
  std::vector<io::TensorToWrite> missing = saved.View();
  missing.pop_back();
  EXPECT_FALSE(trainer->RestoreExtraCheckpointTensors(missing).ok());
  std::vector<io::TensorToWrite> unknown = saved.View();
  unknown.push_back({"sparsepo_mask.extra", {1}, saved.values[0].data()});
  EXPECT_FALSE(trainer->RestoreExtraCheckpointTensors(unknown).ok());
  std::vector<io::TensorToWrite> reshaped = saved.View();
  reshaped[3].shape = {16};
  const absl::Status wrong_shape =
      trainer->RestoreExtraCheckpointTensors(reshaped);
  EXPECT_FALSE(wrong_shape.ok());
  EXPECT_NE(wrong_shape.message().find("has shape [16], expected [32]"),
            std::string::npos)
      << wrong_shape;
  EXPECT_EQ(Save(*trainer).values, before.values);

  ASSERT_TRUE(trainer->RestoreExtraCheckpointTensors(saved.View()).ok());
  EXPECT_EQ(Save(*trainer).values, saved.values);

  // MaPO masks and the other objectives have no extra state.
  auto mapo = MakeTrainer("ckpt_mapo", "sparsepo { mask: MAPO }");
  auto dpo = MakeTrainer("ckpt_dpo", "dpo { beta: 0.1 }");
  ASSERT_NE(mapo, nullptr);
  ASSERT_NE(dpo, nullptr);
  EXPECT_TRUE(mapo->ExtraCheckpointTensors().empty());
  EXPECT_TRUE(dpo->ExtraCheckpointTensors().empty());
  EXPECT_TRUE(dpo->RestoreExtraCheckpointTensors({}).ok());
  EXPECT_FALSE(dpo->RestoreExtraCheckpointTensors(saved.View()).ok());
}

}  // namespace
}  // namespace prefopt
