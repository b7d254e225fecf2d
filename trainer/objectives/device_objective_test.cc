// DeviceObjective (Backend::ObjectiveCoefficients through the loop's runner)
// against the host objectives it stands in for: the coefficients and every
// metric (names, sums and counts) of DPO with each loss type the device
// covers (AOT's sorted ones too), label smoothing, a mixture with the SFT
// term, f-DPO's divergences,
// LD-DPO and WPO, SFT, implicit-reward SFT at both granularities with each
// divergence, PRIOR, CPO with each loss type (SimPO, AlphaPO), ORPO (with
// its prompt rows) and KTO with its pre-pass, on the reference backend posing
// as one the host cannot address. Also which configurations stay on the host.
#include "trainer/objectives/device_objective.h"

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/reference.h"
#include "proto/config.pb.h"
#include "trainer/objectives/cpo.h"
#include "trainer/objectives/demonstration_objectives.h"
#include "trainer/objectives/dpo.h"
#include "trainer/objectives/kto.h"
#include "trainer/objectives/orpo.h"
#include "trainer/objectives/reference_free.h"
#include "trainer/objectives/reference_values.h"

namespace prefopt::objectives {
namespace {

constexpr int kHidden = 8, kVocab = 37;

// The reference backend, claiming memory the host cannot address, so that
// DeviceObjective::Create takes the device path on it.
class OpaqueBackend : public kernels::ReferenceBackend {
 public:
  bool HostAddressable() const override { return false; }
};

// A micro-batch of `examples` (pairs or demonstrations) with random hidden
// states, output embedding and labels, and reference log-probs per token
// (about a random token's) and their sums. With `prompts`, the segments of
// the rows that predict each example's prompt tokens 2..P follow the
// responses' (WithPromptSegments; P = 1 to 4, so some are empty).
struct Fixture {
  std::vector<int> examples;
  std::vector<ResponseSegment> segments;
  size_t response_segments = 0;
  std::vector<float> hidden, wout;
  std::vector<int32_t> tokens;
  ReferenceValues ref;

