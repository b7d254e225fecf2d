#include "trainer/objectives/sparsepo.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "trainer/objectives/length_check.h"
#include "trainer/objectives/logistic.h"

namespace prefopt::objectives {
namespace {

constexpr char kWhere[] = "SparsePoObjective::Pair";

double Sign(float m) { return m > 0 ? 1.0 : (m < 0 ? -1.0 : 0.0); }

// The per-response sums the loss and the metrics need.
struct ResponseSums {
  double masked_ratio = 0;  // U = Σ m^u r
  double masked_kl = 0;     // D = Σ m^d K
  double kl = 0;            // Σ K
  double logp = 0;          // Σ ℓ
  double l1_reward = 0;     // ‖m^u‖₁
  double l1_kl = 0;         // ‖m^d‖₁
  int zeros_reward = 0;     // tokens with m^u = 0
  int zeros_kl = 0;         // tokens with m^d = 0
  double sum_reward = 0;    // Σ m^u
  double sum_kl = 0;        // Σ m^d
};

ResponseSums Sum(const SparsePoResponse& r, absl::Span<const float> mask_kl) {
  const size_t k = r.logp.size();
  CheckSameLength(kWhere, "ref_logp", k, r.ref_logp.size());
  CheckSameLength(kWhere, "kl", k, r.kl.size());
  CheckSameLength(kWhere, "mask_reward", k, r.mask_reward.size());
  CheckSameLength(kWhere, "mask_kl", k, mask_kl.size());
  ResponseSums s;
  for (size_t t = 0; t < k; ++t) {
    const double ratio = static_cast<double>(r.logp[t]) - r.ref_logp[t];
    const float mu = r.mask_reward[t], md = mask_kl[t];
    s.masked_ratio += mu * ratio;
    s.masked_kl += md * static_cast<double>(r.kl[t]);
    s.kl += r.kl[t];
    s.logp += r.logp[t];
    s.l1_reward += std::fabs(mu);
    s.l1_kl += std::fabs(md);
    s.zeros_reward += mu == 0.0f;
    s.zeros_kl += md == 0.0f;
    s.sum_reward += mu;
    s.sum_kl += md;
  }
  return s;
}

}  // namespace

absl::StatusOr<SparsePoObjective> SparsePoObjective::Create(
    const SparsePoOptions& options, int vocab_size) {
  if (!(options.beta > 0) || !std::isfinite(options.beta)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.sparsepo.beta: must be a finite number > 0, got ",
        options.beta));
  }
  if (!(options.l1_reward >= 0) || !std::isfinite(options.l1_reward)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.sparsepo.l1_reward: must be a finite number >= 0, got ",
        options.l1_reward));
  }
  if (!(options.l1_kl >= 0) || !std::isfinite(options.l1_kl)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.sparsepo.l1_kl: must be a finite number >= 0, got ",
        options.l1_kl));
  }
  return SparsePoObjective(options, vocab_size);
}

double SparsePoObjective::Pair(const SparsePoResponse& chosen,
                               const SparsePoResponse& rejected,
                               double global_pairs, MetricSums* sums,
                               SparsePoGradients* grads) const {
  const bool common = options_.common_mask;
  const double beta = options_.beta;
  // A common mask is both masks, penalized once with the mean of the two
  // weights (c_u then stands for that mean and c_d is unused).
  const double c_u =
      common ? 0.5 * (options_.l1_reward + options_.l1_kl) : options_.l1_reward;
  const double c_d = options_.l1_kl;
  const absl::Span<const float> mask_kl_w =
      common ? chosen.mask_reward : chosen.mask_kl;
  const absl::Span<const float> mask_kl_l =
      common ? rejected.mask_reward : rejected.mask_kl;
  const ResponseSums w = Sum(chosen, mask_kl_w);
  const ResponseSums l = Sum(rejected, mask_kl_l);

  const double delta =
      (w.masked_ratio - l.masked_ratio) - (w.masked_kl - l.masked_kl);
  const double l1 =
      common ? c_u * (w.l1_reward + l.l1_reward)
             : c_u * (w.l1_reward + l.l1_reward) + c_d * (w.l1_kl + l.l1_kl);
  const double loss = Softplus(-beta * delta) + l1;
  const double g = -beta * Sigmoid(-beta * delta);
  const double inv_pairs = 1.0 / global_pairs;

  // sign = +1 for the chosen response, −1 for the rejected one: Δ contains
  // +U_w − D_w and −U_l + D_l.
  auto append = [&](const SparsePoResponse& r, absl::Span<const float> mask_kl,
                    double sign) {
    const double gs = g * sign;
    for (size_t t = 0; t < r.logp.size(); ++t) {
      const float mu = r.mask_reward[t], md = mask_kl[t];
      const double ratio = static_cast<double>(r.logp[t]) - r.ref_logp[t];
      grads->coef_a.push_back(static_cast<float>(-gs * mu * inv_pairs));
      grads->coef_b.push_back(static_cast<float>(gs * md * inv_pairs));
      // The softplus term's derivatives; a common mask carries one L1 term.
      const double du = gs * ratio, dd = -gs * r.kl[t];
      if (common) {
        grads->dmask_reward.push_back(
            static_cast<float>((du + dd + c_u * Sign(mu)) * inv_pairs));
      } else {
        grads->dmask_reward.push_back(
            static_cast<float>((du + c_u * Sign(mu)) * inv_pairs));
        grads->dmask_kl.push_back(
            static_cast<float>((dd + c_d * Sign(md)) * inv_pairs));
      }
    }
  };
  append(chosen, mask_kl_w, 1.0);
  append(rejected, mask_kl_l, -1.0);

  const double reward_w = beta * (w.masked_ratio + w.masked_kl);
  const double reward_l = beta * (l.masked_ratio + l.masked_kl);
  const double kw = chosen.logp.size(), kl = rejected.logp.size();
  sums->Add("loss", loss);
  sums->Add("rewards/chosen", reward_w);
  sums->Add("rewards/rejected", reward_l);
  sums->Add("rewards/margins", reward_w - reward_l);
  sums->Add("rewards/accuracies", reward_w > reward_l ? 1.0 : 0.0);
  sums->Add("logps/chosen", w.logp);
  sums->Add("logps/rejected", l.logp);
  sums->Add("logits/chosen", chosen.logit_sum, kw * vocab_);
  sums->Add("logits/rejected", rejected.logit_sum, kl * vocab_);
  sums->Add("kl/chosen", -w.masked_kl);
  sums->Add("kl/rejected", -l.masked_kl);
  sums->Add("kl/unmasked_chosen", -w.kl);
  sums->Add("kl/unmasked_rejected", -l.kl);
  sums->Add("mask/sparsity", 100.0 * (w.zeros_reward + l.zeros_reward),
            kw + kl);
  sums->Add("mask/mean", w.sum_reward + l.sum_reward, kw + kl);
  sums->Add("mask/l1", w.l1_reward + l.l1_reward);
  if (!common) {
    sums->Add("mask/kl_sparsity", 100.0 * (w.zeros_kl + l.zeros_kl), kw + kl);
    sums->Add("mask/kl_mean", w.sum_kl + l.sum_kl, kw + kl);
    sums->Add("mask/kl_l1", w.l1_kl + l.l1_kl);
  }
  return loss;
}

}  // namespace prefopt::objectives
