// KTO's coefficients (docs/objectives.md §9) against central finite
// differences of the loss Coefficients reports, for both loss types, both
// labels, a KL estimate above 0 and one clamped to 0, and non-default
// weights; the closed forms at chosen points; and the metrics.
#include "trainer/objectives/kto.h"

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace prefopt::objectives {
namespace {

double Sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

std::unique_ptr<KtoObjective> Make(KtoConfig::LossType type, double beta,
                                   double dw, double uw) {
  KtoConfig config;
  config.set_loss_type(type);
  config.set_beta(static_cast<float>(beta));
  config.set_desirable_weight(static_cast<float>(dw));
  config.set_undesirable_weight(static_cast<float>(uw));
  auto kto = KtoObjective::Create(config, 10);
  EXPECT_TRUE(kto.ok()) << kto.status();
  return *std::move(kto);
}

// Four examples: desirable, undesirable, desirable, undesirable; each with a
// completion (response 0) and a KL completion (response 1).
struct Fixture {
  std::vector<data::Example> dataset;
  std::vector<int> examples{0, 1, 2, 3};
  std::vector<SequenceScores> scores;     // completions
  std::vector<SequenceScores> kl_scores;  // KL completions
  ReferenceValues reference;
  std::vector<float> row_logp;

  explicit Fixture(double kl_shift) {
    const double logp[] = {-12.0, -7.5, -20.0, -3.0};
    const double ref[] = {-11.0, -9.0, -18.5, -3.5};
    const int tokens[] = {3, 5, 2, 4};
    for (int i = 0; i < 4; ++i) {
      data::Example ex;
      ex.label = i % 2 == 0;
      dataset.push_back(ex);
      scores.push_back({logp[i], tokens[i], 0.1 * (i + 1), 1});
      // KL log-ratios of kl_shift ± 1: mean kl_shift.
      kl_scores.push_back({-10.0 + kl_shift + (i % 2 ? 1.0 : -1.0), 2, 0, 0});
      reference.first_response.push_back(2 * i);
      reference.sequence_logp.push_back(ref[i]);
      reference.sequence_logp.push_back(-10.0);
      row_logp.insert(row_logp.end(), tokens[i], 0.0f);
    }
  }

  MetricSums Prepass(const KtoObjective& kto) const {
    MetricSums prepass;
    MicroBatchView view{&examples, &kl_scores, &row_logp, &reference};
    view.dataset = &dataset;
    kto.AddPrepass(view, &prepass);
    return prepass;
  }

  // The loss Coefficients reports (a mean over the 4 examples); fills coef.
  double Loss(const KtoObjective& kto, const MetricSums& prepass,
              std::vector<float>* coef, MetricSums* sums) const {
    MicroBatchView view{&examples, &scores, &row_logp, &reference};
    view.dataset = &dataset;
    view.prepass = &prepass;
    kto.Coefficients(view, 4.0, coef, sums);
    return sums->Means().at("loss");
  }
};

struct GradCase {
  KtoConfig::LossType type;
  double kl_shift;  // mean KL log-ratio: > 0, or < 0 (z₀ clamped to 0)
};

class KtoGradient : public ::testing::TestWithParam<GradCase> {};

TEST_P(KtoGradient, CoefficientsMatchFiniteDifferences) {
  const auto kto = Make(GetParam().type, 0.4, 1.33, 0.7);
  Fixture f(GetParam().kl_shift);
  const MetricSums prepass = f.Prepass(*kto);
  std::vector<float> coef;
  MetricSums sums;
  f.Loss(*kto, prepass, &coef, &sums);
  ASSERT_EQ(coef.size(), 14u);
  size_t row = 0;
  for (int i = 0; i < 4; ++i) {
    // z₀ is a constant of the batch: the loss is differentiated with the
    // pre-pass fixed, as TRL detaches it.
    const double h = 1e-5;
    auto loss_at = [&](double d) {
      Fixture g = f;
      g.scores[i].logp += d;
      std::vector<float> unused;
      MetricSums s;
      return g.Loss(*kto, prepass, &unused, &s);
    };
    const double fd = (loss_at(h) - loss_at(-h)) / (2 * h);
    // Every token of the completion has G_t = −∂loss/∂L.
    for (int t = 0; t < f.scores[i].tokens; ++t, ++row) {
      EXPECT_NEAR(coef[row], -fd, 1e-7) << "example " << i << " token " << t;
    }
    EXPECT_GT(std::abs(fd), 1e-4) << "example " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    LossTypes, KtoGradient,
    ::testing::Values(GradCase{KtoConfig::KTO, 1.7},
                      GradCase{KtoConfig::KTO, -0.8},
                      GradCase{KtoConfig::APO_ZERO_UNPAIRED, 1.7}));

TEST(Kto, ClosedFormsOfTheExampleLoss) {
  // Values a float holds exactly, as the config stores them.
  const double beta = 0.5, dw = 1.25, uw = 0.75, r = 0.9, z0 = 1.6;
  const auto kto = Make(KtoConfig::KTO, beta, dw, uw);
  const KtoExampleGradient d = kto->Example(true, r, z0);
  const KtoExampleGradient u = kto->Example(false, r, z0);
  // Ethayarajh et al. 2024, Eq. (7) as TRL writes it.
  EXPECT_NEAR(d.loss, dw * (1 - Sig(beta * (r - z0))), 1e-12);
  EXPECT_NEAR(u.loss, uw * (1 - Sig(beta * (z0 - r))), 1e-12);
  const double s = Sig(beta * (r - z0));
  EXPECT_NEAR(d.dloss_dlogp, -dw * beta * s * (1 - s), 1e-12);
  EXPECT_NEAR(u.dloss_dlogp, uw * beta * s * (1 - s), 1e-12);

  const auto apo = Make(KtoConfig::APO_ZERO_UNPAIRED, beta, dw, uw);
  // APO-zero ignores z₀.
  EXPECT_NEAR(apo->Example(true, r, z0).loss, dw * (1 - Sig(beta * r)), 1e-12);
  EXPECT_NEAR(apo->Example(false, r, z0).loss, uw * Sig(beta * r), 1e-12);
}

TEST(Kto, KlEstimateIsTheClampedMeanOfThePrepass) {
  const auto kto = Make(KtoConfig::KTO, 0.1, 1, 1);
  EXPECT_NEAR(kto->KlEstimate(nullptr), 0.0, 0);
  Fixture above(1.7), below(-0.8);
  const MetricSums p_above = above.Prepass(*kto);
  EXPECT_NEAR(kto->KlEstimate(&p_above), 1.7, 1e-12);
  const MetricSums p_below = below.Prepass(*kto);
  EXPECT_EQ(kto->KlEstimate(&p_below), 0.0);
  const auto apo = Make(KtoConfig::APO_ZERO_UNPAIRED, 0.1, 1, 1);
  EXPECT_EQ(apo->KlEstimate(&p_above), 0.0);
  EXPECT_TRUE(kto->has_prepass());
  EXPECT_FALSE(apo->has_prepass());
}

TEST(Kto, MetricsAreTrlsPerLabelMeans) {
  const double beta = 0.5;
  const auto kto = Make(KtoConfig::KTO, beta, 1, 1);
  Fixture f(1.7);
  const MetricSums prepass = f.Prepass(*kto);
  std::vector<float> coef;
  MetricSums sums;
  f.Loss(*kto, prepass, &coef, &sums);
  std::map<std::string, double> m = sums.Means();
  kto->FinishMetrics(sums, &m);
  // Examples 0 and 2 are desirable: logps -12, -20; log-ratios -1, -1.5.
  EXPECT_NEAR(m.at("logps/chosen"), -16.0, 1e-12);
  EXPECT_NEAR(m.at("rewards/chosen"), beta * -1.25, 1e-12);
  // Examples 1 and 3: logps -7.5, -3; log-ratios 1.5, 0.5.
  EXPECT_NEAR(m.at("logps/rejected"), -5.25, 1e-12);
  EXPECT_NEAR(m.at("rewards/rejected"), beta * 1.0, 1e-12);
  EXPECT_NEAR(m.at("rewards/margins"), beta * -2.25, 1e-12);
  // Pooled over tokens: (0.1 + 0.3) / ((3 + 2) · 10).
  EXPECT_NEAR(m.at("logits/chosen"), 0.4 / 50, 1e-12);
  EXPECT_NEAR(m.at("kl"), 1.7, 1e-12);

  // A batch without undesirable examples reports no rejected metrics and no
  // margin (TRL logs none), however the sums were split.
  Fixture only_desirable(1.7);
  only_desirable.examples = {0, 2};
  MetricSums s2;
  only_desirable.Loss(*kto, prepass, &coef, &s2);
  std::map<std::string, double> m2 = s2.Means();
  kto->FinishMetrics(s2, &m2);
  EXPECT_EQ(m2.count("rewards/rejected"), 0u);
  EXPECT_EQ(m2.count("logps/rejected"), 0u);
  EXPECT_EQ(m2.count("logits/rejected"), 0u);
  EXPECT_EQ(m2.count("rewards/margins"), 0u);
  EXPECT_EQ(m2.count("rewards/chosen"), 1u);
}

TEST(Kto, WeightWarningFollowsTrlsRanges) {
  // Balanced data: no advice, whatever the weights.
  EXPECT_EQ(KtoWeightWarning(1, 1, 50, 50), "");
  EXPECT_EQ(KtoWeightWarning(3, 1, 50, 50), "");
  // 100 desirable, 50 undesirable, weights 1: desirable_weight should be in
  // [0.5, 0.67] or undesirable_weight in [1.5, 2].
  const std::string warning = KtoWeightWarning(1, 1, 100, 50);
  EXPECT_NE(warning.find("desirable_weight in [0.5, 0.67]"), std::string::npos)
      << warning;
  EXPECT_NE(warning.find("undesirable_weight in [1.5, 2]"), std::string::npos)
      << warning;
  EXPECT_EQ(KtoWeightWarning(0.6, 1, 100, 50), "");
  EXPECT_EQ(KtoWeightWarning(1, 1.8, 100, 50), "");
}

TEST(Kto, CreateRejectsBadValues) {
  KtoConfig config;
  config.set_beta(0);
  EXPECT_FALSE(KtoObjective::Create(config, 10).ok());
  config.set_beta(0.1f);
  config.set_desirable_weight(-1);
  config.set_undesirable_weight(1);
  auto bad = KtoObjective::Create(config, 10);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("objective.kto.desirable_weight"),
            std::string::npos);
}

}  // namespace
}  // namespace prefopt::objectives
