#include "trainer/objectives/cpo.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "trainer/objectives/logistic.h"
#include "trainer/objectives/reference_free.h"

namespace prefopt::objectives {

absl::StatusOr<std::unique_ptr<CpoObjective>> CpoObjective::Create(
    const CpoConfig& config, int vocab_size) {
  if (!(config.beta() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("objective.cpo.beta: must be > 0, got ", config.beta()));
  }
  const double eps = config.label_smoothing();
  if (!(eps >= 0 && eps < 0.5)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.cpo.label_smoothing: must be in [0, 0.5), got ", eps));
  }
  if (!(config.cpo_alpha() >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.cpo.cpo_alpha: must be >= 0, got ", config.cpo_alpha()));
  }
  if (config.loss_type() == CpoConfig::ALPHAPO && config.cpo_alpha() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.cpo.cpo_alpha: loss_type ALPHAPO is SIMPO with cpo_alpha 0 "
        "(as TRL's CPOConfig sets it), got ",
        config.cpo_alpha(),
        "; use loss_type SIMPO with alpha to add an NLL term"));
  }
  if (!std::isfinite(config.simpo_gamma()) || !std::isfinite(config.alpha())) {
    return absl::InvalidArgumentError(
        "objective.cpo: simpo_gamma and alpha must be finite");
  }
  return std::unique_ptr<CpoObjective>(new CpoObjective(config, vocab_size));
}

CpoObjective::CpoObjective(const CpoConfig& config, int vocab_size)
    : beta_(config.beta()),
      loss_type_(config.loss_type() == CpoConfig::ALPHAPO ? CpoConfig::SIMPO
                                                          : config.loss_type()),
      eps_(config.label_smoothing()),
      nll_weight_(config.cpo_alpha()),
      gamma_(config.simpo_gamma()),
      alpha_(config.alpha()),
      vocab_(vocab_size) {}

ReferenceFreePairGradient CpoObjective::Pair(const SequenceScores& chosen,
                                             const SequenceScores& rejected,
                                             MetricSums* sums) const {
  // IPO and SimPO compare length-averaged log-probs, the others sums (TRL's
  // average_log_prob).
  const bool averaged =
      loss_type_ == CpoConfig::IPO || loss_type_ == CpoConfig::SIMPO;
  const double nw = averaged ? chosen.tokens : 1.0;
  const double nl = averaged ? rejected.tokens : 1.0;
  const double xw = chosen.logp / nw, xl = rejected.logp / nl;
  // AlphaPO's reward r(x) = (1 − e^(−αx))/α, r'(x) = e^(−αx); α = 0 is r = x.
  double rw = xw, rl = xl, drw = 1, drl = 1;
  if (alpha_ != 0) {
    rw = -std::expm1(-alpha_ * xw) / alpha_;
    rl = -std::expm1(-alpha_ * xl) / alpha_;
    drw = std::exp(-alpha_ * xw);
    drl = std::exp(-alpha_ * xl);
  }
  double h = rw - rl;
  if (loss_type_ == CpoConfig::SIMPO) h -= gamma_ / beta_;
  const double u = beta_ * h;

  double loss = 0, dloss_dh = 0;
  switch (loss_type_) {
    case CpoConfig::SIGMOID:
    case CpoConfig::SIMPO:
      loss = (1 - eps_) * Softplus(-u) + eps_ * Softplus(u);
      dloss_dh = beta_ * (-(1 - eps_) * Sigmoid(-u) + eps_ * Sigmoid(u));
      break;
    case CpoConfig::HINGE:
      // TRL ignores label_smoothing here, as for IPO.
      loss = std::max(0.0, 1.0 - u);
      dloss_dh = u < 1.0 ? -beta_ : 0.0;
      break;
    case CpoConfig::IPO: {
      const double d = h - 1.0 / (2.0 * beta_);
      loss = d * d;
      dloss_dh = 2.0 * d;
      break;
    }
    default:
      break;
  }
  AddPairMetrics(chosen, rejected, xw, xl, beta_ * rw, beta_ * rl, vocab_,
                 sums);
  ReferenceFreePairGradient g;
  g.loss = loss;
  g.dloss_dlogp_chosen = dloss_dh * drw / nw;
  g.dloss_dlogp_rejected = -dloss_dh * drl / nl;
  return g;
}

double CpoObjective::Denominator(const std::vector<data::Example>&,
                                 const std::vector<int>& batch) const {
  return static_cast<double>(batch.size());
}

double CpoObjective::TokenDenominator(
    const std::vector<data::Example>& examples,
    const std::vector<int>& batch) const {
  return ChosenResponseTokens(examples, batch);
}

void CpoObjective::Coefficients(const MicroBatchView& batch, double denominator,
                                std::vector<float>* coef,
                                MetricSums* sums) const {
  const std::vector<SequenceScores>& scores = *batch.scores;
  const double tokens = batch.token_denominator;
  coef->clear();
  for (size_t i = 0; i < batch.examples->size(); ++i) {
    const SequenceScores& chosen = scores[2 * i];
    const SequenceScores& rejected = scores[2 * i + 1];
    const ReferenceFreePairGradient g = Pair(chosen, rejected, sums);
    // loss = mean over pairs + cpo_alpha · (Σ chosen NLL / chosen tokens);
    // each pair's share of the second term is scaled to the pair count so
    // that the "loss" metric's mean over pairs is the whole loss. TRL skips
    // the NLL when cpo_alpha is 0 and logs nll_loss 0.
    const double nll = -chosen.logp;
    const bool with_nll = nll_weight_ != 0;
    sums->Add(
        "loss",
        g.loss + (with_nll ? nll_weight_ * nll * denominator / tokens : 0));
    sums->Add("nll_loss", with_nll ? nll : 0.0,
              with_nll ? chosen.tokens * 1.0 : 1.0);
    // G_t = −∂loss/∂ℓ_t; the NLL adds −cpo_alpha/T to ∂loss/∂ℓ_t of every
    // chosen token.
    const double dnll = with_nll ? -nll_weight_ / tokens : 0.0;
    coef->insert(
        coef->end(), chosen.tokens,
        static_cast<float>(-(g.dloss_dlogp_chosen / denominator + dnll)));
    coef->insert(coef->end(), rejected.tokens,
                 static_cast<float>(-g.dloss_dlogp_rejected / denominator));
  }
}

}  // namespace prefopt::objectives
