#include "trainer/objectives/prior.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/objective_math.h"
#include "trainer/objectives/length_check.h"

namespace prefopt::objectives {

std::vector<double> PriorTokenWeights(absl::Span<const float> ref_logp,
                                      double alpha, double weight_sum_floor) {
  std::vector<double> w(ref_logp.size());
  double sum = 0;
  for (size_t t = 0; t < w.size(); ++t) {
    // The formula the device path runs too (kernels/objective_math.h).
    w[t] = kernels::objective_math::PriorTokenWeight(ref_logp[t], alpha);
    sum += w[t];
  }
  const double scale =
      static_cast<double>(w.size()) / std::max(sum, weight_sum_floor);
  for (double& x : w) x *= scale;
  return w;
}

absl::StatusOr<PriorObjective> PriorObjective::Create(
    const PriorOptions& options) {
  if (!(options.alpha >= 0) || !std::isfinite(options.alpha)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.prior.alpha: must be a finite number >= 0, got ",
        options.alpha));
  }
  if (!(options.weight_sum_floor > 0) ||
      !std::isfinite(options.weight_sum_floor)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.prior.weight_sum_floor: must be a finite number > 0, got ",
        options.weight_sum_floor));
  }
  return PriorObjective(options);
}

double PriorObjective::Sequence(const SequenceScores& scores,
                                absl::Span<const float> logp,
                                absl::Span<const float> ref_logp,
                                double global_tokens, MetricSums* sums,
                                std::vector<float>* coef) const {
  const size_t k = logp.size();
  CheckSameLength("PriorObjective::Sequence", "scores", k, scores.tokens);
  CheckSameLength("PriorObjective::Sequence", "ref_logp", k, ref_logp.size());
  if (k == 0) return 0.0;
  const std::vector<double> w =
      PriorTokenWeights(ref_logp, options_.alpha, options_.weight_sum_floor);
  const double inv_tokens = 1.0 / global_tokens;
  double loss = 0, nll = 0, w_max = 0, entropy = 0;
  for (size_t t = 0; t < k; ++t) {
    loss -= w[t] * logp[t];
    nll -= logp[t];
    w_max = std::max(w_max, w[t]);
    const double q = w[t] / static_cast<double>(k);
    if (q > 0) entropy -= q * std::log(q);
    coef->push_back(static_cast<float>(w[t] * inv_tokens));
  }
  sums->Add("loss", loss, k);
  sums->Add("prior/loss", loss, k);
  sums->Add("sft/loss", nll, k);
  sums->Add("mean_token_accuracy", scores.correct, k);
  sums->Add("prior/weight_max", w_max);
  sums->Add("prior/weight_entropy", entropy);
  return loss;
}

}  // namespace prefopt::objectives
