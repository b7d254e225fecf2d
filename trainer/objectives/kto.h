// KTO on unpaired data (docs/objectives.md §9): TRL 1.16's KTOTrainer losses
// "kto" (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
// Optimization") and "apo_zero_unpaired" (D'Oosterlinck et al. 2024, APO),
// with desirable/undesirable weights and TRL's metrics.
#ifndef PREFOPT_TRAINER_OBJECTIVES_KTO_H_
#define PREFOPT_TRAINER_OBJECTIVES_KTO_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "proto/config.pb.h"
#include "trainer/objectives/metric_sums.h"
#include "trainer/objectives/objective.h"

namespace prefopt::objectives {

// The weighted loss of one example and its derivative with respect to the
// completion's summed log-prob L (the same for every completion token's ℓ_t).
struct KtoExampleGradient {
  double loss = 0;
  double dloss_dlogp = 0;
};

// TRL's advice on the weights when the data has `desirable` and
// `undesirable` examples in unequal numbers (Ethayarajh et al. 2024, Eq. (8):
// λ_D·n_D / (λ_U·n_U) in [1, 4/3]): the warning KTOTrainer logs when neither
// desirable_weight is in [n_U·λ_U/n_D, 1.33·n_U·λ_U/n_D] nor
// undesirable_weight in [n_D·λ_D/(1.33·n_U), n_D·λ_D/n_U] (bounds rounded to
// two decimals, as TRL's), naming both ranges; "" otherwise.
std::string KtoWeightWarning(double desirable_weight, double undesirable_weight,
                             int64_t desirable, int64_t undesirable);

class KtoObjective : public Objective {
 public:
  // Validates the config (β > 0, weights ≥ 0).
  static absl::StatusOr<std::unique_ptr<KtoObjective>> Create(
      const KtoConfig& config, int vocab_size);

  data::ExampleKind example_kind() const override {
    return data::ExampleKind::kUnpaired;
  }
  ReferenceNeeds reference_needs() const override {
    return ReferenceNeeds::kSequenceLogps;
  }
  // Loss type KTO estimates z₀ from the KL completions (response 1).
  bool has_prepass() const override { return !params_.kto_apo; }
  // Adds L(y') − L̃(y') of each example's KL completion y' as "kl".
  void AddPrepass(const MicroBatchView& batch, MetricSums* sums) const override;
  // The mean is over the examples.
  double Denominator(const std::vector<data::Example>& examples,
                     const std::vector<int>& batch) const override;
  void Coefficients(const MicroBatchView& batch, double denominator,
                    std::vector<float>* coef, MetricSums* sums) const override;
  // kernels::ObjectiveKind::kKto (and kKtoKl for the pre-pass), both loss
  // types; z₀ comes from the pre-pass sums.
  bool DeviceParams(kernels::ObjectiveParams* params) const override;
  void SetDevicePrepassParams(const MetricSums* prepass,
                              kernels::ObjectiveParams* params) const override;
  // Drops the chosen (rejected) metrics of a batch without desirable
  // (undesirable) examples and adds rewards/margins when it has both, as TRL.
  void FinishMetrics(const MetricSums& sums,
                     std::map<std::string, double>* metrics) const override;

  // z₀ from the pre-pass sums: max(0, mean KL log-ratio); 0 for
  // APO_ZERO_UNPAIRED or without sums.
  double KlEstimate(const MetricSums* prepass) const;
  // Loss and derivative of one example whose completion has the log-ratio
  // L − L̃ = `logratio`, given z₀ = `kl` (a constant: no gradient flows
  // through it).
  KtoExampleGradient Example(bool desirable, double logratio, double kl) const;

 private:
  KtoObjective(const KtoConfig& config, int vocab_size);

  // The loss as kernels/objective_math.h's KtoLoss reads it (kind kKto;
  // z₀ is set per batch).
  kernels::ObjectiveParams params_;
  int vocab_;
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_KTO_H_
