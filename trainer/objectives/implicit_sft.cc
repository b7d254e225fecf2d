#include "trainer/objectives/implicit_sft.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/objective_math.h"
#include "trainer/objectives/length_check.h"

namespace prefopt::objectives {

PhiValue EvaluatePhi(Divergence divergence, double r, double domain_margin) {
  // The formula the device path runs too (kernels/objective_math.h), whose
  // enum lists the divergences in the same order.
  static_assert(static_cast<int>(Divergence::kJensenShannon) ==
                static_cast<int>(kernels::ImplicitDivergence::kJensenShannon));
  PhiValue v;
  kernels::objective_math::EvaluatePhi(
      static_cast<kernels::ImplicitDivergence>(divergence), r, domain_margin,
      &v.phi, &v.dphi, &v.clamped);
  return v;
}

absl::StatusOr<ImplicitSftObjective> ImplicitSftObjective::Create(
    const ImplicitSftOptions& options) {
  if (!(options.beta > 0) || !std::isfinite(options.beta)) {
    return absl::InvalidArgumentError(
        absl::StrCat("objective.implicit_sft.beta: must be a finite number > "
                     "0, got ",
                     options.beta));
  }
  if (!(options.domain_margin > 0 && options.domain_margin <= 0.5)) {
    return absl::InvalidArgumentError(
        absl::StrCat("objective.implicit_sft.domain_margin: must be in (0, "
                     "0.5], got ",
                     options.domain_margin));
  }
  return ImplicitSftObjective(options);
}

double ImplicitSftObjective::Sequence(const SequenceScores& scores,
                                      absl::Span<const float> logp,
                                      double ref_logp_sum,
                                      absl::Span<const float> ref_logp,
                                      double global_sequences, MetricSums* sums,
                                      std::vector<float>* coef) const {
  const double beta = options_.beta;
  const double inv_seqs = 1.0 / global_sequences;
  const int k = scores.tokens;
  double loss = 0, ref_sum = ref_logp_sum;
  bool clamped = false;
  if (options_.granularity == Granularity::kSequence) {
    const PhiValue v =
        EvaluatePhi(options_.divergence, beta * (scores.logp - ref_logp_sum),
                    options_.domain_margin);
    loss = -v.phi;
    clamped = v.clamped;
    const double w = beta * v.dphi;
    sums->Add("isft/weight", w);
    coef->insert(coef->end(), k, static_cast<float>(w * inv_seqs));
  } else {
    CheckSameLength("ImplicitSftObjective::Sequence", "logp", k, logp.size());
    CheckSameLength("ImplicitSftObjective::Sequence", "ref_logp", k,
                    ref_logp.size());
    ref_sum = 0;
    double weight_sum = 0;
    for (int t = 0; t < k; ++t) {
      ref_sum += ref_logp[t];
      const PhiValue v =
          EvaluatePhi(options_.divergence,
                      beta * (static_cast<double>(logp[t]) - ref_logp[t]),
                      options_.domain_margin);
      loss -= v.phi;
      clamped |= v.clamped;
      const double w = beta * v.dphi;
      weight_sum += w;
      coef->push_back(static_cast<float>(w * inv_seqs));
    }
    sums->Add("isft/weight", weight_sum, k);
  }
  sums->Add("loss", loss);
  sums->Add("isft/reward", beta * (scores.logp - ref_sum));
  sums->Add("isft/clamped", clamped ? 1.0 : 0.0);
  sums->Add("logps/policy", scores.logp);
  sums->Add("logps/reference", ref_sum);
  sums->Add("sft/loss", -scores.logp, k);
  sums->Add("mean_token_accuracy", scores.correct, k);
  return loss;
}

}  // namespace prefopt::objectives
