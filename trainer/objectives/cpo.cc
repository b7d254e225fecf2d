#include "trainer/objectives/cpo.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/objective_math.h"
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

namespace {

kernels::CpoLoss DeviceCpoLoss(CpoConfig::LossType type) {
  switch (type) {
    case CpoConfig::HINGE:
      return kernels::CpoLoss::kHinge;
    case CpoConfig::IPO:
      return kernels::CpoLoss::kIpo;
    case CpoConfig::SIMPO:
    case CpoConfig::ALPHAPO:  // SIMPO with cpo_alpha 0
      return kernels::CpoLoss::kSimpo;
    default:
      return kernels::CpoLoss::kSigmoid;
  }
}

}  // namespace

CpoObjective::CpoObjective(const CpoConfig& config, int vocab_size)
    : vocab_(vocab_size) {
  params_.kind = kernels::ObjectiveKind::kCpo;
  params_.cpo_loss = DeviceCpoLoss(config.loss_type());
  params_.beta = config.beta();
  params_.label_smoothing = config.label_smoothing();
  params_.simpo_gamma = config.simpo_gamma();
  params_.reward_alpha = config.alpha();
  params_.nll_weight = config.cpo_alpha();
}

bool CpoObjective::DeviceParams(kernels::ObjectiveParams* params) const {
  *params = params_;
  return true;
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
  const double nll_weight = params_.nll_weight;
  coef->clear();
  for (size_t i = 0; i < batch.examples->size(); ++i) {
    const SequenceScores& chosen = scores[2 * i];
    const SequenceScores& rejected = scores[2 * i + 1];
    const kernels::objective_math::ReferenceFreePair g =
        kernels::objective_math::CpoPair(params_, chosen.logp, rejected.logp,
                                         chosen.tokens, rejected.tokens);
    AddPairMetrics(chosen, rejected, g.logp_chosen, g.logp_rejected,
                   g.reward_chosen, g.reward_rejected, vocab_, sums);
    // loss = mean over pairs + cpo_alpha · (Σ chosen NLL / chosen tokens);
    // each pair's share of the second term is scaled to the pair count so
    // that the "loss" metric's mean over pairs is the whole loss. TRL skips
    // the NLL when cpo_alpha is 0 and logs nll_loss 0.
    const double nll = -chosen.logp;
    const bool with_nll = nll_weight != 0;
    sums->Add(
        "loss",
        g.loss + (with_nll ? nll_weight * nll * denominator / tokens : 0));
    sums->Add("nll_loss", with_nll ? nll : 0.0,
              with_nll ? chosen.tokens * 1.0 : 1.0);
    // G_t = −∂loss/∂ℓ_t; the NLL adds −cpo_alpha/T to ∂loss/∂ℓ_t of every
    // chosen token.
    const double dnll = with_nll ? -nll_weight / tokens : 0.0;
    coef->insert(coef->end(), chosen.tokens,
                 static_cast<float>(-(g.dchosen / denominator + dnll)));
    coef->insert(coef->end(), rejected.tokens,
                 static_cast<float>(-g.drejected / denominator));
  }
}

}  // namespace prefopt::objectives
