// DPO family loss derivatives against central finite differences of the loss
// itself, for every loss type, the MPO mixture, every f-divergence, LD-DPO and
// WPO's weighting, and the closed forms of docs/objectives.md §1 at chosen
// points.
#include "trainer/objectives/dpo.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace prefopt::objectives {
namespace {

// A micro-batch of three pairs with response lengths (4, 7), (5, 2), (3, 3):
// policy and reference log-probs per token, and WPO's log Σ p² per token. The
// values are multiples of 2^-6, so that a step of 2^-10 is exact in float.
struct Batch {
  std::vector<int> examples = {0, 1, 2};
  std::vector<SequenceScores> scores;
  std::vector<float> row;
  std::vector<float> log_sum_sq;
  ReferenceValues ref;

  Batch() {
    const int lengths[6] = {4, 7, 5, 2, 3, 3};
    int64_t at = 0;
    for (int s = 0; s < 6; ++s) {
      if (s % 2 == 0) ref.first_response.push_back(s);
      ref.token_offset.push_back(at);
      double ref_sum = 0;
      for (int t = 0; t < lengths[s]; ++t, ++at) {
        row.push_back(-(0.25f + static_cast<float>((at * 37) % 23) / 16.0f));
        ref.token_logp.push_back(
            -(0.5f + static_cast<float>((at * 11) % 19) / 16.0f));
        log_sum_sq.push_back(
            -(1.0f + static_cast<float>((at * 5) % 13) / 64.0f));
        ref_sum += ref.token_logp.back();
      }
      ref.sequence_logp.push_back(ref_sum);
      scores.push_back({0, lengths[s], 0.5 * lengths[s], s % 3});
    }
  }
  // The view, with each sequence's L recomputed from `row`.
  MicroBatchView View() {
    int64_t at = 0;
    for (SequenceScores& s : scores) {
      s.logp = 0;
      for (int t = 0; t < s.tokens; ++t) s.logp += row[at++];
    }
    return {&examples, &scores, &row, &ref, &log_sum_sq};
  }
};

struct GradientCase {
  const char* name;
  std::vector<DpoConfig::LossType> types;
  std::vector<float> weights;
  double eps = 0;
  DpoConfig::FDivergenceType divergence = DpoConfig::REVERSE_KL;
  float alpha = 0.5f;
  float ld_alpha = -1;  // < 0: unset
  bool weighting = false;
};

void PrintTo(const GradientCase& c, std::ostream* os) { *os << c.name; }

DpoConfig ConfigFor(const GradientCase& c) {
  DpoConfig config;
  config.set_beta(0.3f);
  for (DpoConfig::LossType t : c.types) config.add_loss_type(t);
  for (float w : c.weights) config.add_loss_weights(w);
  config.set_label_smoothing(static_cast<float>(c.eps));
  config.set_f_divergence_type(c.divergence);
  config.set_f_alpha_divergence_coef(c.alpha);
  if (c.ld_alpha >= 0) config.set_ld_alpha(c.ld_alpha);
  config.set_use_weighting(c.weighting);
  config.set_discopop_tau(0.5f);
  return config;
}

class DpoGradient : public ::testing::TestWithParam<GradientCase> {};

// ∂loss/∂ℓ_t of every token against central differences of Loss itself. WPO's
// weights are held fixed by moving log Σ p² with ℓ_t (TRL detaches them).
TEST_P(DpoGradient, MatchesFiniteDifferences) {
  auto dpo = DpoObjective::Create(ConfigFor(GetParam()), 10);
  ASSERT_TRUE(dpo.ok()) << dpo.status();
  Batch batch;
  MetricSums sums;
  std::vector<double> grad;
  const double loss = (*dpo)->Loss(batch.View(), &grad, &sums);
  ASSERT_TRUE(std::isfinite(loss));
  EXPECT_NEAR(sums.Means()["loss"] * 3, loss, 1e-9 * std::abs(loss));
  ASSERT_EQ(grad.size(), batch.row.size());
  const float h = 1.0f / 1024;
  double largest = 0;
  for (size_t t = 0; t < batch.row.size(); ++t) {
    auto loss_at = [&](float step) {
      Batch moved = batch;
      moved.row[t] += step;
      moved.log_sum_sq[t] += step;
      std::vector<double> unused_grad;
      MetricSums unused;
      return (*dpo)->Loss(moved.View(), &unused_grad, &unused);
    };
    const double fd = (loss_at(h) - loss_at(-h)) / (2.0 * h);
    EXPECT_NEAR(grad[t], fd, 1e-5 * std::max(1.0, std::abs(fd)))
        << "token " << t;
    largest = std::max(largest, std::abs(grad[t]));
  }
  EXPECT_GT(largest, 1e-3) << "a gradient that vanishes everywhere";
}

INSTANTIATE_TEST_SUITE_P(
    AllTypes, DpoGradient,
    ::testing::Values(
        GradientCase{"sigmoid", {DpoConfig::SIGMOID}, {}},
        GradientCase{"cdpo", {DpoConfig::SIGMOID}, {}, 0.2},
        GradientCase{"ipo", {DpoConfig::IPO}, {}},
        GradientCase{"hinge", {DpoConfig::HINGE}, {}},
        GradientCase{"robust", {DpoConfig::ROBUST}, {}, 0.2},
        GradientCase{"exo_pair", {DpoConfig::EXO_PAIR}, {}, 0.1},
        GradientCase{"nca_pair", {DpoConfig::NCA_PAIR}, {}},
        GradientCase{"bco_pair", {DpoConfig::BCO_PAIR}, {}},
        GradientCase{"sppo_hard", {DpoConfig::SPPO_HARD}, {}},
        GradientCase{"aot", {DpoConfig::AOT}, {}, 0.1},
        GradientCase{"aot_unpaired", {DpoConfig::AOT_UNPAIRED}, {}, 0.1},
        GradientCase{"apo_zero", {DpoConfig::APO_ZERO}, {}},
        GradientCase{"apo_down", {DpoConfig::APO_DOWN}, {}},
        GradientCase{"discopop", {DpoConfig::DISCOPOP}, {}},
        GradientCase{"sft", {DpoConfig::SFT}, {}},
        GradientCase{"sigmoid_norm", {DpoConfig::SIGMOID_NORM}, {}},
        GradientCase{"mpo",
                     {DpoConfig::SIGMOID, DpoConfig::BCO_PAIR, DpoConfig::SFT},
                     {0.8f, 0.2f, 1.0f}},
        GradientCase{
            "forward_kl", {DpoConfig::SIGMOID}, {}, 0, DpoConfig::FORWARD_KL},
        GradientCase{
            "js", {DpoConfig::SIGMOID}, {}, 0, DpoConfig::JS_DIVERGENCE},
        GradientCase{
            "alpha", {DpoConfig::SIGMOID}, {}, 0, DpoConfig::ALPHA_DIVERGENCE},
        GradientCase{"alpha_ipo",
                     {DpoConfig::IPO},
                     {},
                     0,
                     DpoConfig::ALPHA_DIVERGENCE,
                     1.5f},
        GradientCase{"forward_kl_discopop",
                     {DpoConfig::DISCOPOP},
                     {},
                     0,
                     DpoConfig::FORWARD_KL},
        GradientCase{"ld_sigmoid",
                     {DpoConfig::SIGMOID},
                     {},
                     0,
                     DpoConfig::REVERSE_KL,
                     0.5f,
                     0.5f},
        GradientCase{"ld_aot_mpo",
                     {DpoConfig::AOT, DpoConfig::BCO_PAIR, DpoConfig::SFT},
                     {0.5f, 0.25f, 1.0f},
                     0,
                     DpoConfig::REVERSE_KL,
                     0.5f,
                     0.25f},
        GradientCase{"wpo_sigmoid",
                     {DpoConfig::SIGMOID},
                     {},
                     0,
                     DpoConfig::REVERSE_KL,
                     0.5f,
                     -1,
                     true},
        GradientCase{"wpo_ld_mixture_js",
                     {DpoConfig::SIGMOID, DpoConfig::BCO_PAIR},
                     {0.8f, 0.2f},
                     0,
                     DpoConfig::JS_DIVERGENCE,
                     0.5f,
                     0.75f,
                     true}),
    [](const ::testing::TestParamInfo<GradientCase>& info) {
      return std::string(info.param.name);
    });

TEST(Dpo, ClosedFormsOfTheRawRatioLosses) {
  // Pair 0 of Batch: policy L_w, L_l and reference L̃_w, L̃_l.
  Batch batch;
  double lw = 0, ll = 0;
  for (int t = 0; t < 4; ++t) lw += batch.row[t];
  for (int t = 4; t < 11; ++t) ll += batch.row[t];
  const double rw = lw - batch.ref.sequence_logp[0];
  const double rl = ll - batch.ref.sequence_logp[1];
  const double b = 0.3;
  auto sigmoid = [](double x) { return 1 / (1 + std::exp(-x)); };
  auto softplus = [](double x) { return std::log1p(std::exp(x)); };
  const struct {
    DpoConfig::LossType type;
    double want;
  } cases[] = {
      {DpoConfig::BCO_PAIR, softplus(-b * rw) + softplus(b * rl)},
      {DpoConfig::NCA_PAIR,
       softplus(-b * rw) + 0.5 * softplus(b * rw) + 0.5 * softplus(b * rl)},
      {DpoConfig::SPPO_HARD,
       (rw - 0.5 / b) * (rw - 0.5 / b) + (rl + 0.5 / b) * (rl + 0.5 / b)},
      {DpoConfig::APO_ZERO, 1 - sigmoid(b * rw) + sigmoid(b * rl)},
      {DpoConfig::APO_DOWN, sigmoid(b * rw) + 1 - sigmoid(b * (rw - rl))},
  };
  for (const auto& c : cases) {
    DpoConfig config;
    config.set_beta(0.3f);
    config.add_loss_type(c.type);
    auto dpo = DpoObjective::Create(config, 10);
    ASSERT_TRUE(dpo.ok());
    MetricSums sums;
    std::vector<double> grad;
    Batch one;
    one.examples = {0};
    one.scores.resize(2);
    one.row.resize(11);
    EXPECT_NEAR((*dpo)->Loss(one.View(), &grad, &sums), c.want, 1e-6)
        << DpoConfig::LossType_Name(c.type);
  }
}

TEST(Dpo, ClosedFormsAndMetrics) {
  DpoConfig config;
  config.set_beta(0.5f);
  auto dpo = DpoObjective::Create(config, 4);
  ASSERT_TRUE(dpo.ok());
  // Δ = (−3 − −4) − (−6 − −5) = 2, u = 1: loss = softplus(−1).
  const std::vector<int> examples = {0};
  std::vector<SequenceScores> scores = {{-3.0, 2, 8.0, 1}, {-6.0, 3, 6.0, 0}};
  const std::vector<float> row = {-1.0f, -2.0f, -2.0f, -2.0f, -2.0f};
  ReferenceValues ref;
  ref.first_response = {0};
  ref.sequence_logp = {-4.0, -5.0};
  MetricSums sums;
  std::vector<double> grad;
  const double loss =
      (*dpo)->Loss({&examples, &scores, &row, &ref}, &grad, &sums);
  EXPECT_NEAR(loss, std::log1p(std::exp(-1.0)), 1e-12);
  // ∂/∂ℓ_t = −β·σ(−u) on the chosen tokens, +β·σ(−u) on the rejected ones.
  const double d = 0.5 / (1 + std::exp(1.0));
  EXPECT_NEAR(grad[0], -d, 1e-12);
  EXPECT_NEAR(grad[4], d, 1e-12);
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
  DpoConfig hinge_config;
  hinge_config.set_beta(0.5f);
  hinge_config.add_loss_type(DpoConfig::HINGE);
  auto hinge = DpoObjective::Create(hinge_config, 4);
  ASSERT_TRUE(hinge.ok());
  scores = {{-1.0, 2, 0, 0}, {-9.0, 3, 0, 0}};
  EXPECT_EQ((*hinge)->Loss({&examples, &scores, &row, &ref}, &grad, &sums),
            0.0);
  EXPECT_EQ(grad[0], 0.0);
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
  const std::vector<int> examples = {0};
  const std::vector<SequenceScores> scores = {{-3.0, 2, 0, 0}, {-6.0, 4, 0, 0}};
  const std::vector<float> row(6, -1.5f);
  ReferenceValues ref;
  ref.first_response = {0};
  ref.sequence_logp = {-4.0, -5.0};
  MetricSums sums;
  std::vector<double> grad;
  EXPECT_NEAR((*ipo)->Loss({&examples, &scores, &row, &ref}, &grad, &sums),
              0.0625, 1e-12);
  // ∂loss/∂Δ̄ = 2·(0.75 − 1) = −0.5, divided by k.
  EXPECT_NEAR(grad[0], -0.25, 1e-12);
  EXPECT_NEAR(grad[2], 0.125, 1e-12);
  auto m = sums.Means();
  EXPECT_NEAR(m["rewards/chosen"], 0.5, 1e-12);
  EXPECT_NEAR(m["rewards/rejected"], -0.5, 1e-12);
  EXPECT_NEAR(m["rewards/margins"], 1.0, 1e-12);
  EXPECT_NEAR(m["logps/chosen"], -3.0, 1e-12);
  EXPECT_NEAR(m["logps/rejected"], -6.0, 1e-12);
}

// LD-DPO: the tokens past the shorter response count ld_alpha times, in the
// policy's and the reference's log-probs, and logps/* report the weighted
// sums as TRL does.
TEST(Dpo, LdDpoWeightsTheTail) {
  DpoConfig config;
  config.set_beta(1.0f);
  config.set_ld_alpha(0.5f);
  auto dpo = DpoObjective::Create(config, 4);
  ASSERT_TRUE(dpo.ok());
  EXPECT_EQ((*dpo)->reference_needs(), ReferenceNeeds::kTokenLogps);
  const std::vector<int> examples = {0};
  const std::vector<SequenceScores> scores = {{-6.0, 3, 0, 0}, {-2.0, 1, 0, 0}};
  const std::vector<float> row = {-1.0f, -2.0f, -3.0f, -2.0f};
  ReferenceValues ref;
  ref.first_response = {0};
  ref.sequence_logp = {-3.0, -1.0};
  ref.token_offset = {0, 3};
  ref.token_logp = {-1.0f, -1.0f, -1.0f, -1.0f};
  MetricSums sums;
  std::vector<double> grad;
  (*dpo)->Loss({&examples, &scores, &row, &ref}, &grad, &sums);
  auto m = sums.Means();
  // −1 + 0.5·(−2 − 3) = −3.5; the reference −1 + 0.5·(−2) = −2.
  EXPECT_NEAR(m["logps/chosen"], -3.5, 1e-12);
  EXPECT_NEAR(m["rewards/chosen"], -1.5, 1e-12);
  EXPECT_NEAR(grad[1], 0.5 * grad[0], 1e-12);
}

// ALPHA_DIVERGENCE as TRL: reverse KL at α ≈ 1, and the exponent (α−1)·r
// clamped at 80 with no gradient beyond.
TEST(Dpo, AlphaDivergenceFallbackAndClamp) {
  const std::vector<int> examples = {0};
  ReferenceValues ref;
  ref.first_response = {0};
  ref.sequence_logp = {-2.0, -60.0};
  const std::vector<float> row = {-5.0f, -5.0f};
  std::vector<SequenceScores> scores = {{-5.0, 1, 0, 0}, {-5.0, 1, 0, 0}};
  auto loss_of = [&](DpoConfig::FDivergenceType type, float alpha,
                     std::vector<double>* grad) {
    DpoConfig config;
    config.set_beta(0.5f);
    config.set_f_divergence_type(type);
    config.set_f_alpha_divergence_coef(alpha);
    auto dpo = DpoObjective::Create(config, 4);
    EXPECT_TRUE(dpo.ok());
    MetricSums sums;
    return (*dpo)->Loss({&examples, &scores, &row, &ref}, grad, &sums);
  };
  std::vector<double> g_reverse, g_one;
  EXPECT_EQ(loss_of(DpoConfig::ALPHA_DIVERGENCE, 1.0f + 1e-7f, &g_one),
            loss_of(DpoConfig::REVERSE_KL, 0.5f, &g_reverse));
  EXPECT_EQ(g_one, g_reverse);
  // r_l = 55, α = 3: (α−1)·r_l = 110 > 80, so s_l = (e^80 − 1)/2 and the
  // rejected token gets no gradient; r_w = −3 is not clamped.
  std::vector<double> grad;
  const double loss = loss_of(DpoConfig::ALPHA_DIVERGENCE, 3.0f, &grad);
  const double s_w = (std::exp(-6.0) - 1) / 2, s_l = (std::exp(80.0) - 1) / 2;
  const double u = 0.5 * (s_w - s_l);
  EXPECT_NEAR(loss, -u + std::log1p(std::exp(u)), 1e-9 * -u);
  // ∂loss/∂r_w = −β·σ(−u)·e^{(α−1)·r_w}, σ(−u) = 1 here.
  EXPECT_NEAR(grad[0], -0.5 * std::exp(-6.0), 1e-15);
  EXPECT_EQ(grad[1], 0.0);
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
  config.set_label_smoothing(0.0f);
  config.add_loss_weights(1.0f);
  config.add_loss_weights(2.0f);
  s = DpoObjective::Create(config, 4);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("loss_weights"), std::string::npos);
}

}  // namespace
}  // namespace prefopt::objectives
