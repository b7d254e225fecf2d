// DPO and its variants (docs/objectives.md §1): SIGMOID (cDPO with label
// smoothing), IPO, HINGE and ROBUST, with TRL's metrics.
#ifndef PREFOPT_TRAINER_OBJECTIVES_DPO_H_
#define PREFOPT_TRAINER_OBJECTIVES_DPO_H_

#include <memory>

#include "absl/status/statusor.h"
#include "proto/config.pb.h"
#include "trainer/objectives/metric_sums.h"
#include "trainer/objectives/objective.h"
#include "trainer/objectives/output_layer.h"

namespace prefopt::objectives {

// The reference model's summed response log-probs L̃ of one pair.
struct PairReference {
  double chosen = 0;
  double rejected = 0;
};

// The loss of one pair and its derivatives w.r.t. every response token's ℓ_t
// (constant over a sequence's tokens for every DPO variant).
struct DpoPairGradient {
  double loss = 0;
  double dloss_dlogp_chosen = 0;    // ∂loss/∂ℓ_t for each chosen token
  double dloss_dlogp_rejected = 0;  // ∂loss/∂ℓ_t for each rejected token
};

// The fraction α of raters taken to prefer the chosen response when the data
// does not say (docs/objectives.md §1).
inline constexpr double kDefaultPreferenceFraction = 1.0 - 0.001;

// Whether the optimal DPO policy for reference log-probs `ref` ranks the
// chosen response first (Chen et al. 2024, "Preference Learning Algorithms Do
// Not Learn Preference Rankings", Cor. 3.3):
// L̃(y_w) − L̃(y_l) + (1/β)·log(α/(1−α)) > 0, with α in (0, 1) the fraction of
// raters preferring y_w.
bool IdealizedRankingCorrect(const PairReference& ref, double beta,
                             double alpha);

class DpoObjective : public Objective {
 public:
  // Validates the config (β > 0, 0 ≤ ε < 0.5 where ε is used).
  static absl::StatusOr<std::unique_ptr<DpoObjective>> Create(
      const DpoConfig& config, int vocab_size);

  data::ExampleKind example_kind() const override {
    return data::ExampleKind::kPreference;
  }
  ReferenceNeeds reference_needs() const override {
    return ReferenceNeeds::kSequenceLogps;
  }
  // The mean is over pairs.
  double Denominator(const std::vector<data::Example>& examples,
                     const std::vector<int>& batch) const override;
  void Coefficients(const MicroBatchView& batch, double denominator,
                    std::vector<float>* coef, MetricSums* sums) const override;
  // ranking/idealized_accuracy (IdealizedRankingCorrect, α from the data's
  // preference_fraction or kDefaultPreferenceFraction) and
  // ranking/alignment_gap, its difference from ranking/accuracy.
  void AddEvalMetrics(const MicroBatchView& batch,
                      const std::vector<data::Example>& examples,
                      MetricSums* sums) const override;

  // Loss and token derivatives of one pair. `vocab_size` is needed only for
  // the logits/* metrics. Adds the pair's metrics (TRL's names) to `sums`.
  DpoPairGradient Pair(const SequenceScores& chosen,
                       const SequenceScores& rejected, const PairReference& ref,
                       MetricSums* sums) const;

  double beta() const { return beta_; }
  DpoConfig::LossType loss_type() const { return loss_type_; }

 private:
  DpoObjective(double beta, DpoConfig::LossType loss_type, double eps,
               int vocab_size)
      : beta_(beta), loss_type_(loss_type), eps_(eps), vocab_(vocab_size) {}

  double beta_;
  DpoConfig::LossType loss_type_;
  double eps_;
  int vocab_;
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_DPO_H_
