// ORPO (docs/objectives.md §8), as TRL's experimental ORPOTrainer: the NLL of
// the chosen sequences (prompt and response, as TRL) plus β times the
// odds-ratio loss −log σ(log-odds(y_w) − log-odds(y_l)) of the responses'
// length-averaged log-probs. No reference model.
#ifndef PREFOPT_TRAINER_OBJECTIVES_ORPO_H_
#define PREFOPT_TRAINER_OBJECTIVES_ORPO_H_

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

class OrpoObjective : public Objective {
 public:
  // Validates the config (β > 0).
  static absl::StatusOr<std::unique_ptr<OrpoObjective>> Create(
      const OrpoConfig& config, int vocab_size);

  data::ExampleKind example_kind() const override {
    return data::ExampleKind::kPreference;
  }
  ReferenceNeeds reference_needs() const override {
    return ReferenceNeeds::kNone;
  }
  // The NLL covers the chosen sequence's prompt tokens too, as TRL's.
  bool scores_prompts() const override { return true; }
  // The odds-ratio term is a mean over pairs ...
  double Denominator(const std::vector<data::Example>& examples,
                     const std::vector<int>& batch) const override;
  // ... the NLL term one over the chosen sequences' tokens, prompt (from its
  // second token) and response.
  double TokenDenominator(const std::vector<data::Example>& examples,
                          const std::vector<int>& batch) const override;
  void Coefficients(const MicroBatchView& batch, double denominator,
                    std::vector<float>* coef, MetricSums* sums) const override;
  // kernels::ObjectiveKind::kOrpo (DeviceObjective orders the sequences in
  // its units of three).
  bool DeviceParams(kernels::ObjectiveParams* params) const override;

 private:
  OrpoObjective(double beta, int vocab_size);

  // The loss as kernels/objective_math.h's OrpoPair reads it (kind kOrpo).
  kernels::ObjectiveParams params_;
  int vocab_;
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_ORPO_H_
