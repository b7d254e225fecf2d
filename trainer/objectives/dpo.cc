#include "trainer/objectives/dpo.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "trainer/objectives/logistic.h"

namespace prefopt::objectives {

absl::StatusOr<std::unique_ptr<DpoObjective>> DpoObjective::Create(
    const DpoConfig& config, int vocab_size) {
  if (!(config.beta() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("objective.dpo.beta: must be > 0, got ", config.beta()));
  }
  const double eps = config.label_smoothing();
  if (eps < 0 || eps >= 0.5) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.dpo.label_smoothing: must be in [0, 0.5), got ", eps));
  }
  if (config.loss_type_size() > 1 ||
      (config.loss_type_size() == 1 &&
       config.loss_type(0) > DpoConfig::ROBUST)) {
    return absl::UnimplementedError(
        "objective.dpo.loss_type: only one of SIGMOID, IPO, HINGE, ROBUST so "
        "far (issue 14)");
  }
  return std::unique_ptr<DpoObjective>(new DpoObjective(
      config.beta(),
      config.loss_type_size() == 0 ? DpoConfig::SIGMOID : config.loss_type(0),
      eps, vocab_size));
}

DpoPairGradient DpoObjective::Pair(const SequenceScores& chosen,
                                   const SequenceScores& rejected,
                                   const PairReference& ref,
                                   MetricSums* sums) const {
  // The log-ratios and rewards use summed log-probs for every loss type; IPO's
  // loss alone works on the length-averaged difference Δ̄ (as TRL 1.x does).
  const bool averaged = loss_type_ == DpoConfig::IPO;
  const double kw = chosen.tokens, kl = rejected.tokens;
  const double nw = averaged ? kw : 1.0, nl = averaged ? kl : 1.0;
  const double chosen_ratio = chosen.logp - ref.chosen;
  const double rejected_ratio = rejected.logp - ref.rejected;
  const double delta = chosen_ratio / nw - rejected_ratio / nl;
  const double u = beta_ * delta;

  double loss = 0, dloss_ddelta = 0;
  switch (loss_type_) {
    case DpoConfig::SIGMOID:
      loss = (1 - eps_) * Softplus(-u) + eps_ * Softplus(u);
      dloss_ddelta = beta_ * (-(1 - eps_) * Sigmoid(-u) + eps_ * Sigmoid(u));
      break;
    case DpoConfig::HINGE:
      loss = std::max(0.0, 1.0 - u);
      dloss_ddelta = u < 1.0 ? -beta_ : 0.0;
      break;
    case DpoConfig::IPO: {
      const double d = delta - 1.0 / (2.0 * beta_);
      loss = d * d;
      dloss_ddelta = 2.0 * d;
      break;
    }
    case DpoConfig::ROBUST:
      loss = ((1 - eps_) * Softplus(-u) - eps_ * Softplus(u)) / (1 - 2 * eps_);
      dloss_ddelta = beta_ * (-(1 - eps_) * Sigmoid(-u) - eps_ * Sigmoid(u)) /
                     (1 - 2 * eps_);
      break;
    default:
      break;
  }

  const double reward_w = beta_ * chosen_ratio;
  const double reward_l = beta_ * rejected_ratio;
  sums->Add("loss", loss);
  sums->Add("rewards/chosen", reward_w);
  sums->Add("rewards/rejected", reward_l);
  sums->Add("rewards/margins", reward_w - reward_l);
  sums->Add("rewards/accuracies", reward_w > reward_l ? 1.0 : 0.0);
  sums->Add("logps/chosen", chosen.logp);
  sums->Add("logps/rejected", rejected.logp);
  sums->Add("logits/chosen", chosen.logit_sum, kw * vocab_);
  sums->Add("logits/rejected", rejected.logit_sum, kl * vocab_);
  // TRL 1.x: argmax == label over the chosen responses' tokens, pooled.
  sums->Add("mean_token_accuracy", chosen.correct, kw);
  sums->Add("ranking/accuracy", chosen.logp >= rejected.logp ? 1.0 : 0.0);
  sums->Add("ranking/accuracy_len_norm",
            chosen.logp / kw >= rejected.logp / kl ? 1.0 : 0.0);

  DpoPairGradient g;
  g.loss = loss;
  g.dloss_dlogp_chosen = dloss_ddelta / nw;
  g.dloss_dlogp_rejected = -dloss_ddelta / nl;
  return g;
}

bool IdealizedRankingCorrect(const PairReference& ref, double beta,
                             double alpha) {
  return ref.chosen - ref.rejected + std::log(alpha / (1.0 - alpha)) / beta >
         0.0;
}

void DpoObjective::AddEvalMetrics(const MicroBatchView& batch,
                                  const std::vector<data::Example>& examples,
                                  MetricSums* sums) const {
  const std::vector<SequenceScores>& scores = *batch.scores;
  for (size_t i = 0; i < batch.examples->size(); ++i) {
    const int ex = (*batch.examples)[i];
    const PairReference ref{batch.reference->SequenceLogp(ex, 0),
                            batch.reference->SequenceLogp(ex, 1)};
    const float fraction = examples[ex].preference_fraction;
    const double alpha = fraction > 0 ? fraction : kDefaultPreferenceFraction;
    const double ideal = IdealizedRankingCorrect(ref, beta_, alpha) ? 1.0 : 0.0;
    // The same test as Pair's ranking/accuracy.
    const double actual =
        scores[2 * i].logp >= scores[2 * i + 1].logp ? 1.0 : 0.0;
    sums->Add("ranking/idealized_accuracy", ideal);
    sums->Add("ranking/alignment_gap", ideal - actual);
  }
}

double DpoObjective::Denominator(const std::vector<data::Example>&,
                                 const std::vector<int>& batch) const {
  return static_cast<double>(batch.size());
}

void DpoObjective::Coefficients(const MicroBatchView& batch, double denominator,
                                std::vector<float>* coef,
                                MetricSums* sums) const {
  const std::vector<SequenceScores>& scores = *batch.scores;
  coef->clear();
  for (size_t i = 0; i < batch.examples->size(); ++i) {
    const int ex = (*batch.examples)[i];
    const PairReference ref{batch.reference->SequenceLogp(ex, 0),
                            batch.reference->SequenceLogp(ex, 1)};
    const DpoPairGradient g = Pair(scores[2 * i], scores[2 * i + 1], ref, sums);
    // G_t = −∂loss/∂ℓ_t (the kernel writes G_t·(softmax − onehot)).
    coef->insert(coef->end(), scores[2 * i].tokens,
                 static_cast<float>(-g.dloss_dlogp_chosen / denominator));
    coef->insert(coef->end(), scores[2 * i + 1].tokens,
                 static_cast<float>(-g.dloss_dlogp_rejected / denominator));
  }
}

}  // namespace prefopt::objectives