  Fixture(int n, int sequences_per_example, bool prompts = false) {
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> length(1, 9), token(0, kVocab - 1);
    int row = 0;
    std::vector<ResponseSegment> prompt_segments;
    for (int i = 0; i < n; ++i) {
      examples.push_back(n - 1 - i);  // dataset order differs from batch order
      const int prompt = prompts ? 1 + i % 4 : 2;
      prompt_segments.push_back({row, prompt - 1});
      for (int j = 0; j < sequences_per_example; ++j) {
        const int len = length(rng);
        segments.push_back({row + prompt - 1, len});
        row += prompt + len;
      }
    }
    response_segments = segments.size();
    if (prompts) {
      segments.insert(segments.end(), prompt_segments.begin(),
                      prompt_segments.end());
    }
    ref.first_response.assign(n, 0);
    ref.sequence_logp.assign(n * sequences_per_example, 0);
    for (int i = 0; i < n; ++i) {
      ref.first_response[examples[i]] = i * sequences_per_example;
      for (int j = 0; j < sequences_per_example; ++j) {
        const int s = i * sequences_per_example + j;
        ref.token_offset.push_back(static_cast<int64_t>(ref.token_logp.size()));
        double sum = 0;
        for (int t = 0; t < segments[s].count; ++t) {
          // Now and then a token the reference is nearly sure of (PRIOR's
          // small weights).
          const float v =
              t % 5 == 3 ? -1e-4f : -std::fabs(-4.0f + 1.5f * normal(rng));
          ref.token_logp.push_back(v);
          sum += v;
        }
        ref.sequence_logp[s] = sum;
      }
    }
    for (int r = 0; r < row * kHidden; ++r) hidden.push_back(normal(rng));
    for (int v = 0; v < kVocab * kHidden; ++v) {
      wout.push_back(0.7f * normal(rng));
    }
    for (int r = 0; r <= row; ++r) tokens.push_back(token(rng));
  }
  int rows() const {
    int total = 0;
    for (const ResponseSegment& s : segments) total += s.count;
    return total;
  }
};

// Compares the metric sums `got` with `want`: names, sums and counts.
void ExpectSameSums(const MetricSums& got, const MetricSums& want) {
  ASSERT_EQ(got.JoinedNames(), want.JoinedNames());
  const std::vector<double> g = got.Flattened(), w = want.Flattened();
  for (size_t k = 0; k < w.size(); ++k) {
    EXPECT_NEAR(g[k], w[k], 1e-9 * (1.0 + std::fabs(w[k])))
        << (k % 2 == 0 ? "sum" : "count") << " of metric " << k / 2 << " ("
        << want.JoinedNames() << ")";
  }
}

// Runs `objective` on the host path and on the device path over the same
// micro-batch and compares coefficients and metrics.
void ExpectDeviceMatchesHost(const Objective& objective, int pairs_or_seqs,
                             double token_denominator = 0) {
  const int per_example =
      objective.example_kind() == data::ExampleKind::kPreference ? 2 : 1;
  Fixture f(pairs_or_seqs, per_example, objective.scores_prompts());
  OpaqueBackend backend;
  const int max_rows = 256;
  ASSERT_LE(f.rows(), max_rows);
  std::vector<data::Example> dataset(f.examples.size());
  const double denominator = 1.5 * pairs_or_seqs;

  const bool log_sum_sq = objective.needs_row_log_sum_sq_probs();
  ChunkedOutputLayer host_output(&backend, max_rows, kHidden, kVocab, 4);
  const std::vector<SequenceScores> scores = host_output.Forward(
      f.hidden.data(), f.wout.data(), f.tokens.data(), f.segments, log_sum_sq);
  MicroBatchView view{&f.examples, &scores, &host_output.row_logp(), &f.ref};
  view.denominator = denominator;
  view.token_denominator = token_denominator;
  view.dataset = &dataset;
  if (log_sum_sq) {
    view.row_log_sum_sq_probs = &host_output.row_log_sum_sq_probs();
  }
  std::vector<float> want_coef;
  MetricSums want;
  objective.Coefficients(view, denominator, &want_coef, &want);
  AddEntropyMetric(scores, f.response_segments, &want);

  std::unique_ptr<DeviceObjective> device = DeviceObjective::Create(
      objective, &backend, static_cast<int>(f.response_segments), kVocab);
  ASSERT_NE(device, nullptr);
  ChunkedOutputLayer output(&backend, max_rows, kHidden, kVocab, 4);
  MetricSums got;
  // Two micro-batches' metrics come down in one TakeMetrics.
  for (int repeat = 0; repeat < 2; ++repeat) {
    output.ForwardOnBackend(f.hidden.data(), f.wout.data(), f.tokens.data(),
                            f.segments, log_sum_sq);
    device->Coefficients(f.segments, f.examples, dataset, &f.ref,
                         /*prepass=*/nullptr, denominator, token_denominator,
                         &output);
  }
  device->TakeMetrics(&got);
  std::vector<float> coef(want_coef.size());
  backend.CopyToHost(coef.data(), output.rows().coef, coef.size());

  int nonzero = 0;
  for (size_t r = 0; r < coef.size(); ++r) {
    nonzero += want_coef[r] != 0;
    EXPECT_NEAR(coef[r], want_coef[r], 1e-6 * std::fabs(want_coef[r]))
        << "row " << r;
  }
  EXPECT_GT(nonzero, 0);
  want.Merge(want);  // two micro-batches
  ExpectSameSums(got, want);
  // Taken: the next call adds nothing.
  MetricSums none;
  device->TakeMetrics(&none);
  EXPECT_EQ(none.JoinedNames(), "");
}

std::unique_ptr<DpoObjective> Dpo(const std::string& text_types,
                                  const std::vector<DpoConfig::LossType>& types,
                                  const std::vector<float>& weights, double eps,
                                  DpoConfig config = DpoConfig()) {
  config.set_beta(0.4f);
  config.set_label_smoothing(eps);
  for (DpoConfig::LossType t : types) config.add_loss_type(t);
  for (float w : weights) config.add_loss_weights(w);
  auto dpo = DpoObjective::Create(config, kVocab);
  EXPECT_TRUE(dpo.ok()) << text_types << ": " << dpo.status();
  return dpo.ok() ? *std::move(dpo) : nullptr;
}

TEST(DeviceObjectiveTest, EveryDpoLossTypeMatchesTheHost) {
  for (DpoConfig::LossType type :
       {DpoConfig::SIGMOID, DpoConfig::IPO, DpoConfig::HINGE, DpoConfig::ROBUST,
        DpoConfig::EXO_PAIR, DpoConfig::NCA_PAIR, DpoConfig::BCO_PAIR,
        DpoConfig::SPPO_HARD, DpoConfig::APO_ZERO, DpoConfig::APO_DOWN,
        DpoConfig::DISCOPOP, DpoConfig::SIGMOID_NORM}) {
    const std::string name = DpoConfig::LossType_Name(type);
    SCOPED_TRACE(name);
    const bool smoothed = type == DpoConfig::SIGMOID ||
                          type == DpoConfig::ROBUST ||
                          type == DpoConfig::EXO_PAIR;
    auto dpo = Dpo(name, {type}, {}, smoothed ? 0.15 : 0.0);
    ASSERT_NE(dpo, nullptr);
    ExpectDeviceMatchesHost(*dpo, 5);
  }
}

TEST(DeviceObjectiveTest, MixtureWithSftTermMatchesTheHost) {
  auto dpo =
      Dpo("mixture", {DpoConfig::SIGMOID, DpoConfig::BCO_PAIR, DpoConfig::SFT},
          {0.8f, 0.2f, 1.0f}, 0);
  ASSERT_NE(dpo, nullptr);
  SCOPED_TRACE("micro-batch scored on its own");
  ExpectDeviceMatchesHost(*dpo, 4);
  SCOPED_TRACE("global batch's chosen tokens");
  ExpectDeviceMatchesHost(*dpo, 4, /*token_denominator=*/41);
}

TEST(DeviceObjectiveTest, FDpoLdDpoAndWpoMatchTheHost) {
  struct Variant {
    const char* name;
    DpoConfig::FDivergenceType divergence;
    float f_alpha;   // < 0: unset
    float ld_alpha;  // < 0: unset
    bool weighting;
  };
  for (const Variant& v : {
           Variant{"forward_kl", DpoConfig::FORWARD_KL, -1, -1, false},
           Variant{"js", DpoConfig::JS_DIVERGENCE, -1, -1, false},
           Variant{"alpha", DpoConfig::ALPHA_DIVERGENCE, 0.3f, -1, false},
           Variant{"ld_dpo", DpoConfig::REVERSE_KL, -1, 0.4f, false},
           Variant{"ld_dpo_zero", DpoConfig::REVERSE_KL, -1, 0.0f, false},
           Variant{"wpo", DpoConfig::REVERSE_KL, -1, -1, true},
           Variant{"js_ld_wpo", DpoConfig::JS_DIVERGENCE, -1, 0.6f, true},
       }) {
    SCOPED_TRACE(v.name);
    DpoConfig config;
    config.set_f_divergence_type(v.divergence);
    if (v.f_alpha >= 0) config.set_f_alpha_divergence_coef(v.f_alpha);
    if (v.ld_alpha >= 0) config.set_ld_alpha(v.ld_alpha);
    config.set_use_weighting(v.weighting);
    // f-DPO's scores feed the losses on Δ; the raw log-ratios BCO_PAIR's.
    const bool f_dpo = v.divergence != DpoConfig::REVERSE_KL;
    auto dpo =
        Dpo(v.name,
            {DpoConfig::SIGMOID, f_dpo ? DpoConfig::IPO : DpoConfig::BCO_PAIR},
            {0.7f, 0.3f}, 0.1, config);
    ASSERT_NE(dpo, nullptr);
    ExpectDeviceMatchesHost(*dpo, 5);
  }
}

// AOT's losses sort the micro-batch's pairs; the device sorts them too.
TEST(DeviceObjectiveTest, AotMatchesTheHost) {
  for (bool ld : {false, true}) {
    SCOPED_TRACE(ld ? "LD-DPO" : "plain sums");
    DpoConfig config;
    if (ld) config.set_ld_alpha(0.5f);
    for (const std::vector<DpoConfig::LossType>& types :
         std::vector<std::vector<DpoConfig::LossType>>{
             {DpoConfig::AOT},
             {DpoConfig::AOT_UNPAIRED},
             {DpoConfig::SIGMOID, DpoConfig::AOT_UNPAIRED, DpoConfig::AOT,
              DpoConfig::SFT}}) {
      SCOPED_TRACE(types.size());
      auto dpo = Dpo("aot", types,
                     types.size() > 1 ? std::vector<float>{0.5f, 0.3f, 0.2f, 1}
                                      : std::vector<float>{},
                     0.1, config);
      ASSERT_NE(dpo, nullptr);
      ExpectDeviceMatchesHost(*dpo, 9);
    }
  }
}

TEST(DeviceObjectiveTest, SftMatchesTheHost) {
  SftPlugin sft;
  ExpectDeviceMatchesHost(sft, 6);
}

TEST(DeviceObjectiveTest, ImplicitSftMatchesTheHost) {
  for (ImplicitSftConfig::Granularity g :
       {ImplicitSftConfig::SEQUENCE, ImplicitSftConfig::TOKEN}) {
    for (ImplicitSftConfig::Divergence d :
         {ImplicitSftConfig::TOTAL_VARIATION, ImplicitSftConfig::PEARSON_CHI2,
          ImplicitSftConfig::NEYMAN_CHI2, ImplicitSftConfig::KL,
          ImplicitSftConfig::SQUARED_HELLINGER,
          ImplicitSftConfig::JENSEN_SHANNON}) {
      SCOPED_TRACE(ImplicitSftConfig::Granularity_Name(g) + " " +
                   ImplicitSftConfig::Divergence_Name(d));
      ImplicitSftConfig config;
      config.set_divergence(d);
      config.set_granularity(g);
      config.set_beta(0.3f);
      config.set_domain_margin(0.01f);
      auto isft = ImplicitSftPlugin::Create(config);
      ASSERT_TRUE(isft.ok()) << isft.status();
      ExpectDeviceMatchesHost(**isft, 7);
    }
  }
}

TEST(DeviceObjectiveTest, PriorMatchesTheHost) {
  for (float alpha : {1.0f, 0.5f, 0.0f, 3.0f}) {
    SCOPED_TRACE(alpha);
    PriorConfig config;
    config.set_alpha(alpha);
    config.set_weight_sum_floor(1e-6f);
    auto prior = PriorPlugin::Create(config);
    ASSERT_TRUE(prior.ok()) << prior.status();
    ExpectDeviceMatchesHost(**prior, 6);
  }
}

// CPO's losses on summed (SIGMOID, HINGE) or length-averaged (IPO, SIMPO)
// log-probs, AlphaPO's reward shape, label smoothing and the NLL term
// (cpo_alpha; 0: none, as TRL).
TEST(DeviceObjectiveTest, CpoSimpoAndAlphapoMatchTheHost) {
  struct Variant {
    CpoConfig::LossType type;
    float cpo_alpha;
    float alpha;  // AlphaPO's reward shape
    float label_smoothing;
  };
  for (const Variant& v :
       {Variant{CpoConfig::SIGMOID, 1.0f, 0, 0.1f},
        Variant{CpoConfig::SIGMOID, 0, 0, 0},
        Variant{CpoConfig::HINGE, 0.5f, 0, 0},
        Variant{CpoConfig::IPO, 1.0f, 0, 0}, Variant{CpoConfig::SIMPO, 0, 0, 0},
        Variant{CpoConfig::SIMPO, 0.3f, 0, 0.2f},
        Variant{CpoConfig::ALPHAPO, 0, 0.5f, 0}}) {
    SCOPED_TRACE(CpoConfig::LossType_Name(v.type) + " cpo_alpha " +
                 std::to_string(v.cpo_alpha));
    CpoConfig config;
    config.set_loss_type(v.type);
    config.set_beta(v.type == CpoConfig::SIGMOID ? 0.4f : 2.0f);
    config.set_cpo_alpha(v.cpo_alpha);
    config.set_alpha(v.alpha);
    config.set_simpo_gamma(0.8f);
    config.set_label_smoothing(v.label_smoothing);
    auto cpo = CpoObjective::Create(config, kVocab);
    ASSERT_TRUE(cpo.ok()) << cpo.status();
    ExpectDeviceMatchesHost(**cpo, 6, /*token_denominator=*/53);
  }
}

// ORPO's NLL covers the chosen prompts' rows (some of them none); the
// device takes each pair with its prompt.
TEST(DeviceObjectiveTest, OrpoMatchesTheHost) {
  OrpoConfig config;
  config.set_beta(0.25f);
  auto orpo = OrpoObjective::Create(config, kVocab);
  ASSERT_TRUE(orpo.ok()) << orpo.status();
  ASSERT_TRUE((*orpo)->scores_prompts());
  ExpectDeviceMatchesHost(**orpo, 7, /*token_denominator=*/61);
}

// KTO: the pre-pass's KL sums over each example's KL completion (response
// 1), then the loss over its completion (response 0) with z₀ from them, on
// both paths; desirable and undesirable examples mixed, or one side only
// (whose absent side's metrics both paths report with count 0).
TEST(DeviceObjectiveTest, KtoAndItsPrepassMatchTheHost) {
  struct Variant {
    const char* name;
    KtoConfig::LossType type;
    int undesirable_every;  // 0: all desirable
  };
  for (const Variant& v :
       {Variant{"kto", KtoConfig::KTO, 3},
        Variant{"kto_desirable_only", KtoConfig::KTO, 0},
        Variant{"apo_zero_unpaired", KtoConfig::APO_ZERO_UNPAIRED, 2}}) {
    SCOPED_TRACE(v.name);
    KtoConfig config;
    config.set_loss_type(v.type);
    config.set_beta(0.3f);
    config.set_desirable_weight(1.2f);
    config.set_undesirable_weight(0.7f);
    auto kto = KtoObjective::Create(config, kVocab);
    ASSERT_TRUE(kto.ok()) << kto.status();
    const int n = 6;
    // Two sequences per example: the completion, then the KL completion.
    Fixture f(n, 2);
    std::vector<ResponseSegment> completions, kl_completions;
    for (int i = 0; i < n; ++i) {
      completions.push_back(f.segments[2 * i]);
      kl_completions.push_back(f.segments[2 * i + 1]);
    }
    // The reference far less sure of the KL completions than the policy:
    // z₀ = max(0, mean KL log-ratio) > 0.
    for (int i = 0; i < n; ++i) f.ref.sequence_logp[2 * i + 1] -= 40.0;
    std::vector<data::Example> dataset(n);
    for (int i = 0; i < n; ++i) {
      dataset[i].label = v.undesirable_every == 0 || i % v.undesirable_every;
    }
    OpaqueBackend backend;
    const int max_rows = 256;
    const double denominator = 1.5 * n;
    ChunkedOutputLayer host_output(&backend, max_rows, kHidden, kVocab, 4);
    MetricSums want_prepass, want;
    std::vector<float> want_coef;
    {
      const std::vector<SequenceScores> scores = host_output.Forward(
          f.hidden.data(), f.wout.data(), f.tokens.data(), kl_completions);
      MicroBatchView view{&f.examples, &scores, &host_output.row_logp(),
                          &f.ref};
      view.dataset = &dataset;
      (*kto)->AddPrepass(view, &want_prepass);
    }
    {
      const std::vector<SequenceScores> scores = host_output.Forward(
          f.hidden.data(), f.wout.data(), f.tokens.data(), completions);
      MicroBatchView view{&f.examples, &scores, &host_output.row_logp(),
                          &f.ref};
      view.denominator = denominator;
      view.dataset = &dataset;
      view.prepass = &want_prepass;
      (*kto)->Coefficients(view, denominator, &want_coef, &want);
      AddEntropyMetric(scores, completions.size(), &want);
    }

    std::unique_ptr<DeviceObjective> device =
        DeviceObjective::Create(**kto, &backend, n, kVocab);
    ASSERT_NE(device, nullptr);
    ChunkedOutputLayer output(&backend, max_rows, kHidden, kVocab, 4);
    MetricSums got_prepass, got;
    output.ForwardOnBackend(f.hidden.data(), f.wout.data(), f.tokens.data(),
                            kl_completions);
    device->Prepass(kl_completions, f.examples, f.ref, &output);
    device->TakeMetrics(&got_prepass);
    if (v.type == KtoConfig::KTO) {
      ExpectSameSums(got_prepass, want_prepass);
    }
    output.ForwardOnBackend(f.hidden.data(), f.wout.data(), f.tokens.data(),
                            completions);
    device->Coefficients(completions, f.examples, dataset, &f.ref, &got_prepass,
                         denominator, 0, &output);
    device->TakeMetrics(&got);
    std::vector<float> coef(want_coef.size());
    backend.CopyToHost(coef.data(), output.rows().coef, coef.size());
    for (size_t r = 0; r < coef.size(); ++r) {
      EXPECT_NEAR(coef[r], want_coef[r], 1e-6 * std::fabs(want_coef[r]))
          << "row " << r;
    }
    ExpectSameSums(got, want);
    // z₀ > 0 moved the KTO loss (else the pre-pass would be untested).
    if (v.type == KtoConfig::KTO) {
      EXPECT_GT((*kto)->KlEstimate(&got_prepass), 0);
    }
  }
}

TEST(DeviceObjectiveTest, WhatStaysOnTheHost) {
  OpaqueBackend opaque;
  kernels::ReferenceBackend host;
  auto plain = Dpo("sigmoid", {DpoConfig::SIGMOID}, {}, 0);
  ASSERT_NE(plain, nullptr);
  EXPECT_NE(DeviceObjective::Create(*plain, &opaque, 8, kVocab), nullptr);
  // A host-addressable backend keeps the host path.
  EXPECT_EQ(DeviceObjective::Create(*plain, &host, 8, kVocab), nullptr);
  // A pre-pass other than KTO's has no device form.
  class SftWithPrepass : public SftPlugin {
   public:
    bool has_prepass() const override { return true; }
  };
  SftWithPrepass with_prepass;
  EXPECT_EQ(DeviceObjective::Create(with_prepass, &opaque, 8, kVocab), nullptr);
  // Nor has an objective that has no DeviceParams.
  class HostOnly : public SftPlugin {
   public:
    bool DeviceParams(kernels::ObjectiveParams*) const override {
      return false;
    }
  };
  HostOnly host_only;
  EXPECT_EQ(DeviceObjective::Create(host_only, &opaque, 8, kVocab), nullptr);
}

}  // namespace
}  // namespace prefopt::objectives
