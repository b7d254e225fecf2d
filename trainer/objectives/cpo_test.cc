// CPO's coefficients (preference term plus NLL term) against central finite
// differences of its loss for every loss type, and the closed forms of
// docs/objectives.md §8 at chosen points.
#include "trainer/objectives/cpo.h"

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace prefopt::objectives {
namespace {

// Three pairs: (chosen, rejected) sequence scores, sums over k tokens.
std::vector<SequenceScores> Scores() {
  return {{-6.0, 3, 1.5, 1}, {-9.0, 5, -2.0, 2}, {-14.0, 7, 0.5, 0},
          {-4.0, 2, 3.0, 1}, {-3.0, 4, 1.0, 0},  {-11.0, 6, -1.0, 3}};
}

struct Result {
  double loss;
  std::vector<float> coef;
  std::map<std::string, double> metrics;
};

Result Evaluate(const CpoObjective& cpo,
                const std::vector<SequenceScores>& scores) {
  const std::vector<int> examples = {0, 1, 2};
  std::vector<float> row_logp;  // unused by CPO
  MicroBatchView view{&examples, &scores, &row_logp, nullptr};
  view.token_denominator =
      scores[0].tokens + scores[2].tokens + scores[4].tokens;
  Result r;
  MetricSums sums;
  cpo.Coefficients(view, 3.0, &r.coef, &sums);
  r.metrics = sums.Means();
  r.loss = r.metrics["loss"];
  return r;
}

struct Case {
  CpoConfig::LossType type;
  double eps;
  double cpo_alpha;
  double alpha;
};

class CpoGradient : public ::testing::TestWithParam<Case> {};

TEST_P(CpoGradient, CoefficientsMatchFiniteDifferences) {
  CpoConfig config;
  config.set_beta(0.7f);
  config.set_loss_type(GetParam().type);
  config.set_label_smoothing(GetParam().eps);
  config.set_cpo_alpha(GetParam().cpo_alpha);
  config.set_simpo_gamma(0.4f);
  config.set_alpha(GetParam().alpha);
  auto cpo = CpoObjective::Create(config, 10);
  ASSERT_TRUE(cpo.ok()) << cpo.status();
  const std::vector<SequenceScores> scores = Scores();
  const Result base = Evaluate(**cpo, scores);
  size_t row = 0;
  for (size_t s = 0; s < scores.size(); ++s) {
    // One token's ℓ_t enters its sequence's sum with weight 1.
    const double h = 1e-5;
    std::vector<SequenceScores> plus = scores, minus = scores;
    plus[s].logp += h;
    minus[s].logp -= h;
    const double fd =
        (Evaluate(**cpo, plus).loss - Evaluate(**cpo, minus).loss) / (2 * h);
    for (int t = 0; t < scores[s].tokens; ++t, ++row) {
      // G_t = −∂loss/∂ℓ_t.
      EXPECT_NEAR(-base.coef[row], fd, 1e-6 * std::max(1.0, std::abs(fd)))
          << "sequence " << s;
    }
  }
  EXPECT_EQ(row, base.coef.size());
}

INSTANTIATE_TEST_SUITE_P(
    AllTypes, CpoGradient,
    ::testing::Values(Case{CpoConfig::SIGMOID, 0.0, 1.0, 0.0},
                      Case{CpoConfig::SIGMOID, 0.2, 0.5, 0.0},
                      Case{CpoConfig::HINGE, 0.0, 1.0, 0.0},
                      Case{CpoConfig::IPO, 0.0, 1.0, 0.0},
                      Case{CpoConfig::SIMPO, 0.0, 0.0, 0.0},
                      Case{CpoConfig::SIMPO, 0.1, 1.0, 0.0},
                      Case{CpoConfig::SIMPO, 0.0, 1.0, 0.3},
                      Case{CpoConfig::ALPHAPO, 0.0, 0.0, 0.25},
                      Case{CpoConfig::SIGMOID, 0.0, 1.0, -0.5}));

TEST(Cpo, SimpoClosedFormAndMetrics) {
  CpoConfig config;
  config.set_beta(2.0f);
  config.set_loss_type(CpoConfig::SIMPO);
  config.set_cpo_alpha(0);
  config.set_simpo_gamma(0.5f);
  auto cpo = CpoObjective::Create(config, 10);
  ASSERT_TRUE(cpo.ok());
  const std::vector<SequenceScores> scores = Scores();
  const Result r = Evaluate(**cpo, scores);
  double loss = 0, margin = 0;
  for (int i = 0; i < 3; ++i) {
    const double xw = scores[2 * i].logp / scores[2 * i].tokens;
    const double xl = scores[2 * i + 1].logp / scores[2 * i + 1].tokens;
    loss += std::log1p(std::exp(-(2.0 * (xw - xl) - 0.5))) / 3;
    margin += 2.0 * (xw - xl) / 3;
  }
  EXPECT_NEAR(r.loss, loss, 1e-12);
  EXPECT_NEAR(r.metrics.at("rewards/margins"), margin, 1e-12);
  EXPECT_EQ(r.metrics.at("nll_loss"), 0.0);  // TRL logs 0 without the term
  EXPECT_NEAR(r.metrics.at("logps/chosen"), (-6.0 / 3 - 14.0 / 7 - 3.0 / 4) / 3,
              1e-12);
  EXPECT_NEAR(r.metrics.at("logits/chosen"), (1.5 + 0.5 + 1.0) / (14 * 10),
              1e-12);
}

TEST(Cpo, SigmoidSumsLogProbsAndAddsTheTokenMeanNll) {
  CpoConfig config;
  config.set_beta(0.1f);
  config.set_cpo_alpha(1.0f);
  auto cpo = CpoObjective::Create(config, 10);
  ASSERT_TRUE(cpo.ok());
  const std::vector<SequenceScores> scores = Scores();
  const Result r = Evaluate(**cpo, scores);
  double pref = 0;
  for (int i = 0; i < 3; ++i) {
    const double h = scores[2 * i].logp - scores[2 * i + 1].logp;
    pref += std::log1p(std::exp(-0.1 * h)) / 3;
  }
  const double nll = (6.0 + 14.0 + 3.0) / 14;
  EXPECT_NEAR(r.metrics.at("nll_loss"), nll, 1e-12);
  EXPECT_NEAR(r.loss, pref + nll, 1e-7);
  EXPECT_NEAR(r.metrics.at("rewards/chosen"), 0.1 * (-6.0 - 14.0 - 3.0) / 3,
              1e-7);
}

TEST(Cpo, RefusesBadConfigs) {
  CpoConfig config;
  config.set_beta(0.1f);
  config.set_cpo_alpha(-1);
  EXPECT_FALSE(CpoObjective::Create(config, 10).ok());
  config.set_cpo_alpha(1);
  config.set_label_smoothing(0.5f);
  EXPECT_FALSE(CpoObjective::Create(config, 10).ok());
  config.set_label_smoothing(0);
  config.set_loss_type(CpoConfig::ALPHAPO);
  EXPECT_FALSE(CpoObjective::Create(config, 10).ok());
  config.set_cpo_alpha(0);
  EXPECT_TRUE(CpoObjective::Create(config, 10).ok());
}

}  // namespace
}  // namespace prefopt::objectives
