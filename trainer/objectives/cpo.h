// CPO and its reference-free relatives SimPO and AlphaPO (docs/objectives.md
// §8), as TRL's experimental CPOTrainer: a preference loss on the policy's own
// log-probs (loss types SIGMOID, HINGE, IPO, SIMPO, ALPHAPO) plus cpo_alpha
// times the chosen responses' NLL. No reference model.
#ifndef PREFOPT_TRAINER_OBJECTIVES_CPO_H_
#define PREFOPT_TRAINER_OBJECTIVES_CPO_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "proto/config.pb.h"
#include "trainer/objectives/metric_sums.h"
#include "trainer/objectives/objective.h"
#include "trainer/objectives/output_layer.h"
#include "trainer/objectives/reference_free.h"

namespace prefopt::objectives {

class CpoObjective : public Objective {
 public:
  // Validates the config (β > 0, 0 ≤ ε < 0.5, cpo_alpha ≥ 0; ALPHAPO is
  // SIMPO with cpo_alpha 0, as TRL's CPOConfig makes it).
  static absl::StatusOr<std::unique_ptr<CpoObjective>> Create(
      const CpoConfig& config, int vocab_size);

  data::ExampleKind example_kind() const override {
    return data::ExampleKind::kPreference;
  }
  ReferenceNeeds reference_needs() const override {
    return ReferenceNeeds::kNone;
  }
  // The preference term is a mean over pairs ...
  double Denominator(const std::vector<data::Example>& examples,
                     const std::vector<int>& batch) const override;
  // ... the NLL term one over the chosen responses' tokens.
  double TokenDenominator(const std::vector<data::Example>& examples,
                          const std::vector<int>& batch) const override;
  void Coefficients(const MicroBatchView& batch, double denominator,
                    std::vector<float>* coef, MetricSums* sums) const override;
  // Every loss type: kernels::ObjectiveKind::kCpo.
  bool DeviceParams(kernels::ObjectiveParams* params) const override;

 private:
  CpoObjective(const CpoConfig& config, int vocab_size);

  // The loss as kernels/objective_math.h's CpoPair reads it (kind kCpo; the
  // per-batch denominators are set per call).
  kernels::ObjectiveParams params_;
  int vocab_;
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_CPO_H_
