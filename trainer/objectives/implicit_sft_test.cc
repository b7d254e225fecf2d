// Implicit-reward SFT by the properties docs/objectives.md §3 states: φ′ is the
// derivative of φ, TOTAL_VARIATION is β × SFT, at π = π_ref every divergence
// pushes like (a multiple of) SFT, Pearson's weight vanishes at r = 2, and
// clamping keeps everything finite and is counted.
#include "trainer/objectives/implicit_sft.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "trainer/objectives/sft.h"

namespace prefopt::objectives {
namespace {

constexpr Divergence kAll[] = {
    Divergence::kTotalVariation,   Divergence::kPearsonChi2,
    Divergence::kNeymanChi2,       Divergence::kKl,
    Divergence::kSquaredHellinger, Divergence::kJensenShannon};

SequenceScores ScoresOf(const std::vector<float>& logp) {
  SequenceScores s;
  for (float x : logp) s.logp += x;
  s.tokens = static_cast<int>(logp.size());
  return s;
}

ImplicitSftObjective Make(Divergence d, Granularity g, double beta) {
  ImplicitSftOptions options;
  options.divergence = d;
  options.granularity = g;
  options.beta = beta;
  auto o = ImplicitSftObjective::Create(options);
  EXPECT_TRUE(o.ok()) << o.status();
  return *o;
}

TEST(ImplicitSft, PhiPrimeMatchesFiniteDifferences) {
  for (Divergence d : kAll) {
    // Points inside every domain (r > −ln 2 + margin for Jensen-Shannon).
    for (double r : {-0.6, -0.3, -0.01, 0.0, 0.2, 1.0, 2.5}) {
      const double h = 1e-6;
      const PhiValue v = EvaluatePhi(d, r, 1e-2);
      ASSERT_FALSE(v.clamped) << static_cast<int>(d) << " " << r;
      const double fd =
          (EvaluatePhi(d, r + h, 1e-2).phi - EvaluatePhi(d, r - h, 1e-2).phi) /
          (2 * h);
      EXPECT_NEAR(v.dphi, fd, 1e-7 * std::max(1.0, std::fabs(fd)))
          << static_cast<int>(d) << " at r = " << r;
    }
  }
}

TEST(ImplicitSft, PhiValuesAtOneMatchTheTable) {
  // −φ(1) from docs/objectives.md §3's loss column.
  EXPECT_NEAR(-EvaluatePhi(Divergence::kTotalVariation, 1, 0.01).phi, -1,
              1e-15);
  EXPECT_NEAR(-EvaluatePhi(Divergence::kPearsonChi2, 1, 0.01).phi, -0.75,
              1e-15);
  EXPECT_NEAR(-EvaluatePhi(Divergence::kNeymanChi2, 1, 0.01).phi,
              2 - 2 * std::sqrt(2.0), 1e-15);
  EXPECT_NEAR(-EvaluatePhi(Divergence::kKl, 1, 0.01).phi, std::exp(-1.0),
              1e-15);
  EXPECT_NEAR(-EvaluatePhi(Divergence::kSquaredHellinger, 1, 0.01).phi, -0.5,
              1e-15);
  EXPECT_NEAR(-EvaluatePhi(Divergence::kJensenShannon, 1, 0.01).phi,
              -std::log(2 - std::exp(-1.0)), 1e-15);
}

TEST(ImplicitSft, PearsonWeightVanishesAtTwo) {
  EXPECT_EQ(EvaluatePhi(Divergence::kPearsonChi2, 2.0, 0.01).dphi, 0.0);
  EXPECT_GT(EvaluatePhi(Divergence::kPearsonChi2, 1.9, 0.01).dphi, 0.0);
  EXPECT_LT(EvaluatePhi(Divergence::kPearsonChi2, 2.1, 0.01).dphi, 0.0);
  // Through the objective: a sequence with r = βΔ = 2 gets no gradient.
  const ImplicitSftObjective isft =
      Make(Divergence::kPearsonChi2, Granularity::kSequence, 0.5);
  const std::vector<float> logp = {-1.0f, -2.0f};  // L = −3, L̃ = −7: Δ = 4
  MetricSums sums;
  std::vector<float> coef;
  isft.Sequence(ScoresOf(logp), logp, -7.0, {}, 1, &sums, &coef);
  EXPECT_EQ(coef, std::vector<float>(2, 0.0f));
  EXPECT_EQ(sums.Means()["isft/weight"], 0.0);
}

// Two sequences, 8 tokens: powers of two, so the normalizations compare
// exactly.
const std::vector<std::vector<float>> kLogp = {
    {-0.5f, -1.25f, -3.0f, -0.125f, -2.0f}, {-4.0f, -0.75f, -1.5f}};

TEST(ImplicitSft, TotalVariationIsBetaTimesSft) {
  const double beta = 0.3;
  for (Granularity g : {Granularity::kSequence, Granularity::kToken}) {
    const ImplicitSftObjective tv = Make(Divergence::kTotalVariation, g, beta);
    MetricSums tv_sums, sft_sums;
    std::vector<float> tv_coef, sft_coef;
    for (const std::vector<float>& logp : kLogp) {
      const std::vector<float> zeros(logp.size(), 0.0f);
      // With L̃ = 0 the loss is β × SFT's summed NLL.
      const double tv_loss =
          tv.Sequence(ScoresOf(logp), logp, 0.0, zeros, 2, &tv_sums, &tv_coef);
      const double sft_loss =
          SftSequence(ScoresOf(logp), 8, &sft_sums, &sft_coef);
      if (g == Granularity::kSequence) {
        EXPECT_EQ(tv_loss, beta * sft_loss);
      } else {
        EXPECT_NEAR(tv_loss, beta * sft_loss, 1e-15);
      }
    }
    // G_t = β / global_sequences vs 1 / global_tokens: the same direction,
    // scaled by β·(global tokens / global sequences).
    ASSERT_EQ(tv_coef.size(), sft_coef.size());
    for (size_t t = 0; t < tv_coef.size(); ++t) {
      EXPECT_EQ(tv_coef[t] * 2, static_cast<float>(beta * sft_coef[t] * 8));
    }
  }
}

TEST(ImplicitSft, TotalVariationGranularitiesAgree) {
  const ImplicitSftObjective seq =
      Make(Divergence::kTotalVariation, Granularity::kSequence, 0.2);
  const ImplicitSftObjective tok =
      Make(Divergence::kTotalVariation, Granularity::kToken, 0.2);
  const std::vector<float> ref = {-0.7f, -1.0f, -2.5f, -0.5f, -1.0f};
  double ref_sum = 0;
  for (float x : ref) ref_sum += x;
  MetricSums a, b;
  std::vector<float> ca, cb;
  const std::vector<float>& logp = kLogp[0];
  EXPECT_NEAR(seq.Sequence(ScoresOf(logp), logp, ref_sum, ref, 3, &a, &ca),
              tok.Sequence(ScoresOf(logp), logp, ref_sum, ref, 3, &b, &cb),
              1e-12);
  EXPECT_EQ(ca, cb);
  EXPECT_NEAR(a.Means()["isft/reward"], b.Means()["isft/reward"], 1e-12);
}

TEST(ImplicitSft, AtTheReferenceEveryDivergencePushesLikeSft) {
  // π = π_ref: ℓ_t = ℓ̃_t, r = 0, and G_t = β φ′(0) / global_sequences for
  // every token, with φ′(0) = 1 for every divergence (KL's loss is exp(−r),
  // not the conjugate's exp(−(r+1)), whose weight there would be β/e).
  const double beta = 0.1;
  for (Divergence d : kAll) {
    EXPECT_NEAR(EvaluatePhi(d, 0.0, 0.01).dphi, 1.0, 1e-15);
    for (Granularity g : {Granularity::kSequence, Granularity::kToken}) {
      const ImplicitSftObjective isft = Make(d, g, beta);
      MetricSums sums, sft_sums;
      std::vector<float> coef, sft_coef;
      for (const std::vector<float>& logp : kLogp) {
        const SequenceScores scores = ScoresOf(logp);
        isft.Sequence(scores, logp, scores.logp, logp, 2, &sums, &coef);
        SftSequence(scores, 8, &sft_sums, &sft_coef);
      }
      for (size_t t = 0; t < coef.size(); ++t) {
        EXPECT_FLOAT_EQ(coef[t] * 2, beta * sft_coef[t] * 8)
            << static_cast<int>(d) << " token " << t;
      }
      EXPECT_EQ(sums.Means()["isft/reward"], 0.0);
    }
  }
}

TEST(ImplicitSft, ClampsOutsideTheDomainAndCountsIt) {
  // Δ = −10, β = 0.5: r = −5, outside every bounded domain.
  const std::vector<float> logp = {-6.0f, -6.0f};
  for (Divergence d : kAll) {
    for (Granularity g : {Granularity::kSequence, Granularity::kToken}) {
      const ImplicitSftObjective isft = Make(d, g, 0.5);
      const std::vector<float> ref = {-1.0f, -1.0f};
      MetricSums sums;
      std::vector<float> coef;
      const double loss =
          isft.Sequence(ScoresOf(logp), logp, -2.0, ref, 1, &sums, &coef);
      EXPECT_TRUE(std::isfinite(loss));
      for (float c : coef) EXPECT_TRUE(std::isfinite(c));
      const bool bounded = d == Divergence::kNeymanChi2 ||
                           d == Divergence::kSquaredHellinger ||
                           d == Divergence::kJensenShannon;
      EXPECT_EQ(sums.Means()["isft/clamped"], bounded ? 1.0 : 0.0)
          << static_cast<int>(d);
    }
  }
  // At the edge: φ, φ′ of r_min + margin, e.g. Neyman's 1/√margin.
  const PhiValue v = EvaluatePhi(Divergence::kNeymanChi2, -3.0, 0.04);
  EXPECT_TRUE(v.clamped);
  EXPECT_NEAR(v.dphi, 5.0, 1e-12);
  EXPECT_NEAR(v.phi, 2 * 0.2 - 2, 1e-12);
  // KL's exponent stops at kKlMaxExponent.
  const PhiValue kl = EvaluatePhi(Divergence::kKl, -1000.0, 0.01);
  EXPECT_TRUE(kl.clamped);
  EXPECT_NEAR(kl.dphi, std::exp(kKlMaxExponent), 1e-3);
}

TEST(ImplicitSft, Metrics) {
  const ImplicitSftObjective isft =
      Make(Divergence::kSquaredHellinger, Granularity::kSequence, 0.25);
  // L = −4, L̃ = −6: r = 0.5, w = β / 1.5².
  const std::vector<float> logp = {-1.0f, -3.0f};
  SequenceScores scores = ScoresOf(logp);
  scores.correct = 1;
  MetricSums sums;
  std::vector<float> coef;
  const double loss = isft.Sequence(scores, logp, -6.0, {}, 4, &sums, &coef);
  EXPECT_NEAR(loss, -0.5 / 1.5, 1e-15);
  const double w = 0.25 / (1.5 * 1.5);
  EXPECT_EQ(coef, std::vector<float>(2, static_cast<float>(w / 4)));
  auto m = sums.Means();
  EXPECT_NEAR(m["loss"], loss, 1e-15);
  EXPECT_NEAR(m["isft/reward"], 0.5, 1e-15);
  EXPECT_NEAR(m["isft/weight"], w, 1e-15);
  EXPECT_EQ(m["isft/clamped"], 0.0);
  EXPECT_EQ(m["logps/policy"], -4.0);
  EXPECT_EQ(m["logps/reference"], -6.0);
  EXPECT_EQ(m["sft/loss"], 2.0);
  EXPECT_EQ(m["mean_token_accuracy"], 0.5);
}

TEST(ImplicitSft, RejectsBadOptions) {
  ImplicitSftOptions options;
  options.beta = 0;
  auto s = ImplicitSftObjective::Create(options);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("objective.implicit_sft.beta"),
            std::string::npos);
  options.beta = 0.1;
  options.domain_margin = 0;
  EXPECT_FALSE(ImplicitSftObjective::Create(options).ok());
  options.domain_margin = 0.7;
  EXPECT_FALSE(ImplicitSftObjective::Create(options).ok());
}

}  // namespace
}  // namespace prefopt::objectives
