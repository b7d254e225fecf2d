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

// A response's masks as the loss reads them: m^u and m^d per token (1 for a
// term that is not masked), and the one or two mask tensors behind them, for
// the L1 terms, the mask gradients and the mask/* metrics.
struct ResponseMasks {
  absl::Span<const float> reward, kl;  // read when on_reward / on_kl
  bool on_reward, on_kl;
  const char* kl_name;  // the SparsePoResponse field `kl` comes from
  // The common mask, or m^u with independent masks (empty when not used).
  absl::Span<const float> first;
  // m^d with independent masks (empty when not used).
  absl::Span<const float> second;

  float u(size_t t) const { return on_reward ? reward[t] : 1.0f; }
  float d(size_t t) const { return on_kl ? kl[t] : 1.0f; }
};

// Zero-count, sum and L1 norm of one mask tensor.
struct MaskStats {
  int zeros = 0;
  double sum = 0;
  double l1 = 0;
};

MaskStats Stats(absl::Span<const float> m) {
  MaskStats s;
  for (float v : m) {
    s.zeros += v == 0.0f;
    s.sum += v;
    s.l1 += std::fabs(v);
  }
  return s;
}

// The per-response sums the loss and the metrics need.
struct ResponseSums {
  double masked_ratio = 0;  // U = Σ m^u r
  double masked_kl = 0;     // D = Σ m^d K
  double kl = 0;            // Σ K
  double logp = 0;          // Σ ℓ
  MaskStats first, second;
};

ResponseSums Sum(const SparsePoResponse& r, const ResponseMasks& m) {
  const size_t k = r.logp.size();
  CheckSameLength(kWhere, "ref_logp", k, r.ref_logp.size());
  CheckSameLength(kWhere, "kl", k, r.kl.size());
  if (m.on_reward) CheckSameLength(kWhere, "mask_reward", k, m.reward.size());
  if (m.on_kl) CheckSameLength(kWhere, m.kl_name, k, m.kl.size());
  ResponseSums s;
  for (size_t t = 0; t < k; ++t) {
    const double ratio = static_cast<double>(r.logp[t]) - r.ref_logp[t];
    s.masked_ratio += m.u(t) * ratio;
    s.masked_kl += m.d(t) * static_cast<double>(r.kl[t]);
    s.kl += r.kl[t];
    s.logp += r.logp[t];
  }
  s.first = Stats(m.first);
  s.second = Stats(m.second);
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

double SparsePoObjective::Pair(const SparsePoResponse& chosen,
                               const SparsePoResponse& rejected,
                               double global_pairs, MetricSums* sums,
                               SparsePoGradients* grads) const {
  const bool common = options_.common_mask;
  const bool on_u = options_.mask_on_reward, on_d = options_.mask_on_kl;
  const double beta = options_.beta;
  // A common mask is penalized once, with the mean weight of the terms it
  // masks (c_u then stands for that weight and c_d is unused).
  double c_u = options_.l1_reward;
  if (common && on_d) {
    c_u = on_u ? 0.5 * (options_.l1_reward + options_.l1_kl) : options_.l1_kl;
  }
  const double c_d = options_.l1_kl;
  auto masks = [&](const SparsePoResponse& r) {
    ResponseMasks m{r.mask_reward,
                    common ? r.mask_reward : r.mask_kl,
                    on_u,
                    on_d,
                    common ? "mask_reward" : "mask_kl",
                    {},
                    {}};
    if (common) {
      m.first = r.mask_reward;
    } else {
      if (on_u) m.first = r.mask_reward;
      if (on_d) m.second = r.mask_kl;
    }
    return m;
  };
  const ResponseMasks mw = masks(chosen), ml = masks(rejected);
  const ResponseSums w = Sum(chosen, mw);
  const ResponseSums l = Sum(rejected, ml);

  const double delta =
      (w.masked_ratio - l.masked_ratio) - (w.masked_kl - l.masked_kl);
  const double l1 = c_u * (w.first.l1 + l.first.l1) +
                    (common ? 0.0 : c_d * (w.second.l1 + l.second.l1));
  const double loss = Softplus(-beta * delta) + l1;
  const double g = -beta * Sigmoid(-beta * delta);
  const double inv_pairs = 1.0 / global_pairs;

  // sign = +1 for the chosen response, −1 for the rejected one: Δ contains
  // +U_w − D_w and −U_l + D_l.
  auto append = [&](const SparsePoResponse& r, const ResponseMasks& m,
                    double sign) {
    const double gs = g * sign;
    for (size_t t = 0; t < r.logp.size(); ++t) {
      const float mu = m.u(t), md = m.d(t);
      const double ratio = static_cast<double>(r.logp[t]) - r.ref_logp[t];
      grads->coef_a.push_back(static_cast<float>(-gs * mu * inv_pairs));
      grads->coef_b.push_back(static_cast<float>(gs * md * inv_pairs));
      // The softplus term's derivatives (zero for a term that is not
      // masked); a common mask carries one L1 term.
      const double du = on_u ? gs * ratio : 0.0;
      const double dd = on_d ? -gs * r.kl[t] : 0.0;
      if (common) {
        grads->dmask_reward.push_back(
            static_cast<float>((du + dd + c_u * Sign(m.first[t])) * inv_pairs));
        continue;
      }
      if (on_u) {
        grads->dmask_reward.push_back(
            static_cast<float>((du + c_u * Sign(mu)) * inv_pairs));
      }
      if (on_d) {
        grads->dmask_kl.push_back(
            static_cast<float>((dd + c_d * Sign(md)) * inv_pairs));
      }
    }
  };
  append(chosen, mw, 1.0);
  append(rejected, ml, -1.0);

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
  if (common || on_u) {
    sums->Add("mask/sparsity", 100.0 * (w.first.zeros + l.first.zeros),
              kw + kl);
    sums->Add("mask/mean", w.first.sum + l.first.sum, kw + kl);
    sums->Add("mask/l1", w.first.l1 + l.first.l1);
  }
  if (!common && on_d) {
    sums->Add("mask/kl_sparsity", 100.0 * (w.second.zeros + l.second.zeros),
              kw + kl);
    sums->Add("mask/kl_mean", w.second.sum + l.second.sum, kw + kl);
    sums->Add("mask/kl_l1", w.second.l1 + l.second.l1);
  }
  return loss;
}

}  // namespace prefopt::objectives
