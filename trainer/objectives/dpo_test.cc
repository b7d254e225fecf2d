// DPO loss derivatives against central finite differences of the loss itself,
// for every loss type, and the closed forms of docs/objectives.md §1 at chosen
// points.
#include "trainer/objectives/dpo.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace prefopt::objectives {
namespace {

struct TypeCase {
  DpoConfig::LossType type;
  double eps;
};

class DpoGradient : public ::testing::TestWithParam<TypeCase> {};

TEST_P(DpoGradient, MatchesFiniteDifferences) {
  DpoConfig config;
  config.set_beta(0.3f);
  config.add_loss_type(GetParam().type);
  config.set_label_smoothing(GetParam().eps);
  auto dpo = DpoObjective::Create(config, 10);
  ASSERT_TRUE(dpo.ok()) << dpo.status();
  const PairReference ref{-12.5, -9.0};
  for (double lw : {-20.0, -11.0, -3.0}) {
    for (double ll : {-15.0, -8.5, -2.0}) {
      SequenceScores w{lw, 4, 0, 0}, l{ll, 7, 0, 0};
      MetricSums sums;
      const DpoPairGradient g = (*dpo)->Pair(w, l, ref, &sums);
      const double h = 1e-5;
      auto loss_at = [&](double dw, double dl) {
        SequenceScores w2 = w, l2 = l;
        w2.logp += dw;
        l2.logp += dl;
        MetricSums unused;
        return (*dpo)->Pair(w2, l2, ref, &unused).loss;
      };
      // A token's ℓ_t enters the sequence sum with weight 1.
      const double fd_w = (loss_at(h, 0) - loss_at(-h, 0)) / (2 * h);
      const double fd_l = (loss_at(0, h) - loss_at(0, -h)) / (2 * h);
      EXPECT_NEAR(g.dloss_dlogp_chosen, fd_w, 1e-6) << lw << " " << ll;
      EXPECT_NEAR(g.dloss_dlogp_rejected, fd_l, 1e-6) << lw << " " << ll;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, DpoGradient,
                         ::testing::Values(TypeCase{DpoConfig::SIGMOID, 0.0},
                                           TypeCase{DpoConfig::SIGMOID, 0.2},
                                           TypeCase{DpoConfig::IPO, 0.0},
                                           TypeCase{DpoConfig::HINGE, 0.0},
                                           TypeCase{DpoConfig::ROBUST, 0.2}));

TEST(Dpo, ClosedFormsAndMetrics) {
  DpoConfig config;
  config.set_beta(0.5f);
  auto dpo = DpoObjective::Create(config, 4);
  ASSERT_TRUE(dpo.ok());
  // Δ = (−3 − −4) − (−6 − −5) = 2, u = 1: loss = softplus(−1).
  MetricSums sums;
  const DpoPairGradient g =
      (*dpo)->Pair({-3.0, 2, 8.0, 1}, {-6.0, 3, 6.0, 0}, {-4.0, -5.0}, &sums);
  EXPECT_NEAR(g.loss, std::log1p(std::exp(-1.0)), 1e-12);
  auto m = sums.Means();
  EXPECT_NEAR(m["rewards/chosen"], 0.5, 1e-12);
  EXPECT_NEAR(m["rewards/rejected"], -0.5, 1e-12);
  EXPECT_NEAR(m["rewards/margins"], 1.0, 1e-12);
  EXPECT_EQ(m["rewards/accuracies"], 1.0);
  EXPECT_NEAR(m["logits/chosen"], 8.0 / (2 * 4), 1e-12);
  EXPECT_EQ(m["ranking/accuracy"], 1.0);
  // Length-normalized: −3/2 = −1.5 ≥ −6/3 = −2.
  EXPECT_EQ(m["ranking/accuracy_len_norm"], 1.0);

  // Hinge is flat beyond the margin: u ≥ 1 gives zero loss and gradient.
  config.add_loss_type(DpoConfig::HINGE);
  auto hinge = DpoObjective::Create(config, 4);
  ASSERT_TRUE(hinge.ok());
  const DpoPairGradient flat =
      (*hinge)->Pair({-1.0, 2, 0, 0}, {-9.0, 3, 0, 0}, {-4.0, -5.0}, &sums);
  EXPECT_EQ(flat.loss, 0.0);
  EXPECT_EQ(flat.dloss_dlogp_chosen, 0.0);
}

// IPO's loss uses the length-averaged Δ̄, but its rewards and logps are the
// summed ones, as for every loss type (docs/objectives.md §1).
TEST(Dpo, IpoMetricsUseSummedLogProbs) {
  DpoConfig config;
  config.set_beta(0.5f);
  config.add_loss_type(DpoConfig::IPO);
  auto ipo = DpoObjective::Create(config, 4);
  ASSERT_TRUE(ipo.ok());
  // Log-ratios 1 over 2 chosen tokens and −1 over 4 rejected tokens:
  // Δ̄ = 0.5 + 0.25 = 0.75, 1/(2β) = 1, loss = 0.25² = 0.0625.
  MetricSums sums;
  const DpoPairGradient g =
      (*ipo)->Pair({-3.0, 2, 0, 0}, {-6.0, 4, 0, 0}, {-4.0, -5.0}, &sums);
  EXPECT_NEAR(g.loss, 0.0625, 1e-12);
  // ∂loss/∂Δ̄ = 2·(0.75 − 1) = −0.5, divided by k.
  EXPECT_NEAR(g.dloss_dlogp_chosen, -0.25, 1e-12);
  EXPECT_NEAR(g.dloss_dlogp_rejected, 0.125, 1e-12);
  auto m = sums.Means();
  EXPECT_NEAR(m["rewards/chosen"], 0.5, 1e-12);
  EXPECT_NEAR(m["rewards/rejected"], -0.5, 1e-12);
  EXPECT_NEAR(m["rewards/margins"], 1.0, 1e-12);
  EXPECT_NEAR(m["logps/chosen"], -3.0, 1e-12);
  EXPECT_NEAR(m["logps/rejected"], -6.0, 1e-12);
}

TEST(Dpo, IdealizedRankingFollowsTheReferenceAndThePreferenceStrength) {
  // L̃(y_w) − L̃(y_l) = −3: the reference prefers y_l by 3 nats.
  const PairReference ref{-10.0, -7.0};
  // β = 0.1, α = 0.999: (1/β)·log(999) ≈ 69 outweighs the 3 nats.
  EXPECT_TRUE(IdealizedRankingCorrect(ref, 0.1, kDefaultPreferenceFraction));
  // β = 10: log(999)/10 ≈ 0.69 does not.
  EXPECT_FALSE(IdealizedRankingCorrect(ref, 10.0, kDefaultPreferenceFraction));
  // α = 0.5 (raters split): the reference's own ranking decides.
  EXPECT_FALSE(IdealizedRankingCorrect(ref, 0.1, 0.5));
  EXPECT_TRUE(IdealizedRankingCorrect({-7.0, -10.0}, 0.1, 0.5));
  // At the boundary log(α/(1−α))/β = 3 exactly: strict, so not ranked.
  const double alpha = 1.0 / (1.0 + std::exp(-0.3));
  EXPECT_FALSE(IdealizedRankingCorrect(ref, 0.1, alpha * (1 - 1e-12)));
  EXPECT_TRUE(IdealizedRankingCorrect(ref, 0.1, alpha * (1 + 1e-9)));
}

TEST(Dpo, EvalMetricsUseTheDataPreferenceFraction) {
  DpoConfig config;
  config.set_beta(1.0f);
  auto dpo = DpoObjective::Create(config, 4);
  ASSERT_TRUE(dpo.ok()) << dpo.status();
  // Two pairs whose reference prefers y_l by 2 nats; the policy ranks y_w
  // first in the first pair only.
  std::vector<data::Example> examples(2);
  examples[0].preference_fraction = 0.6f;  // log(1.5) < 2: not ranked
  // examples[1] has no fraction: α = 0.999, log(999) > 2: ranked.
  ReferenceValues ref;
  ref.first_response = {0, 2};
  ref.sequence_logp = {-5.0, -3.0, -5.0, -3.0};
  const std::vector<int> batch = {0, 1};
  const std::vector<SequenceScores> scores = {
      {-1.0, 2, 0, 0}, {-4.0, 2, 0, 0}, {-4.0, 2, 0, 0}, {-1.0, 2, 0, 0}};
  const std::vector<float> row_logp(8);
  MetricSums sums;
  (*dpo)->AddEvalMetrics({&batch, &scores, &row_logp, &ref}, examples, &sums);
  const auto m = sums.Means();
  EXPECT_DOUBLE_EQ(m.at("ranking/idealized_accuracy"), 0.5);
  // Pair 0: ideal 0, actual 1; pair 1: ideal 1, actual 0.
  EXPECT_DOUBLE_EQ(m.at("ranking/alignment_gap"), 0.0);
  examples[0].preference_fraction = 0.95f;  // log(19) > 2: ranked
  sums.Clear();
  (*dpo)->AddEvalMetrics({&batch, &scores, &row_logp, &ref}, examples, &sums);
  EXPECT_DOUBLE_EQ(sums.Means().at("ranking/idealized_accuracy"), 1.0);
  EXPECT_DOUBLE_EQ(sums.Means().at("ranking/alignment_gap"), 0.5);
}

TEST(Dpo, RejectsBadConfig) {
  DpoConfig config;
  config.set_beta(0.0f);
  EXPECT_FALSE(DpoObjective::Create(config, 4).ok());
  config.set_beta(0.1f);
  config.add_loss_type(DpoConfig::ROBUST);
  config.set_label_smoothing(0.5f);
  auto s = DpoObjective::Create(config, 4);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("label_smoothing"), std::string::npos);
}

}  // namespace
}  // namespace prefopt::objectives
