#include "trainer/objectives/sparsepo.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/sparsepo_math.h"
#include "trainer/objectives/length_check.h"

namespace prefopt::objectives {
namespace {

namespace math = kernels::sparsepo_math;

constexpr char kWhere[] = "SparsePoObjective::Pair";

// A response's sums, checking that its inputs agree in length.
math::ResponseSums Sum(const kernels::SparsePoParams& p,
                       const SparsePoResponse& r) {
  const size_t k = r.logp.size();
  CheckSameLength(kWhere, "ref_logp", k, r.ref_logp.size());
  CheckSameLength(kWhere, "kl", k, r.kl.size());
  const bool reads_reward = math::ReadsRewardMask(p);
  const bool reads_kl = math::ReadsKlMask(p);
  if (reads_reward)
    CheckSameLength(kWhere, "mask_reward", k, r.mask_reward.size());
  if (reads_kl) CheckSameLength(kWhere, "mask_kl", k, r.mask_kl.size());
  math::ResponseSums s;
  for (size_t t = 0; t < k; ++t) {
    math::AddRow(p, r.logp[t], r.ref_logp[t], r.kl[t], 0.0f, 0.0f,
                 reads_reward ? r.mask_reward[t] : 1.0f,
                 reads_kl ? r.mask_kl[t] : 1.0f, &s);
  }
  s.logit_sum = r.logit_sum;
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
  if (!options.mask_on_reward && !options.mask_on_kl) {
    return absl::InvalidArgumentError(
        "objective.sparsepo: mask_on_reward and mask_on_kl are both false, so "
        "nothing would be masked");
  }
  return SparsePoObjective(options, vocab_size);
}

kernels::SparsePoParams SparsePoObjective::Params(double global_pairs) const {
  kernels::SparsePoParams p;
  p.beta = options_.beta;
  p.l1_reward = options_.l1_reward;
  p.l1_kl = options_.l1_kl;
  p.common_mask = options_.common_mask;
  p.mask_on_reward = options_.mask_on_reward;
  p.mask_on_kl = options_.mask_on_kl;
  p.denominator = global_pairs;
  return p;
}

double SparsePoObjective::Pair(const SparsePoResponse& chosen,
                               const SparsePoResponse& rejected,
                               double global_pairs, MetricSums* sums,
                               SparsePoGradients* grads) const {
  const kernels::SparsePoParams p = Params(global_pairs);
  const math::ResponseSums w = Sum(p, chosen), l = Sum(p, rejected);
  double metrics[kernels::kSparsePoMetricCount] = {};
  const double g = math::Pair(p, w, l, metrics);
  // sign = +1 for the chosen response, −1 for the rejected one.
  auto append = [&](const SparsePoResponse& r, double sign) {
    for (size_t t = 0; t < r.logp.size(); ++t) {
      const float reward = r.mask_reward.empty() ? 1.0f : r.mask_reward[t];
      const float kl = r.mask_kl.empty() ? 1.0f : r.mask_kl[t];
      float a, b, du = 0, dd = 0;
      math::Row(p, g, sign, r.logp[t], r.ref_logp[t], r.kl[t], reward, kl, &a,
                &b, &du, &dd);
      grads->coef_a.push_back(a);
      grads->coef_b.push_back(b);
      if (math::ReadsRewardMask(p)) grads->dmask_reward.push_back(du);
      if (math::ReadsKlMask(p)) grads->dmask_kl.push_back(dd);
    }
  };
  append(chosen, 1.0);
  append(rejected, -1.0);
  AddMetrics(metrics, 1, static_cast<double>(chosen.logp.size()),
             static_cast<double>(rejected.logp.size()), false, sums);
  return metrics[kernels::kSparsePoLoss];
}

void SparsePoObjective::AddMetrics(const double* metrics, double pairs,
                                   double chosen_tokens, double rejected_tokens,
                                   bool entropy, MetricSums* sums) const {
  const double tokens = chosen_tokens + rejected_tokens;
  auto add = [&](const char* name, kernels::SparsePoMetric m, double count) {
    sums->Add(name, metrics[m], count);
  };
  add("loss", kernels::kSparsePoLoss, pairs);
  add("rewards/chosen", kernels::kSparsePoRewardsChosen, pairs);
  add("rewards/rejected", kernels::kSparsePoRewardsRejected, pairs);
  add("rewards/margins", kernels::kSparsePoRewardsMargins, pairs);
  add("rewards/accuracies", kernels::kSparsePoRewardsAccuracies, pairs);
  add("logps/chosen", kernels::kSparsePoLogpsChosen, pairs);
  add("logps/rejected", kernels::kSparsePoLogpsRejected, pairs);
  add("logits/chosen", kernels::kSparsePoLogitsChosen, chosen_tokens * vocab_);
  add("logits/rejected", kernels::kSparsePoLogitsRejected,
      rejected_tokens * vocab_);
  add("kl/chosen", kernels::kSparsePoKlChosen, pairs);
  add("kl/rejected", kernels::kSparsePoKlRejected, pairs);
  add("kl/unmasked_chosen", kernels::kSparsePoKlUnmaskedChosen, pairs);
  add("kl/unmasked_rejected", kernels::kSparsePoKlUnmaskedRejected, pairs);
  const kernels::SparsePoParams p = Params(1);
  if (math::ReadsRewardMask(p)) {
    sums->Add("mask/sparsity", 100.0 * metrics[kernels::kSparsePoMaskZeros],
              tokens);
    add("mask/mean", kernels::kSparsePoMaskSum, tokens);
    add("mask/l1", kernels::kSparsePoMaskL1, pairs);
  }
  if (math::ReadsKlMask(p)) {
    sums->Add("mask/kl_sparsity",
              100.0 * metrics[kernels::kSparsePoKlMaskZeros], tokens);
    add("mask/kl_mean", kernels::kSparsePoKlMaskSum, tokens);
    add("mask/kl_l1", kernels::kSparsePoKlMaskL1, pairs);
  }
  if (entropy) add("entropy", kernels::kSparsePoEntropy, tokens);
}

}  // namespace prefopt::objectives
