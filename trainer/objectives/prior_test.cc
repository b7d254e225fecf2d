// PRIOR's weights and loss, and plain SFT: α = 0 is SFT bit for bit, the
// weights average 1 and keep their precision when the reference is nearly
// certain, and the metrics are what prior.h defines.
#include "trainer/objectives/prior.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "trainer/objectives/sft.h"

namespace prefopt::objectives {
namespace {

SequenceScores ScoresOf(const std::vector<float>& logp, int correct) {
  SequenceScores s;
  for (float x : logp) s.logp += x;
  s.tokens = static_cast<int>(logp.size());
  s.correct = correct;
  return s;
}

TEST(Sft, LossCoefficientsAndMetrics) {
  const std::vector<float> a = {-1.5f, -0.25f, -3.0f}, b = {-2.0f};
  MetricSums sums;
  std::vector<float> coef;
  EXPECT_DOUBLE_EQ(SftSequence(ScoresOf(a, 2), 8, &sums, &coef), 4.75);
  EXPECT_DOUBLE_EQ(SftSequence(ScoresOf(b, 0), 8, &sums, &coef), 2.0);
  EXPECT_EQ(coef, std::vector<float>(4, 0.125f));
  auto m = sums.Means();
  EXPECT_DOUBLE_EQ(m["loss"], 6.75 / 4);
  EXPECT_DOUBLE_EQ(m["mean_token_accuracy"], 0.5);
  EXPECT_EQ(m.size(), 2u);
}

TEST(Prior, AlphaZeroIsSftExactly) {
  PriorOptions options;
  options.alpha = 0;
  auto prior = PriorObjective::Create(options);
  ASSERT_TRUE(prior.ok()) << prior.status();
  const std::vector<std::vector<float>> logp = {
      {-0.3f, -2.7f, -1.1f, -5.25f}, {-0.01f, -7.5f}, {-3.3f}};
  const std::vector<std::vector<float>> ref = {
      {-0.1f, -4.0f, -0.0f, -9.0f}, {-1e-9f, -0.7f}, {-2.0f}};
  const double tokens = 7;
  MetricSums prior_sums, sft_sums;
  std::vector<float> prior_coef, sft_coef;
  for (size_t s = 0; s < logp.size(); ++s) {
    const SequenceScores scores = ScoresOf(logp[s], static_cast<int>(s));
    EXPECT_EQ(prior->Sequence(scores, logp[s], ref[s], tokens, &prior_sums,
                              &prior_coef),
              SftSequence(scores, tokens, &sft_sums, &sft_coef));
  }
  EXPECT_EQ(prior_coef, sft_coef);
  auto p = prior_sums.Means(), q = sft_sums.Means();
  EXPECT_EQ(p["loss"], q["loss"]);
  EXPECT_EQ(p["prior/loss"], q["loss"]);
  EXPECT_EQ(p["sft/loss"], q["loss"]);
  EXPECT_EQ(p["mean_token_accuracy"], q["mean_token_accuracy"]);
  EXPECT_EQ(p["prior/weight_max"], 1.0);
  // Uniform weights: ln k per sequence.
  EXPECT_NEAR(p["prior/weight_entropy"],
              (std::log(4.0) + std::log(2.0) + 0.0) / 3, 1e-12);
}

TEST(Prior, WeightsAverageOneAndFavorHardTokens) {
  const std::vector<float> ref = {-0.05f, -0.7f, -2.0f, -6.0f};
  for (double alpha : {0.5, 1.0, 2.0}) {
    const std::vector<double> w = PriorTokenWeights(ref, alpha, 1e-6);
    double sum = 0;
    for (double x : w) sum += x;
    EXPECT_NEAR(sum, 4.0, 1e-12) << alpha;
    for (size_t t = 1; t < w.size(); ++t) EXPECT_GT(w[t], w[t - 1]) << alpha;
    // Against the formula (1 − p̃)^α, normalized.
    double norm = 0;
    for (float x : ref) norm += std::pow(1 - std::exp(double{x}), alpha);
    for (size_t t = 0; t < w.size(); ++t) {
      EXPECT_NEAR(w[t],
                  4 * std::pow(1 - std::exp(double{ref[t]}), alpha) / norm,
                  1e-12);
    }
  }
}

TEST(Prior, NearlyCertainTokensKeepTheirPrecision) {
  // 1 − p̃ ≈ −ℓ̃ for tiny ℓ̃; 1 − exp(ℓ̃) would lose most digits of it.
  const std::vector<float> ref = {-1e-10f, -3e-10f};
  const std::vector<double> w = PriorTokenWeights(ref, 1.0, 1e-30);
  const double a = -double{ref[0]}, b = -double{ref[1]};
  EXPECT_NEAR(w[0], 2 * a / (a + b), 1e-9);
  EXPECT_NEAR(w[1], 2 * b / (a + b), 1e-9);
}

TEST(Prior, CertainReferenceHitsTheFloorWithoutNan) {
  PriorOptions options;
  auto prior = PriorObjective::Create(options);
  ASSERT_TRUE(prior.ok());
  const std::vector<float> logp = {-1.0f, -2.0f}, ref = {0.0f, 0.0f};
  MetricSums sums;
  std::vector<float> coef;
  EXPECT_EQ(prior->Sequence(ScoresOf(logp, 0), logp, ref, 2, &sums, &coef),
            0.0);
  EXPECT_EQ(coef, std::vector<float>(2, 0.0f));
  for (const auto& [name, value] : sums.Means()) {
    EXPECT_TRUE(std::isfinite(value)) << name;
  }
}

TEST(Prior, CoefficientsAndMetrics) {
  PriorOptions options;
  options.alpha = 1;
  auto prior = PriorObjective::Create(options);
  ASSERT_TRUE(prior.ok());
  // p̃ = 0.5 and 0.75: w = 0.5, 0.25 → ŵ = 4/3, 2/3.
  const std::vector<float> ref = {std::log(0.5f), std::log(0.75f)};
  const std::vector<float> logp = {-1.0f, -4.0f};
  MetricSums sums;
  std::vector<float> coef;
  const double loss =
      prior->Sequence(ScoresOf(logp, 1), logp, ref, 10, &sums, &coef);
  const double w0 = 2 * 0.5 / 0.75, w1 = 2 * 0.25 / 0.75;
  EXPECT_NEAR(loss, w0 * 1 + w1 * 4, 1e-6);
  ASSERT_EQ(coef.size(), 2u);
  EXPECT_NEAR(coef[0], w0 / 10, 1e-7);
  EXPECT_NEAR(coef[1], w1 / 10, 1e-7);
  auto m = sums.Means();
  EXPECT_NEAR(m["loss"], loss / 2, 1e-12);
  EXPECT_NEAR(m["sft/loss"], 2.5, 1e-12);
  EXPECT_NEAR(m["prior/weight_max"], w0, 1e-6);
  const double q0 = w0 / 2, q1 = w1 / 2;
  EXPECT_NEAR(m["prior/weight_entropy"],
              -(q0 * std::log(q0) + q1 * std::log(q1)), 1e-6);
  EXPECT_NEAR(m["mean_token_accuracy"], 0.5, 1e-12);
}

TEST(Prior, RejectsBadOptions) {
  PriorOptions options;
  options.alpha = -1;
  auto s = PriorObjective::Create(options);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("objective.prior.alpha"),
            std::string::npos);
  options.alpha = 1;
  options.weight_sum_floor = 0;
  EXPECT_FALSE(PriorObjective::Create(options).ok());
}

}  // namespace
}  // namespace prefopt::objectives
