// DPO and its family (docs/objectives.md §1), as TRL 1.16's DPOTrainer
// computes them: the 15 loss types of DpoConfig::LossType, weighted mixtures
// of them (MPO), f-DPO's f-divergences, LD-DPO's length-desensitized
// log-probs and WPO's weights, with TRL's metrics.
#ifndef PREFOPT_TRAINER_OBJECTIVES_DPO_H_
#define PREFOPT_TRAINER_OBJECTIVES_DPO_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/objective_math.h"
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
  // Validates the config (β > 0, 0 ≤ ε < 0.5, one weight per loss type, ε > 0
  // for EXO_PAIR, τ > 0, ld_alpha in [0, 1]); unset optional fields take
  // TRL's defaults.
  static absl::StatusOr<std::unique_ptr<DpoObjective>> Create(
      const DpoConfig& config, int vocab_size);

  data::ExampleKind example_kind() const override {
    return data::ExampleKind::kPreference;
  }
  // LD-DPO weights the reference's tokens too, so it needs them one by one.
  ReferenceNeeds reference_needs() const override {
    return ld_alpha_ >= 0 ? ReferenceNeeds::kTokenLogps
                          : ReferenceNeeds::kSequenceLogps;
  }
  bool needs_row_log_sum_sq_probs() const override { return use_weighting_; }
  // The mean is over pairs.
  double Denominator(const std::vector<data::Example>& examples,
                     const std::vector<int>& batch) const override;
  // The SFT term's mean is over the chosen tokens; 0 without an SFT term.
  double TokenDenominator(const std::vector<data::Example>& examples,
                          const std::vector<int>& batch) const override;
  void Coefficients(const MicroBatchView& batch, double denominator,
                    std::vector<float>* coef, MetricSums* sums) const override;
  // ranking/idealized_accuracy (IdealizedRankingCorrect, α from the data's
  // preference_fraction or kDefaultPreferenceFraction) and
  // ranking/alignment_gap, its difference from ranking/accuracy.
  void AddEvalMetrics(const MicroBatchView& batch,
                      const std::vector<data::Example>& examples,
                      MetricSums* sums) const override;

  // The micro-batch's loss summed over its pairs (the loss of the global
  // batch is the sum over its micro-batches divided by Denominator) and
  // ∂loss/∂ℓ_t of every response token, in row_logp's order, into
  // `dloss_dlogp`. Adds the pairs' metrics (TRL's names) to `sums`. WPO's
  // weights are constants here, as in TRL.
  double Loss(const MicroBatchView& batch, std::vector<double>* dloss_dlogp,
              MetricSums* sums) const;

  // Every loss type, with mixtures, the SFT term, f-DPO's divergences, LD-DPO
  // and WPO.
  bool DeviceParams(kernels::ObjectiveParams* params) const override;

  double beta() const { return beta_; }

 private:
  struct Term {
    DpoConfig::LossType type;
    double weight;
  };
  struct PairState;

  DpoObjective() = default;

  // f-DPO's score f'(exp(r)) of a log-ratio r and its derivative.
  double Score(double log_ratio, double* dscore) const;
  // Adds one loss type's per-pair losses times its weight (before WPO's
  // weights) to each pair's loss, and their derivatives w.r.t. the pair's
  // policy log-probs L to its dchosen/drejected. Not for SFT (Loss adds it).
  void AddTerm(const Term& term, std::vector<PairState>* pairs) const;
  // Σ over a response's tokens of a_t·ℓ_t, a_t the LD-DPO weight.
  double Weighted(const float* logp, int tokens, int shared) const;
  double TokenWeight(int t, int shared) const {
    return kernels::objective_math::LdTokenWeight(ld_alpha_, t, shared);
  }
  // f_divergence_type as the device path names it.
  kernels::ScoreDivergence ScoreKind() const;

  double beta_ = 0.1;
  double eps_ = 0;
  std::vector<Term> terms_;
  DpoConfig::FDivergenceType divergence_ = DpoConfig::REVERSE_KL;
  double alpha_divergence_ = 0.5;
  bool use_weighting_ = false;
  double ld_alpha_ = -1;  // < 0: plain sums
  double discopop_tau_ = 0.05;
  int vocab_ = 0;
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_DPO_H_
