// Implicit-reward SFT (docs/objectives.md §3; Wang et al. 2025, "Implicit
// Reward as the Bridge"): supervised fine-tuning on demonstrations through an
// f-divergence of the implicit reward r = β·log(π/π_ref), which keeps the
// KL-to-reference term that plain SFT drops. The φ of each divergence is the
// contract's reconstruction (docs/objectives.md §3 table).
#ifndef PREFOPT_TRAINER_OBJECTIVES_IMPLICIT_SFT_H_
#define PREFOPT_TRAINER_OBJECTIVES_IMPLICIT_SFT_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/objective_math.h"
#include "trainer/objectives/metric_sums.h"
#include "trainer/objectives/output_layer.h"

namespace prefopt::objectives {

enum class Divergence {
  kTotalVariation,    // −φ(r) = −r                (plain SFT up to scale)
  kPearsonChi2,       // −φ(r) = −r + r²/4
  kNeymanChi2,        // −φ(r) = 2 − 2√(1+r),        r > −1
  kKl,                // −φ(r) = exp(−r)
  kSquaredHellinger,  // −φ(r) = −r/(1+r),           r > −1
  kJensenShannon,     // −φ(r) = −log(2 − exp(−r)),  r > −ln 2
};

enum class Granularity {
  // φ of the sequence's reward r = β Σ_t (ℓ_t − ℓ̃_t); needs only the
  // reference's summed log-prob L̃ (cacheable per sequence).
  kSequence,
  // Σ_t φ(r_t) with r_t = β(ℓ_t − ℓ̃_t); needs the reference's per-token ℓ̃_t.
  kToken,
};

struct ImplicitSftOptions {
  Divergence divergence = Divergence::kTotalVariation;
  Granularity granularity = Granularity::kSequence;
  double beta = 0.1;  // > 0
  // r is clamped to [r_min + margin, ∞) where the divergence's domain is
  // r > r_min (Neyman χ², squared Hellinger: r_min = −1; Jensen-Shannon:
  // r_min = −ln 2). In (0, 0.5].
  double domain_margin = 1e-2;
};

// KL's exponent −r is clamped to at most this (r ≥ −20), which bounds its
// loss and weight by e^20 ≈ 4.9e8.
inline constexpr double kKlMaxExponent =
    kernels::objective_math::kKlMaxExponent;

// φ and φ′ of a divergence at r after clamping r into its domain (see
// ImplicitSftOptions::domain_margin and kKlMaxExponent); `clamped` says
// whether r was moved. The loss is −phi.
struct PhiValue {
  double phi = 0;
  double dphi = 0;
  bool clamped = false;
};
PhiValue EvaluatePhi(Divergence divergence, double r, double domain_margin);

class ImplicitSftObjective {
 public:
  // Validates the options (β > 0, margin in (0, 0.5]).
  static absl::StatusOr<ImplicitSftObjective> Create(
      const ImplicitSftOptions& options);

  // One demonstration: `scores` from the policy's pass 1 over its k response
  // tokens. The per-token inputs are read by kToken only:
  //   kSequence: ref_logp_sum = L̃ = Σ_t ℓ̃_t; logp and ref_logp are ignored
  //              (may be empty);
  //   kToken:    logp = the k policy ℓ_t, ref_logp = the k reference ℓ̃_t
  //              (aborts on other lengths); ref_logp_sum is ignored.
  // Returns the sequence's loss (the batch loss is the mean over the
  // `global_sequences` demonstrations of the global batch) and appends its k
  // coefficients to `coef`:
  //   kSequence: loss −φ(r),       G_t = β φ′(r) / global_sequences
  //   kToken:    loss −Σ_t φ(r_t), G_t = β φ′(r_t) / global_sequences
  // Both are normalized per sequence, as the contract's "mean over
  // sequences" and "sums over tokens" say: the token form is the sequence
  // form with φ applied inside the sum, so for TOTAL_VARIATION (φ linear) the
  // two granularities give identical losses and coefficients, and TV is
  // β × SFT with SFT's per-token mean replaced by a per-sequence mean of
  // summed NLLs (G_t = β/global_sequences instead of 1/global_tokens).
  //
  // Clamping: φ and φ′ are evaluated at the clamped r (or r_t), so a
  // sequence outside the domain keeps the bounded, largest weight of the
  // domain's edge instead of a zero gradient. (There the reported loss is
  // the edge's value, constant in r, and the coefficient is not its
  // derivative: a straight-through clamp.)
  //
  // Metrics added to `sums`:
  //   loss               the sequence loss above, mean over sequences
  //   isft/reward        r = βΔ (both granularities), mean over sequences
  //   isft/weight        kSequence: β φ′(r), mean over sequences;
  //                      kToken: β φ′(r_t), mean over response tokens
  //   isft/clamped       fraction of sequences whose r (or any r_t) was
  //                      clamped
  //   logps/policy       L = Σ_t ℓ_t, mean over sequences
  //   logps/reference    L̃, mean over sequences
  //   sft/loss           Σ_s −L_s / Σ_s k_s (plain SFT's loss, for comparison)
  //   mean_token_accuracy  argmax == label over response tokens
  double Sequence(const SequenceScores& scores, absl::Span<const float> logp,
                  double ref_logp_sum, absl::Span<const float> ref_logp,
                  double global_sequences, MetricSums* sums,
                  std::vector<float>* coef) const;

  const ImplicitSftOptions& options() const { return options_; }

 private:
  explicit ImplicitSftObjective(const ImplicitSftOptions& options)
      : options_(options) {}

  ImplicitSftOptions options_;
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_IMPLICIT_SFT_H_
