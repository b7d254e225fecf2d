// PRIOR token reweighting (docs/objectives.md §4; Chen et al. 2025,
// "Prioritizing Image-Related Tokens"): supervised fine-tuning in which each
// completion token's NLL is weighted by how hard the token is for a reference
// that does not see the context, so tokens grounded in the context weigh more.
#ifndef PREFOPT_TRAINER_OBJECTIVES_PRIOR_H_
#define PREFOPT_TRAINER_OBJECTIVES_PRIOR_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "trainer/objectives/metric_sums.h"
#include "trainer/objectives/output_layer.h"

namespace prefopt::objectives {

struct PriorOptions {
  // α ≥ 0 in w_t = (1 − p̃_t)^α; 0 is plain SFT.
  double alpha = 1.0;
  // ε > 0 in ŵ_t = k·w_t / max(Σ_u w_u, ε). It only matters when the
  // reference is (numerically) certain of every token of a sequence, which
  // would otherwise divide by 0; such a sequence then weighs less than k.
  double weight_sum_floor = 1e-6;
};

// The normalized weights ŵ_t = k·w_t / max(Σ_u w_u, ε), w_t = (1 − p̃_t)^α, of
// one sequence's k completion tokens from the context-free reference's
// log-probs ℓ̃_t. 1 − p̃_t is computed as −expm1(ℓ̃_t), in double, so that
// tokens the reference is nearly sure of keep their small weights. With
// α = 0 every weight is exactly 1.
std::vector<double> PriorTokenWeights(absl::Span<const float> ref_logp,
                                      double alpha, double weight_sum_floor);

class PriorObjective {
 public:
  // Validates the options (α ≥ 0, ε > 0, both finite).
  static absl::StatusOr<PriorObjective> Create(const PriorOptions& options);

  // One demonstration: `scores` from the policy's pass 1 over its completion
  // tokens, `logp` their ℓ_t (k values, in order) and `ref_logp` the
  // context-free reference's ℓ̃_t of the same tokens, aligned by position
  // within the completion (aborts if the lengths differ). Returns the
  // sequence's loss −Σ_t ŵ_t ℓ_t (the batch loss divides Σ_s by
  // `global_tokens`), appends the k coefficients G_t = ŵ_t / global_tokens to
  // `coef`, and adds to `sums`:
  //   loss, prior/loss       Σ_s −Σ_t ŵ_t ℓ_t / Σ_s k_s (the two are equal;
  //                          `loss` is the name every objective reports)
  //   sft/loss               Σ_s −Σ_t ℓ_t / Σ_s k_s, the unweighted NLL
  //   mean_token_accuracy    argmax == label over the completion tokens
  //   prior/weight_max       max_t ŵ_t, averaged over sequences
  //   prior/weight_entropy   H_s = −Σ_t q_t ln q_t with q_t = ŵ_t / k (the
  //                          weights as a distribution over the sequence's
  //                          tokens; 0·ln 0 = 0), averaged over sequences. It
  //                          is ln k for uniform weights (α = 0) and falls as
  //                          the weight concentrates on fewer tokens.
  // A sequence without completion tokens adds nothing.
  double Sequence(const SequenceScores& scores, absl::Span<const float> logp,
                  absl::Span<const float> ref_logp, double global_tokens,
                  MetricSums* sums, std::vector<float>* coef) const;

  double alpha() const { return options_.alpha; }

 private:
  explicit PriorObjective(const PriorOptions& options) : options_(options) {}

  PriorOptions options_;
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_PRIOR_H_
