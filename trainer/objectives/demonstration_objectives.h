// The objectives over demonstrations as plug-ins of the loop: SFT
// (docs/objectives.md §5), PRIOR (§4) and implicit-reward SFT (§3). The math
// lives in sft.h, prior.h and implicit_sft.h; these classes say what data and
// reference values each needs and how its loss is normalized.
#ifndef PREFOPT_TRAINER_OBJECTIVES_DEMONSTRATION_OBJECTIVES_H_
#define PREFOPT_TRAINER_OBJECTIVES_DEMONSTRATION_OBJECTIVES_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/config.pb.h"
#include "trainer/objectives/implicit_sft.h"
#include "trainer/objectives/objective.h"
#include "trainer/objectives/prior.h"

namespace prefopt::objectives {

// Σ of response tokens over the examples of a batch (the denominator of the
// token-mean losses).
double ResponseTokens(const std::vector<data::Example>& examples,
                      const std::vector<int>& batch);

class SftPlugin : public Objective {
 public:
  data::ExampleKind example_kind() const override {
    return data::ExampleKind::kDemonstration;
  }
  ReferenceNeeds reference_needs() const override {
    return ReferenceNeeds::kNone;
  }
  double Denominator(const std::vector<data::Example>& examples,
                     const std::vector<int>& batch) const override {
    return ResponseTokens(examples, batch);
  }
  void Coefficients(const MicroBatchView& batch, double denominator,
                    std::vector<float>* coef, MetricSums* sums) const override;
  // The token mean (kernels::ObjectiveKind::kTokenMean).
  bool DeviceParams(kernels::ObjectiveParams* params) const override {
    *params = kernels::ObjectiveParams();
    params->kind = kernels::ObjectiveKind::kTokenMean;
    return true;
  }
};

class PriorPlugin : public Objective {
 public:
  static absl::StatusOr<std::unique_ptr<PriorPlugin>> Create(
      const PriorConfig& config);
  data::ExampleKind example_kind() const override {
    return data::ExampleKind::kDemonstration;
  }
  ReferenceNeeds reference_needs() const override {
    return ReferenceNeeds::kTokenLogps;
  }
  // The paper's text-only reference never sees the context.
  bool reference_sees_context() const override { return false; }
  double Denominator(const std::vector<data::Example>& examples,
                     const std::vector<int>& batch) const override {
    return ResponseTokens(examples, batch);
  }
  void Coefficients(const MicroBatchView& batch, double denominator,
                    std::vector<float>* coef, MetricSums* sums) const override;
  // kernels::ObjectiveKind::kPrior.
  bool DeviceParams(kernels::ObjectiveParams* params) const override;

 private:
  PriorPlugin(PriorObjective prior, const PriorOptions& options)
      : prior_(std::move(prior)), options_(options) {}
  PriorObjective prior_;
  PriorOptions options_;
};

class ImplicitSftPlugin : public Objective {
 public:
  static absl::StatusOr<std::unique_ptr<ImplicitSftPlugin>> Create(
      const ImplicitSftConfig& config);
  data::ExampleKind example_kind() const override {
    return data::ExampleKind::kDemonstration;
  }
  ReferenceNeeds reference_needs() const override {
    return token_ ? ReferenceNeeds::kTokenLogps
                  : ReferenceNeeds::kSequenceLogps;
  }
  // The mean is over sequences.
  double Denominator(const std::vector<data::Example>&,
                     const std::vector<int>& batch) const override {
    return static_cast<double>(batch.size());
  }
  void Coefficients(const MicroBatchView& batch, double denominator,
                    std::vector<float>* coef, MetricSums* sums) const override;
  // kernels::ObjectiveKind::kImplicitSequence or, at token granularity,
  // kImplicitToken.
  bool DeviceParams(kernels::ObjectiveParams* params) const override;

 private:
  ImplicitSftPlugin(ImplicitSftObjective isft, bool token)
      : isft_(std::move(isft)), token_(token) {}
  ImplicitSftObjective isft_;
  bool token_;
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_DEMONSTRATION_OBJECTIVES_H_
