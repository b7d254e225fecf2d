#include "trainer/objectives/implicit_sft.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "trainer/objectives/length_check.h"

namespace prefopt::objectives {

PhiValue EvaluatePhi(Divergence divergence, double r, double domain_margin) {
  // Lowest r kept, or -inf where φ is defined everywhere.
  double r_min = -HUGE_VAL;
  switch (divergence) {
    case Divergence::kNeymanChi2:
    case Divergence::kSquaredHellinger:
      r_min = -1.0 + domain_margin;
      break;
    case Divergence::kJensenShannon:
      r_min = -std::log(2.0) + domain_margin;
      break;
    case Divergence::kKl:
      r_min = -kKlMaxExponent;
      break;
    case Divergence::kTotalVariation:
    case Divergence::kPearsonChi2:
      break;
  }
  PhiValue v;
  if (r < r_min) {
    r = r_min;
    v.clamped = true;
  }
  switch (divergence) {
    case Divergence::kTotalVariation:
      v.phi = r;
      v.dphi = 1.0;
      break;
    case Divergence::kPearsonChi2:
      v.phi = r - 0.25 * r * r;
      v.dphi = 1.0 - 0.5 * r;
      break;
    case Divergence::kNeymanChi2: {
      const double s = std::sqrt(1.0 + r);
      v.phi = 2.0 * s - 2.0;
      v.dphi = 1.0 / s;
      break;
    }
    case Divergence::kKl: {
      // The convex conjugate's exp(−(r+1)) scaled by e: the minimizer is the
      // same, and the weight at π = π_ref is β, as for the other divergences.
      const double e = std::exp(-r);
      v.phi = -e;
      v.dphi = e;
      break;
    }
    case Divergence::kSquaredHellinger: {
      const double u = 1.0 + r;
      v.phi = r / u;
      v.dphi = 1.0 / (u * u);
      break;
    }
    case Divergence::kJensenShannon: {
      // 2 − e^{−r} = 1 − expm1(−r): no cancellation for small |r|.
      v.phi = std::log1p(-std::expm1(-r));
      // e^{−r} / (2 − e^{−r}) = 1 / (2e^r − 1).
      v.dphi = 1.0 / (2.0 * std::exp(r) - 1.0);
      break;
    }
  }
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
