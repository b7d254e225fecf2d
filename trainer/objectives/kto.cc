#include "trainer/objectives/kto.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/objective_math.h"

namespace prefopt::objectives {

std::string KtoWeightWarning(double desirable_weight, double undesirable_weight,
                             int64_t desirable, int64_t undesirable) {
  // TRL counts at least one of each.
  const double nd = static_cast<double>(std::max<int64_t>(desirable, 1));
  const double nu = static_cast<double>(std::max<int64_t>(undesirable, 1));
  if (nd == nu) return "";
  auto round2 = [](double x) { return std::round(x * 100.0) / 100.0; };
  const double d_low = round2(nu * undesirable_weight / nd);
  const double d_high = round2(nu * undesirable_weight / nd * 1.33);
  const double u_low = round2(nd * desirable_weight / nu / 1.33);
  const double u_high = round2(nd * desirable_weight / nu);
  if ((d_low <= desirable_weight && desirable_weight <= d_high) ||
      (u_low <= undesirable_weight && undesirable_weight <= u_high)) {
    return "";
  }
  return absl::StrFormat(
      "objective.kto: the data has %d desirable and %d undesirable "
      "examples, and neither weight is in the range TRL recommends for "
      "them: set EITHER desirable_weight in [%g, %g] OR undesirable_weight "
      "in [%g, %g], not both (docs/objectives.md §9)",
      desirable, undesirable, d_low, d_high, u_low, u_high);
}

absl::StatusOr<std::unique_ptr<KtoObjective>> KtoObjective::Create(
    const KtoConfig& config, int vocab_size) {
  if (!(config.beta() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("objective.kto.beta: must be > 0, got ", config.beta()));
  }
  if (!(config.desirable_weight() >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("objective.kto.desirable_weight: must be >= 0, got ",
                     config.desirable_weight()));
  }
  if (!(config.undesirable_weight() >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("objective.kto.undesirable_weight: must be >= 0, got ",
                     config.undesirable_weight()));
  }
  return std::unique_ptr<KtoObjective>(new KtoObjective(config, vocab_size));
}

double KtoObjective::KlEstimate(const MetricSums* prepass) const {
  if (params_.kto_apo || prepass == nullptr) return 0.0;
  const double count = prepass->Count("kl");
  if (count == 0) return 0.0;
  // TRL: the batch mean of the KL log-ratios, clamped at 0 and detached.
  return std::max(0.0, prepass->Means().at("kl"));
}

KtoExampleGradient KtoObjective::Example(bool desirable, double logratio,
                                         double kl) const {
  kernels::ObjectiveParams p = params_;
  p.kto_kl = kl;
  KtoExampleGradient g;
  g.loss =
      kernels::objective_math::KtoLoss(p, desirable, logratio, &g.dloss_dlogp);
  return g;
}

KtoObjective::KtoObjective(const KtoConfig& config, int vocab_size)
    : vocab_(vocab_size) {
  params_.kind = kernels::ObjectiveKind::kKto;
  params_.beta = config.beta();
  params_.desirable_weight = config.desirable_weight();
  params_.undesirable_weight = config.undesirable_weight();
  params_.kto_apo = config.loss_type() != KtoConfig::KTO;
}

bool KtoObjective::DeviceParams(kernels::ObjectiveParams* params) const {
  *params = params_;
  return true;
}

void KtoObjective::SetDevicePrepassParams(
    const MetricSums* prepass, kernels::ObjectiveParams* params) const {
  params->kto_kl = KlEstimate(prepass);
}

void KtoObjective::AddPrepass(const MicroBatchView& batch,
                              MetricSums* sums) const {
  const std::vector<SequenceScores>& scores = *batch.scores;
  for (size_t i = 0; i < batch.examples->size(); ++i) {
    const int ex = (*batch.examples)[i];
    sums->Add("kl", scores[i].logp - batch.reference->SequenceLogp(ex, 1));
  }
}

double KtoObjective::Denominator(const std::vector<data::Example>&,
                                 const std::vector<int>& batch) const {
  return static_cast<double>(batch.size());
}

void KtoObjective::Coefficients(const MicroBatchView& batch, double denominator,
                                std::vector<float>* coef,
                                MetricSums* sums) const {
  // Only the examples' completions are in the batch (the KL completions were
  // scored in the pre-pass).
  const std::vector<SequenceScores>& scores = *batch.scores;
  const double kl = KlEstimate(batch.prepass);
  coef->clear();
  for (size_t i = 0; i < batch.examples->size(); ++i) {
    const int ex = (*batch.examples)[i];
    const SequenceScores& s = scores[i];
    const bool desirable = (*batch.dataset)[ex].label;
    const double logratio = s.logp - batch.reference->SequenceLogp(ex, 0);
    const KtoExampleGradient g = Example(desirable, logratio, kl);
    sums->Add("loss", g.loss);
    sums->Add("kl", kl);
    // Both sides always get an entry (count 0 for the absent one), so that
    // every rank has the same metric names; FinishMetrics drops empty ones.
    const std::string side = desirable ? "chosen" : "rejected";
    const std::string other = desirable ? "rejected" : "chosen";
    sums->Add("rewards/" + side, params_.beta * logratio);
    sums->Add("logps/" + side, s.logp);
    sums->Add("logits/" + side, s.logit_sum,
              static_cast<double>(s.tokens) * vocab_);
    for (const char* metric : {"rewards/", "logps/", "logits/"}) {
      sums->Add(metric + other, 0.0, 0.0);
    }
    // G_t = −∂loss/∂ℓ_t (the kernel writes G_t·(softmax − onehot)).
    coef->insert(coef->end(), s.tokens,
                 static_cast<float>(-g.dloss_dlogp / denominator));
  }
}

void KtoObjective::FinishMetrics(const MetricSums& sums,
                                 std::map<std::string, double>* metrics) const {
  for (const char* side : {"chosen", "rejected"}) {
    if (sums.Count(absl::StrCat("rewards/", side)) > 0) continue;
    for (const char* metric : {"rewards/", "logps/", "logits/"}) {
      metrics->erase(absl::StrCat(metric, side));
    }
  }
  if (metrics->count("rewards/chosen") > 0 &&
      metrics->count("rewards/rejected") > 0) {
    (*metrics)["rewards/margins"] =
        metrics->at("rewards/chosen") - metrics->at("rewards/rejected");
  }
}

}  // namespace prefopt::objectives
