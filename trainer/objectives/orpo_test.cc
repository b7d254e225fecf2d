// ORPO's coefficients (NLL plus odds-ratio term) against central finite
// differences of its loss, and the closed forms of docs/objectives.md §8.
#include "trainer/objectives/orpo.h"

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/objective_math.h"

namespace prefopt::objectives {
namespace {

// Three pairs' (chosen, rejected) responses, then the three prompts' rows
// (OrpoObjective::scores_prompts()).
std::vector<SequenceScores> Scores() {
  return {{-6.0, 3, 1.5, 1}, {-9.0, 5, -2.0, 2}, {-14.0, 7, 0.5, 0},
          {-4.0, 2, 3.0, 1}, {-0.3, 4, 1.0, 0},  {-11.0, 6, -1.0, 3},
          {-8.0, 4, 0.0, 0}, {0.0, 0, 0.0, 0},   {-2.5, 1, 0.0, 0}};
}

struct Result {
  double loss;
  std::vector<float> coef;
  std::map<std::string, double> metrics;
};

Result Evaluate(const OrpoObjective& orpo,
                const std::vector<SequenceScores>& scores) {
  const std::vector<int> examples = {0, 1, 2};
  std::vector<float> row_logp;
  MicroBatchView view{&examples, &scores, &row_logp, nullptr};
  view.token_denominator = scores[0].tokens + scores[2].tokens +
                           scores[4].tokens + scores[6].tokens +
                           scores[7].tokens + scores[8].tokens;
  Result r;
  MetricSums sums;
  orpo.Coefficients(view, 3.0, &r.coef, &sums);
  r.metrics = sums.Means();
  r.loss = r.metrics["loss"];
  return r;
}

TEST(Orpo, CoefficientsMatchFiniteDifferences) {
  for (float beta : {0.1f, 1.5f}) {
    OrpoConfig config;
    config.set_beta(beta);
    auto orpo = OrpoObjective::Create(config, 10);
    ASSERT_TRUE(orpo.ok());
    const std::vector<SequenceScores> scores = Scores();
    const Result base = Evaluate(**orpo, scores);
    size_t row = 0;
    for (size_t s = 0; s < scores.size(); ++s) {
      const double h = 1e-6;
      std::vector<SequenceScores> plus = scores, minus = scores;
      plus[s].logp += h;
      minus[s].logp -= h;
      const double fd =
          (Evaluate(**orpo, plus).loss - Evaluate(**orpo, minus).loss) /
          (2 * h);
      for (int t = 0; t < scores[s].tokens; ++t, ++row) {
        EXPECT_NEAR(-base.coef[row], fd, 1e-6 * std::max(1.0, std::abs(fd)))
            << "beta " << beta << " sequence " << s;
      }
    }
    EXPECT_EQ(row, base.coef.size());
  }
}

TEST(Orpo, ClosedFormAndMetrics) {
  OrpoConfig config;
  config.set_beta(0.25f);
  auto orpo = OrpoObjective::Create(config, 10);
  ASSERT_TRUE(orpo.ok());
  const std::vector<SequenceScores> scores = Scores();
  const Result r = Evaluate(**orpo, scores);
  double ratio = 0, odds = 0;
  for (int i = 0; i < 3; ++i) {
    const double pw = std::exp(scores[2 * i].logp / scores[2 * i].tokens);
    const double pl =
        std::exp(scores[2 * i + 1].logp / scores[2 * i + 1].tokens);
    const double lo = std::log(pw / (1 - pw)) - std::log(pl / (1 - pl));
    odds += lo / 3;
    ratio += std::log(1 / (1 + std::exp(-lo))) / 3;
  }
  // Over the chosen responses' and the prompts' tokens.
  const double nll = (6.0 + 14.0 + 0.3 + 8.0 + 2.5) / 19;
  EXPECT_NEAR(r.metrics.at("log_odds_chosen"), odds, 1e-9);
  EXPECT_NEAR(r.metrics.at("log_odds_ratio"), ratio, 1e-9);
  EXPECT_NEAR(r.metrics.at("nll_loss"), nll, 1e-12);
  EXPECT_NEAR(r.loss, nll - 0.25 * ratio, 1e-9);
}

TEST(Orpo, Log1mExpIsAccurateOnBothBranches) {
  // expm1 in long double is exact enough on both sides of −ln 2.
  for (double x : {-40.0, -3.0, -0.7, -0.69, -1e-3, -1e-10}) {
    const double want =
        static_cast<double>(std::log(-std::expm1(static_cast<long double>(x))));
    EXPECT_NEAR(kernels::objective_math::Log1mExp(x), want,
                1e-14 * std::max(1.0, std::abs(want)))
        << x;
  }
}

}  // namespace
}  // namespace prefopt::objectives
